//! Preshared keys and key rotation in the lab, with real sshd and real WireGuard through NAT:
//! every link has one preshared key on both ends that a second apply keeps; `rotate-keys`
//! renews every key pair in one guarded run while traffic crosses the sites (the loss is
//! measured), and a rotation whose host fails is put back everywhere. No private or preshared
//! key appears in anything wgprov prints.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::apply::{Run, Scenario, demo_yaml, wg_ips};
use super::common::lab_available;

const NODES: [&str; 6] = ["node1", "node2", "node3", "office1", "office2", "cabin1"];

fn psk_yaml() -> String {
    let y = demo_yaml();
    let with = y.replacen(
        "  cluster_cidrs:",
        "  preshared_keys: true\n  cluster_cidrs:",
        1,
    );
    assert_ne!(with, y);
    with
}

/// Every output of the scenario's wgprov runs, kept to search for keys.
#[derive(Default)]
struct Printed(Vec<String>);

impl Printed {
    fn run(&mut self, s: &Scenario, args: &[&str]) -> Run {
        let inv = s.inv.to_str().unwrap().to_string();
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-i", inv.as_str()]);
        let r = s.wgprov(&a);
        self.0.push(format!("{}\n{}", r.stdout, r.stderr));
        r
    }
    fn json(&mut self, s: &Scenario, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let r = self.run(s, &a);
        let v = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("json: {e}\n{}\n{}", r.stdout, r.stderr));
        (r.code, v)
    }
    /// No private or preshared key of any of `nodes` (as their interfaces run them) in
    /// anything printed.
    fn assert_no_secret(&self, s: &Scenario, nodes: &[&str]) {
        let mut secrets: BTreeSet<String> = BTreeSet::new();
        for n in nodes {
            secrets.insert(s.lab.sh(n, "wg show wg0 private-key").trim().to_string());
            for l in s.lab.sh(n, "wg show wg0 preshared-keys").lines() {
                let psk = l.split_once('\t').unwrap().1.trim();
                if psk != "(none)" {
                    secrets.insert(psk.to_string());
                }
            }
        }
        assert!(
            secrets.len() > nodes.len(),
            "private and preshared keys to look for"
        );
        for out in &self.0 {
            for k in &secrets {
                assert!(
                    !out.contains(k.as_str()),
                    "a key appears in wgprov's output:\n{out}"
                );
            }
        }
    }
}

/// Each node's public key.
fn public_keys(s: &Scenario) -> BTreeMap<String, String> {
    public_keys_of(s, &NODES)
}

fn public_keys_of(s: &Scenario, nodes: &[&str]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            (
                n.to_string(),
                s.lab.sh(n, "wg show wg0 public-key").trim().to_string(),
            )
        })
        .collect()
}

/// Every (node, peer node) with the preshared key the node's interface has for the peer.
fn running_psks(s: &Scenario) -> BTreeMap<(String, String), String> {
    running_psks_of(s, &NODES)
}

fn running_psks_of(s: &Scenario, nodes: &[&str]) -> BTreeMap<(String, String), String> {
    let owners: BTreeMap<String, String> = public_keys_of(s, nodes)
        .into_iter()
        .map(|(n, k)| (k, n))
        .collect();
    let mut out = BTreeMap::new();
    for &n in nodes {
        for l in s.lab.sh(n, "wg show wg0 preshared-keys").lines() {
            let (peer, psk) = l.split_once('\t').unwrap();
            let peer = owners
                .get(peer)
                .unwrap_or_else(|| panic!("{n}: unknown peer {peer}"));
            out.insert((n.to_string(), peer.clone()), psk.trim().to_string());
        }
    }
    out
}

/// Each node's peers' public keys, as its interface runs them.
fn running_peers(s: &Scenario) -> BTreeMap<String, BTreeSet<String>> {
    NODES
        .iter()
        .map(|n| {
            let peers = s.lab.sh(n, "wg show wg0 peers");
            (n.to_string(), peers.lines().map(str::to_string).collect())
        })
        .collect()
}

/// Cross-site pairs that do not ping over wg0 (each tried up to 10 times).
fn mesh_failures(s: &Scenario) -> Vec<String> {
    let ips = wg_ips(s);
    let mut failed = Vec::new();
    for (from, fsite, _) in &ips {
        for (to, tsite, ip) in &ips {
            if fsite != tsite && !s.ping(from, ip) {
                failed.push(format!("{from} -> {to}"));
            }
        }
    }
    failed
}

#[test]
fn preshared_keys_are_equal_on_both_ends_stable_and_never_printed() {
    if !lab_available() {
        return;
    }
    let y = psk_yaml();
    let s = Scenario::new("pk", &y, &y, &[]);
    let mut p = Printed::default();
    let started = Instant::now();
    let r = p.run(&s, &["-v", "apply", "--diff"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("+PresharedKey = (redacted)"),
        "{}",
        r.stdout
    );
    let psks = running_psks(&s);
    // node1 with its 2 members, office1 with its 1, and the 3 hubs with each other: 6 links,
    // each seen from both ends
    assert_eq!(psks.len(), 12, "{:?}", psks.keys());
    assert_one_key_per_link(&psks);
    let distinct: BTreeSet<&String> = psks.values().collect();
    assert_eq!(distinct.len(), 6, "one key per link");
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));

    // a second apply reads them back: nothing changes, the same keys run
    let (code, v) = p.json(&s, &["apply", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["summary"]["changed"], 0, "{v}");
    let r = p.run(
        &s,
        &["-v", "apply", "--check", "--diff", "--detailed-exitcode"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(running_psks(&s), psks, "the preshared keys changed");
    // everything else that prints
    for args in [
        &["plan"][..],
        &["-v", "plan", "--format", "json"],
        &["status"],
        &["-v", "status", "--format", "json"],
    ] {
        p.run(&s, args);
    }
    p.assert_no_secret(&s, &NODES);
    eprintln!("preshared keys lab test: {:?}", started.elapsed());
}

/// `ping -i 0.2` from `from` to `to`'s WireGuard address, `count` times (bounded by a deadline).
fn ping_loop(s: &Scenario, from: &str, ip: &str, count: u32) -> std::process::Child {
    let cmd: Vec<String> = [
        "ping",
        "-n",
        "-i",
        "0.2",
        "-c",
        &count.to_string(),
        "-w",
        &(count / 5 + 10).to_string(),
        ip,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    wgprov::lab::command(&s.lab.prefix, from, &cmd)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (transmitted, received) from ping's summary.
fn ping_counts(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn rotate_keys_renews_every_key_under_traffic_and_loses_at_most_a_handshake() {
    if !lab_available() {
        return;
    }
    let y = psk_yaml();
    let s = Scenario::new("rk", &y, &y, &[]);
    let mut p = Printed::default();
    let started = Instant::now();
    assert_eq!(p.run(&s, &["apply"]).code, 0);
    let keys0 = public_keys(&s);
    let psks0 = running_psks(&s);
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));

    // --check names what would change and changes nothing
    let r = p.run(&s, &["rotate-keys", "--check", "--detailed-exitcode"]);
    eprintln!("rotate-keys --check:\n{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "6 node(s) would get a new key pair: cabin1, node1, node2, node3, office1, office2"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(public_keys(&s), keys0);
    let r = p.run(
        &s,
        &["-v", "rotate-keys", "--check", "--diff", "--preshared"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // the diffs show the key lines, never a key (the same redacted text on both sides)
    assert!(
        r.stdout.contains(" PresharedKey = (redacted)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("6 link(s) would get a new preshared key"),
        "{}",
        r.stdout
    );
    assert_eq!(public_keys(&s), keys0);
    assert_eq!(running_psks(&s), psks0);

    // the whole lab, with node2 (home) pinging office2 across both sites' next-hops
    let office2 = wg_ips(&s)
        .into_iter()
        .find(|(n, _, _)| n == "office2")
        .unwrap()
        .2;
    let ping = ping_loop(&s, "node2", &office2, 120);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (code, v) = p.json(
        &s,
        &["rotate-keys", "--preshared", "--confirm-timeout", "30"],
    );
    let rotation_secs = t.elapsed().as_secs_f64();
    let out = ping.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    assert_eq!(v["rotated"].as_array().unwrap().len(), 6, "{v}");
    assert_eq!(v["preshared_renewed"].as_array().unwrap().len(), 6, "{v}");
    let (sent, got) = ping_counts(&out);
    let lost = sent - got;
    eprintln!(
        "rotate-keys under traffic: rotation {rotation_secs:.1} s; node2 -> office2 every 0.2 s: {sent} sent, {got} received, {lost} lost ({:.1} s of traffic)",
        f64::from(lost) * 0.2
    );
    // one handshake's worth: WireGuard retries a handshake after 5 s (REKEY_TIMEOUT)
    assert!(lost <= 25, "{lost} pings lost during the rotation:\n{out}");
    assert!(sent >= 115, "the ping loop ran through the rotation: {out}");

    let keys1 = public_keys(&s);
    for n in NODES {
        assert_ne!(keys0[n], keys1[n], "{n} kept its key");
    }
    let psks1 = running_psks(&s);
    assert_eq!(psks1.len(), psks0.len());
    for ((a, b), k) in &psks1 {
        assert_eq!(
            psks1.get(&(b.clone(), a.clone())),
            Some(k),
            "{a} and {b} disagree"
        );
        assert!(
            !psks0.values().any(|old| old == k),
            "{a} -> {b}: not renewed"
        );
    }
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));
    // a rotated network converges: the next apply changes nothing
    let (code, v) = p.json(&s, &["apply", "--check", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{v}");
    p.assert_no_secret(&s, &NODES);
    s.assert_no_key_leaked();
    eprintln!("rotation lab test: {:?}", started.elapsed());
}

#[test]
fn a_rotation_whose_host_fails_is_put_back_everywhere() {
    if !lab_available() {
        return;
    }
    let y = psk_yaml();
    let s = Scenario::new("rf", &y, &y, &[]);
    let mut p = Printed::default();
    let started = Instant::now();
    assert_eq!(p.run(&s, &["apply"]).code, 0);
    let keys0 = public_keys(&s);
    let peers0 = running_peers(&s);
    let psks0 = running_psks(&s);
    // office1 cannot apply its new key: it puts itself back, so its peers' new entries for it
    // are wrong and the links to it break
    s.lab.wrap_tool(
        "office1",
        "wg-quick",
        "#!/bin/sh\n[ \"$1\" = strip ] && { echo 'wg-quick: injected failure' >&2; exit 1; }\nexec /usr/bin/wg-quick \"$@\"\n",
    );
    let (code, v) = p.json(
        &s,
        &["rotate-keys", "--preshared", "--confirm-timeout", "20"],
    );
    s.lab.unwrap_tool("office1", "wg-quick");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["guard"]["outcome"], "reverted", "{v}");
    assert!(!v["guard"]["broken"].as_array().unwrap().is_empty(), "{v}");
    eprintln!("guard: {}", v["guard"]["why"]);
    for n in NODES {
        let want = if n == "office1" {
            "rolled_back"
        } else {
            "reverted"
        };
        assert_eq!(v["hosts"][n]["status"], want, "{n}: {v}");
    }
    // the old keys run again everywhere, and every peer lists them
    let back = (0..40).any(|_| {
        if public_keys(&s) == keys0 && running_peers(&s) == peers0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
        false
    });
    assert!(
        back,
        "not every host is back: {:?} vs {keys0:?}",
        public_keys(&s)
    );
    assert_eq!(running_psks(&s), psks0, "the old preshared keys run again");
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));
    p.assert_no_secret(&s, &NODES);
    eprintln!("failed rotation lab test: {:?}", started.elapsed());
}

/// Every link's preshared key is the same on both ends and not `(none)`.
fn assert_one_key_per_link(psks: &BTreeMap<(String, String), String>) {
    for ((a, b), k) in psks {
        assert_ne!(k, "(none)", "{a} -> {b} has no preshared key");
        assert_eq!(
            psks.get(&(b.clone(), a.clone())),
            Some(k),
            "{a} and {b} disagree"
        );
    }
}

/// An OpenWrt router that is its site's hub (real `uci`, the lab's `ifup` stand-in reading
/// what uci holds) carries the preshared keys of its links in its peer sections: the same as
/// its peers', kept by a second apply (read back from its script), renewed by `rotate-keys
/// --preshared`, never printed.
#[test]
fn an_openwrt_hub_router_carries_the_preshared_keys_of_its_links() {
    let Some(cache) = super::openwrt::available() else {
        return;
    };
    if !lab_available() {
        return;
    }
    let y = super::openwrt::HUB_LAB.replacen(
        "  cluster_cidrs:",
        "  preshared_keys: true\n  cluster_cidrs:",
        1,
    );
    let nodes = ["home-router", "node1", "node2", "office1"];
    let r = super::openwrt::Router::new(&cache, None);
    let s = Scenario::new("owk", &y, &y, &[]);
    super::openwrt::make_openwrt(&s, "home-router", &r);
    let mut p = Printed::default();
    let (code, v) = p.json(&s, &["apply"]);
    assert_eq!(code, 0, "{v:#}");
    let psks = running_psks_of(&s, &nodes);
    // the router with its 2 members and office1, each seen from both ends
    assert_eq!(psks.len(), 6, "{psks:?}");
    assert_one_key_per_link(&psks);
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));
    let net = s.lab.sh("home-router", "uci show network");
    assert_eq!(
        net.lines()
            .filter(|l| l.contains(".preshared_key="))
            .count(),
        3,
        "{}",
        r.redact(&net)
    );
    let r2 = p.run(
        &s,
        &["-v", "apply", "--check", "--diff", "--detailed-exitcode"],
    );
    assert_eq!(r2.code, 0, "{}{}", r2.stdout, r2.stderr);
    let (code, v) = p.json(
        &s,
        &["rotate-keys", "--preshared", "--limit", "home-router"],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v:#}");
    let after = running_psks_of(&s, &nodes);
    assert_one_key_per_link(&after);
    for (l, k) in &after {
        assert_ne!(psks.get(l), Some(k), "{l:?}: not renewed");
    }
    assert!(mesh_failures(&s).is_empty(), "{:?}", mesh_failures(&s));
    p.assert_no_secret(&s, &nodes);
}

/// Bad usage of `rotate-keys` is refused before any host is contacted (exit 2).
#[test]
fn rotate_keys_refuses_what_it_cannot_do_before_contacting_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    std::fs::write(&inv, demo_yaml()).unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_wgprov"))
            .args(args)
            .args(["-i", inv.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["rotate-keys", "--preshared"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("network.preshared_keys is not true"), "{err}");
    let (code, err) = run(&["rotate-keys", "--limit", "nosuchnode"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--limit nosuchnode matches no managed node"),
        "{err}"
    );
}
