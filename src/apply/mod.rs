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

use crate::diff::{Action, Change};
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::facts::gather;
use crate::fleet::{Connect, Sessions, close_all, connect_all, run_all, with_jumps};
pub use crate::fleet::{Progress, Quiet};
use crate::hosts::kind::{HostKind, conf_path};
use crate::plan::{self, HostPlan, order};
use crate::roles::Roles;
use crate::topology::{NodePlan, Planned, Topology};
use crate::transport::Transport;

/// Settings of one apply (resolved from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node name, site name or glob over node names; `None`: every node.
    pub limit: Option<String>,
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

/// A run read and planned, its connections open: what `--check` prints
/// ([`Prepared::check`]), and what [`Prepared::execute`] changes.
pub struct Prepared<'a, C: Connect> {
    planned: &'a Planned,
    settings: &'a Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
    sessions: Sessions<C::Session>,
    /// The facts of every host that could be read.
    facts: HashMap<String, Facts>,
    keys: plan::Keys,
    plans: HashMap<String, HostPlan>,
    reports: Vec<HostReport>,
    warnings: Vec<String>,
}

/// Facts per host, or why there are none, with the seconds gathering took.
type Gathered = HashMap<String, (std::result::Result<Facts, String>, f64)>;

/// The hosts a run targets: the nodes `--limit` selects and the managed routers that only
/// forward the port (a hub router is a node).
fn targets<'t>(topo: &'t Topology, settings: &Settings) -> Vec<HostKind<'t>> {
    targeted_nodes(topo, settings)
        .into_iter()
        .map(|n| n.name.clone())
        .chain(targeted_routers(topo, settings))
        .filter_map(|n| HostKind::of(topo, &n))
        .collect()
}

/// One facts exec per reachable host (untargeted nodes are read for their keys, never changed).
async fn gather_facts<S: Transport + 'static>(
    topo: &Topology,
    roles: &Roles,
    names: Vec<String>,
    sessions: &Sessions<S>,
    forks: usize,
    progress: &Arc<dyn Progress>,
) -> Result<Gathered> {
    let iface = &topo.network.interface;
    let mut scripts: HashMap<String, String> = HashMap::new();
    for n in &names {
        let kind = HostKind::of(topo, n).expect("a host of the plan");
        let paths = kind.candidate_paths(roles, topo)?;
        scripts.insert(n.clone(), kind.facts_script(iface, &paths));
    }
    Ok(run_all(names, forks, |n| {
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
    .await)
}

/// A targeted host's report from its connection, its facts and its plan.
fn host_report<S: Transport>(
    kind: HostKind,
    sessions: &Sessions<S>,
    gathered: &Gathered,
    plan: Option<&std::result::Result<HostPlan, String>>,
    iface: &crate::shell::InterfaceName,
) -> HostReport {
    let name = kind.name();
    let mut r = HostReport::new(name);
    if let Some(Ok(s)) = sessions.get(name) {
        r.timings.connect = s.connect_time().as_secs_f64();
    }
    if let Some((_, t)) = gathered.get(name) {
        r.timings.facts = *t;
    }
    match (sessions.get(name), gathered.get(name), plan) {
        (Some(Err(e)), _, _) => {
            r.status = HostStatus::Unreachable;
            r.error = Some(e.to_string());
        }
        (_, Some((Err(e), _)), _) => {
            r.status = HostStatus::Failed;
            r.error = Some(format!("gathering facts: {e}"));
        }
        (_, _, Some(Err(e))) => {
            r.status = HostStatus::Failed;
            r.error = Some(e.clone());
        }
        (_, _, Some(Ok(p))) => {
            r.warnings = p.warnings.clone();
            r.drift = p.drift.clone();
            r.changes = file_reports(&p.changes);
            r.handlers = p.handlers.describe(iface, &p.facts);
            if p.changes_anything() {
                r.status = HostStatus::Changed;
            }
        }
        _ => {
            r.status = HostStatus::Unreachable;
            r.error = Some("not contacted".into());
        }
    }
    r
}

/// Connects to every host the run needs, reads their facts in one exec each, and plans every
/// targeted host: nothing is changed yet.
pub async fn prepare<'a, C: Connect>(
    planned: &'a Planned,
    roles: &Roles,
    settings: &'a Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Prepared<'a, C>> {
    let topo = &planned.topology;
    let targets = targets(topo, settings);
    if targets.is_empty() {
        return Err(Error::Usage(format!(
            "--limit {} matches no managed node",
            settings.limit.as_deref().unwrap_or("")
        )));
    }
    let forwarders: Vec<&str> = targets
        .iter()
        .filter(|k| k.is_forwarder())
        .map(|k| k.name())
        .collect();
    let sessions = connect_all(
        &connector,
        topo.ssh_targets()
            .into_iter()
            .filter(|t| topo.node(&t.name).is_some() || forwarders.contains(&t.name.as_str()))
            .collect(),
        settings.forks,
        &progress,
    )
    .await;
    let reachable: Vec<String> = topo
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(forwarders.iter().copied())
        .filter(|n| matches!(sessions.get(*n), Some(Ok(_))))
        .map(str::to_string)
        .collect();
    let gathered =
        gather_facts(topo, roles, reachable, &sessions, settings.forks, &progress).await?;
    let facts: HashMap<String, Facts> = gathered
        .iter()
        .filter_map(|(n, (f, _))| f.as_ref().ok().map(|f| (n.clone(), f.clone())))
        .collect();
    let names: BTreeSet<&str> = targets
        .iter()
        .filter_map(|k| k.node())
        .map(|n| n.name.as_str())
        .collect();
    let keys = plan::keys(topo, &facts, &names);
    let mut plans = HashMap::new();
    let mut reports = Vec::new();
    for kind in &targets {
        let p = facts
            .get(kind.name())
            .map(|f| plan::host(*kind, roles, topo, &keys, f));
        reports.push(host_report(
            *kind,
            &sessions,
            &gathered,
            p.as_ref(),
            &topo.network.interface,
        ));
        if let Some(Ok(p)) = p {
            plans.insert(kind.name().to_string(), p);
        }
    }
    Ok(Prepared {
        planned,
        settings,
        connector,
        progress,
        sessions,
        warnings: keys.warnings.clone(),
        facts,
        keys,
        plans,
        reports,
    })
}

/// Runs apply over the planned network: [`prepare`], then [`Prepared::execute`].
pub async fn apply<C: Connect>(
    planned: &Planned,
    roles: &Roles,
    settings: &Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    Ok(prepare(planned, roles, settings, connector, progress)
        .await?
        .execute()
        .await)
}

impl<C: Connect> Prepared<'_, C> {
    /// The report of a run that stops here (`--check`): what would change, nothing changed.
    pub async fn check(self) -> Report {
        close_all(&self.sessions).await;
        self.report(self.reports.clone(), None, true)
    }

    fn report(&self, hosts: Vec<HostReport>, guard: Option<GuardReport>, check: bool) -> Report {
        let topo = &self.planned.topology;
        for r in &hosts {
            self.progress.done(&r.name, r.status.as_str());
        }
        Report {
            hosts,
            warnings: self.warnings.clone(),
            check,
            guard,
            interrupted: self.settings.stopped(),
            router_rules: crate::hosts::manual_rules(topo),
            router_hubs: crate::hosts::hub::hubs(topo, &|n| {
                self.keys.ring.get(n).map(|k| k.public)
            }),
        }
    }

    /// Announces the router rules the change needs, before anything is touched: a managed
    /// router's change is an action (it changes first), any other a warning.
    fn announce(&mut self) {
        let wg_path = conf_path(&self.planned.topology.network.interface);
        for (w, managed) in
            order::router_announcements(&self.planned.topology, &self.plans, &wg_path)
        {
            if managed {
                self.progress.note(&w);
            } else {
                self.progress.note(&format!("router change needed: {w}"));
                self.warnings.push(format!("router change needed: {w}"));
            }
        }
    }

    /// Changes every host that needs it, in waves, then the guard gates and confirms the
    /// change or puts it back everywhere; closes every connection.
    pub async fn execute(mut self) -> Report {
        let mut reports = self.reports.clone();
        let to_change: Vec<String> = reports
            .iter()
            .filter(|r| r.status == HostStatus::Changed)
            .map(|r| r.name.clone())
            .collect();
        self.announce();
        let (run, owner) = (host::RunId::new(), host::owner());
        let cx = RunCx {
            topo: &self.planned.topology,
            settings: self.settings,
            progress: &self.progress,
            sessions: &self.sessions,
            connector: &self.connector,
            iface: &self.planned.topology.network.interface,
            run: &run,
        };
        let outcomes = change_hosts(&cx, &owner, &to_change, &self.plans).await;
        flush_again(&cx, &to_change, &self.plans, &outcomes).await;
        let done = record_outcomes(&mut reports, &to_change, &outcomes);
        let mut fresh: Sessions<C::Session> = HashMap::new();
        let guard = self.guard(&cx, &done, &mut reports, &mut fresh).await;
        close_all(&self.sessions).await;
        close_all(&fresh).await;
        self.report(reports, Some(guard), false)
    }

    /// The guard's part of a run: skipped without `--guard` or when nothing changed; else the
    /// health gate over the links the change touched, then confirmation or the put-back.
    async fn guard(
        &self,
        cx: &RunCx<'_, C>,
        done: &Done,
        reports: &mut [HostReport],
        fresh: &mut Sessions<C::Session>,
    ) -> GuardReport {
        let skipped = |why: &str| GuardReport {
            outcome: "skipped".into(),
            why: why.into(),
            ..Default::default()
        };
        let Some(timeout) = self.settings.guard else {
            return skipped("--no-guard: the change was neither gated nor confirmed");
        };
        if done.pending.is_empty() && done.lost.is_empty() {
            return skipped("no host changed");
        }
        let changes: HashMap<String, Vec<Change>> = self
            .plans
            .iter()
            .filter(|(n, _)| done.touched.contains(*n))
            .map(|(n, p)| (n.clone(), p.changes.clone()))
            .collect();
        let ok_facts: BTreeMap<String, &Facts> =
            self.facts.iter().map(|(n, f)| (n.clone(), f)).collect();
        let owners: HashMap<String, String> = self
            .keys
            .ring
            .iter()
            .map(|(n, k)| (k.public.to_base64(), n.clone()))
            .collect();
        let (before, existed) = guard::links_before(&ok_facts, &owners);
        let wg_path = conf_path(cx.iface);
        let g = GuardInput {
            timeout,
            pending: &done.pending,
            lost: &done.lost,
            touched: &done.touched,
            before,
            existed,
            changes: &changes,
            wg_path: &wg_path,
            first_dead_man: done.deadlines.iter().min().copied(),
        };
        let (report, statuses) = run_guard(cx, &g, fresh).await;
        for r in reports.iter_mut() {
            if let Some((st, err, secs)) = statuses.get(&r.name) {
                r.status = *st;
                if let Some(e) = err {
                    r.error = Some(match r.error.take() {
                        Some(old) if *st == HostStatus::Reverted && done.lost.contains(&r.name) => {
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
}

/// What the change did on the hosts it ran on.
#[derive(Default)]
struct Done {
    /// Changed, waiting for confirmation.
    pending: Vec<String>,
    /// Outcome unknown (the session dropped).
    lost: Vec<String>,
    /// When each changed host's dead-man fires.
    deadlines: Vec<Instant>,
    /// Every host a change was attempted on.
    touched: BTreeSet<String>,
}

/// Writes each changed host's outcome into its report.
fn record_outcomes(reports: &mut [HostReport], to_change: &[String], outcomes: &Outcomes) -> Done {
    let mut d = Done::default();
    for r in reports.iter_mut() {
        if !to_change.contains(&r.name) {
            continue;
        }
        let Some((o, secs, due)) = outcomes.get(&r.name) else {
            r.status = HostStatus::Failed;
            r.error = Some("not changed: the run was stopped before this host's turn".into());
            continue;
        };
        r.timings.apply = *secs;
        d.touched.insert(r.name.clone());
        d.deadlines.extend(due);
        let (status, error) = match o {
            host::ChangeOutcome::Changed => {
                d.pending.push(r.name.clone());
                continue;
            }
            host::ChangeOutcome::RolledBack {
                error,
                restored: true,
            } => (
                HostStatus::RolledBack,
                format!("{error}; put back: files restored byte for byte, handlers re-run"),
            ),
            host::ChangeOutcome::RolledBack {
                error,
                restored: false,
            } => (
                HostStatus::Failed,
                format!("{error}; PUTTING IT BACK FAILED: see /var/lib/wgprov/log on the host"),
            ),
            host::ChangeOutcome::Failed { error } => (HostStatus::Failed, error.clone()),
            host::ChangeOutcome::Locked { owner } => (
                HostStatus::Failed,
                format!("locked by another apply ({owner}): nothing was touched on this host"),
            ),
            host::ChangeOutcome::Lost { error } => {
                d.lost.push(r.name.clone());
                (HostStatus::Failed, error.clone())
            }
        };
        r.status = status;
        r.error = Some(error);
    }
    d
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

/// Flushes the conntrack entries of the changed routers' public ports once more, after the
/// nodes changed (best effort: a failure is only reported).
async fn flush_again<C: Connect>(
    cx: &RunCx<'_, C>,
    to_change: &[String],
    plans: &HashMap<String, HostPlan>,
    outcomes: &Outcomes,
) {
    let changed = |n: &str| matches!(outcomes.get(n), Some((host::ChangeOutcome::Changed, _, _)));
    let targets = order::reflush_targets(cx.topo, to_change, plans, &changed);
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
    let waves = order::change_waves(cx.topo, to_change);
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
                if order::is_forwarding_router(cx.topo, &wave[0]) {
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
            let kind = HostKind::of(topo, &n).expect("a targeted host").kind();
            async move {
                let s = s.map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let paths = kind.rollback_paths();
                let out = s
                    .run_script(&gather::script(&iface, &paths))
                    .await
                    .map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
                let facts =
                    gather::parse(&out.stdout_text()).map_err(|e| (HostStatus::Failed, e))?;
                let handlers = kind.rollback_handlers(&facts);
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
                r.handlers = vec![
                    HostKind::of(topo, n)
                        .expect("a targeted host")
                        .kind()
                        .rollback_described()
                        .into(),
                ];
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
    use crate::desired::{self, HostInput};
    use crate::diff;
    use crate::facts::FileFact;
    use crate::hosts::handlers::HandlerPlan;
    use crate::hosts::kind::Kind;
    use crate::inventory::OsFamily;
    use crate::plan::order::{change_waves, reflush_targets, router_announcements};
    use crate::topology::keys::Keypair;

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
        let (files, _) = HostKind::of(&t, "home-router")
            .unwrap()
            .desired(&roles, &t, &keys, &input)
            .unwrap();
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
        let hub_kind = HostKind::of(&t, "home-router").unwrap();
        let known = hub_kind.existing_peers(&f, &t.network.interface);
        let o1 = keys["o1"].public.to_base64();
        assert!(
            known.contains(&(o1, vec!["10.100.1.0/24".to_string()])),
            "{known:?}"
        );
        let kind = |n: &str| HostKind::of(&t, n).unwrap().kind();
        assert_eq!(kind("home-router"), Kind::OpenwrtHub);
        assert_eq!(kind("office-router"), Kind::Forwarder);
        assert_eq!(kind("n1"), Kind::Node);
        let h = Kind::OpenwrtHub.rollback_handlers(&f);
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
                drift: Vec::new(),
                warnings: Vec::new(),
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
            drift: Vec::new(),
            warnings: Vec::new(),
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
        let n = node("n1", "home");
        let existing_key =
            |f: &Facts, _: &str| HostKind::Node(&n).existing_key(f, &Default::default());
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
        let w = crate::plan::config_warnings("[Interface]\nSaveConfig = true\nDNS = 1.1.1.1\n", &f);
        assert_eq!(w.len(), 2, "{w:?}");
        let mut with = Facts::default();
        with.tools.insert("resolvconf".into());
        assert_eq!(
            crate::plan::config_warnings("[Interface]\nDNS = 1.1.1.1\n", &with).len(),
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
