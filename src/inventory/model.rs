//! The inventory after validation: typed, defaults filled in, SSH settings resolved per node.
//! Source locations are kept where later stages (allocation) may still need to point at them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};

use crate::keys::PublicKey;

/// A place in the inventory file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// A validated inventory.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `network:` with defaults applied.
    pub network: Network,
    /// Sites in the order written.
    pub sites: Vec<Site>,
    /// Nodes marked `state: absent` (alone or with their site), to be taken out and cleaned;
    /// in no site's `nodes`.
    pub removed: Vec<Node>,
    /// Sites marked `state: absent` (their nodes are in `removed`); in no other list.
    pub removed_sites: Vec<Site>,
}

/// Network-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The whole WireGuard space.
    pub wireguard_cidr: Ipv4Net,
    /// Prefix length of a site's block.
    pub site_prefix: u8,
    /// WireGuard UDP port on every managed node.
    pub listen_port: u16,
    /// Interface name (checked).
    pub interface: crate::shell::InterfaceName,
    /// Pod and service CIDRs, when given.
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// Keepalive on links between sites (0: off).
    pub persistent_keepalive: u16,
    /// wg0's MTU (written, or derived from the sites' `wan_mtu`).
    pub mtu: u16,
    /// Where the node IP goes, unless a node says otherwise.
    pub kubernetes: Flavor,
    /// Whether nodes write WireGuard metrics for node_exporter.
    pub metrics: Metrics,
    /// `network.relay`: the site that relays between sites without an endpoint.
    pub relay: Option<String>,
    /// Whether every link has its own preshared key.
    pub preshared_keys: bool,
    /// Dual stack: the IPv6 WireGuard space and the prefix of a site's IPv6 block.
    pub wireguard_cidr6: Option<(ipnet::Ipv6Net, u8)>,
}

impl Network {
    /// The IPv6 counterpart of an address of the WireGuard space: the same site and host
    /// numbers in the IPv6 space (site `i`'s block is the `i`-th IPv6 block, host `h` of it is
    /// `h` there). So an IPv6 address is as stable as the IPv4 one the lock file holds; the
    /// lock records it too, and refuses a change of this mapping that would move it.
    pub fn ip6_of(&self, ip: Ipv4Addr) -> Option<std::net::Ipv6Addr> {
        let (space6, prefix6) = self.wireguard_cidr6?;
        let wg = self.wireguard_cidr;
        if !wg.contains(&ip) {
            return None;
        }
        let off = u32::from(ip) - u32::from(wg.network());
        let host_bits = 32 - u32::from(self.site_prefix);
        let site = u128::from(off.checked_shr(host_bits).unwrap_or(0));
        let host = u128::from(off & (u32::MAX.checked_shr(32 - host_bits).unwrap_or(0)));
        let base = u128::from(space6.network());
        Some((base + (site << (128 - u32::from(prefix6))) + host).into())
    }

    /// A site's IPv6 block: the counterpart of its IPv4 block (`None` for a network that is no
    /// site block of the WireGuard space, or without `wireguard_cidr6`).
    pub fn block6_of(&self, block: Ipv4Net) -> Option<ipnet::Ipv6Net> {
        let (_, prefix6) = self.wireguard_cidr6?;
        if block.prefix_len() != self.site_prefix {
            return None;
        }
        ipnet::Ipv6Net::new(self.ip6_of(block.network())?, prefix6).ok()
    }

    /// The IPv6 counterpart of a network of the WireGuard space: the whole space, a site's
    /// block, a host; `None` for anything else (or without `wireguard_cidr6`).
    pub fn net6_of(&self, n: ipnet::Ipv4Net) -> Option<ipnet::Ipv6Net> {
        let (space6, _) = self.wireguard_cidr6?;
        let p = n.prefix_len();
        if n == self.wireguard_cidr {
            Some(space6)
        } else if p == self.site_prefix {
            self.block6_of(n)
        } else if p == 32 {
            ipnet::Ipv6Net::new(self.ip6_of(n.addr())?, 128).ok()
        } else {
            None
        }
    }
}

/// `network.metrics`: what each node exports about its WireGuard interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metrics {
    /// Nothing (the default); a timer installed before is removed.
    #[default]
    None,
    /// A timer (every 30 s, where systemd runs) writes a file for node_exporter's textfile
    /// collector.
    Textfile,
}

impl Metrics {
    /// Every value.
    pub const ALL: [Metrics; 2] = [Self::None, Self::Textfile];
    /// Parses the inventory spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Textfile => "textfile",
        }
    }
}

/// How the cluster's Kubernetes is installed: decides where the node IP is written and which
/// systemd unit is ordered after the WireGuard interface and restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// kubeadm packages: `KUBELET_EXTRA_ARGS` in the kubelet defaults file; unit `kubelet`.
    #[default]
    Kubeadm,
    /// k3s: `/etc/rancher/k3s/config.yaml.d/`; units `k3s` (server) and `k3s-agent`.
    K3s,
    /// rke2: `/etc/rancher/rke2/config.yaml.d/`; units `rke2-server` and `rke2-agent`.
    Rke2,
}

impl Flavor {
    /// Every flavor.
    pub const ALL: [Flavor; 3] = [Self::Kubeadm, Self::K3s, Self::Rke2];
    /// Parses the inventory spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubeadm => "kubeadm",
            Self::K3s => "k3s",
            Self::Rke2 => "rke2",
        }
    }
    /// The systemd units that run this flavor's kubelet.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            Self::Kubeadm => &["kubelet"],
            Self::K3s => &["k3s", "k3s-agent"],
            Self::Rke2 => &["rke2-server", "rke2-agent"],
        }
    }
}

/// Kind of router at a site: shapes the port-forward notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    /// OPNsense.
    Opnsense,
    /// pfSense.
    Pfsense,
    /// OpenWrt.
    Openwrt,
    /// Anything else.
    Other,
}

impl RouterKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [RouterKind; 4] = [Self::Opnsense, Self::Pfsense, Self::Openwrt, Self::Other];
    /// Parses the inventory spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "opnsense" => Some(Self::Opnsense),
            "pfsense" => Some(Self::Pfsense),
            "openwrt" => Some(Self::Openwrt),
            "other" => Some(Self::Other),
            _ => None,
        }
    }
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opnsense => "opnsense",
            Self::Pfsense => "pfsense",
            Self::Openwrt => "openwrt",
            Self::Other => "other",
        }
    }
}

/// Where the operator finds the router's public key (for the inventory's `public_key`).
pub fn key_hint(kind: RouterKind) -> &'static str {
    match kind {
        RouterKind::Opnsense => {
            "On OPNsense: VPN > WireGuard > Instances > +, the gear beside Public key (Generate new keypair); copy the Public key into the site's public_key"
        }
        RouterKind::Pfsense => {
            "On pfSense: VPN > WireGuard > Tunnels > Add Tunnel, Interface Keys: Generate; copy the Public Key into the site's public_key"
        }
        RouterKind::Openwrt => {
            "On OpenWrt: `wg genkey | tee /etc/wireguard/wg0.key | wg pubkey` (or LuCI: Network > Interfaces > Add new interface, protocol WireGuard VPN, Generate new key pair); copy the public key into the site's public_key"
        }
        RouterKind::Other => {
            "On the router: `wg genkey | tee wg0.key | wg pubkey`; copy the public key into the site's public_key"
        }
    }
}

/// Kind of a router wgprov manages over SSH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedKind {
    /// A Linux router: the port-forward as iptables (or nftables) rules.
    Linux,
    /// OpenWrt: the port-forward as a firewall redirect through `uci`.
    Openwrt,
}

impl ManagedKind {
    /// Parses the inventory spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linux" => Some(Self::Linux),
            "openwrt" => Some(Self::Openwrt),
            _ => None,
        }
    }
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Openwrt => "openwrt",
        }
    }
}

/// A site's router that wgprov manages over SSH, like a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedRouter {
    /// The name it goes by in reports, `--limit` and the lab: `<site>-router`.
    pub name: String,
    /// linux or openwrt.
    pub kind: ManagedKind,
    /// Its LAN address (IP or DNS name): where SSH reaches it.
    pub address: String,
    /// Its WAN interface (checked).
    pub wan_interface: crate::shell::InterfaceName,
    /// Resolved SSH settings (top-level `ssh:`, then the router's own).
    pub ssh: SshSettings,
}

pub use crate::formats::kubelet::OsFamily;

/// Why a text is not a `host:port` endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `[` without `]:port`.
    #[error("`{0}` is not `[ipv6]:port`")]
    NotBracketed(String),
    /// Inside the brackets is no IPv6 address.
    #[error("`{0}` is not an IPv6 address")]
    NotIpv6(String),
    /// No `:port`.
    #[error("`{0}` needs a port: write it as host:port")]
    NoPort(String),
    /// An IPv6 address without brackets.
    #[error("`{0}`: write an IPv6 endpoint as [address]:port")]
    Ipv6Unbracketed(String),
    /// The host is neither an IPv4 address nor a DNS name.
    #[error("`{0}` is neither an IPv4 address nor a DNS name")]
    BadHost(String),
    /// The port is not a number.
    #[error("port `{0}` is not a number")]
    PortNotNumber(String),
    /// The port is 0 or above 65535.
    #[error("port {0} is outside 1-65535")]
    PortOutOfRange(u32),
}

/// A public `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// DNS name or IP literal.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| EndpointError::NotBracketed(s.into()))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(EndpointError::NotIpv6(h.into()));
            }
            (h.to_string(), p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| EndpointError::NoPort(s.into()))?;
            if h.contains(':') {
                return Err(EndpointError::Ipv6Unbracketed(s.into()));
            }
            if h.parse::<Ipv4Addr>().is_err() && !is_dns_name(h) {
                return Err(EndpointError::BadHost(h.into()));
            }
            (h.to_string(), p)
        };
        let port: u32 = port
            .parse()
            .map_err(|_| EndpointError::PortNotNumber(port.into()))?;
        if !(1..=65535).contains(&port) {
            return Err(EndpointError::PortOutOfRange(port));
        }
        Ok(Endpoint {
            host,
            port: port as u16,
        })
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// True when `text` (`host:port`) names its host by DNS: WireGuard resolves it once.
    pub fn is_name(text: &str) -> bool {
        Endpoint::parse(text).is_ok_and(|e| e.ip().is_none())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// True when `s` is a DNS name (labels of letters, digits and hyphens).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// SSH settings of one node, every default resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshSettings {
    /// Where to connect.
    pub host: String,
    /// Login user.
    pub user: String,
    /// TCP port.
    pub port: u16,
    /// Private key file (`~` not yet expanded); `None`: the ssh-agent.
    pub identity_file: Option<String>,
    /// known_hosts file (`~` not yet expanded).
    pub known_hosts: String,
    /// Run as root through `sudo -n`.
    pub become_root: bool,
    /// Node to jump through.
    pub proxy_jump: Option<String>,
}

/// Where one SSH setting of a node came from (printed by `-v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// wgprov's built-in default.
    #[default]
    Default,
    /// Written in the inventory.
    Inventory {
        /// Dotted path of the field, e.g. `sites.home.ssh.user`.
        field: String,
        /// Where it is written.
        loc: Loc,
    },
    /// From an OpenSSH client config file.
    SshConfig {
        /// The file.
        file: PathBuf,
        /// The `Host` line whose block gave the value, e.g. `Host web-* !web-0`.
        host: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::Inventory { field, loc } => {
                write!(f, "inventory {field} (line {}:{})", loc.line, loc.column)
            }
            Origin::SshConfig { file, host } => write!(f, "{} ({host})", file.display()),
        }
    }
}

/// Where each of a node's [`SshSettings`] came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshOrigins {
    /// The OpenSSH config file read for this node and the name looked up in it, if one was read.
    pub config: Option<(PathBuf, String)>,
    /// Of `host`.
    pub host: Origin,
    /// Of `user`.
    pub user: Origin,
    /// Of `port`.
    pub port: Origin,
    /// Of `identity_file`.
    pub identity_file: Origin,
    /// Of `known_hosts`.
    pub known_hosts: Origin,
    /// Of `become_root`.
    pub become_root: Origin,
    /// Of `proxy_jump`.
    pub proxy_jump: Origin,
}

/// One site.
#[derive(Clone, Debug)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// Where its name is written.
    pub loc: Loc,
    /// False: someone else's site.
    pub managed: bool,
    /// Block written in the inventory, if any.
    pub wireguard_cidr: Option<Ipv4Net>,
    /// LAN networks.
    pub lan_cidrs: Vec<IpNet>,
    /// The next-hop masquerades `lan_cidrs` into the mesh.
    pub lan_access: bool,
    /// Public endpoint of the site's router.
    pub endpoint: Option<Endpoint>,
    /// Next-hop node (resolved: a one-node site's only node).
    pub next_hop: Option<String>,
    /// The standby next-hop, with its own public endpoint when the site has one.
    pub standby: Option<Standby>,
    /// Router kind (for a managed router: `openwrt`, or `other` for linux).
    pub router: RouterKind,
    /// The router, when wgprov manages it.
    pub managed_router: Option<ManagedRouter>,
    /// MTU of the uplink (1500 unless written).
    pub wan_mtu: u16,
    /// The key of the site's hub when wgprov does not run it: an unmanaged site's next-hop, or
    /// a hand-run hub router (`router_address`).
    pub public_key: Option<PublicKey>,
    /// A managed site whose hub is a router wgprov does not manage (`next_hop: router` with
    /// `router: opnsense | pfsense | openwrt | other`): the router's LAN address. The site then
    /// has no next-hop node; its nodes peer with the router, which the operator sets up by hand
    /// from the notes `plan` and `apply` print.
    pub router_address: Option<String>,
    /// The preshared key of the links to an unmanaged site (`preshared_key_file`), when given.
    pub preshared_key: Option<crate::keys::PresharedKey>,
    /// Nodes in the order written.
    pub nodes: Vec<Node>,
    /// The site whose next-hop relays between this site and other sites without an endpoint:
    /// its own `relay:`, else `network.relay`.
    pub relay: Option<String>,
    /// Marked `state: absent`: the whole site is taken out.
    pub absent: bool,
}

/// A site's standby next-hop: a node of the site that takes the site's routes over when the
/// next-hop stops forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    /// The node.
    pub node: String,
    /// Its public `host:port` (the router forwards it to the standby), when the site has an
    /// endpoint.
    pub endpoint: Option<Endpoint>,
}

/// One node.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name (unique in the inventory).
    pub name: String,
    /// Where its name is written.
    pub loc: Loc,
    /// Its site's name.
    pub site: String,
    /// LAN address (IP or DNS name).
    pub address: String,
    /// WireGuard address written in the inventory, if any.
    pub wireguard_ip: Option<Ipv4Addr>,
    /// OS family written in the inventory, if any.
    pub os_family: Option<OsFamily>,
    /// Kubernetes flavor written for this node, if any.
    pub kubernetes: Option<Flavor>,
    /// Resolved SSH settings.
    pub ssh: SshSettings,
    /// Where each SSH setting came from.
    pub ssh_origin: SshOrigins,
    /// True for a site's managed router that is its WireGuard hub (`next_hop: router`): a host
    /// with wg0 like a next-hop node, but no Kubernetes node.
    pub is_router: bool,
    /// Marked `state: absent` (itself or its site): to be taken out.
    pub absent: bool,
}

impl Inventory {
    /// All nodes of managed sites, in inventory order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.sites.iter().flat_map(|s| s.nodes.iter())
    }
    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }
}
