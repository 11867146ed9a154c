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
    let limit = settings.limit.as_deref();
    topo.nodes
        .iter()
        .filter(|n| limit.is_none_or(|l| matches_limit(l, n)))
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
