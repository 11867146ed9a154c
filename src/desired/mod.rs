//! Per host: the files it should have (path, mode, content) and the handlers they notify.
//! Pure: from the topology, the keys, the roles and — when known — the host's current files.

pub mod hub_sheet;
pub mod removal;
pub mod wgmerge;

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::formats::kubelet;
use crate::inventory::OsFamily;
use crate::keys::{Keypair, PresharedKey, PublicKey};
use crate::roles::{ContentSpec, EditKind, MergeKind, Roles};
use crate::shell::{Handler, RemotePath};
use crate::topology::{NodePlan, PeerRef, SitePlan, Topology};

/// Given a peer's AllowedIPs (`a, b`), the public key of an existing entry with them.
pub type PeerFallback<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A node's name and its desired files.
pub type HostFiles = (String, Vec<DesiredFile>);

/// The keys known for this run: node name to key pair.
pub type KeyRing = HashMap<String, Keypair>;

/// The preshared keys of the links between managed nodes (`network.preshared_keys`), by
/// [`link_id`]. A link to an unmanaged site takes the site's own (`SitePlan::preshared_key`).
pub type PskRing = BTreeMap<(String, String), PresharedKey>;

/// The key of the link between nodes `a` and `b` in a [`PskRing`]: their names, sorted.
pub fn link_id(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// What a file should be. `Debug` shows the content with private keys redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum FileState {
    /// Present with this content and mode.
    Present {
        /// Full content.
        content: String,
        /// Mode bits.
        mode: u32,
    },
    /// Absent (a role whose `when` is false for this node).
    Absent,
}

impl FileState {
    /// The content, when present.
    pub fn content(&self) -> Option<&str> {
        match self {
            FileState::Present { content, .. } => Some(content),
            FileState::Absent => None,
        }
    }
}

impl std::fmt::Debug for FileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileState::Absent => f.write_str("Absent"),
            FileState::Present { content, mode } => f
                .debug_struct("Present")
                .field("content", &crate::formats::wgconf::redact(content))
                .field("mode", &format_args!("{mode:o}"))
                .finish(),
        }
    }
}

/// One file a host should have (or not have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFile {
    /// Role that manages it.
    pub role: String,
    /// Absolute path on the node (checked).
    pub path: RemotePath,
    /// Content and mode, or absent.
    pub state: FileState,
    /// Handlers to run when it changes.
    pub notify: Vec<Handler>,
}

/// Inputs for one host besides the topology.
pub struct HostInput<'a> {
    /// The node.
    pub node: &'a NodePlan,
    /// Its OS family (from facts, else the inventory, else debian).
    pub os_family: OsFamily,
    /// Whether systemd runs there (facts); offline: assumed, as on any server.
    pub systemd: bool,
    /// Current content of a file on the node, when known (facts); offline: nothing.
    pub existing: &'a dyn Fn(&str) -> Option<String>,
    /// For a peer whose key cannot be learned (its node is unreachable): the public key of the
    /// node's existing peer entry with the same AllowedIPs, so that the entry is kept.
    pub peer_fallback: Option<&'a PeerFallback<'a>>,
    /// The preshared keys of the node's links to other nodes (empty without
    /// `network.preshared_keys`).
    pub preshared: &'a PskRing,
}

/// One peer of a node as its config lists it, with the key it is known by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's node name, or the site's name for an unmanaged site.
    pub name: String,
    /// Who it is.
    pub peer: PeerRef,
    /// Its site.
    pub site: String,
    /// What it is, for a comment: `node1 (next-hop of site home)`, `site friend (unmanaged)`.
    pub comment: String,
    /// Its public key, base64.
    pub public_key: String,
    /// Its AllowedIPs.
    pub allowed_ips: Vec<String>,
    /// Its endpoint (`host:port`), when it has one.
    pub endpoint: Option<String>,
    /// Its keepalive, on links that cross NAT.
    pub persistent_keepalive: Option<u16>,
}

/// The peers of `node` with their keys, whatever form its config takes (a wg-quick file, an
/// OpenWrt hub's uci script). Peers whose key is neither known nor recoverable through
/// `fallback` are left out and named in the second value; without a fallback, an unknown key
/// is an error.
pub fn peer_entries(
    topo: &Topology,
    node: &NodePlan,
    keys: &KeyRing,
    fallback: Option<&PeerFallback<'_>>,
) -> Result<(Vec<PeerEntry>, Vec<String>)> {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for p in topo.peers(node) {
        let allowed = topo.allowed_ips(&p);
        let (pk, comment): (Option<PublicKey>, String) = match &p.peer {
            PeerRef::Node(n) => {
                let role = if topo.node(n).is_some_and(|x| x.is_next_hop) {
                    "next-hop"
                } else {
                    "node"
                };
                (
                    keys.get(n).map(|k| k.public),
                    format!("{n} ({role} of site {})", p.site),
                )
            }
            PeerRef::Site(s) => (
                topo.site(s).and_then(|s| s.public_key),
                if topo.site(s).is_some_and(|x| x.managed) {
                    format!("site {s}'s router (its hub, set up by hand)")
                } else {
                    format!("site {s} (unmanaged)")
                },
            ),
        };
        let public_key = match (pk, fallback) {
            (Some(k), _) => k.to_base64(),
            (None, Some(f)) => match f(&allowed.join(", ")) {
                Some(k) => k,
                None => {
                    skipped.push(comment);
                    continue;
                }
            },
            (None, None) => {
                return Err(Error::Role {
                    role: "wireguard".into(),
                    message: format!("no public key known for peer {comment} of {}", node.name),
                });
            }
        };
        peers.push(PeerEntry {
            name: match &p.peer {
                PeerRef::Node(n) | PeerRef::Site(n) => n.clone(),
            },
            peer: p.peer.clone(),
            site: p.site,
            comment,
            public_key,
            allowed_ips: allowed,
            endpoint: p.endpoint,
            persistent_keepalive: p.persistent_keepalive,
        });
    }
    Ok((peers, skipped))
}

/// Builds the template context of `node` (without role defaults).
/// Peers whose key is neither known nor recoverable through `fallback` are left out and named
/// in the second value.
pub fn context(
    topo: &Topology,
    node: &NodePlan,
    os_family: OsFamily,
    systemd: bool,
    keys: &KeyRing,
    fallback: Option<&PeerFallback<'_>>,
    psks: &PskRing,
) -> Result<(Json, Vec<String>)> {
    let net = &topo.network;
    let site = topo.site(&node.site).expect("node's site");
    let kp = keys.get(&node.name).ok_or_else(|| Error::Role {
        role: "wireguard".into(),
        message: format!("no key known for node {}", node.name),
    })?;
    let (entries, skipped) = peer_entries(topo, node, keys, fallback)?;
    let dns_endpoints: Vec<Json> = entries
        .iter()
        .filter(|p| {
            p.endpoint
                .as_deref()
                .is_some_and(crate::inventory::Endpoint::is_name)
        })
        .map(|p| json!({"public_key": p.public_key, "endpoint": p.endpoint}))
        .collect();
    let peers: Vec<Json> = entries
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "site": p.site,
                "comment": p.comment,
                "public_key": p.public_key,
                "allowed_ips": p.allowed_ips.join(", "),
                "endpoint": p.endpoint,
                "persistent_keepalive": p.persistent_keepalive,
                "preshared_key": preshared_key(topo, &node.name, &p.peer, psks)
                    .map(|k| k.expose_base64().to_string()),
            })
        })
        .collect();
    let iface = &net.interface;
    let ctx = json!({
        "node": {
            "name": node.name,
            "site": node.site,
            "address": node.address,
            "wireguard_ip": node.wireguard_ip.to_string(),
            "is_next_hop": node.is_next_hop,
            "is_standby": node.is_standby,
            "is_router": node.is_router,
            "kubernetes": node.kubernetes.as_str(),
            "kubernetes_units": node.kubernetes.units(),
            "wireguard_ip6": net.ip6_of(node.wireguard_ip).map(|a| a.to_string()),
            // the node IP(s) the kubelet advertises: IPv4, and IPv6 too with dual stack
            "node_ips": node_ips(net, node),
            "node_ip": node_ips(net, node).join(","),
        },
        "site": {
            "name": site.name,
            "wireguard_cidr": site.wireguard_cidr.to_string(),
            "endpoint": site.endpoint.as_ref().map(|e| e.to_string()),
            "public_port": site.endpoint.as_ref().map(|e| e.port),
            "router": site.router.as_str(),
            "router_managed": site.managed_router.is_some(),
            "next_hop": site.next_hop,
            "standby": site.standby.as_ref().map(|s| &s.node),
            "standby_endpoint": site.standby.as_ref().and_then(|s| s.endpoint.as_ref()).map(|e| e.to_string()),
            "standby_port": site.standby.as_ref().and_then(|s| s.endpoint.as_ref()).map(|e| e.port),
        },
        "network": {
            "wireguard_cidr": net.wireguard_cidr.to_string(),
            "listen_port": net.listen_port,
            "interface": iface,
            "persistent_keepalive": net.persistent_keepalive,
            "mtu": net.mtu,
            "kubernetes": net.kubernetes.as_str(),
            "metrics": net.metrics.as_str(),
        },
        // the tunnel to set up by hand on the site's router, when it is a hub wgprov does not
        // manage (roles/router_hub)
        "router_hub": hub_sheet::hub(topo, site, &|n| keys.get(n).map(|k| k.public))
            .map(|h| hub_sheet::text(&[h])),
        "os_family": os_family.as_str(),
        "systemd": systemd,
        "mtu": net.mtu,
        "dns_endpoints": dns_endpoints,
        "metrics": net.metrics.as_str(),
        "interface": iface,
        "listen_port": net.listen_port,
        "address": address(net, node),
        "private_key": kp.private.expose_base64().as_str(),
        "public_key": kp.public.to_base64(),
        "forward_up": forward_rules(site, node, (net.listen_port, net.wireguard_cidr6.is_some()), true),
        "forward_down": forward_rules(site, node, (net.listen_port, net.wireguard_cidr6.is_some()), false),
        "peers": peers,
        "failover": crate::topology::standby::watched(topo, node),
    });
    Ok((ctx, skipped))
}

/// The preshared key of `node`'s link to `peer`, when it has one: the ring's for a node, the
/// site's own for a site wgprov does not run (none for a hub router set up by hand).
pub fn preshared_key<'k>(
    topo: &'k Topology,
    node: &str,
    peer: &PeerRef,
    psks: &'k PskRing,
) -> Option<&'k PresharedKey> {
    if !topo.network.preshared_keys {
        return None;
    }
    match peer {
        PeerRef::Node(n) => psks.get(&link_id(node, n)),
        PeerRef::Site(s) => topo
            .site(s)
            .filter(|s| !s.managed)
            .and_then(|s| s.preshared_key.as_ref()),
    }
}

/// The node's IP addresses: its IPv4 WireGuard address, and its IPv6 one with dual stack.
pub fn node_ips(net: &crate::inventory::Network, node: &NodePlan) -> Vec<String> {
    let mut v = vec![node.wireguard_ip.to_string()];
    v.extend(net.ip6_of(node.wireguard_ip).map(|a| a.to_string()));
    v
}

/// wg0's `Address`: the IPv4 address in the whole space's prefix, and the IPv6 one likewise.
fn address(net: &crate::inventory::Network, node: &NodePlan) -> String {
    let mut a = format!("{}/{}", node.wireguard_ip, net.wireguard_cidr.prefix_len());
    if let (Some(ip6), Some((space6, _))) = (net.ip6_of(node.wireguard_ip), net.wireguard_cidr6) {
        a.push_str(&format!(", {ip6}/{}", space6.prefix_len()));
    }
    a
}

/// The next-hop's PostUp (`up`) or PostDown rules: wg0→wg0 traffic through the FORWARD chain,
/// and with `lan_access` the site's LANs into the mesh (forwarded, and masqueraded to the
/// next-hop's WireGuard address, since peers accept only WireGuard sources). A router that is
/// its site's hub also lets its WireGuard port in: a router's firewall drops what arrives on
/// its WAN unless told otherwise, and WireGuard authenticates every packet itself.
fn forward_rules(
    site: &SitePlan,
    node: &NodePlan,
    (listen_port, dual_stack): (u16, bool),
    up: bool,
) -> String {
    let mut rules = vec![("", "FORWARD -i %i -o %i -j ACCEPT".to_string())];
    if node.is_router {
        rules.push(("", format!("INPUT -p udp --dport {listen_port} -j ACCEPT")));
        // the guard and `status` probe the hub by pinging its WireGuard address
        rules.push((
            "",
            "INPUT -i %i -p icmp --icmp-type echo-request -j ACCEPT".into(),
        ));
    }
    if site.lan_access {
        for lan in site
            .lan_cidrs
            .iter()
            .filter(|n| matches!(n, ipnet::IpNet::V4(_)))
        {
            rules.push(("", format!("FORWARD -s {lan} -o %i -j ACCEPT")));
            rules.push((
                "",
                format!(
                    "FORWARD -i %i -d {lan} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                ),
            ));
            rules.push((
                "-t nat ",
                format!("POSTROUTING -s {lan} -o %i -j MASQUERADE"),
            ));
        }
    }
    let mut out: Vec<String> = rules
        .iter()
        .map(|(table, r)| rule("iptables", table, r, up))
        .collect();
    if dual_stack {
        // IPv6 between sites crosses the next-hop too
        out.push(rule("ip6tables", "", "FORWARD -i %i -o %i -j ACCEPT", up));
    }
    out.join("; ")
}

/// One PostUp rule added once (`-C` first), or one PostDown rule deleted.
fn rule(tool: &str, table: &str, r: &str, up: bool) -> String {
    if up {
        let (chain, rest) = r.split_once(' ').expect("rule has a chain");
        let add = if table.is_empty() { "-I" } else { "-A" };
        format!("{tool} {table}-C {r} 2>/dev/null || {tool} {table}{add} {chain} {rest}")
    } else {
        format!("{tool} {table}-D {r} 2>/dev/null || true")
    }
}

fn render_err(role: &str, what: &str, e: minijinja::Error) -> Error {
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Role {
        role: role.to_string(),
        message: msg,
    }
}

/// Every file `input.node` should have, in playbook order.
pub fn desired_files(
    roles: &Roles,
    topo: &Topology,
    keys: &KeyRing,
    input: &HostInput,
) -> Result<Vec<DesiredFile>> {
    desired_files_with_skips(roles, topo, keys, input).map(|(f, _)| f)
}

/// [`desired_files`], and the peers left out because their key could not be learned. (An
/// OpenWrt router that is its site's hub gets no role's files: its kind gives its own.)
pub fn desired_files_with_skips(
    roles: &Roles,
    topo: &Topology,
    keys: &KeyRing,
    input: &HostInput,
) -> Result<(Vec<DesiredFile>, Vec<String>)> {
    let (base, skipped) = context(
        topo,
        input.node,
        input.os_family,
        input.systemd,
        keys,
        input.peer_fallback,
        input.preshared,
    )?;
    let mut out = Vec::new();
    for role in &roles.roles {
        let ctx = role_context(role, &base);
        let active = match &role.when {
            None => true,
            Some(w) => roles
                .env
                .compile_expression(w)
                .and_then(|e| e.eval(ctx.clone()))
                .map_err(|e| render_err(&role.name, &format!("when `{w}`"), e))?
                .is_true(),
        };
        for f in &role.files {
            let path = render_path(roles, role, f, &ctx)?;
            let file_active = active
                && match &f.when {
                    None => true,
                    Some(w) => roles
                        .env
                        .compile_expression(w)
                        .and_then(|e| e.eval(ctx.clone()))
                        .map_err(|e| render_err(&role.name, &format!("{path}: when `{w}`"), e))?
                        .is_true(),
                };
            if !file_active && matches!(f.content, ContentSpec::Edit { .. }) {
                // an edited file is someone else's (the kubelet package's): never removed
                continue;
            }
            let state = if !file_active {
                FileState::Absent
            } else {
                let existing = (input.existing)(&path);
                let content = match &f.content {
                    ContentSpec::Template { name, merge } => {
                        let t = roles
                            .env
                            .get_template(name)
                            .map_err(|e| render_err(&role.name, name, e))?;
                        let rendered = t
                            .render(ctx.clone())
                            .map_err(|e| render_err(&role.name, name, e))?;
                        match (merge, existing) {
                            (Some(MergeKind::Wireguard), Some(old)) => {
                                wgmerge::merge(&old, &rendered)
                            }
                            _ => rendered,
                        }
                    }
                    ContentSpec::Edit { kind, value } => {
                        let v = roles
                            .env
                            .render_str(value, ctx.clone())
                            .map_err(|e| render_err(&role.name, &format!("value `{value}`"), e))?;
                        match kind {
                            EditKind::KubeletNodeIp => {
                                kubelet::set_node_ip(existing.as_deref(), &v)
                            }
                        }
                    }
                };
                FileState::Present {
                    content,
                    mode: f.mode,
                }
            };
            out.push(DesiredFile {
                role: role.name.clone(),
                path,
                state,
                notify: f.notify.clone(),
            });
        }
    }
    Ok((out, skipped))
}

/// Every path the roles may manage on `node`, for either OS family: what facts must read.
pub fn candidate_paths(roles: &Roles, topo: &Topology, node: &NodePlan) -> Result<Vec<RemotePath>> {
    // only the paths are rendered: the node's own (placeholder) key is all the context needs
    let mut keys = KeyRing::new();
    keys.insert(node.name.clone(), Keypair::generate());
    let mut paths = Vec::new();
    for os in [OsFamily::Debian, OsFamily::Redhat] {
        let (base, _) = context(
            topo,
            node,
            os,
            true,
            &keys,
            Some(&|_| Some(String::new())),
            &PskRing::new(),
        )?;
        for role in &roles.roles {
            let ctx = role_context(role, &base);
            for f in &role.files {
                let path = render_path(roles, role, f, &ctx)?;
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    Ok(paths)
}

/// A role's template context: its defaults, with the node's own variables over them.
fn role_context(role: &crate::roles::Role, base: &Json) -> minijinja::Value {
    let mut ctx = serde_json::Map::new();
    for (k, v) in &role.defaults {
        ctx.insert(k.clone(), v.clone());
    }
    if let Json::Object(m) = base {
        for (k, v) in m {
            ctx.insert(k.clone(), v.clone());
        }
    }
    minijinja::Value::from(minijinja::value::Serde(&ctx))
}

/// A managed file's path for this node: rendered, then checked (absolute, no `..`, no
/// whitespace, newline or shell metacharacter), before any host is contacted.
fn render_path(
    roles: &Roles,
    role: &crate::roles::Role,
    f: &crate::roles::ManagedFile,
    ctx: &minijinja::Value,
) -> Result<RemotePath> {
    let path = roles
        .env
        .render_str(&f.path, ctx.clone())
        .map_err(|e| render_err(&role.name, &format!("path `{}`", f.path), e))?;
    RemotePath::new(&path).map_err(|m| Error::Role {
        role: role.name.clone(),
        message: format!("path {m}"),
    })
}

/// The OS family to plan with when no facts are known: the inventory's, else Debian.
pub fn offline_os_family(node: &NodePlan) -> OsFamily {
    node.os_family.unwrap_or(OsFamily::Debian)
}

/// Fresh preshared keys for every link between managed nodes (for offline previews), when the
/// network has them.
pub fn fresh_psks(topo: &Topology) -> PskRing {
    let mut ring = PskRing::new();
    if topo.network.preshared_keys {
        for n in &topo.nodes {
            for p in topo.peers(n) {
                if let PeerRef::Node(o) = &p.peer {
                    ring.entry(link_id(&n.name, o))
                        .or_insert_with(PresharedKey::generate);
                }
            }
        }
    }
    ring
}

/// Fresh keys for every managed node (for offline previews), generated on every core.
pub fn fresh_keys(topo: &Topology) -> KeyRing {
    let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    let chunk = names.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|n| (n.to_string(), Keypair::generate()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("key generation thread"))
            .collect()
    })
}
