//! Routers: the port-forward each site needs, owned by wgprov on the routers it manages over SSH
//! (`router: { kind: linux, … }`), and written out as rules to create by hand on the others.
//!
//! A managed router is a host like a node: facts, desired files, diff, `--check`, the host
//! transaction with its backups and dead-man, the guard. Its desired state is a script that
//! installs the port-forward (and, where systemd runs, a unit that runs it at boot); its handler
//! runs that script and flushes the conntrack entries of the WireGuard port. A router that is
//! its site's hub (`next_hop: router`) is a node of the mesh instead: a Linux one gets a node's
//! files, an OpenWrt one a script that sets its WireGuard interface through uci
//! ([`openwrt_hub`]). Everything here is pure: the scripts are text, tested without a router.

pub mod drift;
pub mod failover;
pub mod handlers;
pub mod kind;
pub use crate::desired::hub_sheet as hub;
pub mod linux;
pub mod openwrt;
pub mod openwrt_hub;
pub mod render;

use std::net::Ipv4Addr;

use crate::desired::DesiredFile;
use crate::facts::Facts;
use crate::inventory::{ManagedKind, ManagedRouter, RouterKind};
use crate::shell::{RemotePath, sh_quote};
use crate::topology::{SitePlan, Topology};

/// Why a host of some kind cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A node's wg-quick file has a private key that does not decode.
    #[error(
        "{path} has a malformed PrivateKey: wgprov will not replace the node's identity; fix the key, or remove the line to have a new one made"
    )]
    MalformedKey {
        /// The file.
        path: String,
    },
    /// An OpenWrt hub's uci holds a private key that does not decode.
    #[error(
        "network.{iface}.private_key in uci {why}: wgprov will not replace the router's identity; fix the key, or delete the option to have a new one made"
    )]
    MalformedUciKey {
        /// The interface.
        iface: String,
        /// What is wrong with it.
        why: String,
    },
    /// A forwarding router's next-hop has no IPv4 address to forward to.
    #[error("the next-hop {next_hop} has address `{address}`: a DNAT rule needs an IPv4 address")]
    NotIpv4 {
        /// The next-hop.
        next_hop: String,
        /// Its address.
        address: String,
    },
    /// A removed node's files do not render (a role's path).
    #[error("rendering what a removed node keeps: {0}")]
    Render(String),
}

/// The script that installs the port-forward (run by the handler and at boot).
pub const PF_SCRIPT: &str = "/etc/wgprov/router-pf.sh";
/// The unit that runs it at boot, where systemd runs.
pub const PF_UNIT: &str = "/etc/systemd/system/wgprov-router-pf.service";
/// The unit's name.
pub const PF_UNIT_NAME: &str = "wgprov-router-pf.service";
/// wgprov's own chain (iptables, in nat and filter) or table (nftables, `ip wgprov`).
pub const CHAIN: &str = "WGPROV-PF";

/// The port-forward a site needs: UDP `public_port` arriving on the router's WAN goes to the
/// next-hop's LAN address and WireGuard port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The site.
    pub site: String,
    /// The public UDP port (the site's endpoint port).
    pub public_port: u16,
    /// The next-hop node.
    pub next_hop: String,
    /// Its LAN address.
    pub to: String,
    /// Its WireGuard listen port.
    pub port: u16,
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UDP {} arriving on the WAN -> {}:{} ({})",
            self.public_port, self.to, self.port, self.next_hop
        )
    }
}

/// The port-forward `site` needs: only a site with an endpoint is dialled from outside, and a
/// site whose router is its hub (`next_hop: router`) needs none.
pub fn forward(topo: &Topology, site: &SitePlan) -> Option<Forward> {
    if !site.managed {
        return None;
    }
    let ep = site.endpoint.as_ref()?;
    let nh = topo.node(site.next_hop.as_deref()?)?;
    if nh.is_router {
        // the router is the hub: WireGuard arrives on its own WAN, nothing to forward
        return None;
    }
    Some(Forward {
        site: site.name.clone(),
        public_port: ep.port,
        next_hop: nh.name.clone(),
        to: nh.address.clone(),
        port: topo.network.listen_port,
    })
}

/// The second port-forward of a site with a standby: its `standby_endpoint`'s port to the
/// standby's LAN address and WireGuard port.
pub fn standby_forward(topo: &Topology, site: &SitePlan) -> Option<Forward> {
    let first = forward(topo, site)?;
    let sb = site.standby.as_ref()?;
    let ep = sb.endpoint.as_ref()?;
    let node = topo.node(&sb.node)?;
    Some(Forward {
        site: site.name.clone(),
        public_port: ep.port,
        next_hop: node.name.clone(),
        to: node.address.clone(),
        port: first.port,
    })
}

/// The rules still to be created by hand, one line per forward of a site whose router wgprov
/// does not manage (two for a site with a standby): printed by `plan` and at the end of every
/// `apply`.
pub fn manual_rules(topo: &Topology) -> Vec<String> {
    topo.sites
        .iter()
        .filter(|s| s.managed_router.is_none())
        .flat_map(|s| {
            [forward(topo, s), standby_forward(topo, s)]
                .into_iter()
                .flatten()
                .map(move |f| (s, f))
        })
        .map(|(s, f)| {
            let rule = match s.endpoint.as_ref().and_then(|e| e.ip()) {
                // no NAT66: the endpoint is the next-hop's own address, the router only lets
                // the port through
                Some(std::net::IpAddr::V6(a)) => pinhole(s.router, a, &f),
                _ => manual_rule(s.router, &f),
            };
            format!("site {} (router: {}): {rule}", s.name, s.router.as_str())
        })
        .collect()
}

/// The firewall pinhole an IPv6 endpoint needs instead of a port-forward: IPv6 is not
/// translated, the endpoint is the next-hop's own global address, and the router's firewall
/// only has to let the port in.
pub fn pinhole(kind: RouterKind, addr: std::net::Ipv6Addr, f: &Forward) -> String {
    let how = match kind {
        RouterKind::Opnsense => {
            "Firewall > Rules > WAN > Add: Action Pass, TCP/IP Version IPv6, Protocol UDP, Destination single host"
        }
        RouterKind::Pfsense => {
            "Firewall > Rules > WAN > Add: Action Pass, Address Family IPv6, Protocol UDP, Destination Address"
        }
        RouterKind::Openwrt => {
            "Network > Firewall > Traffic Rules (or /etc/config/firewall): config rule with option src 'wan', option dest 'lan', option family 'ipv6', option proto 'udp', option dest_ip"
        }
        RouterKind::Other => "allow inbound IPv6 UDP from the WAN to",
    };
    format!(
        "no port-forward (the endpoint is IPv6, which is not translated): open a pinhole instead. {how} {addr}, port {} ({} listens there itself); e.g. on Linux: ip6tables -A FORWARD -i WAN -p udp -d {addr} --dport {} -j ACCEPT",
        f.public_port, f.next_hop, f.public_port
    )
}

/// The exact rule for a router kind wgprov does not manage, in that router's own words.
pub fn manual_rule(kind: RouterKind, f: &Forward) -> String {
    match kind {
        RouterKind::Opnsense => format!(
            "Firewall > NAT > Port Forward: Interface WAN, Protocol UDP, Destination WAN address, destination port {}, Redirect target IP {}, Redirect target port {}, Filter rule association: add associated filter rule",
            f.public_port, f.to, f.port
        ),
        RouterKind::Pfsense => format!(
            "Firewall > NAT > Port Forward > Add: Interface WAN, Protocol UDP, Destination WAN address, Destination port range {p} to {p}, Redirect target IP {}, Redirect target port {}, NAT reflection: use system default, Filter rule association: add associated filter rule",
            f.to,
            f.port,
            p = f.public_port
        ),
        RouterKind::Openwrt => format!(
            "Network > Firewall > Port Forwards (or /etc/config/firewall): config redirect with option target 'DNAT', option src 'wan', option src_dport '{}', option dest 'lan', option dest_ip '{}', option dest_port '{}', option proto 'udp'",
            f.public_port, f.to, f.port
        ),
        RouterKind::Other => format!(
            "forward UDP port {} from the WAN to {}:{} (UDP), and allow it through the firewall; e.g. on Linux: iptables -t nat -A PREROUTING -i WAN -p udp --dport {} -j DNAT --to-destination {}:{}",
            f.public_port, f.to, f.port, f.public_port, f.to, f.port
        ),
    }
}

/// Shell text that runs `script` and, when it fails, shows what it said and calls `fail_fn`
/// with the handler's step (`handler NAME: SCRIPT`).
pub(crate) fn run_script(script: &str, handler: &str, fail_fn: &str) -> String {
    format!(
        "out=$(sh {s} 2>&1) || {{ echo \"$out\" >&2; {fail_fn} 'handler {handler}: {script}'; }}",
        s = sh_quote(script)
    )
}

/// The facts section `name`: `ok` when `sh SCRIPT check` exits 0, `drift` when it does not,
/// `none` without the script.
pub(crate) fn check_section(name: &str, script: &str) -> String {
    format!(
        "sec {name}\nif [ -f {s} ]; then if sh {s} check >/dev/null 2>&1; then echo ok; else echo drift; fi; else echo none; fi\n",
        s = sh_quote(script)
    )
}

/// True when the facts section `name` (see [`check_section`]) says the script's check failed.
pub(crate) fn says_drift(facts: &Facts, name: &str) -> bool {
    facts.extra.get(name).map(|s| s.trim()) == Some("drift")
}

/// The paths a managed router's facts read (the hub script too: a router that was its site's
/// hub has it, and loses it).
pub fn candidate_paths() -> Vec<RemotePath> {
    [PF_SCRIPT, PF_UNIT, openwrt_hub::HUB_SCRIPT]
        .iter()
        .map(|p| RemotePath::new(p).expect("a fixed path is valid"))
        .collect()
}

/// The extra facts section of a managed router: whether its port-forward rules are in place.
pub fn facts_section() -> String {
    linux::facts_section()
}

/// A managed router's desired files: `/etc/wgprov/router-pf.sh` with iptables/nft rules (Linux)
/// or `uci` commands (OpenWrt), and for Linux with systemd its boot unit; for OpenWrt, no hub
/// script (a router that was its site's hub gives its sections up). An error when the
/// next-hop has no IPv4 address (validation refuses that already).
pub fn desired(
    topo: &Topology,
    site: &SitePlan,
    router: &ManagedRouter,
    facts: &Facts,
) -> Result<Vec<DesiredFile>, HostError> {
    // the next-hop's forward, then a standby's second one
    let fs = [forward(topo, site), standby_forward(topo, site)]
        .into_iter()
        .flatten()
        .map(|f| {
            f.to.parse::<Ipv4Addr>()
                .map(|ip| (f.clone(), ip))
                .map_err(|_| HostError::NotIpv4 {
                    next_hop: f.next_hop.clone(),
                    address: f.to.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match router.kind {
        ManagedKind::Linux => Ok(linux::desired(
            &site.name,
            router,
            &fs,
            linux::Backend::of(facts),
            facts.systemd,
        )),
        ManagedKind::Openwrt => Ok(vec![
            DesiredFile {
                role: "router_port_forward".into(),
                path: RemotePath::new(PF_SCRIPT).expect("a fixed path is valid"),
                state: crate::desired::FileState::Present {
                    content: openwrt::pf_script(&site.name, &router.wan_interface, &fs),
                    mode: 0o755,
                },
                notify: vec![crate::shell::Handler::PortForward],
            },
            DesiredFile {
                role: "router_hub".into(),
                path: RemotePath::new(openwrt_hub::HUB_SCRIPT).expect("a fixed path is valid"),
                state: crate::desired::FileState::Absent,
                notify: vec![crate::shell::Handler::RouterHub],
            },
        ]),
    }
}

/// What a managed router of a removed site keeps of wgprov: nothing. Its port-forward script
/// and boot unit go (the handler takes wgprov's rules down when the script is gone), and an
/// OpenWrt hub's script (its handler removes wgprov's uci sections).
pub fn removal_files() -> Vec<DesiredFile> {
    use crate::shell::Handler;
    let absent = |path: &str, role: &str, notify: Vec<Handler>| DesiredFile {
        role: role.into(),
        path: RemotePath::new(path).expect("a fixed path is valid"),
        state: crate::desired::FileState::Absent,
        notify,
    };
    vec![
        absent(PF_SCRIPT, "router_port_forward", vec![Handler::PortForward]),
        absent(
            PF_UNIT,
            "router_port_forward",
            vec![Handler::DaemonReload, Handler::PortForward],
        ),
        absent(
            openwrt_hub::HUB_SCRIPT,
            "router_hub",
            vec![Handler::RouterHub],
        ),
    ]
}

/// The public UDP ports whose conntrack entries a change must flush: the port-forward's before
/// (read back from the script wgprov wrote) and after.
pub fn flush_ports(old_script: Option<&str>, new_script: Option<&str>) -> Vec<u16> {
    let mut v: Vec<u16> = [old_script, new_script]
        .into_iter()
        .flatten()
        .flat_map(linux::public_ports_of)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topo(router: &str) -> Topology {
        let text = format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  listen_port: 51821\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: home.example.net:4500\n    router: {router}\n    next_hop: n1\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n  office:\n    router: opnsense\n    nodes:\n      o1: {{ address: 192.168.1.10 }}\n"
        );
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), &text)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    #[test]
    fn only_a_site_with_an_endpoint_needs_a_port_forward() {
        let t = topo("other");
        let f = forward(&t, &t.sites[0]).unwrap();
        assert_eq!(
            f.to_string(),
            "UDP 4500 arriving on the WAN -> 192.168.0.10:51821 (n1)"
        );
        assert_eq!(forward(&t, &t.sites[1]), None, "office has no endpoint");
    }

    #[test]
    fn unmanaged_routers_get_their_exact_rule_once_per_site() {
        let t = topo("pfsense");
        let rules = manual_rules(&t);
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert!(rules[0].starts_with("site home (router: pfsense): Firewall > NAT > Port Forward"));
        assert!(rules[0].contains("Destination port range 4500 to 4500, Redirect target IP 192.168.0.10, Redirect target port 51821"));
        let t = topo("other");
        assert!(manual_rules(&t)[0].contains(
            "iptables -t nat -A PREROUTING -i WAN -p udp --dport 4500 -j DNAT --to-destination 192.168.0.10:51821"
        ));
        // a managed router does its own: nothing left to do by hand
        let t = topo("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }");
        assert!(manual_rules(&t).is_empty());
    }

    #[test]
    fn a_managed_linux_router_forwards_the_standbys_port_too() {
        let text = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:4500\n    router: { kind: linux, address: 192.168.0.1, wan_interface: eth0 }\n    next_hop: n1\n    standby: n2\n    standby_endpoint: 203.0.113.10:4501\n    nodes:\n      n1: { address: 192.168.0.10 }\n      n2: { address: 192.168.0.11 }\n";
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), text)
            .unwrap()
            .inventory;
        let t = Topology::build(&inv, &Default::default()).unwrap().0;
        let (s, r) = t.routers().next().unwrap();
        let script = desired(&t, s, r, &Facts::default()).unwrap()[0]
            .state
            .content()
            .unwrap()
            .to_string();
        for rule in [
            "-A WGPROV-PF -i eth0 -p udp --dport 4500 -j DNAT --to-destination 192.168.0.10:51820",
            "-A WGPROV-PF -i eth0 -p udp --dport 4501 -j DNAT --to-destination 192.168.0.11:51820",
            "-A WGPROV-PF -i eth0 -p udp -d 192.168.0.11 --dport 51820 -j ACCEPT",
        ] {
            assert!(script.contains(rule), "{rule}\n{script}");
        }
        assert!(script.contains("[ \"$(rules -t nat)\" = 2 ]"), "{script}");
        assert_eq!(flush_ports(None, Some(&script)), vec![4500, 4501]);
        assert!(manual_rules(&t).is_empty(), "the router makes both");
        crate::shell::sh_syntax(&script).unwrap();
    }

    #[test]
    fn conntrack_is_flushed_for_the_old_and_the_new_public_port() {
        let t = topo("{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }");
        let (s, r) = t.routers().next().unwrap();
        let files = desired(&t, s, r, &Facts::default()).unwrap();
        let new = files[0].state.content().unwrap().to_string();
        let old = new.replace("4500", "51820");
        assert_eq!(flush_ports(Some(&old), Some(&new)), vec![4500, 51820]);
        assert_eq!(flush_ports(None, Some(&new)), vec![4500]);
    }
}
