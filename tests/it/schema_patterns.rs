//! The JSON Schema (`wgprov schema`) refuses the values validation refuses, so that an editor
//! flags them as they are typed: its patterns come from the same definitions
//! (`wgprov::inventory::patterns`).

use std::process::Command;

use super::common::Inv;

fn validator() -> jsonschema::Validator {
    let o = Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .arg("schema")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    jsonschema::draft7::new(&schema).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

const GOOD: &str = "\
network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, fd00:10::/56]
  interface: wg0
ssh: {config_file: none, user: admin}
sites:
  home:
    endpoint: 203.0.113.10:51820
    lan_cidrs: [192.168.0.0/24]
    nodes:
      n1: {address: 192.168.0.10, wireguard_ip: 10.100.0.10, ssh: {host: n1.example.net}}
  neighbour:
    managed: false
    wireguard_cidr: 10.100.9.0/24
    endpoint: vpn.example.org:51820
    public_key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
";

/// Asserts that the schema and the loader both refuse `GOOD` with `from` replaced by `to`.
fn both_refuse(v: &jsonschema::Validator, from: &str, to: &str) {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    let bad = GOOD.replacen(from, to, 1);
    assert!(
        !v.is_valid(&json(&bad)),
        "the schema accepts {to:?}:\n{bad}"
    );
    let d = Inv::new(&bad).diagnostics();
    assert!(
        d.iter().any(|d| d.is_error()),
        "the loader accepts {to:?}: {d:?}"
    );
}

#[test]
fn the_fixture_is_accepted_by_the_schema_and_the_loader() {
    assert!(validator().is_valid(&json(GOOD)));
    let d = Inv::new(GOOD).diagnostics();
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
}

#[test]
fn schema_refuses_a_prefix_over_32() {
    both_refuse(&validator(), "10.100.0.0/16", "10.100.0.0/33");
}

#[test]
fn schema_refuses_an_endpoint_port_over_65535() {
    both_refuse(&validator(), "203.0.113.10:51820", "203.0.113.10:70000");
}

#[test]
fn schema_refuses_a_key_that_is_not_32_bytes_of_base64() {
    let v = validator();
    let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    both_refuse(&v, key, "AAAA");
    both_refuse(&v, key, "not-base64-at-all");
    both_refuse(&v, key, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8DgAAAA=");
}

#[test]
fn schema_refuses_garbage_as_a_cidr() {
    let v = validator();
    both_refuse(
        &v,
        "wireguard_cidr: 10.100.0.0/16",
        "wireguard_cidr: garbage",
    );
    both_refuse(&v, "192.168.0.0/24", "garbage");
    both_refuse(&v, "fd00:10::/56", "garbage");
    both_refuse(&v, "10.100.9.0/24", "garbage");
}

#[test]
fn schema_refuses_a_node_or_site_name_with_a_semicolon() {
    let v = validator();
    both_refuse(&v, "      n1:", "      \"n1;id\":");
    both_refuse(&v, "  neighbour:", "  \"neighbour;id\":");
}

#[test]
fn schema_refuses_hostile_ssh_values_and_interfaces() {
    let v = validator();
    both_refuse(&v, "host: n1.example.net", "host: \"-oProxyCommand=id\"");
    both_refuse(&v, "host: n1.example.net", "host: \"a;id\"");
    both_refuse(&v, "user: admin", "user: \"$(id)\"");
    both_refuse(&v, "interface: wg0", "interface: \"-wg0\"");
    both_refuse(
        &v,
        "wireguard_ip: 10.100.0.10",
        "wireguard_ip: 10.100.0.300",
    );
}
