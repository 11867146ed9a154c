//! One node of a managed site: its name, LAN address, WireGuard address, OS, Kubernetes flavor
//! and SSH settings.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use super::ssh::{SshLayer, resolve_ssh};
use super::{Diags, State, check_name, loc};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// What a node's checks need to know of its site.
pub(super) struct SiteCtx<'a> {
    /// The site's field path, e.g. `sites.home`.
    pub sp: &'a str,
    /// The site's name.
    pub name: &'a str,
    /// The site as written.
    pub site: &'a RawSite,
    /// Its valid LAN networks.
    pub lan_cidrs: &'a [IpNet],
    /// Its block, when written and valid.
    pub block: Option<(Ipv4Net, Loc)>,
    /// The WireGuard space, when valid.
    pub wg: Option<Ipv4Net>,
}

/// Checks one node; `addresses` holds the site's node addresses so far (address → node).
pub(super) fn check(
    d: &mut Diags,
    raw: &RawInventory,
    st: &mut State,
    s: &SiteCtx,
    addresses: &mut HashMap<String, String>,
    (nname, node): (&S<String>, &RawNode),
) -> Node {
    let np = format!("{}.nodes.{}", s.sp, nname.value);
    check_name(d, nname, &np);
    if let Some(first) = st.node_names.get(&nname.value) {
        d.error(
            loc(nname),
            &np,
            format!(
                "node name `{}` is already used at line {}: node names are unique across sites",
                nname.value, first.line
            ),
        );
    } else {
        st.node_names.insert(nname.value.clone(), loc(nname));
    }
    let address = address(d, s, addresses, &np, nname, node);
    let wireguard_ip = node
        .wireguard_ip
        .as_ref()
        .and_then(|ip| wireguard_ip(d, st, s, &np, &nname.value, ip));

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
        raw.ssh.as_ref().map(|l| SshLayer {
            raw: &l.value,
            path: "ssh".into(),
        }),
        s.site.ssh.as_ref().map(|l| SshLayer {
            raw: &l.value,
            path: format!("{}.ssh", s.sp),
        }),
        node.ssh.as_ref().map(|l| SshLayer {
            raw: &l.value,
            path: format!("{np}.ssh"),
        }),
    ];
    let (ssh, ssh_origin, config) = resolve_ssh(d, &address, &layers);
    st.config_refs.insert(nname.value.clone(), config);
    if let Some(j) = node
        .ssh
        .as_ref()
        .and_then(|l| l.value.proxy_jump.as_ref())
        .or_else(|| {
            s.site
                .ssh
                .as_ref()
                .and_then(|l| l.value.proxy_jump.as_ref())
        })
    {
        st.jumps.push((nname.value.clone(), j.clone(), np.clone()));
    }

    Node {
        name: nname.value.clone(),
        loc: loc(nname),
        site: s.name.to_string(),
        address,
        wireguard_ip,
        os_family,
        kubernetes: node_kubernetes,
        ssh,
        ssh_origin,
        is_router: false,
        absent: super::absent(d, node.state.as_ref(), format!("{np}.state")),
    }
}

/// The node's LAN address: an IP or a DNS name, outside the WireGuard space, in the site's
/// LANs, used by no other node of the site.
fn address(
    d: &mut Diags,
    s: &SiteCtx,
    addresses: &mut HashMap<String, String>,
    np: &str,
    nname: &S<String>,
    node: &RawNode,
) -> String {
    let address = node.address.value.trim().to_string();
    let addr_ip = address.parse::<IpAddr>().ok();
    if addr_ip.is_none() && !is_dns_name(&address) {
        d.error(
            loc(&node.address),
            format!("{np}.address"),
            format!("`{address}` is neither an IP address nor a DNS name"),
        );
    }
    if let (Some(IpAddr::V4(a)), Some(w)) = (addr_ip, s.wg)
        && w.contains(&a)
    {
        d.error(
            loc(&node.address),
            format!("{np}.address"),
            format!("{a} lies inside the WireGuard space {w}: the LAN address carries the tunnel, it cannot be inside it"),
        );
    }
    if let Some(a) = addr_ip
        && !s.lan_cidrs.is_empty()
        && !s.lan_cidrs.iter().any(|n| n.contains(&a))
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
    address
}

/// A written `wireguard_ip`: inside the space and the site's block, not its network or
/// broadcast address, taken by no other node.
fn wireguard_ip(
    d: &mut Diags,
    st: &mut State,
    s: &SiteCtx,
    np: &str,
    nname: &str,
    ip: &S<String>,
) -> Option<Ipv4Addr> {
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
    if let Some(w) = s.wg
        && !w.contains(&a)
    {
        d.error(
            loc(ip),
            &f,
            format!("{a} lies outside the WireGuard space {w}"),
        );
        return Some(a);
    }
    if let Some((b, _)) = s.block {
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
    if let Some((other, ol)) = st.node_ips.get(&a) {
        d.error(
            loc(ip),
            &f,
            format!("{a} is also node {other}'s address (line {})", ol.line),
        );
    } else {
        st.node_ips.insert(a, (nname.to_string(), loc(ip)));
    }
    Some(a)
}
