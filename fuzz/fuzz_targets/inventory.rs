//! Inventory text (and, after a `#@@lock@@` line, lock-file text) → load + validate →
//! allocate + peer graph → lock file. Never panics; an invalid inventory or lock is a non-empty
//! list of located diagnostics; a valid one allocates addresses inside their blocks, distinct,
//! stable against the lock file it writes, and that lock file reads back as written.

#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgprov::error::Error;
use wgprov::inventory::load_str;
use wgprov::inventory::lock::Lock;
use wgprov::topology::Topology;

/// Splits the input into inventory text and lock-file text.
const LOCK_SEP: &str = "\n#@@lock@@\n";

fn invalid_or(e: Error, what: &str) {
    match e {
        Error::Invalid(d) => {
            assert!(!d.is_empty(), "{what}: invalid with no diagnostic");
            for x in &d {
                assert!(!x.message.is_empty(), "{what}: empty message");
            }
        }
        e => panic!("{what}: unexpected error kind: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (inv_text, lock_text) = text.split_once(LOCK_SEP).unwrap_or((text, ""));
    let lock = match Lock::parse(Path::new("fuzz.lock.yaml"), lock_text) {
        Ok(l) => l,
        Err(e) => {
            invalid_or(e, "lock");
            Lock::default()
        }
    };
    let path = Path::new("fuzz.yaml");
    let loaded = match load_str(path, inv_text) {
        Ok(l) => l,
        Err(e) => return invalid_or(e, "inventory"),
    };
    let inv = &loaded.inventory;
    let (topo, _warnings) = match Topology::build(inv, &lock) {
        Ok(t) => t,
        Err(e) => return invalid_or(e, "allocation"),
    };
    // Blocks inside the space, of the site size, disjoint.
    let space = inv.network.wireguard_cidr;
    let mut blocks = HashSet::new();
    for s in &topo.sites {
        assert!(
            space.contains(&s.wireguard_cidr),
            "{} outside {space}",
            s.wireguard_cidr
        );
        assert_eq!(s.wireguard_cidr.prefix_len(), inv.network.site_prefix);
        assert!(
            blocks.insert(s.wireguard_cidr),
            "block {} twice",
            s.wireguard_cidr
        );
    }
    // Node addresses inside their site's block, distinct.
    let mut ips = HashSet::new();
    for n in &topo.nodes {
        let block = topo.site(&n.site).expect("node's site").wireguard_cidr;
        assert!(
            block.contains(&n.wireguard_ip),
            "{} outside {block}",
            n.wireguard_ip
        );
        assert!(
            ips.insert(n.wireguard_ip),
            "address {} twice",
            n.wireguard_ip
        );
        let _ = topo.peers(n);
    }
    // The lock file reads back as written, and planning against it moves nothing.
    let written = topo.allocation.to_lock(inv);
    let read = Lock::parse(Path::new("fuzz.lock.yaml"), &written.render()).expect("own lock reads");
    assert_eq!(read, written, "lock file round trip");
    let (again, _) = Topology::build(inv, &written).expect("plans against its own lock");
    assert_eq!(again.allocation, topo.allocation, "allocation moved");
});
