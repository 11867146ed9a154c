//! Drift: the running interface no longer matches its config file — peers removed or added by
//! hand with `wg set`, a listen port or keepalive changed, the interface down, `wg-quick@`
//! disabled so that it would not come back after a reboot. SPEC.md: drift counts as a change;
//! `apply --check` reports it, `apply` brings the running state back to the file. Pure: from
//! the facts already gathered, no extra round trip.

use std::collections::{BTreeMap, BTreeSet};

use crate::facts::Facts;
use crate::facts::wgconf::WgConfig;
use crate::shell::InterfaceName;

/// One way the running interface differs from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// What differs, for the report.
    pub what: String,
    /// True when only restarting the interface repairs it (it is down); else `wg syncconf`
    /// (and enabling the unit) does.
    pub restart: bool,
}

fn short(key: &str) -> String {
    key.chars().take(8).collect::<String>() + "…"
}

fn nets(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// How the running interface (`facts`) differs from the config text `conf`.
pub fn detect(conf: &str, facts: &Facts, iface: &InterfaceName) -> Vec<Drift> {
    let mut out = Vec::new();
    let drift = |what: String, restart: bool| Drift { what, restart };
    if facts.systemd && !facts.wg_enabled {
        out.push(drift(
            format!(
                "wg-quick@{iface} is not enabled: the interface would not come back after a reboot"
            ),
            false,
        ));
    }
    let Some(wg) = &facts.wg else {
        out.push(drift(format!("{iface} is down"), true));
        return out;
    };
    let file = WgConfig::parse(conf);
    if let Some(port) = file
        .interface()
        .and_then(|i| i.get("ListenPort"))
        .and_then(|p| p.trim().parse::<u16>().ok())
        && port != wg.listen_port
    {
        out.push(drift(
            format!(
                "{iface} listens on {} but its file says {port}",
                wg.listen_port
            ),
            false,
        ));
    }
    // peer key -> (AllowedIPs, keepalive) in the file and running
    let want: BTreeMap<String, (BTreeSet<String>, u32)> = file
        .peers()
        .filter_map(|p| {
            let key = p.get("PublicKey")?.trim().to_string();
            let allowed = nets(p.get("AllowedIPs").unwrap_or(""));
            let keepalive = p
                .get("PersistentKeepalive")
                .and_then(|k| k.trim().parse().ok())
                .unwrap_or(0);
            Some((key, (allowed, keepalive)))
        })
        .collect();
    let have: BTreeMap<String, (BTreeSet<String>, u32)> = wg
        .peers
        .iter()
        .map(|p| {
            let allowed = p.allowed_ips.iter().map(|a| a.trim().to_string()).collect();
            (p.public_key.clone(), (allowed, p.keepalive))
        })
        .collect();
    for (key, (allowed, keepalive)) in &want {
        let list = allowed.iter().cloned().collect::<Vec<_>>().join(", ");
        match have.get(key) {
            None => out.push(drift(
                format!(
                    "peer {} ({list}) is in the file but not on the running {iface}",
                    short(key)
                ),
                false,
            )),
            Some((a, k)) => {
                if a != allowed {
                    let running = a.iter().cloned().collect::<Vec<_>>().join(", ");
                    out.push(drift(
                        format!(
                            "peer {} runs with AllowedIPs {running}, its file says {list}",
                            short(key)
                        ),
                        false,
                    ));
                }
                if k != keepalive {
                    out.push(drift(
                        format!(
                            "peer {} ({list}) runs with keepalive {k}, its file says {keepalive}",
                            short(key)
                        ),
                        false,
                    ));
                }
            }
        }
    }
    for (key, (allowed, _)) in &have {
        if !want.contains_key(key) {
            let list = allowed.iter().cloned().collect::<Vec<_>>().join(", ");
            out.push(drift(
                format!(
                    "peer {} ({list}) runs on {iface} but is not in its file",
                    short(key)
                ),
                false,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::gather::{PeerState, WgState};

    const CONF: &str = "[Interface]\nAddress = 10.100.0.1/16\nListenPort = 51820\nPrivateKey = A\n\n[Peer]\nPublicKey = BBBBBBBBBBBB\nAllowedIPs = 10.100.0.2/32\n\n[Peer]\nPublicKey = CCCCCCCCCCCC\nAllowedIPs = 10.100.1.0/24\nEndpoint = 198.51.100.2:51820\nPersistentKeepalive = 25\n";

    fn peer(key: &str, allowed: &[&str], keepalive: u32) -> PeerState {
        PeerState {
            public_key: key.into(),
            endpoint: Some("198.51.100.9:4000".into()),
            allowed_ips: allowed.iter().map(|a| a.to_string()).collect(),
            latest_handshake: 5,
            rx: 1,
            tx: 1,
            keepalive,
        }
    }

    fn facts(peers: Vec<PeerState>, port: u16) -> Facts {
        Facts {
            wg: Some(WgState {
                public_key: "K".into(),
                listen_port: port,
                peers,
            }),
            systemd: true,
            wg_enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_running_interface_that_matches_its_file_has_no_drift() {
        // endpoints differ (NAT, roaming): that is not drift
        let f = facts(
            vec![
                peer("CCCCCCCCCCCC", &["10.100.1.0/24"], 25),
                peer("BBBBBBBBBBBB", &["10.100.0.2/32"], 0),
            ],
            51820,
        );
        assert_eq!(detect(CONF, &f, &InterfaceName::default()), vec![]);
    }

    #[test]
    fn peers_removed_or_added_by_hand_ports_keepalives_down_and_disabled_are_drift() {
        let iface = InterfaceName::default();
        let removed = facts(vec![peer("CCCCCCCCCCCC", &["10.100.1.0/24"], 25)], 51820);
        let d = detect(CONF, &removed, &iface);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].what.contains(
                "peer BBBBBBBB… (10.100.0.2/32) is in the file but not on the running wg0"
            ) && !d[0].restart
        );
        let mut added = facts(
            vec![
                peer("CCCCCCCCCCCC", &["10.100.1.0/24"], 0),
                peer("BBBBBBBBBBBB", &["10.100.0.2/32", "10.9.0.0/16"], 0),
                peer("DDDDDDDDDDDD", &["10.100.9.0/24"], 0),
            ],
            51999,
        );
        added.wg_enabled = false;
        let all: Vec<String> = detect(CONF, &added, &iface)
            .into_iter()
            .map(|d| d.what)
            .collect();
        assert_eq!(
            all,
            vec![
                "wg-quick@wg0 is not enabled: the interface would not come back after a reboot",
                "wg0 listens on 51999 but its file says 51820",
                "peer BBBBBBBB… runs with AllowedIPs 10.100.0.2/32, 10.9.0.0/16, its file says 10.100.0.2/32",
                "peer CCCCCCCC… (10.100.1.0/24) runs with keepalive 0, its file says 25",
                "peer DDDDDDDD… (10.100.9.0/24) runs on wg0 but is not in its file",
            ]
        );
        let down = Facts {
            systemd: true,
            wg_enabled: true,
            ..Default::default()
        };
        let d = detect(CONF, &down, &iface);
        assert_eq!(d.len(), 1);
        assert!(d[0].what == "wg0 is down" && d[0].restart);
        // without systemd, nothing is enabled or not
        let mut no_systemd = facts(vec![], 51820);
        no_systemd.systemd = false;
        no_systemd.wg_enabled = false;
        assert!(detect("[Interface]\nListenPort = 51820\n", &no_systemd, &iface).is_empty());
    }
}
