//! Relays, proven in the lab with real sshd and real WireGuard: two sites whose routers forward
//! no port at all (as behind carrier-grade NAT) reach each other through a third site's
//! next-hop, named as `network.relay`; a second apply changes nothing; `status` shows the
//! relayed link; and the guard puts back a change that breaks the relay.

use std::time::{Duration, Instant};

use super::apply::{Scenario, changed_hosts, wg_ips};
use super::common::{lab_available, root};

/// The relay inventory of the docs: vps (endpoint, the relay), north and south (no endpoint).
fn relay_yaml() -> String {
    std::fs::read_to_string(root().join("inventories/relay.yaml")).unwrap()
}

/// The sites built without a port-forward.
const BEHIND_NAT: [&str; 2] = ["north", "south"];

/// A lab of the relay inventory, north and south without any port-forward.
fn scenario(tag: &str) -> Scenario {
    let y = relay_yaml();
    Scenario::new(tag, &y, &y, &BEHIND_NAT)
}

/// The pings that fail: from every node of north and south to every other node (the other
/// NAT'd site's, its own site's, the relay's). Each ping is bounded (10 tries of 1 s).
fn failing_pings(s: &Scenario) -> Vec<String> {
    let ips = wg_ips(s);
    let mut failed = Vec::new();
    for (from, fsite, _) in ips.iter().filter(|(_, site, _)| site != "vps") {
        for (to, _, ip) in &ips {
            if to != from && !s.ping(from, ip) {
                failed.push(format!("{from} ({fsite}) -> {to}"));
            }
        }
    }
    failed
}

/// Waits (bounded by `limit`) until every ping answers; returns what still fails.
fn pings_within(s: &Scenario, limit: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let failed = failing_pings(s);
        if failed.is_empty() || t.elapsed() >= limit {
            return failed;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `wg0.conf` of every node, to compare before and after.
fn snapshot(s: &Scenario) -> Vec<String> {
    let mut nodes: Vec<&String> = s.lab.state.nodes.keys().collect();
    nodes.sort();
    nodes
        .into_iter()
        .map(|n| s.stat(n, "/etc/wireguard/wg0.conf"))
        .collect()
}

#[test]
fn sites_without_a_port_forward_reach_each_other_through_the_relay() {
    if !lab_available() {
        return;
    }
    let started = Instant::now();
    let s = scenario("ry");
    let r = s.apply(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let failed = pings_within(&s, Duration::from_secs(30));
    assert!(failed.is_empty(), "pings that fail: {failed:?}");
    // no tunnel between the NAT'd sites: north1's peer for the relay carries south's block
    let north1 = s.lab.sh("north1", "wg show wg0 allowed-ips");
    assert_eq!(north1.lines().count(), 2, "north2 and vps1 only: {north1}");
    assert!(
        north1
            .lines()
            .any(|l| l.contains("10.100.0.0/24") && l.contains("10.100.2.0/24")),
        "{north1}"
    );
    // the relay forwards between them
    assert_eq!(
        s.lab.sh("vps1", "sysctl -n net.ipv4.ip_forward").trim(),
        "1"
    );
    // a second apply changes nothing
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert!(changed_hosts(&v).is_empty(), "{v}");
    assert_eq!(v["guard"]["outcome"], "skipped", "{v}");
    // status shows the relayed link, up, via the relay
    let inv = s.inv.to_str().unwrap().to_string();
    let st = s.wgprov(&["status", "-i", &inv]);
    assert!(
        st.stdout.contains("north1 -- south1 (via relay vps (vps1)"),
        "{}{}",
        st.stdout,
        st.stderr
    );
    let st = s.wgprov(&["status", "-i", &inv, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let relayed: Vec<&serde_json::Value> = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["relay"] == "vps")
        .collect();
    assert_eq!(relayed.len(), 1, "{v}");
    assert_eq!(relayed[0]["up"], true, "{v}");
    assert_eq!(st.code, 0, "no problem: {}", st.stdout);
    s.assert_no_key_leaked();
    println!("relay lab test: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_change_that_breaks_the_relay_is_put_back_and_the_pairs_ping_again() {
    if !lab_available() {
        return;
    }
    let started = Instant::now();
    let s = scenario("rg");
    assert_eq!(s.apply(&[]).code, 0);
    let failed = pings_within(&s, Duration::from_secs(30));
    assert!(failed.is_empty(), "before the change: {failed:?}");
    let before = snapshot(&s);
    // every next-hop, the relay's too, now listens on a port the relay's router does not forward
    std::fs::write(
        &s.inv,
        relay_yaml().replace("  relay: vps\n", "  relay: vps\n  listen_port: 51822\n"),
    )
    .unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "20"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["guard"]["outcome"], "reverted", "{v}");
    let broken = v["guard"]["broken"].as_array().unwrap();
    // the relayed pair was probed across the relay like any link that was up
    assert!(
        broken
            .iter()
            .any(|l| l["from"] == "north1" && l["to"] == "south1"),
        "{v}"
    );
    assert!(
        broken
            .iter()
            .any(|l| l["from"] == "north1" && l["to"] == "vps1"),
        "{v}"
    );
    // every host is back byte for byte (bounded), and every pair pings again
    let t = Instant::now();
    while snapshot(&s) != before && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(snapshot(&s), before, "not every host is back");
    let failed = pings_within(&s, Duration::from_secs(40));
    assert!(failed.is_empty(), "after the put-back: {failed:?}");
    s.assert_no_key_leaked();
    println!(
        "relay guard lab test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
