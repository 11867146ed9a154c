//! An OpenWrt router as its site's WireGuard hub (`next_hop: router` with `kind: openwrt`).
//!
//! The router is a node of the mesh like a Linux hub (address `.1`, the peers of a next-hop),
//! but its desired state is no wg-quick file: it is `/etc/wgprov/router-hub.sh`, a script that
//! sets OpenWrt's own netifd WireGuard interface through `uci` and brings it up. The script
//! replaces wgprov's named sections whole (`uci -q delete`, then `uci set`), exactly as the
//! port-forward script does, and touches no section wgprov did not create:
//! - `network.<iface>` (`proto wireguard`, key, port, address, MTU);
//! - `network.wgprov_peer_<n>` (`wireguard_<iface>`), one per peer, in the order of the plan;
//!   every `wgprov_peer_*` section is deleted first, so a peer that left goes with it;
//! - `firewall.wgprov_wg_in`, accepting UDP `listen_port` from the WAN zone;
//! - `firewall.wgprov_wg`, a zone holding the interface with input, output and forward
//!   accepted, so that wg0→wg0 traffic is forwarded between members and other sites.
//!
//! uci keeps all of it across reboots and netifd brings the interface up at boot, so no boot
//! script is needed. `router-hub.sh check` exits 0 when every value is in place and the
//! running interface has the planned key, port and peers: that is the facts' drift check.
//! The private key is in the script (one line, `private_key='…'`), which the redaction of
//! diffs and outputs hides like a `PrivateKey =` line.
//!
//! Never run on a real OpenWrt (see README): what is fixed here is the text, by golden tests
//! and `sh -n`.

use std::collections::BTreeMap;

use crate::desired::{DesiredFile, FileState, KeyRing, PeerEntry, PeerFallback, PskRing};
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::facts::gather::UCI_PRIVATE_KEY;
use crate::inventory::{Endpoint, ManagedKind, ManagedRouter};
use crate::keys::{Keypair, PresharedKey, PrivateKey};
use crate::shell::{Handler, InterfaceName, RemotePath, sh_quote};
use crate::topology::{NodePlan, Topology};

use super::openwrt::{KEY_VAR, Section, Val, check_lines, one, set_lines};

/// The script that sets the hub (run by the handler).
pub const HUB_SCRIPT: &str = "/etc/wgprov/router-hub.sh";
/// Left by the script when it created the interface section itself (there was none before):
/// only then does removing the hub delete the interface too.
pub const CREATED: &str = "/etc/wgprov/router-hub.created";
/// The firewall rule that lets WireGuard in from the WAN.
pub const RULE: &str = "firewall.wgprov_wg_in";
/// The firewall zone of the interface.
pub const ZONE: &str = "firewall.wgprov_wg";
/// That zone's name (fw3 allows at most 11 characters).
pub const ZONE_NAME: &str = "wgprov";
/// The start of the name of every peer section wgprov owns.
pub const PEER_PREFIX: &str = "wgprov_peer_";
/// The facts section saying whether the script's check passes (`ok`, `drift`, `none`).
pub const CHECK_SECTION: &str = "router_hub";
/// The facts section listing the interface's peer sections wgprov did not create.
const FOREIGN_SECTION: &str = "router_hub_foreign";

/// The managed OpenWrt router that `node` is, when it is one that is its site's hub.
pub fn of<'a>(topo: &'a Topology, node: &NodePlan) -> Option<&'a ManagedRouter> {
    if !node.is_router {
        return None;
    }
    topo.router(&node.name)
        .map(|(_, r)| r)
        .filter(|r| r.kind == ManagedKind::Openwrt)
}

/// True when `name` is an OpenWrt hub router.
pub fn is_hub(topo: &Topology, name: &str) -> bool {
    topo.node(name).is_some_and(|n| of(topo, n).is_some())
}

/// Everything the hub script sets.
#[derive(Clone, Debug)]
pub struct Hub<'a> {
    /// The site.
    pub site: &'a str,
    /// The interface (a uci section name: validation checked it).
    pub iface: &'a InterfaceName,
    /// `<wireguard_ip>/<prefix of the network>`.
    pub address: String,
    /// The listen port.
    pub listen_port: u16,
    /// The interface's MTU.
    pub mtu: u16,
    /// The firewall zone WireGuard arrives in (the router's `wan_interface`).
    pub wan_zone: &'a str,
    /// The router's public key (what the running interface must show).
    pub public_key: String,
    /// Its peers, as a Linux hub gets them.
    pub peers: &'a [PeerEntry],
    /// The preshared key of each peer's link, in the order of `peers` (empty: none).
    pub preshared: Vec<Option<PresharedKey>>,
}

/// The script's variable holding the preshared key of peer section `n` (1-based). Its name
/// ends in `preshared_key` so that the line setting it (`pN_preshared_key='…'`) is redacted
/// wherever the script is shown.
fn psk_var(n: usize) -> String {
    format!("p{n}_preshared_key")
}

fn interface(h: &Hub) -> Section {
    Section {
        path: format!("network.{}", h.iface),
        kind: "interface".into(),
        options: vec![
            ("proto", one("wireguard")),
            ("private_key", Val::Key),
            ("listen_port", one(h.listen_port)),
            ("addresses", Val::List(vec![h.address.clone()])),
            ("mtu", one(h.mtu)),
        ],
    }
}

fn peer_sections(h: &Hub) -> Vec<Section> {
    h.peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ep = p.endpoint.as_deref().and_then(|e| Endpoint::parse(e).ok());
            let or_unset = |v: Option<String>| v.map_or(Val::Unset, Val::One);
            Section {
                path: format!("network.{PEER_PREFIX}{}", i + 1),
                kind: format!("wireguard_{}", h.iface),
                options: vec![
                    ("description", one(&p.name)),
                    ("public_key", one(&p.public_key)),
                    ("allowed_ips", Val::List(p.allowed_ips.clone())),
                    (
                        "endpoint_host",
                        or_unset(ep.as_ref().map(|e| e.host.clone())),
                    ),
                    ("endpoint_port", or_unset(ep.map(|e| e.port.to_string()))),
                    (
                        "persistent_keepalive",
                        or_unset(p.persistent_keepalive.map(|k| k.to_string())),
                    ),
                    // the interface's own route (its address's prefix) covers the whole mesh
                    ("route_allowed_ips", one("0")),
                ]
                .into_iter()
                .chain(
                    h.preshared
                        .get(i)
                        .and_then(Option::as_ref)
                        .map(|_| ("preshared_key", Val::Var(psk_var(i + 1)))),
                )
                .collect(),
            }
        })
        .collect()
}

fn firewall(h: &Hub) -> [Section; 2] {
    [
        Section {
            path: RULE.into(),
            kind: "rule".into(),
            options: vec![
                ("name", one("wgprov-wireguard-in")),
                ("src", one(h.wan_zone)),
                ("proto", one("udp")),
                ("dest_port", one(h.listen_port)),
                ("target", one("ACCEPT")),
            ],
        },
        Section {
            path: ZONE.into(),
            kind: "zone".into(),
            options: vec![
                ("name", one(ZONE_NAME)),
                ("network", Val::List(vec![h.iface.to_string()])),
                ("input", one("ACCEPT")),
                ("output", one("ACCEPT")),
                ("forward", one("ACCEPT")),
            ],
        },
    ]
}

/// Shell text listing the names of wgprov's peer sections, one a line.
fn own_peer_sections() -> String {
    format!("uci -q show network | sed -n 's/^network\\.\\({PEER_PREFIX}[A-Za-z0-9_]*\\)=.*/\\1/p'")
}

/// The loop that deletes every peer section wgprov made (the planned ones are set anew).
fn delete_own_peers() -> String {
    format!(
        "for s in $({}); do uci -q delete \"network.$s\"; done",
        own_peer_sections()
    )
}

/// The uci commands of the hub, in order, as an operator would type them on the router (the
/// private key from the script's `private_key` variable): what the golden test fixes.
pub fn uci_commands(h: &Hub) -> Vec<String> {
    let mut v = Vec::new();
    let i = interface(h);
    v.push(format!("uci -q delete {}", i.path));
    v.extend(set_lines(&i));
    v.push(delete_own_peers());
    for p in peer_sections(h) {
        v.extend(set_lines(&p));
    }
    for f in firewall(h) {
        v.push(format!("uci -q delete {}", f.path));
        v.extend(set_lines(&f));
    }
    v.extend([
        "uci commit network".to_string(),
        "uci commit firewall".to_string(),
        // a new or changed interface section is read again, then the interface is set up
        // anew, so that a change of its peer sections alone takes effect too
        "/etc/init.d/network reload".to_string(),
        format!("ifup {}", h.iface),
        "/etc/init.d/firewall reload".to_string(),
    ]);
    v
}

/// The tests `check` runs: every section in place, no other peer section of wgprov's, and the
/// running interface with the planned key, port and peers.
fn checks(h: &Hub) -> Vec<String> {
    let mut v = check_lines(&interface(h));
    let peers = peer_sections(h);
    v.push(format!(
        "[ \"$({} | grep -c .)\" = {} ]",
        own_peer_sections(),
        peers.len()
    ));
    for p in &peers {
        v.extend(check_lines(p));
    }
    for f in firewall(h) {
        v.extend(check_lines(&f));
    }
    v.push(format!(
        "[ \"$(wg show {} listen-port 2>/dev/null)\" = {} ]",
        sh_quote(h.iface),
        sh_quote(&h.listen_port.to_string())
    ));
    let running: Vec<(String, Vec<String>)> = h
        .peers
        .iter()
        .map(|p| (p.public_key.clone(), p.allowed_ips.clone()))
        .collect();
    let expect = crate::hosts::handlers::Expect::from_peers(&h.public_key, &running);
    v.extend(expect.tests(h.iface).into_iter().map(|(t, _)| t));
    v
}

/// How long the script waits for netifd to bring the interface up as set (it works
/// asynchronously), in seconds.
pub const UP_WAIT: u32 = 30;

/// The hub script. `private_key` is the router's key, base64; it appears on one line only.
pub fn script(h: &Hub, private_key: &str) -> String {
    let iface = h.iface;
    let mut s = format!(
        "#!/bin/sh\n\
         # The WireGuard hub of site {site} on this OpenWrt router, written by wgprov: do not edit, apply rewrites it.\n\
         # `sh {HUB_SCRIPT}` sets network.{iface}, its peers network.{PEER_PREFIX}*, {RULE} and {ZONE}\n\
         # through uci and brings {iface} up; `sh {HUB_SCRIPT} check` exits 0 when every value is in place\n\
         # and {iface} runs with them.\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nset -u\n\
         {KEY_VAR}={key}\n{psks}\
         check() {{\n  {checks}\n}}\n\
         if [ \"${{1:-}}\" = check ]; then check; exit; fi\n\
         uci -q get network.{iface} >/dev/null || : > {created}\n",
        site = h.site,
        key = sh_quote(private_key),
        psks = h
            .preshared
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_ref().map(|k| format!(
                "{}={}\n",
                psk_var(i + 1),
                sh_quote(&k.expose_base64())
            )))
            .collect::<String>(),
        checks = checks(h).join(" &&\n  "),
        created = sh_quote(CREATED),
    );
    for c in uci_commands(h) {
        // deleting a section that is not there fails: that is fine
        if c.starts_with("uci -q delete") || c.starts_with("for ") {
            s.push_str(&format!("{c}\n"));
        } else {
            s.push_str(&format!("{c} || exit 1\n"));
        }
    }
    s.push_str(&format!(
        "i=0\nuntil check; do\n  \
         [ \"$i\" -lt {UP_WAIT} ] || {{ echo '{iface} is not up as set after {UP_WAIT} s (uci values, key, port or peers differ)' >&2; exit 1; }}\n  \
         i=$((i+1)); sleep 1\ndone\n"
    ));
    s
}

/// The hub's desired files: the script (0700: it holds the key), and no port-forward script
/// (a router that forwarded the port before forwards it no more: the WireGuard port is its own
/// now). Peers whose key is unknown are left out and named, as for any node.
pub fn desired(
    topo: &Topology,
    node: &NodePlan,
    router: &ManagedRouter,
    keys: &KeyRing,
    fallback: Option<&PeerFallback<'_>>,
    psks: &PskRing,
) -> Result<(Vec<DesiredFile>, Vec<String>)> {
    let kp = keys.get(&node.name).ok_or_else(|| Error::Role {
        role: "router_hub".into(),
        message: format!("no key known for router {}", node.name),
    })?;
    let (peers, skipped) = crate::desired::peer_entries(topo, node, keys, fallback)?;
    let net = &topo.network;
    let hub = Hub {
        site: &node.site,
        iface: &net.interface,
        address: format!("{}/{}", node.wireguard_ip, net.wireguard_cidr.prefix_len()),
        listen_port: net.listen_port,
        mtu: net.mtu,
        wan_zone: &router.wan_interface,
        public_key: kp.public.to_base64(),
        peers: &peers,
        preshared: peers
            .iter()
            .map(|p| crate::desired::preshared_key(topo, &node.name, &p.peer, psks).cloned())
            .collect(),
    };
    let path = |p: &str| RemotePath::new(p).expect("a fixed path is valid");
    let files = vec![
        DesiredFile {
            role: "router_hub".into(),
            path: path(HUB_SCRIPT),
            state: FileState::Present {
                content: script(&hub, &kp.private.expose_base64()),
                mode: 0o700,
            },
            notify: vec![Handler::RouterHub],
        },
        DesiredFile {
            role: "router_port_forward".into(),
            path: path(super::PF_SCRIPT),
            state: FileState::Absent,
            notify: vec![Handler::PortForward],
        },
    ];
    Ok((files, skipped))
}

/// The paths a hub's facts read.
pub fn candidate_paths() -> Vec<RemotePath> {
    [HUB_SCRIPT, super::PF_SCRIPT]
        .iter()
        .map(|p| RemotePath::new(p).expect("a fixed path is valid"))
        .collect()
}

/// The hub's extra facts sections: the key uci holds for the interface (parsed into a key,
/// never kept as text), whether the script's check passes, and the interface's peer sections
/// wgprov did not create.
pub fn facts_section(iface: &InterfaceName) -> String {
    format!(
        "sec {UCI_PRIVATE_KEY}\nuci -q get network.{iface}.private_key 2>/dev/null\n{check}\
         sec {FOREIGN_SECTION}\nuci -q show network 2>/dev/null | sed -n 's/^network\\.\\([^.=]*\\)=wireguard_{iface}$/\\1/p' | grep -v '^{PEER_PREFIX}'\n",
        check = check_section()
    )
}

/// The facts section of the script's check alone (what `status` needs).
pub fn check_section() -> String {
    super::check_section(CHECK_SECTION, HUB_SCRIPT)
}

/// The key the router already has, from its uci: `None` when it has none, an error when it is
/// malformed (never silently replaced: that would change the hub's identity behind its peers'
/// backs).
pub fn existing_key(
    facts: &Facts,
    iface: &InterfaceName,
) -> Option<std::result::Result<Keypair, super::HostError>> {
    facts.uci_private_key.clone().map(|k| {
        k.map(PrivateKey::into_keypair)
            .map_err(|e| super::HostError::MalformedUciKey {
                iface: iface.to_string(),
                why: e.to_string(),
            })
    })
}

/// Why the hub cannot be planned from these facts: the interface has peer sections wgprov did
/// not create (made in LuCI or by hand). They would run beside wgprov's, which owns the hub's
/// peers, and the script's check would never pass.
pub fn refusal(facts: &Facts, iface: &InterfaceName) -> Option<String> {
    let foreign: Vec<&str> = facts
        .extra
        .get(FOREIGN_SECTION)
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    (!foreign.is_empty()).then(|| {
        format!(
            "the router's {iface} has WireGuard peer sections wgprov did not create ({}): as the site's hub its peers are wgprov's; delete them (LuCI, or uci delete and uci commit network), then apply again",
            foreign
                .iter()
                .map(|s| format!("network.{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// How the router differs from its script, from the facts: `None` when the check passes (or
/// there is no script yet: the change writes it).
pub fn drift(facts: &Facts) -> Option<String> {
    super::says_drift(facts, CHECK_SECTION).then(|| {
        format!(
            "the WireGuard interface, its peers or its firewall sections are not as {HUB_SCRIPT} sets them (changed in uci or LuCI, or the interface down)"
        )
    })
}

/// The peers a hub script sets, each a public key and its AllowedIPs, in order: what the hub
/// has now for a peer whose node cannot be read.
pub fn peers_of(script: &str) -> Vec<(String, Vec<String>)> {
    peers_with_psk(script)
        .into_iter()
        .map(|(k, a, _)| (k, a))
        .collect()
}

/// A peer as a host has it: its public key, its AllowedIPs and its preshared key.
pub type HeldPeer = (String, Vec<String>, Option<PresharedKey>);

/// [`peers_of`], with the preshared key the script sets for each (read back so that a link
/// keeps its key from run to run).
pub fn peers_with_psk(script: &str) -> Vec<HeldPeer> {
    let mut by: BTreeMap<u32, HeldPeer> = BTreeMap::new();
    for l in script.lines() {
        if let Some((n, v)) = l
            .strip_prefix('p')
            .and_then(|r| r.split_once("_preshared_key="))
            .and_then(|(n, v)| Some((n.parse::<u32>().ok()?, v)))
        {
            let v = v.trim().trim_matches('\'');
            by.entry(n).or_default().2 = PresharedKey::from_base64(v).ok();
            continue;
        }
        let Some((cmd, rest)) = l
            .strip_prefix("uci set network.")
            .map(|r| ("set", r))
            .or_else(|| l.strip_prefix("uci add_list network.").map(|r| ("add", r)))
        else {
            continue;
        };
        let Some((lhs, value)) = rest.split_once('=') else {
            continue;
        };
        let Some((n, option)) = lhs
            .strip_prefix(PEER_PREFIX)
            .and_then(|r| r.split_once('.'))
            .and_then(|(n, o)| Some((n.parse::<u32>().ok()?, o)))
        else {
            continue;
        };
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.split_once('\''))
            .map_or("", |(v, _)| v)
            .to_string();
        let e = by.entry(n).or_default();
        match (cmd, option) {
            ("set", "public_key") => e.0 = value,
            ("add", "allowed_ips") => e.1.push(value),
            _ => {}
        }
    }
    by.into_values().filter(|(k, _, _)| !k.is_empty()).collect()
}

/// The handler as shell text: run the script; when it is gone (the put-back of a first apply),
/// remove wgprov's sections instead.
pub fn handler(iface: &InterfaceName, fail_fn: &str) -> String {
    format!(
        "if [ -f {s} ]; then {run}\nelse\n{teardown}fi\n",
        s = sh_quote(HUB_SCRIPT),
        run = super::run_script(HUB_SCRIPT, "router_hub", fail_fn),
        teardown = teardown(iface),
    )
}

/// Shell text removing wgprov's sections: its peers and firewall sections, and the interface
/// when the script created it (an interface that was there before keeps its section). Nothing
/// happens (no reload) on a router that has none of them.
pub fn teardown(iface: &InterfaceName) -> String {
    format!(
        "if command -v uci >/dev/null 2>&1 && {{ [ -n \"$({own})\" ] || [ -f {created} ] || uci -q get {RULE} >/dev/null || uci -q get {ZONE} >/dev/null; }}; then\n  {peers}\n  \
         if [ -f {created} ]; then ifdown {iface} >/dev/null 2>&1; uci -q delete network.{iface}; rm -f {created}; fi\n  \
         uci -q delete {RULE}; uci -q delete {ZONE}\n  \
         uci commit network; uci commit firewall\n  \
         /etc/init.d/network reload >/dev/null 2>&1; /etc/init.d/firewall reload >/dev/null 2>&1\nfi\n",
        own = own_peer_sections(),
        peers = delete_own_peers(),
        created = sh_quote(CREATED),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    fn peers() -> Vec<PeerEntry> {
        vec![
            PeerEntry {
                name: "n2".into(),
                peer: crate::topology::PeerRef::Node("n2".into()),
                site: "home".into(),
                comment: "n2 (node of site home)".into(),
                public_key: "N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2M=".into(),
                allowed_ips: vec!["10.100.0.2/32".into()],
                endpoint: Some("192.168.0.11:51820".into()),
                persistent_keepalive: None,
            },
            PeerEntry {
                name: "o1".into(),
                peer: crate::topology::PeerRef::Node("o1".into()),
                site: "office".into(),
                comment: "o1 (next-hop of site office)".into(),
                public_key: "O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1M=".into(),
                allowed_ips: vec!["10.100.1.0/24".into()],
                endpoint: Some("office.example.net:51820".into()),
                persistent_keepalive: Some(25),
            },
            PeerEntry {
                name: "c1".into(),
                peer: crate::topology::PeerRef::Node("c1".into()),
                site: "cabin".into(),
                comment: "c1 (next-hop of site cabin)".into(),
                public_key: "C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1M=".into(),
                allowed_ips: vec!["10.100.2.0/24".into()],
                endpoint: None,
                persistent_keepalive: Some(25),
            },
        ]
    }

    fn hub<'a>(iface: &'a InterfaceName, peers: &'a [PeerEntry]) -> Hub<'a> {
        Hub {
            site: "home",
            iface,
            address: "10.100.0.1/16".into(),
            listen_port: 51820,
            mtu: 1420,
            wan_zone: "wan",
            public_key: "HUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBE=".into(),
            peers,
            preshared: Vec::new(),
        }
    }

    /// The exact commands, as an operator would type them on the router: a member, another
    /// site's next-hop with an endpoint and a keepalive, and a site without an endpoint. Not
    /// run on a real OpenWrt (see README): fixed here so that a change to them is a visible
    /// decision.
    #[test]
    fn golden_uci_commands_of_the_hub() {
        let iface = InterfaceName::default();
        let p = peers();
        assert_eq!(
            uci_commands(&hub(&iface, &p)).join("\n"),
            r#"uci -q delete network.wg0
uci set network.wg0=interface
uci set network.wg0.proto='wireguard'
uci set network.wg0.private_key="$private_key"
uci set network.wg0.listen_port='51820'
uci add_list network.wg0.addresses='10.100.0.1/16'
uci set network.wg0.mtu='1420'
for s in $(uci -q show network | sed -n 's/^network\.\(wgprov_peer_[A-Za-z0-9_]*\)=.*/\1/p'); do uci -q delete "network.$s"; done
uci set network.wgprov_peer_1=wireguard_wg0
uci set network.wgprov_peer_1.description='n2'
uci set network.wgprov_peer_1.public_key='N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2N2M='
uci add_list network.wgprov_peer_1.allowed_ips='10.100.0.2/32'
uci set network.wgprov_peer_1.endpoint_host='192.168.0.11'
uci set network.wgprov_peer_1.endpoint_port='51820'
uci set network.wgprov_peer_1.route_allowed_ips='0'
uci set network.wgprov_peer_2=wireguard_wg0
uci set network.wgprov_peer_2.description='o1'
uci set network.wgprov_peer_2.public_key='O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1M='
uci add_list network.wgprov_peer_2.allowed_ips='10.100.1.0/24'
uci set network.wgprov_peer_2.endpoint_host='office.example.net'
uci set network.wgprov_peer_2.endpoint_port='51820'
uci set network.wgprov_peer_2.persistent_keepalive='25'
uci set network.wgprov_peer_2.route_allowed_ips='0'
uci set network.wgprov_peer_3=wireguard_wg0
uci set network.wgprov_peer_3.description='c1'
uci set network.wgprov_peer_3.public_key='C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1M='
uci add_list network.wgprov_peer_3.allowed_ips='10.100.2.0/24'
uci set network.wgprov_peer_3.persistent_keepalive='25'
uci set network.wgprov_peer_3.route_allowed_ips='0'
uci -q delete firewall.wgprov_wg_in
uci set firewall.wgprov_wg_in=rule
uci set firewall.wgprov_wg_in.name='wgprov-wireguard-in'
uci set firewall.wgprov_wg_in.src='wan'
uci set firewall.wgprov_wg_in.proto='udp'
uci set firewall.wgprov_wg_in.dest_port='51820'
uci set firewall.wgprov_wg_in.target='ACCEPT'
uci -q delete firewall.wgprov_wg
uci set firewall.wgprov_wg=zone
uci set firewall.wgprov_wg.name='wgprov'
uci add_list firewall.wgprov_wg.network='wg0'
uci set firewall.wgprov_wg.input='ACCEPT'
uci set firewall.wgprov_wg.output='ACCEPT'
uci set firewall.wgprov_wg.forward='ACCEPT'
uci commit network
uci commit firewall
/etc/init.d/network reload
ifup wg0
/etc/init.d/firewall reload"#
        );
    }

    #[test]
    fn the_script_holds_the_key_on_one_line_checks_everything_and_is_valid_shell() {
        let iface = InterfaceName::default();
        let p = peers();
        let s = script(&hub(&iface, &p), KEY);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert_eq!(s.matches(KEY).count(), 1, "{s}");
        assert!(s.contains(&format!("\nprivate_key='{KEY}'\n")));
        // every value is checked, an unset one as empty, and no stale peer section is left
        for needle in [
            "[ \"$(uci -q get network.wg0.private_key)\" = \"$private_key\" ]",
            "[ \"$(uci -q get network.wg0.addresses)\" = '10.100.0.1/16' ]",
            "[ \"$(uci -q get network.wgprov_peer_3.endpoint_host)\" = '' ]",
            "[ \"$(uci -q get network.wgprov_peer_2.persistent_keepalive)\" = '25' ]",
            "[ \"$(uci -q get firewall.wgprov_wg.forward)\" = 'ACCEPT' ]",
            "[ \"$(uci -q show network | sed -n 's/^network\\.\\(wgprov_peer_[A-Za-z0-9_]*\\)=.*/\\1/p' | grep -c .)\" = 3 ]",
            // and the running interface: port, key, peers
            "[ \"$(wg show 'wg0' listen-port 2>/dev/null)\" = '51820' ]",
            "{ wgd=$(wg show 'wg0' dump 2>/dev/null) && wgk=${wgd#*\t} && [ \"${wgk%%\t*}\" = 'HUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBHUBE=' ]; }",
            "' 10.100.0.2/32 10.100.1.0/24 10.100.2.0/24 C1C1",
        ] {
            assert!(s.contains(needle), "no {needle:?} in\n{s}");
        }
        assert!(s.contains("uci set network.wg0.mtu='1420' || exit 1\n"));
        assert!(s.contains("uci -q delete network.wg0\n"));
        assert!(s.contains(
            "uci -q get network.wg0 >/dev/null || : > '/etc/wgprov/router-hub.created'\n"
        ));
        // the check runs before anything is set in check mode, and closes the run
        assert!(s.find("if [ \"${1:-}\" = check ]").unwrap() < s.find("uci -q delete").unwrap());
        assert!(s.contains("until check; do"));
        for text in [
            s.clone(),
            script(&hub(&iface, &[]), KEY),
            format!("fail() {{ exit 1; }}\n{}", handler(&iface, "fail")),
        ] {
            if let Err(e) = crate::shell::sh_syntax(&text) {
                panic!("{e}\n{text}");
            }
        }
    }

    #[test]
    fn a_diff_of_the_script_never_shows_the_key() {
        use crate::diff::compare;
        use crate::facts::FileFact;
        let iface = InterfaceName::default();
        let p = peers();
        let old = script(&hub(&iface, &p[..1]), KEY);
        let new = script(&hub(&iface, &p), KEY);
        let file = |content: &str| DesiredFile {
            role: "router_hub".into(),
            path: RemotePath::new(HUB_SCRIPT).unwrap(),
            state: FileState::Present {
                content: content.into(),
                mode: 0o700,
            },
            notify: vec![Handler::RouterHub],
        };
        let other = "wEeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeE=";
        for (cur, shows) in [
            (FileFact::Absent, "+private_key=(redacted)"),
            (
                FileFact::Present {
                    mode: 0o700,
                    content: old.clone(),
                },
                "+uci set network.wgprov_peer_3=wireguard_wg0",
            ),
            // only the key changes
            (
                FileFact::Present {
                    mode: 0o700,
                    content: new.replace(KEY, other),
                },
                "(a private or preshared key changes; shown as (redacted))",
            ),
        ] {
            let c = &compare(&[file(&new)], &|_| cur.clone())[0];
            let d = c.unified_diff();
            assert!(!d.contains(KEY) && !d.contains(other), "{d}");
            assert!(d.contains(shows), "{d}");
            assert!(!format!("{c:?}").contains(KEY), "Debug shows no key");
        }
    }

    #[test]
    fn the_peers_of_a_script_are_read_back_for_nodes_that_cannot_be_read() {
        let iface = InterfaceName::default();
        let p = peers();
        let s = script(&hub(&iface, &p), KEY);
        let got = peers_of(&s);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1],
            (
                "O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1O1M=".to_string(),
                vec!["10.100.1.0/24".to_string()]
            )
        );
        assert!(peers_of("#!/bin/sh\n").is_empty());
    }

    #[test]
    fn preshared_keys_are_set_from_variables_read_back_and_never_shown() {
        let iface = InterfaceName::default();
        let p = peers();
        let (k1, k3) = (PresharedKey::generate(), PresharedKey::generate());
        let mut h = hub(&iface, &p);
        h.preshared = vec![Some(k1.clone()), None, Some(k3.clone())];
        let s = script(&h, KEY);
        let (t1, t3) = (k1.expose_base64(), k3.expose_base64());
        // each key on one line of its own, set into uci and checked through its variable
        assert_eq!(s.matches(t1.as_str()).count(), 1, "{s}");
        assert!(s.contains(&format!("\np1_preshared_key='{}'\n", t1.as_str())));
        assert!(s.contains(
            "uci set network.wgprov_peer_1.preshared_key=\"$p1_preshared_key\" || exit 1"
        ));
        assert!(s.contains(
            "[ \"$(uci -q get network.wgprov_peer_3.preshared_key)\" = \"$p3_preshared_key\" ]"
        ));
        assert!(!s.contains("wgprov_peer_2.preshared_key"), "{s}");
        let shown = crate::formats::wgconf::redact(&s);
        assert!(
            !shown.contains(t1.as_str()) && !shown.contains(t3.as_str()) && !shown.contains(KEY)
        );
        assert!(shown.contains("\np1_preshared_key=(redacted)\n"), "{shown}");
        let back = peers_with_psk(&s);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].2, Some(k1));
        assert_eq!(back[1].2, None);
        assert_eq!(back[2].2, Some(k3));
        if let Err(e) = crate::shell::sh_syntax(&s) {
            panic!("{e}\n{s}");
        }
    }

    #[test]
    fn the_key_foreign_peers_and_drift_come_from_the_facts() {
        let iface = InterfaceName::default();
        let mut f = Facts::default();
        assert!(existing_key(&f, &iface).is_none());
        f.uci_private_key = Some(PrivateKey::from_base64(KEY));
        let kp = existing_key(&f, &iface).unwrap().unwrap();
        assert_eq!(kp.private.expose_base64().as_str(), KEY);
        f.uci_private_key = Some(PrivateKey::from_base64("short"));
        let e = existing_key(&f, &iface).unwrap().unwrap_err().to_string();
        assert!(
            e.starts_with("network.wg0.private_key in uci is not valid base64"),
            "{e}"
        );
        assert_eq!(refusal(&f, &iface), None);
        f.extra
            .insert(FOREIGN_SECTION.into(), "@wireguard_wg0[0]\nlaptop\n".into());
        let r = refusal(&f, &iface).unwrap();
        assert!(
            r.contains("(network.@wireguard_wg0[0], network.laptop)"),
            "{r}"
        );
        for (state, drifted) in [("ok", false), ("drift", true), ("none", false)] {
            f.extra.insert(CHECK_SECTION.into(), state.into());
            assert_eq!(drift(&f).is_some(), drifted, "{state}");
        }
        let s = facts_section(&iface);
        assert!(
            s.contains("sec uci_private_key\nuci -q get network.wg0.private_key 2>/dev/null\n")
        );
        assert!(s.contains("sh '/etc/wgprov/router-hub.sh' check"));
        if let Err(e) = crate::shell::sh_syntax(&format!("sec() {{ :; }}\n{s}")) {
            panic!("{e}\n{s}");
        }
    }

    #[test]
    fn the_handler_runs_the_script_or_removes_only_wgprovs_sections() {
        let h = handler(&InterfaceName::default(), "fail");
        assert!(h.starts_with("if [ -f '/etc/wgprov/router-hub.sh' ]; then out=$(sh '/etc/wgprov/router-hub.sh' 2>&1) || { echo \"$out\" >&2; fail 'handler router_hub: /etc/wgprov/router-hub.sh'; }\nelse\n"), "{h}");
        assert!(h.contains("uci -q delete \"network.$s\""));
        assert!(
            h.contains("uci -q delete firewall.wgprov_wg_in; uci -q delete firewall.wgprov_wg\n")
        );
        // the interface only when wgprov created it
        assert!(h.contains("if [ -f '/etc/wgprov/router-hub.created' ]; then ifdown wg0 >/dev/null 2>&1; uci -q delete network.wg0;"));
    }
}
