//! `state: absent` in the lab: a member, then a whole site (and a member whose sshd does not
//! answer) taken out in guarded runs. Real sshd, real WireGuard, packets through the routers'
//! NAT.

use super::apply::{Scenario, changed_hosts, demo_yaml, statuses, wg_ips};
use super::common::lab_available;

/// Marks node `node` (its whole block in the demo inventory) `state: absent`.
fn node_absent(yaml: &str, node: &str, address: &str) -> String {
    let from = format!("      {node}:\n        address: {address}\n");
    assert!(yaml.contains(&from), "{node} not in the inventory");
    yaml.replace(
        &from,
        &format!("      {node}:\n        address: {address}\n        state: absent\n"),
    )
}

/// The public key of `node`'s wg0.
fn public_key(s: &Scenario, node: &str) -> String {
    s.lab.sh(node, "wg show wg0 public-key").trim().to_string()
}

/// No remaining node has `key` as a peer, running or in its file.
fn nobody_peers_with(s: &Scenario, remaining: &[(String, String, String)], key: &str, who: &str) {
    for (n, _, _) in remaining {
        let running = s.lab.sh(n, "wg show wg0 peers");
        let file = s.lab.sh(n, "cat /etc/wireguard/wg0.conf");
        assert!(
            !running.contains(key) && !file.contains(key),
            "{n} still peers with {who}:\n{running}\n{file}"
        );
    }
}

/// Every remaining pair of nodes in different sites pings over wg0.
fn pairs_ping(s: &Scenario, remaining: &[(String, String, String)]) {
    for (a, sa, _) in remaining {
        for (b, sb, ip) in remaining {
            if sa != sb {
                assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip})");
            }
        }
    }
}

/// What a node taken out has left: no wg0, none of wgprov's files, its config kept 0600, its
/// kubelet file given back as it was before wgprov.
fn assert_cleaned(s: &Scenario, node: &str, kubelet: Option<(&str, &str)>) {
    assert_ne!(
        s.lab.exec(node, &["ip", "link", "show", "wg0"]).0,
        0,
        "{node}: wg0 still exists"
    );
    let left = s.lab.sh(
        node,
        "ls /etc/wireguard/wg0.conf /etc/sysctl.d/99-wgprov.conf /etc/wgprov/port-forward.md 2>/dev/null || true",
    );
    assert_eq!(left.trim(), "", "{node}: wgprov's files are still there");
    let kept = s.lab.sh(
        node,
        "stat -c %a /var/lib/wgprov/removed/wg0.conf && grep -c '^\\[Interface\\]' /var/lib/wgprov/removed/wg0.conf",
    );
    assert_eq!(kept, "600\n1\n", "{node}: the config is not kept");
    if let Some((path, before)) = kubelet {
        assert_eq!(s.lab.sh(node, &format!("cat {path}")), before, "{node}");
    }
}

#[test]
fn a_member_then_a_site_and_an_unreachable_member_are_taken_out_cleanly() {
    if !lab_available() {
        return;
    }
    let base = demo_yaml();
    let s = Scenario::new("rm", &base, &base, &[]);
    // node3 (Red Hat family) has kubelet flags of its own before wgprov comes
    let kubelet = "# flags of this node\nKUBELET_EXTRA_ARGS=\"--max-pods=50\"\n";
    s.lab.sh(
        "node3",
        &format!(
            "mkdir -p /etc/sysconfig && printf '{}' > /etc/sysconfig/kubelet",
            kubelet.replace('\n', "\\n")
        ),
    );
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert!(
        s.lab
            .sh("node3", "cat /etc/sysconfig/kubelet")
            .contains("--node-ip=10.100.0.3")
    );
    let node3_key = public_key(&s, "node3");

    // a member: its next-hop drops it, it is cleaned, the rest still pings
    let yaml = node_absent(&base, "node3", "192.168.0.12");
    std::fs::write(&s.inv, &yaml).unwrap();
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(changed_hosts(&v), ["node1", "node3"], "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    let remaining = wg_ips(&s);
    assert!(!remaining.iter().any(|(n, _, _)| n == "node3"));
    nobody_peers_with(&s, &remaining, &node3_key, "node3");
    assert_cleaned(&s, "node3", Some(("/etc/sysconfig/kubelet", kubelet)));
    pairs_ping(&s, &remaining);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert!(changed_hosts(&v).is_empty(), "a second apply changed: {v}");
    let lock = std::fs::read_to_string(s.inv.with_file_name("inv.lock.yaml")).unwrap();
    assert!(
        lock.contains("    retired_nodes:\n      node3: 10.100.0.3\n"),
        "{lock}"
    );

    // a whole site, and a member whose sshd does not answer: dropped everywhere all the same,
    // the run warns that office2 was not cleaned, and does not fail for it
    let cabin1_key = public_key(&s, "cabin1");
    let office2_key = public_key(&s, "office2");
    let yaml = node_absent(&yaml, "office2", "192.168.10.6")
        .replace("  cabin:\n", "  cabin:\n    state: absent\n");
    std::fs::write(&s.inv, &yaml).unwrap();
    s.lab.signal_sshd("office2", "STOP");
    let r = s.apply(&["--format", "json"]);
    s.lab.signal_sshd("office2", "CONT");
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", r.stdout, r.stderr));
    assert_eq!(r.code, 0, "{v}\n{}", r.stderr);
    let st = statuses(&v);
    assert!(
        st.contains(&("office2".into(), "unreachable".into())),
        "{st:?}"
    );
    for n in ["cabin1", "node1", "office1"] {
        assert!(st.contains(&(n.into(), "changed".into())), "{n}: {st:?}");
    }
    let warned = v["warnings"].to_string();
    assert!(
        warned.contains("office2 (state: absent) could not be reached")
            && warned.contains("not cleaned"),
        "{warned}"
    );
    let remaining = wg_ips(&s);
    assert_eq!(
        remaining.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["node1", "node2", "office1"]
    );
    nobody_peers_with(&s, &remaining, &cabin1_key, "cabin1");
    nobody_peers_with(&s, &remaining, &office2_key, "office2");
    assert_cleaned(&s, "cabin1", None);
    pairs_ping(&s, &remaining);
    let lock = std::fs::read_to_string(s.inv.with_file_name("inv.lock.yaml")).unwrap();
    assert!(
        lock.contains("  cabin:\n    wireguard_cidr: 10.100.2.0/24\n    retired: true\n    retired_nodes:\n      cabin1: 10.100.2.1\n")
            && lock.contains("      office2: 10.100.1.2\n"),
        "{lock}"
    );
    // nothing left to do (office2 answers again now: it is cleaned by this run)
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(changed_hosts(&v), ["office2"], "{v}");
    assert_cleaned(&s, "office2", None);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert!(changed_hosts(&v).is_empty(), "{v}");
    s.assert_no_key_leaked();
}
