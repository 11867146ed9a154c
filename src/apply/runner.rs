//! The only code that knows about concurrency: connections to every host (jump hosts first),
//! and running one future per host, at most `forks` at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Progress, Settings};
use crate::topology::{SshTarget, Topology};
use crate::transport::TransportError;
use crate::transport::ssh::{self, KeyCache, SshSession};

/// One SSH connection per host, or why there is none.
pub type Sessions = HashMap<String, std::result::Result<Arc<SshSession>, TransportError>>;

/// The hosts named (nodes or managed routers), with the jump hosts they need (transitively), in
/// inventory order.
pub fn with_jumps(topo: &Topology, names: &[String]) -> Vec<SshTarget> {
    let all = topo.ssh_targets();
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
pub async fn connect_all(
    nodes: Vec<SshTarget>,
    settings: &Settings,
    progress: &Arc<dyn Progress>,
) -> Sessions {
    let keys = Arc::new(KeyCache::default());
    let sem = Arc::new(Semaphore::new(settings.forks.max(1)));
    let mut sessions: Sessions = HashMap::new();
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
            let (name, ssh_settings) = (n.name.clone(), n.ssh.clone());
            let (keys, sem, opts, progress) = (
                keys.clone(),
                sem.clone(),
                settings.ssh.clone(),
                progress.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                progress.phase(&name, "connecting");
                let r = ssh::connect(&ssh_settings, jump, &keys, &opts)
                    .await
                    .map(Arc::new);
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
