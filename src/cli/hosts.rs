//! The commands that work on hosts over SSH: `apply` (with `--check` decided here and nowhere
//! below), `rollback`, `status`.

use super::*;

pub(super) struct ApplyFlags {
    pub(super) check: bool,
    pub(super) diff: bool,
    pub(super) no_rollback: bool,
    pub(super) detailed_exitcode: bool,
    pub(super) timings: bool,
    pub(super) guard: Option<std::time::Duration>,
}

pub(super) fn print_report(
    report: &crate::apply::Report,
    format: Format,
    diff: bool,
    timings: bool,
) {
    match format {
        Format::Text => print!("{}", output::apply_text(report, diff, timings)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&output::apply_json(report)).expect("json")
        ),
    }
}

pub(super) fn apply(
    path: &Path,
    roles_path: Option<&Path>,
    run: &RunArgs,
    f: ApplyFlags,
) -> Result<u8> {
    let roles = Roles::load(RoleSource::resolve(roles_path, path))?;
    let p = planned(path, !f.check)?;
    let mut settings = run.settings(f.no_rollback);
    settings.guard = f.guard;
    let progress = std::sync::Arc::new(CliProgress::new(run.format == Format::Text, verbose() > 0));
    let stop = settings.stop.clone();
    let report = runtime()?.block_on(async {
        on_stop(stop);
        let prepared =
            crate::apply::prepare(&p, &roles, &settings, run.connector(), progress).await?;
        // --check is decided here and nowhere below: the plan is printed, nothing changes
        Ok::<_, Error>(if f.check {
            prepared.check().await
        } else {
            prepared.execute().await
        })
    })?;
    print_report(&report, run.format, f.diff, f.timings || verbose() > 0);
    Ok(report.exit_code(f.detailed_exitcode))
}

/// Ctrl-C (or SIGTERM): start no new host, let hosts in flight finish, put the change back; a
/// second one leaves at once (each changed host's dead-man still puts it back). Call it inside
/// the runtime.
pub(super) fn on_stop(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for i in 0..2 {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            if i == 0 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "wgprov: stopping: no new host is started; hosts in flight finish, then every change is put back (again to leave at once)"
                );
            } else {
                eprintln!("wgprov: leaving now: each changed host's dead-man puts it back");
                std::process::exit(130);
            }
        }
    });
}

pub(super) fn rollback(path: &Path, run: &RunArgs) -> Result<u8> {
    let p = planned(path, false)?;
    let settings = run.settings(false);
    let progress = std::sync::Arc::new(CliProgress::new(run.format == Format::Text, verbose() > 0));
    let report = runtime()?.block_on(crate::apply::rollback(
        &p,
        &settings,
        run.connector(),
        progress,
    ))?;
    print_report(&report, run.format, false, false);
    Ok(report.exit_code(false))
}

pub(super) fn status(
    path: &Path,
    run: &RunArgs<StatusFormat>,
    picture: Option<GraphFormat>,
) -> Result<u8> {
    let p = planned(path, false)?;
    let progress = std::sync::Arc::new(CliProgress::new(
        run.format == StatusFormat::Text,
        verbose() > 0,
    ));
    let report = runtime()?.block_on(crate::status::status(
        &p,
        run.forks.max(1),
        run.connector(),
        progress,
    ))?;
    match (picture, run.format) {
        (Some(f), _) => print_picture(
            &output::svg::health_dot(&p.topology, &report.picture_links()),
            f,
        )?,
        (None, StatusFormat::Text) => print!("{}", crate::status::text(&report)),
        (None, StatusFormat::Json) => {
            println!("{}", serde_json::to_string_pretty(&report).expect("json"))
        }
        (None, StatusFormat::Openmetrics) => print!("{}", output::openmetrics::status(&report)),
    }
    Ok(report.exit_code())
}
