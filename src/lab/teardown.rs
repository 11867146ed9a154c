//! `lab down`: removes exactly what `up` made, by name and by PID.

use std::path::Path;
use std::time::{Duration, Instant};

use super::net::{alive, pids_in, run};
use super::{check_prefix, existing_namespaces, lab_dir, lab_err, read_state, systemd};
use crate::error::{Error, Result};

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Processes signalled.
    pub processes: usize,
    /// Whether the lab directory was removed.
    pub dir_removed: bool,
}

/// Removes exactly what `up` made for this prefix: the processes in the lab's namespaces (by
/// PID), the namespaces (by name) and the lab directory. Safe on a half-built lab and on one
/// that does not exist.
pub fn down(prefix: &str) -> Result<DownReport> {
    check_prefix(prefix)?;
    let mut report = DownReport::default();
    let state = read_state(prefix).ok().flatten();
    let mut namespaces = existing_namespaces(prefix)?;
    // systemd nodes first: their boot loops, so that no machine boots again, then the machines
    if let Some(st) = &state
        && (!st.boot_loops.is_empty() || !st.cgroups.is_empty())
    {
        report.processes += systemd::stop(st)?;
    }
    // holders first: unshare --kill-child takes each PID namespace down with it
    if let Some(st) = &state {
        for pid in st.holders.values() {
            if alive(*pid) {
                // SAFETY: kill(2) with a PID we started and checked is alive.
                unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
                report.processes += 1;
            }
        }
        for ns in &st.namespaces {
            if !namespaces.contains(ns) && Path::new("/run/netns").join(ns).exists() {
                namespaces.push(ns.clone());
            }
        }
    }
    // a large lab on a busy machine takes a while to die: 5 s, plus 1 s per 20 namespaces
    let deadline = Instant::now() + Duration::from_secs(5 + namespaces.len() as u64 / 20);
    loop {
        let pids: Vec<i32> = namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill(2) on processes that live in this lab's network namespaces.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        report.processes += pids.len();
        if Instant::now() > deadline {
            return Err(lab_err(format!(
                "processes {pids:?} in lab {prefix} did not exit"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // wait (bounded) for the holders to finish exiting; reap those we started ourselves
    // (in-process use), so that none lingers as a zombie
    if let Some(st) = &state {
        for pid in st.holders.values() {
            while alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: waitpid on our own child with WNOHANG; harmless when it is not ours.
            unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            if alive(*pid) {
                return Err(lab_err(format!(
                    "process {pid} of lab {prefix} did not exit"
                )));
            }
        }
    }
    for ns in &namespaces {
        run("ip", &["netns", "del", ns])?;
        report.namespaces.push(ns.clone());
    }
    let dir = lab_dir(prefix);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        report.dir_removed = true;
    }
    Ok(report)
}
