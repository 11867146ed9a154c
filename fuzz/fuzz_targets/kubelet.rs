//! The kubelet defaults-file editor: four bytes pick the node IP, the rest is the file. Setting
//! `--node-ip` never panics, reads back, is idempotent, keeps every other line byte for byte
//! and every other flag of the edited `KUBELET_EXTRA_ARGS` in order.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use wgprov::facts::kubelet::{VAR, node_ip, set_node_ip};

/// The file's lines as bytes between newlines (a final newline is optional).
fn lines(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    s.strip_suffix('\n').unwrap_or(s).split('\n').collect()
}

/// The flags of a `KUBELET_EXTRA_ARGS=` line other than `--node-ip` and its value.
fn other_flags(line: &str) -> Option<Vec<String>> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").map(str::trim_start).unwrap_or(t);
    let v = t.strip_prefix(VAR)?.strip_prefix('=')?.trim_end();
    let v = match v.chars().next() {
        Some(q @ ('"' | '\'')) if v.len() >= 2 && v.ends_with(q) => &v[1..v.len() - 1],
        _ => v,
    };
    let mut out = Vec::new();
    let mut it = v.split_whitespace();
    while let Some(a) = it.next() {
        if a == "--node-ip" {
            it.next();
        } else if !a.starts_with("--node-ip=") {
            out.push(a.to_string());
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string();
    let Ok(text) = std::str::from_utf8(&data[4..]) else {
        return;
    };
    let out = set_node_ip(Some(text), &ip);
    assert_eq!(
        node_ip(&out).as_deref(),
        Some(ip.as_str()),
        "node-ip not read back"
    );
    assert_eq!(set_node_ip(Some(&out), &ip), out, "not idempotent");

    let (a, b) = (lines(text), lines(&out));
    if b.len() == a.len() + 1 {
        assert_eq!(
            &b[..a.len()],
            &a[..],
            "a line changed while one was appended"
        );
        assert_eq!(other_flags(b[a.len()]), Some(vec![]), "appended line");
        return;
    }
    assert_eq!(a.len(), b.len(), "lines added or lost");
    let changed: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(
        changed.len() <= 1,
        "more than one line changed: {changed:?}"
    );
    if let Some(&i) = changed.first() {
        let before = other_flags(a[i]).expect("the edited line was an assignment");
        assert_eq!(
            other_flags(b[i]),
            Some(before),
            "other flags lost or reordered"
        );
    }
});
