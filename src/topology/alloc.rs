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
            lock.sites.insert(s.name.clone(), ls);
        }
        lock
    }
}

/// Allocates every missing address. Returns the allocation and warnings (addresses the lock had
/// that had to move because an explicit value took them), or every error (space exhausted).
pub fn allocate(inv: &Inventory, lock: &Lock) -> Result<(Allocation, Vec<Diagnostic>)> {
    let mut d = Diags::new(&inv.path);
    let ordered = site_blocks(inv, lock, &mut d);
    let mut node_ips = IndexMap::new();
    for s in &inv.sites {
        if let Some(b) = ordered.get(&s.name) {
            allocate_site(&mut d, s, *b, lock.sites.get(&s.name), &mut node_ips);
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
        },
        d.list,
    ))
}

/// Every site's block, in inventory order: the explicit ones, then those the lock recorded,
/// then the block holding a site's explicit node addresses, then the lowest free ones (an error
/// for each site left without one).
fn site_blocks(inv: &Inventory, lock: &Lock, d: &mut Diags) -> IndexMap<String, Ipv4Net> {
    let wg = inv.network.wireguard_cidr;
    let prefix = inv.network.site_prefix;
    let mut blocks: IndexMap<String, Ipv4Net> = IndexMap::new();
    let mut used: HashSet<Ipv4Net> = HashSet::new();

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
        let Some(b) = lock.sites.get(&s.name).and_then(|l| l.wireguard_cidr) else {
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

fn allocate_site(
    d: &mut Diags,
    s: &Site,
    block: Ipv4Net,
    lock: Option<&LockSite>,
    out: &mut IndexMap<String, Ipv4Addr>,
) {
    let usable =
        |a: &Ipv4Addr| block.contains(a) && *a != block.network() && *a != block.broadcast();
    let mut used: HashSet<Ipv4Addr> = HashSet::new();
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
