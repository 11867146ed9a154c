use std::path::Path;

use crate::error::Error;
use crate::inventory::load_str;

#[test]
fn a_space_smaller_than_the_default_site_block_is_an_error_not_a_panic() {
    // found by the inventory fuzz target: a /25../32 space with the default /24 site
    // prefix passed validation and the allocator panicked cutting it into /24 blocks
    for (space, ok) in [
        ("10.100.0.0/25", false),
        ("10.100.0.0/32", false),
        ("10.100.0.0/24", true),
    ] {
        let inv = format!(
            "network:\n  wireguard_cidr: {space}\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        );
        match load_str(Path::new("inv.yaml"), &inv) {
            Ok(_) => assert!(ok, "{space} accepted"),
            Err(Error::Invalid(d)) => {
                assert!(!ok, "{space}: {d:?}");
                assert!(
                    d.iter().any(|x| x.field == "network.wireguard_cidr"
                        && x.message.contains("default site_prefix")),
                    "{d:?}"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A managed router's checks.
mod router_tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::{ManagedKind, RouterKind, load_str};

    fn inv(router: &str) -> String {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nssh:\n  user: admin\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: {router}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        )
    }

    fn errors(text: &str) -> Vec<(u32, String, String)> {
        match load_str(Path::new("inv.yaml"), text) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(d)) => d
                .into_iter()
                .filter(|x| x.is_error())
                .map(|x| (x.line, x.field, x.message))
                .collect(),
            Err(e) => vec![(0, String::new(), e.to_string())],
        }
    }

    #[test]
    fn a_router_is_a_name_or_a_managed_mapping() {
        let l = load_str(Path::new("inv.yaml"), &inv("opnsense")).unwrap();
        assert_eq!(l.inventory.sites[0].router, RouterKind::Opnsense);
        assert!(l.inventory.sites[0].managed_router.is_none());
        let m = "\n      kind: linux\n      address: 192.168.0.1\n      wan_interface: eth0\n      ssh: { port: 2222 }";
        let l = load_str(Path::new("inv.yaml"), &inv(m)).unwrap();
        let r = l.inventory.sites[0].managed_router.clone().unwrap();
        assert_eq!(r.name, "home-router");
        assert_eq!(r.kind, ManagedKind::Linux);
        assert_eq!(r.wan_interface.to_string(), "eth0");
        // the top-level ssh defaults apply, the router's own win
        assert_eq!((r.ssh.user.as_str(), r.ssh.port), ("admin", 2222));
        assert_eq!(r.ssh.host, "192.168.0.1");
    }

    #[test]
    fn a_bad_managed_router_is_named_by_line_and_field() {
        let m = "\n      kind: mikrotik\n      address: 'a b'\n      wan_interface: 'eth0;reboot'\n      ssh: { port: 0 }";
        let e = errors(&inv(m));
        let has = |line: u32, field: &str, what: &str| {
            e.iter()
                .any(|(l, f, msg)| *l == line && f == field && msg.contains(what))
        };
        assert!(
            has(
                10,
                "sites.home.router.kind",
                "`mikrotik` is not one of linux, openwrt"
            ),
            "{e:?}"
        );
        assert!(
            has(11, "sites.home.router.address", "neither an IP address"),
            "{e:?}"
        );
        assert!(has(12, "sites.home.router.wan_interface", ""), "{e:?}");
        assert!(
            has(13, "sites.home.router.ssh.port", "outside 1-65535"),
            "{e:?}"
        );
        // unknown keys are refused inside the mapping too, and a missing one is named
        let e = errors(&inv(
            "{ kind: linux, address: 192.168.0.1, wan_iface: eth0 }",
        ));
        assert!(
            e.iter().any(|(l, _, m)| *l == 9 && m.contains("wan_iface")),
            "{e:?}"
        );
        let e = errors(&inv("mikrotik"));
        assert!(
            e.iter()
                .any(|(l, f, _)| *l == 9 && f == "sites.home.router"),
            "{e:?}"
        );
    }

    #[test]
    fn a_managed_routers_next_hop_needs_an_ipv4_address() {
        let text = inv("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }")
            .replace("address: 192.168.0.10", "address: n1.lan");
        let e = errors(&text);
        assert!(
            e.iter().any(|(l, f, m)| *l == 11
                && f == "sites.home.nodes.n1.address"
                && m.contains("DNAT rule")),
            "{e:?}"
        );
        // a router wgprov does not manage: a name is fine
        assert!(
            errors(&inv("other").replace("address: 192.168.0.10", "address: n1.lan")).is_empty()
        );
    }

    #[test]
    fn next_hop_router_makes_a_managed_linux_router_the_sites_hub() {
        let hub = |router: &str, port: u16| {
            inv(router)
                .replace("203.0.113.10:51820", &format!("203.0.113.10:{port}"))
                .replace("    router:", "    next_hop: router\n    router:")
        };
        let l = load_str(
            Path::new("inv.yaml"),
            &hub(
                "{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }",
                51820,
            ),
        )
        .unwrap();
        let site = &l.inventory.sites[0];
        assert_eq!(site.next_hop.as_deref(), Some("home-router"));
        let r = site.nodes.iter().find(|n| n.is_router).unwrap();
        assert_eq!(
            (r.name.as_str(), r.address.as_str()),
            ("home-router", "192.168.0.1")
        );
        let (topo, _) =
            crate::topology::Topology::build(&l.inventory, &Default::default()).unwrap();
        let hub_plan = topo.node("home-router").unwrap();
        assert!(hub_plan.is_next_hop && hub_plan.is_router);
        assert_eq!(hub_plan.wireguard_ip.to_string(), "10.100.0.1");
        assert_eq!(topo.ssh_targets().len(), 2, "the hub is connected to once");

        let e = errors(&hub(
            "{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }",
            4500,
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.next_hop" && m.contains("must be 51820 too")),
            "{e:?}"
        );
        let e = errors(&hub(
            "{ kind: openwrt, address: 192.168.0.1, wan_interface: wan }",
            4500,
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.next_hop" && m.contains("must be 51820 too")),
            "the same port rule for an OpenWrt hub: {e:?}"
        );
        // a hub router wgprov does not manage needs what wgprov cannot read from it
        let e = errors(&hub("opnsense", 51820));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.public_key" && m.contains("Generate new keypair")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|(_, f, _)| f == "sites.home.router_address"),
            "{e:?}"
        );
    }

    #[test]
    fn next_hop_router_makes_a_managed_openwrt_router_the_sites_hub() {
        let hub = inv("{ kind: openwrt, address: 192.168.0.1, wan_interface: wan }")
            .replace("    router:", "    next_hop: router\n    router:");
        let l = load_str(Path::new("inv.yaml"), &hub).unwrap();
        let site = &l.inventory.sites[0];
        assert_eq!(site.next_hop.as_deref(), Some("home-router"));
        let (topo, _) =
            crate::topology::Topology::build(&l.inventory, &Default::default()).unwrap();
        let r = topo.node("home-router").unwrap();
        assert!(r.is_next_hop && r.is_router);
        assert_eq!(r.wireguard_ip.to_string(), "10.100.0.1");
        // its interface is a uci section: letters, digits and _ only
        let e = errors(&hub.replace("network:\n", "network:\n  interface: wg-mesh\n"));
        assert!(
            e.iter().any(|(_, f, m)| f == "sites.home.next_hop"
                && m.contains("uci section names are letters, digits and _ only")),
            "{e:?}"
        );
        // lan_access is built for wg-quick only
        let e = errors(&hub.replace(
            "    endpoint:",
            "    lan_cidrs: [192.168.0.0/24]\n    lan_access: true\n    endpoint:",
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.lan_access" && m.contains("not built yet")),
            "{e:?}"
        );
    }

    #[test]
    fn a_managed_router_is_read_from_the_openssh_config_like_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host home-router\n  HostName 192.168.0.254\n  User admin\n  Port 2200\n  IdentityFile ~/.ssh/router_key\n",
        )
        .unwrap();
        for next_hop in ["n1", "router"] {
            let text = inv(
                "{ kind: linux, address: 192.168.0.1, wan_interface: eth0, ssh: { port: 22 } }",
            )
            .replace(
                "ssh:\n  user: admin\n",
                &format!("ssh:\n  config_file: {}\n", cfg.display()),
            )
            .replace(
                "    router:",
                &format!("    next_hop: {next_hop}\n    router:"),
            );
            let l = load_str(Path::new("inv.yaml"), &text).unwrap();
            let site = &l.inventory.sites[0];
            let ssh = if next_hop == "router" {
                site.nodes.iter().find(|n| n.is_router).unwrap().ssh.clone()
            } else {
                assert!(
                    site.nodes.iter().all(|n| !n.is_router),
                    "the lookup node is gone"
                );
                site.managed_router.as_ref().unwrap().ssh.clone()
            };
            assert_eq!(ssh.host, "192.168.0.254", "{next_hop}");
            assert_eq!(ssh.user, "admin");
            assert_eq!(ssh.port, 22, "written in the inventory: it wins");
            assert!(ssh.identity_file.unwrap().ends_with("/.ssh/router_key"));
        }
    }

    #[test]
    fn a_node_cannot_take_the_managed_routers_name() {
        let text = inv("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }")
            .replace("n1:", "home-router:");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.router" && m.contains("rename the node")),
            "{e:?}"
        );
    }
}

/// `network.metrics`: `textfile` or `none` (the default); anything else is named by line and
/// field.
#[test]
fn network_metrics_is_textfile_or_none() {
    use crate::inventory::Metrics;
    let inv = |m: &str| {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n{m}sites:\n  home:\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        )
    };
    for (line, want) in [
        ("", Metrics::None),
        ("  metrics: none\n", Metrics::None),
        ("  metrics: textfile\n", Metrics::Textfile),
    ] {
        let l = load_str(Path::new("inv.yaml"), &inv(line)).unwrap();
        assert_eq!(l.inventory.network.metrics, want, "{line}");
    }
    match load_str(Path::new("inv.yaml"), &inv("  metrics: prometheus\n")) {
        Err(Error::Invalid(d)) => assert!(
            d.iter().any(|x| x.is_error()
                && x.line == 4
                && x.field == "network.metrics"
                && x.message
                    .contains("`prometheus` is not one of textfile, none")),
            "{d:?}"
        ),
        other => panic!("accepted: {:?}", other.map(|l| l.inventory.network.metrics)),
    }
}

/// `state: absent` on nodes and sites.
mod absent_tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    const BASE: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: h.example.net:51820\n    next_hop: n1\n    nodes:\n      n1: { address: 192.168.0.10 }\n      n2: { address: 192.168.0.11 }\n  cabin:\n    nodes:\n      c1: { address: 192.168.5.10 }\n";

    fn errors(yaml: &str) -> Vec<crate::error::Diagnostic> {
        match load_str(Path::new("inv.yaml"), yaml) {
            Err(Error::Invalid(d)) => d,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn absent_nodes_and_sites_leave_the_mesh_and_are_listed_to_take_out() {
        let y = BASE
            .replace(
                "n2: { address: 192.168.0.11 }",
                "n2: { address: 192.168.0.11, state: absent }",
            )
            .replace("  cabin:\n", "  cabin:\n    state: absent\n");
        let inv = load_str(Path::new("inv.yaml"), &y).unwrap().inventory;
        let names: Vec<&str> = inv.nodes().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1"]);
        let removed: Vec<(&str, &str)> = inv
            .removed
            .iter()
            .map(|n| (n.name.as_str(), n.site.as_str()))
            .collect();
        assert_eq!(removed, [("n2", "home"), ("c1", "cabin")]);
        assert_eq!(inv.removed_sites.len(), 1);
        assert!(inv.site("cabin").is_none());
        // a removed site without an endpoint no longer counts as one that cannot be reached
        let two_without = y.replace("    endpoint: h.example.net:51820\n", "");
        assert!(load_str(Path::new("inv.yaml"), &two_without).is_ok());
    }

    #[test]
    fn a_next_hop_cannot_be_removed_while_it_is_one() {
        let y = BASE.replace(
            "n1: { address: 192.168.0.10 }",
            "n1: { address: 192.168.0.10, state: absent }",
        );
        let d = errors(&y);
        assert!(
            d.iter().any(|x| x.field == "sites.home.next_hop"
                && x.line == 7
                && x.message.contains("next-hop")
                && x.message.contains("whole site absent")),
            "{d:?}"
        );
        // a one-node site's only node is its next-hop too
        let y = BASE.replace(
            "c1: { address: 192.168.5.10 }",
            "c1: { address: 192.168.5.10, state: absent }",
        );
        assert!(
            errors(&y)
                .iter()
                .any(|x| x.field == "sites.cabin.next_hop" && x.message.contains("c1")),
        );
    }

    #[test]
    fn a_state_other_than_present_or_absent_is_located() {
        let y = BASE.replace(
            "n2: { address: 192.168.0.11 }",
            "n2: { address: 192.168.0.11, state: gone }",
        );
        let d = errors(&y);
        assert!(
            d.iter().any(|x| x.field == "sites.home.nodes.n2.state"
                && x.line == 10
                && x.message.contains("present, absent")),
            "{d:?}"
        );
    }
}

/// Dual stack: `wireguard_cidr6`, `site_prefix6`, and the IPv6 counterparts of addresses.
mod dual_tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    fn inv(network_extra: &str) -> String {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16, fd00:244::/56]\n{network_extra}sites:\n  home:\n    endpoint: h.example.net:51820\n    lan_cidrs: [192.168.0.0/24, fd10:100:0:9::/64]\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        )
    }

    fn errors(yaml: &str) -> Vec<crate::error::Diagnostic> {
        match load_str(Path::new("inv.yaml"), yaml) {
            Err(Error::Invalid(d)) => d,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn ipv6_addresses_mirror_the_ipv4_plan() {
        let loaded = load_str(
            Path::new("inv.yaml"),
            &inv("  wireguard_cidr6: fd20:100::/48\n"),
        )
        .unwrap();
        let net = &loaded.inventory.network;
        let ip6 = |s: &str| net.ip6_of(s.parse().unwrap()).unwrap().to_string();
        assert_eq!(ip6("10.100.0.1"), "fd20:100::1");
        assert_eq!(ip6("10.100.2.17"), "fd20:100:0:2::11");
        assert_eq!(ip6("10.100.255.254"), "fd20:100:0:ff::fe");
        let net6 = |s: &str| net.net6_of(s.parse().unwrap()).unwrap().to_string();
        assert_eq!(net6("10.100.0.0/16"), "fd20:100::/48");
        assert_eq!(net6("10.100.3.0/24"), "fd20:100:0:3::/64");
        assert_eq!(net6("10.100.3.9/32"), "fd20:100:0:3::9/128");
        assert!(net.ip6_of("10.200.0.1".parse().unwrap()).is_none());
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.field != "network.wireguard_cidr6")
        );
    }

    #[test]
    fn a_bad_ipv6_space_is_located() {
        for (extra, field, line, what) in [
            (
                "  wireguard_cidr6: 10.1.0.0/16\n",
                "network.wireguard_cidr6",
                4,
                "is IPv4",
            ),
            (
                "  wireguard_cidr6: fd10:100::1/48\n",
                "network.wireguard_cidr6",
                4,
                "host bits",
            ),
            (
                "  site_prefix6: 64\n",
                "network.site_prefix6",
                4,
                "needs network.wireguard_cidr6",
            ),
            (
                "  wireguard_cidr6: fd10:100::/48\n  site_prefix6: 50\n",
                "network.site_prefix6",
                5,
                "cannot mirror",
            ),
            (
                "  wireguard_cidr6: fd10:100::/48\n",
                "sites.home.lan_cidrs[1]",
                8,
                "overlaps the IPv6",
            ),
            (
                "  wireguard_cidr6: fd00:244::/48\n",
                "network.cluster_cidrs[1]",
                3,
                "overlaps the IPv6",
            ),
        ] {
            let d = errors(&inv(extra));
            assert!(
                d.iter()
                    .any(|x| x.field == field && x.line == line && x.message.contains(what)),
                "{extra}: {d:?}"
            );
        }
        let w = load_str(
            Path::new("inv.yaml"),
            &inv("  wireguard_cidr6: 2001:db8:100::/48\n"),
        )
        .unwrap()
        .warnings;
        assert!(
            w.iter().any(|x| x.field == "network.wireguard_cidr6" && x.message.contains("unique local")),
            "{w:?}"
        );
    }
}
