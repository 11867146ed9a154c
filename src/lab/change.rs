//! Changes to a running lab that a test plays out: the controller loses its management path,
//! a site's router gets a new public address.

use std::net::Ipv4Addr;

use super::net::{host_route, ip};
use super::{lab_err, plan, read_state, save_state};
use crate::error::{Error, Result};

/// Cuts the controller's out-of-band management path: from now on it reaches the nodes only
/// over its leg on a site's LAN (`--controller-at`), and the other sites only through the
/// mesh — as an operator does. Returns the routes removed.
pub fn mesh_only(prefix: &str) -> Result<Vec<Ipv4Addr>> {
    let st = read_state(prefix)?
        .ok_or_else(|| Error::Usage(format!("no lab with prefix `{prefix}`")))?;
    if st.controller_lan.is_none() {
        return Err(Error::Usage(format!(
            "lab {prefix} was built without --controller-at SITE: the controller would reach nothing"
        )));
    }
    let mut removed = Vec::new();
    for a in st.addresses.values() {
        let dst = format!("{a}/32");
        if ip(&st.ctl_ns, &["route", "del", &dst, "dev", "mgmt"]).is_ok() {
            removed.push(*a);
        }
    }
    Ok(removed)
}

/// Gives `site`'s router a new public address, as an ISP does to a home line: the WAN address
/// moves (the router's NAT entries of the old one die with it), the internet and the other
/// routers route the new one. Names that pointed at the old address are the caller's to update
/// (each node's `/etc/hosts`). Returns the old address.
pub fn readdress_wan(prefix: &str, site: &str, new: Ipv4Addr) -> Result<Ipv4Addr> {
    let mut st = read_state(prefix)?
        .ok_or_else(|| Error::Usage(format!("no lab with prefix `{prefix}`")))?;
    let old = *st
        .wan
        .get(site)
        .ok_or_else(|| Error::Usage(format!("lab {prefix} has no site `{site}`")))?;
    if st.wan.values().any(|w| *w == new) {
        return Err(Error::Usage(format!("{new} is already a WAN address")));
    }
    let inet_net = ipnet::Ipv4Net::new(plan::INTERNET_IP, 24)
        .expect("net")
        .trunc();
    let router = st.routers[site].clone();
    // as a PPPoE line reconnecting: the WAN link goes down and comes back with the new address;
    // going down flushes the router's NAT (MASQUERADE) entries, which would otherwise keep
    // rewriting the nodes' flows to the old address for as long as keepalives refresh them
    ip(&router, &["link", "set", "wan0", "down"])?;
    // and the port-forward (DNAT) entries of the old address, which going down does not
    // touch: one kept alive by the node's keepalives would keep rewriting its replies to the
    // old address and refuse (as a clash) the peer's new flow to the new one, for ever. A
    // reconnecting router starts its NAT afresh; `conntrack` exits 1 when nothing matched.
    let old_s = old.to_string();
    for dir in ["--orig-dst", "--reply-dst"] {
        let _ = super::net::in_ns(&router, &["conntrack", "-D", dir, &old_s]);
    }
    ip(
        &router,
        &["addr", "del", &format!("{old}/32"), "dev", "wan0"],
    )?;
    ip(
        &router,
        &["addr", "add", &format!("{new}/32"), "dev", "wan0"],
    )?;
    ip(&router, &["link", "set", "wan0", "up"])?;
    ip(
        &router,
        &["route", "add", &inet_net.to_string(), "dev", "wan0"],
    )?;
    for (s, w) in st.wan.iter().filter(|(s, _)| *s != site) {
        if !inet_net.contains(w) {
            host_route(&router, *w, "wan0").map_err(|e| lab_err(format!("route to {s}: {e}")))?;
        }
    }
    if !inet_net.contains(&new) {
        host_route(&st.inet_ns, new, "br0")?;
        for (s, ns) in st.routers.iter().filter(|(s, _)| s.as_str() != site) {
            host_route(ns, new, "wan0").map_err(|e| lab_err(format!("router of {s}: {e}")))?;
        }
    }
    // the old address leads nowhere any more: no route to it, no cached neighbour entry that
    // would still carry packets to the router (whose NAT entries would take them)
    if !inet_net.contains(&old) {
        let _ = ip(&st.inet_ns, &["route", "del", &format!("{old}/32")]);
        for (s, ns) in &st.routers {
            if s != site {
                let _ = ip(ns, &["route", "del", &format!("{old}/32")]);
            }
        }
    }
    let _ = ip(&st.inet_ns, &["neigh", "flush", "to", &old.to_string()]);
    st.wan.insert(site.to_string(), new);
    save_state(&st)?;
    Ok(old)
}
