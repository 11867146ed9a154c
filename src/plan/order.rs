//! The order of a change across the network: the waves hosts change in, the router rules a
//! change needs announced before anything is touched, and which routers flush their conntrack
//! entries again once the nodes changed.

use std::collections::HashMap;

use crate::formats::wgconf::WgConfig;
use crate::topology::Topology;

use super::HostPlan;

/// The order of change: waves of hosts, each wave changed after the previous one finished. A
/// host is changed only once every host whose path crosses it is done ("mesh first": the far
/// side of a link before the near side).
pub fn waves(changed: &[String], paths: &HashMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut left: Vec<String> = changed.to_vec();
    let mut out = Vec::new();
    while !left.is_empty() {
        let (now, later): (Vec<String>, Vec<String>) = left.iter().cloned().partition(|x| {
            !left
                .iter()
                .any(|y| y != x && paths.get(y).is_some_and(|p| p.contains(x)))
        });
        if now.is_empty() {
            // a cycle of paths (should not happen): change the rest together
            out.push(later);
            break;
        }
        out.push(now);
        left = later;
    }
    out
}

/// The order of change: the managed routers that forward the port first, in a wave of their
/// own (a node that moves its port needs the router's forward in place), then the nodes in the
/// guard's waves (a hub router is a next-hop like a node: it changes in the waves of the mesh).
pub fn change_waves(topo: &Topology, to_change: &[String]) -> Vec<Vec<String>> {
    let (routers, nodes): (Vec<String>, Vec<String>) = to_change
        .iter()
        .cloned()
        .partition(|n| is_forwarding_router(topo, n));
    let mut out = Vec::new();
    if !routers.is_empty() {
        out.push(routers);
    }
    out.extend(waves(&nodes, &crate::topology::reach::paths(topo)));
    out
}

/// True for a managed router that only forwards the port (not a hub, which is a node).
pub fn is_forwarding_router(topo: &Topology, name: &str) -> bool {
    topo.router(name).is_some() && topo.node(name).is_none()
}

/// The routers whose port-forward changed before nodes changed after them, with the public
/// ports to flush again: between the router's change and its next-hop's, the next-hop could
/// still send from its old port, and the router's NAT would map the public port back to that
/// old port for as long as the entry lives.
pub fn reflush_targets(
    topo: &Topology,
    to_change: &[String],
    plans: &HashMap<String, HostPlan>,
    changed: &dyn Fn(&str) -> bool,
) -> Vec<(String, Vec<u16>)> {
    let nodes_changed = to_change
        .iter()
        .any(|n| !is_forwarding_router(topo, n) && changed(n));
    if !nodes_changed {
        return Vec::new();
    }
    to_change
        .iter()
        .filter(|n| is_forwarding_router(topo, n) && changed(n))
        .filter_map(|n| {
            let ports = plans.get(n)?.handlers.port_forward.clone()?;
            (!ports.is_empty()).then(|| (n.clone(), ports))
        })
        .collect()
}

/// Router rules a change needs, announced before anything is touched: a next-hop that will
/// listen on another port, or a site whose next-hop moves. `true` marks a site whose router
/// wgprov manages: its router's change does it, first, in the same guarded transaction.
pub fn router_announcements(
    topo: &Topology,
    plans: &HashMap<String, HostPlan>,
    wg_path: &str,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for site in topo.sites.iter().filter(|s| s.managed) {
        let Some(nh) = site.next_hop.as_deref().and_then(|n| topo.node(n)) else {
            continue;
        };
        let Some(c) = plans
            .get(&nh.name)
            .and_then(|p| p.changes.iter().find(|c| c.desired.path == wg_path))
        else {
            continue;
        };
        let Some(old) = c.current.content() else {
            continue;
        };
        // a site without an endpoint is never dialled from outside, and a hub router receives
        // WireGuard on its own WAN: no router rule to change
        let Some(endpoint) = &site.endpoint else {
            continue;
        };
        if nh.is_router {
            continue;
        }
        let new_port = topo.network.listen_port;
        let public = endpoint.port;
        let old_conf = WgConfig::parse(old);
        let iface = old_conf.interface();
        let old_port = iface
            .and_then(|i| i.get("ListenPort"))
            .and_then(|p| p.trim().parse::<u16>().ok());
        let was_hub = iface.is_some_and(|i| i.get("PostUp").is_some());
        let what = if let Some(op) = old_port
            && op != new_port
        {
            format!(
                "site {}: {} will listen on UDP {new_port} instead of {op}",
                site.name, nh.name
            )
        } else if !was_hub {
            format!("site {}: the next-hop moves to {}", site.name, nh.name)
        } else {
            continue;
        };
        match &site.managed_router {
            Some(r) if plans.contains_key(&r.name) => out.push((
                format!(
                    "{what}: the managed router {} changes first, forwarding UDP {public} to {}:{new_port}, in this same guarded transaction",
                    r.name, nh.address
                ),
                true,
            )),
            Some(r) => out.push((
                format!(
                    "{what}: the managed router {} must forward UDP {public} to {}:{new_port}, but it is outside --limit: apply it too (--limit {},{})",
                    r.name,
                    nh.address,
                    r.name,
                    nh.name
                ),
                false,
            )),
            None => out.push((
                if old_port.is_some_and(|op| op != new_port) {
                    format!(
                        "{what}: the router ({}) must forward UDP {public} to {}:{new_port}; change it first, or the guard will find the links between sites down and put everything back",
                        site.router.as_str(),
                        nh.address
                    )
                } else {
                    format!(
                        "{what}: the router ({}) must forward UDP {public} to {}:{new_port}",
                        site.router.as_str(),
                        nh.address
                    )
                },
                false,
            )),
        }
    }
    out
}
