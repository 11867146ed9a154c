//! The command line as users type it: exit codes, what goes to stdout and stderr, files written.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use super::common::{Inv, root};

fn wgprov(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn home_copy() -> Inv {
    Inv::new(&std::fs::read_to_string(root().join("inventories/home.yaml")).unwrap())
}

#[test]
fn validate_ok_exits_0_and_never_writes_the_lock() {
    let inv = home_copy();
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(out.contains("ok (3 sites, 4 managed nodes)"), "{out}");
    assert!(!inv.lock_path().exists());
}

#[test]
fn validate_invalid_exits_2_with_every_problem() {
    let inv = Inv::new(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  listen_port: 0\nsites:\n  a:\n    nodes:\n      n1: {address: 1.2.3.4, wireguard_ip: 10.200.0.1}\n",
    );
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    let file = inv.path.display().to_string();
    assert!(
        out.contains(&format!("{file}:3:16: network.listen_port:")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{file}:7:")) && out.contains("sites.a.nodes.n1.wireguard_ip"),
        "{out}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn validate_json_lists_diagnostics() {
    let inv = Inv::new("network:\n  wireguard_cidr: 10.100.0.0/16\n  bogus: 1\nsites: {}\n");
    let o = wgprov(&[
        "validate",
        "-i",
        inv.path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["line"], 3);
    assert_eq!(v["diagnostics"][0]["field"], "network.bogus");
}

#[test]
fn missing_inventory_and_bad_usage_exit_2() {
    let missing = wgprov(&["validate", "-i", "/nonexistent/x.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing)
            .1
            .contains("cannot read inventory /nonexistent/x.yaml")
    );
    assert_eq!(wgprov(&["plan"]).status.code(), Some(2));
    assert_eq!(wgprov(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn plan_json_has_the_reference_addresses_and_writes_the_lock() {
    let inv = home_copy();
    let o = wgprov(&["plan", "-i", inv.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let home = &v["sites"][0];
    assert_eq!(home["wireguard_cidr"], "10.100.0.0/24");
    assert_eq!(home["nodes"][0]["name"], "node1");
    assert_eq!(home["nodes"][0]["wireguard_ip"], "10.100.0.1");
    assert_eq!(home["nodes"][0]["next_hop"], true);
    // next-hop: 2 members + office + friend
    assert_eq!(home["nodes"][0]["peers"].as_array().unwrap().len(), 4);
    let member_peer = &home["nodes"][1]["peers"][0];
    assert_eq!(member_peer["allowed_ips"][0], "10.100.0.0/16");
    assert_eq!(member_peer["endpoint"], "192.168.0.10:51820");
    assert!(inv.lock_path().exists());
    let t = wgprov(&["plan", "-i", inv.path.to_str().unwrap()]);
    assert!(text(&t).0.contains("node1            10.100.0.1"));
}

#[test]
fn render_writes_each_file_with_its_mode_and_prints_no_key() {
    let inv = home_copy();
    let out = inv.dir.path().join("out");
    let o = wgprov(&[
        "render",
        "-i",
        inv.path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (so, se) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{se}");
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("node1/etc/wireguard/wg0.conf"), 0o600);
    assert_eq!(mode("node1/etc/default/kubelet"), 0o644);
    assert_eq!(mode("node3/etc/sysconfig/kubelet"), 0o644);
    assert_eq!(mode("node1/etc/wgprov/port-forward.md"), 0o644);
    assert_eq!(mode("node1/etc/sysctl.d/99-wgprov.conf"), 0o644);
    assert!(
        !out.join("node2/etc/sysctl.d/99-wgprov.conf").exists(),
        "members do not forward"
    );
    let kubelet = std::fs::read_to_string(out.join("node3/etc/sysconfig/kubelet")).unwrap();
    assert_eq!(kubelet, "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.3\n");
    let pf = std::fs::read_to_string(out.join("node1/etc/wgprov/port-forward.md")).unwrap();
    assert!(
        pf.contains("| UDP | 51820 | 192.168.0.10 | 51820 |") && pf.contains("OPNsense"),
        "{pf}"
    );
    // no private key in anything printed
    for node in ["node1", "node2", "node3", "office1"] {
        let conf = std::fs::read_to_string(out.join(node).join("etc/wireguard/wg0.conf")).unwrap();
        let key = wgprov::facts::wgconf::WgConfig::parse(&conf)
            .private_key()
            .unwrap()
            .to_string();
        assert!(!so.contains(&key) && !se.contains(&key));
    }
}

/// An OpenWrt router as its site's hub: render writes its uci script (0700, the key inside on
/// one line) and no wg-quick file, and the members peer with it as with a next-hop node.
#[test]
fn render_of_an_openwrt_hub_writes_its_uci_script_and_no_wg0_conf() {
    let inv = Inv::new(
        "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16]
sites:
  home:
    endpoint: home.example.net:51820
    next_hop: router
    router: { kind: openwrt, address: 192.168.0.1, wan_interface: wan }
    nodes:
      node1: { address: 192.168.0.10 }
  office:
    router: opnsense
    nodes:
      office1: { address: 192.168.10.5 }
",
    );
    let out = inv.dir.path().join("out");
    let o = wgprov(&[
        "render",
        "-i",
        inv.path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (so, se) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{se}");
    let hub = out.join("home-router/etc/wgprov/router-hub.sh");
    let mode = std::fs::metadata(&hub).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    assert!(!out.join("home-router/etc/wireguard/wg0.conf").exists());
    assert!(!out.join("home-router/etc/wgprov/router-pf.sh").exists());
    assert!(!out.join("home-router/etc/sysctl.d").exists());
    let script = std::fs::read_to_string(&hub).unwrap();
    for needle in [
        "uci add_list network.wg0.addresses='10.100.0.1/16' || exit 1",
        "uci set network.wgprov_peer_1.description='node1' || exit 1",
        "uci add_list network.wgprov_peer_2.allowed_ips='10.100.1.0/24' || exit 1",
        "uci set firewall.wgprov_wg_in.dest_port='51820' || exit 1",
    ] {
        assert!(script.contains(needle), "no {needle:?} in\n{script}");
    }
    let key = script
        .lines()
        .find_map(|l| l.strip_prefix("private_key='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap()
        .to_string();
    assert!(!so.contains(&key) && !se.contains(&key));
    // the member peers with the router's .1 on its LAN address, as with a next-hop node
    let member = std::fs::read_to_string(out.join("node1/etc/wireguard/wg0.conf")).unwrap();
    assert!(member.contains("Endpoint = 192.168.0.1:51820"), "{member}");
    assert!(member.contains("Address = 10.100.0.2/16"), "{member}");
}

#[test]
fn roles_path_overrides_the_embedded_roles_and_strict_templates_fail_cleanly() {
    let inv = home_copy();
    let roles = inv.dir.path().join("myroles");
    for (rel, text) in wgprov::roles::EMBEDDED {
        if let Some(r) = rel.strip_prefix("roles/") {
            let p = roles.join(r);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }
    let out = inv.dir.path().join("out");
    let render_with_roles = || {
        let (i, o, r) = (
            inv.path.to_str().unwrap(),
            out.to_str().unwrap(),
            roles.to_str().unwrap(),
        );
        wgprov(&["render", "-i", i, "--out", o, "--roles-path", r])
    };
    std::fs::write(
        roles.join("forwarding/templates/sysctl.conf.j2"),
        "net.ipv4.ip_forward = 1\n# custom\n",
    )
    .unwrap();
    let o = render_with_roles();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let s = std::fs::read_to_string(out.join("node1/etc/sysctl.d/99-wgprov.conf")).unwrap();
    assert!(s.contains("# custom"));
    std::fs::write(
        roles.join("forwarding/templates/sysctl.conf.j2"),
        "x = {{ no_such_variable }}\n",
    )
    .unwrap();
    let o = render_with_roles();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("role forwarding")
            && err.contains("sysctl.conf.j2")
            && err.contains("undefined"),
        "{err}"
    );
}

#[test]
fn graph_is_dot_with_sites_as_clusters() {
    let inv = home_copy();
    let o = wgprov(&["graph", "-i", inv.path.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert!(out.starts_with("graph wgprov {"));
    assert!(out.contains("subgraph \"cluster_home\""));
    assert!(
        out.contains("\"node1\" -- \"office1\" [style=bold, label="),
        "{out}"
    );
    assert!(out.contains("peripheries=2"));
    assert!(out.trim_end().ends_with('}'));
}

#[test]
fn a_role_path_that_could_forge_backup_manifest_lines_is_refused_before_any_host() {
    let inv = home_copy();
    let roles = inv.dir.path().join("myroles");
    for (rel, text) in wgprov::roles::EMBEDDED {
        if let Some(r) = rel.strip_prefix("roles/") {
            let p = roles.join(r);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }
    let role = roles.join("forwarding/role.yaml");
    let original = std::fs::read_to_string(&role).unwrap();
    let (i, r) = (inv.path.to_str().unwrap(), roles.to_str().unwrap());
    for bad in [
        // a newline would add a manifest line that rollback acts on
        "\"/etc/sysctl.d/99-wgprov.conf\\n0 absent /etc/passwd\"",
        "\"/etc/sysctl.d/../../root/x\"",
        "\"/etc/sysctl.d/$(id).conf\"",
        "\"/etc/sysctl.d/{{ '; rm -rf /' }}.conf\"",
    ] {
        let edited = original.replacen(
            "path: /etc/sysctl.d/99-wgprov.conf",
            &format!("path: {bad}"),
            1,
        );
        assert_ne!(edited, original, "the role file changed");
        std::fs::write(&role, edited).unwrap();
        // the inventory's hosts do not exist: contacting one would hang until the timeout
        let t = std::time::Instant::now();
        let o = wgprov(&[
            "apply",
            "-i",
            i,
            "--roles-path",
            r,
            "--connect-timeout",
            "30",
        ]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("role forwarding") && err.contains("path"),
            "{err}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "a host was contacted"
        );
    }
}
