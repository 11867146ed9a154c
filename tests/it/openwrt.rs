//! OpenWrt's own `uci` takes what wgprov generates for an OpenWrt router. The port-forward script
//! (`/etc/wgprov/router-pf.sh`) and the hub script (`/etc/wgprov/router-hub.sh`), exactly as
//! `wgprov render` writes them, run by BusyBox sh against a stock OpenWrt `/etc/config` (network
//! and firewall, tests/openwrt/etc-config) with the real `uci` tool, built from OpenWrt's uci and
//! libubox sources by tests/openwrt/build.sh. Each run is a private mount, network and PID
//! namespace: `/etc` and `/usr/sbin` are overlays whose upper layers are the test's own
//! directory, so nothing of the machine's `/etc` is touched, and every process (wireguard-go
//! included) ends with the namespace. Last, the lab's home router is made such an OpenWrt and
//! `wgprov apply` sets it up over SSH as its site's hub; the members ping the other site through
//! it.
//!
//! What is not OpenWrt here (docs/openwrt-lab.md): netifd, fw3/fw4, ubus, procd, and unless
//! `WGPROV_OPENWRT_ROOT` names OpenWrt's own netifd files, the wireguard protocol handler.
//! `ifup`, `/etc/init.d/network` and `/etc/init.d/firewall` are the lab's stand-ins
//! (tests/openwrt/standin): `ifup` brings the interface up from what `uci` holds, with
//! wireguard-go and `wg` (or runs OpenWrt's handler, tests/openwrt/standin/netifd); the other two
//! only log that they were called.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::common::{Inv, LAB_LOCK, require, require_root, root, skipped};

/// A home site whose OpenWrt router is its hub, and a cabin site whose OpenWrt router forwards
/// the WireGuard port (public 51821) to its next-hop cabin1. The routers' addresses and zone are
/// those of a stock OpenWrt (lan 192.168.1.1, zone `wan`).
const INV: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.1.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: router
    router: { kind: openwrt, address: 192.168.1.1, wan_interface: wan }
    nodes:
      node1: { address: 192.168.1.10 }
      node2: { address: 192.168.1.11 }
  cabin:
    lan_cidrs: [192.168.2.0/24]
    endpoint: 198.51.100.7:51821
    next_hop: cabin1
    router: { kind: openwrt, address: 192.168.2.1, wan_interface: wan }
    nodes:
      cabin1: { address: 192.168.2.10 }
";

/// The cache with the built `uci` (tests/openwrt/build.sh, run once per test process; a no-op
/// when scripts/install-deps built it already). `None`, said visibly, when it cannot be built
/// here; under CI that is a failure.
fn uci_cache() -> Option<PathBuf> {
    static CACHE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = CACHE.get_or_init(|| {
        let out = Command::new(root().join("tests/openwrt/build.sh"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    });
    match built {
        Ok(p) => Some(p.clone()),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!(
                "OpenWrt's uci could not be built under CI (scripts/install-deps builds it): {e}"
            )
        }
        Err(e) => {
            skipped(&format!(
                "OpenWrt's uci could not be built (tests/openwrt/build.sh): {e}"
            ));
            None
        }
    }
}

/// What the OpenWrt tests need here; skips visibly otherwise.
pub(super) fn available() -> Option<PathBuf> {
    if !(require_root() && require("wg") && require("wireguard-go") && require("busybox")) {
        return None;
    }
    uci_cache()
}

/// The rendered files of `node` (`wgprov render`, the CLI binary).
fn rendered(inv: &Inv, node: &str, path: &str) -> String {
    let out = inv.dir.path().join("out");
    if !out.exists() {
        let o = Command::new(env!("CARGO_BIN_EXE_wgprov"))
            .args(["render", "-i", inv.path.to_str().unwrap(), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "render: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let p = out.join(node).join(path.trim_start_matches('/'));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One OpenWrt router's file system, as layers over the machine's: a stock `/etc/config`, the
/// lab's stand-ins in `/etc/init.d` and `/usr/sbin`, the real `uci` in `/usr/sbin`.
pub(super) struct Router {
    dir: tempfile::TempDir,
    /// What is redacted from every message: the router's private key.
    secret: String,
}

impl Router {
    /// `openwrt`: a directory holding OpenWrt's own netifd files (see [`openwrt_root`]); the
    /// interface is then brought up by OpenWrt's protocol handler instead of the lab's `ifup`.
    pub(super) fn new(cache: &Path, openwrt: Option<&Path>) -> Router {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let d = dir.path();
        for sub in [
            "etc.upper/config",
            "etc.upper/init.d",
            "etc.upper/wgprov",
            "etc.work",
            "sbin.upper",
            "sbin.work",
            "lib.upper",
            "lib.work",
            "share.upper/libubox",
            "share.work",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let src = root().join("tests/openwrt");
        let copy = |from: PathBuf, to: PathBuf| {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        };
        for f in ["network", "firewall"] {
            copy(
                src.join("etc-config").join(f),
                d.join("etc.upper/config").join(f),
            );
            copy(
                src.join("standin/init.d").join(f),
                d.join("etc.upper/init.d").join(f),
            );
        }
        copy(cache.join("bin/uci"), d.join("sbin.upper/uci"));
        match openwrt {
            None => copy(src.join("standin/ifup"), d.join("sbin.upper/ifup")),
            Some(o) => {
                for f in ["ifup", "ubus", "ip"] {
                    copy(
                        src.join("standin/netifd").join(f),
                        d.join("sbin.upper").join(f),
                    );
                }
                copy(cache.join("bin/jshn"), d.join("sbin.upper/jshn"));
                copy(
                    cache.join("share/libubox/jshn.sh"),
                    d.join("share.upper/libubox/jshn.sh"),
                );
                for f in OPENWRT_FILES {
                    copy(
                        o.join(f),
                        d.join("lib.upper").join(f.trim_start_matches("lib/")),
                    );
                }
            }
        }
        Router {
            dir,
            secret: String::new(),
        }
    }

    /// Installs a generated script at `path` (under /etc), 0700 as apply writes it.
    fn install(&mut self, path: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(k) = text
            .lines()
            .find_map(|l| l.strip_prefix("private_key='"))
            .and_then(|l| l.strip_suffix('\''))
        {
            self.secret = k.to_string();
        }
        let rel = path.strip_prefix("/etc/").expect("a path under /etc");
        let p = self.dir.path().join("etc.upper").join(rel);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// `/etc/config/NAME` as the router has it now.
    fn config(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("etc.upper/config").join(name)).unwrap()
    }

    /// The stand-ins' log (`network reload`, `ifup wg0`, `firewall reload`), then empties it.
    fn take_calls(&self) -> Vec<String> {
        let p = self.dir.path().join("calls.log");
        let s = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
        s.lines().map(str::to_string).collect()
    }

    pub(super) fn redact(&self, s: &str) -> String {
        if self.secret.is_empty() {
            s.to_string()
        } else {
            s.replace(&self.secret, "(private key)")
        }
    }

    /// Runs `script` (sh) on the router: in private mount, network, UTS and PID namespaces,
    /// bounded to 60 s; every process ends with it. Returns (exit code, stdout, stderr).
    fn run(&self, script: &str) -> (i32, String, String) {
        let d = self.dir.path().display();
        let full = format!(
            "set -e\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.upper,workdir={d}/etc.work /etc\n\
             mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={d}/sbin.upper,workdir={d}/sbin.work /usr/sbin\n\
             mount -t overlay overlay -o lowerdir=/usr/lib,upperdir={d}/lib.upper,workdir={d}/lib.work /usr/lib\n\
             mount -t overlay overlay -o lowerdir=/usr/share,upperdir={d}/share.upper,workdir={d}/share.work /usr/share\n\
             mount -t tmpfs tmpfs /tmp\n\
             mount -t tmpfs tmpfs /run\n\
             hostname OpenWrt\n\
             ip link set lo up\n\
             set +e\n\
             export PATH=/usr/sbin:/usr/bin:/sbin:/bin OPENWRT_LAB_LOG={d}/calls.log SH='busybox sh'\n\
             {script}\n"
        );
        let out = Command::new("timeout")
            .args(["60", "unshare", "--mount", "--propagation", "private"])
            .args(["--net", "--uts", "--pid", "--fork", "--kill-child"])
            .args(["--mount-proc", "sh", "-c", &full])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Router::run`], expecting success; returns stdout.
    fn sh(&self, script: &str) -> String {
        let (code, out, err) = self.run(script);
        assert_eq!(
            code,
            0,
            "`{}` failed:\n{}{}",
            self.redact(script),
            self.redact(&err),
            self.redact(&out)
        );
        out
    }
}

/// The `uci show` lines of one section (`network.wg0`), in order.
fn section(show: &str, path: &str) -> Vec<String> {
    show.lines()
        .filter(|l| {
            l.strip_prefix(path)
                .is_some_and(|r| r.starts_with('=') || r.starts_with('.'))
        })
        .map(str::to_string)
        .collect()
}

/// A port-forward redirect as `uci show` prints it: DNAT from zone `wan`, UDP `public_port` to
/// `ip`'s WireGuard port 51820, in the section `firewall.SECTION` named for `label`.
fn redirect_shown(section: &str, label: &str, public_port: u16, ip: &str) -> Vec<String> {
    let p = format!("firewall.{section}");
    [
        "=redirect".to_string(),
        format!(".name='wgprov-wireguard-{label}'"),
        ".target='DNAT'".into(),
        ".src='wan'".into(),
        ".proto='udp'".into(),
        format!(".src_dport='{public_port}'"),
        ".dest='lan'".into(),
        format!(".dest_ip='{ip}'"),
        ".dest_port='51820'".into(),
    ]
    .iter()
    .map(|l| format!("{p}{l}"))
    .collect()
}

/// A second run of the router's port-forward script changes nothing: the same bytes in
/// `/etc/config`, nothing pending in uci.
fn assert_rerun_changes_nothing(r: &Router) {
    let (firewall, network) = (r.config("firewall"), r.config("network"));
    let out =
        r.sh("$SH /etc/wgprov/router-pf.sh && $SH /etc/wgprov/router-pf.sh check && uci changes");
    assert_eq!(out, "", "uci changes left pending");
    assert_eq!(
        r.config("firewall"),
        firewall,
        "a rerun changed the firewall"
    );
    assert_eq!(r.config("network"), network);
}

#[test]
fn openwrt_uci_takes_the_port_forward_redirect_and_a_rerun_changes_nothing() {
    let Some(cache) = available() else {
        return;
    };
    let _lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let inv = Inv::new(INV);
    let script = rendered(&inv, "cabin-router", "/etc/wgprov/router-pf.sh");
    let mut r = Router::new(&cache, None);
    r.install("/etc/wgprov/router-pf.sh", &script);
    let stock = r.sh("uci show firewall");
    // the stock firewall has the zones the redirect names: `wan` (the router's wan_interface)
    // and `lan`
    for zone in ["wan", "lan"] {
        assert!(
            stock.lines().any(
                |l| l.ends_with(&format!(".name='{zone}'")) && l.starts_with("firewall.@zone[")
            ),
            "no zone {zone} in\n{stock}"
        );
    }
    // its check says "not in place" before the first run
    assert_eq!(r.run("$SH /etc/wgprov/router-pf.sh check").0, 1);
    assert_eq!(
        r.sh("uci -q get firewall.wgprov_wireguard || echo none"),
        "none\n"
    );

    let out = r.sh("$SH /etc/wgprov/router-pf.sh && $SH /etc/wgprov/router-pf.sh check && uci show firewall && uci changes");
    assert_eq!(r.take_calls(), ["firewall reload"]);
    // what fw3/fw4 read: one DNAT redirect from zone wan, UDP 51821, to the next-hop's 51820
    assert_eq!(
        section(&out, "firewall.wgprov_wireguard"),
        redirect_shown("wgprov_wireguard", "cabin", 51821, "192.168.2.10"),
        "{out}"
    );
    // committed (no change left pending), and every stock section kept as it was
    let shown: Vec<&str> = out.lines().collect();
    let stock: Vec<&str> = stock.lines().collect();
    assert_eq!(
        &shown[..stock.len()],
        &stock[..],
        "the stock sections changed"
    );
    assert_eq!(
        shown.len(),
        stock.len() + 9,
        "more than the redirect was added (or changes are left uncommitted):\n{out}"
    );
    let file = r.config("firewall");
    assert!(
        file.contains(
            "config redirect 'wgprov_wireguard'\n\toption name 'wgprov-wireguard-cabin'\n"
        ),
        "{file}"
    );

    assert_rerun_changes_nothing(&r);

    // a value changed by hand (in LuCI, say) is drift for the check; the script puts it back
    r.sh("uci set firewall.wgprov_wireguard.dest_port=51999 && uci commit firewall");
    assert_eq!(r.run("$SH /etc/wgprov/router-pf.sh check").0, 1);
    r.sh("$SH /etc/wgprov/router-pf.sh && $SH /etc/wgprov/router-pf.sh check");
    assert_eq!(r.config("firewall"), file);
}

/// The cabin site of [`INV`] with a second node, cabin2, as its standby: its public port 51822
/// goes to cabin2. Without `standby`, cabin2 stays a plain node of the site.
fn with_standby(standby: bool) -> String {
    let lines = if standby {
        "    standby: cabin2\n    standby_endpoint: 198.51.100.7:51822\n"
    } else {
        ""
    };
    INV.replace(
        "    next_hop: cabin1\n",
        &format!("    next_hop: cabin1\n{lines}"),
    )
    .replace(
        "      cabin1: { address: 192.168.2.10 }\n",
        "      cabin1: { address: 192.168.2.10 }\n      cabin2: { address: 192.168.2.11 }\n",
    )
}

/// A managed OpenWrt router makes the standby's port-forward too: two redirects, one commit and
/// one reload; a rerun changes nothing; the standby taken out of the inventory takes its redirect
/// (only) with it; the put-back of a first apply removes both.
#[test]
fn openwrt_uci_takes_the_standbys_redirect_too_and_drops_it_with_the_standby() {
    let Some(cache) = available() else {
        return;
    };
    let _lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let inv = Inv::new(&with_standby(true));
    let pf = "/etc/wgprov/router-pf.sh";
    let script = rendered(&inv, "cabin-router", pf);
    let mut r = Router::new(&cache, None);
    r.install(pf, &script);
    let stock = r.sh("uci show firewall");

    let out = r.sh(
        "$SH /etc/wgprov/router-pf.sh && $SH /etc/wgprov/router-pf.sh check && uci show firewall",
    );
    assert_eq!(r.take_calls(), ["firewall reload"], "one reload for both");
    let next_hop = redirect_shown("wgprov_wireguard", "cabin", 51821, "192.168.2.10");
    assert_eq!(
        section(&out, "firewall.wgprov_wireguard"),
        next_hop,
        "{out}"
    );
    assert_eq!(
        section(&out, "firewall.wgprov_wireguard_standby"),
        redirect_shown(
            "wgprov_wireguard_standby",
            "cabin-standby",
            51822,
            "192.168.2.11"
        ),
        "{out}"
    );
    assert_eq!(out.lines().count(), stock.lines().count() + 18, "{out}");
    assert_rerun_changes_nothing(&r);
    r.take_calls();

    // the standby taken out of the inventory: the new script's check sees its redirect as left
    // over, and a run deletes it and keeps the next-hop's as it was
    let script = rendered_again(&inv, &with_standby(false));
    assert!(!script.contains("51822"), "{script}");
    r.install(pf, &script);
    assert_eq!(r.run("$SH /etc/wgprov/router-pf.sh check").0, 1);
    let out = r.sh("$SH /etc/wgprov/router-pf.sh && $SH /etc/wgprov/router-pf.sh check && uci show firewall && uci changes");
    assert_eq!(r.take_calls(), ["firewall reload"]);
    assert_eq!(
        section(&out, "firewall.wgprov_wireguard"),
        next_hop,
        "{out}"
    );
    assert!(!out.contains("wgprov_wireguard_standby"), "{out}");
    assert_eq!(out.lines().count(), stock.lines().count() + 9, "{out}");
    assert_rerun_changes_nothing(&r);

    // the put-back of a first apply (the script gone) removes both redirects, nothing else
    r.install(pf, &rendered_again(&inv, &with_standby(true)));
    r.sh("$SH /etc/wgprov/router-pf.sh && uci get firewall.wgprov_wireguard_standby.src_dport");
    r.take_calls();
    // run by BusyBox sh, as the handler on the router runs it
    r.install(
        "/etc/wgprov/teardown.sh",
        &wgprov::hosts::openwrt::teardown(),
    );
    let out = r.sh(
        "rm /etc/wgprov/router-pf.sh && $SH /etc/wgprov/teardown.sh && uci show firewall && echo '## changes' && uci changes",
    );
    assert_eq!(out, format!("{stock}## changes\n"));
    assert_eq!(r.take_calls(), ["firewall reload"]);
}

/// `inv` rendered again after its inventory became `yaml`: cabin's router's port-forward script.
fn rendered_again(inv: &Inv, yaml: &str) -> String {
    inv.write(yaml);
    std::fs::remove_dir_all(inv.dir.path().join("out")).unwrap();
    rendered(inv, "cabin-router", "/etc/wgprov/router-pf.sh")
}

#[test]
fn openwrt_uci_takes_the_hub_interface_and_its_peers_and_brings_it_up() {
    let Some(cache) = available() else {
        return;
    };
    hub(&cache, None);
}

/// The files of a real OpenWrt that its wireguard protocol handler needs, relative to the
/// router's root. The repository does not carry them (they are OpenWrt's code): the test below
/// takes them from `WGPROV_OPENWRT_ROOT`, e.g. a copy of a router's `/lib` made with `scp -r
/// root@router:/lib DIR/lib`, or the same files from OpenWrt's sources laid out that way.
const OPENWRT_FILES: [&str; 5] = [
    "lib/functions.sh",
    "lib/config/uci.sh",
    "lib/netifd/netifd-proto.sh",
    "lib/netifd/utils.sh",
    "lib/netifd/proto/wireguard.sh",
];

/// `WGPROV_OPENWRT_ROOT`, when it holds every file of [`OPENWRT_FILES`]; otherwise says,
/// visibly, that the test did not run.
fn openwrt_root() -> Option<PathBuf> {
    let why = match std::env::var_os("WGPROV_OPENWRT_ROOT").map(PathBuf::from) {
        None => "WGPROV_OPENWRT_ROOT is not set (a directory with OpenWrt's /lib/functions.sh, /lib/config/uci.sh and /lib/netifd; see docs/openwrt-lab.md)".to_string(),
        Some(d) => match OPENWRT_FILES.iter().find(|f| !d.join(f).is_file()) {
            None => return Some(d),
            Some(f) => format!("WGPROV_OPENWRT_ROOT has no {f}"),
        },
    };
    skipped(&why);
    None
}

/// The same hub, brought up by OpenWrt's own netifd protocol handler (`wireguard.sh`, run by
/// BusyBox sh with netifd's shell helpers, `functions.sh` and `uci.sh` reading the config through
/// the real `uci`): only netifd's end of the handler's ubus calls and `ip link add … type
/// wireguard` (wireguard-go) are the lab's (tests/openwrt/standin/netifd).
#[test]
fn openwrt_wireguard_protocol_handler_brings_the_hub_up_from_what_uci_holds() {
    let Some(cache) = available() else {
        return;
    };
    let Some(openwrt) = openwrt_root() else {
        return;
    };
    hub(&cache, Some(&openwrt));
}

/// The hub script on a stock OpenWrt: what uci holds, what runs, a rerun, drift.
fn hub(cache: &Path, openwrt: Option<&Path>) {
    let _lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let inv = Inv::new(INV);
    let script = rendered(&inv, "home-router", "/etc/wgprov/router-hub.sh");
    let mut r = Router::new(cache, openwrt);
    r.install("/etc/wgprov/router-hub.sh", &script);
    let stock_net = r.sh("uci show network");
    let stock_fw = r.sh("uci show firewall");

    // one session: the script, its check, what uci holds, what runs
    let out = r.sh(
        "$SH /etc/wgprov/router-hub.sh && $SH /etc/wgprov/router-hub.sh check && echo '## network' && uci show network && \
         echo '## firewall' && uci show firewall && echo '## changes' && uci changes && echo '## wg' && wg show wg0 public-key && wg show wg0 listen-port && \
         echo '## allowed' && wg show wg0 allowed-ips && \
         echo '## addr' && ip -o -4 addr show wg0 && ip -o link show wg0",
    );
    let calls = r.take_calls();
    match openwrt {
        None => assert_eq!(calls, ["network reload", "ifup wg0", "firewall reload"]),
        Some(_) => {
            // netifd's ifup ran the handler: it made the link, and sent netifd its update
            // (action 0: the address, the link up) after a host dependency per endpoint
            let want = [
                "network reload",
                "ifup wg0",
                "ip link add wg0 type wireguard: wireguard-go wg0",
            ];
            assert_eq!(calls[..3], want, "{calls:#?}");
            let update = calls
                .iter()
                .find(|c| c.contains("\"action\": 0"))
                .unwrap_or_else(|| panic!("no update sent to netifd: {calls:#?}"));
            assert!(
                update.contains("\"ipaddr\": \"10.100.0.1\", \"mask\": \"16\"")
                    && update.contains("\"link-up\": true"),
                "{update}"
            );
            assert_eq!(
                calls.iter().filter(|c| c.contains("\"action\": 6")).count(),
                3,
                "{calls:#?}"
            );
            assert_eq!(calls.last().map(String::as_str), Some("firewall reload"));
        }
    }
    // the session's output, by its `## NAME` headings
    let part = |name: &str| -> String {
        let mut text = String::new();
        let mut inside = false;
        for l in out.lines() {
            if let Some(h) = l.strip_prefix("## ") {
                inside = h == name;
            } else if inside {
                text.push_str(l);
                text.push('\n');
            }
        }
        text
    };
    let (net, fw, wg) = (part("network"), part("firewall"), part("wg"));
    assert_eq!(part("changes").trim(), "", "changes left uncommitted");

    // the interface, as netifd reads it: proto wireguard, the key, port, address, MTU
    let wg0 = section(&net, "network.wg0");
    assert_eq!(
        r.redact(&wg0.join("\n")),
        "network.wg0=interface\nnetwork.wg0.proto='wireguard'\nnetwork.wg0.private_key='(private key)'\n\
         network.wg0.listen_port='51820'\nnetwork.wg0.addresses='10.100.0.1/16'\nnetwork.wg0.mtu='1420'"
    );
    // the stock sections are kept, the new ones come after them
    let net_lines: Vec<&str> = net.lines().collect();
    let stock_lines: Vec<&str> = stock_net.lines().collect();
    assert_eq!(&net_lines[..stock_lines.len()], &stock_lines[..]);
    let fw_lines: Vec<&str> = fw.lines().collect();
    let stock_fw_lines: Vec<&str> = stock_fw.lines().collect();
    assert_eq!(&fw_lines[..stock_fw_lines.len()], &stock_fw_lines[..]);

    // one peer section per member and per other site, of netifd's type `wireguard_wg0`, each
    // with the key of the node that is there (derived here from the node's own rendered
    // wg0.conf with `wg pubkey`)
    let pubkey = |node: &str| -> String {
        let conf = rendered(&inv, node, "/etc/wireguard/wg0.conf");
        let private = conf
            .lines()
            .find_map(|l| l.strip_prefix("PrivateKey = "))
            .unwrap()
            .to_string();
        let mut c = Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{private}\n").as_bytes())
            .unwrap();
        let o = c.wait_with_output().unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let peers: Vec<&str> = net
        .lines()
        .filter_map(|l| l.strip_suffix("=wireguard_wg0"))
        .collect();
    assert_eq!(
        peers,
        [
            "network.wgprov_peer_1",
            "network.wgprov_peer_2",
            "network.wgprov_peer_3"
        ],
        "{net}"
    );
    for (n, node, ips, endpoint) in [
        (1, "node1", "10.100.0.2/32", ("192.168.1.10", "51820", None)),
        (2, "node2", "10.100.0.3/32", ("192.168.1.11", "51820", None)),
        (
            3,
            "cabin1",
            "10.100.1.0/24",
            ("198.51.100.7", "51821", Some("25")),
        ),
    ] {
        let p = format!("network.wgprov_peer_{n}");
        let mut want = vec![
            format!("{p}=wireguard_wg0"),
            format!("{p}.description='{node}'"),
            format!("{p}.public_key='{}'", pubkey(node)),
            format!("{p}.allowed_ips='{ips}'"),
            format!("{p}.endpoint_host='{}'", endpoint.0),
            format!("{p}.endpoint_port='{}'", endpoint.1),
        ];
        if let Some(k) = endpoint.2 {
            want.push(format!("{p}.persistent_keepalive='{k}'"));
        }
        want.push(format!("{p}.route_allowed_ips='0'"));
        assert_eq!(section(&net, &p), want, "{node}");
    }
    // the firewall: WireGuard's port in from wan, and a zone holding wg0
    assert_eq!(
        section(&fw, "firewall.wgprov_wg_in"),
        [
            "firewall.wgprov_wg_in=rule",
            "firewall.wgprov_wg_in.name='wgprov-wireguard-in'",
            "firewall.wgprov_wg_in.src='wan'",
            "firewall.wgprov_wg_in.proto='udp'",
            "firewall.wgprov_wg_in.dest_port='51820'",
            "firewall.wgprov_wg_in.target='ACCEPT'",
        ]
    );
    assert_eq!(
        section(&fw, "firewall.wgprov_wg"),
        [
            "firewall.wgprov_wg=zone",
            "firewall.wgprov_wg.name='wgprov'",
            "firewall.wgprov_wg.network='wg0'",
            "firewall.wgprov_wg.input='ACCEPT'",
            "firewall.wgprov_wg.output='ACCEPT'",
            "firewall.wgprov_wg.forward='ACCEPT'",
        ]
    );

    // the running interface, brought up from what uci holds: the router's key (the members
    // peer with that key), the port, the three peers and their AllowedIPs, the address, the MTU
    let mut wg = wg.lines();
    let public = wg.next().unwrap();
    let member = rendered(&inv, "node1", "/etc/wireguard/wg0.conf");
    assert!(
        member.contains(&format!("PublicKey = {public}\n")),
        "node1 does not peer with the key wg0 runs with"
    );
    assert_eq!(wg.next(), Some("51820"));
    let mut running: Vec<(String, String)> = part("allowed")
        .lines()
        .map(|l| {
            let (k, ips) = l.split_once('\t').unwrap();
            (k.to_string(), ips.to_string())
        })
        .collect();
    running.sort();
    let mut want = vec![
        (pubkey("node1"), "10.100.0.2/32".to_string()),
        (pubkey("node2"), "10.100.0.3/32".to_string()),
        (pubkey("cabin1"), "10.100.1.0/24".to_string()),
    ];
    want.sort();
    assert_eq!(running, want);
    let addr = part("addr");
    assert!(addr.contains("inet 10.100.0.1/16 "), "{addr}");
    assert!(addr.contains(" mtu 1420 "), "{addr}");

    // a second run changes nothing in /etc/config, and the interface comes up the same
    let (network, firewall) = (r.config("network"), r.config("firewall"));
    let out =
        r.sh("$SH /etc/wgprov/router-hub.sh && $SH /etc/wgprov/router-hub.sh check && uci changes");
    assert_eq!(out, "");
    assert!(r.config("network") == network, "network changed on a rerun");
    assert_eq!(r.config("firewall"), firewall);
    // the script made the interface section (there was none): it says so, for the teardown
    assert!(
        r.dir
            .path()
            .join("etc.upper/wgprov/router-hub.created")
            .exists()
    );

    // a peer deleted by hand is drift: the check fails until the script runs again
    r.take_calls();
    let (code, _, _) = r.run(
        "uci delete network.wgprov_peer_2 && uci commit network && ifup wg0 && $SH /etc/wgprov/router-hub.sh check",
    );
    assert_eq!(code, 1);
    r.sh("$SH /etc/wgprov/router-hub.sh && $SH /etc/wgprov/router-hub.sh check");
    assert!(
        r.config("network") == network,
        "the rerun did not restore network"
    );
}

/// The lab's OpenWrt hub: home's router (an sshd in its own namespaces, as for every managed
/// router of the lab) is made an OpenWrt as far as the lab goes, then wgprov applies over SSH.
pub(super) const HUB_LAB: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.1.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: router
    router: { kind: openwrt, address: 192.168.1.1, wan_interface: wan }
    nodes:
      node1: { address: 192.168.1.10 }
      node2: { address: 192.168.1.11 }
  office:
    lan_cidrs: [192.168.10.0/24]
    router: other
    nodes:
      office1: { address: 192.168.10.5 }
";

/// Makes `router` of the lab an OpenWrt as far as the lab goes: the stock `/etc/config`, the
/// stand-ins in `/etc/init.d`, `r`'s layers (the real `uci`, `ifup`, with `WGPROV_OPENWRT_ROOT`
/// OpenWrt's netifd files) mounted over `/usr/sbin`, `/usr/lib` and `/usr/share`, and BusyBox as
/// `/bin/sh` (OpenWrt's shell), all inside the router's own mount namespace.
pub(super) fn make_openwrt(s: &super::apply::Scenario, router: &str, r: &Router) {
    let d = r.dir.path().display();
    s.lab.sh(
        router,
        &format!(
            "set -e\n\
             mkdir -p /etc/config /etc/init.d\n\
             cp {d}/etc.upper/config/network {d}/etc.upper/config/firewall /etc/config/\n\
             cp {d}/etc.upper/init.d/network {d}/etc.upper/init.d/firewall /etc/init.d/\n\
             mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={d}/sbin.upper,workdir={d}/sbin.work /usr/sbin\n\
             mount -t overlay overlay -o lowerdir=/usr/lib,upperdir={d}/lib.upper,workdir={d}/lib.work /usr/lib\n\
             mount -t overlay overlay -o lowerdir=/usr/share,upperdir={d}/share.upper,workdir={d}/share.work /usr/share\n\
             mkdir -p {d}/bin.upper {d}/bin.work && ln -sf /usr/bin/busybox {d}/bin.upper/sh\n\
             mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={d}/bin.upper,workdir={d}/bin.work /usr/bin\n"
        ),
    );
}

/// `next_hop: router` with `kind: openwrt`, end to end: one apply over SSH sets the router's uci
/// (real `uci`) and brings its WireGuard interface up from it; the site's members reach the
/// other site, and each other, through it; a second apply changes nothing; a peer section
/// deleted by hand is drift, which apply repairs.
#[test]
fn openwrt_hub_router_set_by_apply_carries_its_site_to_the_other_site() {
    let Some(cache) = available() else {
        return;
    };
    if !super::common::lab_available() {
        return;
    }
    let handler = std::env::var_os("WGPROV_OPENWRT_ROOT")
        .is_some()
        .then(openwrt_root)
        .flatten();
    // declared before the lab, so that the lab (whose router mounts these layers) goes first
    let r = Router::new(&cache, handler.as_deref());
    let s = super::apply::Scenario::new("ow", HUB_LAB, HUB_LAB, &[]);
    make_openwrt(&s, "home-router", &r);
    assert_eq!(
        s.lab.sh("home-router", "uci -q get network.lan.ipaddr"),
        "192.168.1.1\n"
    );
    // its /bin/sh is BusyBox's, as on OpenWrt: wgprov's scripts and transaction run in it
    assert_eq!(
        s.lab.sh(
            "home-router",
            "readlink -f /bin/sh; /bin/sh --help 2>&1 | head -n1 | cut -c1-8"
        ),
        "/usr/bin/busybox\nBusyBox \n"
    );

    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        super::apply::changed_hosts(&v),
        ["home-router", "node1", "node2", "office1"],
        "{v:#}"
    );
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v:#}");
    // the router's script called what OpenWrt's would: network reload, ifup, firewall reload;
    // with OpenWrt's handler, ifup ran it and it made the link and updated netifd
    let calls = s.lab.sh("home-router", "cat /etc/openwrt-lab.log");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.first(), Some(&"network reload"), "{calls:#?}");
    assert_eq!(calls.get(1), Some(&"ifup wg0"), "{calls:#?}");
    assert_eq!(calls.last(), Some(&"firewall reload"), "{calls:#?}");
    if handler.is_some() {
        assert!(
            calls.contains(&"ip link add wg0 type wireguard: wireguard-go wg0")
                && calls
                    .iter()
                    .any(|c| c.contains("\"action\": 0") && c.contains("\"link-up\": true")),
            "{calls:#?}"
        );
    } else {
        assert_eq!(calls.len(), 3, "{calls:#?}");
    }
    let net = s.lab.sh("home-router", "uci show network");
    let peers: Vec<&str> = net
        .lines()
        .filter(|l| l.ends_with("=wireguard_wg0"))
        .collect();
    assert_eq!(peers.len(), 3, "{}", r.redact(&net));
    assert!(
        net.contains("network.wg0.addresses='10.100.0.1/16'"),
        "no address"
    );
    // the interface runs with what uci holds, and the members peer with its key
    let public = s.lab.sh("home-router", "wg show wg0 public-key");
    assert!(
        s.lab
            .sh("node1", "wg show wg0 peers")
            .contains(public.trim())
    );
    assert_eq!(
        s.lab.sh("home-router", "wg show wg0 peers").lines().count(),
        3
    );

    // every node pings every node of the other site over WireGuard, through the router
    let ips = super::apply::wg_ips(&s);
    for (a, sa, _) in &ips {
        for (b, sb, ip) in &ips {
            if sa != sb {
                assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip}) over wg0");
            }
        }
    }
    // and the two members of home reach each other through it
    let node2 = &ips.iter().find(|(n, _, _)| n == "node2").unwrap().2;
    assert!(
        s.ping("node1", node2),
        "node1 cannot reach node2 through the hub"
    );

    // nothing left to change
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);

    // a peer section deleted by hand (in LuCI, say) is drift; apply puts it back
    s.lab.sh(
        "home-router",
        "uci delete network.wgprov_peer_2 && uci commit network",
    );
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 3, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("home-router: drift"),
        "{}",
        check.stdout
    );
    let again = s.apply(&[]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(
        s.lab
            .sh("home-router", "uci show network")
            .lines()
            .filter(|l| l.ends_with("=wireguard_wg0"))
            .count(),
        3
    );
    let last = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(last.code, 0, "{}{}", last.stdout, last.stderr);
    s.assert_no_key_leaked();
    // nor the router's, which only its uci holds
    let key = s.lab.sh("home-router", "uci get network.wg0.private_key");
    let key = key.trim();
    assert_eq!(key.len(), 44);
    for out in [
        v.to_string(),
        check.stdout,
        check.stderr,
        again.stdout,
        again.stderr,
        last.stdout,
        last.stderr,
    ] {
        assert!(!out.contains(key), "the router's private key was printed");
    }
}
