//! Which hosts a run targets: `--limit` takes a node name, a site name or a glob over node
//! names (comma-separated); it narrows which hosts are changed, never who their peers are.

use super::*;

/// True when `node` matches `--limit` (a node name, a site name, or a glob over node names).
pub fn matches_limit(limit: &str, node: &NodePlan) -> bool {
    limit
        .split(',')
        .map(str::trim)
        .any(|l| l == node.name || l == node.site || glob(l, &node.name))
}

/// The nodes `--limit` selects (every node without it).
pub(super) fn targeted_nodes<'a>(topo: &'a Topology, settings: &Settings) -> Vec<&'a NodePlan> {
    limited(&topo.nodes, settings)
}

/// The nodes being taken out that `--limit` selects (every one without it).
pub(super) fn targeted_removed<'a>(topo: &'a Topology, settings: &Settings) -> Vec<&'a NodePlan> {
    limited(&topo.removed, settings)
}

/// The nodes of `nodes` that `--limit` selects.
fn limited<'a>(nodes: &'a [NodePlan], settings: &Settings) -> Vec<&'a NodePlan> {
    let limit = settings.limit.as_deref();
    nodes
        .iter()
        .filter(|n| limit.is_none_or(|l| matches_limit(l, n)))
        .collect()
}

/// What `--limit` leaves undone of a removal: a node taken out whose peers stay outside the
/// run keep their entry for it; one outside the run is dropped by its peers but not cleaned.
pub(super) fn removal_limits(topo: &Topology, settings: &Settings) -> Vec<String> {
    let mut w = over_the_mesh(topo);
    let Some(limit) = settings.limit.as_deref() else {
        return w;
    };
    for r in &topo.removed {
        if matches_limit(limit, r) {
            // a member's peer is its site's next-hop; a removed site's next-hop's are the other
            // sites' next-hops
            let site_stays = topo.site(&r.site).is_some();
            let peers: Vec<&str> = topo
                .nodes
                .iter()
                .filter(|n| n.is_next_hop)
                .filter(|n| {
                    if site_stays {
                        n.site == r.site
                    } else {
                        r.is_next_hop
                    }
                })
                .filter(|n| !matches_limit(limit, n))
                .map(|n| n.name.as_str())
                .collect();
            if !peers.is_empty() {
                w.push(format!(
                    "node {} is taken out, but hosts outside --limit keep their entry for it until they are applied: {}",
                    r.name,
                    peers.join(", ")
                ));
            }
        } else {
            w.push(format!(
                "node {} is marked `state: absent` but is outside --limit: hosts in this run drop it, but it is not cleaned",
                r.name
            ));
        }
    }
    w
}

/// A node taken out that the controller reaches over the mesh itself: once its wg0 is down, no
/// fresh connection reaches it to confirm, and its dead-man puts it back (up, but peered with
/// nobody).
fn over_the_mesh(topo: &Topology) -> Vec<String> {
    let space = topo.network.wireguard_cidr;
    topo.removed
        .iter()
        .filter(|n| {
            n.ssh
                .host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| space.contains(&a))
        })
        .map(|n| {
            format!(
                "node {} is reached over the mesh itself (ssh host {}): taken out, it cannot be reached again to confirm, and puts itself back after the confirm timeout; give it an ssh.host outside the WireGuard space for its removal",
                n.name, n.ssh.host
            )
        })
        .collect()
}

/// The managed routers `--limit` selects: by their name (`<site>-router`), their site's name,
/// or a glob over their name (every managed router without it).
pub(super) fn targeted_routers(topo: &Topology, settings: &Settings) -> Vec<String> {
    let limit = settings.limit.as_deref();
    topo.routers()
        // a hub router (`next_hop: router`) is planned as a node of its site
        .filter(|(_, r)| topo.node(&r.name).is_none())
        .filter(|(s, r)| {
            limit.is_none_or(|l| {
                l.split(',')
                    .map(str::trim)
                    .any(|l| l == r.name || l == s.name || glob(l, &r.name))
            })
        })
        .map(|(_, r)| r.name.clone())
        .chain(
            topo.removed_routers
                .iter()
                .filter(|(s, r)| {
                    limit.is_none_or(|l| {
                        l.split(',')
                            .map(str::trim)
                            .any(|l| l == r.name || l == s || glob(l, &r.name))
                    })
                })
                .map(|(_, r)| r.name.clone()),
        )
        .collect()
}

pub(super) fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}
