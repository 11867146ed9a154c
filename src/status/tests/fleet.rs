//! `status()` end to end over fake hosts: each problem kind found from what the hosts answer,
//! and a healthy mesh without a false alarm. (The pure rules, `port_forward_missing` among
//! them, have their own table tests; the lab proves the observation script on real hosts.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::*;
use crate::apply::fleet_tests::{HostState, applied_states, facts_output, planned, probe_targets};
use crate::fleet::Quiet;
use crate::probe::PROBE;
use crate::transport::fake::{FakeConnector, FakeHost, ok};

/// How one fake node answers the status script.
#[derive(Clone, Default)]
struct Seen {
    state: HostState,
    forwarding: bool,
    /// Addresses whose pings get no answer.
    down: BTreeSet<Ipv4Addr>,
}

fn status_host(seen: Seen) -> Arc<FakeHost> {
    let h = Arc::new(FakeHost::new());
    h.answer("status", move |script| {
        let mut out = String::new();
        for t in probe_targets(script) {
            let st = if seen.down.contains(&t) { "down" } else { "up" };
            out.push_str(&format!("{PROBE} {st} {t}\n"));
        }
        let flags = if seen.state.running {
            "UP,LOWER_UP"
        } else {
            ""
        };
        out.push_str(&format!(
            "{MARK} ip_forward {}\n{MARK} link 5: wg0: <POINTOPOINT,NOARP,{flags}> mtu 1420\n",
            u8::from(seen.forwarding)
        ));
        out.push_str(&facts_output(&seen.state));
        Ok(ok(&out))
    });
    h
}

/// Runs status over the applied fleet after `tweak`; `refuse` are unreachable.
fn run(tweak: impl Fn(&mut BTreeMap<String, Seen>), refuse: &[&str]) -> StatusReport {
    let p = planned();
    let roles = crate::roles::Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let mut seen: BTreeMap<String, Seen> = applied_states(&p, &roles)
        .into_iter()
        .map(|(n, state)| {
            let forwarding = p.topology.node(&n).unwrap().is_next_hop;
            let s = Seen {
                state,
                forwarding,
                down: BTreeSet::new(),
            };
            (n, s)
        })
        .collect();
    tweak(&mut seen);
    let conn = Arc::new(FakeConnector::new(
        seen.into_iter().map(|(n, s)| (n, status_host(s))).collect(),
    ));
    conn.refuse
        .lock()
        .unwrap()
        .extend(refuse.iter().map(|s| s.to_string()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(status(&p, 4, conn, Arc::new(Quiet)))
        .unwrap()
}

fn kinds(r: &StatusReport) -> Vec<(Kind, Option<String>)> {
    r.problems
        .iter()
        .map(|p| (p.kind, p.node.clone().or(p.site.clone())))
        .collect()
}

fn ip(n: &str) -> Ipv4Addr {
    planned().topology.node(n).unwrap().wireguard_ip
}

#[test]
fn a_healthy_mesh_has_no_problem_and_every_link_up() {
    let r = run(|_| {}, &[]);
    assert!(r.problems.is_empty(), "{:?}", kinds(&r));
    assert!(r.links.iter().all(|l| l.up), "{:?}", r.links);
    assert_eq!(r.links.len(), 3);
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn a_node_that_does_not_answer_ssh_is_unreachable() {
    let r = run(|_| {}, &["o2"]);
    assert_eq!(kinds(&r), [(Kind::Unreachable, Some("o2".into()))]);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn a_node_whose_interface_is_down_is_named() {
    let r = run(
        |s| {
            s.get_mut("h2").unwrap().state.running = false;
            s.get_mut("h1").unwrap().down.insert(ip("h2"));
        },
        &[],
    );
    assert_eq!(kinds(&r), [(Kind::InterfaceDown, Some("h2".into()))]);
}

#[test]
fn a_next_hop_that_does_not_forward_is_named() {
    let r = run(|s| s.get_mut("o1").unwrap().forwarding = false, &[]);
    assert!(
        kinds(&r).contains(&(Kind::ForwardingOff, Some("o1".into()))),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn a_running_interface_that_differs_from_its_file_is_drift() {
    let r = run(
        |s| {
            let st = &mut s.get_mut("h1").unwrap().state;
            let conf = st.files["/etc/wireguard/wg0.conf"].1.clone();
            // a peer removed by hand: the running interface has one [Peer] less
            let first_peer = conf.find("[Peer]").unwrap();
            let second = conf[first_peer + 1..].find("[Peer]").unwrap() + first_peer + 1;
            st.running_conf = Some(format!("{}{}", &conf[..first_peer], &conf[second..]));
        },
        &[],
    );
    assert!(
        kinds(&r).contains(&(Kind::Drift, Some("h1".into()))),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn a_kubelet_on_another_address_is_named() {
    let r = run(
        |s| {
            let st = &mut s.get_mut("o2").unwrap().state;
            st.files.insert(
                "/etc/default/kubelet".into(),
                (0o644, "KUBELET_EXTRA_ARGS=--node-ip=192.168.10.6\n".into()),
            );
        },
        &[],
    );
    assert_eq!(kinds(&r), [(Kind::KubeletNodeIp, Some("o2".into()))]);
}

#[test]
fn a_link_between_two_working_ends_without_a_handshake_is_no_handshake() {
    let r = run(
        |s| {
            for (n, other) in [("h1", "o1"), ("o1", "h1")] {
                let x = s.get_mut(n).unwrap();
                x.down.insert(ip(other));
                x.state.handshake_age = Some(100_000);
            }
            // the site-local links still answer
            s.get_mut("h2").unwrap().state.handshake_age = Some(100_000);
            s.get_mut("o2").unwrap().state.handshake_age = Some(100_000);
        },
        &[],
    );
    assert!(
        r.problems.iter().any(|p| p.kind == Kind::NoHandshake
            && [p.node.as_deref(), p.peer.as_deref()].contains(&Some("h1"))
            && [p.node.as_deref(), p.peer.as_deref()].contains(&Some("o1"))),
        "{:?}",
        kinds(&r)
    );
}

#[test]
fn the_fleets_reports_as_openmetrics_pass_promtool() {
    use crate::output::openmetrics::tests::{lint, promtool_check};
    let healthy = run(|_| {}, &[]);
    let unreachable = run(|_| {}, &["o2"]);
    let down = run(
        |s| {
            s.get_mut("h2").unwrap().state.running = false;
            s.get_mut("h1").unwrap().down.insert(ip("h2"));
        },
        &[],
    );
    for (name, r) in [
        ("healthy", &healthy),
        ("unreachable", &unreachable),
        ("down", &down),
    ] {
        let t = crate::output::openmetrics::status(r);
        assert_eq!(lint(&t).len(), 9, "{name}");
        // every kind has its count, zero included
        for k in Kind::ALL {
            let n = r.problems.iter().filter(|p| p.kind == k).count();
            let line = format!("\nwgprov_problems{{kind=\"{}\"}} {n}\n", k.as_str());
            assert!(t.contains(&line), "{name}: {line:?} in\n{t}");
        }
        promtool_check(&t);
    }
    let t = crate::output::openmetrics::status(&healthy);
    let up: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("wgprov_link_up{"))
        .collect();
    assert_eq!(up.len(), 3, "{t}");
    assert!(up.iter().all(|l| l.ends_with(" 1")), "{t}");
    assert!(
        t.contains("wgprov_link_transmit_bytes{from=\"h1\",to=\"h2\"} "),
        "{t}"
    );
    let t = crate::output::openmetrics::status(&unreachable);
    assert!(
        t.contains("\nwgprov_node_reachable{node=\"o2\",site=\"office\"} 0\n"),
        "{t}"
    );
    assert!(!t.contains("wgprov_node_drift{node=\"o2\""), "{t}");
    let t = crate::output::openmetrics::status(&down);
    assert!(
        t.contains("\nwgprov_node_interface_up{node=\"h2\",site=\"home\"} 0\n"),
        "{t}"
    );
    // each link as the report has it
    for l in &down.links {
        let line = format!(
            "\nwgprov_link_up{{from=\"{}\",to=\"{}\"}} {}\n",
            l.from,
            l.to,
            u8::from(l.up)
        );
        assert!(t.contains(&line), "{line:?} in\n{t}");
    }
}
