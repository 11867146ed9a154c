//! `wgprov status`: live mesh health from every node, and a diagnosis that names the culprit.
//!
//! One exec per node, every node at once: the node pings each planned peer over the WireGuard
//! interface (the guard's [`probe`]), then reports its interface (`wg show dump` read *after*
//! the pings, so that an idle link the ping woke shows its fresh handshake), whether the
//! interface is up, `net.ipv4.ip_forward`, and its `wg0.conf` and kubelet file. [`diagnose`]
//! turns those observations into links and problems; it is pure and every rule is unit-tested.
//!
//! What is never evidence: the address:port a peer is seen at. NAT rewrites source ports, a
//! router may map a public port to another private one, and roaming moves peers: a healthy
//! network shows peers at other address:ports than configured all the time. A router is blamed
//! only when several observers agree (see [`diagnose`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::error::Result;
use crate::facts::gather::{self, Facts, PeerState, WgState};
use crate::facts::kubelet;
use crate::fleet::{Connect, Progress, close_all, connect_all, run_all, with_jumps};
use crate::inventory::{Flavor, OsFamily};
use crate::probe;
use crate::shell::{InterfaceName, RemotePath, sh_quote};
use crate::topology::{NodePlan, Peer, PeerRef, Topology};
use crate::transport::Transport;

/// A handshake younger than this means the link works (WireGuard drops a session after 180 s
/// without a new handshake).
pub const FRESH_HANDSHAKE_SECS: u64 = 180;

/// How long each ping waits for its first answer: one lost handshake initiation is retried
/// after 5 s, so a healthy link answers within this even when its first try is lost.
pub const PROBE_WAIT: Duration = Duration::from_secs(6);

/// Delimiter of the status-only lines of the script's output.
pub const MARK: &str = "@@WGPROV-STATUS@@";

/// The kubelet defaults file of `os` (SPEC.md, kubeadm flavor).
pub fn kubelet_path(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Debian => "/etc/default/kubelet",
        OsFamily::Redhat => "/etc/sysconfig/kubelet",
    }
}

/// Where a node of `flavor` has its node IP written (SPEC.md, "What lands on a node").
pub fn node_ip_path(flavor: Flavor, os: OsFamily) -> &'static str {
    match flavor {
        Flavor::Kubeadm => kubelet_path(os),
        Flavor::K3s => "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml",
        Flavor::Rke2 => "/etc/rancher/rke2/config.yaml.d/50-wgprov.yaml",
    }
}

/// The node IP a node-IP file sets: `--node-ip` in kubeadm's defaults file, `node-ip:` in a
/// k3s/rke2 config file.
fn node_ip_in(flavor: Flavor, text: &str) -> Option<String> {
    match flavor {
        Flavor::Kubeadm => kubelet::node_ip(text),
        Flavor::K3s | Flavor::Rke2 => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("node-ip:"))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
            .next_back(),
    }
}

/// The WireGuard config file of `iface`.
pub fn conf_path(iface: &InterfaceName) -> String {
    format!("/etc/wireguard/{iface}.conf")
}

/// What one node showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Its facts: the interface (`wg show dump`), the files, the OS family, its clock.
    pub facts: Facts,
    /// The interface exists and is administratively up.
    pub iface_up: bool,
    /// `net.ipv4.ip_forward`, when it could be read.
    pub ip_forward: Option<bool>,
    /// Each pinged WireGuard address and whether it answered.
    pub answered: BTreeMap<Ipv4Addr, bool>,
}

/// Every node's observation, or why it could not be made (SSH failed).
pub type Observations = HashMap<String, std::result::Result<Observed, String>>;

/// The WireGuard addresses `node` pings: its planned peers that are managed nodes, and a hub
/// router set up by hand (its `.1` answers when the operator set it up as `plan` said).
pub fn probe_targets(topo: &Topology, node: &NodePlan) -> Vec<Ipv4Addr> {
    topo.peers(node)
        .iter()
        .filter_map(|p| peer_ip(topo, p))
        .collect()
}

/// The WireGuard address a peer answers pings at, when wgprov knows one.
fn peer_ip(topo: &Topology, p: &Peer) -> Option<Ipv4Addr> {
    match &p.peer {
        PeerRef::Node(n) => topo.node(n).map(|x| x.wireguard_ip),
        PeerRef::Site(s) => topo
            .site(s)
            .filter(|s| s.managed && s.router_address.is_some())
            .and_then(|s| crate::topology::alloc::hub_ip(s.wireguard_cidr)),
    }
}

/// The status script of one node: the pings first (every target at once, each bounded by
/// `wait`), then the interface's state, forwarding, and the facts (files and `wg show dump`,
/// and the `extra` facts sections: an OpenWrt hub's check).
pub fn script(
    iface: &InterfaceName,
    targets: &[Ipv4Addr],
    paths: &[RemotePath],
    extra: &str,
    wait: Duration,
) -> String {
    let mut s = String::from("# wgprov:status\n");
    if !targets.is_empty() {
        s.push_str(&probe::ping_script(iface, targets, wait));
    }
    let q = sh_quote(iface);
    s.push_str(&format!(
        "S='{MARK}'\n\
         printf '%s ip_forward %s\\n' \"$S\" \"$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)\"\n\
         printf '%s link %s\\n' \"$S\" \"$(ip -o link show dev {q} 2>/dev/null | head -n 1)\"\n"
    ));
    s.push_str(&gather::script_with(iface, paths, extra));
    s
}

/// Reads the output of [`script`].
pub fn parse(stdout: &str, targets: &[Ipv4Addr]) -> std::result::Result<Observed, String> {
    let facts = gather::parse(stdout)?;
    let mut o = Observed {
        answered: probe::parse(stdout, targets),
        ..Default::default()
    };
    for l in stdout.lines() {
        let Some(rest) = l.strip_prefix(MARK) else {
            continue;
        };
        let rest = rest.trim();
        if let Some(v) = rest.strip_prefix("ip_forward") {
            o.ip_forward = match v.trim() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
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

/// One peer as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Who the peer is: a node name, `site NAME` for an unmanaged site, `unknown` for a peer
    /// the plan does not have.
    pub peer: String,
    /// Its public key.
    pub public_key: String,
    /// The endpoint the plan gives it, if any.
    pub endpoint: Option<String>,
    /// Where its packets come from now (NAT and roaming make this differ from `endpoint`:
    /// normal, never evidence of anything).
    pub seen_at: Option<String>,
    /// Seconds since the last handshake; `None`: never.
    pub handshake_age: Option<u64>,
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// True for its site's next-hop.
    pub next_hop: bool,
    /// `up`, `down` (the interface is missing or down) or `unreachable`.
    pub state: String,
    /// Why it is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The interface's public key.
    pub public_key: Option<String>,
    /// The interface's listen port.
    pub listen_port: Option<u16>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Option<bool>,
    /// Its peers as the interface shows them.
    pub peers: Vec<PeerStatus>,
}

/// A planned link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// One end (a node).
    pub from: String,
    /// The other end: a node, or `site NAME` for an unmanaged site.
    pub to: String,
    /// True when it carries traffic: a ping over it was answered, or a handshake completed
    /// in the last 180 s while both ends' interfaces are up.
    pub up: bool,
    /// `up`, `down`, or `unknown` (no end could be asked, or the link to an unmanaged site
    /// has no keepalive and no recent handshake: idle and broken look the same).
    pub state: String,
    /// Between two sites.
    pub cross_site: bool,
    /// The youngest handshake either end saw, in seconds; `None`: none seen.
    pub handshake_age: Option<u64>,
    /// Which end pinged the other, and whether it was answered.
    pub probes: BTreeMap<String, bool>,
}

/// What kind of problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SSH to the node failed.
    Unreachable,
    /// The WireGuard interface is missing or down.
    InterfaceDown,
    /// A next-hop does not forward IPv4.
    ForwardingOff,
    /// A site's router does not forward the WireGuard port to its next-hop.
    PortForwardMissing,
    /// A planned link between two working ends that does not complete a handshake.
    NoHandshake,
    /// The running interface differs from its file.
    Drift,
    /// The kubelet's node IP is not the WireGuard address.
    KubeletNodeIp,
}

impl Kind {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unreachable => "unreachable",
            Kind::InterfaceDown => "interface_down",
            Kind::ForwardingOff => "forwarding_off",
            Kind::PortForwardMissing => "port_forward_missing",
            Kind::NoHandshake => "no_handshake",
            Kind::Drift => "drift",
            Kind::KubeletNodeIp => "kubelet_node_ip",
        }
    }
}

/// One problem, with the culprit and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: Kind,
    /// The site concerned (the node's site, or the site whose router is blamed).
    pub site: Option<String>,
    /// The node concerned.
    pub node: Option<String>,
    /// The peer concerned (the other end of a link).
    pub peer: Option<String>,
    /// Why, and what to do.
    pub why: String,
}

/// The whole mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// Every managed node.
    pub nodes: Vec<NodeStatus>,
    /// Every planned link.
    pub links: Vec<LinkStatus>,
    /// Problems; empty in a healthy network.
    pub problems: Vec<Problem>,
    /// What works now but will not survive a likely event (no effect on the exit code).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl StatusReport {
    /// The links whose health is known, for `status --picture` (unmanaged sites as `site:NAME`).
    pub fn picture_links(&self) -> Vec<crate::output::svg::LinkHealth> {
        let svg = |s: &str| match s.strip_prefix("site ") {
            Some(site) => format!("site:{site}"),
            None => s.to_string(),
        };
        self.links
            .iter()
            .filter(|l| l.state != "unknown")
            .map(|l| (svg(&l.from), svg(&l.to), l.up))
            .collect()
    }

    /// 0 with no problem, else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.problems.is_empty())
    }
}

/// A node's health as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Unreachable,
    InterfaceDown,
    Up,
}

pub use crate::hosts::drift::running_vs_file as drift;
use crate::hosts::drift::{nets, short_key};

/// The diagnosis. Pure: unit-tested with fixtures.
///
/// Node rules (`node_rules`): an unreachable node is `unreachable` and nothing else; a reached
/// node without its interface up is `interface_down`; a next-hop with `ip_forward` 0 is
/// `forwarding_off`; a running interface that differs from its file is `drift`; a kubelet file
/// whose node IP is not the WireGuard address is `kubelet_node_ip`. A link with an unreachable
/// or down end is explained by that end's problem and blames nobody else.
///
/// The router rule (`router_rule`): site S's router is blamed (`port_forward_missing`) only
/// when several observers agree:
/// 1. S has an endpoint, and its next-hop N is up, forwarding, without drift, and has at least
///    one working link with another site (so N, its key and its uplink work);
/// 2. there is at least one witness: the next-hop W of a site without an endpoint (W must
///    dial S's endpoint: S's router has to accept the first packet), up, without drift, with at
///    least one working link to a site other than S (so W and its uplink work);
/// 3. every witness's link with N is down (they all agree).
///
/// Any other down link between two working ends is `no_handshake`, with what could cause it.
pub fn diagnose(topo: &Topology, obs: &Observations) -> StatusReport {
    let view = View::new(topo, obs);
    let (nodes, mut problems, drifted) = node_rules(&view);
    let links = link_states(&view);
    let verdict = router_rule(&view, &links, &drifted);
    problems.extend(verdict.problems);
    problems.extend(unexplained_links(
        &view,
        &links,
        &verdict.explained,
        &verdict.hints,
    ));
    StatusReport {
        nodes,
        links,
        problems,
        warnings: reresolve_warnings(topo, obs),
    }
}

/// A next-hop without systemd has no re-resolution timer: an endpoint written as a name is
/// resolved once, when its interface comes up, so a site whose address changes stays cut off
/// from it until the interface restarts.
fn reresolve_warnings(topo: &Topology, obs: &Observations) -> Vec<String> {
    let mut out = Vec::new();
    for n in topo.nodes.iter().filter(|n| n.is_next_hop) {
        let Some(Ok(o)) = obs.get(&n.name) else {
            continue;
        };
        if o.facts.systemd {
            continue;
        }
        let names: Vec<String> = topo
            .peers(n)
            .into_iter()
            .filter_map(|p| p.endpoint)
            .filter(|e| crate::inventory::Endpoint::is_name(e))
            .collect();
        if !names.is_empty() {
            out.push(format!(
                "{}: nothing re-resolves {} without systemd: if that address changes, the link stays down until {} restarts",
                n.name,
                names.join(", "),
                topo.network.interface
            ));
        }
    }
    out
}

/// The observations with the plan, and who each public key is.
struct View<'a> {
    topo: &'a Topology,
    obs: &'a Observations,
    key_name: HashMap<String, String>,
}

impl<'a> View<'a> {
    fn new(topo: &'a Topology, obs: &'a Observations) -> View<'a> {
        // who a public key is: a reached node's interface key, an unmanaged site's key
        let mut key_name: HashMap<String, String> = HashMap::new();
        for n in &topo.nodes {
            if let Some(Ok(o)) = obs.get(&n.name)
                && let Some(wg) = &o.facts.wg
            {
                key_name.insert(wg.public_key.clone(), n.name.clone());
            }
        }
        for s in &topo.sites {
            if let Some(k) = &s.public_key {
                key_name.insert(k.to_base64(), format!("site {}", s.name));
            }
        }
        View {
            topo,
            obs,
            key_name,
        }
    }

    fn iface(&self) -> &InterfaceName {
        &self.topo.network.interface
    }

    fn health(&self, n: &str) -> Health {
        match self.obs.get(n) {
            Some(Ok(o)) if o.iface_up => Health::Up,
            Some(Ok(_)) => Health::InterfaceDown,
            _ => Health::Unreachable,
        }
    }

    fn seen(&self, n: &str) -> Option<&'a Observed> {
        self.obs.get(n).and_then(|o| o.as_ref().ok())
    }

    fn name_of(&self, key: &str) -> String {
        self.key_name
            .get(key)
            .cloned()
            .unwrap_or_else(|| short_key(key))
    }

    /// The live entry of a planned peer: by its key when known, else by its AllowedIPs.
    fn live<'w>(&self, wg: &'w WgState, p: &Peer) -> Option<&'w PeerState> {
        let label = peer_label(p);
        if let Some(x) = wg
            .peers
            .iter()
            .find(|x| self.key_name.get(&x.public_key) == Some(&label))
        {
            return Some(x);
        }
        let want: BTreeSet<Ipv4Net> = p.allowed_ips.iter().map(|n| n.trunc()).collect();
        wg.peers.iter().find(|x| nets(&x.allowed_ips) == want)
    }
}

fn peer_label(p: &Peer) -> String {
    match &p.peer {
        PeerRef::Node(n) => n.clone(),
        PeerRef::Site(s) => format!("site {s}"),
    }
}

fn age(o: &Observed, p: &PeerState) -> Option<u64> {
    (p.latest_handshake > 0).then(|| o.facts.now.saturating_sub(p.latest_handshake))
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Every node's status, the node problems, and the nodes whose interface drifted.
fn node_rules(v: &View) -> (Vec<NodeStatus>, Vec<Problem>, BTreeSet<String>) {
    let iface = v.iface();
    // the hosts each node's SSH path crosses (proxy_jump, or the mesh)
    let paths = crate::topology::reach::paths(v.topo);
    let mut nodes = Vec::new();
    let mut problems = Vec::new();
    let mut drifted: BTreeSet<String> = BTreeSet::new();
    for n in &v.topo.nodes {
        let planned = v.topo.peers(n);
        let mut st = NodeStatus {
            name: n.name.clone(),
            site: n.site.clone(),
            next_hop: n.is_next_hop,
            state: "unreachable".into(),
            error: None,
            public_key: None,
            listen_port: None,
            ip_forward: None,
            peers: Vec::new(),
        };
        let node_problem = |kind: Kind, why: String| Problem {
            kind,
            site: Some(n.site.clone()),
            node: Some(n.name.clone()),
            peer: None,
            why,
        };
        let o = match v.obs.get(&n.name) {
            Some(Ok(o)) => o,
            other => {
                let err = match other {
                    Some(Err(e)) => e.clone(),
                    _ => "not contacted".into(),
                };
                let via: Vec<String> = paths
                    .get(&n.name)
                    .into_iter()
                    .flatten()
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
                problems.push(node_problem(
                    Kind::Unreachable,
                    format!(
                        "SSH to {} ({}:{}) failed: {err}{via}; its links are judged from their other ends only",
                        n.name, n.ssh.host, n.ssh.port
                    ),
                ));
                st.error = Some(err);
                nodes.push(st);
                continue;
            }
        };
        st.ip_forward = o.ip_forward;
        st.state = if o.iface_up { "up" } else { "down" }.into();
        if let Some(wg) = &o.facts.wg {
            st.public_key = Some(wg.public_key.clone());
            st.listen_port = Some(wg.listen_port);
            for p in &wg.peers {
                let plan = planned
                    .iter()
                    .find(|pp| v.live(wg, pp).is_some_and(|x| x.public_key == p.public_key));
                st.peers.push(PeerStatus {
                    peer: plan
                        .map(peer_label)
                        .unwrap_or_else(|| format!("unknown {}", short_key(&p.public_key))),
                    public_key: p.public_key.clone(),
                    endpoint: plan.and_then(|pp| pp.endpoint.clone()),
                    seen_at: p.endpoint.clone(),
                    handshake_age: age(o, p),
                    rx: p.rx,
                    tx: p.tx,
                });
            }
        }
        let hub = crate::hosts::openwrt_hub::of(v.topo, n).is_some();
        if !o.iface_up {
            problems.push(node_problem(
                Kind::InterfaceDown,
                if hub {
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
                },
            ));
        }
        if n.is_next_hop && o.ip_forward == Some(false) {
            problems.push(node_problem(
                Kind::ForwardingOff,
                format!(
                    "{} is site {}'s next-hop but net.ipv4.ip_forward = 0: the members of {} cannot reach other sites, nor other sites them (sysctl -w net.ipv4.ip_forward=1; wgprov apply writes /etc/sysctl.d/99-wgprov.conf)",
                    n.name, n.site, n.site
                ),
            ));
        }
        // an OpenWrt hub has no file to compare with: its script's own check says whether
        // uci and the running interface are as it sets them
        if hub && let Some(d) = crate::hosts::openwrt_hub::drift(&o.facts) {
            drifted.insert(n.name.clone());
            problems.push(node_problem(
                Kind::Drift,
                format!("{d} (wgprov apply sets them again)"),
            ));
        } else if !hub
            && o.iface_up
            && let Some(wg) = &o.facts.wg
        {
            let conf = o
                .facts
                .files
                .get(&conf_path(iface))
                .and_then(|f| f.content());
            let diffs = match conf {
                Some(c) => drift(c, wg, &|k| v.name_of(k)),
                None => vec![format!("{} does not exist", conf_path(iface))],
            };
            if !diffs.is_empty() {
                drifted.insert(n.name.clone());
                problems.push(node_problem(
                    Kind::Drift,
                    format!(
                        "the running {iface} differs from {}: {} (wgprov apply brings it back to the file)",
                        conf_path(iface),
                        diffs.join("; ")
                    ),
                ));
            }
        }
        let os = o
            .facts
            .os_family
            .or(n.os_family)
            .unwrap_or(OsFamily::Debian);
        let path = node_ip_path(n.kubernetes, os);
        if let Some(k) = o.facts.files.get(path).and_then(|f| f.content()) {
            let want = n.wireguard_ip.to_string();
            let have = node_ip_in(n.kubernetes, k);
            if have.as_deref() != Some(want.as_str()) {
                problems.push(node_problem(
                    Kind::KubeletNodeIp,
                    format!(
                        "{path} sets {}, not the WireGuard address {want}: the kubelet registers the node at the wrong address (wgprov apply sets it to {want})",
                        match have {
                            Some(ip) => format!("node IP {ip}"),
                            None => "no node IP".into(),
                        }
                    ),
                ));
            }
        }
        nodes.push(st);
    }
    (nodes, problems, drifted)
}

/// Every planned link, once, with what its ends saw: up when a ping over it was answered, or a
/// handshake completed in the last 180 s while neither end's interface is down; unknown when
/// no end could be asked.
fn link_states(v: &View) -> Vec<LinkStatus> {
    let topo = v.topo;
    let mut links: Vec<LinkStatus> = Vec::new();
    let mut have: BTreeSet<(String, String)> = BTreeSet::new();
    for n in &topo.nodes {
        for p in topo.peers(n) {
            let other = peer_label(&p);
            if !have.insert(pair(&n.name, &other)) {
                continue;
            }
            let mut l = LinkStatus {
                from: n.name.clone(),
                to: other.clone(),
                up: false,
                state: "unknown".into(),
                cross_site: p.site != n.site,
                handshake_age: None,
                probes: BTreeMap::new(),
            };
            // each managed end with its view of the other
            let mut ends: Vec<(&NodePlan, Peer)> = vec![(n, p.clone())];
            if let PeerRef::Node(o) = &p.peer
                && let Some(on) = topo.node(o)
                && let Some(back) = topo
                    .peers(on)
                    .into_iter()
                    .find(|q| q.peer == PeerRef::Node(n.name.clone()))
            {
                ends.push((on, back));
            }
            let mut any_down = false;
            let mut any_seen = false;
            for (x, xp) in &ends {
                match v.health(&x.name) {
                    Health::InterfaceDown => any_down = true,
                    Health::Unreachable => continue,
                    Health::Up => {}
                }
                let Some(o) = v.seen(&x.name) else { continue };
                any_seen = true;
                if let Some(ip) = peer_ip(topo, xp)
                    && let Some(a) = o.answered.get(&ip)
                {
                    l.probes.insert(x.name.clone(), *a);
                }
                if let Some(wg) = &o.facts.wg
                    && let Some(lp) = v.live(wg, xp)
                    && let Some(a) = age(o, lp)
                {
                    l.handshake_age = Some(l.handshake_age.map_or(a, |b: u64| b.min(a)));
                }
            }
            let answered = l.probes.values().any(|a| *a);
            let fresh = l.handshake_age.is_some_and(|a| a <= FRESH_HANDSHAKE_SECS);
            l.up = answered || (!any_down && fresh);
            // an unmanaged site cannot be pinged: without keepalive, an idle link and a broken
            // one look the same (a hand-run hub router can: its `.1`)
            let idle = peer_ip(topo, &p).is_none() && p.persistent_keepalive.is_none();
            l.state = if l.up {
                "up"
            } else if any_seen && (any_down || !idle) {
                "down"
            } else {
                "unknown"
            }
            .into();
            links.push(l);
        }
    }
    links
}

/// What the router rule concluded.
#[derive(Default)]
struct RouterVerdict {
    /// `port_forward_missing` problems.
    problems: Vec<Problem>,
    /// Links the blamed routers explain.
    explained: BTreeSet<(String, String)>,
    /// For down links a router could explain but was not blamed for: why not.
    hints: BTreeMap<(String, String), String>,
}

/// The router rule (see [`diagnose`]).
fn router_rule(v: &View, links: &[LinkStatus], drifted: &BTreeSet<String>) -> RouterVerdict {
    let topo = v.topo;
    let mut out = RouterVerdict::default();
    let link_of = |a: &str, b: &str| -> Option<&LinkStatus> {
        links
            .iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
    };
    let site_of = |end: &str| -> Option<String> {
        match end.strip_prefix("site ") {
            Some(s) => Some(s.to_string()),
            None => topo.node(end).map(|x| x.site.clone()),
        }
    };
    // working links from `n` to sites other than its own and `except`
    let cross_up = |n: &str, except: &str| -> Vec<String> {
        let own = topo.node(n).map(|x| x.site.clone()).unwrap_or_default();
        links
            .iter()
            .filter(|l| l.up && l.cross_site && (l.from == n || l.to == n))
            .map(|l| {
                if l.from == n {
                    l.to.clone()
                } else {
                    l.from.clone()
                }
            })
            .filter(|o| site_of(o).is_some_and(|s| s != own && s != except))
            .collect()
    };
    let sound = |n: &str| v.health(n) == Health::Up && !drifted.contains(n);
    let is_down = |a: &str, b: &str| link_of(a, b).is_some_and(|l| l.state == "down");
    for s in topo.sites.iter().filter(|s| s.managed) {
        let (Some(ep), Some(nh)) = (&s.endpoint, s.next_hop.as_deref()) else {
            continue;
        };
        let Some(nhp) = topo.node(nh) else { continue };
        // next-hops of managed sites without an endpoint: they must dial S's endpoint
        let dialers: Vec<&str> = topo
            .sites
            .iter()
            .filter(|t| t.managed && t.name != s.name && t.endpoint.is_none())
            .filter_map(|t| t.next_hop.as_deref())
            .collect();
        let down: Vec<&str> = dialers.iter().copied().filter(|w| is_down(w, nh)).collect();
        if down.is_empty() || v.health(nh) != Health::Up {
            // nothing to explain, or the next-hop's own problem explains it
            continue;
        }
        let forward = format!(
            "udp {} -> {}:{}",
            ep.port, nhp.address, topo.network.listen_port
        );
        let mut not_blamed = |why: String| {
            for w in &down {
                out.hints.insert(
                    pair(w, nh),
                    format!(
                        "{w}'s site has no endpoint, so {nh} is reached through site {}'s port-forward ({forward}); it is not blamed because {why}",
                        s.name
                    ),
                );
            }
        };
        if drifted.contains(nh) {
            not_blamed(format!(
                "{nh}'s running interface differs from its file (its own problem)"
            ));
            continue;
        }
        if v.seen(nh).and_then(|o| o.ip_forward) == Some(false) {
            not_blamed(format!("{nh} does not forward (its own problem)"));
            continue;
        }
        let vouchers = cross_up(nh, "");
        if vouchers.is_empty() {
            not_blamed(format!(
                "{nh} has no working link with any other site, so {nh} or its uplink may be the cause"
            ));
            continue;
        }
        let witnesses: Vec<(&str, Vec<String>)> = dialers
            .iter()
            .copied()
            .filter(|w| sound(w) && link_of(w, nh).is_some_and(|l| l.state != "unknown"))
            .map(|w| (w, cross_up(w, &s.name)))
            .filter(|(_, up)| !up.is_empty())
            .collect();
        if witnesses.is_empty() {
            not_blamed(format!(
                "no next-hop of a site without an endpoint works with another site, so nobody can vouch that the fault is on {}'s side",
                s.name
            ));
            continue;
        }
        let works: Vec<&str> = witnesses
            .iter()
            .map(|(w, _)| *w)
            .filter(|w| !is_down(w, nh))
            .collect();
        if !works.is_empty() {
            not_blamed(format!(
                "{} complete{} a handshake with {nh} through that port-forward",
                works.join(", "),
                if works.len() == 1 { "s" } else { "" }
            ));
            continue;
        }
        let agree: Vec<&str> = witnesses.iter().map(|(w, _)| *w).collect();
        let dial = match agree.as_slice() {
            [w] => format!(
                "{w}, next-hop of site {} which has no endpoint, must dial {ep} and never completes",
                topo.node(w).map(|x| x.site.as_str()).unwrap_or("?")
            ),
            _ => format!(
                "{}, next-hops of sites without an endpoint, must dial {ep} and never complete",
                agree.join(", ")
            ),
        };
        let told: Vec<String> = witnesses
            .iter()
            .map(|(w, up)| format!("{w} has working links with {}", up.join(", ")))
            .collect();
        for w in &agree {
            out.explained.insert(pair(w, nh));
        }
        out.problems.push(Problem {
            kind: Kind::PortForwardMissing,
            site: Some(s.name.clone()),
            node: None,
            peer: None,
            why: format!(
                "site {}'s router ({}) does not forward UDP {} to its next-hop {nh}: {dial} a handshake with {nh}, while {nh} is up, forwarding and has working links with {}, and {}. Create the port-forward {forward} on {}'s router",
                s.name,
                s.router.as_str(),
                ep.port,
                vouchers.join(", "),
                told.join("; "),
                s.name
            ),
        });
    }
    out
}

/// `no_handshake` for every down link between two working ends that no rule explains.
fn unexplained_links(
    v: &View,
    links: &[LinkStatus],
    explained: &BTreeSet<(String, String)>,
    hints: &BTreeMap<(String, String), String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for l in links.iter().filter(|l| l.state == "down") {
        let ends_ok = [l.from.as_str(), l.to.as_str()]
            .iter()
            .filter(|e| !e.starts_with("site "))
            .all(|e| v.health(e) == Health::Up);
        let k = pair(&l.from, &l.to);
        if !ends_ok || explained.contains(&k) {
            continue;
        }
        let when = match l.handshake_age {
            None => "never completed a handshake".to_string(),
            Some(a) => format!("had its last handshake {a} s ago"),
        };
        let mut why = format!(
            "{} and {} are both up, but their link {when} and no ping over {} was answered",
            l.from,
            l.to,
            v.iface()
        );
        if let Some(h) = hints.get(&k) {
            let _ = write!(why, "; {h}");
        } else if l.cross_site {
            why.push_str("; check the endpoints, the keys at both ends and the port-forwards of the sites that must accept the first packet");
        } else {
            why.push_str("; check the LAN between them and their firewalls");
        }
        out.push(Problem {
            kind: Kind::NoHandshake,
            site: None,
            node: Some(l.from.clone()),
            peer: Some(l.to.clone()),
            why,
        });
    }
    out
}

/// Observes every node over the given sessions (a node without one is unreachable), every
/// node at once up to `forks`, each bounded by `wait` plus a margin.
pub async fn observe_all<T: Transport + 'static>(
    topo: &Topology,
    sessions: &HashMap<String, std::result::Result<Arc<T>, String>>,
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
        let s = sessions
            .get(&n)
            .cloned()
            .unwrap_or_else(|| Err("not contacted".into()));
        let targets = topo
            .node(&n)
            .map(|x| probe_targets(topo, x))
            .unwrap_or_default();
        let extra = if crate::hosts::openwrt_hub::is_hub(topo, &n) {
            crate::hosts::openwrt_hub::check_section()
        } else {
            String::new()
        };
        let script = script(&iface, &targets, &paths, &extra, wait);
        async move {
            let s = s?;
            let out = s
                .run_script_within(&script, wait + Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            parse(&out.stdout_text(), &targets)
        }
    })
    .await
}

/// Problems of the routers wgprov manages that only forward the port, from their facts (or why
/// they could not be read): the router itself says whether wgprov's rules are in place
/// (`router-pf.sh check`), so naming it is no guess. A router without wgprov's script yet is
/// not named: its port-forward may have been made by hand.
pub fn router_problems(
    topo: &Topology,
    facts: &HashMap<String, std::result::Result<Facts, String>>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (site, r) in topo.routers().filter(|(_, r)| topo.node(&r.name).is_none()) {
        let problem = |kind: Kind, why: String| Problem {
            kind,
            site: Some(site.name.clone()),
            node: Some(r.name.clone()),
            peer: None,
            why,
        };
        match facts.get(&r.name) {
            Some(Ok(f)) => {
                if let Some(d) = crate::hosts::linux::drift(f) {
                    out.push(problem(
                        Kind::Drift,
                        format!(
                            "site {}'s managed router {}: {d}; wgprov apply puts them back",
                            site.name, r.name
                        ),
                    ));
                }
            }
            Some(Err(e)) => out.push(problem(
                Kind::Unreachable,
                format!(
                    "site {}'s managed router {} could not be read: {e}",
                    site.name, r.name
                ),
            )),
            None => {}
        }
    }
    out
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
    let usable: HashMap<String, std::result::Result<Arc<_>, String>> = sessions
        .iter()
        .map(|(n, s)| (n.clone(), s.clone().map_err(|e| e.to_string())))
        .collect();
    for n in &topo.nodes {
        progress.phase(&n.name, "probing");
    }
    let obs = observe_all(topo, &usable, forks, PROBE_WAIT).await;
    // the routers that forward the port: whether wgprov's rules are in place
    let router_names: Vec<String> = topo
        .ssh_targets()
        .into_iter()
        .filter(|t| topo.node(&t.name).is_none())
        .map(|t| t.name)
        .collect();
    // with the nodes they jump through, if any
    let routers = with_jumps(topo, &router_names);
    let router_facts: HashMap<String, std::result::Result<Facts, String>> = if routers.is_empty() {
        HashMap::new()
    } else {
        let rs = connect_all(&connector, routers, forks, &progress).await;
        let script = crate::facts::gather::script_with(
            &topo.network.interface,
            &crate::hosts::candidate_paths(),
            &crate::hosts::facts_section(),
        );
        let names = router_names.clone();
        let rs_ref = &rs;
        let out = run_all(names, forks, |n| {
            let s = rs_ref.get(&n).cloned();
            let script = script.clone();
            async move {
                let s = match s {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("not contacted".into()),
                };
                let out = s
                    .run_script_within(&script, Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                crate::facts::gather::parse(&out.stdout_text()).map_err(String::from)
            }
        })
        .await;
        close_all(&rs).await;
        out
    };
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

/// The report as text: nodes and their peers, links, problems with their why.
pub fn text(r: &StatusReport) -> String {
    let mut o = String::from("nodes:\n");
    for n in &r.nodes {
        let role = if n.next_hop { ", next-hop" } else { "" };
        let mut state = n.state.clone();
        if let Some(e) = &n.error {
            let _ = write!(state, ": {e}");
        }
        if n.next_hop && n.state != "unreachable" {
            state.push_str(match n.ip_forward {
                Some(true) => ", forwarding",
                Some(false) => ", NOT forwarding",
                None => "",
            });
        }
        let _ = writeln!(o, "  {} ({}{role}): {state}", n.name, n.site);
        for p in &n.peers {
            let hs = match p.handshake_age {
                Some(a) => format!("handshake {a}s ago"),
                None => "no handshake".into(),
            };
            let _ = writeln!(
                o,
                "    {:<16} {:<20} seen at {:<22} rx {} tx {}",
                p.peer,
                hs,
                p.seen_at.as_deref().unwrap_or("-"),
                p.rx,
                p.tx
            );
        }
    }
    o.push_str("links:\n");
    for l in &r.links {
        let probes: Vec<String> = l
            .probes
            .iter()
            .map(|(f, a)| {
                let to = if *f == l.from { &l.to } else { &l.from };
                format!("{f}->{to} {}", if *a { "answered" } else { "no answer" })
            })
            .collect();
        let hs = match l.handshake_age {
            Some(a) => format!("handshake {a}s ago"),
            None => "no handshake".into(),
        };
        let mut detail = vec![hs];
        if !probes.is_empty() {
            detail.push(format!("ping {}", probes.join(", ")));
        }
        let _ = writeln!(
            o,
            "  {:<7} {} -- {} ({})",
            l.state,
            l.from,
            l.to,
            detail.join("; ")
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    if r.problems.is_empty() {
        o.push_str("no problems found\n");
    } else {
        o.push_str("problems:\n");
        for p in &r.problems {
            let who: Vec<String> = [
                p.site.as_ref().map(|s| format!("site {s}")),
                p.node.clone(),
                p.peer.as_ref().map(|x| format!("peer {x}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let _ = writeln!(o, "  {} [{}]: {}", p.kind.as_str(), who.join(", "), p.why);
        }
    }
    o
}

#[cfg(test)]
mod fleet_tests;

#[cfg(test)]
mod tests {

    #[test]
    fn a_managed_router_whose_rules_are_gone_is_drift_and_one_never_applied_is_not_named() {
        let inv = crate::inventory::load_str(
            std::path::Path::new("inv.yaml"),
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: { kind: linux, address: 192.168.0.1, wan_interface: eth0 }\n    nodes:\n      n1: { address: 192.168.0.10 }\n",
        )
        .unwrap()
        .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let facts_with = |state: &str| {
            let mut f = Facts::default();
            f.extra.insert("router_pf".into(), state.into());
            [("home-router".to_string(), Ok(f))]
                .into_iter()
                .collect::<HashMap<_, _>>()
        };
        let p = router_problems(&topo, &facts_with("drift"));
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].kind, p[0].site.as_deref(), p[0].node.as_deref()),
            (Kind::Drift, Some("home"), Some("home-router"))
        );
        assert!(
            p[0].why.contains("wgprov apply puts them back"),
            "{}",
            p[0].why
        );
        assert!(router_problems(&topo, &facts_with("ok")).is_empty());
        assert!(
            router_problems(&topo, &facts_with("none")).is_empty(),
            "maybe made by hand"
        );
        let down: HashMap<String, std::result::Result<Facts, String>> = [(
            "home-router".to_string(),
            Err("connection refused".to_string()),
        )]
        .into_iter()
        .collect();
        assert_eq!(router_problems(&topo, &down)[0].kind, Kind::Unreachable);
    }

    use super::*;
    use crate::facts::FileFact;
    use crate::topology::keys::Keypair;
    use crate::transport::fake::FakeHost;

    const NOW: u64 = 1_700_000_000;

    /// Four sites: home and office have endpoints (office's public port 51999 is mapped to its
    /// next-hop's 51820), cabin has none (its next-hop must dial the others), friend is someone
    /// else's site.
    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: {address: 192.168.0.10}\n      h2: {address: 192.168.0.11}\n  office:\n    endpoint: 198.51.100.20:51999\n    next_hop: o1\n    router: pfsense\n    nodes:\n      o1: {address: 192.168.10.5}\n      o2: {address: 192.168.10.6}\n  cabin:\n    nodes:\n      c1: {address: 192.168.20.5}\n  friend:\n    managed: false\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: 192.0.2.77:51820\n    public_key: \"FRIENDFRIENDFRIENDFRIENDFRIENDFRIENDFRIENDE=\"\n";

    fn topo(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("s.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    /// A mesh as its nodes would report it: every interface up and matching its file, every
    /// ping answered, every handshake 10 s old, and every peer across a NAT seen at a source
    /// port its router rewrote (never the configured one).
    struct Mesh {
        topo: Topology,
        keys: HashMap<String, Keypair>,
        obs: Observations,
    }

    impl Mesh {
        fn healthy(yaml: &str) -> Mesh {
            let topo = topo(yaml);
            let keys: HashMap<String, Keypair> = topo
                .nodes
                .iter()
                .map(|n| (n.name.clone(), Keypair::generate()))
                .collect();
            let mut m = Mesh {
                topo,
                keys,
                obs: HashMap::new(),
            };
            for n in m.topo.nodes.clone() {
                let o = m.observed(&n);
                m.obs.insert(n.name.clone(), Ok(o));
            }
            m
        }

        fn key_of(&self, p: &Peer) -> String {
            match &p.peer {
                PeerRef::Node(n) => self.keys[n].public.to_base64(),
                PeerRef::Site(s) => self.topo.site(s).unwrap().public_key.unwrap().to_base64(),
            }
        }

        fn observed(&self, n: &NodePlan) -> Observed {
            let kp = &self.keys[&n.name];
            let mut conf = format!(
                "[Interface]\nAddress = {}/16\nListenPort = 51820\nPrivateKey = {}\n",
                n.wireguard_ip,
                kp.private.expose_base64().as_str()
            );
            let mut peers = Vec::new();
            for (i, p) in self.topo.peers(n).iter().enumerate() {
                let allowed: Vec<String> = p.allowed_ips.iter().map(|a| a.to_string()).collect();
                let _ = write!(
                    conf,
                    "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
                    self.key_of(p),
                    allowed.join(", ")
                );
                if let Some(e) = &p.endpoint {
                    let _ = writeln!(conf, "Endpoint = {e}");
                }
                if let Some(k) = p.persistent_keepalive {
                    let _ = writeln!(conf, "PersistentKeepalive = {k}");
                }
                let seen = if p.site == n.site {
                    p.endpoint.clone()
                } else {
                    // NAT: another address (a remapped or endpoint-less site) and a rewritten port
                    Some(format!("192.0.2.{}:{}", 10 + i, 40_000 + i))
                };
                peers.push(PeerState {
                    public_key: self.key_of(p),
                    endpoint: seen,
                    allowed_ips: allowed,
                    latest_handshake: NOW - 10,
                    rx: 1000,
                    tx: 2000,
                    keepalive: p.persistent_keepalive.map(u32::from).unwrap_or(0),
                });
            }
            let files: BTreeMap<String, FileFact> = [
                (
                    "/etc/wireguard/wg0.conf".to_string(),
                    FileFact::Present {
                        mode: 0o600,
                        content: conf,
                    },
                ),
                (
                    "/etc/default/kubelet".to_string(),
                    FileFact::Present {
                        mode: 0o644,
                        content: format!(
                            "KUBELET_EXTRA_ARGS=\"--max-pods=50 --node-ip={}\"\n",
                            n.wireguard_ip
                        ),
                    },
                ),
                ("/etc/sysconfig/kubelet".to_string(), FileFact::Absent),
            ]
            .into();
            Observed {
                facts: Facts {
                    os_family: Some(OsFamily::Debian),
                    files,
                    wg: Some(WgState {
                        public_key: kp.public.to_base64(),
                        listen_port: 51820,
                        peers,
                    }),
                    now: NOW,
                    ..Default::default()
                },
                iface_up: true,
                ip_forward: Some(n.is_next_hop),
                answered: probe_targets(&self.topo, n)
                    .into_iter()
                    .map(|t| (t, true))
                    .collect(),
            }
        }

        fn get(&mut self, n: &str) -> &mut Observed {
            self.obs.get_mut(n).unwrap().as_mut().unwrap()
        }

        fn ip(&self, n: &str) -> Ipv4Addr {
            self.topo.node(n).unwrap().wireguard_ip
        }

        /// What `n` sees of its peer `other` (a node or `site NAME`): no answer, and a
        /// handshake `age` seconds ago (`None`: never).
        fn silent(&mut self, n: &str, other: &str, age: Option<u64>) {
            let key = match other.strip_prefix("site ") {
                Some(s) => self.topo.site(s).unwrap().public_key.unwrap().to_base64(),
                None => {
                    let ip = self.ip(other);
                    self.get(n).answered.insert(ip, false);
                    self.keys[other].public.to_base64()
                }
            };
            let o = self.get(n);
            for p in &mut o.facts.wg.as_mut().unwrap().peers {
                if p.public_key == key {
                    p.latest_handshake = age.map_or(0, |a| NOW - a);
                }
            }
        }

        /// The link between `a` and `b` never completes a handshake.
        fn cut(&mut self, a: &str, b: &str) {
            self.silent(a, b, None);
            self.silent(b, a, None);
        }

        /// Every peer of `n` (planned) as a list of names.
        fn peers_of(&self, n: &str) -> Vec<String> {
            let node = self.topo.node(n).unwrap();
            self.topo
                .peers(node)
                .iter()
                .map(|p| match &p.peer {
                    PeerRef::Node(x) => x.clone(),
                    PeerRef::Site(s) => format!("site {s}"),
                })
                .collect()
        }

        /// `wg-quick down` on `n` a moment ago: its peers still hold a fresh handshake.
        fn wg_gone(&mut self, n: &str) {
            for p in self.peers_of(n) {
                if !p.starts_with("site ") {
                    self.silent(&p, n, Some(20));
                }
            }
            let o = self.get(n);
            o.facts.wg = None;
            o.iface_up = false;
            for v in o.answered.values_mut() {
                *v = false;
            }
        }

        fn unreachable(&mut self, n: &str) {
            self.obs
                .insert(n.to_string(), Err("unreachable: connection refused".into()));
        }

        fn report(&self) -> StatusReport {
            diagnose(&self.topo, &self.obs)
        }
    }

    fn kinds(r: &StatusReport) -> Vec<(Kind, Option<String>, Option<String>)> {
        r.problems
            .iter()
            .map(|p| {
                (
                    p.kind,
                    if p.kind == Kind::PortForwardMissing {
                        p.site.clone()
                    } else {
                        None
                    },
                    p.node.clone(),
                )
            })
            .collect()
    }

    fn link<'a>(r: &'a StatusReport, a: &str, b: &str) -> &'a LinkStatus {
        r.links
            .iter()
            .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
            .unwrap_or_else(|| panic!("no link {a} -- {b}"))
    }

    #[test]
    fn a_healthy_mesh_behind_nat_with_a_remapped_port_has_no_problem() {
        let m = Mesh::healthy(INV);
        let r = m.report();
        assert_eq!(r.problems, vec![], "{}", text(&r));
        assert_eq!(r.exit_code(), 0);
        // every planned link: h1-h2, o1-o2, h1-o1, h1-c1, o1-c1, three to friend
        assert_eq!(r.links.len(), 8, "{:#?}", r.links);
        assert!(
            r.links.iter().all(|l| l.up && l.state == "up"),
            "{:#?}",
            r.links
        );
        let l = link(&r, "h1", "o1");
        assert_eq!(l.probes, [("h1".into(), true), ("o1".into(), true)].into());
        assert_eq!(l.handshake_age, Some(10));
        assert!(link(&r, "o1", "site friend").cross_site);
        // peers seen at rewritten ports are shown, and named by their keys
        let h1 = &r.nodes[0];
        let o1 = h1.peers.iter().find(|p| p.peer == "o1").unwrap();
        assert_eq!(o1.endpoint.as_deref(), Some("198.51.100.20:51999"));
        assert_ne!(o1.seen_at, o1.endpoint);
        assert!(h1.peers.iter().any(|p| p.peer == "site friend"));
        assert!(text(&r).ends_with("no problems found\n"), "{}", text(&r));
    }

    #[test]
    fn a_missing_port_forward_is_blamed_when_both_ends_and_their_other_peers_agree() {
        let mut m = Mesh::healthy(INV);
        // cabin has no endpoint: it must dial office, whose router drops it
        m.cut("c1", "o1");
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::PortForwardMissing, Some("office".into()), None)],
            "{}",
            text(&r)
        );
        let why = &r.problems[0].why;
        assert!(
            why.contains("udp 51999 -> 192.168.10.5:51820") && why.contains("(pfsense)"),
            "{why}"
        );
        assert!(why.contains("working links with h1"), "{why}");
        assert!(
            why.contains("c1, next-hop of site cabin which has no endpoint, must dial 198.51.100.20:51999 and never completes a handshake with o1"),
            "{why}"
        );
        let t = text(&r);
        assert!(
            t.contains("down    o1 -- c1 (no handshake; ping c1->o1 no answer, o1->c1 no answer)"),
            "{t}"
        );
        assert!(
            t.contains(
                "problems:\n  port_forward_missing [site office]: site office's router (pfsense)"
            ),
            "{t}"
        );
        assert!(!link(&r, "c1", "o1").up);
        assert_eq!(link(&r, "c1", "o1").state, "down");
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn no_router_is_blamed_when_the_next_hop_works_with_no_other_site() {
        let mut m = Mesh::healthy(INV);
        m.cut("c1", "o1");
        m.cut("h1", "o1");
        m.silent("o1", "site friend", None);
        let r = m.report();
        assert!(
            r.problems.iter().all(|p| p.kind == Kind::NoHandshake),
            "{}",
            text(&r)
        );
        assert_eq!(r.problems.len(), 3, "{}", text(&r));
        assert!(r.problems.iter().all(|p| p.site.is_none()));
        assert!(
            r.problems
                .iter()
                .any(|p| p.why.contains("not blamed because o1 has no working link")),
            "{}",
            text(&r)
        );
    }

    #[test]
    fn no_router_is_blamed_when_the_witness_is_cut_off_itself() {
        let mut m = Mesh::healthy(INV);
        // c1 reaches nobody outside its site: its own uplink is as likely as office's router
        m.cut("c1", "o1");
        m.cut("c1", "h1");
        m.silent("c1", "site friend", None);
        let r = m.report();
        assert!(
            r.problems
                .iter()
                .all(|p| p.kind == Kind::NoHandshake && p.site.is_none()),
            "{}",
            text(&r)
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.why.contains("nobody can vouch")),
            "{}",
            text(&r)
        );
    }

    #[test]
    fn a_link_between_two_sites_with_endpoints_blames_no_router() {
        let mut m = Mesh::healthy(INV);
        m.cut("h1", "o1");
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::NoHandshake, None, Some("h1".into()))]
        );
        assert_eq!(r.problems[0].peer.as_deref(), Some("o1"));
    }

    #[test]
    fn a_member_whose_interface_is_gone_is_the_only_problem() {
        let mut m = Mesh::healthy(INV);
        m.wg_gone("o2");
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::InterfaceDown, None, Some("o2".into()))],
            "{}",
            text(&r)
        );
        assert!(r.problems[0].why.contains("wg0 does not exist on o2"));
        // down although o1's last handshake with it is only 20 s old
        assert_eq!(link(&r, "o1", "o2").state, "down");
        assert_eq!(
            r.nodes.iter().find(|n| n.name == "o2").unwrap().state,
            "down"
        );
    }

    #[test]
    fn a_next_hop_whose_interface_is_gone_blames_no_router_for_its_links() {
        for n in ["o1", "c1"] {
            let mut m = Mesh::healthy(INV);
            m.wg_gone(n);
            let r = m.report();
            assert_eq!(
                kinds(&r),
                vec![(Kind::InterfaceDown, None, Some(n.into()))],
                "{}",
                text(&r)
            );
            assert_eq!(link(&r, "c1", "o1").state, "down");
        }
        // an interface that exists but is down
        let mut m = Mesh::healthy(INV);
        m.get("o1").iface_up = false;
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::InterfaceDown, None, Some("o1".into()))]
        );
        assert!(r.problems[0].why.contains("exists on o1 but is down"));
    }

    #[test]
    fn an_unreachable_node_is_unreachable_and_nothing_else() {
        // sshd gone, WireGuard still working: its links answer from the other ends
        let mut m = Mesh::healthy(INV);
        m.unreachable("o1");
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::Unreachable, None, Some("o1".into()))],
            "{}",
            text(&r)
        );
        assert!(r.problems[0].why.contains("connection refused"));
        assert!(link(&r, "c1", "o1").up);
        assert_eq!(link(&r, "o1", "site friend").state, "unknown");
        // the whole machine gone: its links are down, and still nothing else is blamed
        for (a, b) in [("h1", "o1"), ("c1", "o1"), ("o2", "o1")] {
            m.silent(a, b, Some(400));
        }
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::Unreachable, None, Some("o1".into()))]
        );
        assert_eq!(link(&r, "c1", "o1").state, "down");
        // a link with both ends unreachable is unknown, and left out of the picture
        m.unreachable("o2");
        let r = m.report();
        assert_eq!(link(&r, "o1", "o2").state, "unknown");
        assert!(
            !r.picture_links()
                .iter()
                .any(|(a, b, _)| a == "o1" && b == "o2" || a == "o2" && b == "o1")
        );
    }

    #[test]
    fn a_node_reached_over_the_mesh_behind_a_down_interface_says_so() {
        let yaml = INV.replace(
            "      o2: {address: 192.168.10.6}\n",
            "      o2: {address: 192.168.10.6, ssh: {proxy_jump: o1}}\n",
        );
        let mut m = Mesh::healthy(&yaml);
        m.wg_gone("o1");
        m.unreachable("o2");
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![
                (Kind::InterfaceDown, None, Some("o1".into())),
                (Kind::Unreachable, None, Some("o2".into())),
            ],
            "{}",
            text(&r)
        );
        assert!(
            r.problems[1]
                .why
                .contains("its SSH path crosses o1 (its wg0 is down)"),
            "{}",
            r.problems[1].why
        );
    }

    #[test]
    fn a_next_hop_that_does_not_forward_is_forwarding_off_only() {
        let mut m = Mesh::healthy(INV);
        m.get("h1").ip_forward = Some(false);
        // members do not forward, and that is fine
        m.get("h2").ip_forward = Some(false);
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::ForwardingOff, None, Some("h1".into()))],
            "{}",
            text(&r)
        );
        assert!(r.problems[0].why.contains("members of home cannot reach"));
    }

    #[test]
    fn a_running_interface_that_differs_from_its_file_is_drift() {
        let mut m = Mesh::healthy(INV);
        // a peer removed by hand, and a listen port changed by hand
        let o = m.get("o1");
        let wg = o.facts.wg.as_mut().unwrap();
        wg.peers
            .retain(|p| !p.allowed_ips.contains(&"10.100.0.0/24".to_string()));
        wg.listen_port = 51821;
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::Drift, None, Some("o1".into()))],
            "{}",
            text(&r)
        );
        let why = &r.problems[0].why;
        assert!(
            why.contains("peer h1 is in the file but not running"),
            "{why}"
        );
        assert!(
            why.contains("it listens on 51821, the file says 51820"),
            "{why}"
        );
        // a drifted next-hop is not evidence against its router
        m.cut("c1", "o1");
        let r = m.report();
        assert!(
            !r.problems
                .iter()
                .any(|p| p.kind == Kind::PortForwardMissing),
            "{}",
            text(&r)
        );
    }

    #[test]
    fn an_openwrt_hub_drifts_when_its_scripts_check_fails_not_for_want_of_a_wg0_conf() {
        let yaml = INV.replace(
            "    next_hop: h1\n",
            "    next_hop: router\n    router: { kind: openwrt, address: 192.168.0.1, wan_interface: wan }\n",
        );
        let mut m = Mesh::healthy(&yaml);
        let hub = m.get("home-router");
        hub.facts.files.remove("/etc/wireguard/wg0.conf");
        hub.facts.extra.insert("router_hub".into(), "ok".into());
        let r = m.report();
        assert!(r.problems.is_empty(), "{}", text(&r));
        m.get("home-router")
            .facts
            .extra
            .insert("router_hub".into(), "drift".into());
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::Drift, None, Some("home-router".into()))],
            "{}",
            text(&r)
        );
        assert!(
            r.problems[0]
                .why
                .contains("not as /etc/wgprov/router-hub.sh sets them"),
            "{}",
            text(&r)
        );
    }

    #[test]
    fn drift_reads_the_file_as_wg_does_and_ignores_endpoints() {
        let kp = Keypair::generate();
        let conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51820\n[Peer]\nPublicKey = P1\nAllowedIPs = 10.100.1.7/24,10.100.2.0/24\nEndpoint = 1.2.3.4:51820\nPersistentKeepalive = 25\n\n[Peer]\nPublicKey = P2\nAllowedIPs = 10.100.0.2/32\n",
            kp.private.expose_base64().as_str()
        );
        let peer = |k: &str, allowed: &[&str], ka: u32| PeerState {
            public_key: k.into(),
            endpoint: Some("9.9.9.9:1".into()),
            allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
            latest_handshake: 0,
            rx: 0,
            tx: 0,
            keepalive: ka,
        };
        let mut wg = WgState {
            public_key: kp.public.to_base64(),
            listen_port: 51820,
            peers: vec![
                peer("P1", &["10.100.2.0/24", "10.100.1.0/24"], 25),
                peer("P2", &["10.100.0.2/32"], 0),
            ],
        };
        let name = |k: &str| k.to_string();
        assert_eq!(drift(&conf, &wg, &name), Vec::<String>::new());
        wg.peers[0].keepalive = 0;
        wg.peers[1].allowed_ips = vec!["10.100.0.3/32".into()];
        wg.peers.push(peer("P3", &[], 0));
        wg.public_key = Keypair::generate().public.to_base64();
        let d = drift(&conf, &wg, &name);
        assert_eq!(
            d,
            vec![
                "it runs with another key than the file's".to_string(),
                "peer P1: keepalive 0 running, 25 in the file".into(),
                "peer P2: AllowedIPs 10.100.0.3/32 running, 10.100.0.2/32 in the file".into(),
                "peer P3 is running but not in the file".into(),
            ]
        );
        assert!(!d.join(" ").contains(kp.private.expose_base64().as_str()));
    }

    #[test]
    fn a_kubelet_node_ip_that_is_not_the_wireguard_address_is_named() {
        let mut m = Mesh::healthy(INV);
        m.get("h2").facts.files.insert(
            "/etc/default/kubelet".into(),
            FileFact::Present {
                mode: 0o644,
                content: "KUBELET_EXTRA_ARGS=--node-ip=192.168.0.11\n".into(),
            },
        );
        // no kubelet file: nothing to check
        m.get("h1")
            .facts
            .files
            .insert("/etc/default/kubelet".into(), FileFact::Absent);
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::KubeletNodeIp, None, Some("h2".into()))],
            "{}",
            text(&r)
        );
        assert!(
            r.problems[0]
                .why
                .contains("sets node IP 192.168.0.11, not the WireGuard address 10.100.0.2")
        );
        // a Red Hat node's file is /etc/sysconfig/kubelet
        let mut m = Mesh::healthy(INV);
        m.get("h2").facts.os_family = Some(OsFamily::Redhat);
        m.get("h2").facts.files.insert(
            "/etc/sysconfig/kubelet".into(),
            FileFact::Present {
                mode: 0o644,
                content: "KUBELET_EXTRA_ARGS=\n".into(),
            },
        );
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::KubeletNodeIp, None, Some("h2".into()))]
        );
        assert!(r.problems[0].why.contains("sets no node IP"));
        // a k3s node's is wgprov's config.yaml.d file; its kubeadm file is not looked at
        let k3s = INV.replace(
            "h2: {address: 192.168.0.11}",
            "h2: {address: 192.168.0.11, kubernetes: k3s}",
        );
        let mut m = Mesh::healthy(&k3s);
        m.get("h2").facts.files.insert(
            "/etc/default/kubelet".into(),
            FileFact::Present {
                mode: 0o644,
                content: "KUBELET_EXTRA_ARGS=--node-ip=192.168.0.11\n".into(),
            },
        );
        assert_eq!(kinds(&m.report()), vec![]);
        m.get("h2").facts.files.insert(
            "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml".into(),
            FileFact::Present {
                mode: 0o644,
                content: "# managed\nnode-ip: 10.100.0.9\nflannel-iface: wg0\n".into(),
            },
        );
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::KubeletNodeIp, None, Some("h2".into()))]
        );
        assert!(
            r.problems[0].why.starts_with(
                "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml sets node IP 10.100.0.9, not the WireGuard address 10.100.0.2"
            ),
            "{}",
            r.problems[0].why
        );
    }

    #[test]
    fn next_hops_without_systemd_warn_that_nothing_reresolves_a_name() {
        let named = INV.replace(
            "  cabin:\n    nodes:",
            "  cabin:\n    endpoint: cabin.example.net:51821\n    nodes:",
        );
        let mut m = Mesh::healthy(&named);
        let r = m.report();
        assert_eq!(kinds(&r), vec![], "{}", text(&r));
        assert_eq!(r.exit_code(), 0, "a warning is not a problem");
        assert_eq!(
            r.warnings,
            vec![
                "h1: nothing re-resolves cabin.example.net:51821 without systemd: if that address changes, the link stays down until wg0 restarts",
                "o1: nothing re-resolves cabin.example.net:51821 without systemd: if that address changes, the link stays down until wg0 restarts",
            ]
        );
        assert!(text(&r).contains("warning: h1: nothing re-resolves"));
        for n in ["h1", "o1"] {
            m.get(n).facts.systemd = true;
        }
        assert!(m.report().warnings.is_empty());
        assert!(Mesh::healthy(INV).report().warnings.is_empty());
    }

    #[test]
    fn a_stale_handshake_without_an_answer_is_down_a_fresh_one_is_up() {
        let mut m = Mesh::healthy(INV);
        // ICMP dropped on o2, but the tunnel handshook 30 s ago: up
        m.silent("o1", "o2", Some(30));
        m.silent("o2", "o1", Some(30));
        assert!(link(&m.report(), "o1", "o2").up);
        assert_eq!(m.report().problems, vec![]);
        m.silent("o1", "o2", Some(400));
        m.silent("o2", "o1", None);
        let r = m.report();
        assert_eq!(link(&r, "o1", "o2").state, "down");
        assert_eq!(
            kinds(&r),
            vec![(Kind::NoHandshake, None, Some("o1".into()))]
        );
        assert!(r.problems[0].why.contains("last handshake 400 s ago"));
        assert!(r.problems[0].why.contains("LAN between them"));
    }

    #[test]
    fn an_unmanaged_site_without_keepalive_and_no_recent_handshake_is_unknown_not_down() {
        let yaml = INV.replace(
            "  cluster_cidrs:",
            "  persistent_keepalive: 0\n  cluster_cidrs:",
        );
        let mut m = Mesh::healthy(&yaml);
        m.silent("o1", "site friend", Some(600));
        let r = m.report();
        assert_eq!(r.problems, vec![], "{}", text(&r));
        assert_eq!(link(&r, "o1", "site friend").state, "unknown");
        // with keepalive, a working link renews its handshake every 2 minutes: stale is down
        let mut m = Mesh::healthy(INV);
        m.silent("o1", "site friend", Some(600));
        let r = m.report();
        assert_eq!(link(&r, "o1", "site friend").state, "down");
        assert_eq!(
            kinds(&r),
            vec![(Kind::NoHandshake, None, Some("o1".into()))]
        );
        assert_eq!(r.problems[0].peer.as_deref(), Some("site friend"));
    }

    #[test]
    fn the_picture_gets_every_known_link_with_unmanaged_sites_spelled_for_dot() {
        let mut m = Mesh::healthy(INV);
        m.cut("c1", "o1");
        let p = m.report().picture_links();
        assert!(
            p.contains(&("c1".into(), "o1".into(), false))
                || p.contains(&("o1".into(), "c1".into(), false))
        );
        assert!(
            p.iter()
                .any(|(a, b, up)| *up && (a == "site:friend" || b == "site:friend"))
        );
    }

    #[test]
    fn the_json_has_nodes_links_and_problems_with_their_culprits() {
        let mut m = Mesh::healthy(INV);
        m.cut("c1", "o1");
        let v = serde_json::to_value(m.report()).unwrap();
        assert_eq!(v["problems"][0]["kind"], "port_forward_missing");
        assert_eq!(v["problems"][0]["site"], "office");
        assert_eq!(v["problems"][0]["node"], serde_json::Value::Null);
        assert_eq!(v["problems"][0]["peer"], serde_json::Value::Null);
        assert!(v["links"][0]["from"].is_string() && v["links"][0]["up"].is_boolean());
        assert!(v["nodes"][0]["peers"][0]["handshake_age"].is_u64());
        let all = v.to_string();
        for kp in m.keys.values() {
            assert!(
                !all.contains(kp.private.expose_base64().as_str()),
                "a private key in the JSON"
            );
        }
    }

    #[test]
    fn the_script_pings_first_then_reads_and_its_output_parses() {
        let t: Vec<Ipv4Addr> = vec!["10.100.1.1".parse().unwrap(), "10.100.2.1".parse().unwrap()];
        let wg0 = InterfaceName::default();
        let paths = [RemotePath::new("/etc/wireguard/wg0.conf").unwrap()];
        let s = script(&wg0, &t, &paths, "", Duration::from_secs(6));
        assert!(s.starts_with("# wgprov:status\n"));
        let ping = s.find(probe::PROBE).unwrap();
        assert!(
            ping < s.find("wg show").unwrap(),
            "the dump is read after the pings"
        );
        assert!(s.contains("/proc/sys/net/ipv4/ip_forward"));
        if let Err(e) = crate::shell::sh_syntax(&s) {
            panic!("{e}");
        }
        assert!(!script(&wg0, &[], &paths, "", Duration::from_secs(6)).contains(probe::PROBE));

        let fact = gather::MARK;
        let out = format!(
            "{p} up 10.100.1.1\n{p} down 10.100.2.1\n{MARK} ip_forward 1\n{MARK} link 7: wg0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1420 qdisc noqueue\n{fact} wg\nPRIV\tPUB\t51820\toff\n{fact} now\n{NOW}\n{fact} end\n",
            p = probe::PROBE
        );
        let o = parse(&out, &t).unwrap();
        assert!(o.iface_up && o.ip_forward == Some(true));
        assert!(o.answered[&t[0]]);
        assert!(!o.answered[&t[1]]);
        assert_eq!(o.facts.wg.as_ref().unwrap().public_key, "PUB");
        // down, absent, unreadable
        let down = out
            .replace("NOARP,UP,LOWER_UP", "NOARP")
            .replace("ip_forward 1", "ip_forward 0");
        let o = parse(&down, &t).unwrap();
        assert!(!o.iface_up && o.ip_forward == Some(false));
        let absent = format!("{MARK} ip_forward \n{MARK} link \n{fact} wg\n{fact} end\n");
        let o = parse(&absent, &t).unwrap();
        assert!(!o.iface_up && o.ip_forward.is_none() && o.facts.wg.is_none());
        assert!(!o.answered.values().any(|a| *a));
        assert!(parse("cut short", &t).is_err());
    }

    #[tokio::test]
    async fn every_node_is_observed_in_one_exec_and_a_node_without_a_session_is_unreachable() {
        let t = topo(INV);
        let fact = gather::MARK;
        let h1 = Arc::new(FakeHost::new());
        h1.reply(
            "status",
            &format!("{MARK} link 3: wg0: <UP>\n{fact} wg\nPRIV\tPUB\t51820\toff\n{fact} end\n"),
        );
        let o1 = Arc::new(FakeHost::new());
        o1.fail(
            "status",
            crate::transport::TransportError::Lost("gone".into()),
        );
        let sessions: HashMap<String, std::result::Result<Arc<FakeHost>, String>> = [
            ("h1".to_string(), Ok(h1.clone())),
            ("o1".to_string(), Ok(o1)),
            ("o2".to_string(), Err("unreachable: refused".to_string())),
        ]
        .into();
        let obs = observe_all(&t, &sessions, 4, Duration::from_secs(1)).await;
        assert_eq!(obs.len(), t.nodes.len());
        assert!(obs["h1"].as_ref().unwrap().iface_up);
        assert!(obs["o1"].as_ref().unwrap_err().contains("gone"));
        assert_eq!(obs["o2"].as_ref().unwrap_err(), "unreachable: refused");
        assert_eq!(obs["c1"].as_ref().unwrap_err(), "not contacted");
        assert_eq!(h1.kinds(), vec!["status"]);
        let sent = &h1.received()[0];
        // h1 pings its member and the other managed sites' next-hops, not the unmanaged one
        for n in ["h2", "o1", "c1"] {
            assert!(
                sent.contains(&t.node(n).unwrap().wireguard_ip.to_string()),
                "{n}"
            );
        }
        assert!(
            sent.contains("/etc/sysconfig/kubelet") && sent.contains("/etc/wireguard/wg0.conf")
        );
    }
}
