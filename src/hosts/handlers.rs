//! What the handlers of a host's change will do, decided from its changes and facts, and what
//! the change checks on the host once they ran. Every kind of host has its handlers here; the
//! shell text that runs them is the transaction's (apply).

use std::collections::BTreeSet;

use crate::desired::FileState;
use crate::diff::{Action, Change};
use crate::facts::Facts;
use crate::facts::wgconf::WgConfig;
use crate::shell::{Handler, InterfaceName, sh_quote};

/// The timer of `network.metrics: textfile` (roles/metrics).
pub const METRICS_TIMER: &str = "wgprov-metrics.timer";
/// The file it writes, for node_exporter's textfile collector (roles/metrics' `metrics_file`).
pub const METRICS_FILE: &str = "/var/lib/prometheus/node-exporter/wgprov.prom";

/// What the handlers will do on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerPlan {
    /// Bring the interface up to date: `Some(true)` restart, `Some(false)` `wg syncconf`.
    pub wireguard: Option<bool>,
    /// `sysctl -p` wgprov's file.
    pub sysctl: bool,
    /// Restart the node's kubelet unit (only where it is installed and enabled or running).
    pub kubelet: bool,
    /// Before that restart, fail (and put the host back) unless this is an address of the host.
    pub node_ip: Option<String>,
    /// `systemctl daemon-reload`, before any restart.
    pub daemon_reload: bool,
    /// Enable the endpoint re-resolution timer (or stop it when its files are gone).
    pub reresolve: bool,
    /// Enable the timer writing node_exporter's metrics file (or, its files gone, stop it and
    /// delete the metrics file).
    pub metrics: bool,
    /// On a managed router: run its port-forward script (or remove the rules when the script
    /// is gone), then flush the conntrack entries of these public UDP ports.
    pub port_forward: Option<Vec<u16>>,
    /// On an OpenWrt hub router: run its uci script (or remove wgprov's sections when the
    /// script is gone).
    pub router_hub: bool,
    /// Enable the failover watchdog's timer (or, its files gone, stop it and delete its state).
    pub failover: bool,
}

impl HandlerPlan {
    /// Short descriptions, for reports.
    pub fn describe(&self, iface: &InterfaceName, facts: &Facts) -> Vec<String> {
        let mut v = Vec::new();
        match self.wireguard {
            Some(true) if facts.systemd => {
                v.push(format!("wireguard: systemctl restart wg-quick@{iface}"))
            }
            Some(true) => v.push(format!("wireguard: wg-quick down/up {iface}")),
            Some(false) => v.push(format!("wireguard: wg syncconf {iface}")),
            None => {}
        }
        if self.daemon_reload && facts.systemd {
            v.insert(0, "daemon_reload: systemctl daemon-reload".into());
        }
        if self.sysctl {
            v.push("sysctl: sysctl -p /etc/sysctl.d/99-wgprov.conf".into());
        }
        if self.kubelet {
            let units: Vec<&str> = facts.units.iter().map(String::as_str).collect();
            let check = self
                .node_ip
                .as_deref()
                .map(|ip| format!("check that {ip} is an address of the host, then "))
                .unwrap_or_default();
            if facts.systemd && !units.is_empty() {
                v.push(format!(
                    "kubelet: {check}restart {} (those enabled or running)",
                    units.join(", ")
                ));
            } else if facts.tools.contains("kubelet") {
                v.push("kubelet: installed but systemd is not running: restart it yourself".into());
            } else {
                v.push("kubelet: not installed, nothing to restart".into());
            }
        }
        if self.reresolve && facts.systemd {
            v.push(format!(
                "reresolve: systemctl enable --now wgprov-reresolve-{iface}.timer"
            ));
        }
        if self.metrics && facts.systemd {
            v.push(format!(
                "metrics: systemctl enable --now {METRICS_TIMER} (or, its files gone, stop it and remove {METRICS_FILE})"
            ));
        }
        if let Some(ports) = &self.port_forward {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            v.push(format!(
                "port_forward: sh {}{}, then conntrack -D -p udp --dport {}",
                crate::hosts::PF_SCRIPT,
                if facts.systemd {
                    format!(" (enabled at boot: {})", crate::hosts::PF_UNIT_NAME)
                } else {
                    String::new()
                },
                ports.join(", ")
            ));
        }
        if self.failover && facts.systemd {
            v.push(super::failover::HANDLER_TEXT.into());
        }
        if self.router_hub {
            v.push(format!(
                "router_hub: sh {} (uci commit, network and firewall reload, ifup {iface})",
                crate::hosts::openwrt_hub::HUB_SCRIPT
            ));
        }
        v
    }
}

/// Interface keys whose change needs the interface restarted (syncconf handles peers and the
/// private key; everything else in `[Interface]` is wg-quick's).
fn interface_changed(old: Option<&str>, new: Option<&str>) -> bool {
    let norm = |t: Option<&str>| -> BTreeSet<(String, String)> {
        let c = WgConfig::parse(t.unwrap_or(""));
        c.interface()
            .map(|i| {
                i.lines
                    .iter()
                    .filter_map(|l| match l {
                        crate::facts::wgconf::Line::Entry { key, value, .. }
                            if !key.eq_ignore_ascii_case("PrivateKey") =>
                        {
                            Some((key.to_ascii_lowercase(), value.clone()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    norm(old) != norm(new)
}

impl HandlerPlan {
    /// Every handler, the interface restarted: what putting back an unknown set of files needs
    /// (`wgprov rollback`).
    pub fn everything() -> HandlerPlan {
        HandlerPlan {
            wireguard: Some(true),
            sysctl: true,
            kubelet: true,
            node_ip: None,
            daemon_reload: true,
            reresolve: true,
            metrics: true,
            port_forward: None,
            router_hub: false,
            failover: true,
        }
    }

    /// The handlers that put this change back: the same interface handling as the change (a
    /// peers-only change goes back with `wg syncconf`, without a restart), and the handlers of
    /// every file it touched.
    pub fn to_put_back(&self, changes: &[Change]) -> HandlerPlan {
        let notified = |h: Handler| {
            changes
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .any(|c| c.desired.notify.contains(&h))
        };
        HandlerPlan {
            wireguard: self.wireguard,
            sysctl: notified(Handler::Sysctl),
            kubelet: notified(Handler::Kubelet),
            // putting back never refuses to restart: the old node IP was the host's before
            node_ip: None,
            daemon_reload: self.daemon_reload,
            reresolve: notified(Handler::Reresolve),
            metrics: notified(Handler::Metrics),
            port_forward: self.port_forward.clone(),
            router_hub: self.router_hub,
            failover: notified(Handler::Failover),
        }
    }
}

/// Decides the handlers from the changes, and whether the interface is up now.
pub fn plan_handlers(changes: &[Change], facts: &Facts, wg_path: &str) -> HandlerPlan {
    let mut h = HandlerPlan::default();
    for c in changes.iter().filter(|c| c.action != Action::Unchanged) {
        for n in &c.desired.notify {
            match n {
                Handler::Wireguard => {
                    let new = match &c.desired.state {
                        FileState::Present { content, .. } => Some(content.as_str()),
                        FileState::Absent => None,
                    };
                    let restart = facts.wg.is_none() || interface_changed(c.current.content(), new);
                    h.wireguard = Some(h.wireguard.unwrap_or(false) || restart);
                }
                Handler::Sysctl => h.sysctl = c.action != Action::Removed,
                Handler::Kubelet => h.kubelet = true,
                Handler::DaemonReload => h.daemon_reload = true,
                Handler::Reresolve => {
                    h.reresolve = true;
                    h.daemon_reload = true;
                }
                Handler::Metrics => {
                    h.metrics = true;
                    h.daemon_reload = true;
                }
                Handler::PortForward => {
                    h.port_forward.get_or_insert_with(Vec::new);
                }
                Handler::RouterHub => h.router_hub = true,
                Handler::Failover => {
                    h.failover = true;
                    h.daemon_reload = true;
                }
            }
        }
    }
    // converge: an unchanged config whose interface is down is brought up (a config that
    // should not exist brings nothing up)
    if h.wireguard.is_none()
        && facts.wg.is_none()
        && changes
            .iter()
            .any(|c| c.desired.path == wg_path && c.desired.state != FileState::Absent)
    {
        h.wireguard = Some(true);
    }
    h
}

impl HandlerPlan {
    /// Adds what repairs `drift`: a restart when the interface is down, else `wg syncconf`
    /// (the wireguard handler also enables `wg-quick@` where systemd runs).
    pub fn repair(&mut self, drift: &[crate::hosts::drift::Drift]) {
        if drift.is_empty() {
            return;
        }
        let restart = drift.iter().any(|d| d.restart);
        self.wireguard = Some(self.wireguard.unwrap_or(false) || restart);
    }
}

/// What the change checks on the host itself once the handlers ran: the interface's public key,
/// and its peers with their AllowedIPs (as sorted tokens of `wg show IFACE allowed-ips`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The planned public key.
    pub public_key: String,
    /// Sorted peer keys and AllowedIPs.
    pub tokens: Vec<String>,
}

impl Expect {
    /// The expectation for a planned config text.
    pub fn from_conf(public_key: &str, conf: &str) -> Expect {
        Expect::from_peers(public_key, &WgConfig::parse(conf).peer_list())
    }

    /// The expectation for planned peers, each a public key and its AllowedIPs.
    pub fn from_peers(public_key: &str, peers: &[(String, Vec<String>)]) -> Expect {
        let mut tokens = Vec::new();
        for (key, allowed) in peers {
            tokens.push(key.clone());
            tokens.extend(allowed.iter().filter(|x| !x.is_empty()).cloned());
        }
        tokens.sort();
        Expect {
            public_key: public_key.to_string(),
            tokens,
        }
    }

    /// The shell tests of the live interface, each with what its failure means, to be run in
    /// this order: the key, then the peers with their AllowedIPs. Both read one `wg show dump`
    /// (kept in `$wgd`, never printed: its first line holds the private key) and compare in the
    /// shell itself, no pipeline of processes.
    pub(crate) fn tests(&self, iface: &InterfaceName) -> [(String, &'static str); 2] {
        let q = sh_quote(iface);
        [
            // the first line: private key, public key, port, fwmark
            (
                format!(
                    "{{ wgd=$(wg show {q} dump 2>/dev/null) && wgk=${{wgd#*\t}} && [ \"${{wgk%%\t*}}\" = {} ]; }}",
                    sh_quote(&self.public_key)
                ),
                "the interface is not up with the planned key",
            ),
            // every peer line: its key and each of its AllowedIPs (fields 1 and 4), each once (a
            // device never repeats one), against the planned ones: every running token
            // planned, and as many of them
            (
                format!(
                    "{{ n=0; ok=1; first=1; IFS='\n'; for l in $wgd; do if [ -n \"$first\" ]; then first=; continue; fi; \
                     k=${{l%%\t*}}; r=${{l#*\t}}; r=${{r#*\t}}; r=${{r#*\t}}; r=${{r%%\t*}}; IFS=,; \
                     for t in $k $r; do n=$((n+1)); case {} in *\" $t \"*) ;; *) ok= ;; esac; done; IFS='\n'; done; \
                     unset IFS; [ -n \"$ok\" ] && [ \"$n\" = {} ]; }}",
                    sh_quote(&format!(" {} ", self.tokens.join(" "))),
                    self.tokens.len()
                ),
                "the interface has other peers than the config",
            ),
        ]
    }

    /// Shell text that calls `fail` unless the live interface matches.
    pub(crate) fn check(&self, iface: &InterfaceName) -> String {
        self.tests(iface)
            .iter()
            .map(|(t, why)| format!("{t} || fail 'verify: {why}'\n"))
            .collect()
    }
}
