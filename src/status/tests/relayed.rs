//! Relayed links in `status`: two sites without an endpoint, reached through the relay's
//! next-hop, are shown as one link via the relay and judged by pings across it.

use super::*;

/// home relays for north and south, which have no endpoint.
const RELAYED: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\n  relay: home\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      h1: {address: 192.168.0.10}\n  north:\n    next_hop: n1\n    nodes:\n      n1: {address: 192.168.1.10}\n      n2: {address: 192.168.1.11}\n  south:\n    nodes:\n      s1: {address: 192.168.2.10}\n";

#[test]
fn a_relayed_link_is_shown_via_its_relay_and_up_when_pings_cross_it() {
    let m = Mesh::healthy(RELAYED);
    // the relayed next-hops ping each other
    let n1 = m.topo.node("n1").unwrap();
    assert!(probe_targets(&m.topo, n1).contains(&m.ip("s1")));
    let r = m.report();
    assert_eq!(r.problems, vec![], "{}", text(&r));
    let l = link(&r, "n1", "s1");
    assert_eq!(
        (l.relay.as_deref(), l.via.as_deref()),
        (Some("home"), Some("h1"))
    );
    assert_eq!(
        (l.up, l.state, l.handshake_age),
        (true, LinkState::Up, None)
    );
    assert_eq!(l.probes, [("n1".into(), true), ("s1".into(), true)].into());
    assert!(
        text(&r).contains("up      n1 -- s1 (via relay home (h1); ping"),
        "{}",
        text(&r)
    );
    let v = serde_json::to_value(&r).unwrap();
    let j = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["to"] == "s1" && l["from"] == "n1")
        .unwrap();
    assert_eq!(
        (&j["relay"], &j["via"]),
        (&serde_json::json!("home"), &serde_json::json!("h1"))
    );
    // a link that is not relayed carries no relay
    assert_eq!(link(&r, "n1", "h1").relay, None);
}

#[test]
fn a_relayed_link_whose_pings_die_at_the_relay_points_at_the_relay() {
    let mut m = Mesh::healthy(RELAYED);
    let (n1, s1) = (m.ip("n1"), m.ip("s1"));
    m.get("n1").answered.insert(s1, false);
    m.get("s1").answered.insert(n1, false);
    let r = m.report();
    let l = link(&r, "n1", "s1");
    assert_eq!((l.up, l.state), (false, LinkState::Down));
    assert_eq!(
        kinds(&r),
        vec![(Kind::NoHandshake, None, Some("n1".into()))],
        "{}",
        text(&r)
    );
    assert!(
        r.problems[0]
            .why
            .contains("through relay home's next-hop h1"),
        "{}",
        r.problems[0].why
    );
}

#[test]
fn a_relayed_link_down_with_a_leg_is_explained_by_the_leg_alone() {
    let mut m = Mesh::healthy(RELAYED);
    // north1 cannot reach the relay: its leg is down, and so is the relayed link
    m.cut("n1", "h1");
    let (n1, s1) = (m.ip("n1"), m.ip("s1"));
    m.get("n1").answered.insert(s1, false);
    m.get("s1").answered.insert(n1, false);
    let r = m.report();
    assert_eq!(link(&r, "n1", "s1").state, LinkState::Down);
    assert_eq!(link(&r, "n1", "h1").state, LinkState::Down);
    let about: Vec<(Option<String>, Option<String>)> = r
        .problems
        .iter()
        .map(|p| (p.node.clone(), p.peer.clone()))
        .collect();
    assert_eq!(about.len(), 1, "{}", text(&r));
    assert!(
        !r.problems[0].why.contains("through relay"),
        "the leg is named, not the relayed pair: {}",
        text(&r)
    );
}
