//! How the controller reaches each node: through which hosts its SSH path runs (proxy jumps, or
//! the mesh's next-hops when it connects to a WireGuard address). A change to one of those hosts
//! can cut the path, so the guard changes them last and probes from the nearer end.

use std::collections::HashMap;
use std::net::IpAddr;

use super::Topology;

/// For each node, the hosts whose WireGuard change could cut the controller's path to it: its
/// `proxy_jump` chain, or, when its `ssh.host` is a WireGuard address, the next-hop where the
/// controller enters the mesh (the one site with `lan_access`), the relay's next-hop when
/// both sites have no endpoint, and the node's own next-hop.
pub fn paths(topo: &Topology) -> HashMap<String, Vec<String>> {
    let lan: Vec<&str> = topo
        .sites
        .iter()
        .filter(|s| s.managed && s.lan_access)
        .filter_map(|s| s.next_hop.as_deref())
        .collect();
    let entry = (lan.len() == 1).then(|| lan[0]);
    let mut out = HashMap::new();
    for n in &topo.nodes {
        let mut via: Vec<String> = Vec::new();
        let mut cur = n;
        let mut hops = 0;
        loop {
            if let Some(j) = &cur.ssh.proxy_jump {
                if via.contains(j) || *j == n.name {
                    break;
                }
                via.push(j.clone());
                match topo.node(j) {
                    Some(next) if hops < 16 => {
                        cur = next;
                        hops += 1;
                        continue;
                    }
                    _ => break,
                }
            }
            let over_mesh = matches!(cur.ssh.host.parse::<IpAddr>(),
                Ok(IpAddr::V4(ip)) if topo.network.wireguard_cidr.contains(&ip));
            if over_mesh {
                let own_hop = topo.site(&cur.site).and_then(|s| s.next_hop.clone());
                // from an entry site without an endpoint to another, the path crosses the relay
                let relay_hop = entry
                    .and_then(|e| topo.node(e))
                    .and_then(|e| topo.relay_between(&e.site, &cur.site))
                    .and_then(|r| r.next_hop.clone());
                for h in [entry.map(str::to_string), relay_hop, own_hop]
                    .into_iter()
                    .flatten()
                {
                    if h != n.name && h != cur.name && !via.contains(&h) {
                        via.push(h);
                    }
                }
                if cur.name != n.name && !via.contains(&cur.name) {
                    via.push(cur.name.clone());
                }
            }
            break;
        }
        out.insert(n.name.clone(), via);
    }
    out
}
