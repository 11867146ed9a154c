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
