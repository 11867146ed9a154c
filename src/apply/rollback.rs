//! `wgprov rollback`: the last apply's backups put back on every targeted host, and the
//! handlers re-run.

use super::*;

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
            async move { roll_back(s, iface, kind).await }
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

/// Puts one host's last backup back: its facts first (for a router, its scripts), then the
/// restore with its kind's handlers. The restored paths, or the status and why.
async fn roll_back<S: Transport>(
    s: std::result::Result<Arc<S>, crate::transport::TransportError>,
    iface: crate::shell::InterfaceName,
    kind: crate::hosts::kind::Kind,
) -> std::result::Result<Vec<String>, (HostStatus, String)> {
    let s = s.map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
    let paths = kind.rollback_paths();
    let out = s
        .run_script(&gather::script(&iface, &paths))
        .await
        .map_err(|e| (HostStatus::Unreachable, e.to_string()))?;
    let facts =
        gather::parse(&out.stdout_text()).map_err(|e| (HostStatus::Failed, e.to_string()))?;
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
