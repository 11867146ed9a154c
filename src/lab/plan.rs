//! The lab's layout, computed from an inventory without touching anything: namespaces, links,
//! addresses, NAT rules and per-node directories. Pure, so that its choices are unit-tested.
//!
//! ```text
//!                       {P}-inet: bridge br0 = the internet (192.0.2.1/24)
//!                  ┌──────────────┼──────────────┐
//!        wan0 203.0.113.10   wan0 198.51.100.20   wan0 …           routers: MASQUERADE out of
//!          {P}-r-home          {P}-r-office                        wan0, DNAT udp <public port>
//!        br-lan 192.168.0.1/24   br-lan …                          to next-hop:<listen_port>
//!        ┌──────┼──────┐
//!      eth0   eth0   eth0          nodes {P}-n-<node>: LAN address on eth0, default via router;
//!      node1  node2  node3         mgmt0 → controller (out of band), own mount/UTS/PID namespaces
//!        └──mgmt0──┴──────┴──── bridge mgmt in {P}-ctl (controller, 100.127.255.254/32)
//! ```
//!
//! The management path: the controller reaches every node at the node's inventory `address`
//! over a separate management bridge (host routes `<address>/32 dev mgmt`), the way an operator
//! reaches servers over an out-of-band network or a VPN. It carries SSH only: the controller
//! does not forward, so WireGuard traffic between sites can only cross the routers' NAT.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

use crate::error::{Error, Result};
use crate::inventory::{Inventory, Node, OsFamily, Site};
use crate::topology::Topology;

/// The "internet" side's own address (a public server stand-in, for reachability checks).
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Where labs keep their directories.
pub const BASE_DIR: &str = "/tmp/wgprov-lab";

/// A site's router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterPlan {
    /// Site name.
    pub site: String,
    /// Namespace.
    pub ns: String,
    /// Its WAN (public) address.
    pub wan_ip: Ipv4Addr,
    /// The site LAN.
    pub lan: Ipv4Net,
    /// The router's address on the LAN.
    pub lan_ip: Ipv4Addr,
    /// UDP port-forward: public port to next-hop address and listen port.
    pub forward: Option<(u16, Ipv4Addr, u16)>,
    /// The second port-forward of a site with a standby: its public port to the standby.
    pub standby_forward: Option<(u16, Ipv4Addr, u16)>,
    /// MTU of its WAN link (the site's `wan_mtu`: 1492 makes a PPPoE-like uplink).
    pub wan_mtu: u16,
    /// When the inventory manages this router: the sshd wgprov reaches it through (over the
    /// management bridge, at its LAN address). The lab then creates no port-forward: wgprov does.
    pub sshd: Option<RouterSshd>,
}

/// The sshd of a router the inventory manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSshd {
    /// The router's host name in the inventory (`<site>-router`).
    pub name: String,
    /// Port sshd listens on.
    pub port: u16,
    /// Its directory (host key, config, overlays of /etc and /var/lib).
    pub dir: PathBuf,
    /// Its WireGuard address, when it is its site's hub (`next_hop: router`).
    pub wireguard_ip: Option<Ipv4Addr>,
}

/// A node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLab {
    /// Node name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// Namespace.
    pub ns: String,
    /// LAN (and SSH) address.
    pub address: Ipv4Addr,
    /// Prefix length of the LAN.
    pub lan_prefix: u8,
    /// Default gateway: its router's LAN address.
    pub gateway: Ipv4Addr,
    /// Port sshd listens on.
    pub ssh_port: u16,
    /// OS family to present (`/etc/os-release`).
    pub os_family: OsFamily,
    /// Its directory.
    pub dir: PathBuf,
    /// Its WireGuard address (the controller knows its host key under it too).
    pub wireguard_ip: Ipv4Addr,
}

/// The controller's leg on a site's LAN (`--controller-at SITE`), like an operator's laptop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerLan {
    /// The site.
    pub site: String,
    /// The controller's LAN address (the first free one).
    pub address: Ipv4Addr,
    /// The LAN's prefix length.
    pub prefix: u8,
    /// The site's router (the default route).
    pub gateway: Ipv4Addr,
    /// The site's next-hop: the route to the WireGuard space.
    pub next_hop: Ipv4Addr,
    /// The WireGuard space.
    pub wireguard_cidr: Ipv4Net,
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPlan {
    /// Prefix of every name.
    pub prefix: String,
    /// The lab's directory.
    pub dir: PathBuf,
    /// Internet namespace.
    pub inet_ns: String,
    /// Controller namespace.
    pub ctl_ns: String,
    /// Controller's management address.
    pub controller_ip: Ipv4Addr,
    /// Routers, one per managed site.
    pub routers: Vec<RouterPlan>,
    /// Nodes.
    pub nodes: Vec<NodeLab>,
    /// Names that resolve inside the lab (endpoint host names).
    pub hosts: Vec<(Ipv4Addr, String)>,
    /// The controller's leg on a site's LAN, if any.
    pub controller_lan: Option<ControllerLan>,
    /// `Some(image)`: nodes are Debian booted under systemd-nspawn from this image
    /// (`lab up --systemd`, see [`super::systemd`]); `None`: sshd in namespaces.
    pub systemd: Option<PathBuf>,
}

impl LabPlan {
    /// The router of `site` (every managed site of a lab has one).
    pub fn router_of(&self, site: &str) -> &RouterPlan {
        self.routers
            .iter()
            .find(|r| r.site == site)
            .expect("every site of a lab has a router")
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.inet_ns.clone(), self.ctl_ns.clone()];
        v.extend(self.routers.iter().map(|r| r.ns.clone()));
        v.extend(self.nodes.iter().map(|n| n.ns.clone()));
        v
    }
}

/// Checks a lab prefix: 1-12 lowercase letters and digits (names get `-…` appended).
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 12
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "lab prefix `{prefix}`: use 1-12 lowercase letters and digits"
        )))
    }
}

/// The directory of the lab with this prefix.
pub fn lab_dir(prefix: &str) -> PathBuf {
    PathBuf::from(BASE_DIR).join(prefix)
}

/// A lab error with this message.
fn lab_err(m: impl Into<String>) -> Error {
    Error::Lab(m.into())
}

/// Lays out the lab for `inv`. `no_port_forward`: sites whose router gets no port-forward.
pub fn plan(
    inv: &Inventory,
    topo: &Topology,
    prefix: &str,
    no_port_forward: &[String],
    controller_at: Option<&str>,
) -> Result<LabPlan> {
    check_prefix(prefix)?;
    check_sites(inv, no_port_forward, controller_at)?;
    let dir = lab_dir(prefix);
    let controller_ip = controller_address(inv)?;
    let mut pool = wan_pool(inv)?.into_iter();
    let mut routers = Vec::new();
    let mut nodes = Vec::new();
    let mut hosts = Vec::new();
    let mut seen_addr: HashMap<Ipv4Addr, String> = HashMap::new();
    for s in inv.sites.iter().filter(|s| s.managed) {
        let wan_ip = match s.endpoint.as_ref().and_then(|e| e.ip()) {
            Some(IpAddr::V4(ip)) => ip,
            Some(IpAddr::V6(_)) => {
                return Err(lab_err(format!(
                    "site {}: the lab is IPv4-only; write the endpoint as a name or an IPv4 address",
                    s.name
                )));
            }
            None => pool.next().ok_or_else(|| lab_err("out of WAN addresses"))?,
        };
        if let Some(e) = &s.endpoint
            && e.ip().is_none()
        {
            hosts.push((wan_ip, e.host.clone()));
        }
        // a hub router (`next_hop: router`) is the site's router itself, not a node of the lab
        let lab_nodes: Vec<&Node> = s.nodes.iter().filter(|n| !n.is_router).collect();
        let addrs = node_addresses(topo, &lab_nodes, &mut seen_addr)?;
        let lan = site_lan(s, &lab_nodes, &addrs)?;
        let lan_ip = router_lan_ip(s, lan, &addrs)?;
        let sshd = router_sshd(topo, s, &dir);
        let forward = if no_port_forward.contains(&s.name) || sshd.is_some() {
            None
        } else {
            Some(port_forward(inv, topo, s))
        };
        let standby_forward = match forward {
            Some(_) => standby_forward(topo, s)?,
            None => None,
        };
        routers.push(RouterPlan {
            site: s.name.clone(),
            ns: format!("{prefix}-r-{}", s.name),
            wan_ip,
            lan,
            lan_ip,
            forward,
            standby_forward,
            wan_mtu: s.wan_mtu,
            sshd,
        });
        for (n, a) in lab_nodes.iter().zip(addrs) {
            nodes.push(NodeLab {
                name: n.name.clone(),
                site: s.name.clone(),
                ns: format!("{prefix}-n-{}", n.name),
                address: a,
                lan_prefix: lan.prefix_len(),
                gateway: lan_ip,
                ssh_port: n.ssh.port,
                os_family: n.os_family.unwrap_or(OsFamily::Debian),
                dir: dir.join("nodes").join(&n.name),
                wireguard_ip: topo
                    .node(&n.name)
                    .map(|x| x.wireguard_ip)
                    .expect("managed node is planned"),
            });
        }
    }
    let controller_lan = match controller_at {
        None => None,
        Some(site) => Some(controller_lan(inv, &routers, &nodes, site)?),
    };
    Ok(LabPlan {
        prefix: prefix.to_string(),
        dir,
        inet_ns: format!("{prefix}-inet"),
        ctl_ns: format!("{prefix}-ctl"),
        controller_ip,
        routers,
        nodes,
        hosts,
        controller_lan,
        systemd: None,
    })
}

/// `--controller-at` and `--no-port-forward` name managed sites.
fn check_sites(
    inv: &Inventory,
    no_port_forward: &[String],
    controller_at: Option<&str>,
) -> Result<()> {
    if let Some(s) = controller_at
        && !inv.sites.iter().any(|x| x.managed && x.name == s)
    {
        return Err(Error::Usage(format!(
            "--controller-at {s}: no managed site of that name"
        )));
    }
    for s in no_port_forward {
        if !inv.sites.iter().any(|x| x.managed && x.name == *s) {
            return Err(Error::Usage(format!(
                "--no-port-forward {s}: no managed site of that name"
            )));
        }
    }
    Ok(())
}

/// The controller's management address: the first candidate outside every network the
/// inventory uses.
fn controller_address(inv: &Inventory) -> Result<Ipv4Addr> {
    let mut inventory_nets: Vec<IpNet> = vec![IpNet::V4(inv.network.wireguard_cidr)];
    inventory_nets.extend(inv.network.cluster_cidrs.iter().flatten().copied());
    for s in &inv.sites {
        inventory_nets.extend(s.lan_cidrs.iter().copied());
    }
    [
        Ipv4Addr::new(100, 127, 255, 254),
        Ipv4Addr::new(169, 254, 253, 254),
    ]
    .into_iter()
    .find(|ip| !inventory_nets.iter().any(|n| n.contains(&IpAddr::V4(*ip))))
    .ok_or_else(|| lab_err("no free management address for the controller"))
}

/// WAN addresses for sites whose endpoint is a name, in order: the documentation ranges, less
/// the literal endpoints (each must be used once) and the internet's own address.
fn wan_pool(inv: &Inventory) -> Result<Vec<Ipv4Addr>> {
    let mut used_wan: HashSet<Ipv4Addr> = HashSet::new();
    used_wan.insert(INTERNET_IP);
    for s in inv.sites.iter().filter(|s| s.managed) {
        if let Some(IpAddr::V4(ip)) = s.endpoint.as_ref().and_then(|e| e.ip())
            && !used_wan.insert(ip)
        {
            return Err(lab_err(format!(
                "site {}: endpoint address {ip} is used twice",
                s.name
            )));
        }
    }
    Ok((100u8..250)
        .map(|i| Ipv4Addr::new(198, 51, 100, i))
        .chain((100u8..250).map(|i| Ipv4Addr::new(203, 0, 113, i)))
        .filter(|ip| !used_wan.contains(ip))
        .collect())
}

/// The nodes' addresses: IPv4 literals, unique across the lab (the controller routes by them),
/// and reached over SSH at that address or the WireGuard one.
fn node_addresses(
    topo: &Topology,
    lab_nodes: &[&Node],
    seen_addr: &mut HashMap<Ipv4Addr, String>,
) -> Result<Vec<Ipv4Addr>> {
    let mut addrs = Vec::new();
    for n in lab_nodes {
        let a: Ipv4Addr = n.address.parse().map_err(|_| {
            lab_err(format!(
                "node {}: the lab needs an IPv4 address, not `{}`",
                n.name, n.address
            ))
        })?;
        if let Some(other) = seen_addr.insert(a, n.name.clone()) {
            return Err(lab_err(format!(
                "nodes {other} and {} share the address {a}: the lab's controller reaches nodes by address, so give them distinct ones",
                n.name
            )));
        }
        let wg_ip = topo.node(&n.name).map(|x| x.wireguard_ip.to_string());
        if n.ssh.host != n.address && Some(&n.ssh.host) != wg_ip.as_ref() {
            return Err(lab_err(format!(
                "node {}: ssh.host {} is neither its address nor its WireGuard address; the lab reaches nodes at one of those",
                n.name, n.ssh.host
            )));
        }
        addrs.push(a);
    }
    Ok(addrs)
}

/// The site's LAN: its first IPv4 `lan_cidrs`, else the /24 of its first node; every node's
/// address must be a host address of it.
fn site_lan(s: &Site, lab_nodes: &[&Node], addrs: &[Ipv4Addr]) -> Result<Ipv4Net> {
    let lan = match s.lan_cidrs.iter().find_map(|n| match n {
        IpNet::V4(v) => Some(*v),
        IpNet::V6(_) => None,
    }) {
        Some(l) => l,
        None => Ipv4Net::new(addrs[0], 24).expect("24 is valid").trunc(),
    };
    if lan.prefix_len() > 30 {
        return Err(lab_err(format!(
            "site {}: LAN {lan} is too small for a router and nodes",
            s.name
        )));
    }
    for (n, a) in lab_nodes.iter().zip(addrs) {
        if !lan.contains(a) || *a == lan.network() || *a == lan.broadcast() {
            return Err(lab_err(format!(
                "node {}: address {a} is not a host address of the site's LAN {lan}",
                n.name
            )));
        }
    }
    Ok(lan)
}

/// The router's LAN address: where the inventory puts a managed router or a hub router set up
/// by hand, else the first free host address.
fn router_lan_ip(s: &Site, lan: Ipv4Net, addrs: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    let router_at = s
        .managed_router
        .as_ref()
        .map(|m| m.address.as_str())
        .or(s.router_address.as_deref());
    match router_at {
        Some(address) => {
            let a: Ipv4Addr = address.parse().map_err(|_| {
                lab_err(format!(
                    "site {}: the lab needs the router's address as an IPv4 address, not `{address}`",
                    s.name
                ))
            })?;
            if !lan.contains(&a) || addrs.contains(&a) || a == lan.network() {
                return Err(lab_err(format!(
                    "site {}: the router's address {a} must be a free host address of the LAN {lan}",
                    s.name
                )));
            }
            Ok(a)
        }
        None => lan.hosts().find(|h| !addrs.contains(h)).ok_or_else(|| {
            lab_err(format!(
                "site {}: no LAN address left for the router",
                s.name
            ))
        }),
    }
}

/// A router wgprov manages runs sshd; a hub router set up by hand gets the same private
/// namespaces (its own /etc, /var/run and PID space), so that the test that plays the operator
/// can run its WireGuard there, and sshd for that test's own use.
fn router_sshd(topo: &Topology, s: &Site, dir: &Path) -> Option<RouterSshd> {
    match (&s.managed_router, &s.router_address) {
        (Some(m), _) => Some(RouterSshd {
            name: m.name.clone(),
            port: m.ssh.port,
            dir: dir.join("routers").join(&s.name),
            wireguard_ip: topo.node(&m.name).map(|n| n.wireguard_ip),
        }),
        (None, Some(_)) => Some(RouterSshd {
            name: format!("{}-router", s.name),
            port: 22,
            dir: dir.join("routers").join(&s.name),
            wireguard_ip: topo
                .site(&s.name)
                .and_then(|t| crate::topology::alloc::hub_ip(t.wireguard_cidr)),
        }),
        (None, None) => None,
    }
}

/// The site's UDP port-forward: its public port to its next-hop's address and listen port.
fn port_forward(inv: &Inventory, topo: &Topology, s: &Site) -> (u16, Ipv4Addr, u16) {
    let nh = topo
        .node(s.next_hop.as_deref().expect("managed site has a next-hop"))
        .expect("next-hop node");
    let public = s
        .endpoint
        .as_ref()
        .map(|e| e.port)
        .unwrap_or(inv.network.listen_port);
    (
        public,
        nh.address.parse().expect("checked above"),
        inv.network.listen_port,
    )
}

/// The second port-forward of a site with a standby (same router, so the same WAN host).
fn standby_forward(topo: &Topology, s: &Site) -> Result<Option<(u16, Ipv4Addr, u16)>> {
    let Some(site) = topo.site(&s.name) else {
        return Ok(None);
    };
    let Some(f) = crate::hosts::standby_forward(topo, site) else {
        return Ok(None);
    };
    let same_host = site
        .standby
        .as_ref()
        .and_then(|b| b.endpoint.as_ref())
        .zip(site.endpoint.as_ref())
        .is_some_and(|(b, e)| b.host == e.host);
    if !same_host {
        return Err(lab_err(format!(
            "site {}: the lab gives a site one WAN address: write standby_endpoint with the endpoint's host",
            s.name
        )));
    }
    let to = f.to.parse().map_err(|_| {
        lab_err(format!(
            "site {}: the standby's address is not IPv4",
            s.name
        ))
    })?;
    Ok(Some((f.public_port, to, f.port)))
}

/// The controller's leg on `site`'s LAN: the last free address, the router as default route,
/// the site's next-hop (or hub router) as the route to the WireGuard space.
fn controller_lan(
    inv: &Inventory,
    routers: &[RouterPlan],
    nodes: &[NodeLab],
    site: &str,
) -> Result<ControllerLan> {
    let r = routers
        .iter()
        .find(|r| r.site == site)
        .expect("checked above");
    let taken: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|n| n.site == site)
        .map(|n| n.address)
        .chain([r.lan_ip])
        .collect();
    let address = r
        .lan
        .hosts()
        .rev()
        .find(|h| !taken.contains(h))
        .ok_or_else(|| {
            lab_err(format!(
                "site {site}: no LAN address left for the controller"
            ))
        })?;
    let nh = inv
        .site(site)
        .and_then(|s| s.next_hop.as_deref())
        .and_then(|n| nodes.iter().find(|x| x.name == n))
        .map(|n| n.address)
        // a hub router: the router is the next-hop
        .unwrap_or(r.lan_ip);
    Ok(ControllerLan {
        site: site.to_string(),
        address,
        prefix: r.lan.prefix_len(),
        gateway: r.lan_ip,
        next_hop: nh,
        wireguard_cidr: inv.network.wireguard_cidr,
    })
}

/// The lab of `inventories/demo.yaml` (prefix `t1`), for the lab's unit tests.
#[cfg(test)]
pub(crate) fn demo_plan(no_port_forward: &[String]) -> LabPlan {
    let text = include_str!("../../inventories/demo.yaml");
    let inv = crate::inventory::load_str(std::path::Path::new("demo.yaml"), text)
        .unwrap()
        .inventory;
    let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
    plan(&inv, &topo, "t1", no_port_forward, None).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn demo() -> LabPlan {
        demo_plan(&["cabin".to_string()])
    }

    #[test]
    fn demo_layout() {
        let p = demo();
        assert_eq!(p.routers.len(), 3);
        assert_eq!(p.nodes.len(), 6);
        let home = &p.routers[0];
        assert_eq!(home.wan_ip, Ipv4Addr::new(203, 0, 113, 10));
        assert_eq!(home.lan_ip, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(
            home.forward,
            Some((51820, Ipv4Addr::new(192, 168, 0, 10), 51820))
        );
        // a name endpoint gets an address from the documentation pool and resolves in the lab
        let cabin = &p.routers[2];
        assert_eq!(cabin.wan_ip, Ipv4Addr::new(198, 51, 100, 100));
        assert_eq!(cabin.forward, None, "--no-port-forward cabin");
        assert_eq!(
            p.hosts,
            vec![(cabin.wan_ip, "cabin.example.net".to_string())]
        );
        let node3 = p.nodes.iter().find(|n| n.name == "node3").unwrap();
        assert_eq!(node3.os_family, OsFamily::Redhat);
        assert_eq!(node3.ns, "t1-n-node3");
        assert_eq!(p.namespaces().len(), 11);
    }

    #[test]
    fn a_managed_router_gets_an_sshd_at_its_address_and_no_port_forward_from_the_lab() {
        let text = include_str!("../../inventories/demo.yaml").replace(
            "router: opnsense",
            "router: { kind: linux, address: 192.168.0.254, wan_interface: wan0 }",
        );
        let inv = crate::inventory::load_str(Path::new("demo.yaml"), &text)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let p = plan(&inv, &topo, "t1", &[], None).unwrap();
        let home = &p.routers[0];
        assert_eq!(home.lan_ip, Ipv4Addr::new(192, 168, 0, 254));
        assert_eq!(
            home.forward, None,
            "wgprov makes the port-forward, not the lab"
        );
        let sshd = home.sshd.as_ref().unwrap();
        assert_eq!((sshd.name.as_str(), sshd.port), ("home-router", 22));
        assert!(p.routers[1].sshd.is_none() && p.routers[1].forward.is_some());
        let bad = text.replace("192.168.0.254", "192.168.0.10");
        let inv = crate::inventory::load_str(Path::new("demo.yaml"), &bad)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let err = plan(&inv, &topo, "t1", &[], None).unwrap_err().to_string();
        assert!(err.contains("must be a free host address"), "{err}");
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        assert!(check_prefix("has-dash").is_err());
        assert!(check_prefix("waytoolongprefix").is_err());
        let text =
            include_str!("../../inventories/demo.yaml").replace("192.168.0.50", "192.168.0.10");
        let inv = crate::inventory::load_str(Path::new("demo.yaml"), &text)
            .unwrap()
            .inventory;
        let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
        let err = plan(&inv, &topo, "t1", &[], None).unwrap_err().to_string();
        assert!(err.contains("share the address 192.168.0.10"), "{err}");
    }
}
