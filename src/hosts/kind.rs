//! The kinds of host wgprov manages, each knowing itself: which files its facts read and which
//! extra sections they gather, its desired files, the key and peers it has now, why it cannot
//! be planned, its drift, and what putting it back re-runs. apply, status and render ask the
//! kind instead of branching on router kinds.

use crate::desired::{self, DesiredFile, HostInput, KeyRing};
use crate::error::Result;
use crate::facts::Facts;
use crate::facts::gather;
use crate::facts::wgconf::WgConfig;
use crate::inventory::{ManagedKind, ManagedRouter};
use crate::keys::{Keypair, PrivateKey};
use crate::roles::Roles;
use crate::shell::{InterfaceName, RemotePath};
use crate::topology::{NodePlan, SitePlan, Topology};

use super::HostError;
use super::handlers::HandlerPlan;
use super::{linux, openwrt_hub};

/// One host wgprov manages.
#[derive(Clone, Copy, Debug)]
pub enum HostKind<'a> {
    /// A node of the mesh (a Linux router that is its site's hub is planned as one).
    Node(&'a NodePlan),
    /// An OpenWrt router that is its site's hub: a node of the mesh set through uci.
    OpenwrtHub(&'a NodePlan, &'a ManagedRouter),
    /// A managed router that forwards the WireGuard port to its site's next-hop.
    Forwarder(&'a SitePlan, &'a ManagedRouter),
    /// A node marked `state: absent`: taken out of the mesh and cleaned.
    Removed(&'a NodePlan),
    /// A managed router of a site marked `state: absent`: wgprov's rules and sections taken
    /// down.
    RemovedRouter(&'a ManagedRouter),
}

/// Where a node's wg-quick file lives.
pub fn conf_path(iface: &InterfaceName) -> String {
    format!("/etc/wireguard/{iface}.conf")
}

impl<'a> HostKind<'a> {
    /// The host called `name`, when wgprov manages one.
    pub fn of(topo: &'a Topology, name: &str) -> Option<HostKind<'a>> {
        if let Some(n) = topo.node(name) {
            return Some(match openwrt_hub::of(topo, n) {
                Some(r) => HostKind::OpenwrtHub(n, r),
                None => HostKind::Node(n),
            });
        }
        if let Some(n) = topo.removed_node(name) {
            return Some(HostKind::Removed(n));
        }
        if let Some((_, r)) = topo.removed_router(name) {
            return Some(HostKind::RemovedRouter(r));
        }
        topo.router(name).map(|(s, r)| HostKind::Forwarder(s, r))
    }

    /// Its name.
    pub fn name(&self) -> &'a str {
        match self {
            HostKind::Node(n) | HostKind::OpenwrtHub(n, _) | HostKind::Removed(n) => &n.name,
            HostKind::Forwarder(_, r) | HostKind::RemovedRouter(r) => &r.name,
        }
    }

    /// The node of the mesh it is, unless it only forwards the port.
    pub fn node(&self) -> Option<&'a NodePlan> {
        match self {
            HostKind::Node(n) | HostKind::OpenwrtHub(n, _) => Some(n),
            HostKind::Forwarder(..) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => None,
        }
    }

    /// True for a managed router that only forwards the port.
    pub fn is_forwarder(&self) -> bool {
        matches!(self, HostKind::Forwarder(..))
    }

    /// True for a node or a router being taken out.
    pub fn is_removed(&self) -> bool {
        matches!(self, HostKind::Removed(_) | HostKind::RemovedRouter(_))
    }

    /// True for an OpenWrt router that is its site's hub.
    pub fn is_openwrt_hub(&self) -> bool {
        matches!(self, HostKind::OpenwrtHub(..))
    }

    /// Every path its desired state may touch: what its facts read.
    pub fn candidate_paths(&self, roles: &Roles, topo: &Topology) -> Result<Vec<RemotePath>> {
        Ok(match self {
            HostKind::Node(n) => desired::candidate_paths(roles, topo, n)?,
            HostKind::OpenwrtHub(..) => openwrt_hub::candidate_paths(),
            HostKind::Forwarder(..) | HostKind::RemovedRouter(_) => super::candidate_paths(),
            HostKind::Removed(_) => desired::removal::paths(roles, &topo.network.interface)?,
        })
    }

    /// Its facts script: the files at `paths`, and the sections its kind adds.
    pub fn facts_script(&self, iface: &InterfaceName, paths: &[RemotePath]) -> String {
        match self {
            HostKind::Node(_) => {
                gather::script_with(iface, paths, &super::failover::facts_section())
            }
            HostKind::Removed(_) => gather::script(iface, paths),
            HostKind::OpenwrtHub(..) => {
                gather::script_with(iface, paths, &openwrt_hub::facts_section(iface))
            }
            HostKind::Forwarder(..) | HostKind::RemovedRouter(_) => {
                gather::script_with(iface, paths, &super::facts_section())
            }
        }
    }

    /// What `status` adds to its observation of a node (an OpenWrt hub's check).
    pub fn status_section(&self) -> String {
        match self {
            HostKind::OpenwrtHub(..) => openwrt_hub::check_section(),
            HostKind::Node(_) => super::failover::facts_section(),
            _ => String::new(),
        }
    }

    /// The key pair it already has: `None` when it has none (or forwards only), an error when
    /// the one it has is malformed (never silently replaced: that would change its identity
    /// behind its peers' backs).
    pub fn existing_key(
        &self,
        facts: &Facts,
        iface: &InterfaceName,
    ) -> Option<std::result::Result<Keypair, HostError>> {
        match self {
            HostKind::Node(_) => {
                let wg_path = conf_path(iface);
                let conf = facts.files.get(&wg_path)?.content()?;
                let k = WgConfig::parse(conf).private_key()?.to_string();
                Some(
                    PrivateKey::from_base64(&k)
                        .map(|k| k.into_keypair())
                        .map_err(|_| HostError::MalformedKey { path: wg_path }),
                )
            }
            HostKind::OpenwrtHub(..) => openwrt_hub::existing_key(facts, iface),
            HostKind::Forwarder(..) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => None,
        }
    }

    /// The peers it has now, each a public key and its AllowedIPs: what keeps the entry of a
    /// peer whose node cannot be read.
    pub fn existing_peers(
        &self,
        facts: &Facts,
        iface: &InterfaceName,
    ) -> Vec<(String, Vec<String>)> {
        match self {
            HostKind::Node(_) => facts
                .files
                .get(&conf_path(iface))
                .and_then(|x| x.content())
                .map(|t| WgConfig::parse(t).peer_list())
                .unwrap_or_default(),
            HostKind::OpenwrtHub(..) => facts
                .files
                .get(openwrt_hub::HUB_SCRIPT)
                .and_then(|x| x.content())
                .map(openwrt_hub::peers_of)
                .unwrap_or_default(),
            HostKind::Forwarder(..) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => {
                Vec::new()
            }
        }
    }

    /// Why it cannot be planned from these facts, if it cannot.
    pub fn refusal(&self, facts: &Facts, iface: &InterfaceName) -> Option<String> {
        match self {
            HostKind::OpenwrtHub(..) => openwrt_hub::refusal(facts, iface),
            _ => None,
        }
    }

    /// The desired files of a node of the mesh, and the peers left out because their key is
    /// unknown (nothing for a router that only forwards: see [`HostKind::forwarder_files`]).
    pub fn desired(
        &self,
        roles: &Roles,
        topo: &Topology,
        keys: &KeyRing,
        input: &HostInput,
    ) -> Result<(Vec<DesiredFile>, Vec<String>)> {
        match self {
            HostKind::Node(_) => desired::desired_files_with_skips(roles, topo, keys, input),
            HostKind::OpenwrtHub(n, r) => {
                openwrt_hub::desired(topo, n, r, keys, input.peer_fallback, input.preshared)
            }
            HostKind::Forwarder(..) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => {
                Ok((Vec::new(), Vec::new()))
            }
        }
    }

    /// The desired files of a host that is no node of the mesh, from its facts: a forwarding
    /// router's (the firewall backend it has, whether systemd runs), a removed node's (none of
    /// wgprov's, the kubelet's node IP given back); nothing for a node.
    pub fn own_files(
        &self,
        roles: &Roles,
        topo: &Topology,
        facts: &Facts,
    ) -> std::result::Result<Vec<DesiredFile>, HostError> {
        match self {
            HostKind::Forwarder(s, r) => super::desired(topo, s, r, facts),
            HostKind::Removed(_) => {
                let (space, space6) = (topo.network.wireguard_cidr, topo.network.wireguard_cidr6);
                // `--node-ip` of the WireGuard space: `10.100.0.3`, or `10.100.0.3,fd10:100::3`
                let ours = |v: &str| {
                    v.split(',')
                        .any(|a| match a.trim().parse::<std::net::IpAddr>() {
                            Ok(std::net::IpAddr::V4(a)) => space.contains(&a),
                            Ok(std::net::IpAddr::V6(a)) => {
                                space6.is_some_and(|(s, _)| s.contains(&a))
                            }
                            Err(_) => false,
                        })
                };
                let existing = |p: &str| {
                    facts
                        .files
                        .get(p)
                        .and_then(|x| x.content())
                        .map(str::to_string)
                };
                desired::removal::files(roles, &topo.network.interface, &ours, &existing)
                    .map_err(|e| HostError::Render(e.to_string()))
            }
            HostKind::RemovedRouter(_) => Ok(super::removal_files()),
            _ => Ok(Vec::new()),
        }
    }

    /// What the operator must do for its state to come back at boot, when nothing here does.
    pub fn boot_warning(&self, facts: &Facts) -> Option<String> {
        match self {
            HostKind::Forwarder(_, r) if !facts.systemd && r.kind == ManagedKind::Linux => {
                Some(format!(
                    "systemd is not running here: nothing re-installs the port-forward at boot; run `sh {}` from the router's boot scripts (e.g. /etc/rc.local)",
                    super::PF_SCRIPT
                ))
            }
            _ => None,
        }
    }

    /// How its running state differs from the state its unchanged script sets, when its kind
    /// checks that on the host (a router's own check; a node's drift is its interface's,
    /// [`super::drift`]).
    pub fn script_drift(&self, facts: &Facts) -> Option<String> {
        match self {
            HostKind::Node(_) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => None,
            HostKind::OpenwrtHub(..) => openwrt_hub::drift(facts),
            HostKind::Forwarder(..) => linux::drift(facts),
        }
    }

    /// The script whose check is that drift check.
    pub fn checked_script(&self) -> Option<&'static str> {
        match self {
            HostKind::Node(_) | HostKind::Removed(_) | HostKind::RemovedRouter(_) => None,
            HostKind::OpenwrtHub(..) => Some(openwrt_hub::HUB_SCRIPT),
            HostKind::Forwarder(..) => Some(super::PF_SCRIPT),
        }
    }

    /// How to install `conntrack` on it, when its handlers flush entries.
    pub fn conntrack_hint(&self) -> Option<&'static str> {
        match self {
            HostKind::Node(_) | HostKind::Removed(_) => None,
            HostKind::OpenwrtHub(..) => Some("opkg install conntrack"),
            HostKind::Forwarder(_, r) | HostKind::RemovedRouter(r) => Some(match r.kind {
                ManagedKind::Linux => "apt-get install conntrack",
                ManagedKind::Openwrt => "opkg install conntrack",
            }),
        }
    }

    /// Its kind alone, without the plan's borrows.
    pub fn kind(&self) -> Kind {
        match self {
            HostKind::Node(_) | HostKind::Removed(_) => Kind::Node,
            HostKind::OpenwrtHub(..) => Kind::OpenwrtHub,
            HostKind::Forwarder(..) | HostKind::RemovedRouter(_) => Kind::Forwarder,
        }
    }
}

/// The kind of a host alone: what putting its last backup back reads and re-runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A node of the mesh (a Linux hub router too).
    Node,
    /// An OpenWrt router that is its site's hub.
    OpenwrtHub,
    /// A managed router that forwards the port.
    Forwarder,
}

impl Kind {
    /// The paths `wgprov rollback` reads before putting the last backup back.
    pub fn rollback_paths(&self) -> Vec<RemotePath> {
        match self {
            Kind::Node => Vec::new(),
            Kind::OpenwrtHub | Kind::Forwarder => super::candidate_paths(),
        }
    }

    /// The handlers that bring restored files into effect: a router's port-forward re-installed
    /// from the restored script (and the conntrack entries of the port in place flushed); an
    /// OpenWrt hub's script run (its port-forward script, if one came back, too); every handler
    /// of a node.
    pub fn rollback_handlers(&self, facts: &Facts) -> HandlerPlan {
        let pf_ports = || {
            super::flush_ports(
                facts.files.get(super::PF_SCRIPT).and_then(|f| f.content()),
                None,
            )
        };
        match self {
            Kind::Node => HandlerPlan::everything(),
            Kind::Forwarder => HandlerPlan {
                daemon_reload: true,
                port_forward: Some(pf_ports()),
                router_hub: true,
                ..Default::default()
            },
            Kind::OpenwrtHub => HandlerPlan {
                port_forward: Some(pf_ports()),
                router_hub: true,
                ..Default::default()
            },
        }
    }

    /// What a rollback report says was re-run.
    pub fn rollback_described(&self) -> &'static str {
        match self {
            Kind::Node => "wireguard, sysctl, kubelet re-run with the restored files",
            Kind::Forwarder => "port_forward re-run with the restored files",
            Kind::OpenwrtHub => "router_hub re-run with the restored files",
        }
    }
}
