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
    pub(super) changes: &'a HashMap<String, &'a [Change]>,
    pub(super) wg_path: &'a str,
    /// When the first changed host's dead-man fires.
    pub(super) first_dead_man: Option<Instant>,
}

pub(super) type GuardStatuses = HashMap<String, (HostStatus, Option<String>, f64)>;

/// The links the gate probes: those of the hosts the change touched (a router's change touches
/// the links of its site's next-hop; a relay's next-hop's change, the links it relays) that
/// were up before, or are new.
pub(super) fn links_to_probe(topo: &Topology, g: &GuardInput<'_>) -> BTreeSet<guard::Link> {
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

/// The run's connections the guard still needs: the probing end of every link it probes (the
/// nearer end, else the other one, as [`guard::probe_links`] picks), and the hosts whose change
/// has no known outcome (only their own connection can put them back at once).
fn needed_by_guard<S>(
    topo: &Topology,
    g: &GuardInput<'_>,
    to_probe: &BTreeSet<guard::Link>,
    sessions: &Sessions<S>,
) -> BTreeSet<String> {
    let live = |n: &str| matches!(sessions.get(n), Some(Ok(_)));
    let paths = crate::topology::reach::paths(topo);
    let mut keep: BTreeSet<String> = g.lost.iter().cloned().collect();
    for l in to_probe {
        let (near, far) = guard::prober(l, &paths, |a, b| guard::initiates(topo, a, b));
        let end = if live(near) { near } else { far };
        keep.insert(end.to_string());
    }
    keep
}

/// Lets go of the run's connections the guard does not need before it opens the fresh ones, so
/// that only the probing ends hold two connections at once: a whole-fleet change at 500 hosts
/// held 1,000 (about 100 KB each). A changed host whose connection is let go here is confirmed,
/// or put back, over its fresh one.
pub(super) fn drop_unneeded<S>(
    topo: &Topology,
    g: &GuardInput<'_>,
    to_probe: &BTreeSet<guard::Link>,
    sessions: &mut Sessions<S>,
) {
    let keep = needed_by_guard(topo, g, to_probe, sessions);
    // dropped, not closed: a jump host's connection lives on while a kept one goes through it
    sessions.retain(|n, _| keep.contains(n));
}

/// Probes the links over the run's connections while fresh connections for the confirmation
/// open. The fresh ones are awaited when nothing broke and nobody asked to stop, and whenever
/// a changed host has no connection of the run left: the put-back reaches it over the fresh
/// one (by the time a broken link's probe gives up, they have long been made).
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
    let needs_fresh = g.pending.iter().any(|n| !live.contains_key(n));
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
    let fresh = if needs_fresh || (health.broken.is_empty() && !cx.settings.stopped()) {
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
    to_probe: &BTreeSet<guard::Link>,
    fresh_out: &mut Sessions<C::Session>,
) -> (GuardReport, GuardStatuses) {
    let wait = (g.timeout / 3).clamp(Duration::from_secs(2), Duration::from_secs(30));
    cx.progress.note(&format!(
        "guard: probing {} link{} over {} (up to {} s), {} up before the change",
        to_probe.len(),
        if to_probe.len() == 1 { "" } else { "s" },
        cx.iface,
        wait.as_secs(),
        g.before.iter().filter(|l| to_probe.contains(l)).count()
    ));
    let t = Instant::now();
    let (health, fresh) = probe_and_reconnect(cx, g, to_probe, wait).await;
    let gate_seconds = t.elapsed().as_secs_f64();
    let cause = if health.broken.is_empty() {
        String::new()
    } else {
        guard::likely_cause(cx.topo, &health.broken, g.changes, g.wg_path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportError;
    use crate::transport::fake::FakeHost;

    fn input<'a>(
        pending: &'a [String],
        lost: &'a [String],
        touched: &'a BTreeSet<String>,
        changes: &'a HashMap<String, &'a [Change]>,
    ) -> GuardInput<'a> {
        GuardInput {
            timeout: Duration::from_secs(90),
            pending,
            lost,
            touched,
            before: BTreeSet::new(),
            existed: BTreeSet::new(),
            changes,
            wg_path: "/etc/wireguard/wg0.conf",
            first_dead_man: None,
        }
    }

    #[test]
    fn before_the_fresh_connections_only_the_probing_ends_and_the_lost_hosts_keep_theirs() {
        let topo = super::super::fleet_tests::planned().topology;
        let names = ["h1", "h2", "o1", "o2"].map(String::from);
        let all = || -> Sessions<FakeHost> {
            names
                .iter()
                .map(|n| (n.clone(), Ok(Arc::new(FakeHost::new()))))
                .collect()
        };
        let (pending, lost) = (names[..3].to_vec(), vec!["o2".to_string()]);
        let touched: BTreeSet<String> = names.iter().cloned().collect();
        let changes = HashMap::new();
        let g = input(&pending, &lost, &touched, &changes);
        let link = guard::Link::new("h1", "o1");
        let to_probe: BTreeSet<guard::Link> = [link.clone()].into();
        let paths = crate::topology::reach::paths(&topo);
        let (near, far) = guard::prober(&link, &paths, |a, b| guard::initiates(&topo, a, b));

        let mut sessions = all();
        drop_unneeded(&topo, &g, &to_probe, &mut sessions);
        let kept: BTreeSet<&str> = sessions.keys().map(String::as_str).collect();
        assert_eq!(kept, [near, "o2"].into(), "h2 and the far end let go");

        // the near end has no connection: the far end probes, and keeps its own
        let mut sessions = all();
        sessions.insert(
            near.to_string(),
            Err(TransportError::Unreachable("x".into())),
        );
        drop_unneeded(&topo, &g, &to_probe, &mut sessions);
        let kept: BTreeSet<&str> = sessions.keys().map(String::as_str).collect();
        assert_eq!(kept, [far, "o2"].into());
    }
}
