//! The main job: connect to every node (one SSH connection each, all at once up to `forks`),
//! gather facts in one exec per node, plan the whole network from them (existing keys kept),
//! compare, and — unless `check` — run each changed host's transaction (backup, atomic writes,
//! handlers, read-back), verify it, and roll the host back when any of that fails.
//!
//! `--limit` narrows which hosts are changed, never who their peers are: facts are read from
//! every node so that every config lists every peer.

mod change;
mod gate;
pub mod guard;
pub mod host;
mod report;
mod rollback;
pub mod script;
mod targets;

use change::*;
use gate::*;
pub use report::*;
pub use rollback::rollback;
pub use targets::matches_limit;
use targets::*;

#[cfg(test)]
pub(crate) mod fleet_tests;
#[cfg(test)]
mod keys_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::diff::{Action, Change};
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::facts::gather;
use crate::fleet::{Connect, Sessions, close_all, connect_all, run_all, with_jumps};
pub use crate::fleet::{Progress, Quiet};
use crate::hosts::kind::{HostKind, conf_path};
use crate::plan::{self, HostPlan, order};
use crate::roles::Roles;
use crate::topology::{NodePlan, Planned, Topology};
use crate::transport::Transport;

/// Settings of one apply (resolved from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node name, site name or glob over node names; `None`: every node.
    pub limit: Option<String>,
    /// How many hosts work at once.
    pub forks: usize,
    /// Leave a failed host as it is, for inspection.
    pub no_rollback: bool,
    /// The guard's confirmation timeout; `None` with `--no-guard`.
    pub guard: Option<Duration>,
    /// Set when the operator asks to stop (Ctrl-C): no new host is started, hosts in flight
    /// finish, and under the guard every changed host is put back.
    pub stop: Arc<AtomicBool>,
    /// The longest one remote command may take (the transport's command timeout).
    pub command_timeout: Duration,
}

impl Settings {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A run read and planned, its connections open: what `--check` prints
/// ([`Prepared::check`]), and what [`Prepared::execute`] changes.
pub struct Prepared<'a, C: Connect> {
    planned: &'a Planned,
    settings: &'a Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
    sessions: Sessions<C::Session>,
    /// The facts of every host that could be read.
    facts: HashMap<String, Facts>,
    keys: plan::Keys,
    plans: HashMap<String, HostPlan>,
    reports: Vec<HostReport>,
    warnings: Vec<String>,
}

/// Per host: whether its facts could be read (why not), with the seconds gathering took. The
/// facts themselves go to one map of their own ([`split_gathered`]), held once.
type Gathered = HashMap<String, (std::result::Result<(), gather::FactsError>, f64)>;

/// The facts read, by host, apart from how reading them went.
fn split_gathered(
    all: HashMap<String, (std::result::Result<Facts, gather::FactsError>, f64)>,
) -> (HashMap<String, Facts>, Gathered) {
    let mut facts = HashMap::new();
    let mut gathered = HashMap::new();
    for (n, (r, t)) in all {
        let r = r.map(|f| {
            facts.insert(n.clone(), f);
        });
        gathered.insert(n, (r, t));
    }
    (facts, gathered)
}

/// The hosts a run targets: the nodes `--limit` selects and the managed routers that only
/// forward the port (a hub router is a node).
fn targets<'t>(topo: &'t Topology, settings: &Settings) -> Vec<HostKind<'t>> {
    targeted_nodes(topo, settings)
        .into_iter()
        .chain(targeted_removed(topo, settings))
        .map(|n| n.name.clone())
        .chain(targeted_routers(topo, settings))
        .filter_map(|n| HostKind::of(topo, &n))
        .collect()
}

/// The facts script of every host given, rendered before any host is contacted: a role whose
/// paths do not render is an invalid inventory, and nothing is touched.
fn facts_scripts<'n>(
    topo: &Topology,
    roles: &Roles,
    names: impl Iterator<Item = &'n str>,
) -> Result<HashMap<String, String>> {
    let iface = &topo.network.interface;
    let mut scripts = HashMap::new();
    for n in names {
        let kind = HostKind::of(topo, n).expect("a host of the plan");
        let paths = kind.candidate_paths(roles, topo)?;
        scripts.insert(n.to_string(), kind.facts_script(iface, &paths));
    }
    Ok(scripts)
}

/// One facts exec per reachable host (untargeted nodes are read for their keys, never changed).
async fn gather_facts<S: Transport + 'static>(
    scripts: &HashMap<String, String>,
    names: Vec<String>,
    sessions: &Sessions<S>,
    forks: usize,
    progress: &Arc<dyn Progress>,
) -> HashMap<String, (std::result::Result<Facts, gather::FactsError>, f64)> {
    run_all(names, forks, |n| {
        let s = sessions[&n].as_ref().expect("reachable").clone();
        let script = scripts[&n].clone();
        let progress = progress.clone();
        async move {
            progress.phase(&n, "gathering facts");
            let t = Instant::now();
            let r = match s.run_script(&script).await {
                Ok(out) if out.status == 0 => gather::parse(&out.stdout_text()).map(|mut f| {
                    f.read_at = Some(Instant::now());
                    f
                }),
                Ok(out) => Err(gather::FactsError::Exited {
                    status: out.status,
                    stderr: out.stderr_text().trim().to_string(),
                }),
                Err(e) => Err(e.into()),
            };
            (r, t.elapsed().as_secs_f64())
        }
    })
    .await
}

/// A targeted host's report from its connection, its facts and its plan.
fn host_report<S: Transport>(
    kind: HostKind,
    sessions: &Sessions<S>,
    gathered: &Gathered,
    plan: Option<&std::result::Result<HostPlan, plan::PlanError>>,
    iface: &crate::shell::InterfaceName,
) -> HostReport {
    let name = kind.name();
    let mut r = HostReport::new(name);
    if let Some(Ok(s)) = sessions.get(name) {
        r.timings.connect = s.connect_time().as_secs_f64();
    }
    if let Some((_, t)) = gathered.get(name) {
        r.timings.facts = *t;
    }
    match (sessions.get(name), gathered.get(name), plan) {
        (Some(Err(e)), _, _) => {
            r.status = HostStatus::Unreachable;
            r.error = Some(e.to_string());
        }
        (_, Some((Err(e), _)), _) => {
            r.status = HostStatus::Failed;
            r.error = Some(format!("gathering facts: {e}"));
        }
        (_, _, Some(Err(e))) => {
            r.status = HostStatus::Failed;
            r.error = Some(e.to_string());
        }
        (_, _, Some(Ok(p))) => {
            r.warnings = p.warnings.clone();
            r.drift = p.drift.clone();
            r.changes = file_reports(&p.changes);
            r.handlers = p.handlers.describe(iface, &p.facts);
            if p.changes_anything() {
                r.status = HostStatus::Changed;
            }
        }
        _ => {
            r.status = HostStatus::Unreachable;
            r.error = Some("not contacted".into());
        }
    }
    r
}

/// Plans every targeted host from its facts; its report, and the run's warnings.
fn plan_targets<S: Transport>(
    topo: &Topology,
    roles: &Roles,
    settings: &Settings,
    targets: &[HostKind],
    (sessions, gathered, facts): (&Sessions<S>, &Gathered, &HashMap<String, Facts>),
    keys: &plan::Keys,
) -> (HashMap<String, HostPlan>, Vec<HostReport>, Vec<String>) {
    let mut warnings = keys.warnings.clone();
    warnings.extend(removal_limits(topo, settings));
    let mut plans = HashMap::new();
    let mut reports = Vec::new();
    for kind in targets {
        let p = facts
            .get(kind.name())
            .map(|f| plan::host(*kind, roles, topo, keys, f));
        let mut r = host_report(
            *kind,
            sessions,
            gathered,
            p.as_ref(),
            &topo.network.interface,
        );
        if kind.is_removed() {
            r.removed = true;
            let iface = &topo.network.interface;
            for h in r
                .handlers
                .iter_mut()
                .filter(|h| h.starts_with("wireguard: "))
            {
                *h = format!(
                    "wireguard: {iface} down, wg-quick@{iface} disabled (its config is gone)"
                );
            }
            if r.status == HostStatus::Unreachable {
                warnings.push(format!(
                    "{} (state: absent) could not be reached: its peers drop it, but the host itself was not cleaned (what wgprov set up keeps running there); apply again when it is reachable",
                    kind.name()
                ));
            }
        }
        reports.push(r);
        if let Some(Ok(p)) = p {
            plans.insert(kind.name().to_string(), p);
        }
    }
    (plans, reports, warnings)
}

/// Connects to every host the run needs, reads their facts in one exec each, and plans every
/// targeted host: nothing is changed yet.
pub async fn prepare<'a, C: Connect>(
    planned: &'a Planned,
    roles: &Roles,
    settings: &'a Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Prepared<'a, C>> {
    let rotation = plan::Rotation::default();
    prepare_rotating(planned, roles, settings, connector, progress, &rotation).await
}

/// [`prepare`], with new keys for the nodes `rotation` names (`rotate-keys`): the same run,
/// whose plan gives those nodes new key pairs and their peers the new public keys.
pub async fn prepare_rotating<'a, C: Connect>(
    planned: &'a Planned,
    roles: &Roles,
    settings: &'a Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
    rotation: &plan::Rotation,
) -> Result<Prepared<'a, C>> {
    let topo = &planned.topology;
    let targets = targets(topo, settings);
    if targets.is_empty() {
        return Err(Error::Usage(format!(
            "--limit {} matches no managed node",
            settings.limit.as_deref().unwrap_or("")
        )));
    }
    // hosts read besides the nodes: the routers that forward the port, the nodes taken out
    let forwarders: Vec<&str> = targets
        .iter()
        .filter(|k| k.is_forwarder() || k.is_removed())
        .map(|k| k.name())
        .collect();
    let scripts = facts_scripts(
        topo,
        roles,
        topo.nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(forwarders.iter().copied()),
    )?;
    let sessions = connect_all(
        &connector,
        topo.all_ssh_targets()
            .into_iter()
            .filter(|t| topo.node(&t.name).is_some() || forwarders.contains(&t.name.as_str()))
            .collect(),
        settings.forks,
        &progress,
    )
    .await;
    let reachable: Vec<String> = topo
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(forwarders.iter().copied())
        .filter(|n| matches!(sessions.get(*n), Some(Ok(_))))
        .map(str::to_string)
        .collect();
    let (facts, gathered) = split_gathered(
        gather_facts(&scripts, reachable, &sessions, settings.forks, &progress).await,
    );
    drop(scripts);
    let names: BTreeSet<&str> = targets
        .iter()
        .filter_map(|k| k.node())
        .map(|n| n.name.as_str())
        .collect();
    let keys = plan::keys_rotating(topo, &facts, &names, rotation);
    let (plans, reports, warnings) = plan_targets(
        topo,
        roles,
        settings,
        &targets,
        (&sessions, &gathered, &facts),
        &keys,
    );
    Ok(Prepared {
        planned,
        settings,
        connector,
        progress,
        sessions,
        warnings,
        facts,
        keys,
        plans,
        reports,
    })
}

/// Runs apply over the planned network: [`prepare`], then [`Prepared::execute`].
pub async fn apply<C: Connect>(
    planned: &Planned,
    roles: &Roles,
    settings: &Settings,
    connector: Arc<C>,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    Ok(prepare(planned, roles, settings, connector, progress)
        .await?
        .execute()
        .await)
}

impl<C: Connect> Prepared<'_, C> {
    /// The nodes this run gives new key pairs, and the links it gives new preshared keys
    /// (`a <-> b`): names only.
    pub fn renewed(&self) -> (Vec<String>, Vec<String>) {
        (
            self.keys.rotated.iter().cloned().collect(),
            self.keys.psk_renewed.clone(),
        )
    }

    /// The report of a run that stops here (`--check`): what would change, nothing changed.
    pub async fn check(mut self) -> Report {
        close_all(&self.sessions).await;
        let hosts = std::mem::take(&mut self.reports);
        self.report(hosts, None, true)
    }

    fn report(&self, hosts: Vec<HostReport>, guard: Option<GuardReport>, check: bool) -> Report {
        let topo = &self.planned.topology;
        for r in &hosts {
            self.progress.done(&r.name, r.status.as_str());
        }
        Report {
            hosts,
            warnings: self.warnings.clone(),
            check,
            guard,
            interrupted: self.settings.stopped(),
            router_rules: crate::hosts::manual_rules(topo),
            router_hubs: crate::hosts::hub::hubs(topo, &|n| {
                self.keys.ring.get(n).map(|k| k.public)
            }),
        }
    }

    /// Announces the router rules the change needs, before anything is touched: a managed
    /// router's change is an action (it changes first), any other a warning.
    fn announce(&mut self) {
        let wg_path = conf_path(&self.planned.topology.network.interface);
        for (w, managed) in
            order::router_announcements(&self.planned.topology, &self.plans, &wg_path)
        {
            if managed {
                self.progress.note(&w);
            } else {
                self.progress.note(&format!("router change needed: {w}"));
                self.warnings.push(format!("router change needed: {w}"));
            }
        }
    }

    /// Changes every host that needs it, in waves, then the guard gates and confirms the
    /// change or puts it back everywhere; closes every connection.
    pub async fn execute(mut self) -> Report {
        let mut reports = std::mem::take(&mut self.reports);
        let to_change: Vec<String> = reports
            .iter()
            .filter(|r| r.status == HostStatus::Changed)
            .map(|r| r.name.clone())
            .collect();
        self.announce();
        let (run, owner) = (host::RunId::new(), host::owner());
        let mut sessions = std::mem::take(&mut self.sessions);
        let cx = self.cx(&sessions, &run);
        let outcomes = change_hosts(&cx, &owner, &to_change, &self.plans).await;
        flush_again(&cx, &to_change, &self.plans, &outcomes).await;
        let done = record_outcomes(&mut reports, &to_change, &outcomes);
        let mut fresh: Sessions<C::Session> = HashMap::new();
        let guard = self
            .guard(&mut sessions, &run, &done, &mut reports, &mut fresh)
            .await;
        close_all(&sessions).await;
        close_all(&fresh).await;
        self.report(reports, Some(guard), false)
    }

    /// What every step of the changing run shares, over these connections.
    fn cx<'s>(&'s self, sessions: &'s Sessions<C::Session>, run: &'s host::RunId) -> RunCx<'s, C> {
        RunCx {
            topo: &self.planned.topology,
            settings: self.settings,
            progress: &self.progress,
            sessions,
            connector: &self.connector,
            iface: &self.planned.topology.network.interface,
            run,
        }
    }

    /// The guard's part of a run: skipped without `--guard` or when nothing changed; else the
    /// health gate over the links the change touched, then confirmation or the put-back.
    async fn guard(
        &self,
        sessions: &mut Sessions<C::Session>,
        run: &host::RunId,
        done: &Done,
        reports: &mut [HostReport],
        fresh: &mut Sessions<C::Session>,
    ) -> GuardReport {
        let skipped = |why: &str| GuardReport {
            outcome: GuardOutcome::Skipped,
            why: why.into(),
            ..Default::default()
        };
        let Some(timeout) = self.settings.guard else {
            return skipped("--no-guard: the change was neither gated nor confirmed");
        };
        if done.pending.is_empty() && done.lost.is_empty() {
            return skipped("no host changed");
        }
        let changes: HashMap<String, &[Change]> = self
            .plans
            .iter()
            .filter(|(n, _)| done.touched.contains(*n))
            .map(|(n, p)| (n.clone(), p.changes.as_slice()))
            .collect();
        let ok_facts: BTreeMap<String, &Facts> =
            self.facts.iter().map(|(n, f)| (n.clone(), f)).collect();
        // the keys the nodes had before the run too: a rotated node's peers list its old key
        let owners: HashMap<String, String> = self
            .keys
            .before
            .iter()
            .map(|(n, k)| (k.to_base64(), n.clone()))
            .chain(
                self.keys
                    .ring
                    .iter()
                    .map(|(n, k)| (k.public.to_base64(), n.clone())),
            )
            .collect();
        let topo = &self.planned.topology;
        let (mut before, mut existed) = guard::links_before(&ok_facts, &owners);
        guard::relayed_before(topo, &mut before, &mut existed);
        let wg_path = conf_path(&topo.network.interface);
        let g = GuardInput {
            timeout,
            pending: &done.pending,
            lost: &done.lost,
            touched: &done.touched,
            before,
            existed,
            changes: &changes,
            wg_path: &wg_path,
            first_dead_man: done.deadlines.iter().min().copied(),
        };
        let to_probe = links_to_probe(topo, &g);
        drop_unneeded(topo, &g, &to_probe, sessions);
        let cx = self.cx(sessions, run);
        let (report, statuses) = run_guard(&cx, &g, &to_probe, fresh).await;
        for r in reports.iter_mut() {
            if let Some((st, err, secs)) = statuses.get(&r.name) {
                r.status = *st;
                if let Some(e) = err {
                    r.error = Some(match r.error.take() {
                        Some(old) if *st == HostStatus::Reverted && done.lost.contains(&r.name) => {
                            format!("{old}; {e}")
                        }
                        _ => e.clone(),
                    });
                }
                r.timings.guard = *secs;
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{self, HostInput};
    use crate::diff;
    use crate::facts::FileFact;
    use crate::hosts::handlers::HandlerPlan;
    use crate::hosts::kind::Kind;
    use crate::inventory::OsFamily;
    use crate::keys::Keypair;
    use crate::plan::order::{change_waves, reflush_targets, router_announcements};

    fn node(name: &str, site: &str) -> NodePlan {
        NodePlan {
            name: name.into(),
            site: site.into(),
            address: "192.168.0.1".into(),
            wireguard_ip: "10.100.0.1".parse().unwrap(),
            is_next_hop: false,
            is_standby: false,
            os_family: None,
            kubernetes: Default::default(),
            ssh: crate::inventory::SshSettings {
                host: "x".into(),
                user: "root".into(),
                port: 22,
                identity_file: None,
                known_hosts: "k".into(),
                become_root: false,
                proxy_jump: None,
            },
            is_router: false,
        }
    }

    fn topo_of(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(std::path::Path::new("inv.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    const OPENWRT_HUB: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: router\n    router: { kind: openwrt, address: 192.168.0.1, wan_interface: wan }\n    nodes:\n      n1: { address: 192.168.0.10 }\n  office:\n    endpoint: 198.51.100.20:51820\n    router: { kind: openwrt, address: 192.168.10.1, wan_interface: wan }\n    nodes:\n      o1: { address: 192.168.10.5 }\n";

    /// The hub's files as apply plans them, against a router that has no script yet and one
    /// that has an older one: no diff, text or JSON report ever shows the key.
    #[test]
    fn an_openwrt_hubs_diff_and_report_never_show_its_key() {
        let t = topo_of(OPENWRT_HUB);
        let roles = Roles::load(crate::roles::RoleSource::Embedded).unwrap();
        let keys = desired::fresh_keys(&t);
        let key = keys["home-router"].private.expose_base64().to_string();
        let hub = t.node("home-router").unwrap();
        let none = |_: &str| None;
        let input = HostInput {
            node: hub,
            os_family: OsFamily::Debian,
            systemd: false,
            existing: &none,
            peer_fallback: None,
            preshared: &Default::default(),
        };
        let (files, _) = HostKind::of(&t, "home-router")
            .unwrap()
            .desired(&roles, &t, &keys, &input)
            .unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                crate::hosts::openwrt_hub::HUB_SCRIPT,
                crate::hosts::PF_SCRIPT
            ]
        );
        let new = files[0].state.content().unwrap().to_string();
        assert!(new.contains(&key), "the script holds the key");
        let old = new.replace("'10.100.1.0/24'", "'10.100.9.0/24'");
        for current in [
            FileFact::Absent,
            FileFact::Present {
                mode: 0o700,
                content: old,
            },
        ] {
            let changes = diff::compare(&files, &|p| {
                if p == crate::hosts::openwrt_hub::HUB_SCRIPT {
                    current.clone()
                } else {
                    FileFact::Absent
                }
            });
            let mut r = HostReport::new("home-router");
            r.changes = file_reports(&changes);
            r.status = HostStatus::Changed;
            let report = Report {
                hosts: vec![r],
                warnings: Vec::new(),
                check: true,
                guard: None,
                interrupted: false,
                router_rules: Vec::new(),
                router_hubs: Vec::new(),
            };
            let text = crate::output::apply_text(&report, true, false);
            let json = crate::output::apply_json(&report).to_string();
            assert!(text.contains("router-hub.sh"), "{text}");
            assert!(!text.contains(&key) && !json.contains(&key), "{text}");
            if matches!(current, FileFact::Absent) {
                assert!(text.contains("+private_key=(redacted)"), "{text}");
            } else {
                assert!(
                    text.contains(
                        "+uci add_list network.wgprov_peer_2.allowed_ips='10.100.1.0/24'"
                    ),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn an_openwrt_hub_keeps_the_peers_of_its_script_and_is_rolled_back_by_its_own_handler() {
        let t = topo_of(OPENWRT_HUB);
        let keys = desired::fresh_keys(&t);
        let hub = t.node("home-router").unwrap();
        let (files, _) = crate::hosts::openwrt_hub::desired(
            &t,
            hub,
            t.router("home-router").unwrap().1,
            &keys,
            None,
            &Default::default(),
        )
        .unwrap();
        let mut f = Facts::default();
        f.files.insert(
            crate::hosts::openwrt_hub::HUB_SCRIPT.into(),
            FileFact::Present {
                mode: 0o700,
                content: files[0].state.content().unwrap().into(),
            },
        );
        let hub_kind = HostKind::of(&t, "home-router").unwrap();
        let known = hub_kind.existing_peers(&f, &t.network.interface);
        let o1 = keys["o1"].public.to_base64();
        assert!(
            known.contains(&(o1, vec!["10.100.1.0/24".to_string()])),
            "{known:?}"
        );
        let kind = |n: &str| HostKind::of(&t, n).unwrap().kind();
        assert_eq!(kind("home-router"), Kind::OpenwrtHub);
        assert_eq!(kind("office-router"), Kind::Forwarder);
        assert_eq!(kind("n1"), Kind::Node);
        let h = Kind::OpenwrtHub.rollback_handlers(&f);
        assert!(h.router_hub && h.wireguard.is_none() && h.port_forward == Some(vec![]));
    }

    #[test]
    fn a_forwarding_router_changes_first_and_a_hub_router_with_the_nodes() {
        let yaml = |next_hop: &str| {
            format!(
                "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: {next_hop}\n    router: {{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n"
            )
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = topo_of(&yaml("n1"));
        assert_eq!(
            change_waves(&t, &names(&["n1", "home-router", "n2"])),
            vec![names(&["home-router"]), names(&["n1", "n2"])]
        );
        assert_eq!(change_waves(&t, &names(&["n2"])), vec![names(&["n2"])]);
        let settings = Settings {
            limit: Some("n1".into()),
            forks: 1,
            no_rollback: false,
            guard: None,
            stop: Default::default(),
            command_timeout: Duration::from_secs(120),
        };
        assert!(
            targeted_routers(&t, &settings).is_empty(),
            "outside --limit"
        );
        let settings = Settings {
            limit: Some("home".into()),
            ..settings
        };
        assert_eq!(targeted_routers(&t, &settings), ["home-router"]);
        // the hub is a node of its site: planned and changed with the nodes
        let t = topo_of(&yaml("router"));
        assert_eq!(
            change_waves(&t, &names(&["home-router", "n1"])),
            vec![names(&["home-router", "n1"])]
        );
        assert!(targeted_routers(&t, &settings).is_empty());
    }

    #[test]
    fn a_port_change_behind_a_managed_router_is_an_action_not_a_note() {
        let yaml = |next_hop: &str, endpoint: &str| {
            format!(
                "network:\n  wireguard_cidr: 10.100.0.0/16\n  listen_port: 51821\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n{endpoint}    next_hop: {next_hop}\n    router: {{ kind: linux, address: 192.168.0.1, wan_interface: eth0 }}\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n      n2: {{ address: 192.168.0.11 }}\n  office:\n    endpoint: 198.51.100.20:51821\n    nodes:\n      o1: {{ address: 192.168.10.5 }}\n"
            )
        };
        // a host whose wg0 moves from 51820 to 51821
        let plan_of = |node: &str| {
            let plan = HostPlan {
                changes: vec![script::tests::change(
                    Some("[Interface]\nListenPort = 51820\nPostUp = x\n"),
                    "[Interface]\nListenPort = 51821\nPostUp = x\n",
                )],
                handlers: HandlerPlan::default(),
                expect: None,
                facts: Facts::default(),
                drift: Vec::new(),
                warnings: Vec::new(),
            };
            (node.to_string(), plan)
        };
        let wg = "/etc/wireguard/wg0.conf";
        let t = topo_of(&yaml("n1", "    endpoint: 203.0.113.10:4500\n"));
        let mut plans: HashMap<String, HostPlan> = [plan_of("n1"), plan_of("home-router")]
            .into_iter()
            .collect();
        let a = router_announcements(&t, &plans, wg);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].1, "an action");
        assert_eq!(
            a[0].0,
            "site home: n1 will listen on UDP 51821 instead of 51820: the managed router home-router changes first, forwarding UDP 4500 to 192.168.0.10:51821, in this same guarded transaction"
        );
        plans.remove("home-router");
        let a = router_announcements(&t, &plans, wg);
        assert!(
            !a[0].1
                && a[0]
                    .0
                    .contains("outside --limit: apply it too (--limit home-router,n1)"),
            "{a:?}"
        );
        // no endpoint: nobody dials in, nothing to forward; a hub router forwards nothing
        let t = topo_of(&yaml("n1", ""));
        assert!(router_announcements(&t, &plans, wg).is_empty());
        let t = topo_of(&yaml("router", "    endpoint: 203.0.113.10:51821\n"));
        let plans: HashMap<String, HostPlan> = [plan_of("home-router")].into_iter().collect();
        assert!(router_announcements(&t, &plans, wg).is_empty());
    }

    #[test]
    fn conntrack_is_flushed_again_only_when_nodes_changed_after_the_router() {
        let t = topo_of(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    router: { kind: linux, address: 192.168.0.1, wan_interface: eth0 }\n    nodes:\n      n1: { address: 192.168.0.10 }\n",
        );
        let plan = |pf: Option<Vec<u16>>| HostPlan {
            changes: Vec::new(),
            handlers: HandlerPlan {
                port_forward: pf,
                ..Default::default()
            },
            expect: None,
            facts: Facts::default(),
            drift: Vec::new(),
            warnings: Vec::new(),
        };
        let plans: HashMap<String, HostPlan> = [
            ("home-router".to_string(), plan(Some(vec![51820]))),
            ("n1".to_string(), plan(None)),
        ]
        .into_iter()
        .collect();
        let both = ["home-router".to_string(), "n1".to_string()];
        let all = |_: &str| true;
        assert_eq!(
            reflush_targets(&t, &both, &plans, &all),
            vec![("home-router".to_string(), vec![51820])]
        );
        // the router alone (drift repaired): its own flush was the last word
        assert!(reflush_targets(&t, &both[..1], &plans, &all).is_empty());
        // the node's change failed: nothing moved after the router
        assert!(reflush_targets(&t, &both, &plans, &|n: &str| n != "n1").is_empty());
    }

    #[test]
    fn limit_matches_node_site_and_glob() {
        let n = node("office1", "office");
        for yes in ["office1", "office", "off*", "*1", "office?", "home,office"] {
            assert!(matches_limit(yes, &n), "{yes}");
        }
        for no in ["office2", "home", "of", "*2", "o?"] {
            assert!(!matches_limit(no, &n), "{no}");
        }
    }

    #[test]
    fn the_host_checks_its_interface_against_the_planned_peers() {
        let conf = "[Interface]\nPrivateKey = x\n\n[Peer]\nPublicKey = P2\nAllowedIPs = 10.100.1.0/24, 10.100.0.2/32\n\n[Peer]\nPublicKey = P1\nAllowedIPs = 10.100.0.0/16\n";
        let e = script::Expect::from_conf("ME", conf);
        assert_eq!(
            e.tokens,
            vec![
                "10.100.0.0/16",
                "10.100.0.2/32",
                "10.100.1.0/24",
                "P1",
                "P2"
            ]
        );
        let check = e.check(&crate::shell::InterfaceName::default());
        assert!(check.contains(
            "= 'ME' ]; } || fail 'verify: the interface is not up with the planned key'"
        ));
        assert!(check.contains("' 10.100.0.0/16 10.100.0.2/32 10.100.1.0/24 P1 P2 '"));
        // run against a stub `wg` printing a dump: the running peers in any order pass; one
        // more, one fewer or another key fail; another own key fails the first test
        let dir = tempfile::tempdir().unwrap();
        let run = |own: &str, allowed: &str| {
            let mut dump = format!("PRIVATE\t{own}\t51820\toff\n");
            for l in allowed.lines() {
                let (k, ips) = l.split_once('\t').unwrap();
                dump.push_str(&format!(
                    "{k}\t(none)\t192.0.2.1:51820\t{}\t0\t0\t0\toff\n",
                    ips.replace(' ', ",")
                ));
            }
            let wg = dir.path().join("wg");
            std::fs::write(
                &wg,
                format!("#!/bin/sh\n[ \"$3\" = dump ] && printf '%s' '{dump}'\n"),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wg, std::fs::Permissions::from_mode(0o755)).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "set -u\nPATH={}:$PATH\nfail() {{ echo \"FAILED $1\"; exit 1; }}\n{check}echo OK\n",
                    dir.path().display()
                ))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(!text.contains("PRIVATE"), "{text}");
            text
        };
        assert_eq!(
            run("ME", "P1\t10.100.0.0/16\nP2\t10.100.0.2/32 10.100.1.0/24\n"),
            "OK"
        );
        assert_eq!(
            run("ME", "P2\t10.100.1.0/24 10.100.0.2/32\nP1\t10.100.0.0/16\n"),
            "OK"
        );
        assert!(
            run(
                "YOU",
                "P1\t10.100.0.0/16\nP2\t10.100.0.2/32 10.100.1.0/24\n"
            )
            .starts_with("FAILED verify: the interface is not up with the planned key")
        );
        for bad in [
            "P1\t10.100.0.0/16\nP2\t10.100.0.2/32\n",
            "P1\t10.100.0.0/16\nP2\t10.100.0.2/32 10.100.1.0/24\nP3\t(none)\n",
            "P1\t10.100.0.0/16\nP9\t10.100.0.2/32 10.100.1.0/24\n",
            "",
        ] {
            assert!(
                run("ME", bad).starts_with("FAILED verify: the interface has other peers"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_malformed_existing_private_key_is_an_error_not_a_new_identity() {
        let path = "/etc/wireguard/wg0.conf";
        let n = node("n1", "home");
        let existing_key =
            |f: &Facts, _: &str| HostKind::Node(&n).existing_key(f, &Default::default());
        let facts = |conf: &str| {
            let mut f = Facts::default();
            f.files.insert(
                path.into(),
                FileFact::Present {
                    mode: 0o600,
                    content: conf.into(),
                },
            );
            f
        };
        let err = existing_key(&facts("[Interface]\nPrivateKey = not-a-key\n"), path)
            .unwrap()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("malformed PrivateKey") && !err.contains("not-a-key"),
            "{err}"
        );
        let good = Keypair::generate().private.expose_base64().to_string();
        assert!(matches!(
            existing_key(&facts(&format!("[Interface]\nPrivateKey = {good}\n")), path),
            Some(Ok(_))
        ));
        assert!(existing_key(&facts("[Interface]\n"), path).is_none());
    }

    #[test]
    fn earlier_waves_wait_for_the_later_ones_before_their_dead_man_fires() {
        let t = Duration::from_secs(20);
        let b = Duration::from_secs(7);
        assert_eq!(dead_man_timeout(t, b, 0, 3), Duration::from_secs(34));
        assert_eq!(dead_man_timeout(t, b, 2, 3), t);
        let mut s = Settings {
            limit: None,
            forks: 1,
            no_rollback: false,
            guard: Some(Duration::from_secs(90)),
            stop: Default::default(),
            command_timeout: Duration::from_secs(120),
        };
        assert_eq!(wave_bound(&s), Duration::from_secs(30));
        s.guard = Some(Duration::from_secs(6));
        assert_eq!(wave_bound(&s), Duration::from_secs(5));
        s.guard = Some(Duration::from_secs(300));
        assert_eq!(wave_bound(&s), Duration::from_secs(100));
        s.guard = Some(Duration::from_secs(600));
        assert_eq!(wave_bound(&s), s.command_timeout);
        s.guard = None;
        assert_eq!(wave_bound(&s), s.command_timeout);
    }

    #[test]
    fn adopted_configs_get_warnings_wg_quick_would_bite_on() {
        let f = Facts::default();
        let w = crate::plan::config_warnings("[Interface]\nSaveConfig = true\nDNS = 1.1.1.1\n", &f);
        assert_eq!(w.len(), 2, "{w:?}");
        let mut with = Facts::default();
        with.tools.insert("resolvconf".into());
        assert_eq!(
            crate::plan::config_warnings("[Interface]\nDNS = 1.1.1.1\n", &with).len(),
            0
        );
    }

    #[test]
    fn exit_codes_follow_spec() {
        let mut r = Report {
            hosts: vec![HostReport::new("a")],
            warnings: vec![],
            check: true,
            guard: None,
            interrupted: false,
            router_rules: Vec::new(),
            router_hubs: Vec::new(),
        };
        assert_eq!(r.exit_code(true), 0);
        r.hosts[0].status = HostStatus::Changed;
        assert_eq!(r.exit_code(true), 3);
        assert_eq!(r.exit_code(false), 0);
        r.hosts[0].status = HostStatus::RolledBack;
        assert_eq!(r.exit_code(true), 1);
        r.hosts[0].status = HostStatus::Unreachable;
        assert_eq!(r.exit_code(false), 1);
        r.hosts[0].status = HostStatus::Reverted;
        assert_eq!(r.exit_code(false), 1, "the guard put the change back");
        r.hosts[0].status = HostStatus::Changed;
        r.check = false;
        r.guard = Some(GuardReport {
            new_down: vec![guard::Link::new("a", "b")],
            ..Default::default()
        });
        assert_eq!(r.exit_code(false), 1, "a new link did not come up");
        r.interrupted = true;
        assert_eq!(r.exit_code(false), 130);
    }
}
