//! `lab exec` and `lab status`: entering a node, a router, the controller or the internet, and
//! a summary of what exists.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use super::net::{alive, pids_in};
use super::{LabState, check_prefix, existing_namespaces, lab_dir, lab_err, read_state, systemd};
use crate::error::{Error, Result};

/// True when the node's sshd (a child of its PID 1) is running.
fn sshd_alive(ns: &str, init: u32) -> bool {
    pids_in(ns).into_iter().any(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let comm_ok = stat.contains("(sshd)");
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        comm_ok && ppid == Some(init) && alive(pid as u32)
    })
}

/// Where `lab exec NAME` runs.
enum Target {
    /// Enter the namespaces of this process (a node or the controller).
    Inside(u32),
    /// Only a network namespace (a router, the internet).
    Netns(String),
    /// A systemd node: enter its booted machine (the namespaces of its PID 1).
    Machine(PathBuf),
}

/// Where `name` of the lab runs commands; a usage error listing every name when none.
fn target(st: &LabState, name: &str) -> Result<Target> {
    if st.boot_loops.contains_key(name) {
        return Ok(Target::Machine(
            lab_dir(&st.prefix).join("nodes").join(name),
        ));
    }
    if let Some(pid) = st.inner.get(name) {
        return Ok(Target::Inside(*pid));
    }
    if name == "internet" {
        return Ok(Target::Netns(st.inet_ns.clone()));
    }
    if let Some(site) = name.strip_suffix("-router")
        && let Some(ns) = st.routers.get(site)
    {
        return Ok(Target::Netns(ns.clone()));
    }
    let mut names: Vec<String> = st.nodes.keys().cloned().collect();
    names.extend(st.routers.keys().map(|s| format!("{s}-router")));
    names.push("controller".into());
    names.push("internet".into());
    Err(Error::Usage(format!(
        "no `{name}` in lab {}: one of {}",
        st.prefix,
        names.join(", ")
    )))
}

/// A command that runs `cmd` inside `name` of the lab.
pub fn command(prefix: &str, name: &str, cmd: &[String]) -> Result<Command> {
    let st = read_state(prefix)?.ok_or_else(|| {
        Error::Usage(format!(
            "no lab with prefix `{prefix}`: build one with `wgprov lab up -i INV --prefix {prefix}`"
        ))
    })?;
    if cmd.is_empty() {
        return Err(Error::Usage(
            "lab exec: no command given (NAME -- CMD…)".into(),
        ));
    }
    let mut c = match target(&st, name)? {
        Target::Inside(pid) => {
            if !alive(pid) {
                return Err(lab_err(format!(
                    "{name} is not running (pid {pid} is gone)"
                )));
            }
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "-m", "-u", "-p", "--"]);
            c.env("HOME", "/root");
            c
        }
        Target::Machine(dir) => {
            let pid = systemd::machine_pid(&dir).ok_or_else(|| {
                lab_err(format!(
                    "{name} is not running (booting, rebooting or stopped; see {})",
                    dir.join("console.log").display()
                ))
            })?;
            // the command runs in the machine's namespaces, as a child of the machine's own
            // sh (-F: no nsenter parent). nsenter would stop itself when its child is stopped,
            // and systemd stops every process while it shuts down: the command's zombie would
            // never be reaped, and the machine's reboot would hang
            let mut c = Command::new("nsenter");
            c.args(["-F", "-t", &pid.to_string(), "-a", "--"]);
            c.args(["/bin/sh", "-c", "\"$@\"", "sh"]);
            c.env("HOME", "/root");
            c.env("PATH", systemd::MACHINE_PATH);
            c
        }
        Target::Netns(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]);
            c
        }
    };
    c.args(cmd);
    Ok(c)
}

/// Runs `cmd` inside `name` of the lab; returns its exit status (128+signal when killed).
pub fn exec(prefix: &str, name: &str, cmd: &[String]) -> Result<i32> {
    let status = command(prefix, name, cmd)?
        .status()
        .map_err(|e| lab_err(format!("exec: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// A human summary of the lab: what exists, which sshd are alive.
pub fn status(prefix: &str) -> Result<String> {
    check_prefix(prefix)?;
    let mut o = String::new();
    let namespaces = existing_namespaces(prefix)?;
    let state = read_state(prefix)?;
    if namespaces.is_empty() && state.is_none() {
        return Ok(format!("no lab with prefix `{prefix}`\n"));
    }
    let dir = lab_dir(prefix);
    let _ = writeln!(
        o,
        "lab {prefix}: {} namespaces, directory {}",
        namespaces.len(),
        dir.display()
    );
    if let Some(st) = state {
        let _ = writeln!(o, "inventory {}", st.inventory.display());
        for (site, ns) in &st.routers {
            let up = namespaces.contains(ns);
            let _ = writeln!(
                o,
                "  router {site:<14} {:<16} {}",
                st.wan[site],
                if up { "up" } else { "MISSING" }
            );
        }
        for (node, ns) in &st.nodes {
            let init = match st.boot_loops.contains_key(node) {
                true => systemd::machine_pid(&dir.join("nodes").join(node)),
                false => st.inner.get(node).copied(),
            };
            let sshd = init.is_some_and(|p| sshd_alive(ns, p));
            let _ = writeln!(
                o,
                "  node   {node:<14} {:<16} {} sshd {}",
                st.addresses[node],
                if namespaces.contains(ns) {
                    "up"
                } else {
                    "MISSING"
                },
                if sshd { "alive" } else { "DEAD" }
            );
        }
        let ctl = st.inner.get("controller").is_some_and(|p| alive(*p));
        let _ = writeln!(o, "  controller {}", if ctl { "alive" } else { "DEAD" });
    }
    Ok(o)
}
