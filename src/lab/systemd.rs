//! Nodes that are real machines (`lab up --systemd`): Debian booted under systemd-nspawn inside
//! each node's lab network namespace, with systemd as PID 1, sshd, wireguard-tools and
//! wireguard-go, its own host key and the controller's key authorized.
//!
//! - The image is built once by `scripts/lab-image` (debootstrap, embedded in the binary) into
//!   a cache directory ([`image_dir`]); every node boots an overlayfs over it, its upper and work
//!   directories in the node's lab directory, mounted in a private mount namespace that lives as
//!   long as the boot: nothing is mounted in the machine's own mount namespace.
//! - Each node runs a boot loop (`boot.sh` in its directory, PID recorded in the state): it boots
//!   the machine; when the machine reboots (nspawn exits 133) it gives the node a fresh network
//!   namespace, wired as `up` wired it (`net.sh`: no interface, route, rule, firewall rule or
//!   sysctl survives; the node's MAC addresses are kept, as a real machine's are) and boots it
//!   again; any other exit ends the loop.
//! - Each node's processes live in cgroups of their own (`wgprov-lab/<prefix>-n-<node>` in every
//!   hierarchy systemd uses), so that `down` stops exactly them: the boot loop first, then every
//!   process left in the node's cgroups, then the cgroups themselves.
//! - `lab exec NODE` enters the namespaces of the machine's PID 1 (its systemd), so commands run
//!   inside the booted machine (`systemctl`, `reboot`, `wg`…).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::build::{hosts_file, node_legs, node_links, os_release};
use super::net::{alive, keygen, mkdirs, write};
use super::plan::{LabPlan, NodeLab};
use super::preflight::on_path;
use super::{LabState, lab_err, save_state};
use crate::error::{Error, Result};
use crate::inventory::OsFamily;
use crate::shell::sh_quote;

/// Where the image is cached unless `WGPROV_LAB_IMAGE` says otherwise.
pub const DEFAULT_IMAGE: &str = "/var/cache/wgprov-lab/bookworm";

/// The image builder (`scripts/lab-image`), embedded so that an installed binary can build it.
const IMAGE_SCRIPT: &str = include_str!("../../scripts/lab-image");

/// The PATH of a command run inside a machine (`lab exec`).
pub(super) const MACHINE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image directory: `WGPROV_LAB_IMAGE`, else [`DEFAULT_IMAGE`].
pub fn image_dir() -> PathBuf {
    std::env::var_os("WGPROV_LAB_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE))
}

/// True when the image at `dir` was built to the end (`scripts/lab-image` writes `DIR.complete`
/// last).
pub fn image_ready(dir: &Path) -> bool {
    let mut marker = dir.as_os_str().to_owned();
    marker.push(".complete");
    Path::new(&marker).is_file() && dir.join("lib/systemd/systemd").is_file()
}

/// The image, built first when it is missing (with a message: debootstrap takes a minute or
/// two, once).
pub fn ensure_image() -> Result<PathBuf> {
    let dir = image_dir();
    check_path(&dir)?;
    if image_ready(&dir) {
        return Ok(dir);
    }
    eprintln!(
        "the systemd lab's image is not built yet: building it now with debootstrap into {} \
         (once, about 1-2 minutes and ~200 MB; scripts/lab-image does the same)",
        dir.display()
    );
    let status = Command::new("bash")
        .args(["-c", IMAGE_SCRIPT, "lab-image"])
        .env("WGPROV_LAB_IMAGE", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| lab_err(format!("running the image script: {e}")))?;
    if !status.success() || !image_ready(&dir) {
        return Err(lab_err(format!(
            "building the systemd lab image into {} failed (see above); run scripts/lab-image as root",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Paths that go into overlayfs options and shell scripts: plain characters only.
fn check_path(p: &Path) -> Result<()> {
    let ok = p.to_str().is_some_and(|s| {
        s.starts_with('/')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "systemd lab image path {}: use an absolute path of letters, digits and / . _ -",
            p.display()
        )))
    }
}

/// What a systemd lab needs beyond the plain lab's tools; says exactly what is missing.
pub fn preflight(nodes: usize) -> Result<()> {
    let mut problems = Vec::new();
    if !on_path("systemd-nspawn") {
        problems.push(
            "systemd-nspawn is missing (apt-get install --no-install-recommends systemd-container, or scripts/lab-image)"
                .to_string(),
        );
    }
    if hierarchies().is_empty() {
        problems.push("no cgroup hierarchy under /sys/fs/cgroup".to_string());
    }
    // each booted systemd takes several inotify instances (past ~17 nodes, more than the default limit)
    if let Some(max) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    {
        let need = nodes * 7 + 16;
        if need > max {
            problems.push(format!(
                "{nodes} systemd nodes need about {need} inotify instances, fs.inotify.max_user_instances is {max}: \
                 sysctl -w fs.inotify.max_user_instances={}",
                need.next_power_of_two().max(1024)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(lab_err(problems.join("; ")))
    }
}

/// The cgroup hierarchies a node's processes are placed in: the unified and the named systemd
/// hierarchy on a hybrid layout, the one tree on cgroup v2, the systemd one on legacy v1.
fn hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("unified/cgroup.procs").is_file() {
        let mut v = vec![base.join("unified")];
        if base.join("systemd/cgroup.procs").is_file() {
            v.push(base.join("systemd"));
        }
        v
    } else if base.join("cgroup.controllers").is_file() {
        vec![base.to_path_buf()]
    } else if base.join("systemd/cgroup.procs").is_file() {
        vec![base.join("systemd")]
    } else {
        Vec::new()
    }
}

/// Where systemd-nspawn keeps a machine's propagation directory and its image lock; a machine
/// that is killed leaves them (`down` removes the lab's own, by name).
const NSPAWN_RUN: &str = "/run/systemd/nspawn";

/// The parent of every lab node's cgroup, in each hierarchy.
const CGROUP_PARENT: &str = "wgprov-lab";

/// A node's machine name for nspawn: short, unique per lab.
fn machine_name(prefix: &str, k: usize) -> String {
    format!("{prefix}-n{k}")
}

/// The node's upper directory, its own files on top of the image.
fn upper(n: &NodeLab) -> PathBuf {
    n.dir.join("upper")
}

/// Prepares a node's overlay: directories, its own host key, the controller's key authorized,
/// hostname, `/etc/hosts` (the lab's names), `/etc/os-release` for a `redhat` node (as in the
/// plain lab), its sshd port. Returns its public host key line.
pub(super) fn prepare_node(
    p: &LabPlan,
    n: &NodeLab,
    image: &Path,
    client_pub: &str,
) -> Result<String> {
    check_path(image)?;
    check_path(&n.dir)?;
    let up = upper(n);
    mkdirs(&[
        up.join("etc/ssh/sshd_config.d"),
        up.join("root/.ssh"),
        n.dir.join("work"),
        n.dir.join("root"),
        n.dir.join("sbin"),
    ])?;
    set_mode(&up.join("root"), 0o700)?;
    set_mode(&up.join("root/.ssh"), 0o700)?;
    let host_pub = keygen(&up.join("etc/ssh/ssh_host_ed25519_key"), &n.name)?;
    write(&up.join("root/.ssh/authorized_keys"), client_pub, 0o600)?;
    write(&up.join("etc/hostname"), &format!("{}\n", n.name), 0o644)?;
    write(&up.join("etc/hosts"), &hosts_file(p, &n.name), 0o644)?;
    if n.os_family == OsFamily::Redhat {
        write(&up.join("etc/os-release"), os_release(n.os_family), 0o644)?;
    }
    if n.ssh_port != 22 {
        write(
            &up.join("etc/ssh/sshd_config.d/wgprov-lab-port.conf"),
            &format!("Port {}\n", n.ssh_port),
            0o644,
        )?;
    }
    Ok(host_pub)
}

/// Sets a file's mode.
fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(p, e))
}

/// `net.sh`: between two boots, gives node `k` a fresh network namespace of the same name,
/// wired as `up` wired it, with the same MAC addresses (a real machine's NICs keep theirs, so
/// the router's and the controller's neighbour entries stay right).
fn net_script(p: &LabPlan, k: usize, n: &NodeLab) -> String {
    let r = p.router_of(&n.site);
    let (leg, m) = node_legs(k);
    let ns = &n.ns;
    let mut s = format!(
        "#!/bin/sh\n# wgprov lab: a fresh network namespace for {name} between two boots\nset -e\n\
         mac() {{ ip -n {ns} -o link show \"$1\" 2>/dev/null | sed -n 's/.*link\\/ether \\([0-9a-f:]*\\).*/\\1/p'; }}\n\
         eth=$(mac eth0); mgmt=$(mac mgmt0)\n\
         ip -n {rns} link del {leg} 2>/dev/null || true\n\
         ip -n {ctl} link del {m} 2>/dev/null || true\n\
         ip netns del {ns} 2>/dev/null || true\n\
         ip netns add {ns}\n\
         ip -n {ns} link set lo up\n",
        name = n.name,
        rns = r.ns,
        ctl = p.ctl_ns,
    );
    for (ns, args) in node_links(p, k, n) {
        s.push_str(&format!("ip -n {ns} {}\n", args.join(" ")));
    }
    s.push_str(&format!(
        "if [ -n \"$eth\" ]; then ip -n {ns} link set eth0 address \"$eth\"; fi\n\
         if [ -n \"$mgmt\" ]; then ip -n {ns} link set mgmt0 address \"$mgmt\"; fi\n"
    ));
    s
}

/// `machine.sh`: one boot, in a private mount namespace: the overlay over the image, then
/// systemd-nspawn in the node's network namespace (exec: its PID is this script's).
fn machine_script(p: &LabPlan, k: usize, n: &NodeLab, image: &Path) -> String {
    let d = n.dir.display();
    format!(
        "#!/bin/sh\n# wgprov lab: one boot of {name} (runs in a private mount namespace)\nset -e\n\
         mount -t overlay overlay -o lowerdir={image},upperdir={d}/upper,workdir={d}/work {d}/root\n\
         stat -c '{NSPAWN_RUN}/locks/inode-%d:%i' {d}/root > {d}/nspawn.lock\n\
         export SYSTEMD_NSPAWN_API_VFS_WRITABLE=network\n\
         exec systemd-nspawn --quiet -D {d}/root -M {machine} --boot --register=no --keep-unit \
         --network-namespace-path=/run/netns/{ns} --capability=CAP_NET_ADMIN --console=read-only \
         --bind={d}/sbin:/usr/local/sbin --bind=/dev/net/tun\n",
        name = n.name,
        image = image.display(),
        machine = machine_name(&p.prefix, k),
        ns = n.ns,
    )
}

/// `boot.sh`: the node's boot loop. Boots the machine in its `machine` cgroups (the loop itself
/// waits in its `loop` cgroups); exit 133 (`reboot` inside) → fresh network namespace → boot
/// again; any other exit ends the loop. Writes the machine's nspawn PID to `nspawn.pid` and a
/// line per boot (with the time) before the machine's console output.
fn boot_script(n: &NodeLab, cgroups: &[PathBuf]) -> String {
    let d = sh_quote(&n.dir.display().to_string());
    let cg = |leaf: &str| {
        cgroups
            .iter()
            .map(|c| sh_quote(&c.join(leaf).display().to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "#!/bin/sh\n# wgprov lab: the boot loop of {name}; `wgprov lab down` stops it first, then the machine\n\
         set -u\nd={d}\n\
         for c in {loops}; do echo $$ > \"$c/cgroup.procs\" || exit 1; done\n\
         boot=0\n\
         while :; do\n  \
           boot=$((boot + 1))\n  \
           echo \"wgprov-lab: boot $boot of {name} at $(date +%s.%N)\"\n  \
           sh -c 'for c in \"$@\"; do echo $$ > \"$c/cgroup.procs\" || exit 1; done; exec unshare --mount --propagation private sh \"$0\"' \
         \"$d/machine.sh\" {machines} &\n  \
           echo $! > \"$d/nspawn.pid\"\n  \
           wait $!\n  \
           rc=$?\n  \
           rm -f \"$d/nspawn.pid\"\n  \
           echo \"wgprov-lab: {name} stopped with status $rc at $(date +%s.%N)\"\n  \
           [ \"$rc\" = 133 ] || exit \"$rc\"\n  \
           sh \"$d/net.sh\" || {{ echo \"wgprov-lab: resetting the network namespace of {name} failed\"; exit 1; }}\n\
         done\n",
        name = n.name,
        loops = cg("loop"),
        machines = cg("machine"),
    )
}

/// The cgroup directories of node `n` (one per hierarchy), recorded before they are made.
fn node_cgroups(n: &NodeLab) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(CGROUP_PARENT).join(&n.ns))
        .collect()
}

/// Boots every node: cgroups, scripts, then its boot loop (detached, in its own process group;
/// its PID recorded in the state before anything else happens).
pub(super) fn boot(p: &LabPlan, st: &mut LabState) -> Result<()> {
    let image = p.systemd.as_deref().expect("a systemd lab");
    preflight(p.nodes.len())?;
    for (k, n) in p.nodes.iter().enumerate() {
        let cgroups = node_cgroups(n);
        st.cgroups.extend(cgroups.iter().cloned());
        save_state(st)?;
        for c in &cgroups {
            mkdirs(&[c.join("loop"), c.join("machine")])?;
        }
        write(&n.dir.join("net.sh"), &net_script(p, k, n), 0o755)?;
        write(
            &n.dir.join("machine.sh"),
            &machine_script(p, k, n, image),
            0o755,
        )?;
        write(&n.dir.join("boot.sh"), &boot_script(n, &cgroups), 0o755)?;
        let log = n.dir.join("console.log");
        let out = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = Command::new("sh")
            .arg(n.dir.join("boot.sh"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| lab_err(format!("starting the boot loop of {}: {e}", n.name)))?;
        st.boot_loops.insert(n.name.clone(), child.id());
        st.machines
            .insert(n.name.clone(), machine_name(&p.prefix, k));
        save_state(st)?;
    }
    Ok(())
}

/// How long `up` waits for every systemd node's sshd to answer.
pub(super) fn ready_within(p: &LabPlan) -> Duration {
    if p.systemd.is_some() {
        Duration::from_secs((60 + 5 * p.nodes.len() as u64).min(300))
    } else {
        Duration::from_secs(15)
    }
}

/// The end of a node's console (for error messages).
pub(super) fn console_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A process's command name (`/proc/PID/comm`), empty when it is gone.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The PID (in the machine's own PID namespace's parent, i.e. ours) of the booted machine's
/// PID 1 — its systemd — or `None` while it is not running (booting, rebooting, stopped).
pub fn machine_pid(node_dir: &Path) -> Option<u32> {
    let nspawn: u32 = std::fs::read_to_string(node_dir.join("nspawn.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !alive(nspawn) || comm(nspawn) != "systemd-nspawn" {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
        .ok()?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| comm(*p) == "systemd" && alive(*p))
}

/// Every process in the cgroup `dir` and below.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Removes a cgroup directory and everything below it (children first; cgroup directories are
/// removed with rmdir once empty of processes).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Stops the systemd nodes of a lab: every boot loop first (by its recorded PID, so that no
/// machine is booted again), then each machine (its nspawn asked to power it off, by PID; what
/// is left in the node's cgroups after a bounded wait is killed, by PID), then the cgroups and
/// what a killed nspawn leaves in /run. Returns how many processes were signalled.
pub(super) fn stop(st: &LabState) -> Result<usize> {
    let mut signalled = 0;
    let dir = super::lab_dir(&st.prefix);
    for (node, pid) in &st.boot_loops {
        let script = dir.join("nodes").join(node).join("boot.sh");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&script.display().to_string());
        if alive(*pid) && ours {
            // SAFETY: kill(2) on the boot loop we started (its command line checked).
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            signalled += 1;
        }
    }
    // a clean power-off first (nspawn turns SIGTERM into one), so nspawn cleans up after itself
    let pids = || -> Vec<i32> { st.cgroups.iter().flat_map(|c| cgroup_pids(c)).collect() };
    let in_cgroups = pids();
    for node in st.boot_loops.keys() {
        let pidfile = dir.join("nodes").join(node).join("nspawn.pid");
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            && in_cgroups.contains(&pid)
            && comm(pid as u32) == "systemd-nspawn"
        {
            // SAFETY: kill(2) on the node's nspawn, found in the node's own cgroup.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            signalled += 1;
        }
    }
    let graceful = Instant::now() + Duration::from_secs(3);
    while !pids().is_empty() && Instant::now() < graceful {
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill(2) on processes in the lab's own cgroups.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        signalled += pids.len();
        if Instant::now() > deadline {
            return Err(lab_err(format!(
                "processes {pids:?} of lab {} did not exit",
                st.prefix
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (node, machine) in &st.machines {
        let _ = std::fs::remove_dir(Path::new(NSPAWN_RUN).join("propagate").join(machine));
        let lock = dir.join("nodes").join(node).join("nspawn.lock");
        if let Ok(l) = std::fs::read_to_string(&lock) {
            let l = Path::new(l.trim());
            if l.starts_with(Path::new(NSPAWN_RUN).join("locks")) {
                let _ = std::fs::remove_file(l);
            }
        }
    }
    // reap the boot loops when we started them ourselves (in-process use)
    for pid in st.boot_loops.values() {
        // SAFETY: waitpid with WNOHANG; harmless when it is not our child.
        unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    }
    let mut parents = Vec::new();
    for c in &st.cgroups {
        remove_cgroup(c).map_err(|e| Error::io(c, e))?;
        if let Some(parent) = c.parent() {
            parents.push(parent.to_path_buf());
        }
    }
    // the shared parent goes when no other lab uses it
    for p in parents {
        let _ = std::fs::remove_dir(p);
    }
    Ok(signalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> LabPlan {
        let mut p = super::super::plan::demo_plan(&[]);
        p.systemd = Some(PathBuf::from(DEFAULT_IMAGE));
        p
    }

    #[test]
    fn a_reboot_rewires_a_fresh_namespace_like_up() {
        let p = demo();
        let n = &p.nodes[1];
        let s = net_script(&p, 1, n);
        // the old namespace and both legs go, a new one of the same name is wired
        assert!(s.contains("ip -n t1-r-home link del n1 "), "{s}");
        assert!(s.contains("ip -n t1-ctl link del m1 "), "{s}");
        assert!(s.contains("ip netns del t1-n-node2"), "{s}");
        for (ns, args) in node_links(&p, 1, n) {
            assert!(
                s.contains(&format!("ip -n {ns} {}\n", args.join(" "))),
                "{s}"
            );
        }
        assert!(s.contains("ip -n t1-n-node2 route add default via 192.168.0.1"));
        assert!(s.contains("link set eth0 address \"$eth\""));
    }

    #[test]
    fn a_machine_boots_in_its_namespace_with_its_own_sbin() {
        let p = demo();
        let m = machine_script(&p, 0, &p.nodes[0], Path::new(DEFAULT_IMAGE));
        assert!(m.contains(
            "lowerdir=/var/cache/wgprov-lab/bookworm,upperdir=/tmp/wgprov-lab/t1/nodes/node1/upper"
        ));
        assert!(m.contains("--network-namespace-path=/run/netns/t1-n-node1"));
        assert!(m.contains("--bind=/tmp/wgprov-lab/t1/nodes/node1/sbin:/usr/local/sbin"));
        assert!(m.contains("--register=no") && m.contains("-M t1-n0 --boot"));
        let b = boot_script(
            &p.nodes[0],
            &[PathBuf::from(
                "/sys/fs/cgroup/unified/wgprov-lab/t1-n-node1",
            )],
        );
        assert!(b.contains("[ \"$rc\" = 133 ] || exit \"$rc\""), "{b}");
        assert!(b.contains("sh \"$d/net.sh\""), "{b}");
        assert!(check_path(Path::new("/var/cache/a b")).is_err());
        assert!(check_path(Path::new("relative")).is_err());
    }
}
