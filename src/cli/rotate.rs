//! `rotate-keys`: the apply run with new key pairs for the selected nodes. `--limit` selects
//! whose keys are renewed; the run changes those nodes and every peer of theirs (they must
//! learn the new public keys in the same guarded run).

use std::collections::BTreeSet;

use super::hosts::{ApplyFlags, on_stop, print_report};
use super::*;
use crate::plan::Rotation;
use crate::topology::{PeerRef, Topology};

/// The nodes whose keys are renewed, and the hosts of the run (they and their peers).
fn selection(topo: &Topology, limit: Option<&str>) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let rotated: BTreeSet<String> = topo
        .nodes
        .iter()
        .filter(|n| limit.is_none_or(|l| crate::apply::matches_limit(l, n)))
        .map(|n| n.name.clone())
        .collect();
    if rotated.is_empty() {
        return Err(Error::Usage(format!(
            "--limit {} matches no managed node",
            limit.unwrap_or("")
        )));
    }
    let mut hosts = rotated.clone();
    for n in topo.nodes.iter().filter(|n| rotated.contains(&n.name)) {
        for p in topo.peers(n) {
            if let PeerRef::Node(o) = p.peer {
                hosts.insert(o);
            }
        }
    }
    Ok((rotated, hosts))
}

/// What the run renews, in words (names only, never a key).
fn summary(check: bool, nodes: &[String], links: &[String], preshared: bool) -> String {
    let verb = if check { "would get" } else { "get" };
    let mut s = format!(
        "rotate-keys: {} node(s) {verb} a new key pair: {}\n",
        nodes.len(),
        if nodes.is_empty() {
            "none".to_string()
        } else {
            nodes.join(", ")
        }
    );
    if preshared {
        s.push_str(&format!(
            "rotate-keys: {} link(s) {verb} a new preshared key: {}\n",
            links.len(),
            if links.is_empty() {
                "none".to_string()
            } else {
                links.join(", ")
            }
        ));
    }
    s
}

pub(super) fn rotate_keys(
    path: &Path,
    roles_path: Option<&Path>,
    run: &RunArgs,
    preshared: bool,
    f: ApplyFlags,
) -> Result<u8> {
    let roles = Roles::load(RoleSource::resolve(roles_path, path))?;
    let p = planned(path, !f.check)?;
    if preshared && !p.topology.network.preshared_keys {
        return Err(Error::Usage(
            "--preshared: the inventory's network.preshared_keys is not true, so its links have no preshared keys to renew".into(),
        ));
    }
    let (nodes, hosts) = selection(&p.topology, run.limit.as_deref())?;
    let mut settings = run.settings(false);
    settings.guard = f.guard;
    // the run changes the selected nodes and their peers, and nothing else
    settings.limit = Some(hosts.into_iter().collect::<Vec<_>>().join(","));
    let rotation = Rotation { nodes, preshared };
    let progress = std::sync::Arc::new(CliProgress::new(run.format == Format::Text, verbose() > 0));
    let stop = settings.stop.clone();
    let (report, (rotated, links)) = runtime()?.block_on(async {
        on_stop(stop);
        let prepared = crate::apply::prepare_rotating(
            &p,
            &roles,
            &settings,
            run.connector(),
            progress,
            &rotation,
        )
        .await?;
        let renewed = prepared.renewed();
        let report = if f.check {
            prepared.check().await
        } else {
            prepared.execute().await
        };
        Ok::<_, Error>((report, renewed))
    })?;
    match run.format {
        Format::Text => {
            print!("{}", summary(f.check, &rotated, &links, preshared));
            print_report(&report, run.format, f.diff, verbose() > 0);
        }
        Format::Json => {
            let mut v = output::apply_json(&report);
            v["rotated"] = serde_json::json!(rotated);
            if preshared {
                v["preshared_renewed"] = serde_json::json!(links);
            }
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
    }
    Ok(report.exit_code(f.detailed_exitcode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_rotates_its_nodes_and_changes_their_peers_too() {
        let loaded =
            crate::inventory::load_str(Path::new("inv.yaml"), crate::apply::fleet_tests::INV)
                .unwrap();
        let topo = Topology::build(&loaded.inventory, &Default::default())
            .unwrap()
            .0;
        let (r, h) = selection(&topo, Some("h2")).unwrap();
        assert_eq!(r.into_iter().collect::<Vec<_>>(), ["h2"]);
        // h2 is a member of home: its only peer is its next-hop
        assert_eq!(h.into_iter().collect::<Vec<_>>(), ["h1", "h2"]);
        let (r, h) = selection(&topo, Some("o1")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(h.into_iter().collect::<Vec<_>>(), ["h1", "o1", "o2"]);
        let (r, _) = selection(&topo, None).unwrap();
        assert_eq!(r.len(), 4);
        assert!(selection(&topo, Some("nope")).is_err());
        let s = summary(true, &["h2".into()], &["h1 <-> h2".into()], true);
        assert!(s.contains("1 node(s) would get a new key pair: h2"), "{s}");
        assert!(
            s.contains("1 link(s) would get a new preshared key: h1 <-> h2"),
            "{s}"
        );
    }
}
