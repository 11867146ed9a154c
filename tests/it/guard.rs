//! The guard, proven in the lab with real sshd and real WireGuard through NAT: a change that
//! cuts the network is put back everywhere, a dead controller or a dropped session never leaves
//! a host half-changed, and a good change stays.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::apply::{Scenario, demo_yaml, statuses, wg_ips};
use super::common::lab_available;

/// The demo with the controller's site open to the mesh (`lan_access`).
fn mesh_yaml() -> String {
    demo_yaml().replace(
        "    lan_cidrs: [192.168.0.0/24]\n    endpoint: 203.0.113.10:51820\n",
        "    lan_cidrs: [192.168.0.0/24]\n    lan_access: true\n    endpoint: 203.0.113.10:51820\n",
    )
}

/// `yaml` with every node outside `home` reached at its WireGuard address.
fn over_mesh(s: &Scenario, yaml: &str) -> String {
    let mut y = yaml.to_string();
    for (node, site, ip) in wg_ips(s) {
        if site != "home" {
            let addr_line = y
                .lines()
                .skip_while(|l| l.trim() != format!("{node}:"))
                .nth(1)
                .unwrap()
                .to_string();
            y = y.replacen(
                &format!("{addr_line}\n"),
                &format!("{addr_line}\n        ssh: {{ host: {ip} }}\n"),
                1,
            );
        }
    }
    y
}

const NODES: [&str; 6] = ["node1", "node2", "node3", "office1", "office2", "cabin1"];

fn snapshot(s: &Scenario) -> Vec<String> {
    NODES
        .iter()
        .map(|n| s.stat(n, "/etc/wireguard/wg0.conf"))
        .collect()
}

/// Every node reaches every other site's nodes over wg0 (bounded).
fn mesh_pings(s: &Scenario) -> Vec<String> {
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

/// Waits (bounded) until `f` holds.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    f()
}

/// No lock, no pending change, no dead-man left on any node.
fn nothing_held(s: &Scenario) -> Vec<String> {
    NODES
        .iter()
        .filter(|n| {
            s.lab
                .exec(
                    n,
                    &[
                        "sh",
                        "-c",
                        "[ -e /var/lib/wgprov/lock ] || [ -e /var/lib/wgprov/pending ]",
                    ],
                )
                .0
                == 0
        })
        .map(|n| n.to_string())
        .collect()
}

/// An apply started in the background from the controller, in its own process group, with its
/// progress lines readable.
struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Background {
    fn start(s: &Scenario, extra: &[&str]) -> Background {
        let mut cmd: Vec<String> = vec![
            env!("CARGO_BIN_EXE_wgprov").to_string(),
            "apply".into(),
            "-i".into(),
            s.inv.to_str().unwrap().into(),
        ];
        cmd.extend(extra.iter().map(|a| a.to_string()));
        let mut c = wgprov::lab::command(&s.lab.prefix, "controller", &cmd).unwrap();
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.process_group(0);
        let mut child = c.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Background { child, lines: rx }
    }
    /// Waits (bounded) for a progress line containing `needle`.
    fn wait_line(&self, needle: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200))
                && l.contains(needle)
            {
                return true;
            }
        }
        false
    }
    /// Sends `sig` to the whole process group (nsenter and wgprov).
    fn signal(&self, sig: i32) {
        // SAFETY: killpg on the process group we created for this child.
        unsafe { libc::killpg(self.child.id() as i32, sig) };
    }
    fn wait(mut self) -> (i32, String) {
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        let st = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        (
            st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
            out,
        )
    }
}

/// Waits (bounded) until `node` has a change in flight (its pending record exists).
fn change_in_flight(s: &Scenario, node: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        s.lab
            .exec(node, &["test", "-d", "/var/lib/wgprov/pending"])
            .0
            == 0
    })
}

/// A change every next-hop takes with `wg syncconf` (peers only).
fn keepalive(yaml: &str, secs: u32) -> String {
    yaml.replace(
        "  cluster_cidrs:",
        &format!("  persistent_keepalive: {secs}\n  cluster_cidrs:"),
    )
}

/// A slow `wg-quick` on `node`: the change is in flight for a few seconds.
fn slow_wg_quick(s: &Scenario, node: &str, secs: u32) {
    s.lab.wrap_tool(
        node,
        "wg-quick",
        &format!("#!/bin/sh\nsleep {secs}\nexec /usr/bin/wg-quick \"$@\"\n"),
    );
}

/// Fault 1: the breaking listen_port change, the controller reaching the remote sites only
/// through the mesh. Every host is back byte for byte, links up, exit 1, and the report names
/// the broken links and the port-forward.
#[test]
fn a_listen_port_the_routers_do_not_forward_is_put_back_everywhere() {
    if !lab_available() {
        return;
    }
    let y = mesh_yaml();
    let s = Scenario::new_at("ga", &y, &y, &[], Some("home"));
    assert_eq!(s.apply(&[]).code, 0, "bootstrap over the management path");
    let r = s.wgprov(&["lab", "mesh-only", "--prefix", &s.lab.prefix]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mesh = over_mesh(&s, &y);
    std::fs::write(&s.inv, &mesh).unwrap();
    assert!(mesh_pings(&s).is_empty());
    let (code, v) = s.apply_json(&["--detailed-exitcode", "--check"]);
    assert_eq!(code, 0, "over the mesh, nothing to change: {v}");
    let before = snapshot(&s);

    std::fs::write(
        &s.inv,
        mesh.replace("  cluster_cidrs:", "  listen_port: 51822\n  cluster_cidrs:"),
    )
    .unwrap();
    let started = Instant::now();
    let r = s.apply(&["--confirm-timeout", "20"]);
    println!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("GUARD REVERTED"), "{}", r.stdout);
    assert!(
        r.stdout.contains("broken: node1 <-> office1"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Likely cause: the port-forward")
            && r.stdout.contains("now listens on 51822"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("router change needed: site office"),
        "announced before anything was touched: {}",
        r.stderr
    );
    // every host back byte for byte within --confirm-timeout + 60 s
    let back = eventually(
        Duration::from_secs(80) - started.elapsed().min(Duration::from_secs(20)),
        || snapshot(&s) == before,
    );
    assert!(
        back,
        "not every host is back: {:?} vs {before:?}",
        snapshot(&s)
    );
    assert!(started.elapsed() < Duration::from_secs(80));
    assert!(eventually(Duration::from_secs(20), || nothing_held(&s).is_empty()));
    // every handshake is redone after the restarts (retries every 5 s; keepalive 25 s): bounded
    assert!(
        eventually(Duration::from_secs(40), || mesh_pings(&s).is_empty()),
        "links down after the put-back: {:?}",
        mesh_pings(&s)
    );
    s.assert_no_key_leaked();
}

/// Fault 8 (and the cost of the guard when nothing changes): a good change stays after its
/// confirm timeout has passed, and a no-change apply arms nothing.
#[test]
fn a_good_change_is_still_in_place_after_the_confirm_timeout() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gb");
    assert_eq!(s.apply(&[]).code, 0);
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 21)).unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "6"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    assert!(v["guard"]["links_before"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["guard"]["links_before"], v["guard"]["links_after"], "{v}");
    let after = snapshot(&s);
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(snapshot(&s), after, "a confirmed change was put back");
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
    assert!(
        s.lab
            .sh("office1", "cat /etc/wireguard/wg0.conf")
            .contains("PersistentKeepalive = 21")
    );
    let log = s.lab.sh("office1", "cat /var/lib/wgprov/log");
    assert!(
        log.contains("confirmed") && !log.contains("put back"),
        "{log}"
    );
    // nothing to change: no guard step runs
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "skipped", "{v}");
    assert_eq!(v["guard"]["why"], "no host changed", "{v}");
}

/// Fault 5: wg-quick fails on one host; that host puts itself back, and the guard keeps the
/// rest because every link that was up is still up.
#[test]
fn wg_quick_failing_on_one_host_puts_that_host_back_and_the_guard_decides_for_the_rest() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gc");
    assert_eq!(s.apply(&[]).code, 0);
    let before = s.stat("office1", "/etc/wireguard/wg0.conf");
    s.lab.wrap_tool(
        "office1",
        "wg-quick",
        "#!/bin/sh\n[ \"$1\" = strip ] && { echo 'wg-quick: injected failure' >&2; exit 1; }\nexec /usr/bin/wg-quick \"$@\"\n",
    );
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 23)).unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    assert_eq!(code, 1, "{v}");
    let st: std::collections::HashMap<String, String> = statuses(&v).into_iter().collect();
    assert_eq!(st["office1"], "rolled_back", "{v}");
    assert_eq!(st["node1"], "changed", "{v}");
    assert_eq!(st["cabin1"], "changed", "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    assert!(
        v["hosts"]["office1"]["error"]
            .as_str()
            .unwrap()
            .contains("wg-quick strip"),
        "{v}"
    );
    assert_eq!(s.stat("office1", "/etc/wireguard/wg0.conf"), before);
    s.lab.unwrap_tool("office1", "wg-quick");
    assert!(mesh_pings(&s).is_empty());
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
}

/// Fault 4: the disk is full where the files go: a clear failure, the host unchanged.
#[test]
fn a_full_disk_fails_clearly_and_leaves_the_host_unchanged() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gd");
    assert_eq!(s.apply(&[]).code, 0);
    // a tiny tmpfs over /etc/wireguard on office1, holding its config and nothing more
    s.lab.sh(
        "office1",
        "cp -p /etc/wireguard/wg0.conf /tmp/wg0.keep && mount -t tmpfs -o size=8k,mode=700 tmpfs /etc/wireguard \
         && cp -p /tmp/wg0.keep /etc/wireguard/wg0.conf && rm /tmp/wg0.keep \
         && (dd if=/dev/zero of=/etc/wireguard/fill bs=1k count=64 2>/dev/null || true)",
    );
    let before = s.stat("office1", "/etc/wireguard/wg0.conf");
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 24)).unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    assert_eq!(code, 1, "{v}");
    let err = v["hosts"]["office1"]["error"].as_str().unwrap().to_string();
    assert!(err.contains("write /etc/wireguard/wg0.conf"), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(
        ["rolled_back", "failed"].contains(&v["hosts"]["office1"]["status"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(s.stat("office1", "/etc/wireguard/wg0.conf"), before);
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
}

/// Fault 6: two applies at once: one proceeds, the other fails fast on the hosts it finds
/// locked, naming the holder; no interleaving.
#[test]
fn two_applies_at_once_never_interleave() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("ge");
    assert_eq!(s.apply(&[]).code, 0);
    slow_wg_quick(&s, "office1", 4);
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 30)).unwrap();
    let first = Background::start(&s, &["--confirm-timeout", "20", "--format", "json"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            s.lab
                .exec("office1", &["test", "-d", "/var/lib/wgprov/lock"])
                .0
                == 0
        }),
        "the first apply never locked office1"
    );
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 35)).unwrap();
    let t = Instant::now();
    let (code, v) = s.apply_json(&["--confirm-timeout", "20"]);
    let took = t.elapsed();
    assert_eq!(code, 1, "{v}");
    let err = v["hosts"]["office1"]["error"].as_str().unwrap();
    assert!(
        err.contains("locked by another apply") && err.contains("pid"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "failed fast: {took:?}");
    let (code1, out1) = first.wait();
    assert_eq!(code1, 0, "{out1}");
    s.lab.unwrap_tool("office1", "wg-quick");
    // what is on the hosts is the first apply's change, whole
    let conf = s.lab.sh("office1", "cat /etc/wireguard/wg0.conf");
    assert!(
        conf.contains("PersistentKeepalive = 30") && !conf.contains("= 35"),
        "{conf}"
    );
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
}

/// Fault 2: the controller SIGKILLed during the change and during the health gate: every host
/// ends at its old state (nothing was confirmed), the mesh pings, nothing stays locked, and the
/// next apply works.
#[test]
fn a_controller_killed_mid_run_leaves_every_host_whole() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gf");
    assert_eq!(s.apply(&[]).code, 0);
    let before = snapshot(&s);
    for (moment, marker) in [
        ("during the change", "applying"),
        ("during the gate", "guard: probing"),
    ] {
        slow_wg_quick(&s, "office1", 3);
        std::fs::write(&s.inv, keepalive(&demo_yaml(), 26)).unwrap();
        let bg = Background::start(&s, &["--confirm-timeout", "8"]);
        let seen = if marker == "applying" {
            eventually(Duration::from_secs(20), || {
                s.lab
                    .exec("office1", &["test", "-d", "/var/lib/wgprov/pending"])
                    .0
                    == 0
            })
        } else {
            bg.wait_line(marker, Duration::from_secs(30))
        };
        assert!(seen, "{moment}: the moment never came");
        bg.signal(libc::SIGKILL);
        let _ = bg.wait();
        s.lab.unwrap_tool("office1", "wg-quick");
        assert!(
            eventually(Duration::from_secs(40), || snapshot(&s) == before),
            "{moment}: not every host is back at its old state"
        );
        assert!(
            eventually(Duration::from_secs(20), || nothing_held(&s).is_empty()),
            "{moment}: still held: {:?}",
            nothing_held(&s)
        );
        // the put-back restarts wg0: handshakes are redone (bounded wait)
        assert!(
            eventually(Duration::from_secs(40), || mesh_pings(&s).is_empty()),
            "{moment}: {:?}",
            mesh_pings(&s)
        );
        std::fs::write(&s.inv, demo_yaml()).unwrap();
    }
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 26)).unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    assert_eq!(code, 0, "nothing stays locked: {v}");
}

/// Fault 7: Ctrl-C mid-run: exit 130, and every host whole (the change is put back).
#[test]
fn ctrl_c_mid_run_exits_130_with_every_host_whole() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gg");
    assert_eq!(s.apply(&[]).code, 0);
    let before = snapshot(&s);
    slow_wg_quick(&s, "office1", 3);
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 27)).unwrap();
    let bg = Background::start(&s, &["--confirm-timeout", "20", "--format", "json"]);
    assert!(change_in_flight(&s, "office1"), "the change never started");
    bg.signal(libc::SIGINT);
    let (code, out) = bg.wait();
    assert_eq!(code, 130, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["interrupted"], true, "{v}");
    assert_eq!(v["guard"]["outcome"], "reverted", "{v}");
    s.lab.unwrap_tool("office1", "wg-quick");
    assert!(
        eventually(Duration::from_secs(30), || snapshot(&s) == before),
        "not every host is whole at its old state"
    );
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
    assert!(eventually(Duration::from_secs(40), || mesh_pings(&s).is_empty()));
}

/// Fault 3: sshd killed on a host while its change runs (the connection drops mid-script): the
/// host finishes its change and, unconfirmed, puts itself back.
#[test]
fn sshd_killed_mid_change_the_host_finishes_or_puts_itself_back() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gh");
    assert_eq!(s.apply(&[]).code, 0);
    let before = snapshot(&s);
    slow_wg_quick(&s, "office1", 3);
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 28)).unwrap();
    let bg = Background::start(&s, &["--confirm-timeout", "10", "--format", "json"]);
    assert!(change_in_flight(&s, "office1"), "the change never started");
    // sshd and every session process of office1 gone: the connection drops mid-script
    s.lab.sh(
        "office1",
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sshd ] && kill -9 ${p#/proc/}; done; true",
    );
    let (code, out) = bg.wait();
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["guard"]["outcome"], "reverted", "{v}");
    assert_eq!(v["hosts"]["office1"]["status"], "reverted", "{v}");
    s.lab.unwrap_tool("office1", "wg-quick");
    assert!(
        eventually(Duration::from_secs(40), || snapshot(&s) == before),
        "office1 did not put itself back"
    );
    let log = s.lab.sh("office1", "cat /var/lib/wgprov/log");
    assert!(log.contains("put back (deadman)"), "{log}");
    assert!(nothing_held(&s).is_empty(), "{:?}", nothing_held(&s));
    assert!(eventually(Duration::from_secs(40), || mesh_pings(&s).is_empty()));
}

/// Fault 9: adding a node is hitless: a continuous ping over existing links loses nothing.
#[test]
fn adding_a_node_is_hitless() {
    if !lab_available() {
        return;
    }
    let full = demo_yaml();
    let without = full.replace("      office2:\n        address: 192.168.10.6\n", "");
    let s = Scenario::new("gi", &full, &without, &[]);
    assert_eq!(s.apply(&[]).code, 0);
    assert!(s.ping("node2", "10.100.1.1"));
    let ip = wg_ips(&s)
        .into_iter()
        .find(|(n, _, _)| n == "office1")
        .unwrap()
        .2;
    let pinger = wgprov::lab::command(
        &s.lab.prefix,
        "node2",
        &["ping", "-c", "60", "-i", "0.1", "-W", "1", &ip]
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap()
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&s.inv, &full).unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v}");
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("60 packets transmitted, 60 received"),
        "packets lost while adding a node:\n{text}"
    );
}

/// Issue 12: a remote step that times out keeps running on the host, and nothing else runs
/// there until it ends (the host stays locked; a second apply fails fast).
#[test]
fn a_step_that_times_out_keeps_its_host_locked_until_it_ends() {
    if !lab_available() {
        return;
    }
    let s = Scenario::demo("gj");
    assert_eq!(s.apply(&[]).code, 0);
    slow_wg_quick(&s, "office1", 8);
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 29)).unwrap();
    let (code, v) = s.apply_json(&["--no-guard", "--command-timeout", "2"]);
    assert_eq!(code, 1, "{v}");
    let err = v["hosts"]["office1"]["error"].as_str().unwrap();
    assert!(
        err.contains("no answer within 2 s") && err.contains("goes on"),
        "{err}"
    );
    // the change is still running on office1: another apply must not touch it
    std::fs::write(&s.inv, keepalive(&demo_yaml(), 30)).unwrap();
    let (code, v) = s.apply_json(&["--no-guard"]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["hosts"]["office1"]["error"]
            .as_str()
            .unwrap()
            .contains("locked by another apply"),
        "{v}"
    );
    // the first change ends by itself, whole, and unlocks
    assert!(eventually(Duration::from_secs(30), || nothing_held(&s).is_empty()));
    s.lab.unwrap_tool("office1", "wg-quick");
    assert!(
        s.lab
            .sh("office1", "wg show wg0 persistent-keepalive")
            .contains("\t29"),
        "office1's first change finished"
    );
    let (code, v) = s.apply_json(&["--no-guard"]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = s.apply_json(&["--detailed-exitcode", "--check"]);
    assert_eq!(code, 0, "nothing left to do: {v}");
}
