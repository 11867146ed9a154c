//! `wgprov status`: live mesh health from every node, and a diagnosis that names the culprit.
//!
//! One exec per node, every node at once: the node pings each planned peer over the WireGuard
//! interface (the guard's [`crate::probe`]), then reports its interface (`wg show dump` read *after*
//! the pings, so that an idle link the ping woke shows its fresh handshake), whether the
//! interface is up, `net.ipv4.ip_forward`, and its `wg0.conf` and kubelet file. [`diagnose`]
//! turns those observations into links and problems; it is pure and every rule is unit-tested.
//!
//! What is never evidence: the address:port a peer is seen at. NAT rewrites source ports, a
//! router may map a public port to another private one, and roaming moves peers: a healthy
//! network shows peers at other address:ports than configured all the time. A router is blamed
//! only when several observers agree (see [`diagnose`]).

mod observe;
mod paths;
mod report;
mod rules;

pub use observe::{
    MARK, Observations, ObserveError, Observed, PROBE_WAIT, RouterFacts, observe_all, parse,
    probe_targets, script, status,
};
pub use paths::{conf_path, kubelet_path, node_ip_path};
pub use report::{
    Kind, LinkHealth, LinkState, LinkStatus, NodeState, NodeStatus, PeerStatus, Problem,
    StatusReport, text,
};
pub use rules::{FRESH_HANDSHAKE_SECS, diagnose, drift, router_problems};

#[cfg(test)]
mod tests;
