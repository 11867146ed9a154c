//! `wgprov lab demo`: a three-site lab from the built-in demo inventory, then, from the lab's
//! controller, `apply --check --diff`, `apply`, a second `apply` that must change nothing, a ping
//! between every pair of nodes in different sites over the WireGuard interface, `status`, and
//! the teardown — however the demo ends, Ctrl-C included.
//!
//! The demo runs the wgprov binary that runs it (`current_exe`) inside the controller, exactly
//! as a user would run it there.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::topology::{self, NodePlan, Planned};

use super::LabPlan;

/// What a demo run proved: how many cross-site pings crossed, and which did not.
#[derive(Debug, Default)]
pub struct DemoReport {
    /// Cross-site pings that crossed (both NATs, over the WireGuard interface).
    pub crossed: usize,
    /// `a -> b` for each cross-site ping that never answered.
    pub failed: Vec<String>,
}

impl DemoReport {
    /// True when every cross-site ping crossed: the demo's success.
    pub fn all_crossed(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Set by SIGINT/SIGTERM during the demo, so that it stops at the next step and still tears its
/// lab down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // only an atomic store: async-signal-safe
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// An error once the demo was asked to stop (SIGINT/SIGTERM).
fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Error::Lab("interrupted".into()))
    } else {
        Ok(())
    }
}

/// Ctrl-C (and SIGTERM) stop the demo at its next step; its guard then tears the lab down.
fn catch_interrupts() {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

/// Removes the demo lab and its inventory however the demo ends.
struct DemoGuard {
    prefix: String,
    dir: PathBuf,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        match super::down(&self.prefix) {
            Ok(r) => println!(
                "\n== lab down: removed {} namespaces, stopped {} processes",
                r.namespaces.len(),
                r.processes
            ),
            Err(e) => eprintln!("lab down {}: {e}", self.prefix),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The demo inventory written to `<tmp>/wgprov-demo-<prefix>/demo.yaml` (its lock file lands
/// beside it, not in the repository), planned, and the lab laid out for it.
struct Prepared {
    dir: PathBuf,
    inv: PathBuf,
    planned: Planned,
    layout: LabPlan,
}

/// Checks the machine, writes and plans the demo inventory, lays out its lab.
fn prepare(prefix: &str, systemd: bool) -> Result<Prepared> {
    super::check_prefix(prefix)?;
    super::preflight()?;
    let dir = std::env::temp_dir().join(format!("wgprov-demo-{prefix}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let inv = dir.join("demo.yaml");
    std::fs::write(&inv, include_str!("../../inventories/demo.yaml"))
        .map_err(|e| Error::io(&inv, e))?;
    let planned = topology::plan_inventory(&inv, true)?;
    let mut layout = super::plan::plan(&planned.inventory, &planned.topology, prefix, &[], None)?;
    if systemd {
        super::systemd::preflight(layout.nodes.len())?;
        layout.systemd = Some(super::systemd::ensure_image()?);
    }
    Ok(Prepared {
        dir,
        inv,
        planned,
        layout,
    })
}

/// Runs wgprov commands in the lab's controller.
struct Controller<'a> {
    prefix: &'a str,
    exe: String,
    inv: String,
}

impl Controller<'_> {
    /// `wgprov ARGS…` in the controller; its exit status.
    fn wgprov(&self, args: &[&str]) -> Result<i32> {
        interrupted()?;
        let mut cmd = vec![self.exe.clone()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        super::exec(self.prefix, "controller", &cmd)
    }

    /// A step of the demo: `wgprov ARGS…` in the controller, which must exit 0; its wall time.
    fn step(&self, title: &str, args: &[&str]) -> Result<Duration> {
        println!("\n== {title}");
        let t = Instant::now();
        let code = self.wgprov(args)?;
        if code != 0 {
            return Err(Error::Lab(format!("{title}: exited {code}")));
        }
        Ok(t.elapsed())
    }
}

/// Runs the demo with this prefix (`systemd`: nodes are Debian booted under systemd-nspawn,
/// rebooted once after the pings). Prints every step; the lab is gone when it returns.
pub fn run(prefix: &str, systemd: bool) -> Result<DemoReport> {
    let started = Instant::now();
    let Prepared {
        dir,
        inv,
        planned,
        layout,
    } = prepare(prefix, systemd)?;
    println!(
        "== lab up: {} sites behind NAT, {} nodes {}, a controller",
        layout.routers.len(),
        layout.nodes.len(),
        if systemd {
            "booted under systemd-nspawn (Debian, systemd, sshd)"
        } else {
            "with sshd"
        }
    );
    catch_interrupts();
    let st = super::up(&inv, &layout)?;
    let guard = DemoGuard {
        prefix: prefix.to_string(),
        dir,
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let ctl = Controller {
        prefix,
        exe: exe.display().to_string(),
        inv: inv.display().to_string(),
    };
    let inv = ctl.inv.as_str();
    ctl.step(
        "wgprov apply --check --diff (from the controller)",
        &["apply", "-i", inv, "--check", "--diff"],
    )?;
    let first = ctl.step("wgprov apply", &["apply", "-i", inv])?;
    let second = ctl.step(
        "wgprov apply again: nothing to change",
        &["apply", "-i", inv],
    )?;

    let nodes = &planned.topology.nodes;
    let wg = &planned.topology.network.interface;
    let mut report = ping_matrix(
        prefix,
        nodes,
        &format!("pings over {wg} between every pair of nodes in different sites"),
    )?;
    if systemd {
        let after = reboot_and_ping(prefix, nodes, wg)?;
        report.crossed += after.crossed;
        report.failed.extend(after.failed);
    }
    println!("\n== wgprov status");
    let _ = ctl.wgprov(&["status", "-i", inv]);
    drop(guard);
    println!(
        "\n== demo: {}/{} cross-site pings crossed both NATs; first apply {:.2} s, no-change apply {:.2} s, whole demo {:.1} s (lab of {} namespaces)",
        report.crossed,
        report.crossed + report.failed.len(),
        first.as_secs_f64(),
        second.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        st.namespaces.len()
    );
    if !report.all_crossed() {
        eprintln!("pings that did not cross: {}", report.failed.join(", "));
    }
    Ok(report)
}

/// Every pair of nodes in different sites pings over the WireGuard interface, one line each.
fn ping_matrix(prefix: &str, nodes: &[NodePlan], title: &str) -> Result<DemoReport> {
    println!("\n== {title}");
    let mut report = DemoReport::default();
    for a in nodes {
        for b in nodes.iter().filter(|b| b.site != a.site) {
            let ip = b.wireguard_ip.to_string();
            interrupted()?;
            let ok = pings(prefix, &a.name, &ip);
            println!(
                "  {:<8} ({:<6}) -> {:<8} ({:<6}) {:<12} {}",
                a.name,
                a.site,
                b.name,
                b.site,
                ip,
                if ok { "ok" } else { "FAILED" }
            );
            if ok {
                report.crossed += 1;
            } else {
                report.failed.push(format!("{} -> {}", a.name, b.name));
            }
        }
    }
    Ok(report)
}

/// True when `ip` answers a ping from `node`. Bounded: up to 10 tries of 1 s, since WireGuard
/// retries a lost first handshake only after 5 s.
fn pings(prefix: &str, node: &str, ip: &str) -> bool {
    let ping: Vec<String> = ["ping", "-c", "1", "-W", "1", ip]
        .iter()
        .map(|s| s.to_string())
        .collect();
    (0..10).any(|_| {
        !INTERRUPTED.load(Ordering::SeqCst)
            && super::command(prefix, node, &ping)
                .and_then(|mut c| {
                    c.stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map_err(|e| Error::Lab(e.to_string()))
                })
                .map(|s| s.success())
                .unwrap_or_else(|_| {
                    // a machine still booting: wait before the next try
                    std::thread::sleep(Duration::from_secs(1));
                    false
                })
    })
}

/// Systemd nodes: reboots every node at once, waits (bounded) until each is back with its
/// WireGuard unit active, and pings across every pair of sites again — no apply in between.
fn reboot_and_ping(prefix: &str, nodes: &[NodePlan], wg: &str) -> Result<DemoReport> {
    println!("\n== reboot every node at once (systemctl reboot inside each); no apply after it");
    let nodes_dir = super::lab_dir(prefix).join("nodes");
    let before: Vec<Option<u32>> = nodes
        .iter()
        .map(|n| super::systemd::machine_pid(&nodes_dir.join(&n.name)))
        .collect();
    let t = Instant::now();
    for n in nodes {
        interrupted()?;
        super::exec(prefix, &n.name, &["systemctl".into(), "reboot".into()])?;
    }
    for (n, old) in nodes.iter().zip(before) {
        wait_rebooted(
            prefix,
            &nodes_dir,
            &n.name,
            old,
            t + Duration::from_secs(60),
        )?;
    }
    println!(
        "  every node booted again, wg-quick@wg0 active, {:.1} s after the reboot",
        t.elapsed().as_secs_f64()
    );
    let report = ping_matrix(
        prefix,
        nodes,
        &format!(
            "after the reboot: pings over {wg} between every pair of nodes in different sites"
        ),
    )?;
    println!(
        "  the mesh came back {:.1} s after the reboot",
        t.elapsed().as_secs_f64()
    );
    Ok(report)
}

/// Waits until `node` runs as a new machine (not the PID `old`) with `wg-quick@wg0` active;
/// an error past `deadline`.
fn wait_rebooted(
    prefix: &str,
    nodes_dir: &Path,
    node: &str,
    old: Option<u32>,
    deadline: Instant,
) -> Result<()> {
    let active: Vec<String> = ["systemctl", "is-active", "-q", "wg-quick@wg0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    loop {
        interrupted()?;
        let pid = super::systemd::machine_pid(&nodes_dir.join(node));
        let up = pid.is_some()
            && pid != old
            && super::command(prefix, node, &active)
                .and_then(|mut c| c.status().map_err(|e| Error::Lab(e.to_string())))
                .is_ok_and(|s| s.success());
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "{node} did not come back within 60 s of its reboot"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
