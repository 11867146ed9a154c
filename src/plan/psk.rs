//! The preshared keys of the links between managed nodes (`network.preshared_keys`): read back
//! from either end's config so that a link keeps its key from run to run, made once from the OS
//! random source where neither end has one, renewed only when asked (`rotate-keys
//! --preshared`). A link whose other end is outside the run never gets a key that end lacks:
//! that would cut the link.

use std::collections::{BTreeSet, HashMap};

use crate::desired::{PskRing, link_id};
use crate::formats::state::Facts;
use crate::formats::wgconf::WgConfig;
use crate::hosts::kind::{HostKind, conf_path};
use crate::hosts::openwrt_hub::{HUB_SCRIPT, HeldPeer, peers_with_psk};
use crate::keys::{PresharedKey, PublicKey};
use crate::topology::{PeerRef, Topology};

/// One end of a link as this run sees it.
#[derive(Debug)]
pub(super) struct End<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Changed by this run (targeted and read).
    pub in_run: bool,
    /// The key its config has for the link: `None` when it could not be read, `Some(None)`
    /// when it has none.
    pub has: Option<Option<PresharedKey>>,
}

/// What a link gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// This key (kept from an end).
    Keep(PresharedKey),
    /// A new one.
    New,
    /// None.
    None,
}

/// The key of the link between `a` and `b` (`a` sorts first), and what to warn about.
pub(super) fn decide(a: &End, b: &End, renew: bool, w: &mut Vec<String>) -> Decision {
    let keep = |k: Option<PresharedKey>| k.map_or(Decision::None, Decision::Keep);
    let link = format!("{} <-> {}", a.name, b.name);
    match (a.in_run, b.in_run) {
        (true, true) if renew => Decision::New,
        (true, true) => {
            let (x, y) = (a.has.clone().flatten(), b.has.clone().flatten());
            match (x, y) {
                (Some(x), Some(y)) if x != y => {
                    w.push(format!(
                        "link {link}: the two ends have different preshared keys: {}'s is kept and written to both",
                        a.name
                    ));
                    Decision::Keep(x)
                }
                (Some(x), _) | (None, Some(x)) => Decision::Keep(x),
                (None, None) => Decision::New,
            }
        }
        (true, false) | (false, true) => {
            let (inside, outside) = if a.in_run { (a, b) } else { (b, a) };
            if renew {
                w.push(format!(
                    "link {link}: its preshared key is not renewed: {} is outside this run",
                    outside.name
                ));
            }
            match &outside.has {
                Some(Some(k)) => Decision::Keep(k.clone()),
                Some(None) => {
                    let mine = inside.has.clone().flatten();
                    if mine.is_none() {
                        w.push(format!(
                            "link {link}: no preshared key yet: {} is outside this run (--limit) and has none, so none is given now; apply both ends to give the link one",
                            outside.name
                        ));
                    }
                    keep(mine)
                }
                None => keep(inside.has.clone().flatten()),
            }
        }
        (false, false) => Decision::None,
    }
}

/// The peers `holder` has now, each its public key, AllowedIPs and preshared key: from its
/// wg-quick file, or an OpenWrt hub's script. `None` when it could not be read.
fn entries(topo: &Topology, facts: &HashMap<String, Facts>, holder: &str) -> Option<Vec<HeldPeer>> {
    let f = facts.get(holder)?;
    let text = |p: &str| f.files.get(p).and_then(|x| x.content());
    if HostKind::of(topo, holder).is_some_and(|k| k.is_openwrt_hub()) {
        return Some(text(HUB_SCRIPT).map(peers_with_psk).unwrap_or_default());
    }
    let Some(conf) = text(&conf_path(&topo.network.interface)) else {
        return Some(Vec::new());
    };
    let c = WgConfig::parse(conf);
    Some(
        c.peers()
            .map(|p| {
                let allowed = p
                    .get("AllowedIPs")
                    .unwrap_or("")
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                (
                    p.get("PublicKey").unwrap_or("").trim().to_string(),
                    allowed,
                    p.get("PresharedKey")
                        .and_then(|k| PresharedKey::from_base64(k).ok()),
                )
            })
            .collect(),
    )
}

/// The key `holder` has for its peer with public key `peer_key` (or, that unknown, with
/// AllowedIPs `allowed`): `None` when the holder cannot be read.
fn current(
    topo: &Topology,
    facts: &HashMap<String, Facts>,
    holder: &str,
    peer_key: Option<&PublicKey>,
    allowed: &BTreeSet<String>,
) -> Option<Option<PresharedKey>> {
    let e = entries(topo, facts, holder)?;
    let found = e.into_iter().find(|(k, a, _)| match peer_key {
        Some(pk) => *k == pk.to_base64(),
        None => &a.iter().cloned().collect::<BTreeSet<_>>() == allowed,
    });
    Some(found.and_then(|(_, _, psk)| psk))
}

/// Every link's key. `old` holds the public keys the nodes had before this run (what their
/// peers' configs list), `in_run` the nodes this run changes, `renew` the nodes whose links get
/// new keys.
pub(super) fn ring(
    topo: &Topology,
    facts: &HashMap<String, Facts>,
    old: &HashMap<String, PublicKey>,
    in_run: &BTreeSet<&str>,
    renew: &BTreeSet<String>,
    w: &mut Vec<String>,
) -> (PskRing, Vec<String>) {
    let mut ring = PskRing::new();
    let mut renewed = Vec::new();
    if !topo.network.preshared_keys {
        return (ring, renewed);
    }
    // what each node lists for each node peer
    let mut allowed: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for n in &topo.nodes {
        for p in topo.peers(n) {
            if let PeerRef::Node(o) = &p.peer {
                // as the config lists them: with dual stack, the IPv6 counterparts too
                allowed.insert(
                    (n.name.clone(), o.clone()),
                    topo.allowed_ips(&p).into_iter().collect(),
                );
            }
        }
    }
    let mut links: Vec<&(String, String)> = allowed.keys().filter(|(a, b)| a < b).collect();
    links.sort();
    for (a, b) in links {
        let none = BTreeSet::new();
        let end = |x: &'_ str, y: &'_ str| -> Option<Option<PresharedKey>> {
            let on_x = allowed
                .get(&(x.to_string(), y.to_string()))
                .unwrap_or(&none);
            current(topo, facts, x, old.get(y), on_x)
        };
        let ea = End {
            name: a,
            in_run: in_run.contains(a.as_str()),
            has: end(a, b),
        };
        let eb = End {
            name: b,
            in_run: in_run.contains(b.as_str()),
            has: end(b, a),
        };
        let asked = renew.contains(a) || renew.contains(b);
        let k = match decide(&ea, &eb, asked, w) {
            Decision::Keep(k) => k,
            Decision::New => {
                if asked {
                    renewed.push(format!("{a} <-> {b}"));
                }
                PresharedKey::generate()
            }
            Decision::None => continue,
        };
        ring.insert(link_id(a, b), k);
    }
    (ring, renewed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end<'a>(name: &'a str, in_run: bool, has: Option<Option<&PresharedKey>>) -> End<'a> {
        End {
            name,
            in_run,
            has: has.map(|h| h.cloned()),
        }
    }

    #[test]
    fn a_link_keeps_the_key_either_end_has_and_gets_one_when_neither_has() {
        let k = PresharedKey::generate();
        let mut w = Vec::new();
        for (a, b) in [
            (Some(Some(&k)), Some(Some(&k))),
            (Some(Some(&k)), Some(None)),
            (Some(None), Some(Some(&k))),
            (None, Some(Some(&k))),
        ] {
            let d = decide(&end("a", true, a), &end("b", true, b), false, &mut w);
            assert_eq!(d, Decision::Keep(k.clone()));
        }
        let d = decide(
            &end("a", true, Some(None)),
            &end("b", true, Some(None)),
            false,
            &mut w,
        );
        assert_eq!(d, Decision::New);
        assert!(w.is_empty(), "{w:?}");
        // renewed only when asked
        let d = decide(
            &end("a", true, Some(Some(&k))),
            &end("b", true, Some(Some(&k))),
            true,
            &mut w,
        );
        assert_eq!(d, Decision::New);
    }

    #[test]
    fn two_ends_that_disagree_keep_the_first_ends_key_and_say_so() {
        let (k1, k2) = (PresharedKey::generate(), PresharedKey::generate());
        let mut w = Vec::new();
        let d = decide(
            &end("a", true, Some(Some(&k1))),
            &end("b", true, Some(Some(&k2))),
            false,
            &mut w,
        );
        assert_eq!(d, Decision::Keep(k1));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("a <-> b") && w[0].contains("different"),
            "{w:?}"
        );
        assert!(!w[0].contains(k2.expose_base64().as_str()));
    }

    #[test]
    fn an_end_outside_the_run_decides_and_never_gets_cut_off() {
        let k = PresharedKey::generate();
        let mut w = Vec::new();
        // b outside has one: a gets it
        let d = decide(
            &end("a", true, Some(None)),
            &end("b", false, Some(Some(&k))),
            false,
            &mut w,
        );
        assert_eq!(d, Decision::Keep(k.clone()));
        // b outside has none: a gets none (a new one would cut the link), with a warning
        let d = decide(
            &end("a", true, Some(None)),
            &end("b", false, Some(None)),
            false,
            &mut w,
        );
        assert_eq!(d, Decision::None);
        assert!(
            w.iter().any(|x| x.contains("b is outside this run")),
            "{w:?}"
        );
        // b outside unread: a keeps what it has
        let d = decide(
            &end("a", false, None),
            &end("b", true, Some(Some(&k))),
            true,
            &mut w,
        );
        assert_eq!(d, Decision::Keep(k));
        assert!(w.iter().any(|x| x.contains("not renewed")), "{w:?}");
    }
}
