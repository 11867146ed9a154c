//! Preshared keys and key rotation through the apply run over fake hosts: what the plan writes
//! on both ends of every link, what it keeps from run to run, what `--limit` may not do, what a
//! rotation changes and how its handlers apply it; and that no report shows a key.

use std::collections::{BTreeMap, BTreeSet};

use super::fleet_tests::{Fleet, HostState, INV, applied_states, host, settings};
use super::*;
use crate::desired;
use crate::desired::FileState;
use crate::facts::wgconf::WgConfig;
use crate::plan::Rotation;
use crate::transport::fake::FakeConnector;

const WG: &str = "/etc/wireguard/wg0.conf";

fn fleet(states: &BTreeMap<String, HostState>) -> Fleet {
    let inv = INV.replace(
        "  cluster_cidrs: [10.244.0.0/16]\n",
        "  cluster_cidrs: [10.244.0.0/16]\n  preshared_keys: true\n",
    );
    let loaded = crate::inventory::load_str(std::path::Path::new("inv.yaml"), &inv).unwrap();
    let topology = Topology::build(&loaded.inventory, &Default::default())
        .unwrap()
        .0;
    let planned = Planned {
        inventory: loaded.inventory,
        topology,
        warnings: Vec::new(),
        lock_written: false,
    };
    let hosts = states
        .iter()
        .map(|(n, st)| (n.clone(), host(st, &BTreeSet::new())))
        .collect();
    Fleet {
        planned,
        roles: Roles::load(crate::roles::RoleSource::Embedded).unwrap(),
        conn: Arc::new(FakeConnector::new(hosts)),
    }
}

/// What a prepared run plans: each host's planned wg0.conf, the renewed names, the report
/// of `--check` in text (with diffs) and JSON.
struct Planned2 {
    confs: BTreeMap<String, String>,
    renewed: (Vec<String>, Vec<String>),
    plans: HashMap<String, HostPlan>,
    printed: String,
    report: Report,
}

fn plan_run(f: &Fleet, s: &Settings, rotation: &Rotation) -> Planned2 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let p = prepare_rotating(
                &f.planned,
                &f.roles,
                s,
                f.conn.clone(),
                Arc::new(Quiet),
                rotation,
            )
            .await
            .unwrap();
            let confs = p
                .plans
                .iter()
                .filter_map(|(n, hp)| {
                    hp.changes
                        .iter()
                        .find(|c| c.desired.path == WG)
                        .and_then(|c| c.desired.state.content())
                        .map(|c| (n.clone(), c.to_string()))
                })
                .collect();
            let renewed = p.renewed();
            let plans = p.plans.clone();
            let report = p.check().await;
            let printed = format!(
                "{}\n{}\n{:?}",
                crate::output::apply_text(&report, true, true),
                crate::output::apply_json(&report),
                plans
            );
            Planned2 {
                confs,
                renewed,
                plans,
                printed,
                report,
            }
        })
}

/// The states a run leaves: every host's files as planned.
fn after(before: &BTreeMap<String, HostState>, p: &Planned2) -> BTreeMap<String, HostState> {
    let mut out = before.clone();
    for (n, hp) in &p.plans {
        let st = out.get_mut(n).unwrap();
        for c in &hp.changes {
            if let FileState::Present { content, mode } = &c.desired.state {
                st.files
                    .insert(c.desired.path.to_string(), (*mode, content.clone()));
            }
        }
    }
    out
}

fn own_key(conf: &str) -> crate::keys::PrivateKey {
    crate::keys::PrivateKey::from_base64(WgConfig::parse(conf).private_key().unwrap()).unwrap()
}

/// The PresharedKey `holder`'s config has for `peer`.
fn psk(confs: &BTreeMap<String, String>, holder: &str, peer: &str) -> Option<String> {
    let pk = own_key(&confs[peer]).public_key().to_base64();
    WgConfig::parse(&confs[holder])
        .peers()
        .find(|p| p.get("PublicKey") == Some(pk.as_str()))
        .unwrap_or_else(|| panic!("{holder} has no peer {peer}"))
        .get("PresharedKey")
        .map(str::to_string)
}

const LINKS: [(&str, &str); 3] = [("h1", "h2"), ("h1", "o1"), ("o1", "o2")];

fn secrets(confs: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = Vec::new();
    for c in confs.values() {
        let c = WgConfig::parse(c);
        v.push(c.private_key().unwrap().to_string());
        v.extend(
            c.peers()
                .filter_map(|p| p.get("PresharedKey").map(str::to_string)),
        );
    }
    v
}

#[test]
fn every_link_gets_one_preshared_key_on_both_ends_kept_from_run_to_run_and_never_shown() {
    let p0 = fleet(&BTreeMap::new()).planned;
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let states = applied_states(&p0, &roles);
    let f = fleet(&states);
    let first = plan_run(&f, &settings(), &Rotation::default());
    let mut seen = BTreeSet::new();
    for (a, b) in LINKS {
        let k = psk(&first.confs, a, b).unwrap_or_else(|| panic!("{a} <-> {b}: no key"));
        assert_eq!(psk(&first.confs, b, a).as_ref(), Some(&k), "{a} <-> {b}");
        assert!(seen.insert(k), "one key per link");
    }
    for s in secrets(&first.confs) {
        assert!(!first.printed.contains(&s), "a key is printed");
    }
    // a preshared key is a peer setting: wg syncconf sets it, the interface is not restarted
    for (n, hp) in &first.plans {
        assert_eq!(hp.handlers.wireguard, Some(false), "{n}");
    }
    assert!(
        first.printed.contains("+PresharedKey = (redacted)"),
        "{}",
        first.printed
    );
    // the next run reads them back from the hosts: nothing changes
    let states = after(&states, &first);
    let second = plan_run(&fleet(&states), &settings(), &Rotation::default());
    for (n, hp) in &second.plans {
        assert!(!hp.changes_anything(), "{n} changes: {:?}", hp.changes);
    }
    for (a, b) in LINKS {
        assert_eq!(psk(&states_confs(&states), a, b), psk(&first.confs, a, b));
    }
    assert_eq!(second.report.exit_code(true), 0);
}

fn states_confs(states: &BTreeMap<String, HostState>) -> BTreeMap<String, String> {
    states
        .iter()
        .map(|(n, s)| (n.clone(), s.files[WG].1.clone()))
        .collect()
}

#[test]
fn a_key_one_end_has_goes_to_the_other_and_a_limit_never_cuts_a_link() {
    let p0 = fleet(&BTreeMap::new()).planned;
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let states = applied_states(&p0, &roles);
    // h2 alone: h1 (outside the run) has no key for the link, so h2 gets none either
    let mut s = settings();
    s.limit = Some("h2".into());
    let r = plan_run(&fleet(&states), &s, &Rotation::default());
    assert_eq!(r.confs.keys().collect::<Vec<_>>(), ["h2"]);
    let mut confs = states_confs(&states);
    confs.insert("h2".into(), r.confs["h2"].clone());
    assert_eq!(psk(&confs, "h2", "h1"), None);
    assert!(
        r.printed
            .contains("link h1 <-> h2: no preshared key yet: h1 is outside this run"),
        "{}",
        r.printed
    );
    // h1 alone gets keys on its links; then h2 alone takes the one h1 has
    let mut s = settings();
    s.limit = Some("h1".into());
    let r1 = plan_run(&fleet(&states), &s, &Rotation::default());
    assert_eq!(
        psk(
            &r1.confs
                .clone()
                .into_iter()
                .chain(confs.clone().into_iter().filter(|(n, _)| n != "h1"))
                .collect(),
            "h1",
            "h2"
        ),
        None,
        "h2 outside and without one"
    );
    let mut both = settings();
    both.limit = Some("h1,h2".into());
    let r12 = plan_run(&fleet(&states), &both, &Rotation::default());
    let k = psk(&r12.confs, "h1", "h2").unwrap();
    let mut states2 = states.clone();
    states2.get_mut("h1").unwrap().files.get_mut(WG).unwrap().1 = r12.confs["h1"].clone();
    // h2 still has its old config (no key): applied alone, it takes h1's key
    let mut s = settings();
    s.limit = Some("h2".into());
    let r2 = plan_run(&fleet(&states2), &s, &Rotation::default());
    let mut confs2 = states_confs(&states2);
    confs2.insert("h2".into(), r2.confs["h2"].clone());
    assert_eq!(psk(&confs2, "h2", "h1"), Some(k));
}

#[test]
fn a_rotation_renews_the_selected_keys_everywhere_and_applies_them_without_a_restart() {
    let p0 = fleet(&BTreeMap::new()).planned;
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let states = applied_states(&p0, &roles);
    let states = after(
        &states,
        &plan_run(&fleet(&states), &settings(), &Rotation::default()),
    );
    let before = states_confs(&states);
    let mut s = settings();
    s.limit = Some("h1,h2".into());
    for preshared in [false, true] {
        let rotation = Rotation {
            nodes: ["h2".to_string()].into(),
            preshared,
        };
        let r = plan_run(&fleet(&states), &s, &rotation);
        assert_eq!(r.renewed.0, ["h2"]);
        let new_h2 = own_key(&r.confs["h2"]);
        assert_ne!(new_h2, own_key(&before["h2"]), "h2 has a new key");
        assert_eq!(
            own_key(&r.confs["h1"]),
            own_key(&before["h1"]),
            "h1 keeps its key"
        );
        let confs = r.confs.clone();
        // h1 lists h2's new public key (psk() looks it up by the new key)
        let k = psk(&confs, "h1", "h2");
        assert_eq!(k, psk(&confs, "h2", "h1"));
        let old = psk(&before, "h1", "h2");
        if preshared {
            assert_eq!(r.renewed.1, ["h1 <-> h2"]);
            assert_ne!(k, old, "renewed");
        } else {
            assert!(r.renewed.1.is_empty());
            assert_eq!(k, old, "kept");
        }
        for n in ["h1", "h2"] {
            assert_eq!(
                r.plans[n].handlers.wireguard,
                Some(false),
                "{n}: a key change is applied with wg syncconf"
            );
        }
        for sec in secrets(&r.confs) {
            assert!(!r.printed.contains(&sec), "a key is printed");
        }
        assert!(r.printed.contains("key rotated"), "{}", r.printed);
    }
}

#[test]
fn a_rotation_is_gated_on_the_links_the_old_keys_carried() {
    let p0 = fleet(&BTreeMap::new()).planned;
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    let states = applied_states(&p0, &roles);
    let states = after(
        &states,
        &plan_run(&fleet(&states), &settings(), &Rotation::default()),
    );
    let f = fleet(&states);
    // every node: no peer entry anywhere lists a key of the new ring
    let rotation = Rotation {
        nodes: ["h1", "h2", "o1", "o2"].map(String::from).into(),
        preshared: false,
    };
    let r = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            prepare_rotating(
                &f.planned,
                &f.roles,
                &settings(),
                f.conn.clone(),
                Arc::new(Quiet),
                &rotation,
            )
            .await
            .unwrap()
            .execute()
            .await
        });
    let g = r.guard.clone().unwrap();
    assert_eq!(g.outcome, "confirmed", "{}", g.why);
    // every link was up under the old keys: the gate counts them before and probes them after
    assert_eq!(g.links_before, 3, "{g:?}");
    assert_eq!(g.links_before, g.links_after, "{g:?}");
}

#[test]
fn render_writes_one_preview_key_per_link_on_both_ends() {
    let f = fleet(&BTreeMap::new());
    let keys = desired::fresh_keys(&f.planned.topology);
    let files = crate::hosts::render::render_offline(&f.roles, &f.planned.topology, &keys).unwrap();
    let confs: BTreeMap<String, String> = files
        .into_iter()
        .map(|(n, fs)| {
            let c = fs
                .into_iter()
                .find(|x| x.path.as_str() == WG)
                .and_then(|x| x.state.content().map(str::to_string))
                .unwrap();
            (n, c)
        })
        .collect();
    let mut seen = BTreeSet::new();
    for (a, b) in LINKS {
        let k = psk(&confs, a, b).unwrap();
        assert_eq!(psk(&confs, b, a), Some(k.clone()));
        assert!(seen.insert(k));
    }
    // without network.preshared_keys: none
    let plain = super::fleet_tests::planned();
    let files = crate::hosts::render::render_offline(&f.roles, &plain.topology, &keys).unwrap();
    for (_, fs) in files {
        for x in fs {
            assert!(!x.state.content().unwrap_or("").contains("PresharedKey"));
        }
    }
}

#[test]
fn a_link_to_a_site_others_run_takes_the_key_of_its_file_or_has_none() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = crate::keys::PresharedKey::generate();
    let file = dir.path().join("friend.psk");
    std::fs::write(&file, key.expose_base64().as_str()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let friend = "  friend:\n    managed: false\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: 192.0.2.9:51820\n    public_key: hWfUsZ3oPJMDCEnq+2HTrqDT3ryd8HBOsXVWCgjxflU=\n";
    let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
    for (with_file, want) in [(true, Some(key.expose_base64().to_string())), (false, None)] {
        let mut inv = INV.replace(
            "  cluster_cidrs: [10.244.0.0/16]\n",
            "  cluster_cidrs: [10.244.0.0/16]\n  preshared_keys: true\n",
        );
        inv.push_str(friend);
        if with_file {
            inv.push_str("    preshared_key_file: friend.psk\n");
        }
        let loaded = crate::inventory::load_str(&dir.path().join("inv.yaml"), &inv).unwrap();
        let topo = Topology::build(&loaded.inventory, &Default::default())
            .unwrap()
            .0;
        let keys = desired::fresh_keys(&topo);
        let files = crate::hosts::render::render_offline(&roles, &topo, &keys).unwrap();
        let h1 = &files.iter().find(|(n, _)| n == "h1").unwrap().1;
        let conf = h1
            .iter()
            .find(|f| f.path.as_str() == WG)
            .and_then(|f| f.state.content())
            .unwrap();
        let got = WgConfig::parse(conf)
            .peers()
            .find(|p| p.get("PublicKey") == Some("hWfUsZ3oPJMDCEnq+2HTrqDT3ryd8HBOsXVWCgjxflU="))
            .expect("the hub peers with the site")
            .get("PresharedKey")
            .map(str::to_string);
        assert_eq!(got, want, "with the file: {with_file}");
    }
}
