//! `lab up`: namespaces, the internet, NAT routers with their port-forwards, site LANs, nodes
//! with their own sshd, the controller and its management path — in that order, each step
//! recorded in the lab's state so that `down` can remove a half-built lab.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{
    alive, bridge, host_route, in_ns, ip, keygen, known_host_line, mkdirs, run, veth_into_bridge,
    write,
};
use super::{
    LabPlan, LabState, check_prefix, down, existing_namespaces, lab_err, plan, preflight,
    save_state, systemd,
};
use crate::error::{Error, Result};
use crate::inventory::OsFamily;

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

/// The `/etc/os-release` a node of this OS family shows.
pub(super) fn os_release(f: OsFamily) -> &'static str {
    match f {
        OsFamily::Debian => {
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"
        }
        OsFamily::Redhat => {
            "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n"
        }
    }
}

/// `/etc/hosts` of a lab host named `own`: itself, and the endpoint names the lab resolves.
pub(super) fn hosts_file(p: &LabPlan, own: &str) -> String {
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
pub(super) fn node_links(p: &LabPlan, k: usize, n: &plan::NodeLab) -> Vec<(String, Vec<String>)> {
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
pub(super) fn node_legs(k: usize) -> (String, String) {
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

/// Builds the lab of `p`, recording in `st` what it made as it goes.
fn build(p: &LabPlan, st: &mut LabState) -> Result<()> {
    make_namespaces(p)?;
    let inet_net = build_internet(p, st)?;
    build_routers(p, inet_net)?;
    build_controller(p, st)?;
    wire_nodes(p, st)?;
    wire_managed_routers(p)?;
    write_ssh_keys(p)?;
    start_sshds(p, st)?;
    start_controller(p, st)?;
    wait_ready(p, st)
}

/// The controller's directory: its SSH identity, known_hosts and `/etc` overlay.
fn controller_dir(p: &LabPlan) -> PathBuf {
    p.dir.join("controller")
}

/// Hides the machine's systemd from a node without one, so that tools fall back to running
/// `wg-quick` themselves instead of asking the machine's systemd.
const HIDE_SYSTEMD: &str = "if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi";

/// Every namespace of the lab, its loopback up.
fn make_namespaces(p: &LabPlan) -> Result<()> {
    for d in ["/run/sshd", "/run/wireguard"] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    for ns in p.namespaces() {
        run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// The internet: one bridge, with a leg to each router's WAN; returns its subnet.
fn build_internet(p: &LabPlan, st: &mut LabState) -> Result<ipnet::Ipv4Net> {
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

    Ok(inet_net)
}

/// Each router: WAN address and routes, LAN bridge, forwarding, NAT and the port-forward.
fn build_routers(p: &LabPlan, inet_net: ipnet::Ipv4Net) -> Result<()> {
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
        for (public, nh, port) in r.forward.into_iter().chain(r.standby_forward) {
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
    Ok(())
}

/// The controller's management bridge, and its leg on a site's LAN (`--controller-at`).
fn build_controller(p: &LabPlan, st: &mut LabState) -> Result<()> {
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
    Ok(())
}

/// Each node's LAN leg to its router and management leg to the controller.
fn wire_nodes(p: &LabPlan, st: &mut LabState) -> Result<()> {
    let ctl = p.ctl_ns.as_str();
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
    Ok(())
}

/// A management leg for each router the inventory manages.
fn wire_managed_routers(p: &LabPlan) -> Result<()> {
    let ctl = p.ctl_ns.as_str();
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
    Ok(())
}

/// The controller's SSH identity, a host key per node and managed router, and the controller's
/// known_hosts and `/etc` files.
fn write_ssh_keys(p: &LabPlan) -> Result<()> {
    // SSH: one client identity for the controller, a host key per node
    let ctl_dir = controller_dir(p);
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
    Ok(())
}

/// Starts every node's sshd (or boots each systemd node) and each managed router's sshd, each
/// inside its own mount, UTS and PID namespaces.
fn start_sshds(p: &LabPlan, st: &mut LabState) -> Result<()> {
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
             {HIDE_SYSTEMD}\n\
             hostname {name}\n\
             /usr/sbin/sshd -D -e -f {d}/sshd_config &\n\
             while :; do sleep 3600; done\n"
        );
        let (holder, inner) = spawn_holder(ns, &script, &dir.join("sshd.log"))?;
        st.holders.insert(name.to_string(), holder);
        st.inner.insert(name.to_string(), inner);
        save_state(st)?;
    }
    Ok(())
}

/// Starts the controller's holder process in its namespaces.
fn start_controller(p: &LabPlan, st: &mut LabState) -> Result<()> {
    let ctl = p.ctl_ns.as_str();
    let ctl_dir = controller_dir(p);
    let d = ctl_dir.display();
    let script = format!(
        "set -e\n\
         mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.upper,workdir={d}/etc.work /etc\n\
         mount --bind {d}/root /root\n\
         {HIDE_SYSTEMD}\n\
         hostname controller\n\
         exec sleep infinity\n"
    );
    let (holder, inner) = spawn_holder(ctl, &script, &ctl_dir.join("holder.log"))?;
    st.holders.insert("controller".into(), holder);
    st.inner.insert("controller".into(), inner);
    save_state(st)
}

/// Waits, bounded, until every sshd answers from the controller.
fn wait_ready(p: &LabPlan, st: &LabState) -> Result<()> {
    let ctl = p.ctl_ns.as_str();
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
