//! An OpenWrt router: the port-forwards as named firewall redirects set through `uci`, committed
//! and reloaded: the next-hop's `firewall.wgprov_wireguard` (the section older versions made, so
//! that their routers are updated in place), a standby's `firewall.wgprov_wireguard_standby`. A
//! named section is replaced whole on every change (`uci -q delete` then `uci set`), and a
//! section of wgprov's that is no longer wanted is deleted, so wgprov owns exactly those sections
//! and nothing else of `/etc/config/firewall`; one `uci commit firewall` and one reload carry the
//! whole change. uci keeps them across reboots (no boot script). A DNAT redirect makes fw3/fw4
//! accept the forwarded traffic itself. The same `/etc/wgprov/router-pf.sh` carries the
//! commands, so the transaction (backups, put-back, dead-man) is the one of every host.
//!
//! For OpenWrt, `wan_interface` names the *firewall zone* the port arrives in (`wan` on a stock
//! OpenWrt); the destination zone is `lan`.

use std::net::Ipv4Addr;

use super::{Forward, PF_SCRIPT};
use crate::shell::sh_quote;

/// The uci section wgprov owns for the next-hop's port-forward.
pub const SECTION: &str = "firewall.wgprov_wireguard";
/// The one for a standby's port-forward.
pub const STANDBY_SECTION: &str = "firewall.wgprov_wireguard_standby";
/// Every redirect section wgprov owns, in the order of the forwards.
const OWNED: [&str; 2] = [SECTION, STANDBY_SECTION];

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

/// The redirect of the `i`-th forward: the next-hop's is [`SECTION`] (the one section of older
/// wgprov versions, so that their routers are updated in place), a standby's [`STANDBY_SECTION`].
fn redirect(site: &str, zone: &str, i: usize, f: &Forward, ip: Ipv4Addr) -> Section {
    let (path, name) = match i {
        0 => (SECTION, format!("wgprov-wireguard-{site}")),
        _ => (STANDBY_SECTION, format!("wgprov-wireguard-{site}-standby")),
    };
    Section {
        path: path.into(),
        kind: "redirect".into(),
        options: vec![
            ("name", one(name)),
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

/// The redirects of the forwards `fs` (the next-hop's, then a standby's).
fn redirects(site: &str, zone: &str, fs: &[(Forward, Ipv4Addr)]) -> Vec<Section> {
    debug_assert!(fs.len() <= OWNED.len(), "one redirect section per forward");
    fs.iter()
        .enumerate()
        .map(|(i, (f, ip))| redirect(site, zone, i, f, *ip))
        .collect()
}

/// The sections wgprov owns that `fs` does not want (a standby's once the standby is gone).
fn unwanted(fs: &[(Forward, Ipv4Addr)]) -> &'static [&'static str] {
    &OWNED[fs.len().min(OWNED.len())..]
}

/// What commits and applies the change: once for all the redirects.
const COMMIT: [&str; 2] = ["uci commit firewall", "/etc/init.d/firewall reload"];

/// Each redirect replaced whole (`uci -q delete`, then its `uci set` lines).
fn set_commands(site: &str, zone: &str, fs: &[(Forward, Ipv4Addr)]) -> Vec<String> {
    redirects(site, zone, fs)
        .iter()
        .flat_map(|r| {
            let mut v = vec![format!("uci -q delete {}", r.path)];
            v.extend(set_lines(r));
            v
        })
        .collect()
}

/// The `uci` commands that set the redirects of `fs`, in order, then one commit and one reload:
/// what the golden tests fix.
pub fn uci_commands(site: &str, zone: &str, fs: &[(Forward, Ipv4Addr)]) -> Vec<String> {
    let mut v = set_commands(site, zone, fs);
    v.extend(COMMIT.map(String::from));
    v
}

/// The port-forward script of an OpenWrt router (`check` as for Linux): one redirect per forward
/// of `fs` (the next-hop's, then a standby's), wgprov's other redirects removed.
pub fn pf_script(site: &str, zone: &str, fs: &[(Forward, Ipv4Addr)]) -> String {
    let mut s = super::linux::script_head(fs);
    s.push_str(&format!(
        "# The WireGuard port-forward of site {site}, written by wgprov: do not edit, apply rewrites it.\n\
         # `sh {PF_SCRIPT}` sets one uci redirect per forward above ({SECTION}, a standby's {STANDBY_SECTION})\n\
         # and removes wgprov's others; `sh {PF_SCRIPT} check` exits 0 when that is in place.\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nset -u\n"
    ));
    let mut checks = Vec::new();
    for mut r in redirects(site, zone, fs) {
        // the name is a label for the operator, not checked
        r.options.retain(|(k, _)| *k != "name");
        checks.extend(check_lines(&r));
    }
    let gone = unwanted(fs);
    checks.extend(gone.iter().map(|p| format!("! uci -q get {p} >/dev/null")));
    s.push_str(&format!(
        "check() {{\n  {}\n}}\nif [ \"${{1:-}}\" = check ]; then check; exit; fi\n",
        checks.join(" &&\n  ")
    ));
    // `uci -q delete` of a section that is not there fails: that is fine
    let deletes = gone.iter().map(|p| format!("uci -q delete {p}\n"));
    let fail = |c: &str| format!("{c} || exit 1\n");
    if fs.is_empty() {
        // nothing to set: commit and reload only when a redirect of wgprov's is still there
        s.push_str("if ! check; then\n");
        s.extend(deletes);
        s.extend(COMMIT.map(fail));
        s.push_str("fi\n");
    } else {
        for c in set_commands(site, zone, fs) {
            s.push_str(&if c.starts_with("uci -q delete") {
                format!("{c}\n")
            } else {
                fail(&c)
            });
        }
        s.extend(deletes);
        s.extend(COMMIT.map(fail));
    }
    s.push_str("check || { echo 'the port-forward redirect is not in place after setting it' >&2; exit 1; }\n");
    s
}

/// Shell text removing wgprov's redirects (the script gone: a put-back of the first apply).
pub fn teardown() -> String {
    let any: Vec<String> = OWNED
        .iter()
        .map(|p| format!("uci -q get {p} >/dev/null"))
        .collect();
    let deletes: Vec<String> = OWNED
        .iter()
        .map(|p| format!("uci -q delete {p}; "))
        .collect();
    format!(
        "if command -v uci >/dev/null 2>&1 && {{ {}; }}; then {}uci commit firewall; /etc/init.d/firewall reload >/dev/null 2>&1; fi\n",
        any.join(" || "),
        deletes.concat()
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

    /// The next-hop's forward and a standby's (cabin2, public port 51822).
    fn both() -> [(Forward, Ipv4Addr); 2] {
        let (mut sb, _) = fwd();
        sb.public_port = 51822;
        sb.next_hop = "cabin2".into();
        sb.to = "192.168.0.51".into();
        [fwd(), (sb, Ipv4Addr::new(192, 168, 0, 51))]
    }

    /// The next-hop's redirect, as routers set up by every version of wgprov hold it.
    const NEXT_HOP: &str = "uci -q delete firewall.wgprov_wireguard
uci set firewall.wgprov_wireguard=redirect
uci set firewall.wgprov_wireguard.name='wgprov-wireguard-cabin'
uci set firewall.wgprov_wireguard.target='DNAT'
uci set firewall.wgprov_wireguard.src='wan'
uci set firewall.wgprov_wireguard.proto='udp'
uci set firewall.wgprov_wireguard.src_dport='51821'
uci set firewall.wgprov_wireguard.dest='lan'
uci set firewall.wgprov_wireguard.dest_ip='192.168.0.50'
uci set firewall.wgprov_wireguard.dest_port='51820'
";

    /// The exact commands, as an operator would type them on the router. Not run on a real
    /// OpenWrt (see README): fixed here so that a change to them is a visible decision.
    #[test]
    fn golden_uci_commands_of_the_port_forward() {
        assert_eq!(
            uci_commands("cabin", "wan", &[fwd()]).join("\n"),
            format!("{NEXT_HOP}uci commit firewall\n/etc/init.d/firewall reload")
        );
    }

    /// With a standby: the next-hop's redirect as above, then the standby's in a section of its
    /// own, and one commit and one reload for both.
    #[test]
    fn golden_uci_commands_of_the_two_port_forwards() {
        assert_eq!(
            uci_commands("cabin", "wan", &both()).join("\n"),
            format!(
                "{NEXT_HOP}uci -q delete firewall.wgprov_wireguard_standby
uci set firewall.wgprov_wireguard_standby=redirect
uci set firewall.wgprov_wireguard_standby.name='wgprov-wireguard-cabin-standby'
uci set firewall.wgprov_wireguard_standby.target='DNAT'
uci set firewall.wgprov_wireguard_standby.src='wan'
uci set firewall.wgprov_wireguard_standby.proto='udp'
uci set firewall.wgprov_wireguard_standby.src_dport='51822'
uci set firewall.wgprov_wireguard_standby.dest='lan'
uci set firewall.wgprov_wireguard_standby.dest_ip='192.168.0.51'
uci set firewall.wgprov_wireguard_standby.dest_port='51820'
uci commit firewall
/etc/init.d/firewall reload"
            )
        );
    }

    #[test]
    fn the_script_checks_every_field_and_is_valid_shell() {
        let s = pf_script("cabin", "wan", &[fwd()]);
        assert!(s.starts_with("#!/bin/sh\n# wgprov-forward: udp 51821 -> 192.168.0.50:51820\n#"));
        assert!(s.contains("[ \"$(uci -q get firewall.wgprov_wireguard.dest_port)\" = '51820' ]"));
        assert!(s.contains("uci set firewall.wgprov_wireguard.dest_ip='192.168.0.50' || exit 1\n"));
        assert!(s.contains("uci -q delete firewall.wgprov_wireguard\n"));
        // a standby's redirect left from before is not wanted: the check says so, a run deletes it
        assert!(s.contains(" &&\n  ! uci -q get firewall.wgprov_wireguard_standby >/dev/null\n}"));
        assert!(s.contains(
            "uci -q delete firewall.wgprov_wireguard_standby\nuci commit firewall || exit 1\n"
        ));
        assert!(!s.contains("wgprov_wireguard_standby."), "{s}");
        assert_eq!(super::super::linux::public_ports_of(&s), [51821]);
        for text in [s, pf_script("cabin", "wan", &[]), teardown()] {
            if let Err(e) = crate::shell::sh_syntax(&text) {
                panic!("{e}\n{text}");
            }
        }
    }

    #[test]
    fn a_standby_gets_its_own_redirect_checked_and_one_commit_and_reload_for_both() {
        let s = pf_script("cabin", "wan", &both());
        assert!(
            s.starts_with(
                "#!/bin/sh\n# wgprov-forward: udp 51821 -> 192.168.0.50:51820\n# wgprov-forward: udp 51822 -> 192.168.0.51:51820\n#"
            ),
            "{s}"
        );
        // conntrack flushing and announcements read both public ports
        assert_eq!(super::super::linux::public_ports_of(&s), [51821, 51822]);
        for want in [
            "[ \"$(uci -q get firewall.wgprov_wireguard.dest_ip)\" = '192.168.0.50' ]",
            "[ \"$(uci -q get firewall.wgprov_wireguard_standby)\" = 'redirect' ]",
            "[ \"$(uci -q get firewall.wgprov_wireguard_standby.src_dport)\" = '51822' ]",
            "[ \"$(uci -q get firewall.wgprov_wireguard_standby.dest_ip)\" = '192.168.0.51' ]",
            "uci set firewall.wgprov_wireguard_standby.name='wgprov-wireguard-cabin-standby' || exit 1\n",
        ] {
            assert!(s.contains(want), "{want}\n{s}");
        }
        assert!(
            !s.contains("! uci -q get"),
            "nothing of wgprov's is unwanted\n{s}"
        );
        assert_eq!(s.matches("uci commit firewall").count(), 1, "{s}");
        assert_eq!(s.matches("/etc/init.d/firewall reload").count(), 1, "{s}");
        crate::shell::sh_syntax(&s).unwrap();
    }

    #[test]
    fn without_a_forward_and_at_teardown_every_redirect_of_wgprovs_goes() {
        let s = pf_script("cabin", "wan", &[]);
        assert!(s.starts_with("#!/bin/sh\n# wgprov-forward: none\n"), "{s}");
        assert!(s.contains(
            "check() {\n  ! uci -q get firewall.wgprov_wireguard >/dev/null &&\n  ! uci -q get firewall.wgprov_wireguard_standby >/dev/null\n}\n"
        ), "{s}");
        assert!(s.contains(
            "if ! check; then\nuci -q delete firewall.wgprov_wireguard\nuci -q delete firewall.wgprov_wireguard_standby\nuci commit firewall || exit 1\n/etc/init.d/firewall reload || exit 1\nfi\n"
        ), "{s}");
        assert_eq!(
            teardown(),
            "if command -v uci >/dev/null 2>&1 && { uci -q get firewall.wgprov_wireguard >/dev/null || uci -q get firewall.wgprov_wireguard_standby >/dev/null; }; \
             then uci -q delete firewall.wgprov_wireguard; uci -q delete firewall.wgprov_wireguard_standby; uci commit firewall; /etc/init.d/firewall reload >/dev/null 2>&1; fi\n"
        );
    }
}
