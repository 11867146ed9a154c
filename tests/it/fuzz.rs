//! Bad input never panics: mangled YAML (truncations, byte flips, wrong types, huge numbers,
//! deep nesting, alias bombs) gives clean, located errors.

use std::path::Path;

use proptest::prelude::*;
use wgprov::error::Error;
use wgprov::inventory::load_str;

use super::common::{require, root};

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

/// The fuzz targets: the `[[bin]]`s of fuzz/Cargo.toml.
fn fuzz_targets() -> Vec<String> {
    let toml = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
    toml.split("[[bin]]")
        .skip(1)
        .map(|b| {
            b.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .unwrap()
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

/// The fuzz crate builds (cargo-fuzz, AddressSanitizer, debug assertions) and every target
/// runs once over each file of its committed corpus without a crash: `scripts/fuzz --replay`.
/// The first build takes minutes (its own target directory, fuzz/target or $FUZZ_TARGET_DIR);
/// later ones only rebuild what changed.
#[test]
fn every_fuzz_target_runs_over_its_committed_corpus() {
    let targets = fuzz_targets();
    assert!(targets.len() >= 6, "{targets:?}");
    let count = |t: &str| {
        std::fs::read_dir(root().join("fuzz/corpus").join(t))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for t in &targets {
        assert!(count(t) > 0, "fuzz/corpus/{t} has no seed");
        assert!(
            root().join("fuzz/dict").join(format!("{t}.dict")).is_file(),
            "no fuzz/dict/{t}.dict"
        );
    }
    if !require("cargo-fuzz") {
        return;
    }
    let t0 = std::time::Instant::now();
    let o = std::process::Command::new(root().join("scripts/fuzz"))
        .arg("--replay")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "scripts/fuzz --replay:\n{out}{err}");
    for t in &targets {
        let want = format!("replay {t}: {} inputs, ok", count(t));
        assert!(
            out.lines().any(|l| l == want),
            "no `{want}` in:\n{out}{err}"
        );
    }
    eprintln!("{out}fuzz replay in {:.0} s", t0.elapsed().as_secs_f64());
}
