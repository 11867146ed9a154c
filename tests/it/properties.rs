//! Property tests over random inventories: stable allocation under reorder/insert/remove, no
//! overlaps, rendered configs that round-trip through the parser, and — with WireGuard's
//! cryptokey routing simulated on the rendered configs — every node reaching every other in at
//! most three hops (four through a relay).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use wgprov::desired::wgmerge;
use wgprov::facts::wgconf::WgConfig;

use super::common::{Inv, content, gen_inventory, render};

fn sites_strategy() -> impl Strategy<Value = Vec<(String, usize)>> {
    prop::collection::btree_map(0u16..60, 1usize..6, 1..8)
        .prop_map(|m| m.into_iter().map(|(id, n)| (format!("s{id}"), n)).collect())
}

/// Only the last site has an endpoint, and it relays for all the others.
fn relayed_inventory(sites: &[(String, usize)]) -> String {
    let last = &sites.last().expect("at least one site").0;
    let mut y = gen_inventory(sites, true).replacen(
        "network:\n",
        &format!("network:\n  relay: {last}\n"),
        1,
    );
    for (name, _) in &sites[..sites.len() - 1] {
        y = y.replace(&format!("    endpoint: {name}.example.net:51820\n"), "");
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn allocation_is_stable_and_disjoint(
        before in sites_strategy(),
        after_extra in sites_strategy(),
        keep in prop::collection::vec(any::<bool>(), 8),
        grow in prop::collection::vec(0usize..3, 8),
        order in any::<u64>(),
    ) {
        let inv = Inv::new(&gen_inventory(&before, true));
        let first = inv.plan();
        // keep some sites (changing their node counts), add new ones, shuffle
        let mut after: Vec<(String, usize)> = before
            .iter()
            .enumerate()
            .filter(|(i, _)| keep[*i % keep.len()])
            .map(|(i, (n, c))| (n.clone(), (*c + grow[i % grow.len()]).saturating_sub(1).max(1)))
            .collect();
        for (n, c) in after_extra {
            if !after.iter().any(|(m, _)| *m == n) && !before.iter().any(|(m, _)| *m == n) {
                after.push((n, c));
            }
        }
        // an inventory needs a site: a draw that dropped every one is not a case
        prop_assume!(!after.is_empty());
        let len = after.len();
        if len > 1 {
            for i in 0..len {
                let j = (order.rotate_left(i as u32) as usize) % len;
                after.swap(i, j);
            }
        }
        inv.write(&gen_inventory(&after, true));
        let second = inv.plan();
        for s in &second.topology.sites {
            if let Some(old) = first.topology.site(&s.name) {
                prop_assert_eq!(old.wireguard_cidr, s.wireguard_cidr, "site {} moved", s.name);
            }
        }
        for n in &second.topology.nodes {
            if let Some(old) = first.topology.node(&n.name) {
                prop_assert_eq!(old.wireguard_ip, n.wireguard_ip, "node {} moved", n.name);
            }
        }
        // disjoint blocks, unique usable node addresses inside their block
        let blocks: Vec<Ipv4Net> = second.topology.sites.iter().map(|s| s.wireguard_cidr).collect();
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                prop_assert!(!a.contains(&b.network()) && !b.contains(&a.network()), "{a} overlaps {b}");
            }
        }
        let mut seen = HashSet::new();
        for n in &second.topology.nodes {
            let b = second.topology.site(&n.site).unwrap().wireguard_cidr;
            prop_assert!(b.contains(&n.wireguard_ip) && n.wireguard_ip != b.network() && n.wireguard_ip != b.broadcast());
            prop_assert!(seen.insert(n.wireguard_ip), "duplicate {}", n.wireguard_ip);
        }
    }

    #[test]
    fn rendered_configs_round_trip_and_every_node_reaches_every_other(
        sites in sites_strategy(),
        all_endpoints in any::<bool>(),
        relayed in any::<bool>(),
    ) {
        let inv = Inv::new(&if relayed { relayed_inventory(&sites) } else { gen_inventory(&sites, all_endpoints) });
        let plan = inv.plan();
        let (hosts, keys) = render(&plan);
        let topo = &plan.topology;
        let iface_path = "/etc/wireguard/wg0.conf";

        // parse every config; it must round-trip and be a fixed point of the merge
        let mut configs: HashMap<String, WgConfig> = HashMap::new();
        for (node, files) in &hosts {
            let text = content(files, iface_path).expect("wg0.conf rendered");
            let cfg = WgConfig::parse(text);
            prop_assert_eq!(cfg.render(), text);
            prop_assert_eq!(wgmerge::merge(text, text), text);
            let n = topo.node(node).unwrap();
            let iface = cfg.interface().unwrap();
            let want_address = format!("{}/16", n.wireguard_ip);
            prop_assert_eq!(iface.get("Address"), Some(want_address.as_str()));
            prop_assert_eq!(iface.get("PrivateKey").map(str::to_string), Some(keys[node].private.expose_base64().to_string()));
            prop_assert_eq!(cfg.peers().count(), topo.peers(n).len());
            configs.insert(node.clone(), cfg);
        }

        // cryptokey routing, simulated on the parsed configs
        let by_key: HashMap<String, String> = keys.iter().map(|(n, k)| (k.public.to_base64(), n.clone())).collect();
        let ip: HashMap<&str, Ipv4Addr> = topo.nodes.iter().map(|n| (n.name.as_str(), n.wireguard_ip)).collect();
        let forwards: HashSet<&str> = hosts
            .iter()
            .filter(|(_, f)| content(f, "/etc/sysctl.d/99-wgprov.conf").is_some_and(|c| c.contains("net.ipv4.ip_forward = 1")))
            .map(|(n, _)| n.as_str())
            .collect();
        let peers_of = |node: &str| -> Vec<(String, Vec<Ipv4Net>)> {
            configs[node]
                .peers()
                .map(|p| {
                    let allowed = p.get("AllowedIPs").unwrap().split(',').map(|a| a.trim().parse().unwrap()).collect();
                    (p.get("PublicKey").unwrap().to_string(), allowed)
                })
                .collect()
        };
        for a in &topo.nodes {
            for b in &topo.nodes {
                if a.name == b.name { continue; }
                let (src, dst) = (ip[a.name.as_str()], ip[b.name.as_str()]);
                let mut cur = a.name.clone();
                let mut hops = 0;
                while cur != b.name {
                    // send: longest-prefix match over AllowedIPs
                    let route = peers_of(&cur)
                        .into_iter()
                        .flat_map(|(k, nets)| nets.into_iter().map(move |n| (k.clone(), n)))
                        .filter(|(_, n)| n.contains(&dst))
                        .max_by_key(|(_, n)| n.prefix_len());
                    let (key, _) = route.ok_or_else(|| TestCaseError::fail(format!("{cur} has no route to {dst}")))?;
                    let next = by_key.get(&key).ok_or_else(|| TestCaseError::fail(format!("{cur} routes {dst} to a key no node has")))?.clone();
                    // receive: the sender's entry at `next` must allow the packet's source
                    let cur_key = keys[&cur].public.to_base64();
                    let entry = peers_of(&next).into_iter().find(|(k, _)| *k == cur_key);
                    let (_, allowed) = entry.ok_or_else(|| TestCaseError::fail(format!("{next} does not know {cur}")))?;
                    prop_assert!(allowed.iter().any(|n| n.contains(&src)), "{next} drops {src} from {cur}");
                    hops += 1;
                    if next != b.name {
                        prop_assert!(forwards.contains(next.as_str()), "{next} would have to forward but does not");
                    }
                    // a relay adds one hop between two sites without an endpoint
                    let most = if relayed { 4 } else { 3 };
                    prop_assert!(hops <= most, "{} -> {} takes more than {most} hops", a.name, b.name);
                    cur = next;
                }
            }
        }
    }
}
