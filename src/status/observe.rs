//! Observation: the status script each node runs (pings, then its interface, forwarding and
//! files), its parse, and [`status`], which reads every node over the fleet runner and hands
//! what it saw to the rules.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::facts::gather::{self, Facts};
use crate::fleet::{Connect, Progress, Sessions, close_all, connect_all, run_all, with_jumps};
use crate::inventory::{Flavor, OsFamily};
use crate::probe;
use crate::shell::{InterfaceName, RemotePath, sh_quote};
use crate::topology::{NodePlan, Topology};
use crate::transport::{Transport, TransportError};

use super::paths::{conf_path, node_ip_path};
use super::report::StatusReport;
use super::rules::{diagnose, peer_ip, router_problems};

/// How long each ping waits for its first answer: one lost handshake initiation is retried
/// after 5 s, so a healthy link answers within this even when its first try is lost.
pub const PROBE_WAIT: Duration = Duration::from_secs(6);

/// Delimiter of the status-only lines of the script's output.
pub const MARK: &str = "@@WGPROV-STATUS@@";

/// What one node showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Its facts: the interface (`wg show dump`), the files, the OS family, its clock.
    pub facts: Facts,
    /// The interface exists and is administratively up.
    pub iface_up: bool,
    /// `net.ipv4.ip_forward`, when it could be read.
    pub ip_forward: Option<bool>,
    /// `net.ipv6.conf.all.forwarding`, when it could be read.
    pub ip6_forward: Option<bool>,
    /// Each pinged WireGuard address and whether it answered.
    pub answered: BTreeMap<Ipv4Addr, bool>,
}

/// Why a host (a node, or a managed router) could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// The run made no connection to it.
    #[error("not contacted")]
    NotContacted,
    /// Connecting, or running the script, failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The script's output could not be read (it says why).
    #[error(transparent)]
    Output(#[from] crate::facts::gather::FactsError),
}

/// Every node's observation, or why it could not be made (SSH failed).
pub type Observations = HashMap<String, std::result::Result<Observed, ObserveError>>;

/// A managed router's facts, or why they could not be read.
pub type RouterFacts = HashMap<String, std::result::Result<Facts, ObserveError>>;

/// The WireGuard addresses `node` pings: its planned peers that are managed nodes, a hub
/// router set up by hand (its `.1` answers when the operator set it up as `plan` said), and
/// the next-hops it reaches through a relay.
pub fn probe_targets(topo: &Topology, node: &NodePlan) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = topo
        .peers(node)
        .iter()
        .filter_map(|p| peer_ip(topo, p))
        .collect();
    for l in topo.relayed_links() {
        let other = match node.name.as_str() {
            n if n == l.from => &l.to,
            n if n == l.to => &l.from,
            _ => continue,
        };
        v.extend(topo.node(other).map(|o| o.wireguard_ip));
    }
    v
}

/// `wait`), then the interface's state, forwarding, and the facts (files and `wg show dump`,
/// and the `extra` facts sections: an OpenWrt hub's check).
pub fn script(
    iface: &InterfaceName,
    targets: &[Ipv4Addr],
    paths: &[RemotePath],
    (extra, six): (&str, &dyn Fn(Ipv4Addr) -> Option<std::net::Ipv6Addr>),
    wait: Duration,
) -> String {
    let mut s = String::from("# wgprov:status\n");
    if !targets.is_empty() {
        s.push_str(&probe::ping_script(iface, targets, wait, six));
    }
    let q = sh_quote(iface);
    s.push_str(&format!(
        "S='{MARK}'\n\
         printf '%s ip_forward %s\\n' \"$S\" \"$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)\"\n\
         printf '%s ip6_forward %s\\n' \"$S\" \"$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null)\"\n\
         printf '%s link %s\\n' \"$S\" \"$(ip -o link show dev {q} 2>/dev/null | head -n 1)\"\n"
    ));
    s.push_str(&gather::script_with(iface, paths, extra));
    s
}

/// Reads the output of [`script`].
pub fn parse(stdout: &str, targets: &[Ipv4Addr]) -> std::result::Result<Observed, ObserveError> {
    let facts = gather::parse(stdout).map_err(ObserveError::Output)?;
    let mut o = Observed {
        answered: probe::parse(stdout, targets),
        ..Default::default()
    };
    for l in stdout.lines() {
        let Some(rest) = l.strip_prefix(MARK) else {
            continue;
        };
        let rest = rest.trim();
        let flag = |v: &str| match v.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        };
        if let Some(v) = rest.strip_prefix("ip_forward") {
            o.ip_forward = flag(v);
        } else if let Some(v) = rest.strip_prefix("ip6_forward") {
            o.ip6_forward = flag(v);
        } else if let Some(v) = rest.strip_prefix("link") {
            // `5: wg0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1420 …`
            o.iface_up = v
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"));
        }
    }
    o.iface_up &= facts.wg.is_some();
    o.facts = facts;
    Ok(o)
}

/// Observes every node over the given sessions (a node without one is unreachable), every
/// node at once up to `forks`, each bounded by `wait` plus a margin.
pub async fn observe_all<T: Transport + 'static>(
    topo: &Topology,
    sessions: &Sessions<T>,
    forks: usize,
    wait: Duration,
) -> Observations {
    let iface = topo.network.interface.clone();
    let mut paths = vec![conf_path(&iface)];
    for f in Flavor::ALL {
        for o in OsFamily::ALL {
            let p = node_ip_path(f, o).to_string();
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    let paths: Vec<RemotePath> = paths
        .iter()
        .map(|p| RemotePath::new(p).expect("fixed paths are valid"))
        .collect();
    let names: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
    run_all(names, forks, |n| {
        let s = sessions.get(&n).cloned();
        let targets = topo
            .node(&n)
            .map(|x| probe_targets(topo, x))
            .unwrap_or_default();
        let extra = crate::hosts::kind::HostKind::of(topo, &n)
            .map(|k| k.status_section())
            .unwrap_or_default();
        let script = script(
            &iface,
            &targets,
            &paths,
            (&extra, &|a| topo.network.ip6_of(a)),
            wait,
        );
        async move {
            let s = s.ok_or(ObserveError::NotContacted)??;
            let out = s
                .run_script_within(&script, wait + Duration::from_secs(30))
                .await?;
            parse(&out.stdout_text(), &targets)
        }
    })
    .await
}

/// Reads every node (pings included) and diagnoses the mesh.
pub async fn status<C: Connect>(
    planned: &crate::topology::Planned,
    forks: usize,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<StatusReport> {
    let topo = &planned.topology;
    let sessions = connect_all(
        &connector,
        topo.nodes
            .iter()
            .map(crate::topology::SshTarget::from)
            .collect(),
        forks,
        &progress,
    )
    .await;
    for n in &topo.nodes {
        progress.phase(&n.name, "probing");
    }
    let obs = observe_all(topo, &sessions, forks, PROBE_WAIT).await;
    let router_facts = read_routers(topo, forks, &connector, &progress).await;
    for n in &topo.nodes {
        let outcome = match obs.get(&n.name) {
            Some(Ok(_)) => "read",
            _ => "unreachable",
        };
        progress.done(&n.name, outcome);
    }
    close_all(&sessions).await;
    let mut report = diagnose(topo, &obs);
    report.problems.extend(router_problems(topo, &router_facts));
    Ok(report)
}

/// The facts of the routers wgprov manages that only forward the port (whether wgprov's rules
/// are in place), each read over its own session.
async fn read_routers<C: Connect>(
    topo: &Topology,
    forks: usize,
    connector: &Arc<C>,
    progress: &Arc<dyn Progress>,
) -> RouterFacts {
    // the routers that forward the port: whether wgprov's rules are in place
    let router_names: Vec<String> = topo
        .ssh_targets()
        .into_iter()
        .filter(|t| topo.node(&t.name).is_none())
        .map(|t| t.name)
        .collect();
    // with the nodes they jump through, if any
    let routers = with_jumps(topo, &router_names);
    if routers.is_empty() {
        return HashMap::new();
    }
    let rs = connect_all(connector, routers, forks, progress).await;
    let scripts: HashMap<String, String> = router_names
        .iter()
        .filter_map(|n| crate::hosts::kind::HostKind::of(topo, n).map(|k| (n, k)))
        .map(|(n, k)| {
            let paths = crate::hosts::candidate_paths();
            (n.clone(), k.facts_script(&topo.network.interface, &paths))
        })
        .collect();
    let rs_ref = &rs;
    let out = run_all(router_names, forks, |n| {
        let s = rs_ref.get(&n).cloned();
        let script = scripts.get(&n).cloned().unwrap_or_default();
        async move {
            let s = s.ok_or(ObserveError::NotContacted)??;
            let out = s
                .run_script_within(&script, Duration::from_secs(30))
                .await?;
            crate::facts::gather::parse(&out.stdout_text()).map_err(ObserveError::Output)
        }
    })
    .await;
    close_all(&rs).await;
    out
}
