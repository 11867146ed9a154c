//! From what each host should have and what it has to what must change: the keys every node
//! keeps or gets, and per targeted host its changes, handlers, drift and warnings; the order of
//! change ([`order`]). Pure: facts in, a plan out, no host touched. `--check` prints this plan.

pub mod order;
mod psk;

use std::collections::{BTreeSet, HashMap};

use crate::desired::{FileState, HostInput, KeyRing, PskRing};
use crate::diff::{self, Action, Change};
use crate::formats::state::{Facts, FileFact};
use crate::formats::wgconf::WgConfig;
use crate::hosts::HostError;
use crate::hosts::handlers::{Expect, HandlerPlan, plan_handlers};
use crate::hosts::kind::{HostKind, conf_path};
use crate::inventory::OsFamily;
use crate::keys::{Keypair, PublicKey};
use crate::roles::Roles;
use crate::shell::InterfaceName;
use crate::topology::Topology;

/// Why a host cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Its kind cannot plan it (a malformed key, no address to forward to).
    #[error(transparent)]
    Host(#[from] HostError),
    /// Its kind refuses what the host has (e.g. peers wgprov did not create on an OpenWrt hub).
    #[error("{0}")]
    Refused(String),
    /// Its files do not render for its facts (the host's failure, not the inventory's: hosts
    /// were contacted).
    #[error("rendering its files: {0}")]
    Render(String),
}

/// What one host must do, computed from its facts.
#[derive(Clone, Debug)]
pub struct HostPlan {
    /// Every desired file compared with what the host has.
    pub changes: Vec<Change>,
    /// The handlers the changes (and drift) need.
    pub handlers: HandlerPlan,
    /// What the change checks on the host once the handlers ran.
    pub expect: Option<Expect>,
    /// The facts it was planned from (the transaction backs up what they found).
    pub facts: Facts,
    /// How the running state differs from the files it should follow.
    pub drift: Vec<String>,
    /// What the operator should know.
    pub warnings: Vec<String>,
}

impl HostPlan {
    /// True when the host has something to do: a file to change, or a handler to run.
    pub fn changes_anything(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
            || self.handlers != HandlerPlan::default()
    }
}

/// The keys of the network: kept where a node has one, new for targeted nodes without.
#[derive(Debug, Default)]
pub struct Keys {
    /// Every key known, by node.
    pub ring: KeyRing,
    /// Nodes whose key is new in this run.
    pub new: BTreeSet<String>,
    /// Nodes whose key is malformed, with why (never replaced).
    pub bad: HashMap<String, HostError>,
    /// What the run should say about keys it could not learn.
    pub warnings: Vec<String>,
    /// Nodes whose key this run replaces (`rotate-keys`).
    pub rotated: BTreeSet<String>,
    /// The public keys the nodes had before this run (what their peers list now).
    pub before: HashMap<String, PublicKey>,
    /// The preshared keys of the links (`network.preshared_keys`).
    pub psk: PskRing,
    /// The links whose preshared key this run renews (`a <-> b`).
    pub psk_renewed: Vec<String>,
}

/// What a run renews besides what it converges (`rotate-keys`).
#[derive(Clone, Debug, Default)]
pub struct Rotation {
    /// Nodes that get a new key pair.
    pub nodes: BTreeSet<String>,
    /// The links of those nodes get new preshared keys too.
    pub preshared: bool,
}

/// Adopts the keys of every node that was read (`facts`), and makes new ones for the
/// `targeted` nodes that have none.
pub fn keys(topo: &Topology, facts: &HashMap<String, Facts>, targeted: &BTreeSet<&str>) -> Keys {
    keys_rotating(topo, facts, targeted, &Rotation::default())
}

/// [`keys`], with new key pairs for the targeted nodes `rotation` names (and new preshared
/// keys for their links, when it says so).
pub fn keys_rotating(
    topo: &Topology,
    facts: &HashMap<String, Facts>,
    targeted: &BTreeSet<&str>,
    rotation: &Rotation,
) -> Keys {
    let iface = &topo.network.interface;
    let mut k = Keys::default();
    for n in &topo.nodes {
        let is_target = targeted.contains(n.name.as_str());
        let kind = HostKind::of(topo, &n.name).expect("a node is a host");
        match facts.get(&n.name) {
            Some(f) => match kind.existing_key(f, iface) {
                Some(Ok(key)) => {
                    k.before.insert(n.name.clone(), key.public);
                    let key = if is_target && rotation.nodes.contains(&n.name) {
                        k.rotated.insert(n.name.clone());
                        Keypair::generate()
                    } else {
                        key
                    };
                    k.ring.insert(n.name.clone(), key);
                }
                Some(Err(e)) => {
                    k.bad.insert(n.name.clone(), e);
                }
                None if is_target => {
                    k.ring.insert(n.name.clone(), Keypair::generate());
                    k.new.insert(n.name.clone());
                }
                None => k.warnings.push(format!(
                    "node {} has no WireGuard key yet and is outside --limit: its peers cannot list it until it is applied",
                    n.name
                )),
            },
            None if !is_target => k.warnings.push(format!(
                "node {} could not be read: its peers keep their existing entry for it",
                n.name
            )),
            None => {}
        }
    }
    let in_run: BTreeSet<&str> = targeted
        .iter()
        .copied()
        .filter(|n| facts.contains_key(*n))
        .collect();
    let renew = if rotation.preshared {
        rotation.nodes.clone()
    } else {
        BTreeSet::new()
    };
    (k.psk, k.psk_renewed) = psk::ring(topo, facts, &k.before, &in_run, &renew, &mut k.warnings);
    k
}

/// The OS family to plan for: what the host says, else the inventory, else Debian; a warning
/// when the two disagree.
fn os_family(found: Option<OsFamily>, said: Option<OsFamily>, w: &mut Vec<String>) -> OsFamily {
    match (found, said) {
        (Some(found), Some(said)) if found != said => {
            w.push(format!(
                "the inventory says os_family {}, the host's /etc/os-release says {}: using {}",
                said.as_str(),
                found.as_str(),
                found.as_str()
            ));
            found
        }
        (Some(found), _) => found,
        (None, Some(said)) => said,
        (None, None) => OsFamily::Debian,
    }
}

/// Plans one host from its facts: its desired files against what it has, the handlers, its
/// drift, what its change checks. An error says why it cannot be planned (its key is
/// malformed, its kind refuses these facts, its files do not render).
pub fn host(
    kind: HostKind,
    roles: &Roles,
    topo: &Topology,
    keys: &Keys,
    f: &Facts,
) -> Result<HostPlan, PlanError> {
    let name = kind.name();
    let iface = &topo.network.interface;
    let wg_path = conf_path(iface);
    if let Some(e) = keys.bad.get(name) {
        return Err(e.clone().into());
    }
    if let Some(why) = kind.refusal(f, iface) {
        return Err(PlanError::Refused(why));
    }
    let mut warnings = Vec::new();
    let os = os_family(
        f.os_family,
        kind.node().and_then(|n| n.os_family),
        &mut warnings,
    );
    if keys.new.contains(name) {
        warnings.push("no WireGuard key on the node: a new one is generated".into());
    }
    if keys.rotated.contains(name) {
        warnings.push("key rotated: a new key pair replaces the node's".into());
    }
    let files = files(kind, roles, topo, keys, f, os, &mut warnings)?;
    let node = kind.node();
    let changes = diff::compare(&files, &|p| {
        f.files.get(p).cloned().unwrap_or(FileFact::Absent)
    });
    let mut handlers = plan_handlers(&changes, f, &wg_path);
    if handlers.kubelet {
        handlers.node_ip = node.map(|n| n.wireguard_ip.to_string());
    }
    let drift = drift(kind, &changes, f, iface, &mut handlers);
    if let Some(install) = kind.conntrack_hint() {
        plan_flush(&changes, f, &mut handlers, install, &mut warnings);
    }
    if let Some(w) = kind.boot_warning(f) {
        warnings.push(w);
    }
    let planned_conf = files
        .iter()
        .find(|d| d.path == wg_path)
        .and_then(|d| match &d.state {
            FileState::Present { content, .. } => Some(content.clone()),
            FileState::Absent => None,
        });
    if let Some(c) = &planned_conf {
        warnings.extend(config_warnings(c, f));
    }
    let expect = node.and_then(|n| {
        let public_key = keys.ring.get(&n.name)?.public.to_base64();
        match kind.checked_script() {
            Some(script) => files
                .iter()
                .find(|d| d.path == script)
                .and_then(|d| d.state.content())
                .map(|s| Expect::from_peers(&public_key, &crate::hosts::openwrt_hub::peers_of(s))),
            None => planned_conf
                .as_deref()
                .map(|c| Expect::from_conf(&public_key, c)),
        }
    });
    Ok(HostPlan {
        changes,
        handlers,
        expect,
        facts: f.clone(),
        drift,
        warnings,
    })
}

/// A host's desired files; a peer whose node could not be read keeps the entry the host has
/// for it (same AllowedIPs), and one with no entry is left out with a warning.
fn files(
    kind: HostKind,
    roles: &Roles,
    topo: &Topology,
    keys: &Keys,
    f: &Facts,
    os: OsFamily,
    warnings: &mut Vec<String>,
) -> Result<Vec<crate::desired::DesiredFile>, PlanError> {
    let iface = &topo.network.interface;
    let known = kind.existing_peers(f, iface);
    let fallback = |allowed: &str| -> Option<String> {
        let want: BTreeSet<&str> = allowed.split(',').map(str::trim).collect();
        known
            .iter()
            .find(|(k, a)| {
                !k.is_empty() && a.iter().map(String::as_str).collect::<BTreeSet<_>>() == want
            })
            .map(|(k, _)| k.clone())
    };
    let existing = |p: &str| f.files.get(p).and_then(|x| x.content()).map(str::to_string);
    let files = match kind.node() {
        Some(node) => {
            let input = HostInput {
                node,
                os_family: os,
                systemd: f.systemd,
                existing: &existing,
                peer_fallback: Some(&fallback),
                preshared: &keys.psk,
            };
            // hosts were contacted: a template that fails for this host's facts is this
            // host's failure (exit 1), not an invalid inventory (exit 2)
            let (files, skipped) = kind
                .desired(roles, topo, &keys.ring, &input)
                .map_err(|e| PlanError::Render(e.to_string()))?;
            for s in skipped {
                warnings.push(format!("peer {s} left out: its key is unknown (its node could not be read and this host has no entry for it)"));
            }
            files
        }
        None => kind.own_files(roles, topo, f)?,
    };
    Ok(files)
}

/// Drift of a host whose files are unchanged: a node's running interface against its config,
/// a router's state against its script's check. Adds the handlers that repair it.
fn drift(
    kind: HostKind,
    changes: &[Change],
    f: &Facts,
    iface: &InterfaceName,
    handlers: &mut HandlerPlan,
) -> Vec<String> {
    let unchanged = |path: &str| {
        changes
            .iter()
            .find(|c| c.desired.path == path && c.action == Action::Unchanged)
    };
    match kind.checked_script() {
        None => {
            let Some(conf) = unchanged(&conf_path(iface)).and_then(|c| c.current.content()) else {
                return Vec::new();
            };
            let d = crate::hosts::drift::detect(conf, f, iface);
            handlers.repair(&d);
            d.into_iter().map(|d| d.what).collect()
        }
        Some(script) => {
            let Some(d) = unchanged(script).and(kind.script_drift(f)) else {
                return Vec::new();
            };
            if kind.is_forwarder() {
                handlers.port_forward.get_or_insert_with(Vec::new);
            } else {
                handlers.router_hub = true;
            }
            vec![d]
        }
    }
}

/// The port_forward handler's public ports to flush (the port-forward script's before and
/// after), with a warning when the router has no `conntrack`; `install` says how to get it.
fn plan_flush(
    changes: &[Change],
    f: &Facts,
    handlers: &mut HandlerPlan,
    install: &str,
    warnings: &mut Vec<String>,
) {
    if let Some(ports) = &mut handlers.port_forward {
        let c = changes
            .iter()
            .find(|c| c.desired.path == crate::hosts::PF_SCRIPT);
        *ports = crate::hosts::flush_ports(
            c.and_then(|c| c.current.content()),
            c.and_then(|c| c.desired.state.content()),
        );
        if !f.tools.contains("conntrack") {
            warnings.push(format!("conntrack is not installed on the router: entries of the old port-forward may keep steering the WireGuard port until they time out ({install})"));
        }
    }
}

/// What an operator should know about a config wgprov is about to keep (adopted keys that
/// wg-quick treats specially).
pub fn config_warnings(conf: &str, facts: &Facts) -> Vec<String> {
    let mut w = Vec::new();
    let c = WgConfig::parse(conf);
    if let Some(i) = c.interface() {
        if i.get("SaveConfig")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            w.push("the config has SaveConfig = true: wg-quick down rewrites the file from the running interface, which can undo wgprov's changes; remove it".into());
        }
        if i.get("DNS").is_some() && !facts.tools.contains("resolvconf") {
            w.push("the config sets DNS but the node has no resolvconf: wg-quick up will fail (install resolvconf or openresolv, or remove DNS)".into());
        }
    }
    w
}

#[cfg(test)]
mod tests;
