//! An OpenWrt router: the port-forward as one named firewall redirect, `firewall.wgprov_wireguard`,
//! set through `uci`, committed and reloaded. A named section is replaced whole on every change
//! (`uci -q delete` then `uci set`), so wgprov owns exactly that section and nothing else of
//! `/etc/config/firewall`; uci keeps it across reboots (no boot script). A DNAT redirect makes
//! fw3/fw4 accept the forwarded traffic itself. The same `/etc/wgprov/router-pf.sh` carries the
//! commands, so the transaction (backups, put-back, dead-man) is the one of every host.
//!
//! For OpenWrt, `wan_interface` names the *firewall zone* the port arrives in (`wan` on a stock
//! OpenWrt); the destination zone is `lan`.

use std::net::Ipv4Addr;

use super::{Forward, PF_SCRIPT};
use crate::shell::sh_quote;

/// The uci section wgprov owns.
pub const SECTION: &str = "firewall.wgprov_wireguard";

/// The shell variable that holds the private key inside the OpenWrt hub's script.
pub(super) const KEY_VAR: &str = "private_key";

// ---- uci sections as data: the commands that set one and the tests that it is in place, for
// the port-forward redirect here and the hub's interface, peers and firewall (openwrt_hub) ----

/// One option's value in a section.
#[derive(Clone)]
pub(super) enum Val {
    /// A plain option.
    One(String),
    /// A list (`uci add_list`, read back space-separated by `uci get`).
    List(Vec<String>),
    /// The private key, from the script's variable.
    Key,
    /// A secret from this variable of the script (a peer's preshared key).
    Var(String),
    /// Not set: the check wants it empty.
    Unset,
}

/// One uci section wgprov owns, with every option it sets (or wants unset).
#[derive(Clone)]
pub(super) struct Section {
    pub(super) path: String,
    pub(super) kind: String,
    pub(super) options: Vec<(&'static str, Val)>,
}

pub(super) fn one(v: impl ToString) -> Val {
    Val::One(v.to_string())
}

/// The `uci set`/`uci add_list` lines of a section (its type first).
pub(super) fn set_lines(s: &Section) -> Vec<String> {
    let mut v = vec![format!("uci set {}={}", s.path, s.kind)];
    for (k, val) in &s.options {
        match val {
            Val::One(x) => v.push(format!("uci set {}.{k}={}", s.path, sh_quote(x))),
            Val::List(xs) => v.extend(
                xs.iter()
                    .map(|x| format!("uci add_list {}.{k}={}", s.path, sh_quote(x))),
            ),
            Val::Key => v.push(format!("uci set {}.{k}=\"${KEY_VAR}\"", s.path)),
            Val::Var(var) => v.push(format!("uci set {}.{k}=\"${var}\"", s.path)),
            Val::Unset => {}
        }
    }
    v
}

/// The tests that a section is in place: its type and every option as set (a list as `uci
/// get` prints it, space-separated; an unset option empty).
pub(super) fn check_lines(s: &Section) -> Vec<String> {
    let get = |k: &str| format!("[ \"$(uci -q get {}{k})\" =", s.path);
    let mut v = vec![format!("{} {} ]", get(""), sh_quote(&s.kind))];
    for (k, val) in &s.options {
        let want = match val {
            Val::One(x) => sh_quote(x),
            Val::List(xs) => sh_quote(&xs.join(" ")),
            Val::Key => format!("\"${KEY_VAR}\""),
            Val::Var(var) => format!("\"${var}\""),
            Val::Unset => "''".into(),
        };
        v.push(format!("{} {want} ]", get(&format!(".{k}"))));
    }
    v
}

/// The redirect wgprov owns.
fn redirect(site: &str, zone: &str, f: &Forward, ip: Ipv4Addr) -> Section {
    Section {
        path: SECTION.into(),
        kind: "redirect".into(),
        options: vec![
            ("name", one(format!("wgprov-wireguard-{site}"))),
            ("target", one("DNAT")),
            ("src", one(zone)),
            ("proto", one("udp")),
            ("src_dport", one(f.public_port)),
            ("dest", one("lan")),
            ("dest_ip", one(ip)),
            ("dest_port", one(f.port)),
        ],
    }
}

/// The `uci set` lines of the redirect, in order: what the golden test fixes.
pub fn uci_commands(site: &str, zone: &str, f: &Forward, ip: Ipv4Addr) -> Vec<String> {
    let mut v = vec![format!("uci -q delete {SECTION}")];
    v.extend(set_lines(&redirect(site, zone, f, ip)));
    v.push("uci commit firewall".into());
    v.push("/etc/init.d/firewall reload".into());
    v
}

/// The port-forward script of an OpenWrt router (`check` as for Linux).
pub fn pf_script(site: &str, zone: &str, f: Option<(&Forward, Ipv4Addr)>) -> String {
    let mut s = String::from("#!/bin/sh\n");
    match f {
        Some((f, ip)) => s.push_str(&format!(
            "{} udp {} -> {ip}:{}\n",
            super::linux::HEADER,
            f.public_port,
            f.port
        )),
        None => s.push_str(&format!("{} none\n", super::linux::HEADER)),
    }
    s.push_str(&format!(
        "# The WireGuard port-forward of site {site}, written by wgprov: do not edit, apply rewrites it.\n\
         # `sh {PF_SCRIPT}` sets the uci redirect {SECTION}; `sh {PF_SCRIPT} check` exits 0 when it is in place.\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nset -u\n"
    ));
    match f {
        Some((f, ip)) => {
            // the name is a label for the operator, not checked
            let mut r = redirect(site, zone, f, ip);
            r.options.retain(|(k, _)| *k != "name");
            let checks = check_lines(&r);
            s.push_str(&format!(
                "check() {{\n  {}\n}}\nif [ \"${{1:-}}\" = check ]; then check; exit; fi\n",
                checks.join(" &&\n  ")
            ));
            for c in uci_commands(site, zone, f, ip) {
                // `uci -q delete` of a section that is not there fails: that is fine
                if c.starts_with("uci -q delete") {
                    s.push_str(&format!("{c}\n"));
                } else {
                    s.push_str(&format!("{c} || exit 1\n"));
                }
            }
        }
        None => {
            s.push_str(&format!(
                "check() {{ ! uci -q get {SECTION} >/dev/null; }}\nif [ \"${{1:-}}\" = check ]; then check; exit; fi\n\
                 if uci -q get {SECTION} >/dev/null; then uci -q delete {SECTION} && uci commit firewall && /etc/init.d/firewall reload || exit 1; fi\n"
            ));
        }
    }
    s.push_str("check || { echo 'the port-forward redirect is not in place after setting it' >&2; exit 1; }\n");
    s
}

/// Shell text removing wgprov's redirect (the script gone: a put-back of the first apply).
pub fn teardown() -> String {
    format!(
        "if command -v uci >/dev/null 2>&1 && uci -q get {SECTION} >/dev/null; then uci -q delete {SECTION}; uci commit firewall; /etc/init.d/firewall reload >/dev/null 2>&1; fi\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd() -> (Forward, Ipv4Addr) {
        (
            Forward {
                site: "cabin".into(),
                public_port: 51821,
                next_hop: "cabin1".into(),
                to: "192.168.0.50".into(),
                port: 51820,
            },
            Ipv4Addr::new(192, 168, 0, 50),
        )
    }

    /// The exact commands, as an operator would type them on the router. Not run on a real
    /// OpenWrt (see README): fixed here so that a change to them is a visible decision.
    #[test]
    fn golden_uci_commands_of_the_port_forward() {
        let (f, ip) = fwd();
        assert_eq!(
            uci_commands("cabin", "wan", &f, ip).join("\n"),
            "uci -q delete firewall.wgprov_wireguard
uci set firewall.wgprov_wireguard=redirect
uci set firewall.wgprov_wireguard.name='wgprov-wireguard-cabin'
uci set firewall.wgprov_wireguard.target='DNAT'
uci set firewall.wgprov_wireguard.src='wan'
uci set firewall.wgprov_wireguard.proto='udp'
uci set firewall.wgprov_wireguard.src_dport='51821'
uci set firewall.wgprov_wireguard.dest='lan'
uci set firewall.wgprov_wireguard.dest_ip='192.168.0.50'
uci set firewall.wgprov_wireguard.dest_port='51820'
uci commit firewall
/etc/init.d/firewall reload"
        );
    }

    #[test]
    fn the_script_checks_every_field_and_is_valid_shell() {
        let (f, ip) = fwd();
        let s = pf_script("cabin", "wan", Some((&f, ip)));
        assert!(s.starts_with("#!/bin/sh\n# wgprov-forward: udp 51821 -> 192.168.0.50:51820\n"));
        assert!(s.contains("[ \"$(uci -q get firewall.wgprov_wireguard.dest_port)\" = '51820' ]"));
        assert!(s.contains("uci set firewall.wgprov_wireguard.dest_ip='192.168.0.50' || exit 1\n"));
        assert!(s.contains("uci -q delete firewall.wgprov_wireguard\n"));
        assert_eq!(super::super::linux::public_port_of(&s), Some(51821));
        for text in [s, pf_script("cabin", "wan", None), teardown()] {
            if let Err(e) = crate::shell::sh_syntax(&text) {
                panic!("{e}\n{text}");
            }
        }
    }
}
