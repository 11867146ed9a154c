//! The inventory as written: serde structs that mirror the YAML one to one, every value
//! kept with its source location so that validation can point at it. Unknown keys are rejected
//! by `deny_unknown_fields`; values are kept as written (strings for CIDRs, wide integers for
//! ports) so that validation can report every bad value at once instead of stopping at the first.

use indexmap::IndexMap;
use schemars::JsonSchema;

use super::patterns;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::{Flavor, Metrics, OsFamily, RouterKind};

/// A value with the place it came from.
pub type S<T> = Spanned<T>;

/// The whole inventory file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    /// The WireGuard address space and interface settings.
    #[schemars(with = "RawNetwork")]
    pub network: S<RawNetwork>,
    /// Default SSH settings for every node.
    #[serde(default)]
    #[schemars(with = "Option<RawSsh>")]
    pub ssh: Option<S<RawSsh>>,
    /// Sites by name, in the order written.
    #[schemars(schema_with = "sites")]
    pub sites: S<IndexMap<S<String>, S<RawSite>>>,
}

/// `network:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// The whole WireGuard space, e.g. `10.100.0.0/16`.
    #[schemars(schema_with = "req_ipv4_cidr")]
    pub wireguard_cidr: S<String>,
    /// Prefix length of each site's block (default 24).
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 0, max = 30))]
    pub site_prefix: Option<S<i64>>,
    /// UDP port WireGuard listens on (default 51820).
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 1, max = 65535))]
    pub listen_port: Option<S<i64>>,
    /// Interface name (default `wg0`).
    #[serde(default)]
    #[schemars(schema_with = "opt_interface")]
    pub interface: Option<S<String>>,
    /// The cluster's pod and service CIDRs.
    #[serde(default)]
    #[schemars(schema_with = "opt_cidrs")]
    pub cluster_cidrs: Option<S<Vec<S<String>>>>,
    /// Keepalive on links between sites, seconds (default 25; 0 turns it off).
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 0, max = 65535))]
    pub persistent_keepalive: Option<S<i64>>,
    /// wg0's MTU (1280-1500; default: the smallest site `wan_mtu` - 80, 1420 on plain Ethernet).
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 1280, max = 1500))]
    pub mtu: Option<S<i64>>,
    /// Where the node IP goes: `kubeadm` (default), `k3s` or `rke2`; a node may override it.
    #[serde(default)]
    #[schemars(schema_with = "flavors")]
    pub kubernetes: Option<S<String>>,
    /// `textfile`: every node where systemd runs writes its WireGuard metrics every 30 s for
    /// node_exporter's textfile collector; `none` (default): nothing, and a timer installed
    /// before is removed.
    #[serde(default)]
    #[schemars(schema_with = "metrics")]
    pub metrics: Option<S<String>>,
    /// The site whose next-hop relays between sites that have no `endpoint` (behind CGNAT: no
    /// port-forward possible): a managed site with an endpoint. A site's own `relay:` wins.
    #[serde(default)]
    #[schemars(schema_with = "opt_name")]
    pub relay: Option<S<String>>,
    /// `true`: every link gets its own WireGuard preshared key, generated once and kept on
    /// both ends (default `false`).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub preshared_keys: Option<S<bool>>,
    /// Dual stack: the IPv6 WireGuard space, a unique local /48 such as `fd10:100::/48`; every
    /// node also gets an address in its site's IPv6 block.
    #[serde(default)]
    #[schemars(schema_with = "opt_ipv6_cidr")]
    pub wireguard_cidr6: Option<S<String>>,
    /// Prefix length of each site's IPv6 block (default 64).
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 8, max = 120))]
    pub site_prefix6: Option<S<i64>>,
}

/// `ssh:` at the top, in a site or in a node.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    /// Where SSH connects when not the node's address (node level only).
    #[serde(default)]
    #[schemars(schema_with = "opt_host")]
    pub host: Option<S<String>>,
    /// Login user.
    #[serde(default)]
    #[schemars(schema_with = "opt_user")]
    pub user: Option<S<String>>,
    /// TCP port.
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 1, max = 65535))]
    pub port: Option<S<i64>>,
    /// Private key file; else the ssh-agent.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub identity_file: Option<S<String>>,
    /// known_hosts file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub known_hosts: Option<S<String>>,
    /// Run as root through `sudo -n`.
    #[serde(default, rename = "become")]
    #[schemars(with = "Option<bool>")]
    pub become_root: Option<S<bool>>,
    /// Reach this node through another node of the inventory.
    #[serde(default)]
    #[schemars(schema_with = "opt_name")]
    pub proxy_jump: Option<S<String>>,
    /// OpenSSH client config read for what the inventory leaves unset (default `~/.ssh/config`;
    /// `none`: read none).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub config_file: Option<S<String>>,
}

/// One site.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// False for someone else's site: peered with, never contacted.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub managed: Option<S<bool>>,
    /// The site's block; allocated when absent.
    #[serde(default)]
    #[schemars(schema_with = "opt_ipv4_cidr")]
    pub wireguard_cidr: Option<S<String>>,
    /// The site's own networks.
    #[serde(default)]
    #[schemars(schema_with = "opt_cidrs")]
    pub lan_cidrs: Option<S<Vec<S<String>>>>,
    /// Public `host:port` of the site's router, forwarded to the next-hop.
    #[serde(default)]
    #[schemars(schema_with = "opt_endpoint")]
    pub endpoint: Option<S<String>>,
    /// MTU of the site's uplink (PPPoE: 1492); default 1500.
    #[serde(default)]
    #[schemars(with = "Option<i64>", range(min = 1360, max = 9216))]
    pub wan_mtu: Option<S<i64>>,
    /// The next-hop masquerades the site's `lan_cidrs` into the mesh (an operator's laptop or a
    /// CI runner on the LAN reaches every node's WireGuard address).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub lan_access: Option<S<bool>>,
    /// The node that peers with other sites.
    #[serde(default)]
    #[schemars(schema_with = "opt_name")]
    pub next_hop: Option<S<String>>,
    /// A second node of the site that takes over from the next-hop when it stops forwarding
    /// (a failover watchdog on its peers moves the site's routes to it).
    #[serde(default)]
    #[schemars(schema_with = "opt_name")]
    pub standby: Option<S<String>>,
    /// The standby's own public `host:port`: the router forwards this second UDP port to the
    /// standby. Required with `standby` when the site has an endpoint.
    #[serde(default)]
    #[schemars(schema_with = "opt_endpoint")]
    pub standby_endpoint: Option<S<String>>,
    /// The site's router: a kind wgprov does not touch (`opnsense`, `pfsense`, `openwrt`,
    /// `other`: it prints the rules to create by hand), or a router it manages over SSH
    /// (`{ kind: linux | openwrt, address, ssh, wan_interface }`).
    #[serde(default)]
    #[schemars(schema_with = "routers")]
    pub router: Option<S<RawRouter>>,
    /// Public key of the site's hub when wgprov does not run it: an unmanaged site's next-hop,
    /// or a router wgprov does not manage that is the hub (`next_hop: router`).
    #[serde(default)]
    #[schemars(schema_with = "opt_key")]
    pub public_key: Option<S<String>>,
    /// LAN address of a router wgprov does not manage that is the site's hub (`next_hop:
    /// router`): where the site's nodes reach it.
    #[serde(default)]
    #[schemars(schema_with = "opt_host")]
    pub router_address: Option<S<String>>,
    /// An unmanaged site only, with `network.preshared_keys`: a file on the controller (mode
    /// 0600 or narrower, relative to the inventory) holding the preshared key agreed with the
    /// site's operator, base64 as `wg genpsk` prints it. Without it the links to the site have
    /// no preshared key.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub preshared_key_file: Option<S<String>>,
    /// `absent`: take the whole site out (its nodes cleaned, dropped by every other site, its
    /// block retired in the lock file); default `present`.
    #[serde(default)]
    #[schemars(schema_with = "states")]
    pub state: Option<S<String>>,
    /// SSH overrides for the site's nodes.
    #[serde(default)]
    #[schemars(with = "Option<RawSsh>")]
    pub ssh: Option<S<RawSsh>>,
    /// Nodes by name, in the order written.
    #[serde(default)]
    #[schemars(schema_with = "opt_nodes")]
    pub nodes: Option<S<IndexMap<S<String>, S<RawNode>>>>,
    /// For a site without `endpoint`: the site whose next-hop relays between it and the other
    /// sites without one (overrides `network.relay`).
    #[serde(default)]
    #[schemars(schema_with = "opt_name")]
    pub relay: Option<S<String>>,
}

/// One node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Where SSH reaches it and the LAN address its site's peers use.
    #[schemars(schema_with = "req_host")]
    pub address: S<String>,
    /// Its WireGuard address; allocated when absent.
    #[serde(default)]
    #[schemars(schema_with = "opt_ipv4")]
    pub wireguard_ip: Option<S<String>>,
    /// `debian` or `redhat`.
    #[serde(default)]
    #[schemars(schema_with = "os_families")]
    pub os_family: Option<S<String>>,
    /// `kubeadm`, `k3s` or `rke2`: overrides `network.kubernetes` for this node.
    #[serde(default)]
    #[schemars(schema_with = "flavors")]
    pub kubernetes: Option<S<String>>,
    /// SSH overrides for this node.
    #[serde(default)]
    #[schemars(with = "Option<RawSsh>")]
    pub ssh: Option<S<RawSsh>>,
    /// `absent`: take the node out (cleaned, dropped by its peers, its address retired in the
    /// lock file); default `present`.
    #[serde(default)]
    #[schemars(schema_with = "states")]
    pub state: Option<S<String>>,
}

/// `router:` as written: a name, or a managed router's mapping.
#[derive(Debug)]
pub enum RawRouter {
    /// `opnsense | pfsense | openwrt | other` (checked by validation).
    Name(String),
    /// `{ kind, address, ssh, wan_interface }`.
    Managed(Box<RawManagedRouter>),
}

impl<'de> Deserialize<'de> for RawRouter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRouter;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a router kind (opnsense, pfsense, openwrt, other) or a mapping { kind: linux | openwrt, address, ssh, wan_interface }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRouter, E> {
                Ok(RawRouter::Name(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<RawRouter, A::Error> {
                RawManagedRouter::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|m| RawRouter::Managed(Box::new(m)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A router wgprov manages over SSH.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawManagedRouter {
    /// `linux` (iptables or nftables) or `openwrt` (`uci`).
    #[schemars(schema_with = "managed_router_kinds")]
    pub kind: S<String>,
    /// Where SSH reaches it: its LAN address (an IP address or a DNS name).
    #[schemars(schema_with = "req_host")]
    pub address: S<String>,
    /// Its WAN (uplink) interface, where the WireGuard port arrives.
    #[schemars(schema_with = "req_interface")]
    pub wan_interface: S<String>,
    /// SSH settings for the router (over the top-level `ssh:` defaults; a site's `ssh:` is for
    /// its nodes).
    #[serde(default)]
    #[schemars(with = "Option<RawSsh>")]
    pub ssh: Option<S<RawSsh>>,
}

/// A string field of `pattern`, required or optional (`null` allowed).
macro_rules! pattern_fields {
    ($($req:ident, $opt:ident => $pattern:expr;)*) => {$(
        #[allow(dead_code)]
        fn $req(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({ "type": "string", "pattern": $pattern })
        }
        #[allow(dead_code)]
        fn $opt(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({ "type": ["string", "null"], "pattern": $pattern })
        }
    )*};
}

pattern_fields! {
    req_ipv4_cidr, opt_ipv4_cidr => patterns::IPV4_CIDR;
    req_ipv6_cidr, opt_ipv6_cidr => patterns::IPV6_CIDR;
    req_ipv4, opt_ipv4 => patterns::IPV4;
    req_host, opt_host => patterns::HOST;
    req_endpoint, opt_endpoint => patterns::ENDPOINT;
    req_key, opt_key => patterns::KEY;
    req_name, opt_name => patterns::SAFE_NAME;
    req_user, opt_user => patterns::USER;
    req_interface, opt_interface => patterns::INTERFACE;
}

fn opt_cidrs(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "items": { "type": "string", "pattern": patterns::CIDR }
    })
}

fn sites(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let site = generator.subschema_for::<RawSite>();
    schemars::json_schema!({
        "type": "object",
        "propertyNames": { "pattern": patterns::SAFE_NAME },
        "additionalProperties": site
    })
}

fn opt_nodes(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let node = generator.subschema_for::<RawNode>();
    schemars::json_schema!({
        "type": ["object", "null"],
        "propertyNames": { "pattern": patterns::SAFE_NAME },
        "additionalProperties": node
    })
}

fn routers(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut kinds: Vec<serde_json::Value> =
        RouterKind::ALL.iter().map(|k| k.as_str().into()).collect();
    kinds.push(serde_json::Value::Null);
    let managed = generator.subschema_for::<RawManagedRouter>();
    schemars::json_schema!({
        "anyOf": [
            { "type": ["string", "null"], "enum": kinds },
            managed
        ]
    })
}

fn managed_router_kinds(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ["linux", "openwrt"] })
}

fn os_families(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut families: Vec<serde_json::Value> =
        OsFamily::ALL.iter().map(|k| k.as_str().into()).collect();
    families.push(serde_json::Value::Null);
    schemars::json_schema!({ "type": ["string", "null"], "enum": families })
}

fn states(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": ["string", "null"], "enum": ["present", "absent", null] })
}

fn flavors(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut kinds: Vec<serde_json::Value> = Flavor::ALL.iter().map(|k| k.as_str().into()).collect();
    kinds.push(serde_json::Value::Null);
    schemars::json_schema!({ "type": ["string", "null"], "enum": kinds })
}

fn metrics(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut kinds: Vec<serde_json::Value> =
        Metrics::ALL.iter().map(|k| k.as_str().into()).collect();
    kinds.push(serde_json::Value::Null);
    schemars::json_schema!({ "type": ["string", "null"], "enum": kinds })
}

/// The inventory's JSON Schema (draft 7, which editors' YAML plugins read), generated from
/// [`RawInventory`], the very types the loader deserializes: unknown keys are refused
/// (`additionalProperties: false`) as the loader refuses them.
pub fn json_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RawInventory>();
    schema.insert("title".into(), "wgprov inventory".into());
    schema.to_value()
}

/// [`json_schema`] as pretty-printed JSON.
pub fn json_schema_text() -> String {
    serde_json::to_string_pretty(&json_schema()).expect("a schema serializes")
}
