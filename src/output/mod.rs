//! What the offline commands print: the address plan (text and JSON) and the Graphviz graph.

use std::fmt::Write as _;

use serde::Serialize;

use crate::topology::{PeerRef, Topology};

pub mod openmetrics;
pub mod progress;
pub mod svg;

#[derive(Serialize)]
struct PlanDoc<'a> {
    network: NetworkDoc<'a>,
    sites: Vec<SiteDoc<'a>>,
    /// Rules to create by hand on the routers wgprov does not manage.
    router_rules: Vec<String>,
    /// Hub routers wgprov does not manage: the tunnel and peers to create (offline: the nodes'
    /// keys are not known yet).
    router_hubs: Vec<crate::hosts::hub::Hub>,
    /// Pairs of sites without an endpoint that reach each other through a relay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relayed_links: Vec<RelayedDoc>,
    /// Nodes being taken out (`state: absent`), and the addresses retired for good.
    removed: Vec<RemovedDoc>,
    retired: Vec<RetiredDoc>,
}

#[derive(Serialize)]
struct RemovedDoc {
    name: String,
    site: String,
}

#[derive(Serialize)]
struct RetiredDoc {
    site: String,
    /// The site's block, when the whole site was removed.
    block: Option<String>,
    /// Node name to the address it held.
    nodes: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RelayedDoc {
    a: String,
    b: String,
    relay: String,
    /// The next-hops the traffic crosses, when wgprov runs them: a's, the relay's, b's.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<[String; 3]>,
}

fn relayed_docs(topo: &Topology) -> Vec<RelayedDoc> {
    let links = topo.relayed_links();
    topo.relayed()
        .into_iter()
        .map(|r| RelayedDoc {
            path: links
                .iter()
                .find(|l| l.sites == r)
                .map(|l| [l.from.clone(), l.via.clone(), l.to.clone()]),
            a: r.a,
            b: r.b,
            relay: r.relay,
        })
        .collect()
}

#[derive(Serialize)]
struct NetworkDoc<'a> {
    wireguard_cidr: String,
    site_prefix: u8,
    listen_port: u16,
    interface: &'a str,
    cluster_cidrs: Option<Vec<String>>,
    persistent_keepalive: u16,
    mtu: u16,
    kubernetes: &'static str,
    cni_mtu: Vec<CniMtu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wireguard_cidr6: Option<String>,
}

/// The MTU a CNI must be given on top of wg0: its own encapsulation comes out of wg0's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniMtu {
    /// The CNI and its mode.
    pub cni: &'static str,
    /// The MTU to configure.
    pub mtu: u16,
    /// Where that is set.
    pub setting: &'static str,
}

/// The MTUs to give the usual CNIs when pod traffic crosses wg0 with MTU `mtu`.
pub fn cni_mtus(mtu: u16) -> Vec<CniMtu> {
    let c = |cni, overhead: u16, setting| CniMtu {
        cni,
        mtu: mtu - overhead,
        setting,
    };
    vec![
        c(
            "flannel (VXLAN; k3s's default)",
            50,
            "flannel derives it from the interface it uses: with flannel-iface wg0 it picks this itself",
        ),
        c(
            "Calico IPIP",
            20,
            "veth_mtu in the calico-config ConfigMap (or FelixConfiguration mtu)",
        ),
        c(
            "Calico VXLAN",
            50,
            "veth_mtu in the calico-config ConfigMap (or FelixConfiguration mtu)",
        ),
        c(
            "Cilium VXLAN or Geneve",
            50,
            "--set mtu=… (Helm) / mtu in the cilium-config ConfigMap",
        ),
        c(
            "Cilium native routing",
            0,
            "--set mtu=… (Helm) / mtu in the cilium-config ConfigMap",
        ),
    ]
}

#[derive(Serialize)]
struct SiteDoc<'a> {
    name: &'a str,
    managed: bool,
    wireguard_cidr: String,
    endpoint: Option<String>,
    next_hop: Option<&'a str>,
    router: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    managed_router: Option<ManagedRouterDoc>,
    lan_cidrs: Vec<String>,
    public_key: Option<String>,
    wan_mtu: u16,
    nodes: Vec<NodeDoc<'a>>,
    /// The relay it reaches the other sites without an endpoint through (none has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<&'a str>,
}

#[derive(Serialize)]
struct ManagedRouterDoc {
    name: String,
    kind: &'static str,
    address: String,
    wan_interface: String,
    port_forward: Option<String>,
}

#[derive(Serialize)]
struct NodeDoc<'a> {
    name: &'a str,
    address: &'a str,
    wireguard_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    wireguard_ip6: Option<String>,
    next_hop: bool,
    os_family: Option<&'static str>,
    kubernetes: &'static str,
    peers: Vec<PeerDoc>,
}

#[derive(Serialize)]
struct PeerDoc {
    peer: String,
    kind: &'static str,
    site: String,
    allowed_ips: Vec<String>,
    endpoint: Option<String>,
    persistent_keepalive: Option<u16>,
    /// The sites whose blocks ride on this peer because it is their relay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relays: Vec<String>,
}

/// The sites whose traffic `n` sends to the peer of site `peer_site` because it relays for them.
fn relayed_through(topo: &Topology, n: &crate::topology::NodePlan, peer_site: &str) -> Vec<String> {
    if !n.is_next_hop {
        return Vec::new();
    }
    topo.sites
        .iter()
        .filter(|o| {
            topo.relay_between(&n.site, &o.name)
                .is_some_and(|r| r.name == peer_site)
        })
        .map(|o| o.name.clone())
        .collect()
}

/// A node's peers as the plan's JSON shows them.
fn peer_docs(topo: &Topology, n: &crate::topology::NodePlan) -> Vec<PeerDoc> {
    topo.peers(n)
        .into_iter()
        .map(|p| {
            let allowed_ips = topo.allowed_ips(&p);
            let (peer, kind) = match p.peer {
                PeerRef::Node(x) => (x, "node"),
                PeerRef::Site(x) => (x, "site"),
            };
            PeerDoc {
                relays: relayed_through(topo, n, &p.site),
                peer,
                kind,
                site: p.site,
                allowed_ips,
                endpoint: p.endpoint,
                persistent_keepalive: p.persistent_keepalive,
            }
        })
        .collect()
}

fn plan_doc(topo: &Topology) -> PlanDoc<'_> {
    let net = &topo.network;
    let sites = topo
        .sites
        .iter()
        .map(|s| SiteDoc {
            name: &s.name,
            managed: s.managed,
            wireguard_cidr: s.wireguard_cidr.to_string(),
            endpoint: s.endpoint.as_ref().map(|e| e.to_string()),
            next_hop: s.next_hop.as_deref(),
            router: s.router.as_str(),
            managed_router: s.managed_router.as_ref().map(|r| ManagedRouterDoc {
                name: r.name.clone(),
                kind: r.kind.as_str(),
                address: r.address.clone(),
                wan_interface: r.wan_interface.to_string(),
                port_forward: crate::hosts::forward(topo, s).map(|f| f.to_string()),
            }),
            lan_cidrs: s.lan_cidrs.iter().map(|c| c.to_string()).collect(),
            public_key: s.public_key.map(|k| k.to_base64()),
            wan_mtu: s.wan_mtu,
            nodes: s
                .nodes
                .iter()
                .filter_map(|n| topo.node(n))
                .map(|n| NodeDoc {
                    name: &n.name,
                    address: &n.address,
                    wireguard_ip: n.wireguard_ip.to_string(),
                    wireguard_ip6: net.ip6_of(n.wireguard_ip).map(|a| a.to_string()),
                    next_hop: n.is_next_hop,
                    os_family: n.os_family.map(|o| o.as_str()),
                    kubernetes: n.kubernetes.as_str(),
                    peers: peer_docs(topo, n),
                })
                .collect(),
            relay: relay_of(topo, s),
        })
        .collect();
    PlanDoc {
        network: NetworkDoc {
            wireguard_cidr: net.wireguard_cidr.to_string(),
            site_prefix: net.site_prefix,
            listen_port: net.listen_port,
            interface: &net.interface,
            cluster_cidrs: net
                .cluster_cidrs
                .as_ref()
                .map(|c| c.iter().map(|x| x.to_string()).collect()),
            persistent_keepalive: net.persistent_keepalive,
            mtu: net.mtu,
            kubernetes: net.kubernetes.as_str(),
            cni_mtu: cni_mtus(net.mtu),
            wireguard_cidr6: net.wireguard_cidr6.map(|(s, _)| s.to_string()),
        },
        sites,
        router_rules: crate::hosts::manual_rules(topo),
        router_hubs: crate::hosts::hub::hubs(topo, &|_| None),
        relayed_links: relayed_docs(topo),
        removed: topo
            .removed
            .iter()
            .map(|n| RemovedDoc {
                name: n.name.clone(),
                site: n.site.clone(),
            })
            .collect(),
        retired: topo
            .allocation
            .retired
            .iter()
            .map(|(site, r)| RetiredDoc {
                site: site.clone(),
                block: r.block.map(|b| b.to_string()),
                nodes: r
                    .nodes
                    .iter()
                    .map(|(n, ip)| (n.clone(), ip.to_string()))
                    .collect(),
            })
            .collect(),
    }
}

/// The relay `s` goes through, when it goes through one.
fn relay_of<'a>(topo: &'a Topology, s: &crate::topology::SitePlan) -> Option<&'a str> {
    topo.relayed()
        .iter()
        .find(|r| r.a == s.name || r.b == s.name)
        .and_then(|r| topo.site(&r.relay))
        .map(|r| r.name.as_str())
}

/// `plan --format json`: network, sites, nodes with their peers, written to `w`.
pub fn write_plan_json(topo: &Topology, w: impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(w, &plan_doc(topo)).map_err(std::io::Error::other)
}

/// `plan --format json` as a value (for tests and callers that post-process it).
pub fn plan_json(topo: &Topology) -> serde_json::Value {
    serde_json::to_value(plan_doc(topo)).expect("plan serializes")
}

/// `plan` as text: one block per site, one line per node, one line per peer.
pub fn plan_text(topo: &Topology) -> String {
    let mut o = network_text(topo);
    for s in &topo.sites {
        o.push_str(&site_text(topo, s));
    }
    o.push_str(&relayed_text(topo));
    o.push_str(&router_rules_text(&crate::hosts::manual_rules(topo)));
    o.push_str(&router_hubs_text(&crate::hosts::hub::hubs(topo, &|_| None)));
    o.push_str(&removed_text(topo));
    o
}

/// The nodes `apply` takes out, and the addresses retired for good.
fn removed_text(topo: &Topology) -> String {
    let mut o = String::new();
    if !topo.removed.is_empty() {
        let _ = writeln!(
            o,
            "
taken out by the next apply (state: absent): dropped by their peers, cleaned"
        );
        for n in &topo.removed {
            let _ = writeln!(o, "  {} (site {})", n.name, n.site);
        }
    }
    if !topo.allocation.retired.is_empty() {
        let _ = writeln!(
            o,
            "
retired addresses (never handed out again):"
        );
        for (site, r) in &topo.allocation.retired {
            if let Some(b) = r.block {
                let _ = writeln!(o, "  site {site}  {b}");
            }
            for (n, ip) in &r.nodes {
                let _ = writeln!(o, "  {n} (site {site})  {ip}");
            }
        }
    }
    o
}

/// The plan's first lines: the network, the MTU each CNI should use, the cluster CIDRs.
fn network_text(topo: &Topology) -> String {
    let net = &topo.network;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "network {}  /{} per site  {} port {}  keepalive {}s  mtu {}  kubernetes {}",
        net.wireguard_cidr,
        net.site_prefix,
        net.interface,
        net.listen_port,
        net.persistent_keepalive,
        net.mtu,
        net.kubernetes.as_str()
    );
    if let Some((space6, prefix6)) = net.wireguard_cidr6 {
        let _ = writeln!(
            o,
            "dual stack: {space6}  /{prefix6} per site (each node's IPv6 address mirrors its IPv4 one)"
        );
    }
    let _ = writeln!(
        o,
        "MTU for the CNI on top of {} (mtu {}):",
        net.interface, net.mtu
    );
    for c in cni_mtus(net.mtu) {
        let _ = writeln!(o, "  {:<32} {:>4}  {}", c.cni, c.mtu, c.setting);
    }
    if let Some(cc) = &net.cluster_cidrs {
        let list: Vec<String> = cc.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(o, "cluster CIDRs {}", list.join(", "));
    }
    o
}

/// A site's block of the plan: its line, its nodes with their peers, its managed router.
fn site_text(topo: &Topology, s: &crate::topology::SitePlan) -> String {
    let net = &topo.network;
    let mut o = String::new();
    let ep = match (&s.endpoint, relay_of(topo, s)) {
        (Some(e), _) => format!("endpoint {e}"),
        (None, Some(r)) => format!("no endpoint (relay {r})"),
        (None, None) => "no endpoint".into(),
    };
    if !s.managed {
        let _ = writeln!(
            o,
            "\nsite {}  {}  {}  (unmanaged)",
            s.name, s.wireguard_cidr, ep
        );
        return o;
    }
    let _ = writeln!(
        o,
        "\nsite {}  {}  {}  next-hop {}{}  router {}{}",
        s.name,
        s.wireguard_cidr,
        ep,
        match (&s.next_hop, &s.router_address) {
            (Some(n), _) => n.as_str(),
            (None, Some(_)) => "the router (set up by hand)",
            (None, None) => "-",
        },
        s.standby
            .as_ref()
            .map_or(String::new(), |b| match &b.endpoint {
                Some(e) => format!("  standby {} (endpoint {e})", b.node),
                None => format!("  standby {}", b.node),
            }),
        match &s.managed_router {
            Some(r) => format!(
                "{} (managed: {} at {}, WAN {})",
                r.kind.as_str(),
                r.name,
                r.address,
                r.wan_interface
            ),
            None => s.router.as_str().to_string(),
        },
        if s.wan_mtu == 1500 {
            String::new()
        } else {
            format!("  wan_mtu {}", s.wan_mtu)
        }
    );
    for n in s.nodes.iter().filter_map(|n| topo.node(n)) {
        o.push_str(&node_text(topo, n));
    }
    if let Some(r) = &s.managed_router {
        if let Some(f) = crate::hosts::forward(topo, s) {
            let _ = writeln!(o, "  router {:<9} port-forward {f}", r.name);
            if let Some(f) = crate::hosts::standby_forward(topo, s) {
                let _ = writeln!(o, "  router {:<9} port-forward {f}", r.name);
            }
        } else if s.next_hop.as_deref() == Some(r.name.as_str()) {
            let _ = writeln!(
                o,
                "  router {} is the site's hub: its wg0 listens on UDP {} on the WAN ({}) itself, no port-forward",
                r.name, net.listen_port, r.wan_interface
            );
        }
    }
    o
}

/// The block listing the pairs of sites that reach each other through a relay (empty when
/// there are none).
fn relayed_text(topo: &Topology) -> String {
    let links = topo.relayed_links();
    let mut o = String::new();
    for r in topo.relayed() {
        if o.is_empty() {
            o.push_str("\nRELAYED LINKS (neither site has an endpoint: the relay's next-hop forwards between them):\n");
        }
        let _ = write!(o, "  {r}");
        if let Some(l) = links.iter().find(|l| l.sites == r) {
            let _ = write!(o, "  ({} -> {} -> {})", l.from, l.via, l.to);
        }
        o.push('\n');
    }
    o
}

/// A node's line of the plan, then one line per peer.
fn node_text(topo: &Topology, n: &crate::topology::NodePlan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:<16} {:<15}{} lan {}{}{}",
        n.name,
        n.wireguard_ip,
        topo.network
            .ip6_of(n.wireguard_ip)
            .map(|a| format!(" {a:<15}"))
            .unwrap_or_default(),
        n.address,
        match (n.is_next_hop, n.is_standby) {
            (true, _) => "  next-hop",
            (_, true) => "  standby next-hop",
            _ => "",
        },
        if n.kubernetes == topo.network.kubernetes {
            String::new()
        } else {
            format!("  kubernetes {}", n.kubernetes.as_str())
        }
    );
    for p in topo.peers(n) {
        let who = match &p.peer {
            PeerRef::Node(x) => x.clone(),
            PeerRef::Site(x) => format!("site {x}"),
        };
        let allowed = topo.allowed_ips(&p);
        let _ = write!(o, "    peer {:<16} allowed {}", who, allowed.join(","));
        if let Some(e) = &p.endpoint {
            let _ = write!(o, "  endpoint {e}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = write!(o, "  keepalive {k}");
        }
        let relays = relayed_through(topo, n, &p.site);
        if !relays.is_empty() {
            let _ = write!(o, "  relays to {}", relays.join(", "));
        }
        o.push('\n');
    }
    o
}

/// The block listing the hub routers to set up by hand (empty when there are none).
pub fn router_hubs_text(hubs: &[crate::hosts::hub::Hub]) -> String {
    if hubs.is_empty() {
        return String::new();
    }
    format!(
        "\nHUB ROUTERS TO SET UP BY HAND (wgprov does not manage these routers; skip what is already in place):\n{}",
        crate::hosts::hub::text(hubs)
    )
}

/// The topology as Graphviz DOT: sites as clusters, next-hops drawn double, links between
/// sites bold, every link labelled with the endpoints its two ends use.
pub fn graph_dot(topo: &Topology) -> String {
    svg::picture(topo, None)
}

/// The block listing the router rules still to be done by hand (empty when there are none).
fn router_rules_text(rules: &[String]) -> String {
    if rules.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "\nROUTER RULES TO DO BY HAND (wgprov does not manage these routers; skip those already in place):\n",
    );
    for r in rules {
        let _ = writeln!(o, "  {r}");
    }
    o
}

/// `apply` as text: one line per host per file, diffs with `--diff`, handlers, warnings, and
/// a recap line per host like Ansible's.
pub fn apply_text(report: &crate::apply::Report, show_diff: bool, timings: bool) -> String {
    let mut o = String::new();
    let verb = if report.check { "would run" } else { "ran" };
    for h in &report.hosts {
        o.push_str(&host_text(h, show_diff, verb));
    }
    for w in &report.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    if let Some(g) = &report.guard {
        o.push_str(&guard_text(g));
    }
    if report.interrupted {
        let _ = writeln!(o, "\nSTOPPED by the operator: no new host was started");
    }
    o.push_str(&router_rules_text(&report.router_rules));
    o.push_str(&router_hubs_text(&report.router_hubs));
    o.push_str(&recap_text(report, timings));
    o
}

/// A host's lines of `apply`: its files (with their diffs), drift, the handlers (`verb`: ran or
/// would run), warnings, and its error.
fn host_text(h: &crate::apply::HostReport, show_diff: bool, verb: &str) -> String {
    use crate::apply::HostStatus;
    let mut o = String::new();
    for c in &h.changes {
        let _ = writeln!(o, "{}: {} {}", h.name, c.action.as_str(), c.path);
        if show_diff && !c.diff.is_empty() {
            for l in c.diff.lines() {
                let _ = writeln!(o, "    {l}");
            }
        }
    }
    for d in &h.drift {
        let _ = writeln!(o, "{}: drift: {d}", h.name);
    }
    if h.status != HostStatus::Unreachable && h.error.is_none()
        || h.status == HostStatus::RolledBack
    {
        for hd in &h.handlers {
            let _ = writeln!(o, "{}: handler {hd} ({verb})", h.name);
        }
    }
    for w in &h.warnings {
        let _ = writeln!(o, "{}: warning: {w}", h.name);
    }
    if let Some(e) = &h.error {
        let what = match h.status {
            HostStatus::Unreachable => "UNREACHABLE",
            HostStatus::RolledBack => "FAILED, ROLLED BACK",
            HostStatus::Reverted => "REVERTED",
            HostStatus::Changed => "NOTE",
            _ => "FAILED",
        };
        let _ = writeln!(o, "{}: {what}: {e}", h.name);
    }
    o
}

/// What the guard decided, and the links behind the decision.
fn guard_text(g: &crate::apply::GuardReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nGUARD {}: {} (links up before: {}, answering after: {}; gate {:.1} s)",
        g.outcome.as_str().to_uppercase(),
        g.why,
        g.links_before,
        g.links_after,
        g.gate_seconds
    );
    for l in &g.broken {
        let _ = writeln!(o, "  broken: {l}");
    }
    for l in &g.new_down {
        let _ = writeln!(o, "  new link down: {l}");
    }
    for l in &g.unknown {
        let _ = writeln!(o, "  could not be probed: {l}");
    }
    if !g.left_to_dead_man.is_empty() {
        let _ = writeln!(
            o,
            "  not reachable now, put back by their own dead-man: {}",
            g.left_to_dead_man.join(", ")
        );
    }
    o
}

/// The recap: its heading, then one line of counts per host (and its timings with `timings`).
fn recap_text(report: &crate::apply::Report, timings: bool) -> String {
    use crate::apply::HostStatus;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n{}RECAP {}",
        if report.check { "CHECK " } else { "" },
        "*".repeat(60)
    );
    let width = report
        .hosts
        .iter()
        .map(|h| h.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    for h in &report.hosts {
        let changed = if matches!(
            h.status,
            HostStatus::Changed | HostStatus::RolledBack | HostStatus::Reverted
        ) {
            h.changed()
        } else {
            0
        };
        let failed = usize::from(matches!(
            h.status,
            HostStatus::Failed | HostStatus::RolledBack | HostStatus::Reverted
        ));
        let unreachable = usize::from(h.status == HostStatus::Unreachable);
        let ok = if unreachable + failed > 0 {
            0
        } else {
            h.changes.len() + h.handlers.len()
        };
        let _ = write!(
            o,
            "{:<width$} : ok={ok:<4} changed={changed:<4} failed={failed:<4} unreachable={unreachable:<4}",
            h.name
        );
        if h.status == HostStatus::RolledBack {
            o.push_str(" rolled_back=1");
        }
        if h.status == HostStatus::Reverted {
            o.push_str(" reverted=1");
        }
        if timings {
            let t = &h.timings;
            let _ = write!(
                o,
                "  connect={:.3}s facts={:.3}s apply={:.3}s guard={:.3}s",
                t.connect, t.facts, t.apply, t.guard
            );
        }
        o.push('\n');
    }
    o
}

/// `apply --format json`: hosts by name with status and changes, and the summary.
pub fn apply_json(report: &crate::apply::Report) -> serde_json::Value {
    let mut hosts = serde_json::Map::new();
    for h in &report.hosts {
        hosts.insert(
            h.name.clone(),
            serde_json::to_value(h).expect("host report serializes"),
        );
    }
    let mut doc = serde_json::json!({
        "hosts": hosts,
        "summary": report.summary(),
        "check": report.check,
        "warnings": report.warnings,
        "router_rules": report.router_rules,
        "router_hubs": report.router_hubs,
    });
    if let Some(g) = &report.guard {
        doc["guard"] = serde_json::to_value(g).expect("guard report serializes");
    }
    if report.interrupted {
        doc["interrupted"] = serde_json::Value::Bool(true);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_rules_to_do_by_hand_end_apply_once_and_plan_too() {
        let report = crate::apply::Report {
            hosts: Vec::new(),
            warnings: Vec::new(),
            check: false,
            guard: None,
            interrupted: false,
            router_rules: vec!["site home (router: other): forward UDP port 51820 …".into()],
            router_hubs: Vec::new(),
        };
        let t = apply_text(&report, false, false);
        assert_eq!(t.matches("ROUTER RULES TO DO BY HAND").count(), 1, "{t}");
        assert!(t.contains("\n  site home (router: other): forward UDP port 51820"));
        assert!(t.find("ROUTER RULES").unwrap() < t.find("RECAP").unwrap());
        assert_eq!(
            apply_json(&report)["router_rules"][0],
            report.router_rules[0]
        );
        let none = crate::apply::Report {
            router_rules: Vec::new(),
            router_hubs: Vec::new(),
            ..report
        };
        assert!(!apply_text(&none, false, false).contains("ROUTER RULES"));

        let text = include_str!("../../inventories/demo.yaml");
        let inv = crate::inventory::load_str(std::path::Path::new("demo.yaml"), text)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let plan = plan_text(&topo);
        assert_eq!(plan.matches("\n  site ").count(), 3, "{plan}");
        assert_eq!(
            plan_json(&topo)["router_rules"].as_array().unwrap().len(),
            3
        );
    }

    /// vps relays for north and south (no endpoint); office has an endpoint.
    const RELAYED: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n  relay: vps\nsites:\n  vps:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      v1: {address: 192.168.5.10}\n  north:\n    nodes:\n      n1: {address: 192.168.1.10}\n  south:\n    nodes:\n      s1: {address: 192.168.2.10}\n  office:\n    endpoint: 198.51.100.20:51820\n    nodes:\n      o1: {address: 192.168.3.10}\n";

    fn relayed_topo() -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("t.yaml"), RELAYED)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    #[test]
    fn plan_shows_relayed_links_as_relayed_in_text_and_json() {
        let t = relayed_topo();
        let text = plan_text(&t);
        assert!(
            text.contains("RELAYED LINKS")
                && text.contains("  north -> south via relay vps  (n1 -> v1 -> s1)\n"),
            "{text}"
        );
        assert!(
            text.contains("site north  10.100.1.0/24  no endpoint (relay vps)"),
            "{text}"
        );
        assert!(
            text.contains("peer v1               allowed 10.100.0.0/24,10.100.2.0/24  endpoint 203.0.113.10:51820  keepalive 25  relays to south\n"),
            "{text}"
        );
        assert_eq!(text.matches("relays to").count(), 2, "{text}");
        let v = plan_json(&t);
        assert_eq!(
            v["relayed_links"],
            serde_json::json!([{"a": "north", "b": "south", "relay": "vps", "path": ["n1", "v1", "s1"]}])
        );
        assert_eq!(v["sites"][1]["relay"], "vps");
        assert_eq!(v["sites"][3].get("relay"), None, "office needs no relay");
        let n1_peers = v["sites"][1]["nodes"][0]["peers"].as_array().unwrap();
        assert_eq!(
            n1_peers.len(),
            2,
            "the relay and the office, not south: {n1_peers:?}"
        );
        assert_eq!(n1_peers[0]["relays"], serde_json::json!(["south"]));
        assert_eq!(n1_peers[1].get("relays"), None);
        // no relay: no block and no key
        let plain = crate::inventory::load_str(
            std::path::Path::new("t.yaml"),
            &RELAYED.replace("  north:\n", "  north:\n    endpoint: 192.0.2.9:51820\n"),
        )
        .unwrap()
        .inventory;
        let plain = Topology::build(&plain, &Default::default()).unwrap().0;
        assert!(!plan_text(&plain).contains("RELAYED"));
        assert_eq!(plan_json(&plain).get("relayed_links"), None);
    }

    #[test]
    fn the_graph_draws_a_relayed_link_dashed_via_its_relay() {
        let dot = graph_dot(&relayed_topo());
        assert!(
            dot.contains("\"n1\" -- \"s1\" [style=dashed, label=\"via relay vps (v1)\"];"),
            "{dot}"
        );
        let h = svg::health_dot(&relayed_topo(), &[("n1".into(), "s1".into(), false)]);
        assert!(
            h.contains("\"n1\" -- \"s1\" [color=red, fontcolor=red, style=dashed, penwidth=3, label=\"DOWN\\nvia relay vps (v1)\"];"),
            "{h}"
        );
    }
}
