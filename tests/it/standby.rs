//! A site with a standby next-hop, on systemd nodes (real wireguard-go, real timers): the demo
//! network with `standby: node2` at home. Its next-hop node1 fails in three ways in turn —
//! forwarding switched off while it still answers pings itself, wg0 down, the machine powered
//! off — and each time every cross-site pair that does not involve node1 must ping again
//! within 30 s, with `status` naming `failed_over`. After the first two, node1 comes back and
//! the routes return to it after the hold time, without flapping (a ping loop's loss is
//! counted across the return). A second apply while failed over changes nothing that breaks it.
//!
//! With dual stack (a shorter variant: forwarding off in both families, and back) the site's
//! IPv6 block moves with its IPv4 one: IPv6 pings cross again as soon as IPv4 ones do.
//!
//! The hold time is the role's `failover_hold`, shortened here from 60 s to 15 s through
//! `--roles-path` (a copy of the roles with that one default changed) to keep the test short.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::common::{Inv, content, render, roles_with_default, root};
use super::systemd::{Lab, eventually, image};

/// The hold time the test's roles use.
const HOLD: u64 = 15;
/// The failover target.
const TARGET: Duration = Duration::from_secs(30);

fn with_standby(y: String) -> String {
    y.replace(
        "    next_hop: node1\n",
        "    next_hop: node1\n    standby: node2\n    standby_endpoint: 203.0.113.10:51822\n",
    )
}

/// `y` with dual stack: an IPv6 WireGuard space beside the IPv4 one.
fn dual_stack(y: String) -> String {
    y.replace(
        "  wireguard_cidr: 10.100.0.0/16\n",
        "  wireguard_cidr: 10.100.0.0/16\n  wireguard_cidr6: fd10:100::/48\n",
    )
}

/// A copy of the roles with `failover_hold` set to [`HOLD`].
fn roles_with_short_hold(dir: &Path) -> String {
    roles_with_default(
        dir,
        "failover",
        "failover_hold: 60\n",
        &format!("failover_hold: {HOLD}\n"),
    )
}

fn spawn_in(lab: &Lab, node: &str, cmd: &[&str], out: Stdio) -> Option<Child> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    wgprov::lab::command(&lab.lab.prefix, node, &cmd)
        .ok()?
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Every node's WireGuard addresses: (node, site, its IPv4 address and, with dual stack, its
/// IPv6 one).
fn addresses(lab: &Lab) -> Vec<(String, String, Vec<String>)> {
    let planned = wgprov::topology::plan_inventory(Path::new(&lab.inv), false).unwrap();
    let net = &planned.topology.network;
    lab.nodes
        .iter()
        .map(|(n, site, ip)| {
            let mut ips = vec![ip.clone()];
            ips.extend(net.ip6_of(ip.parse().unwrap()).map(|a| a.to_string()));
            (n.clone(), site.clone(), ips)
        })
        .collect()
}

/// The cross-site pairs (both directions) not involving `dead` that do not answer one ping
/// each, in every family the mesh has, all sent at once.
fn failing_pairs(lab: &Lab, dead: &str) -> Vec<String> {
    let nodes = addresses(lab);
    let mut children = Vec::new();
    for (a, sa, _) in nodes.iter().filter(|n| n.0 != dead) {
        for (b, _, ips) in nodes.iter().filter(|n| n.1 != *sa && n.0 != dead) {
            for ip in ips {
                let c = spawn_in(lab, a, &["ping", "-c", "1", "-W", "1", ip], Stdio::null());
                children.push((format!("{a} -> {b} ({ip})"), c));
            }
        }
    }
    children
        .into_iter()
        .filter_map(|(what, c)| {
            let ok = c
                .and_then(|mut c| c.wait().ok())
                .is_some_and(|s| s.success());
            (!ok).then_some(what)
        })
        .collect()
}

/// Seconds from `t0` until every such pair pings in one round; `None` after `limit`.
fn seconds_until_all_ping(lab: &Lab, dead: &str, t0: Instant, limit: Duration) -> Option<f64> {
    loop {
        let round = Instant::now();
        let failing = failing_pairs(lab, dead);
        if failing.is_empty() {
            return Some(round.duration_since(t0).as_secs_f64());
        }
        if t0.elapsed() > limit {
            eprintln!("still failing after {limit:?}: {failing:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The watchdog's state of site home on `node`, as `key → value`.
fn state(lab: &Lab, node: &str) -> HashMap<String, String> {
    let (_, out, _) = lab
        .lab
        .exec(node, &["cat", "/var/lib/wgprov/failover/home.state"]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn role(lab: &Lab, node: &str) -> String {
    state(lab, node).get("role").cloned().unwrap_or_default()
}

/// The networks that site home's watchdog on `node` moves (its state's `moves`) which wg0
/// there does not route to `to`'s peer; without such a state, that says so.
fn not_on(lab: &Lab, node: &str, to: &str) -> Vec<String> {
    let moves = state(lab, node).get("moves").cloned().unwrap_or_default();
    if moves.is_empty() {
        return vec![format!("{node} has no moves in its state")];
    }
    let (_, key, _) = lab.lab.exec(to, &["wg", "show", "wg0", "public-key"]);
    let (_, shown, _) = lab.lab.exec(node, &["wg", "show", "wg0", "allowed-ips"]);
    let theirs: Vec<&str> = shown
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key.trim()))
        .map(|l| l.split_whitespace().skip(1).collect())
        .unwrap_or_default();
    moves
        .split(',')
        .filter(|n| !theirs.contains(n))
        .map(|n| format!("{node}: {n} is not on {to}'s peer"))
        .collect()
}

/// The nodes whose watchdog watches home: the other sites' hubs and home's member node3.
const WATCHERS: [&str; 3] = ["office1", "cabin1", "node3"];

/// `status` reports site home failed over to node2.
fn status_says_failed_over(lab: &Lab) -> bool {
    let (_, v, _) = lab.status_json();
    let problem = v["problems"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["kind"] == "failed_over" && p["site"] == "home" && p["node"] == "node1")
    });
    let active = v["failover"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["site"] == "home"))
        .map(|s| s["active"].clone());
    problem && active == Some(serde_json::json!("node2"))
}

/// Injects `fault` on node1 and measures the failover: the seconds until every pair pings.
fn fail_and_measure(lab: &Lab, what: &str, fault: &str) -> f64 {
    assert!(
        eventually(Duration::from_secs(40), || WATCHERS.iter().all(|n| {
            state(lab, n).get("seen").map(String::as_str) == Some("1")
        })),
        "the watchdogs never saw node1 forward: {:?}",
        WATCHERS.map(|n| state(lab, n))
    );
    let t0 = Instant::now();
    let (code, out, err) = lab.lab.exec("node1", &["sh", "-c", fault]);
    assert!(code == 0 || what == "powered off", "{fault}: {out}{err}");
    let secs = seconds_until_all_ping(lab, "node1", t0, Duration::from_secs(60));
    let secs = secs.unwrap_or_else(|| panic!("{what}: the mesh did not come back"));
    eprintln!("failover ({what}): every cross-site pair without node1 pings after {secs:.1} s");
    assert!(
        secs <= TARGET.as_secs_f64(),
        "{what}: {secs:.1} s > {TARGET:?}"
    );
    for n in WATCHERS {
        assert_eq!(role(lab, n), "standby", "{what}: {n}: {:?}", state(lab, n));
        let stray = not_on(lab, n, "node2");
        assert!(stray.is_empty(), "{what}: {stray:?}");
    }
    let since: Vec<String> = WATCHERS
        .iter()
        .map(|n| {
            format!(
                "{n} at {}",
                state(lab, n).get("since").cloned().unwrap_or_default()
            )
        })
        .collect();
    eprintln!("failover ({what}): switched {}", since.join(", "));
    assert!(
        eventually(Duration::from_secs(20), || status_says_failed_over(lab)),
        "{what}: status does not name failed_over: {}",
        lab.status_json().2
    );
    secs
}

/// Waits until 3 s past one of the wall clock's 5-second marks. The watchdogs check on those
/// marks, each check taking about a second: a repair made now lands between two checks, and
/// every watcher sees it at the same next one. (A repair landing during a check is seen one
/// check apart by the watchers that checked just before and just after it, which then route
/// through different hubs for one check: a limit of checking on shared marks, not what the
/// return is measured for.)
fn between_checks() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let wait = (3_000 + 5_000 - now % 5_000) % 5_000;
    std::thread::sleep(Duration::from_millis(wait as u64));
}

/// Repairs node1 with `repair` and measures the return, `hold` being the hold time the
/// watchdogs should wait: seconds until every watcher routes through node1 again, the loss of
/// a ping loop across it, and how often office1 switched.
fn repair_and_measure(lab: &Lab, what: &str, repair: &str, hold: u64) -> (f64, u32, u32, u32) {
    for n in WATCHERS {
        assert_eq!(state(lab, n).get("hold"), Some(&hold.to_string()), "{n}");
    }
    between_checks();
    let node3 = lab.nodes.iter().find(|n| n.0 == "node3").unwrap().2.clone();
    let count = ((hold + 16) * 5).to_string();
    let looped = spawn_in(
        lab,
        "office2",
        &["ping", "-q", "-i", "0.2", "-W", "1", "-c", &count, &node3],
        Stdio::piped(),
    )
    .expect("ping loop");
    lab.lab.sh("node1", repair);
    let t1 = Instant::now();
    let mut last = role(lab, "office1");
    let mut switches = 0;
    let mut back = None;
    // until the ping loop ends: a switch back and forth after the return is counted too
    while t1.elapsed() < Duration::from_secs(hold + 15) {
        let r = role(lab, "office1");
        if r != last {
            switches += 1;
            last = r;
        }
        if back.is_none() && WATCHERS.iter().all(|n| role(lab, n) == "hub") {
            back = Some(t1.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = looped.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let nums: Vec<u32> = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .take(2)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nums.len(), 2, "{text}");
    let back = back.unwrap_or_else(|| panic!("{what}: the routes never went back to node1"));
    let since: Vec<String> = WATCHERS
        .iter()
        .map(|n| {
            format!(
                "{n} at {}",
                state(lab, n).get("since").cloned().unwrap_or_default()
            )
        })
        .collect();
    eprintln!("return ({what}): switched back {}", since.join(", "));
    eprintln!(
        "return ({what}): every watcher routes through node1 again {back:.1} s after the repair (hold {hold} s); ping loop office2 -> node3 lost {} of {}; office1 switched {switches} time(s)",
        nums[0] - nums[1],
        nums[0]
    );
    (back, nums[0], nums[1], switches)
}

/// [`repair_and_measure`], and the return is as it should be: after the hold time (not before,
/// at most 15 s after), with one switch and at most two pings lost across it.
fn repair_and_return(lab: &Lab, what: &str, repair: &str, hold: u64) {
    let (back, sent, got, switches) = repair_and_measure(lab, what, repair, hold);
    assert!(
        back >= hold as f64 - 1.0,
        "{what}: back after {back:.1} s, before the hold time"
    );
    assert!(back <= hold as f64 + 15.0, "{what}: back after {back:.1} s");
    assert_eq!(switches, 1, "{what}: office1 flapped");
    assert!(
        sent - got <= 2,
        "{what}: lost {} of {sent} across the return",
        sent - got
    );
}

/// The demo lab with `standby: node2` at home (and what `edit` adds), applied with the short
/// hold: every cross-site pair pings in every family, node1 carries the site. The lab, the
/// directory of the roles' copy, and the `--roles-path` value.
fn standby_lab(
    tag: &str,
    image: &Path,
    edit: impl Fn(String) -> String,
) -> (Lab, tempfile::TempDir, String) {
    let lab = Lab::demo_with(tag, image, |y| edit(with_standby(y)));
    let dir = tempfile::tempdir().unwrap();
    let roles = roles_with_short_hold(dir.path());
    let (code, out) = lab.apply(&["--roles-path", &roles]);
    assert_eq!(code, 0, "{out}");
    let failing = lab.cross_site_failures(Duration::from_secs(30));
    assert!(failing.is_empty(), "{failing:?}");
    // the sessions are up: the other family (with dual stack) needs no new handshake
    let all = seconds_until_all_ping(&lab, "", Instant::now(), Duration::from_secs(10));
    assert!(all.is_some(), "not every pair pings in every family");
    let (code, v, out) = lab.status_json();
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["failover"][0]["active"], "node1", "{out}");
    (lab, dir, roles)
}

/// While failed over, `apply --check` finds nothing to do (the moved networks are the
/// watchdog's state, not drift) and an apply leaves every watcher on the standby, the mesh
/// whole.
fn apply_while_failed_over(lab: &Lab, roles: &str) {
    let (code, out) = lab.apply(&["--check", "--detailed-exitcode", "--roles-path", roles]);
    assert_eq!(code, 0, "a failover is not drift:\n{out}");
    let (code, out) = lab.apply(&["--roles-path", roles]);
    assert_eq!(code, 0, "{out}");
    for n in WATCHERS {
        assert_eq!(role(lab, n), "standby", "{n} after apply");
    }
    assert!(
        failing_pairs(lab, "node1").is_empty(),
        "after the second apply"
    );
}

#[test]
fn a_standby_takes_over_from_a_hub_that_stops_forwarding_in_three_ways_and_gives_back() {
    let Some(image) = image() else { return };
    let (lab, _dir, roles) = standby_lab("sdsb", &image, |y| y);

    // 1. forwarding off: node1 answers pings at its own address, forwards nothing
    fail_and_measure(
        &lab,
        "forwarding off",
        "sysctl -qw net.ipv4.ip_forward=0 && ping -c 1 -W 1 10.100.0.1 >/dev/null",
    );
    // a second apply changes nothing that breaks the failed-over state
    apply_while_failed_over(&lab, &roles);
    repair_and_return(
        &lab,
        "forwarding on again",
        "sysctl -qw net.ipv4.ip_forward=1",
        HOLD,
    );

    // 2. wg0 down. node1 failed again within the flap window (300 s) of getting the routes
    // back: the hold time doubles
    fail_and_measure(&lab, "wg0 down", "ip link set wg0 down");
    repair_and_return(
        &lab,
        "wg0 up again",
        "systemctl restart wg-quick@wg0",
        2 * HOLD,
    );

    // 3. the machine powered off
    fail_and_measure(&lab, "powered off", "systemctl poweroff --no-block");
}

/// Dual stack: node1 stops forwarding in both families. The site's IPv6 block moves with its
/// IPv4 one in the same check — every cross-site pair without node1 pings again in both
/// families within the target — an apply finds no drift, and after the hold both blocks are
/// back on node1's peer on every watcher, every pair (node1's too) pinging in both families.
#[test]
fn with_dual_stack_the_site_fails_over_and_back_in_both_families() {
    let Some(image) = image() else { return };
    let (lab, _dir, roles) = standby_lab("sdsb6", &image, dual_stack);
    fail_and_measure(
        &lab,
        "forwarding off in both families",
        "sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 && ping -c 1 -W 1 10.100.0.1 >/dev/null",
    );
    for (n, moves) in [
        ("office1", "10.100.0.0/24,fd10:100::/64"),
        ("cabin1", "10.100.0.0/24,fd10:100::/64"),
        ("node3", "10.100.0.0/16,fd10:100::/48"),
    ] {
        assert_eq!(state(&lab, n).get("moves").map(String::as_str), Some(moves));
    }
    apply_while_failed_over(&lab, &roles);
    repair_and_return(
        &lab,
        "forwarding on again in both families",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        HOLD,
    );
    for n in WATCHERS {
        let stray = not_on(&lab, n, "node1");
        assert!(stray.is_empty(), "{stray:?}");
    }
    let all = seconds_until_all_ping(&lab, "", Instant::now(), Duration::from_secs(10));
    assert!(
        all.is_some(),
        "after the return, not every pair pings in every family"
    );
}

/// Offline: the watchdog lands on the nodes that route the site through its hub (the other
/// sites' hubs, the site's member), as valid shell naming both hubs, the networks it moves (the
/// IPv6 counterpart too with dual stack) and what it pings through the hub; the hub and the
/// standby get none, and forward.
#[test]
fn the_watchdog_lands_where_the_site_is_routed_through_its_hub() {
    watchdog_lands(false);
    watchdog_lands(true);
}

fn watchdog_lands(dual: bool) {
    let mut yaml =
        with_standby(std::fs::read_to_string(root().join("inventories/demo.yaml")).unwrap());
    let (block, space) = if dual {
        yaml = dual_stack(yaml);
        ("10.100.0.0/24,fd10:100::/64", "10.100.0.0/16,fd10:100::/48")
    } else {
        ("10.100.0.0/24", "10.100.0.0/16")
    };
    let inv = Inv::new(&yaml);
    let (files, _) = render(&inv.plan());
    let script = "/usr/local/lib/wgprov/failover-wg0.sh";
    let timer = "/etc/systemd/system/wgprov-failover-wg0.timer";
    let of = |n: &str| &files.iter().find(|(x, _)| x == n).unwrap().1;
    let watch = "watch 'home' 'node1' 10.100.0.1 10.100.0.254 'node2' 10.100.0.2 10.100.0.253";
    for (node, watch) in [
        ("office1", format!("{watch} {block} 10.100.0.3\n")),
        ("cabin1", format!("{watch} {block} 10.100.0.3\n")),
        ("node3", format!("{watch} {space} 10.100.1.1 10.100.2.1\n")),
    ] {
        let text = content(of(node), script).unwrap_or_else(|| panic!("{node}"));
        assert!(text.contains(&watch), "{node}:\n{text}");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", text])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            content(of(node), timer)
                .unwrap()
                .contains("OnCalendar=*:*:0/5")
        );
    }
    for node in ["node1", "node2", "office2"] {
        assert_eq!(content(of(node), script), None, "{node}");
    }
    for node in ["node1", "node2"] {
        let sysctl = content(of(node), "/etc/sysctl.d/99-wgprov.conf").unwrap_or_default();
        assert!(
            sysctl.contains("net.ipv4.ip_forward = 1"),
            "{node}: {sysctl}"
        );
        let conf = content(of(node), "/etc/wireguard/wg0.conf").unwrap();
        assert!(conf.contains("PostUp = iptables"), "{node}");
    }
}

/// The watchdog's decisions, tick by tick, offline: its script rendered for office1 runs with
/// stand-ins for `wg`, `ping` and `date` (what answers is a file the test writes), so every
/// rule of the state machine is exercised without a network: judge only a hub seen forwarding,
/// three misses to leave, never for an unfit standby, a full hold of fit checks to return (a
/// single miss restarts it), the hold doubled when the hub fails again soon after.
#[test]
fn the_watchdog_leaves_after_three_misses_and_returns_after_an_unbroken_hold() {
    watchdog_ticks(false);
}

/// The same with dual stack: at every move, both ways, the site's IPv4 and IPv6 blocks land
/// together on one peer in a single `wg set` (never one family without a peer, nor the two
/// split between the hubs), the peers found by their IPv4 /32 among IPv6 networks, and the
/// state file names both.
#[test]
fn with_dual_stack_the_watchdog_moves_both_blocks_in_one_wg_set_each_way() {
    watchdog_ticks(true);
}

fn watchdog_ticks(dual: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mut yaml =
        with_standby(std::fs::read_to_string(root().join("inventories/demo.yaml")).unwrap());
    let mut moves = vec!["10.100.0.0/24"];
    let mut filed = [
        "HUB\t10.100.0.0/24 10.100.0.1/32 10.100.0.254/32",
        "SB\t10.100.0.2/32 10.100.0.253/32",
        "CAB\t10.100.2.0/24",
    ]
    .map(String::from);
    if dual {
        yaml = dual_stack(yaml);
        moves.push("fd10:100::/64");
        for (line, v6) in filed.iter_mut().zip([
            " fd10:100::/64 fd10:100::1/128 fd10:100::fe/128",
            " fd10:100::2/128 fd10:100::fd/128",
            " fd10:100:0:2::/64",
        ]) {
            line.push_str(v6);
        }
    }
    let filed = filed.join("\n") + "\n";
    let inv = Inv::new(&yaml);
    let (files, _) = render(&inv.plan());
    let of = |n: &str| &files.iter().find(|(x, _)| x == n).unwrap().1;
    let script = content(of("office1"), "/usr/local/lib/wgprov/failover-wg0.sh").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nD={}\n{body}", d.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // the peers' AllowedIPs live in $D/wg; `wg set` replaces a peer's list and takes each of
    // its networks from every other peer, as WireGuard does (and is logged in $D/sets)
    tool(
        "wg",
        r#"case "$1" in
  show) cat "$D/wg" ;;
  set) echo "$4 $6" >> "$D/sets"; k=$4; list=$(echo "$6" | tr ',' ' ')
    awk -v k="$k" -v l="$list" 'BEGIN { n = split(l, a, " "); for (i = 1; i <= n; i++) m[a[i]] = 1 }
      $1 == k { printf "%s\t%s\n", k, l; next }
      { printf "%s\t", $1; s = ""; for (i = 2; i <= NF; i++) if (!($i in m)) { printf "%s%s", s, $i; s = " " } printf "\n" }' "$D/wg" > "$D/wg.new" && mv "$D/wg.new" "$D/wg" ;;
esac
"#,
    );
    // ping answers unless its address is listed in $D/down; a TTL-1 ping to a probe address
    // says "exceeded" unless the probe is listed in $D/down
    tool(
        "ping",
        r#"for a; do ip=$a; done
ttl=; case " $* " in *" -t 1 "*) ttl=1 ;; esac
grep -qx "$ip" "$D/down" 2>/dev/null && exit 1
[ -n "$ttl" ] && echo "From x icmp_seq=1 Time to live exceeded" && exit 1
exit 0
"#,
    );
    tool("date", r#"cat "$D/now""#);
    let text = script
        .replace(
            "PATH=/usr/local/sbin",
            &format!("PATH={}:/usr/local/sbin", bin.display()),
        )
        .replace(
            "/var/lib/wgprov/failover",
            &d.join("state").display().to_string(),
        );
    std::fs::write(d.join("failover.sh"), text).unwrap();
    std::fs::write(d.join("wg"), &filed).unwrap();
    std::fs::write(d.join("sets"), "").unwrap();
    let mut now = 1_000u64;
    // one tick with `down` unreachable; the role after it and whom the block is on
    let mut tick = |down: &[&str]| -> (String, String) {
        now += 5;
        std::fs::write(d.join("now"), now.to_string()).unwrap();
        std::fs::write(d.join("down"), down.join("\n") + "\n").unwrap();
        let out = std::process::Command::new("sh")
            .arg(d.join("failover.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = std::fs::read_to_string(d.join("state/home.state")).unwrap();
        let role = st
            .lines()
            .find_map(|l| l.strip_prefix("role="))
            .unwrap()
            .to_string();
        let wg = std::fs::read_to_string(d.join("wg")).unwrap();
        // every moved network on exactly one peer, all on the same one
        let holders: Vec<Vec<&str>> = moves
            .iter()
            .map(|m| {
                wg.lines()
                    .filter(|l| l.split_whitespace().skip(1).any(|n| n == *m))
                    .map(|l| l.split('\t').next().unwrap())
                    .collect()
            })
            .collect();
        assert!(
            holders.iter().all(|h| h.len() == 1 && h == &holders[0]),
            "{moves:?} held by {holders:?}:\n{wg}"
        );
        let sets = std::fs::read_to_string(d.join("sets")).unwrap();
        assert!(
            sets.lines().count() <= 1,
            "more than one wg set in a tick:\n{sets}"
        );
        std::fs::write(d.join("sets"), "").unwrap();
        assert!(
            st.lines()
                .any(|l| l == format!("moves={}", moves.join(","))),
            "{st}"
        );
        (role, holders[0][0].to_string())
    };
    let hub = |r: (String, String)| r == ("hub".to_string(), "HUB".to_string());
    let sb = |r: (String, String)| r == ("standby".to_string(), "SB".to_string());
    // node3 behind the hub does not answer, but the hub was never seen forwarding: no verdict
    for _ in 0..4 {
        assert!(hub(tick(&["10.100.0.3"])));
    }
    assert!(hub(tick(&[])));
    // misses with an unfit standby (it does not forward): stay
    for _ in 0..4 {
        assert!(hub(tick(&["10.100.0.3", "10.100.0.253"])));
    }
    // two misses, then an answer: the count starts again
    assert!(hub(tick(&[])));
    assert!(hub(tick(&["10.100.0.3"])));
    assert!(hub(tick(&["10.100.0.3"])));
    assert!(hub(tick(&[])));
    // three misses: the block moves to the standby
    assert!(hub(tick(&["10.100.0.3"])));
    assert!(hub(tick(&["10.100.0.3"])));
    let r = tick(&["10.100.0.3"]);
    assert!(sb(r.clone()), "{r:?}");
    // the hub answers at its address but does not forward: no return, however long
    for _ in 0..20 {
        assert!(sb(tick(&["10.100.0.254"])));
    }
    // fit for 55 s, one miss, fit again: the 60 s start over
    for _ in 0..11 {
        assert!(sb(tick(&[])));
    }
    assert!(sb(tick(&["10.100.0.1"])));
    for _ in 0..12 {
        assert!(sb(tick(&[])));
    }
    assert!(hub(tick(&[])), "back after 60 s of unbroken fit checks");
    // failing again soon after: out after three misses, and now the hold is 120 s
    for _ in 0..2 {
        assert!(hub(tick(&["10.100.0.3"])));
    }
    assert!(sb(tick(&["10.100.0.3"])));
    for _ in 0..24 {
        assert!(sb(tick(&[])));
    }
    assert!(hub(tick(&[])), "back after 120 s");
    // failed over once more, the interface is set from its file again (an apply's `wg
    // syncconf`, a restart): the next tick puts the block back on the standby
    for _ in 0..2 {
        assert!(hub(tick(&["10.100.0.3"])));
    }
    assert!(sb(tick(&["10.100.0.3"])));
    std::fs::write(d.join("wg"), &filed).unwrap();
    assert!(sb(tick(&["10.100.0.254"])));
    // the standby stops forwarding while the hub is fit again: straight back, no hold
    assert!(hub(tick(&["10.100.0.3"])));
    let st = std::fs::read_to_string(d.join("state/home.state")).unwrap();
    assert!(st.contains("hold=240"), "{st}");
}

/// A managed Linux router makes the standby's port-forward too (namespace lab, no systemd):
/// after one apply its chain holds both DNAT rules, and office1 — whose site has no endpoint,
/// so it dials both of home's — pings node2 over the standby's own link, through the second
/// forward. Without systemd no watchdog runs: `status` says nothing fails over.
#[test]
fn a_managed_linux_router_forwards_the_standbys_second_port() {
    use super::apply::{Scenario, wg_ips};
    if !super::common::lab_available() {
        return;
    }
    const INV: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: node1
    standby: node2
    standby_endpoint: 203.0.113.10:51822
    router: { kind: linux, address: 192.168.0.254, wan_interface: wan0 }
    nodes:
      node1: { address: 192.168.0.10 }
      node2: { address: 192.168.0.11 }
      node3: { address: 192.168.0.12 }
  office:
    lan_cidrs: [192.168.10.0/24]
    router: other
    nodes:
      office1: { address: 192.168.10.5 }
";
    let s = Scenario::new("sbrt", INV, INV, &[]);
    let r = s.apply(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let nat = s.lab.sh("home-router", "iptables -t nat -S WGPROV-PF");
    for rule in [
        "--dport 51820 -j DNAT --to-destination 192.168.0.10:51820",
        "--dport 51822 -j DNAT --to-destination 192.168.0.11:51820",
    ] {
        assert!(nat.contains(rule), "{rule}\n{nat}");
    }
    let ips = wg_ips(&s);
    for (a, sa, _) in &ips {
        for (b, sb, ip) in &ips {
            if sa != sb {
                assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip}) over wg0");
            }
        }
    }
    // node2's own link carried that ping: office1 has a handshake with it
    let hs = s.lab.sh("office1", "wg show wg0 latest-handshakes");
    let node2_key = s.lab.sh("node2", "wg show wg0 public-key");
    let last = hs
        .lines()
        .find(|l| l.starts_with(node2_key.trim()))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(last > 0, "no handshake between office1 and node2:\n{hs}");
    // a second apply changes nothing
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let st = s.wgprov(&["status", "-i", s.inv.to_str().unwrap()]);
    let all = format!("{}{}", st.stdout, st.stderr);
    assert!(all.contains("nothing fails over on"), "{all}");
}
