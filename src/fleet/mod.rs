//! The fleet runner, the only code that knows about concurrency: one connection per host (jump
//! hosts first), one future per host at most `forks` at once, and the progress events jobs
//! send. It is generic over [`Connect`], so apply, status and export run the same over SSH in
//! the product and over a scripted fake in unit tests.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::topology::{SshTarget, Topology};
use crate::transport::ssh::{self, KeyCache, SshOptions, SshSession};
use crate::transport::{Target, Transport, TransportError};

/// Opens a session to a host: SSH in the product ([`SshConnector`]), a fake in tests.
pub trait Connect: Send + Sync + 'static {
    /// The session a connection gives.
    type Session: Transport + 'static;
    /// Connects to host `name` at `target`, through `jump` when it has a `proxy_jump`.
    fn connect(
        &self,
        name: &str,
        target: &Target,
        jump: Option<Arc<Self::Session>>,
    ) -> impl Future<Output = Result<Arc<Self::Session>, TransportError>> + Send;
}

/// Connects over SSH with the run's options; identity files are loaded once per run.
pub struct SshConnector {
    keys: KeyCache,
    opts: SshOptions,
}

impl SshConnector {
    /// A connector with these options.
    pub fn new(opts: SshOptions) -> Self {
        SshConnector {
            keys: KeyCache::default(),
            opts,
        }
    }
}

impl Connect for SshConnector {
    type Session = SshSession;
    async fn connect(
        &self,
        _name: &str,
        target: &Target,
        jump: Option<Arc<SshSession>>,
    ) -> Result<Arc<SshSession>, TransportError> {
        ssh::connect(target, jump, &self.keys, &self.opts)
            .await
            .map(Arc::new)
    }
}

/// Reports progress: jobs send events, a renderer (in the CLI) draws them.
pub trait Progress: Send + Sync {
    /// `host` moved to `phase`.
    fn phase(&self, host: &str, phase: &str);
    /// `host` is done with `outcome`.
    fn done(&self, host: &str, outcome: &str);
    /// A line about the whole run (the guard's steps, announcements).
    fn note(&self, _line: &str) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {
    fn phase(&self, _: &str, _: &str) {}
    fn done(&self, _: &str, _: &str) {}
}

/// One connection per host, or why there is none.
pub type Sessions<S> = HashMap<String, Result<Arc<S>, TransportError>>;

/// Closes every session given.
pub async fn close_all<S: Transport>(sessions: &Sessions<S>) {
    for s in sessions.values().flatten() {
        s.close().await;
    }
}

/// The hosts named (nodes or managed routers), with the jump hosts they need (transitively), in
/// inventory order.
pub fn with_jumps(topo: &Topology, names: &[String]) -> Vec<SshTarget> {
    let all = topo.all_ssh_targets();
    let mut want: BTreeSet<String> = names.iter().cloned().collect();
    let mut grew = true;
    while grew {
        grew = false;
        for n in &all {
            if want.contains(&n.name)
                && let Some(j) = &n.ssh.proxy_jump
                && want.insert(j.clone())
            {
                grew = true;
            }
        }
    }
    all.into_iter().filter(|n| want.contains(&n.name)).collect()
}

/// Connects to every node given (jump hosts first, then the nodes behind them), at most
/// `forks` at once. Every node ends with a session or the reason it has none.
pub async fn connect_all<C: Connect>(
    connector: &Arc<C>,
    nodes: Vec<SshTarget>,
    forks: usize,
    progress: &Arc<dyn Progress>,
) -> Sessions<C::Session> {
    let sem = Arc::new(Semaphore::new(forks.max(1)));
    let mut sessions: Sessions<C::Session> = HashMap::new();
    let mut pending = nodes;
    // rounds: nodes whose jump host is connected (or who need none) go next
    while !pending.is_empty() {
        let (ready, later): (Vec<SshTarget>, Vec<SshTarget>) =
            pending.into_iter().partition(|n| match &n.ssh.proxy_jump {
                None => true,
                Some(j) => sessions.contains_key(j),
            });
        if ready.is_empty() {
            for n in later {
                sessions.insert(
                    n.name.clone(),
                    Err(TransportError::Unreachable("proxy_jump loop".into())),
                );
            }
            break;
        }
        let mut set = tokio::task::JoinSet::new();
        let mut started = Vec::new();
        for n in ready {
            let jump = match &n.ssh.proxy_jump {
                None => None,
                Some(j) => match &sessions[j] {
                    Ok(s) => Some(s.clone()),
                    Err(e) => {
                        sessions.insert(
                            n.name.clone(),
                            Err(TransportError::Unreachable(format!("jump host {j}: {e}"))),
                        );
                        continue;
                    }
                },
            };
            started.push(n.name.clone());
            let (name, target) = (n.name.clone(), Target::from(&n.ssh));
            let (connector, sem, progress) = (connector.clone(), sem.clone(), progress.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                progress.phase(&name, "connecting");
                let r = connector.connect(&name, &target, jump).await;
                (name, r)
            });
        }
        while let Some(r) = set.join_next().await {
            // a connect task that panicked: its host counts as unreachable below
            if let Ok((name, s)) = r {
                sessions.insert(name, s);
            }
        }
        for n in &started {
            sessions.entry(n.clone()).or_insert_with(|| {
                Err(TransportError::Unreachable(
                    "the connect task failed".into(),
                ))
            });
        }
        pending = later;
    }
    sessions
}

/// Runs `f(name)` for every name, at most `forks` at once; returns each result by name.
pub async fn run_all<F, Fut, T>(names: Vec<String>, forks: usize, f: F) -> HashMap<String, T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(Semaphore::new(forks.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for n in names {
        let fut = f(n.clone());
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            (n, fut.await)
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((n, t)) => {
                out.insert(n, t);
            }
            // a task that panicked is reported by the caller as a host without a result
            Err(e) => eprintln!("wgprov: a host task failed: {e}"),
        }
    }
    out
}

impl From<&crate::inventory::SshSettings> for Target {
    fn from(s: &crate::inventory::SshSettings) -> Target {
        Target {
            host: s.host.clone(),
            user: s.user.clone(),
            port: s.port,
            identity_file: s.identity_file.clone(),
            known_hosts: s.known_hosts.clone(),
            become_root: s.become_root,
            proxy_jump: s.proxy_jump.clone(),
        }
    }
}
