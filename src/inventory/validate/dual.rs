//! Dual stack: `network.wireguard_cidr6` and `site_prefix6`, and what must not overlap the
//! IPv6 WireGuard space (the cluster's IPv6 CIDRs, the sites' IPv6 LANs).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Diags, anynet_with, loc, overlaps};
use crate::inventory::schema::*;

/// The IPv6 space and the prefix of a site's IPv6 block, when written and valid. Every IPv4
/// site block and host number must have its IPv6 counterpart (`site_prefix`, `wg`: the IPv4
/// plan, when valid).
pub(super) fn check(
    d: &mut Diags,
    raw: &RawInventory,
    wg: Option<Ipv4Net>,
    site_prefix: Option<u8>,
) -> Option<(Ipv6Net, u8)> {
    let net = &raw.network.value;
    let Some(c) = &net.wireguard_cidr6 else {
        if let Some(p) = &net.site_prefix6 {
            d.error(
                loc(p),
                "network.site_prefix6",
                "needs network.wireguard_cidr6 (the IPv6 space it cuts into site blocks)",
            );
        }
        return None;
    };
    let field = "network.wireguard_cidr6";
    let space = match anynet_with(d, c, field, "an IPv6 CIDR like fd10:100::/48")? {
        IpNet::V6(n) => n,
        IpNet::V4(_) => {
            d.error(
                loc(c),
                field,
                format!("`{}` is IPv4: wireguard_cidr holds the IPv4 space", c.value),
            );
            return None;
        }
    };
    if !Ipv6Net::new("fc00::".parse().unwrap(), 7)
        .unwrap()
        .contains(&space)
    {
        d.warn(
            loc(c),
            field,
            format!("{space} is not a unique local address (fc00::/7): a private mesh normally uses one (e.g. fd10:100::/48); a global block works if it is yours"),
        );
    }
    let prefix6 = match &net.site_prefix6 {
        None => 64,
        Some(p) => u8::try_from(p.value).unwrap_or(0),
    };
    let at = net.site_prefix6.as_ref().map(loc).unwrap_or(loc(c));
    let pfield = if net.site_prefix6.is_some() {
        "network.site_prefix6"
    } else {
        field
    };
    if prefix6 <= space.prefix_len() || prefix6 > 120 {
        d.error(
            at,
            pfield,
            format!(
                "the IPv6 site blocks (/{prefix6}) must be longer than the space ({space}) and at most /120"
            ),
        );
        return None;
    }
    if let (Some(wg), Some(sp)) = (wg, site_prefix) {
        let sites_bits = sp.saturating_sub(wg.prefix_len());
        let host_bits = 32 - sp;
        if prefix6 - space.prefix_len() < sites_bits || 128 - prefix6 < host_bits {
            d.error(
                at,
                pfield,
                format!(
                    "{space} in /{prefix6} blocks cannot mirror {wg} in /{sp} blocks: it needs {sites_bits} bits for the sites and {host_bits} for the hosts"
                ),
            );
            return None;
        }
    }
    Some((space, prefix6))
}

/// The cluster's IPv6 CIDRs and the sites' IPv6 LANs must not overlap the IPv6 space.
pub(super) fn overlaps_space(d: &mut Diags, raw: &RawInventory, space: Ipv6Net) {
    let lists = std::iter::once((
        "network.cluster_cidrs".to_string(),
        &raw.network.value.cluster_cidrs,
    ))
    .chain(raw.sites.value.iter().map(|(name, site)| {
        (
            format!("sites.{}.lan_cidrs", name.value),
            &site.value.lan_cidrs,
        )
    }));
    for (field, list) in lists {
        for (i, c) in list.iter().flat_map(|l| l.value.iter()).enumerate() {
            if let Ok(n) = c.value.trim().parse::<IpNet>()
                && overlaps(&n, &IpNet::V6(space))
            {
                d.error(
                    loc(c),
                    format!("{field}[{i}]"),
                    format!("{n} overlaps the IPv6 WireGuard space {space}"),
                );
            }
        }
    }
}
