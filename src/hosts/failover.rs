//! The failover watchdog as the rest of wgprov sees it (roles/failover installs it): its
//! handler, the facts section that reads its state, and that state parsed. A site that failed
//! over is the watchdog's state, not drift: [`as_filed`] puts the networks it moved (both
//! families with dual stack) back on the hub's peer before the running interface is compared
//! with its file, so `apply` never undoes a failover (and the watchdog re-asserts its state
//! every run, should anything restart the interface from its file).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::facts::Facts;
use crate::facts::gather::WgState;
use crate::shell::sh_quote;

/// Where the watchdog keeps one file per site it watches.
pub const STATE_DIR: &str = "/var/lib/wgprov/failover";
/// Its timer (the default interface's; roles/failover names it after the interface).
pub const TIMER_GLOB: &str = "wgprov-failover-*.timer";
/// The facts section with its state files.
pub const SECTION: &str = "failover";
/// What the handler does, for reports.
pub const HANDLER_TEXT: &str = "failover: systemctl enable --now wgprov-failover-<interface>.timer (or, its files gone, stop it and delete its state)";

/// The failover handler (systemd only): enable the watchdog's timer; its unit file gone, stop
/// it and delete its state (a node that watches no site any more has nothing to fail over).
pub(crate) fn handler(f: &str) -> String {
    format!(
        "for t in /etc/systemd/system/{TIMER_GLOB}; do [ -f \"$t\" ] || continue; n=${{t##*/}}; out=$(systemctl enable -q --now \"$n\" 2>&1) || {{ echo \"$out\" >&2; {f} \"handler failover: systemctl enable --now $n\"; }}; done\n\
         for w in /etc/systemd/system/timers.target.wants/{TIMER_GLOB}; do [ -e \"$w\" ] || [ -L \"$w\" ] || continue; n=${{w##*/}}; [ -f \"/etc/systemd/system/$n\" ] && continue; systemctl stop \"$n\" \"${{n%.timer}}.service\" >/dev/null 2>&1; rm -f \"$w\"; rm -rf {dir}; done\n",
        dir = sh_quote(STATE_DIR),
    )
}

/// The facts section: every state file, one `key=value` a line.
pub fn facts_section() -> String {
    format!(
        "sec {SECTION}\nfor f in {dir}/*.state; do [ -f \"$f\" ] && cat \"$f\"; done 2>/dev/null\n",
        dir = STATE_DIR
    )
}

/// Which node carries a site's routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The next-hop (normal).
    Hub,
    /// The standby (failed over).
    Standby,
}

/// One site's state as a node's watchdog wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteState {
    /// The site.
    pub site: String,
    /// Who carries its routes.
    pub role: Role,
    /// That node's name.
    pub active: String,
    /// Since when (Unix seconds).
    pub since: u64,
    /// The networks that moved: `moves=` holds them comma-separated (a watchdog from before
    /// dual stack wrote a single IPv4 network, which reads as a list of one).
    pub moves: Vec<IpNet>,
    /// The hub's address.
    pub hub_ip: Option<Ipv4Addr>,
    /// The standby's address.
    pub standby_ip: Option<Ipv4Addr>,
}

/// Parses the facts section (several state files, each starting with `site=`).
pub fn parse(text: &str) -> Vec<SiteState> {
    let mut out: Vec<SiteState> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        if k == "site" {
            out.push(SiteState {
                site: v.to_string(),
                role: Role::Hub,
                active: String::new(),
                since: 0,
                moves: Vec::new(),
                hub_ip: None,
                standby_ip: None,
            });
            continue;
        }
        let Some(s) = out.last_mut() else { continue };
        match k {
            "role" if v == "standby" => s.role = Role::Standby,
            "active" => s.active = v.to_string(),
            "since" => s.since = v.parse().unwrap_or(0),
            "moves" => s.moves = moved(v),
            "hub_ip" => s.hub_ip = v.parse().ok(),
            "standby_ip" => s.standby_ip = v.parse().ok(),
            _ => {}
        }
    }
    out
}

/// The networks of a `moves=` value: one, or several comma-separated; what does not parse is
/// left out.
fn moved(v: &str) -> Vec<IpNet> {
    v.split(',')
        .filter_map(|n| n.trim().parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// The watchdog's state on a host, from its facts.
pub fn states(facts: &Facts) -> Vec<SiteState> {
    facts
        .extra
        .get(SECTION)
        .map(|t| parse(t))
        .unwrap_or_default()
}

/// The running interface with every failed-over network put back on its hub's peer: what the
/// file says when the watchdog has moved nothing. Compare this with the file to find drift.
pub fn as_filed(wg: &WgState, states: &[SiteState]) -> WgState {
    use crate::hosts::drift::all_nets;
    let mut wg = wg.clone();
    for s in states.iter().filter(|s| s.role == Role::Standby) {
        let (Some(hub), Some(sb)) = (s.hub_ip, s.standby_ip) else {
            continue;
        };
        let holds = |p: &crate::facts::gather::PeerState, ip: Ipv4Addr| {
            all_nets(&p.allowed_ips).contains(&IpNet::V4(Ipv4Net::new(ip, 32).unwrap()))
        };
        let Some(si) = wg.peers.iter().position(|p| holds(p, sb)) else {
            continue;
        };
        let Some(hi) = wg.peers.iter().position(|p| holds(p, hub)) else {
            continue;
        };
        let mut sn: BTreeSet<IpNet> = all_nets(&wg.peers[si].allowed_ips);
        let mut hn = all_nets(&wg.peers[hi].allowed_ips);
        // each network the standby's peer does carry goes back (one the watchdog did not move
        // yet, or an interface restarted from its file, is where the file has it already)
        let back: Vec<IpNet> = s.moves.iter().filter(|n| sn.remove(n)).copied().collect();
        if back.is_empty() {
            continue;
        }
        hn.extend(back);
        wg.peers[si].allowed_ips = sn.iter().map(|n| n.to_string()).collect();
        wg.peers[hi].allowed_ips = hn.iter().map(|n| n.to_string()).collect();
    }
    wg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::gather::PeerState;

    const STATE: &str = "site=home\nrole=standby\nactive=n2\nsince=1700000000\nmisses=3\nhealthy=0\nhold=60\nback=0\nmoves=10.100.0.0/24\nhub_ip=10.100.0.1\nstandby_ip=10.100.0.2\nsite=lab\nrole=hub\nactive=l1\nsince=5\n";

    fn peer(key: &str, ips: &[&str]) -> PeerState {
        PeerState {
            public_key: key.into(),
            endpoint: None,
            allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
            latest_handshake: 1,
            rx: 0,
            tx: 0,
            keepalive: 0,
        }
    }

    #[test]
    fn the_state_files_parse_per_site() {
        let s = parse(STATE);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].role, s[0].active.as_str(), s[0].since),
            (Role::Standby, "n2", 1_700_000_000)
        );
        assert_eq!((s[1].role, s[1].active.as_str()), (Role::Hub, "l1"));
    }

    #[test]
    fn a_failed_over_site_is_not_drift_but_a_moved_block_without_state_is() {
        const CONF: &str = "[Interface]\nListenPort = 51820\n\n[Peer]\nPublicKey = HUB\nAllowedIPs = 10.100.0.0/24, 10.100.0.1/32, 10.100.0.254/32\n\n[Peer]\nPublicKey = SB\nAllowedIPs = 10.100.0.2/32, 10.100.0.253/32\n";
        let running = WgState {
            public_key: "K".into(),
            listen_port: 51820,
            peers: vec![
                peer("HUB", &["10.100.0.1/32", "10.100.0.254/32"]),
                peer("SB", &["10.100.0.2/32", "10.100.0.253/32", "10.100.0.0/24"]),
            ],
        };
        let name = |k: &str| k.to_string();
        let raw = crate::hosts::drift::running_vs_file(CONF, &running, &name);
        assert_eq!(raw.len(), 2, "{raw:?}");
        let filed = as_filed(&running, &parse(STATE));
        assert_eq!(
            crate::hosts::drift::running_vs_file(CONF, &filed, &name),
            Vec::<String>::new()
        );
        // the watchdog says the hub carries the site: a moved block is drift again
        let hub_state = STATE.replace("role=standby", "role=hub");
        let filed = as_filed(&running, &parse(&hub_state));
        assert_eq!(
            crate::hosts::drift::running_vs_file(CONF, &filed, &name).len(),
            2
        );
    }

    #[test]
    fn moves_read_in_the_old_single_form_and_as_a_list_of_both_families() {
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        // a watchdog from before dual stack wrote one network
        assert_eq!(parse(STATE)[0].moves, nets(&["10.100.0.0/24"]));
        let both = STATE.replace("moves=10.100.0.0/24", "moves=10.100.0.0/24,fd10:100::/64");
        assert_eq!(
            parse(&both)[0].moves,
            nets(&["10.100.0.0/24", "fd10:100::/64"])
        );
        // what does not parse is left out, not the whole list
        let bad = STATE.replace("moves=10.100.0.0/24", "moves=nonsense, fd10:100::/64");
        assert_eq!(parse(&bad)[0].moves, nets(&["fd10:100::/64"]));
        assert_eq!(parse(STATE)[1].moves, Vec::<IpNet>::new());
    }

    /// Dual stack: the file gives the hub's peer both blocks; a watchdog that moved both is its
    /// state, one that moved only the IPv4 block (before this release) too, and an IPv6 block
    /// left on the standby after the site went back to its hub is drift.
    #[test]
    fn with_dual_stack_both_moved_blocks_go_back_and_a_stray_ipv6_block_is_drift() {
        const CONF: &str = "[Interface]\nListenPort = 51820\n\n[Peer]\nPublicKey = HUB\nAllowedIPs = 10.100.0.0/24, 10.100.0.1/32, 10.100.0.254/32, fd10:100::/64, fd10:100::1/128, fd10:100::fe/128\n\n[Peer]\nPublicKey = SB\nAllowedIPs = 10.100.0.2/32, 10.100.0.253/32, fd10:100::2/128, fd10:100::fd/128\n";
        let name = |k: &str| k.to_string();
        let hub_own = "10.100.0.1/32 10.100.0.254/32 fd10:100::1/128 fd10:100::fe/128";
        let sb_own = "10.100.0.2/32 10.100.0.253/32 fd10:100::2/128 fd10:100::fd/128";
        // the drift with the hub's and the standby's peers running with their own addresses
        // and `hub`/`sb` beside, the watchdog's state being `state`
        let drift = |hub: &str, sb: &str, state: &str| {
            let ips = |own: &str, more: &str| -> Vec<String> {
                own.split(' ')
                    .chain(more.split(' '))
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            };
            let running = WgState {
                public_key: "K".into(),
                listen_port: 51820,
                peers: vec![
                    PeerState {
                        allowed_ips: ips(hub_own, hub),
                        ..peer("HUB", &[])
                    },
                    PeerState {
                        allowed_ips: ips(sb_own, sb),
                        ..peer("SB", &[])
                    },
                ],
            };
            let filed = as_filed(&running, &parse(state));
            crate::hosts::drift::running_vs_file(CONF, &filed, &name)
        };
        let both = "10.100.0.0/24 fd10:100::/64";
        let new_state = STATE.replace("moves=10.100.0.0/24", "moves=10.100.0.0/24,fd10:100::/64");
        let none: Vec<String> = Vec::new();
        // failed over, both blocks on the standby: no drift
        assert_eq!(drift("", both, &new_state), none);
        // upgraded while failed over: the old state names the IPv4 block alone, which the old
        // watchdog moved alone
        assert_eq!(drift("fd10:100::/64", "10.100.0.0/24", STATE), none);
        // back on the hub by the state, an IPv6 block still on the standby: drift, named
        let d = drift(
            "10.100.0.0/24",
            "fd10:100::/64",
            &new_state.replace("role=standby", "role=hub"),
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|l| l.contains("fd10:100::/64")), "{d:?}");
        // a state that names the IPv4 block alone does not put an IPv6 block back
        let four_only = drift("", both, STATE);
        assert_eq!(four_only.len(), 2, "{four_only:?}");
        // nothing moved yet while the state already says standby: the file as it is
        assert_eq!(drift(both, "", &new_state), none);
    }

    #[test]
    fn the_handler_is_valid_shell() {
        crate::shell::sh_syntax(&format!("fail() {{ :; }}\n{}", handler("fail"))).unwrap();
        crate::shell::sh_syntax(&facts_section().replace("sec ", "echo ")).unwrap();
    }
}
