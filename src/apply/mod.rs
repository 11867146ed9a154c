//! The main job: connect to every node (one SSH connection each, all at once up to `forks`),
//! gather facts in one exec per node, plan the whole network from them (existing keys kept),
//! compare, and — unless `check` — run each changed host's transaction (backup, atomic writes,
//! handlers, read-back), verify it, and roll the host back when any of that fails.
//!
//! `--limit` narrows which hosts are changed, never who their peers are: facts are read from
//! every node so that every config lists every peer.

pub mod script;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::desired::{self, FileState, HostInput, KeyRing};
use crate::diff::{self, Action, Change};
use crate::error::{Error, Result};
use crate::facts::gather::{self, WgState};
use crate::facts::wgconf::WgConfig;
use crate::facts::{Facts, FileFact};
use crate::inventory::OsFamily;
use crate::roles::Roles;
use crate::topology::keys::{Keypair, PrivateKey};
use crate::topology::{NodePlan, Planned, Topology};
use crate::transport::ssh::{self, KeyCache, SshOptions, SshSession};
use crate::transport::{Transport, TransportError};
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
    /// SSH settings.
    pub ssh: SshOptions,
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
    /// The rollback exec, if one ran.
    pub rollback: f64,
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

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Targeted hosts in inventory order.
    pub hosts: Vec<HostReport>,
    /// Run-wide warnings (untargeted nodes that could not be read, …).
    pub warnings: Vec<String>,
    /// True for `--check`.
    pub check: bool,
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
                HostStatus::Failed | HostStatus::RolledBack => s.failed += 1,
                HostStatus::Unreachable => s.unreachable += 1,
            }
        }
        s
    }
    /// Exit status per SPEC.md: 1 when any host failed, was unreachable or rolled back; 3 with
    /// `--check --detailed-exitcode` when changes are pending; else 0.
    pub fn exit_code(&self, detailed: bool) -> u8 {
        let s = self.summary();
        if s.failed > 0 || s.unreachable > 0 {
            1
        } else if self.check && detailed && s.changed > 0 {
            3
        } else {
            0
        }
    }
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

/// Reports progress: one line per host per phase, drawn with indicatif on a terminal.
pub trait Progress: Send + Sync {
    /// `host` moved to `phase`.
    fn phase(&self, host: &str, phase: &str);
    /// `host` is done with `outcome`.
    fn done(&self, host: &str, outcome: &str);
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {
    fn phase(&self, _: &str, _: &str) {}
    fn done(&self, _: &str, _: &str) {}
}

pub(crate) type Sessions = HashMap<String, std::result::Result<Arc<SshSession>, TransportError>>;

/// The nodes named, with the jump hosts they need (transitively), in inventory order.
fn with_jumps<'a>(topo: &'a Topology, names: &[String]) -> Vec<&'a NodePlan> {
    let mut want: BTreeSet<String> = names.iter().cloned().collect();
    let mut grew = true;
    while grew {
        grew = false;
        for n in &topo.nodes {
            if want.contains(&n.name)
                && let Some(j) = &n.ssh.proxy_jump
                && want.insert(j.clone())
            {
                grew = true;
            }
        }
    }
    topo.nodes
        .iter()
        .filter(|n| want.contains(&n.name))
        .collect()
}

pub(crate) async fn connect_all(
    nodes: Vec<&NodePlan>,
    settings: &Settings,
    progress: &Arc<dyn Progress>,
) -> Sessions {
    let keys = Arc::new(KeyCache::default());
    let sem = Arc::new(Semaphore::new(settings.forks.max(1)));
    let mut sessions: Sessions = HashMap::new();
    let mut pending = nodes;
    // rounds: nodes whose jump host is connected (or who need none) go next
    while !pending.is_empty() {
        let (ready, later): (Vec<&NodePlan>, Vec<&NodePlan>) =
            pending.into_iter().partition(|n| match &n.ssh.proxy_jump {
                None => true,
                Some(j) => sessions.contains_key(j),
            });
        if ready.is_empty() {
            for n in later {
                sessions.insert(
                    n.name.clone(),
                    Err(TransportError::Unreachable("proxy_jump loop".into())),
                );
            }
            break;
        }
        let mut set = tokio::task::JoinSet::new();
        for n in ready {
            let jump = match &n.ssh.proxy_jump {
                None => None,
                Some(j) => match &sessions[j] {
                    Ok(s) => Some(s.clone()),
                    Err(e) => {
                        sessions.insert(
                            n.name.clone(),
                            Err(TransportError::Unreachable(format!("jump host {j}: {e}"))),
                        );
                        continue;
                    }
                },
            };
            let (name, ssh_settings) = (n.name.clone(), n.ssh.clone());
            let (keys, sem, opts, progress) = (
                keys.clone(),
                sem.clone(),
                settings.ssh.clone(),
                progress.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                progress.phase(&name, "connecting");
                let r = ssh::connect(&ssh_settings, jump, &keys, &opts)
                    .await
                    .map(Arc::new);
                (name, r)
            });
        }
        while let Some(r) = set.join_next().await {
            let (name, s) = r.expect("connect task");
            sessions.insert(name, s);
        }
        pending = later;
    }
    sessions
}

pub(crate) async fn run_all<F, Fut, T>(names: Vec<String>, forks: usize, f: F) -> HashMap<String, T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(Semaphore::new(forks.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for n in names {
        let fut = f(n.clone());
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            (n, fut.await)
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = set.join_next().await {
        let (n, t) = r.expect("host task");
        out.insert(n, t);
    }
    out
}

/// The key pair a node already has, read from its config.
fn existing_key(facts: &Facts, wg_path: &str) -> Option<Keypair> {
    let conf = facts.files.get(wg_path)?.content()?;
    let k = WgConfig::parse(conf).private_key()?.to_string();
    PrivateKey::from_base64(&k).ok().map(|k| k.into_keypair())
}

/// Expected peers (public key, sorted AllowedIPs) of a config text.
fn peer_set(conf: &str) -> BTreeSet<(String, Vec<String>)> {
    WgConfig::parse(conf)
        .peers()
        .map(|p| {
            let mut a: Vec<String> = p
                .get("AllowedIPs")
                .unwrap_or("")
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
            a.sort();
            (p.get("PublicKey").unwrap_or("").to_string(), a)
        })
        .collect()
}

fn live_peer_set(wg: &WgState) -> BTreeSet<(String, Vec<String>)> {
    wg.peers
        .iter()
        .map(|p| {
            let mut a = p.allowed_ips.clone();
            a.sort();
            (p.public_key.clone(), a)
        })
        .collect()
}

/// Checks the read-back interface against the planned config.
fn verify(
    wg: Option<&WgState>,
    planned_conf: &str,
    planned_key: &str,
) -> std::result::Result<(), String> {
    let wg = wg.ok_or("the interface is not up after the handlers")?;
    if wg.public_key != planned_key {
        return Err(format!(
            "the interface has public key {} instead of {planned_key}",
            wg.public_key
        ));
    }
    let want = peer_set(planned_conf);
    let have = live_peer_set(wg);
    if want != have {
        let missing: Vec<&String> = want.difference(&have).map(|p| &p.0).collect();
        let extra: Vec<&String> = have.difference(&want).map(|p| &p.0).collect();
        return Err(format!(
            "the interface's peers differ from the config: missing {missing:?}, unexpected {extra:?}"
        ));
    }
    Ok(())
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

/// Host work computed from the facts: what to change and how to verify it.
struct HostPlan {
    changes: Vec<Change>,
    handlers: HandlerPlan,
    planned_conf: Option<String>,
    public_key: String,
    facts: Facts,
}

/// Runs apply (or `--check`) over the planned network.
pub async fn apply(
    planned: &Planned,
    roles: &Roles,
    settings: &Settings,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    let topo = &planned.topology;
    let iface = topo.network.interface.clone();
    let wg_path = format!("/etc/wireguard/{iface}.conf");
    let targeted = targeted_nodes(topo, settings);
    if targeted.is_empty() {
        return Err(Error::Usage(format!(
            "--limit {} matches no managed node",
            settings.limit.as_deref().unwrap_or("")
        )));
    }
    let mut paths: HashMap<String, Vec<String>> = HashMap::new();
    for n in &topo.nodes {
        paths.insert(n.name.clone(), desired::candidate_paths(roles, topo, n)?);
    }

    // 1. connect to every node: untargeted ones are read for their keys, never changed
    let sessions = connect_all(topo.nodes.iter().collect(), settings, &progress).await;

    // 2. facts, one exec per node
    let reachable: Vec<String> = topo
        .nodes
        .iter()
        .filter(|n| matches!(sessions.get(&n.name), Some(Ok(_))))
        .map(|n| n.name.clone())
        .collect();
    let facts: HashMap<String, (std::result::Result<Facts, String>, f64)> = {
        let sessions = &sessions;
        let scripts: HashMap<String, String> = reachable
            .iter()
            .map(|n| (n.clone(), gather::script(&iface, &paths[n])))
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
    let target_names: BTreeSet<&str> = targeted.iter().map(|t| t.name.as_str()).collect();
    for n in &topo.nodes {
        let is_target = target_names.contains(n.name.as_str());
        match facts.get(&n.name).map(|f| &f.0) {
            Some(Ok(f)) => match existing_key(f, &wg_path) {
                Some(k) => {
                    keys.insert(n.name.clone(), k);
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
            r.timings.connect = s.connect_time.as_secs_f64();
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
            (_, Some((Ok(f), t))) => {
                r.timings.facts = *t;
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
                let existing_conf = f
                    .files
                    .get(&wg_path)
                    .and_then(|x| x.content())
                    .map(str::to_string);
                let fallback = |allowed: &str| -> Option<String> {
                    let conf = WgConfig::parse(existing_conf.as_deref()?);
                    let want: BTreeSet<&str> = allowed.split(',').map(str::trim).collect();
                    conf.peers()
                        .find(|p| {
                            p.get("AllowedIPs")
                                .map(|a| a.split(',').map(str::trim).collect::<BTreeSet<_>>())
                                == Some(want.clone())
                        })
                        .and_then(|p| p.get("PublicKey").map(str::to_string))
                };
                let existing =
                    |p: &str| f.files.get(p).and_then(|x| x.content()).map(str::to_string);
                let input = HostInput {
                    node: n,
                    os_family: os,
                    existing: &existing,
                    peer_fallback: Some(&fallback),
                };
                let (files, skipped) =
                    desired::desired_files_with_skips(roles, topo, &keys, &input)?;
                for s in skipped {
                    r.warnings.push(format!("peer {s} left out: its key is unknown (its node could not be read and this host has no entry for it)"));
                }
                let changes = diff::compare(&files, &|p| {
                    f.files.get(p).cloned().unwrap_or(FileFact::Absent)
                });
                let handlers = script::plan_handlers(&changes, f, &wg_path);
                r.changes = changes
                    .iter()
                    .map(|c| FileReport {
                        path: c.desired.path.clone(),
                        action: c.action,
                        diff: if c.action == Action::Unchanged {
                            String::new()
                        } else {
                            c.unified_diff()
                        },
                    })
                    .collect();
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
                plans.insert(
                    n.name.clone(),
                    HostPlan {
                        changes,
                        handlers,
                        planned_conf,
                        public_key: keys[&n.name].public.to_base64(),
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

    // 5. change the hosts that need it
    if !settings.check {
        let to_change: Vec<String> = reports
            .iter()
            .filter(|r| r.status == HostStatus::Changed)
            .map(|r| r.name.clone())
            .collect();
        let plans = Arc::new(plans);
        let outcomes = {
            let sessions = &sessions;
            let iface = iface.clone();
            run_all(to_change, settings.forks, |n| {
                let s = sessions[&n].as_ref().expect("reachable").clone();
                let plans = plans.clone();
                let iface = iface.clone();
                let progress = progress.clone();
                let no_rollback = settings.no_rollback;
                async move {
                    change_host(&n, &s, &plans[&n], &iface, no_rollback, progress.as_ref()).await
                }
            })
            .await
        };
        for r in &mut reports {
            if let Some((status, error, timings)) = outcomes.get(&r.name) {
                r.status = *status;
                r.error = error.clone();
                r.timings.apply = timings.0;
                r.timings.rollback = timings.1;
            }
        }
    }
    for r in &reports {
        progress.done(&r.name, r.status.as_str());
    }
    for s in sessions.values().flatten() {
        s.close().await;
    }
    Ok(Report {
        hosts: reports,
        warnings,
        check: settings.check,
    })
}

async fn change_host(
    name: &str,
    s: &SshSession,
    plan: &HostPlan,
    iface: &str,
    no_rollback: bool,
    progress: &dyn Progress,
) -> (HostStatus, Option<String>, (f64, f64)) {
    progress.phase(name, "applying");
    let t = Instant::now();
    let any_file = plan.changes.iter().any(|c| c.action != Action::Unchanged);
    let text = if any_file {
        script::apply_script(&plan.changes, &plan.handlers, iface, &plan.facts)
    } else {
        script::handlers_only_script(&plan.handlers, iface, &plan.facts)
    };
    let outcome = s.run_script(&text).await;
    let apply_s = t.elapsed().as_secs_f64();
    let failure = match &outcome {
        Err(e) => Some(format!("during the change: {e}")),
        Ok(out) => {
            let r = script::parse_result(&out.stdout_text());
            match (&r.failed_step, r.done) {
                (Some(step), _) => Some(format!("{step}: {}", out.stderr_text().trim())),
                (None, false) => Some(format!(
                    "the change script stopped (exit {}): {}",
                    out.status,
                    out.stderr_text().trim()
                )),
                (None, true) => plan.planned_conf.as_deref().and_then(|c| {
                    verify(r.wg.as_ref(), c, &plan.public_key)
                        .err()
                        .map(|e| format!("verify: {e}"))
                }),
            }
        }
    };
    let Some(failure) = failure else {
        return (HostStatus::Changed, None, (apply_s, 0.0));
    };
    if no_rollback || !any_file {
        return (HostStatus::Failed, Some(failure), (apply_s, 0.0));
    }
    progress.phase(name, "rolling back");
    let t = Instant::now();
    let rb = s
        .run_script(&script::rollback_script(iface, &plan.facts))
        .await;
    let rb_s = t.elapsed().as_secs_f64();
    let note = match rb {
        Ok(out) => {
            let r = script::parse_result(&out.stdout_text());
            match r.failed_step {
                None if r.done => "files restored byte for byte, handlers re-run".to_string(),
                Some(step) => format!("ROLLBACK FAILED at {step}: {}", out.stderr_text().trim()),
                None => format!("ROLLBACK INCOMPLETE (exit {})", out.status),
            }
        }
        Err(e) => format!("ROLLBACK FAILED: {e}"),
    };
    (
        HostStatus::RolledBack,
        Some(format!("{failure}; rolled back: {note}")),
        (apply_s, rb_s),
    )
}

/// Restores the last apply's backups on every targeted host and re-runs the handlers.
pub async fn rollback(
    planned: &Planned,
    settings: &Settings,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    let topo = &planned.topology;
    let iface = topo.network.interface.clone();
    let targeted: Vec<String> = targeted_nodes(topo, settings)
        .into_iter()
        .map(|n| n.name.clone())
        .collect();
    if targeted.is_empty() {
        return Err(Error::Usage("--limit matches no managed node".into()));
    }
    let sessions = connect_all(with_jumps(topo, &targeted), settings, &progress).await;
    let results = {
        let sessions = &sessions;
        let iface = iface.clone();
        run_all(targeted.clone(), settings.forks, |n| {
            let s = sessions[&n].clone();
            let iface = iface.clone();
            async move {
                let s = s.map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let out = s
                    .run_script(&gather::script(&iface, &[]))
                    .await
                    .map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let facts =
                    gather::parse(&out.stdout_text()).map_err(|e| (HostStatus::Failed, e))?;
                let out = s
                    .run_script(&script::rollback_script(&iface, &facts))
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
                r.handlers =
                    vec!["wireguard, sysctl, kubelet re-run with the restored files".into()];
            }
            Err((status, e)) => {
                r.status = *status;
                r.error = Some(e.clone());
            }
        }
        progress.done(n, r.status.as_str());
        hosts.push(r);
    }
    for s in sessions.values().flatten() {
        s.close().await;
    }
    Ok(Report {
        hosts,
        warnings: Vec::new(),
        check: false,
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
            ssh: crate::inventory::SshSettings {
                host: "x".into(),
                user: "root".into(),
                port: 22,
                identity_file: None,
                known_hosts: "k".into(),
                become_root: false,
                proxy_jump: None,
            },
        }
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
    fn verify_compares_key_and_peers() {
        let conf =
            "[Interface]\nPrivateKey = x\n\n[Peer]\nPublicKey = P1\nAllowedIPs = 10.100.0.0/16\n";
        let live = |key: &str, peers: Vec<(&str, &str)>| WgState {
            public_key: key.into(),
            listen_port: 51820,
            peers: peers
                .into_iter()
                .map(|(k, a)| gather::PeerState {
                    public_key: k.into(),
                    endpoint: None,
                    allowed_ips: vec![a.into()],
                    latest_handshake: 0,
                    rx: 0,
                    tx: 0,
                    keepalive: 0,
                })
                .collect(),
        };
        assert!(verify(Some(&live("ME", vec![("P1", "10.100.0.0/16")])), conf, "ME").is_ok());
        assert!(verify(None, conf, "ME").unwrap_err().contains("not up"));
        assert!(
            verify(
                Some(&live("OTHER", vec![("P1", "10.100.0.0/16")])),
                conf,
                "ME"
            )
            .is_err()
        );
        assert!(
            verify(Some(&live("ME", vec![("P2", "10.100.0.0/16")])), conf, "ME")
                .unwrap_err()
                .contains("P1")
        );
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
        };
        assert_eq!(r.exit_code(true), 0);
        r.hosts[0].status = HostStatus::Changed;
        assert_eq!(r.exit_code(true), 3);
        assert_eq!(r.exit_code(false), 0);
        r.hosts[0].status = HostStatus::RolledBack;
        assert_eq!(r.exit_code(true), 1);
        r.hosts[0].status = HostStatus::Unreachable;
        assert_eq!(r.exit_code(false), 1);
    }
}
