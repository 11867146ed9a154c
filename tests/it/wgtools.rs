//! The real WireGuard tools agree with what wgprov renders: `wg-quick strip` accepts every
//! config, `wg pubkey` derives the keys wgprov puts in peers' configs, and `wg setconf` on a
//! real (wireguard-go) interface in a throwaway network namespace loads a next-hop's config.

use std::io::Write;
use std::process::{Command, Stdio};

use wgprov::facts::wgconf::WgConfig;

use super::common::{Inv, content, gen_inventory, render, require, require_root, root};

fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn demo() -> Inv {
    Inv::new(&std::fs::read_to_string(root().join("inventories/demo.yaml")).unwrap())
}

#[test]
fn wg_quick_strip_accepts_every_rendered_config() {
    if !require("wg-quick") {
        return;
    }
    let inv = demo();
    let plan = inv.plan();
    let (hosts, _) = render(&plan);
    for (node, files) in &hosts {
        let text = content(files, "/etc/wireguard/wg0.conf").unwrap();
        let dir = inv.dir.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wg0.conf");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("wg-quick")
            .arg("strip")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stripped = String::from_utf8(out.stdout).unwrap();
        let cfg = WgConfig::parse(&stripped);
        let iface = cfg.interface().unwrap();
        assert!(
            iface.get("Address").is_none() && iface.get("PostUp").is_none(),
            "{stripped}"
        );
        assert!(iface.get("PrivateKey").is_some());
        assert_eq!(cfg.peers().count(), WgConfig::parse(text).peers().count());
    }
}

#[test]
fn wg_pubkey_matches_the_keys_in_peers_configs() {
    if !require("wg") {
        return;
    }
    let inv = demo();
    let plan = inv.plan();
    let (hosts, keys) = render(&plan);
    let all_peer_keys: Vec<String> = hosts
        .iter()
        .flat_map(|(_, f)| {
            WgConfig::parse(content(f, "/etc/wireguard/wg0.conf").unwrap())
                .peers()
                .map(|p| p.get("PublicKey").unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for (node, files) in &hosts {
        let cfg = WgConfig::parse(content(files, "/etc/wireguard/wg0.conf").unwrap());
        let private = cfg.private_key().unwrap();
        let out = run_with_stdin(Command::new("wg").arg("pubkey"), private);
        assert!(out.status.success());
        let real = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(real, keys[node].public.to_base64(), "{node}");
        assert!(
            all_peer_keys.contains(&real),
            "no peer lists {node}'s key {real}"
        );
    }
}

/// A network namespace and the processes in it, removed on drop (by name and by PID).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn real_wg_setconf_loads_a_next_hop_config() {
    if !require_root() || !require("wireguard-go") || !require("wg-quick") {
        return;
    }
    // IP endpoints only: a namespace has no resolver to look names up with
    let sites: Vec<(String, usize)> = vec![("aa".into(), 3), ("bb".into(), 1), ("cc".into(), 2)];
    let inv = Inv::new(
        &gen_inventory(&sites, true)
            .replace(".example.net", "")
            .replace("endpoint: aa", "endpoint: 203.0.113.1")
            .replace("endpoint: bb", "endpoint: 203.0.113.2")
            .replace("endpoint: cc", "endpoint: 203.0.113.3"),
    );
    let plan = inv.plan();
    let (hosts, keys) = render(&plan);
    let text = content(
        &hosts.iter().find(|(n, _)| n == "aa-n0").unwrap().1,
        "/etc/wireguard/wg0.conf",
    )
    .unwrap();
    let path = inv.dir.path().join("wg0.conf");
    std::fs::write(&path, text).unwrap();
    let stripped = Command::new("wg-quick")
        .arg("strip")
        .arg(&path)
        .output()
        .unwrap();
    assert!(stripped.status.success());
    let stripped_path = inv.dir.path().join("stripped.conf");
    std::fs::write(&stripped_path, &stripped.stdout).unwrap();

    let ns = Netns(format!("wgpt{}", std::process::id()));
    let iface = format!("wgt{}", std::process::id() % 100_000);
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    // wireguard-go daemonizes; its output goes nowhere so that nothing waits on its pipes
    let up = Command::new("ip")
        .args(["netns", "exec", &ns.0, "wireguard-go", &iface])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(up.success(), "wireguard-go failed to start");
    let set = Command::new("ip")
        .args(["netns", "exec", &ns.0, "wg", "setconf", &iface])
        .arg(&stripped_path)
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "wg setconf: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    let dump = Command::new("ip")
        .args(["netns", "exec", &ns.0, "wg", "show", &iface, "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8(dump.stdout).unwrap();
    let lines: Vec<&str> = dump.lines().collect();
    // interface line + members (2) + other sites (2)
    assert_eq!(lines.len(), 5, "{dump}");
    assert!(lines[0].contains(&keys["aa-n0"].public.to_base64()));
    let bb = lines
        .iter()
        .find(|l| l.starts_with(&keys["bb-n0"].public.to_base64()))
        .expect("bb's next-hop is a peer");
    assert!(
        bb.contains("203.0.113.2:51820") && bb.contains("10.100.1.0/24") && bb.ends_with("\t25"),
        "{bb}"
    );
    drop(ns);
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
}
