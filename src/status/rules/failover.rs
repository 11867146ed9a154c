//! Sites with a standby next-hop: which hub carries each (as the failover watchdogs on its peers
//! wrote it), `failed_over` when it is the standby, and a warning where nothing fails over.

use std::collections::BTreeMap;

use crate::hosts::failover::{Role, states};
use crate::status::observe::Observations;
use crate::status::report::{Kind, Problem, SiteFailover};
use crate::topology::Topology;
use crate::topology::standby::{pair, watched};

/// Per site with a standby: its state, its `failed_over` problem, and the warnings of its
/// watching nodes without systemd (no timer runs there: nothing fails over).
pub(super) fn sites(
    topo: &Topology,
    obs: &Observations,
) -> (Vec<SiteFailover>, Vec<Problem>, Vec<String>) {
    let (mut out, mut problems, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for site in &topo.sites {
        let Some((hub, sb)) = pair(topo, site) else {
            continue;
        };
        let mut seen_by = BTreeMap::new();
        let mut since: Option<u64> = None;
        let mut no_systemd = Vec::new();
        for n in topo.nodes.iter() {
            if !watched(topo, n).iter().any(|w| w.site == site.name) {
                continue;
            }
            let Some(Ok(o)) = obs.get(&n.name) else {
                continue;
            };
            if !o.facts.systemd {
                no_systemd.push(n.name.clone());
                continue;
            }
            let st = states(&o.facts);
            let Some(s) = st.iter().find(|s| s.site == site.name) else {
                seen_by.insert(n.name.clone(), hub.name.clone());
                continue;
            };
            let active = match s.role {
                Role::Hub => hub.name.clone(),
                Role::Standby => {
                    let age = o.facts.now.saturating_sub(s.since);
                    since = Some(since.map_or(age, |a: u64| a.max(age)));
                    sb.name.clone()
                }
            };
            seen_by.insert(n.name.clone(), active);
        }
        if !no_systemd.is_empty() {
            warnings.push(format!(
                "site {} has a standby ({}), but nothing fails over on {}: the failover watchdog is a systemd timer, and systemd does not run there; they keep routing through {} if it stops forwarding",
                site.name,
                sb.name,
                no_systemd.join(", "),
                hub.name
            ));
        }
        let failed: Vec<&String> = seen_by
            .iter()
            .filter(|(_, a)| **a == sb.name)
            .map(|(n, _)| n)
            .collect();
        let active = if !failed.is_empty() {
            Some(sb.name.clone())
        } else {
            (!seen_by.is_empty()).then(|| hub.name.clone())
        };
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
            let still: Vec<&str> = seen_by
                .iter()
                .filter(|(_, a)| **a != sb.name)
                .map(|(n, _)| n.as_str())
                .collect();
            let mut why = format!(
                "{} stopped forwarding: {} route the site through its standby {} (for {} s); the routes go back once {} has answered and forwarded again for the hold time",
                hub.name,
                names.join(", "),
                sb.name,
                since.unwrap_or(0),
                hub.name
            );
            if !still.is_empty() {
                why.push_str(&format!(
                    "; {} still route through {} (their next check decides)",
                    still.join(", "),
                    hub.name
                ));
            }
            problems.push(Problem {
                kind: Kind::FailedOver,
                site: Some(site.name.clone()),
                node: Some(hub.name.clone()),
                peer: Some(sb.name.clone()),
                why,
            });
        }
        out.push(SiteFailover {
            site: site.name.clone(),
            hub: hub.name.clone(),
            standby: sb.name.clone(),
            active,
            seen_by,
        });
    }
    (out, problems, warnings)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::facts::Facts;
    use crate::status::observe::Observed;

    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: n1\n    standby: n2\n    standby_endpoint: 203.0.113.10:51821\n    nodes:\n      n1: { address: 192.168.0.10 }\n      n2: { address: 192.168.0.11 }\n      n3: { address: 192.168.0.12 }\n  office:\n    endpoint: 198.51.100.20:51820\n    next_hop: o1\n    nodes:\n      o1: { address: 192.168.10.5 }\n      o2: { address: 192.168.10.6 }\n";

    fn topo() -> Topology {
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), INV)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    fn seen(systemd: bool, state: Option<&str>) -> Observed {
        let mut facts = Facts {
            systemd,
            now: 1_000,
            ..Default::default()
        };
        if let Some(s) = state {
            facts.extra.insert("failover".into(), s.into());
        }
        Observed {
            facts,
            iface_up: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_site_whose_watchdogs_moved_it_is_failed_over_and_names_its_active_hub() {
        let t = topo();
        let hub = "site=home\nrole=hub\nactive=n1\nsince=900\n";
        let standby = "site=home\nrole=standby\nactive=n2\nsince=940\n";
        let mut obs: Observations = Default::default();
        obs.insert("o1".into(), Ok(seen(true, Some(hub))));
        obs.insert("n3".into(), Ok(seen(true, Some(hub))));
        let (sites, problems, warnings) = super::sites(&t, &obs);
        assert_eq!(sites[0].active.as_deref(), Some("n1"));
        assert!(problems.is_empty() && warnings.is_empty());
        obs.insert("o1".into(), Ok(seen(true, Some(standby))));
        let (sites, problems, _) = super::sites(&t, &obs);
        assert_eq!(sites[0].active.as_deref(), Some("n2"));
        assert_eq!(problems.len(), 1);
        let p = &problems[0];
        assert_eq!(
            (p.kind, p.node.as_deref(), p.peer.as_deref()),
            (Kind::FailedOver, Some("n1"), Some("n2"))
        );
        assert!(
            p.why
                .contains("o1 route the site through its standby n2 (for 60 s)"),
            "{}",
            p.why
        );
        assert!(p.why.contains("n3 still route through n1"), "{}", p.why);
    }

    #[test]
    fn without_systemd_status_warns_that_nothing_fails_over() {
        let t = topo();
        let mut obs: Observations = Default::default();
        obs.insert("o1".into(), Ok(seen(false, None)));
        let (sites, problems, warnings) = super::sites(&t, &obs);
        assert_eq!(sites[0].active, None);
        assert!(problems.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("nothing fails over on o1"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn the_guard_probes_the_standbys_links_like_any_other() {
        let links = crate::apply::guard::planned_links(&topo());
        for (a, b) in [("o1", "n2"), ("n3", "n2"), ("n1", "n2"), ("o1", "n1")] {
            assert!(
                links.contains(&crate::apply::guard::Link::new(a, b)),
                "{a} -- {b}"
            );
        }
    }
}
