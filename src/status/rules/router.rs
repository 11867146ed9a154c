//! The router rules: a site's router blamed for a missing port-forward only when several
//! observers agree (`port_forward_missing`), and the managed routers' own problems.

use std::collections::{BTreeMap, BTreeSet};

use crate::topology::{SitePlan, Topology};

use super::{Health, View, pair};
use crate::status::observe::RouterFacts;
use crate::status::report::{Kind, LinkState, LinkStatus, Problem};

/// What the router rule concluded.
#[derive(Default)]
pub(super) struct RouterVerdict {
    /// `port_forward_missing` problems.
    pub(super) problems: Vec<Problem>,
    /// Links the blamed routers explain.
    pub(super) explained: BTreeSet<(String, String)>,
    /// For down links a router could explain but was not blamed for: why not.
    pub(super) hints: BTreeMap<(String, String), String>,
}

/// The links as the router rule reads them.
struct Links<'a> {
    v: &'a View<'a>,
    links: &'a [LinkStatus],
    drifted: &'a BTreeSet<String>,
}

impl Links<'_> {
    fn of(&self, a: &str, b: &str) -> Option<&LinkStatus> {
        self.links
            .iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
    }

    fn site_of(&self, end: &str) -> Option<String> {
        match end.strip_prefix("site ") {
            Some(s) => Some(s.to_string()),
            None => self.v.topo.node(end).map(|x| x.site.clone()),
        }
    }

    /// Working links from `n` to sites other than its own and `except`.
    fn cross_up(&self, n: &str, except: &str) -> Vec<String> {
        let own = self
            .v
            .topo
            .node(n)
            .map(|x| x.site.clone())
            .unwrap_or_default();
        self.links
            .iter()
            .filter(|l| l.up && l.cross_site && l.relay.is_none() && (l.from == n || l.to == n))
            .map(|l| {
                if l.from == n {
                    l.to.clone()
                } else {
                    l.from.clone()
                }
            })
            .filter(|o| self.site_of(o).is_some_and(|s| s != own && s != except))
            .collect()
    }

    /// Up and without drift.
    fn sound(&self, n: &str) -> bool {
        self.v.health(n) == Health::Up && !self.drifted.contains(n)
    }

    fn is_down(&self, a: &str, b: &str) -> bool {
        self.of(a, b).is_some_and(|l| l.state == LinkState::Down)
    }
}

/// Whether a site's router is blamed for its next-hop's down links.
enum Judgement<'a> {
    /// Blamed: the next-hop's working links with other sites (`vouchers`), and each witness
    /// with its working links.
    Blamed {
        vouchers: Vec<String>,
        witnesses: Vec<(&'a str, Vec<String>)>,
    },
    /// Not blamed, because of this.
    NotBlamed(String),
}

/// The router rule (see [`super::diagnose`]).
pub(super) fn router_rule(
    v: &View,
    links: &[LinkStatus],
    drifted: &BTreeSet<String>,
) -> RouterVerdict {
    let l = Links { v, links, drifted };
    let mut out = RouterVerdict::default();
    for s in v.topo.sites.iter().filter(|s| s.managed) {
        site_router_rule(&l, s, &mut out);
    }
    out
}

/// The router rule for site `s`: blames its router, or says on each down link why not.
fn site_router_rule(l: &Links, s: &SitePlan, out: &mut RouterVerdict) {
    let topo = l.v.topo;
    let (Some(ep), Some(nh)) = (&s.endpoint, s.next_hop.as_deref()) else {
        return;
    };
    let Some(nhp) = topo.node(nh) else { return };
    // next-hops of managed sites without an endpoint: they must dial S's endpoint
    let dialers: Vec<&str> = topo
        .sites
        .iter()
        .filter(|t| t.managed && t.name != s.name && t.endpoint.is_none())
        .filter_map(|t| t.next_hop.as_deref())
        .collect();
    let down: Vec<&str> = dialers
        .iter()
        .copied()
        .filter(|w| l.is_down(w, nh))
        .collect();
    if down.is_empty() || l.v.health(nh) != Health::Up {
        // nothing to explain, or the next-hop's own problem explains it
        return;
    }
    let forward = format!(
        "udp {} -> {}:{}",
        ep.port, nhp.address, topo.network.listen_port
    );
    let (vouchers, witnesses) = match judge(l, s, nh, &dialers) {
        Judgement::Blamed {
            vouchers,
            witnesses,
        } => (vouchers, witnesses),
        Judgement::NotBlamed(why) => {
            for w in &down {
                out.hints.insert(
                    pair(w, nh),
                    format!(
                        "{w}'s site has no endpoint, so {nh} is reached through site {}'s port-forward ({forward}); it is not blamed because {why}",
                        s.name
                    ),
                );
            }
            return;
        }
    };
    let agree: Vec<&str> = witnesses.iter().map(|(w, _)| *w).collect();
    let dial = match agree.as_slice() {
        [w] => format!(
            "{w}, next-hop of site {} which has no endpoint, must dial {ep} and never completes",
            topo.node(w).map(|x| x.site.as_str()).unwrap_or("?")
        ),
        _ => format!(
            "{}, next-hops of sites without an endpoint, must dial {ep} and never complete",
            agree.join(", ")
        ),
    };
    let told: Vec<String> = witnesses
        .iter()
        .map(|(w, up)| format!("{w} has working links with {}", up.join(", ")))
        .collect();
    for w in &agree {
        out.explained.insert(pair(w, nh));
    }
    out.problems.push(Problem {
        kind: Kind::PortForwardMissing,
        site: Some(s.name.clone()),
        node: None,
        peer: None,
        why: format!(
            "site {}'s router ({}) does not forward UDP {} to its next-hop {nh}: {dial} a handshake with {nh}, while {nh} is up, forwarding and has working links with {}, and {}. Create the port-forward {forward} on {}'s router",
            s.name,
            s.router.as_str(),
            ep.port,
            vouchers.join(", "),
            told.join("; "),
            s.name
        ),
    });
}

/// Whether site `s`'s router is to blame for the down links between its next-hop `nh` and the
/// `dialers` (the next-hops that must dial it): only when `nh` works, and every sound witness
/// agrees.
fn judge<'a>(l: &Links, s: &SitePlan, nh: &str, dialers: &[&'a str]) -> Judgement<'a> {
    let not_blamed = Judgement::NotBlamed;
    if l.drifted.contains(nh) {
        return not_blamed(format!(
            "{nh}'s running interface differs from its file (its own problem)"
        ));
    }
    if l.v.seen(nh).and_then(|o| o.ip_forward) == Some(false) {
        return not_blamed(format!("{nh} does not forward (its own problem)"));
    }
    let vouchers = l.cross_up(nh, "");
    if vouchers.is_empty() {
        return not_blamed(format!(
            "{nh} has no working link with any other site, so {nh} or its uplink may be the cause"
        ));
    }
    let witnesses: Vec<(&str, Vec<String>)> = dialers
        .iter()
        .copied()
        .filter(|w| l.sound(w) && l.of(w, nh).is_some_and(|x| x.state != LinkState::Unknown))
        .map(|w| (w, l.cross_up(w, &s.name)))
        .filter(|(_, up)| !up.is_empty())
        .collect();
    if witnesses.is_empty() {
        return not_blamed(format!(
            "no next-hop of a site without an endpoint works with another site, so nobody can vouch that the fault is on {}'s side",
            s.name
        ));
    }
    let works: Vec<&str> = witnesses
        .iter()
        .map(|(w, _)| *w)
        .filter(|w| !l.is_down(w, nh))
        .collect();
    if !works.is_empty() {
        return not_blamed(format!(
            "{} complete{} a handshake with {nh} through that port-forward",
            works.join(", "),
            if works.len() == 1 { "s" } else { "" }
        ));
    }
    Judgement::Blamed {
        vouchers,
        witnesses,
    }
}

/// Problems of the routers wgprov manages that only forward the port, from their facts (or why
/// they could not be read): the router itself says whether wgprov's rules are in place
/// (`router-pf.sh check`), so naming it is no guess. A router without wgprov's script yet is
/// not named: its port-forward may have been made by hand.
pub fn router_problems(topo: &Topology, facts: &RouterFacts) -> Vec<Problem> {
    let mut out = Vec::new();
    for (site, r) in topo.routers().filter(|(_, r)| topo.node(&r.name).is_none()) {
        let problem = |kind: Kind, why: String| Problem {
            kind,
            site: Some(site.name.clone()),
            node: Some(r.name.clone()),
            peer: None,
            why,
        };
        match facts.get(&r.name) {
            Some(Ok(f)) => {
                if let Some(d) = crate::hosts::kind::HostKind::Forwarder(site, r).script_drift(f) {
                    out.push(problem(
                        Kind::Drift,
                        format!(
                            "site {}'s managed router {}: {d}; wgprov apply puts them back",
                            site.name, r.name
                        ),
                    ));
                }
            }
            Some(Err(e)) => out.push(problem(
                Kind::Unreachable,
                format!(
                    "site {}'s managed router {} could not be read: {e}",
                    site.name, r.name
                ),
            )),
            None => {}
        }
    }
    out
}
