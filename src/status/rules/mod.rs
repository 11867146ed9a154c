//! The diagnosis, pure: observations and the plan in, nodes, links and problems out. Every rule
//! is unit-tested with fixtures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::facts::gather::{PeerState, WgState};
use crate::shell::InterfaceName;
use crate::topology::{NodePlan, Peer, PeerRef, Topology};

mod failover;
mod node;
mod relayed;
mod router;

use super::observe::{Observations, Observed};
use super::report::{Kind, LinkState, LinkStatus, Problem, StatusReport};
use node::node_rules;
pub use router::router_problems;
use router::router_rule;

/// A handshake younger than this means the link works (WireGuard drops a session after 180 s
/// without a new handshake).
pub const FRESH_HANDSHAKE_SECS: u64 = 180;

/// The WireGuard address a peer answers pings at, when wgprov knows one.
pub(super) fn peer_ip(topo: &Topology, p: &Peer) -> Option<Ipv4Addr> {
    match &p.peer {
        PeerRef::Node(n) => topo.node(n).map(|x| x.wireguard_ip),
        PeerRef::Site(s) => topo
            .site(s)
            .filter(|s| s.managed && s.router_address.is_some())
            .and_then(|s| crate::topology::alloc::hub_ip(s.wireguard_cidr)),
    }
}

/// A node's health as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Unreachable,
    InterfaceDown,
    Up,
}

pub use crate::hosts::drift::running_vs_file as drift;
use crate::hosts::drift::{nets, short_key};

/// The diagnosis. Pure: unit-tested with fixtures.
///
/// Node rules (`node_rules`): an unreachable node is `unreachable` and nothing else; a reached
/// node without its interface up is `interface_down`; a next-hop with `ip_forward` 0 is
/// `forwarding_off`; a running interface that differs from its file is `drift`; a kubelet file
/// whose node IP is not the WireGuard address is `kubelet_node_ip`. A link with an unreachable
/// or down end is explained by that end's problem and blames nobody else.
///
/// The router rule (`router_rule`): site S's router is blamed (`port_forward_missing`) only
/// when several observers agree:
/// 1. S has an endpoint, and its next-hop N is up, forwarding, without drift, and has at least
///    one working link with another site (so N, its key and its uplink work);
/// 2. there is at least one witness: the next-hop W of a site without an endpoint (W must
///    dial S's endpoint: S's router has to accept the first packet), up, without drift, with at
///    least one working link to a site other than S (so W and its uplink work);
/// 3. every witness's link with N is down (they all agree).
///
/// Any other down link between two working ends is `no_handshake`, with what could cause it.
pub fn diagnose(topo: &Topology, obs: &Observations) -> StatusReport {
    let view = View::new(topo, obs);
    let (nodes, mut problems, drifted) = node_rules(&view);
    let links = link_states(&view);
    let verdict = router_rule(&view, &links, &drifted);
    problems.extend(verdict.problems);
    problems.extend(unexplained_links(
        &view,
        &links,
        &verdict.explained,
        &verdict.hints,
    ));
    let (failover, fo_problems, fo_warnings) = failover::sites(topo, obs);
    problems.extend(fo_problems);
    let mut warnings = reresolve_warnings(topo, obs);
    warnings.extend(fo_warnings);
    StatusReport {
        nodes,
        links,
        problems,
        warnings,
        failover,
    }
}

/// A next-hop without systemd has no re-resolution timer: an endpoint written as a name is
/// resolved once, when its interface comes up, so a site whose address changes stays cut off
/// from it until the interface restarts.
fn reresolve_warnings(topo: &Topology, obs: &Observations) -> Vec<String> {
    let mut out = Vec::new();
    for n in topo.nodes.iter().filter(|n| n.is_next_hop) {
        let Some(Ok(o)) = obs.get(&n.name) else {
            continue;
        };
        if o.facts.systemd {
            continue;
        }
        let names: Vec<String> = topo
            .peers(n)
            .into_iter()
            .filter_map(|p| p.endpoint)
            .filter(|e| crate::inventory::Endpoint::is_name(e))
            .collect();
        if !names.is_empty() {
            out.push(format!(
                "{}: nothing re-resolves {} without systemd: if that address changes, the link stays down until {} restarts",
                n.name,
                names.join(", "),
                topo.network.interface
            ));
        }
    }
    out
}

/// The observations with the plan, and who each public key is.
struct View<'a> {
    topo: &'a Topology,
    obs: &'a Observations,
    key_name: HashMap<String, String>,
}

impl<'a> View<'a> {
    fn new(topo: &'a Topology, obs: &'a Observations) -> View<'a> {
        // who a public key is: a reached node's interface key, an unmanaged site's key
        let mut key_name: HashMap<String, String> = HashMap::new();
        for n in &topo.nodes {
            if let Some(Ok(o)) = obs.get(&n.name)
                && let Some(wg) = &o.facts.wg
            {
                key_name.insert(wg.public_key.clone(), n.name.clone());
            }
        }
        for s in &topo.sites {
            if let Some(k) = &s.public_key {
                key_name.insert(k.to_base64(), format!("site {}", s.name));
            }
        }
        View {
            topo,
            obs,
            key_name,
        }
    }

    fn iface(&self) -> &InterfaceName {
        &self.topo.network.interface
    }

    fn health(&self, n: &str) -> Health {
        match self.obs.get(n) {
            Some(Ok(o)) if o.iface_up => Health::Up,
            Some(Ok(_)) => Health::InterfaceDown,
            _ => Health::Unreachable,
        }
    }

    fn seen(&self, n: &str) -> Option<&'a Observed> {
        self.obs.get(n).and_then(|o| o.as_ref().ok())
    }

    fn name_of(&self, key: &str) -> String {
        self.key_name
            .get(key)
            .cloned()
            .unwrap_or_else(|| short_key(key))
    }

    /// The live entry of a planned peer: by its key when known, else by its AllowedIPs.
    fn live<'w>(&self, wg: &'w WgState, p: &Peer) -> Option<&'w PeerState> {
        let label = peer_label(p);
        if let Some(x) = wg
            .peers
            .iter()
            .find(|x| self.key_name.get(&x.public_key) == Some(&label))
        {
            return Some(x);
        }
        let want: BTreeSet<Ipv4Net> = p.allowed_ips.iter().map(|n| n.trunc()).collect();
        wg.peers.iter().find(|x| nets(&x.allowed_ips) == want)
    }
}

fn peer_label(p: &Peer) -> String {
    match &p.peer {
        PeerRef::Node(n) => n.clone(),
        PeerRef::Site(s) => format!("site {s}"),
    }
}

fn age(o: &Observed, p: &PeerState) -> Option<u64> {
    (p.latest_handshake > 0).then(|| o.facts.now.saturating_sub(p.latest_handshake))
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Every planned link, once, with what its ends saw: up when a ping over it was answered, or a
/// handshake completed in the last 180 s while neither end's interface is down; unknown when
/// no end could be asked.
fn link_states(v: &View) -> Vec<LinkStatus> {
    let topo = v.topo;
    let mut links: Vec<LinkStatus> = Vec::new();
    let mut have: BTreeSet<(String, String)> = BTreeSet::new();
    for n in &topo.nodes {
        for p in topo.peers(n) {
            let other = peer_label(&p);
            if !have.insert(pair(&n.name, &other)) {
                continue;
            }
            let mut l = LinkStatus {
                from: n.name.clone(),
                to: other.clone(),
                up: false,
                state: LinkState::Unknown,
                cross_site: p.site != n.site,
                handshake_age: None,
                probes: BTreeMap::new(),
                relay: None,
                via: None,
            };
            // each managed end with its view of the other
            let mut ends: Vec<(&NodePlan, Peer)> = vec![(n, p.clone())];
            if let PeerRef::Node(o) = &p.peer
                && let Some(on) = topo.node(o)
                && let Some(back) = topo
                    .peers(on)
                    .into_iter()
                    .find(|q| q.peer == PeerRef::Node(n.name.clone()))
            {
                ends.push((on, back));
            }
            let mut any_down = false;
            let mut any_seen = false;
            for (x, xp) in &ends {
                match v.health(&x.name) {
                    Health::InterfaceDown => any_down = true,
                    Health::Unreachable => continue,
                    Health::Up => {}
                }
                let Some(o) = v.seen(&x.name) else { continue };
                any_seen = true;
                if let Some(ip) = peer_ip(topo, xp)
                    && let Some(a) = o.answered.get(&ip)
                {
                    l.probes.insert(x.name.clone(), *a);
                }
                if let Some(wg) = &o.facts.wg
                    && let Some(lp) = v.live(wg, xp)
                    && let Some(a) = age(o, lp)
                {
                    l.handshake_age = Some(l.handshake_age.map_or(a, |b: u64| b.min(a)));
                }
            }
            let answered = l.probes.values().any(|a| *a);
            let fresh = l.handshake_age.is_some_and(|a| a <= FRESH_HANDSHAKE_SECS);
            l.up = answered || (!any_down && fresh);
            // an unmanaged site cannot be pinged: without keepalive, an idle link and a broken
            // one look the same (a hand-run hub router can: its `.1`)
            let idle = peer_ip(topo, &p).is_none() && p.persistent_keepalive.is_none();
            l.state = if l.up {
                LinkState::Up
            } else if any_seen && (any_down || !idle) {
                LinkState::Down
            } else {
                LinkState::Unknown
            };
            links.push(l);
        }
    }
    links.extend(relayed::link_states(v));
    links
}

/// `no_handshake` for every down link between two working ends that no rule explains.
fn unexplained_links(
    v: &View,
    links: &[LinkStatus],
    explained: &BTreeSet<(String, String)>,
    hints: &BTreeMap<(String, String), String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for l in links.iter().filter(|l| l.state == LinkState::Down) {
        let ends_ok = [l.from.as_str(), l.to.as_str()]
            .iter()
            .filter(|e| !e.starts_with("site "))
            .all(|e| v.health(e) == Health::Up);
        let k = pair(&l.from, &l.to);
        if !ends_ok || explained.contains(&k) || relayed::explained_by_a_leg(l, links) {
            continue;
        }
        let when = match l.handshake_age {
            None => "never completed a handshake".to_string(),
            Some(a) => format!("had its last handshake {a} s ago"),
        };
        let mut why = format!(
            "{} and {} are both up, but their link {when} and no ping over {} was answered",
            l.from,
            l.to,
            v.iface()
        );
        if let Some(h) = hints.get(&k) {
            let _ = write!(why, "; {h}");
        } else if let (Some(r), Some(via)) = (&l.relay, &l.via) {
            let _ = write!(
                why,
                "; neither site has an endpoint, so they reach each other through relay {r}'s next-hop {via}: check {via} (up, forwarding) and its links with both"
            );
        } else if l.cross_site {
            why.push_str("; check the endpoints, the keys at both ends and the port-forwards of the sites that must accept the first packet");
        } else {
            why.push_str("; check the LAN between them and their firewalls");
        }
        out.push(Problem {
            kind: Kind::NoHandshake,
            site: None,
            node: Some(l.from.clone()),
            peer: Some(l.to.clone()),
            why,
        });
    }
    out
}
