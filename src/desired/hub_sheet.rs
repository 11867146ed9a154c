//! A hub router wgprov does not manage: `next_hop: router` with `router: opnsense | pfsense |
//! openwrt | other` (and `router_address`, `public_key` in the inventory). wgprov configures the
//! site's nodes to peer with it and every other site's hub to peer with it, and tells the
//! operator, field by field in that router's own words, the tunnel and the peers to create:
//! from `plan` (offline: the nodes' keys are not known yet), at the end of every `apply` (with
//! every key), and in `/etc/wgprov/router-hub.md` on the site's nodes.
//!
//! Nothing here was run on an OPNsense, pfSense or OpenWrt box (there is none in this lab): the
//! lab proves the values by setting a Linux router up from them (tests/it/routers.rs).

use serde::Serialize;

use crate::inventory::{Endpoint, RouterKind};
use crate::keys::PublicKey;
use crate::topology::{PeerRef, SitePlan, Topology, alloc};

/// One peer to create on the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HubPeer {
    /// A node of the site, or another site.
    pub name: String,
    /// Its public key, when known (a node's is known once it has been applied).
    pub public_key: Option<String>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Endpoint host, when it has one.
    pub endpoint_host: Option<String>,
    /// Endpoint port.
    pub endpoint_port: Option<u16>,
    /// Keepalive in seconds (links that cross NAT).
    pub persistent_keepalive: Option<u16>,
}

/// The tunnel to create on a hand-run hub router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hub {
    /// The site.
    pub site: String,
    /// The router's kind (`opnsense`, `pfsense`, `openwrt`, `other`).
    #[serde(serialize_with = "kind_name")]
    pub router: RouterKind,
    /// Its LAN address (the site's nodes reach it there).
    pub router_address: String,
    /// The tunnel's address with the prefix of the whole WireGuard space (`10.100.0.1/16`).
    pub tunnel_address: String,
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// The tunnel's MTU.
    pub mtu: u16,
    /// Its public key, from the inventory.
    pub public_key: Option<String>,
    /// The WireGuard space, for the firewall rule that lets the hub forward between peers.
    pub wireguard_cidr: String,
    /// The peers: the site's nodes, then every other site.
    pub peers: Vec<HubPeer>,
}

fn kind_name<S: serde::Serializer>(k: &RouterKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

pub use crate::inventory::key_hint;

/// The hand-run hub of every site that has one, with the public keys `key_of` knows.
pub fn hubs(topo: &Topology, key_of: &dyn Fn(&str) -> Option<PublicKey>) -> Vec<Hub> {
    topo.sites
        .iter()
        .filter_map(|s| hub(topo, s, key_of))
        .collect()
}

/// The hand-run hub of `site`, if its hub is one.
pub fn hub(
    topo: &Topology,
    site: &SitePlan,
    key_of: &dyn Fn(&str) -> Option<PublicKey>,
) -> Option<Hub> {
    if !site.managed {
        return None;
    }
    let address = site.router_address.clone()?;
    let net = &topo.network;
    let ip = alloc::hub_ip(site.wireguard_cidr)?;
    let peers = topo
        .hand_hub_peers(site)
        .into_iter()
        .map(|p| {
            let (name, key) = match &p.peer {
                PeerRef::Node(n) => (n.clone(), key_of(n)),
                PeerRef::Site(s) => (format!("site {s}"), topo.site(s).and_then(|s| s.public_key)),
            };
            let ep = p.endpoint.as_deref().and_then(|e| Endpoint::parse(e).ok());
            HubPeer {
                name,
                public_key: key.map(|k| k.to_base64()),
                allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
                endpoint_host: ep.as_ref().map(|e| e.host.clone()),
                endpoint_port: ep.map(|e| e.port),
                persistent_keepalive: p.persistent_keepalive,
            }
        })
        .collect();
    Some(Hub {
        site: site.name.clone(),
        router: site.router,
        router_address: address,
        tunnel_address: format!("{ip}/{}", net.wireguard_cidr.prefix_len()),
        listen_port: net.listen_port,
        mtu: net.mtu,
        public_key: site.public_key.map(|k| k.to_base64()),
        wireguard_cidr: net.wireguard_cidr.to_string(),
        peers,
    })
}

fn key_or_hint(p: &HubPeer) -> String {
    p.public_key.clone().unwrap_or_else(|| {
        format!(
            "(not known yet: {} has no key until it is applied; `wgprov apply` prints it)",
            p.name
        )
    })
}

/// A peer's endpoint and keepalive, each in a router's words, when it has them.
fn tail(
    p: &HubPeer,
    endpoint: impl Fn(&str, u16) -> String,
    keepalive: impl Fn(u16) -> String,
) -> String {
    let mut t = String::new();
    if let (Some(host), Some(port)) = (&p.endpoint_host, p.endpoint_port) {
        t.push_str(&endpoint(host, port));
    }
    if let Some(k) = p.persistent_keepalive {
        t.push_str(&keepalive(k));
    }
    t
}

fn or_empty<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "(empty)".into())
}

/// What to create on the router, field by field in its UI's words: one line per step.
pub fn instructions(h: &Hub) -> Vec<String> {
    let name = format!("wgprov-{}", h.site);
    let key = h
        .public_key
        .clone()
        .unwrap_or_else(|| "(the router's own)".into());
    match h.router {
        RouterKind::Opnsense => opnsense(h, &name, &key),
        RouterKind::Pfsense => pfsense(h, &name, &key),
        RouterKind::Openwrt => openwrt(h, &key),
        RouterKind::Other => other_router(h, &key),
    }
}

/// OPNsense: the instance, each peer, WireGuard on, the device assigned, the firewall rules.
fn opnsense(h: &Hub, name: &str, key: &str) -> Vec<String> {
    let mut v = Vec::new();
    v.push(format!(
        "VPN > WireGuard > Instances > +: Enabled: checked; Name: {name}; Public key: {key} (keep the pair generated there); Listen port: {}; Tunnel address: {}; MTU: {}; Disable routes: unchecked. Save",
        h.listen_port, h.tunnel_address, h.mtu
    ));
    for p in &h.peers {
        v.push(format!(
            "VPN > WireGuard > Peers > +: Enabled: checked; Name: {}; Public key: {}; Pre-shared key: (empty); Allowed IPs: {}; Endpoint address: {}; Endpoint port: {}; Instances: {name}; Keepalive interval: {}. Save",
            p.name.replace(' ', "-"),
            key_or_hint(p),
            p.allowed_ips.join(", "),
            or_empty(&p.endpoint_host),
            or_empty(&p.endpoint_port),
            or_empty(&p.persistent_keepalive),
        ));
    }
    v.push("VPN > WireGuard > General: Enable WireGuard: checked. Apply".into());
    v.push(format!(
        "Interfaces > Assignments: assign the instance's device ({name}), Enable: checked, IPv4 Configuration Type: None. Save, Apply"
    ));
    v.push(format!(
        "Firewall > Rules > WAN > +: Action: Pass; Interface: WAN; Protocol: UDP; Destination: WAN address; Destination port range: {p} to {p}. Save, Apply",
        p = h.listen_port
    ));
    v.push(format!(
        "Firewall > Rules > WireGuard (Group) > +: Action: Pass; Protocol: any; Source: {c}; Destination: {c} (the hub forwards between its peers). Save, Apply",
        c = h.wireguard_cidr
    ));
    v
}

/// pfSense: the tunnel, each peer, WireGuard on, the interface assigned, the firewall rules.
fn pfsense(h: &Hub, name: &str, key: &str) -> Vec<String> {
    let mut v = Vec::new();
    v.push(format!(
        "VPN > WireGuard > Tunnels > Add Tunnel: Enable: checked; Description: {name}; Listen Port: {}; Interface Keys: Public Key {key} (keep the pair generated there); Interface Addresses: {}. Save Tunnel",
        h.listen_port, h.tunnel_address
    ));
    for p in &h.peers {
        let dynamic = if p.endpoint_host.is_some() {
            "unchecked"
        } else {
            "checked"
        };
        v.push(format!(
            "VPN > WireGuard > Peers > Add Peer: Enable: checked; Tunnel: the {name} tunnel (tun_wgN); Description: {}; Dynamic Endpoint: {dynamic}; Endpoint: {}; Endpoint Port: {}; Keep Alive: {}; Public Key: {}; Pre-shared Key: (empty); Allowed IPs: {}. Save Peer",
            p.name,
            or_empty(&p.endpoint_host),
            or_empty(&p.endpoint_port),
            or_empty(&p.persistent_keepalive),
            key_or_hint(p),
            p.allowed_ips.join(", "),
        ));
    }
    v.push("VPN > WireGuard > Settings: Enable WireGuard: checked. Save, Apply Changes".into());
    v.push(format!(
        "Interfaces > Interface Assignments: add the {name} tunnel (tun_wgN), then its page: Enable: checked; IPv4 Configuration Type: Static IPv4; IPv4 Address: {}; MTU: {}. Save, Apply Changes",
        h.tunnel_address, h.mtu
    ));
    v.push(format!(
        "Firewall > Rules > WAN > Add: Action: Pass; Protocol: UDP; Destination: WAN address; Destination Port Range: {p} to {p}. Save, Apply Changes",
        p = h.listen_port
    ));
    v.push(format!(
        "Firewall > Rules > (the tunnel's interface) > Add: Action: Pass; Protocol: Any; Source: Network {c}; Destination: Network {c} (the hub forwards between its peers). Save, Apply Changes",
        c = h.wireguard_cidr
    ));
    v
}

/// OpenWrt: the interface and each peer in `/etc/config/network`, the firewall zone and rule,
/// then the reloads.
fn openwrt(h: &Hub, key: &str) -> Vec<String> {
    let mut v = Vec::new();
    v.push(format!(
        "/etc/config/network: config interface 'wg0' with option proto 'wireguard'; option private_key (the key whose public half is {key}); option listen_port '{}'; list addresses '{}'; option mtu '{}'",
        h.listen_port, h.tunnel_address, h.mtu
    ));
    for p in &h.peers {
        let mut l = format!(
            "/etc/config/network: config wireguard_wg0 with option description '{}'; option public_key '{}'; list allowed_ips '{}'; option route_allowed_ips '0'",
            p.name,
            key_or_hint(p),
            p.allowed_ips.join("'; list allowed_ips '")
        );
        l.push_str(&tail(
            p,
            |host, port| format!("; option endpoint_host '{host}'; option endpoint_port '{port}'"),
            |k| format!("; option persistent_keepalive '{k}'"),
        ));
        v.push(l);
    }
    v.push(format!(
        "/etc/config/firewall: config zone with option name 'wgprov'; list network 'wg0'; option input 'ACCEPT'; option output 'ACCEPT'; option forward 'ACCEPT' (the hub forwards between its peers); and config rule with option src 'wan'; option proto 'udp'; option dest_port '{}'; option target 'ACCEPT'",
        h.listen_port
    ));
    v.push("then: /etc/init.d/network reload; /etc/init.d/firewall reload".into());
    v
}

/// Any other router: the interface and each peer in `wg`'s words, and what its firewall must
/// let through.
fn other_router(h: &Hub, key: &str) -> Vec<String> {
    let mut v = Vec::new();
    v.push(format!(
        "a WireGuard interface: its own private key (public key {key}); ListenPort = {}; Address = {}; MTU = {}",
        h.listen_port, h.tunnel_address, h.mtu
    ));
    for p in &h.peers {
        let mut l = format!(
            "[Peer] # {}: PublicKey = {}; AllowedIPs = {}",
            p.name,
            key_or_hint(p),
            p.allowed_ips.join(", ")
        );
        l.push_str(&tail(
            p,
            |host, port| format!("; Endpoint = {}", crate::topology::host_port(host, port)),
            |k| format!("; PersistentKeepalive = {k}"),
        ));
        v.push(l);
    }
    v.push(format!(
        "let UDP {} in from the WAN, forward between peers on the WireGuard interface ({c} to {c}), and turn on IPv4 forwarding",
        h.listen_port,
        c = h.wireguard_cidr
    ));
    v
}

/// Every hand-run hub's instructions as text: a heading per site, a numbered line per step.
pub fn text(hubs: &[Hub]) -> String {
    let mut o = String::new();
    for h in hubs {
        o.push_str(&format!(
            "site {} (router: {}, at {}) is its own hub: set the tunnel up on the router by hand\n",
            h.site,
            h.router.as_str(),
            h.router_address
        ));
        for (i, l) in instructions(h).iter().enumerate() {
            o.push_str(&format!("  {}. {l}\n", i + 1));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;
    use std::path::Path;

    const HUB_KEY: &str = "HUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBE=";

    fn inv(router: &str, extra: &str) -> String {
        format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: home.example.net:51820\n    next_hop: router\n    router: {router}\n    router_address: 192.168.0.1\n    public_key: \"{HUB_KEY}\"\n{extra}    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n  office:\n    endpoint: 198.51.100.20:51820\n    nodes:\n      o1: {{ address: 192.168.10.5 }}\n  cabin:\n    nodes:\n      c1: {{ address: 192.168.20.5 }}\n"
        )
    }

    fn topo(text: &str) -> Topology {
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), text)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    fn errors(text: &str) -> String {
        match crate::inventory::load_str(Path::new("inv.yaml"), text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_hand_run_hub_has_the_first_address_and_everyone_peers_with_it_by_its_key() {
        let t = topo(&inv("opnsense", ""));
        let home = t.site("home").unwrap();
        assert_eq!(home.next_hop, None, "no node of home is its next-hop");
        assert_eq!(
            alloc::hub_ip(home.wireguard_cidr).unwrap().to_string(),
            "10.100.0.1"
        );
        // the nodes start after the hub's .1, and none of them is a next-hop
        let n1 = t.node("n1").unwrap();
        assert_eq!(n1.wireguard_ip.to_string(), "10.100.0.2");
        assert!(!n1.is_next_hop && !t.node("n2").unwrap().is_next_hop);
        // a node peers with the router at its LAN address
        let p = t.peers(n1);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].peer, PeerRef::Site("home".into()));
        assert_eq!(p[0].endpoint.as_deref(), Some("192.168.0.1:51820"));
        assert_eq!(p[0].allowed_ips[0].to_string(), "10.100.0.0/16");
        // other sites' next-hops peer with it at the site's endpoint, by the inventory's key
        let o1 = t.node("o1").unwrap();
        let to_home = t.peers(o1).into_iter().find(|p| p.site == "home").unwrap();
        assert_eq!(to_home.peer, PeerRef::Site("home".into()));
        assert_eq!(to_home.endpoint.as_deref(), Some("home.example.net:51820"));
        assert_eq!(home.public_key.unwrap().to_base64(), HUB_KEY);
        // and home needs no port-forward: WireGuard arrives on the router's own WAN
        assert_eq!(crate::hosts::forward(&t, home), None);
        assert!(
            crate::hosts::manual_rules(&t)
                .iter()
                .all(|r| !r.contains("site home"))
        );
    }

    #[test]
    fn opnsense_gets_the_instance_and_every_peer_field_by_field() {
        let t = topo(&inv("opnsense", ""));
        let k1 = Keypair::generate().public;
        let hubs = hubs(&t, &|n| (n == "n1").then_some(k1));
        assert_eq!(hubs.len(), 1);
        let h = &hubs[0];
        assert_eq!(h.tunnel_address, "10.100.0.1/16");
        let peers: Vec<&str> = h.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["n1", "n2", "o1", "c1"]);
        let lines = instructions(h);
        assert_eq!(
            lines[0],
            format!(
                "VPN > WireGuard > Instances > +: Enabled: checked; Name: wgprov-home; Public key: {HUB_KEY} (keep the pair generated there); Listen port: 51820; Tunnel address: 10.100.0.1/16; MTU: 1420; Disable routes: unchecked. Save"
            )
        );
        assert_eq!(
            lines[1],
            format!(
                "VPN > WireGuard > Peers > +: Enabled: checked; Name: n1; Public key: {}; Pre-shared key: (empty); Allowed IPs: 10.100.0.2/32; Endpoint address: 192.168.0.10; Endpoint port: 51820; Instances: wgprov-home; Keepalive interval: (empty). Save",
                k1.to_base64()
            )
        );
        assert!(
            lines[2].contains(
                "Name: n2; Public key: (not known yet: n2 has no key until it is applied"
            ),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("Name: o1;")
                && lines[3].contains("Allowed IPs: 10.100.1.0/24; Endpoint address: 198.51.100.20; Endpoint port: 51820")
                && lines[3].contains("Keepalive interval: 25."),
            "{}",
            lines[3]
        );
        // an endpoint-less site dials the hub: no endpoint on the router's side
        assert!(
            lines[4].contains("Name: c1;")
                && lines[4].contains("Endpoint address: (empty); Endpoint port: (empty)"),
            "{}",
            lines[4]
        );
        assert!(lines.iter().any(|l| l.starts_with("Firewall > Rules > WAN > +: Action: Pass; Interface: WAN; Protocol: UDP; Destination: WAN address; Destination port range: 51820 to 51820")));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Source: 10.100.0.0/16; Destination: 10.100.0.0/16"))
        );
    }

    #[test]
    fn pfsense_openwrt_and_other_get_their_own_words() {
        let pf = instructions(&hubs(&topo(&inv("pfsense", "")), &|_| None)[0]);
        assert!(pf[0].starts_with("VPN > WireGuard > Tunnels > Add Tunnel: Enable: checked; Description: wgprov-home; Listen Port: 51820;"), "{}", pf[0]);
        assert!(pf[0].ends_with("Interface Addresses: 10.100.0.1/16. Save Tunnel"));
        assert!(
            pf.iter()
                .any(|l| l.contains("Description: c1; Dynamic Endpoint: checked;"))
        );
        assert!(pf.iter().any(|l| l.contains("Description: o1; Dynamic Endpoint: unchecked; Endpoint: 198.51.100.20; Endpoint Port: 51820; Keep Alive: 25;")));
        assert!(
            pf.iter()
                .any(|l| l.contains("IPv4 Address: 10.100.0.1/16; MTU: 1420"))
        );
        let ow = instructions(&hubs(&topo(&inv("openwrt", "")), &|_| None)[0]);
        assert!(
            ow[0].contains("option proto 'wireguard'")
                && ow[0].contains("list addresses '10.100.0.1/16'")
        );
        assert!(ow.iter().any(|l| l.contains("option description 'o1'") && l.contains("option endpoint_host '198.51.100.20'; option endpoint_port '51820'; option persistent_keepalive '25'")));
        let other = instructions(&hubs(&topo(&inv("other", "")), &|_| None)[0]);
        assert!(other.iter().any(|l| l.starts_with("[Peer] # o1: PublicKey = ") && l.ends_with("AllowedIPs = 10.100.1.0/24; Endpoint = 198.51.100.20:51820; PersistentKeepalive = 25")));
        // no step ever asks for a private key to be copied anywhere
        for l in pf.iter().chain(&ow).chain(&other) {
            assert!(!l.contains("PrivateKey ="), "{l}");
        }
    }

    #[test]
    fn a_hand_run_hub_needs_its_key_and_address_and_nothing_else_may_claim_them() {
        let no_key = inv("opnsense", "").replace(&format!("    public_key: \"{HUB_KEY}\"\n"), "");
        let e = errors(&no_key);
        assert!(
            e.contains("sites.home.public_key") && e.contains("Generate new keypair"),
            "{e}"
        );
        let no_addr = inv("pfsense", "").replace("    router_address: 192.168.0.1\n", "");
        let e = errors(&no_addr);
        assert!(
            e.contains("sites.home.router_address") && e.contains("missing"),
            "{e}"
        );
        let not_hub = inv("opnsense", "").replace("    next_hop: router\n", "    next_hop: n1\n");
        let e = errors(&not_hub);
        assert!(
            e.contains("sites.home.router_address: only for a site whose hub"),
            "{e}"
        );
        assert!(
            e.contains("sites.home.public_key: only an unmanaged site"),
            "{e}"
        );
        let lan = inv(
            "opnsense",
            "    lan_cidrs: [192.168.0.0/24]\n    lan_access: true\n",
        );
        let e = errors(&lan);
        assert!(
            e.contains("sites.home.lan_access") && e.contains("the router is the hub"),
            "{e}"
        );
        let taken = inv("opnsense", "").replace(
            "n1: { address: 192.168.0.10 }",
            "n1: { address: 192.168.0.10, wireguard_ip: 10.100.0.1 }",
        );
        let loaded = crate::inventory::load_str(Path::new("inv.yaml"), &taken).unwrap();
        let e = Topology::build(&loaded.inventory, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nodes.n1.wireguard_ip") && e.contains("hub router's address"),
            "{e}"
        );
        let port = inv("opnsense", "").replace("home.example.net:51820", "home.example.net:4500");
        let e = errors(&port);
        assert!(
            e.contains("sites.home.next_hop") && e.contains("endpoint's port must be 51820"),
            "{e}"
        );
    }
}
