//! Stable address allocation. Explicit inventory values win; then what the lock file recorded;
//! then the lowest free block / host address. Because recorded addresses are placed before any
//! new one is chosen, adding, removing or reordering sites and nodes never moves an address that
//! was already handed out. With dual stack, an IPv6 address is the IPv4 one's counterpart in
//! the IPv6 space; the lock records both, and refuses a change of that mapping
//! ([`Lock::check_ip6`]).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use indexmap::IndexMap;
use ipnet::Ipv4Net;

use crate::error::{Diagnostic, Error, Result};
use crate::inventory::lock::{At, Lock, LockSite};
use crate::inventory::validate::Diags;
use crate::inventory::{Inventory, Network, Site};

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
    /// The lock file that records this allocation; with dual stack, each IPv4 value's IPv6
    /// counterpart beside it.
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
        for ls in lock.sites.values_mut() {
            add_ip6(ls, &inv.network);
        }
        lock
    }

    /// The address a removed node held, when known.
    pub fn retired_ip(&self, site: &str, node: &str) -> Option<Ipv4Addr> {
        self.retired.get(site)?.nodes.get(node).copied()
    }
}

/// Records the IPv6 counterparts of a site's IPv4 values (dual stack; nothing without it).
/// Only a site with nodes has an IPv6 block: a site someone else runs is peered over IPv4.
fn add_ip6(ls: &mut LockSite, net: &Network) {
    let six = |m: &IndexMap<String, Ipv4Addr>| -> IndexMap<String, At<Ipv6Addr>> {
        m.iter()
            .filter_map(|(n, ip)| Some((n.clone(), At::new(net.ip6_of(*ip)?))))
            .collect()
    };
    ls.nodes6 = six(&ls.nodes);
    ls.retired_nodes6 = six(&ls.retired_nodes);
    ls.wireguard_cidr6 = ls
        .wireguard_cidr
        .filter(|_| !ls.nodes.is_empty() || !ls.retired_nodes.is_empty())
        .and_then(|b| net.block6_of(b))
        .map(At::new);
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
    // a change of the IPv6 plan that would move recorded addresses stops everything first
    let lock_file = crate::inventory::lock_path(&inv.path);
    let lock6 = lock.check_ip6(&lock_file, &inv.network);
    if lock6.iter().any(Diagnostic::is_error) {
        return Err(Error::Invalid(lock6));
    }
    let mut d = Diags::new(&inv.path);
    d.list = lock6;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inventory::load_str;

    const BASE: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: h.example.net:51820\n    next_hop: a\n    nodes:\n      a: { address: 192.168.0.1 }\n      b: { address: 192.168.0.2 }\n  friend:\n    managed: false\n    wireguard_cidr: 10.100.7.0/24\n    endpoint: friend.example.org:51820\n    public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n";

    /// Plans `yaml` against the lock-file text `lock` (as read from `inv.lock.yaml`); returns
    /// the lock file it would write and the warnings.
    fn plan(yaml: &str, lock: &str) -> Result<(String, Vec<Diagnostic>)> {
        let inv = load_str(Path::new("inv.yaml"), yaml)?.inventory;
        let lock = Lock::parse(Path::new("inv.lock.yaml"), lock)?;
        let (a, w) = allocate(&inv, &lock)?;
        Ok((a.to_lock(&inv).render(), w))
    }

    #[test]
    fn an_old_lock_without_ipv6_gets_them_and_keeps_its_ipv4_values() {
        // b holds .1 in the old lock, though a is the next-hop: it keeps it
        let old = "version: 1\nsites:\n  home:\n    wireguard_cidr: 10.100.3.0/24\n    nodes:\n      a: 10.100.3.2\n      b: 10.100.3.1\n";
        let (text, w) = plan(BASE, old).unwrap();
        assert!(
            text.contains("  home:\n    wireguard_cidr: 10.100.3.0/24\n    wireguard_cidr6: fd10:100:0:3::/64\n    nodes:\n      a: 10.100.3.2\n      b: 10.100.3.1\n    nodes6:\n      a: fd10:100:0:3::2\n      b: fd10:100:0:3::1\n"),
            "{text}"
        );
        // a site someone else runs is peered over IPv4: no IPv6 block of its own
        assert!(
            text.ends_with("  friend:\n    wireguard_cidr: 10.100.7.0/24\n"),
            "{text}"
        );
        assert!(
            w.iter().all(|d| !d.file.ends_with("inv.lock.yaml")),
            "{w:?}"
        );
        // planning against what it wrote changes nothing
        assert_eq!(plan(BASE, &text).unwrap().0, text);
    }

    #[test]
    fn a_changed_wireguard_cidr6_is_refused_naming_the_lock_file_line_and_field() {
        let (text, _) = plan(BASE, "").unwrap();
        let changed = BASE.replace("fd10:100::/48", "fd20:100::/48");
        let Err(Error::Invalid(d)) = plan(&changed, &text) else {
            panic!("a moved IPv6 plan was accepted")
        };
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (
                d[0].file.as_path(),
                d[0].line,
                d[0].field.as_str(),
                d[0].is_error()
            ),
            (
                Path::new("inv.lock.yaml"),
                7,
                "sites.home.wireguard_cidr6",
                true
            ),
            "{d:?}"
        );
        assert!(d[0].message.contains("would move"), "{d:?}");
        // accepted on purpose: the IPv6 entries deleted, the new ones recorded, IPv4 kept
        let ipv4_only: String = text
            .lines()
            .scan(false, |six, l| {
                if !l.starts_with("      ") {
                    *six = l.trim_end().ends_with("6:") || l.contains("wireguard_cidr6");
                }
                Some((!*six).then(|| format!("{l}\n")))
            })
            .flatten()
            .collect();
        assert!(!ipv4_only.contains("fd10"), "{ipv4_only}");
        let (moved, _) = plan(&changed, &ipv4_only).unwrap();
        assert_eq!(moved, text.replace("fd10:100:", "fd20:100:"));
    }

    #[test]
    fn a_retired_nodes_ipv6_address_stays_recorded_after_its_entry_is_deleted() {
        let (text, _) = plan(BASE, "").unwrap();
        let absent = BASE.replace(
            "b: { address: 192.168.0.2 }",
            "b: { address: 192.168.0.2, state: absent }",
        );
        let (text, _) = plan(&absent, &text).unwrap();
        let retired =
            "    retired_nodes:\n      b: 10.100.0.2\n    retired_nodes6:\n      b: fd10:100::2\n";
        assert!(text.contains(retired), "{text}");
        let deleted = BASE.replace("      b: { address: 192.168.0.2 }\n", "");
        let (text, _) = plan(&deleted, &text).unwrap();
        assert!(text.contains(retired), "{text}");
        assert!(
            !text.contains("    nodes6:\n      a: fd10:100::1\n      b"),
            "{text}"
        );
    }

    #[test]
    fn without_dual_stack_the_recorded_ipv6_values_are_dropped_with_a_warning() {
        let (text, _) = plan(BASE, "").unwrap();
        let single = BASE.replace("  wireguard_cidr6: fd10:100::/48\n", "");
        let (written, w) = plan(&single, &text).unwrap();
        assert!(
            !written.contains("fd10") && written.contains("a: 10.100.0.1"),
            "{written}"
        );
        assert!(
            w.iter().any(|d| d.file == Path::new("inv.lock.yaml")
                && d.field == "sites.home.wireguard_cidr6"
                && d.message.contains("dropped")),
            "{w:?}"
        );
        // once written, nothing more to say
        let (_, w) = plan(&single, &written).unwrap();
        assert!(
            w.iter().all(|d| d.file != Path::new("inv.lock.yaml")),
            "{w:?}"
        );
    }
}
