//! The lab: a faithful local copy of an inventory's sites in Linux network namespaces — an
//! "internet", a NAT router per site with the UDP port-forward of the reference procedure, site
//! LANs, nodes running a real OpenSSH server with their own mount, UTS and PID namespaces, and a
//! controller that reaches them over SSH (see [`plan`] for the layout and the management path).
//!
//! Safety (LAB.md): nothing is created in the machine's own network namespace — veth pairs are
//! created directly between the lab's namespaces; every name carries the lab's prefix; teardown
//! removes exactly the lab's namespaces, the processes inside them (by PID) and its directory.

pub mod demo;
pub mod plan;
pub mod systemd;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inventory::OsFamily;
pub use plan::{LabPlan, check_prefix, lab_dir};

/// What a running lab is made of; written to `<lab dir>/state.json` as soon as `up` starts, so
/// that `down` can remove a half-built lab too.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    /// Prefix of every name.
    pub prefix: String,
    /// The inventory it was built from.
    pub inventory: PathBuf,
    /// Every namespace it creates.
    pub namespaces: Vec<String>,
    /// Holder processes we started (the `unshare` of each node and of the controller).
    pub holders: BTreeMap<String, u32>,
    /// A process inside each node's and the controller's namespaces, to enter them.
    pub inner: BTreeMap<String, u32>,
    /// Node name to namespace.
    pub nodes: BTreeMap<String, String>,
    /// Node name to management/LAN address.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Site name to router namespace.
    pub routers: BTreeMap<String, String>,
    /// Site name to WAN address.
    pub wan: BTreeMap<String, Ipv4Addr>,
    /// The internet namespace.
    pub inet_ns: String,
    /// The controller namespace.
    pub ctl_ns: String,
    /// The site whose LAN the controller also sits on (`--controller-at`).
    #[serde(default)]
    pub controller_lan: Option<String>,
    /// Systemd nodes (`up --systemd`): node name to the PID of its boot loop.
    #[serde(default)]
    pub boot_loops: BTreeMap<String, u32>,
    /// Cgroup directories made for systemd nodes (removed by `down`).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Systemd nodes: node name to nspawn machine name.
    #[serde(default)]
    pub machines: BTreeMap<String, String>,
}

fn lab_err(m: impl Into<String>) -> Error {
    Error::Lab(m.into())
}

/// Runs a command; its stderr becomes the error.
fn run(prog: &str, args: &[&str]) -> Result<String> {
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

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a).map(drop)
}

/// A bridge `name` in `ns` with address `addr`, up.
fn bridge(ns: &str, name: &str, addr: &str) -> Result<()> {
    ip(ns, &["link", "add", name, "type", "bridge"])?;
    ip(ns, &["addr", "add", addr, "dev", name])?;
    ip(ns, &["link", "set", name, "up"])
}

/// An on-link route to one address.
fn host_route(ns: &str, addr: impl std::fmt::Display, dev: &str) -> Result<()> {
    ip(ns, &["route", "add", &format!("{addr}/32"), "dev", dev])
}

/// A veth pair made directly between two lab namespaces (never through the machine's own):
/// `leg` in `ns`, enslaved to `bridge` and up; `peer` in `other`, left down for its owner.
fn veth_into_bridge(ns: &str, leg: &str, bridge: &str, other: &str, peer: &str) -> Result<()> {
    ip(
        ns,
        &[
            "link", "add", leg, "type", "veth", "peer", "name", peer, "netns", other,
        ],
    )?;
    ip(ns, &["link", "set", leg, "master", bridge, "up"])
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

fn write(path: &Path, content: &str, mode: u32) -> Result<()> {
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
fn known_host_line(addr: Ipv4Addr, port: u16, host_pub: &str) -> String {
    let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let host = if port == 22 {
        addr.to_string()
    } else {
        format!("[{addr}]:{port}")
    };
    format!("{host} {}\n", key.join(" "))
}

/// Makes an ed25519 key pair at `path` (no passphrase); returns the public key line.
fn keygen(path: &Path, comment: &str) -> Result<String> {
    let p = path.to_str().ok_or_else(|| lab_err("non-UTF-8 lab path"))?;
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p],
    )?;
    std::fs::read_to_string(path.with_extension("pub")).map_err(|e| Error::io(path, e))
}

fn mkdirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    Ok(())
}

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

fn on_path(prog: &str) -> bool {
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

/// Namespaces that exist now and carry this prefix.
pub fn existing_namespaces(prefix: &str) -> Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    let want = format!("{prefix}-");
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_string)
        .collect())
}

fn state_path(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("state.json")
}

/// Reads the state of the lab with this prefix, if it exists.
pub fn read_state(prefix: &str) -> Result<Option<LabState>> {
    let p = state_path(prefix);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| lab_err(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn save_state(st: &LabState) -> Result<()> {
    let text = serde_json::to_string_pretty(st).expect("state serializes");
    write(&state_path(&st.prefix), &text, 0o600)
}

/// Builds the lab. Refuses a prefix that still exists; on any failure, removes what it made.
pub fn up(inventory: &Path, p: &LabPlan) -> Result<LabState> {
    check_prefix(&p.prefix)?;
    preflight()?;
    let existing = existing_namespaces(&p.prefix)?;
    if p.dir.exists() || !existing.is_empty() {
        return Err(lab_err(format!(
            "a lab with prefix `{}` already exists ({}); remove it with `wgprov lab down --prefix {}` or choose another --prefix",
            p.prefix,
            if existing.is_empty() {
                p.dir.display().to_string()
            } else {
                existing.join(", ")
            },
            p.prefix
        )));
    }
    let mut st = LabState {
        prefix: p.prefix.clone(),
        inventory: std::fs::canonicalize(inventory).unwrap_or_else(|_| inventory.to_path_buf()),
        namespaces: p.namespaces(),
        inet_ns: p.inet_ns.clone(),
        ctl_ns: p.ctl_ns.clone(),
        ..Default::default()
    };
    std::fs::create_dir_all(&p.dir).map_err(|e| Error::io(&p.dir, e))?;
    save_state(&st)?;
    match build(p, &mut st) {
        Ok(()) => {
            save_state(&st)?;
            Ok(st)
        }
        Err(e) => {
            let _ = save_state(&st);
            let cleanup = down(&p.prefix);
            Err(match cleanup {
                Ok(_) => e,
                Err(c) => lab_err(format!("{e}; and removing the half-built lab failed: {c}")),
            })
        }
    }
}

fn os_release(f: OsFamily) -> &'static str {
    match f {
        OsFamily::Debian => {
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"
        }
        OsFamily::Redhat => {
            "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n"
        }
    }
}

fn hosts_file(p: &LabPlan, own: &str) -> String {
    let mut h = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{own}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    for (ip, name) in &p.hosts {
        h.push_str(&format!("{ip}\t{name}\n"));
    }
    h
}

/// Starts `script` under `sh` in namespace `ns` with its own mount, UTS and PID namespaces.
/// Returns the holder's PID (ours) and the PID of the script's process (inside).
fn spawn_holder(ns: &str, script: &str, log: &Path) -> Result<(u32, u32)> {
    let logf = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let errf = logf.try_clone().map_err(|e| Error::io(log, e))?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["--uts", "--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .process_group(0)
        .spawn()
        .map_err(|e| lab_err(format!("starting a process in {ns}: {e}")))?;
    let holder = child.id();
    let children = PathBuf::from(format!("/proc/{holder}/task/{holder}/children"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return Ok((holder, pid));
        }
        if Instant::now() > deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(lab_err(format!(
                "the process in {ns} did not start: {}",
                log_text.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `ip -n NS …` commands that wire node `k` into the lab once its namespace exists: its
/// LAN leg (a veth from its router's LAN bridge, its address, the default route) and its
/// management leg (a veth from the controller's bridge, the route back to the controller).
/// Shared by `up` and by a systemd node's reboot, which wires a fresh namespace the same way.
fn node_links(p: &LabPlan, k: usize, n: &plan::NodeLab) -> Vec<(String, Vec<String>)> {
    let r = p.router_of(&n.site);
    let (leg, m) = node_legs(k);
    let cmd = |ns: &str, args: &[&str]| {
        (
            ns.to_string(),
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        )
    };
    let addr = n.address.to_string();
    vec![
        cmd(
            &r.ns,
            &[
                "link", "add", &leg, "type", "veth", "peer", "name", "eth0", "netns", &n.ns,
            ],
        ),
        cmd(&r.ns, &["link", "set", &leg, "master", "br-lan", "up"]),
        cmd(
            &n.ns,
            &[
                "addr",
                "add",
                &format!("{addr}/{}", n.lan_prefix),
                "dev",
                "eth0",
            ],
        ),
        cmd(&n.ns, &["link", "set", "eth0", "up"]),
        cmd(
            &n.ns,
            &["route", "add", "default", "via", &n.gateway.to_string()],
        ),
        cmd(
            &p.ctl_ns,
            &[
                "link", "add", &m, "type", "veth", "peer", "name", "mgmt0", "netns", &n.ns,
            ],
        ),
        cmd(&p.ctl_ns, &["link", "set", &m, "master", "mgmt", "up"]),
        cmd(&n.ns, &["link", "set", "mgmt0", "up"]),
        cmd(
            &n.ns,
            &[
                "route",
                "add",
                &format!("{}/32", p.controller_ip),
                "dev",
                "mgmt0",
                "src",
                &addr,
            ],
        ),
    ]
}

/// The names of node `k`'s veth legs on its router's LAN bridge and on the controller's bridge.
fn node_legs(k: usize) -> (String, String) {
    (format!("n{k}"), format!("m{k}"))
}

/// An sshd node's directories, host key, authorized key, `/etc` files and sshd config;
/// returns its public host key line.
fn prepare_sshd_node(p: &LabPlan, n: &plan::NodeLab, client_pub: &str) -> Result<String> {
    prepare_sshd(p, &n.name, &n.dir, n.os_family, n.ssh_port, client_pub)
}

/// The directories and sshd of a host of the lab (a node, or a router the inventory manages).
fn prepare_sshd(
    p: &LabPlan,
    name: &str,
    d: &Path,
    os_family: OsFamily,
    port: u16,
    client_pub: &str,
) -> Result<String> {
    mkdirs(&[
        d.join("etc.upper"),
        d.join("etc.work"),
        d.join("varlib.upper"),
        d.join("varlib.work"),
        d.join("root"),
        d.join("sbin"),
    ])?;
    let hk = d.join("ssh_host_ed25519_key");
    let host_pub = keygen(&hk, name)?;
    // readable by every user: sshd reads it after dropping to the login user
    write(&d.join("authorized_keys"), client_pub, 0o644)?;
    write(
        &d.join("etc.upper/os-release"),
        os_release(os_family),
        0o644,
    )?;
    write(&d.join("etc.upper/hosts"), &hosts_file(p, name), 0o644)?;
    write(&d.join("etc.upper/hostname"), &format!("{name}\n"), 0o644)?;
    write(
        &d.join("sshd_config"),
        &format!(
            "Port {port}\nListenAddress 0.0.0.0\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
         UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         StrictModes no\nPrintLastLog no\nPrintMotd no\nUseDNS no\nSubsystem sftp internal-sftp\n",
            hk = hk.display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        ),
        0o600,
    )?;
    Ok(host_pub)
}

fn build(p: &LabPlan, st: &mut LabState) -> Result<()> {
    for d in ["/run/sshd", "/run/wireguard"] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    for ns in p.namespaces() {
        run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
    }

    // the internet: one bridge; every WAN address is on-link
    let inet = p.inet_ns.as_str();
    bridge(inet, "br0", &format!("{}/24", plan::INTERNET_IP))?;
    let inet_net: ipnet::Ipv4Net = ipnet::Ipv4Net::new(plan::INTERNET_IP, 24)
        .expect("net")
        .trunc();
    for (i, r) in p.routers.iter().enumerate() {
        let leg = format!("r{i}");
        veth_into_bridge(inet, &leg, "br0", &r.ns, "wan0")?;
        if r.wan_mtu != 1500 {
            // a PPPoE-like uplink: both ends of the WAN link carry at most wan_mtu bytes, and
            // a larger packet is dropped without a word (a veth or bridge port drops what
            // exceeds its MTU), as a black-holing ISP link does
            let m = r.wan_mtu.to_string();
            ip(inet, &["link", "set", &leg, "mtu", &m])?;
            ip(&r.ns, &["link", "set", "wan0", "mtu", &m])?;
        }
        if !inet_net.contains(&r.wan_ip) {
            host_route(inet, r.wan_ip, "br0")?;
        }
        st.routers.insert(r.site.clone(), r.ns.clone());
        st.wan.insert(r.site.clone(), r.wan_ip);
    }

    // routers: WAN, LAN bridge, forwarding, NAT and the port-forward
    for r in &p.routers {
        let ns = r.ns.as_str();
        ip(
            ns,
            &["addr", "add", &format!("{}/32", r.wan_ip), "dev", "wan0"],
        )?;
        ip(ns, &["link", "set", "wan0", "up"])?;
        ip(ns, &["route", "add", &inet_net.to_string(), "dev", "wan0"])?;
        for o in p.routers.iter().filter(|o| o.site != r.site) {
            if !inet_net.contains(&o.wan_ip) {
                host_route(ns, o.wan_ip, "wan0")?;
            }
        }
        bridge(
            ns,
            "br-lan",
            &format!("{}/{}", r.lan_ip, r.lan.prefix_len()),
        )?;
        in_ns(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        in_ns(
            ns,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan0",
                "-j",
                "MASQUERADE",
            ],
        )?;
        if let Some((public, nh, port)) = r.forward {
            in_ns(
                ns,
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    "wan0",
                    "-p",
                    "udp",
                    "--dport",
                    &public.to_string(),
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &format!("{nh}:{port}"),
                ],
            )?;
        }
    }

    // controller: management bridge
    let ctl = p.ctl_ns.as_str();
    bridge(ctl, "mgmt", &format!("{}/32", p.controller_ip))?;
    // --controller-at SITE: a leg on that site's LAN, default route via its router and the
    // WireGuard space via its next-hop (what an operator adds on a laptop)
    if let Some(c) = &p.controller_lan {
        let r = p.router_of(&c.site);
        veth_into_bridge(&r.ns, "ctl0", "br-lan", ctl, "lan0")?;
        ip(
            ctl,
            &[
                "addr",
                "add",
                &format!("{}/{}", c.address, c.prefix),
                "dev",
                "lan0",
            ],
        )?;
        ip(ctl, &["link", "set", "lan0", "up"])?;
        ip(
            ctl,
            &["route", "add", "default", "via", &c.gateway.to_string()],
        )?;
        ip(
            ctl,
            &[
                "route",
                "add",
                &c.wireguard_cidr.to_string(),
                "via",
                &c.next_hop.to_string(),
            ],
        )?;
        st.controller_lan = Some(c.site.clone());
    }

    // nodes: LAN leg to the router, management leg to the controller
    for (k, n) in p.nodes.iter().enumerate() {
        for (ns, args) in node_links(p, k, n) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ip(&ns, &args)?;
        }
        host_route(ctl, n.address, "mgmt")?;
        st.nodes.insert(n.name.clone(), n.ns.clone());
        st.addresses.insert(n.name.clone(), n.address);
    }

    // managed routers: a management leg like a node's (their sshd answers at their LAN address)
    for (i, r) in p.routers.iter().enumerate() {
        if r.sshd.is_none() {
            continue;
        }
        let leg = format!("q{i}");
        veth_into_bridge(ctl, &leg, "mgmt", &r.ns, "mgmt0")?;
        ip(&r.ns, &["link", "set", "mgmt0", "up"])?;
        ip(
            &r.ns,
            &[
                "route",
                "add",
                &format!("{}/32", p.controller_ip),
                "dev",
                "mgmt0",
                "src",
                &r.lan_ip.to_string(),
            ],
        )?;
        host_route(ctl, r.lan_ip, "mgmt")?;
    }

    // SSH: one client identity for the controller, a host key per node
    let ctl_dir = p.dir.join("controller");
    let ctl_root = ctl_dir.join("root");
    mkdirs(&[
        ctl_root.join(".ssh"),
        ctl_dir.join("etc.upper"),
        ctl_dir.join("etc.work"),
    ])?;
    let id = ctl_root.join(".ssh/id_ed25519");
    let client_pub = keygen(&id, &format!("wgprov-lab-{}", p.prefix))?;
    let mut known_hosts = String::new();
    for n in &p.nodes {
        let host_pub = match &p.systemd {
            Some(image) => systemd::prepare_node(p, n, image, &client_pub)?,
            None => prepare_sshd_node(p, n, &client_pub)?,
        };
        for a in [n.address, n.wireguard_ip] {
            known_hosts.push_str(&known_host_line(a, n.ssh_port, &host_pub));
        }
    }
    for r in &p.routers {
        if let Some(sd) = &r.sshd {
            let host_pub =
                prepare_sshd(p, &sd.name, &sd.dir, OsFamily::Debian, sd.port, &client_pub)?;
            for a in std::iter::once(r.lan_ip).chain(sd.wireguard_ip) {
                known_hosts.push_str(&known_host_line(a, sd.port, &host_pub));
            }
        }
    }
    write(&ctl_root.join(".ssh/known_hosts"), &known_hosts, 0o600)?;
    write(
        &ctl_dir.join("etc.upper/hosts"),
        &hosts_file(p, "controller"),
        0o644,
    )?;
    write(&ctl_dir.join("etc.upper/hostname"), "controller\n", 0o644)?;

    // start every node's sshd inside its own mount/UTS/PID namespaces
    let hide_systemd = "if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi";
    if p.systemd.is_some() {
        // or boot each node: Debian under systemd-nspawn, sshd started by its systemd
        systemd::boot(p, st)?;
    }
    let sshd_hosts: Vec<(&str, &Path, &str)> = p
        .nodes
        .iter()
        .filter(|_| p.systemd.is_none())
        .map(|n| (n.name.as_str(), n.dir.as_path(), n.ns.as_str()))
        .chain(p.routers.iter().filter_map(|r| {
            r.sshd
                .as_ref()
                .map(|sd| (sd.name.as_str(), sd.dir.as_path(), r.ns.as_str()))
        }))
        .collect();
    for (name, dir, ns) in sshd_hosts {
        let d = dir.display();
        let script = format!(
            "set -e\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.upper,workdir={d}/etc.work /etc\n\
             mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/varlib.upper,workdir={d}/varlib.work /var/lib\n\
             mount --bind {d}/root /root\n\
             mount --bind {d}/sbin /usr/local/sbin\n\
             mount -t tmpfs -o mode=0755 tmpfs /run/wireguard\n\
             {hide_systemd}\n\
             hostname {name}\n\
             /usr/sbin/sshd -D -e -f {d}/sshd_config &\n\
             while :; do sleep 3600; done\n"
        );
        let (holder, inner) = spawn_holder(ns, &script, &dir.join("sshd.log"))?;
        st.holders.insert(name.to_string(), holder);
        st.inner.insert(name.to_string(), inner);
        save_state(st)?;
    }
    let d = ctl_dir.display();
    let script = format!(
        "set -e\n\
         mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.upper,workdir={d}/etc.work /etc\n\
         mount --bind {d}/root /root\n\
         {hide_systemd}\n\
         hostname controller\n\
         exec sleep infinity\n"
    );
    let (holder, inner) = spawn_holder(ctl, &script, &ctl_dir.join("holder.log"))?;
    st.holders.insert("controller".into(), holder);
    st.inner.insert("controller".into(), inner);
    save_state(st)?;

    // wait, bounded, until every sshd answers from the controller
    let deadline = Instant::now() + systemd::ready_within(p);
    for r in &p.routers {
        let Some(sd) = &r.sshd else { continue };
        let probe = format!("exec 3<>/dev/tcp/{}/{}", r.lan_ip, sd.port);
        while in_ns(ctl, &["bash", "-c", &probe]).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(sd.dir.join("sshd.log")).unwrap_or_default();
                return Err(lab_err(format!(
                    "sshd of {} does not answer at {}:{} from the controller: {}",
                    sd.name,
                    r.lan_ip,
                    sd.port,
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for n in &p.nodes {
        let probe = format!("exec 3<>/dev/tcp/{}/{}", n.address, n.ssh_port);
        loop {
            if in_ns(ctl, &["bash", "-c", &probe]).is_ok() {
                break;
            }
            // a machine that failed to boot ends its boot loop: no need to wait any longer
            let loop_ended = st.boot_loops.get(&n.name).is_some_and(|pid| !alive(*pid));
            if loop_ended {
                return Err(lab_err(format!(
                    "{} did not boot: {}",
                    n.name,
                    systemd::console_tail(&n.dir)
                )));
            }
            if Instant::now() > deadline {
                let log = match p.systemd {
                    Some(_) => systemd::console_tail(&n.dir),
                    None => std::fs::read_to_string(n.dir.join("sshd.log")).unwrap_or_default(),
                };
                return Err(lab_err(format!(
                    "sshd of {} does not answer at {}:{} from the controller: {}",
                    n.name,
                    n.address,
                    n.ssh_port,
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // a zombie has exited: only its entry waits to be reaped
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

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

/// Cuts the controller's out-of-band management path: from now on it reaches the nodes only
/// over its leg on a site's LAN (`--controller-at`), and the other sites only through the
/// mesh — as an operator does. Returns the routes removed.
pub fn mesh_only(prefix: &str) -> Result<Vec<Ipv4Addr>> {
    let st = read_state(prefix)?
        .ok_or_else(|| Error::Usage(format!("no lab with prefix `{prefix}`")))?;
    if st.controller_lan.is_none() {
        return Err(Error::Usage(format!(
            "lab {prefix} was built without --controller-at SITE: the controller would reach nothing"
        )));
    }
    let mut removed = Vec::new();
    for a in st.addresses.values() {
        let dst = format!("{a}/32");
        if ip(&st.ctl_ns, &["route", "del", &dst, "dev", "mgmt"]).is_ok() {
            removed.push(*a);
        }
    }
    Ok(removed)
}

/// Gives `site`'s router a new public address, as an ISP does to a home line: the WAN address
/// moves (the router's NAT entries of the old one die with it), the internet and the other
/// routers route the new one. Names that pointed at the old address are the caller's to update
/// (each node's `/etc/hosts`). Returns the old address.
pub fn readdress_wan(prefix: &str, site: &str, new: Ipv4Addr) -> Result<Ipv4Addr> {
    let mut st = read_state(prefix)?
        .ok_or_else(|| Error::Usage(format!("no lab with prefix `{prefix}`")))?;
    let old = *st
        .wan
        .get(site)
        .ok_or_else(|| Error::Usage(format!("lab {prefix} has no site `{site}`")))?;
    if st.wan.values().any(|w| *w == new) {
        return Err(Error::Usage(format!("{new} is already a WAN address")));
    }
    let inet_net = ipnet::Ipv4Net::new(plan::INTERNET_IP, 24)
        .expect("net")
        .trunc();
    let router = st.routers[site].clone();
    // as a PPPoE line reconnecting: the WAN link goes down and comes back with the new address;
    // going down flushes the router's NAT (MASQUERADE) entries, which would otherwise keep
    // rewriting the nodes' flows to the old address for as long as keepalives refresh them
    ip(&router, &["link", "set", "wan0", "down"])?;
    ip(
        &router,
        &["addr", "del", &format!("{old}/32"), "dev", "wan0"],
    )?;
    ip(
        &router,
        &["addr", "add", &format!("{new}/32"), "dev", "wan0"],
    )?;
    ip(&router, &["link", "set", "wan0", "up"])?;
    ip(
        &router,
        &["route", "add", &inet_net.to_string(), "dev", "wan0"],
    )?;
    for (s, w) in st.wan.iter().filter(|(s, _)| *s != site) {
        if !inet_net.contains(w) {
            host_route(&router, *w, "wan0").map_err(|e| lab_err(format!("route to {s}: {e}")))?;
        }
    }
    if !inet_net.contains(&new) {
        host_route(&st.inet_ns, new, "br0")?;
        for (s, ns) in st.routers.iter().filter(|(s, _)| s.as_str() != site) {
            host_route(ns, new, "wan0").map_err(|e| lab_err(format!("router of {s}: {e}")))?;
        }
    }
    // the old address leads nowhere any more: no route to it, no cached neighbour entry that
    // would still carry packets to the router (whose NAT entries would take them)
    if !inet_net.contains(&old) {
        let _ = ip(&st.inet_ns, &["route", "del", &format!("{old}/32")]);
        for (s, ns) in &st.routers {
            if s != site {
                let _ = ip(ns, &["route", "del", &format!("{old}/32")]);
            }
        }
    }
    let _ = ip(&st.inet_ns, &["neigh", "flush", "to", &old.to_string()]);
    st.wan.insert(site.to_string(), new);
    save_state(&st)?;
    Ok(old)
}

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

/// Where `lab exec NAME` runs.
enum Target {
    /// Enter the namespaces of this process (a node or the controller).
    Inside(u32),
    /// Only a network namespace (a router, the internet).
    Netns(String),
    /// A systemd node: enter its booted machine (the namespaces of its PID 1).
    Machine(PathBuf),
}

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
