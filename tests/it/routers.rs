//! A router wgprov manages (`router: { kind: linux, … }`), in the lab: the site's router starts
//! without any port-forward, and the lab runs an sshd in it. One apply makes the port-forward
//! (the router first, then the nodes, all under the guard), every pair of nodes in different
//! sites pings over wg0, a second apply changes nothing, and a `listen_port` change goes
//! through — router first, guard confirming — with no stale conntrack entry left pointing the
//! public port at the old listen port. With `next_hop: router`, the router is the site's hub.
//! A rule removed by hand is drift, repaired by apply; rollback puts the router back too, and so
//! does the guard when it puts a change back.

use super::apply::{Scenario, changed_hosts, wg_ips};
use super::common::{have, lab_available, skipped};

const INV: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
  listen_port: 51820
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: node1
    router:
      kind: linux
      address: 192.168.0.254
      wan_interface: wan0
    nodes:
      node1: { address: 192.168.0.10 }
      node2: { address: 192.168.0.11 }
  office:
    lan_cidrs: [192.168.10.0/24]
    router: other
    nodes:
      office1: { address: 192.168.10.5 }
";

fn cross_site_pings(s: &Scenario) {
    let ips = wg_ips(s);
    for (a, sa, _) in &ips {
        for (b, sb, ip) in &ips {
            if sa != sb {
                assert!(s.ping(a, ip), "{a} cannot ping {b} ({ip}) over wg0");
            }
        }
    }
}

#[test]
fn a_managed_linux_router_gets_the_port_forward_first_and_keeps_it_through_a_port_change() {
    if !lab_available() {
        return;
    }
    let s = Scenario::new("rt", INV, INV, &[]);
    // the lab made no port-forward for the managed router: that is wgprov's job
    let nat = s.lab.sh("home-router", "iptables -t nat -S");
    assert!(!nat.contains("DNAT"), "{nat}");

    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    let changed = changed_hosts(&v);
    assert_eq!(
        changed,
        ["home-router", "node1", "node2", "office1"],
        "{v:#}"
    );
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v:#}");
    let router = &v["hosts"]["home-router"];
    assert!(
        router["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/etc/wgprov/router-pf.sh" && c["action"] == "created"),
        "{router:#}"
    );
    // office's router is not managed: its rule is listed once, for a person to do
    assert_eq!(
        v["router_rules"].as_array().unwrap().len(),
        0,
        "office has no endpoint: {v:#}"
    );
    let nat = s.lab.sh("home-router", "iptables -t nat -S WGPROV-PF");
    assert!(
        nat.contains("-A WGPROV-PF -i wan0 -p udp -m udp --dport 51820 -j DNAT --to-destination 192.168.0.10:51820"),
        "{nat}"
    );
    // no note for a person on the next-hop: the router is managed
    assert_ne!(
        s.lab
            .exec("node1", &["test", "-e", "/etc/wgprov/port-forward.md"])
            .0,
        0
    );
    cross_site_pings(&s);

    // a second apply changes nothing, on the router either
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);

    // a listen_port change: the router moves its forward first, the guard confirms
    std::fs::write(
        &s.inv,
        INV.replace("listen_port: 51820", "listen_port: 51821"),
    )
    .unwrap();
    let r = s.apply(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("changing wave 1/") && all.contains("(managed routers first): home-router"),
        "{all}"
    );
    assert!(
        all.contains("the managed router home-router changes first"),
        "{all}"
    );
    assert!(
        all.contains("home-router: conntrack entries of UDP 51820 flushed again, now that the nodes have changed"),
        "{all}"
    );
    assert!(all.contains("GUARD CONFIRMED"), "{all}");
    assert!(!all.contains("router change needed"), "{all}");
    let nat = s.lab.sh("home-router", "iptables -t nat -S WGPROV-PF");
    assert!(
        nat.contains("--dport 51820 -j DNAT --to-destination 192.168.0.10:51821")
            && !nat.contains("192.168.0.10:51820"),
        "{nat}"
    );
    if have("conntrack") {
        // no entry left that still sends the public port to the old listen port (without the
        // flush, office1's flow to 203.0.113.10:51820 keeps its old DNAT to 192.168.0.10:51820)
        let ct = s
            .lab
            .sh("home-router", "conntrack -L -p udp 2>/dev/null || true");
        let stale: Vec<&str> = ct
            .lines()
            .filter(|l| {
                l.contains("dst=203.0.113.10 ")
                    && l.contains("src=192.168.0.10 ")
                    && l.contains("sport=51820 ")
            })
            .collect();
        assert!(stale.is_empty(), "stale entries: {stale:?}");
    } else {
        skipped("conntrack is not installed: the stale-entry check did not run");
    }
    cross_site_pings(&s);
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);

    // the rule removed by hand is drift: --check reports it, apply puts it back
    s.lab.sh("home-router", "iptables -t nat -F WGPROV-PF");
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 3, "{}{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .contains("home-router: drift: the port-forward rules are not as"),
        "{}",
        check.stdout
    );
    // status names the router, from its own check
    let inv = s.inv.to_str().unwrap().to_string();
    let st = s.wgprov(&["status", "-i", &inv, "--format", "json"]);
    assert_eq!(st.code, 1, "{}{}", st.stdout, st.stderr);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "drift" && p["node"] == "home-router" && p["site"] == "home"),
        "{v:#}"
    );
    let r = s.apply(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        s.lab
            .sh("home-router", "iptables -t nat -S WGPROV-PF")
            .contains("--to-destination 192.168.0.10:51821")
    );

    // rollback puts the last apply's files back on the router too, and re-installs its rules
    let r = s.wgprov(&["rollback", "-i", &inv]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let nat = s.lab.sh("home-router", "iptables -t nat -S WGPROV-PF");
    assert!(nat.contains("--to-destination 192.168.0.10:51820"), "{nat}");
    cross_site_pings(&s);
    s.assert_no_key_leaked();
}

const HUB: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: router
    router: { kind: linux, address: 192.168.0.254, wan_interface: wan0 }
    nodes:
      node1: { address: 192.168.0.10 }
      node2: { address: 192.168.0.11 }
  office:
    lan_cidrs: [192.168.10.0/24]
    router: other
    nodes:
      office1: { address: 192.168.10.5 }
";

/// `next_hop: router`: the router is the site's WireGuard hub (wg0 on the router, wireguard-go
/// in the lab), and the site's members reach the other site through it.
#[test]
fn a_linux_router_as_the_sites_hub_carries_its_members_to_the_other_sites() {
    if !lab_available() {
        return;
    }
    let s = Scenario::new("rh", HUB, HUB, &[]);
    // a router's firewall: nothing comes in but what it answers, and SSH
    s.lab.sh(
        "home-router",
        "iptables -w -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT && \
         iptables -w -A INPUT -i lo -j ACCEPT && iptables -w -A INPUT -p tcp --dport 22 -j ACCEPT && \
         iptables -w -P INPUT DROP",
    );
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        changed_hosts(&v),
        ["home-router", "node1", "node2", "office1"],
        "{v:#}"
    );
    assert_eq!(v["guard"]["outcome"], "confirmed", "{v:#}");
    // the hub has wg0 at .1 and forwards; it runs no Kubernetes and needs no port-forward
    let router = &v["hosts"]["home-router"];
    let paths: Vec<&str> = router["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/etc/wireguard/wg0.conf", "/etc/sysctl.d/99-wgprov.conf"],
        "{router:#}"
    );
    assert!(
        s.lab
            .sh("home-router", "ip -4 -o addr show wg0")
            .contains("10.100.0.1/16")
    );
    // its own firewall lets its WireGuard port in (wg0's PostUp), or office, which has no
    // endpoint and must dial the hub, could never reach it; and the guard's pings on wg0
    let input = s.lab.sh("home-router", "iptables -w -S INPUT");
    assert!(
        input.contains("-A INPUT -p udp -m udp --dport 51820 -j ACCEPT")
            && input.contains("-A INPUT -i wg0 -p icmp -m icmp --icmp-type 8 -j ACCEPT"),
        "{input}"
    );
    // members peer with the router only
    let peers = s.lab.sh("node1", "wg show wg0 endpoints");
    assert_eq!(peers.lines().count(), 1, "{peers}");
    assert!(peers.contains("192.168.0.254:51820"), "{peers}");
    cross_site_pings(&s);
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    s.assert_no_key_leaked();
}

/// Waits (bounded) until `f` holds.
fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The guard puts a managed router back with the nodes: a `listen_port` change whose outcome
/// on node1 is unknown (its wg-quick is slower than the wave's bound) is put back everywhere,
/// and the router forwards to the old port again.
#[test]
fn the_guard_puts_a_managed_router_back_with_the_nodes() {
    if !lab_available() {
        return;
    }
    let s = Scenario::new("rg", INV, INV, &[]);
    assert_eq!(s.apply(&[]).code, 0);
    s.lab.wrap_tool(
        "node1",
        "wg-quick",
        "#!/bin/sh\nsleep 8\nexec /usr/bin/wg-quick \"$@\"\n",
    );
    std::fs::write(
        &s.inv,
        INV.replace("listen_port: 51820", "listen_port: 51821"),
    )
    .unwrap();
    let (code, v) = s.apply_json(&["--confirm-timeout", "15"]);
    s.lab.unwrap_tool("node1", "wg-quick");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["guard"]["outcome"], "reverted", "{v:#}");
    assert_eq!(v["hosts"]["home-router"]["status"], "reverted", "{v:#}");
    let back = || {
        s.lab
            .sh("home-router", "iptables -t nat -S WGPROV-PF")
            .contains("--to-destination 192.168.0.10:51820")
    };
    assert!(
        eventually(std::time::Duration::from_secs(30), back),
        "the router still forwards to the new port"
    );
    // node1's change finished late and was put back too: the mesh works as before
    assert!(eventually(std::time::Duration::from_secs(60), || {
        s.lab
            .exec("node1", &["test", "-d", "/var/lib/wgprov/pending"])
            .0
            != 0
            && s.lab
                .sh("node1", "grep ListenPort /etc/wireguard/wg0.conf")
                .contains("51820")
    }));
    cross_site_pings(&s);
    s.assert_no_key_leaked();
}

/// A hub router wgprov does not manage (`next_hop: router`, `router: opnsense`): the test plays
/// the operator. It makes the router's key pair (as OPNsense's "Generate new keypair" would),
/// puts the public key and the router's LAN address in the inventory, applies, and sets the
/// router up from nothing but the `router_hubs` values the apply printed. Then every node pings
/// every node of the other site, and the two nodes of the hub's own site reach each other
/// through it.
const HAND_HUB: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  home:
    lan_cidrs: [192.168.0.0/24]
    endpoint: 203.0.113.10:51820
    next_hop: router
    router: opnsense
    router_address: 192.168.0.254
    public_key: \"HUBKEY\"
    nodes:
      node1: { address: 192.168.0.10 }
      node2: { address: 192.168.0.11 }
  office:
    lan_cidrs: [192.168.10.0/24]
    router: other
    nodes:
      office1: { address: 192.168.10.5 }
";

#[test]
fn a_hand_run_hub_router_set_up_from_the_printed_values_carries_its_site() {
    if !lab_available() {
        return;
    }
    let hub = wgprov::topology::keys::Keypair::generate();
    let yaml = HAND_HUB.replace("HUBKEY", &hub.public.to_base64());
    let s = Scenario::new("hh", &yaml, &yaml, &[]);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(changed_hosts(&v), ["node1", "node2", "office1"], "{v:#}");
    // the nodes peer with the router at its LAN address; no node is a next-hop
    let peers = s.lab.sh("node1", "wg show wg0 endpoints");
    assert_eq!(
        peers.trim(),
        format!("{}\t192.168.0.254:51820", hub.public.to_base64())
    );
    assert!(
        !s.lab
            .sh("node1", "ls /etc/wgprov")
            .contains("port-forward.md")
    );
    // what to set up on the router, with every key now known
    let h = &v["router_hubs"][0];
    assert_eq!(h["site"], "home", "{v:#}");
    assert_eq!(h["tunnel_address"], "10.100.0.1/16");
    let peers = h["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{h:#}");
    assert!(peers.iter().all(|p| p["public_key"].is_string()), "{h:#}");
    // the same values are in /etc/wgprov/router-hub.md on the site's nodes
    let md = s.lab.sh("node2", "cat /etc/wgprov/router-hub.md");
    for p in peers {
        assert!(md.contains(p["public_key"].as_str().unwrap()), "{md}");
    }
    // before the router is set up, status names the links to it as down
    let inv = s.inv.to_str().unwrap().to_string();
    let st = s.wgprov(&["status", "-i", &inv, "--format", "json"]);
    assert_eq!(st.code, 1, "{}{}", st.stdout, st.stderr);
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let down: Vec<String> = doc["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["to"] == "site home" && l["state"] == "down")
        .map(|l| l["from"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(down, ["node1", "node2", "office1"], "{doc:#}");
    assert!(
        doc["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "no_handshake" && p["node"] == "node1"),
        "{doc:#}"
    );
    // the operator: a WireGuard interface on the router from those values alone
    let mut conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\nAddress = {}\nMTU = {}\n",
        hub.private.expose_base64().as_str(),
        h["listen_port"],
        h["tunnel_address"].as_str().unwrap(),
        h["mtu"]
    );
    for p in peers {
        conf.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            p["public_key"].as_str().unwrap(),
            p["allowed_ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let (Some(host), Some(port)) = (p["endpoint_host"].as_str(), p["endpoint_port"].as_u64())
        {
            conf.push_str(&format!("Endpoint = {host}:{port}\n"));
        }
        if let Some(k) = p["persistent_keepalive"].as_u64() {
            conf.push_str(&format!("PersistentKeepalive = {k}\n"));
        }
    }
    s.lab.sh(
        "home-router",
        &format!(
            "umask 077; mkdir -p /etc/wireguard && cat > /etc/wireguard/hub.conf <<'EOF'\n{conf}EOF\n\
             WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick up hub >/dev/null 2>&1 && sysctl -qw net.ipv4.ip_forward=1"
        ),
    );
    cross_site_pings(&s);
    // the two nodes of home reach each other through the router
    let ips = wg_ips(&s);
    let node2 = &ips.iter().find(|(n, _, _)| n == "node2").unwrap().2;
    assert_eq!(
        node2, "10.100.0.3",
        "node1 and node2 come after the hub's .1"
    );
    assert!(
        s.ping("node1", node2),
        "node1 cannot reach node2 through the hub"
    );
    // and status sees a healthy network: the hub's .1 answers every node of its site
    let st = s.wgprov(&["status", "-i", &inv, "--format", "json"]);
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    let doc: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let up = doc["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["to"] == "site home" && l["state"] == "up")
        .count();
    assert_eq!(up, 3, "{doc:#}");
    // and nothing is left to change
    let check = s.apply(&["--check", "--detailed-exitcode"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    s.assert_no_key_leaked();
}

/// A site marked `state: absent` whose router wgprov manages: its nodes are cleaned and the
/// router's port-forward goes (rules, script, conntrack entries), in the same guarded run.
#[test]
fn a_removed_site_takes_its_managed_routers_port_forward_with_it() {
    if !lab_available() {
        return;
    }
    let s = Scenario::new("rtrm", INV, INV, &[]);
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(
        s.lab
            .sh("home-router", "iptables -t nat -S")
            .contains("DNAT")
    );
    let gone = INV.replace("  home:\n", "  home:\n    state: absent\n");
    std::fs::write(&s.inv, &gone).unwrap();
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        changed_hosts(&v),
        ["home-router", "node1", "node2", "office1"],
        "{v:#}"
    );
    let nat = s.lab.sh("home-router", "iptables -t nat -S");
    let filter = s.lab.sh("home-router", "iptables -S");
    assert!(
        !nat.contains("WGPROV") && !filter.contains("WGPROV") && !nat.contains("DNAT"),
        "wgprov's rules are still on the router:\n{nat}\n{filter}"
    );
    assert_eq!(
        s.lab.sh(
            "home-router",
            "ls /etc/wgprov/router-pf.sh 2>/dev/null || true"
        ),
        ""
    );
    for n in ["node1", "node2"] {
        assert_ne!(s.lab.exec(n, &["ip", "link", "show", "wg0"]).0, 0, "{n}");
    }
    assert_eq!(
        s.lab.sh("office1", "wg show wg0 peers").trim(),
        "",
        "office1 still has peers"
    );
    let (code, v) = s.apply_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(changed_hosts(&v).is_empty(), "{v:#}");
}
