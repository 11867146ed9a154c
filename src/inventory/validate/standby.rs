//! A site's standby next-hop: `standby: NODE` (a node of the site, not its next-hop) and
//! `standby_endpoint: host:port` (the second public port its router forwards to the standby;
//! required when the site has an endpoint).

use std::net::IpAddr;

use ipnet::Ipv4Net;

use super::{Diags, loc};
use crate::inventory::model::*;
use crate::inventory::schema::*;

/// Checks the site's `standby` and `standby_endpoint`; the standby when both are sound.
pub(super) fn check(
    d: &mut Diags,
    h: super::site::Hub,
    site: &RawSite,
    next_hop: &Option<String>,
    nodes: &[Node],
) -> Option<Standby> {
    let (sp, sname) = (h.sp, h.sname);
    let (endpoint, router, wg) = (h.endpoint, h.managed_router, h.net.wg);
    let Some(sb) = &site.standby else {
        if let Some(e) = &site.standby_endpoint {
            d.error(
                loc(e),
                format!("{sp}.standby_endpoint"),
                "only with `standby`: it is the public port the router forwards to the standby",
            );
        }
        return None;
    };
    let field = format!("{sp}.standby");
    let hub = next_hop
        .as_ref()
        .and_then(|nh| nodes.iter().find(|n| &n.name == nh));
    let Some(hub) = hub.filter(|n| !n.is_router) else {
        d.error(
            loc(sb),
            field,
            "a standby takes over from a next-hop node: this site has none (an unmanaged site, or a router as its hub)",
        );
        return None;
    };
    let Some(node) = nodes.iter().find(|n| n.name == sb.value) else {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        d.error(
            loc(sb),
            field,
            format!(
                "`{}` is not a node of site {} (its nodes: {})",
                sb.value,
                sname.value,
                names.join(", ")
            ),
        );
        return None;
    };
    if node.name == hub.name {
        d.error(
            loc(sb),
            field,
            format!(
                "`{}` is the site's next-hop already: name another node of the site as its standby",
                node.name
            ),
        );
        return None;
    }
    if node.absent {
        d.error(
            loc(sb),
            field,
            format!(
                "node {} is marked `state: absent` but is site {}'s standby: name another standby (or none) first",
                node.name, sname.value
            ),
        );
        return None;
    }
    let sb_endpoint = standby_endpoint(d, sp, site, endpoint, wg)?;
    if let (Some(r), Some(_)) = (router, &sb_endpoint)
        && node.address.parse::<std::net::Ipv4Addr>().is_err()
    {
        // a managed router (Linux or OpenWrt) forwards the standby's port with a DNAT rule
        d.error(
            loc(sb),
            field,
            format!(
                "the standby's address `{}` is not an IPv4 address: the managed router {} forwards the standby's port to it with a DNAT rule, which needs one",
                node.address, r.name
            ),
        );
        return None;
    }
    Some(Standby {
        node: node.name.clone(),
        endpoint: sb_endpoint,
    })
}

/// The standby's endpoint: required when the site has one, its own port, outside the tunnel.
/// `None` (outer) after an error.
fn standby_endpoint(
    d: &mut Diags,
    sp: &str,
    site: &RawSite,
    endpoint: Option<&Endpoint>,
    wg: Option<Ipv4Net>,
) -> Option<Option<Endpoint>> {
    let field = format!("{sp}.standby_endpoint");
    let sb = site.standby.as_ref().expect("checked by the caller");
    let (Some(site_ep), Some(raw)) = (endpoint, &site.standby_endpoint) else {
        if endpoint.is_some() {
            d.error(
                loc(sb),
                field,
                "missing: a site with an endpoint gives its standby a second public port (`standby_endpoint: host:port`) that its router forwards to the standby",
            );
            return None;
        }
        if let Some(raw) = &site.standby_endpoint {
            d.error(
                loc(raw),
                field,
                "the site has no endpoint, so nobody dials its standby either: leave standby_endpoint out",
            );
            return None;
        }
        return Some(None);
    };
    let ep = match Endpoint::parse(raw.value.trim()) {
        Ok(ep) => ep,
        Err(e) => {
            d.error(loc(raw), field, e.to_string());
            return None;
        }
    };
    if ep.host == site_ep.host && ep.port == site_ep.port {
        d.error(
            loc(raw),
            field,
            format!(
                "{ep} is the site's endpoint, forwarded to the next-hop: the standby needs a port of its own"
            ),
        );
        return None;
    }
    if let (Some(IpAddr::V4(ip)), Some(w)) = (ep.ip(), wg)
        && w.contains(&ip)
    {
        d.error(
            loc(raw),
            field,
            format!(
                "{ip} lies inside the WireGuard space {w}: an endpoint must be reachable outside the tunnel"
            ),
        );
        return None;
    }
    Some(Some(ep))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    fn inv(site: &str) -> String {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: n1\n{site}    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n"
        )
    }

    /// (line, field, start of the message) of the only error.
    fn error(site: &str) -> (u32, String, String) {
        match load_str(Path::new("inv.yaml"), &inv(site)) {
            Err(Error::Invalid(d)) => {
                assert_eq!(d.len(), 1, "{d:?}");
                (d[0].line, d[0].field.clone(), d[0].message.clone())
            }
            other => panic!("{site}: {other:?}"),
        }
    }

    /// Both kinds of managed router make the standby's port-forward (a DNAT rule, or an OpenWrt
    /// redirect), and so both need the standby's address to be IPv4.
    #[test]
    fn a_managed_router_of_either_kind_takes_a_standby_with_an_ipv4_address() {
        for router in [
            "{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }",
            "{ kind: openwrt, address: 192.168.0.1, wan_interface: wan }",
        ] {
            let site = format!(
                "    standby: n2\n    standby_endpoint: 203.0.113.10:51821\n    router: {router}\n"
            );
            let ok = load_str(Path::new("inv.yaml"), &inv(&site)).unwrap();
            assert_eq!(ok.inventory.sites[0].standby.as_ref().unwrap().node, "n2");
            let text = inv(&site).replace("192.168.0.11", "n2.lan");
            let d = match load_str(Path::new("inv.yaml"), &text) {
                Err(Error::Invalid(d)) => d,
                other => panic!("{router}: {other:?}"),
            };
            assert_eq!(d.len(), 1, "{d:?}");
            assert_eq!((d[0].line, d[0].field.as_str()), (8, "sites.home.standby"));
            assert!(
                d[0].message
                    .starts_with("the standby's address `n2.lan` is not an IPv4 address"),
                "{}",
                d[0].message
            );
        }
    }

    #[test]
    fn a_standby_with_its_endpoint_is_accepted() {
        let ok = load_str(
            Path::new("inv.yaml"),
            &inv("    standby: n2\n    standby_endpoint: 203.0.113.10:51821\n"),
        )
        .unwrap();
        let sb = ok.inventory.sites[0].standby.clone().unwrap();
        assert_eq!(sb.node, "n2");
        assert_eq!(sb.endpoint.unwrap().to_string(), "203.0.113.10:51821");
    }

    #[test]
    fn every_bad_standby_names_its_line_and_field() {
        let f = "sites.home.standby";
        let fe = "sites.home.standby_endpoint";
        for (site, line, field, msg) in [
            (
                "    standby: n9\n    standby_endpoint: 203.0.113.10:51821\n",
                8,
                f,
                "`n9` is not a node of site home",
            ),
            (
                "    standby: n1\n    standby_endpoint: 203.0.113.10:51821\n",
                8,
                f,
                "`n1` is the site's next-hop already",
            ),
            (
                "    standby: n2\n",
                8,
                fe,
                "missing: a site with an endpoint",
            ),
            (
                "    standby_endpoint: 203.0.113.10:51821\n",
                8,
                fe,
                "only with `standby`",
            ),
            (
                "    standby: n2\n    standby_endpoint: 203.0.113.10:51820\n",
                9,
                fe,
                "203.0.113.10:51820 is the site's endpoint",
            ),
            (
                "    standby: n2\n    standby_endpoint: 203.0.113.10\n",
                9,
                fe,
                "`203.0.113.10` needs a port",
            ),
            (
                "    standby: n2\n    standby_endpoint: 10.100.9.9:51821\n",
                9,
                fe,
                "10.100.9.9 lies inside the WireGuard space",
            ),
        ] {
            let (l, fl, m) = error(site);
            assert_eq!((l, fl.as_str()), (line, field), "{site}: {m}");
            assert!(m.starts_with(msg), "{site}: {m}");
        }
    }
}
