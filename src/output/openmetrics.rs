//! `status --format openmetrics`: the status report as OpenMetrics text, for Prometheus (which
//! reads it as its own text format too) or node_exporter's textfile collector.
//!
//! Every family is a gauge (a reading taken when status ran), named `wgprov_…`, with its HELP
//! and TYPE lines before its samples, and `# EOF` ends the text:
//!
//! | family | labels | value |
//! | --- | --- | --- |
//! | `wgprov_link_up` | from, to | 1 when the link carries traffic, else 0 |
//! | `wgprov_link_state` | from, to, state | 1 for the link's state (up, down, unknown), 0 for the others |
//! | `wgprov_link_handshake_age_seconds` | from, to | the youngest handshake either end saw (absent: none) |
//! | `wgprov_link_transmit_bytes` | from, to | bytes `from` sent to `to` |
//! | `wgprov_link_receive_bytes` | from, to | bytes `from` received from `to` |
//! | `wgprov_problems` | kind | problems of that kind (every kind, zero included) |
//! | `wgprov_node_reachable` | node, site | 1 when SSH to the node worked |
//! | `wgprov_node_interface_up` | node, site | 1 when its interface is up (reached nodes only) |
//! | `wgprov_node_drift` | node, site | 1 when its running interface differs from its file (reached nodes only) |
//!
//! A link's bytes are as `from`'s interface counts them, or, when `from` could not be read, as
//! `to`'s counts them (what `to` received is what `from` sent); absent when neither shows the
//! peer. The byte counts are gauges, not counters: Prometheus's classic text format (the one
//! `promtool check metrics` reads) and OpenMetrics spell a counter's name differently, and a
//! gauge reads the same in both. A link to a site wgprov does not manage has `to="site NAME"`.

use std::fmt::Write as _;

use crate::status::{Kind, LinkState, LinkStatus, NodeState, StatusReport};

/// One family being written: its samples follow its HELP and TYPE lines.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.out, "{}{{{}}} {value}", self.name, labels.join(","));
    }
}

/// Starts family `name` (a gauge) with its help text.
fn family<'a>(out: &'a mut String, name: &'static str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    Family { out, name }
}

/// A label value as the text formats want it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `(transmitted, received)` by `l.from` over `l`: as `from`'s interface counts them, else as
/// `to`'s (swapped).
fn link_bytes(r: &StatusReport, l: &LinkStatus) -> Option<(u64, u64)> {
    let seen_by = |node: &str, peer: &str| {
        r.nodes
            .iter()
            .filter(|n| n.name == node)
            .flat_map(|n| &n.peers)
            .find(|p| p.peer == peer)
    };
    if let Some(p) = seen_by(&l.from, &l.to) {
        return Some((p.tx, p.rx));
    }
    seen_by(&l.to, &l.from).map(|p| (p.rx, p.tx))
}

/// The report as OpenMetrics text.
pub fn status(r: &StatusReport) -> String {
    let mut o = String::new();
    links(&mut o, r);
    let mut f = family(
        &mut o,
        "wgprov_problems",
        "Problems found, by kind (0: none of that kind).",
    );
    for k in Kind::ALL {
        let n = r.problems.iter().filter(|p| p.kind == k).count();
        f.sample(&[("kind", k.as_str())], n);
    }
    nodes(&mut o, r);
    o.push_str("# EOF\n");
    o
}

/// A link's labels.
fn ends(l: &LinkStatus) -> [(&'static str, &str); 2] {
    [("from", l.from.as_str()), ("to", l.to.as_str())]
}

/// The link families.
fn links(o: &mut String, r: &StatusReport) {
    let mut f = family(
        o,
        "wgprov_link_up",
        "1 when a planned link carries traffic (a ping over it answered, or a handshake in the last 180 s with both interfaces up).",
    );
    for l in &r.links {
        f.sample(&ends(l), u8::from(l.up));
    }
    let mut f = family(
        o,
        "wgprov_link_state",
        "1 for the link's state (up, down, or unknown: no end could tell), 0 for the others.",
    );
    for l in &r.links {
        for s in LinkState::ALL {
            let [from, to] = ends(l);
            f.sample(&[from, to, ("state", s.as_str())], u8::from(l.state == s));
        }
    }
    let mut f = family(
        o,
        "wgprov_link_handshake_age_seconds",
        "Seconds since the youngest handshake either end of the link saw (absent: none seen).",
    );
    for l in &r.links {
        if let Some(a) = l.handshake_age {
            f.sample(&ends(l), a);
        }
    }
    let mut f = family(
        o,
        "wgprov_link_transmit_bytes",
        "Bytes the link's `from` end sent to its `to` end, as the interfaces count them.",
    );
    for l in &r.links {
        if let Some((tx, _)) = link_bytes(r, l) {
            f.sample(&ends(l), tx);
        }
    }
    let mut f = family(
        o,
        "wgprov_link_receive_bytes",
        "Bytes the link's `from` end received from its `to` end, as the interfaces count them.",
    );
    for l in &r.links {
        if let Some((_, rx)) = link_bytes(r, l) {
            f.sample(&ends(l), rx);
        }
    }
}

/// The node families.
fn nodes(o: &mut String, r: &StatusReport) {
    let mut f = family(o, "wgprov_node_reachable", "1 when SSH to the node worked.");
    for n in &r.nodes {
        f.sample(
            &[("node", &n.name), ("site", &n.site)],
            u8::from(n.state != NodeState::Unreachable),
        );
    }
    let reached = || r.nodes.iter().filter(|n| n.state != NodeState::Unreachable);
    let mut f = family(
        o,
        "wgprov_node_interface_up",
        "1 when the node's WireGuard interface is up (nodes reached only).",
    );
    for n in reached() {
        f.sample(
            &[("node", &n.name), ("site", &n.site)],
            u8::from(n.state == NodeState::Up),
        );
    }
    let mut f = family(
        o,
        "wgprov_node_drift",
        "1 when the node's running interface differs from its file (nodes reached only).",
    );
    for n in reached() {
        let drift = r
            .problems
            .iter()
            .any(|p| p.kind == Kind::Drift && p.node.as_deref() == Some(n.name.as_str()));
        f.sample(&[("node", &n.name), ("site", &n.site)], u8::from(drift));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write as _;
    use std::path::PathBuf;

    use super::*;
    use crate::status::{NodeStatus, PeerStatus, Problem};

    /// Where `promtool` is: `$WGPROV_PROMTOOL`, on PATH, or where `scripts/install-deps` puts
    /// it (taken out of Debian's prometheus package).
    pub(crate) fn promtool() -> Option<PathBuf> {
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

    /// Runs `promtool check metrics` on `text` and fails the test on any complaint. Without
    /// promtool: says so on stderr and returns false (under CI, where scripts/install-deps puts
    /// it in place, the test fails instead).
    pub(crate) fn promtool_check(text: &str) -> bool {
        let Some(tool) = promtool() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing under CI: scripts/install-deps should put it in place"
            );
            let name = std::thread::current()
                .name()
                .unwrap_or("a test")
                .to_string();
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {name} (promtool part): promtool not installed (scripts/install-deps)"
            );
            return false;
        };
        let mut child = std::process::Command::new(&tool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
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

    /// The rules promtool does not check: `# EOF` last and once, each family's HELP then TYPE
    /// then its samples, together; no series twice. Returns the families in order.
    pub(crate) fn lint(text: &str) -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let mut families: Vec<String> = Vec::new();
        let mut series = BTreeSet::new();
        let mut i = 0;
        while i + 1 < lines.len() {
            let help = lines[i]
                .strip_prefix("# HELP ")
                .unwrap_or_else(|| panic!("line {}: expected # HELP: {}\n{text}", i + 1, lines[i]));
            let name = help.split(' ').next().unwrap();
            assert!(name.starts_with("wgprov_"), "{name}");
            assert_eq!(lines[i + 1], format!("# TYPE {name} gauge"), "{text}");
            assert!(!families.contains(&name.to_string()), "{name} twice");
            families.push(name.to_string());
            i += 2;
            while i + 1 < lines.len() && !lines[i].starts_with('#') {
                let (s, value) = lines[i].rsplit_once(' ').unwrap();
                assert!(s.starts_with(&format!("{name}{{")), "{s} in {name}");
                assert!(value.parse::<f64>().is_ok(), "{}", lines[i]);
                assert!(series.insert(s.to_string()), "{s} twice");
                i += 1;
            }
        }
        families
    }

    fn sample_report() -> StatusReport {
        let node = |name: &str, state: NodeState, peers: Vec<PeerStatus>| NodeStatus {
            name: name.into(),
            site: "home".into(),
            next_hop: name == "a",
            state,
            error: None,
            public_key: None,
            listen_port: None,
            ip_forward: None,
            peers,
        };
        let peer = |peer: &str, rx: u64, tx: u64| PeerStatus {
            peer: peer.into(),
            public_key: "K".into(),
            endpoint: None,
            seen_at: None,
            handshake_age: Some(7),
            rx,
            tx,
        };
        let link = |to: &str, up: bool, state: LinkState, age: Option<u64>| LinkStatus {
            from: "a".into(),
            to: to.into(),
            up,
            state,
            cross_site: to.starts_with("site "),
            handshake_age: age,
            probes: BTreeMap::new(),
            relay: None,
            via: None,
        };
        StatusReport {
            failover: vec![],
            nodes: vec![
                node(
                    "a",
                    NodeState::Up,
                    vec![peer("b", 10, 20), peer("site x\"y", 300, 400)],
                ),
                node("b", NodeState::Down, vec![]),
                node("c", NodeState::Unreachable, vec![]),
            ],
            links: vec![
                link("b", false, LinkState::Down, None),
                link("c", false, LinkState::Unknown, None),
                link("site x\"y", true, LinkState::Up, Some(7)),
            ],
            problems: vec![
                Problem {
                    kind: Kind::InterfaceDown,
                    site: Some("home".into()),
                    node: Some("b".into()),
                    peer: None,
                    why: "w".into(),
                },
                Problem {
                    kind: Kind::Drift,
                    site: Some("home".into()),
                    node: Some("a".into()),
                    peer: None,
                    why: "w".into(),
                },
                Problem {
                    kind: Kind::Unreachable,
                    site: Some("home".into()),
                    node: Some("c".into()),
                    peer: None,
                    why: "w".into(),
                },
            ],
            warnings: vec![],
        }
    }

    #[test]
    fn the_report_as_openmetrics_every_family_with_help_and_type_and_eof_last() {
        let t = status(&sample_report());
        let samples: Vec<&str> = t.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"wgprov_link_up{from="a",to="b"} 0"#,
                r#"wgprov_link_up{from="a",to="c"} 0"#,
                r#"wgprov_link_up{from="a",to="site x\"y"} 1"#,
                r#"wgprov_link_state{from="a",to="b",state="up"} 0"#,
                r#"wgprov_link_state{from="a",to="b",state="down"} 1"#,
                r#"wgprov_link_state{from="a",to="b",state="unknown"} 0"#,
                r#"wgprov_link_state{from="a",to="c",state="up"} 0"#,
                r#"wgprov_link_state{from="a",to="c",state="down"} 0"#,
                r#"wgprov_link_state{from="a",to="c",state="unknown"} 1"#,
                r#"wgprov_link_state{from="a",to="site x\"y",state="up"} 1"#,
                r#"wgprov_link_state{from="a",to="site x\"y",state="down"} 0"#,
                r#"wgprov_link_state{from="a",to="site x\"y",state="unknown"} 0"#,
                r#"wgprov_link_handshake_age_seconds{from="a",to="site x\"y"} 7"#,
                r#"wgprov_link_transmit_bytes{from="a",to="b"} 20"#,
                r#"wgprov_link_transmit_bytes{from="a",to="site x\"y"} 400"#,
                r#"wgprov_link_receive_bytes{from="a",to="b"} 10"#,
                r#"wgprov_link_receive_bytes{from="a",to="site x\"y"} 300"#,
                r#"wgprov_problems{kind="unreachable"} 1"#,
                r#"wgprov_problems{kind="interface_down"} 1"#,
                r#"wgprov_problems{kind="forwarding_off"} 0"#,
                r#"wgprov_problems{kind="port_forward_missing"} 0"#,
                r#"wgprov_problems{kind="no_handshake"} 0"#,
                r#"wgprov_problems{kind="drift"} 1"#,
                r#"wgprov_problems{kind="kubelet_node_ip"} 0"#,
                r#"wgprov_problems{kind="failed_over"} 0"#,
                r#"wgprov_node_reachable{node="a",site="home"} 1"#,
                r#"wgprov_node_reachable{node="b",site="home"} 1"#,
                r#"wgprov_node_reachable{node="c",site="home"} 0"#,
                r#"wgprov_node_interface_up{node="a",site="home"} 1"#,
                r#"wgprov_node_interface_up{node="b",site="home"} 0"#,
                r#"wgprov_node_drift{node="a",site="home"} 1"#,
                r#"wgprov_node_drift{node="b",site="home"} 0"#,
            ]
        );
        assert_eq!(
            lint(&t),
            [
                "wgprov_link_up",
                "wgprov_link_state",
                "wgprov_link_handshake_age_seconds",
                "wgprov_link_transmit_bytes",
                "wgprov_link_receive_bytes",
                "wgprov_problems",
                "wgprov_node_reachable",
                "wgprov_node_interface_up",
                "wgprov_node_drift",
            ]
        );
        assert!(t.starts_with("# HELP wgprov_link_up 1 when a planned link carries traffic"));
        promtool_check(&t);
    }

    #[test]
    fn a_link_whose_from_end_was_not_read_takes_its_bytes_from_the_other_end() {
        let mut r = sample_report();
        // b reached and showing a; a not read
        r.nodes[0].peers.clear();
        r.nodes[1].peers = vec![PeerStatus {
            peer: "a".into(),
            public_key: "K".into(),
            endpoint: None,
            seen_at: None,
            handshake_age: None,
            rx: 5,
            tx: 6,
        }];
        let t = status(&r);
        assert!(
            t.contains("\nwgprov_link_transmit_bytes{from=\"a\",to=\"b\"} 5\n"),
            "{t}"
        );
        assert!(
            t.contains("\nwgprov_link_receive_bytes{from=\"a\",to=\"b\"} 6\n"),
            "{t}"
        );
        assert!(!t.contains("to=\"site x\\\"y\"} 400"), "{t}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn the_lint_catches_what_it_is_for() {
        let ok = "# HELP wgprov_x X.\n# TYPE wgprov_x gauge\nwgprov_x{a=\"1\"} 1\n# EOF\n";
        assert_eq!(lint(ok), ["wgprov_x"]);
        for bad in [
            ok.replace("# EOF\n", ""),
            ok.replace(
                "wgprov_x{a=\"1\"} 1\n",
                "wgprov_x{a=\"1\"} 1\nwgprov_x{a=\"1\"} 2\n",
            ),
            ok.replace("# TYPE wgprov_x gauge\n", ""),
            format!("{}{}", &ok[..ok.len() - 6], ok),
        ] {
            assert!(std::panic::catch_unwind(|| lint(&bad)).is_err(), "{bad}");
        }
    }

    /// Every `wgprov_*` name in `text`.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("wgprov_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn example(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// The alert rules and the dashboard shipped in examples/ ask only for metrics that
    /// `status --format openmetrics` prints.
    #[test]
    fn the_examples_ask_only_for_metrics_status_prints() {
        let families: BTreeSet<String> = lint(&status(&sample_report())).into_iter().collect();
        let dash =
            std::fs::read_to_string(example("examples/grafana/wgprov-dashboard.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&dash).unwrap();
        let exprs: Vec<String> = json["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().iter())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect();
        assert!(exprs.len() >= 8, "{exprs:?}");
        let rules =
            std::fs::read_to_string(example("examples/prometheus/wgprov-alerts.yml")).unwrap();
        for text in exprs.iter().map(String::as_str).chain([rules.as_str()]) {
            let used = metric_names(text);
            assert!(!used.is_empty(), "{text}");
            for m in used {
                assert!(
                    families.contains(&m),
                    "{m} is not a metric of status: {families:?}"
                );
            }
        }
    }

    /// promtool checks the example alert rules and runs their unit tests (each alert fires on
    /// the series that should raise it, and not before its `for`).
    #[test]
    fn the_example_alerts_pass_promtool_and_their_own_tests() {
        let Some(tool) = promtool() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing under CI: scripts/install-deps should put it in place"
            );
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED the_example_alerts_pass_promtool_and_their_own_tests: promtool not installed (scripts/install-deps)"
            );
            return;
        };
        let dir = example("examples/prometheus");
        for args in [
            ["check", "rules", "wgprov-alerts.yml"],
            ["test", "rules", "wgprov-alerts.test.yml"],
        ] {
            let o = std::process::Command::new(&tool)
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "promtool {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
