//! One case per inventory rule: the message names file, line and field.

use super::common::Inv;

const BASE: &str = "\
network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: home.example.net:51820
    next_hop: node1
    nodes:
      node1:
        address: 192.168.0.10
      node2:
        address: 192.168.0.11
  office:
    wireguard_cidr: 10.100.1.0/24
    nodes:
      office1:
        address: 192.168.1.10
";

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "fixture lacks {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_base_inventory_is_valid() {
    let inv = Inv::new(BASE);
    let d = inv.diagnostics();
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
}

/// (name, inventory, line, field, part of the message)
fn cases() -> Vec<(&'static str, String, u32, &'static str, &'static str)> {
    vec![
        (
            "unknown key",
            with(
                "    next_hop: node1\n",
                "    next_hop: node1\n    nexthop: node2\n",
            ),
            9,
            "sites.home.nexthop",
            "unknown field `nexthop`",
        ),
        (
            "duplicate key",
            with(
                "    endpoint: home.example.net:51820\n",
                "    endpoint: home.example.net:51820\n    endpoint: other.example.net:51820\n",
            ),
            8,
            "sites.home.endpoint",
            "duplicate",
        ),
        (
            "wrong type",
            with("    lan_cidrs: [192.168.0.0/24]", "    lan_cidrs: {a: 1}"),
            6,
            "sites.home.lan_cidrs",
            "",
        ),
        (
            "bad CIDR",
            with("10.100.0.0/16", "10.100.0.0/33"),
            2,
            "network.wireguard_cidr",
            "not an IPv4 CIDR",
        ),
        (
            "host bits",
            with("10.100.0.0/16", "10.100.0.1/16"),
            2,
            "network.wireguard_cidr",
            "host bits",
        ),
        (
            "block outside the space",
            with("10.100.1.0/24", "10.101.1.0/24"),
            15,
            "sites.office.wireguard_cidr",
            "outside the WireGuard space",
        ),
        (
            "block of the wrong size",
            with("10.100.1.0/24", "10.100.1.0/25"),
            15,
            "sites.office.wireguard_cidr",
            "site_prefix is 24",
        ),
        (
            "blocks overlap",
            with(
                "    lan_cidrs: [192.168.0.0/24]\n",
                "    lan_cidrs: [192.168.0.0/24]\n    wireguard_cidr: 10.100.1.0/24\n",
            ),
            16,
            "sites.office.wireguard_cidr",
            "overlaps site home",
        ),
        (
            "cluster CIDR overlaps the space",
            with(
                "[10.244.0.0/16, 10.96.0.0/16]",
                "[10.244.0.0/16, 10.96.0.0/12]",
            ),
            3,
            "network.cluster_cidrs[1]",
            "overlaps the WireGuard space",
        ),
        (
            "cluster CIDRs overlap each other",
            with(
                "[10.244.0.0/16, 10.96.0.0/16]",
                "[10.244.0.0/16, 10.244.8.0/24]",
            ),
            3,
            "network.cluster_cidrs[1]",
            "must not overlap",
        ),
        (
            "LAN collides with the space",
            with("[192.168.0.0/24]", "[10.100.200.0/24]"),
            6,
            "sites.home.lan_cidrs[0]",
            "collides with the WireGuard space",
        ),
        (
            "LAN collides with a cluster CIDR",
            with("[192.168.0.0/24]", "[10.244.3.0/24]"),
            6,
            "sites.home.lan_cidrs[0]",
            "cluster CIDR",
        ),
        (
            "duplicate node IP",
            with(
                "        address: 192.168.0.11\n",
                "        address: 192.168.0.11\n        wireguard_ip: 10.100.0.7\n      node3:\n        address: 192.168.0.12\n        wireguard_ip: 10.100.0.7\n",
            ),
            17,
            "sites.home.nodes.node3.wireguard_ip",
            "also node node2's address",
        ),
        (
            "node IP outside its block",
            with(
                "        address: 192.168.1.10\n",
                "        address: 192.168.1.10\n        wireguard_ip: 10.100.0.9\n",
            ),
            19,
            "sites.office.nodes.office1.wireguard_ip",
            "outside the site's block",
        ),
        (
            "network address",
            with(
                "        address: 192.168.1.10\n",
                "        address: 192.168.1.10\n        wireguard_ip: 10.100.1.0\n",
            ),
            19,
            "sites.office.nodes.office1.wireguard_ip",
            "network address",
        ),
        (
            "broadcast address",
            with(
                "        address: 192.168.1.10\n",
                "        address: 192.168.1.10\n        wireguard_ip: 10.100.1.255\n",
            ),
            19,
            "sites.office.nodes.office1.wireguard_ip",
            "broadcast address",
        ),
        (
            "next_hop names no node of the site",
            with("next_hop: node1", "next_hop: office1"),
            8,
            "sites.home.next_hop",
            "not a node of site home",
        ),
        (
            "next_hop missing with several nodes",
            with("    next_hop: node1\n", ""),
            5,
            "sites.home.next_hop",
            "missing",
        ),
        (
            "two sites without endpoint",
            with("    endpoint: home.example.net:51820\n", ""),
            13,
            "sites.office.endpoint",
            "cannot peer",
        ),
        (
            "endpoint without port",
            with("home.example.net:51820", "home.example.net"),
            7,
            "sites.home.endpoint",
            "needs a port",
        ),
        (
            "endpoint port out of range",
            with("home.example.net:51820", "home.example.net:0"),
            7,
            "sites.home.endpoint",
            "outside 1-65535",
        ),
        (
            "listen port out of range",
            with(
                "  wireguard_cidr: 10.100.0.0/16\n",
                "  wireguard_cidr: 10.100.0.0/16\n  listen_port: 65536\n",
            ),
            3,
            "network.listen_port",
            "outside 1-65535",
        ),
        (
            "ssh port out of range",
            with(
                "        address: 192.168.0.11\n",
                "        address: 192.168.0.11\n        ssh: {port: 99999}\n",
            ),
            14,
            "sites.home.nodes.node2.ssh.port",
            "outside 1-65535",
        ),
        (
            "unsafe node name",
            with("      node2:", "      Node_2:"),
            12,
            "sites.home.nodes.Node_2",
            "not a safe name",
        ),
        (
            "unsafe site name",
            with("  office:", "  office;rm:"),
            14,
            "sites.office;rm",
            "not a safe name",
        ),
        (
            "interface name too long",
            with(
                "  wireguard_cidr: 10.100.0.0/16\n",
                "  wireguard_cidr: 10.100.0.0/16\n  interface: wireguard-interface0\n",
            ),
            3,
            "network.interface",
            "not a valid interface name",
        ),
        (
            "public key not 32 bytes",
            format!(
                "{BASE}  friend:\n    managed: false\n    wireguard_cidr: 10.100.7.0/24\n    public_key: \"AAAA\"\n"
            ),
            22,
            "sites.friend.public_key",
            "32",
        ),
        (
            "public key not base64",
            format!(
                "{BASE}  friend:\n    managed: false\n    wireguard_cidr: 10.100.7.0/24\n    public_key: \"@@@\"\n"
            ),
            22,
            "sites.friend.public_key",
            "base64",
        ),
        (
            "unmanaged site without block",
            format!(
                "{BASE}  friend:\n    managed: false\n    public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n"
            ),
            19,
            "sites.friend.wireguard_cidr",
            "must be written",
        ),
        (
            "proxy_jump to an unknown node",
            with(
                "        address: 192.168.0.11\n",
                "        address: 192.168.0.11\n        ssh: {proxy_jump: nodex}\n",
            ),
            14,
            "sites.home.nodes.node2.ssh.proxy_jump",
            "not a node",
        ),
        (
            "os_family unknown",
            with(
                "        address: 192.168.0.11\n",
                "        address: 192.168.0.11\n        os_family: arch\n",
            ),
            14,
            "sites.home.nodes.node2.os_family",
            "debian, redhat",
        ),
        (
            "mtu out of range",
            with(
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n",
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n  mtu: 1600\n",
            ),
            4,
            "network.mtu",
            "outside 1280-1500",
        ),
        (
            "mtu too big for a PPPoE uplink",
            with(
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n",
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n  mtu: 1420\n",
            )
            .replace(
                "    next_hop: node1\n",
                "    next_hop: node1\n    wan_mtu: 1492\n",
            ),
            10,
            "sites.home.wan_mtu",
            "network.mtu 1420 does not fit this uplink: 1492 - 80 bytes of WireGuard overhead leaves 1412",
        ),
        (
            "wan_mtu too small",
            with(
                "    next_hop: node1\n",
                "    next_hop: node1\n    wan_mtu: 1300\n",
            ),
            9,
            "sites.home.wan_mtu",
            "outside 1360-9216",
        ),
        (
            "unknown kubernetes flavor",
            with(
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n",
                "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n  kubernetes: k8s\n",
            ),
            4,
            "network.kubernetes",
            "not one of kubeadm, k3s, rke2",
        ),
        (
            "unknown kubernetes flavor on a node",
            with(
                "        address: 192.168.0.11\n",
                "        address: 192.168.0.11\n        kubernetes: microk8s\n",
            ),
            14,
            "sites.home.nodes.node2.kubernetes",
            "not one of kubeadm, k3s, rke2",
        ),
        (
            "address inside the space",
            with("192.168.0.11", "10.100.9.9"),
            13,
            "sites.home.nodes.node2.address",
            "inside the WireGuard space",
        ),
        (
            "space exhausted",
            with(
                "  wireguard_cidr: 10.100.0.0/16\n",
                "  wireguard_cidr: 10.100.0.0/23\n",
            )
            .replace("10.100.1.0/24", "10.100.0.0/24")
                + "  third:\n    endpoint: t.example.net:1\n    nodes:\n      t1:\n        address: 192.168.5.5\n",
            19,
            "sites.third",
            "no free /24 block",
        ),
    ]
}

#[test]
fn every_rule_names_file_line_and_field() {
    let mut failures = Vec::new();
    for (name, yaml, line, field, msg) in cases() {
        let inv = Inv::new(&yaml);
        let diags = inv.diagnostics();
        let file = inv.path.display().to_string();
        let hit = diags.iter().find(|d| d.is_error() && d.field == field);
        match hit {
            Some(d) => {
                let shown = d.to_string();
                if d.line != line
                    || !shown.starts_with(&format!("{file}:{line}:"))
                    || !shown.contains(msg)
                {
                    failures.push(format!(
                        "{name}: got `{shown}`, want line {line} and `{msg}`"
                    ));
                }
            }
            None => failures.push(format!(
                "{name}: no error on {field}; got:\n  {}",
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_mtu_follows_the_smallest_uplink_and_the_flavor_the_node() {
    let p = Inv::new(BASE).plan();
    assert_eq!(p.topology.network.mtu, 1420, "plain Ethernet: 1500 - 80");
    let pppoe = with(
        "    next_hop: node1\n",
        "    next_hop: node1\n    wan_mtu: 1492\n",
    )
    .replace(
        "        address: 192.168.0.11\n",
        "        address: 192.168.0.11\n        kubernetes: k3s\n",
    )
    .replace(
        "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n",
        "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n  kubernetes: rke2\n",
    );
    let p = Inv::new(&pppoe).plan();
    assert_eq!(
        p.topology.network.mtu, 1412,
        "one PPPoE site lowers wg0 everywhere"
    );
    let flavor = |n: &str| p.topology.node(n).unwrap().kubernetes.as_str();
    assert_eq!((flavor("node1"), flavor("node2")), ("rke2", "k3s"));
    // a jumbo uplink does not raise it: the internet between sites carries 1500
    let jumbo = with(
        "    next_hop: node1\n",
        "    next_hop: node1\n    wan_mtu: 9000\n",
    );
    assert_eq!(Inv::new(&jumbo).plan().topology.network.mtu, 1420);
    let explicit = with(
        "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n",
        "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n  mtu: 1380\n",
    );
    assert_eq!(Inv::new(&explicit).plan().topology.network.mtu, 1380);
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml = with("10.100.1.0/24", "10.101.1.0/24")
        .replace("next_hop: node1", "next_hop: nodex")
        .replace("[192.168.0.0/24]", "[10.244.0.0/24]");
    let diags = Inv::new(&yaml).diagnostics();
    let errors = diags.iter().filter(|d| d.is_error()).count();
    assert!(errors >= 3, "{diags:?}");
}

#[test]
fn sites_lans_may_overlap_each_other() {
    let yaml = with(
        "        address: 192.168.1.10\n",
        "        address: 192.168.0.10\n",
    )
    .replace(
        "    wireguard_cidr: 10.100.1.0/24\n",
        "    wireguard_cidr: 10.100.1.0/24\n    lan_cidrs: [192.168.0.0/24]\n",
    );
    let d = Inv::new(&yaml).diagnostics();
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
}

#[test]
fn missing_cluster_cidrs_warns_loudly_about_kubeadm_default() {
    let yaml = BASE.replace("  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\n", "");
    let d = Inv::new(&yaml).diagnostics();
    let w = d
        .iter()
        .find(|d| d.field == "network.cluster_cidrs")
        .expect("a warning");
    assert!(!w.is_error());
    assert!(
        w.message.contains("10.96.0.0/12") && w.message.contains("OVERLAPS"),
        "{w}"
    );
    assert!(w.message.contains("--service-cidr"), "{w}");
    // a space away from 10.96.0.0/12 gets the quiet warning
    let yaml = yaml.replace("10.100.", "172.20.");
    let d = Inv::new(&yaml).diagnostics();
    let w = d
        .iter()
        .find(|d| d.field == "network.cluster_cidrs")
        .expect("a warning");
    assert!(!w.message.contains("OVERLAPS"), "{w}");
    assert!(w.message.contains("cannot check"), "{w}");
}

#[test]
fn one_node_site_may_omit_next_hop() {
    let p = Inv::new(BASE).plan();
    let office = p.topology.site("office").unwrap();
    assert_eq!(office.next_hop.as_deref(), Some("office1"));
}
