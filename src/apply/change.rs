//! Changing the hosts: each changed host's transaction, in waves (managed routers that forward
//! the port first, then hosts reached through the mesh before the hosts their path crosses),
//! each bounded so that a host whose change cuts its own path cannot stall the run.

use super::*;

/// What every step of a changing run shares.
pub(super) struct RunCx<'a, C: Connect> {
    pub(super) topo: &'a Topology,
    pub(super) settings: &'a Settings,
    pub(super) progress: &'a Arc<dyn Progress>,
    pub(super) sessions: &'a Sessions<C::Session>,
    pub(super) connector: &'a Arc<C>,
    pub(super) iface: &'a crate::shell::InterfaceName,
    pub(super) run: &'a host::RunId,
}

/// How long the controller waits for one wave's changes under the guard: a third of the
/// confirmation timeout, at least 5 s (never more than `--command-timeout`); a large fleet on a
/// small controller raises `--confirm-timeout` to give its hosts more time. A host whose change
/// cuts its own path (its SSH runs over the link it changes) is then `Lost` instead of stalling
/// the run while the dead-men of earlier waves run out; its change goes on, detached.
pub(super) fn wave_bound(settings: &Settings) -> Duration {
    match settings.guard {
        Some(t) => (t / 3)
            .max(Duration::from_secs(5))
            .min(settings.command_timeout),
        None => settings.command_timeout,
    }
}

/// The dead-man timeout of a host changed in wave `i` of `n`: the confirmation timeout, plus
/// the time the later waves may take, so that every host still waits for the same decision.
pub(super) fn dead_man_timeout(confirm: Duration, bound: Duration, i: usize, n: usize) -> Duration {
    confirm + bound * (n.saturating_sub(i + 1) as u32)
}

/// Flushes the conntrack entries of the changed routers' public ports once more, after the
/// nodes changed (best effort: a failure is only reported).
pub(super) async fn flush_again<C: Connect>(
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
pub(super) type Outcomes = HashMap<String, (host::ChangeOutcome, f64, Option<Instant>)>;

/// Runs each changed host's transaction, in waves (hosts reached through the mesh before the
/// hosts their path crosses); stops starting waves once the operator asked to stop.
pub(super) async fn change_hosts<C: Connect>(
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
        // each host's script is made as its task is, and handed to the channel as it is: held
        // once per host while the whole wave is in flight
        let res = run_all(wave.clone(), cx.settings.forks, |n| {
            let script = {
                let p = &plans[&n];
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
                host::change_script(&spec)
            };
            let s = cx.sessions[&n]
                .as_ref()
                .expect("only reachable hosts are changed")
                .clone();
            let progress = cx.progress.clone();
            async move {
                progress.phase(&n, "applying");
                let t = Instant::now();
                let o = host::change(&*s, script, bound).await;
                (o, t.elapsed().as_secs_f64(), dead_man.map(|d| t + d))
            }
        })
        .await;
        out.extend(res);
    }
    out
}

/// What the change did on the hosts it ran on.
#[derive(Default)]
pub(super) struct Done {
    /// Changed, waiting for confirmation.
    pub(super) pending: Vec<String>,
    /// Outcome unknown (the session dropped).
    pub(super) lost: Vec<String>,
    /// When each changed host's dead-man fires.
    pub(super) deadlines: Vec<Instant>,
    /// Every host a change was attempted on.
    pub(super) touched: BTreeSet<String>,
}

/// Writes each changed host's outcome into its report.
pub(super) fn record_outcomes(
    reports: &mut [HostReport],
    to_change: &[String],
    outcomes: &Outcomes,
) -> Done {
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
