//! Links between two sites without an endpoint, which reach each other through a relay's
//! next-hop: no handshake of their own (neither has a peer entry for the other), so only a
//! ping over the interface, which crosses the relay, tells whether they work.

use std::collections::BTreeMap;

use super::{Health, View};
use crate::status::report::{LinkState, LinkStatus};

/// Every relayed link between next-hops wgprov runs, with what its ends' pings saw.
pub(super) fn link_states(v: &View) -> Vec<LinkStatus> {
    let topo = v.topo;
    let mut out = Vec::new();
    for r in topo.relayed_links() {
        let mut l = LinkStatus {
            from: r.from.clone(),
            to: r.to.clone(),
            up: false,
            state: LinkState::Unknown,
            cross_site: true,
            handshake_age: None,
            probes: BTreeMap::new(),
            relay: Some(r.sites.relay.clone()),
            via: Some(r.via.clone()),
        };
        let mut any_down = false;
        for (end, other) in [(&r.from, &r.to), (&r.to, &r.from)] {
            match v.health(end) {
                Health::InterfaceDown => any_down = true,
                Health::Unreachable => continue,
                Health::Up => {}
            }
            if let (Some(o), Some(ip)) = (v.seen(end), topo.node(other).map(|x| x.wireguard_ip))
                && let Some(a) = o.answered.get(&ip)
            {
                l.probes.insert(end.clone(), *a);
            }
        }
        l.up = l.probes.values().any(|a| *a);
        l.state = if l.up {
            LinkState::Up
        } else if any_down || !l.probes.is_empty() {
            LinkState::Down
        } else {
            LinkState::Unknown
        };
        out.push(l);
    }
    out
}

/// True for a relayed link one of whose legs (an end with the relay's next-hop) is not up:
/// that leg's own problem explains it, and is reported once, there.
pub(super) fn explained_by_a_leg(l: &LinkStatus, links: &[LinkStatus]) -> bool {
    let Some(via) = &l.via else { return false };
    let ends =
        |x: &LinkStatus, a: &str, b: &str| (x.from == a && x.to == b) || (x.from == b && x.to == a);
    links.iter().any(|x| {
        x.relay.is_none()
            && x.state != LinkState::Up
            && (ends(x, &l.from, via) || ends(x, &l.to, via))
    })
}
