//! The lab under systemd (`lab up --systemd`): every node is Debian booted under
//! systemd-nspawn in its namespace, so wgprov's systemd paths run for real — `systemctl enable`
//! and `restart wg-quick@wg0`, the dead-man as a transient timer — and a node can reboot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::common::{LabGuard, roles_with_default, root};

/// The systemd image, or `None` after a visible skip.
pub(super) fn image() -> Option<PathBuf> {
    super::common::systemd_image()
}

pub(super) struct Lab {
    pub(super) lab: LabGuard,
    _dir: tempfile::TempDir,
    pub(super) inv: String,
    /// (node, site, WireGuard address)
    pub(super) nodes: Vec<(String, String, String)>,
}

impl Lab {
    fn demo(tag: &str, image: &Path) -> Lab {
        Lab::demo_with(tag, image, |y| y)
    }

    /// The demo lab, its inventory edited by `edit` first.
    pub(super) fn demo_with(tag: &str, image: &Path, edit: impl Fn(String) -> String) -> Lab {
        Lab::demo_built(tag, image, edit, &[])
    }

    /// [`Lab::demo_with`], the routers of `no_port_forward` forwarding nothing.
    fn demo_built(
        tag: &str,
        image: &Path,
        edit: impl Fn(String) -> String,
        no_port_forward: &[&str],
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("demo.yaml");
        let yaml = std::fs::read_to_string(root().join("inventories/demo.yaml")).unwrap();
        std::fs::write(&inv, edit(yaml)).unwrap();
        let planned = wgprov::topology::plan_inventory(&inv, true).unwrap();
        let nodes = planned
            .topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.site.clone(), n.wireguard_ip.to_string()))
            .collect();
        let t = Instant::now();
        let lab = LabGuard::up_systemd(&inv, tag, image, no_port_forward);
        eprintln!(
            "systemd lab {}: {} nodes booted, every sshd answering, in {:.1} s",
            lab.prefix,
            lab.state.nodes.len(),
            t.elapsed().as_secs_f64()
        );
        Lab {
            lab,
            _dir: dir,
            inv: inv.display().to_string(),
            nodes,
        }
    }

    /// Runs wgprov in the controller; (exit code, stdout + stderr).
    pub(super) fn wgprov(&self, args: &[&str]) -> (i32, String) {
        let mut cmd = vec![env!("CARGO_BIN_EXE_wgprov")];
        cmd.extend_from_slice(args);
        let (code, out, err) = self.lab.exec("controller", &cmd);
        (code, format!("{out}{err}"))
    }

    /// `wgprov status --format json`: exit code, the document, stderr.
    pub(super) fn status_json(&self) -> (i32, serde_json::Value, String) {
        let cmd = [
            env!("CARGO_BIN_EXE_wgprov"),
            "status",
            "-i",
            &self.inv,
            "--format",
            "json",
        ];
        let (code, out, err) = self.lab.exec("controller", &cmd);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v, format!("{out}{err}"))
    }

    pub(super) fn apply(&self, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["apply", "-i", &self.inv];
        args.extend_from_slice(extra);
        self.wgprov(&args)
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        wgprov::lab::lab_dir(&self.lab.prefix)
            .join("nodes")
            .join(node)
    }

    /// Every pair of nodes in different sites that does not ping over wg0 within `within`
    /// (one bounded try loop per pair; a machine that is still booting counts as a failed try).
    pub(super) fn cross_site_failures(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut failed = Vec::new();
        for (a, sa, _) in &self.nodes {
            for (b, sb, ip) in self.nodes.iter().filter(|(_, s, _)| s != sa) {
                let ok = loop {
                    let cmd: Vec<String> = ["ping", "-c", "1", "-W", "1", ip]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    let ok = wgprov::lab::command(&self.lab.prefix, a, &cmd)
                        .ok()
                        .and_then(|mut c| c.output().ok())
                        .is_some_and(|o| o.status.success());
                    if ok || Instant::now() > deadline {
                        break ok;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                };
                if !ok {
                    failed.push(format!("{a} ({sa}) -> {b} ({sb}) {ip}"));
                }
            }
        }
        failed
    }
}

/// The PID of a node's booted systemd, once it runs (bounded wait).
fn machine_pid(dir: &Path, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = wgprov::lab::systemd::machine_pid(dir) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A stand-in kubelet that validates its node IP exactly as the real one does at start-up: an
/// address on no interface is fatal ("failed to validate nodeIP: node IP ... not found in the
/// host's network interfaces"). Unlike the packaged unit it never restarts itself, so a start
/// before wg0 has its address shows as a failed unit. Installed where the kubeadm packages put
/// theirs, reading the same defaults files.
const KUBELET: &str = r#"#!/bin/sh
ip=
for a in "$@"; do case "$a" in --node-ip=*) ip=${a#--node-ip=};; esac; done
if [ -n "$ip" ] && ! ip -4 -o addr show | grep -qF " inet $ip/"; then
  echo "E1126 run.go:72] failed to run Kubelet: failed to validate nodeIP: node IP: $ip not found in the host's network interfaces" >&2
  exit 1
fi
echo "stand-in kubelet: running with node IP ${ip:-(auto)}"
exec sleep infinity
"#;

const KUBELET_UNIT: &str = "[Unit]\nDescription=stand-in kubelet\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nEnvironmentFile=-/etc/default/kubelet\nEnvironmentFile=-/etc/sysconfig/kubelet\nExecStart=/usr/local/bin/kubelet $KUBELET_EXTRA_ARGS\nRestart=no\n\n[Install]\nWantedBy=multi-user.target\n";

/// A stand-in k3s server: reads its node IP from config.yaml.d as k3s does, fails the same
/// way when it is on no interface, counts its starts.
const K3S: &str = r#"#!/bin/sh
ip=$(cat /etc/rancher/k3s/config.yaml.d/*.yaml 2>/dev/null | sed -n 's/^node-ip: *//p' | tail -n 1)
iface=$(cat /etc/rancher/k3s/config.yaml.d/*.yaml 2>/dev/null | sed -n 's/^flannel-iface: *//p' | tail -n 1)
echo "start node-ip=${ip:-auto} flannel-iface=${iface:-auto}" >> /var/lib/k3s-standin.starts
if [ -n "$ip" ] && ! ip -4 -o addr show | grep -qF " inet $ip/"; then
  echo "level=fatal msg=node IP $ip not found in the host's network interfaces" >&2
  exit 1
fi
exec sleep infinity
"#;

const K3S_UNIT: &str = "[Unit]\nDescription=stand-in k3s\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nExecStart=/usr/local/bin/k3s server\nRestart=no\n\n[Install]\nWantedBy=multi-user.target\n";

/// Installs, enables and starts the stand-in `unit` (kubelet or k3s) on `node`.
fn install_standin(l: &LabGuard, node: &str, unit: &str, script: &str, unit_file: &str) {
    l.sh(
        node,
        &format!(
            "mkdir -p /usr/local/bin /lib/systemd/system && cat > /usr/local/bin/{unit} <<'EOF'\n{script}EOF\n\
             chmod 755 /usr/local/bin/{unit} && printf '{unit_file}' > /lib/systemd/system/{unit}.service && \
             systemctl daemon-reload && systemctl enable -q --now {unit}"
        ),
    );
}

/// Reboots one node and waits (bounded) until it is booted again and its kubelet-like units
/// have had their chance to start (`systemctl is-system-running --wait`).
fn reboot_and_wait(lab: &Lab, node: &str) {
    let dir = lab.node_dir(node);
    let old = wgprov::lab::systemd::machine_pid(&dir).unwrap();
    let (code, _, err) = lab.lab.exec(node, &["systemctl", "reboot"]);
    assert_eq!(code, 0, "{node}: {err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = wgprov::lab::systemd::machine_pid(&dir)
            && p != old
            && matches!(
                lab.lab
                    .exec(node, &["systemctl", "is-system-running", "--wait"])
                    .1
                    .trim(),
                "running" | "degraded"
            )
        {
            break;
        }
        assert!(Instant::now() < deadline, "{node} did not boot again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `systemctl show` properties of a unit on a node, as `Key=value` lines.
fn unit_props(l: &LabGuard, node: &str, unit: &str, props: &str) -> String {
    l.sh(node, &format!("systemctl show -p {props} {unit}"))
}

#[test]
fn systemd_nodes_apply_guarded_reboot_into_the_mesh_and_leave_nothing() {
    let Some(image) = image() else { return };
    // cabin1 runs k3s; the others the kubeadm packages' kubelet
    let lab = Lab::demo_with("sd", &image, |y| {
        y.replace(
            "      cabin1:\n        address: 192.168.0.50\n",
            "      cabin1:\n        address: 192.168.0.50\n        kubernetes: k3s\n",
        )
    });
    let l = &lab.lab;
    for (n, _, _) in &lab.nodes {
        if n == "cabin1" {
            install_standin(l, n, "k3s", K3S, K3S_UNIT);
        } else {
            install_standin(l, n, "kubelet", KUBELET, KUBELET_UNIT);
        }
    }

    // real machines: PID 1 is systemd, booted, each with its own host name and host key
    let mut host_keys = Vec::new();
    for (n, _, _) in &lab.nodes {
        assert_eq!(l.sh(n, "cat /proc/1/comm").trim(), "systemd", "{n}");
        assert_eq!(l.sh(n, "hostname").trim(), n);
        let (_, state, _) = l.exec(n, &["systemctl", "is-system-running", "--wait"]);
        assert!(
            matches!(state.trim(), "running" | "degraded"),
            "{n}: {state}"
        );
        host_keys.push(l.sh(n, "cat /etc/ssh/ssh_host_ed25519_key.pub"));
        eprintln!("{n}: {}", l.sh(n, "systemd-analyze | head -n 1").trim());
    }
    host_keys.sort();
    host_keys.dedup();
    assert_eq!(host_keys.len(), lab.nodes.len(), "host keys are shared");

    // a guarded apply: the dead-man is armed as a transient systemd timer on every changed
    // node. A slow `sysctl` on node1 (its own /usr/local/sbin, first on wgprov's PATH) holds
    // its change open long enough to see the timer from outside.
    l.wrap_tool(
        "node1",
        "sysctl",
        "#!/bin/sh\nsleep 2\nexec /usr/sbin/sysctl \"$@\"\n",
    );
    let applied_at = Instant::now();
    let confirm_timeout = 24;
    let (code, out, seen) = std::thread::scope(|s| {
        let apply = s.spawn(|| lab.apply(&["--confirm-timeout", &confirm_timeout.to_string()]));
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !apply.is_finished() && Instant::now() < deadline && seen.is_empty() {
            let (_, timers, _) = l.exec(
                "node1",
                &[
                    "systemctl",
                    "list-timers",
                    "--all",
                    "--no-legend",
                    "--no-pager",
                ],
            );
            if let Some(line) = timers.lines().find(|t| t.contains("wgprov-deadman-")) {
                seen = line.to_string();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (code, out) = apply.join().unwrap();
        (code, out, seen)
    });
    l.unwrap_tool("node1", "sysctl");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GUARD CONFIRMED"), "{out}");
    assert!(
        out.contains("systemctl restart wg-quick@wg0"),
        "the systemd handler did not run:\n{out}"
    );
    assert!(
        !seen.is_empty(),
        "no wgprov-deadman timer in node1's `systemctl list-timers` during the change:\n{out}"
    );
    eprintln!("during the change, node1: {seen}");

    // the mesh: every cross-site pair pings over wg0; wg-quick@wg0 is enabled and active
    let failed = lab.cross_site_failures(Duration::from_secs(30));
    assert!(failed.is_empty(), "no ping over wg0: {failed:#?}");
    for (n, _, _) in &lab.nodes {
        assert_eq!(
            l.sh(n, "systemctl is-enabled wg-quick@wg0").trim(),
            "enabled",
            "{n}"
        );
        assert_eq!(
            l.sh(n, "systemctl is-active wg-quick@wg0").trim(),
            "active",
            "{n}"
        );
        // confirmed, with the timer's unit recorded and stopped: nothing armed is left
        let run = l.sh(n, "ls /var/lib/wgprov/runs");
        let unit = l.sh(
            n,
            &format!("cat /var/lib/wgprov/runs/{}/confirmed/unit", run.trim()),
        );
        assert!(unit.starts_with("wgprov-deadman-"), "{n}: {unit}");
        let timers = l.sh(n, "systemctl list-timers --all --no-legend --no-pager");
        assert!(!timers.contains("wgprov-deadman-"), "{n}: {timers}");
    }

    // the node IP where each flavor reads it, its unit ordered after wg-quick@wg0 (a drop-in,
    // daemon-reload) and restarted onto the new node IP after checking it exists
    for (n, _, ip) in &lab.nodes {
        let (unit, dropins): (&str, &[&str]) = if n == "cabin1" {
            ("k3s", &["k3s", "k3s-agent"])
        } else {
            ("kubelet", &["kubelet"])
        };
        for d in dropins {
            let text = l.sh(
                n,
                &format!("cat /etc/systemd/system/{d}.service.d/50-wgprov.conf"),
            );
            assert!(
                text.contains("After=wg-quick@wg0.service")
                    && text.contains("Wants=wg-quick@wg0.service"),
                "{n}: {d}: {text}"
            );
        }
        let props = unit_props(l, n, unit, "After,ActiveState,NRestarts");
        assert!(props.contains("wg-quick@wg0.service"), "{n}: {props}");
        assert!(
            props.contains("ActiveState=active"),
            "{n}: {props}\n{}",
            l.sh(
                n,
                &format!("journalctl -u {unit} -o cat --no-pager | tail -n 8")
            )
        );
        assert!(props.contains("NRestarts=0"), "{n}: {props}");
        if n == "cabin1" {
            assert_eq!(
                l.sh(n, "cat /etc/rancher/k3s/config.yaml.d/50-wgprov.yaml")
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>(),
                vec![format!("node-ip: {ip}"), "flannel-iface: wg0".to_string()],
            );
            let starts = l.sh(n, "cat /var/lib/k3s-standin.starts");
            assert_eq!(
                starts.lines().last(),
                Some(format!("start node-ip={ip} flannel-iface=wg0").as_str()),
                "k3s not restarted onto its node IP: {starts}"
            );
            assert_eq!(starts.lines().count(), 2, "{starts}");
            // a k3s node has no kubeadm file
            assert_eq!(l.exec(n, &["test", "-e", "/etc/default/kubelet"]).0, 1);
        } else {
            let log = l.sh(n, "journalctl -u kubelet -o cat --no-pager");
            assert!(
                log.contains(&format!("stand-in kubelet: running with node IP {ip}")),
                "{n}: kubelet not restarted onto its node IP: {log}"
            );
        }
    }
    assert!(
        out.contains("restart kubelet") && out.contains("check that"),
        "{out}"
    );

    // status on systemd nodes: healthy, every link up, nothing to warn about
    let (code, v, out) = lab.status_json();
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["problems"], serde_json::json!([]), "{out}");
    assert!(
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["up"] == true),
        "{out}"
    );
    assert!(v.get("warnings").is_none(), "{out}");

    // a second apply changes nothing (and with --no-guard too)
    let (code, out) = lab.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(code, 0, "changes pending after the apply:\n{out}");
    let (code, out) = lab.apply(&["--no-guard"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("created") && !out.contains("updated"),
        "{out}"
    );
    for (n, _, _) in &lab.nodes {
        assert!(
            out.contains(&format!("{n:<8}: ok=")) && out.contains("changed=0"),
            "{out}"
        );
    }

    // a good change stays: past its confirm timeout, no dead-man put anything back
    let stays = Duration::from_secs(confirm_timeout + 3);
    if let Some(rest) = stays.checked_sub(applied_at.elapsed()) {
        std::thread::sleep(rest);
    }
    for (n, _, _) in &lab.nodes {
        let log = l.sh(n, "cat /var/lib/wgprov/log");
        assert!(log.contains("confirmed"), "{n}: {log}");
        assert!(!log.contains("put back"), "{n}: {log}");
        l.sh(n, "test -f /etc/wireguard/wg0.conf");
    }

    // leftovers that a reboot must not keep: forwarding on a member, a firewall rule, a route
    l.sh(
        "node2",
        "sysctl -qw net.ipv4.ip_forward=1 && iptables -A INPUT -m comment --comment wgprov-leftover -j ACCEPT \
         && ip route add 10.250.0.0/24 dev eth0",
    );
    // reboot every node at once; no apply after it
    let before: Vec<(String, u32)> = lab
        .nodes
        .iter()
        .map(|(n, _, _)| {
            (
                n.clone(),
                machine_pid(&lab.node_dir(n), Duration::ZERO).unwrap(),
            )
        })
        .collect();
    let rebooted_at = Instant::now();
    for (n, _, _) in &lab.nodes {
        let (code, _, err) = l.exec(n, &["systemctl", "reboot"]);
        assert_eq!(code, 0, "{n}: {err}");
    }
    for (n, old) in &before {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match wgprov::lab::systemd::machine_pid(&lab.node_dir(n)) {
                Some(p) if p != *old => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "{n} did not boot again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let booted = rebooted_at.elapsed();
    let remaining = Duration::from_secs(60).saturating_sub(booted);
    let failed = lab.cross_site_failures(remaining);
    let back = rebooted_at.elapsed();
    assert!(
        failed.is_empty(),
        "60 s after rebooting every node, no ping over wg0: {failed:#?}"
    );
    eprintln!(
        "reboot of every node: booted again after {:.1} s, every cross-site pair pings after {:.1} s",
        booted.as_secs_f64(),
        back.as_secs_f64()
    );
    for (n, _, _) in &lab.nodes {
        let console = std::fs::read_to_string(lab.node_dir(n).join("console.log")).unwrap();
        assert!(
            console.contains(&format!("wgprov-lab: boot 2 of {n} ")),
            "{n}: {console}"
        );
        assert_eq!(
            l.sh(n, "systemctl is-active wg-quick@wg0").trim(),
            "active",
            "{n}: wg0 not brought up by systemd at boot"
        );
    }
    // the kubelet (a stand-in that fails for good when its node IP is on no interface) came up
    // after wg0 on every node, first time, no restart
    for (n, _, ip) in &lab.nodes {
        let unit = if n == "cabin1" { "k3s" } else { "kubelet" };
        let props = unit_props(l, n, unit, "ActiveState,NRestarts");
        assert!(
            props.contains("ActiveState=active") && props.contains("NRestarts=0"),
            "{n}: {unit} after the reboot: {props}\n{}",
            l.sh(
                n,
                &format!("journalctl -b -u {unit} -o cat --no-pager | tail -n 5")
            )
        );
        if unit == "kubelet" {
            let log = l.sh(n, "journalctl -b -u kubelet -o cat --no-pager");
            assert!(log.contains(&format!("node IP {ip}")), "{n}: {log}");
        }
    }

    // the control: without the drop-in the same kubelet loses the race at boot, every time
    // here (3 of 3 tries by hand), which is what the drop-in is for
    l.sh(
        "node2",
        "rm /etc/systemd/system/kubelet.service.d/50-wgprov.conf && systemctl daemon-reload",
    );
    reboot_and_wait(&lab, "node2");
    let props = unit_props(l, "node2", "kubelet", "ActiveState");
    let journal = l.sh("node2", "journalctl -b -u kubelet -o cat --no-pager");
    assert!(
        props.contains("ActiveState=failed")
            && journal.contains("failed to validate nodeIP: node IP: 10.100.0.2 not found"),
        "without the drop-in the kubelet did not fail at boot: {props}\n{journal}"
    );
    // an apply puts the drop-in back (a managed file gone is a change); the next boot is clean
    let (code, out) = lab.apply(&["--no-guard"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("node2: created /etc/systemd/system/kubelet.service.d/50-wgprov.conf"),
        "{out}"
    );
    reboot_and_wait(&lab, "node2");
    let props = unit_props(l, "node2", "kubelet", "ActiveState,NRestarts");
    assert!(
        props.contains("ActiveState=active") && props.contains("NRestarts=0"),
        "{props}"
    );

    // a fresh network namespace: what was set by hand is gone; what is persisted is back
    assert_eq!(l.sh("node2", "sysctl -n net.ipv4.ip_forward").trim(), "0");
    assert!(!l.sh("node2", "iptables -S").contains("wgprov-leftover"));
    assert!(!l.sh("node2", "ip route").contains("10.250.0.0"));
    for nh in ["node1", "office1", "cabin1"] {
        assert_eq!(
            l.sh(nh, "sysctl -n net.ipv4.ip_forward").trim(),
            "1",
            "{nh}: /etc/sysctl.d/99-wgprov.conf not applied at boot"
        );
    }

    // teardown leaves no namespace, process, mount or cgroup
    let prefix = l.prefix.clone();
    let dir = wgprov::lab::lab_dir(&prefix);
    let mut pids: Vec<u32> = l.state.boot_loops.values().copied().collect();
    for (n, _, _) in &lab.nodes {
        let nd = lab.node_dir(n);
        pids.extend(
            std::fs::read_to_string(nd.join("nspawn.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok()),
        );
        pids.extend(wgprov::lab::systemd::machine_pid(&nd));
    }
    let cgroups = l.state.cgroups.clone();
    assert!(pids.len() >= 3 * lab.nodes.len(), "{pids:?}");
    let t = Instant::now();
    wgprov::lab::down(&prefix).unwrap();
    eprintln!("lab down: {:.1} s", t.elapsed().as_secs_f64());
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.lines().any(|l| l.starts_with(&format!("{prefix}-"))),
        "{netns}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()) && !mounts.contains(&format!("{prefix}-n-")),
        "{mounts}"
    );
    for c in &cgroups {
        assert!(!c.exists(), "cgroup {} left", c.display());
    }
    assert!(!dir.exists());
    for m in l.state.machines.values() {
        assert!(
            !Path::new("/run/systemd/nspawn/propagate").join(m).exists(),
            "{m}"
        );
    }
}

#[test]
fn a_systemd_lab_that_cannot_boot_fails_fast_and_leaves_nothing() {
    let Some(_) = image() else { return };
    // an "image" without systemd: every machine fails to boot, `up` fails and removes all
    let bad = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("demo.yaml");
    std::fs::copy(root().join("inventories/demo.yaml"), &inv).unwrap();
    let _lock = super::common::LAB_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let prefix = format!("t{}sdbad", std::process::id() % 100_000);
    let p = wgprov::topology::plan_inventory(&inv, true).unwrap();
    let mut layout =
        wgprov::lab::plan::plan(&p.inventory, &p.topology, &prefix, &[], None).unwrap();
    layout.systemd = Some(bad.path().to_path_buf());
    let t = Instant::now();
    let err = wgprov::lab::up(&inv, &layout).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(30), "{err}");
    assert!(err.contains("did not boot"), "{err}");
    assert!(
        wgprov::lab::existing_namespaces(&prefix)
            .unwrap()
            .is_empty()
    );
    assert!(!wgprov::lab::lab_dir(&prefix).exists());
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/unified/wgprov-lab")
        .or_else(|_| std::fs::read_dir("/sys/fs/cgroup/wgprov-lab"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(cgroups, 0);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&format!("/{prefix}/")), "{mounts}");
}

/// Waits (bounded) until `f` holds.
pub(super) fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The two systemd paths that broke when they first met systemd (wireguard-go nodes):
/// - the dead-man, a transient unit, put an interface change back with `wg-quick up` run
///   inside itself: wireguard-go lived in the transient unit's cgroup and was killed when the
///   unit ended, so every "put back" host was left without wg0 — the whole mesh down;
/// - `systemctl restart wg-quick@wg0` on a node whose wg0 was brought up by hand (`wg-quick up
///   wg0`, the unit inactive) failed with "wg0 already exists", so the change was rolled back.
///
/// Here node2's wg0 is up by hand, every node gets an interface change (a new listen port),
/// and the controller is killed in the health gate: every change is made, then put back by its
/// own dead-man, through the unit — and the mesh is whole again.
#[test]
fn the_dead_man_puts_an_interface_change_back_through_the_unit_and_the_mesh_stays_up() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let Some(image) = image() else { return };
    let lab = Lab::demo("sddm", &image);
    let l = &lab.lab;
    let (code, out) = lab.apply(&["--no-guard"]);
    assert_eq!(code, 0, "{out}");
    l.sh(
        "node2",
        "systemctl stop wg-quick@wg0 && wg-quick up wg0 >/dev/null 2>&1 && ! systemctl is-active -q wg-quick@wg0",
    );
    assert!(lab.cross_site_failures(Duration::from_secs(30)).is_empty());

    let yaml = std::fs::read_to_string(&lab.inv).unwrap();
    let port = yaml.replace("  cluster_cidrs:", "  listen_port: 51821\n  cluster_cidrs:");
    std::fs::write(&lab.inv, &port).unwrap();
    let cmd: Vec<String> = [
        env!("CARGO_BIN_EXE_wgprov"),
        "apply",
        "-i",
        &lab.inv,
        "--confirm-timeout",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c = wgprov::lab::command(&l.prefix, "controller", &cmd).unwrap();
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let mut child = c.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(40) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let gate = line.contains("guard: probing");
            seen.push(line);
            if gate {
                break;
            }
        }
    }
    // SAFETY: killpg on the process group made for this child (nsenter and wgprov).
    unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("guard: probing")),
        "the gate never came:\n{}",
        seen.join("\n")
    );

    // every host was changed (node2 too: its hand-made wg0 did not fail the unit's restart),
    // then put back by its own dead-man
    for (n, _, _) in &lab.nodes {
        assert!(
            eventually(Duration::from_secs(40), || l
                .sh(n, "cat /var/lib/wgprov/log")
                .contains("put back (deadman)")),
            "{n}: not put back by its dead-man: {}",
            l.sh(n, "cat /var/lib/wgprov/log")
        );
        let log = l.sh(n, "cat /var/lib/wgprov/log");
        assert!(
            !log.contains("change failed") && log.contains(": changed"),
            "{n}: {log}"
        );
        assert!(
            l.sh(n, "cat /etc/wireguard/wg0.conf")
                .contains("ListenPort = 51820"),
            "{n}"
        );
        assert!(
            eventually(Duration::from_secs(10), || l
                .exec(n, &["ip", "link", "show", "wg0"])
                .0
                == 0),
            "{n}: no wg0 after its dead-man put the change back"
        );
        assert_eq!(
            l.sh(n, "systemctl is-active wg-quick@wg0").trim(),
            "active",
            "{n}"
        );
        let timers = l.sh(n, "systemctl list-timers --all --no-legend --no-pager");
        assert!(!timers.contains("wgprov-deadman-"), "{n}: {timers}");
    }
    let failed = lab.cross_site_failures(Duration::from_secs(40));
    assert!(failed.is_empty(), "after the dead-men: {failed:#?}");
}

/// Drift, then a site whose public address changes, on systemd nodes. office has no endpoint
/// here, so its next-hop alone opens the link to cabin (whose endpoint is a name): when cabin's
/// address changes, only office1 re-resolving the name brings the link back.
#[test]
fn drift_is_reported_then_repaired_and_a_readdressed_site_comes_back_by_name() {
    let Some(image) = image() else { return };
    // office's router forwards nothing either: cabin1 cannot reach office1 on its own, only
    // office1 re-resolving cabin's name brings the link back
    let lab = Lab::demo_built(
        "sddr",
        &image,
        |y| y.replace("    endpoint: 198.51.100.20:51820\n", ""),
        &["office"],
    );
    let l = &lab.lab;
    // the re-resolution threshold shortened from 135 s to 20 s (a copy of the roles), so that
    // the test waits one timer period, not two minutes; the script is the same
    let dir = tempfile::tempdir().unwrap();
    let roles = roles_with_default(
        dir.path(),
        "reresolve",
        "reresolve_after: 135\n",
        "reresolve_after: 20\n",
    );
    let apply = |extra: &[&str]| {
        let mut a = vec!["--roles-path", roles.as_str()];
        a.extend_from_slice(extra);
        lab.apply(&a)
    };
    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(lab.cross_site_failures(Duration::from_secs(30)).is_empty());
    let ip = |n: &str| lab.nodes.iter().find(|x| x.0 == n).unwrap().2.clone();

    // drift: a peer removed by hand on a next-hop, wg0 stopped on a member, wg-quick@wg0
    // disabled on another
    let peers = l.sh(
        "office1",
        "wg show wg0 allowed-ips | awk '$2 == \"10.100.0.0/24\" {print $1}'",
    );
    let home_key = peers.trim().to_string();
    assert!(!home_key.is_empty());
    l.sh("office1", &format!("wg set wg0 peer {home_key} remove"));
    l.sh("node2", "systemctl stop wg-quick@wg0");
    l.sh("node3", "systemctl disable -q wg-quick@wg0");
    let (code, out) = apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(code, 3, "drift must be pending changes:\n{out}");
    for (n, what) in [
        ("office1", "is in the file but not running"),
        ("node2", "wg0 is down"),
        ("node3", "wg-quick@wg0 is not enabled"),
    ] {
        assert!(
            out.lines()
                .any(|line| line.starts_with(&format!("{n}: drift: ")) && line.contains(what)),
            "{n}: {what}\n{out}"
        );
    }
    assert!(
        !out.contains("cabin1: drift") && !out.contains("node1: drift"),
        "{out}"
    );
    // status names the same two faults, each on its node, and blames nobody else
    let (code, v, out) = lab.status_json();
    assert_eq!(code, 1, "{out}");
    let mut kinds: Vec<(String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    assert!(
        kinds.contains(&("drift".into(), "office1".into()))
            && kinds.contains(&("interface_down".into(), "node2".into()))
            && !kinds
                .iter()
                .any(|(k, _)| k == "port_forward_missing" || k == "unreachable"),
        "{kinds:?}\n{out}"
    );
    // --check changed nothing
    assert!(!l.sh("office1", "wg show wg0 peers").contains(&home_key));
    assert_ne!(l.exec("node2", &["ip", "link", "show", "wg0"]).0, 0);
    // apply repairs, through the guard; the next apply has nothing to do
    let (code, out) = apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GUARD CONFIRMED"), "{out}");
    assert!(l.sh("office1", "wg show wg0 peers").contains(&home_key));
    assert_eq!(
        l.sh("node2", "systemctl is-active wg-quick@wg0").trim(),
        "active"
    );
    assert_eq!(
        l.sh("node3", "systemctl is-enabled wg-quick@wg0").trim(),
        "enabled"
    );
    let (code, out) = apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    assert!(lab.cross_site_failures(Duration::from_secs(30)).is_empty());
    // healthy again, and with systemd nothing warns about names that do not re-resolve
    let (code, v, out) = lab.status_json();
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["problems"], serde_json::json!([]), "{out}");
    assert!(v.get("warnings").is_none(), "{out}");

    // the re-resolution timer runs on the next-hops that have cabin's name among their peers
    for nh in ["node1", "office1"] {
        assert_eq!(
            l.sh(nh, "systemctl is-active wgprov-reresolve-wg0.timer")
                .trim(),
            "active",
            "{nh}"
        );
    }
    // cabin's ISP hands its router a new address; the name follows (each node's /etc/hosts)
    let new: std::net::Ipv4Addr = "203.0.113.77".parse().unwrap();
    let old = wgprov::lab::readdress_wan(&l.prefix, "cabin", new).unwrap();
    for (n, _, _) in &lab.nodes {
        l.sh(
            n,
            &format!("sed -i 's/^{old}\\t/{new}\\t/' /etc/hosts && grep -q '^{new}' /etc/hosts"),
        );
    }
    let moved = Instant::now();
    // office1 -> cabin1 comes back without an apply, within 2.5 minutes (threshold 20 s, timer every 30 s)
    let back = eventually(Duration::from_secs(150), || {
        l.exec("office1", &["ping", "-c", "1", "-W", "1", &ip("cabin1")])
            .0
            == 0
    });
    let took = moved.elapsed();
    let journal = l.sh(
        "office1",
        "journalctl -u wgprov-reresolve-wg0.service -o cat --no-pager | grep -v reresolve-wg0 | tail -n 5",
    );
    assert!(
        back,
        "office1 never reached cabin1 again after cabin's address changed:\n{journal}\n{}",
        l.sh("office1", "wg show wg0")
    );
    let endpoint = l.sh("office1", "wg show wg0 endpoints");
    assert!(endpoint.contains(&format!("{new}:51821")), "{endpoint}");
    assert!(
        journal.contains("endpoint cabin.example.net:51821 looked up again"),
        "the timer did not re-resolve cabin's name: {journal}"
    );
    eprintln!(
        "cabin readdressed {old} -> {new}: office1 -> cabin1 back after {:.0} s, without an apply",
        took.as_secs_f64()
    );
    let failed = lab.cross_site_failures(Duration::from_secs(60));
    assert!(failed.is_empty(), "after cabin's new address: {failed:#?}");
}

/// The value of the sample of `family` whose labels contain `label` (`k="v"`), if any.
fn sample(prom: &str, family: &str, label: &str) -> Option<String> {
    prom.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next().map(str::to_string))
}

/// `network.metrics: textfile`: every node gets the timer, enabled; its service writes a file
/// promtool accepts, with every planned peer's samples and "runs as its file says" = 1, which
/// turns 0 once a peer is removed by hand. With the setting dropped, the next apply stops and
/// removes the timer, its files and the metrics file.
#[test]
fn metrics_textfile_timer_writes_promtool_clean_metrics_and_goes_away_with_the_setting() {
    const PROM: &str = "/var/lib/prometheus/node-exporter/wgprov.prom";
    let Some(image) = image() else { return };
    let lab = Lab::demo_with("sdmx", &image, |y| {
        y.replace("network:\n", "network:\n  metrics: textfile\n")
    });
    let l = &lab.lab;
    let t = Instant::now();
    let (code, out) = lab.apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("metrics: systemctl enable --now wgprov-metrics.timer"),
        "{out}"
    );
    // handshakes on every cross-site link first, so next-hops have handshake ages to show
    assert!(lab.cross_site_failures(Duration::from_secs(30)).is_empty());
    for (n, _, _) in &lab.nodes {
        assert_eq!(
            l.sh(n, "systemctl is-enabled wgprov-metrics.timer").trim(),
            "enabled",
            "{n}"
        );
    }
    let read = |n: &str| {
        l.sh(n, "systemctl start wgprov-metrics.service");
        l.sh(n, &format!("cat {PROM}"))
    };
    let as_configured = "wgprov_interface_as_configured{interface=\"wg0\"}";
    for n in ["node1", "node2"] {
        let prom = read(n);
        // fails on any complaint of promtool's (a visible skip without it, a failure under CI)
        super::metrics::promtool_check(&prom);
        assert!(
            prom.contains(&format!("{as_configured} 1\n")),
            "{n}:\n{prom}"
        );
        let private = l.sh(n, "wg show wg0 private-key");
        assert!(
            !prom.contains(private.trim()),
            "{n}: the private key is in the metrics file"
        );
        let sha = l.sh(n, "sha256sum /etc/wireguard/wg0.conf");
        let sha = sha.split(' ').next().unwrap();
        assert!(
            prom.contains(&format!(
                "wgprov_config_info{{interface=\"wg0\",sha256=\"{sha}\"}} 1\n"
            )),
            "{n}:\n{prom}"
        );
        let keys = l.sh(
            n,
            "wg-quick strip wg0 | awk '$1 == \"PublicKey\" {print $3}'",
        );
        assert!(!keys.trim().is_empty(), "{n}: no peers planned");
        for key in keys.lines() {
            let label = format!("public_key=\"{key}\"");
            for family in [
                "wgprov_peer_latest_handshake_timestamp_seconds",
                "wgprov_peer_receive_bytes",
                "wgprov_peer_transmit_bytes",
            ] {
                assert!(
                    sample(&prom, family, &label).is_some(),
                    "{n}: {family} {key}:\n{prom}"
                );
            }
        }
    }
    // node1 (home's next-hop) pinged office1 above: that peer has a handshake age
    let prom = read("node1");
    let age = sample(
        &prom,
        "wgprov_peer_handshake_age_seconds",
        "peer=\"office1\"",
    )
    .unwrap_or_else(|| panic!("no handshake age for office1:\n{prom}"));
    assert!(age.parse::<u64>().unwrap() < 120, "{prom}");
    assert!(
        sample(&prom, "wgprov_peer_transmit_bytes", "peer=\"office1\"").is_some_and(|b| b != "0"),
        "{prom}"
    );

    // a peer removed by hand: wg0 no longer runs as its file says
    let key = l.sh("node2", "wg show wg0 peers | head -n 1");
    l.sh("node2", &format!("wg set wg0 peer {} remove", key.trim()));
    let prom = read("node2");
    assert!(prom.contains(&format!("{as_configured} 0\n")), "{prom}");
    assert!(
        sample(
            &prom,
            "wgprov_peer_receive_bytes",
            &format!("public_key=\"{}\"", key.trim())
        )
        .is_none(),
        "{prom}"
    );

    // the setting dropped: the timer is stopped and gone, and so are its files and the metrics
    let yaml = std::fs::read_to_string(&lab.inv).unwrap();
    std::fs::write(&lab.inv, yaml.replace("  metrics: textfile\n", "")).unwrap();
    let (code, out) = lab.apply(&[]);
    assert_eq!(code, 0, "{out}");
    for (n, _, _) in &lab.nodes {
        let (code, state, _) = l.exec(n, &["systemctl", "is-active", "wgprov-metrics.timer"]);
        assert!(code != 0 && state.trim() != "active", "{n}: timer {state}");
        let (_, enabled, _) = l.exec(n, &["systemctl", "is-enabled", "wgprov-metrics.timer"]);
        assert_ne!(enabled.trim(), "enabled", "{n}");
        l.sh(
            n,
            &format!(
                "! test -e {PROM} && ! test -e /usr/local/lib/wgprov/metrics.sh && ! test -e /etc/systemd/system/wgprov-metrics.timer && ! test -e /etc/systemd/system/timers.target.wants/wgprov-metrics.timer"
            ),
        );
    }
    eprintln!(
        "metrics textfile: applied, checked, removed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// `state: absent` on systemd machines: a whole site taken out. Its next-hop's unit is stopped
/// and disabled, its drop-ins and timers go with a daemon-reload, its kubelet is restarted onto
/// an address of its own choosing; the remaining sites still reach each other.
#[test]
fn a_removed_site_leaves_no_unit_timer_or_drop_in_and_its_kubelet_runs_on_its_own() {
    let Some(image) = image() else { return };
    let mut lab = Lab::demo("sdrm", &image);
    let l = &lab.lab;
    install_standin(l, "office1", "kubelet", KUBELET, KUBELET_UNIT);
    let (code, out) = lab.apply(&[]);
    assert_eq!(code, 0, "{out}");
    let timer = "wgprov-reresolve-wg0.timer";
    assert_eq!(
        l.sh("office1", &format!("systemctl is-active {timer}"))
            .trim(),
        "active"
    );
    assert!(
        eventually(Duration::from_secs(15), || l
            .sh(
                "office1",
                "journalctl -u kubelet -o cat --no-pager | grep 'running with node IP' | tail -n 1"
            )
            .contains("running with node IP 10.100.1.1")),
        "the kubelet never ran on its WireGuard address"
    );
    let yaml = std::fs::read_to_string(&lab.inv).unwrap();
    std::fs::write(
        &lab.inv,
        yaml.replace("  office:\n", "  office:\n    state: absent\n"),
    )
    .unwrap();
    let (code, out) = lab.apply(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GUARD CONFIRMED"), "{out}");
    for n in ["office1", "office2"] {
        assert_ne!(l.exec(n, &["ip", "link", "show", "wg0"]).0, 0, "{n}: wg0");
        assert_eq!(
            l.sh(n, "systemctl is-enabled wg-quick@wg0 || true").trim(),
            "disabled",
            "{n}"
        );
    }
    // the next-hop's timer (stopped, no failed unit left behind), drop-in and sysctl file are
    // gone, and systemd knows it
    let state = l.sh(
        "office1",
        &format!(
            "systemctl is-active {timer} || true; ls /etc/systemd/system/{timer} /etc/systemd/system/kubelet.service.d/50-wgprov.conf /etc/sysctl.d/99-wgprov.conf 2>/dev/null || true; systemctl show -p DropInPaths kubelet"
        ),
    );
    assert_eq!(state, "inactive\nDropInPaths=\n", "{state}");
    // the kubelet was restarted with its node IP given back (the stand-in picks its own): its
    // last start says so (journald may take a moment to have the line)
    let last = || {
        l.sh(
            "office1",
            "journalctl -u kubelet -o cat --no-pager | grep 'running with node IP' | tail -n 1",
        )
    };
    assert!(
        eventually(Duration::from_secs(15), || last()
            .contains("running with node IP (auto)")),
        "{}",
        last()
    );
    assert!(
        !l.sh("office1", "cat /etc/default/kubelet")
            .contains("--node-ip")
    );
    lab.nodes.retain(|(_, site, _)| site != "office");
    assert_eq!(
        lab.cross_site_failures(Duration::from_secs(30)),
        Vec::<String>::new()
    );
    let (code, out) = lab.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
}
