//! One host's transaction, as it runs on the host: lock, compare-and-swap check, dead-man,
//! backup, atomic writes, handlers, self-check, and putting itself back. The controller only
//! launches it and reads its outcome.
//!
//! Everything a run needs is written to `/var/lib/wgprov/runs/<run>/` in the first lines of one
//! exec (a function body, so a script cut short by a dropped connection is never run half), then
//! started detached (`setsid`, no terminal, output to a file): a session that drops, or a
//! controller that dies, cannot leave the host half-changed. It finishes, or puts itself back.
//!
//! Layout on the host (`/var/lib/wgprov`, mode 0700):
//! - `lock/run` (the run, its deadline, its owner, one per line): one apply at a time; an
//!   expired lock is taken over after its pending change (if any) is put back, so nothing stays
//!   locked forever;
//! - `pending/` (`run`, and `unit` or `deadman`: the dead-man's PID and boot): a change waiting
//!   for confirmation. PIDs are only signalled or waited for in the boot that recorded them
//!   (after a reboot they may belong to anything).
//!   Confirming, putting back and the dead-man each *claim* it with one `mv`, so exactly one of
//!   them acts;
//! - `backup/`: the files before the last change (also what `wgprov rollback` restores);
//! - `runs/<run>/`: this run's `revert.sh` (the run's functions; `revert.sh start`: lock,
//!   checks, dead-man, then the change; else its put-back), `pid` (the change's PID and boot,
//!   and `written` once files started to change), `out`; `log`: what the guard did, and why.
//!
//! A run creates few files: on a file system that many hosts share (the lab) or that churns,
//! every new inode has a cost.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::script::{
    self, Expect, FAIL, HandlerPlan, STATE_DIR, ScriptResult, backup_and_write, done_tail,
    handlers_script, put_files_body, restore_body, then_handlers,
};
use crate::diff::{Action, Change};
use crate::facts::Facts;
use crate::facts::FileFact;
use crate::shell::{InterfaceName, PATH_PRELUDE, sh_quote};
use crate::transport::{Transport, TransportError};

/// Printed when the host is locked by another apply (followed by the owner).
pub const LOCKED: &str = "@@WGPROV-LOCKED@@";
/// Printed when a failed change put the host back.
pub const ROLLED_BACK: &str = "@@WGPROV-ROLLED-BACK@@";
/// Printed when putting a failed change back failed too.
pub const ROLLBACK_FAILED: &str = "@@WGPROV-ROLLBACK-FAILED@@";
/// Printed by the confirmation.
pub const CONFIRMED: &str = "@@WGPROV-CONFIRMED@@";
/// Printed by a put-back that did it.
pub const REVERTED: &str = "@@WGPROV-REVERTED@@";
/// Printed when there was no pending change of this run to confirm or put back.
pub const NOT_PENDING: &str = "@@WGPROV-NOTPENDING@@";

/// A run's identity on the hosts: unique per run (time and process), `[0-9a-f-]` only, so that
/// it is safe in paths, unit names and shell words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// A new run id.
    pub fn new() -> RunId {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        RunId(format!(
            "{:x}-{:x}-{:x}",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id()
        ))
    }
    /// For tests: a fixed id (hex digits and dashes only).
    pub fn fixed(s: &str) -> RunId {
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "run ids are hex and dashes"
        );
        RunId(s.to_string())
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

/// Who runs this apply, as recorded in the lock (`user@host pid N`).
pub fn owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "controller".into());
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect()
    };
    format!(
        "{}@{} pid {}",
        clean(&user),
        clean(&host),
        std::process::id()
    )
}

/// Everything one host's change needs.
pub struct ChangeSpec<'a> {
    /// The run.
    pub run: &'a RunId,
    /// Who runs it (for the lock).
    pub owner: &'a str,
    /// The compared files (unchanged ones are skipped).
    pub changes: &'a [Change],
    /// The handlers to run.
    pub handlers: &'a HandlerPlan,
    /// The WireGuard interface.
    pub iface: &'a InterfaceName,
    /// The host's facts (init system, tools).
    pub facts: &'a Facts,
    /// What the interface must look like afterwards.
    pub expect: Option<&'a Expect>,
    /// Put the host back when a step fails.
    pub rollback: bool,
    /// The guard's confirmation timeout; `None` with `--no-guard`.
    pub confirm_timeout: Option<Duration>,
    /// How long a `--no-guard` lock may be held before another run may take it over.
    pub lock_ttl: Duration,
}

fn run_dir(run: &RunId) -> String {
    format!("{STATE_DIR}/runs/{}", run.as_str())
}

/// The functions every script of a run shares, at the top of `runs/<run>/revert.sh` (sourced
/// with `WGPROV_LIB=1` for the functions only).
fn lib_sh(run: &RunId, iface: &InterfaceName, facts: &Facts, put_back: &HandlerPlan) -> String {
    let r = run_dir(run);
    // a change that went through is put back as gently as it was made (peers only: `wg
    // syncconf`); one that failed half-way leaves the interface in doubt: restart it
    let back = |h: &HandlerPlan| then_handlers("put_files\n".into(), iface, facts, "rfail", h);
    let restore = back(put_back);
    let restart = HandlerPlan {
        wireguard: put_back.wireguard.map(|_| true),
        ..put_back.clone()
    };
    let restore_failed = match back(&restart) {
        same if same == restore => "restore\n".to_string(),
        other => other,
    };
    format!(
        "D={STATE_DIR}\nR={r}\nRUN={run}\nB=$D/backup\n\
         log() {{ echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) run $RUN: $*\" >> \"$D/log\"; }}\n\
         {readers}\n\
         unlock() {{ rd \"$D/lock/run\"; if [ \"$v\" = \"$RUN\" ]; then rm -rf \"$D/lock\"; fi; }}\n\
         claim() {{ rd \"$D/pending/run\"; [ \"$v\" = \"$RUN\" ] && mv \"$D/pending\" \"$R/$1\" 2>/dev/null; }}\n\
         rd /proc/sys/kernel/random/boot_id; BOOT=${{v:-unknown}}\n\
         this_boot() {{ rd \"$1\"; [ \"${{v#* }}\" = \"$BOOT\" ]; }}\n\
         disarm() {{ if [ -f \"$R/$1/unit\" ]; then rd \"$R/$1/unit\"; systemctl stop \"$v.timer\" >/dev/null 2>&1 || true; fi; \
         if [ -f \"$R/$1/deadman\" ] && this_boot \"$R/$1/deadman\"; then kill -- \"-${{v%% *}}\" 2>/dev/null || true; fi; }}\n\
         rfail() {{ echo \"{FAIL} putting back: $1\"; exit 1; }}\n\
         put_files() {{\n{files}}}\n\
         restore() {{\n{restore}}}\n\
         restore_failed() {{\n{restore_failed}}}\n",
        run = run.as_str(),
        readers = READERS,
        files = put_files_body("rfail"),
    )
}

/// The shell's readers of the state directory: `rd FILE` reads a file's first line into `v`
/// (empty when there is none); `rdlock` reads the lock (`lock/run`: the run, its deadline, its
/// owner, one per line) into `lrun`, `ldl` and `lown`, where a lock left by an older wgprov keeps
/// deadline and owner in files of their own.
const READERS: &str = "rd() { v=; if [ -f \"$1\" ]; then read -r v < \"$1\" || :; fi; }\n\
     rdlock() { lrun=; ldl=; lown=; if [ -f \"$D/lock/run\" ]; then { read -r lrun; read -r ldl; read -r lown; } < \"$D/lock/run\"; fi; \
     [ -n \"$ldl\" ] || { rd \"$D/lock/deadline\"; ldl=$v; }; [ -n \"$lown\" ] || { rd \"$D/lock/owner\"; lown=$v; }; }";

/// The change itself (the end of `revert.sh start`): backup, writes, handlers, self-check. A failure
/// after the first write puts the backup back and re-runs the handlers (unless `--no-rollback`),
/// and gives up the pending record so that the dead-man does not act again.
fn txn_sh(spec: &ChangeSpec) -> String {
    let any_file = spec.changes.iter().any(|c| c.action != Action::Unchanged);
    let mut s = format!(
        "STAGE=start\n\
         fail() {{\n  echo \"{FAIL} $1\"\n  if [ \"$STAGE\" = written ] && [ {rb} = 1 ]; then\n    \
         if ( restore_failed ); then echo '{ROLLED_BACK}'; log \"change failed ($1): put back\"; \
         else echo '{ROLLBACK_FAILED}'; log \"change failed ($1); putting it back failed too\"; fi\n  \
         fi\n  if claim failed; then disarm failed; fi\n  unlock\n  exit 1\n}}\n",
        rb = u8::from(spec.rollback),
    );
    if any_file {
        s.push_str(&backup_and_write(spec.changes));
    }
    s.push_str(&handlers_script(
        spec.handlers,
        spec.iface,
        spec.facts,
        false,
        "fail",
    ));
    if let Some(e) = spec.expect {
        s.push_str(&e.check(spec.iface));
    }
    if spec.confirm_timeout.is_none() {
        s.push_str("unlock\n");
    }
    // stamped with the run's start on this host: no `date` for the last line
    s.push_str("echo \"$STAMP run $RUN: changed\" >> \"$D/log\"\n");
    s.push_str(&done_tail());
    s
}

/// The put-back of this run (`runs/<run>/revert.sh MODE WHY`), run by the controller, by the
/// dead-man (`MODE` = `deadman`) or by a later run that finds this one's lock expired. Claims
/// the pending record first: when it is gone (confirmed, or already put back) it does nothing.
/// It starts with the run's functions (`lib`), and stops after them when sourced with
/// `WGPROV_LIB=1`; `revert.sh start` runs the change itself (`start`), detached.
fn revert_sh(lib: &str, start: &str) -> String {
    format!(
        "{PATH_PRELUDE}set -u\numask 077\n{lib}[ -z \"${{WGPROV_LIB:-}}\" ] || return 0\n\
         if [ \"${{1:-}}\" = start ]; then\n{start}exit 0\nfi\nmode=${{1:-controller}}; why=${{2:-}}\n\
         claim reverting || {{ echo \"{NOT_PENDING} $(tail -n 1 \"$D/log\" 2>/dev/null)\"; exit 0; }}\n\
         [ \"$mode\" = deadman ] || disarm reverting\n\
         pid=; st=; if [ -f \"$R/pid\" ]; then while read -r a b; do if [ \"$a\" = written ]; then st=1; elif [ \"$b\" = \"$BOOT\" ]; then pid=$a; fi; done < \"$R/pid\"; fi\n\
         if [ -n \"$pid\" ]; then tail --pid=\"$pid\" -s 0.1 -f /dev/null 2>/dev/null || while kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done; fi\n\
         if [ -n \"$st\" ]; then\n  \
           if ( restore ); then log \"put back ($mode): $why\"; echo '{REVERTED}'; \
           else log \"putting back FAILED ($mode): $why\"; echo \"{FAIL} put back\"; fi\n\
         else log \"released ($mode), nothing had been written: $why\"; echo '{REVERTED}'; fi\n\
         unlock\n{tail}",
        tail = done_tail(),
    )
}

/// Lock, leftovers of earlier runs, compare-and-swap, dead-man, then the change
/// (`runs/<run>/revert.sh start`, started detached, with the run's functions defined).
fn start_sh(spec: &ChangeSpec) -> String {
    let ttl = match spec.confirm_timeout {
        Some(t) => t.as_secs() + 120,
        None => spec.lock_ttl.as_secs() + 60,
    };
    let mut s = format!(
        "{clock}\n\
         take() {{ mkdir \"$D/lock\" 2>/dev/null && \
         printf '%s\\n%s\\n%s\\n' \"$RUN\" $(( EPOCH + {ttl} )) {owner}\" since $STAMP\" > \"$D/lock/run\"; }}\n\
         if ! take; then\n  \
           rdlock\n  \
           if [ \"$EPOCH\" -gt \"${{ldl:-0}}\" ]; then\n    \
             log \"the lock of run $lrun expired: taken over\"\n    \
             rm -rf \"$D/lock\"\n  \
           fi\n  \
           take || {{ rdlock; echo \"{LOCKED} ${{lown:-another apply (no owner recorded)}}\"; exit 0; }}\n\
         fi\n\
         rd \"$D/pending/run\"; old=$v\n\
         if [ -n \"$old\" ] && [ -f \"$D/runs/$old/revert.sh\" ]; then \
         sh \"$D/runs/$old/revert.sh\" stale 'its controller never confirmed it' >/dev/null 2>&1; fi\n\
         [ ! -e \"$D/pending\" ] || rm -rf \"$D/pending\"\n\
         for x in \"$D\"/runs/*; do [ \"$x\" = \"$R\" ] || rm -rf \"$x\"; done\n",
        owner = sh_quote(spec.owner),
        clock = host_clock(spec.facts),
    );
    s.push_str(&cas_check(spec.changes));
    if let Some(t) = spec.confirm_timeout {
        let t = t.as_secs().max(1);
        let why = sh_quote(&format!("not confirmed within {t} s"));
        s.push_str(&format!(
            "mkdir \"$D/pending\" && echo \"$RUN\" > \"$D/pending/run\" \
             || {{ unlock; echo \"{FAIL} arming the dead-man\"; exit 1; }}\n\
             if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1 && \
             systemd-run --quiet --collect --unit=\"wgprov-deadman-$RUN\" --on-active={t}s --timer-property=AccuracySec=1s \
             /bin/sh \"$R/revert.sh\" deadman {why} >/dev/null 2>&1; then echo \"wgprov-deadman-$RUN\" > \"$D/pending/unit\"\n\
             else setsid sh -c \"sleep {t}; exec sh '$R/revert.sh' deadman \\\"\\$0\\\"\" {why} </dev/null >/dev/null 2>&1 &\n  \
             echo \"$! $BOOT\" > \"$D/pending/deadman\"\nfi\n"
        ));
    }
    s.push_str(&txn_sh(spec));
    s
}

/// The host's clock as the run starts (`EPOCH`, and `STAMP` in UTC): the facts' reading of it
/// plus the time since, measured on the controller (no `date` on the host); read on the host
/// when the facts carry no time.
fn host_clock(facts: &Facts) -> String {
    match facts.read_at.filter(|_| facts.now > 0) {
        Some(at) => {
            let now = facts.now + at.elapsed().as_secs();
            format!("EPOCH={now}; STAMP={}", utc_stamp(now))
        }
        None => "now=$(date -u '+%s %Y-%m-%dT%H:%M:%SZ'); EPOCH=${now%% *}; STAMP=${now#* }".into(),
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar, UTC).
fn utc_stamp(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    // days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// Refuses the change when a file it changes is no longer what the facts saw (another apply or
/// a person changed it since): the plan was made for the old content.
fn cas_check(changes: &[Change]) -> String {
    let mut s = String::new();
    let mut sums = String::new();
    let mut present = Vec::new();
    for c in changes.iter().filter(|c| c.action != Action::Unchanged) {
        let p = sh_quote(&c.desired.path);
        match &c.current {
            FileFact::Absent => s.push_str(&format!(
                "if [ -e {p} ]; then unlock; echo \"{FAIL} {} appeared since the facts were read: run again\"; exit 1; fi\n",
                c.desired.path
            )),
            FileFact::Present { content, .. } => {
                let sum = Sha256::digest(content.as_bytes());
                let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
                sums.push_str(&format!("{hex}  {}\n", c.desired.path));
                present.push(p);
            }
        }
    }
    if !present.is_empty() {
        s.push_str(&format!(
            "[ \"$(sha256sum -- {} 2>/dev/null)\" = {} ] || {{ unlock; echo \"{FAIL} a file changed since the facts were read (another apply, or by hand): run again\"; exit 1; }}\n",
            present.join(" "),
            sh_quote(sums.trim_end())
        ));
    }
    s
}

/// One of the run's scripts written into the run's directory by the shell's own `printf`.
fn write_run_file(path: &str, body: &str) -> String {
    format!(
        "printf '%s' {} > \"$R/{path}\" || {{ echo \"{FAIL} writing $R/{path}\"; exit 1; }}\n",
        sh_quote(body)
    )
}

/// The one exec that changes a host: writes the run's scripts, starts the change detached, and
/// waits for it (so that the controller reads its outcome), all inside one function body.
pub fn change_script(spec: &ChangeSpec) -> String {
    let mut s = format!(
        "# wgprov:change {run}\ntrap '' HUP PIPE\nmain() {{\n{PATH_PRELUDE}umask 077\nD={STATE_DIR}\nR={r}\n\
         if [ ! -d \"$D/runs\" ] && [ -d \"$D\" ]; then chmod 700 \"$D\" || {{ echo \"{FAIL} state directory $D\"; exit 1; }}; fi\n\
         {{ [ ! -e \"$R\" ] || rm -rf \"$R\"; }} && mkdir -p \"$R\" || {{ echo \"{FAIL} state directory $R\"; exit 1; }}\n",
        run = spec.run.as_str(),
        r = run_dir(spec.run),
    );
    let lib = lib_sh(
        spec.run,
        spec.iface,
        spec.facts,
        &spec.handlers.to_put_back(spec.changes),
    );
    s.push_str(&write_run_file(
        "revert.sh",
        &revert_sh(&lib, &start_sh(spec)),
    ));
    s.push_str(
        "setsid sh \"$R/revert.sh\" start </dev/null >\"$R/out\" 2>&1 &\npid=$!\n\
         b=; read -r b < /proc/sys/kernel/random/boot_id 2>/dev/null; echo \"$pid $b\" >> \"$R/pid\"\n\
         wait \"$pid\" 2>/dev/null; while kill -0 \"$pid\" 2>/dev/null; do sleep 0.05; done\n\
         l=; while IFS= read -r l; do printf '%s\\n' \"$l\"; l=; done < \"$R/out\"; [ -z \"$l\" ] || printf '%s\\n' \"$l\"\n}\nmain\n",
    );
    s
}

/// Confirms this run's pending change (over a fresh connection): claims the record, stops the
/// dead-man, releases the lock.
pub fn confirm_script(run: &RunId) -> String {
    let r = run_dir(run);
    format!(
        "# wgprov:confirm {run}\n{PATH_PRELUDE}set -u\n\
         if [ ! -f {lib} ]; then echo \"{NOT_PENDING} this host has no trace of run {run}\"; exit 0; fi\nWGPROV_LIB=1\n. {lib}\n\
         if claim confirmed; then disarm confirmed; unlock; log confirmed; echo '{CONFIRMED}'; \
         else echo \"{NOT_PENDING} $(tail -n 1 \"$D/log\" 2>/dev/null)\"; fi\n",
        run = run.as_str(),
        lib = sh_quote(&format!("{r}/revert.sh")),
    )
}

/// Puts this run's change back now (the controller's network-wide put-back).
pub fn revert_script(run: &RunId, why: &str) -> String {
    let r = run_dir(run);
    format!(
        "# wgprov:revert {run}\n{PATH_PRELUDE}\
         if [ ! -f {rv} ]; then echo \"{NOT_PENDING} this host has no trace of run {run}\"; exit 0; fi\n\
         exec sh {rv} controller {why}\n",
        run = run.as_str(),
        rv = sh_quote(&format!("{r}/revert.sh")),
        why = sh_quote(why),
    )
}

/// How a host's change ended, as far as the controller can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Changed and self-checked (pending confirmation under the guard).
    Changed,
    /// A step failed after files changed, and the host put itself back (`restored` false: the
    /// put-back failed too).
    RolledBack {
        /// The failed step and what it printed.
        error: String,
        /// Whether the put-back succeeded.
        restored: bool,
    },
    /// Failed before anything changed, or with `--no-rollback`.
    Failed {
        /// Why.
        error: String,
    },
    /// Another apply holds the host.
    Locked {
        /// Who, since when.
        owner: String,
    },
    /// The connection broke or timed out: the change goes on (detached) on the host, and puts
    /// itself back unless confirmed.
    Lost {
        /// Why.
        error: String,
    },
}

fn detail(r: &ScriptResult) -> String {
    let lines: Vec<&str> = r
        .log
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with("restored "))
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    tail.join("; ")
}

/// Reads a change's output.
pub fn parse_change(stdout: &str) -> ChangeOutcome {
    let r = script::parse_result(stdout);
    if let Some(owner) = stdout
        .lines()
        .find_map(|l| l.strip_prefix(LOCKED))
        .map(|o| o.trim().to_string())
    {
        return ChangeOutcome::Locked { owner };
    }
    let with_detail = |step: &str| {
        let d = detail(&r);
        if d.is_empty() {
            step.to_string()
        } else {
            format!("{step}: {d}")
        }
    };
    match (&r.failed_step, r.done) {
        (None, true) => ChangeOutcome::Changed,
        (Some(step), _) if stdout.contains(ROLLED_BACK) => ChangeOutcome::RolledBack {
            error: with_detail(step),
            restored: true,
        },
        (Some(step), _) if stdout.contains(ROLLBACK_FAILED) => ChangeOutcome::RolledBack {
            error: with_detail(step),
            restored: false,
        },
        (Some(step), _) => ChangeOutcome::Failed {
            error: with_detail(step),
        },
        (None, false) => ChangeOutcome::Lost {
            error: format!(
                "the change's output ended early ({}); it goes on on the host, and puts itself back unless confirmed",
                with_detail("no result")
            ),
        },
    }
}

/// Runs a host's change and reads its outcome.
pub async fn change<T: Transport>(t: &T, script: String, timeout: Duration) -> ChangeOutcome {
    match t.run_owned_within(script, timeout).await {
        Ok(out) => parse_change(&out.stdout_text()),
        Err(e) => ChangeOutcome::Lost {
            error: format!(
                "{e}; the change goes on on the host, and puts itself back unless confirmed"
            ),
        },
    }
}

/// How a confirmation or a put-back ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Done as asked (confirmed, or put back).
    Done,
    /// Nothing of this run was pending: already confirmed, failed and put back, or put back by
    /// its dead-man (the host's last log line says which).
    NotPending(String),
    /// The host answered but the step failed.
    Failed(String),
    /// The host could not be reached.
    Lost(String),
}

fn settled(out: Result<crate::transport::ExecOutput, TransportError>, marker: &str) -> Settled {
    match out {
        Err(e) => Settled::Lost(e.to_string()),
        Ok(o) => {
            let text = o.stdout_text();
            if text.contains(marker) {
                Settled::Done
            } else if let Some(l) = text.lines().find_map(|l| l.strip_prefix(NOT_PENDING)) {
                Settled::NotPending(l.trim().to_string())
            } else {
                let r = script::parse_result(&text);
                Settled::Failed(match &r.failed_step {
                    Some(s) => format!("{s}: {}", detail(&r)),
                    None => format!("exit {}: {}", o.status, o.stderr_text().trim()),
                })
            }
        }
    }
}

/// Confirms this run on a host (call it over a fresh connection).
pub async fn confirm<T: Transport>(t: &T, run: &RunId, timeout: Duration) -> Settled {
    settled(
        t.run_script_within(&confirm_script(run), timeout).await,
        CONFIRMED,
    )
}

/// Puts this run's change back on a host.
pub async fn revert<T: Transport>(t: &T, run: &RunId, why: &str, timeout: Duration) -> Settled {
    settled(
        t.run_script_within(&revert_script(run, why), timeout).await,
        REVERTED,
    )
}

/// `wgprov rollback`: puts the last backup back (refused while an apply holds the host).
pub fn rollback_script(iface: &InterfaceName, facts: &Facts) -> String {
    rollback_script_with(iface, facts, &HandlerPlan::everything())
}

/// [`rollback_script`] re-running `handlers` (a managed router's: its port-forward).
pub fn rollback_script_with(
    iface: &InterfaceName,
    facts: &Facts,
    handlers: &HandlerPlan,
) -> String {
    let mut s = script::prelude();
    s.push_str(&format!(
        "D={STATE_DIR}\nB=$D/backup\n\
         {READERS}\n\
         if [ -d \"$D/lock\" ]; then rdlock; if [ \"$(date +%s)\" -le \"${{ldl:-0}}\" ]; then \
         fail \"an apply holds this host ($lown)\"; fi; fi\n"
    ));
    s.push_str(&restore_body(iface, facts, "fail", handlers));
    s.push_str(&done_tail());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::script::tests::change as change_of;

    fn spec<'a>(
        run: &'a RunId,
        changes: &'a [Change],
        h: &'a HandlerPlan,
        f: &'a Facts,
        guard: Option<u64>,
    ) -> ChangeSpec<'a> {
        ChangeSpec {
            run,
            owner: "ci@runner pid 1",
            changes,
            handlers: h,
            iface: Box::leak(Box::new(InterfaceName::default())),
            facts: f,
            expect: None,
            rollback: true,
            confirm_timeout: guard.map(Duration::from_secs),
            lock_ttl: Duration::from_secs(120),
        }
    }

    #[test]
    fn the_change_locks_checks_arms_the_dead_man_then_writes() {
        let run = RunId::fixed("abc-1");
        let c = [change_of(Some("old\n"), "new\n")];
        let h = HandlerPlan {
            wireguard: Some(false),
            ..Default::default()
        };
        let f = Facts::default();
        let s = change_script(&spec(&run, &c, &h, &f, Some(90)));
        let at = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("`{needle}` missing from:\n{s}"))
        };
        // the whole exec is one function: a script cut short is a syntax error, never half run
        assert!(s.trim_end().ends_with("}\nmain"));
        assert!(at("setsid sh \"$R/revert.sh\" start") > at("> \"$R/revert.sh\""));
        let start = start_sh(&spec(&run, &c, &h, &f, Some(90)));
        assert!(s.contains(&sh_quote(&start)[1..start.len() / 2]));
        let at = |needle: &str| {
            start
                .find(needle)
                .unwrap_or_else(|| panic!("`{needle}` missing from:\n{start}"))
        };
        assert!(at("take()") < at("sha256sum --"));
        assert!(at("sha256sum --") < at("mkdir \"$D/pending\""));
        assert!(at("mkdir \"$D/pending\"") < at("STAGE=start"));
        assert!(start.contains("sleep 90; exec sh '$R/revert.sh' deadman"));
        assert!(start.contains("--on-active=90s"));
        // the old content's hash is what the host must still have
        let hex: String = Sha256::digest(b"old\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(s.contains(&hex));
        // guarded: the lock stays until confirmed or put back
        let txn = txn_sh(&spec(&run, &c, &h, &f, Some(90)));
        assert!(!txn.contains("\nunlock\n"), "{txn}");
        let txn = txn_sh(&spec(&run, &c, &h, &f, None));
        assert!(txn.contains("\nunlock\n"));
        let start = start_sh(&spec(&run, &c, &h, &f, None));
        assert!(
            !start.contains("pending/run\" &&"),
            "no dead-man without the guard"
        );
    }

    /// `sh -n` (the shell the hosts run) accepts every script a run sends or leaves on a host.
    #[test]
    fn every_script_is_valid_shell() {
        let run = RunId::fixed("abc-9");
        let c = [change_of(Some("old\n"), "new\n"), change_of(None, "x\n")];
        let h = HandlerPlan {
            wireguard: Some(true),
            sysctl: true,
            kubelet: true,
            node_ip: Some("10.100.0.2".into()),
            daemon_reload: true,
            reresolve: true,
            metrics: true,
            port_forward: Some(vec![51820, 4500]),
            router_hub: true,
            failover: true,
        };
        let f = Facts {
            systemd: true,
            units: ["kubelet".to_string(), "k3s-agent".to_string()].into(),
            tools: ["kubelet".to_string()].into(),
            ..Default::default()
        };
        let e = Expect::from_conf("K", "[Peer]\nPublicKey = P\nAllowedIPs = 10.0.0.0/8\n");
        for guard in [Some(90), None] {
            let mut sp = spec(&run, &c, &h, &f, guard);
            sp.expect = Some(&e);
            let wg0 = InterfaceName::default();
            let scripts = [
                ("change", change_script(&sp)),
                ("txn", txn_sh(&sp)),
                ("start", start_sh(&sp)),
                ("lib", lib_sh(&run, &wg0, &f, &h.to_put_back(&c))),
                (
                    "revert.sh",
                    revert_sh(&lib_sh(&run, &wg0, &f, &h.to_put_back(&c)), &start_sh(&sp)),
                ),
                ("confirm", confirm_script(&run)),
                ("revert", revert_script(&run, "it's broken: a <-> b")),
                ("rollback", rollback_script(&wg0, &f)),
            ];
            for (name, text) in scripts {
                if let Err(e) = crate::shell::sh_syntax(&text) {
                    panic!("{name} ({guard:?}): {e}\n{text}");
                }
            }
        }
    }

    #[test]
    fn write_step_renames_nothing_until_every_file_is_written_and_synced() {
        let c = [change_of(None, "new\n")];
        let s = backup_and_write(&c);
        let write = s.find("printf '%s' \"$wgc\" > '/etc/wireguard'").unwrap();
        let sync = s.find("sync '/etc/wireguard'\"/.wgprov-$RUN-0\"").unwrap();
        let mv = s.find("mv -f '/etc/wireguard'").unwrap();
        assert!(write < sync && sync < mv, "{s}");
        assert!(!s.contains("2>/dev/null; mv"));
    }

    #[test]
    fn outcomes_are_read_from_markers() {
        assert_eq!(
            parse_change(&format!("{LOCKED} ci@x pid 3 since 2026-11-25T10:00:00Z\n")),
            ChangeOutcome::Locked {
                owner: "ci@x pid 3 since 2026-11-25T10:00:00Z".into()
            }
        );
        let rolled = format!(
            "base64: write error: No space left on device\n{FAIL} write /etc/wireguard/wg0.conf\n{ROLLED_BACK}\n"
        );
        match parse_change(&rolled) {
            ChangeOutcome::RolledBack { error, restored } => {
                assert!(restored);
                assert!(error.contains("write /etc/wireguard/wg0.conf"), "{error}");
                assert!(error.contains("No space left"), "{error}");
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            parse_change(&format!(
                "{FAIL} a file changed since the facts were read\n"
            )),
            ChangeOutcome::Failed { .. }
        ));
        assert!(matches!(
            parse_change("half of the output"),
            ChangeOutcome::Lost { .. }
        ));
        assert!(matches!(
            parse_change(&format!("{}\n", script::DONE)),
            ChangeOutcome::Changed
        ));
    }

    /// The run's clock comes from the facts when they have one, stamped like `date -u`.
    #[test]
    fn the_hosts_clock_comes_from_the_facts_and_is_stamped_in_utc() {
        for (t, s) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(utc_stamp(t), s);
        }
        let mut f = Facts {
            now: 1_700_000_000,
            ..Default::default()
        };
        assert!(
            host_clock(&f).contains("$(date -u"),
            "no reading time: asked"
        );
        f.read_at = Some(std::time::Instant::now());
        assert_eq!(
            host_clock(&f),
            "EPOCH=1700000000; STAMP=2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn confirm_and_revert_act_only_on_their_own_run() {
        let run = RunId::fixed("feed-2");
        let c = confirm_script(&run);
        assert!(c.contains("WGPROV_LIB=1\n. '/var/lib/wgprov/runs/feed-2/revert.sh'"));
        assert!(c.contains("if claim confirmed; then disarm confirmed; unlock"));
        let r = revert_script(&run, "links broke: a-b");
        assert!(r.contains(
            "exec sh '/var/lib/wgprov/runs/feed-2/revert.sh' controller 'links broke: a-b'"
        ));
        let lib = lib_sh(
            &run,
            &InterfaceName::default(),
            &Facts::default(),
            &HandlerPlan::everything(),
        );
        assert!(lib.contains("restore() {") && lib.contains("restore_failed() {"));
        // a PID recorded before a reboot is never signalled after it
        assert!(
            lib.contains("if [ -f \"$R/$1/deadman\" ] && this_boot \"$R/$1/deadman\"; then kill")
        );
        let rv = revert_sh(&lib, "START\n");
        assert!(
            rv.contains("elif [ \"$b\" = \"$BOOT\" ]; then pid=$a; fi"),
            "{rv}"
        );
        assert!(
            rv.contains("if [ \"${1:-}\" = start ]; then\nSTART\nexit 0\nfi\n"),
            "{rv}"
        );
        assert!(
            rv.starts_with(PATH_PRELUDE) && rv.contains("[ -z \"${WGPROV_LIB:-}\" ] || return 0\n")
        );
        assert!(lib.contains("claim() { rd \"$D/pending/run\"; [ \"$v\" = \"$RUN\" ] && mv"));
    }
}
