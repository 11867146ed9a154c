//! `promtool check metrics` for what wgprov prints as metrics (promtool alone, taken out of
//! Debian's prometheus package by scripts/install-deps; no Prometheus server runs).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::common::skipped;

/// Where promtool is: `$WGPROV_PROMTOOL`, on PATH, or where scripts/install-deps puts it.
pub fn promtool() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .collect()
        })
        .unwrap_or_default();
    std::env::var_os("WGPROV_PROMTOOL")
        .map(PathBuf::from)
        .into_iter()
        .chain(on_path)
        .chain([PathBuf::from(
            "/var/cache/wgprov-test/promtool/usr/bin/promtool",
        )])
        .find(|p| p.is_file())
}

/// Runs `promtool check metrics` on `text`; fails on any complaint. Without promtool: skips
/// that part visibly and returns false (under CI, a missing promtool fails).
pub fn promtool_check(text: &str) -> bool {
    let Some(tool) = promtool() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing under CI: scripts/install-deps should put it in place"
        );
        skipped("promtool not installed (scripts/install-deps): metrics not checked");
        return false;
    };
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// The value of the one sample `series` (name and labels as printed) in `text`.
pub fn value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

#[test]
fn promtool_refuses_what_it_should() {
    if promtool().is_none() {
        promtool_check("");
        return;
    }
    let bad = "# TYPE wgprov_x gauge\nwgprov_x{a=\"1\"} 1\n# EOF\n";
    let r = std::panic::catch_unwind(|| promtool_check(bad));
    assert!(r.is_err(), "a family without HELP passed promtool");
    assert!(promtool_check(
        "# HELP wgprov_x X.\n# TYPE wgprov_x gauge\nwgprov_x{a=\"1\"} 1\n# EOF\n"
    ));
}
