//! The inventory as written: serde structs that mirror SPEC.md's YAML one to one, every value
//! kept with its source location so that validation can point at it. Unknown keys are rejected
//! by `deny_unknown_fields`; values are kept as written (strings for CIDRs, wide integers for
//! ports) so that validation can report every bad value at once instead of stopping at the first.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value with the place it came from.
pub type S<T> = Spanned<T>;

/// The whole inventory file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    /// The WireGuard address space and interface settings.
    pub network: S<RawNetwork>,
    /// Default SSH settings for every node.
    #[serde(default)]
    pub ssh: Option<S<RawSsh>>,
    /// Sites by name, in the order written.
    pub sites: S<IndexMap<S<String>, S<RawSite>>>,
}

/// `network:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// The whole WireGuard space, e.g. `10.100.0.0/16`.
    pub wireguard_cidr: S<String>,
    /// Prefix length of each site's block (default 24).
    #[serde(default)]
    pub site_prefix: Option<S<i64>>,
    /// UDP port WireGuard listens on (default 51820).
    #[serde(default)]
    pub listen_port: Option<S<i64>>,
    /// Interface name (default `wg0`).
    #[serde(default)]
    pub interface: Option<S<String>>,
    /// The cluster's pod and service CIDRs.
    #[serde(default)]
    pub cluster_cidrs: Option<S<Vec<S<String>>>>,
    /// Keepalive on links between sites, seconds (default 25; 0 turns it off).
    #[serde(default)]
    pub persistent_keepalive: Option<S<i64>>,
}

/// `ssh:` at the top, in a site or in a node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    /// Where SSH connects when not the node's address (node level only).
    #[serde(default)]
    pub host: Option<S<String>>,
    /// Login user.
    #[serde(default)]
    pub user: Option<S<String>>,
    /// TCP port.
    #[serde(default)]
    pub port: Option<S<i64>>,
    /// Private key file; else the ssh-agent.
    #[serde(default)]
    pub identity_file: Option<S<String>>,
    /// known_hosts file.
    #[serde(default)]
    pub known_hosts: Option<S<String>>,
    /// Run as root through `sudo -n`.
    #[serde(default, rename = "become")]
    pub become_root: Option<S<bool>>,
    /// Reach this node through another node of the inventory.
    #[serde(default)]
    pub proxy_jump: Option<S<String>>,
    /// OpenSSH client config read for what the inventory leaves unset (default `~/.ssh/config`;
    /// `none`: read none).
    #[serde(default)]
    pub config_file: Option<S<String>>,
}

/// One site.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// False for someone else's site: peered with, never contacted.
    #[serde(default)]
    pub managed: Option<S<bool>>,
    /// The site's block; allocated when absent.
    #[serde(default)]
    pub wireguard_cidr: Option<S<String>>,
    /// The site's own networks.
    #[serde(default)]
    pub lan_cidrs: Option<S<Vec<S<String>>>>,
    /// Public `host:port` of the site's router, forwarded to the next-hop.
    #[serde(default)]
    pub endpoint: Option<S<String>>,
    /// The node that peers with other sites.
    #[serde(default)]
    pub next_hop: Option<S<String>>,
    /// Router kind, for the port-forward notes.
    #[serde(default)]
    pub router: Option<S<String>>,
    /// Public key of an unmanaged site's next-hop.
    #[serde(default)]
    pub public_key: Option<S<String>>,
    /// SSH overrides for the site's nodes.
    #[serde(default)]
    pub ssh: Option<S<RawSsh>>,
    /// Nodes by name, in the order written.
    #[serde(default)]
    pub nodes: Option<S<IndexMap<S<String>, S<RawNode>>>>,
}

/// One node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Where SSH reaches it and the LAN address its site's peers use.
    pub address: S<String>,
    /// Its WireGuard address; allocated when absent.
    #[serde(default)]
    pub wireguard_ip: Option<S<String>>,
    /// `debian` or `redhat`.
    #[serde(default)]
    pub os_family: Option<S<String>>,
    /// SSH overrides for this node.
    #[serde(default)]
    pub ssh: Option<S<RawSsh>>,
}
