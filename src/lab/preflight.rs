//! What the lab needs from the machine: root, the tools, `/dev/net/tun`; and warnings for labs
//! larger than the machine's limits.

use std::path::Path;

use super::lab_err;
use crate::error::Result;

/// Programs the lab needs, with the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("ssh", "openssh-client"),
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    ("wg-quick", "wireguard-tools"),
    ("ping", "iputils-ping"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("bash", "bash"),
];

/// True when `prog` is on PATH, or in /usr/sbin or /sbin (root tools).
pub(super) fn on_path(prog: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(prog).is_file())
}

/// Checks that we are root and have every tool; says exactly what is missing.
pub fn preflight() -> Result<()> {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("must run as root (network namespaces, mounts)".to_string());
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        let mut pkgs = missing.clone();
        pkgs.sort();
        pkgs.dedup();
        problems.push(format!(
            "missing packages: {} (install: apt-get install --no-install-recommends {}, or scripts/install-deps)",
            pkgs.join(" "),
            pkgs.join(" ")
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        problems.push("/dev/net/tun is missing: wireguard-go needs it".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(lab_err(problems.join("; ")))
    }
}

/// A machine-wide limit from `/proc/sys`.
fn proc_sys(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A warning when the lab has more nodes than wireguard-go processes can start: each one takes
/// an inotify instance, and `fs.inotify.max_user_instances` (128 by default) is per user for
/// the whole machine. The 129th `wg-quick up` then fails with "Unable to modify interface".
pub fn inotify_warning(nodes: usize) -> Option<String> {
    let max = proc_sys("/proc/sys/fs/inotify/max_user_instances")?;
    (nodes + 16 > max).then(|| {
        format!(
            "warning: {nodes} nodes, but fs.inotify.max_user_instances is {max} and every node's wireguard-go takes one: \
             past that, wg-quick up fails. For a lab this large: sysctl -w fs.inotify.max_user_instances={}",
            (nodes * 2 + 64).next_power_of_two()
        )
    })
}

/// About how many ARP entries a lab of `nodes` holds at once: each node's router, next-hop and
/// the controller, each router's and next-hop's LAN, and the controller's whole fleet.
pub fn neighbour_entries(nodes: usize) -> usize {
    nodes * 4 + 64
}

/// A warning when the lab needs more ARP entries than the kernel keeps. The neighbour table is
/// one for the whole machine (every namespace's entries count against the root namespace's
/// `net.ipv4.neigh.default.gc_thresh2`/`gc_thresh3`, 512/1024 by default): past them the kernel
/// evicts live entries ("neighbor table overflow" in dmesg) and drops the packets that needed
/// them, so a lab of a few hundred nodes loses traffic that a real network of separate machines
/// never would. Seen at 500 nodes: pings between next-hops failed for 20 s during every apply.
pub fn neighbour_warning(nodes: usize) -> Option<String> {
    let thresh2 = proc_sys("/proc/sys/net/ipv4/neigh/default/gc_thresh2")?;
    let need = neighbour_entries(nodes);
    (need > thresh2).then(|| {
        let to = need.next_power_of_two();
        format!(
            "warning: {nodes} nodes need about {need} ARP entries, but this machine keeps {thresh2} \
             (net.ipv4.neigh.default.gc_thresh2, one table for every namespace): past that the kernel \
             evicts live entries and drops packets. For a lab this large: sysctl -w \
             net.ipv4.neigh.default.gc_thresh2={to} net.ipv4.neigh.default.gc_thresh3={}",
            to * 2
        )
    })
}
