//! The main job: connect to every node (one SSH connection each, all at once up to `forks`),
//! gather facts in one exec per node, plan the whole network from them (existing keys kept),
//! compare, and — unless `check` — run each changed host's transaction (backup, atomic writes,
//! handlers, read-back), verify it, and roll the host back when any of that fails.
//!
//! `--limit` narrows which hosts are changed, never who their peers are: facts are read from
//! every node so that every config lists every peer.

pub mod guard;
pub mod host;
pub mod script;

#[cfg(test)]
pub(crate) mod fleet_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::desired::{self, FileState, HostInput, KeyRing};
use crate::diff::{self, Action, Change};
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::facts::FileFact;
use crate::facts::gather;
use crate::facts::wgconf::WgConfig;
use crate::fleet::{Connect, Sessions, close_all, connect_all, run_all, with_jumps};
pub use crate::fleet::{Progress, Quiet};
use crate::inventory::OsFamily;
use crate::roles::Roles;
use crate::topology::keys::{Keypair, PrivateKey};
use crate::topology::{NodePlan, Planned, Topology};
use crate::transport::Transport;
use script::HandlerPlan;

/// Settings of one apply (resolved from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node name, site name or glob over node names; `None`: every node.
    pub limit: Option<String>,
    /// Stop after the comparison: change nothing.
    pub check: bool,
    /// How many hosts work at once.
    pub forks: usize,
    /// Leave a failed host as it is, for inspection.
    pub no_rollback: bool,
    /// The guard's confirmation timeout; `None` with `--no-guard`.
    pub guard: Option<Duration>,
    /// Set when the operator asks to stop (Ctrl-C): no new host is started, hosts in flight
    /// finish, and under the guard every changed host is put back.
    pub stop: Arc<AtomicBool>,
    /// The longest one remote command may take (the transport's command timeout).
    pub command_timeout: Duration,
}

impl Settings {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How a host ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Nothing to change (or, with `--check`, nothing pending).
    Ok,
    /// Changed and verified (or, with `--check`, changes pending).
    Changed,
    /// Failed and left as it is (`--no-rollback`), or failed before changing anything.
    Failed,
    /// Could not be reached or its host key was refused.
    Unreachable,
    /// Failed and was put back as it was.
    RolledBack,
    /// Changed, then put back by the guard (the network would have been worse).
    Reverted,
}

impl HostStatus {
    /// The word used in JSON and progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Ok => "ok",
            HostStatus::Changed => "changed",
            HostStatus::Failed => "failed",
            HostStatus::Unreachable => "unreachable",
            HostStatus::RolledBack => "rolled_back",
            HostStatus::Reverted => "reverted",
        }
    }
}

/// One file of a host's report.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// Path on the node.
    pub path: String,
    /// What happened (or would happen).
    pub action: Action,
    /// Unified diff, private keys redacted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

/// Per-phase timings of one host, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Connect, key exchange, authentication.
    pub connect: f64,
    /// The facts exec.
    pub facts: f64,
    /// The transaction exec (writes, handlers, read-back).
    pub apply: f64,
    /// The confirmation or put-back over a fresh connection, if one ran.
    pub guard: f64,
}

/// What happened on one host.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    /// Node name.
    #[serde(skip)]
    pub name: String,
    /// Final status.
    pub status: HostStatus,
    /// Files compared, with what happened to each.
    pub changes: Vec<FileReport>,
    /// Handlers run (or that would run).
    pub handlers: Vec<String>,
    /// How the running interface differed from its file (repaired by the handlers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Things worth knowing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Per-phase timings.
    pub timings: Timings,
}

impl HostReport {
    fn new(name: &str) -> Self {
        HostReport {
            name: name.to_string(),
            status: HostStatus::Ok,
            changes: Vec::new(),
            handlers: Vec::new(),
            drift: Vec::new(),
            error: None,
            warnings: Vec::new(),
            timings: Timings::default(),
        }
    }
    /// Files changed (or to change).
    pub fn changed(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .count()
    }
}

/// What the guard did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardReport {
    /// `confirmed`, `reverted` or `skipped`.
    pub outcome: String,
    /// Links up before the change (among those it could touch).
    pub links_before: usize,
    /// Probed links that answered after it.
    pub links_after: usize,
    /// Links up before and down after.
    pub broken: Vec<guard::Link>,
    /// New links that did not come up.
    pub new_down: Vec<guard::Link>,
    /// Links up before that could not be probed after (no connection to either end).
    pub unknown: Vec<guard::Link>,
    /// Why this outcome.
    pub why: String,
    /// Hosts the controller could not put back: their dead-man does it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_to_dead_man: Vec<String>,
    /// The confirmation timeout, seconds (0 without the guard).
    pub confirm_timeout: u64,
    /// Seconds spent probing links.
    pub gate_seconds: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Targeted hosts in inventory order.
    pub hosts: Vec<HostReport>,
    /// Run-wide warnings (untargeted nodes that could not be read, …).
    pub warnings: Vec<String>,
    /// True for `--check`.
    pub check: bool,
    /// What the guard did (apply only).
    pub guard: Option<GuardReport>,
    /// True when the operator stopped the run (exit 130).
    pub interrupted: bool,
    /// The router rules still to be done by hand (routers wgprov does not manage), listed once.
    pub router_rules: Vec<String>,
    /// Hub routers wgprov does not manage: the tunnel and peers to create, with every key known.
    pub router_hubs: Vec<crate::hosts::hub::Hub>,
}

/// Counts for the recap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Hosts that ended ok (unchanged).
    pub ok: usize,
    /// Hosts changed (or with changes pending under `--check`).
    pub changed: usize,
    /// Hosts failed or rolled back.
    pub failed: usize,
    /// Hosts unreachable.
    pub unreachable: usize,
}

impl Report {
    /// Counts per status.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for h in &self.hosts {
            match h.status {
                HostStatus::Ok => s.ok += 1,
                HostStatus::Changed => s.changed += 1,
                HostStatus::Failed | HostStatus::RolledBack | HostStatus::Reverted => s.failed += 1,
                HostStatus::Unreachable => s.unreachable += 1,
            }
        }
        s
    }
    /// Exit status (the documented exit codes): 1 when any host failed, was unreachable or rolled back; 3 with
    /// `--check --detailed-exitcode` when changes are pending; else 0.
    pub fn exit_code(&self, detailed: bool) -> u8 {
        let s = self.summary();
        let new_down = self.guard.as_ref().is_some_and(|g| !g.new_down.is_empty());
        if self.interrupted {
            130
        } else if s.failed > 0 || s.unreachable > 0 || new_down {
            1
        } else if self.check && detailed && s.changed > 0 {
            3
        } else {
            0
        }
    }
}

/// What a host's report says of each file compared: the action, and the diff when it changes.
fn file_reports(changes: &[Change]) -> Vec<FileReport> {
    changes
        .iter()
        .map(|c| FileReport {
            path: c.desired.path.to_string(),
            action: c.action,
            diff: if c.action == Action::Unchanged {
                String::new()
            } else {
                c.unified_diff()
            },
        })
        .collect()
}

/// True when `node` matches `--limit` (a node name, a site name, or a glob over node names).
pub fn matches_limit(limit: &str, node: &NodePlan) -> bool {
    limit
        .split(',')
        .map(str::trim)
        .any(|l| l == node.name || l == node.site || glob(l, &node.name))
}

/// The nodes `--limit` selects (every node without it).
fn targeted_nodes<'a>(topo: &'a Topology, settings: &Settings) -> Vec<&'a NodePlan> {
    let limit = settings.limit.as_deref();
    topo.nodes
        .iter()
        .filter(|n| limit.is_none_or(|l| matches_limit(l, n)))
        .collect()
}

/// The managed routers `--limit` selects: by their name (`<site>-router`), their site's name,
/// or a glob over their name (every managed router without it).
fn targeted_routers(topo: &Topology, settings: &Settings) -> Vec<String> {
    let limit = settings.limit.as_deref();
    topo.routers()
        // a hub router (`next_hop: router`) is planned as a node of its site
        .filter(|(_, r)| topo.node(&r.name).is_none())
        .filter(|(s, r)| {
            limit.is_none_or(|l| {
                l.split(',')
                    .map(str::trim)
                    .any(|l| l == r.name || l == s.name || glob(l, &r.name))
            })
        })
        .map(|(_, r)| r.name.clone())
        .collect()
}

fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The key pair a node already has, read from its config: `None` when it has none, an error
/// when its `PrivateKey` is malformed (never silently replaced: that would change the node's
/// identity behind its peers' backs).
fn existing_key(facts: &Facts, wg_path: &str) -> Option<std::result::Result<Keypair, String>> {
    let conf = facts.files.get(wg_path)?.content()?;
    let k = WgConfig::parse(conf).private_key()?.to_string();
    Some(
        PrivateKey::from_base64(&k)
            .map(|k| k.into_keypair())
            .map_err(|_| {
                format!(
                    "{wg_path} has a malformed PrivateKey: wgprov will not replace the node's identity; fix the key, or remove the line to have a new one made"
                )
            }),
    )
}

/// The key pair a node already has: from its wg-quick file, or for an OpenWrt hub router from
/// its uci.
fn node_key(
    topo: &Topology,
    node: &NodePlan,
    facts: &Facts,
    wg_path: &str,
) -> Option<std::result::Result<Keypair, String>> {
    if crate::hosts::openwrt_hub::of(topo, node).is_some() {
        crate::hosts::openwrt_hub::existing_key(facts, &topo.network.interface)
    } else {
        existing_key(facts, wg_path)
    }
}

/// The peers a host has now, each a public key and its AllowedIPs: from its wg-quick file, or
/// from the script of an OpenWrt hub (`hub`). What keeps the entry of a peer whose node cannot
/// be read.
fn existing_peers(facts: &Facts, wg_path: &str, hub: bool) -> Vec<(String, Vec<String>)> {
    let path = if hub {
        crate::hosts::openwrt_hub::HUB_SCRIPT
    } else {
        wg_path
    };
    match facts.files.get(path).and_then(|x| x.content()) {
        Some(t) if hub => crate::hosts::openwrt_hub::peers_of(t),
        Some(t) => WgConfig::parse(t).peer_list(),
        None => Vec::new(),
    }
}

/// The port_forward handler's public ports to flush (the port-forward script's before and
/// after), with a warning when the router has no `conntrack`; `install` says how to get it.
fn plan_flush(
    changes: &[Change],
    f: &Facts,
    handlers: &mut HandlerPlan,
    install: &str,
    warnings: &mut Vec<String>,
) {
    if let Some(ports) = &mut handlers.port_forward {
        let c = changes
            .iter()
            .find(|c| c.desired.path == crate::hosts::PF_SCRIPT);
        *ports = crate::hosts::flush_ports(
            c.and_then(|c| c.current.content()),
            c.and_then(|c| c.desired.state.content()),
        );
        if !f.tools.contains("conntrack") {
            warnings.push(format!("conntrack is not installed on the router: entries of the old port-forward may keep steering the WireGuard port until they time out ({install})"));
        }
    }
}

/// What an operator should know about a config wgprov is about to keep (adopted keys that
/// wg-quick treats specially).
fn config_warnings(conf: &str, facts: &Facts) -> Vec<String> {
    let mut w = Vec::new();
    let c = WgConfig::parse(conf);
    if let Some(i) = c.interface() {
        if i.get("SaveConfig")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            w.push("the config has SaveConfig = true: wg-quick down rewrites the file from the running interface, which can undo wgprov's changes; remove it".into());
        }
        if i.get("DNS").is_some() && !facts.tools.contains("resolvconf") {
            w.push("the config sets DNS but the node has no resolvconf: wg-quick up will fail (install resolvconf or openresolv, or remove DNS)".into());
        }
    }
    w
}

/// Host work computed from the facts: what to change and how to check it.
struct HostPlan {
    changes: Vec<Change>,
    handlers: HandlerPlan,
    expect: Option<script::Expect>,
    facts: Facts,
}

/// Runs apply (or `--check`) over the planned network.
pub async fn apply<C: Connect>(
    planned: &Planned,
    roles: &Roles,
    settings: &Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    let topo = &planned.topology;
    let iface = topo.network.interface.clone();
    let wg_path = format!("/etc/wireguard/{iface}.conf");
    let targeted = targeted_nodes(topo, settings);
    let routers = targeted_routers(topo, settings);
    if targeted.is_empty() && routers.is_empty() {
        return Err(Error::Usage(format!(
            "--limit {} matches no managed node",
            settings.limit.as_deref().unwrap_or("")
        )));
    }
    let mut paths: HashMap<String, Vec<crate::shell::RemotePath>> = HashMap::new();
    for n in &topo.nodes {
        paths.insert(n.name.clone(), desired::candidate_paths(roles, topo, n)?);
    }

    // 1. connect to every node (untargeted ones are read for their keys, never changed) and to
    // the targeted managed routers
    let sessions = connect_all(
        &connector,
        topo.ssh_targets()
            .into_iter()
            .filter(|t| topo.node(&t.name).is_some() || routers.contains(&t.name))
            .collect(),
        settings.forks,
        &progress,
    )
    .await;

    // 2. facts, one exec per node
    let reachable: Vec<String> = topo
        .nodes
        .iter()
        .map(|n| &n.name)
        .chain(routers.iter())
        .filter(|n| matches!(sessions.get(*n), Some(Ok(_))))
        .cloned()
        .collect();
    let facts: HashMap<String, (std::result::Result<Facts, String>, f64)> = {
        let sessions = &sessions;
        let router_script = gather::script_with(
            &iface,
            &crate::hosts::candidate_paths(),
            &crate::hosts::facts_section(),
        );
        let hub_section = crate::hosts::openwrt_hub::facts_section(&iface);
        let scripts: HashMap<String, String> = reachable
            .iter()
            .map(|n| match paths.get(n) {
                Some(p) if crate::hosts::openwrt_hub::is_hub(topo, n) => {
                    (n.clone(), gather::script_with(&iface, p, &hub_section))
                }
                Some(p) => (n.clone(), gather::script(&iface, p)),
                None => (n.clone(), router_script.clone()),
            })
            .collect();
        run_all(reachable.clone(), settings.forks, |n| {
            let s = sessions[&n].as_ref().expect("reachable").clone();
            let script = scripts[&n].clone();
            let progress = progress.clone();
            async move {
                progress.phase(&n, "gathering facts");
                let t = Instant::now();
                let r = match s.run_script(&script).await {
                    Ok(out) if out.status == 0 => gather::parse(&out.stdout_text()),
                    Ok(out) => Err(format!(
                        "facts script exited {}: {}",
                        out.status,
                        out.stderr_text().trim()
                    )),
                    Err(e) => Err(e.to_string()),
                };
                (r, t.elapsed().as_secs_f64())
            }
        })
        .await
    };

    // 3. keys: kept where a node has one; new for targeted nodes without
    let mut warnings = Vec::new();
    let mut keys = KeyRing::new();
    let mut new_keys = BTreeSet::new();
    let mut bad_keys: HashMap<String, String> = HashMap::new();
    let target_names: BTreeSet<&str> = targeted.iter().map(|t| t.name.as_str()).collect();
    for n in &topo.nodes {
        let is_target = target_names.contains(n.name.as_str());
        match facts.get(&n.name).map(|f| &f.0) {
            Some(Ok(f)) => match node_key(topo, n, f, &wg_path) {
                Some(Ok(k)) => {
                    keys.insert(n.name.clone(), k);
                }
                Some(Err(e)) => {
                    bad_keys.insert(n.name.clone(), e);
                }
                None if is_target => {
                    keys.insert(n.name.clone(), Keypair::generate());
                    new_keys.insert(n.name.clone());
                }
                None => warnings.push(format!(
                    "node {} has no WireGuard key yet and is outside --limit: its peers cannot list it until it is applied",
                    n.name
                )),
            },
            _ if !is_target => warnings.push(format!(
                "node {} could not be read: its peers keep their existing entry for it",
                n.name
            )),
            _ => {}
        }
    }

    // 4. plan and compare, per targeted host
    let mut reports: Vec<HostReport> = Vec::new();
    let mut plans: HashMap<String, HostPlan> = HashMap::new();
    for n in &targeted {
        let mut r = HostReport::new(&n.name);
        if let Some(Ok(s)) = sessions.get(&n.name) {
            r.timings.connect = s.connect_time().as_secs_f64();
        }
        match (sessions.get(&n.name), facts.get(&n.name)) {
            (Some(Err(e)), _) => {
                r.status = HostStatus::Unreachable;
                r.error = Some(e.to_string());
            }
            (_, Some((Err(e), t))) => {
                r.timings.facts = *t;
                r.status = HostStatus::Failed;
                r.error = Some(format!("gathering facts: {e}"));
            }
            (_, Some((Ok(_), t))) if bad_keys.contains_key(&n.name) => {
                r.timings.facts = *t;
                r.status = HostStatus::Failed;
                r.error = Some(bad_keys[&n.name].clone());
            }
            (_, Some((Ok(f), t))) => {
                r.timings.facts = *t;
                let hub = crate::hosts::openwrt_hub::of(topo, n).is_some();
                if hub && let Some(why) = crate::hosts::openwrt_hub::refusal(f, &iface) {
                    r.status = HostStatus::Failed;
                    r.error = Some(why);
                    reports.push(r);
                    continue;
                }
                let os = match (f.os_family, n.os_family) {
                    (Some(found), Some(said)) if found != said => {
                        r.warnings.push(format!(
                            "the inventory says os_family {}, the host's /etc/os-release says {}: using {}",
                            said.as_str(),
                            found.as_str(),
                            found.as_str()
                        ));
                        found
                    }
                    (Some(found), _) => found,
                    (None, Some(said)) => said,
                    (None, None) => OsFamily::Debian,
                };
                if new_keys.contains(&n.name) {
                    r.warnings
                        .push("no WireGuard key on the node: a new one is generated".into());
                }
                let known = existing_peers(f, &wg_path, hub);
                let fallback = |allowed: &str| -> Option<String> {
                    let want: BTreeSet<&str> = allowed.split(',').map(str::trim).collect();
                    known
                        .iter()
                        .find(|(k, a)| {
                            !k.is_empty()
                                && a.iter().map(String::as_str).collect::<BTreeSet<_>>() == want
                        })
                        .map(|(k, _)| k.clone())
                };
                let existing =
                    |p: &str| f.files.get(p).and_then(|x| x.content()).map(str::to_string);
                let input = HostInput {
                    node: n,
                    os_family: os,
                    systemd: f.systemd,
                    existing: &existing,
                    peer_fallback: Some(&fallback),
                };
                // hosts were contacted: a template that fails for this host's facts is this
                // host's failure (exit 1), not an invalid inventory (exit 2)
                let (files, skipped) =
                    match desired::desired_files_with_skips(roles, topo, &keys, &input) {
                        Ok(x) => x,
                        Err(e) => {
                            r.status = HostStatus::Failed;
                            r.error = Some(format!("rendering its files: {e}"));
                            reports.push(r);
                            continue;
                        }
                    };
                for s in skipped {
                    r.warnings.push(format!("peer {s} left out: its key is unknown (its node could not be read and this host has no entry for it)"));
                }
                let changes = diff::compare(&files, &|p| {
                    f.files.get(p).cloned().unwrap_or(FileFact::Absent)
                });
                let mut handlers = script::plan_handlers(&changes, f, &wg_path);
                if handlers.kubelet {
                    handlers.node_ip = Some(n.wireguard_ip.to_string());
                }
                // drift: an unchanged config whose running interface differs from it
                if let Some(c) = changes
                    .iter()
                    .find(|c| c.desired.path == wg_path && c.action == Action::Unchanged)
                    && let Some(conf) = c.current.content()
                {
                    let drift = crate::hosts::drift::detect(conf, f, &iface);
                    handlers.repair(&drift);
                    r.drift = drift.into_iter().map(|d| d.what).collect();
                }
                // an OpenWrt hub: its script's check is the drift check, and a port-forward it
                // had before is removed with its conntrack entries
                if hub {
                    let unchanged = changes.iter().any(|c| {
                        c.desired.path == crate::hosts::openwrt_hub::HUB_SCRIPT
                            && c.action == Action::Unchanged
                    });
                    if unchanged && let Some(d) = crate::hosts::openwrt_hub::drift(f) {
                        r.drift.push(d);
                        handlers.router_hub = true;
                    }
                    plan_flush(
                        &changes,
                        f,
                        &mut handlers,
                        "opkg install conntrack",
                        &mut r.warnings,
                    );
                }
                r.changes = file_reports(&changes);
                r.handlers = handlers.describe(&iface, f);
                if r.changed() > 0 || handlers != HandlerPlan::default() {
                    r.status = HostStatus::Changed;
                }
                let planned_conf = files
                    .iter()
                    .find(|d| d.path == wg_path)
                    .and_then(|d| match &d.state {
                        FileState::Present { content, .. } => Some(content.clone()),
                        FileState::Absent => None,
                    });
                if let Some(c) = &planned_conf {
                    r.warnings.extend(config_warnings(c, f));
                }
                let public_key = keys[&n.name].public.to_base64();
                let expect = if hub {
                    files
                        .iter()
                        .find(|d| d.path == crate::hosts::openwrt_hub::HUB_SCRIPT)
                        .and_then(|d| d.state.content())
                        .map(|s| {
                            script::Expect::from_peers(
                                &public_key,
                                &crate::hosts::openwrt_hub::peers_of(s),
                            )
                        })
                } else {
                    planned_conf
                        .as_deref()
                        .map(|c| script::Expect::from_conf(&public_key, c))
                };
                plans.insert(
                    n.name.clone(),
                    HostPlan {
                        changes,
                        handlers,
                        expect,
                        facts: f.clone(),
                    },
                );
            }
            _ => {
                r.status = HostStatus::Unreachable;
                r.error = Some("not contacted".into());
            }
        }
        reports.push(r);
    }

    // 4b. the managed routers: their port-forward, planned like a node's files
    for name in &routers {
        let (r, plan) = plan_router(topo, name, &sessions, &facts, &wg_path, &iface);
        if let Some(p) = plan {
            plans.insert(name.clone(), p);
        }
        reports.push(r);
    }

    // 5. change the hosts that need it (never under --check), then the guard
    let mut guard_report = None;
    let mut fresh: Sessions<C::Session> = HashMap::new();
    if !settings.check {
        let to_change: Vec<String> = reports
            .iter()
            .filter(|r| r.status == HostStatus::Changed)
            .map(|r| r.name.clone())
            .collect();
        for (w, managed) in router_announcements(topo, &plans, &wg_path) {
            if managed {
                // the managed router's own change does it, first: an action, not a note
                progress.note(&w);
            } else {
                progress.note(&format!("router change needed: {w}"));
                warnings.push(format!("router change needed: {w}"));
            }
        }
        let run = host::RunId::new();
        let owner = host::owner();
        let cx = RunCx {
            topo,
            settings,
            progress: &progress,
            sessions: &sessions,
            connector: &connector,
            iface: &iface,
            run: &run,
        };
        let outcomes = change_hosts(&cx, &owner, &to_change, &plans).await;
        flush_again(&cx, &to_change, &plans, &outcomes).await;
        let mut pending = Vec::new();
        let mut lost = Vec::new();
        let mut deadlines = Vec::new();
        let mut touched = BTreeSet::new();
        for r in &mut reports {
            if !to_change.contains(&r.name) {
                continue;
            }
            let Some((o, secs, due)) = outcomes.get(&r.name) else {
                r.status = HostStatus::Failed;
                r.error = Some("not changed: the run was stopped before this host's turn".into());
                continue;
            };
            r.timings.apply = *secs;
            touched.insert(r.name.clone());
            if let Some(d) = due {
                deadlines.push(*d);
            }
            match o {
                host::ChangeOutcome::Changed => pending.push(r.name.clone()),
                host::ChangeOutcome::RolledBack { error, restored } => {
                    r.status = if *restored {
                        HostStatus::RolledBack
                    } else {
                        HostStatus::Failed
                    };
                    r.error = Some(if *restored {
                        format!("{error}; put back: files restored byte for byte, handlers re-run")
                    } else {
                        format!(
                            "{error}; PUTTING IT BACK FAILED: see /var/lib/wgprov/log on the host"
                        )
                    });
                }
                host::ChangeOutcome::Failed { error } => {
                    r.status = HostStatus::Failed;
                    r.error = Some(error.clone());
                }
                host::ChangeOutcome::Locked { owner } => {
                    r.status = HostStatus::Failed;
                    r.error = Some(format!(
                        "locked by another apply ({owner}): nothing was touched on this host"
                    ));
                }
                host::ChangeOutcome::Lost { error } => {
                    r.status = HostStatus::Failed;
                    r.error = Some(error.clone());
                    lost.push(r.name.clone());
                }
            }
        }
        guard_report = Some(match settings.guard {
            None => GuardReport {
                outcome: "skipped".into(),
                why: "--no-guard: the change was neither gated nor confirmed".into(),
                ..Default::default()
            },
            Some(_) if pending.is_empty() && lost.is_empty() => GuardReport {
                outcome: "skipped".into(),
                why: "no host changed".into(),
                ..Default::default()
            },
            Some(timeout) => {
                let changes: HashMap<String, Vec<Change>> = plans
                    .iter()
                    .filter(|(n, _)| touched.contains(*n))
                    .map(|(n, p)| (n.clone(), p.changes.clone()))
                    .collect();
                let ok_facts: BTreeMap<String, &Facts> = facts
                    .iter()
                    .filter_map(|(n, (f, _))| f.as_ref().ok().map(|f| (n.clone(), f)))
                    .collect();
                let owners: HashMap<String, String> = keys
                    .iter()
                    .map(|(n, k)| (k.public.to_base64(), n.clone()))
                    .collect();
                let (before, existed) = guard::links_before(&ok_facts, &owners);
                let g = GuardInput {
                    timeout,
                    pending: &pending,
                    lost: &lost,
                    touched: &touched,
                    before,
                    existed,
                    changes: &changes,
                    wg_path: &wg_path,
                    first_dead_man: deadlines.iter().min().copied(),
                };
                let (report, statuses) = run_guard(&cx, &g, &mut fresh).await;
                for r in &mut reports {
                    if let Some((st, err, secs)) = statuses.get(&r.name) {
                        r.status = *st;
                        if let Some(e) = err {
                            r.error = Some(match r.error.take() {
                                Some(old)
                                    if *st == HostStatus::Reverted && lost.contains(&r.name) =>
                                {
                                    format!("{old}; {e}")
                                }
                                _ => e.clone(),
                            });
                        }
                        r.timings.guard = *secs;
                    }
                }
                report
            }
        });
    }
    for r in &reports {
        progress.done(&r.name, r.status.as_str());
    }
    close_all(&sessions).await;
    close_all(&fresh).await;
    Ok(Report {
        hosts: reports,
        warnings,
        check: settings.check,
        guard: guard_report,
        interrupted: settings.stopped(),
        router_rules: crate::hosts::manual_rules(topo),
        router_hubs: crate::hosts::hub::hubs(topo, &|n| keys.get(n).map(|k| k.public)),
    })
}

/// A managed router's report and plan: its desired files compared with its facts, the
/// port-forward handler (with the public ports whose conntrack entries it flushes), drift of
/// its running rules.
fn plan_router<S: Transport>(
    topo: &Topology,
    name: &str,
    sessions: &Sessions<S>,
    facts: &HashMap<String, (std::result::Result<Facts, String>, f64)>,
    wg_path: &str,
    iface: &crate::shell::InterfaceName,
) -> (HostReport, Option<HostPlan>) {
    let mut r = HostReport::new(name);
    let (site, router) = topo.router(name).expect("a targeted router exists");
    if let Some(Ok(s)) = sessions.get(name) {
        r.timings.connect = s.connect_time().as_secs_f64();
    }
    let f = match (sessions.get(name), facts.get(name)) {
        (Some(Err(e)), _) => {
            r.status = HostStatus::Unreachable;
            r.error = Some(e.to_string());
            return (r, None);
        }
        (_, Some((Err(e), t))) => {
            r.timings.facts = *t;
            r.status = HostStatus::Failed;
            r.error = Some(format!("gathering facts: {e}"));
            return (r, None);
        }
        (_, Some((Ok(f), t))) => {
            r.timings.facts = *t;
            f
        }
        _ => {
            r.status = HostStatus::Unreachable;
            r.error = Some("not contacted".into());
            return (r, None);
        }
    };
    let files = match crate::hosts::desired(topo, site, router, f) {
        Ok(x) => x,
        Err(e) => {
            r.status = HostStatus::Failed;
            r.error = Some(e);
            return (r, None);
        }
    };
    let changes = diff::compare(&files, &|p| {
        f.files.get(p).cloned().unwrap_or(FileFact::Absent)
    });
    let mut handlers = script::plan_handlers(&changes, f, wg_path);
    let script_unchanged = changes
        .iter()
        .any(|c| c.desired.path == crate::hosts::PF_SCRIPT && c.action == Action::Unchanged);
    if script_unchanged && let Some(d) = crate::hosts::linux::drift(f) {
        r.drift.push(d);
        handlers.port_forward.get_or_insert_with(Vec::new);
    }
    plan_flush(
        &changes,
        f,
        &mut handlers,
        match router.kind {
            crate::inventory::ManagedKind::Linux => "apt-get install conntrack",
            crate::inventory::ManagedKind::Openwrt => "opkg install conntrack",
        },
        &mut r.warnings,
    );
    if !f.systemd && router.kind == crate::inventory::ManagedKind::Linux {
        r.warnings.push(format!(
            "systemd is not running here: nothing re-installs the port-forward at boot; run `sh {}` from the router's boot scripts (e.g. /etc/rc.local)",
            crate::hosts::PF_SCRIPT
        ));
    }
    r.changes = file_reports(&changes);
    r.handlers = handlers.describe(iface, f);
    if r.changed() > 0 || handlers != HandlerPlan::default() {
        r.status = HostStatus::Changed;
    }
    (
        r,
        Some(HostPlan {
            changes,
            handlers,
            expect: None,
            facts: f.clone(),
        }),
    )
}

/// What every step of a changing run shares.
struct RunCx<'a, C: Connect> {
    topo: &'a Topology,
    settings: &'a Settings,
    progress: &'a Arc<dyn Progress>,
    sessions: &'a Sessions<C::Session>,
    connector: &'a Arc<C>,
    iface: &'a crate::shell::InterfaceName,
    run: &'a host::RunId,
}

/// Router rules a change needs, announced before anything is touched: a next-hop that will
/// listen on another port, or a site whose next-hop moves. `true` marks a site whose router
/// wgprov manages: its router's change does it, first, in the same guarded transaction.
fn router_announcements(
    topo: &Topology,
    plans: &HashMap<String, HostPlan>,
    wg_path: &str,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for site in topo.sites.iter().filter(|s| s.managed) {
        let Some(nh) = site.next_hop.as_deref().and_then(|n| topo.node(n)) else {
            continue;
        };
        let Some(c) = plans
            .get(&nh.name)
            .and_then(|p| p.changes.iter().find(|c| c.desired.path == wg_path))
        else {
            continue;
        };
        let Some(old) = c.current.content() else {
            continue;
        };
        // a site without an endpoint is never dialled from outside, and a hub router receives
        // WireGuard on its own WAN: no router rule to change
        let Some(endpoint) = &site.endpoint else {
            continue;
        };
        if nh.is_router {
            continue;
        }
        let new_port = topo.network.listen_port;
        let public = endpoint.port;
        let old_conf = WgConfig::parse(old);
        let iface = old_conf.interface();
        let old_port = iface
            .and_then(|i| i.get("ListenPort"))
            .and_then(|p| p.trim().parse::<u16>().ok());
        let was_hub = iface.is_some_and(|i| i.get("PostUp").is_some());
        let what = if let Some(op) = old_port
            && op != new_port
        {
            format!(
                "site {}: {} will listen on UDP {new_port} instead of {op}",
                site.name, nh.name
            )
        } else if !was_hub {
            format!("site {}: the next-hop moves to {}", site.name, nh.name)
        } else {
            continue;
        };
        match &site.managed_router {
            Some(r) if plans.contains_key(&r.name) => out.push((
                format!(
                    "{what}: the managed router {} changes first, forwarding UDP {public} to {}:{new_port}, in this same guarded transaction",
                    r.name, nh.address
                ),
                true,
            )),
            Some(r) => out.push((
                format!(
                    "{what}: the managed router {} must forward UDP {public} to {}:{new_port}, but it is outside --limit: apply it too (--limit {},{})",
                    r.name,
                    nh.address,
                    r.name,
                    nh.name
                ),
                false,
            )),
            None => out.push((
                if old_port.is_some_and(|op| op != new_port) {
                    format!(
                        "{what}: the router ({}) must forward UDP {public} to {}:{new_port}; change it first, or the guard will find the links between sites down and put everything back",
                        site.router.as_str(),
                        nh.address
                    )
                } else {
                    format!(
                        "{what}: the router ({}) must forward UDP {public} to {}:{new_port}",
                        site.router.as_str(),
                        nh.address
                    )
                },
                false,
            )),
        }
    }
    out
}

/// How long the controller waits for one wave's changes under the guard: a third of the
/// confirmation timeout, at least 5 s (never more than `--command-timeout`); a large fleet on a
/// small controller raises `--confirm-timeout` to give its hosts more time. A host whose change
/// cuts its own path (its SSH runs over the link it changes) is then `Lost` instead of stalling
/// the run while the dead-men of earlier waves run out; its change goes on, detached.
fn wave_bound(settings: &Settings) -> Duration {
    match settings.guard {
        Some(t) => (t / 3)
            .max(Duration::from_secs(5))
            .min(settings.command_timeout),
        None => settings.command_timeout,
    }
}

/// The dead-man timeout of a host changed in wave `i` of `n`: the confirmation timeout, plus
/// the time the later waves may take, so that every host still waits for the same decision.
fn dead_man_timeout(confirm: Duration, bound: Duration, i: usize, n: usize) -> Duration {
    confirm + bound * (n.saturating_sub(i + 1) as u32)
}

/// The order of change: the managed routers that forward the port first, in a wave of their
/// own (a node that moves its port needs the router's forward in place), then the nodes in the
/// guard's waves (a hub router is a next-hop like a node: it changes in the waves of the mesh).
fn change_waves(topo: &Topology, to_change: &[String]) -> Vec<Vec<String>> {
    let (routers, nodes): (Vec<String>, Vec<String>) = to_change
        .iter()
        .cloned()
        .partition(|n| is_forwarding_router(topo, n));
    let mut waves = Vec::new();
    if !routers.is_empty() {
        waves.push(routers);
    }
    waves.extend(guard::waves(&nodes, &crate::topology::reach::paths(topo)));
    waves
}

/// True for a managed router that only forwards the port (not a hub, which is a node).
fn is_forwarding_router(topo: &Topology, name: &str) -> bool {
    topo.router(name).is_some() && topo.node(name).is_none()
}

/// The routers whose port-forward changed before nodes changed after them, with the public
/// ports to flush again: between the router's change and its next-hop's, the next-hop could
/// still send from its old port, and the router's NAT would map the public port back to that
/// old port for as long as the entry lives.
fn reflush_targets(
    topo: &Topology,
    to_change: &[String],
    plans: &HashMap<String, HostPlan>,
    changed: &dyn Fn(&str) -> bool,
) -> Vec<(String, Vec<u16>)> {
    let nodes_changed = to_change
        .iter()
        .any(|n| !is_forwarding_router(topo, n) && changed(n));
    if !nodes_changed {
        return Vec::new();
    }
    to_change
        .iter()
        .filter(|n| is_forwarding_router(topo, n) && changed(n))
        .filter_map(|n| {
            let ports = plans.get(n)?.handlers.port_forward.clone()?;
            (!ports.is_empty()).then(|| (n.clone(), ports))
        })
        .collect()
}

/// Flushes the conntrack entries of the changed routers' public ports once more, after the
/// nodes changed (best effort: a failure is only reported).
async fn flush_again<C: Connect>(
    cx: &RunCx<'_, C>,
    to_change: &[String],
    plans: &HashMap<String, HostPlan>,
    outcomes: &Outcomes,
) {
    let changed = |n: &str| matches!(outcomes.get(n), Some((host::ChangeOutcome::Changed, _, _)));
    let targets = reflush_targets(cx.topo, to_change, plans, &changed);
    for (name, ports) in targets {
        let Some(Ok(s)) = cx.sessions.get(&name) else {
            continue;
        };
        let script = crate::hosts::linux::flush_script(&ports);
        match s
            .run_script_within(&script, Duration::from_secs(10))
            .await
        {
            Ok(o) if o.status == 0 => cx.progress.note(&format!(
                "{name}: conntrack entries of UDP {} flushed again, now that the nodes have changed",
                ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
            )),
            Ok(o) => cx.progress.note(&format!(
                "{name}: flushing conntrack again failed (exit {}): {}",
                o.status,
                o.stderr_text().trim()
            )),
            Err(e) => cx
                .progress
                .note(&format!("{name}: flushing conntrack again failed: {e}")),
        }
    }
}

/// What a changed host's outcome was, when its change ran, and when its dead-man fires.
type Outcomes = HashMap<String, (host::ChangeOutcome, f64, Option<Instant>)>;

/// Runs each changed host's transaction, in waves (hosts reached through the mesh before the
/// hosts their path crosses); stops starting waves once the operator asked to stop.
async fn change_hosts<C: Connect>(
    cx: &RunCx<'_, C>,
    owner: &str,
    to_change: &[String],
    plans: &HashMap<String, HostPlan>,
) -> Outcomes {
    let waves = change_waves(cx.topo, to_change);
    let bound = wave_bound(cx.settings);
    let mut out = HashMap::new();
    for (i, wave) in waves.iter().enumerate() {
        if cx.settings.stopped() {
            break;
        }
        if waves.len() > 1 {
            cx.progress.note(&format!(
                "changing wave {}/{} ({}): {}",
                i + 1,
                waves.len(),
                if is_forwarding_router(cx.topo, &wave[0]) {
                    "managed routers first"
                } else {
                    "hosts behind the mesh first"
                },
                wave.join(", ")
            ));
        }
        let dead_man = cx
            .settings
            .guard
            .map(|t| dead_man_timeout(t, bound, i, waves.len()));
        let scripts: HashMap<String, String> = wave
            .iter()
            .map(|n| {
                let p = &plans[n];
                let spec = host::ChangeSpec {
                    run: cx.run,
                    owner,
                    changes: &p.changes,
                    handlers: &p.handlers,
                    iface: cx.iface,
                    facts: &p.facts,
                    expect: p.expect.as_ref(),
                    rollback: !cx.settings.no_rollback,
                    confirm_timeout: dead_man,
                    lock_ttl: cx.settings.command_timeout,
                };
                (n.clone(), host::change_script(&spec))
            })
            .collect();
        let res = run_all(wave.clone(), cx.settings.forks, |n| {
            let s = cx.sessions[&n]
                .as_ref()
                .expect("only reachable hosts are changed")
                .clone();
            let script = scripts[&n].clone();
            let progress = cx.progress.clone();
            async move {
                progress.phase(&n, "applying");
                let t = Instant::now();
                let o = host::change(&*s, &script, bound).await;
                (o, t.elapsed().as_secs_f64(), dead_man.map(|d| t + d))
            }
        })
        .await;
        out.extend(res);
    }
    out
}

/// What the guard works from.
struct GuardInput<'a> {
    timeout: Duration,
    /// Hosts changed and waiting for confirmation.
    pending: &'a [String],
    /// Hosts whose change outcome is unknown.
    lost: &'a [String],
    /// Every host a change was attempted on.
    touched: &'a BTreeSet<String>,
    before: BTreeSet<guard::Link>,
    /// Links whose peer entry was on a running interface before, up or idle.
    existed: BTreeSet<guard::Link>,
    changes: &'a HashMap<String, Vec<Change>>,
    wg_path: &'a str,
    /// When the first changed host's dead-man fires.
    first_dead_man: Option<Instant>,
}

type GuardStatuses = HashMap<String, (HostStatus, Option<String>, f64)>;

/// The health gate, then confirmation over fresh connections, or the network-wide put-back.
async fn run_guard<C: Connect>(
    cx: &RunCx<'_, C>,
    g: &GuardInput<'_>,
    fresh_out: &mut Sessions<C::Session>,
) -> (GuardReport, GuardStatuses) {
    let topo = cx.topo;
    let wait = (g.timeout / 3).clamp(Duration::from_secs(2), Duration::from_secs(30));
    let paths = crate::topology::reach::paths(topo);
    // a router's change touches the links of its site's next-hop
    let touched: BTreeSet<&str> = g
        .touched
        .iter()
        .map(|t| match topo.router(t) {
            Some((s, _)) => s.next_hop.as_deref().unwrap_or(t),
            None => t.as_str(),
        })
        .collect();
    let to_probe = guard::links_to_probe(
        guard::planned_links(topo)
            .into_iter()
            .filter(|l| touched.iter().any(|t| l.has(t)))
            .collect(),
        &g.before,
        &g.existed,
    );
    cx.progress.note(&format!(
        "guard: probing {} link{} over {} (up to {} s), {} up before the change",
        to_probe.len(),
        if to_probe.len() == 1 { "" } else { "s" },
        cx.iface,
        wait.as_secs(),
        g.before.iter().filter(|l| to_probe.contains(l)).count()
    ));
    let live: HashMap<String, Arc<C::Session>> = cx
        .sessions
        .iter()
        .filter_map(|(n, s)| s.as_ref().ok().map(|s| (n.clone(), s.clone())))
        .collect();
    let t = Instant::now();
    // fresh connections for the confirmation open while the links are probed
    let fresh_fut = connect_all(
        cx.connector,
        with_jumps(topo, g.pending),
        cx.settings.forks,
        cx.progress,
    );
    let probe_fut = guard::probe_links(topo, &to_probe, &paths, &live, cx.iface, wait);
    tokio::pin!(fresh_fut);
    tokio::pin!(probe_fut);
    let mut fresh_done: Option<Sessions<C::Session>> = None;
    let after = loop {
        tokio::select! {
            a = &mut probe_fut => break a,
            f = &mut fresh_fut, if fresh_done.is_none() => fresh_done = Some(f),
        }
    };
    let gate_seconds = t.elapsed().as_secs_f64();
    let health = guard::health(&g.before, &after);
    let cause = if health.broken.is_empty() {
        String::new()
    } else {
        guard::likely_cause(topo, &health.broken, g.changes, g.wg_path)
    };
    let fresh = if health.broken.is_empty() && !cx.settings.stopped() {
        match fresh_done {
            Some(f) => f,
            None => fresh_fut.await,
        }
    } else {
        fresh_done.unwrap_or_default()
    };
    let not_reached: Vec<String> = g
        .pending
        .iter()
        .filter(|n| !matches!(fresh.get(*n), Some(Ok(_))))
        .cloned()
        .collect();
    // a confirmation must land before any dead-man fires, or the network ends up mixed
    let too_late = g
        .first_dead_man
        .is_some_and(|d| d.saturating_duration_since(Instant::now()) < Duration::from_secs(3));
    let verdict = guard::verdict(
        &health,
        g.lost,
        &not_reached,
        cx.settings.stopped(),
        too_late,
        &cause,
    );
    let mut report = GuardReport {
        links_before: health.links_before,
        links_after: health.links_after,
        broken: health.broken.clone(),
        new_down: health.new_down.clone(),
        unknown: health.unknown.clone(),
        confirm_timeout: g.timeout.as_secs(),
        gate_seconds,
        ..Default::default()
    };
    let mut statuses: GuardStatuses = HashMap::new();
    let step_timeout = cx.settings.command_timeout.min(Duration::from_secs(30));
    match verdict {
        guard::Verdict::Confirm => {
            cx.progress
                .note("guard: every link that was up is up; confirming over fresh connections");
            let res = run_all(g.pending.to_vec(), cx.settings.forks, |n| {
                let s = fresh[&n].as_ref().expect("reached anew").clone();
                let run = cx.run.clone();
                let progress = cx.progress.clone();
                async move {
                    progress.phase(&n, "confirming over a fresh connection");
                    let t = Instant::now();
                    (
                        host::confirm(&*s, &run, step_timeout).await,
                        t.elapsed().as_secs_f64(),
                    )
                }
            })
            .await;
            let mut unconfirmed = Vec::new();
            for (n, (o, secs)) in res {
                let (st, err) = match o {
                    host::Settled::Done => (HostStatus::Changed, None),
                    host::Settled::NotPending(m) => (
                        HostStatus::Reverted,
                        Some(format!("put itself back before it could be confirmed: {m}")),
                    ),
                    host::Settled::Failed(e) | host::Settled::Lost(e) => (
                        HostStatus::Reverted,
                        Some(format!(
                            "could not be confirmed ({e}): its dead-man puts it back by itself"
                        )),
                    ),
                };
                if st != HostStatus::Changed {
                    unconfirmed.push(n.clone());
                }
                statuses.insert(n, (st, err, secs));
            }
            if unconfirmed.is_empty() {
                report.outcome = "confirmed".into();
                report.why = if health.new_down.is_empty() {
                    "every link that was up before is up, and every changed host was confirmed over a fresh connection".into()
                } else {
                    format!(
                        "kept: every link that was up before is up; but {} new link{} did not come up: {}",
                        health.new_down.len(),
                        if health.new_down.len() == 1 { "" } else { "s" },
                        health
                            .new_down
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
            } else {
                unconfirmed.sort();
                report.outcome = "reverted".into();
                report.why = format!(
                    "{} could not be confirmed and put itself back",
                    unconfirmed.join(", ")
                );
            }
        }
        guard::Verdict::Revert(why) => {
            cx.progress
                .note(&format!("guard: putting the change back everywhere: {why}"));
            report.outcome = "reverted".into();
            report.why = why.clone();
            let mut targets: Vec<String> = g.pending.to_vec();
            targets.extend(g.lost.iter().cloned());
            let res = run_all(targets, cx.settings.forks, |n| {
                let s = match (fresh.get(&n), cx.sessions.get(&n)) {
                    (Some(Ok(s)), _) | (_, Some(Ok(s))) => Some(s.clone()),
                    _ => None,
                };
                let run = cx.run.clone();
                let why = why.clone();
                let quick = if matches!(fresh.get(&n), Some(Ok(_))) {
                    step_timeout
                } else {
                    Duration::from_secs(10)
                };
                let progress = cx.progress.clone();
                async move {
                    progress.phase(&n, "putting back");
                    let t = Instant::now();
                    let o = match s {
                        Some(s) => host::revert(&*s, &run, &why, quick).await,
                        None => host::Settled::Lost("no connection".into()),
                    };
                    (o, t.elapsed().as_secs_f64())
                }
            })
            .await;
            for (n, (o, secs)) in res {
                let (st, err) = match o {
                    host::Settled::Done => (
                        HostStatus::Reverted,
                        Some(
                            "put back by the guard: files restored byte for byte, handlers re-run"
                                .to_string(),
                        ),
                    ),
                    host::Settled::NotPending(m) => (
                        HostStatus::Reverted,
                        Some(format!("had already put itself back: {m}")),
                    ),
                    host::Settled::Failed(e) => (
                        HostStatus::Failed,
                        Some(format!("PUTTING IT BACK FAILED: {e}")),
                    ),
                    host::Settled::Lost(e) => {
                        report.left_to_dead_man.push(n.clone());
                        (
                            HostStatus::Reverted,
                            Some(format!(
                                "not reachable now ({e}): its dead-man puts it back by itself"
                            )),
                        )
                    }
                };
                statuses.insert(n, (st, err, secs));
            }
            report.left_to_dead_man.sort();
        }
    }
    *fresh_out = fresh;
    (report, statuses)
}

/// What kind of host a rollback puts back, for its facts and handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RollbackKind {
    /// A node, or a Linux router that is its site's hub (a node's files).
    Node,
    /// A managed router that forwards the port.
    Forwarder,
    /// An OpenWrt router that is its site's hub.
    OpenwrtHub,
}

impl RollbackKind {
    fn of(topo: &Topology, name: &str) -> RollbackKind {
        if is_forwarding_router(topo, name) {
            RollbackKind::Forwarder
        } else if crate::hosts::openwrt_hub::is_hub(topo, name) {
            RollbackKind::OpenwrtHub
        } else {
            RollbackKind::Node
        }
    }

    /// The handlers that bring the restored files into effect: a router's port-forward
    /// re-installed from the restored script (and the conntrack entries of the port in place
    /// flushed); an OpenWrt hub's script run (its port-forward script, if one came back, too);
    /// every handler of a node.
    fn handlers(self, facts: &Facts) -> HandlerPlan {
        let pf_ports = || {
            crate::hosts::flush_ports(
                facts
                    .files
                    .get(crate::hosts::PF_SCRIPT)
                    .and_then(|f| f.content()),
                None,
            )
        };
        match self {
            RollbackKind::Node => HandlerPlan::everything(),
            RollbackKind::Forwarder => HandlerPlan {
                daemon_reload: true,
                port_forward: Some(pf_ports()),
                router_hub: true,
                ..Default::default()
            },
            RollbackKind::OpenwrtHub => HandlerPlan {
                port_forward: Some(pf_ports()),
                router_hub: true,
                ..Default::default()
            },
        }
    }

    /// What the report says was re-run.
    fn describe(self) -> &'static str {
        match self {
            RollbackKind::Node => "wireguard, sysctl, kubelet re-run with the restored files",
            RollbackKind::Forwarder => "port_forward re-run with the restored files",
            RollbackKind::OpenwrtHub => "router_hub re-run with the restored files",
        }
    }
}

/// Restores the last apply's backups on every targeted host and re-runs the handlers.
pub async fn rollback<C: Connect>(
    planned: &Planned,
    settings: &Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    let topo = &planned.topology;
    let iface = topo.network.interface.clone();
    let mut targeted: Vec<String> = targeted_nodes(topo, settings)
        .into_iter()
        .map(|n| n.name.clone())
        .collect();
    targeted.extend(targeted_routers(topo, settings));
    if targeted.is_empty() {
        return Err(Error::Usage("--limit matches no managed node".into()));
    }
    let sessions = connect_all(
        &connector,
        with_jumps(topo, &targeted),
        settings.forks,
        &progress,
    )
    .await;
    let results = {
        let sessions = &sessions;
        let iface = iface.clone();
        run_all(targeted.clone(), settings.forks, |n| {
            let s = sessions[&n].clone();
            let iface = iface.clone();
            let kind = RollbackKind::of(topo, &n);
            async move {
                let s = s.map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let paths = match kind {
                    RollbackKind::Node => Vec::new(),
                    RollbackKind::Forwarder | RollbackKind::OpenwrtHub => {
                        crate::hosts::candidate_paths()
                    }
                };
                let out = s
                    .run_script(&gather::script(&iface, &paths))
                    .await
                    .map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let facts =
                    gather::parse(&out.stdout_text()).map_err(|e| (HostStatus::Failed, e))?;
                let handlers = kind.handlers(&facts);
                let out = s
                    .run_script(&host::rollback_script_with(&iface, &facts, &handlers))
                    .await
                    .map_err(|e| (HostStatus::Failed, e.to_string()))?;
                let r = script::parse_result(&out.stdout_text());
                match r.failed_step {
                    None if r.done => Ok(out
                        .stdout_text()
                        .lines()
                        .filter_map(|l| l.strip_prefix("restored "))
                        .map(str::to_string)
                        .collect::<Vec<_>>()),
                    Some(step) => Err((
                        HostStatus::Failed,
                        format!("{step}: {}", out.stderr_text().trim()),
                    )),
                    None => Err((
                        HostStatus::Failed,
                        format!("rollback stopped (exit {})", out.status),
                    )),
                }
            }
        })
        .await
    };
    let mut hosts = Vec::new();
    for n in &targeted {
        let mut r = HostReport::new(n);
        match &results[n] {
            Ok(paths) => {
                r.status = HostStatus::Changed;
                r.changes = paths
                    .iter()
                    .map(|p| FileReport {
                        path: p.clone(),
                        action: Action::Updated,
                        diff: String::new(),
                    })
                    .collect();
                r.handlers = vec![RollbackKind::of(topo, n).describe().into()];
            }
            Err((status, e)) => {
                r.status = *status;
                r.error = Some(e.clone());
            }
        }
        progress.done(n, r.status.as_str());
        hosts.push(r);
    }
    close_all(&sessions).await;
    Ok(Report {
        hosts,
        warnings: Vec::new(),
        check: false,
        guard: None,
        interrupted: false,
        router_rules: Vec::new(),
        router_hubs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, site: &str) -> NodePlan {
        NodePlan {
            name: name.into(),
            site: site.into(),
            address: "192.168.0.1".into(),
            wireguard_ip: "10.100.0.1".parse().unwrap(),
            is_next_hop: false,
            os_family: None,
            kubernetes: Default::default(),
            ssh: crate::inventory::SshSettings {
                host: "x".into(),
                user: "root".into(),
                port: 22,
                identity_file: None,
                known_hosts: "k".into(),
                become_root: false,
                proxy_jump: None,
            },
            is_router: false,
        }
    }

    fn topo_of(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("inv.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    const OPENWRT_HUB: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: router\n    router: { kind: openwrt, address: 192.168.0.1, wan_interface: wan }\n    nodes:\n      n1: { address: 192.168.0.10 }\n  office:\n    endpoint: 198.51.100.20:51820\n    router: { kind: openwrt, address: 192.168.10.1, wan_interface: wan }\n    nodes:\n      o1: { address: 192.168.10.5 }\n";

    /// The hub's files as apply plans them, against a router that has no script yet and one
    /// that has an older one: no diff, text or JSON report ever shows the key.
    #[test]
    fn an_openwrt_hubs_diff_and_report_never_show_its_key() {
        let t = topo_of(OPENWRT_HUB);
        let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
        let keys = desired::fresh_keys(&t);
        let key = keys["home-router"].private.expose_base64().to_string();
        let hub = t.node("home-router").unwrap();
        let none = |_: &str| None;
        let input = HostInput {
            node: hub,
            os_family: OsFamily::Debian,
            systemd: false,
            existing: &none,
            peer_fallback: None,
        };
        let files = desired::desired_files(&roles, &t, &keys, &input).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                crate::hosts::openwrt_hub::HUB_SCRIPT,
                crate::hosts::PF_SCRIPT
            ]
        );
        let new = files[0].state.content().unwrap().to_string();
        assert!(new.contains(&key), "the script holds the key");
        let old = new.replace("'10.100.1.0/24'", "'10.100.9.0/24'");
        for current in [
            FileFact::Absent,
            FileFact::Present {
                mode: 0o700,
                content: old,
            },
        ] {
            let changes = diff::compare(&files, &|p| {
                if p == crate::hosts::openwrt_hub::HUB_SCRIPT {
                    current.clone()
                } else {
                    FileFact::Absent
                }
            });
            let mut r = HostReport::new("home-router");
            r.changes = file_reports(&changes);
            r.status = HostStatus::Changed;
            let report = Report {
                hosts: vec![r],
                warnings: Vec::new(),
                check: true,
                guard: None,
                interrupted: false,
                router_rules: Vec::new(),
                router_hubs: Vec::new(),
            };
            let text = crate::output::apply_text(&report, true, false);
            let json = crate::output::apply_json(&report).to_string();
            assert!(text.contains("router-hub.sh"), "{text}");
            assert!(!text.contains(&key) && !json.contains(&key), "{text}");
            if matches!(current, FileFact::Absent) {
                assert!(text.contains("+private_key=(redacted)"), "{text}");
            } else {
                assert!(
                    text.contains(
                        "+uci add_list network.wgprov_peer_2.allowed_ips='10.100.1.0/24'"
                    ),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn an_openwrt_hub_keeps_the_peers_of_its_script_and_is_rolled_back_by_its_own_handler() {
        let t = topo_of(OPENWRT_HUB);
        let keys = desired::fresh_keys(&t);
        let hub = t.node("home-router").unwrap();
        let (files, _) = crate::hosts::openwrt_hub::desired(
            &t,
            hub,
            t.router("home-router").unwrap().1,
            &keys,
            None,
        )
        .unwrap();
        let mut f = Facts::default();
        f.files.insert(
            crate::hosts::openwrt_hub::HUB_SCRIPT.into(),
            FileFact::Present {
                mode: 0o700,
                content: files[0].state.content().unwrap().into(),
            },
        );
        let known = existing_peers(&f, "/etc/wireguard/wg0.conf", true);
        let o1 = keys["o1"].public.to_base64();
        assert!(
            known.contains(&(o1, vec!["10.100.1.0/24".to_string()])),
            "{known:?}"
        );
        assert_eq!(
            RollbackKind::of(&t, "home-router"),
            RollbackKind::OpenwrtHub
        );
        assert_eq!(
            RollbackKind::of(&t, "office-router"),
            RollbackKind::Forwarder
        );
        assert_eq!(RollbackKind::of(&t, "n1"), RollbackKind::Node);
        let h = RollbackKind::OpenwrtHub.handlers(&f);
        assert!(h.router_hub && h.wireguard.is_none() && h.port_forward == Some(vec![]));
    }

    #[test]
    fn a_forwarding_router_changes_first_and_a_hub_router_with_the_nodes() {
        let yaml = |next_hop: &str| {
            format!(
                "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: {next_hop}\n    router: {{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n"
            )
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = topo_of(&yaml("n1"));
        assert_eq!(
            change_waves(&t, &names(&["n1", "home-router", "n2"])),
            vec![names(&["home-router"]), names(&["n1", "n2"])]
        );
        assert_eq!(change_waves(&t, &names(&["n2"])), vec![names(&["n2"])]);
        let settings = Settings {
            limit: Some("n1".into()),
            check: false,
            forks: 1,
            no_rollback: false,
            guard: None,
            stop: Default::default(),
            command_timeout: Duration::from_secs(120),
        };
        assert!(
            targeted_routers(&t, &settings).is_empty(),
            "outside --limit"
        );
        let settings = Settings {
            limit: Some("home".into()),
            ..settings
        };
        assert_eq!(targeted_routers(&t, &settings), ["home-router"]);
        // the hub is a node of its site: planned and changed with the nodes
        let t = topo_of(&yaml("router"));
        assert_eq!(
            change_waves(&t, &names(&["home-router", "n1"])),
            vec![names(&["home-router", "n1"])]
        );
        assert!(targeted_routers(&t, &settings).is_empty());
    }

    #[test]
    fn a_port_change_behind_a_managed_router_is_an_action_not_a_note() {
        let yaml = |next_hop: &str, endpoint: &str| {
            format!(
                "network:\n  wireguard_cidr: 10.100.0.0/16\n  listen_port: 51821\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n{endpoint}    next_hop: {next_hop}\n    router: {{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n  office:\n    endpoint: 198.51.100.20:51821\n    nodes:\n      o1: {{ address: 192.168.10.5 }}\n"
            )
        };
        // a host whose wg0 moves from 51820 to 51821
        let plan_of = |node: &str| {
            let plan = HostPlan {
                changes: vec![script::tests::change(
                    Some("[Interface]\nListenPort = 51820\nPostUp = x\n"),
                    "[Interface]\nListenPort = 51821\nPostUp = x\n",
                )],
                handlers: HandlerPlan::default(),
                expect: None,
                facts: Facts::default(),
            };
            (node.to_string(), plan)
        };
        let wg = "/etc/wireguard/wg0.conf";
        let t = topo_of(&yaml("n1", "    endpoint: 203.0.113.10:4500\n"));
        let mut plans: HashMap<String, HostPlan> = [plan_of("n1"), plan_of("home-router")]
            .into_iter()
            .collect();
        let a = router_announcements(&t, &plans, wg);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].1, "an action");
        assert_eq!(
            a[0].0,
            "site home: n1 will listen on UDP 51821 instead of 51820: the managed router home-router changes first, forwarding UDP 4500 to 192.168.0.10:51821, in this same guarded transaction"
        );
        plans.remove("home-router");
        let a = router_announcements(&t, &plans, wg);
        assert!(
            !a[0].1
                && a[0]
                    .0
                    .contains("outside --limit: apply it too (--limit home-router,n1)"),
            "{a:?}"
        );
        // no endpoint: nobody dials in, nothing to forward; a hub router forwards nothing
        let t = topo_of(&yaml("n1", ""));
        assert!(router_announcements(&t, &plans, wg).is_empty());
        let t = topo_of(&yaml("router", "    endpoint: 203.0.113.10:51821\n"));
        let plans: HashMap<String, HostPlan> = [plan_of("home-router")].into_iter().collect();
        assert!(router_announcements(&t, &plans, wg).is_empty());
    }

    #[test]
    fn conntrack_is_flushed_again_only_when_nodes_changed_after_the_router() {
        let t = topo_of(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: { kind: linux, address: 192.168.0.1, wan_interface: eth0 }\n    nodes:\n      n1: { address: 192.168.0.10 }\n",
        );
        let plan = |pf: Option<Vec<u16>>| HostPlan {
            changes: Vec::new(),
            handlers: HandlerPlan {
                port_forward: pf,
                ..Default::default()
            },
            expect: None,
            facts: Facts::default(),
        };
        let plans: HashMap<String, HostPlan> = [
            ("home-router".to_string(), plan(Some(vec![51820]))),
            ("n1".to_string(), plan(None)),
        ]
        .into_iter()
        .collect();
        let both = ["home-router".to_string(), "n1".to_string()];
        let all = |_: &str| true;
        assert_eq!(
            reflush_targets(&t, &both, &plans, &all),
            vec![("home-router".to_string(), vec![51820])]
        );
        // the router alone (drift repaired): its own flush was the last word
        assert!(reflush_targets(&t, &both[..1], &plans, &all).is_empty());
        // the node's change failed: nothing moved after the router
        assert!(reflush_targets(&t, &both, &plans, &|n: &str| n != "n1").is_empty());
    }

    #[test]
    fn limit_matches_node_site_and_glob() {
        let n = node("office1", "office");
        for yes in ["office1", "office", "off*", "*1", "office?", "home,office"] {
            assert!(matches_limit(yes, &n), "{yes}");
        }
        for no in ["office2", "home", "of", "*2", "o?"] {
            assert!(!matches_limit(no, &n), "{no}");
        }
    }

    #[test]
    fn the_host_checks_its_interface_against_the_planned_peers() {
        let conf = "[Interface]\nPrivateKey = x\n\n[Peer]\nPublicKey = P2\nAllowedIPs = 10.100.1.0/24, 10.100.0.2/32\n\n[Peer]\nPublicKey = P1\nAllowedIPs = 10.100.0.0/16\n";
        let e = script::Expect::from_conf("ME", conf);
        assert_eq!(
            e.tokens,
            vec![
                "10.100.0.0/16",
                "10.100.0.2/32",
                "10.100.1.0/24",
                "P1",
                "P2"
            ]
        );
        let check = e.check(&crate::shell::InterfaceName::default());
        assert!(
            check.contains(
                "= 'ME' ] || fail 'verify: the interface is not up with the planned key'"
            )
        );
        assert!(check.contains("'10.100.0.0/16\n10.100.0.2/32\n10.100.1.0/24\nP1\nP2'"));
    }

    #[test]
    fn a_malformed_existing_private_key_is_an_error_not_a_new_identity() {
        let path = "/etc/wireguard/wg0.conf";
        let facts = |conf: &str| {
            let mut f = Facts::default();
            f.files.insert(
                path.into(),
                FileFact::Present {
                    mode: 0o600,
                    content: conf.into(),
                },
            );
            f
        };
        let err = existing_key(&facts("[Interface]\nPrivateKey = not-a-key\n"), path)
            .unwrap()
            .err()
            .unwrap();
        assert!(
            err.contains("malformed PrivateKey") && !err.contains("not-a-key"),
            "{err}"
        );
        let good = Keypair::generate().private.expose_base64().to_string();
        assert!(matches!(
            existing_key(&facts(&format!("[Interface]\nPrivateKey = {good}\n")), path),
            Some(Ok(_))
        ));
        assert!(existing_key(&facts("[Interface]\n"), path).is_none());
    }

    #[test]
    fn earlier_waves_wait_for_the_later_ones_before_their_dead_man_fires() {
        let t = Duration::from_secs(20);
        let b = Duration::from_secs(7);
        assert_eq!(dead_man_timeout(t, b, 0, 3), Duration::from_secs(34));
        assert_eq!(dead_man_timeout(t, b, 2, 3), t);
        let mut s = Settings {
            limit: None,
            check: false,
            forks: 1,
            no_rollback: false,
            guard: Some(Duration::from_secs(90)),
            stop: Default::default(),
            command_timeout: Duration::from_secs(120),
        };
        assert_eq!(wave_bound(&s), Duration::from_secs(30));
        s.guard = Some(Duration::from_secs(6));
        assert_eq!(wave_bound(&s), Duration::from_secs(5));
        s.guard = Some(Duration::from_secs(300));
        assert_eq!(wave_bound(&s), Duration::from_secs(100));
        s.guard = Some(Duration::from_secs(600));
        assert_eq!(wave_bound(&s), s.command_timeout);
        s.guard = None;
        assert_eq!(wave_bound(&s), s.command_timeout);
    }

    #[test]
    fn adopted_configs_get_warnings_wg_quick_would_bite_on() {
        let f = Facts::default();
        let w = config_warnings("[Interface]\nSaveConfig = true\nDNS = 1.1.1.1\n", &f);
        assert_eq!(w.len(), 2, "{w:?}");
        let mut with = Facts::default();
        with.tools.insert("resolvconf".into());
        assert_eq!(
            config_warnings("[Interface]\nDNS = 1.1.1.1\n", &with).len(),
            0
        );
    }

    #[test]
    fn exit_codes_follow_spec() {
        let mut r = Report {
            hosts: vec![HostReport::new("a")],
            warnings: vec![],
            check: true,
            guard: None,
            interrupted: false,
            router_rules: Vec::new(),
            router_hubs: Vec::new(),
        };
        assert_eq!(r.exit_code(true), 0);
        r.hosts[0].status = HostStatus::Changed;
        assert_eq!(r.exit_code(true), 3);
        assert_eq!(r.exit_code(false), 0);
        r.hosts[0].status = HostStatus::RolledBack;
        assert_eq!(r.exit_code(true), 1);
        r.hosts[0].status = HostStatus::Unreachable;
        assert_eq!(r.exit_code(false), 1);
        r.hosts[0].status = HostStatus::Reverted;
        assert_eq!(r.exit_code(false), 1, "the guard put the change back");
        r.hosts[0].status = HostStatus::Changed;
        r.check = false;
        r.guard = Some(GuardReport {
            new_down: vec![guard::Link::new("a", "b")],
            ..Default::default()
        });
        assert_eq!(r.exit_code(false), 1, "a new link did not come up");
        r.interrupted = true;
        assert_eq!(r.exit_code(false), 130);
    }
}
