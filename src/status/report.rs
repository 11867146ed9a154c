//! The report: nodes, links and problems as types (serialized as `status --format json`), the
//! text rendering, and the exit code.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

/// A link's health for the status picture: `(from, to, up)`, where `from` and `to` are node
/// names (or `site:NAME` for an unmanaged site's next-hop); the order of the two ends does not
/// matter.
pub type LinkHealth = (String, String, bool);

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
    pub state: NodeState,
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
    pub state: LinkState,
    /// Between two sites.
    pub cross_site: bool,
    /// The youngest handshake either end saw, in seconds; `None`: none seen.
    pub handshake_age: Option<u64>,
    /// Which end pinged the other, and whether it was answered.
    pub probes: BTreeMap<String, bool>,
    /// For two sites without an endpoint: the relay site their traffic crosses (its next-hop
    /// is `via`); the link has no handshake of its own, only pings tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The relay site's next-hop, for a relayed link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Reached, and its interface is up.
    Up,
    /// Reached, but its interface is missing or down.
    Down,
    /// SSH to it failed.
    Unreachable,
}

impl NodeState {
    /// Every state.
    pub const ALL: [NodeState; 3] = [NodeState::Up, NodeState::Down, NodeState::Unreachable];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A link's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// It carries traffic.
    Up,
    /// It does not, and an end could tell.
    Down,
    /// No end could be asked, or an idle link to an unmanaged site looks like a broken one.
    Unknown,
}

impl LinkState {
    /// Every state.
    pub const ALL: [LinkState; 3] = [LinkState::Up, LinkState::Down, LinkState::Unknown];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
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
    /// A site's routes run through its standby: its next-hop stopped forwarding.
    FailedOver,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Unreachable,
        Kind::InterfaceDown,
        Kind::ForwardingOff,
        Kind::PortForwardMissing,
        Kind::NoHandshake,
        Kind::Drift,
        Kind::KubeletNodeIp,
        Kind::FailedOver,
    ];

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
            Kind::FailedOver => "failed_over",
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
    /// Each site with a standby: which of its two hubs carries its routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<SiteFailover>,
}

/// A site with a standby next-hop, as the failover watchdogs of its peers report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteFailover {
    /// The site.
    pub site: String,
    /// Its next-hop.
    pub hub: String,
    /// Its standby.
    pub standby: String,
    /// The node carrying the site's routes: the standby when any watchdog moved them to it;
    /// `None` when no watchdog could be read.
    pub active: Option<String>,
    /// Each watching node (reached) and the node it routes the site through.
    pub seen_by: BTreeMap<String, String>,
}

impl StatusReport {
    /// The links whose health is known, for `status --picture` (unmanaged sites as `site:NAME`).
    pub fn picture_links(&self) -> Vec<LinkHealth> {
        let svg = |s: &str| match s.strip_prefix("site ") {
            Some(site) => format!("site:{site}"),
            None => s.to_string(),
        };
        self.links
            .iter()
            .filter(|l| l.state != LinkState::Unknown)
            .map(|l| (svg(&l.from), svg(&l.to), l.up))
            .collect()
    }

    /// 0 with no problem, else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.problems.is_empty())
    }
}

/// The report as text: nodes and their peers, links, problems with their why.
pub fn text(r: &StatusReport) -> String {
    let mut o = String::from("nodes:\n");
    for n in &r.nodes {
        let role = if n.next_hop { ", next-hop" } else { "" };
        let mut state = n.state.to_string();
        if let Some(e) = &n.error {
            let _ = write!(state, ": {e}");
        }
        if n.next_hop && n.state != NodeState::Unreachable {
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
        if let (Some(r), Some(v)) = (&l.relay, &l.via) {
            detail = vec![format!("via relay {r} ({v})")];
        }
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
    for s in &r.failover {
        let active = match &s.active {
            Some(a) if *a == s.standby => format!("FAILED OVER to its standby {a}"),
            Some(a) => format!("active hub {a} (standby {})", s.standby),
            None => format!("no watchdog read (hub {}, standby {})", s.hub, s.standby),
        };
        let _ = writeln!(o, "site {}: {active}", s.site);
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
