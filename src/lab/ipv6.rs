//! An IPv6 internet for a running lab, as a test plays it out: the internet, every router and
//! every node get global IPv6 addresses (documentation space, `2001:db8::/32`) and routes. IPv6
//! is not translated: a router only forwards, and its firewall lets in from the WAN what answers
//! a flow from its LAN, plus the pinholes asked for (UDP `listen_port` to a site's next-hop) —
//! what a home router with IPv6 does.
//!
//! Site `i` (in name order, from 1) gets `2001:db8:i::/64` on its LAN (router `::1`); a node's
//! address there is its LAN IPv4 address's last byte (`192.168.0.50` is `2001:db8:i::32`).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use super::net::{in_ns, ip};
use super::{lab_err, read_state};
use crate::error::{Error, Result};

/// The internet's own IPv6 address.
pub const INTERNET6: &str = "2001:db8:ffff::1";

/// A site's IPv6 LAN prefix (its number `i` from 1).
fn lan6(i: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, host)
}

/// The router's WAN address on the IPv6 internet.
fn wan6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Adds the IPv6 internet to lab `prefix`, with a pinhole to the next-hop of each site in
/// `pinholes`. Returns every node's global IPv6 address.
pub fn underlay(prefix: &str, pinholes: &[&str]) -> Result<BTreeMap<String, Ipv6Addr>> {
    let st = read_state(prefix)?
        .ok_or_else(|| Error::Usage(format!("no lab with prefix `{prefix}`")))?;
    let inv = crate::inventory::load(&st.inventory)?.inventory;
    let port = inv.network.listen_port.to_string();
    let inet = st.inet_ns.as_str();
    in_ns(inet, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    ip(
        inet,
        &[
            "addr",
            "add",
            &format!("{INTERNET6}/64"),
            "dev",
            "br0",
            "nodad",
        ],
    )?;
    let mut out = BTreeMap::new();
    for (i, (site, rns)) in st.routers.iter().enumerate() {
        let i = i + 1;
        router(inet, rns, i)?;
        let lan = lan6(i, 1);
        let s = inv
            .sites
            .iter()
            .find(|s| &s.name == site)
            .ok_or_else(|| lab_err(format!("site {site} is not in the inventory")))?;
        for n in &s.nodes {
            let (Some(ns), Some(v4)) = (st.nodes.get(&n.name), st.addresses.get(&n.name)) else {
                continue;
            };
            let a = lan6(i, u16::from(v4.octets()[3]));
            ip(
                ns,
                &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"],
            )?;
            ip(
                ns,
                &["-6", "route", "add", "default", "via", &lan.to_string()],
            )?;
            out.insert(n.name.clone(), a);
            if pinholes.contains(&site.as_str()) && s.next_hop.as_deref() == Some(n.name.as_str()) {
                let dst = a.to_string();
                in_ns(
                    rns,
                    &[
                        "ip6tables",
                        "-w",
                        "-A",
                        "FORWARD",
                        "-i",
                        "wan0",
                        "-p",
                        "udp",
                        "-d",
                        &dst,
                        "--dport",
                        &port,
                        "-j",
                        "ACCEPT",
                    ],
                )?;
            }
        }
    }
    Ok(out)
}

/// Router `i` of the IPv6 internet: forwarding, its addresses, its routes, and a home router's
/// IPv6 firewall (answers to the LAN's flows in, nothing else).
fn router(inet: &str, rns: &str, i: usize) -> Result<()> {
    let (wan, lan) = (wan6(i), lan6(i, 1));
    in_ns(rns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    ip(
        rns,
        &["addr", "add", &format!("{wan}/64"), "dev", "wan0", "nodad"],
    )?;
    ip(
        rns,
        &[
            "addr",
            "add",
            &format!("{lan}/64"),
            "dev",
            "br-lan",
            "nodad",
        ],
    )?;
    ip(rns, &["-6", "route", "add", "default", "via", INTERNET6])?;
    ip(
        inet,
        &[
            "-6",
            "route",
            "add",
            &format!("{}/64", lan6(i, 0)),
            "via",
            &wan.to_string(),
        ],
    )?;
    for rule in [
        "-P FORWARD DROP",
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -i br-lan -j ACCEPT",
    ] {
        let mut a = vec!["ip6tables", "-w"];
        a.extend(rule.split(' '));
        in_ns(rns, &a)?;
    }
    Ok(())
}
