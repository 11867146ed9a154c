//! Offline benchmark: validate, plan and render an inventory of 255 sites x 250 nodes
//! (63,750 nodes). Each phase runs in a fresh process (this binary re-executed with
//! `--phase NAME`) so that its peak memory (VmHWM) is its own. Prints figures; never fails on
//! time.
//!
//! Run: `cargo bench --bench offline` (optionally `-- --sites 255 --nodes 250`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use wgprov::desired;
use wgprov::roles::{RoleSource, Roles};
use wgprov::topology::plan_inventory;

fn inventory(sites: usize, nodes: usize) -> String {
    let mut y = String::with_capacity(sites * nodes * 60);
    y.push_str("network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\nsites:\n");
    for s in 0..sites {
        y.push_str(&format!("  site{s}:\n    lan_cidrs: [192.168.{}.0/24]\n    endpoint: site{s}.example.net:51820\n    next_hop: s{s}n0\n    router: openwrt\n    nodes:\n", s % 256));
        for n in 0..nodes {
            y.push_str(&format!(
                "      s{s}n{n}:\n        address: 192.168.{}.{}\n",
                s % 256,
                n + 2
            ));
        }
    }
    y
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn phase(name: &str, inv: &Path) {
    let t = Instant::now();
    let lock = wgprov::inventory::lock_path(inv);
    let _ = std::fs::remove_file(&lock);
    let detail = match name {
        "validate" => {
            let p = plan_inventory(inv, false).expect("valid");
            format!("{} nodes", p.topology.nodes.len())
        }
        "plan" => {
            let p = plan_inventory(inv, true).expect("valid");
            let mut json = Vec::new();
            wgprov::output::write_plan_json(&p.topology, &mut json).unwrap();
            format!(
                "{} nodes, plan JSON {} MiB",
                p.topology.nodes.len(),
                json.len() >> 20
            )
        }
        "render" => {
            let roles = Roles::load(RoleSource::Embedded).unwrap();
            let p = plan_inventory(inv, true).expect("valid");
            let t_keys = Instant::now();
            let keys = desired::fresh_keys(&p.topology);
            let keys_s = t_keys.elapsed().as_secs_f64();
            let t_render = Instant::now();
            let hosts = wgprov::hosts::render::render_offline(&roles, &p.topology, &keys).unwrap();
            let render_s = t_render.elapsed().as_secs_f64();
            let t_write = Instant::now();
            let out = inv.parent().unwrap().join("out");
            let files = wgprov::cli::write_tree(&out, &hosts).unwrap();
            let write_s = t_write.elapsed().as_secs_f64();
            format!(
                "{files} files: keys {keys_s:.2}s, templates {render_s:.2}s, writing {write_s:.2}s"
            )
        }
        _ => panic!("unknown phase {name}"),
    };
    println!(
        "{name}\t{:.3}\t{}\t{detail}",
        t.elapsed().as_secs_f64(),
        peak_kib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(p) = arg("--phase") {
        phase(&p, Path::new(&arg("--inventory").unwrap()));
        return;
    }
    let sites: usize = arg("--sites").and_then(|s| s.parse().ok()).unwrap_or(255);
    let nodes: usize = arg("--nodes").and_then(|s| s.parse().ok()).unwrap_or(250);
    // tmpfs when there is one: the figure is wgprov's, not the virtual disk's writeback
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let inv = dir.path().join("big.yaml");
    std::fs::write(&inv, inventory(sites, nodes)).unwrap();
    println!(
        "wgprov offline benchmark: {sites} sites x {nodes} nodes = {} nodes, inventory {} KiB, {} cores, files under {}",
        sites * nodes,
        std::fs::metadata(&inv).unwrap().len() / 1024,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        dir.path().display()
    );
    println!(
        "{:<10} {:>9} {:>10}  detail",
        "phase", "seconds", "peak MiB"
    );
    for name in ["validate", "plan", "render"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--phase", name, "--inventory", inv.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = line.trim().splitn(4, '\t').collect();
        let kib: u64 = f[2].parse().unwrap_or(0);
        println!(
            "{:<10} {:>9} {:>10.1}  {}",
            f[0],
            f[1],
            kib as f64 / 1024.0,
            f[3]
        );
    }
}
