//! What lands on a node, proven in the lab (nodes without systemd): the MTU written into wg0
//! and carried through a PPPoE-like uplink.

use super::apply::{Scenario, demo_yaml, wg_ips};
use super::common::{Inv, content, lab_available, render};

/// Every file of a node, by path: `Some(content)` present, `None` absent.
fn files_of(yaml: &str, node: &str) -> Vec<(String, Option<String>)> {
    let p = Inv::new(yaml).plan();
    let (all, _) = render(&p);
    let files = &all.iter().find(|(n, _)| n == node).unwrap().1;
    files
        .iter()
        .map(|f| {
            (
                f.path.to_string(),
                content(files, &f.path).map(str::to_string),
            )
        })
        .collect()
}

/// Offline (as `render` shows it), flavors write the node IP where they read it, order their
/// units after wg0 and leave the other flavors' files absent; MTU is written; next-hops with
/// a peer whose endpoint is a DNS name get the re-resolution timer.
#[test]
fn each_flavor_gets_its_node_ip_file_and_boot_order_and_next_hops_reresolve_names() {
    let yaml = demo_yaml().replace(
        "      cabin1:\n        address: 192.168.0.50\n",
        "      cabin1:\n        address: 192.168.0.50\n        kubernetes: k3s\n",
    );
    let get = |files: &[(String, Option<String>)], p: &str| -> Option<Option<String>> {
        files.iter().find(|(x, _)| x == p).map(|(_, c)| c.clone())
    };
    let cabin = files_of(&yaml, "cabin1");
    let k3s = get(&cabin, "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml")
        .flatten()
        .unwrap();
    assert!(
        k3s.contains("\nnode-ip: 10.100.2.1\nflannel-iface: wg0\n"),
        "{k3s}"
    );
    for unit in ["k3s", "k3s-agent"] {
        let d = get(
            &cabin,
            &format!("/etc/systemd/system/{unit}.service.d/50-wgprov.conf"),
        )
        .flatten()
        .unwrap();
        assert!(
            d.contains("[Unit]\nWants=wg-quick@wg0.service\nAfter=wg-quick@wg0.service\n"),
            "{d}"
        );
    }
    // the other flavors' files are absent; kubeadm's defaults file is not managed at all
    for p in [
        "/etc/rancher/rke2/config.yaml.d/50-wgprov.yaml",
        "/etc/systemd/system/kubelet.service.d/50-wgprov.conf",
        "/etc/systemd/system/rke2-server.service.d/50-wgprov.conf",
    ] {
        assert_eq!(get(&cabin, p), Some(None), "{p}");
    }
    assert_eq!(get(&cabin, "/etc/default/kubelet"), None);
    let wg = get(&cabin, "/etc/wireguard/wg0.conf").flatten().unwrap();
    assert!(wg.contains("\nListenPort = 51820\nMTU = 1420\n"), "{wg}");

    let node2 = files_of(&yaml, "node2");
    assert!(
        get(&node2, "/etc/default/kubelet")
            .flatten()
            .unwrap()
            .contains("--node-ip=10.100.0.2")
    );
    assert!(
        get(
            &node2,
            "/etc/systemd/system/kubelet.service.d/50-wgprov.conf"
        )
        .flatten()
        .is_some()
    );
    assert_eq!(
        get(&node2, "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml"),
        Some(None)
    );
    // cabin's endpoint is a name: home's and office's next-hops re-resolve it; members and
    // cabin itself (its peers have literal endpoints) do not
    let node1 = files_of(&yaml, "node1");
    let script = get(&node1, "/usr/local/lib/wgprov/reresolve-wg0.sh")
        .flatten()
        .unwrap();
    assert!(script.contains(" cabin.example.net:51821'"), "{script}");
    assert!(!script.contains("198.51.100.20"), "{script}");
    assert!(
        get(&node1, "/etc/systemd/system/wgprov-reresolve-wg0.timer")
            .flatten()
            .unwrap()
            .contains("OnUnitActiveSec=30")
    );
    for (n, files) in [("node2", &node2), ("cabin1", &cabin)] {
        assert_eq!(
            get(files, "/etc/systemd/system/wgprov-reresolve-wg0.timer"),
            Some(None),
            "{n}"
        );
    }
    // rke2 network-wide
    let rke2 = demo_yaml().replace("  cluster_cidrs:", "  kubernetes: rke2\n  cluster_cidrs:");
    let n = files_of(&rke2, "office2");
    assert_eq!(
        get(&n, "/etc/rancher/rke2/config.yaml.d/50-wgprov.yaml")
            .flatten()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        vec!["node-ip: 10.100.1.2"]
    );
    assert!(
        get(
            &n,
            "/etc/systemd/system/rke2-agent.service.d/50-wgprov.conf"
        )
        .flatten()
        .is_some()
    );
}

/// The reresolve script is valid shell and, run against a stand-in `wg`, re-sets by name
/// exactly the endpoints whose handshake is older than 135 s.
#[test]
fn the_reresolve_script_resets_only_silent_peers_by_name() {
    let yaml = demo_yaml();
    let node1 = files_of(&yaml, "node1");
    let script = node1
        .iter()
        .find(|(p, _)| p == "/usr/local/lib/wgprov/reresolve-wg0.sh")
        .and_then(|(_, c)| c.clone())
        .unwrap();
    let key = script
        .lines()
        .find(|l| l.starts_with("for peer in"))
        .and_then(|l| l.split('\'').nth(1))
        .and_then(|p| p.split(' ').next())
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (age, expect) in [(10u64, false), (200, true), (now, true)] {
        let hs = if age == now { 0 } else { now - age };
        let wg = format!(
            "#!/bin/sh\nif [ \"$1\" = show ]; then printf '%s\\t%s\\nOTHER\\t{now}\\n' '{key}' {hs}; exit 0; fi\necho \"$@\" >> {}\n",
            log.display()
        );
        std::fs::write(dir.path().join("wg"), wg).unwrap();
        let _ = std::fs::remove_file(&log);
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(dir.path().join("wg"))
            .status()
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        // the script sets PATH itself: put the stand-in first by running it with sh and a
        // PATH line replaced
        let text = script.replace("PATH=/usr/local/sbin:", &format!("PATH={path}:"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.contains("endpoint cabin.example.net:51821 looked up again"),
            expect,
            "{said}"
        );
        if expect {
            assert_eq!(
                got.trim(),
                format!("set wg0 peer {key} endpoint cabin.example.net:51821"),
                "handshake {age} s ago"
            );
        } else {
            assert!(got.is_empty(), "handshake {age} s ago: {got}");
        }
    }
}

/// A DF ping of `size` bytes of IP packet from `from` to `ip` over wg0 (bounded tries); the
/// last try's output.
fn df_ping(s: &Scenario, from: &str, ip: &str, size: u16) -> (bool, String) {
    let payload = (size - 28).to_string();
    let mut last = String::new();
    for _ in 0..8 {
        let (code, out, err) = s.lab.exec(
            from,
            &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", &payload, ip],
        );
        last = format!("{out}{err}");
        if code == 0 {
            return (true, last);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    (false, last)
}

/// office's uplink is PPPoE-like: its WAN link carries 1492 bytes and silently drops more.
/// With `wan_mtu: 1492`, every wg0 gets MTU 1412 (1492 - 80), `plan` tells the CNI's MTU, and
/// full-size packets with DF set cross every link between sites, office's included.
#[test]
fn a_pppoe_site_gets_an_mtu_that_crosses_every_link() {
    if !lab_available() {
        return;
    }
    let yaml = demo_yaml().replace(
        "    endpoint: 198.51.100.20:51820\n",
        "    endpoint: 198.51.100.20:51820\n    wan_mtu: 1492\n",
    );
    assert!(yaml.contains("wan_mtu: 1492"));
    let s = Scenario::new("mtu", &yaml, &yaml, &[]);
    let inv = s.inv.to_str().unwrap().to_string();

    // the lab's uplink really is 1492: 1493 bytes with DF cannot leave office's router
    let router = s.lab.state.routers["office"].clone();
    let probe = |size: u16| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &router, "ping", "-c", "1", "-W", "1"])
            .args(["-M", "do", "-s", &(size - 28).to_string(), "192.0.2.1"])
            .output()
            .unwrap();
        out.status.success()
    };
    assert!(probe(1492), "office's router cannot send 1492 bytes");
    assert!(!probe(1493), "office's uplink carries more than 1492 bytes");

    let plan = s.wgprov(&["plan", "-i", &inv]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains("mtu 1412"), "{}", plan.stdout);
    let flannel = plan
        .stdout
        .lines()
        .find(|l| l.contains("flannel (VXLAN"))
        .unwrap_or_else(|| panic!("no CNI MTU in plan:\n{}", plan.stdout));
    assert!(flannel.contains("1362"), "{flannel}");

    let r = s.apply(&[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let ips = wg_ips(&s);
    for (n, _, _) in &ips {
        let conf = s.lab.sh(n, "cat /etc/wireguard/wg0.conf");
        assert!(conf.contains("\nMTU = 1412\n"), "{n}: {conf}");
        let link = s.lab.sh(n, "ip -o link show wg0");
        assert!(link.contains("mtu 1412"), "{n}: {link}");
    }
    // the full wg0 MTU crosses every link between sites, both ways, DF set; one byte more is
    // refused at the sender (the MTU is in force, not merely written)
    let mut failed = Vec::new();
    for (a, sa, _) in &ips {
        for (b, sb, ip) in ips.iter().filter(|(_, s, _)| s != sa) {
            let (ok, out) = df_ping(&s, a, ip, 1412);
            if !ok {
                failed.push(format!("{a} ({sa}) -> {b} ({sb}): {out}"));
            }
        }
    }
    assert!(failed.is_empty(), "1412-byte DF pings lost: {failed:#?}");
    let (ok, out) = df_ping(&s, "node2", &ips[3].2, 1400);
    assert!(ok, "{out}");
    let (code, out, err) = s.lab.exec(
        "node2",
        &[
            "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1385", &ips[3].2,
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("mtu = 1412") || format!("{out}{err}").contains("too long"),
        "{out}{err}"
    );

    // a second apply changes nothing
    let r = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// `network.metrics: textfile` gives every node the metrics script (valid shell), its service
/// and its 30 s timer; without the setting the same files are planned absent (removed).
#[test]
fn metrics_textfile_puts_a_valid_script_and_timer_on_every_node_and_none_without_it() {
    const FILES: [&str; 3] = [
        "/usr/local/lib/wgprov/metrics.sh",
        "/etc/systemd/system/wgprov-metrics.service",
        "/etc/systemd/system/wgprov-metrics.timer",
    ];
    let get = |files: &[(String, Option<String>)], p: &str| -> Option<Option<String>> {
        files.iter().find(|(x, _)| x == p).map(|(_, c)| c.clone())
    };
    let on = demo_yaml().replace("network:\n", "network:\n  metrics: textfile\n");
    for node in ["node1", "node2", "office1", "cabin1"] {
        let files = files_of(&on, node);
        let script = get(&files, FILES[0]).flatten().unwrap();
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            script.contains("out=/var/lib/prometheus/node-exporter/wgprov.prom\n"),
            "{script}"
        );
        assert!(
            get(&files, FILES[2])
                .flatten()
                .unwrap()
                .contains("OnUnitActiveSec=30")
        );
        assert!(get(&files, FILES[1]).flatten().is_some(), "{node}");
    }
    for yaml in [
        demo_yaml(),
        demo_yaml().replace("network:\n", "network:\n  metrics: none\n"),
    ] {
        let files = files_of(&yaml, "node2");
        for f in FILES {
            assert_eq!(get(&files, f), Some(None), "{f}");
        }
    }
}
