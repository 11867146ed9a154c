//! Dual stack in the lab: `network.wireguard_cidr6` on the demo network. Every node gets an
//! IPv6 address of its site's IPv6 block beside its IPv4 one; every pair of nodes in different
//! sites pings over wg0 in both families, through the routers' NAT; the kubelet (kubeadm's
//! defaults file, k3s's config) advertises both; a second apply changes nothing and `status`
//! finds nothing wrong.

use super::apply::{Scenario, changed_hosts, demo_yaml, wg_ips};
use super::common::lab_available;

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
            let six =
                (0..10).any(|_| s.lab.exec(a, &["ping", "-6", "-c", "1", "-W", "1", ip6]).0 == 0);
            assert!(six, "{a} cannot ping {b} over IPv6 ({ip6})");
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
    s.assert_no_key_leaked();
}
