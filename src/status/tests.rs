//! The diagnosis's table tests (fixtures in, links and problems out), the script and its parse,
//! and `status()` end to end over fake hosts (`fleet`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::facts::gather::{self, Facts, PeerState, WgState};
use crate::inventory::OsFamily;
use crate::probe;
use crate::shell::{InterfaceName, RemotePath};
use crate::topology::{NodePlan, Peer, PeerRef, Topology};
use crate::transport::TransportError;

mod fleet;
mod relayed;

#[test]
fn a_managed_router_whose_rules_are_gone_is_drift_and_one_never_applied_is_not_named() {
    let inv = crate::inventory::load_str(
        std::path::Path::new("inv.yaml"),
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: { kind: linux, address: 192.168.0.1, wan_interface: eth0 }\n    nodes:\n      n1: { address: 192.168.0.10 }\n",
    )
    .unwrap()
    .inventory;
    let (topo, _) = Topology::build(&inv, &Default::default()).unwrap();
    let facts_with = |state: &str| {
        let mut f = Facts::default();
        f.extra.insert("router_pf".into(), state.into());
        [("home-router".to_string(), Ok(f))]
            .into_iter()
            .collect::<HashMap<_, _>>()
    };
    let p = router_problems(&topo, &facts_with("drift"));
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].kind, p[0].site.as_deref(), p[0].node.as_deref()),
        (Kind::Drift, Some("home"), Some("home-router"))
    );
    assert!(
        p[0].why.contains("wgprov apply puts them back"),
        "{}",
        p[0].why
    );
    assert!(router_problems(&topo, &facts_with("ok")).is_empty());
    assert!(
        router_problems(&topo, &facts_with("none")).is_empty(),
        "maybe made by hand"
    );
    let down: RouterFacts = [(
        "home-router".to_string(),
        Err(TransportError::Unreachable("connection refused".into()).into()),
    )]
    .into_iter()
    .collect();
    assert_eq!(router_problems(&topo, &down)[0].kind, Kind::Unreachable);
}

use super::observe::*;
use super::report::*;
use super::rules::*;
use crate::facts::FileFact;
use crate::keys::Keypair;
use crate::transport::fake::FakeHost;

const NOW: u64 = 1_700_000_000;

/// Four sites: home and office have endpoints (office's public port 51999 is mapped to its
/// next-hop's 51820), cabin has none (its next-hop must dial the others), friend is someone
/// else's site.
const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.96.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: {address: 192.168.0.10}\n      h2: {address: 192.168.0.11}\n  office:\n    endpoint: 198.51.100.20:51999\n    next_hop: o1\n    router: pfsense\n    nodes:\n      o1: {address: 192.168.10.5}\n      o2: {address: 192.168.10.6}\n  cabin:\n    nodes:\n      c1: {address: 192.168.20.5}\n  friend:\n    managed: false\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: 192.0.2.77:51820\n    public_key: \"FRIENDFRIENDFRIENDFRIENDFRIENDFRIENDFRIENDE=\"\n";

fn topo(yaml: &str) -> Topology {
    let inv = crate::inventory::load_str(std::path::Path::new("s.yaml"), yaml)
        .unwrap()
        .inventory;
    Topology::build(&inv, &Default::default()).unwrap().0
}

/// A mesh as its nodes would report it: every interface up and matching its file, every
/// ping answered, every handshake 10 s old, and every peer across a NAT seen at a source
/// port its router rewrote (never the configured one).
struct Mesh {
    topo: Topology,
    keys: HashMap<String, Keypair>,
    obs: Observations,
}

impl Mesh {
    fn healthy(yaml: &str) -> Mesh {
        let topo = topo(yaml);
        let keys: HashMap<String, Keypair> = topo
            .nodes
            .iter()
            .map(|n| (n.name.clone(), Keypair::generate()))
            .collect();
        let mut m = Mesh {
            topo,
            keys,
            obs: HashMap::new(),
        };
        for n in m.topo.nodes.clone() {
            let o = m.observed(&n);
            m.obs.insert(n.name.clone(), Ok(o));
        }
        m
    }

    fn key_of(&self, p: &Peer) -> String {
        match &p.peer {
            PeerRef::Node(n) => self.keys[n].public.to_base64(),
            PeerRef::Site(s) => self.topo.site(s).unwrap().public_key.unwrap().to_base64(),
        }
    }

    fn observed(&self, n: &NodePlan) -> Observed {
        let kp = &self.keys[&n.name];
        let mut conf = format!(
            "[Interface]\nAddress = {}/16\nListenPort = 51820\nPrivateKey = {}\n",
            n.wireguard_ip,
            kp.private.expose_base64().as_str()
        );
        let mut peers = Vec::new();
        for (i, p) in self.topo.peers(n).iter().enumerate() {
            let allowed: Vec<String> = p.allowed_ips.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                conf,
                "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
                self.key_of(p),
                allowed.join(", ")
            );
            if let Some(e) = &p.endpoint {
                let _ = writeln!(conf, "Endpoint = {e}");
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(conf, "PersistentKeepalive = {k}");
            }
            let seen = if p.site == n.site {
                p.endpoint.clone()
            } else {
                // NAT: another address (a remapped or endpoint-less site) and a rewritten port
                Some(format!("192.0.2.{}:{}", 10 + i, 40_000 + i))
            };
            peers.push(PeerState {
                public_key: self.key_of(p),
                endpoint: seen,
                allowed_ips: allowed,
                latest_handshake: NOW - 10,
                rx: 1000,
                tx: 2000,
                keepalive: p.persistent_keepalive.map(u32::from).unwrap_or(0),
            });
        }
        let files: BTreeMap<String, FileFact> = [
            (
                "/etc/wireguard/wg0.conf".to_string(),
                FileFact::Present {
                    mode: 0o600,
                    content: conf,
                },
            ),
            (
                "/etc/default/kubelet".to_string(),
                FileFact::Present {
                    mode: 0o644,
                    content: format!(
                        "KUBELET_EXTRA_ARGS=\"--max-pods=50 --node-ip={}\"\n",
                        n.wireguard_ip
                    ),
                },
            ),
            ("/etc/sysconfig/kubelet".to_string(), FileFact::Absent),
        ]
        .into();
        Observed {
            facts: Facts {
                os_family: Some(OsFamily::Debian),
                files,
                wg: Some(WgState {
                    public_key: kp.public.to_base64(),
                    listen_port: 51820,
                    peers,
                }),
                now: NOW,
                ..Default::default()
            },
            iface_up: true,
            ip_forward: Some(n.is_next_hop),
            ip6_forward: Some(n.is_next_hop),
            answered: probe_targets(&self.topo, n)
                .into_iter()
                .map(|t| (t, true))
                .collect(),
        }
    }

    fn get(&mut self, n: &str) -> &mut Observed {
        self.obs.get_mut(n).unwrap().as_mut().unwrap()
    }

    fn ip(&self, n: &str) -> Ipv4Addr {
        self.topo.node(n).unwrap().wireguard_ip
    }

    /// What `n` sees of its peer `other` (a node or `site NAME`): no answer, and a
    /// handshake `age` seconds ago (`None`: never).
    fn silent(&mut self, n: &str, other: &str, age: Option<u64>) {
        let key = match other.strip_prefix("site ") {
            Some(s) => self.topo.site(s).unwrap().public_key.unwrap().to_base64(),
            None => {
                let ip = self.ip(other);
                self.get(n).answered.insert(ip, false);
                self.keys[other].public.to_base64()
            }
        };
        let o = self.get(n);
        for p in &mut o.facts.wg.as_mut().unwrap().peers {
            if p.public_key == key {
                p.latest_handshake = age.map_or(0, |a| NOW - a);
            }
        }
    }

    /// The link between `a` and `b` never completes a handshake.
    fn cut(&mut self, a: &str, b: &str) {
        self.silent(a, b, None);
        self.silent(b, a, None);
    }

    /// Every peer of `n` (planned) as a list of names.
    fn peers_of(&self, n: &str) -> Vec<String> {
        let node = self.topo.node(n).unwrap();
        self.topo
            .peers(node)
            .iter()
            .map(|p| match &p.peer {
                PeerRef::Node(x) => x.clone(),
                PeerRef::Site(s) => format!("site {s}"),
            })
            .collect()
    }

    /// `wg-quick down` on `n` a moment ago: its peers still hold a fresh handshake.
    fn wg_gone(&mut self, n: &str) {
        for p in self.peers_of(n) {
            if !p.starts_with("site ") {
                self.silent(&p, n, Some(20));
            }
        }
        let o = self.get(n);
        o.facts.wg = None;
        o.iface_up = false;
        for v in o.answered.values_mut() {
            *v = false;
        }
    }

    fn unreachable(&mut self, n: &str) {
        self.obs.insert(
            n.to_string(),
            Err(TransportError::Unreachable("connection refused".into()).into()),
        );
    }

    fn report(&self) -> StatusReport {
        diagnose(&self.topo, &self.obs)
    }
}

fn kinds(r: &StatusReport) -> Vec<(Kind, Option<String>, Option<String>)> {
    r.problems
        .iter()
        .map(|p| {
            (
                p.kind,
                if p.kind == Kind::PortForwardMissing {
                    p.site.clone()
                } else {
                    None
                },
                p.node.clone(),
            )
        })
        .collect()
}

fn link<'a>(r: &'a StatusReport, a: &str, b: &str) -> &'a LinkStatus {
    r.links
        .iter()
        .find(|l| (l.from == a && l.to == b) || (l.from == b && l.to == a))
        .unwrap_or_else(|| panic!("no link {a} -- {b}"))
}

#[test]
fn a_healthy_mesh_behind_nat_with_a_remapped_port_has_no_problem() {
    let m = Mesh::healthy(INV);
    let r = m.report();
    assert_eq!(r.problems, vec![], "{}", text(&r));
    assert_eq!(r.exit_code(), 0);
    // every planned link: h1-h2, o1-o2, h1-o1, h1-c1, o1-c1, three to friend
    assert_eq!(r.links.len(), 8, "{:#?}", r.links);
    assert!(
        r.links.iter().all(|l| l.up && l.state == LinkState::Up),
        "{:#?}",
        r.links
    );
    let l = link(&r, "h1", "o1");
    assert_eq!(l.probes, [("h1".into(), true), ("o1".into(), true)].into());
    assert_eq!(l.handshake_age, Some(10));
    assert!(link(&r, "o1", "site friend").cross_site);
    // peers seen at rewritten ports are shown, and named by their keys
    let h1 = &r.nodes[0];
    let o1 = h1.peers.iter().find(|p| p.peer == "o1").unwrap();
    assert_eq!(o1.endpoint.as_deref(), Some("198.51.100.20:51999"));
    assert_ne!(o1.seen_at, o1.endpoint);
    assert!(h1.peers.iter().any(|p| p.peer == "site friend"));
    assert!(text(&r).ends_with("no problems found\n"), "{}", text(&r));
}

#[test]
fn a_missing_port_forward_is_blamed_when_both_ends_and_their_other_peers_agree() {
    let mut m = Mesh::healthy(INV);
    // cabin has no endpoint: it must dial office, whose router drops it
    m.cut("c1", "o1");
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::PortForwardMissing, Some("office".into()), None)],
        "{}",
        text(&r)
    );
    let why = &r.problems[0].why;
    assert!(
        why.contains("udp 51999 -> 192.168.10.5:51820") && why.contains("(pfsense)"),
        "{why}"
    );
    assert!(why.contains("working links with h1"), "{why}");
    assert!(
        why.contains("c1, next-hop of site cabin which has no endpoint, must dial 198.51.100.20:51999 and never completes a handshake with o1"),
        "{why}"
    );
    let t = text(&r);
    assert!(
        t.contains("down    o1 -- c1 (no handshake; ping c1->o1 no answer, o1->c1 no answer)"),
        "{t}"
    );
    assert!(
        t.contains(
            "problems:\n  port_forward_missing [site office]: site office's router (pfsense)"
        ),
        "{t}"
    );
    assert!(!link(&r, "c1", "o1").up);
    assert_eq!(link(&r, "c1", "o1").state, LinkState::Down);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn no_router_is_blamed_when_the_next_hop_works_with_no_other_site() {
    let mut m = Mesh::healthy(INV);
    m.cut("c1", "o1");
    m.cut("h1", "o1");
    m.silent("o1", "site friend", None);
    let r = m.report();
    assert!(
        r.problems.iter().all(|p| p.kind == Kind::NoHandshake),
        "{}",
        text(&r)
    );
    assert_eq!(r.problems.len(), 3, "{}", text(&r));
    assert!(r.problems.iter().all(|p| p.site.is_none()));
    assert!(
        r.problems
            .iter()
            .any(|p| p.why.contains("not blamed because o1 has no working link")),
        "{}",
        text(&r)
    );
}

#[test]
fn no_router_is_blamed_when_the_witness_is_cut_off_itself() {
    let mut m = Mesh::healthy(INV);
    // c1 reaches nobody outside its site: its own uplink is as likely as office's router
    m.cut("c1", "o1");
    m.cut("c1", "h1");
    m.silent("c1", "site friend", None);
    let r = m.report();
    assert!(
        r.problems
            .iter()
            .all(|p| p.kind == Kind::NoHandshake && p.site.is_none()),
        "{}",
        text(&r)
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.why.contains("nobody can vouch")),
        "{}",
        text(&r)
    );
}

#[test]
fn a_link_between_two_sites_with_endpoints_blames_no_router() {
    let mut m = Mesh::healthy(INV);
    m.cut("h1", "o1");
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::NoHandshake, None, Some("h1".into()))]
    );
    assert_eq!(r.problems[0].peer.as_deref(), Some("o1"));
}

#[test]
fn a_member_whose_interface_is_gone_is_the_only_problem() {
    let mut m = Mesh::healthy(INV);
    m.wg_gone("o2");
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::InterfaceDown, None, Some("o2".into()))],
        "{}",
        text(&r)
    );
    assert!(r.problems[0].why.contains("wg0 does not exist on o2"));
    // down although o1's last handshake with it is only 20 s old
    assert_eq!(link(&r, "o1", "o2").state, LinkState::Down);
    assert_eq!(
        r.nodes.iter().find(|n| n.name == "o2").unwrap().state,
        NodeState::Down
    );
}

#[test]
fn a_next_hop_whose_interface_is_gone_blames_no_router_for_its_links() {
    for n in ["o1", "c1"] {
        let mut m = Mesh::healthy(INV);
        m.wg_gone(n);
        let r = m.report();
        assert_eq!(
            kinds(&r),
            vec![(Kind::InterfaceDown, None, Some(n.into()))],
            "{}",
            text(&r)
        );
        assert_eq!(link(&r, "c1", "o1").state, LinkState::Down);
    }
    // an interface that exists but is down
    let mut m = Mesh::healthy(INV);
    m.get("o1").iface_up = false;
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::InterfaceDown, None, Some("o1".into()))]
    );
    assert!(r.problems[0].why.contains("exists on o1 but is down"));
}

#[test]
fn an_unreachable_node_is_unreachable_and_nothing_else() {
    // sshd gone, WireGuard still working: its links answer from the other ends
    let mut m = Mesh::healthy(INV);
    m.unreachable("o1");
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::Unreachable, None, Some("o1".into()))],
        "{}",
        text(&r)
    );
    assert!(r.problems[0].why.contains("connection refused"));
    assert!(link(&r, "c1", "o1").up);
    assert_eq!(link(&r, "o1", "site friend").state, LinkState::Unknown);
    // the whole machine gone: its links are down, and still nothing else is blamed
    for (a, b) in [("h1", "o1"), ("c1", "o1"), ("o2", "o1")] {
        m.silent(a, b, Some(400));
    }
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::Unreachable, None, Some("o1".into()))]
    );
    assert_eq!(link(&r, "c1", "o1").state, LinkState::Down);
    // a link with both ends unreachable is unknown, and left out of the picture
    m.unreachable("o2");
    let r = m.report();
    assert_eq!(link(&r, "o1", "o2").state, LinkState::Unknown);
    assert!(
        !r.picture_links()
            .iter()
            .any(|(a, b, _)| a == "o1" && b == "o2" || a == "o2" && b == "o1")
    );
}

#[test]
fn a_node_reached_over_the_mesh_behind_a_down_interface_says_so() {
    let yaml = INV.replace(
        "      o2: {address: 192.168.10.6}\n",
        "      o2: {address: 192.168.10.6, ssh: {proxy_jump: o1}}\n",
    );
    let mut m = Mesh::healthy(&yaml);
    m.wg_gone("o1");
    m.unreachable("o2");
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![
            (Kind::InterfaceDown, None, Some("o1".into())),
            (Kind::Unreachable, None, Some("o2".into())),
        ],
        "{}",
        text(&r)
    );
    assert!(
        r.problems[1]
            .why
            .contains("its SSH path crosses o1 (its wg0 is down)"),
        "{}",
        r.problems[1].why
    );
}

#[test]
fn a_next_hop_that_does_not_forward_is_forwarding_off_only() {
    let mut m = Mesh::healthy(INV);
    m.get("h1").ip_forward = Some(false);
    // members do not forward, and that is fine
    m.get("h2").ip_forward = Some(false);
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::ForwardingOff, None, Some("h1".into()))],
        "{}",
        text(&r)
    );
    assert!(r.problems[0].why.contains("members of home cannot reach"));
}

#[test]
fn a_running_interface_that_differs_from_its_file_is_drift() {
    let mut m = Mesh::healthy(INV);
    // a peer removed by hand, and a listen port changed by hand
    let o = m.get("o1");
    let wg = o.facts.wg.as_mut().unwrap();
    wg.peers
        .retain(|p| !p.allowed_ips.contains(&"10.100.0.0/24".to_string()));
    wg.listen_port = 51821;
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::Drift, None, Some("o1".into()))],
        "{}",
        text(&r)
    );
    let why = &r.problems[0].why;
    assert!(
        why.contains("peer h1 is in the file but not running"),
        "{why}"
    );
    assert!(
        why.contains("it listens on 51821, the file says 51820"),
        "{why}"
    );
    // a drifted next-hop is not evidence against its router
    m.cut("c1", "o1");
    let r = m.report();
    assert!(
        !r.problems
            .iter()
            .any(|p| p.kind == Kind::PortForwardMissing),
        "{}",
        text(&r)
    );
}

#[test]
fn an_openwrt_hub_drifts_when_its_scripts_check_fails_not_for_want_of_a_wg0_conf() {
    let yaml = INV.replace(
        "    next_hop: h1\n",
        "    next_hop: router\n    router: { kind: openwrt, address: 192.168.0.1, wan_interface: wan }\n",
    );
    let mut m = Mesh::healthy(&yaml);
    let hub = m.get("home-router");
    hub.facts.files.remove("/etc/wireguard/wg0.conf");
    hub.facts.extra.insert("router_hub".into(), "ok".into());
    let r = m.report();
    assert!(r.problems.is_empty(), "{}", text(&r));
    m.get("home-router")
        .facts
        .extra
        .insert("router_hub".into(), "drift".into());
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::Drift, None, Some("home-router".into()))],
        "{}",
        text(&r)
    );
    assert!(
        r.problems[0]
            .why
            .contains("not as /etc/wgprov/router-hub.sh sets them"),
        "{}",
        text(&r)
    );
}

#[test]
fn drift_reads_the_file_as_wg_does_and_ignores_endpoints() {
    let kp = Keypair::generate();
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n[Peer]\nPublicKey = P1\nAllowedIPs = 10.100.1.7/24,10.100.2.0/24\nEndpoint = 1.2.3.4:51820\nPersistentKeepalive = 25\n\n[Peer]\nPublicKey = P2\nAllowedIPs = 10.100.0.2/32\n",
        kp.private.expose_base64().as_str()
    );
    let peer = |k: &str, allowed: &[&str], ka: u32| PeerState {
        public_key: k.into(),
        endpoint: Some("9.9.9.9:1".into()),
        allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
        latest_handshake: 0,
        rx: 0,
        tx: 0,
        keepalive: ka,
    };
    let mut wg = WgState {
        public_key: kp.public.to_base64(),
        listen_port: 51820,
        peers: vec![
            peer("P1", &["10.100.2.0/24", "10.100.1.0/24"], 25),
            peer("P2", &["10.100.0.2/32"], 0),
        ],
    };
    let name = |k: &str| k.to_string();
    assert_eq!(drift(&conf, &wg, &name), Vec::<String>::new());
    wg.peers[0].keepalive = 0;
    wg.peers[1].allowed_ips = vec!["10.100.0.3/32".into()];
    wg.peers.push(peer("P3", &[], 0));
    wg.public_key = Keypair::generate().public.to_base64();
    let d = drift(&conf, &wg, &name);
    assert_eq!(
        d,
        vec![
            "it runs with another key than the file's".to_string(),
            "peer P1: keepalive 0 running, 25 in the file".into(),
            "peer P2: AllowedIPs 10.100.0.3/32 running, 10.100.0.2/32 in the file".into(),
            "peer P3 is running but not in the file".into(),
        ]
    );
    assert!(!d.join(" ").contains(kp.private.expose_base64().as_str()));
}

#[test]
fn a_kubelet_node_ip_that_is_not_the_wireguard_address_is_named() {
    let mut m = Mesh::healthy(INV);
    m.get("h2").facts.files.insert(
        "/etc/default/kubelet".into(),
        FileFact::Present {
            mode: 0o644,
            content: "KUBELET_EXTRA_ARGS=--node-ip=192.168.0.11\n".into(),
        },
    );
    // no kubelet file: nothing to check
    m.get("h1")
        .facts
        .files
        .insert("/etc/default/kubelet".into(), FileFact::Absent);
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::KubeletNodeIp, None, Some("h2".into()))],
        "{}",
        text(&r)
    );
    assert!(
        r.problems[0]
            .why
            .contains("sets node IP 192.168.0.11, not the WireGuard address 10.100.0.2")
    );
    // a Red Hat node's file is /etc/sysconfig/kubelet
    let mut m = Mesh::healthy(INV);
    m.get("h2").facts.os_family = Some(OsFamily::Redhat);
    m.get("h2").facts.files.insert(
        "/etc/sysconfig/kubelet".into(),
        FileFact::Present {
            mode: 0o644,
            content: "KUBELET_EXTRA_ARGS=\n".into(),
        },
    );
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::KubeletNodeIp, None, Some("h2".into()))]
    );
    assert!(r.problems[0].why.contains("sets no node IP"));
    // a k3s node's is wgprov's config.yaml.d file; its kubeadm file is not looked at
    let k3s = INV.replace(
        "h2: {address: 192.168.0.11}",
        "h2: {address: 192.168.0.11, kubernetes: k3s}",
    );
    let mut m = Mesh::healthy(&k3s);
    m.get("h2").facts.files.insert(
        "/etc/default/kubelet".into(),
        FileFact::Present {
            mode: 0o644,
            content: "KUBELET_EXTRA_ARGS=--node-ip=192.168.0.11\n".into(),
        },
    );
    assert_eq!(kinds(&m.report()), vec![]);
    m.get("h2").facts.files.insert(
        "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml".into(),
        FileFact::Present {
            mode: 0o644,
            content: "# managed\nnode-ip: 10.100.0.9\nflannel-iface: wg0\n".into(),
        },
    );
    let r = m.report();
    assert_eq!(
        kinds(&r),
        vec![(Kind::KubeletNodeIp, None, Some("h2".into()))]
    );
    assert!(
        r.problems[0].why.starts_with(
            "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml sets node IP 10.100.0.9, not the WireGuard address 10.100.0.2"
        ),
        "{}",
        r.problems[0].why
    );
}

#[test]
fn next_hops_without_systemd_warn_that_nothing_reresolves_a_name() {
    let named = INV.replace(
        "  cabin:\n    nodes:",
        "  cabin:\n    endpoint: cabin.example.net:51821\n    nodes:",
    );
    let mut m = Mesh::healthy(&named);
    let r = m.report();
    assert_eq!(kinds(&r), vec![], "{}", text(&r));
    assert_eq!(r.exit_code(), 0, "a warning is not a problem");
    assert_eq!(
        r.warnings,
        vec![
            "h1: nothing re-resolves cabin.example.net:51821 without systemd: if that address changes, the link stays down until wg0 restarts",
            "o1: nothing re-resolves cabin.example.net:51821 without systemd: if that address changes, the link stays down until wg0 restarts",
        ]
    );
    assert!(text(&r).contains("warning: h1: nothing re-resolves"));
    for n in ["h1", "o1"] {
        m.get(n).facts.systemd = true;
    }
    assert!(m.report().warnings.is_empty());
    assert!(Mesh::healthy(INV).report().warnings.is_empty());
}

#[test]
fn a_stale_handshake_without_an_answer_is_down_a_fresh_one_is_up() {
    let mut m = Mesh::healthy(INV);
    // ICMP dropped on o2, but the tunnel handshook 30 s ago: up
    m.silent("o1", "o2", Some(30));
    m.silent("o2", "o1", Some(30));
    assert!(link(&m.report(), "o1", "o2").up);
    assert_eq!(m.report().problems, vec![]);
    m.silent("o1", "o2", Some(400));
    m.silent("o2", "o1", None);
    let r = m.report();
    assert_eq!(link(&r, "o1", "o2").state, LinkState::Down);
    assert_eq!(
        kinds(&r),
        vec![(Kind::NoHandshake, None, Some("o1".into()))]
    );
    assert!(r.problems[0].why.contains("last handshake 400 s ago"));
    assert!(r.problems[0].why.contains("LAN between them"));
}

#[test]
fn an_unmanaged_site_without_keepalive_and_no_recent_handshake_is_unknown_not_down() {
    let yaml = INV.replace(
        "  cluster_cidrs:",
        "  persistent_keepalive: 0\n  cluster_cidrs:",
    );
    let mut m = Mesh::healthy(&yaml);
    m.silent("o1", "site friend", Some(600));
    let r = m.report();
    assert_eq!(r.problems, vec![], "{}", text(&r));
    assert_eq!(link(&r, "o1", "site friend").state, LinkState::Unknown);
    // with keepalive, a working link renews its handshake every 2 minutes: stale is down
    let mut m = Mesh::healthy(INV);
    m.silent("o1", "site friend", Some(600));
    let r = m.report();
    assert_eq!(link(&r, "o1", "site friend").state, LinkState::Down);
    assert_eq!(
        kinds(&r),
        vec![(Kind::NoHandshake, None, Some("o1".into()))]
    );
    assert_eq!(r.problems[0].peer.as_deref(), Some("site friend"));
}

#[test]
fn the_picture_gets_every_known_link_with_unmanaged_sites_spelled_for_dot() {
    let mut m = Mesh::healthy(INV);
    m.cut("c1", "o1");
    let p = m.report().picture_links();
    assert!(
        p.contains(&("c1".into(), "o1".into(), false))
            || p.contains(&("o1".into(), "c1".into(), false))
    );
    assert!(
        p.iter()
            .any(|(a, b, up)| *up && (a == "site:friend" || b == "site:friend"))
    );
}

#[test]
fn the_json_has_nodes_links_and_problems_with_their_culprits() {
    let mut m = Mesh::healthy(INV);
    m.cut("c1", "o1");
    let v = serde_json::to_value(m.report()).unwrap();
    assert_eq!(v["problems"][0]["kind"], "port_forward_missing");
    assert_eq!(v["problems"][0]["site"], "office");
    assert_eq!(v["problems"][0]["node"], serde_json::Value::Null);
    assert_eq!(v["problems"][0]["peer"], serde_json::Value::Null);
    assert!(v["links"][0]["from"].is_string() && v["links"][0]["up"].is_boolean());
    assert!(v["nodes"][0]["peers"][0]["handshake_age"].is_u64());
    let all = v.to_string();
    for kp in m.keys.values() {
        assert!(
            !all.contains(kp.private.expose_base64().as_str()),
            "a private key in the JSON"
        );
    }
}

#[test]
fn the_script_pings_first_then_reads_and_its_output_parses() {
    let t: Vec<Ipv4Addr> = vec!["10.100.1.1".parse().unwrap(), "10.100.2.1".parse().unwrap()];
    let wg0 = InterfaceName::default();
    let paths = [RemotePath::new("/etc/wireguard/wg0.conf").unwrap()];
    let s = script(&wg0, &t, &paths, ("", &|_| None), Duration::from_secs(6));
    assert!(s.starts_with("# wgprov:status\n"));
    let ping = s.find(probe::PROBE).unwrap();
    assert!(
        ping < s.find("wg show").unwrap(),
        "the dump is read after the pings"
    );
    assert!(s.contains("/proc/sys/net/ipv4/ip_forward"));
    if let Err(e) = crate::shell::sh_syntax(&s) {
        panic!("{e}");
    }
    assert!(
        !script(&wg0, &[], &paths, ("", &|_| None), Duration::from_secs(6)).contains(probe::PROBE)
    );

    let fact = gather::MARK;
    let out = format!(
        "{p} up 10.100.1.1\n{p} down 10.100.2.1\n{MARK} ip_forward 1\n{MARK} link 7: wg0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1420 qdisc noqueue\n{fact} wg\nPRIV\tPUB\t51820\toff\n{fact} now\n{NOW}\n{fact} end\n",
        p = probe::PROBE
    );
    let o = parse(&out, &t).unwrap();
    assert!(o.iface_up && o.ip_forward == Some(true));
    assert!(o.answered[&t[0]]);
    assert!(!o.answered[&t[1]]);
    assert_eq!(o.facts.wg.as_ref().unwrap().public_key, "PUB");
    // down, absent, unreadable
    let down = out
        .replace("NOARP,UP,LOWER_UP", "NOARP")
        .replace("ip_forward 1", "ip_forward 0");
    let o = parse(&down, &t).unwrap();
    assert!(!o.iface_up && o.ip_forward == Some(false));
    let absent = format!("{MARK} ip_forward \n{MARK} link \n{fact} wg\n{fact} end\n");
    let o = parse(&absent, &t).unwrap();
    assert!(!o.iface_up && o.ip_forward.is_none() && o.facts.wg.is_none());
    assert!(!o.answered.values().any(|a| *a));
    assert!(parse("cut short", &t).is_err());
}

#[tokio::test]
async fn every_node_is_observed_in_one_exec_and_a_node_without_a_session_is_unreachable() {
    let t = topo(INV);
    let fact = gather::MARK;
    let h1 = Arc::new(FakeHost::new());
    h1.reply(
        "status",
        &format!("{MARK} link 3: wg0: <UP>\n{fact} wg\nPRIV\tPUB\t51820\toff\n{fact} end\n"),
    );
    let o1 = Arc::new(FakeHost::new());
    o1.fail(
        "status",
        crate::transport::TransportError::Lost("gone".into()),
    );
    let sessions: crate::fleet::Sessions<FakeHost> = [
        ("h1".to_string(), Ok(h1.clone())),
        ("o1".to_string(), Ok(o1)),
        (
            "o2".to_string(),
            Err(TransportError::Unreachable("refused".into())),
        ),
    ]
    .into();
    let obs = observe_all(&t, &sessions, 4, Duration::from_secs(1)).await;
    assert_eq!(obs.len(), t.nodes.len());
    assert!(obs["h1"].as_ref().unwrap().iface_up);
    assert!(obs["o1"].as_ref().unwrap_err().to_string().contains("gone"));
    assert_eq!(
        obs["o2"].as_ref().unwrap_err().to_string(),
        "unreachable: refused"
    );
    assert_eq!(obs["c1"].as_ref().unwrap_err().to_string(), "not contacted");
    assert_eq!(h1.kinds(), vec!["status"]);
    let sent = &h1.received()[0];
    // h1 pings its member and the other managed sites' next-hops, not the unmanaged one
    for n in ["h2", "o1", "c1"] {
        assert!(
            sent.contains(&t.node(n).unwrap().wireguard_ip.to_string()),
            "{n}"
        );
    }
    assert!(sent.contains("/etc/sysconfig/kubelet") && sent.contains("/etc/wireguard/wg0.conf"));
}

#[test]
fn kinds_and_states_are_spelled_in_json_as_in_text() {
    for k in Kind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
    for s in NodeState::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        assert_eq!(s.to_string(), s.as_str());
    }
    for s in LinkState::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        assert_eq!(format!("{s:<7}|"), format!("{:<7}|", s.as_str()));
    }
}
