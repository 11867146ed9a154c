//! A Linux router: the port-forward as iptables rules in wgprov's own `WGPROV-PF` chains (nat
//! PREROUTING and filter FORWARD jump to them), or as an nftables table `ip wgprov` on a router
//! that has nft but no iptables. Apply replaces exactly its own rules and nothing else of the
//! router's firewall. The rules are installed by `/etc/wgprov/router-pf.sh` — atomically, with
//! `iptables-restore --noflush` (`nft -f`) — run by the handler and, where systemd runs, at boot
//! by `wgprov-router-pf.service`. `router-pf.sh check` exits 0 when the rules are in place
//! (the facts' drift check).

use std::net::Ipv4Addr;

use super::{CHAIN, Forward, PF_SCRIPT, PF_UNIT, PF_UNIT_NAME};
use crate::desired::{DesiredFile, FileState};
use crate::facts::Facts;
use crate::inventory::ManagedRouter;
use crate::shell::{Handler, RemotePath, sh_quote};

/// Which firewall the router's rules go into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// iptables (legacy or nft-backed): what most routers and the lab have.
    Iptables,
    /// nftables, on a router with `nft` and no `iptables`.
    Nftables,
}

impl Backend {
    /// The backend a router's facts call for.
    pub fn of(facts: &Facts) -> Backend {
        if !facts.tools.contains("iptables") && facts.tools.contains("nft") {
            Backend::Nftables
        } else {
            Backend::Iptables
        }
    }
}

/// The first line of the script that records the forward, read back to know which conntrack
/// entries the next change must flush.
pub(crate) const HEADER: &str = "# wgprov-forward:";

/// The public port recorded in a script wgprov wrote (the first, for the next-hop).
pub fn public_port_of(script: &str) -> Option<u16> {
    public_ports_of(script).into_iter().next()
}

/// Every public port recorded in a script wgprov wrote (the next-hop's, then a standby's).
pub fn public_ports_of(script: &str) -> Vec<u16> {
    script
        .lines()
        .filter_map(|l| l.strip_prefix(HEADER))
        .filter_map(|rest| rest.split_whitespace().nth(1))
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The first lines of a port-forward script (Linux's or OpenWrt's): the shebang, then one
/// header line per forward (what [`public_ports_of`] reads back), or one saying there is none.
pub(super) fn script_head(fs: &[(Forward, Ipv4Addr)]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for (f, ip) in fs {
        s.push_str(&format!(
            "{HEADER} udp {} -> {ip}:{}\n",
            f.public_port, f.port
        ));
    }
    if fs.is_empty() {
        s.push_str(&format!("{HEADER} none\n"));
    }
    s
}

/// The port-forward script: the next-hop's forward, and a standby's second one.
pub fn pf_script(site: &str, wan: &str, fs: &[(Forward, Ipv4Addr)], backend: Backend) -> String {
    let mut s = script_head(fs);
    s.push_str(&format!(
        "# The WireGuard port-forward of site {site}, written by wgprov: do not edit, apply rewrites it.\n\
         # `sh {PF_SCRIPT}` installs it (only wgprov's own rules are touched); `sh {PF_SCRIPT} check`\n\
         # exits 0 when it is in place.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nset -u\n"
    ));
    match backend {
        Backend::Iptables => s.push_str(&iptables_rules(wan, fs)),
        Backend::Nftables => s.push_str(&nft_rules(wan, fs)),
    }
    s
}

/// The script's body with iptables: `check`, then wgprov's chains replaced whole (one
/// `iptables-restore --noflush` per table) and jumped to from PREROUTING and FORWARD.
fn iptables_rules(wan: &str, fs: &[(Forward, Ipv4Addr)]) -> String {
    let mut s = String::new();
    let (dnats, accepts): (Vec<String>, Vec<String>) = fs
        .iter()
        .map(|(f, ip)| {
            (
                format!(
                    "-i {wan} -p udp --dport {} -j DNAT --to-destination {ip}:{}",
                    f.public_port, f.port
                ),
                format!("-i {wan} -p udp -d {ip} --dport {} -j ACCEPT", f.port),
            )
        })
        .unzip();
    let n = fs.len();
    s.push_str(&format!(
        "rules() {{ iptables -w \"$@\" -S {CHAIN} 2>/dev/null | grep -c '^-A'; }}\n\
         check() {{\n  iptables -w -t nat -C PREROUTING -j {CHAIN} 2>/dev/null &&\n  \
         iptables -w -C FORWARD -j {CHAIN} 2>/dev/null &&\n  \
         [ \"$(rules -t nat)\" = {n} ] && [ \"$(rules)\" = {n} ]"
    ));
    for (dnat, accept) in dnats.iter().zip(&accepts) {
        s.push_str(&format!(
            " &&\n  iptables -w -t nat -C {CHAIN} {dnat} 2>/dev/null &&\n  iptables -w -C {CHAIN} {accept} 2>/dev/null"
        ));
    }
    s.push_str("\n}\nif [ \"${1:-}\" = check ]; then check; exit; fi\n");
    // one restore per table: the chain is replaced whole, never seen half-written
    s.push_str(&format!(
        "iptables-restore -w --noflush <<'@@WGPROV-RULES@@' || exit 1\n*nat\n:{CHAIN} - [0:0]\n"
    ));
    for dnat in &dnats {
        s.push_str(&format!("-A {CHAIN} {dnat}\n"));
    }
    s.push_str(&format!("COMMIT\n*filter\n:{CHAIN} - [0:0]\n"));
    for accept in &accepts {
        s.push_str(&format!("-A {CHAIN} {accept}\n"));
    }
    s.push_str("COMMIT\n@@WGPROV-RULES@@\n");
    s.push_str(&format!(
        "iptables -w -t nat -C PREROUTING -j {CHAIN} 2>/dev/null || iptables -w -t nat -I PREROUTING 1 -j {CHAIN} || exit 1\n\
         iptables -w -C FORWARD -j {CHAIN} 2>/dev/null || iptables -w -I FORWARD 1 -j {CHAIN} || exit 1\n\
         check || {{ echo 'the port-forward rules are not in place after installing them' >&2; exit 1; }}\n"
    ));
    s
}

/// The script's body with nftables: `check`, then the table `ip wgprov` replaced whole by one
/// `nft -f`.
fn nft_rules(wan: &str, fs: &[(Forward, Ipv4Addr)]) -> String {
    let mut s = String::new();
    let (dnats, accepts): (Vec<String>, Vec<String>) = fs
        .iter()
        .map(|(f, ip)| {
            (
                format!(
                    "iifname \"{wan}\" udp dport {} dnat to {ip}:{}",
                    f.public_port, f.port
                ),
                format!(
                    "iifname \"{wan}\" ip daddr {ip} udp dport {} accept",
                    f.port
                ),
            )
        })
        .unzip();
    let grep = |v: &[String], empty: &str| -> String {
        let wants: Vec<String> = if v.is_empty() {
            vec![empty.to_string()]
        } else {
            v.to_vec()
        };
        wants
            .iter()
            .map(|w| format!("printf '%s\\n' \"$t\" | grep -qF {}", sh_quote(w)))
            .collect::<Vec<_>>()
            .join(" && ")
    };
    s.push_str(&format!(
        "check() {{\n  t=$(nft list table ip wgprov 2>/dev/null) || return 1\n  \
         {d} && {a}\n}}\n\
         if [ \"${{1:-}}\" = check ]; then check; exit; fi\n\
         nft -f - <<'@@WGPROV-RULES@@' || exit 1\ntable ip wgprov\ndelete table ip wgprov\n\
         table ip wgprov {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n",
        d = grep(&dnats, "prerouting"),
        a = grep(&accepts, "forward"),
    ));
    for dnat in &dnats {
        s.push_str(&format!("    {dnat}\n"));
    }
    s.push_str(
        "  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    for accept in &accepts {
        s.push_str(&format!("    {accept}\n"));
    }
    s.push_str("  }\n}\n@@WGPROV-RULES@@\ncheck || { echo 'the port-forward rules are not in place after installing them' >&2; exit 1; }\n");
    s
}

/// The unit that installs the rules at boot (after the distribution's own firewall restore,
/// which would otherwise flush them).
pub fn pf_unit(site: &str) -> String {
    format!(
        "# Written by wgprov: the WireGuard port-forward of site {site}.\n[Unit]\n\
         Description=wgprov: WireGuard port-forward of site {site}\n\
         After=network-pre.target netfilter-persistent.service iptables.service nftables.service firewalld.service\n\
         \n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh {PF_SCRIPT}\n\
         \n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// The router's desired files: the script, and where systemd runs the unit that runs it at boot.
pub fn desired(
    site: &str,
    router: &ManagedRouter,
    fs: &[(Forward, Ipv4Addr)],
    backend: Backend,
    systemd: bool,
) -> Vec<DesiredFile> {
    let path = |p: &str| RemotePath::new(p).expect("a fixed path is valid");
    let mut v = vec![DesiredFile {
        role: "router_port_forward".into(),
        path: path(PF_SCRIPT),
        state: FileState::Present {
            content: pf_script(site, &router.wan_interface, fs, backend),
            mode: 0o755,
        },
        notify: vec![Handler::PortForward],
    }];
    if systemd {
        v.push(DesiredFile {
            role: "router_port_forward".into(),
            path: path(PF_UNIT),
            state: FileState::Present {
                content: pf_unit(site),
                mode: 0o644,
            },
            notify: vec![Handler::DaemonReload, Handler::PortForward],
        });
    }
    v
}

/// The facts section `router_pf`: `ok` when the script's check passes, `drift` when it does
/// not, `none` without a script; and whether its unit is enabled.
pub fn facts_section() -> String {
    format!(
        "{}sec router_pf_unit\nif [ -e {w} ]; then echo enabled; else echo disabled; fi\n",
        super::check_section("router_pf", PF_SCRIPT),
        w = sh_quote(&format!(
            "/etc/systemd/system/multi-user.target.wants/{PF_UNIT_NAME}"
        )),
    )
}

/// How the router's running rules differ from its script, from the facts: `None` when they are
/// in place (or there is no script yet: the change installs it).
pub fn drift(facts: &Facts) -> Option<String> {
    let mut why = Vec::new();
    if super::says_drift(facts, "router_pf") {
        why.push(format!(
            "the port-forward rules are not as {PF_SCRIPT} installs them (removed or changed by hand, or lost in a reboot)"
        ));
    }
    if facts.systemd
        && facts
            .files
            .get(PF_UNIT)
            .is_some_and(|f| f.content().is_some())
        && facts.extra.get("router_pf_unit").map(|s| s.trim()) == Some("disabled")
    {
        why.push(format!(
            "{PF_UNIT_NAME} is not enabled: the rules would not come back after a reboot"
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The handler as shell text: install the rules (or remove them when the script is gone),
/// enable or disable the boot unit, then flush the conntrack entries of the public ports, so
/// that no entry made under the old rule keeps steering the port to the old place.
pub fn handler(ports: &[u16], systemd: bool, fail_fn: &str) -> String {
    let f = fail_fn;
    let s = sh_quote(PF_SCRIPT);
    let unit = sh_quote(PF_UNIT_NAME);
    let mut out = format!(
        "if [ -f {s} ]; then {}\n",
        super::run_script(PF_SCRIPT, "port_forward", f)
    );
    if systemd {
        out.push_str(&format!(
            "  if [ -f {u} ]; then systemctl enable -q {unit} 2>/dev/null || {f} 'handler port_forward: systemctl enable {PF_UNIT_NAME}'; fi\n",
            u = sh_quote(PF_UNIT)
        ));
    }
    out.push_str(&format!(
        "else\n  if command -v iptables >/dev/null 2>&1; then for t in nat:PREROUTING filter:FORWARD; do \
         iptables -w -t \"${{t%%:*}}\" -D \"${{t#*:}}\" -j {CHAIN} 2>/dev/null; iptables -w -t \"${{t%%:*}}\" -F {CHAIN} 2>/dev/null; \
         iptables -w -t \"${{t%%:*}}\" -X {CHAIN} 2>/dev/null; done; fi\n  \
         if command -v nft >/dev/null 2>&1; then nft delete table ip wgprov 2>/dev/null; fi\n  {}",
        super::openwrt::teardown()
    ));
    if systemd {
        out.push_str(&format!("  systemctl disable -q {unit} 2>/dev/null\n"));
    }
    out.push_str("  true\nfi\n");
    // the ports given (the forward before and after the change) and the one of the script now
    // in place (what a put-back or a rollback restored)
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    // `conntrack -D` exits 1 when it deleted nothing ("0 flow entries"): not a failure
    out.push_str(&format!(
        "ports=\"{} $(sed -n 's/^{HEADER} udp \\([0-9][0-9]*\\) .*/\\1/p' {s} 2>/dev/null)\"\n\
         if [ -n \"${{ports# }}\" ]; then if command -v conntrack >/dev/null 2>&1; then for p in $ports; do conntrack -D -p udp --dport \"$p\" >/dev/null 2>&1 || true; done; \
         else echo 'conntrack is not installed: entries of the old port-forward may linger until they time out (install conntrack)' >&2; fi; fi\n",
        list.join(" ")
    ));
    out
}

/// A script that only flushes the conntrack entries of `ports` (run again once the nodes
/// changed after the router).
pub fn flush_script(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{}if command -v conntrack >/dev/null 2>&1; then for p in {}; do conntrack -D -p udp --dport \"$p\" >/dev/null 2>&1 || true; done; fi\n",
        crate::shell::PATH_PRELUDE,
        list.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ManagedKind, SshSettings};

    fn fwd() -> (Forward, Ipv4Addr) {
        (
            Forward {
                site: "home".into(),
                public_port: 51820,
                next_hop: "node1".into(),
                to: "192.168.0.10".into(),
                port: 51821,
            },
            Ipv4Addr::new(192, 168, 0, 10),
        )
    }

    fn sh_n(text: &str) {
        if let Err(e) = crate::shell::sh_syntax(text) {
            panic!("{e}\n{text}");
        }
    }

    #[test]
    fn the_iptables_rules_are_exactly_the_dnat_and_the_forward_accept_in_wgprovs_chains() {
        let (f, ip) = fwd();
        let s = pf_script("home", "eth0", &[(f.clone(), ip)], Backend::Iptables);
        assert!(s.starts_with("#!/bin/sh\n# wgprov-forward: udp 51820 -> 192.168.0.10:51821\n"));
        assert!(s.contains(
            "*nat\n:WGPROV-PF - [0:0]\n-A WGPROV-PF -i eth0 -p udp --dport 51820 -j DNAT --to-destination 192.168.0.10:51821\nCOMMIT\n"
        ), "{s}");
        assert!(s.contains(
            "*filter\n:WGPROV-PF - [0:0]\n-A WGPROV-PF -i eth0 -p udp -d 192.168.0.10 --dport 51821 -j ACCEPT\nCOMMIT\n"
        ), "{s}");
        assert!(s.contains("iptables-restore -w --noflush"));
        assert!(s.contains("iptables -w -t nat -C PREROUTING -j WGPROV-PF 2>/dev/null || iptables -w -t nat -I PREROUTING 1 -j WGPROV-PF"));
        assert!(s.contains("iptables -w -C FORWARD -j WGPROV-PF 2>/dev/null || iptables -w -I FORWARD 1 -j WGPROV-PF"));
        // the check counts the rules: a rule added by hand to wgprov's chain is drift
        assert!(s.contains("[ \"$(rules -t nat)\" = 1 ] && [ \"$(rules)\" = 1 ]"));
        assert!(
            !s.contains("MASQUERADE") && !s.contains("-F PREROUTING"),
            "only its own chain"
        );
        assert_eq!(public_port_of(&s), Some(51820));
        sh_n(&s);
        // a site without an endpoint: empty chains, still owned
        let none = pf_script("home", "eth0", &[], Backend::Iptables);
        assert!(!none.contains("DNAT") && none.contains(":WGPROV-PF - [0:0]"));
        assert_eq!(public_port_of(&none), None);
        sh_n(&none);
    }

    #[test]
    fn an_nft_only_router_gets_its_own_table() {
        let (f, ip) = fwd();
        let facts = Facts {
            tools: ["nft".to_string()].into(),
            ..Default::default()
        };
        assert_eq!(Backend::of(&facts), Backend::Nftables);
        assert_eq!(Backend::of(&Facts::default()), Backend::Iptables);
        let s = pf_script("home", "eth0", &[(f.clone(), ip)], Backend::Nftables);
        assert!(s.contains("table ip wgprov\ndelete table ip wgprov\ntable ip wgprov {\n"));
        assert!(s.contains("    iifname \"eth0\" udp dport 51820 dnat to 192.168.0.10:51821\n"));
        assert!(s.contains("    iifname \"eth0\" ip daddr 192.168.0.10 udp dport 51821 accept\n"));
        sh_n(&s);
    }

    #[test]
    fn the_handler_installs_or_removes_then_flushes_conntrack_tolerating_nothing_to_flush() {
        let h = handler(&[51820, 4500], true, "fail");
        assert!(h.starts_with("if [ -f '/etc/wgprov/router-pf.sh' ]; then out=$(sh '/etc/wgprov/router-pf.sh' 2>&1) || "));
        assert!(h.contains("systemctl enable -q 'wgprov-router-pf.service'"));
        assert!(h.contains("iptables -w -t \"${t%%:*}\" -X WGPROV-PF"));
        assert!(h.contains("ports=\"51820 4500 $(sed -n 's/^# wgprov-forward: udp \\([0-9][0-9]*\\) .*/\\1/p' '/etc/wgprov/router-pf.sh' 2>/dev/null)\""), "{h}");
        assert!(h.contains(
            "for p in $ports; do conntrack -D -p udp --dport \"$p\" >/dev/null 2>&1 || true; done"
        ));
        sh_n(&format!("fail() {{ exit 1; }}\n{h}"));
        assert!(!handler(&[1], false, "fail").contains("systemctl"));
    }

    #[test]
    fn the_unit_is_written_only_where_systemd_runs() {
        let r = ManagedRouter {
            name: "home-router".into(),
            kind: ManagedKind::Linux,
            address: "192.168.0.1".into(),
            wan_interface: crate::shell::InterfaceName::new("eth0").unwrap(),
            ssh: SshSettings {
                host: "192.168.0.1".into(),
                user: "root".into(),
                port: 22,
                identity_file: None,
                known_hosts: "k".into(),
                become_root: false,
                proxy_jump: None,
            },
        };
        let f = fwd();
        let with = desired(
            "home",
            &r,
            std::slice::from_ref(&f),
            Backend::Iptables,
            true,
        );
        assert_eq!(with.len(), 2);
        assert_eq!(with[1].path.to_string(), PF_UNIT);
        assert!(
            with[1]
                .state
                .content()
                .unwrap()
                .contains("ExecStart=/bin/sh /etc/wgprov/router-pf.sh")
        );
        assert_eq!(
            desired(
                "home",
                &r,
                std::slice::from_ref(&f),
                Backend::Iptables,
                false
            )
            .len(),
            1
        );
    }

    #[test]
    fn drift_is_rules_not_in_place_or_a_unit_not_enabled() {
        let mut f = Facts::default();
        f.extra.insert("router_pf".into(), "ok".into());
        assert_eq!(drift(&f), None);
        f.extra.insert("router_pf".into(), "drift".into());
        assert!(
            drift(&f)
                .unwrap()
                .contains("not as /etc/wgprov/router-pf.sh installs them")
        );
        f.extra.insert("router_pf".into(), "none".into());
        assert_eq!(drift(&f), None, "no script yet: the change installs it");
    }
}
