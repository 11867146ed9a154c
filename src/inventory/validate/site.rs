//! One site: its name, block, LANs, endpoint, uplink MTU, router, the keys and addresses of a
//! hub wgprov does not run, its nodes and its next-hop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net};

use super::network::Net;
use super::node::{self, SiteCtx};
use super::{Diags, State, anynet, check_name, loc, overlaps, router, v4net};
use crate::inventory::model::*;
use crate::inventory::schema::*;
use crate::keys::PublicKey;

/// Checks site `sname` and adds it (with its nodes) to `st.sites`.
pub(super) fn check(
    d: &mut Diags,
    raw: &RawInventory,
    net: &Net,
    st: &mut State,
    sname: &S<String>,
    site: &RawSite,
) {
    let sp = format!("sites.{}", sname.value);
    check_name(d, sname, &sp);
    let managed = site.managed.as_ref().map(|m| m.value).unwrap_or(true);
    let absent = super::absent(d, site.state.as_ref(), format!("{sp}.state"));
    let block = block(d, net, st, &sp, sname, site, managed);
    let lan_cidrs = lan_cidrs(d, net, &sp, site);
    let lan_access = lan_access(d, &sp, site, managed, &lan_cidrs);
    let endpoint = endpoint(d, net.wg, &sp, site);
    let wan_mtu = wan_mtu(d, net, &sp, site);
    let (router, managed_router) =
        router::check(d, raw, st, (&sp, &sname.value), site, net.wg, managed);

    // the hub is a router wgprov does not manage: the operator sets it up by hand, and
    // the inventory carries what wgprov cannot read from it (its key and LAN address)
    let hand_hub = managed
        && managed_router.is_none()
        && site.next_hop.as_ref().is_some_and(|n| n.value == "router");
    let public_key = public_key(d, &sp, sname, site, (managed, hand_hub), router);
    let router_address = router_address(d, net.wg, &sp, sname, site, hand_hub);
    if hand_hub && lan_access {
        d.error(
            loc(site.lan_access.as_ref().expect("lan_access is written")),
            format!("{sp}.lan_access"),
            "the router is the hub: the LAN reaches the mesh through it already, and the router (not wgprov) would have to masquerade the LAN into its tunnel; leave lan_access out",
        );
    }
    if !managed {
        unmanaged(d, &sp, site);
    }
    let empty = IndexMap::new();
    let raw_nodes = site.nodes.as_ref().map(|n| &n.value).unwrap_or(&empty);
    let ctx = SiteCtx {
        sp: &sp,
        name: &sname.value,
        site,
        lan_cidrs: &lan_cidrs,
        block,
        wg: net.wg,
    };
    let mut nodes = nodes(d, raw, st, &ctx, (sname, raw_nodes), managed);
    if let Some(s) = &site.ssh
        && let Some(h) = &s.value.host
    {
        d.error(
            loc(h),
            format!("{sp}.ssh.host"),
            "`host` is per node: it says where one node's SSH server is",
        );
    }

    let hub = Hub {
        net,
        st,
        sp: &sp,
        sname,
        endpoint: endpoint.as_ref(),
        managed_router: managed_router.as_ref(),
        lan_access,
        managed,
    };
    let next_hop = next_hop(d, hub, site, &mut nodes);
    if !absent {
        next_hop_stays(d, &sp, sname, site, &next_hop, &nodes);
    }
    nodes.iter_mut().for_each(|n| n.absent |= absent);
    if let (Some(r), Some(nh)) = (&managed_router, &next_hop) {
        dnat_target(d, &sp, site, raw_nodes, &nodes, r, nh);
    }

    let standby = super::standby::check(d, hub, site, &next_hop, &nodes);
    let relay = relay(st, net, sname, site);
    st.sites.push(Site {
        name: sname.value.clone(),
        loc: loc(sname),
        managed,
        wireguard_cidr: block.map(|b| b.0),
        lan_cidrs,
        lan_access,
        standby,
        endpoint,
        next_hop,
        router,
        managed_router,
        wan_mtu,
        public_key,
        router_address,
        preshared_key: super::psk::key_file(d, net, &sp, site, managed),
        nodes,
        relay,
        absent,
    });
}

/// The site's relay: its own `relay:` (recorded for the checks across sites), else
/// `network.relay`.
fn relay(st: &mut State, net: &Net, sname: &S<String>, site: &RawSite) -> Option<String> {
    if let Some(r) = &site.relay {
        st.relay_refs
            .push((sname.value.clone(), r.value.clone(), loc(r)));
    }
    site.relay
        .as_ref()
        .map(|r| r.value.clone())
        .or_else(|| net.relay.as_ref().map(|r| r.0.clone()))
}

/// A next-hop cannot be removed while it is its site's next-hop: its site's members and every
/// other site reach the site through it.
fn next_hop_stays(
    d: &mut Diags,
    sp: &str,
    sname: &S<String>,
    site: &RawSite,
    next_hop: &Option<String>,
    nodes: &[Node],
) {
    let Some(nh) = nodes
        .iter()
        .find(|n| Some(&n.name) == next_hop.as_ref() && n.absent)
    else {
        return;
    };
    let at = site.next_hop.as_ref().map(loc).unwrap_or(nh.loc);
    d.error(
        at,
        format!("{sp}.next_hop"),
        format!(
            "node {} is marked `state: absent` but is site {}'s next-hop: name another node as next_hop first (one apply), then remove it; or mark the whole site absent",
            nh.name, sname.value
        ),
    );
}

/// `lan_access`: only for a managed site with IPv4 LANs.
fn lan_access(d: &mut Diags, sp: &str, site: &RawSite, managed: bool, lan_cidrs: &[IpNet]) -> bool {
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
    site.lan_access.as_ref().map(|a| a.value).unwrap_or(false)
}

/// The site's nodes (a managed site has at least one).
fn nodes(
    d: &mut Diags,
    raw: &RawInventory,
    st: &mut State,
    ctx: &SiteCtx,
    (sname, raw_nodes): (&S<String>, &IndexMap<S<String>, S<RawNode>>),
    managed: bool,
) -> Vec<Node> {
    let sp = ctx.sp;
    if managed && raw_nodes.is_empty() {
        d.error(
            loc(sname),
            format!("{sp}.nodes"),
            "a managed site needs at least one node",
        );
    }
    let mut addresses: HashMap<String, String> = HashMap::new();
    raw_nodes
        .iter()
        .map(|(nname, snode)| node::check(d, raw, st, ctx, &mut addresses, (nname, &snode.value)))
        .collect()
}

/// The site's block: inside the space, of the site prefix, overlapping no other site's.
fn block(
    d: &mut Diags,
    net: &Net,
    st: &mut State,
    sp: &str,
    sname: &S<String>,
    site: &RawSite,
    managed: bool,
) -> Option<(Ipv4Net, Loc)> {
    let block = site
        .wireguard_cidr
        .as_ref()
        .and_then(|c| v4net(d, c, &format!("{sp}.wireguard_cidr")).map(|n| (n, loc(c))));
    if let Some((b, bl)) = block {
        let f = format!("{sp}.wireguard_cidr");
        if let Some(w) = net.wg
            && !w.contains(&b)
        {
            d.error(bl, &f, format!("{b} lies outside the WireGuard space {w}"));
        } else if let Some(p) = net.site_prefix
            && b.prefix_len() != p
        {
            d.error(
                bl,
                &f,
                format!("{b} is a /{}, but site_prefix is {p}", b.prefix_len()),
            );
        }
        for (other, oname, oloc) in &st.site_blocks {
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
        st.site_blocks.push((b, sname.value.clone(), bl));
    } else if !managed && site.wireguard_cidr.is_none() {
        d.error(
            loc(sname),
            format!("{sp}.wireguard_cidr"),
            "an unmanaged site's block must be written: it is agreed with its owner, not allocated",
        );
    }
    block
}

/// The site's LANs: clear of the WireGuard space and the cluster's CIDRs.
fn lan_cidrs(d: &mut Diags, net: &Net, sp: &str, site: &RawSite) -> Vec<IpNet> {
    let mut lan_cidrs = Vec::new();
    let Some(lans) = &site.lan_cidrs else {
        return lan_cidrs;
    };
    for (i, c) in lans.value.iter().enumerate() {
        let f = format!("{sp}.lan_cidrs[{i}]");
        if let Some(n) = anynet(d, c, &f) {
            if let Some(w) = net.wg
                && overlaps(&n, &IpNet::V4(w))
            {
                d.error(
                    loc(c),
                    &f,
                    format!("{n} collides with the WireGuard space {w}"),
                );
            }
            if let Some(cc) = &net.cluster_cidrs {
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
    lan_cidrs
}

/// The site's endpoint: `host:port`, reachable outside the tunnel.
fn endpoint(d: &mut Diags, wg: Option<Ipv4Net>, sp: &str, site: &RawSite) -> Option<Endpoint> {
    let endpoint = site.endpoint.as_ref().and_then(|e| {
        Endpoint::parse(e.value.trim())
            .map_err(|m| d.error(loc(e), format!("{sp}.endpoint"), m.to_string()))
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
    endpoint
}

/// The uplink's MTU, with room for network.mtu and WireGuard's overhead.
fn wan_mtu(d: &mut Diags, net: &Net, sp: &str, site: &RawSite) -> u16 {
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
    if let (Some((m, _)), Some(w)) = (net.mtu_written, &site.wan_mtu)
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
    wan_mtu
}

/// `public_key`: only for an unmanaged site or a hub router wgprov does not manage, and
/// needed by both.
fn public_key(
    d: &mut Diags,
    sp: &str,
    sname: &S<String>,
    site: &RawSite,
    (managed, hand_hub): (bool, bool),
    router: RouterKind,
) -> Option<PublicKey> {
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
                key_hint(router)
            ),
        );
    }
    public_key
}

/// `router_address`: only for a hub router wgprov does not manage, and needed by it.
fn router_address(
    d: &mut Diags,
    wg: Option<Ipv4Net>,
    sp: &str,
    sname: &S<String>,
    site: &RawSite,
    hand_hub: bool,
) -> Option<String> {
    match &site.router_address {
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
    }
}

/// An unmanaged site is never contacted: no nodes, no next-hop.
fn unmanaged(d: &mut Diags, sp: &str, site: &RawSite) {
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

/// What choosing the next-hop (and the standby) needs of the site.
#[derive(Clone, Copy)]
pub(super) struct Hub<'a> {
    pub(super) net: &'a Net,
    pub(super) st: &'a State,
    pub(super) sp: &'a str,
    pub(super) sname: &'a S<String>,
    pub(super) endpoint: Option<&'a Endpoint>,
    pub(super) managed_router: Option<&'a ManagedRouter>,
    pub(super) lan_access: bool,
    pub(super) managed: bool,
}

/// The site's next-hop: a node of the site, the managed router (added to `nodes` as the
/// site's hub), or none for a hub router wgprov does not manage.
fn next_hop(d: &mut Diags, h: Hub, site: &RawSite, nodes: &mut Vec<Node>) -> Option<String> {
    let (sp, sname, managed) = (h.sp, h.sname, h.managed);
    match &site.next_hop {
        // the router is the site's hub: a node of the site, as far as the mesh goes
        Some(nh) if managed && nh.value == "router" => {
            if let Some(ep) = h.endpoint
                && let Some(lp) = h.net.listen_port
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
            // a hub router wgprov does not manage: no next-hop node (see hand_hub)
            let r = h.managed_router?;
            if r.kind == ManagedKind::Openwrt {
                router::openwrt_hub_limits(d, nh, sp, &h.net.interface, h.lan_access);
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
                ssh_origin: h
                    .st
                    .router_origins
                    .get(&r.name)
                    .cloned()
                    .unwrap_or_default(),
                is_router: true,
                absent: false,
            });
            Some(r.name.clone())
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
    }
}

/// A managed router's DNAT points at the next-hop's address: it must be an IPv4 literal.
fn dnat_target(
    d: &mut Diags,
    sp: &str,
    site: &RawSite,
    raw_nodes: &IndexMap<S<String>, S<RawNode>>,
    nodes: &[Node],
    r: &ManagedRouter,
    nh: &str,
) {
    if let Some(n) = nodes.iter().find(|n| n.name == nh && !n.is_router)
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
}
