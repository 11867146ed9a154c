//! Drift: the running interface no longer matches its config file — peers removed or added by
//! hand with `wg set`, a listen port or keepalive changed, the interface down, `wg-quick@`
//! disabled so that it would not come back after a reboot. Drift counts as a change:
//! `apply --check` reports it, `apply` brings the running state back to the file. Pure: from
//! the facts already gathered, no extra round trip.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};

use crate::facts::Facts;
use crate::facts::gather::WgState;
use crate::facts::wgconf::WgConfig;
use crate::keys::PrivateKey;
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

/// A public key shortened for messages.
pub(crate) fn short_key(k: &str) -> String {
    format!("{}…", k.chars().take(8).collect::<String>())
}

/// Every IPv4 network of a list of AllowedIPs values.
pub(crate) fn nets(v: &[String]) -> BTreeSet<Ipv4Net> {
    all_nets(v)
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Every network, IPv4 and IPv6, of a list of AllowedIPs values (each may hold several,
/// comma-separated).
pub(crate) fn all_nets(v: &[String]) -> BTreeSet<IpNet> {
    v.iter()
        .flat_map(|s| s.split(','))
        .filter_map(|s| s.trim().parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// Differences between the running interface and its file, in words; empty when they agree.
/// `name` names a peer by its public key. Endpoints are left out on purpose: a running peer's
/// endpoint follows roaming and NAT.
pub fn running_vs_file(conf: &str, wg: &WgState, name: &dyn Fn(&str) -> String) -> Vec<String> {
    let c = WgConfig::parse(conf);
    let mut out = Vec::new();
    if let Some(i) = c.interface() {
        if let Some(p) = i
            .get("ListenPort")
            .and_then(|p| p.trim().parse::<u16>().ok())
            && p != wg.listen_port
        {
            out.push(format!(
                "it listens on {}, the file says {p}",
                wg.listen_port
            ));
        }
        if let Some(k) = i.get("PrivateKey")
            && let Ok(k) = PrivateKey::from_base64(k.trim())
            && k.public_key().to_base64() != wg.public_key
        {
            out.push("it runs with another key than the file's".into());
        }
    }
    type Want = (BTreeSet<IpNet>, u32);
    let file: BTreeMap<String, Want> = c
        .peers()
        .filter_map(|p| {
            let key = p.get("PublicKey")?.trim().to_string();
            let allowed: Vec<String> = p
                .get_all("AllowedIPs")
                .iter()
                .map(|s| s.to_string())
                .collect();
            let ka = p
                .get("PersistentKeepalive")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(0);
            Some((key, (all_nets(&allowed), ka)))
        })
        .collect();
    let running: BTreeMap<String, Want> = wg
        .peers
        .iter()
        .map(|p| {
            (
                p.public_key.clone(),
                (all_nets(&p.allowed_ips), p.keepalive),
            )
        })
        .collect();
    for (k, (allowed, ka)) in &file {
        match running.get(k) {
            None => out.push(format!("peer {} is in the file but not running", name(k))),
            Some((ra, rka)) => {
                if ra != allowed {
                    let show = |s: &BTreeSet<IpNet>| {
                        s.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    out.push(format!(
                        "peer {}: AllowedIPs {} running, {} in the file",
                        name(k),
                        show(ra),
                        show(allowed)
                    ));
                }
                if rka != ka {
                    out.push(format!(
                        "peer {}: keepalive {rka} running, {ka} in the file",
                        name(k)
                    ));
                }
            }
        }
    }
    for k in running.keys().filter(|k| !file.contains_key(*k)) {
        out.push(format!("peer {} is running but not in the file", name(k)));
    }
    out
}

/// How a node's interface differs from the config text `conf`: what `apply` repairs (also
/// the interface down, and `wg-quick@` disabled where systemd runs). Peers are named by the
/// start of their key.
pub fn detect(conf: &str, facts: &Facts, iface: &InterfaceName) -> Vec<Drift> {
    let mut out = Vec::new();
    if facts.systemd && !facts.wg_enabled {
        out.push(Drift {
            what: format!(
                "wg-quick@{iface} is not enabled: the interface would not come back after a reboot"
            ),
            restart: false,
        });
    }
    let Some(wg) = &facts.wg else {
        out.push(Drift {
            what: format!("{iface} is down"),
            restart: true,
        });
        return out;
    };
    // a site the failover watchdog moved to its standby is its state, not drift
    let wg = &super::failover::as_filed(wg, &super::failover::states(facts));
    out.extend(
        running_vs_file(conf, wg, &short_key)
            .into_iter()
            .map(|what| Drift {
                what,
                restart: false,
            }),
    );
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
        assert_eq!(d[0].what, "peer BBBBBBBB… is in the file but not running");
        assert!(!d[0].restart);
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
                "it listens on 51999, the file says 51820",
                "peer BBBBBBBB…: AllowedIPs 10.9.0.0/16, 10.100.0.2/32 running, 10.100.0.2/32 in the file",
                "peer CCCCCCCC…: keepalive 0 running, 25 in the file",
                "peer DDDDDDDD… is running but not in the file",
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
