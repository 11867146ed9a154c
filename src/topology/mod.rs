//! From a validated inventory to the network: stable address allocation, the hub-and-spoke peer
//! graph (each site's next-hop peers with its members and with every other site's hub), and x25519 keys.

pub mod alloc;
pub use crate::keys;
pub mod reach;
pub mod relay;
pub mod standby;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Diagnostic, Result};
use crate::inventory::lock::Lock;
use crate::inventory::{
    Endpoint, Flavor, Inventory, ManagedRouter, Network, Node, OsFamily, RouterKind, SshSettings,
};
use keys::PublicKey;

/// The whole network: every site and node with its address and peers.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Network-wide settings.
    pub network: Network,
    /// Sites in inventory order.
    pub sites: Vec<SitePlan>,
    /// Managed nodes in inventory order.
    pub nodes: Vec<NodePlan>,
    /// The allocation (also what the lock file records).
    pub allocation: alloc::Allocation,
    /// Nodes marked `state: absent`, to take out (in no site's `nodes`, nobody's peer); the
    /// address is the one they held, unspecified when none was ever recorded.
    pub removed: Vec<NodePlan>,
    /// The routers wgprov manages on sites marked `state: absent`, with their site's name:
    /// their port-forward (or an OpenWrt hub's sections) taken down. A Linux hub router is in
    /// `removed` instead: it is a node of the mesh.
    pub removed_routers: Vec<(String, ManagedRouter)>,
    index: HashMap<String, usize>,
}

/// One site with its block.
#[derive(Clone, Debug)]
pub struct SitePlan {
    /// Name.
    pub name: String,
    /// Its block.
    pub wireguard_cidr: Ipv4Net,
    /// False for someone else's site.
    pub managed: bool,
    /// Public endpoint, if any.
    pub endpoint: Option<Endpoint>,
    /// The next-hop node (managed sites).
    pub next_hop: Option<String>,
    /// The standby next-hop, with its own public endpoint.
    pub standby: Option<crate::inventory::Standby>,
    /// Router kind.
    pub router: RouterKind,
    /// The router, when wgprov manages it (it owns the port-forward).
    pub managed_router: Option<ManagedRouter>,
    /// LAN networks.
    pub lan_cidrs: Vec<ipnet::IpNet>,
    /// The next-hop masquerades `lan_cidrs` into the mesh.
    pub lan_access: bool,
    /// The key of the site's hub when wgprov does not run it (an unmanaged site's next-hop, a
    /// hand-run hub router).
    pub public_key: Option<PublicKey>,
    /// The LAN address of a hub router wgprov does not manage (`next_hop: router`).
    pub router_address: Option<String>,
    /// MTU of the site's uplink.
    pub wan_mtu: u16,
    /// The preshared key of the links to an unmanaged site (`preshared_key_file`).
    pub preshared_key: Option<keys::PresharedKey>,
    /// Node names.
    pub nodes: Vec<String>,
    /// The site whose next-hop relays between this site and the other sites without an
    /// endpoint (its own `relay:`, else `network.relay`).
    pub relay: Option<String>,
}

/// One managed node with its address and role.
#[derive(Clone, Debug)]
pub struct NodePlan {
    /// Name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// LAN address.
    pub address: String,
    /// WireGuard address.
    pub wireguard_ip: Ipv4Addr,
    /// True for its site's next-hop.
    pub is_next_hop: bool,
    /// True for its site's standby next-hop (peered like a hub, forwarding, carrying only its
    /// own address until a failover watchdog moves the site's routes to it).
    pub is_standby: bool,
    /// OS family from the inventory, if written.
    pub os_family: Option<OsFamily>,
    /// Its Kubernetes flavor (the node's, else the network's).
    pub kubernetes: Flavor,
    /// SSH settings.
    pub ssh: SshSettings,
    /// True for a managed router that is its site's hub (`next_hop: router`): wg0 like a
    /// next-hop, no Kubernetes.
    pub is_router: bool,
}

/// A host to connect to: its name and SSH settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// Node or router name.
    pub name: String,
    /// Where and how to connect.
    pub ssh: SshSettings,
}

impl From<&NodePlan> for SshTarget {
    fn from(n: &NodePlan) -> SshTarget {
        SshTarget {
            name: n.name.clone(),
            ssh: n.ssh.clone(),
        }
    }
}

/// Who a peer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRef {
    /// A managed node (its key lives on it).
    Node(String),
    /// An unmanaged site (its key is in the inventory).
    Site(String),
}

/// One `[Peer]` of a node's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Who it is.
    pub peer: PeerRef,
    /// The site it belongs to.
    pub site: String,
    /// `AllowedIPs`.
    pub allowed_ips: Vec<Ipv4Net>,
    /// `Endpoint`, when known.
    pub endpoint: Option<String>,
    /// `PersistentKeepalive`, on links that cross NAT.
    pub persistent_keepalive: Option<u16>,
}

impl Topology {
    /// Allocates addresses (stable against `lock`) and builds the graph.
    pub fn build(inv: &Inventory, lock: &Lock) -> Result<(Topology, Vec<Diagnostic>)> {
        let (allocation, warnings) = alloc::allocate(inv, lock)?;
        let mut sites = Vec::new();
        let mut nodes = Vec::new();
        for s in &inv.sites {
            sites.push(SitePlan {
                name: s.name.clone(),
                wireguard_cidr: allocation.site_blocks[&s.name],
                managed: s.managed,
                endpoint: s.endpoint.clone(),
                next_hop: s.next_hop.clone(),
                standby: s.standby.clone(),
                router: s.router,
                managed_router: s.managed_router.clone(),
                lan_cidrs: s.lan_cidrs.clone(),
                lan_access: s.lan_access,
                public_key: s.public_key,
                router_address: s.router_address.clone(),
                wan_mtu: s.wan_mtu,
                preshared_key: s.preshared_key.clone(),
                nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
                relay: s.relay.clone(),
            });
            for n in &s.nodes {
                let mut plan = node_plan(
                    n,
                    &allocation,
                    s.next_hop.as_deref(),
                    inv.network.kubernetes,
                );
                plan.is_standby = s.standby.as_ref().is_some_and(|b| b.node == n.name);
                nodes.push(plan);
            }
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let removed_routers: Vec<(String, ManagedRouter)> = inv
            .removed_sites
            .iter()
            .filter_map(|s| s.managed_router.clone().map(|r| (s.name.clone(), r)))
            .filter(|(_, r)| {
                r.kind == crate::inventory::ManagedKind::Openwrt
                    || !inv.removed.iter().any(|n| n.name == r.name)
            })
            .collect();
        let removed = inv
            .removed
            .iter()
            .filter(|n| !removed_routers.iter().any(|(_, r)| r.name == n.name))
            .map(|n| removed_plan(n, inv, &allocation))
            .collect();
        Ok((
            Topology {
                network: inv.network.clone(),
                sites,
                nodes,
                allocation,
                removed,
                removed_routers,
                index,
            },
            warnings,
        ))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// A peer's AllowedIPs as written in a config: its IPv4 networks, and with dual stack their
    /// IPv6 counterparts (a peer wgprov runs; a site someone else runs, or a hub router set up
    /// by hand, is peered over IPv4 only).
    pub fn allowed_ips(&self, p: &Peer) -> Vec<String> {
        let mut v: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        if matches!(p.peer, PeerRef::Node(_)) {
            v.extend(
                p.allowed_ips
                    .iter()
                    .filter_map(|n| self.network.net6_of(*n))
                    .map(|n| n.to_string()),
            );
        }
        v
    }

    /// The managed router called `name` of a site being taken out, with its site's name.
    pub fn removed_router(&self, name: &str) -> Option<(&str, &ManagedRouter)> {
        self.removed_routers
            .iter()
            .find(|(_, r)| r.name == name)
            .map(|(s, r)| (s.as_str(), r))
    }

    /// The node called `name` that is being taken out.
    pub fn removed_node(&self, name: &str) -> Option<&NodePlan> {
        self.removed.iter().find(|n| n.name == name)
    }

    /// Every host wgprov may connect to in a run: [`Topology::ssh_targets`] and the nodes
    /// being taken out.
    pub fn all_ssh_targets(&self) -> Vec<SshTarget> {
        let mut v = self.ssh_targets();
        v.extend(self.removed.iter().map(SshTarget::from));
        v.extend(self.removed_routers.iter().map(|(_, r)| SshTarget {
            name: r.name.clone(),
            ssh: r.ssh.clone(),
        }));
        v
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Every router wgprov manages, with its site, in inventory order.
    pub fn routers(&self) -> impl Iterator<Item = (&SitePlan, &ManagedRouter)> {
        self.sites
            .iter()
            .filter_map(|s| s.managed_router.as_ref().map(|r| (s, r)))
    }

    /// The managed router called `name`, with its site.
    pub fn router(&self, name: &str) -> Option<(&SitePlan, &ManagedRouter)> {
        self.routers().find(|(_, r)| r.name == name)
    }

    /// Every host wgprov reaches over SSH (nodes, then managed routers), as connection targets.
    pub fn ssh_targets(&self) -> Vec<SshTarget> {
        let mut v: Vec<SshTarget> = self
            .nodes
            .iter()
            .map(|n| SshTarget {
                name: n.name.clone(),
                ssh: n.ssh.clone(),
            })
            .collect();
        // a hub router is a node of its site already
        v.extend(
            self.routers()
                .filter(|(_, r)| self.node(&r.name).is_none())
                .map(|(_, r)| SshTarget {
                    name: r.name.clone(),
                    ssh: r.ssh.clone(),
                }),
        );
        v
    }

    /// The peers of `node`: a member has its next-hop; a next-hop has its members and every other
    /// site's next-hop.
    pub fn peers(&self, node: &NodePlan) -> Vec<Peer> {
        let mut peers = self.peers_at(&node.site, &node.name, node.is_next_hop || node.is_standby);
        standby::amend(self, node, &mut peers);
        peers
    }

    /// The peers a hub router wgprov does not manage must have: those of a next-hop of `site`.
    pub fn hand_hub_peers(&self, site: &SitePlan) -> Vec<Peer> {
        self.peers_at(&site.name, "", true)
    }

    fn peers_at(&self, site: &str, name: &str, is_next_hop: bool) -> Vec<Peer> {
        let net = &self.network;
        let site = self.site(site).expect("node's site exists");
        let port = net.listen_port;
        if !is_next_hop {
            if let Some(router) = &site.router_address {
                // the hub is a router wgprov does not manage: peered like a site of its own
                return vec![Peer {
                    peer: PeerRef::Site(site.name.clone()),
                    site: site.name.clone(),
                    allowed_ips: vec![net.wireguard_cidr],
                    endpoint: Some(host_port(router, port)),
                    persistent_keepalive: None,
                }];
            }
            let nh = self
                .node(
                    site.next_hop
                        .as_deref()
                        .expect("managed site has a next-hop"),
                )
                .expect("next-hop is a node");
            return vec![Peer {
                peer: PeerRef::Node(nh.name.clone()),
                site: site.name.clone(),
                allowed_ips: vec![net.wireguard_cidr],
                endpoint: Some(host_port(&nh.address, port)),
                persistent_keepalive: None,
            }];
        }
        let mut peers = Vec::new();
        for m in &site.nodes {
            if m == name {
                continue;
            }
            let m = self.node(m).expect("member is a node");
            peers.push(Peer {
                peer: PeerRef::Node(m.name.clone()),
                site: site.name.clone(),
                allowed_ips: vec![Ipv4Net::new(m.wireguard_ip, 32).unwrap()],
                endpoint: Some(host_port(&m.address, port)),
                persistent_keepalive: None,
            });
        }
        let keepalive = (net.persistent_keepalive > 0).then_some(net.persistent_keepalive);
        let carried = self.carried_by_relays(site);
        for other in &self.sites {
            if other.name == site.name || self.relay_between(&site.name, &other.name).is_some() {
                continue;
            }
            // a site whose hub wgprov does not run (someone else's, or a hand-run hub router)
            // is peered by its key from the inventory
            let peer = match &other.next_hop {
                Some(nh) if other.managed => PeerRef::Node(nh.clone()),
                _ => PeerRef::Site(other.name.clone()),
            };
            // a relay also carries the blocks of the sites reached through it, and this site
            // (behind NAT, without an endpoint) keeps its way to the relay open
            let relayed = carried.get(other.name.as_str());
            let mut allowed_ips = vec![other.wireguard_cidr];
            allowed_ips.extend(relayed.into_iter().flatten().map(|s| s.wireguard_cidr));
            peers.push(Peer {
                peer,
                site: other.name.clone(),
                allowed_ips,
                endpoint: other.endpoint.as_ref().map(|e| e.to_string()),
                persistent_keepalive: match relayed {
                    Some(_) => Some(relay::keepalive(net)),
                    None => keepalive,
                },
            });
        }
        peers
    }
}

fn node_plan(n: &Node, a: &alloc::Allocation, next_hop: Option<&str>, flavor: Flavor) -> NodePlan {
    NodePlan {
        name: n.name.clone(),
        site: n.site.clone(),
        address: n.address.clone(),
        wireguard_ip: a.node_ips[&n.name],
        is_next_hop: next_hop == Some(n.name.as_str()),
        is_standby: false,
        os_family: n.os_family,
        kubernetes: n.kubernetes.unwrap_or(flavor),
        ssh: n.ssh.clone(),
        is_router: n.is_router,
    }
}

/// A node being taken out, with the address it held (from the allocation's retired ones).
fn removed_plan(n: &Node, inv: &Inventory, a: &alloc::Allocation) -> NodePlan {
    let site = inv
        .site(&n.site)
        .or_else(|| inv.removed_sites.iter().find(|s| s.name == n.site));
    NodePlan {
        name: n.name.clone(),
        site: n.site.clone(),
        address: n.address.clone(),
        wireguard_ip: n
            .wireguard_ip
            .or_else(|| a.retired_ip(&n.site, &n.name))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        is_next_hop: site.is_some_and(|s| s.next_hop.as_deref() == Some(n.name.as_str())),
        is_standby: false,
        os_family: n.os_family,
        kubernetes: n.kubernetes.unwrap_or(inv.network.kubernetes),
        ssh: n.ssh.clone(),
        is_router: n.is_router,
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An inventory loaded, validated and planned.
#[derive(Debug)]
pub struct Planned {
    /// The validated inventory.
    pub inventory: crate::inventory::Inventory,
    /// The network.
    pub topology: Topology,
    /// Every warning from validation and allocation.
    pub warnings: Vec<Diagnostic>,
    /// True when the lock file was (re)written.
    pub lock_written: bool,
}

/// Loads, validates and plans the inventory at `path`, reading its lock file. With
/// `write_lock`, new allocations are recorded in the lock file (only when it changes).
pub fn plan_inventory(path: &std::path::Path, write_lock: bool) -> Result<Planned> {
    let loaded = crate::inventory::load(path)?;
    let lock_path = crate::inventory::lock_path(path);
    let lock = Lock::read(&lock_path)?;
    let (topology, mut warnings) = Topology::build(&loaded.inventory, &lock)?;
    let mut all = loaded.warnings;
    all.append(&mut warnings);
    let lock_written = if write_lock {
        topology
            .allocation
            .to_lock(&loaded.inventory)
            .write_if_changed(&lock_path)?
    } else {
        false
    };
    Ok(Planned {
        inventory: loaded.inventory,
        topology,
        warnings: all,
        lock_written,
    })
}
