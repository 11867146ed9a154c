//! What holds across sites: a managed router's name is no node's, every pair of sites can
//! reach each other, `proxy_jump` names a node, what the OpenSSH config file adds, and no
//! ProxyJump loop.

use std::collections::HashMap;
use std::path::Path;

use super::{Diags, State, loc};
use crate::inventory::model::*;
use crate::inventory::sshconfig;

/// Runs the checks across sites, in the order their problems are reported.
pub(super) fn check(file: &Path, d: &mut Diags, st: &mut State) {
    router_names(d, st);
    let present: Vec<Site> = st.sites.iter().filter(|s| !s.absent).cloned().collect();
    reachability(d, &present);
    jump_targets(d, st);
    from_ssh_config(file, d, st);
    jump_loops(d, st);
}

/// A managed router's name is taken by no node.
fn router_names(d: &mut Diags, st: &State) {
    for s in &st.sites {
        if let Some(r) = &s.managed_router
            && let Some(l) = st.node_names.get(&r.name)
        {
            d.error(
                *l,
                format!("sites.{}.router", s.name),
                format!(
                    "node name `{}` (line {}) is the name wgprov gives site {}'s managed router: rename the node",
                    r.name, l.line, s.name
                ),
            );
        }
    }
}

/// Site pairs must be able to reach each other: at most one site without an endpoint.
fn reachability(d: &mut Diags, sites: &[Site]) {
    let mut first_without: Option<&Site> = None;
    for s in sites {
        if s.endpoint.is_some() {
            continue;
        }
        match first_without {
            None => first_without = Some(s),
            Some(f) => d.error(
                s.loc,
                format!("sites.{}.endpoint", s.name),
                format!(
                    "neither site {} nor site {} (line {}) has an endpoint, so they cannot peer: give one of them an endpoint and a UDP port-forward",
                    s.name, f.name, f.loc.line
                ),
            ),
        }
    }
}

/// `proxy_jump` names a node.
fn jump_targets(d: &mut Diags, st: &State) {
    for (_, j, np) in &st.jumps {
        if !st.node_names.contains_key(&j.value) {
            d.error(
                loc(j),
                format!("{np}.ssh.proxy_jump"),
                format!("`{}` is not a node of the inventory", j.value),
            );
        }
    }
}

/// What the inventory leaves unset, from the OpenSSH config (`ssh.config_file`). A router that
/// only forwards the port is read from the OpenSSH config like a node: as a node of its site
/// for the time of the lookup (a hub router is one already).
fn from_ssh_config(file: &Path, d: &mut Diags, st: &mut State) {
    for site in &mut st.sites {
        if let Some(r) = &site.managed_router
            && site.next_hop.as_deref() != Some(r.name.as_str())
        {
            site.nodes.push(Node {
                name: r.name.clone(),
                loc: site.loc,
                site: site.name.clone(),
                address: r.address.clone(),
                wireguard_ip: None,
                os_family: None,
                kubernetes: None,
                ssh: r.ssh.clone(),
                ssh_origin: st.router_origins.remove(&r.name).unwrap_or_default(),
                is_router: true,
                absent: site.absent,
            });
        }
    }
    sshconfig::apply(file, &mut st.sites, &st.config_refs, d);
    for site in &mut st.sites {
        let hub = site.next_hop.clone();
        if let Some(r) = &mut site.managed_router
            && hub.as_deref() != Some(r.name.as_str())
            && let Some(i) = site
                .nodes
                .iter()
                .position(|n| n.name == r.name && n.is_router)
        {
            r.ssh = site.nodes.remove(i).ssh;
        }
    }
}

/// No proxy_jump loops (inventory and ssh config together).
fn jump_loops(d: &mut Diags, st: &State) {
    let all_nodes = || st.sites.iter().flat_map(|s| s.nodes.iter());
    let jump_of: HashMap<&str, &str> = all_nodes()
        .filter_map(|n| Some((n.name.as_str(), n.ssh.proxy_jump.as_deref()?)))
        .filter(|(_, j)| st.node_names.contains_key(*j))
        .collect();
    for n in all_nodes() {
        let Some(j) = jump_of.get(n.name.as_str()) else {
            continue;
        };
        let mut seen = vec![n.name.as_str()];
        let mut cur = *j;
        while let Some(next) = jump_of.get(cur) {
            if seen.contains(&cur) {
                break;
            }
            seen.push(cur);
            cur = next;
        }
        // only the members of a loop are told (a node that jumps into one is fine itself)
        if cur == n.name {
            let (l, field) = match &n.ssh_origin.proxy_jump {
                Origin::Inventory { field, loc } => (*loc, field.clone()),
                _ => (
                    n.loc,
                    format!("sites.{}.nodes.{}.ssh.proxy_jump", n.site, n.name),
                ),
            };
            let from = match &n.ssh_origin.proxy_jump {
                o @ Origin::SshConfig { .. } => format!(" (from {o})"),
                _ => String::new(),
            };
            d.error(
                l,
                field,
                format!("jumping through `{j}`{from} loops back to {}", n.name),
            );
        }
    }
}
