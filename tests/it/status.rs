//! `wgprov status` in the lab, with real sshd, real WireGuard and real NAT: no false alarm in a
//! healthy mesh whose routers rewrite source ports and map a public port to another private
//! one, and each injected fault named with its kind and culprit — and nothing else blamed.

use std::time::Duration;

use serde_json::Value;

use super::apply::{Scenario, demo_yaml};
use super::common::lab_available;
use super::metrics::{promtool_check, value};

/// (kind, site, node) of every problem.
type Named = (String, Option<String>, Option<String>);

fn named(v: &Value) -> Vec<Named> {
    let s = |x: &Value| x.as_str().map(str::to_string);
    v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array: {v}"))
        .iter()
        .map(|p| (s(&p["kind"]).unwrap(), s(&p["site"]), s(&p["node"])))
        .collect()
}

fn kind(kind: &str, site: Option<&str>, node: Option<&str>) -> Named {
    (
        kind.to_string(),
        site.map(str::to_string),
        node.map(str::to_string),
    )
}

/// `status --format openmetrics`, checked by promtool: (exit code, text).
fn status_metrics(s: &Scenario) -> (i32, String) {
    let inv = s.inv.to_str().unwrap().to_string();
    let r = s.wgprov(&["status", "-i", &inv, "--format", "openmetrics"]);
    assert!(r.stdout.ends_with("# EOF\n"), "{}\n{}", r.stdout, r.stderr);
    promtool_check(&r.stdout);
    (r.code, r.stdout)
}

fn status_json(s: &Scenario) -> (i32, Value) {
    let inv = s.inv.to_str().unwrap().to_string();
    let r = s.wgprov(&["status", "-i", &inv, "--format", "json"]);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("json: {e}\n{}\n{}", r.stdout, r.stderr));
    (r.code, v)
}

/// Runs `status` (at most `tries` times, 2 s apart) until it names exactly `want`; returns the
/// last run.
fn status_until(s: &Scenario, want: &[Named], tries: usize) -> (i32, Value) {
    let mut last = status_json(s);
    for _ in 1..tries {
        if named(&last.1) == want {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        last = status_json(s);
    }
    last
}

/// The links with `node` at one end, as (other end, up).
fn links_of(v: &Value, node: &str) -> Vec<(String, bool)> {
    v["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| {
            let (a, b) = (l["from"].as_str()?, l["to"].as_str()?);
            let other = if a == node {
                b
            } else if b == node {
                a
            } else {
                return None;
            };
            Some((other.to_string(), l["up"].as_bool()?))
        })
        .collect()
}

fn port(addr: &str) -> Option<&str> {
    addr.rsplit_once(':').map(|(_, p)| p)
}

/// Makes `site`'s router rewrite the source port of everything it masquerades.
fn random_source_ports(s: &Scenario, site: &str) {
    s.lab.sh(
        &format!("{site}-router"),
        "iptables -t nat -D POSTROUTING -o wan0 -j MASQUERADE && iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE --random",
    );
}

/// One lab for the healthy runs and three faults, each put right before the next: office has
/// no endpoint (its next-hop dials the others), cabin's public port 51821 is mapped to cabin1's
/// 51820, and every router rewrites source ports.
#[test]
fn status_raises_no_false_alarm_behind_nat_and_names_each_fault_alone() {
    if !lab_available() {
        return;
    }
    let yaml = demo_yaml().replace("    endpoint: 198.51.100.20:51820\n", "");
    assert!(yaml.contains("endpoint: cabin.example.net:51821"));
    let s = Scenario::new("sa", &yaml, &yaml, &[]);
    for site in ["home", "office", "cabin"] {
        random_source_ports(&s, site);
    }
    let (code, v) = s.apply_json(&["--confirm-timeout", "30"]);
    assert_eq!(code, 0, "{v}");

    // healthy: three runs, no problem, every link up
    let mut rewritten = Vec::new();
    for run in 0..3 {
        let (code, v) = status_json(&s);
        assert_eq!(named(&v), vec![], "run {run}: {v:#}");
        assert_eq!(code, 0, "run {run}: {v:#}");
        let links = v["links"].as_array().unwrap();
        assert_eq!(links.len(), 6, "{v:#}");
        assert!(
            links.iter().all(|l| l["up"] == true && l["state"] == "up"),
            "run {run}: {v:#}"
        );
        // the conditions the old status took for a missing port-forward are really there: a
        // next-hop seen at another port than its configured endpoint
        for n in v["nodes"].as_array().unwrap() {
            for p in n["peers"].as_array().unwrap() {
                if let (Some(ep), Some(seen)) = (p["endpoint"].as_str(), p["seen_at"].as_str())
                    && !ep.starts_with("192.168.")
                    && port(ep) != port(seen)
                {
                    rewritten.push(format!(
                        "{} sees {} at {seen}, not {ep}",
                        n["name"].as_str().unwrap(),
                        p["peer"].as_str().unwrap()
                    ));
                }
            }
        }
    }
    assert!(
        !rewritten.is_empty(),
        "no peer was seen at a rewritten port: the lab does not test what it claims"
    );
    println!("seen at rewritten ports (normal): {rewritten:?}");
    let inv = s.inv.to_str().unwrap().to_string();
    let text = s.wgprov(&["status", "-i", &inv]);
    println!("{}", text.stdout);
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(
        text.stdout.ends_with("no problems found\n"),
        "{}",
        text.stdout
    );
    // the same, as metrics: every link up, every kind counted at zero, every node reachable
    let (code, m) = status_metrics(&s);
    assert_eq!(code, 0, "{m}");
    let up: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("wgprov_link_up{"))
        .collect();
    assert_eq!(up.len(), 6, "{m}");
    assert!(up.iter().all(|l| l.ends_with(" 1")), "{m}");
    for k in ["unreachable", "interface_down", "no_handshake", "drift"] {
        let series = format!("wgprov_problems{{kind=\"{k}\"}}");
        assert_eq!(value(&m, &series).as_deref(), Some("0"), "{series}: {m}");
    }
    assert!(
        m.contains("wgprov_link_transmit_bytes{from=\"node1\""),
        "{m}"
    );

    // fault 1: wg0 down on a member
    s.lab.sh("office2", "wg-quick down wg0 2>/dev/null");
    let want = vec![kind("interface_down", Some("office"), Some("office2"))];
    let (code, v) = status_until(&s, &want, 3);
    assert_eq!(named(&v), want, "{v:#}");
    assert_eq!(code, 1);
    assert_eq!(
        links_of(&v, "office2"),
        vec![("office1".to_string(), false)]
    );
    let text = s.wgprov(&["status", "-i", &inv]);
    println!("{}", text.stdout);
    assert!(
        text.stdout
            .contains("interface_down [site office, office2]: wg0 does not exist on office2"),
        "{}",
        text.stdout
    );
    s.lab.sh("office2", "wg-quick up wg0 2>/dev/null");
    let (code, v) = status_until(&s, &[], 5);
    assert_eq!((code, named(&v)), (0, vec![]), "after wg-quick up: {v:#}");

    // fault 2: a next-hop stops forwarding
    s.lab.sh("node1", "sysctl -qw net.ipv4.ip_forward=0");
    let want = vec![kind("forwarding_off", Some("home"), Some("node1"))];
    let (code, v) = status_until(&s, &want, 3);
    assert_eq!(named(&v), want, "{v:#}");
    assert_eq!(code, 1);
    s.lab.sh("node1", "sysctl -qw net.ipv4.ip_forward=1");
    let (code, v) = status_until(&s, &[], 3);
    assert_eq!((code, named(&v)), (0, vec![]), "{v:#}");

    // fault 3: sshd gone on a next-hop; its WireGuard still works
    s.lab.signal_sshd("office1", "KILL");
    let want = vec![kind("unreachable", Some("office"), Some("office1"))];
    let (code, v) = status_until(&s, &want, 3);
    assert_eq!(named(&v), want, "{v:#}");
    assert_eq!(code, 1);
    let (code, m) = status_metrics(&s);
    assert_eq!(code, 1, "{m}");
    assert_eq!(
        value(
            &m,
            "wgprov_node_reachable{node=\"office1\",site=\"office\"}"
        )
        .as_deref(),
        Some("0"),
        "{m}"
    );
    assert_eq!(
        value(&m, "wgprov_problems{kind=\"unreachable\"}").as_deref(),
        Some("1"),
        "{m}"
    );
    let office1 = links_of(&v, "office1");
    assert_eq!(office1.len(), 3, "{v:#}");
    assert!(
        office1.iter().all(|(_, up)| *up),
        "its links answer from their other ends: {office1:?}"
    );
    s.assert_no_key_leaked();
}

/// A port-forward that really cuts a link: cabin has no endpoint, so cabin1 must dial office's
/// endpoint, and office's router never forwards it. Only office's router is blamed.
#[test]
fn status_blames_the_router_whose_port_forward_is_missing_and_nothing_else() {
    if !lab_available() {
        return;
    }
    let yaml = demo_yaml().replace("    endpoint: cabin.example.net:51821\n", "");
    let s = Scenario::new("sb", &yaml, &yaml, &["office"]);
    // the link cabin1 <-> office1 cannot come up: the guard reports it, keeps what works
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    let want = vec![kind("port_forward_missing", Some("office"), None)];
    let (code, v) = status_until(&s, &want, 4);
    assert_eq!(named(&v), want, "{v:#}");
    assert_eq!(code, 1);
    let why = v["problems"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("udp 51820 -> 192.168.10.5:51820") && why.contains("cabin1"),
        "{why}"
    );
    assert_eq!(v["problems"][0]["peer"], Value::Null);
    let cabin1 = links_of(&v, "cabin1");
    assert!(
        cabin1.contains(&("office1".to_string(), false)),
        "{cabin1:?}"
    );
    assert!(cabin1.contains(&("node1".to_string(), true)), "{cabin1:?}");
    assert!(links_of(&v, "office1").contains(&("node1".to_string(), true)));

    let inv = s.inv.to_str().unwrap().to_string();
    let text = s.wgprov(&["status", "-i", &inv]);
    println!("{}", text.stdout);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout
            .contains("port_forward_missing [site office]: site office's router (pfsense)"),
        "{}",
        text.stdout
    );
    // the same as a picture: the link that never came up is red, the others green
    let r = s.wgprov(&["status", "-i", &inv, "--picture", "dot"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let edge = |a: &str, b: &str| -> String {
        r.stdout
            .lines()
            .find(|l| {
                l.contains(&format!("\"{a}\" -- \"{b}\""))
                    || l.contains(&format!("\"{b}\" -- \"{a}\""))
            })
            .unwrap_or_else(|| panic!("no edge {a} -- {b} in\n{}", r.stdout))
            .to_string()
    };
    assert!(
        edge("cabin1", "office1").contains("color=red"),
        "{}",
        r.stdout
    );
    assert!(
        edge("node1", "office1").contains("color=green4"),
        "{}",
        r.stdout
    );
    assert!(
        edge("node1", "node2").contains("color=green4"),
        "{}",
        r.stdout
    );
    s.assert_no_key_leaked();
}
