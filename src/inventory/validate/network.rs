//! The `network:` section: the WireGuard space, site blocks, port, interface, keepalive, MTU,
//! Kubernetes flavor, metrics and the cluster's CIDRs.

use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use super::{Diags, KUBEADM_DEFAULT_SERVICE_CIDR, anynet, interface, loc, overlaps, port, v4net};
use crate::inventory::model::*;
use crate::inventory::schema::*;
use crate::shell::InterfaceName;

/// The `network:` section as far as it is valid (`None` where a value is wrong).
pub(super) struct Net {
    /// The WireGuard space.
    pub wg: Option<Ipv4Net>,
    /// The size of a site block.
    pub site_prefix: Option<u8>,
    /// The UDP port.
    pub listen_port: Option<u16>,
    /// The WireGuard interface.
    pub interface: InterfaceName,
    /// `persistent_keepalive`.
    pub keepalive: u16,
    /// The Kubernetes flavor.
    pub kubernetes: Flavor,
    /// `network.metrics`.
    pub metrics: Metrics,
    /// `network.preshared_keys`.
    pub preshared_keys: bool,
    /// `network.mtu` when written (and valid), with its place.
    pub mtu_written: Option<(u16, Loc)>,
    /// The pod and service CIDRs, when listed.
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// `network.relay` as written, with its place (checked across sites).
    pub relay: Option<(String, Loc)>,
    /// Dual stack: the IPv6 space and its site prefix, when written and valid.
    pub wg6: Option<(ipnet::Ipv6Net, u8)>,
}

/// Checks `network:`.
pub(super) fn check(d: &mut Diags, raw: &RawInventory) -> Net {
    let net = &raw.network.value;
    let wg = v4net(d, &net.wireguard_cidr, "network.wireguard_cidr");
    let site_prefix = site_prefix(d, net, wg);
    let listen_port = match &net.listen_port {
        None => Some(51820),
        Some(p) => port(d, p, "network.listen_port"),
    };
    let interface = match &net.interface {
        None => InterfaceName::default(),
        Some(i) => interface(d, i, &i.value, "network.interface").unwrap_or_default(),
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
    let metrics = match &net.metrics {
        None => Metrics::None,
        Some(m) => Metrics::parse(&m.value).unwrap_or_else(|| {
            d.error(
                loc(m),
                "network.metrics",
                format!("`{}` is not one of textfile, none", m.value),
            );
            Metrics::None
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
    let cluster_cidrs = cluster_cidrs(d, raw, wg);
    let relay = net.relay.as_ref().map(|r| (r.value.clone(), loc(r)));
    let wg6 = super::dual::check(d, raw, wg, site_prefix);
    if let Some((space, _)) = wg6 {
        super::dual::overlaps_space(d, raw, space);
    }
    Net {
        wg,
        site_prefix,
        listen_port,
        interface,
        keepalive,
        kubernetes,
        metrics,
        preshared_keys: net.preshared_keys.as_ref().is_some_and(|p| p.value),
        mtu_written,
        cluster_cidrs,
        relay,
        wg6,
    }
}

fn site_prefix(d: &mut Diags, net: &RawNetwork, wg: Option<Ipv4Net>) -> Option<u8> {
    match &net.site_prefix {
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
    }
}

fn cluster_cidrs(d: &mut Diags, raw: &RawInventory, wg: Option<Ipv4Net>) -> Option<Vec<IpNet>> {
    let network_loc = loc(&raw.network);
    let Some(list) = &raw.network.value.cluster_cidrs else {
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
        return None;
    };
    let mut nets: Vec<(IpNet, Loc)> = Vec::new();
    for (i, c) in list.value.iter().enumerate() {
        let field = format!("network.cluster_cidrs[{i}]");
        if let Some(n) = anynet(d, c, &field) {
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

/// The typed inventory, once every check has passed.
pub(super) fn finish(
    file: &Path,
    net: Net,
    sites: Vec<Site>,
    (removed, removed_sites): (Vec<Node>, Vec<Site>),
) -> Inventory {
    Inventory {
        path: file.to_path_buf(),
        network: Network {
            wireguard_cidr: net.wg.unwrap(),
            site_prefix: net.site_prefix.unwrap(),
            listen_port: net.listen_port.unwrap(),
            interface: net.interface,
            cluster_cidrs: net.cluster_cidrs,
            persistent_keepalive: net.keepalive,
            // the internet between sites carries 1500 whatever a site's own uplink does
            mtu: net.mtu_written.map(|m| m.0).unwrap_or_else(|| {
                sites
                    .iter()
                    .map(|s| s.wan_mtu.min(1500))
                    .min()
                    .unwrap_or(1500)
                    - 80
            }),
            kubernetes: net.kubernetes,
            metrics: net.metrics,
            relay: net.relay.map(|r| r.0),
            preshared_keys: net.preshared_keys,
            wireguard_cidr6: net.wg6,
        },
        sites,
        removed,
        removed_sites,
    }
}
