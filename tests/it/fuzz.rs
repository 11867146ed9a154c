//! Bad input never panics: mangled YAML (truncations, byte flips, wrong types, huge numbers,
//! deep nesting, alias bombs) gives clean, located errors.

use std::path::Path;

use proptest::prelude::*;
use wgprov::error::Error;
use wgprov::inventory::load_str;

use super::common::root;

fn home() -> String {
    std::fs::read_to_string(root().join("inventories/home.yaml")).unwrap()
}

/// Loads text; returns the error text, or None when it loaded fine. A panic fails the test.
fn try_load(text: &str) -> Option<String> {
    match load_str(Path::new("fuzz.yaml"), text) {
        Ok(_) => None,
        Err(Error::Invalid(d)) => {
            assert!(!d.is_empty(), "an invalid inventory with no diagnostic");
            for x in &d {
                assert!(!x.message.is_empty());
                assert!(x.to_string().starts_with("fuzz.yaml:"), "{x}");
            }
            Some(
                d.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn every_truncation_is_a_clean_error_or_valid() {
    let text = home();
    let mut errors = 0;
    for cut in 0..text.len() {
        if text.is_char_boundary(cut) && try_load(&text[..cut]).is_some() {
            errors += 1;
        }
    }
    assert!(
        errors > text.len() / 2,
        "most truncations should be invalid ({errors})"
    );
}

#[test]
fn wrong_types_huge_numbers_and_odd_scalars() {
    let text = home();
    let cases = [
        (
            "listen_port: 51820",
            "listen_port: 99999999999999999999999999",
        ),
        ("listen_port: 51820", "listen_port: -1"),
        ("listen_port: 51820", "listen_port: [1, 2]"),
        ("listen_port: 51820", "listen_port: .nan"),
        ("site_prefix: 24", "site_prefix: 1e400"),
        ("site_prefix: 24", "site_prefix: 99"),
        ("persistent_keepalive: 25", "persistent_keepalive: {a: b}"),
        ("wireguard_cidr: 10.100.0.0/16", "wireguard_cidr: ~"),
        (
            "wireguard_cidr: 10.100.0.0/16",
            "wireguard_cidr: !!binary aGVsbG8=",
        ),
        ("next_hop: node1", "next_hop: [node1]"),
        ("address: 192.168.0.10", "address: \"\""),
        (
            "address: 192.168.0.10",
            "address: \"192.168.0.10; rm -rf /\"",
        ),
        ("os_family: debian", "os_family: 7"),
        ("managed: false", "managed: maybe"),
        ("sites:", "sites: 3\nxsites:"),
    ];
    for (from, to) in cases {
        assert!(text.contains(from), "{from}");
        let bad = text.replacen(from, to, 1);
        assert!(try_load(&bad).is_some(), "accepted: {to}");
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_not_crashed() {
    let deep = format!("network: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(try_load(&deep).is_some());
    let deep_map = format!(
        "network: {}1{}\n",
        "{a: ".repeat(20_000),
        "}".repeat(20_000)
    );
    assert!(try_load(&deep_map).is_some());
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..30 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    bomb.push_str("network: *a29\nsites: {}\n");
    assert!(try_load(&bomb).is_some());
}

#[test]
fn binary_and_empty_input() {
    assert!(try_load("").is_some());
    assert!(try_load("\0\0\0").is_some());
    assert!(try_load("---\n...\n").is_some());
    assert!(try_load("- a\n- b\n").is_some());
    assert!(try_load("\u{feff}network: 1").is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_byte_edits_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = home().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = try_load(&text);
    }

    #[test]
    fn random_line_shuffles_never_panic(swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..4)) {
        let text = home();
        let mut lines: Vec<&str> = text.lines().collect();
        for (a, b) in swaps {
            let (i, j) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(i, j);
        }
        let _ = try_load(&lines.join("\n"));
    }
}
