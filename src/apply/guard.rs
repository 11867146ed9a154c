//! The guard's decisions: which links were up before the apply, in which order hosts change
//! (those reached through the mesh first), which end of a link probes it, whether the network
//! is at least as healthy after the change as before, and what most likely broke it. All pure,
//! so that each rule is unit-tested; the runner feeds them facts and probe results.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::diff::Change;
use crate::facts::Facts;
use crate::facts::wgconf::WgConfig;
use crate::probe;
use crate::topology::{PeerRef, Topology};
use crate::transport::Transport;

/// A handshake younger than this counts as "the link was up" (WireGuard drops a session after
/// 180 s without a new handshake; busy links renew every 2 minutes).
pub const FRESH_HANDSHAKE_SECS: u64 = 300;

/// A link between two managed nodes, its ends in name order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Link {
    /// One end.
    pub from: String,
    /// The other end.
    pub to: String,
}

impl Link {
    /// The link between `a` and `b` (order does not matter).
    pub fn new(a: &str, b: &str) -> Link {
        let (from, to) = if a <= b { (a, b) } else { (b, a) };
        Link {
            from: from.to_string(),
            to: to.to_string(),
        }
    }
    /// True when `n` is one of its ends.
    pub fn has(&self, n: &str) -> bool {
        self.from == n || self.to == n
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} <-> {}", self.from, self.to)
    }
}

/// The links before the change, as each node's facts show them (`owner` maps a public key to
/// its node): those that carried a handshake recently (up), and every link whose peer entry
/// existed on a running interface, handshake or not (an idle link inside a site has no traffic,
/// so no handshake: it exists without being up).
pub fn links_before(
    facts: &BTreeMap<String, &Facts>,
    owner: &HashMap<String, String>,
) -> (BTreeSet<Link>, BTreeSet<Link>) {
    let mut up = BTreeSet::new();
    let mut existed = BTreeSet::new();
    for (node, f) in facts {
        let Some(wg) = &f.wg else { continue };
        for p in &wg.peers {
            let Some(other) = owner.get(&p.public_key).filter(|o| *o != node) else {
                continue;
            };
            let link = Link::new(node, other);
            if p.latest_handshake > 0
                && f.now.saturating_sub(p.latest_handshake) <= FRESH_HANDSHAKE_SECS
            {
                up.insert(link.clone());
            }
            existed.insert(link);
        }
    }
    (up, existed)
}

/// What the gate probes among the planned links that touch a changed host: every link that was
/// up before (they decide the verdict) and every link that is new (reported when it does not
/// come up). A link that existed but was idle is left alone: it was not up, so it cannot break,
/// and waking it would cost a handshake per member — the bulk of a large site.
pub fn links_to_probe(
    planned_touching: BTreeSet<Link>,
    up_before: &BTreeSet<Link>,
    existed_before: &BTreeSet<Link>,
) -> BTreeSet<Link> {
    planned_touching
        .into_iter()
        .filter(|l| up_before.contains(l) || !existed_before.contains(l))
        .collect()
}

/// Every link between managed nodes the plan has, relayed links included (two next-hops of
/// sites without an endpoint, whose pings cross the relay's next-hop).
pub fn planned_links(topo: &Topology) -> BTreeSet<Link> {
    let mut l = BTreeSet::new();
    for n in &topo.nodes {
        for p in topo.peers(n) {
            if let PeerRef::Node(o) = &p.peer {
                l.insert(Link::new(&n.name, o));
            }
        }
    }
    l.extend(
        topo.relayed_links()
            .iter()
            .map(|r| Link::new(&r.from, &r.to)),
    );
    l
}

/// Adds the relayed links to the links before the change: a relayed link has no handshake of
/// its own, so it was up when both its legs (each end with the relay's next-hop) were, and
/// existed when both existed.
pub fn relayed_before(topo: &Topology, up: &mut BTreeSet<Link>, existed: &mut BTreeSet<Link>) {
    for r in topo.relayed_links() {
        let legs = [Link::new(&r.from, &r.via), Link::new(&r.to, &r.via)];
        let link = Link::new(&r.from, &r.to);
        if legs.iter().all(|l| up.contains(l)) {
            up.insert(link.clone());
        }
        if legs.iter().all(|l| existed.contains(l)) {
            existed.insert(link);
        }
    }
}

/// The hosts a link's traffic crosses besides its ends: the relay's next-hop of a relayed link.
pub fn crosses(topo: &Topology, l: &Link) -> Option<String> {
    topo.relayed_link(&l.from, &l.to).map(|r| r.via)
}

/// Which end probes a link: the one the controller reaches without crossing it (the other end
/// is behind it); else the one that can start a handshake (it has an endpoint for the other:
/// its ping brings the link up at once instead of waiting for the other side's retry); else
/// the one with the shorter path.
pub fn prober<'a>(
    l: &'a Link,
    paths: &HashMap<String, Vec<String>>,
    initiates: impl Fn(&str, &str) -> bool,
) -> (&'a str, &'a str) {
    let p = |n: &str| paths.get(n).cloned().unwrap_or_default();
    let (a, b) = (l.from.as_str(), l.to.as_str());
    if p(a).iter().any(|x| x == b) {
        (b, a)
    } else if p(b).iter().any(|x| x == a) {
        (a, b)
    } else if initiates(a, b) != initiates(b, a) {
        if initiates(a, b) { (a, b) } else { (b, a) }
    } else if p(a).len() <= p(b).len() {
        (a, b)
    } else {
        (b, a)
    }
}

/// True when `from` has an endpoint for `to` (it can start their handshake).
pub fn initiates(topo: &Topology, from: &str, to: &str) -> bool {
    topo.node(from).is_some_and(|n| {
        topo.peers(n)
            .iter()
            .any(|p| p.peer == PeerRef::Node(to.to_string()) && p.endpoint.is_some())
    })
}

/// How the network looked after the change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Links that were up before (among those the change could touch).
    pub links_before: usize,
    /// Of the planned links probed, those that answered.
    pub links_after: usize,
    /// Links that were up before and are down now: the change broke them.
    pub broken: Vec<Link>,
    /// New links that did not come up (reported; nothing that works is put back for them).
    pub new_down: Vec<Link>,
    /// Links that were up before and could not be probed from either end (no connection).
    pub unknown: Vec<Link>,
}

/// Compares the links before with the probe results (`after`: link → answered, `None` when
/// neither end could be asked).
pub fn health(before: &BTreeSet<Link>, after: &BTreeMap<Link, Option<bool>>) -> Health {
    let mut h = Health::default();
    for (l, up) in after {
        if *up == Some(true) {
            h.links_after += 1;
        }
        let was = before.contains(l);
        if was {
            h.links_before += 1;
        }
        match (was, up) {
            (true, Some(false)) => h.broken.push(l.clone()),
            (true, None) => h.unknown.push(l.clone()),
            (false, Some(false) | None) => h.new_down.push(l.clone()),
            _ => {}
        }
    }
    h
}

/// What the guard decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Confirm every changed host.
    Confirm,
    /// Put every changed host back, for this reason.
    Revert(String),
}

/// The guard's decision: the change is kept only when no link that was up before is down, every
/// changed host's outcome is known, every changed host was reached anew, and nobody asked to
/// stop.
pub fn verdict(
    health: &Health,
    lost: &[String],
    not_reached_anew: &[String],
    interrupted: bool,
    too_late: bool,
    cause: &str,
) -> Verdict {
    if interrupted {
        return Verdict::Revert("interrupted (Ctrl-C): every changed host is put back".into());
    }
    if !health.broken.is_empty() {
        let l: Vec<String> = health.broken.iter().map(|l| l.to_string()).collect();
        return Verdict::Revert(format!(
            "{} link{} up before the change {} down after it: {}. Likely cause: {cause}",
            l.len(),
            if l.len() == 1 { "" } else { "s" },
            if l.len() == 1 { "is" } else { "are" },
            l.join(", ")
        ));
    }
    if !health.unknown.is_empty() {
        let l: Vec<String> = health.unknown.iter().map(|l| l.to_string()).collect();
        return Verdict::Revert(format!(
            "{} could not be probed from either end after the change (no connection): the network cannot be vouched for",
            l.join(", ")
        ));
    }
    if !lost.is_empty() {
        return Verdict::Revert(format!(
            "the change's outcome is unknown on {} (connection lost): the network cannot be vouched for",
            lost.join(", ")
        ));
    }
    if too_late {
        return Verdict::Revert(
            "the run took too long: a changed host's dead-man fires before it could be confirmed, so every host is put back (raise --confirm-timeout)".into(),
        );
    }
    if !not_reached_anew.is_empty() {
        return Verdict::Revert(format!(
            "{} cannot be reached over a fresh connection after the change: {} puts itself back, so the rest is put back too",
            not_reached_anew.join(", "),
            if not_reached_anew.len() == 1 {
                "it"
            } else {
                "each"
            }
        ));
    }
    Verdict::Confirm
}

fn iface_value(conf: Option<&str>, key: &str) -> Option<String> {
    WgConfig::parse(conf?)
        .interface()
        .and_then(|i| i.get(key))
        .map(|v| v.trim().to_string())
}

/// The most likely cause of broken links, from what changed at their ends.
pub fn likely_cause<C: AsRef<[Change]>>(
    topo: &Topology,
    broken: &[Link],
    changes: &HashMap<String, C>,
    wg_path: &str,
) -> String {
    let conf_change = |n: &str| -> Option<(Option<String>, Option<String>)> {
        let c = changes
            .get(n)?
            .as_ref()
            .iter()
            .find(|c| c.desired.path == wg_path)?;
        let new = match &c.desired.state {
            crate::desired::FileState::Present { content, .. } => Some(content.clone()),
            crate::desired::FileState::Absent => None,
        };
        Some((c.current.content().map(str::to_string), new))
    };
    // a relayed link's traffic also crosses the relay's next-hop: it counts as an end
    let vias: Vec<String> = broken.iter().filter_map(|l| crosses(topo, l)).collect();
    let ends: BTreeSet<&str> = broken
        .iter()
        .flat_map(|l| [l.from.as_str(), l.to.as_str()])
        .chain(vias.iter().map(String::as_str))
        .collect();
    // a next-hop that now listens on another port than its router forwards
    let mut ports = Vec::new();
    for n in &ends {
        let Some(node) = topo.node(n) else { continue };
        if !node.is_next_hop {
            continue;
        }
        if let Some((old, new)) = conf_change(n) {
            let (o, w) = (
                iface_value(old.as_deref(), "ListenPort"),
                iface_value(new.as_deref(), "ListenPort"),
            );
            if let (Some(o), Some(w)) = (o, w)
                && o != w
            {
                let site = topo.site(&node.site);
                let public = site
                    .and_then(|s| s.endpoint.as_ref())
                    .map(|e| e.port.to_string())
                    .unwrap_or_else(|| o.clone());
                ports.push(format!(
                    "site {}: the router forwards UDP {public} to {}:{o}, but {n} now listens on {w}",
                    node.site, node.address
                ));
            }
        }
    }
    if !ports.is_empty() {
        return format!(
            "the port-forward: {}. Change each router's port-forward first (or keep listen_port), then apply again",
            ports.join("; ")
        );
    }
    let mut keys = Vec::new();
    let mut addrs = Vec::new();
    for n in &ends {
        if let Some((old, new)) = conf_change(n) {
            let old_key = iface_value(old.as_deref(), "PrivateKey");
            if old_key.is_some() && old_key != iface_value(new.as_deref(), "PrivateKey") {
                keys.push(n.to_string());
            }
            let old_addr = iface_value(old.as_deref(), "Address");
            if old_addr.is_some() && old_addr != iface_value(new.as_deref(), "Address") {
                addrs.push(n.to_string());
            }
        }
    }
    if !keys.is_empty() {
        return format!(
            "the key of {} changed and its peers do not know the new one yet",
            keys.join(", ")
        );
    }
    if !addrs.is_empty() {
        return format!("the WireGuard address of {} changed", addrs.join(", "));
    }
    let changed: Vec<&str> = ends
        .iter()
        .copied()
        .filter(|n| changes.get(*n).is_some_and(|c| !c.as_ref().is_empty()))
        .collect();
    if changed.is_empty() {
        "not the files wgprov changed: check the routers and the hosts at both ends".into()
    } else {
        format!(
            "the change to {} (see its diff): its peers' endpoints, AllowedIPs or firewall rules",
            changed.join(", ")
        )
    }
}

/// Probes `links` (each from its prober, see [`prober`]) over the given sessions, every prober
/// at once, each for at most `wait`. A link whose prober cannot be asked is `None`.
pub async fn probe_links<T: Transport + 'static>(
    topo: &Topology,
    links: &BTreeSet<Link>,
    paths: &HashMap<String, Vec<String>>,
    sessions: &HashMap<String, Arc<T>>,
    iface: &crate::shell::InterfaceName,
    wait: Duration,
) -> BTreeMap<Link, Option<bool>> {
    let ip_of = |n: &str| -> Option<Ipv4Addr> { topo.node(n).map(|x| x.wireguard_ip) };
    let mut by_prober: BTreeMap<String, Vec<(Link, Ipv4Addr)>> = BTreeMap::new();
    let mut out: BTreeMap<Link, Option<bool>> = BTreeMap::new();
    for l in links {
        let (near, far) = prober(l, paths, |a, b| initiates(topo, a, b));
        let (near, far) = if sessions.contains_key(near) {
            (near, far)
        } else {
            (far, near)
        };
        match (sessions.contains_key(near), ip_of(far)) {
            (true, Some(ip)) => by_prober
                .entry(near.to_string())
                .or_default()
                .push((l.clone(), ip)),
            _ => {
                out.insert(l.clone(), None);
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (host, targets) in by_prober {
        let s = sessions[&host].clone();
        let ips: Vec<Ipv4Addr> = targets.iter().map(|t| t.1).collect();
        let net = topo.network.clone();
        let script = probe::ping_script(iface, &ips, wait, &|a| net.ip6_of(a));
        set.spawn(async move {
            let res = s
                .run_script_within(&script, wait + Duration::from_secs(5))
                .await;
            let answers = match res {
                Ok(o) if o.stdout_text().contains(probe::PROBE) => {
                    Some(probe::parse(&o.stdout_text(), &ips))
                }
                _ => None,
            };
            targets
                .into_iter()
                .map(|(l, ip)| (l, answers.as_ref().map(|a| a.get(&ip) == Some(&true))))
                .collect::<Vec<_>>()
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.extend(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::order::waves;
    use crate::topology::reach::paths;

    #[test]
    fn the_gate_probes_links_that_were_up_and_new_links_never_idle_ones() {
        let l = |a: &str, b: &str| Link::new(a, b);
        let planned: BTreeSet<Link> = [l("a", "b"), l("a", "m1"), l("a", "m2"), l("a", "n")]
            .into_iter()
            .collect();
        let up: BTreeSet<Link> = [l("a", "b")].into_iter().collect();
        // m1 existed but idle; m2 existed and idle; n is new
        let existed: BTreeSet<Link> = [l("a", "b"), l("a", "m1"), l("a", "m2")]
            .into_iter()
            .collect();
        assert_eq!(
            links_to_probe(planned, &up, &existed),
            [l("a", "b"), l("a", "n")].into_iter().collect()
        );
    }
    use crate::facts::gather::{PeerState, WgState};
    use crate::transport::fake::FakeHost;

    fn topo(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("t.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    /// Three sites; the controller sits on home's LAN and reaches the others over the mesh.
    const MESH: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    lan_cidrs: [192.168.0.0/24]\n    lan_access: true\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: {address: 192.168.0.10, wireguard_ip: 10.100.0.1}\n      h2: {address: 192.168.0.11, wireguard_ip: 10.100.0.2}\n  office:\n    lan_cidrs: [192.168.10.0/24]\n    endpoint: 198.51.100.20:51820\n    next_hop: o1\n    nodes:\n      o1: {address: 192.168.10.5, wireguard_ip: 10.100.1.1, ssh: {host: 10.100.1.1}}\n      o2: {address: 192.168.10.6, wireguard_ip: 10.100.1.2, ssh: {host: 10.100.1.2}}\n  cloud:\n    endpoint: 192.0.2.50:51820\n    nodes:\n      c1: {address: 192.0.2.50, wireguard_ip: 10.100.2.1, ssh: {proxy_jump: o1}}\n";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_behind_the_mesh_change_before_the_hosts_their_path_crosses() {
        let t = topo(MESH);
        let p = paths(&t);
        assert_eq!(p["h1"], Vec::<String>::new(), "on the controller's LAN");
        assert_eq!(p["o1"], names(&["h1"]));
        assert_eq!(p["o2"], names(&["h1", "o1"]));
        assert_eq!(p["c1"], names(&["o1", "h1"]), "jump host, then its path");
        let w = waves(&names(&["h1", "h2", "o1", "o2", "c1"]), &p);
        assert_eq!(
            w,
            vec![names(&["h2", "o2", "c1"]), names(&["o1"]), names(&["h1"])]
        );
        // without the far side, nothing waits
        assert_eq!(waves(&names(&["h1"]), &p), vec![names(&["h1"])]);
    }

    #[test]
    fn the_near_end_probes() {
        let t = topo(MESH);
        let p = paths(&t);
        let l = Link::new("o1", "h1");
        let never = |_: &str, _: &str| false;
        assert_eq!(prober(&l, &p, never), ("h1", "o1"));
        let l = Link::new("o2", "o1");
        assert_eq!(prober(&l, &p, never), ("o1", "o2"));
        // neither behind the other: the end that can start the handshake
        let l = Link::new("c1", "h1");
        let p: HashMap<String, Vec<String>> = HashMap::new();
        let only_c1 = |a: &str, _: &str| a == "c1";
        assert_eq!(prober(&l, &p, only_c1), ("c1", "h1"));
        assert!(initiates(&t, "h1", "o1"), "office has an endpoint");
        assert!(
            initiates(&t, "o2", "o1") && initiates(&t, "o1", "o2"),
            "LAN endpoints"
        );
    }

    #[test]
    fn only_recent_handshakes_with_known_keys_count_as_up() {
        let peer = |k: &str, hs: u64| PeerState {
            public_key: k.into(),
            endpoint: None,
            allowed_ips: vec![],
            latest_handshake: hs,
            rx: 0,
            tx: 0,
            keepalive: 0,
        };
        let f = Facts {
            wg: Some(WgState {
                public_key: "A".into(),
                listen_port: 51820,
                peers: vec![
                    peer("B", 1000),
                    peer("C", 0),
                    peer("D", 100),
                    peer("X", 1000),
                ],
            }),
            now: 1010,
            ..Default::default()
        };
        let facts: BTreeMap<String, &Facts> = [("a".to_string(), &f)].into();
        let owner: HashMap<String, String> = [("B", "b"), ("C", "c"), ("D", "d")]
            .into_iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect();
        let (up, _) = links_before(&facts, &owner);
        assert_eq!(
            up,
            [Link::new("a", "b")].into(),
            "C never, D stale, X unknown"
        );
    }

    #[test]
    fn a_link_that_was_up_and_is_down_reverts_everything_a_new_link_down_does_not() {
        let before: BTreeSet<Link> = [Link::new("a", "b"), Link::new("a", "c")].into();
        let after: BTreeMap<Link, Option<bool>> = [
            (Link::new("a", "b"), Some(true)),
            (Link::new("a", "c"), Some(true)),
            (Link::new("a", "n"), Some(false)),
        ]
        .into();
        let h = health(&before, &after);
        assert_eq!((h.links_before, h.links_after), (2, 2));
        assert_eq!(h.new_down, vec![Link::new("a", "n")]);
        assert_eq!(verdict(&h, &[], &[], false, false, "x"), Verdict::Confirm);

        let after: BTreeMap<Link, Option<bool>> = [
            (Link::new("a", "b"), Some(false)),
            (Link::new("a", "c"), None),
        ]
        .into();
        let h = health(&before, &after);
        assert_eq!(h.broken, vec![Link::new("a", "b")], "measured down");
        assert_eq!(
            h.unknown,
            vec![Link::new("a", "c")],
            "not measured is not broken"
        );
        match verdict(&h, &[], &[], false, false, "the port-forward") {
            Verdict::Revert(why) => {
                assert!(why.contains("a <-> b"), "{why}");
                assert!(why.contains("Likely cause: the port-forward"), "{why}");
            }
            v => panic!("{v:?}"),
        }
        let unknown = health(&before, &[(Link::new("a", "c"), None)].into());
        assert!(matches!(
            verdict(&unknown, &[], &[], false, false, ""),
            Verdict::Revert(w) if w.contains("could not be probed")
        ));
        let ok = health(&before, &[(Link::new("a", "b"), Some(true))].into());
        assert!(matches!(
            verdict(&ok, &names(&["b"]), &[], false, false, ""),
            Verdict::Revert(w) if w.contains("unknown on b")
        ));
        assert!(matches!(
            verdict(&ok, &[], &names(&["c"]), false, false, ""),
            Verdict::Revert(w) if w.contains("fresh connection")
        ));
        assert!(matches!(
            verdict(&ok, &[], &[], false, true, ""),
            Verdict::Revert(w) if w.contains("took too long")
        ));
        assert!(matches!(
            verdict(&ok, &[], &[], true, false, ""),
            Verdict::Revert(w) if w.contains("interrupted")
        ));
    }

    #[test]
    fn a_listen_port_the_router_does_not_forward_is_named_as_the_cause() {
        let t = topo(MESH);
        let mk = |old: &str, new: &str| Change {
            desired: crate::desired::DesiredFile {
                role: "wireguard".into(),
                path: crate::shell::RemotePath::new("/etc/wireguard/wg0.conf").unwrap(),
                state: crate::desired::FileState::Present {
                    content: new.into(),
                    mode: 0o600,
                },
                notify: vec![],
            },
            current: crate::facts::FileFact::Present {
                mode: 0o600,
                content: old.into(),
            },
            action: crate::diff::Action::Updated,
        };
        let changes: HashMap<String, Vec<Change>> = [(
            "o1".to_string(),
            vec![mk(
                "[Interface]\nListenPort = 51820\n",
                "[Interface]\nListenPort = 51822\n",
            )],
        )]
        .into();
        let c = likely_cause(
            &t,
            &[Link::new("h1", "o1")],
            &changes,
            "/etc/wireguard/wg0.conf",
        );
        assert!(c.contains("port-forward"), "{c}");
        assert!(
            c.contains("forwards UDP 51820 to 192.168.10.5:51820, but o1 now listens on 51822"),
            "{c}"
        );
    }

    #[tokio::test]
    async fn a_prober_that_cannot_be_asked_counts_its_links_down() {
        let t = topo(MESH);
        let p = paths(&t);
        let h1 = Arc::new(FakeHost::new());
        h1.reply("probe", &format!("{} up 10.100.1.1\n", probe::PROBE));
        let o1 = Arc::new(FakeHost::new());
        o1.fail(
            "probe",
            crate::transport::TransportError::Lost("gone".into()),
        );
        let sessions: HashMap<String, Arc<FakeHost>> =
            [("h1".to_string(), h1.clone()), ("o1".to_string(), o1)].into();
        let links: BTreeSet<Link> = [Link::new("h1", "o1"), Link::new("o1", "o2")].into();
        let wg0 = crate::shell::InterfaceName::default();
        let r = probe_links(&t, &links, &p, &sessions, &wg0, Duration::from_secs(1)).await;
        assert_eq!(r[&Link::new("h1", "o1")], Some(true));
        assert_eq!(r[&Link::new("o1", "o2")], None);
        assert_eq!(h1.kinds(), vec!["probe"]);
    }

    /// north and south have no endpoint: they reach each other through home's next-hop h1.
    const RELAYED: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n  relay: home\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      h1: {address: 192.168.0.10, wireguard_ip: 10.100.0.1}\n  north:\n    nodes:\n      n1: {address: 192.168.1.10, wireguard_ip: 10.100.1.1}\n  south:\n    nodes:\n      s1: {address: 192.168.2.10, wireguard_ip: 10.100.2.1}\n";

    #[test]
    fn a_relayed_pair_is_a_link_up_before_when_both_legs_were_and_crosses_the_relay() {
        let t = topo(RELAYED);
        let l = |a: &str, b: &str| Link::new(a, b);
        assert_eq!(
            planned_links(&t),
            [l("h1", "n1"), l("h1", "s1"), l("n1", "s1")].into()
        );
        assert_eq!(crosses(&t, &l("s1", "n1")).as_deref(), Some("h1"));
        assert_eq!(crosses(&t, &l("h1", "n1")), None);
        // both legs up: the relayed link was up
        let mut up: BTreeSet<Link> = [l("h1", "n1"), l("h1", "s1")].into();
        let mut existed = up.clone();
        relayed_before(&t, &mut up, &mut existed);
        assert!(up.contains(&l("n1", "s1")) && existed.contains(&l("n1", "s1")));
        // one leg idle: it existed, but was not up (it cannot break)
        let mut up: BTreeSet<Link> = [l("h1", "n1")].into();
        let mut existed: BTreeSet<Link> = [l("h1", "n1"), l("h1", "s1")].into();
        relayed_before(&t, &mut up, &mut existed);
        assert!(!up.contains(&l("n1", "s1")) && existed.contains(&l("n1", "s1")));
    }

    #[test]
    fn a_relayed_link_broken_by_the_relay_s_change_names_the_relay() {
        let t = topo(RELAYED);
        let change = Change {
            desired: crate::desired::DesiredFile {
                role: "wireguard".into(),
                path: crate::shell::RemotePath::new("/etc/wireguard/wg0.conf").unwrap(),
                state: crate::desired::FileState::Present {
                    content: "[Interface]\nListenPort = 51822\n".into(),
                    mode: 0o600,
                },
                notify: vec![],
            },
            current: crate::facts::FileFact::Present {
                mode: 0o600,
                content: "[Interface]\nListenPort = 51820\n".into(),
            },
            action: crate::diff::Action::Updated,
        };
        let changes: HashMap<String, Vec<Change>> = [("h1".to_string(), vec![change])].into();
        let c = likely_cause(
            &t,
            &[Link::new("n1", "s1")],
            &changes,
            "/etc/wireguard/wg0.conf",
        );
        assert!(
            c.contains("site home") && c.contains("h1 now listens on 51822"),
            "{c}"
        );
    }

    #[tokio::test]
    async fn a_relayed_link_is_probed_by_a_ping_from_one_next_hop_to_the_other() {
        let t = topo(RELAYED);
        let p = paths(&t);
        let n1 = Arc::new(FakeHost::new());
        n1.reply("probe", &format!("{} up 10.100.2.1\n", probe::PROBE));
        let s1 = Arc::new(FakeHost::new());
        s1.reply("probe", &format!("{} up 10.100.1.1\n", probe::PROBE));
        let sessions: HashMap<String, Arc<FakeHost>> = [
            ("n1".to_string(), n1.clone()),
            ("s1".to_string(), s1.clone()),
        ]
        .into();
        let links: BTreeSet<Link> = [Link::new("n1", "s1")].into();
        let wg0 = crate::shell::InterfaceName::default();
        let r = probe_links(&t, &links, &p, &sessions, &wg0, Duration::from_secs(1)).await;
        assert_eq!(r[&Link::new("n1", "s1")], Some(true));
        assert_eq!(n1.kinds().len() + s1.kinds().len(), 1, "one end probes");
    }
}
