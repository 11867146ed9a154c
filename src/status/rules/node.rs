//! The node rules: `unreachable`, `interface_down`, `forwarding_off`, `drift` and
//! `kubelet_node_ip`, one function each, and every node's status.

use std::collections::BTreeSet;

use crate::facts::gather::WgState;
use crate::facts::kubelet;
use crate::inventory::{Flavor, OsFamily};
use crate::topology::NodePlan;

use super::{Health, View, age, drift, peer_label, short_key};
use crate::status::observe::{ObserveError, Observed};
use crate::status::paths::{conf_path, node_ip_path};
use crate::status::report::{Kind, NodeState, NodeStatus, PeerStatus, Problem};

/// Every node's status, the node problems, and the nodes whose interface drifted.
pub(super) fn node_rules(v: &View) -> (Vec<NodeStatus>, Vec<Problem>, BTreeSet<String>) {
    // the hosts each node's SSH path crosses (proxy_jump, or the mesh)
    let paths = crate::topology::reach::paths(v.topo);
    let mut nodes = Vec::new();
    let mut problems = Vec::new();
    let mut drifted: BTreeSet<String> = BTreeSet::new();
    for n in &v.topo.nodes {
        let mut st = NodeStatus {
            name: n.name.clone(),
            site: n.site.clone(),
            next_hop: n.is_next_hop,
            state: NodeState::Unreachable,
            error: None,
            public_key: None,
            listen_port: None,
            ip_forward: None,
            peers: Vec::new(),
        };
        let o = match v.obs.get(&n.name) {
            Some(Ok(o)) => o,
            other => {
                let err = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => ObserveError::NotContacted.to_string(),
                };
                let via = paths.get(&n.name).map(Vec::as_slice).unwrap_or_default();
                problems.push(unreachable(v, n, &err, via));
                st.error = Some(err);
                nodes.push(st);
                continue;
            }
        };
        st.ip_forward = o.ip_forward;
        st.state = if o.iface_up {
            NodeState::Up
        } else {
            NodeState::Down
        };
        if let Some(wg) = &o.facts.wg {
            st.public_key = Some(wg.public_key.clone());
            st.listen_port = Some(wg.listen_port);
            st.peers = peer_statuses(v, n, o, wg);
        }
        let kind = crate::hosts::kind::HostKind::of(v.topo, &n.name).expect("a node is a host");
        let hub = kind.is_openwrt_hub();
        problems.extend(interface_down(v, n, o, hub));
        problems.extend(forwarding_off(&v.topo.network, n, o));
        if let Some(p) = drift_rule(v, n, o, kind) {
            drifted.insert(n.name.clone());
            problems.push(p);
        }
        problems.extend(kubelet_node_ip(&v.topo.network, n, o));
        nodes.push(st);
    }
    (nodes, problems, drifted)
}

/// A problem of node `n`.
fn node_problem(n: &NodePlan, kind: Kind, why: String) -> Problem {
    Problem {
        kind,
        site: Some(n.site.clone()),
        node: Some(n.name.clone()),
        peer: None,
        why,
    }
}

/// `unreachable`: SSH to `n` failed with `err`; `path` are the hosts its SSH path crosses, named
/// when they are down themselves.
fn unreachable(v: &View, n: &NodePlan, err: &str, path: &[String]) -> Problem {
    let iface = v.iface();
    let via: Vec<String> = path
        .iter()
        .filter_map(|h| match v.health(h) {
            Health::Up => None,
            Health::InterfaceDown => Some(format!("{h} (its {iface} is down)")),
            Health::Unreachable => Some(format!("{h} (unreachable)")),
        })
        .collect();
    let via = if via.is_empty() {
        String::new()
    } else {
        format!("; its SSH path crosses {}", via.join(", "))
    };
    node_problem(
        n,
        Kind::Unreachable,
        format!(
            "SSH to {} ({}:{}) failed: {err}{via}; its links are judged from their other ends only",
            n.name, n.ssh.host, n.ssh.port
        ),
    )
}

/// The peers `n`'s interface shows, each named after the planned peer it is.
fn peer_statuses(v: &View, n: &NodePlan, o: &Observed, wg: &WgState) -> Vec<PeerStatus> {
    let planned = v.topo.peers(n);
    wg.peers
        .iter()
        .map(|p| {
            let plan = planned
                .iter()
                .find(|pp| v.live(wg, pp).is_some_and(|x| x.public_key == p.public_key));
            PeerStatus {
                peer: plan
                    .map(peer_label)
                    .unwrap_or_else(|| format!("unknown {}", short_key(&p.public_key))),
                public_key: p.public_key.clone(),
                endpoint: plan.and_then(|pp| pp.endpoint.clone()),
                seen_at: p.endpoint.clone(),
                handshake_age: age(o, p),
                rx: p.rx,
                tx: p.tx,
            }
        })
        .collect()
}

/// `interface_down`: the interface is missing or down (`hub`: an OpenWrt hub, set up by uci).
fn interface_down(v: &View, n: &NodePlan, o: &Observed, hub: bool) -> Option<Problem> {
    if o.iface_up {
        return None;
    }
    let iface = v.iface();
    let why = if hub {
        format!(
            "{iface} is not up on {}: every link of {} is down until it is (ifup {iface}; wgprov apply sets it through uci and brings it up)",
            n.name, n.name
        )
    } else if o.facts.wg.is_none() {
        format!(
            "{iface} does not exist on {}: bring it up (wg-quick up {iface}, or systemctl start wg-quick@{iface}); every link of {} is down until then",
            n.name, n.name
        )
    } else {
        format!(
            "{iface} exists on {} but is down (ip link set {iface} up)",
            n.name
        )
    };
    Some(node_problem(n, Kind::InterfaceDown, why))
}

/// `forwarding_off`: a next-hop with `net.ipv4.ip_forward = 0`, or with dual stack
/// `net.ipv6.conf.all.forwarding = 0`.
fn forwarding_off(net: &crate::inventory::Network, n: &NodePlan, o: &Observed) -> Vec<Problem> {
    let families = [
        (
            o.ip_forward,
            "net.ipv4.ip_forward",
            format!(
                "the members of {} cannot reach other sites, nor other sites them",
                n.site
            ),
        ),
        (
            o.ip6_forward.filter(|_| net.wireguard_cidr6.is_some()),
            "net.ipv6.conf.all.forwarding",
            format!("IPv6 between {} and the other sites stops there", n.site),
        ),
    ];
    families
        .into_iter()
        .filter(|(on, _, _)| n.is_next_hop && *on == Some(false))
        .map(|(_, key, what)| {
            node_problem(
                n,
                Kind::ForwardingOff,
                format!(
                    "{} is site {}'s next-hop but {key} = 0: {what} (sysctl -w {key}=1; wgprov apply writes /etc/sysctl.d/99-wgprov.conf)",
                    n.name, n.site
                ),
            )
        })
        .collect()
}

/// `drift`: the running interface differs from its file. A kind of host whose script checks
/// itself (an OpenWrt hub) has no file to compare with: its script's own check says whether
/// uci and the running interface are as it sets them.
fn drift_rule(
    v: &View,
    n: &NodePlan,
    o: &Observed,
    kind: crate::hosts::kind::HostKind,
) -> Option<Problem> {
    if kind.checked_script().is_some() {
        let d = kind.script_drift(&o.facts)?;
        return Some(node_problem(
            n,
            Kind::Drift,
            format!("{d} (wgprov apply sets them again)"),
        ));
    }
    let wg = o.facts.wg.as_ref().filter(|_| o.iface_up)?;
    let iface = v.iface();
    let conf = o
        .facts
        .files
        .get(&conf_path(iface))
        .and_then(|f| f.content());
    let diffs = match conf {
        Some(c) => drift(
            c,
            &crate::hosts::failover::as_filed(wg, &crate::hosts::failover::states(&o.facts)),
            &|k| v.name_of(k),
        ),
        None => vec![format!("{} does not exist", conf_path(iface))],
    };
    (!diffs.is_empty()).then(|| {
        node_problem(
            n,
            Kind::Drift,
            format!(
                "the running {iface} differs from {}: {} (wgprov apply brings it back to the file)",
                conf_path(iface),
                diffs.join("; ")
            ),
        )
    })
}

/// `kubelet_node_ip`: the file that sets the kubelet's node IP sets another address than the
/// WireGuard one (a node without that file is not judged).
fn kubelet_node_ip(net: &crate::inventory::Network, n: &NodePlan, o: &Observed) -> Option<Problem> {
    let os = o
        .facts
        .os_family
        .or(n.os_family)
        .unwrap_or(OsFamily::Debian);
    let path = node_ip_path(n.kubernetes, os);
    let k = o.facts.files.get(path).and_then(|f| f.content())?;
    let want = crate::desired::node_ips(net, n).join(",");
    let have = node_ip_in(n.kubernetes, k);
    (have.as_deref() != Some(want.as_str())).then(|| {
        node_problem(
            n,
            Kind::KubeletNodeIp,
            format!(
                "{path} sets {}, not the WireGuard address {want}: the kubelet registers the node at the wrong address (wgprov apply sets it to {want})",
                match have {
                    Some(ip) => format!("node IP {ip}"),
                    None => "no node IP".into(),
                }
            ),
        )
    })
}

/// The node IP a node-IP file sets: `--node-ip` in kubeadm's defaults file, `node-ip:` in a
/// k3s/rke2 config file.
fn node_ip_in(flavor: Flavor, text: &str) -> Option<String> {
    match flavor {
        Flavor::Kubeadm => kubelet::node_ip(text),
        Flavor::K3s | Flavor::Rke2 => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("node-ip:"))
            // `10.100.0.1`, or a list `["10.100.0.1", "fd10:100::1"]`: as `a,b`
            .map(|v| {
                v.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|x| x.trim().trim_matches('"').trim_matches('\''))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .next_back(),
    }
}
