//! The shell scripts of a host's transaction, built locally and sent in one exec each:
//! backup + atomic writes + handlers + read-back for the change, and restore + handlers for the
//! rollback. Contents travel inside the script on stdin (inside the encrypted channel, never
//! on a command line) and are written by the shell's own `printf`. Which handler runs is
//! decided here, from the facts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::desired::FileState;
use crate::diff::{Action, Change};
use crate::facts::Facts;
pub use crate::hosts::handlers::{Expect, HandlerPlan, plan_handlers};
use crate::hosts::handlers::{METRICS_FILE, METRICS_TIMER};
use crate::shell::{InterfaceName, PATH_PRELUDE, sh_quote};

/// Where backups of the last apply live.
pub const STATE_DIR: &str = "/var/lib/wgprov";
/// Marker of a failed step in a script's output.
pub const FAIL: &str = "@@WGPROV-FAIL@@";
/// Marker printed when a script completed.
pub const DONE: &str = "@@WGPROV-DONE@@";

/// The handlers as shell text. Their failures call the shell function `fail_fn` (`fail` in a
/// change, `rfail` while putting files back).
pub(crate) fn handlers_script(
    h: &HandlerPlan,
    iface: &InterfaceName,
    facts: &Facts,
    restore: bool,
    fail_fn: &str,
) -> String {
    let f = fail_fn;
    let mut s = String::new();
    if h.daemon_reload && facts.systemd {
        s.push_str(&format!(
            "out=$(systemctl daemon-reload 2>&1) || {{ echo \"$out\" >&2; {f} 'handler daemon_reload: systemctl daemon-reload'; }}\n"
        ));
    }
    if let Some(restart) = h.wireguard {
        s.push_str(&wireguard_handler(
            iface,
            facts.systemd,
            restart,
            restore,
            f,
        ));
    }
    if h.sysctl {
        s.push_str(&format!(
            "if [ -f /etc/sysctl.d/99-wgprov.conf ]; then out=$(sysctl -q -p /etc/sysctl.d/99-wgprov.conf 2>&1) || {{ echo \"$out\" >&2; {f} 'handler sysctl'; }}; fi\n",
        ));
    }
    if h.kubelet {
        s.push_str(&kubelet_handler(h.node_ip.as_deref(), iface, facts, f));
    }
    if h.reresolve && facts.systemd {
        s.push_str(&reresolve_handler(iface, f));
    }
    if h.metrics && facts.systemd {
        s.push_str(&metrics_handler(f));
    }
    if let Some(ports) = &h.port_forward {
        s.push_str(&crate::hosts::linux::handler(ports, facts.systemd, f));
    }
    if h.router_hub {
        s.push_str(&crate::hosts::openwrt_hub::handler(iface, f));
    }
    if h.failover && facts.systemd {
        s.push_str(&crate::hosts::failover::handler(f));
    }
    s
}

/// The wireguard handler: the interface restarted (through its unit where systemd runs), or
/// brought to the file's peers and key with `wg syncconf`. A restart without a config (a node
/// taken out, or put back to before it had one) takes the interface down and disables its unit.
fn wireguard_handler(
    iface: &InterfaceName,
    systemd: bool,
    restart: bool,
    restore: bool,
    f: &str,
) -> String {
    let q = sh_quote(iface);
    let unit = sh_quote(&format!("wg-quick@{iface}"));
    let conf = sh_quote(&format!("/etc/wireguard/{iface}.conf"));
    let what = if restore { " (restored config)" } else { "" };
    let enable = format!("systemctl enable -q {unit} 2>/dev/null || true\n");
    // without its config, `wg-quick down` cannot run: down from the copy a removed node keeps
    // (its PostDown rules run), else the link deleted
    let kept = sh_quote(&format!(
        "{}/{iface}.conf",
        crate::desired::removal::REMOVED_DIR
    ));
    // only an interface that exists is taken down (a first apply has none: no `wg-quick down`
    // to fail, no `ip link delete`); the kernel's own list of this namespace's links says,
    // read by the shell, and when it cannot be read the interface is taken down anyway
    let down = format!(
        "wgup=1; if [ -r /proc/net/dev ]; then wgup=; while read -r wgl; do case \"$wgl\" in {name}*) wgup=1 ;; esac; done < /proc/net/dev; fi\n\
         [ -z \"$wgup\" ] || wg-quick down {q} >/dev/null 2>&1 || {{ [ -f {kept} ] && wg-quick down {kept} >/dev/null 2>&1; }} || ip link delete dev {q} >/dev/null 2>&1 || true\n",
        name = sh_quote(&format!("{iface}:")),
    );
    if restart && systemd {
        format!(
            "if [ -f {conf} ]; then\n{enable}{up}else systemctl stop {unit} >/dev/null 2>&1\n{down}systemctl disable -q {unit} 2>/dev/null || true; fi\n",
            up = restart_via_unit(&q, &unit, what, f),
        )
    } else if restart {
        format!(
            "{down}if [ -f {conf} ]; then out=$(wg-quick up {q} 2>&1) || {{ echo \"$out\" >&2; {f} 'handler wireguard: wg-quick up{what}'; }}; fi\n",
        )
    } else if systemd {
        format!("{enable}{}", syncconf(&q, f))
    } else {
        syncconf(&q, f)
    }
}

/// Restarts the interface through its unit. Where systemd runs, the interface is its unit's:
/// one brought up by hand (unit inactive) makes the unit's `wg-quick up` fail ("already
/// exists"), and one brought up from a transient unit (the dead-man) dies with that unit when
/// wireguard-go runs it. `q` and `unit` are quoted; `what` ends the failed step's name.
fn restart_via_unit(q: &str, unit: &str, what: &str, f: &str) -> String {
    format!(
        "systemctl is-active -q {unit} || wg-quick down {q} >/dev/null 2>&1 || true\n\
         out=$(systemctl restart {unit} 2>&1) || {{ echo \"$out\" >&2; {f} 'handler wireguard: systemctl restart wg-quick{what}'; }}\n"
    )
}

/// `wg syncconf` from the stripped config, never fed empty input: the stripped text is checked
/// for a private key first, read as `wg` reads a line (blanks dropped, the key's name in any
/// case: `privatekey = …` is one too). `q` is the quoted interface name.
fn syncconf(q: &str, f: &str) -> String {
    format!(
        "t=$(mktemp) || {f} 'handler wireguard: mktemp'\n\
         wg-quick strip {q} > \"$t\" 2>/dev/null || {{ rm -f \"$t\"; {f} 'handler wireguard: wg-quick strip'; }}\n\
         if ! tr -d ' \\t\\r' < \"$t\" | grep -qi '^privatekey='; then rm -f \"$t\"; {f} 'handler wireguard: stripped config is empty'; fi\n\
         out=$(wg syncconf {q} \"$t\" 2>&1) || {{ rm -f \"$t\"; echo \"$out\" >&2; {f} 'handler wireguard: wg syncconf'; }}\n\
         rm -f \"$t\"\n"
    )
}

/// The kubelet handler: where systemd runs, restart each kubelet unit that is enabled or
/// running — first refusing (with `node_ip`) to restart onto a node IP the host does not have;
/// without systemd, a note.
fn kubelet_handler(node_ip: Option<&str>, iface: &InterfaceName, facts: &Facts, f: &str) -> String {
    let mut s = String::new();
    if facts.systemd && !facts.units.is_empty() {
        if let Some(ip) = node_ip {
            // the kubelet refuses a node IP that is not on an interface, and k3s/rke2 crash-loop
            // on it: never restart into that
            s.push_str(&format!(
                "ip -4 -o addr show 2>/dev/null | grep -qF {needle} || {f} {why}\n",
                needle = sh_quote(&format!(" inet {ip}/")),
                why = sh_quote(&format!(
                    "handler kubelet: the node IP {ip} is not an address of this host (is {iface} up?): not restarting the kubelet"
                )),
            ));
        }
        for u in &facts.units {
            let uq = sh_quote(&format!("{u}.service"));
            s.push_str(&format!(
                "if systemctl is-enabled -q {uq} 2>/dev/null || systemctl is-active -q {uq}; then out=$(systemctl restart {uq} 2>&1) || {{ echo \"$out\" >&2; {f} {why}; }}; fi\n",
                why = sh_quote(&format!("handler kubelet: systemctl restart {u}")),
            ));
        }
    } else if facts.tools.contains("kubelet") {
        s.push_str("echo 'kubelet is installed but systemd is not running: restart kubelet yourself' >&2\n");
    }
    s
}

/// The reresolve handler (systemd only): enable the endpoint re-resolution timer, or stop it
/// when its unit file is gone.
fn reresolve_handler(iface: &InterfaceName, f: &str) -> String {
    let timer = format!("wgprov-reresolve-{iface}.timer");
    format!(
        "if [ -f {file} ]; then out=$(systemctl enable -q --now {t} 2>&1) || {{ echo \"$out\" >&2; {f} {why}; }}; \
         else systemctl stop {t} {svc} >/dev/null 2>&1; systemctl reset-failed {t} {svc} >/dev/null 2>&1; rm -f {wants}; fi\n",
        file = sh_quote(&format!("/etc/systemd/system/{timer}")),
        t = sh_quote(&timer),
        svc = sh_quote(&format!("wgprov-reresolve-{iface}.service")),
        wants = sh_quote(&format!("/etc/systemd/system/timers.target.wants/{timer}")),
        why = sh_quote(&format!(
            "handler reresolve: systemctl enable --now {timer}"
        )),
    )
}

/// The metrics handler (systemd only): enable the timer writing node_exporter's metrics file,
/// or, its unit file gone, stop it and delete the file it wrote (node_exporter would otherwise
/// go on exporting its last values).
fn metrics_handler(f: &str) -> String {
    format!(
        "if [ -f {file} ]; then out=$(systemctl enable -q --now {t} 2>&1) || {{ echo \"$out\" >&2; {f} {why}; }}; \
         else systemctl stop {t} wgprov-metrics.service >/dev/null 2>&1; systemctl reset-failed {t} wgprov-metrics.service >/dev/null 2>&1; rm -f {wants} {prom}; fi\n",
        file = sh_quote(&format!("/etc/systemd/system/{METRICS_TIMER}")),
        t = sh_quote(METRICS_TIMER),
        wants = sh_quote(&format!(
            "/etc/systemd/system/timers.target.wants/{METRICS_TIMER}"
        )),
        prom = sh_quote(METRICS_FILE),
        why = sh_quote(&format!(
            "handler metrics: systemctl enable --now {METRICS_TIMER}"
        )),
    )
}

/// The start of every remote script: a known PATH, `set -u`, private files, and `fail`.
pub(crate) fn prelude() -> String {
    format!("{PATH_PRELUDE}set -u\numask 077\nfail() {{ echo \"{FAIL} $1\"; exit 1; }}\n")
}

/// Marks the end of a script that ran to completion.
pub(crate) fn done_tail() -> String {
    format!("echo '{DONE}'\n")
}

/// Backs up every file the change touches (see [`backup`]), and writes the files atomically: every
/// new content first into a temp file beside its target (created with its mode, never over an
/// existing file), all of them flushed to disk with one `sync`, and only then each renamed into
/// place; nothing is renamed unless every file was written. Removals come last. Expects `fail`,
/// `$B` and `$RUN` to be defined.
///
/// Every step is a shell builtin but `mkdir`, `cp`, `sync` and one `mv` per file: a first apply
/// forks a handful of processes for its files, not five per file.
pub(crate) fn backup_and_write(changes: &[Change]) -> String {
    let changed: Vec<&Change> = changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    let mut s = backup(&changed);
    let written: Vec<(usize, &&Change)> = changed
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.desired.state, FileState::Present { .. }))
        .collect();
    let temps: Vec<String> = written.iter().map(|(i, c)| temp_of(c, *i)).collect();
    let cleanup = if temps.is_empty() {
        String::new()
    } else {
        format!("rm -f {}; ", temps.join(" "))
    };
    for ((_, c), t) in written.iter().zip(&temps) {
        s.push_str(&write_temp(c, t, &cleanup));
    }
    if !temps.is_empty() {
        s.push_str(&format!(
            "sync {} || {{ {cleanup}fail 'write: sync'; }}\n",
            temps.join(" ")
        ));
    }
    s.push_str(WRITTEN);
    for ((_, c), t) in written.iter().zip(&temps) {
        let path = &c.desired.path;
        s.push_str(&format!(
            "mv -f {t} {p} || {{ {cleanup}fail 'write {path}'; }}\n",
            p = sh_quote(path)
        ));
    }
    for c in changed
        .iter()
        .filter(|c| matches!(c.desired.state, FileState::Absent))
    {
        let path = &c.desired.path;
        s.push_str(&format!(
            "rm -f {p} || fail 'remove {path}'\n",
            p = sh_quote(path)
        ));
    }
    s
}

/// The backup stage: each file as it is (or `absent`) into a backup directory, with a manifest.
/// The first backup is built in place as `$B`; a later one is built as `$B.new` and swapped in
/// only once complete, so that the previous backup is never lost to a half-made one. (A first
/// backup cut short is harmless: no file has been written yet, and every copy it holds is
/// exact.)
fn backup(changed: &[&Change]) -> String {
    let mut s = String::new();
    s.push_str(
        "if [ -d \"$B\" ]; then BK=$B.new; { [ ! -e \"$BK\" ] || rm -rf \"$BK\"; } && mkdir \"$BK\" || fail backup; \
         else BK=$B; mkdir \"$BK\" || fail backup; fi\n",
    );
    for (i, c) in changed.iter().enumerate() {
        let p = sh_quote(&c.desired.path);
        s.push_str(&format!(
            "if [ -e {p} ]; then cp -p {p} \"$BK/{i}\" && echo '{i} present {path}' >> \"$BK/manifest\" || fail 'backup {path}'; else echo '{i} absent {path}' >> \"$BK/manifest\" || fail backup; fi\n",
            path = c.desired.path
        ));
    }
    s.push_str(
        "if [ \"$BK\" != \"$B\" ]; then\n  [ ! -e \"$B.old\" ] || rm -rf \"$B.old\"; mv \"$B\" \"$B.old\" || fail backup\n  \
         mv \"$B.new\" \"$B\" || fail backup\n  [ ! -e \"$B.old\" ] || rm -rf \"$B.old\" || fail backup\nfi\n",
    );
    s
}

/// The temp file a change writes before renaming it into place: beside its target (a rename
/// within one file system), named after the run.
fn temp_of(c: &Change, i: usize) -> String {
    format!("{}\"/.wgprov-$RUN-{i}\"", sh_quote(c.desired.path.parent()))
}

/// One file's new content into its temp file `t` (quoted), its directory made first with the
/// mode wgprov gives it. The content is written by the shell itself (`printf`, a builtin) under
/// a umask that gives the file its mode, with `set -C` so that an existing file is never
/// written through (a failed write is tried again through `cat` for its error message); content the shell cannot hold (a NUL byte) or a mode beyond rw goes through
/// `base64 -d` and `chmod`.
fn write_temp(c: &Change, t: &str, cleanup: &str) -> String {
    let FileState::Present { content, mode } = &c.desired.state else {
        return String::new();
    };
    let path = &c.desired.path;
    let dir = path.parent();
    let dq = sh_quote(dir);
    // directories wgprov creates get their mode: its own state and notes are readable by root
    // only where they hold secrets
    let dmode = if dir.starts_with("/etc/wireguard") || dir.starts_with(STATE_DIR) {
        "700"
    } else {
        "755"
    };
    let fail = format!("{{ {cleanup}fail 'write {path}'; }}");
    let mut s = format!("[ -d {dq} ] || {{ mkdir -p {dq} && chmod {dmode} {dq}; }} || {fail}\n");
    if !content.contains('\0') && mode & !0o666 == 0 {
        // the shell's printf says only "I/O error" when a write fails: the failed write is
        // tried once more through `cat`, which names the cause (No space left on device)
        s.push_str(&format!(
            "wgc={body}\numask {umask:03o}; set -C; printf '%s' \"$wgc\" > {t} || {{ set +C; umask 077; rm -f {t}; \
             printf '%s' \"$wgc\" | cat > {t}; {cleanup}fail 'write {path}'; }}\nset +C; umask 077; wgc=\n",
            umask = 0o777 & !mode,
            body = sh_quote(content),
        ));
    } else {
        s.push_str(&format!(
            "set -C; base64 -d > {t} <<'@@WGPROV-EOF@@' || {{ set +C; {cleanup}fail 'write {path}'; }}\n{b64}\n@@WGPROV-EOF@@\n\
             set +C; chmod {mode:o} {t} || {fail}\n",
            b64 = wrap(&STANDARD.encode(content)),
        ));
    }
    s
}

/// Marks, in a change script, the moment the backup is complete and files start to change:
/// from here on a failure puts the backup back.
const WRITTEN: &str = "STAGE=written; [ -z \"${R:-}\" ] || echo written >> \"$R/pid\"\n";

/// Puts back every file of the backup in `$B` byte for byte (mode and times too), then re-runs
/// every handler with the restored files. Failures call `fail_fn`.
pub(crate) fn restore_body(
    iface: &InterfaceName,
    facts: &Facts,
    fail_fn: &str,
    h: &HandlerPlan,
) -> String {
    then_handlers(put_files_body(fail_fn), iface, facts, fail_fn, h)
}

/// `files` (shell that puts the backup's files back, counting them in `n`), then the handlers
/// of `h`, re-run only when a file was put back.
pub(crate) fn then_handlers(
    files: String,
    iface: &InterfaceName,
    facts: &Facts,
    fail_fn: &str,
    h: &HandlerPlan,
) -> String {
    let mut s = files;
    s.push_str("if [ \"$n\" -gt 0 ]; then\n");
    s.push_str(&handlers_script(h, iface, facts, true, fail_fn));
    s.push_str("fi\n");
    s
}

/// Puts the backup's files back (the manifest's order), counting in `n` those that were not
/// as they were: a file already as it was is left alone, so a full disk cannot fail it.
pub(crate) fn put_files_body(fail_fn: &str) -> String {
    let f = fail_fn;
    format!(
        "[ -f \"$B/manifest\" ] || {f} 'no backup to restore in {STATE_DIR}'\n\
         same() {{ cmp -s \"$1\" \"$2\" && [ \"$(stat -c %a \"$1\")\" = \"$(stat -c %a \"$2\")\" ]; }}\n\
         n=0\n\
         while read -r i state path; do\n\
           if [ \"$state\" = present ]; then\n\
             if ! same \"$B/$i\" \"$path\"; then cp -p \"$B/$i\" \"$path.wgprov-restore\" && mv -f \"$path.wgprov-restore\" \"$path\" || {f} \"restore $path\"; n=$((n+1)); fi\n\
           elif [ -e \"$path\" ]; then rm -f \"$path\" || {f} \"restore $path\"; n=$((n+1)); fi\n\
           echo \"restored $path\"\n\
         done < \"$B/manifest\"\n"
    )
}

fn wrap(b64: &str) -> String {
    let mut out = String::with_capacity(b64.len() + b64.len() / 76 + 1);
    for (i, ch) in b64.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(std::str::from_utf8(ch).expect("base64 is ASCII"));
    }
    out
}

/// What a transaction script reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptResult {
    /// The failed step, if one failed.
    pub failed_step: Option<String>,
    /// True when the script ran to its end.
    pub done: bool,
    /// Every other line it printed (what failed commands said).
    pub log: Vec<String>,
}

/// Reads a transaction's output.
pub fn parse_result(stdout: &str) -> ScriptResult {
    let mut r = ScriptResult::default();
    for l in stdout.lines() {
        if let Some(step) = l.strip_prefix(FAIL) {
            r.failed_step = Some(step.trim().to_string());
        } else if l == DONE {
            r.done = true;
        } else if !l.starts_with("@@WGPROV-") {
            r.log.push(l.to_string());
        }
    }
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::desired::DesiredFile;
    use crate::facts::FileFact;
    use crate::facts::gather::WgState;
    use crate::shell::Handler;

    /// A change of `/etc/wireguard/wg0.conf` from `old` to `new`.
    pub(crate) fn change(old: Option<&str>, new: &str) -> Change {
        Change {
            desired: DesiredFile {
                role: "wireguard".into(),
                path: crate::shell::RemotePath::new("/etc/wireguard/wg0.conf").unwrap(),
                state: FileState::Present {
                    content: new.into(),
                    mode: 0o600,
                },
                notify: vec![Handler::Wireguard],
            },
            current: old.map_or(FileFact::Absent, |c| FileFact::Present {
                mode: 0o600,
                content: c.into(),
            }),
            action: if old == Some(new) {
                Action::Unchanged
            } else if old.is_some() {
                Action::Updated
            } else {
                Action::Created
            },
        }
    }

    fn up() -> Facts {
        Facts {
            wg: Some(WgState {
                public_key: "K".into(),
                listen_port: 51820,
                peers: vec![],
            }),
            ..Default::default()
        }
    }

    /// The metrics timer is enabled when its unit files are written, and stopped (its wants
    /// link and the metrics file removed) when they go; only where systemd runs.
    #[test]
    fn the_metrics_timer_is_enabled_when_written_and_stopped_with_its_file_when_removed() {
        let timer = |old: Option<&str>, new: Option<&str>| {
            let mut c = change(old, new.unwrap_or(""));
            c.desired.role = "metrics".into();
            c.desired.path =
                crate::shell::RemotePath::new("/etc/systemd/system/wgprov-metrics.timer").unwrap();
            c.desired.notify = vec![Handler::Metrics];
            if new.is_none() {
                c.desired.state = FileState::Absent;
                c.action = Action::Removed;
            }
            c
        };
        let mut f = up();
        f.systemd = true;
        let iface = crate::shell::InterfaceName::default();
        let p = "/etc/wireguard/wg0.conf";
        for c in [
            timer(None, Some("[Timer]\n")),
            timer(Some("[Timer]\n"), None),
        ] {
            let h = plan_handlers(std::slice::from_ref(&c), &f, p);
            assert!(h.metrics && h.daemon_reload, "{h:?}");
            assert_eq!(h.wireguard, None);
            assert!(h.to_put_back(std::slice::from_ref(&c)).metrics);
            let s = handlers_script(&h, &iface, &f, false, "fail");
            crate::shell::sh_syntax(&s).unwrap();
            assert!(
                s.contains("systemctl enable -q --now 'wgprov-metrics.timer'")
                    || s.contains("systemctl enable -q --now wgprov-metrics.timer"),
                "{s}"
            );
            assert!(
                s.contains("/var/lib/prometheus/node-exporter/wgprov.prom")
                    && s.contains("systemctl stop"),
                "{s}"
            );
            assert!(
                h.describe(&iface, &f)
                    .iter()
                    .any(|d| d.starts_with("metrics: "))
            );
            // without systemd there is no timer to run
            let s = handlers_script(&h, &iface, &up(), false, "fail");
            assert!(!s.contains("wgprov-metrics"), "{s}");
        }
        // an unchanged timer runs nothing
        let same = timer(Some("[Timer]\n"), Some("[Timer]\n"));
        assert!(!plan_handlers(&[same], &f, p).metrics);
    }

    #[test]
    fn peers_only_means_syncconf_interface_changes_mean_restart() {
        let base = "[Interface]\nAddress = 10.100.0.1/16\nListenPort = 51820\nPrivateKey = A\n";
        let peers = format!("{base}\n[Peer]\nPublicKey = P\nAllowedIPs = 10.100.0.2/32\n");
        let p = "/etc/wireguard/wg0.conf";
        assert_eq!(
            plan_handlers(&[change(Some(base), &peers)], &up(), p).wireguard,
            Some(false)
        );
        let key = base.replace("PrivateKey = A", "PrivateKey = B");
        assert_eq!(
            plan_handlers(&[change(Some(base), &key)], &up(), p).wireguard,
            Some(false)
        );
        let port = base.replace("51820", "51821");
        assert_eq!(
            plan_handlers(&[change(Some(base), &port)], &up(), p).wireguard,
            Some(true)
        );
        let mtu = format!("{base}MTU = 1380\n");
        assert_eq!(
            plan_handlers(&[change(Some(base), &mtu)], &up(), p).wireguard,
            Some(true)
        );
        // interface down: restart; unchanged and up: nothing; unchanged and down: bring it up
        assert_eq!(
            plan_handlers(&[change(Some(base), &peers)], &Facts::default(), p).wireguard,
            Some(true)
        );
        assert_eq!(
            plan_handlers(&[change(Some(base), base)], &up(), p),
            HandlerPlan::default()
        );
        assert_eq!(
            plan_handlers(&[change(Some(base), base)], &Facts::default(), p).wireguard,
            Some(true)
        );
    }

    #[test]
    fn a_peers_only_change_is_put_back_without_a_restart() {
        let c = change(
            Some("[Interface]\nPrivateKey = A\n"),
            "[Interface]\nPrivateKey = A\n\n[Peer]\nPublicKey = P\n",
        );
        let fwd = plan_handlers(std::slice::from_ref(&c), &up(), "/etc/wireguard/wg0.conf");
        assert_eq!(fwd.wireguard, Some(false));
        let back = fwd.to_put_back(std::slice::from_ref(&c));
        assert_eq!(
            back,
            HandlerPlan {
                wireguard: Some(false),
                ..Default::default()
            }
        );
        let s = restore_body(
            &crate::shell::InterfaceName::default(),
            &up(),
            "rfail",
            &back,
        );
        assert!(
            s.contains("wg syncconf") && !s.contains("wg-quick down"),
            "{s}"
        );
        let all = restore_body(
            &crate::shell::InterfaceName::default(),
            &up(),
            "rfail",
            &HandlerPlan::everything(),
        );
        assert!(
            all.contains("wg-quick down") && all.contains("sysctl -q -p"),
            "{all}"
        );
    }

    #[test]
    fn where_systemd_runs_the_interface_is_restarted_and_put_back_through_its_unit() {
        let mut f = up();
        f.systemd = true;
        let iface = crate::shell::InterfaceName::default();
        let h = HandlerPlan {
            wireguard: Some(true),
            ..HandlerPlan::default()
        };
        for restore in [false, true] {
            let s = handlers_script(&h, &iface, &f, restore, "fail");
            // an interface up by hand is taken down first, or the unit's `wg-quick up` fails
            assert!(
                s.contains("systemctl is-active -q 'wg-quick@wg0' || wg-quick down 'wg0'")
                    || s.contains("systemctl is-active -q wg-quick@wg0 || wg-quick down wg0"),
                "{s}"
            );
            assert!(s.contains("systemctl restart"), "{s}");
            assert!(!s.contains("out=$(wg-quick up"), "{s}");
        }
        let back = handlers_script(&h, &iface, &f, true, "rfail");
        assert!(back.contains("systemctl disable -q"), "{back}");
    }

    #[test]
    fn the_kubelet_is_restarted_after_reload_and_interface_only_onto_a_node_ip_the_host_has() {
        let mut f = up();
        f.systemd = true;
        f.units = ["k3s".to_string(), "k3s-agent".to_string()].into();
        let iface = crate::shell::InterfaceName::default();
        let h = HandlerPlan {
            wireguard: Some(true),
            kubelet: true,
            node_ip: Some("10.100.0.2".into()),
            daemon_reload: true,
            ..HandlerPlan::default()
        };
        let s = handlers_script(&h, &iface, &f, false, "fail");
        let at = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in\n{s}"))
        };
        let reload = at("systemctl daemon-reload");
        let wg = at("systemctl restart 'wg-quick@wg0'");
        let check = at("ip -4 -o addr show 2>/dev/null | grep -qF ' inet 10.100.0.2/' || fail");
        let k3s = at("systemctl restart 'k3s.service'");
        let agent = at("systemctl restart 'k3s-agent.service'");
        assert!(
            reload < wg && wg < check && check < k3s && k3s < agent,
            "{s}"
        );
        // only a unit that is enabled or running is restarted: an agent unit installed on a
        // server is never started by wgprov
        assert!(
            s.contains("if systemctl is-enabled -q 'k3s-agent.service' 2>/dev/null || systemctl is-active -q 'k3s-agent.service'; then"),
            "{s}"
        );
        // putting back never refuses on the node IP
        let back = h.to_put_back(&[]);
        assert_eq!(back.node_ip, None);
        let b = handlers_script(
            &HandlerPlan {
                kubelet: true,
                ..back
            },
            &iface,
            &f,
            true,
            "rfail",
        );
        assert!(
            !b.contains("grep -qF") && b.contains("restart 'k3s.service'"),
            "{b}"
        );
        // without systemd: nothing to restart, a note
        let mut plain = f.clone();
        plain.systemd = false;
        plain.tools = ["kubelet".to_string()].into();
        let n = handlers_script(&h, &iface, &plain, false, "fail");
        assert!(
            !n.contains("daemon-reload") && n.contains("restart kubelet yourself"),
            "{n}"
        );
        let d = h.describe(&iface, &f);
        assert_eq!(
            d,
            vec![
                "daemon_reload: systemctl daemon-reload".to_string(),
                "wireguard: systemctl restart wg-quick@wg0".to_string(),
                "kubelet: check that 10.100.0.2 is an address of the host, then restart k3s, k3s-agent (those enabled or running)".to_string(),
            ]
        );
    }

    #[test]
    fn drift_is_repaired_by_syncconf_or_a_restart_when_down() {
        let mut h = HandlerPlan::default();
        h.repair(&[]);
        assert_eq!(h, HandlerPlan::default());
        let peer = crate::hosts::drift::Drift {
            what: "peer".into(),
            restart: false,
        };
        h.repair(std::slice::from_ref(&peer));
        assert_eq!(h.wireguard, Some(false));
        h.repair(&[crate::hosts::drift::Drift {
            what: "down".into(),
            restart: true,
        }]);
        assert_eq!(h.wireguard, Some(true));
        h.repair(&[peer]);
        assert_eq!(h.wireguard, Some(true), "a restart is never downgraded");
    }

    #[test]
    fn transaction_backs_up_before_writing_and_never_feeds_syncconf_empty_input() {
        let c = change(
            Some("[Interface]\nPrivateKey = A\n"),
            "[Interface]\nPrivateKey = A\n\n[Peer]\nPublicKey = P\n",
        );
        let h = HandlerPlan {
            wireguard: Some(false),
            ..Default::default()
        };
        let s = backup_and_write(std::slice::from_ref(&c))
            + &handlers_script(
                &h,
                &crate::shell::InterfaceName::default(),
                &up(),
                false,
                "fail",
            );
        let backup = s.find("cp -p '/etc/wireguard/wg0.conf'").unwrap();
        let write = s
            .find("mv -f '/etc/wireguard'\"/.wgprov-$RUN-0\" '/etc/wireguard/wg0.conf'")
            .unwrap();
        let sync = s.find("wg syncconf").unwrap();
        assert!(backup < write && write < sync);
        assert!(s.contains("tr -d ' \\t\\r' < \"$t\" | grep -qi '^privatekey='"));
        let r = parse_result(&format!("x\n{FAIL} handler wireguard: wg-quick up\n"));
        assert_eq!(
            r.failed_step.as_deref(),
            Some("handler wireguard: wg-quick up")
        );
        assert!(!r.done);
    }

    /// The write stage run under `sh` in a scratch directory: every byte as planned (quotes,
    /// backslashes, `%`, no final newline, a NUL), every mode as planned, the old file backed
    /// up; and a temp file that is in the way stops the change before anything is renamed.
    #[test]
    fn the_write_stage_writes_exact_bytes_and_modes_and_renames_nothing_when_a_write_fails() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let file = |rel: &str, content: &str, mode: u32, old: Option<&str>| {
            let path = format!("{root}/{rel}");
            if let Some(o) = old {
                std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
                std::fs::write(&path, o).unwrap();
            }
            let mut c = change(old, content);
            c.desired.path = crate::shell::RemotePath::new(&path).unwrap();
            c.desired.state = FileState::Present {
                content: content.into(),
                mode,
            };
            c
        };
        let odd = "it's \\ %s %% $HOME `x` \"q\"\n\tno newline at the end: ü";
        let changes = [
            file(
                "etc/wireguard/wg0.conf",
                "[Interface]\nPrivateKey = A\n",
                0o600,
                Some("old\n"),
            ),
            file("etc/default/kubelet", odd, 0o644, None),
            file("etc/wgprov/run.sh", "#!/bin/sh\necho hi\n", 0o755, None),
            file("etc/wgprov/nul", "a\0b", 0o644, None),
        ];
        let run = |changes: &[Change]| {
            let script = format!(
                "set -u\numask 077\nRUN=feed-1\nB={root}/backup\nfail() {{ echo \"{FAIL} $1\"; exit 1; }}\n{}echo '{DONE}'\n",
                backup_and_write(changes)
            );
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let out = run(&changes);
        assert!(out.contains(DONE), "{out}");
        for c in &changes {
            let FileState::Present { content, mode } = &c.desired.state else {
                unreachable!()
            };
            let p = c.desired.path.as_str();
            assert_eq!(std::fs::read(p).unwrap(), content.as_bytes(), "{p}");
            let got = std::fs::metadata(p).unwrap().mode() & 0o7777;
            assert_eq!(got, *mode, "{p}");
        }
        assert_eq!(
            std::fs::read_to_string(format!("{root}/backup/0")).unwrap(),
            "old\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(format!("{root}/etc/wgprov"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".wgprov"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // a file in the way of the second temp: nothing is renamed, the first temp is gone
        let again = [
            file(
                "etc/wireguard/wg0.conf",
                "new again\n",
                0o600,
                Some("old\n"),
            ),
            file("etc/default/kubelet", "x\n", 0o644, Some(odd)),
        ];
        std::fs::write(format!("{root}/etc/default/.wgprov-feed-1-1"), "in the way").unwrap();
        let out = run(&again);
        assert!(
            out.contains(&format!("{FAIL} write {root}/etc/default/kubelet")),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{root}/etc/wireguard/wg0.conf")).unwrap(),
            "old\n"
        );
        assert!(!std::path::Path::new(&format!("{root}/etc/wireguard/.wgprov-feed-1-0")).exists());
    }

    /// A restart takes down only an interface this network namespace has (the kernel's list in
    /// /proc/net/dev, read by the shell): `lo` is taken down (by the stubs), an interface that
    /// does not exist is not, and nothing runs for it but the shell.
    #[test]
    fn a_restart_takes_down_only_an_interface_that_exists() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        for name in ["wg-quick", "ip"] {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", calls.display()),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let h = HandlerPlan {
            wireguard: Some(true),
            ..Default::default()
        };
        let run = |iface: &str| {
            let _ = std::fs::remove_file(&calls);
            let iface = InterfaceName::new(iface).unwrap();
            let out = run_handlers(dir.path(), &h, &iface, &Facts::default());
            assert!(out.contains(DONE), "{out}");
            std::fs::read_to_string(&calls).unwrap_or_default()
        };
        assert_eq!(run("lo"), "wg-quick down lo\n");
        assert_eq!(run("wgprovnone9"), "");
    }

    /// Runs the `wg syncconf` handler under `sh` with `wg-quick strip` printing `stripped` and
    /// `wg syncconf` copying what it is fed: what it fed syncconf, and what the script printed.
    fn syncconf_with(stripped: &str) -> (Option<String>, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (conf, fed) = (dir.path().join("stripped"), dir.path().join("fed"));
        std::fs::write(&conf, stripped).unwrap();
        let stubs = [
            (
                "wg-quick",
                format!("[ \"$1\" = strip ] && cat '{}'", conf.display()),
            ),
            (
                "wg",
                format!("[ \"$1\" = syncconf ] && cp \"$3\" '{}'", fed.display()),
            ),
        ];
        for (name, body) in stubs {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let h = HandlerPlan {
            wireguard: Some(false),
            ..Default::default()
        };
        let stdout = run_handlers(dir.path(), &h, &InterfaceName::default(), &up());
        (std::fs::read_to_string(&fed).ok(), stdout)
    }

    /// Runs the handlers of `h` under `sh`, with the stubs in `stubs` first on PATH: what the
    /// script printed.
    fn run_handlers(
        stubs: &std::path::Path,
        h: &HandlerPlan,
        iface: &InterfaceName,
        facts: &Facts,
    ) -> String {
        let script = format!(
            "fail() {{ echo \"{FAIL} $1\"; exit 1; }}\n{}echo '{DONE}'\n",
            handlers_script(h, iface, facts, false, "fail")
        );
        let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PATH", path)
            .output()
            .expect("sh runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `wg` reads a key line in any case and spacing, and wgprov keeps the operator's spelling
    /// of an existing wg0.conf: a `privatekey = …` line is the private key, and a peers-only
    /// change of such a config goes through `wg syncconf`.
    #[test]
    fn a_lowercase_privatekey_line_does_not_make_a_peers_only_change_fail() {
        let old = "[Interface]\nAddress = 10.100.0.2/16\nprivatekey = A\n";
        let new = format!("{old}\n[Peer]\nPublicKey = P\nAllowedIPs = 10.100.0.3/32\n");
        let c = change(Some(old), &new);
        let h = plan_handlers(std::slice::from_ref(&c), &up(), "/etc/wireguard/wg0.conf");
        assert_eq!(h.wireguard, Some(false), "a peers-only change: syncconf");
        // what `wg-quick strip` prints of such files: the lines as written, leading blanks gone
        for key_line in [
            "privatekey = A",
            "PRIVATEKEY=A",
            "PrivateKey = A",
            "Private Key\t= A # the node's own",
        ] {
            let stripped = format!("[Interface]\n{key_line}\n\n[Peer]\npublickey = P\n");
            let (fed, out) = syncconf_with(&stripped);
            assert_eq!(fed.as_deref(), Some(stripped.as_str()), "{key_line}: {out}");
            assert!(
                out.contains(DONE) && !out.contains(FAIL),
                "{key_line}: {out}"
            );
        }
        // a stripped config without a private key is still never fed to syncconf
        for stripped in [
            "",
            "[Interface]\nListenPort = 51820\n",
            "[Interface]\n# PrivateKey = A\n",
            "[Interface]\nPrivateKeys = A\nPublicKey = B\n",
        ] {
            let (fed, out) = syncconf_with(stripped);
            assert_eq!(fed, None, "{stripped:?}: {out}");
            assert!(
                out.contains(&format!(
                    "{FAIL} handler wireguard: stripped config is empty"
                )),
                "{stripped:?}: {out}"
            );
        }
    }
}
