//! A site's standby next-hop and the failover watchdog's view of it.
//!
//! The standby peers like a hub (with its site's members and with every other site's hubs and
//! standbys) but its peers give it only its own address until it takes over:
//! - every other site's hub (and standby) has a peer for it with `AllowedIPs = standby/32,
//!   probe/32` and its `standby_endpoint`, beside the hub's peer, which carries the site's block
//!   plus the hub's own /32 and probe /32;
//! - every member of the site has a second peer, the standby at its LAN address, beside the
//!   hub's peer, which carries the whole WireGuard space plus the hub's /32 and probe /32.
//!
//! With dual stack every one of these networks has its IPv6 counterpart on the same peer (the
//! standby's own /128 and its probe's among them).
//!
//! Failing over moves the site's networks — its block on another site's hub, the WireGuard space
//! on a member, and with dual stack their IPv6 counterparts too — from the hub's peer to the
//! standby's with one `wg set`; both keep their own /32s (and /128s), so each stays reachable
//! (and probed) on its own. A member routes everything through the
//! standby while the site has failed over, as it routes everything through the hub otherwise.
//!
//! Each candidate also has a *probe address*: an address of the site's block that no node holds
//! (the block's last two host addresses), routed to that candidate alone. A ping to it with
//! TTL 1 comes back as "time to live exceeded" from the candidate only when it forwards (the
//! kernel answers that on its forwarding path, not for its own addresses): a check that traffic
//! goes *through* a hub without moving any real traffic onto it.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use super::{NodePlan, Peer, PeerRef, SitePlan, Topology, host_port};

/// The probe addresses of a site's block: (the hub's, the standby's). The block's last two
/// host addresses; allocation never hands them out in a site with a standby.
pub fn probe_ips(block: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let b = u32::from(block.broadcast());
    (Ipv4Addr::from(b - 1), Ipv4Addr::from(b - 2))
}

/// The addresses a site keeps out of allocation: its probe addresses, when it has a standby.
pub(super) fn reserved(site: &crate::inventory::Site, block: Ipv4Net) -> Vec<Ipv4Addr> {
    match site.standby {
        Some(_) => {
            let (a, b) = probe_ips(block);
            vec![a, b]
        }
        None => Vec::new(),
    }
}

/// One of the two nodes that can carry a site's routes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// Its WireGuard address (its own /32 stays on its peer).
    pub ip: Ipv4Addr,
    /// Its probe address (see the module docs).
    pub probe: Ipv4Addr,
}

/// A site a node's watchdog fails over: what moves between which peers, and what it pings
/// through the active one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failover {
    /// The site.
    pub site: String,
    /// Its next-hop.
    pub hub: Candidate,
    /// Its standby.
    pub standby: Candidate,
    /// The networks that move: the site's block (on another site's hub), the WireGuard space
    /// (on a member of the site); with dual stack, its IPv6 counterpart follows.
    pub moves: Vec<IpNet>,
    /// Addresses behind the site's active hub, as seen from this node: when none answers
    /// through it, it does not forward. Empty: the probe address alone decides.
    pub targets: Vec<Ipv4Addr>,
}

/// The site's hub and standby, when it has a standby.
pub fn pair<'a>(topo: &'a Topology, site: &SitePlan) -> Option<(&'a NodePlan, &'a NodePlan)> {
    let sb = site.standby.as_ref()?;
    let hub = topo.node(site.next_hop.as_deref()?)?;
    Some((hub, topo.node(&sb.node)?))
}

fn candidate(n: &NodePlan, probe: Ipv4Addr) -> Candidate {
    Candidate {
        name: n.name.clone(),
        ip: n.wireguard_ip,
        probe,
    }
}

/// Addresses behind `site`'s hub seen from `node`: the site's other members, and for a member
/// of the site the other sites' hubs too (at most four: one answering is enough).
fn targets(topo: &Topology, node: &NodePlan, site: &SitePlan, pair: [&str; 2]) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = Vec::new();
    if node.site == site.name {
        for other in topo.sites.iter().filter(|s| s.name != site.name) {
            if let Some(h) = other.next_hop.as_deref().and_then(|h| topo.node(h)) {
                v.push(h.wireguard_ip);
            }
        }
    }
    v.extend(
        site.nodes
            .iter()
            .filter(|m| !pair.contains(&m.as_str()) && **m != node.name)
            .filter_map(|m| topo.node(m))
            .map(|m| m.wireguard_ip),
    );
    v.truncate(4);
    v
}

/// The sites whose routes `node`'s watchdog moves: its own site's (a member, neither hub nor
/// standby), and, on a hub or standby, every other site with a standby.
pub fn watched(topo: &Topology, node: &NodePlan) -> Vec<Failover> {
    let mut out = Vec::new();
    for site in &topo.sites {
        let Some((hub, sb)) = pair(topo, site) else {
            continue;
        };
        if node.name == hub.name || node.name == sb.name {
            continue;
        }
        let moves4 = if node.site == site.name {
            topo.network.wireguard_cidr
        } else if node.is_next_hop || node.is_standby {
            site.wireguard_cidr
        } else {
            continue;
        };
        let mut moves = vec![IpNet::V4(moves4)];
        moves.extend(topo.network.net6_of(moves4).map(IpNet::V6));
        let (hp, sp) = probe_ips(site.wireguard_cidr);
        out.push(Failover {
            site: site.name.clone(),
            hub: candidate(hub, hp),
            standby: candidate(sb, sp),
            moves,
            targets: targets(topo, node, site, [&hub.name, &sb.name]),
        });
    }
    out
}

/// Adds the standbys to `node`'s peers: the hub's peer of a site with a standby also carries
/// the hub's /32 and probe address, and the standby's peer follows it with its own.
pub(super) fn amend(topo: &Topology, node: &NodePlan, peers: &mut Vec<Peer>) {
    let mut out = Vec::with_capacity(peers.len());
    for mut p in peers.drain(..) {
        let PeerRef::Node(h) = &p.peer else {
            out.push(p);
            continue;
        };
        let Some(site) = topo.site(&p.site) else {
            out.push(p);
            continue;
        };
        let pair = pair(topo, site).filter(|(hub, sb)| hub.name == *h && sb.name != node.name);
        let Some((hub, sb)) = pair else {
            out.push(p);
            continue;
        };
        let (hp, sp) = probe_ips(site.wireguard_cidr);
        p.allowed_ips.push(host(hub.wireguard_ip));
        p.allowed_ips.push(host(hp));
        let endpoint = if node.site == site.name {
            Some(host_port(&sb.address, topo.network.listen_port))
        } else {
            site.standby
                .as_ref()
                .and_then(|s| s.endpoint.as_ref())
                .map(|e| e.to_string())
        };
        let standby = Peer {
            peer: PeerRef::Node(sb.name.clone()),
            site: site.name.clone(),
            allowed_ips: vec![host(sb.wireguard_ip), host(sp)],
            endpoint,
            persistent_keepalive: p.persistent_keepalive,
        };
        out.push(p);
        out.push(standby);
    }
    // inside a site with a standby every link keeps its session fresh: a hub whose interface
    // restarts is rejoined by all its members at once, so every watchdog sees it back in the
    // same check (a stale session would take a member up to 15 s longer to notice)
    if topo.site(&node.site).is_some_and(|s| s.standby.is_some()) {
        let keep = topo.network.persistent_keepalive;
        for p in out.iter_mut().filter(|p| p.site == node.site && keep > 0) {
            p.persistent_keepalive = p.persistent_keepalive.or(Some(keep));
        }
    }
    *peers = out;
}

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: n1\n    standby: n2\n    standby_endpoint: 203.0.113.10:51821\n    router: opnsense\n    nodes:\n      n1: { address: 192.168.0.10 }\n      n2: { address: 192.168.0.11 }\n      n3: { address: 192.168.0.12 }\n  office:\n    endpoint: 198.51.100.20:51820\n    router: pfsense\n    next_hop: o1\n    nodes:\n      o1: { address: 192.168.10.5 }\n      o2: { address: 192.168.10.6 }\n";

    fn topo() -> Topology {
        topo_of(INV)
    }

    fn topo_of(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    fn show(t: &Topology, n: &str) -> Vec<String> {
        t.peers(t.node(n).unwrap())
            .iter()
            .map(|p| {
                let who = match &p.peer {
                    PeerRef::Node(n) | PeerRef::Site(n) => n.clone(),
                };
                let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
                format!(
                    "{who} {} {}",
                    ips.join(","),
                    p.endpoint.clone().unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn the_standby_carries_only_its_own_address_until_it_takes_over() {
        let t = topo();
        assert!(t.node("n2").unwrap().is_standby);
        assert_eq!(
            show(&t, "o1"),
            vec![
                "o2 10.100.1.2/32 192.168.10.6:51820",
                "n1 10.100.0.0/24,10.100.0.1/32,10.100.0.254/32 203.0.113.10:51820",
                "n2 10.100.0.2/32,10.100.0.253/32 203.0.113.10:51821",
            ]
        );
        assert_eq!(
            show(&t, "n3"),
            vec![
                "n1 10.100.0.0/16,10.100.0.1/32,10.100.0.254/32 192.168.0.10:51820",
                "n2 10.100.0.2/32,10.100.0.253/32 192.168.0.11:51820",
            ]
        );
        // the standby peers like a hub: its site's members, every other site's hub
        assert_eq!(
            show(&t, "n2"),
            vec![
                "n1 10.100.0.1/32 192.168.0.10:51820",
                "n3 10.100.0.3/32 192.168.0.12:51820",
                "o1 10.100.1.0/24 198.51.100.20:51820",
            ]
        );
        // the hub is unchanged: the standby is one of its members
        assert_eq!(show(&t, "n1").len(), 3);
        // a member of another site has nothing to do with it
        assert_eq!(show(&t, "o2").len(), 1);
    }

    #[test]
    fn watchdogs_run_on_the_members_and_on_the_other_sites_hubs() {
        let t = topo();
        let w = |n: &str| watched(&t, t.node(n).unwrap());
        for n in ["n1", "n2", "o2"] {
            assert!(w(n).is_empty(), "{n}");
        }
        let o1 = &w("o1")[0];
        assert_eq!(o1.moves, vec!["10.100.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(o1.targets, vec!["10.100.0.3".parse::<Ipv4Addr>().unwrap()]);
        let n3 = &w("n3")[0];
        assert_eq!(n3.moves, vec!["10.100.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(n3.targets, vec!["10.100.1.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            (n3.hub.probe.to_string(), n3.standby.probe.to_string()),
            ("10.100.0.254".into(), "10.100.0.253".into())
        );
    }

    #[test]
    fn with_dual_stack_both_families_move_and_the_standby_keeps_only_its_own_128() {
        let t = topo_of(&INV.replace(
            "  wireguard_cidr: 10.100.0.0/16\n",
            "  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n",
        ));
        let w = |n: &str| watched(&t, t.node(n).unwrap());
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(w("o1")[0].moves, nets(&["10.100.0.0/24", "fd10:100::/64"]));
        assert_eq!(w("n3")[0].moves, nets(&["10.100.0.0/16", "fd10:100::/48"]));
        let o1 = t.node("o1").unwrap();
        let written: Vec<Vec<String>> = t.peers(o1).iter().map(|p| t.allowed_ips(p)).collect();
        assert_eq!(
            written[1..],
            [
                vec![
                    "10.100.0.0/24",
                    "10.100.0.1/32",
                    "10.100.0.254/32",
                    "fd10:100::/64",
                    "fd10:100::1/128",
                    "fd10:100::fe/128",
                ],
                vec![
                    "10.100.0.2/32",
                    "10.100.0.253/32",
                    "fd10:100::2/128",
                    "fd10:100::fd/128",
                ],
            ]
        );
    }
}
