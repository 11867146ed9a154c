//! The guard's run: the health gate over the links the change touched, then confirmation over
//! fresh connections, or the network-wide put-back. Its decisions are pure ([`super::guard`]).

use super::*;

/// What the guard works from.
pub(super) struct GuardInput<'a> {
    pub(super) timeout: Duration,
    /// Hosts changed and waiting for confirmation.
    pub(super) pending: &'a [String],
    /// Hosts whose change outcome is unknown.
    pub(super) lost: &'a [String],
    /// Every host a change was attempted on.
    pub(super) touched: &'a BTreeSet<String>,
    pub(super) before: BTreeSet<guard::Link>,
    /// Links whose peer entry was on a running interface before, up or idle.
    pub(super) existed: BTreeSet<guard::Link>,
    pub(super) changes: &'a HashMap<String, Vec<Change>>,
    pub(super) wg_path: &'a str,
    /// When the first changed host's dead-man fires.
    pub(super) first_dead_man: Option<Instant>,
}

pub(super) type GuardStatuses = HashMap<String, (HostStatus, Option<String>, f64)>;

/// The links the gate probes: those of the hosts the change touched (a router's change touches
/// the links of its site's next-hop; a relay's next-hop's change, the links it relays) that
/// were up before, or are new.
fn links_to_probe(topo: &Topology, g: &GuardInput<'_>) -> BTreeSet<guard::Link> {
    let touched: BTreeSet<&str> = g
        .touched
        .iter()
        .map(|t| match topo.router(t) {
            Some((s, _)) => s.next_hop.as_deref().unwrap_or(t),
            None => t.as_str(),
        })
        .collect();
    guard::links_to_probe(
        guard::planned_links(topo)
            .into_iter()
            .filter(|l| {
                let via = guard::crosses(topo, l);
                touched
                    .iter()
                    .any(|t| l.has(t) || via.as_deref() == Some(*t))
            })
            .collect(),
        &g.before,
        &g.existed,
    )
}

/// Probes the links over the run's connections while fresh connections for the confirmation
/// open; the fresh ones are awaited only when nothing broke and nobody asked to stop.
async fn probe_and_reconnect<C: Connect>(
    cx: &RunCx<'_, C>,
    g: &GuardInput<'_>,
    to_probe: &BTreeSet<guard::Link>,
    wait: Duration,
) -> (guard::Health, Sessions<C::Session>) {
    let topo = cx.topo;
    let paths = crate::topology::reach::paths(topo);
    let live: HashMap<String, Arc<C::Session>> = cx
        .sessions
        .iter()
        .filter_map(|(n, s)| s.as_ref().ok().map(|s| (n.clone(), s.clone())))
        .collect();
    let fresh_fut = connect_all(
        cx.connector,
        with_jumps(topo, g.pending),
        cx.settings.forks,
        cx.progress,
    );
    let probe_fut = guard::probe_links(topo, to_probe, &paths, &live, cx.iface, wait);
    tokio::pin!(fresh_fut);
    tokio::pin!(probe_fut);
    let mut fresh_done: Option<Sessions<C::Session>> = None;
    let after = loop {
        tokio::select! {
            a = &mut probe_fut => break a,
            f = &mut fresh_fut, if fresh_done.is_none() => fresh_done = Some(f),
        }
    };
    let health = guard::health(&g.before, &after);
    let fresh = if health.broken.is_empty() && !cx.settings.stopped() {
        match fresh_done {
            Some(f) => f,
            None => fresh_fut.await,
        }
    } else {
        fresh_done.unwrap_or_default()
    };
    (health, fresh)
}

/// The health gate, then confirmation over fresh connections, or the network-wide put-back.
pub(super) async fn run_guard<C: Connect>(
    cx: &RunCx<'_, C>,
    g: &GuardInput<'_>,
    fresh_out: &mut Sessions<C::Session>,
) -> (GuardReport, GuardStatuses) {
    let topo = cx.topo;
    let wait = (g.timeout / 3).clamp(Duration::from_secs(2), Duration::from_secs(30));
    let to_probe = links_to_probe(topo, g);
    cx.progress.note(&format!(
        "guard: probing {} link{} over {} (up to {} s), {} up before the change",
        to_probe.len(),
        if to_probe.len() == 1 { "" } else { "s" },
        cx.iface,
        wait.as_secs(),
        g.before.iter().filter(|l| to_probe.contains(l)).count()
    ));
    let t = Instant::now();
    let (health, fresh) = probe_and_reconnect(cx, g, &to_probe, wait).await;
    let gate_seconds = t.elapsed().as_secs_f64();
    let cause = if health.broken.is_empty() {
        String::new()
    } else {
        guard::likely_cause(topo, &health.broken, g.changes, g.wg_path)
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
            confirm(
                cx,
                g,
                &fresh,
                &health,
                step_timeout,
                &mut report,
                &mut statuses,
            )
            .await
        }
        guard::Verdict::Revert(why) => {
            revert(
                cx,
                g,
                &fresh,
                &why,
                step_timeout,
                &mut report,
                &mut statuses,
            )
            .await
        }
    }
    *fresh_out = fresh;
    (report, statuses)
}

/// Confirms every changed host over its fresh connection; one that cannot be confirmed puts
/// itself back, and the outcome says so.
async fn confirm<C: Connect>(
    cx: &RunCx<'_, C>,
    g: &GuardInput<'_>,
    fresh: &Sessions<C::Session>,
    health: &guard::Health,
    step_timeout: Duration,
    report: &mut GuardReport,
    statuses: &mut GuardStatuses,
) {
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
        report.outcome = GuardOutcome::Confirmed;
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
        report.outcome = GuardOutcome::Reverted;
        report.why = format!(
            "{} could not be confirmed and put itself back",
            unconfirmed.join(", ")
        );
    }
}

/// Puts every changed host back (over a fresh connection, else the one of the change); a host
/// out of reach is left to its dead-man, and the report names it.
async fn revert<C: Connect>(
    cx: &RunCx<'_, C>,
    g: &GuardInput<'_>,
    fresh: &Sessions<C::Session>,
    why: &str,
    step_timeout: Duration,
    report: &mut GuardReport,
    statuses: &mut GuardStatuses,
) {
    cx.progress
        .note(&format!("guard: putting the change back everywhere: {why}"));
    report.outcome = GuardOutcome::Reverted;
    report.why = why.to_string();
    let mut targets: Vec<String> = g.pending.to_vec();
    targets.extend(g.lost.iter().cloned());
    let res = run_all(targets, cx.settings.forks, |n| {
        let s = match (fresh.get(&n), cx.sessions.get(&n)) {
            (Some(Ok(s)), _) | (_, Some(Ok(s))) => Some(s.clone()),
            _ => None,
        };
        let run = cx.run.clone();
        let why = why.to_string();
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
