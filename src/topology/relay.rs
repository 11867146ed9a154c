//! Relays: two sites without an endpoint (behind carrier-grade NAT) cannot start a handshake
//! with each other, so they reach each other through the next-hop of a relay site (a managed
//! site with an endpoint, `network.relay` or a site's own `relay:`). Each of them carries the
//! other's block on its peer for the relay, keeps that link open with a keepalive, and the
//! relay's next-hop, which peers with both directly, forwards between them (wg0 to wg0, as
//! every next-hop does for its members).

use std::collections::HashMap;

use super::{Network, SitePlan, Topology};

/// The keepalive on a link to a relay: the network's, or 25 s when the network turns it off
/// (the site behind NAT must keep its mapping open, or the relay cannot reach it).
pub fn keepalive(net: &Network) -> u16 {
    if net.persistent_keepalive > 0 {
        net.persistent_keepalive
    } else {
        25
    }
}

/// Two sites that reach each other through a relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relayed {
    /// One site (the earlier in the inventory).
    pub a: String,
    /// The other site.
    pub b: String,
    /// The relay site.
    pub relay: String,
}

impl std::fmt::Display for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} via relay {}", self.a, self.b, self.relay)
    }
}

/// A relayed pair of sites as links between next-hop nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedLink {
    /// The sites.
    pub sites: Relayed,
    /// Site `a`'s next-hop.
    pub from: String,
    /// Site `b`'s next-hop.
    pub to: String,
    /// The relay site's next-hop (what forwards between them).
    pub via: String,
}

impl Topology {
    /// The relay site through which sites `a` and `b` reach each other: neither has an
    /// endpoint, and the relay is the one they name (a site's own, else the network's).
    pub fn relay_between(&self, a: &str, b: &str) -> Option<&SitePlan> {
        let (sa, sb) = (self.site(a)?, self.site(b)?);
        if a == b || sa.endpoint.is_some() || sb.endpoint.is_some() {
            return None;
        }
        let r = self.site(sa.relay.as_deref().or(sb.relay.as_deref())?)?;
        (r.managed && r.endpoint.is_some() && r.name != a && r.name != b).then_some(r)
    }

    /// For `site`'s hub: the sites each relay carries for it, by relay site name.
    pub fn carried_by_relays(&self, site: &SitePlan) -> HashMap<&str, Vec<&SitePlan>> {
        let mut m: HashMap<&str, Vec<&SitePlan>> = HashMap::new();
        for o in &self.sites {
            if let Some(r) = self.relay_between(&site.name, &o.name) {
                m.entry(r.name.as_str()).or_default().push(o);
            }
        }
        m
    }

    /// Every pair of sites that reach each other through a relay, in inventory order.
    pub fn relayed(&self) -> Vec<Relayed> {
        let mut v = Vec::new();
        for (i, a) in self.sites.iter().enumerate() {
            for b in &self.sites[i + 1..] {
                if let Some(r) = self.relay_between(&a.name, &b.name) {
                    v.push(Relayed {
                        a: a.name.clone(),
                        b: b.name.clone(),
                        relay: r.name.clone(),
                    });
                }
            }
        }
        v
    }

    /// The relayed pairs whose two next-hops and relay next-hop are hosts wgprov runs: the
    /// links the guard and `status` probe across the relay.
    pub fn relayed_links(&self) -> Vec<RelayedLink> {
        let hop = |s: &str| {
            let nh = self.site(s)?.next_hop.as_deref()?;
            self.node(nh).map(|n| n.name.clone())
        };
        self.relayed()
            .into_iter()
            .filter_map(|r| {
                Some(RelayedLink {
                    from: hop(&r.a)?,
                    to: hop(&r.b)?,
                    via: hop(&r.relay)?,
                    sites: r,
                })
            })
            .collect()
    }

    /// The relayed link between next-hops `a` and `b` (either order), if they are one.
    pub fn relayed_link(&self, a: &str, b: &str) -> Option<RelayedLink> {
        self.relayed_links()
            .into_iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Peer, PeerRef};
    use super::*;

    /// A relay (a VPS with an endpoint) and two sites behind CGNAT, plus one with an endpoint.
    const RELAYED: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n  relay: vps\nsites:\n  vps:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      v1: {address: 192.168.5.10}\n  north:\n    next_hop: n1\n    nodes:\n      n1: {address: 192.168.1.10}\n      n2: {address: 192.168.1.11}\n  south:\n    next_hop: s1\n    nodes:\n      s1: {address: 192.168.2.10}\n      s2: {address: 192.168.2.11}\n  office:\n    endpoint: 198.51.100.20:51820\n    nodes:\n      o1: {address: 192.168.3.10}\n";

    fn topo(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("t.yaml"), yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    fn peers(t: &Topology, n: &str) -> Vec<Peer> {
        t.peers(t.node(n).unwrap())
    }

    fn peer(t: &Topology, n: &str, of: &str) -> Option<Peer> {
        peers(t, n)
            .into_iter()
            .find(|p| p.peer == PeerRef::Node(of.into()))
    }

    fn allowed(p: &Peer) -> Vec<String> {
        p.allowed_ips.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn sites_without_endpoint_reach_each_other_through_the_relay_next_hop() {
        let t = topo(RELAYED);
        // north's next-hop: no peer for south; its peer for the relay carries south's block
        assert_eq!(
            peer(&t, "n1", "s1"),
            None,
            "no direct peer between NAT'd sites"
        );
        let v = peer(&t, "n1", "v1").unwrap();
        assert_eq!(allowed(&v), ["10.100.0.0/24", "10.100.2.0/24"]);
        assert_eq!(v.endpoint.as_deref(), Some("203.0.113.10:51820"));
        assert_eq!(v.persistent_keepalive, Some(25));
        // and the other way round
        let v = peer(&t, "s1", "v1").unwrap();
        assert_eq!(allowed(&v), ["10.100.0.0/24", "10.100.1.0/24"]);
        assert_eq!(peer(&t, "s1", "n1"), None);
        // a site with an endpoint is peered directly, carrying only its own block
        let o = peer(&t, "n1", "o1").unwrap();
        assert_eq!(allowed(&o), ["10.100.3.0/24"]);
        // the relay peers with both directly: their blocks, no endpoint (they dial it)
        let n = peer(&t, "v1", "n1").unwrap();
        assert_eq!(
            (allowed(&n), n.endpoint),
            (vec!["10.100.1.0/24".into()], None)
        );
        let s = peer(&t, "v1", "s1").unwrap();
        assert_eq!(
            (allowed(&s), s.endpoint),
            (vec!["10.100.2.0/24".into()], None)
        );
        // members are unchanged: the whole space through their next-hop
        let m = peers(&t, "n2");
        assert_eq!(m.len(), 1);
        assert_eq!(allowed(&m[0]), ["10.100.0.0/16"]);
        // the office (endpoint) peers with everyone directly, the relay carries nothing there
        assert_eq!(peers(&t, "o1").len(), 3);
        assert!(peers(&t, "o1").iter().all(|p| p.allowed_ips.len() == 1));
    }

    #[test]
    fn relayed_pairs_and_links_name_the_relay() {
        let t = topo(RELAYED);
        let r = t.relayed();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to_string(), "north -> south via relay vps");
        let l = t.relayed_link("s1", "n1").unwrap();
        assert_eq!(
            (l.from.as_str(), l.to.as_str(), l.via.as_str()),
            ("n1", "s1", "v1")
        );
        assert!(t.relay_between("north", "office").is_none());
        assert!(t.relay_between("north", "vps").is_none());
    }

    #[test]
    fn a_relay_link_keeps_a_keepalive_when_the_network_turns_it_off() {
        let t = topo(&RELAYED.replace(
            "  relay: vps\n",
            "  relay: vps\n  persistent_keepalive: 0\n",
        ));
        assert_eq!(peer(&t, "n1", "v1").unwrap().persistent_keepalive, Some(25));
        assert_eq!(peer(&t, "n1", "o1").unwrap().persistent_keepalive, None);
        assert_eq!(peer(&t, "v1", "n1").unwrap().persistent_keepalive, None);
    }

    #[test]
    fn a_site_s_own_relay_wins_over_the_network_s() {
        let y = RELAYED
            .replace("  relay: vps\n", "")
            .replace("  north:\n", "  north:\n    relay: office\n")
            .replace("  south:\n", "  south:\n    relay: office\n");
        let t = topo(&y);
        assert_eq!(t.relayed()[0].relay, "office");
        assert_eq!(
            allowed(&peer(&t, "n1", "o1").unwrap()),
            ["10.100.3.0/24", "10.100.2.0/24"]
        );
        assert_eq!(allowed(&peer(&t, "n1", "v1").unwrap()), ["10.100.0.0/24"]);
    }

    #[test]
    fn the_controller_s_path_from_one_relayed_site_to_another_crosses_the_relay() {
        let y = RELAYED
            .replace(
                "  north:\n",
                "  north:\n    lan_cidrs: [192.168.1.0/24]\n    lan_access: true\n",
            )
            .replace(
                "s2: {address: 192.168.2.11}",
                "s2: {address: 192.168.2.11, ssh: {host: 10.100.2.2}}",
            )
            .replace(
                "o1: {address: 192.168.3.10}",
                "o1: {address: 192.168.3.10, ssh: {host: 10.100.3.1}}",
            );
        let t = topo(&y);
        let p = crate::topology::reach::paths(&t);
        assert_eq!(p["s2"], ["n1", "v1", "s1"]);
        assert_eq!(p["o1"], ["n1"], "office has an endpoint: reached directly");
    }
}
