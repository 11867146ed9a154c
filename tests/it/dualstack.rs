//! Dual stack in the lab: `network.wireguard_cidr6` on the demo network. Every node gets an
//! IPv6 address of its site's IPv6 block beside its IPv4 one; every pair of nodes in different
//! sites pings over wg0 in both families, through the routers' NAT; the kubelet (kubeadm's
//! defaults file, k3s's config) advertises both; a second apply changes nothing and `status`
//! finds nothing wrong.

use super::apply::{Scenario, changed_hosts, demo_yaml, wg_ips};
use super::common::lab_available;

/// `from` pings `ip` over IPv6 within 10 tries.
fn ping6(s: &Scenario, from: &str, ip: &str) -> bool {
    (0..10).any(|_| {
        s.lab
            .exec(from, &["ping", "-6", "-c", "1", "-W", "1", ip])
            .0
            == 0
    })
}

#[test]
fn dual_stack_pairs_ping_over_ipv6_and_the_kubelet_gets_both_node_ips() {
    if !lab_available() {
        return;
    }
    let yaml = demo_yaml()
        .replace(
            "  wireguard_cidr: 10.100.0.0/16\n",
            "  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n",
        )
        .replace(
            "      cabin1:\n        address: 192.168.0.50\n",
            "      cabin1:\n        address: 192.168.0.50\n        kubernetes: k3s\n",
        );
    let s = Scenario::new("ds", &yaml, &yaml, &[]);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    let p = wgprov::topology::plan_inventory(&s.inv, false).unwrap();
    let net = &p.topology.network;
    let nodes: Vec<(String, String, String, String)> = wg_ips(&s)
        .into_iter()
        .map(|(n, site, ip)| {
            let ip6 = net.ip6_of(ip.parse().unwrap()).unwrap().to_string();
            (n, site, ip, ip6)
        })
        .collect();
    // wg0 carries both addresses
    for (n, _, ip, ip6) in &nodes {
        let addrs = s.lab.sh(n, "ip -o addr show dev wg0");
        assert!(
            addrs.contains(&format!(" {ip}/16 ")) && addrs.contains(&format!(" {ip6}/48 ")),
            "{n}: {addrs}"
        );
    }
    for (a, sa, _, _) in &nodes {
        for (b, sb, ip, ip6) in &nodes {
            if sa == sb {
                continue;
            }
            assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip})");
            assert!(ping6(&s, a, ip6), "{a} cannot ping {b} over IPv6 ({ip6})");
        }
    }
    assert_eq!(
        s.lab.sh("node2", "cat /etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.2,fd10:100::2\n"
    );
    let k3s = s.lab.sh(
        "cabin1",
        "cat /etc/rancher/k3s/config.yaml.d/50-wgprov.yaml",
    );
    assert!(
        k3s.contains("node-ip: [\"10.100.2.1\", \"fd10:100:0:2::1\"]\n"),
        "{k3s}"
    );
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert!(changed_hosts(&v).is_empty(), "a second apply changed: {v}");
    let inv = s.inv.to_str().unwrap();
    let r = s.wgprov(&["status", "-i", inv, "--format", "json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // a next-hop that stops forwarding IPv6 is named, and nothing else is blamed
    s.lab
        .sh("node1", "sysctl -qw net.ipv6.conf.all.forwarding=0");
    let r = s.wgprov(&["status", "-i", inv, "--format", "json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let problems: Vec<(String, String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap_or("-").to_string(),
                p["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        problems.len() == 1
            && problems[0].0 == "forwarding_off"
            && problems[0].1 == "node1"
            && problems[0].2.contains("net.ipv6.conf.all.forwarding = 0"),
        "{problems:?}"
    );
    s.assert_no_key_leaked();
}

/// A site reachable only over IPv6: its router forwards no IPv4 port and its IPv4 uplink carries
/// no WireGuard (behind CGNAT, say), and its endpoint is its next-hop's own IPv6 address, let in
/// by a pinhole in the router's IPv6 firewall. `plan` says pinhole, not port-forward; after apply its nodes reach every other site
/// in both families, and the WireGuard traffic came in through the pinhole.
#[test]
fn a_site_reachable_only_over_ipv6_joins_through_a_firewall_pinhole() {
    if !lab_available() {
        return;
    }
    let base = demo_yaml().replace(
        "  wireguard_cidr: 10.100.0.0/16\n",
        "  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n",
    );
    let s = Scenario::new("ds6", &base, &base, &["cabin"]);
    let v6 = wgprov::lab::ipv6::underlay(&s.lab.prefix, &["cabin"]).unwrap();
    // and its IPv4 uplink carries no WireGuard (a carrier-grade NAT that drops it, say): every
    // packet between cabin and the other sites must cross the IPv6 pinhole
    s.lab.sh(
        "cabin-router",
        "iptables -w -I FORWARD -i br-lan -o wan0 -p udp -j DROP",
    );
    let cabin1 = v6["cabin1"];
    let yaml = base.replace(
        "    endpoint: cabin.example.net:51821\n",
        &format!("    endpoint: \"[{cabin1}]:51820\"\n"),
    );
    std::fs::write(&s.inv, &yaml).unwrap();
    let inv = s.inv.to_str().unwrap();
    let plan = s.wgprov(&["plan", "-i", inv]);
    assert!(
        plan.stdout.contains(
            "site cabin (router: openwrt): no port-forward (the endpoint is IPv6, which is not translated): open a pinhole instead."
        ) && plan.stdout.contains(&format!("{cabin1}, port 51820")),
        "{}",
        plan.stdout
    );
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    let p = wgprov::topology::plan_inventory(&s.inv, false).unwrap();
    let net = &p.topology.network;
    for (b, site, ip) in wg_ips(&s) {
        if site == "cabin" {
            continue;
        }
        let ip6 = net.ip6_of(ip.parse().unwrap()).unwrap().to_string();
        assert!(s.ping("cabin1", &ip), "cabin1 cannot ping {b} ({ip})");
        assert!(
            ping6(&s, "cabin1", &ip6),
            "cabin1 cannot ping {b} over IPv6 ({ip6})"
        );
        assert!(
            ping6(&s, &b, "fd10:100:0:2::1"),
            "{b} cannot ping cabin1 over IPv6"
        );
    }
    // the handshakes came in through the pinhole: its counter moved
    let counters = s.lab.sh("cabin-router", "ip6tables -w -L FORWARD -v -n -x");
    let pinhole = counters
        .lines()
        .find(|l| l.contains("udp dpt:51820"))
        .unwrap_or_else(|| panic!("no pinhole rule:\n{counters}"));
    let packets: u64 = pinhole.split_whitespace().next().unwrap().parse().unwrap();
    assert!(packets > 0, "nothing came through the pinhole:\n{counters}");
}
