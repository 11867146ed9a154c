//! The lab, checked without wgprov's own apply: SSH from the controller, per-node filesystems,
//! NAT, port-forwards, a hand-made WireGuard tunnel through both NATs, and a teardown that
//! leaves nothing behind.

use std::path::Path;

use super::common::{LabGuard, lab_available, root};

/// A copy of the demo inventory (so that the lock file stays out of the repository), removed
/// when the returned directory is dropped.
fn demo(_tag: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("demo.yaml");
    std::fs::copy(root().join("inventories/demo.yaml"), &p).unwrap();
    (dir, p)
}

/// Packets counted by an `iptables` rule accepting UDP to `port` in `name`'s INPUT chain.
fn count_udp(lab: &LabGuard, name: &str, port: u16) -> u64 {
    let out = lab.sh(name, "iptables -L INPUT -v -n -x");
    out.lines()
        .find(|l| l.contains("udp") && l.contains(&format!("dpt:{port}")))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counting rule in {name}:\n{out}"))
}

fn send_udp(lab: &LabGuard, from: &str, to: &str, port: u16) {
    // bash's /dev/udp: one datagram, no extra tools
    lab.sh(
        from,
        &format!("bash -c 'echo probe > /dev/udp/{to}/{port}'"),
    );
}

fn wan(lab: &LabGuard, site: &str) -> String {
    lab.state.wan[site].to_string()
}

#[test]
fn demo_lab_ssh_isolation_nat_and_port_forward() {
    if !lab_available() {
        return;
    }
    let (_dir, inv) = demo("a");
    let lab = LabGuard::up(&inv, "a", &[]);
    // the controller reaches every node over SSH with the lab's key and known_hosts, strictly
    for (node, addr) in &lab.state.addresses {
        let (code, out, err) = lab.exec(
            "controller",
            &[
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                &format!("root@{addr}"),
                "hostname; . /etc/os-release; echo $ID",
            ],
        );
        assert_eq!(code, 0, "ssh {node}: {err}");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(node.as_str()));
        let id = lines.next().unwrap();
        assert_eq!(
            id,
            if node == "node3" { "rocky" } else { "debian" },
            "{node}"
        );
    }
    // each node sees only its own /etc/wireguard
    lab.sh(
        "node1",
        "mkdir -p /etc/wireguard && echo node1 > /etc/wireguard/marker",
    );
    assert_eq!(lab.sh("node1", "cat /etc/wireguard/marker"), "node1\n");
    let (code, _, _) = lab.exec("node2", &["test", "-e", "/etc/wireguard/marker"]);
    assert_ne!(code, 0, "node2 sees node1's /etc/wireguard");
    assert!(
        !Path::new("/etc/wireguard/marker").exists(),
        "the machine's /etc/wireguard was written"
    );
    // a node reaches the internet through its router's NAT: the internet sees the router's WAN address
    lab.sh(
        "internet",
        "iptables -A INPUT -p icmp -s 203.0.113.10 -j ACCEPT",
    );
    lab.sh("node2", "ping -c 2 -W 2 192.0.2.1 >/dev/null");
    let seen = lab.sh("internet", "iptables -L INPUT -v -n -x");
    let pkts: u64 = seen
        .lines()
        .find(|l| l.contains("203.0.113.10"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        pkts >= 2,
        "pings did not arrive masqueraded as the router's WAN address:\n{seen}"
    );
    // UDP to a site's public endpoint arrives at its next-hop
    lab.sh("node1", "iptables -A INPUT -p udp --dport 51820 -j ACCEPT");
    assert_eq!(count_udp(&lab, "node1", 51820), 0);
    send_udp(&lab, "internet", &wan(&lab, "home"), 51820);
    send_udp(&lab, "office2", &wan(&lab, "home"), 51820);
    assert_eq!(count_udp(&lab, "node1", 51820), 2);
    // cabin's endpoint is a name, resolved inside the lab, and its public port is 51821
    assert_eq!(
        lab.sh("node2", "getent hosts cabin.example.net | cut -d' ' -f1")
            .trim(),
        wan(&lab, "cabin")
    );
    lab.sh("cabin1", "iptables -A INPUT -p udp --dport 51820 -j ACCEPT");
    send_udp(&lab, "internet", &wan(&lab, "cabin"), 51821);
    assert_eq!(count_udp(&lab, "cabin1", 51820), 1);
}

#[test]
fn without_the_port_forward_udp_never_reaches_the_next_hop() {
    if !lab_available() {
        return;
    }
    let (_dir, inv) = demo("b");
    let lab = LabGuard::up(&inv, "b", &["office"]);
    for n in ["node1", "office1"] {
        lab.sh(n, "iptables -A INPUT -p udp --dport 51820 -j ACCEPT");
    }
    send_udp(&lab, "internet", &wan(&lab, "office"), 51820);
    send_udp(&lab, "internet", &wan(&lab, "home"), 51820);
    assert_eq!(
        count_udp(&lab, "office1", 51820),
        0,
        "office has no port-forward"
    );
    assert_eq!(
        count_udp(&lab, "node1", 51820),
        1,
        "home's port-forward still works"
    );
}

#[test]
fn hand_written_wireguard_tunnel_crosses_both_nats() {
    if !lab_available() {
        return;
    }
    let (_dir, inv) = demo("c");
    let lab = LabGuard::up(&inv, "c", &[]);
    let key = |n: &str| {
        lab.sh(
            n,
            "umask 077; wg genkey | tee /etc/wireguard/key | wg pubkey",
        )
        .trim()
        .to_string()
    };
    let (pub1, pub2) = (key("node1"), key("office1"));
    let conf = |addr: &str, peer: &str, allowed: &str, endpoint: &str| {
        format!(
            "umask 077; printf '[Interface]\\nAddress = {addr}\\nListenPort = 51820\\nPrivateKey = %s\\n\\n[Peer]\\nPublicKey = {peer}\\nAllowedIPs = {allowed}\\nEndpoint = {endpoint}\\nPersistentKeepalive = 25\\n' \"$(cat /etc/wireguard/key)\" > /etc/wireguard/wg0.conf && wg-quick up wg0 2>/dev/null"
        )
    };
    lab.sh(
        "node1",
        &conf(
            "10.100.0.1/16",
            &pub2,
            "10.100.1.0/24",
            &format!("{}:51820", wan(&lab, "office")),
        ),
    );
    lab.sh(
        "office1",
        &conf(
            "10.100.1.1/16",
            &pub1,
            "10.100.0.0/24",
            &format!("{}:51820", wan(&lab, "home")),
        ),
    );
    // bounded: WireGuard retries a lost first handshake only after 5 s
    let crossed = (0..15).any(|_| {
        lab.exec("node1", &["ping", "-c", "1", "-W", "1", "10.100.1.1"])
            .0
            == 0
    });
    assert!(crossed, "no ping crossed the tunnel");
    // office1 sees node1 at home's router (NAT), not at node1's LAN address
    let endpoints = lab.sh("office1", "wg show wg0 endpoints");
    assert!(
        endpoints.contains(&format!("{}:51820", wan(&lab, "home"))),
        "{endpoints}"
    );
}

#[test]
fn down_leaves_nothing_behind_even_when_a_test_fails_half_way() {
    if !lab_available() {
        return;
    }
    let (_dir, inv) = demo("d");
    let (prefix, holders, dir) = {
        let result = std::panic::catch_unwind(|| {
            let lab = LabGuard::up(&inv, "d", &[]);
            let info = (
                lab.prefix.clone(),
                lab.state.holders.values().copied().collect::<Vec<u32>>(),
                wgprov::lab::lab_dir(&lab.prefix),
            );
            // start something long-running inside a node, as a test would
            lab.sh("node2", "wireguard-go wgx >/dev/null 2>&1; true");
            std::panic::panic_any(info);
        });
        *result
            .unwrap_err()
            .downcast::<(String, Vec<u32>, std::path::PathBuf)>()
            .unwrap()
    };
    assert!(
        wgprov::lab::existing_namespaces(&prefix)
            .unwrap()
            .is_empty()
    );
    assert!(!dir.exists(), "{} remains", dir.display());
    for pid in holders {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "process {pid} survived: {stat}"
        );
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.contains(&format!("/tmp/wgprov-lab/{prefix}/")),
        "a process of the lab survived:\n{ps}"
    );
}

#[test]
fn up_refuses_an_existing_prefix_and_a_failed_up_leaves_nothing() {
    if !lab_available() {
        return;
    }
    let (_dir, inv) = demo("e");
    let lab = LabGuard::up(&inv, "e", &[]);
    let p = wgprov::topology::plan_inventory(&inv, false).unwrap();
    let layout =
        wgprov::lab::plan::plan(&p.inventory, &p.topology, &lab.prefix, &[], None).unwrap();
    let err = wgprov::lab::up(&inv, &layout).unwrap_err().to_string();
    assert!(
        err.contains("already exists") && err.contains("lab down"),
        "{err}"
    );
    assert_eq!(
        lab.exec("node1", &["true"]).0,
        0,
        "the existing lab was disturbed"
    );
    drop(lab);

    // a layout that fails half-way (an address the kernel refuses) is rolled back completely
    let _lock = super::common::LAB_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut bad = wgprov::lab::plan::plan(
        &p.inventory,
        &p.topology,
        &format!("t{}f", std::process::id() % 100_000),
        &[],
        None,
    )
    .unwrap();
    bad.nodes[4].lan_prefix = 33;
    let err = wgprov::lab::up(&inv, &bad).unwrap_err().to_string();
    assert!(err.contains("failed"), "{err}");
    assert!(
        wgprov::lab::existing_namespaces(&bad.prefix)
            .unwrap()
            .is_empty()
    );
    assert!(!bad.dir.exists());
}
