//! `wgprov status`: live mesh health from every node (`wg show dump`), and the diagnosis an
//! operator needs. A forgotten port-forward is subtle: the site's next-hop still reaches sites
//! that have endpoints (its keepalive opens its own NAT), so what shows is (a) pairs that never
//! complete a handshake — typically with sites that have no endpoint — and (b) a peer seen at an
//! address:port other than its configured endpoint (its NAT's outgoing mapping).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::apply::{Progress, Settings, connect_all, run_all};
use crate::error::Result;
use crate::facts::gather::{self, WgState};
use crate::topology::{PeerRef, Planned, Topology};
use crate::transport::Transport;

/// One peer as a node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// Who the peer is (node name, or `site NAME` for an unmanaged site), when known.
    pub peer: String,
    /// Public key.
    pub public_key: String,
    /// Endpoint in the config, if any.
    pub configured_endpoint: Option<String>,
    /// Where its packets come from now.
    pub seen_endpoint: Option<String>,
    /// Seconds since the last handshake; `None`: never.
    pub handshake_age: Option<u64>,
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
}

/// One node's interface.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// `up`, `down` or `unreachable: …`.
    pub state: String,
    /// Its peers.
    pub peers: Vec<PeerStatus>,
}

/// The whole mesh.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// Every managed node.
    pub nodes: Vec<NodeStatus>,
    /// Problems found, each with its likely cause.
    pub findings: Vec<String>,
}

impl StatusReport {
    /// Every link between two managed nodes that either end reports, up when either end saw a
    /// handshake in the last 180 s (WireGuard's session lifetime): what `status --picture`
    /// colours.
    pub fn links(&self) -> Vec<crate::output::svg::LinkHealth> {
        let mut up: std::collections::BTreeMap<(String, String), bool> = Default::default();
        let names: std::collections::BTreeSet<&str> =
            self.nodes.iter().map(|n| n.name.as_str()).collect();
        for n in &self.nodes {
            for p in n.peers.iter().filter(|p| names.contains(p.peer.as_str())) {
                let key = if n.name <= p.peer {
                    (n.name.clone(), p.peer.clone())
                } else {
                    (p.peer.clone(), n.name.clone())
                };
                let fresh = p.handshake_age.is_some_and(|a| a <= 180);
                *up.entry(key).or_default() |= fresh;
            }
        }
        up.into_iter().map(|((a, b), u)| (a, b, u)).collect()
    }

    /// 0 when every node is up and nothing was found; else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.findings.is_empty() || self.nodes.iter().any(|n| n.state != "up"))
    }
}

/// Resolves every endpoint written as a name (IPv4), all at once and without blocking the
/// runtime, each within 5 s; literal addresses need no lookup.
pub async fn resolve_endpoints(topo: &Topology) -> HashMap<String, String> {
    let mut names: Vec<String> = topo
        .nodes
        .iter()
        .flat_map(|n| topo.peers(n))
        .filter_map(|p| p.endpoint)
        .filter(|e| e.parse::<std::net::SocketAddr>().is_err())
        .collect();
    names.sort();
    names.dedup();
    let mut set = tokio::task::JoinSet::new();
    for ep in names {
        set.spawn(async move {
            let found = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::net::lookup_host(ep.clone()),
            )
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|mut a| a.find(|a| a.is_ipv4()))
            .map(|a| a.to_string());
            (ep, found)
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((ep, Some(a))) = r {
            out.insert(ep, a);
        }
    }
    out
}

/// The diagnosis, from each node's live interface and the endpoints' addresses (`resolved`:
/// endpoint name to address, from [`resolve_endpoints`]). Pure: unit-tested with fixtures.
pub fn diagnose(
    topo: &Topology,
    live: &HashMap<String, Option<WgState>>,
    resolved: &HashMap<String, String>,
    now: u64,
) -> StatusReport {
    let resolve = |ep: &str| -> Option<String> {
        match ep.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a.to_string()),
            Err(_) => resolved.get(ep).cloned(),
        }
    };
    let key_of: HashMap<&str, &str> = live
        .iter()
        .filter_map(|(n, w)| w.as_ref().map(|w| (w.public_key.as_str(), n.as_str())))
        .collect();
    let mut nodes = Vec::new();
    let mut findings = Vec::new();
    // (a) pairs of sites whose next-hops never completed a handshake
    let mut never: Vec<(String, String)> = Vec::new();
    for n in &topo.nodes {
        let state = match live.get(&n.name) {
            None => "unreachable".to_string(),
            Some(None) => "down".to_string(),
            Some(Some(_)) => "up".to_string(),
        };
        let mut peers = Vec::new();
        if let Some(Some(wg)) = live.get(&n.name) {
            let planned = topo.peers(n);
            for p in &wg.peers {
                let who = key_of.get(p.public_key.as_str()).map(|s| s.to_string());
                let plan = planned.iter().find(|pp| {
                    let mut a: Vec<String> = pp.allowed_ips.iter().map(|x| x.to_string()).collect();
                    let mut b = p.allowed_ips.clone();
                    a.sort();
                    b.sort();
                    a == b
                });
                let name = who.clone().or_else(|| {
                    plan.map(|pp| match &pp.peer {
                        PeerRef::Node(x) => x.clone(),
                        PeerRef::Site(s) => format!("site {s}"),
                    })
                });
                let configured = plan.and_then(|pp| pp.endpoint.clone());
                let age = (p.latest_handshake > 0).then(|| now.saturating_sub(p.latest_handshake));
                let peer_name = name.unwrap_or_else(|| "unknown".into());
                if let Some(pp) = plan
                    && pp.site != n.site
                {
                    if age.is_none() {
                        let pair = if n.site < pp.site {
                            (n.site.clone(), pp.site.clone())
                        } else {
                            (pp.site.clone(), n.site.clone())
                        };
                        if !never.contains(&pair) {
                            never.push(pair);
                        }
                    }
                    // (b) a peer seen at another address:port than its configured endpoint
                    if let (Some(seen), Some(conf)) = (&p.endpoint, &configured)
                        && age.is_some()
                        && resolve(conf).as_deref() != Some(seen.as_str())
                    {
                        findings.push(format!(
                            "{}: site {}'s next-hop {peer_name} is seen at {seen}, not at its configured endpoint {conf}: its router rewrote the source port on the way out, the trace of a missing port-forward — check the UDP port-forward on {}'s router",
                            n.name, pp.site, pp.site
                        ));
                    }
                }
                // a link inside a site has no keepalive: it handshakes when traffic flows, so
                // "never" there means idle, not broken
                peers.push(PeerStatus {
                    peer: peer_name,
                    public_key: p.public_key.clone(),
                    configured_endpoint: configured,
                    seen_endpoint: p.endpoint.clone(),
                    handshake_age: age,
                    rx: p.rx,
                    tx: p.tx,
                });
            }
        }
        nodes.push(NodeStatus {
            name: n.name.clone(),
            site: n.site.clone(),
            state,
            peers,
        });
    }
    for (a, b) in never {
        let sa = topo.site(&a).expect("site");
        let sb = topo.site(&b).expect("site");
        let cause = match (&sa.endpoint, &sb.endpoint) {
            (Some(_), None) => format!(
                "{b} has no endpoint, so {a} must accept the first packet: check the UDP port-forward on {a}'s router ({})",
                forward_rule(topo, &a)
            ),
            (None, Some(_)) => format!(
                "{a} has no endpoint, so {b} must accept the first packet: check the UDP port-forward on {b}'s router ({})",
                forward_rule(topo, &b)
            ),
            _ => format!(
                "check the UDP port-forwards on {a}'s and {b}'s routers ({}; {})",
                forward_rule(topo, &a),
                forward_rule(topo, &b)
            ),
        };
        findings.push(format!(
            "sites {a} and {b}: their next-hops never completed a handshake: {cause}"
        ));
    }
    StatusReport { nodes, findings }
}

fn forward_rule(topo: &Topology, site: &str) -> String {
    let s = topo.site(site).expect("site");
    let port = s
        .endpoint
        .as_ref()
        .map(|e| e.port)
        .unwrap_or(topo.network.listen_port);
    match s.next_hop.as_deref().and_then(|n| topo.node(n)) {
        Some(nh) => format!("udp {port} -> {}:{}", nh.address, topo.network.listen_port),
        None => format!("udp {port}"),
    }
}

/// Reads every node's live interface and diagnoses the mesh.
pub async fn status(
    planned: &Planned,
    settings: &Settings,
    progress: Arc<dyn Progress>,
) -> Result<StatusReport> {
    let topo = &planned.topology;
    let iface = topo.network.interface.clone();
    let sessions = connect_all(topo.nodes.iter().collect(), settings, &progress).await;
    let names: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
    let results = {
        let sessions = &sessions;
        run_all(names, settings.forks, |n| {
            let s = sessions.get(&n).cloned();
            let script = gather::script(&iface, &[]);
            async move {
                let s = s
                    .ok_or("not contacted".to_string())?
                    .map_err(|e| e.to_string())?;
                let out = s.run_script(&script).await.map_err(|e| e.to_string())?;
                gather::parse(&out.stdout_text())
            }
        })
        .await
    };
    let mut live = HashMap::new();
    let mut now = 0;
    let mut unreachable = Vec::new();
    for (n, r) in results {
        match r {
            Ok(f) => {
                now = now.max(f.now);
                live.insert(n.clone(), f.wg);
            }
            Err(e) => unreachable.push(format!("{n}: unreachable: {e}")),
        }
        progress.done(&n, "read");
    }
    for s in sessions.values().flatten() {
        s.close().await;
    }
    let resolved = resolve_endpoints(topo).await;
    let mut report = diagnose(topo, &live, &resolved, now);
    report.findings.extend(unreachable);
    Ok(report)
}

/// The report as text.
pub fn text(r: &StatusReport) -> String {
    let mut o = String::new();
    for n in &r.nodes {
        let _ = writeln!(o, "{} ({}): {}", n.name, n.site, n.state);
        for p in &n.peers {
            let hs = match p.handshake_age {
                Some(a) => format!("handshake {a}s ago"),
                None => "never handshaked".into(),
            };
            let _ = writeln!(
                o,
                "  {:<16} {:<22} seen {:<22} rx {} tx {}",
                p.peer,
                hs,
                p.seen_endpoint.as_deref().unwrap_or("-"),
                p.rx,
                p.tx
            );
        }
    }
    if r.findings.is_empty() {
        o.push_str("\nno problems found\n");
    } else {
        o.push_str("\nfindings:\n");
        for f in &r.findings {
            let _ = writeln!(o, "- {f}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::gather::PeerState;
    use std::path::Path;

    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  a:\n    endpoint: 198.51.100.1:51820\n    nodes:\n      a1: {address: 192.168.0.10}\n  b:\n    endpoint: 198.51.100.2:51821\n    nodes:\n      b1: {address: 192.168.1.10}\n  c:\n    nodes:\n      c1: {address: 192.168.2.10}\n";

    fn peer(key: &str, ep: Option<&str>, allowed: &str, hs: u64) -> PeerState {
        PeerState {
            public_key: key.into(),
            endpoint: ep.map(str::to_string),
            allowed_ips: vec![allowed.into()],
            latest_handshake: hs,
            rx: 0,
            tx: 0,
            keepalive: 25,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_resolves_endpoint_names_without_blocking_the_runtime() {
        let yaml = INV.replace("198.51.100.2:51821", "localhost:51821");
        let inv = crate::inventory::load_str(Path::new("s.yaml"), &yaml)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        // on a one-thread runtime, a blocking lookup would stall this timer; an async one does not
        let ticker = tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            true
        });
        let r = resolve_endpoints(&topo).await;
        assert_eq!(
            r.get("localhost:51821").map(String::as_str),
            Some("127.0.0.1:51821")
        );
        assert!(
            !r.contains_key("198.51.100.1:51820"),
            "literals need no lookup"
        );
        assert!(ticker.await.unwrap());
    }

    #[test]
    fn a_link_is_up_when_either_end_saw_a_recent_handshake() {
        let ps = |peer: &str, age: Option<u64>| PeerStatus {
            peer: peer.into(),
            public_key: String::new(),
            configured_endpoint: None,
            seen_endpoint: None,
            handshake_age: age,
            rx: 0,
            tx: 0,
        };
        let node = |name: &str, peers: Vec<PeerStatus>| NodeStatus {
            name: name.into(),
            site: "s".into(),
            state: "up".into(),
            peers,
        };
        let r = StatusReport {
            nodes: vec![
                node(
                    "a1",
                    vec![ps("b1", None), ps("c1", Some(500)), ps("site x", Some(1))],
                ),
                node("b1", vec![ps("a1", Some(20))]),
                node("c1", vec![ps("a1", Some(400))]),
            ],
            findings: vec![],
        };
        assert_eq!(
            r.links(),
            vec![
                ("a1".to_string(), "b1".to_string(), true),
                ("a1".to_string(), "c1".to_string(), false),
            ]
        );
    }

    #[test]
    fn flags_never_handshaking_pairs_and_unexpected_endpoints() {
        let inv = crate::inventory::load_str(Path::new("s.yaml"), INV)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let now = 1000;
        let mut live = HashMap::new();
        // a sees b at port 51820 although b's endpoint says 51821; c never handshook with b
        live.insert(
            "a1".to_string(),
            Some(WgState {
                public_key: "A".into(),
                listen_port: 51820,
                peers: vec![
                    peer("B", Some("198.51.100.2:51820"), "10.100.1.0/24", 990),
                    peer("C", Some("198.51.100.3:40000"), "10.100.2.0/24", 995),
                ],
            }),
        );
        live.insert(
            "b1".to_string(),
            Some(WgState {
                public_key: "B".into(),
                listen_port: 51820,
                peers: vec![
                    peer("A", Some("198.51.100.1:51820"), "10.100.0.0/24", 990),
                    peer("C", None, "10.100.2.0/24", 0),
                ],
            }),
        );
        live.insert(
            "c1".to_string(),
            Some(WgState {
                public_key: "C".into(),
                listen_port: 51820,
                peers: vec![
                    peer("A", Some("198.51.100.1:51820"), "10.100.0.0/24", 995),
                    peer("B", Some("198.51.100.2:51821"), "10.100.1.0/24", 0),
                ],
            }),
        );
        let r = diagnose(&topo, &live, &HashMap::new(), now);
        let all = r.findings.join("\n");
        assert!(all.contains("a1: site b's next-hop b1 is seen at 198.51.100.2:51820, not at its configured endpoint 198.51.100.2:51821"), "{all}");
        assert!(all.contains("sites b and c: their next-hops never completed a handshake: c has no endpoint, so b must accept the first packet: check the UDP port-forward on b's router (udp 51821 -> 192.168.1.10:51820)"), "{all}");
        assert!(!all.contains("sites a and"), "{all}");
        assert_eq!(r.findings.len(), 2, "{all}");
        let a1 = &r.nodes[0];
        assert_eq!(a1.peers[0].peer, "b1");
        assert_eq!(a1.peers[0].handshake_age, Some(10));
        assert_eq!(r.exit_code(), 1);
    }
}
