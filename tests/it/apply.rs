//! `wgprov apply`, `rollback` and `status` against real sshd and real WireGuard in the lab,
//! run from the lab's controller exactly as an operator would type them.

use std::path::PathBuf;
use std::sync::Mutex;

use super::common::{LabGuard, lab_available, root};

/// A lab plus the inventory the controller applies, and every output captured (searched for
/// private keys at the end).
pub(super) struct Scenario {
    pub(super) lab: LabGuard,
    _dir: tempfile::TempDir,
    pub(super) inv: PathBuf,
    outputs: Mutex<Vec<String>>,
}

pub(super) struct Run {
    pub(super) code: i32,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Scenario {
    /// A lab built from `lab_yaml`, applying `yaml` (they differ when a test adds a node later).
    pub(super) fn new(tag: &str, lab_yaml: &str, yaml: &str, no_port_forward: &[&str]) -> Scenario {
        Scenario::new_at(tag, lab_yaml, yaml, no_port_forward, None)
    }

    /// Like `new`, with the controller also on `controller_at`'s LAN.
    pub(super) fn new_at(
        tag: &str,
        lab_yaml: &str,
        yaml: &str,
        no_port_forward: &[&str],
        controller_at: Option<&str>,
    ) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let lab_inv = dir.path().join("lab").join("inv.yaml");
        std::fs::create_dir_all(lab_inv.parent().unwrap()).unwrap();
        std::fs::write(&lab_inv, lab_yaml).unwrap();
        let inv = dir.path().join("inv.yaml");
        std::fs::write(&inv, yaml).unwrap();
        let lab = LabGuard::up_at(&lab_inv, tag, no_port_forward, controller_at);
        Scenario {
            lab,
            _dir: dir,
            inv,
            outputs: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn demo(tag: &str) -> Scenario {
        let y = demo_yaml();
        Scenario::new(tag, &y, &y, &[])
    }

    pub(super) fn wgprov(&self, args: &[&str]) -> Run {
        let mut cmd: Vec<String> = vec![env!("CARGO_BIN_EXE_wgprov").to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let out = wgprov::lab::command(&self.lab.prefix, "controller", &cmd)
            .unwrap()
            .output()
            .unwrap();
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.outputs
            .lock()
            .unwrap()
            .push(format!("{}\n{}", run.stdout, run.stderr));
        run
    }

    pub(super) fn apply(&self, extra: &[&str]) -> Run {
        let inv = self.inv.to_str().unwrap().to_string();
        let mut args = vec!["apply", "-i", inv.as_str()];
        args.extend_from_slice(extra);
        self.wgprov(&args)
    }

    pub(super) fn apply_json(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let mut args = vec!["--format", "json"];
        args.extend_from_slice(extra);
        let r = self.apply(&args);
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("json: {e}\n{}\n{}", r.stdout, r.stderr));
        (r.code, v)
    }

    /// A file's bytes and mtime on a node.
    pub(super) fn stat(&self, node: &str, path: &str) -> String {
        self.lab.sh(
            node,
            &format!("stat -c '%Y.%y %a' {path} && sha256sum {path}"),
        )
    }

    pub(super) fn private_keys(&self) -> Vec<String> {
        self.lab
            .state
            .nodes
            .keys()
            .filter_map(|n| {
                let (code, out, _) = self.lab.exec(
                    n,
                    &[
                        "sh",
                        "-c",
                        // any case: `wg` reads `privatekey = …` as the key too
                        "sed -n 's/^ *privatekey *= *//Ip' /etc/wireguard/wg0.conf 2>/dev/null",
                    ],
                );
                (code == 0 && !out.trim().is_empty()).then(|| out.trim().to_string())
            })
            .collect()
    }

    /// No private key of any node appears in anything wgprov printed in this scenario.
    pub(super) fn assert_no_key_leaked(&self) {
        let keys = self.private_keys();
        assert!(!keys.is_empty(), "no keys to look for");
        for out in self.outputs.lock().unwrap().iter() {
            for k in &keys {
                assert!(
                    !out.contains(k),
                    "a private key appears in wgprov's output:\n{out}"
                );
            }
        }
    }

    pub(super) fn ping(&self, from: &str, ip: &str) -> bool {
        (0..10).any(|_| self.lab.exec(from, &["ping", "-c", "1", "-W", "1", ip]).0 == 0)
    }
}

pub(super) fn demo_yaml() -> String {
    std::fs::read_to_string(root().join("inventories/demo.yaml")).unwrap()
}

pub(super) fn statuses(v: &serde_json::Value) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = v["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, h)| (k.clone(), h["status"].as_str().unwrap().to_string()))
        .collect();
    s.sort();
    s
}

pub(super) fn changed_hosts(v: &serde_json::Value) -> Vec<String> {
    statuses(v)
        .into_iter()
        .filter(|(_, s)| s == "changed")
        .map(|(n, _)| n)
        .collect()
}

pub(super) fn wg_ips(s: &Scenario) -> Vec<(String, String, String)> {
    let p = wgprov::topology::plan_inventory(&s.inv, false).unwrap();
    p.topology
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.site.clone(), n.wireguard_ip.to_string()))
        .collect()
}

#[test]
fn first_apply_changes_all_pings_cross_then_nothing_changes() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("g");
    // --check changes nothing anywhere
    let before = s.lab.sh(
        "node1",
        "ls -la /etc/wireguard /etc/default /var/lib | sha256sum",
    );
    let check = s.apply(&["--check", "--diff", "--detailed-exitcode"]);
    assert_eq!(
        check.code, 3,
        "changes pending: {}{}",
        check.stdout, check.stderr
    );
    assert!(
        check
            .stdout
            .contains("node1: created /etc/wireguard/wg0.conf"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("+PrivateKey = (redacted)"),
        "{}",
        check.stdout
    );
    assert_eq!(
        s.lab.sh(
            "node1",
            "ls -la /etc/wireguard /etc/default /var/lib | sha256sum"
        ),
        before
    );
    assert_ne!(
        s.lab.exec("node1", &["ip", "link", "show", "wg0"]).0,
        0,
        "--check brought wg0 up"
    );

    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(changed_hosts(&v).len(), 6, "{v}");
    // JSON matches the recap
    let sum = &v["summary"];
    assert_eq!(
        (
            sum["changed"].as_u64(),
            sum["ok"].as_u64(),
            sum["failed"].as_u64(),
            sum["unreachable"].as_u64()
        ),
        (Some(6), Some(0), Some(0), Some(0))
    );
    assert!(
        v["hosts"]["node1"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/etc/wireguard/wg0.conf" && c["action"] == "created")
    );

    // every node pings every other over wg0; cross-site ones cross both NATs
    let ips = wg_ips(&s);
    for (a, _, _) in &ips {
        for (b, _, ip) in &ips {
            if a != b {
                assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip})");
            }
        }
    }
    // the sites' next-hops see each other at the routers' WAN addresses
    let eps = s.lab.sh("office1", "wg show wg0 endpoints");
    assert!(
        eps.contains(&format!("{}:51820", s.lab.state.wan["home"])),
        "{eps}"
    );

    // second apply: zero changes, nothing touched
    let files = [
        "/etc/wireguard/wg0.conf",
        "/etc/default/kubelet",
        "/etc/sysctl.d/99-wgprov.conf",
        "/etc/wgprov/port-forward.md",
    ];
    let stamps: Vec<String> = files.iter().map(|f| s.stat("node1", f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = s.apply(&[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("node1 ") && again.stdout.contains("changed=0"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.contains(": created") && !again.stdout.contains(": updated"),
        "{}",
        again.stdout
    );
    let after: Vec<String> = files.iter().map(|f| s.stat("node1", f)).collect();
    assert_eq!(stamps, after, "a second apply touched files");
    let (_, v) = s.apply_json(&["--check", "--detailed-exitcode"]);
    assert!(changed_hosts(&v).is_empty(), "{v}");
    // modes and the redhat node's kubelet file
    assert!(
        s.stat("node1", "/etc/wireguard/wg0.conf")
            .contains(" 600\n")
    );
    assert_eq!(
        s.lab.sh("node3", "cat /etc/sysconfig/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.3\n"
    );
    assert_eq!(
        s.lab.sh("node1", "sysctl -n net.ipv4.ip_forward").trim(),
        "1"
    );
    s.assert_no_key_leaked();
}

#[test]
fn adding_a_node_changes_exactly_it_and_its_next_hop() {
    if !lab_available() {
        return;
    }
    let base = demo_yaml();
    let with_node4 = base.replace(
        "        address: 192.168.0.12\n        os_family: redhat\n",
        "        address: 192.168.0.12\n        os_family: redhat\n      node4:\n        address: 192.168.0.13\n",
    );
    assert_ne!(base, with_node4);
    let s = Scenario::new("h", &with_node4, &base, &[]);
    let (code, _) = s.apply_json(&[]);
    assert_eq!(code, 0);
    std::fs::write(&s.inv, &with_node4).unwrap();
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        changed_hosts(&v),
        vec!["node1".to_string(), "node4".to_string()],
        "{v}"
    );
    let ips = wg_ips(&s);
    for (b, _, ip) in ips.iter().filter(|(n, _, _)| n != "node4") {
        assert!(s.ping("node4", ip), "node4 cannot ping {b}");
    }
}

#[test]
fn limit_changes_one_site_and_keeps_every_peer() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("i");
    assert_eq!(s.apply(&[]).code, 0);
    let node1_before = s.stat("node1", "/etc/wireguard/wg0.conf");
    // a change that touches every next-hop, applied to one site only
    std::fs::write(
        &s.inv,
        demo_yaml().replace(
            "  cluster_cidrs:",
            "  persistent_keepalive: 21\n  cluster_cidrs:",
        ),
    )
    .unwrap();
    let (code, v) = s.apply_json(&["--limit", "office"]);
    assert_eq!(code, 0, "{v}");
    let hosts: Vec<String> = statuses(&v).into_iter().map(|(n, _)| n).collect();
    assert_eq!(hosts, vec!["office1".to_string(), "office2".to_string()]);
    assert_eq!(
        changed_hosts(&v),
        vec!["office1".to_string()],
        "only the next-hop has keepalive links"
    );
    let conf = s.lab.sh("office1", "cat /etc/wireguard/wg0.conf");
    for peer in ["# office2", "# node1", "# cabin1"] {
        assert!(conf.contains(peer), "office1 lost peer {peer}:\n{conf}");
    }
    assert!(conf.contains("PersistentKeepalive = 21"));
    assert_eq!(s.lab.sh("office1", "wg show wg0 peers | wc -l").trim(), "3");
    assert_eq!(
        s.stat("node1", "/etc/wireguard/wg0.conf"),
        node1_before,
        "a host outside --limit was changed"
    );
    // a glob and a node name
    let (_, v) = s.apply_json(&["--check", "--limit", "node*"]);
    assert_eq!(statuses(&v).len(), 3);
    s.assert_no_key_leaked();
}

#[test]
fn hand_written_setup_keeps_its_key_and_other_kubelet_flags() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("j");
    let key = s.lab.sh("node2", "wg genkey").trim().to_string();
    s.lab.sh(
        "node2",
        &format!(
            "umask 077; printf '# node2, written by hand from the wiki\\n[Interface]\\nAddress = 10.100.0.2/16\\nPrivateKey = {key}\\nListenPort = 51820\\nMTU = 1380\\nPostUp = true hand-made hook\\n\\n[Peer]\\n# the old next-hop entry\\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\\nAllowedIPs = 10.100.0.0/16\\nEndpoint = 192.168.0.10:51820\\n' > /etc/wireguard/wg0.conf; \
             printf '# kubelet flags of this node\\nKUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=192.168.0.11 --v=2\"\\n' > /etc/default/kubelet"
        ),
    );
    let r = s.apply(&["--diff"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let conf = s.lab.sh("node2", "cat /etc/wireguard/wg0.conf");
    assert!(
        conf.contains(&format!("PrivateKey = {key}")),
        "the node's key was replaced:\n{conf}"
    );
    // its hook and comments stay; MTU is managed (network.mtu, from the sites' uplinks): the
    // hand-written 1380 becomes the network's 1420, in place, and the diff says so
    assert!(
        conf.contains("\nMTU = 1420\n")
            && !conf.contains("MTU = 1380")
            && conf.contains("PostUp = true hand-made hook")
            && conf.contains("# node2, written by hand"),
        "{conf}"
    );
    assert!(
        r.stdout.contains("-MTU = 1380") && r.stdout.contains("+MTU = 1420"),
        "{}",
        r.stdout
    );
    assert!(!conf.contains("xTIBA5rb"), "the stale peer stayed:\n{conf}");
    assert_eq!(
        s.lab.sh("node2", "cat /etc/default/kubelet"),
        "# kubelet flags of this node\nKUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=10.100.0.2 --v=2\"\n"
    );
    // the diff shows exactly that, with the key redacted
    assert!(
        r.stdout
            .contains("-KUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=192.168.0.11 --v=2\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("+KUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=10.100.0.2 --v=2\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("-PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&key));
    // node1 peers with node2's own (kept) key
    let pubkey = s
        .lab
        .sh("node2", &format!("echo {key} | wg pubkey"))
        .trim()
        .to_string();
    assert!(s.lab.sh("node1", "wg show wg0 peers").contains(&pubkey));
    assert!(s.ping("node2", "10.100.1.1"));
    s.assert_no_key_leaked();
}

#[test]
fn a_failing_host_is_rolled_back_byte_for_byte_and_a_fixed_apply_converges() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("k");
    assert_eq!(s.apply(&[]).code, 0);
    let before =
        s.stat("node2", "/etc/wireguard/wg0.conf") + &s.stat("node2", "/etc/default/kubelet");
    // something else already holds the new port on node2
    // (wireguard-go returns before its control socket is up: `wg set` is tried until it takes)
    let port = s.lab.sh(
        "node2",
        "wireguard-go blocker >/dev/null 2>&1; for i in $(seq 50); do wg set blocker listen-port 51830 2>/dev/null && break; sleep 0.1; done; wg show blocker listen-port",
    );
    assert_eq!(port.trim(), "51830", "the blocker does not hold the port");
    std::fs::write(
        &s.inv,
        demo_yaml().replace("  cluster_cidrs:", "  listen_port: 51830\n  cluster_cidrs:"),
    )
    .unwrap();
    // (without the guard: the routers still forward 51820, so the guard would put it all back)
    let (code, v) = s.apply_json(&["--no-guard"]);
    assert_eq!(code, 1, "{v}");
    let st: std::collections::HashMap<String, String> = statuses(&v).into_iter().collect();
    assert_eq!(st["node2"], "rolled_back", "{v}");
    for n in ["node1", "node3", "office1", "office2", "cabin1"] {
        assert_eq!(st[n], "changed", "{n}: {v}");
    }
    let err = v["hosts"]["node2"]["error"].as_str().unwrap();
    assert!(
        err.contains("handler wireguard") && err.contains("put back"),
        "{err}"
    );
    assert_eq!(v["summary"]["failed"], 1);
    let after =
        s.stat("node2", "/etc/wireguard/wg0.conf") + &s.stat("node2", "/etc/default/kubelet");
    assert_eq!(
        before, after,
        "node2's files are not byte-identical to before"
    );
    assert_eq!(
        s.lab.sh("node2", "wg show wg0 listen-port").trim(),
        "51820",
        "the old interface is not back"
    );
    // fixed: the port is free again
    s.lab.sh("node2", "ip link del blocker");
    let (code, v) = s.apply_json(&["--no-guard"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(s.lab.sh("node2", "wg show wg0 listen-port").trim(), "51830");
    // (cross-site links would also need the routers' port-forwards moved to 51830)
    assert!(s.ping("node2", "10.100.0.3"));
    // rollback on demand puts back the previous apply's files
    let r = s.wgprov(&[
        "rollback",
        "-i",
        s.inv.to_str().unwrap(),
        "--limit",
        "node2",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(s.lab.sh("node2", "wg show wg0 listen-port").trim(), "51820");
    s.assert_no_key_leaked();
}

#[test]
fn host_keys_unknown_refused_changed_refused_loudly() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("m");
    let kh = "/root/.ssh/known_hosts";
    // node2's line now carries another key: interception or a reinstalled host
    s.lab.sh("controller", &format!("cp {kh} {kh}.orig && ssh-keygen -q -t ed25519 -N '' -f /tmp/wgprov-other-key-$$ && k=$(cut -d' ' -f1,2 /tmp/wgprov-other-key-$$.pub) && rm -f /tmp/wgprov-other-key-$$* && sed -i \"s|^192.168.0.11 .*|192.168.0.11 $k|\" {kh} && sed -i '/^192.168.0.12 /d' {kh}"));
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 1);
    let st: std::collections::HashMap<String, String> = statuses(&v).into_iter().collect();
    assert_eq!(st["node2"], "unreachable");
    assert_eq!(st["node3"], "unreachable");
    let e2 = v["hosts"]["node2"]["error"].as_str().unwrap();
    assert!(
        e2.contains("HAS CHANGED") && e2.contains("intercept"),
        "{e2}"
    );
    let e3 = v["hosts"]["node3"]["error"].as_str().unwrap();
    assert!(
        e3.contains("not in") && e3.contains("--accept-new-host-keys"),
        "{e3}"
    );
    assert_eq!(
        s.lab
            .exec("node2", &["test", "-e", "/etc/wireguard/wg0.conf"])
            .0,
        1,
        "node2 was changed despite a changed host key"
    );
    // trust on first use records node3; a changed key stays refused even then
    let (code, v) = s.apply_json(&["--accept-new-host-keys"]);
    assert_eq!(code, 1);
    let st: std::collections::HashMap<String, String> = statuses(&v).into_iter().collect();
    assert_eq!(st["node3"], "changed");
    assert_eq!(st["node2"], "unreachable");
    assert!(
        s.lab
            .sh("controller", &format!("grep -c '^192.168.0.12 ' {kh}"))
            .trim()
            == "1"
    );
    s.assert_no_key_leaked();
}

#[test]
fn validation_errors_touch_no_host() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("n");
    std::fs::write(
        &s.inv,
        demo_yaml().replace("next_hop: office1", "next_hop: office9"),
    )
    .unwrap();
    let r = s.apply(&[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("sites.office.next_hop"), "{}", r.stderr);
    assert_ne!(
        s.lab.exec("office1", &["test", "-e", "/var/lib/wgprov"]).0,
        0
    );
}

#[test]
fn encrypted_ecdsa_key_rsa_key_proxy_jump_and_become() {
    if !lab_available() || !super::common::require("sudo") {
        return;
    }
    let base = demo_yaml();
    let s = Scenario::new("o", &base, &base, &[]);
    let labdir = wgprov::lab::lab_dir(&s.lab.prefix);
    // keys: an encrypted ECDSA key for everyone, an RSA key for office1
    s.lab.sh(
        "controller",
        "ssh-keygen -q -t ecdsa -N 'sesame' -f /root/.ssh/ops_ecdsa && ssh-keygen -q -t rsa -b 2048 -N '' -f /root/.ssh/ops_rsa",
    );
    let ecdsa = s.lab.sh("controller", "cat /root/.ssh/ops_ecdsa.pub");
    let rsa = s.lab.sh("controller", "cat /root/.ssh/ops_rsa.pub");
    for n in s.lab.state.nodes.keys() {
        let ak = labdir.join("nodes").join(n).join("authorized_keys");
        let line = if n == "office1" { &rsa } else { &ecdsa };
        std::fs::write(&ak, line).unwrap();
    }
    // node3: a user who becomes root through sudo -n; the user exists only in node3's /etc
    s.lab.sh("node3", "useradd -M -p '*' -s /bin/sh ops && echo 'ops ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ops && chmod 440 /etc/sudoers.d/ops");
    // node2: reachable only through node1 (the controller's direct route is gone)
    s.lab.sh("controller", "ip route del 192.168.0.11/32");
    assert_ne!(
        s.lab
            .exec(
                "controller",
                &["bash", "-c", "exec 3<>/dev/tcp/192.168.0.11/22"]
            )
            .0,
        0
    );
    let yaml = base
        .replace(
            "network:\n",
            "ssh:\n  identity_file: ~/.ssh/ops_ecdsa\nnetwork:\n",
        )
        .replace(
            "        address: 192.168.0.11\n",
            "        address: 192.168.0.11\n        ssh: {proxy_jump: node1}\n",
        )
        .replace(
            "        address: 192.168.0.12\n",
            "        address: 192.168.0.12\n        ssh: {user: ops, become: true}\n",
        )
        .replace(
            "        address: 192.168.10.5\n",
            "        address: 192.168.10.5\n        ssh: {identity_file: ~/.ssh/ops_rsa}\n",
        );
    std::fs::write(&s.inv, &yaml).unwrap();

    // without the passphrase the encrypted key cannot be used: a clear error, nothing touched
    let (code, v) = s.apply_json(&["--check"]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["hosts"]["node1"]["error"]
            .as_str()
            .unwrap()
            .contains("WGPROV_KEY_PASSPHRASE"),
        "{v}"
    );
    assert_eq!(
        v["hosts"]["office1"]["status"], "changed",
        "the RSA key needs no passphrase: {v}"
    );

    let mut cmd: Vec<String> = vec![
        env!("CARGO_BIN_EXE_wgprov").into(),
        "apply".into(),
        "-i".into(),
        s.inv.display().to_string(),
        "--format".into(),
        "json".into(),
    ];
    let out = wgprov::lab::command(&s.lab.prefix, "controller", &cmd)
        .unwrap()
        .env("WGPROV_KEY_PASSPHRASE", "sesame")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    s.outputs.lock().unwrap().push(stdout.clone());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(changed_hosts(&v).len(), 6, "{v}");
    // become: files written as root although ops logged in
    assert_eq!(
        s.lab
            .sh("node3", "stat -c %U /etc/wireguard/wg0.conf")
            .trim(),
        "root"
    );
    assert!(s.ping("node2", "10.100.1.1") && s.ping("node3", "10.100.2.1"));
    // become without a sudo rule fails cleanly
    s.lab.sh("node3", "rm /etc/sudoers.d/ops");
    cmd.push("--check".into());
    let out = wgprov::lab::command(&s.lab.prefix, "controller", &cmd)
        .unwrap()
        .env("WGPROV_KEY_PASSPHRASE", "sesame")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hosts"]["node3"]["status"], "failed", "{v}");
    assert!(
        v["hosts"]["node3"]["error"]
            .as_str()
            .unwrap()
            .contains("sudo"),
        "{v}"
    );
    s.assert_no_key_leaked();
}

#[test]
fn a_hung_host_is_unreachable_not_a_hang_and_its_peers_keep_their_entry() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("q");
    assert_eq!(s.apply(&[]).code, 0);
    let node3_key = s
        .lab
        .sh("node3", "wg show wg0 public-key")
        .trim()
        .to_string();
    // node3's sshd stops answering: TCP still connects, the SSH banner never comes
    s.lab.signal_sshd("node3", "STOP");
    std::fs::write(
        &s.inv,
        demo_yaml().replace(
            "  cluster_cidrs:",
            "  persistent_keepalive: 22\n  cluster_cidrs:",
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, v) = s.apply_json(&["--connect-timeout", "2"]);
    let took = started.elapsed();
    s.lab.signal_sshd("node3", "CONT");
    assert_eq!(code, 1, "{v}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    assert_eq!(v["hosts"]["node3"]["status"], "unreachable", "{v}");
    assert!(
        v["hosts"]["node3"]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 2 s"),
        "{v}"
    );
    assert_eq!(v["hosts"]["node1"]["status"], "changed", "{v}");
    // node1 could not learn node3's key this run, and kept its entry for it
    let conf = s.lab.sh("node1", "cat /etc/wireguard/wg0.conf");
    assert!(
        conf.contains(&node3_key) && conf.contains("PersistentKeepalive = 22"),
        "{conf}"
    );
    assert!(s.ping("node1", "10.100.0.3"));
}

#[test]
fn keys_from_the_ssh_agent() {
    if !lab_available() || !super::common::require("ssh-agent") {
        return;
    }
    let s = Scenario::demo("r");
    // the only copy of the key is in an agent; no identity_file, no default key file
    let sock = "/root/agent.sock";
    s.lab.sh(
        "controller",
        &format!("mv /root/.ssh/id_ed25519 /root/agent-key && ssh-agent -a {sock} > /root/agent.env && SSH_AUTH_SOCK={sock} ssh-add -q /root/agent-key && rm /root/agent-key"),
    );
    let mut cmd: Vec<String> = vec![
        env!("CARGO_BIN_EXE_wgprov").into(),
        "apply".into(),
        "-i".into(),
        s.inv.display().to_string(),
        "--check".into(),
        "--format".into(),
        "json".into(),
    ];
    let without = wgprov::lab::command(&s.lab.prefix, "controller", &cmd)
        .unwrap()
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&without.stdout).unwrap();
    assert_eq!(v["summary"]["unreachable"], 6, "no key anywhere: {v}");
    assert!(
        v["hosts"]["node1"]["error"]
            .as_str()
            .unwrap()
            .contains("ssh-agent: not running"),
        "{v}"
    );
    cmd.push("--detailed-exitcode".into());
    let with = wgprov::lab::command(&s.lab.prefix, "controller", &cmd)
        .unwrap()
        .env("SSH_AUTH_SOCK", sock)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(with.status.code(), Some(3), "{v}");
    assert_eq!(v["summary"]["changed"], 6, "{v}");
    s.lab.sh(
        "controller",
        ". /root/agent.env >/dev/null && ssh-agent -k >/dev/null",
    );
}

#[test]
fn a_template_that_fails_after_hosts_were_contacted_is_a_host_failure_not_exit_2() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("t");
    // a role whose template fails only for what the facts say (node3 is Rocky Linux)
    let roles = s.inv.parent().unwrap().join("myroles");
    let ok = std::process::Command::new("cp")
        .args([
            "-r",
            root().join("roles").to_str().unwrap(),
            roles.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let t = roles.join("wireguard/templates/wg0.conf.j2");
    let text = std::fs::read_to_string(&t).unwrap();
    std::fs::write(
        &t,
        format!("{{% if os_family == \"redhat\" %}}{{{{ no_such_variable }}}}{{% endif %}}{text}"),
    )
    .unwrap();
    let (code, v) = s.apply_json(&["--roles-path", roles.to_str().unwrap()]);
    assert_eq!(
        code, 1,
        "hosts were contacted: not an invalid inventory: {v}"
    );
    assert_eq!(v["hosts"]["node3"]["status"], "failed", "{v}");
    assert!(
        v["hosts"]["node3"]["error"]
            .as_str()
            .unwrap()
            .contains("rendering its files"),
        "{v}"
    );
    assert_eq!(v["hosts"]["node1"]["status"], "changed", "{v}");
}

#[test]
fn no_private_or_preshared_key_appears_in_any_output_of_a_full_run() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("s");
    // node2 already has a hand-made config with a preshared key on a peer: adopted, its key kept
    let own = s.lab.sh("node2", "wg genkey").trim().to_string();
    let psk = s.lab.sh("node2", "wg genpsk").trim().to_string();
    let peer = s
        .lab
        .sh("node2", "wg genkey | wg pubkey")
        .trim()
        .to_string();
    s.lab.sh(
        "node2",
        &format!(
            "mkdir -p /etc/wireguard && umask 077 && printf '[Interface]\\nPrivateKey = {own}\\nListenPort = 51820\\n\\n[Peer]\\nPublicKey = {peer}\\nPresharedKey = {psk}\\nAllowedIPs = 10.99.0.0/24\\n' > /etc/wireguard/wg0.conf"
        ),
    );
    let inv = s.inv.to_str().unwrap().to_string();
    let mut outputs = Vec::new();
    let mut run = |args: &[&str]| {
        let r = s.wgprov(args);
        outputs.push(format!("{}\n{}", r.stdout, r.stderr));
        r.code
    };
    assert_eq!(run(&["-v", "apply", "-i", &inv, "--check", "--diff"]), 0);
    assert_eq!(
        run(&["-v", "apply", "-i", &inv, "--diff", "--format", "json"]),
        0
    );
    assert_eq!(run(&["-v", "apply", "-i", &inv, "--diff", "--timings"]), 0);
    run(&["-v", "status", "-i", &inv]);
    run(&["status", "-i", &inv, "--format", "json"]);
    run(&["status", "-i", &inv, "--picture", "dot"]);
    std::fs::write(
        &s.inv,
        demo_yaml().replace(
            "  cluster_cidrs:",
            "  persistent_keepalive: 19\n  cluster_cidrs:",
        ),
    )
    .unwrap();
    assert_eq!(run(&["-v", "apply", "-i", &inv, "--diff"]), 0);
    // every node's key, read before rollback puts back (and removes) the files it created
    let mut secrets = s.private_keys();
    assert_eq!(run(&["-v", "rollback", "-i", &inv]), 0);
    let all = outputs.join("\n");
    assert!(
        all.contains("PresharedKey = (redacted)"),
        "the adopted config's diff shows its preshared key, redacted:\n{all}"
    );
    secrets.push(own);
    secrets.push(psk);
    assert_eq!(
        secrets.len(),
        8,
        "six node keys, the adopted key, the preshared key"
    );
    for k in &secrets {
        assert!(
            !all.contains(k.as_str()),
            "a secret appears in wgprov's output"
        );
    }
}

/// Two sites, three nodes: small enough for a quick lab.
const PK_INV: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: node1
    router: opnsense
    nodes:
      node1: { address: 192.168.0.10 }
      node2: { address: 192.168.0.11 }
  office:
    lan_cidrs: [192.168.10.0/24]
    endpoint: 198.51.100.20:51820
    router: pfsense
    nodes:
      office1: { address: 192.168.10.5 }
";

/// `wg` reads a key line in any case, and wgprov keeps the operator's spelling of an existing
/// wg0.conf: with every node's key line spelled `privatekey = …`, a peers-only change (a
/// keepalive on the next-hops' links) goes through `wg syncconf`, every key stays as it was,
/// and pings cross between the sites.
#[test]
fn a_lowercase_privatekey_line_does_not_make_a_peers_only_change_fail() {
    if !lab_available() {
        return;
    }
    let s = Scenario::new("pk", PK_INV, PK_INV, &[]);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    let nodes = ["node1", "node2", "office1"];
    let mut public = Vec::new();
    for n in nodes {
        public.push(s.lab.sh(n, "wg show wg0 public-key").trim().to_string());
        s.lab.sh(
            n,
            "sed -i 's/^PrivateKey = /privatekey = /' /etc/wireguard/wg0.conf",
        );
    }
    // the spelling is the operator's: nothing to change
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(changed_hosts(&v).is_empty(), "{v:#}");
    std::fs::write(
        &s.inv,
        PK_INV.replace(
            "  cluster_cidrs:",
            "  persistent_keepalive: 21\n  cluster_cidrs:",
        ),
    )
    .unwrap();
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(changed_hosts(&v), ["node1", "office1"], "{v:#}");
    for n in ["node1", "office1"] {
        assert_eq!(
            v["hosts"][n]["handlers"],
            serde_json::json!(["wireguard: wg syncconf wg0"]),
            "a peers-only change: {v:#}"
        );
        let keepalive = s.lab.sh(n, "wg show wg0 persistent-keepalive");
        assert!(keepalive.contains("\t21\n"), "{n}: {keepalive}");
    }
    for (n, key) in nodes.iter().zip(&public) {
        let conf = s.lab.sh(n, "cat /etc/wireguard/wg0.conf");
        assert!(
            conf.contains("\nprivatekey = ") && !conf.contains("PrivateKey"),
            "{n}: the key line's spelling was not kept"
        );
        assert_eq!(
            s.lab.sh(n, "wg show wg0 public-key").trim(),
            key,
            "{n}: its key changed"
        );
    }
    for (a, sa, _) in wg_ips(&s) {
        for (b, sb, ip) in wg_ips(&s) {
            if sa != sb {
                assert!(s.ping(&a, &ip), "{a} cannot ping {b} ({ip}) over wg0");
            }
        }
    }
    s.assert_no_key_leaked();
}
