//! Small commands the lab is built from: `ip` in a namespace, bridges, veth pairs between two
//! of the lab's namespaces, files with a mode, SSH keys, and whether a process still lives.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::lab_err;
use crate::error::{Error, Result};

/// Runs a command; its stderr becomes the error.
pub(super) fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| lab_err(format!("{prog}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(lab_err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip -n NS ARGS…`.
pub(super) fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a).map(drop)
}

/// A bridge `name` in `ns` with address `addr`, up.
pub(super) fn bridge(ns: &str, name: &str, addr: &str) -> Result<()> {
    ip(ns, &["link", "add", name, "type", "bridge"])?;
    ip(ns, &["addr", "add", addr, "dev", name])?;
    ip(ns, &["link", "set", name, "up"])
}

/// An on-link route to one address.
pub(super) fn host_route(ns: &str, addr: impl std::fmt::Display, dev: &str) -> Result<()> {
    ip(ns, &["route", "add", &format!("{addr}/32"), "dev", dev])
}

/// A veth pair made directly between two lab namespaces (never through the machine's own):
/// `leg` in `ns`, enslaved to `bridge` and up; `peer` in `other`, left down for its owner.
pub(super) fn veth_into_bridge(
    ns: &str,
    leg: &str,
    bridge: &str,
    other: &str,
    peer: &str,
) -> Result<()> {
    ip(
        ns,
        &[
            "link", "add", leg, "type", "veth", "peer", "name", peer, "netns", other,
        ],
    )?;
    ip(ns, &["link", "set", leg, "master", bridge, "up"])
}

/// Runs a program inside network namespace `ns` only; its stdout.
pub(super) fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// Writes a file with this mode, making its directory.
pub(super) fn write(path: &Path, content: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    std::fs::write(path, content).map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// A known_hosts line for a host key (`type base64 [comment]`) at `addr:port`, as OpenSSH and
/// wgprov look it up (`[addr]:port` when the port is not 22).
pub(super) fn known_host_line(addr: Ipv4Addr, port: u16, host_pub: &str) -> String {
    let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let host = if port == 22 {
        addr.to_string()
    } else {
        format!("[{addr}]:{port}")
    };
    format!("{host} {}\n", key.join(" "))
}

/// Makes an ed25519 key pair at `path` (no passphrase); returns the public key line.
pub(super) fn keygen(path: &Path, comment: &str) -> Result<String> {
    let p = path.to_str().ok_or_else(|| lab_err("non-UTF-8 lab path"))?;
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p],
    )?;
    std::fs::read_to_string(path.with_extension("pub")).map_err(|e| Error::io(path, e))
}

/// Makes these directories and their parents.
pub(super) fn mkdirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    Ok(())
}

/// The processes in network namespace `ns` (none when it is gone).
pub(super) fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// True when process `pid` exists and has not exited.
pub(super) fn alive(pid: u32) -> bool {
    // a zombie has exited: only its entry waits to be reaped
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
