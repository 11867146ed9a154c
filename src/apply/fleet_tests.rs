//! `apply()` end to end over fake hosts: every decision of the run and of the guard, each of the
//! lab's fault cases, without a network. The hosts answer facts from a state built here (what a
//! previous apply left, or nothing), and the change, probe, confirm and put-back scripts as a
//! host would; the lab proves the scripts themselves on real hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::desired::{self, FileState, HostInput};
use crate::facts::gather::MARK;
use crate::inventory::OsFamily;
use crate::probe::PROBE;
use crate::transport::TransportError;
use crate::transport::fake::{FakeConnector, FakeHost, ok};

pub(crate) const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: { address: 192.168.0.10 }\n      h2: { address: 192.168.0.11 }\n  office:\n    endpoint: 198.51.100.20:51820\n    next_hop: o1\n    nodes:\n      o1: { address: 192.168.10.5 }\n      o2: { address: 192.168.10.6 }\n";

/// What one fake host has: its files and whether its interface runs them.
#[derive(Clone, Default)]
pub(crate) struct HostState {
    pub files: BTreeMap<String, (u32, String)>,
    pub running: bool,
    /// What the interface runs when it is not its file (drift).
    pub running_conf: Option<String>,
    /// Every peer's last handshake is this old (`None`: 10 s).
    pub handshake_age: Option<u64>,
}

/// A fleet of fake hosts for [`INV`].
pub(crate) struct Fleet {
    pub planned: Planned,
    pub roles: Roles,
    pub conn: Arc<FakeConnector>,
}

pub(crate) fn planned() -> Planned {
    planned_from(INV)
}

/// The network of inventory text `yaml` (no lock: addresses allocated afresh, as for [`INV`]).
pub(crate) fn planned_from(yaml: &str) -> Planned {
    let loaded = crate::inventory::load_str(std::path::Path::new("inv.yaml"), yaml).unwrap();
    let topology = Topology::build(&loaded.inventory, &Default::default())
        .unwrap()
        .0;
    Planned {
        inventory: loaded.inventory,
        topology,
        warnings: Vec::new(),
        lock_written: false,
    }
}

/// Each node's files as an apply would leave them (no systemd, Debian), with fresh keys.
pub(crate) fn applied_states(p: &Planned, roles: &Roles) -> BTreeMap<String, HostState> {
    let topo = &p.topology;
    let keys = desired::fresh_keys(topo);
    let mut out = BTreeMap::new();
    for n in &topo.nodes {
        let none = |_: &str| None;
        let input = HostInput {
            node: n,
            os_family: OsFamily::Debian,
            systemd: false,
            existing: &none,
            peer_fallback: None,
            preshared: &Default::default(),
        };
        let files = desired::desired_files(roles, topo, &keys, &input).unwrap();
        let files = files
            .into_iter()
            .filter_map(|f| match f.state {
                FileState::Present { content, mode } => Some((f.path.to_string(), (mode, content))),
                FileState::Absent => None,
            })
            .collect();
        out.insert(
            n.name.clone(),
            HostState {
                files,
                running: true,
                ..Default::default()
            },
        );
    }
    out
}

/// `wg show dump` of a config as it runs, every peer's last handshake `age` seconds ago.
fn dump(conf: &str, now: u64, age: u64) -> String {
    let key = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("PrivateKey = "))
        .expect("a private key");
    let public = crate::keys::PrivateKey::from_base64(key)
        .unwrap()
        .public_key()
        .to_base64();
    let port = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("ListenPort = "))
        .unwrap_or("51820");
    let mut out = format!("(hidden)\t{public}\t{port}\toff\n");
    for peer in conf.split("[Peer]").skip(1) {
        let get = |k: &str| {
            peer.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{k} = "))
                    .map(str::to_string)
            })
        };
        out.push_str(&format!(
            "{}\t(none)\t{}\t{}\t{}\t100\t100\t{}\n",
            get("PublicKey").unwrap(),
            get("Endpoint").unwrap_or_else(|| "192.0.2.99:51820".into()),
            get("AllowedIPs").unwrap().replace(' ', ""),
            now - age,
            get("PersistentKeepalive").unwrap_or_else(|| "0".into()),
        ));
    }
    out
}

/// The facts output a host in `state` prints.
pub(crate) fn facts_output(state: &HostState) -> String {
    let now = 1_800_000_000;
    let mut s = format!("{MARK} os_release\nID=debian\n{MARK} modes\n");
    for (path, (mode, _)) in &state.files {
        s.push_str(&format!("{mode:o} {path}\n"));
    }
    for (path, (_, content)) in &state.files {
        s.push_str(&format!(
            "{MARK} file {path}\n{}\n",
            STANDARD.encode(content)
        ));
    }
    s.push_str(&format!("{MARK} wg\n"));
    if state.running
        && let Some((_, conf)) = state.files.get("/etc/wireguard/wg0.conf")
    {
        let conf = state.running_conf.as_ref().unwrap_or(conf);
        s.push_str(&dump(conf, now, state.handshake_age.unwrap_or(10)));
    }
    s.push_str(&format!(
        "{MARK} tools\nwg wg-quick iptables\n{MARK} systemd\nno\n{MARK} units\n\n{MARK} wg_enabled\nno\n{MARK} now\n{now}\n{MARK} end\n"
    ));
    s
}

/// The addresses a probe script pings.
pub(crate) fn probe_targets(script: &str) -> Vec<Ipv4Addr> {
    script
        .lines()
        .find_map(|l| l.strip_prefix("for t in "))
        .and_then(|l| l.split(';').next())
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A host that answers as a healthy one would; its probes of `down` get no answer.
pub(crate) fn host(state: &HostState, down: &BTreeSet<Ipv4Addr>) -> Arc<FakeHost> {
    let h = Arc::new(FakeHost::new());
    let facts = facts_output(state);
    let down = down.clone();
    h.answer("facts", move |_| Ok(ok(&facts)));
    h.answer("change", |_| Ok(ok(&format!("{}\n", script::DONE))));
    h.answer("confirm", |_| Ok(ok(&format!("{}\n", host::CONFIRMED))));
    h.answer("revert", |_| Ok(ok(&format!("{}\n", host::REVERTED))));
    h.answer("probe", move |s| {
        let lines: String = probe_targets(s)
            .iter()
            .map(|t| {
                let st = if down.contains(t) { "down" } else { "up" };
                format!("{PROBE} {st} {t}\n")
            })
            .collect();
        Ok(ok(&lines))
    });
    h
}

impl Fleet {
    /// Hosts in `states`; probes towards `down` addresses fail everywhere.
    pub(crate) fn new(states: &BTreeMap<String, HostState>, down: &[&str]) -> Fleet {
        Fleet::planned_as(planned(), states, down)
    }

    /// Hosts in `states`, planned as `planned` says (another inventory than the one that left
    /// them so).
    pub(crate) fn planned_as(
        planned: Planned,
        states: &BTreeMap<String, HostState>,
        down: &[&str],
    ) -> Fleet {
        let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
        let down: BTreeSet<Ipv4Addr> = down
            .iter()
            .map(|n| planned.topology.node(n).unwrap().wireguard_ip)
            .collect();
        let hosts = states
            .iter()
            .map(|(n, st)| (n.clone(), host(st, &down)))
            .collect();
        Fleet {
            planned,
            roles,
            conn: Arc::new(FakeConnector::new(hosts)),
        }
    }

    /// A fleet where a previous apply left every file, with `tweak` applied to the states.
    pub(crate) fn applied(tweak: impl Fn(&mut BTreeMap<String, HostState>), down: &[&str]) -> Self {
        let p = planned();
        let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
        let mut states = applied_states(&p, &roles);
        tweak(&mut states);
        Fleet::new(&states, down)
    }

    pub(crate) fn host(&self, n: &str) -> &FakeHost {
        &self.conn.hosts[n]
    }

    /// `apply --check`: prepared, then stopped.
    pub(crate) fn check(&self, settings: &Settings) -> Report {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                prepare(
                    &self.planned,
                    &self.roles,
                    settings,
                    self.conn.clone(),
                    Arc::new(Quiet),
                )
                .await
                .unwrap()
                .check()
                .await
            })
    }

    pub(crate) fn run(&self, settings: &Settings) -> Report {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(apply(
                &self.planned,
                &self.roles,
                settings,
                self.conn.clone(),
                Arc::new(Quiet),
            ))
            .unwrap()
    }
}

pub(crate) fn settings() -> Settings {
    Settings {
        limit: None,
        forks: 4,
        no_rollback: false,
        guard: Some(Duration::from_secs(90)),
        stop: Default::default(),
        command_timeout: Duration::from_secs(120),
    }
}

fn status_of(r: &Report, n: &str) -> HostStatus {
    r.hosts.iter().find(|h| h.name == n).unwrap().status
}

fn error_of(r: &Report, n: &str) -> String {
    r.hosts
        .iter()
        .find(|h| h.name == n)
        .unwrap()
        .error
        .clone()
        .unwrap_or_default()
}

/// h2 loses its kubelet defaults file: a change of one host that touches its link to h1.
fn h2_changed(states: &mut BTreeMap<String, HostState>) {
    states
        .get_mut("h2")
        .unwrap()
        .files
        .remove("/etc/default/kubelet");
}

/// o2 too: two hosts change, in different sites.
fn h2_and_o2_changed(states: &mut BTreeMap<String, HostState>) {
    h2_changed(states);
    states
        .get_mut("o2")
        .unwrap()
        .files
        .remove("/etc/default/kubelet");
}

#[test]
fn a_run_that_changes_nothing_sends_nothing_but_the_facts_exec() {
    let f = Fleet::applied(|_| {}, &[]);
    let r = f.run(&settings());
    for n in ["h1", "h2", "o1", "o2"] {
        assert_eq!(
            status_of(&r, n),
            HostStatus::Ok,
            "{n}: {:?}",
            error_of(&r, n)
        );
        assert_eq!(f.host(n).kinds(), ["facts"], "{n}");
        assert_eq!(f.conn.connections(n), 1, "{n}");
    }
    let g = r.guard.clone().unwrap();
    assert_eq!(
        (g.outcome.as_str(), g.why.as_str()),
        ("skipped", "no host changed")
    );
    assert_eq!(r.exit_code(false), 0);
}

#[test]
fn a_first_apply_creates_every_file_and_is_confirmed() {
    let empty: BTreeMap<String, HostState> = ["h1", "h2", "o1", "o2"]
        .iter()
        .map(|n| (n.to_string(), HostState::default()))
        .collect();
    let f = Fleet::new(&empty, &[]);
    let r = f.run(&settings());
    for n in ["h1", "h2", "o1", "o2"] {
        assert_eq!(
            status_of(&r, n),
            HostStatus::Changed,
            "{n}: {}",
            error_of(&r, n)
        );
        let h = r.hosts.iter().find(|h| h.name == n).unwrap();
        assert!(
            h.changes
                .iter()
                .any(|c| c.path == "/etc/wireguard/wg0.conf" && c.action == Action::Created),
            "{n}: {:?}",
            h.changes
        );
        assert!(
            h.warnings
                .iter()
                .any(|w| w.contains("a new one is generated"))
        );
        let k = f.host(n).kinds();
        assert_eq!(k[..2], ["facts", "change"], "{n}");
        assert_eq!(k.last().unwrap(), "confirm", "{n}");
    }
    // the new links are probed (and reported if down), from one end each
    let probes: usize = ["h1", "h2", "o1", "o2"]
        .iter()
        .map(|n| f.host(n).kinds().iter().filter(|k| *k == "probe").count())
        .sum();
    assert!(probes >= 1);
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "confirmed", "{}", g.why);
    assert_eq!(g.links_before, 0, "nothing was up before a first apply");
    assert_eq!(g.links_after, 3, "h1-h2, o1-o2 and h1-o1 answered");
}

#[test]
fn a_good_change_is_kept_and_confirmed_over_a_fresh_connection() {
    let f = Fleet::applied(h2_changed, &[]);
    let r = f.run(&settings());
    assert_eq!(
        status_of(&r, "h2"),
        HostStatus::Changed,
        "{}",
        error_of(&r, "h2")
    );
    assert_eq!(f.host("h2").kinds(), ["facts", "change", "confirm"]);
    assert_eq!(
        f.conn.connections("h2"),
        2,
        "the confirmation uses a new connection"
    );
    for n in ["h1", "o1", "o2"] {
        assert_eq!(status_of(&r, n), HostStatus::Ok, "{n}");
        assert!(!f.host(n).kinds().contains(&"change".to_string()), "{n}");
    }
    // the link h1-h2 was up before (fresh handshakes): it is probed, from one end
    let probes: usize = ["h1", "h2"]
        .iter()
        .map(|n| f.host(n).kinds().iter().filter(|k| *k == "probe").count())
        .sum();
    assert_eq!(probes, 1);
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "confirmed", "{}", g.why);
    assert_eq!((g.links_before, g.links_after), (1, 1));
    assert_eq!(r.exit_code(false), 0);
}

#[test]
fn a_change_that_breaks_a_link_is_put_back_everywhere() {
    // after the change nothing answers h2 or o2: the links that were up are down
    let f = Fleet::applied(h2_and_o2_changed, &["h2", "o2"]);
    let r = f.run(&settings());
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "reverted", "{}", g.why);
    assert!(!g.broken.is_empty());
    assert!(g.why.contains("down after it"), "{}", g.why);
    for n in ["h2", "o2"] {
        assert_eq!(status_of(&r, n), HostStatus::Reverted, "{n}");
        assert_eq!(f.host(n).kinds().last().unwrap(), "revert", "{n}");
        assert!(!f.host(n).kinds().contains(&"confirm".to_string()), "{n}");
    }
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn a_host_whose_session_drops_mid_change_is_unknown_and_everything_is_put_back() {
    let f = Fleet::applied(h2_and_o2_changed, &[]);
    f.host("h2")
        .fail("change", TransportError::Lost("connection reset".into()));
    let r = f.run(&settings());
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "reverted", "{}", g.why);
    assert!(g.why.contains("outcome is unknown on h2"), "{}", g.why);
    assert_eq!(status_of(&r, "o2"), HostStatus::Reverted);
    assert_eq!(f.host("o2").kinds().last().unwrap(), "revert");
    // h2 is asked to put itself back too (a fresh connection reaches it)
    assert_eq!(
        status_of(&r, "h2"),
        HostStatus::Reverted,
        "{}",
        error_of(&r, "h2")
    );
    assert_eq!(f.host("h2").kinds().last().unwrap(), "revert");
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn a_change_whose_output_ends_early_is_an_unknown_outcome() {
    let f = Fleet::applied(h2_changed, &[]);
    f.host("h2").reply("change", "STAGE=written\n");
    let r = f.run(&settings());
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "reverted", "{}", g.why);
    assert!(g.why.contains("outcome is unknown on h2"), "{}", g.why);
    assert!(
        error_of(&r, "h2").contains("ended early"),
        "{}",
        error_of(&r, "h2")
    );
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn a_host_locked_by_another_apply_is_not_touched_and_fails() {
    let f = Fleet::applied(h2_changed, &[]);
    f.host("h2").reply(
        "change",
        &format!("{} ci@runner since 1799999990\n", host::LOCKED),
    );
    let r = f.run(&settings());
    assert_eq!(status_of(&r, "h2"), HostStatus::Failed);
    assert!(
        error_of(&r, "h2").contains("locked by another apply (ci@runner since 1799999990)"),
        "{}",
        error_of(&r, "h2")
    );
    assert_eq!(
        f.host("h2").kinds(),
        ["facts", "change"],
        "nothing to confirm or put back"
    );
    assert_eq!(r.guard.clone().unwrap().outcome, "skipped");
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn ctrl_c_before_the_first_wave_starts_no_host() {
    let f = Fleet::applied(h2_and_o2_changed, &[]);
    let s = settings();
    s.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = f.run(&s);
    for n in ["h2", "o2"] {
        assert_eq!(status_of(&r, n), HostStatus::Failed, "{n}");
        assert!(error_of(&r, n).contains("the run was stopped"), "{n}");
        assert_eq!(f.host(n).kinds(), ["facts"], "{n}");
    }
    assert!(r.interrupted);
    assert_eq!(r.exit_code(false), 130);
}

#[test]
fn an_unreachable_host_is_reported_and_the_others_go_on() {
    let f = Fleet::applied(h2_changed, &[]);
    f.conn.refuse.lock().unwrap().insert("o2".into());
    let r = f.run(&settings());
    assert_eq!(status_of(&r, "o2"), HostStatus::Unreachable);
    assert!(error_of(&r, "o2").contains("connection refused"));
    assert_eq!(
        status_of(&r, "h2"),
        HostStatus::Changed,
        "{}",
        error_of(&r, "h2")
    );
    assert_eq!(r.guard.clone().unwrap().outcome, "confirmed");
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn a_changed_host_the_controller_cannot_reach_anew_is_not_confirmed() {
    let f = Fleet::applied(h2_and_o2_changed, &[]);
    f.conn.once.lock().unwrap().insert("h2".into());
    let r = f.run(&settings());
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "reverted", "{}", g.why);
    assert!(
        g.why
            .contains("h2 cannot be reached over a fresh connection"),
        "{}",
        g.why
    );
    assert!(!f.host("h2").kinds().contains(&"confirm".to_string()));
    assert_eq!(f.host("o2").kinds().last().unwrap(), "revert");
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn check_mode_reads_and_compares_but_changes_nothing() {
    let f = Fleet::applied(h2_and_o2_changed, &[]);
    let r = f.check(&settings());
    for n in ["h2", "o2"] {
        assert_eq!(status_of(&r, n), HostStatus::Changed, "{n}");
    }
    for n in ["h1", "h2", "o1", "o2"] {
        assert_eq!(f.host(n).kinds(), ["facts"], "{n}");
    }
    assert!(r.guard.is_none());
    assert_eq!(r.exit_code(true), 3);
}

#[test]
fn no_guard_changes_without_probing_or_confirming() {
    let f = Fleet::applied(h2_changed, &["h2"]);
    let mut s = settings();
    s.guard = None;
    let r = f.run(&s);
    assert_eq!(status_of(&r, "h2"), HostStatus::Changed);
    for n in ["h1", "h2", "o1", "o2"] {
        let k = f.host(n).kinds();
        assert!(
            !k.iter().any(|k| k == "probe" || k == "confirm"),
            "{n}: {k:?}"
        );
    }
    assert_eq!(r.guard.clone().unwrap().outcome, "skipped");
}

/// `state: absent` on o2: its next-hop drops it and it is cleaned in one guarded run; when it
/// cannot be reached, o1 drops it all the same and the run warns without failing.
#[test]
fn a_node_marked_absent_is_dropped_and_cleaned_or_warned_about_when_unreachable() {
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let states = applied_states(&planned(), &roles);
    let absent = INV.replace(
        "o2: { address: 192.168.10.6 }",
        "o2: { address: 192.168.10.6, state: absent }",
    );
    let f = Fleet::planned_as(planned_from(&absent), &states, &[]);
    let r = f.run(&settings());
    assert_eq!(r.exit_code(false), 0, "{:?}", r.warnings);
    for (n, st) in [
        ("o1", HostStatus::Changed),
        ("o2", HostStatus::Changed),
        ("h1", HostStatus::Ok),
        ("h2", HostStatus::Ok),
    ] {
        assert_eq!(status_of(&r, n), st, "{n}: {}", error_of(&r, n));
    }
    let o2 = r.hosts.iter().find(|h| h.name == "o2").unwrap();
    assert!(o2.removed);
    assert!(
        o2.handlers
            .iter()
            .any(|h| h == "wireguard: wg0 down, wg-quick@wg0 disabled (its config is gone)"),
        "{:?}",
        o2.handlers
    );
    assert_eq!(r.guard.as_ref().unwrap().outcome, GuardOutcome::Confirmed);

    let f = Fleet::planned_as(planned_from(&absent), &states, &[]);
    f.conn.refuse.lock().unwrap().insert("o2".into());
    let r = f.run(&settings());
    assert_eq!(status_of(&r, "o2"), HostStatus::Unreachable);
    assert_eq!(status_of(&r, "o1"), HostStatus::Changed);
    assert_eq!(
        r.exit_code(false),
        0,
        "an unreachable node taken out fails nothing"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("o2 (state: absent) could not be reached")),
        "{:?}",
        r.warnings
    );
}
