//! A node taken out, planned from what it has.

use std::collections::BTreeSet;

use super::*;
use crate::formats::state::WgState;
use crate::roles::RoleSource;

const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: { address: 192.168.0.10 }\n      h2: { address: 192.168.0.11, state: absent }\n";

fn present(content: &str, mode: u32) -> FileFact {
    FileFact::Present {
        mode,
        content: content.into(),
    }
}

#[test]
fn a_removed_node_loses_every_file_of_wgprov_keeps_its_config_and_gets_its_kubelet_back() {
    let inv = crate::inventory::load_str(std::path::Path::new("inv.yaml"), INV)
        .unwrap()
        .inventory;
    let topo = Topology::build(&inv, &Default::default()).unwrap().0;
    assert!(
        topo.node("h2").is_none(),
        "a removed node is no node of the mesh"
    );
    let h1 = topo.node("h1").unwrap();
    assert_eq!(topo.peers(h1).len(), 0, "nobody peers with it");
    let roles = Roles::load(RoleSource::Embedded).unwrap();
    let kind = HostKind::of(&topo, "h2").unwrap();
    assert!(kind.is_removed() && kind.node().is_none());

    let conf = "[Interface]\nPrivateKey = (whatever)\nAddress = 10.100.0.2/16\n";
    let mut facts = Facts {
        systemd: true,
        wg: Some(WgState {
            public_key: String::new(),
            listen_port: 51820,
            peers: Vec::new(),
        }),
        tools: BTreeSet::from(["kubelet".to_string()]),
        ..Default::default()
    };
    facts
        .files
        .insert("/etc/wireguard/wg0.conf".into(), present(conf, 0o600));
    facts.files.insert(
        "/etc/default/kubelet".into(),
        present("KUBELET_EXTRA_ARGS=\"--v=2 --node-ip=10.100.0.2\"\n", 0o644),
    );
    let drop_in = "/etc/systemd/system/kubelet.service.d/50-wgprov.conf";
    facts.files.insert(
        drop_in.into(),
        present("[Unit]\nAfter=wg-quick@wg0.service\n", 0o644),
    );
    let p = host(kind, &roles, &topo, &Keys::default(), &facts).unwrap();
    let action = |path: &str| {
        p.changes
            .iter()
            .find(|c| c.desired.path == path)
            .map(|c| c.action)
    };
    assert_eq!(action("/etc/wireguard/wg0.conf"), Some(Action::Removed));
    assert_eq!(action(drop_in), Some(Action::Removed));
    assert_eq!(
        action("/var/lib/wgprov/removed/wg0.conf"),
        Some(Action::Created)
    );
    assert_eq!(action("/etc/default/kubelet"), Some(Action::Updated));
    let kubelet = p
        .changes
        .iter()
        .find(|c| c.desired.path == "/etc/default/kubelet")
        .unwrap();
    assert_eq!(
        kubelet.desired.state.content(),
        Some("KUBELET_EXTRA_ARGS=\"--v=2\"\n")
    );
    let kept = p
        .changes
        .iter()
        .find(|c| c.desired.path == "/var/lib/wgprov/removed/wg0.conf")
        .unwrap();
    assert_eq!(
        kept.desired.state,
        FileState::Present {
            content: conf.into(),
            mode: 0o600
        }
    );
    // the interface goes down with its config (a restart with no config), systemd reloads
    assert_eq!(p.handlers.wireguard, Some(true));
    assert!(p.handlers.daemon_reload && p.handlers.kubelet);
    assert_eq!(
        p.handlers.node_ip, None,
        "no node IP to check: it is given back"
    );
    assert!(p.expect.is_none());

    // once cleaned, nothing is left to do
    let mut after = Facts {
        systemd: true,
        tools: facts.tools.clone(),
        ..Default::default()
    };
    after.files.insert(
        "/etc/default/kubelet".into(),
        present("KUBELET_EXTRA_ARGS=\"--v=2\"\n", 0o644),
    );
    after.files.insert(
        "/var/lib/wgprov/removed/wg0.conf".into(),
        present(conf, 0o600),
    );
    let p = host(kind, &roles, &topo, &Keys::default(), &after).unwrap();
    assert!(!p.changes_anything(), "{:?}", p.handlers);
}
