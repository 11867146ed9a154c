//! Stable address allocation. Explicit inventory values win; then what the lock file recorded;
//! then the lowest free block / host address. Because recorded addresses are placed before any
//! new one is chosen, adding, removing or reordering sites and nodes never moves an address that
//! was already handed out.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use indexmap::IndexMap;
use ipnet::Ipv4Net;

use crate::error::{Diagnostic, Error, Result};
use crate::inventory::lock::{Lock, LockSite};
use crate::inventory::validate::Diags;
use crate::inventory::{Inventory, Site};

/// The addresses of every site and node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Site name to block, in inventory order.
    pub site_blocks: IndexMap<String, Ipv4Net>,
    /// Node name to WireGuard address, in inventory order.
    pub node_ips: IndexMap<String, Ipv4Addr>,
    /// Per site, what removed nodes and sites held: never handed out again (`state: absent`).
    pub retired: IndexMap<String, Retired>,
}

/// What one site gave up: its block when the whole site was removed, and its removed nodes'
/// addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// The block, when the whole site was removed.
    pub block: Option<Ipv4Net>,
    /// Removed nodes' addresses, by name.
    pub nodes: IndexMap<String, Ipv4Addr>,
}

impl Allocation {
    /// The lock file that records this allocation.
    pub fn to_lock(&self, inv: &Inventory) -> Lock {
        let mut lock = Lock::default();
        for s in &inv.sites {
            let mut ls = LockSite {
                wireguard_cidr: self.site_blocks.get(&s.name).copied(),
                ..Default::default()
            };
            for n in &s.nodes {
                if let Some(ip) = self.node_ips.get(&n.name) {
                    ls.nodes.insert(n.name.clone(), *ip);
                }
            }
            if let Some(r) = self.retired.get(&s.name) {
                ls.retired_nodes = r.nodes.clone();
            }
            lock.sites.insert(s.name.clone(), ls);
        }
        for (name, r) in &self.retired {
            if let Some(block) = r.block
                && !lock.sites.contains_key(name)
            {
                lock.sites.insert(
                    name.clone(),
                    LockSite {
                        wireguard_cidr: Some(block),
                        retired: true,
                        retired_nodes: r.nodes.clone(),
                        ..Default::default()
                    },
                );
            }
        }
        lock
    }

    /// The address a removed node held, when known.
    pub fn retired_ip(&self, site: &str, node: &str) -> Option<Ipv4Addr> {
        self.retired.get(site)?.nodes.get(node).copied()
    }
}

/// Nodes the lock file has and the inventory no longer names: dropped by their peers, but
/// never cleaned (said once: the lock forgets them with this run).
fn warn_deleted(inv: &Inventory, lock: &Lock, d: &mut Diags) {
    // a set: the lock of a large inventory has as many nodes as the inventory
    let named: HashSet<&str> = inv
        .nodes()
        .chain(&inv.removed)
        .map(|x| x.name.as_str())
        .collect();
    let gone: Vec<String> = lock
        .sites
        .iter()
        .filter(|(s, _)| !inv.removed_sites.iter().any(|r| &&r.name == s))
        .flat_map(|(_, l)| l.nodes.iter())
        .filter(|(n, _)| !named.contains(n.as_str()))
        .map(|(n, ip)| format!("{n} ({ip})"))
        .collect();
    if gone.is_empty() {
        return;
    }
    let at = inv.sites.first().map(|s| s.loc).unwrap_or_default();
    d.warn(
        at,
        "sites",
        format!(
            "no longer in the inventory: {}. Their peers drop them, but nothing cleans the nodes themselves (wg0 keeps running there) and their addresses are free again; `state: absent` takes a node out cleanly and retires its address",
            gone.join(", ")
        ),
    );
}

/// What was retired before (the lock) and what is retired now (`state: absent` in `inv`).
fn retired(inv: &Inventory, lock: &Lock) -> IndexMap<String, Retired> {
    let mut out: IndexMap<String, Retired> = IndexMap::new();
    let removed: HashSet<(&str, &str)> = inv
        .removed
        .iter()
        .map(|x| (x.site.as_str(), x.name.as_str()))
        .collect();
    for (name, ls) in &lock.sites {
        let gone = ls.retired || inv.removed_sites.iter().any(|s| &s.name == name);
        let mut r = Retired {
            block: if gone { ls.wireguard_cidr } else { None },
            nodes: ls.retired_nodes.clone(),
        };
        for (n, ip) in &ls.nodes {
            if gone || removed.contains(&(name.as_str(), n.as_str())) {
                r.nodes.insert(n.clone(), *ip);
            }
        }
        if r.block.is_some() || !r.nodes.is_empty() {
            out.insert(name.clone(), r);
        }
    }
    // written in the inventory and never recorded: retired all the same
    for s in &inv.removed_sites {
        if let Some(b) = s.wireguard_cidr {
            out.entry(s.name.clone())
                .or_default()
                .block
                .get_or_insert(b);
        }
    }
    for n in &inv.removed {
        if let Some(ip) = n.wireguard_ip {
            out.entry(n.site.clone())
                .or_default()
                .nodes
                .entry(n.name.clone())
                .or_insert(ip);
        }
    }
    out
}

/// Allocates every missing address. Returns the allocation and warnings (addresses the lock had
/// that had to move because an explicit value took them), or every error (space exhausted).
pub fn allocate(inv: &Inventory, lock: &Lock) -> Result<(Allocation, Vec<Diagnostic>)> {
    let mut d = Diags::new(&inv.path);
    let retired = retired(inv, lock);
    warn_deleted(inv, lock, &mut d);
    let ordered = site_blocks(inv, lock, &retired, &mut d);
    let mut node_ips = IndexMap::new();
    for s in &inv.sites {
        if let Some(b) = ordered.get(&s.name) {
            let site = SiteAlloc {
                lock: lock.sites.get(&s.name).filter(|l| !l.retired),
                retired: retired.get(&s.name),
            };
            allocate_site(&mut d, s, *b, site, &mut node_ips);
        }
    }
    if d.has_errors() {
        return Err(Error::Invalid(d.list));
    }
    let mut ips = IndexMap::new();
    for n in inv.nodes() {
        if let Some(ip) = node_ips.get(&n.name) {
            ips.insert(n.name.clone(), *ip);
        }
    }
    Ok((
        Allocation {
            site_blocks: ordered,
            node_ips: ips,
            retired,
        },
        d.list,
    ))
}

/// Every site's block, in inventory order: the explicit ones, then those the lock recorded,
/// then the block holding a site's explicit node addresses, then the lowest free ones (an error
/// for each site left without one).
fn site_blocks(
    inv: &Inventory,
    lock: &Lock,
    retired: &IndexMap<String, Retired>,
    d: &mut Diags,
) -> IndexMap<String, Ipv4Net> {
    let wg = inv.network.wireguard_cidr;
    let prefix = inv.network.site_prefix;
    let mut blocks: IndexMap<String, Ipv4Net> = IndexMap::new();
    // retired blocks are never handed out again
    let mut used: HashSet<Ipv4Net> = retired.values().filter_map(|r| r.block).collect();

    // 1. explicit blocks (validated: inside, right size, disjoint)
    for s in &inv.sites {
        if let Some(b) = s.wireguard_cidr {
            used.insert(b);
            blocks.insert(s.name.clone(), b);
        }
    }
    // 2. recorded blocks, when still valid
    recorded_blocks(inv, lock, d, &mut blocks, &mut used);
    // 3. a site whose nodes have explicit addresses gets the block holding them, when free
    for s in &inv.sites {
        if blocks.contains_key(&s.name) {
            continue;
        }
        if let Some(ip) = s.nodes.iter().find_map(|n| n.wireguard_ip)
            && let Ok(b) = Ipv4Net::new(ip, prefix)
        {
            let b = b.trunc();
            if wg.contains(&b) && !used.contains(&b) {
                used.insert(b);
                blocks.insert(s.name.clone(), b);
            }
        }
    }
    // 4. new sites: the lowest free blocks
    let mut free = wg
        .subnets(prefix)
        .expect("site_prefix validated >= space prefix");
    for s in &inv.sites {
        if blocks.contains_key(&s.name) {
            continue;
        }
        match free.by_ref().find(|b| !used.contains(b)) {
            Some(b) => {
                used.insert(b);
                blocks.insert(s.name.clone(), b);
            }
            None => d.error(
                s.loc,
                format!("sites.{}", s.name),
                format!(
                    "no free /{prefix} block left in {wg} ({} blocks, all used): widen network.wireguard_cidr or lengthen site_prefix",
                    1u64 << (prefix - wg.prefix_len())
                ),
            ),
        }
    }
    // keep inventory order
    let mut ordered = IndexMap::new();
    for s in &inv.sites {
        if let Some(b) = blocks.get(&s.name) {
            ordered.insert(s.name.clone(), *b);
        }
    }
    ordered
}

/// Gives each site without a block yet the block the lock recorded for it, unless it no longer
/// fits the network or another site has it now (a warning each: a new block is allocated).
fn recorded_blocks(
    inv: &Inventory,
    lock: &Lock,
    d: &mut Diags,
    blocks: &mut IndexMap<String, Ipv4Net>,
    used: &mut HashSet<Ipv4Net>,
) {
    let wg = inv.network.wireguard_cidr;
    let prefix = inv.network.site_prefix;
    for s in &inv.sites {
        if blocks.contains_key(&s.name) {
            continue;
        }
        let Some(b) = lock
            .sites
            .get(&s.name)
            .filter(|l| !l.retired)
            .and_then(|l| l.wireguard_cidr)
        else {
            continue;
        };
        if b.prefix_len() != prefix || !wg.contains(&b) {
            d.warn(
                s.loc,
                format!("sites.{}.wireguard_cidr", s.name),
                format!("the lock file's block {b} no longer fits the network ({wg}, /{prefix} blocks): a new block is allocated"),
            );
        } else if used.contains(&b) {
            let owner = blocks
                .iter()
                .find(|(_, v)| **v == b)
                .map(|(k, _)| k.clone());
            d.warn(
                s.loc,
                format!("sites.{}.wireguard_cidr", s.name),
                format!(
                    "the lock file's block {b} is now taken by site {}: a new block is allocated",
                    owner.unwrap_or_default()
                ),
            );
        } else {
            used.insert(b);
            blocks.insert(s.name.clone(), b);
        }
    }
}

/// The hub's address in a site's block: its first host address (`.1`), as in the reference
/// procedure.
pub fn hub_ip(block: Ipv4Net) -> Option<Ipv4Addr> {
    block.hosts().next()
}

/// What a site's allocation starts from: its lock entry (unless the site was retired) and what
/// it retired.
#[derive(Clone, Copy)]
struct SiteAlloc<'a> {
    lock: Option<&'a LockSite>,
    retired: Option<&'a Retired>,
}

fn allocate_site(
    d: &mut Diags,
    s: &Site,
    block: Ipv4Net,
    site: SiteAlloc<'_>,
    out: &mut IndexMap<String, Ipv4Addr>,
) {
    let lock = site.lock;
    // a site with a standby keeps the last two host addresses for its failover probes
    let probes = super::standby::reserved(s, block);
    let usable = |a: &Ipv4Addr| {
        block.contains(a) && *a != block.network() && *a != block.broadcast() && !probes.contains(a)
    };
    // removed nodes' addresses are never handed out again
    let mut used: HashSet<Ipv4Addr> = site
        .retired
        .map(|r| r.nodes.values().copied().collect())
        .unwrap_or_default();
    // a hub router wgprov does not manage is no node of the inventory, but it has the site's
    // first address all the same (`hub_ip`): no node may take it
    let hub = s.router_address.as_ref().and_then(|_| hub_ip(block));
    if let Some(h) = hub {
        used.insert(h);
    }
    for n in &s.nodes {
        if let Some(ip) = n.wireguard_ip {
            if !usable(&ip) {
                d.error(
                    n.loc,
                    format!("sites.{}.nodes.{}.wireguard_ip", s.name, n.name),
                    format!("{ip} is not a usable host address of the site's block {block}"),
                );
            } else if Some(ip) == hub {
                d.error(
                    n.loc,
                    format!("sites.{}.nodes.{}.wireguard_ip", s.name, n.name),
                    format!("{ip} is the hub router's address (the first of the site's block {block}): give the node another one"),
                );
            }
            used.insert(ip);
            out.insert(n.name.clone(), ip);
        }
    }
    for n in &s.nodes {
        if out.contains_key(&n.name) {
            continue;
        }
        let Some(ip) = lock.and_then(|l| l.nodes.get(&n.name)).copied() else {
            continue;
        };
        if !usable(&ip) {
            d.warn(
                n.loc,
                format!("sites.{}.nodes.{}", s.name, n.name),
                format!("the lock file's address {ip} is outside the site's block {block}: a new address is allocated"),
            );
        } else if used.contains(&ip) {
            let whose = if Some(ip) == hub {
                "the hub router's"
            } else {
                "another node's explicit wireguard_ip"
            };
            d.warn(
                n.loc,
                format!("sites.{}.nodes.{}", s.name, n.name),
                format!("the lock file's address {ip} is now {whose}: a new address is allocated"),
            );
        } else {
            used.insert(ip);
            out.insert(n.name.clone(), ip);
        }
    }
    // the next-hop first, so it gets .1 as in the reference procedure; then members in order
    let order = s
        .nodes
        .iter()
        .filter(|n| Some(&n.name) == s.next_hop.as_ref())
        .chain(
            s.nodes
                .iter()
                .filter(|n| Some(&n.name) != s.next_hop.as_ref()),
        );
    let mut hosts = block.hosts();
    for n in order {
        if out.contains_key(&n.name) {
            continue;
        }
        match hosts.by_ref().find(|a| !used.contains(a)) {
            Some(ip) => {
                used.insert(ip);
                out.insert(n.name.clone(), ip);
            }
            None => d.error(
                n.loc,
                format!("sites.{}.nodes.{}", s.name, n.name),
                format!("no free address left in the site's block {block}"),
            ),
        }
    }
}
