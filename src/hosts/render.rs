//! Every managed host's desired files with no facts (`wgprov render`, offline previews): the
//! nodes as their kind renders them, spread over every core, then the routers that forward.

use crate::desired::{DesiredFile, HostInput, KeyRing, offline_os_family};
use crate::error::Result;
use crate::facts::Facts;
use crate::roles::Roles;
use crate::topology::{NodePlan, Topology};

use super::kind::HostKind;

use crate::desired::HostFiles;

/// Desired files of every managed node with no facts (offline), spread over every core, then
/// those of every managed router (as one with systemd and iptables).
pub fn render_offline(
    roles: &Roles,
    topo: &Topology,
    keys: &KeyRing,
) -> Result<Vec<(String, Vec<DesiredFile>)>> {
    let nodes: Vec<&NodePlan> = topo.nodes.iter().collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    let chunk = nodes.len().div_ceil(threads).max(1);
    let none = |_: &str| None;
    // like the node keys above: fresh, for a preview
    let psks = crate::desired::fresh_psks(topo);
    let psks = &psks;
    let parts: Vec<Result<Vec<HostFiles>>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|n| {
                            let input = HostInput {
                                node: n,
                                os_family: offline_os_family(n),
                                systemd: true,
                                existing: &none,
                                peer_fallback: None,
                                preshared: psks,
                            };
                            HostKind::of(topo, &n.name)
                                .expect("a node is a host")
                                .desired(roles, topo, keys, &input)
                                .map(|(f, _)| (n.name.clone(), f))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("render thread"))
            .collect()
    });
    let mut out = Vec::with_capacity(nodes.len());
    for p in parts {
        out.extend(p?);
    }
    // managed routers that forward the port, as a router with systemd and iptables would have
    // them (a hub router is a node, above)
    let facts = Facts {
        systemd: true,
        tools: ["iptables".to_string()].into(),
        ..Default::default()
    };
    for (site, r) in topo.routers().filter(|(_, r)| topo.node(&r.name).is_none()) {
        if let Ok(files) = super::desired(topo, site, r, &facts) {
            out.push((r.name.clone(), files));
        }
    }
    Ok(out)
}
