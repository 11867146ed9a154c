//! Allocation: the reference's addresses, stability across edits, explicit values winning,
//! and a lock file that is written only when it changes.

use super::common::{Inv, gen_inventory};

fn ip(p: &wgprov::topology::Planned, node: &str) -> String {
    p.topology.node(node).unwrap().wireguard_ip.to_string()
}

fn block(p: &wgprov::topology::Planned, site: &str) -> String {
    p.topology.site(site).unwrap().wireguard_cidr.to_string()
}

#[test]
fn next_hop_gets_the_first_host_address_even_when_listed_last() {
    let inv = Inv::new(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    next_hop: c\n    nodes:\n      a: {address: 192.168.0.1}\n      b: {address: 192.168.0.2}\n      c: {address: 192.168.0.3}\n",
    );
    let p = inv.plan();
    assert_eq!(block(&p, "home"), "10.100.0.0/24");
    assert_eq!(ip(&p, "c"), "10.100.0.1");
    assert_eq!(ip(&p, "a"), "10.100.0.2");
    assert_eq!(ip(&p, "b"), "10.100.0.3");
}

#[test]
fn reorder_insert_and_remove_keep_every_address() {
    let sites = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
        v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    };
    let inv = Inv::new(&gen_inventory(
        &sites(&[("aa", 3), ("bb", 2), ("cc", 1)]),
        true,
    ));
    let first = inv.plan();
    assert!(first.lock_written);
    // reversed, one site removed, one inserted at the top, a node added to bb
    inv.write(&gen_inventory(
        &sites(&[("zz", 2), ("cc", 1), ("bb", 3)]),
        true,
    ));
    let second = inv.plan();
    for s in ["bb", "cc"] {
        assert_eq!(block(&first, s), block(&second, s), "site {s} moved");
    }
    for n in ["bb-n0", "bb-n1", "cc-n0"] {
        assert_eq!(ip(&first, n), ip(&second, n), "node {n} moved");
    }
    // the new site takes the lowest free block: aa's, freed by its removal
    assert_eq!(block(&second, "zz"), block(&first, "aa"));
    assert_eq!(ip(&second, "bb-n2"), "10.100.1.3");
}

#[test]
fn explicit_value_wins_over_the_lock_and_the_loser_moves_with_a_warning() {
    let base = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    next_hop: a\n    nodes:\n      a: {address: 192.168.0.1}\n      b: {address: 192.168.0.2}\n";
    let inv = Inv::new(base);
    let p = inv.plan();
    assert_eq!(ip(&p, "b"), "10.100.0.2");
    inv.write(&base.replace(
        "a: {address: 192.168.0.1}",
        "a: {address: 192.168.0.1, wireguard_ip: 10.100.0.2}",
    ));
    let p = inv.plan();
    assert_eq!(ip(&p, "a"), "10.100.0.2");
    assert_eq!(ip(&p, "b"), "10.100.0.1");
    assert!(
        p.warnings
            .iter()
            .any(|w| w.field == "sites.home.nodes.b" && w.message.contains("explicit")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn a_site_without_block_follows_its_nodes_explicit_addresses() {
    let inv = Inv::new(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    nodes:\n      a: {address: 192.168.0.1, wireguard_ip: 10.100.42.7}\n",
    );
    let p = inv.plan();
    assert_eq!(block(&p, "home"), "10.100.42.0/24");
}

#[test]
fn lock_file_is_written_once_and_left_alone_when_unchanged() {
    let inv = Inv::new(&gen_inventory(&[("aa".into(), 2)], true));
    assert!(inv.plan().lock_written);
    let before = std::fs::metadata(inv.lock_path())
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!inv.plan().lock_written);
    let after = std::fs::metadata(inv.lock_path())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    let text = std::fs::read_to_string(inv.lock_path()).unwrap();
    assert!(text.contains("aa-n0: 10.100.0.1"), "{text}");
}

#[test]
fn a_corrupt_lock_file_is_a_located_error() {
    let inv = Inv::new(&gen_inventory(&[("aa".into(), 1)], true));
    std::fs::write(
        inv.lock_path(),
        "version: 1\nsites:\n  aa:\n    nodes:\n      aa-n0: 10.100.0.300\n",
    )
    .unwrap();
    let d = inv.diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].line, d[0].field.as_str()),
        (5, "sites.aa.nodes.aa-n0")
    );
    assert!(d[0].file.ends_with("inv.lock.yaml"));
}

#[test]
fn retired_addresses_are_never_handed_out_again() {
    let base = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    next_hop: a\n    nodes:\n      a: {address: 192.168.0.1}\n      b: {address: 192.168.0.2}\n  cabin:\n    nodes:\n      c: {address: 192.168.5.1}\n";
    let inv = Inv::new(base);
    let p = inv.plan();
    assert_eq!(ip(&p, "b"), "10.100.0.2");
    assert_eq!(block(&p, "cabin"), "10.100.1.0/24");
    // b and the whole of cabin taken out: `plan` lists them and what they retire
    let absent = base
        .replace(
            "b: {address: 192.168.0.2}",
            "b: {address: 192.168.0.2, state: absent}",
        )
        .replace("  cabin:\n", "  cabin:\n    state: absent\n");
    inv.write(&absent);
    let p = inv.plan();
    let text = wgprov::output::plan_text(&p.topology);
    assert!(
        text.contains("  b (site home)\n")
            && text.contains("  site cabin  10.100.1.0/24\n")
            && text.contains("  b (site home)  10.100.0.2\n"),
        "{text}"
    );
    // then deleted from the inventory, a new node and a new site added: neither gets them
    let later = base
        .replace(
            "      b: {address: 192.168.0.2}\n",
            "      d: {address: 192.168.0.4}\n",
        )
        .replace(
            "  cabin:\n    nodes:\n      c: {address: 192.168.5.1}\n",
            "  lake:\n    nodes:\n      l: {address: 192.168.6.1}\n",
        );
    inv.write(&later);
    let p = inv.plan();
    assert_eq!(
        ip(&p, "d"),
        "10.100.0.3",
        "b's address was handed out again"
    );
    assert_eq!(
        block(&p, "lake"),
        "10.100.2.0/24",
        "cabin's block was handed out again"
    );
    let lock = std::fs::read_to_string(inv.lock_path()).unwrap();
    assert!(
        lock.contains("    retired_nodes:\n      b: 10.100.0.2\n")
            && lock.contains("  cabin:\n    wireguard_cidr: 10.100.1.0/24\n    retired: true\n"),
        "{lock}"
    );
}

#[test]
fn a_node_deleted_without_state_absent_is_named_as_not_cleaned() {
    let base = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    next_hop: a\n    nodes:\n      a: {address: 192.168.0.1}\n      b: {address: 192.168.0.2}\n";
    let inv = Inv::new(base);
    inv.plan();
    inv.write(&base.replace("      b: {address: 192.168.0.2}\n", ""));
    let p = inv.plan();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("b (10.100.0.2)") && w.message.contains("state: absent")),
        "{:?}",
        p.warnings
    );
    // said once: the lock forgets it with that run
    assert!(
        !inv.plan()
            .warnings
            .iter()
            .any(|w| w.message.contains("b (10.100.0.2)"))
    );
}

#[test]
fn dual_stack_ipv6_addresses_are_recorded_and_a_changed_wireguard_cidr6_is_refused() {
    use std::process::Command;
    let wgprov = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wgprov"))
            .args(args)
            .output()
            .unwrap();
        // validate lists the diagnostics on stdout, the other commands on stderr
        let out = [o.stdout, o.stderr].concat();
        (o.status.code(), String::from_utf8_lossy(&out).into_owned())
    };
    let base = "network:\n  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: h.example:51820\n    next_hop: a\n    nodes:\n      a: {address: 192.168.0.1}\n      b: {address: 192.168.0.2}\n  cabin:\n    nodes:\n      c: {address: 192.168.5.1}\n";
    let inv = Inv::new(base);
    let path = inv.path.to_str().unwrap();
    // an old lock file, written before IPv6 was recorded
    std::fs::write(
        inv.lock_path(),
        "version: 1\nsites:\n  home:\n    wireguard_cidr: 10.100.0.0/24\n    nodes:\n      a: 10.100.0.1\n      b: 10.100.0.2\n",
    )
    .unwrap();
    // validate never writes
    assert_eq!(wgprov(&["validate", "-i", path]).0, Some(0));
    assert!(
        !std::fs::read_to_string(inv.lock_path())
            .unwrap()
            .contains("fd10")
    );
    let (code, err) = wgprov(&["plan", "-i", path]);
    assert_eq!(code, Some(0), "{err}");
    let lock = std::fs::read_to_string(inv.lock_path()).unwrap();
    assert!(
        lock.contains("  home:\n    wireguard_cidr: 10.100.0.0/24\n    wireguard_cidr6: fd10:100::/64\n    nodes:\n      a: 10.100.0.1\n      b: 10.100.0.2\n    nodes6:\n      a: fd10:100::1\n      b: fd10:100::2\n")
            && lock.contains("  cabin:\n    wireguard_cidr: 10.100.1.0/24\n    wireguard_cidr6: fd10:100:0:1::/64\n    nodes:\n      c: 10.100.1.1\n    nodes6:\n      c: fd10:100:0:1::1\n"),
        "{lock}"
    );
    // the operator edits the IPv6 space: refused before anything, the lock file untouched
    inv.write(&base.replace("fd10:100::/48", "fd10:200::/48"));
    for cmd in ["validate", "plan"] {
        let (code, err) = wgprov(&[cmd, "-i", path]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        let at = format!(
            "{}:7:22: sites.home.wireguard_cidr6: the lock file records fd10:100::/64, but the network now gives fd10:200::/64",
            inv.lock_path().display()
        );
        assert!(
            err.contains(&at)
                && err.contains("would move, and with them node IPs of the cluster")
                && err.contains("delete the IPv6 entries"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(inv.lock_path()).unwrap(), lock);
}
