//! Every rule of SPEC.md's inventory list, checked on the raw (spanned) inventory. All problems
//! are collected, each with file, line, column and field; the typed [`Inventory`] is returned
//! only when there is no error.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net};

use super::model::*;
use super::schema::*;
use super::sshconfig::{self, ConfigRef};
use crate::error::{Diagnostic, Severity};
use crate::topology::keys::PublicKey;

/// kubeadm's default service CIDR.
pub const KUBEADM_DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Collects diagnostics for one file.
pub struct Diags<'a> {
    file: &'a Path,
    /// Everything found so far.
    pub list: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    /// An empty collection for `file`.
    pub fn new(file: &'a Path) -> Self {
        Diags {
            file,
            list: Vec::new(),
        }
    }
    /// Records an error at `loc`.
    pub fn error(&mut self, loc: Loc, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, loc, field.into(), message.into());
    }
    /// Records a warning at `loc`.
    pub fn warn(&mut self, loc: Loc, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, loc, field.into(), message.into());
    }
    fn push(&mut self, severity: Severity, loc: Loc, field: String, message: String) {
        self.list.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            field,
            message,
        });
    }
    /// True when an error (not a warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.is_error())
    }
}

/// The location of a spanned value.
pub fn loc<T>(s: &S<T>) -> Loc {
    Loc {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

/// True when `name` is a lowercase DNS label: safe as a host name, a file name and a shell word.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_name(d: &mut Diags, name: &S<String>, field: &str) -> bool {
    if is_safe_name(&name.value) {
        return true;
    }
    d.error(
        loc(name),
        field,
        format!(
            "`{}` is not a safe name: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen",
            name.value
        ),
    );
    false
}

fn port(d: &mut Diags, v: &S<i64>, field: &str) -> Option<u16> {
    if (1..=65535).contains(&v.value) {
        Some(v.value as u16)
    } else {
        d.error(
            loc(v),
            field,
            format!("port {} is outside 1-65535", v.value),
        );
        None
    }
}

fn v4net(d: &mut Diags, v: &S<String>, field: &str) -> Option<Ipv4Net> {
    let example = "an IPv4 CIDR like 10.100.0.0/16";
    match anynet_with(d, v, field, example)? {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => {
            let msg = format!("`{}` is IPv6; the WireGuard space is IPv4", v.value);
            d.error(loc(v), field, msg);
            None
        }
    }
}

fn anynet(d: &mut Diags, v: &S<String>, field: &str) -> Option<IpNet> {
    anynet_with(d, v, field, "a CIDR like 192.168.0.0/24")
}

fn anynet_with(d: &mut Diags, v: &S<String>, field: &str, example: &str) -> Option<IpNet> {
    match v.value.trim().parse::<IpNet>() {
        Ok(n) if n.trunc() == n => Some(n),
        Ok(n) => {
            let msg = format!(
                "`{}` has host bits set; the network is {}",
                v.value,
                n.trunc()
            );
            d.error(loc(v), field, msg);
            None
        }
        Err(_) => {
            d.error(loc(v), field, format!("`{}` is not {example}", v.value));
            None
        }
    }
}

/// True when two networks share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

struct SshLayer<'a> {
    raw: &'a RawSsh,
    path: String,
}

/// Checks a raw inventory and turns it into an [`Inventory`], or returns every problem found.
/// Warnings are returned in both cases.
pub fn validate(file: &Path, raw: &RawInventory) -> (Option<Inventory>, Vec<Diagnostic>) {
    let mut d = Diags::new(file);

    // ---- network ----
    let net = &raw.network.value;
    let wg = v4net(&mut d, &net.wireguard_cidr, "network.wireguard_cidr");
    let site_prefix = match &net.site_prefix {
        // the default site block must fit in the space too
        None => match wg {
            Some(w) if w.prefix_len() > 24 => {
                d.error(
                    loc(&net.wireguard_cidr),
                    "network.wireguard_cidr",
                    format!(
                        "{w} is smaller than one site block (/24, the default site_prefix): widen it, or set network.site_prefix between /{} and /30",
                        w.prefix_len()
                    ),
                );
                None
            }
            _ => Some(24u8),
        },
        Some(p) => {
            let min = wg.map(|w| w.prefix_len() as i64).unwrap_or(0);
            if p.value < min || p.value > 30 {
                d.error(
                    loc(p),
                    "network.site_prefix",
                    format!(
                        "{} must lie between the WireGuard space's prefix ({min}) and 30",
                        p.value
                    ),
                );
                None
            } else {
                Some(p.value as u8)
            }
        }
    };
    let listen_port = match &net.listen_port {
        None => Some(51820),
        Some(p) => port(&mut d, p, "network.listen_port"),
    };
    let interface = match &net.interface {
        None => crate::shell::InterfaceName::default(),
        Some(i) => crate::shell::InterfaceName::new(&i.value).unwrap_or_else(|m| {
            d.error(loc(i), "network.interface", m);
            crate::shell::InterfaceName::default()
        }),
    };
    let keepalive = match &net.persistent_keepalive {
        None => 25,
        Some(k) if (0..=65535).contains(&k.value) => k.value as u16,
        Some(k) => {
            d.error(
                loc(k),
                "network.persistent_keepalive",
                format!("{} is outside 0-65535 seconds", k.value),
            );
            25
        }
    };
    let kubernetes = match &net.kubernetes {
        None => Flavor::Kubeadm,
        Some(k) => Flavor::parse(&k.value).unwrap_or_else(|| {
            d.error(
                loc(k),
                "network.kubernetes",
                format!("`{}` is not one of kubeadm, k3s, rke2", k.value),
            );
            Flavor::Kubeadm
        }),
    };
    let mtu_written = net.mtu.as_ref().and_then(|m| {
        if (1280..=1500).contains(&m.value) {
            Some((m.value as u16, loc(m)))
        } else {
            d.error(
                loc(m),
                "network.mtu",
                format!(
                    "{} is outside 1280-1500: WireGuard needs at least 1280 (IPv6), and the internet between sites carries 1500",
                    m.value
                ),
            );
            None
        }
    });
    let network_loc = loc(&raw.network);
    let cluster_cidrs = match &net.cluster_cidrs {
        None => {
            let kubeadm: IpNet = KUBEADM_DEFAULT_SERVICE_CIDR.parse().unwrap();
            match wg {
                Some(w) if overlaps(&IpNet::V4(w), &kubeadm) => d.warn(
                    network_loc,
                    "network.cluster_cidrs",
                    format!(
                        "NOT SET, AND KUBEADM'S DEFAULT SERVICE CIDR {KUBEADM_DEFAULT_SERVICE_CIDR} OVERLAPS THE WIREGUARD SPACE {w}: \
                         a cluster built with kubeadm defaults will route service IPs into the tunnel. \
                         Narrow it (kubeadm init --service-cidr 10.96.0.0/16) and list the pod and service CIDRs here"
                    ),
                ),
                _ => d.warn(
                    network_loc,
                    "network.cluster_cidrs",
                    "not set: cannot check the CNI's pod and service CIDRs against the WireGuard space; list them here",
                ),
            }
            None
        }
        Some(list) => {
            let mut nets: Vec<(IpNet, Loc)> = Vec::new();
            for (i, c) in list.value.iter().enumerate() {
                let field = format!("network.cluster_cidrs[{i}]");
                if let Some(n) = anynet(&mut d, c, &field) {
                    if let Some(w) = wg
                        && overlaps(&n, &IpNet::V4(w))
                    {
                        d.error(
                            loc(c),
                            &field,
                            format!("{n} overlaps the WireGuard space {w}"),
                        );
                    }
                    for (m, _) in &nets {
                        if overlaps(&n, m) {
                            d.error(
                                loc(c),
                                &field,
                                format!("{n} overlaps {m}: pod and service CIDRs must not overlap"),
                            );
                        }
                    }
                    nets.push((n, loc(c)));
                }
            }
            Some(nets.into_iter().map(|(n, _)| n).collect())
        }
    };

    // ---- ssh defaults ----
    if let Some(s) = &raw.ssh
        && let Some(h) = &s.value.host
    {
        d.error(
            loc(h),
            "ssh.host",
            "`host` is per node: it says where one node's SSH server is",
        );
    }
    if let Some(s) = &raw.ssh
        && let Some(j) = &s.value.proxy_jump
    {
        d.error(
            loc(j),
            "ssh.proxy_jump",
            "`proxy_jump` belongs to a site or a node: the jump node cannot jump through itself",
        );
    }

    // ---- sites ----
    let mut sites: Vec<Site> = Vec::new();
    let mut node_names: HashMap<String, Loc> = HashMap::new();
    let mut site_blocks: Vec<(Ipv4Net, String, Loc)> = Vec::new();
    let mut node_ips: HashMap<Ipv4Addr, (String, Loc)> = HashMap::new();
    let mut jumps: Vec<(String, S<String>, String)> = Vec::new();
    let mut config_refs: HashMap<String, ConfigRef> = HashMap::new();
    let mut router_origins: HashMap<String, SshOrigins> = HashMap::new();
    if raw.sites.value.is_empty() {
        d.error(loc(&raw.sites), "sites", "no sites: nothing to build");
    }

    for (sname, ssite) in &raw.sites.value {
        let site = &ssite.value;
        let sp = format!("sites.{}", sname.value);
        check_name(&mut d, sname, &sp);
        let managed = site.managed.as_ref().map(|m| m.value).unwrap_or(true);

        let block = site
            .wireguard_cidr
            .as_ref()
            .and_then(|c| v4net(&mut d, c, &format!("{sp}.wireguard_cidr")).map(|n| (n, loc(c))));
        if let Some((b, bl)) = block {
            let f = format!("{sp}.wireguard_cidr");
            if let Some(w) = wg
                && !w.contains(&b)
            {
                d.error(bl, &f, format!("{b} lies outside the WireGuard space {w}"));
            } else if let Some(p) = site_prefix
                && b.prefix_len() != p
            {
                d.error(
                    bl,
                    &f,
                    format!("{b} is a /{}, but site_prefix is {p}", b.prefix_len()),
                );
            }
            for (other, oname, oloc) in &site_blocks {
                if overlaps(&IpNet::V4(b), &IpNet::V4(*other)) {
                    d.error(
                        bl,
                        &f,
                        format!(
                            "{b} overlaps site {oname}'s block {other} (line {})",
                            oloc.line
                        ),
                    );
                }
            }
            site_blocks.push((b, sname.value.clone(), bl));
        } else if !managed && site.wireguard_cidr.is_none() {
            d.error(
                loc(sname),
                format!("{sp}.wireguard_cidr"),
                "an unmanaged site's block must be written: it is agreed with its owner, not allocated",
            );
        }

        let mut lan_cidrs = Vec::new();
        if let Some(lans) = &site.lan_cidrs {
            for (i, c) in lans.value.iter().enumerate() {
                let f = format!("{sp}.lan_cidrs[{i}]");
                if let Some(n) = anynet(&mut d, c, &f) {
                    if let Some(w) = wg
                        && overlaps(&n, &IpNet::V4(w))
                    {
                        d.error(
                            loc(c),
                            &f,
                            format!("{n} collides with the WireGuard space {w}"),
                        );
                    }
                    if let Some(cc) = &cluster_cidrs {
                        for c2 in cc {
                            if overlaps(&n, c2) {
                                d.error(
                                    loc(c),
                                    &f,
                                    format!("{n} collides with the cluster CIDR {c2}"),
                                );
                            }
                        }
                    }
                    lan_cidrs.push(n);
                }
            }
        }

        let lan_access = site.lan_access.as_ref().map(|a| a.value).unwrap_or(false);
        if let Some(a) = &site.lan_access
            && a.value
        {
            if !managed {
                d.error(
                    loc(a),
                    format!("{sp}.lan_access"),
                    "an unmanaged site is never configured: lan_access does nothing there",
                );
            } else if !lan_cidrs.iter().any(|n| matches!(n, IpNet::V4(_))) {
                d.error(
                    loc(a),
                    format!("{sp}.lan_access"),
                    "needs the site's IPv4 lan_cidrs: they are what the next-hop lets into the mesh",
                );
            }
        }

        let endpoint = site.endpoint.as_ref().and_then(|e| {
            Endpoint::parse(e.value.trim())
                .map_err(|m| d.error(loc(e), format!("{sp}.endpoint"), m))
                .ok()
        });
        if let (Some(ep), Some(w)) = (&endpoint, wg)
            && let Some(IpAddr::V4(ip)) = ep.ip()
            && w.contains(&ip)
        {
            d.error(
                loc(site.endpoint.as_ref().unwrap()),
                format!("{sp}.endpoint"),
                format!("{ip} lies inside the WireGuard space {w}: an endpoint must be reachable outside the tunnel"),
            );
        }

        let wan_mtu = match &site.wan_mtu {
            None => 1500,
            Some(m) if (1360..=9216).contains(&m.value) => m.value as u16,
            Some(m) => {
                d.error(
                    loc(m),
                    format!("{sp}.wan_mtu"),
                    format!(
                        "{} is outside 1360-9216: WireGuard's 80 bytes of overhead must leave at least 1280 inside",
                        m.value
                    ),
                );
                1500
            }
        };
        if let (Some((m, _)), Some(w)) = (mtu_written, &site.wan_mtu)
            && i64::from(m) + 80 > w.value
        {
            d.error(
                loc(w),
                format!("{sp}.wan_mtu"),
                format!(
                    "network.mtu {m} does not fit this uplink: {} - 80 bytes of WireGuard overhead leaves {}; lower network.mtu to {} or leave it out",
                    w.value,
                    w.value - 80,
                    w.value - 80
                ),
            );
        }
        let (router, managed_router) = match &site.router {
            None => (RouterKind::Other, None),
            Some(r) => match &r.value {
                RawRouter::Name(name) => {
                    let kind = RouterKind::parse(name).unwrap_or_else(|| {
                        d.error(
                            loc(r),
                            format!("{sp}.router"),
                            format!(
                                "`{name}` is not one of opnsense, pfsense, openwrt, other (or a managed router: {{ kind: linux | openwrt, address, wan_interface, ssh }})"
                            ),
                        );
                        RouterKind::Other
                    });
                    (kind, None)
                }
                RawRouter::Managed(m) => {
                    let mr = managed_router(&mut d, raw, &sp, &sname.value, m, wg, managed).map(
                        |(r, origins, config)| {
                            config_refs.insert(r.name.clone(), config);
                            router_origins.insert(r.name.clone(), origins);
                            r
                        },
                    );
                    if let Some(j) = m.ssh.as_ref().and_then(|s| s.value.proxy_jump.as_ref()) {
                        jumps.push((
                            format!("{}-router", sname.value),
                            j.clone(),
                            format!("{sp}.router"),
                        ));
                    }
                    let kind = match mr.as_ref().map(|m| m.kind) {
                        Some(ManagedKind::Openwrt) => RouterKind::Openwrt,
                        _ => RouterKind::Other,
                    };
                    (kind, mr)
                }
            },
        };

        // the hub is a router wgprov does not manage: the operator sets it up by hand, and
        // the inventory carries what wgprov cannot read from it (its key and LAN address)
        let hand_hub = managed
            && managed_router.is_none()
            && site.next_hop.as_ref().is_some_and(|n| n.value == "router");
        let public_key = site.public_key.as_ref().and_then(|k| {
            let f = format!("{sp}.public_key");
            if managed && !hand_hub {
                d.error(
                    loc(k),
                    &f,
                    "only an unmanaged site, or a site whose hub is a router wgprov does not manage (next_hop: router), has a public_key here: a managed site's keys live on its nodes",
                );
                return None;
            }
            PublicKey::from_base64(&k.value)
                .map_err(|m| d.error(loc(k), &f, format!("`{}` {m}", k.value)))
                .ok()
        });
        if !managed && site.public_key.is_none() {
            d.error(
                loc(sname),
                format!("{sp}.public_key"),
                "an unmanaged site needs the public key of its next-hop",
            );
        }
        if hand_hub && site.public_key.is_none() {
            d.error(
                loc(sname),
                format!("{sp}.public_key"),
                format!(
                    "missing: the router is the hub and wgprov does not manage it, so it needs the router's WireGuard public key. {}",
                    crate::hosts::hub::key_hint(router)
                ),
            );
        }
        let router_address = match &site.router_address {
            Some(a) if !hand_hub => {
                d.error(
                    loc(a),
                    format!("{sp}.router_address"),
                    "only for a site whose hub is a router wgprov does not manage (next_hop: router with router: opnsense | pfsense | openwrt | other); a managed router has `address`",
                );
                None
            }
            Some(a) => {
                let address = a.value.trim().to_string();
                match address.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) if wg.is_some_and(|w| w.contains(&ip)) => {
                        d.error(
                            loc(a),
                            format!("{sp}.router_address"),
                            format!("{ip} lies inside the WireGuard space: the site's nodes reach the router on their LAN"),
                        );
                        None
                    }
                    Ok(_) => Some(address),
                    Err(_) if is_dns_name(&address) => Some(address),
                    Err(_) => {
                        d.error(
                            loc(a),
                            format!("{sp}.router_address"),
                            format!("`{address}` is neither an IP address nor a DNS name"),
                        );
                        None
                    }
                }
            }
            None if hand_hub => {
                d.error(
                    loc(sname),
                    format!("{sp}.router_address"),
                    "missing: the router is the hub, so the site's nodes need its LAN address (e.g. router_address: 192.168.0.1)",
                );
                None
            }
            None => None,
        };
        if hand_hub && lan_access {
            d.error(
                loc(site.lan_access.as_ref().expect("lan_access is written")),
                format!("{sp}.lan_access"),
                "the router is the hub: the LAN reaches the mesh through it already, and the router (not wgprov) would have to masquerade the LAN into its tunnel; leave lan_access out",
            );
        }
        if !managed {
            if let Some(n) = &site.nodes
                && !n.value.is_empty()
            {
                d.error(
                    loc(n),
                    format!("{sp}.nodes"),
                    "an unmanaged site is never contacted: list no nodes (its next-hop is the site itself)",
                );
            }
            if let Some(n) = &site.next_hop {
                d.error(
                    loc(n),
                    format!("{sp}.next_hop"),
                    "an unmanaged site has no nodes to choose a next-hop from",
                );
            }
        }

        // ---- nodes ----
        let mut nodes = Vec::new();
        let mut addresses: HashMap<String, String> = HashMap::new();
        let empty = IndexMap::new();
        let raw_nodes = site.nodes.as_ref().map(|n| &n.value).unwrap_or(&empty);
        if managed && raw_nodes.is_empty() {
            d.error(
                loc(sname),
                format!("{sp}.nodes"),
                "a managed site needs at least one node",
            );
        }
        for (nname, snode) in raw_nodes {
            let node = &snode.value;
            let np = format!("{sp}.nodes.{}", nname.value);
            check_name(&mut d, nname, &np);
            if let Some(first) = node_names.get(&nname.value) {
                d.error(
                    loc(nname),
                    &np,
                    format!(
                        "node name `{}` is already used at line {}: node names are unique across sites",
                        nname.value, first.line
                    ),
                );
            } else {
                node_names.insert(nname.value.clone(), loc(nname));
            }
            let address = node.address.value.trim().to_string();
            let addr_ip = address.parse::<IpAddr>().ok();
            if addr_ip.is_none() && !is_dns_name(&address) {
                d.error(
                    loc(&node.address),
                    format!("{np}.address"),
                    format!("`{address}` is neither an IP address nor a DNS name"),
                );
            }
            if let (Some(IpAddr::V4(a)), Some(w)) = (addr_ip, wg)
                && w.contains(&a)
            {
                d.error(
                    loc(&node.address),
                    format!("{np}.address"),
                    format!("{a} lies inside the WireGuard space {w}: the LAN address carries the tunnel, it cannot be inside it"),
                );
            }
            if let Some(a) = addr_ip
                && !lan_cidrs.is_empty()
                && !lan_cidrs.iter().any(|n| n.contains(&a))
            {
                d.warn(
                    loc(&node.address),
                    format!("{np}.address"),
                    format!("{a} is in none of the site's lan_cidrs"),
                );
            }
            if let Some(other) = addresses.insert(address.clone(), nname.value.clone()) {
                d.error(
                    loc(&node.address),
                    format!("{np}.address"),
                    format!("`{address}` is also node {other}'s address: peers would collide on {address}:<listen_port>"),
                );
            }

            let wireguard_ip = node.wireguard_ip.as_ref().and_then(|ip| {
                let f = format!("{np}.wireguard_ip");
                let Ok(a) = ip.value.trim().parse::<Ipv4Addr>() else {
                    d.error(
                        loc(ip),
                        &f,
                        format!(
                            "`{}` is not an IPv4 address (write it without /prefix)",
                            ip.value
                        ),
                    );
                    return None;
                };
                if let Some(w) = wg
                    && !w.contains(&a)
                {
                    d.error(
                        loc(ip),
                        &f,
                        format!("{a} lies outside the WireGuard space {w}"),
                    );
                    return Some(a);
                }
                if let Some((b, _)) = block {
                    if !b.contains(&a) {
                        d.error(
                            loc(ip),
                            &f,
                            format!("{a} lies outside the site's block {b}"),
                        );
                    } else if a == b.network() || a == b.broadcast() {
                        d.error(
                            loc(ip),
                            &f,
                            format!(
                                "{a} is the {} address of the site's block {b}",
                                if a == b.network() {
                                    "network"
                                } else {
                                    "broadcast"
                                }
                            ),
                        );
                    }
                }
                if let Some((other, ol)) = node_ips.get(&a) {
                    d.error(
                        loc(ip),
                        &f,
                        format!("{a} is also node {other}'s address (line {})", ol.line),
                    );
                } else {
                    node_ips.insert(a, (nname.value.clone(), loc(ip)));
                }
                Some(a)
            });

            let os_family = node.os_family.as_ref().and_then(|o| {
                OsFamily::parse(&o.value).or_else(|| {
                    d.error(
                        loc(o),
                        format!("{np}.os_family"),
                        format!("`{}` is not one of debian, redhat", o.value),
                    );
                    None
                })
            });

            let node_kubernetes = node.kubernetes.as_ref().and_then(|k| {
                Flavor::parse(&k.value).or_else(|| {
                    d.error(
                        loc(k),
                        format!("{np}.kubernetes"),
                        format!("`{}` is not one of kubeadm, k3s, rke2", k.value),
                    );
                    None
                })
            });

            let layers = [
                raw.ssh.as_ref().map(|s| SshLayer {
                    raw: &s.value,
                    path: "ssh".into(),
                }),
                site.ssh.as_ref().map(|s| SshLayer {
                    raw: &s.value,
                    path: format!("{sp}.ssh"),
                }),
                node.ssh.as_ref().map(|s| SshLayer {
                    raw: &s.value,
                    path: format!("{np}.ssh"),
                }),
            ];
            let (ssh, ssh_origin, config) = resolve_ssh(&mut d, &address, &layers);
            config_refs.insert(nname.value.clone(), config);
            if let Some(j) = node
                .ssh
                .as_ref()
                .and_then(|s| s.value.proxy_jump.as_ref())
                .or_else(|| site.ssh.as_ref().and_then(|s| s.value.proxy_jump.as_ref()))
            {
                jumps.push((nname.value.clone(), j.clone(), np.clone()));
            }

            nodes.push(Node {
                name: nname.value.clone(),
                loc: loc(nname),
                site: sname.value.clone(),
                address,
                wireguard_ip,
                os_family,
                kubernetes: node_kubernetes,
                ssh,
                ssh_origin,
                is_router: false,
            });
        }
        if let Some(s) = &site.ssh
            && let Some(h) = &s.value.host
        {
            d.error(
                loc(h),
                format!("{sp}.ssh.host"),
                "`host` is per node: it says where one node's SSH server is",
            );
        }

        let next_hop = match &site.next_hop {
            // the router is the site's hub: a node of the site, as far as the mesh goes
            Some(nh) if managed && nh.value == "router" => {
                if let Some(ep) = &endpoint
                    && let Some(lp) = listen_port
                    && ep.port != lp
                {
                    d.error(
                        loc(nh),
                        format!("{sp}.next_hop"),
                        format!(
                            "the router is the hub: it listens on listen_port {lp} itself, so the endpoint's port must be {lp} too (it is {})",
                            ep.port
                        ),
                    );
                }
                match &managed_router {
                    Some(r) => {
                        if r.kind == ManagedKind::Openwrt {
                            openwrt_hub_limits(&mut d, nh, &sp, &interface, lan_access);
                        }
                        nodes.push(Node {
                            name: r.name.clone(),
                            loc: loc(nh),
                            site: sname.value.clone(),
                            address: r.address.clone(),
                            wireguard_ip: None,
                            os_family: None,
                            kubernetes: None,
                            ssh: r.ssh.clone(),
                            ssh_origin: router_origins.get(&r.name).cloned().unwrap_or_default(),
                            is_router: true,
                        });
                        Some(r.name.clone())
                    }
                    // a hub router wgprov does not manage: no next-hop node (see hand_hub)
                    None => None,
                }
            }
            Some(nh) if managed => {
                if nodes.iter().any(|n| n.name == nh.value) {
                    Some(nh.value.clone())
                } else {
                    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                    d.error(
                        loc(nh),
                        format!("{sp}.next_hop"),
                        format!(
                            "`{}` is not a node of site {} (its nodes: {})",
                            nh.value,
                            sname.value,
                            names.join(", ")
                        ),
                    );
                    None
                }
            }
            Some(_) => None,
            None if managed && nodes.len() == 1 => Some(nodes[0].name.clone()),
            None if managed && nodes.len() > 1 => {
                d.error(
                    loc(sname),
                    format!("{sp}.next_hop"),
                    "missing: a site with several nodes names the one its router forwards UDP to",
                );
                None
            }
            None => None,
        };

        // a managed router's DNAT points at the next-hop's address: it must be an IPv4 literal
        if let (Some(r), Some(nh)) = (&managed_router, &next_hop)
            && let Some(n) = nodes.iter().find(|n| &n.name == nh && !n.is_router)
            && n.address.parse::<Ipv4Addr>().is_err()
            && site.endpoint.is_some()
        {
            let l = raw_nodes
                .iter()
                .find(|(k, _)| k.value == *nh)
                .map(|(_, v)| loc(&v.value.address))
                .unwrap_or(n.loc);
            d.error(
                l,
                format!("{sp}.nodes.{nh}.address"),
                format!(
                    "`{}` is not an IPv4 address: the managed router {} forwards the WireGuard port to the next-hop's address with a DNAT rule, which needs one",
                    n.address, r.name
                ),
            );
        }

        sites.push(Site {
            name: sname.value.clone(),
            loc: loc(sname),
            managed,
            wireguard_cidr: block.map(|b| b.0),
            lan_cidrs,
            lan_access,
            endpoint,
            next_hop,
            router,
            managed_router,
            wan_mtu,
            public_key,
            router_address,
            nodes,
        });
    }

    // ---- a managed router's name is taken by no node ----
    for s in &sites {
        if let Some(r) = &s.managed_router
            && let Some(l) = node_names.get(&r.name)
        {
            d.error(
                *l,
                format!("sites.{}.router", s.name),
                format!(
                    "node name `{}` (line {}) is the name wgprov gives site {}'s managed router: rename the node",
                    r.name, l.line, s.name
                ),
            );
        }
    }

    // ---- site pairs must be able to reach each other ----
    let mut first_without: Option<&Site> = None;
    for s in &sites {
        if s.endpoint.is_some() {
            continue;
        }
        match first_without {
            None => first_without = Some(s),
            Some(f) => d.error(
                s.loc,
                format!("sites.{}.endpoint", s.name),
                format!(
                    "neither site {} nor site {} (line {}) has an endpoint, so they cannot peer: give one of them an endpoint and a UDP port-forward",
                    s.name, f.name, f.loc.line
                ),
            ),
        }
    }

    // ---- proxy_jump names a node ----
    for (_, j, np) in &jumps {
        if !node_names.contains_key(&j.value) {
            d.error(
                loc(j),
                format!("{np}.ssh.proxy_jump"),
                format!("`{}` is not a node of the inventory", j.value),
            );
        }
    }

    // ---- what the inventory leaves unset, from the OpenSSH config (ssh.config_file) ----
    // a router that only forwards the port is read from the OpenSSH config like a node: as a
    // node of its site for the time of the lookup (a hub router is one already)
    for site in &mut sites {
        if let Some(r) = &site.managed_router
            && site.next_hop.as_deref() != Some(r.name.as_str())
        {
            site.nodes.push(Node {
                name: r.name.clone(),
                loc: site.loc,
                site: site.name.clone(),
                address: r.address.clone(),
                wireguard_ip: None,
                os_family: None,
                kubernetes: None,
                ssh: r.ssh.clone(),
                ssh_origin: router_origins.remove(&r.name).unwrap_or_default(),
                is_router: true,
            });
        }
    }
    sshconfig::apply(file, &mut sites, &config_refs, &mut d);
    for site in &mut sites {
        let hub = site.next_hop.clone();
        if let Some(r) = &mut site.managed_router
            && hub.as_deref() != Some(r.name.as_str())
            && let Some(i) = site
                .nodes
                .iter()
                .position(|n| n.name == r.name && n.is_router)
        {
            r.ssh = site.nodes.remove(i).ssh;
        }
    }

    // ---- no proxy_jump loops (inventory and ssh config together) ----
    let all_nodes = || sites.iter().flat_map(|s| s.nodes.iter());
    let jump_of: HashMap<&str, &str> = all_nodes()
        .filter_map(|n| Some((n.name.as_str(), n.ssh.proxy_jump.as_deref()?)))
        .filter(|(_, j)| node_names.contains_key(*j))
        .collect();
    for n in all_nodes() {
        let Some(j) = jump_of.get(n.name.as_str()) else {
            continue;
        };
        let mut seen = vec![n.name.as_str()];
        let mut cur = *j;
        while let Some(next) = jump_of.get(cur) {
            if seen.contains(&cur) {
                break;
            }
            seen.push(cur);
            cur = next;
        }
        // only the members of a loop are told (a node that jumps into one is fine itself)
        if cur == n.name {
            let (l, field) = match &n.ssh_origin.proxy_jump {
                Origin::Inventory { field, loc } => (*loc, field.clone()),
                _ => (
                    n.loc,
                    format!("sites.{}.nodes.{}.ssh.proxy_jump", n.site, n.name),
                ),
            };
            let from = match &n.ssh_origin.proxy_jump {
                o @ Origin::SshConfig { .. } => format!(" (from {o})"),
                _ => String::new(),
            };
            d.error(
                l,
                field,
                format!("jumping through `{j}`{from} loops back to {}", n.name),
            );
        }
    }

    let ok = !d.has_errors() && wg.is_some() && site_prefix.is_some() && listen_port.is_some();
    let inv = ok.then(|| Inventory {
        path: file.to_path_buf(),
        network: Network {
            wireguard_cidr: wg.unwrap(),
            site_prefix: site_prefix.unwrap(),
            listen_port: listen_port.unwrap(),
            interface,
            cluster_cidrs,
            persistent_keepalive: keepalive,
            // the internet between sites carries 1500 whatever a site's own uplink does
            mtu: mtu_written.map(|m| m.0).unwrap_or_else(|| {
                sites
                    .iter()
                    .map(|s| s.wan_mtu.min(1500))
                    .min()
                    .unwrap_or(1500)
                    - 80
            }),
            kubernetes,
        },
        sites,
    });
    (inv, d.list)
}

/// What an OpenWrt hub (`next_hop: router` with `kind: openwrt`) cannot do: its WireGuard
/// interface is a uci section named after `network.interface`, and uci names sections with
/// letters, digits and `_` only; `lan_access` (the site's LANs masqueraded into the mesh) is
/// built for wg-quick's PostUp only.
fn openwrt_hub_limits(
    d: &mut Diags,
    nh: &S<String>,
    sp: &str,
    iface: &crate::shell::InterfaceName,
    lan_access: bool,
) {
    if !iface
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        d.error(
            loc(nh),
            format!("{sp}.next_hop"),
            format!(
                "the OpenWrt hub's interface is the uci section network.{iface}, and uci section names are letters, digits and _ only: rename network.interface (e.g. wg0)"
            ),
        );
    }
    if lan_access {
        d.error(
            loc(nh),
            format!("{sp}.lan_access"),
            "`lan_access` with an OpenWrt hub is not built yet (only a next-hop node or a linux hub lets the site's LANs into the mesh)",
        );
    }
}

/// Checks a managed router's mapping (`router: { kind, address, wan_interface, ssh }`).
fn managed_router(
    d: &mut Diags,
    raw: &RawInventory,
    sp: &str,
    site: &str,
    m: &RawManagedRouter,
    wg: Option<Ipv4Net>,
    managed: bool,
) -> Option<(ManagedRouter, SshOrigins, ConfigRef)> {
    let rp = format!("{sp}.router");
    let mut ok = true;
    if !managed {
        d.error(
            loc(&m.kind),
            &rp,
            "an unmanaged site is never contacted: its router cannot be managed either",
        );
        ok = false;
    }
    let kind = ManagedKind::parse(&m.kind.value).or_else(|| {
        d.error(
            loc(&m.kind),
            format!("{rp}.kind"),
            format!(
                "`{}` is not one of linux, openwrt (wgprov manages those over SSH; for opnsense, pfsense or another router write its name, e.g. `router: opnsense`)",
                m.kind.value
            ),
        );
        None
    });
    let address = m.address.value.trim().to_string();
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if wg.is_some_and(|w| w.contains(&a)) => {
            d.error(
                loc(&m.address),
                format!("{rp}.address"),
                format!(
                    "{a} lies inside the WireGuard space: wgprov reaches the router on its LAN"
                ),
            );
            ok = false;
        }
        Ok(_) => {}
        Err(_) if is_dns_name(&address) => {}
        Err(_) => {
            d.error(
                loc(&m.address),
                format!("{rp}.address"),
                format!("`{address}` is neither an IP address nor a DNS name"),
            );
            ok = false;
        }
    }
    let wan = crate::shell::InterfaceName::new(m.wan_interface.value.trim())
        .map_err(|e| d.error(loc(&m.wan_interface), format!("{rp}.wan_interface"), e))
        .ok();
    let layers = [
        raw.ssh.as_ref().map(|s| SshLayer {
            raw: &s.value,
            path: "ssh".into(),
        }),
        m.ssh.as_ref().map(|s| SshLayer {
            raw: &s.value,
            path: format!("{rp}.ssh"),
        }),
    ];
    let (ssh, origins, config) = resolve_ssh(d, &address, &layers);
    if !ok {
        return None;
    }
    Some((
        ManagedRouter {
            name: format!("{site}-router"),
            kind: kind?,
            address,
            wan_interface: wan?,
            ssh,
        },
        origins,
        config,
    ))
}

fn resolve_ssh(
    d: &mut Diags,
    address: &str,
    layers: &[Option<SshLayer>],
) -> (SshSettings, SshOrigins, ConfigRef) {
    let mut s = SshSettings {
        host: address.to_string(),
        user: "root".into(),
        port: 22,
        identity_file: None,
        known_hosts: "~/.ssh/known_hosts".into(),
        become_root: false,
        proxy_jump: None,
    };
    let mut o = SshOrigins::default();
    let mut config = ConfigRef::default();
    for l in layers.iter().flatten() {
        let r = l.raw;
        let at = |field: &str, loc: Loc| Origin::Inventory {
            field: format!("{}.{field}", l.path),
            loc,
        };
        if let Some(h) = &r.host {
            s.host = h.value.clone();
            o.host = at("host", loc(h));
        }
        if let Some(u) = &r.user {
            if is_safe_user(&u.value) {
                s.user = u.value.clone();
                o.user = at("user", loc(u));
            } else {
                d.error(
                    loc(u),
                    format!("{}.user", l.path),
                    format!("`{}` is not a valid user name", u.value),
                );
            }
        }
        if let Some(p) = &r.port
            && let Some(pv) = port(d, p, &format!("{}.port", l.path))
        {
            s.port = pv;
            o.port = at("port", loc(p));
        }
        if let Some(i) = &r.identity_file {
            s.identity_file = Some(i.value.clone());
            o.identity_file = at("identity_file", loc(i));
        }
        if let Some(k) = &r.known_hosts {
            s.known_hosts = k.value.clone();
            o.known_hosts = at("known_hosts", loc(k));
        }
        if let Some(b) = &r.become_root {
            s.become_root = b.value;
            o.become_root = at("become", loc(b));
        }
        if let Some(j) = &r.proxy_jump {
            s.proxy_jump = Some(j.value.clone());
            o.proxy_jump = at("proxy_jump", loc(j));
        }
        if let Some(c) = &r.config_file {
            config = ConfigRef {
                spec: c.value.clone(),
                origin: at("config_file", loc(c)),
            };
        }
    }
    (s, o, config)
}

/// True when `u` is a plausible login name (letters, digits, `_-.`, not starting with `-`).
pub fn is_safe_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !u.starts_with('-')
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    #[test]
    fn a_space_smaller_than_the_default_site_block_is_an_error_not_a_panic() {
        // found by the inventory fuzz target: a /25../32 space with the default /24 site
        // prefix passed validation and the allocator panicked cutting it into /24 blocks
        for (space, ok) in [
            ("10.100.0.0/25", false),
            ("10.100.0.0/32", false),
            ("10.100.0.0/24", true),
        ] {
            let inv = format!(
                "network:\n  wireguard_cidr: {space}\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
            );
            match load_str(Path::new("inv.yaml"), &inv) {
                Ok(_) => assert!(ok, "{space} accepted"),
                Err(Error::Invalid(d)) => {
                    assert!(!ok, "{space}: {d:?}");
                    assert!(
                        d.iter().any(|x| x.field == "network.wireguard_cidr"
                            && x.message.contains("default site_prefix")),
                        "{d:?}"
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[cfg(test)]
mod router_tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::{ManagedKind, RouterKind, load_str};

    fn inv(router: &str) -> String {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nssh:\n  user: admin\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: {router}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        )
    }

    fn errors(text: &str) -> Vec<(u32, String, String)> {
        match load_str(Path::new("inv.yaml"), text) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(d)) => d
                .into_iter()
                .filter(|x| x.is_error())
                .map(|x| (x.line, x.field, x.message))
                .collect(),
            Err(e) => vec![(0, String::new(), e.to_string())],
        }
    }

    #[test]
    fn a_router_is_a_name_or_a_managed_mapping() {
        let l = load_str(Path::new("inv.yaml"), &inv("opnsense")).unwrap();
        assert_eq!(l.inventory.sites[0].router, RouterKind::Opnsense);
        assert!(l.inventory.sites[0].managed_router.is_none());
        let m = "\n      kind: linux\n      address: 192.168.0.1\n      wan_interface: eth0\n      ssh: { port: 2222 }";
        let l = load_str(Path::new("inv.yaml"), &inv(m)).unwrap();
        let r = l.inventory.sites[0].managed_router.clone().unwrap();
        assert_eq!(r.name, "home-router");
        assert_eq!(r.kind, ManagedKind::Linux);
        assert_eq!(r.wan_interface.to_string(), "eth0");
        // the top-level ssh defaults apply, the router's own win
        assert_eq!((r.ssh.user.as_str(), r.ssh.port), ("admin", 2222));
        assert_eq!(r.ssh.host, "192.168.0.1");
    }

    #[test]
    fn a_bad_managed_router_is_named_by_line_and_field() {
        let m = "\n      kind: mikrotik\n      address: 'a b'\n      wan_interface: 'eth0;reboot'\n      ssh: { port: 0 }";
        let e = errors(&inv(m));
        let has = |line: u32, field: &str, what: &str| {
            e.iter()
                .any(|(l, f, msg)| *l == line && f == field && msg.contains(what))
        };
        assert!(
            has(
                10,
                "sites.home.router.kind",
                "`mikrotik` is not one of linux, openwrt"
            ),
            "{e:?}"
        );
        assert!(
            has(11, "sites.home.router.address", "neither an IP address"),
            "{e:?}"
        );
        assert!(has(12, "sites.home.router.wan_interface", ""), "{e:?}");
        assert!(
            has(13, "sites.home.router.ssh.port", "outside 1-65535"),
            "{e:?}"
        );
        // unknown keys are refused inside the mapping too, and a missing one is named
        let e = errors(&inv(
            "{ kind: linux, address: 192.168.0.1, wan_iface: eth0 }",
        ));
        assert!(
            e.iter().any(|(l, _, m)| *l == 9 && m.contains("wan_iface")),
            "{e:?}"
        );
        let e = errors(&inv("mikrotik"));
        assert!(
            e.iter()
                .any(|(l, f, _)| *l == 9 && f == "sites.home.router"),
            "{e:?}"
        );
    }

    #[test]
    fn a_managed_routers_next_hop_needs_an_ipv4_address() {
        let text = inv("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }")
            .replace("address: 192.168.0.10", "address: n1.lan");
        let e = errors(&text);
        assert!(
            e.iter().any(|(l, f, m)| *l == 11
                && f == "sites.home.nodes.n1.address"
                && m.contains("DNAT rule")),
            "{e:?}"
        );
        // a router wgprov does not manage: a name is fine
        assert!(
            errors(&inv("other").replace("address: 192.168.0.10", "address: n1.lan")).is_empty()
        );
    }

    #[test]
    fn next_hop_router_makes_a_managed_linux_router_the_sites_hub() {
        let hub = |router: &str, port: u16| {
            inv(router)
                .replace("203.0.113.10:51820", &format!("203.0.113.10:{port}"))
                .replace("    router:", "    next_hop: router\n    router:")
        };
        let l = load_str(
            Path::new("inv.yaml"),
            &hub(
                "{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }",
                51820,
            ),
        )
        .unwrap();
        let site = &l.inventory.sites[0];
        assert_eq!(site.next_hop.as_deref(), Some("home-router"));
        let r = site.nodes.iter().find(|n| n.is_router).unwrap();
        assert_eq!(
            (r.name.as_str(), r.address.as_str()),
            ("home-router", "192.168.0.1")
        );
        let (topo, _) =
            crate::topology::Topology::build(&l.inventory, &Default::default()).unwrap();
        let hub_plan = topo.node("home-router").unwrap();
        assert!(hub_plan.is_next_hop && hub_plan.is_router);
        assert_eq!(hub_plan.wireguard_ip.to_string(), "10.100.0.1");
        assert_eq!(topo.ssh_targets().len(), 2, "the hub is connected to once");

        let e = errors(&hub(
            "{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }",
            4500,
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.next_hop" && m.contains("must be 51820 too")),
            "{e:?}"
        );
        let e = errors(&hub(
            "{ kind: openwrt, address: 192.168.0.1, wan_interface: wan }",
            4500,
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.next_hop" && m.contains("must be 51820 too")),
            "the same port rule for an OpenWrt hub: {e:?}"
        );
        // a hub router wgprov does not manage needs what wgprov cannot read from it
        let e = errors(&hub("opnsense", 51820));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.public_key" && m.contains("Generate new keypair")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|(_, f, _)| f == "sites.home.router_address"),
            "{e:?}"
        );
    }

    #[test]
    fn next_hop_router_makes_a_managed_openwrt_router_the_sites_hub() {
        let hub = inv("{ kind: openwrt, address: 192.168.0.1, wan_interface: wan }")
            .replace("    router:", "    next_hop: router\n    router:");
        let l = load_str(Path::new("inv.yaml"), &hub).unwrap();
        let site = &l.inventory.sites[0];
        assert_eq!(site.next_hop.as_deref(), Some("home-router"));
        let (topo, _) =
            crate::topology::Topology::build(&l.inventory, &Default::default()).unwrap();
        let r = topo.node("home-router").unwrap();
        assert!(r.is_next_hop && r.is_router);
        assert_eq!(r.wireguard_ip.to_string(), "10.100.0.1");
        // its interface is a uci section: letters, digits and _ only
        let e = errors(&hub.replace("network:\n", "network:\n  interface: wg-mesh\n"));
        assert!(
            e.iter().any(|(_, f, m)| f == "sites.home.next_hop"
                && m.contains("uci section names are letters, digits and _ only")),
            "{e:?}"
        );
        // lan_access is built for wg-quick only
        let e = errors(&hub.replace(
            "    endpoint:",
            "    lan_cidrs: [192.168.0.0/24]\n    lan_access: true\n    endpoint:",
        ));
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.lan_access" && m.contains("not built yet")),
            "{e:?}"
        );
    }

    #[test]
    fn a_managed_router_is_read_from_the_openssh_config_like_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host home-router\n  HostName 192.168.0.254\n  User admin\n  Port 2200\n  IdentityFile ~/.ssh/router_key\n",
        )
        .unwrap();
        for next_hop in ["n1", "router"] {
            let text = inv(
                "{ kind: linux, address: 192.168.0.1, wan_interface: eth0, ssh: { port: 22 } }",
            )
            .replace(
                "ssh:\n  user: admin\n",
                &format!("ssh:\n  config_file: {}\n", cfg.display()),
            )
            .replace(
                "    router:",
                &format!("    next_hop: {next_hop}\n    router:"),
            );
            let l = load_str(Path::new("inv.yaml"), &text).unwrap();
            let site = &l.inventory.sites[0];
            let ssh = if next_hop == "router" {
                site.nodes.iter().find(|n| n.is_router).unwrap().ssh.clone()
            } else {
                assert!(
                    site.nodes.iter().all(|n| !n.is_router),
                    "the lookup node is gone"
                );
                site.managed_router.as_ref().unwrap().ssh.clone()
            };
            assert_eq!(ssh.host, "192.168.0.254", "{next_hop}");
            assert_eq!(ssh.user, "admin");
            assert_eq!(ssh.port, 22, "written in the inventory: it wins");
            assert!(ssh.identity_file.unwrap().ends_with("/.ssh/router_key"));
        }
    }

    #[test]
    fn a_node_cannot_take_the_managed_routers_name() {
        let text = inv("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }")
            .replace("n1:", "home-router:");
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|(_, f, m)| f == "sites.home.router" && m.contains("rename the node")),
            "{e:?}"
        );
    }
}
