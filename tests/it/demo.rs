//! `wgprov lab demo`, the command README starts with, run end to end as a user runs it: the
//! built binary, as root, in a lab of its own (its own `--prefix`, so that it never meets the
//! labs of other tests running at the same time).

use std::collections::BTreeSet;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::common::{LAB_LOCK, lab_available, root};

/// The demo takes about 5-10 s here; past this it hangs.
const DEMO_LIMIT: Duration = Duration::from_secs(180);

/// Tears the lab down when dropped, should the demo have failed to do it itself.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = wgprov::lab::down(&self.0);
    }
}

/// The section of the demo's output under `== title` (up to the next `== ` line).
fn section<'a>(out: &'a str, title: &str) -> &'a str {
    let head = format!("== {title}\n");
    let start = out
        .find(&head)
        .unwrap_or_else(|| panic!("no `== {title}` in the demo's output:\n{out}"))
        + head.len();
    let rest = &out[start..];
    &rest[..rest.find("\n== ").unwrap_or(rest.len())]
}

/// `(host, changed=)` of every line of an apply's RECAP.
fn recap(apply: &str) -> Vec<(String, u32)> {
    let start = apply
        .find("RECAP ***")
        .unwrap_or_else(|| panic!("no RECAP:\n{apply}"));
    apply[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let host = l.split_whitespace().next().unwrap().to_string();
            let changed = l
                .split_whitespace()
                .find_map(|f| f.strip_prefix("changed="))
                .unwrap_or_else(|| panic!("no changed= in `{l}`"))
                .parse()
                .unwrap();
            (host, changed)
        })
        .collect()
}

/// What the demo inventory must give, planned independently of the demo (from a copy, so that
/// the lock file stays out of the repository).
struct Expected {
    /// Every node.
    nodes: BTreeSet<String>,
    /// Every ordered pair of nodes in different sites.
    pairs: BTreeSet<(String, String)>,
    /// How many namespaces its lab has.
    namespaces: usize,
}

fn expected() -> Expected {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("demo.yaml");
    std::fs::copy(root().join("inventories/demo.yaml"), &inv).unwrap();
    let p = wgprov::topology::plan_inventory(&inv, false).unwrap();
    let layout = wgprov::lab::plan::plan(&p.inventory, &p.topology, "x", &[], None).unwrap();
    let nodes = &p.topology.nodes;
    let pairs = nodes
        .iter()
        .flat_map(|a| {
            nodes
                .iter()
                .filter(move |b| b.site != a.site)
                .map(move |b| (a.name.clone(), b.name.clone()))
        })
        .collect();
    Expected {
        nodes: nodes.iter().map(|n| n.name.clone()).collect(),
        pairs,
        namespaces: layout.namespaces().len(),
    }
}

/// Runs `wgprov lab demo --prefix PREFIX`, bounded by [`DEMO_LIMIT`]: past it the demo gets
/// SIGTERM (it stops at its next step and tears its lab down), then SIGKILL. Returns its exit
/// status (None when it had to be stopped), stdout and stderr.
fn run_demo(prefix: &str) -> (Option<ExitStatus>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(["lab", "demo", "--prefix", prefix])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut timed_out = false;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEMO_LIMIT {
            timed_out = true;
            // SAFETY: kill(2) on the child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let grace = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // reaps it (or returns the status try_wait already saw)
    let status = child.wait().unwrap();
    let status = (!timed_out).then_some(status);
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out), read(&err))
}

#[test]
fn lab_demo_pings_across_every_pair_of_sites_changes_nothing_twice_and_leaves_nothing() {
    if !lab_available() {
        return;
    }
    let _lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = format!("t{}demo", std::process::id() % 100_000);
    let _down = Down(prefix.clone());
    let started = Instant::now();
    let (status, out, err) = run_demo(&prefix);
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!("lab demo did not end within {DEMO_LIMIT:?}:\n{out}\nstderr:\n{err}")
    });
    assert_eq!(
        status.code(),
        Some(0),
        "lab demo failed:\n{out}\nstderr:\n{err}"
    );

    // every ordered pair of nodes in different sites, each printed as crossed
    let want = expected();
    let pings = section(
        &out,
        "pings over wg0 between every pair of nodes in different sites",
    );
    let mut crossed = BTreeSet::new();
    for line in pings.lines().filter(|l| !l.trim().is_empty()) {
        // `  node1    (home  ) -> office1  (office) 10.100.1.1   ok`
        let f: Vec<&str> = line.split_whitespace().collect();
        let arrow = f.iter().position(|x| *x == "->").unwrap_or(0);
        assert!(
            arrow > 0 && f.last() == Some(&"ok"),
            "a ping did not cross: `{line}`"
        );
        crossed.insert((f[0].to_string(), f[arrow + 1].to_string()));
    }
    assert_eq!(crossed, want.pairs, "pings printed:\n{pings}");
    assert!(
        out.contains(&format!(
            "== demo: {n}/{n} cross-site pings crossed both NATs",
            n = want.pairs.len()
        )),
        "{out}"
    );

    // the first apply changed every node; the second changed nothing on any of them
    let first = recap(section(&out, "wgprov apply"));
    let second = recap(section(&out, "wgprov apply again: nothing to change"));
    let hosts = |r: &[(String, u32)]| r.iter().map(|(h, _)| h.clone()).collect::<BTreeSet<_>>();
    assert_eq!(hosts(&first), want.nodes, "first apply's recap");
    assert_eq!(hosts(&second), want.nodes, "second apply's recap");
    assert!(first.iter().all(|(_, c)| *c > 0), "first apply: {first:?}");
    assert!(
        second.iter().all(|(_, c)| *c == 0),
        "second apply: {second:?}"
    );

    // torn down by the demo itself: no namespace with its prefix, no directory left
    assert!(
        out.contains(&format!(
            "== lab down: removed {} namespaces",
            want.namespaces
        )),
        "{out}"
    );
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!wgprov::lab::lab_dir(&prefix).exists());
    assert!(
        !std::env::temp_dir()
            .join(format!("wgprov-demo-{prefix}"))
            .exists()
    );
    // the suite's log says how long README's main command takes
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "lab demo: {:.1} s end to end",
        took.as_secs_f64()
    );
}
