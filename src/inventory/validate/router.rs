//! A site's `router:`: a kind written by name, or a router wgprov manages over SSH.

use std::net::IpAddr;

use ipnet::Ipv4Net;

use super::ssh::{SshLayer, resolve_ssh};
use super::{Diags, State, interface, loc};
use crate::inventory::model::*;
use crate::inventory::schema::*;
use crate::inventory::sshconfig::ConfigRef;
use crate::shell::InterfaceName;

/// Checks a site's `router:` and returns its kind and, when wgprov manages it, the router. A
/// managed router's OpenSSH config file, SSH origins and `proxy_jump` are recorded in `st`.
pub(super) fn check(
    d: &mut Diags,
    raw: &RawInventory,
    st: &mut State,
    (sp, sname): (&str, &str),
    site: &RawSite,
    wg: Option<Ipv4Net>,
    managed: bool,
) -> (RouterKind, Option<ManagedRouter>) {
    let Some(r) = &site.router else {
        return (RouterKind::Other, None);
    };
    match &r.value {
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
            let mr =
                managed_router(d, raw, sp, sname, m, wg, managed).map(|(r, origins, config)| {
                    st.config_refs.insert(r.name.clone(), config);
                    st.router_origins.insert(r.name.clone(), origins);
                    r
                });
            if let Some(j) = m.ssh.as_ref().and_then(|s| s.value.proxy_jump.as_ref()) {
                st.jumps
                    .push((format!("{sname}-router"), j.clone(), format!("{sp}.router")));
            }
            let kind = match mr.as_ref().map(|m| m.kind) {
                Some(ManagedKind::Openwrt) => RouterKind::Openwrt,
                _ => RouterKind::Other,
            };
            (kind, mr)
        }
    }
}

/// What an OpenWrt hub (`next_hop: router` with `kind: openwrt`) cannot do: its WireGuard
/// interface is a uci section named after `network.interface`, and uci names sections with
/// letters, digits and `_` only; `lan_access` (the site's LANs masqueraded into the mesh) is
/// built for wg-quick's PostUp only.
pub(super) fn openwrt_hub_limits(
    d: &mut Diags,
    nh: &S<String>,
    sp: &str,
    iface: &InterfaceName,
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
    let wan = interface(
        d,
        &m.wan_interface,
        m.wan_interface.value.trim(),
        &format!("{rp}.wan_interface"),
    );
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
