//! A scripted stand-in for a host, for unit tests of the code that drives hosts: it answers
//! each script by its first line's kind (`# wgprov:change …`, `# wgprov:probe`, …) from replies
//! queued per kind, else from a standing answer for that kind, records every script it
//! receives, and can drop the connection from the N-th script on. [`FakeConnector`] hands
//! such hosts to the fleet runner, so `apply()` and `status()` run end to end without a
//! network. Real hosts are proven in the lab; this proves the decisions around them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ExecOutput, Target, Transport, TransportError};

type Answer = Box<dyn Fn(&str) -> Result<ExecOutput, TransportError> + Send + Sync>;

/// One fake host.
#[derive(Default)]
pub struct FakeHost {
    replies: Mutex<HashMap<String, VecDeque<Result<ExecOutput, TransportError>>>>,
    answers: Mutex<HashMap<String, Answer>>,
    received: Mutex<Vec<String>>,
    drop_from: Mutex<Option<usize>>,
}

/// A successful output with `stdout`.
pub fn ok(stdout: &str) -> ExecOutput {
    ExecOutput {
        status: 0,
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}

/// Hands out fake hosts by name, counting connections; names it refuses are unreachable.
#[derive(Default)]
pub struct FakeConnector {
    /// The hosts, by node or router name.
    pub hosts: HashMap<String, Arc<FakeHost>>,
    /// Hosts that refuse every connection.
    pub refuse: Mutex<BTreeSet<String>>,
    /// Hosts that accept only their first connection (a host lost after the change).
    pub once: Mutex<BTreeSet<String>>,
    connects: Mutex<Vec<String>>,
}

impl FakeConnector {
    /// A connector for these hosts.
    pub fn new(hosts: HashMap<String, Arc<FakeHost>>) -> Self {
        FakeConnector {
            hosts,
            ..Default::default()
        }
    }

    /// How many connections were opened to `name`.
    pub fn connections(&self, name: &str) -> usize {
        self.connects
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

impl crate::fleet::Connect for FakeConnector {
    type Session = FakeHost;
    async fn connect(
        &self,
        name: &str,
        _target: &Target,
        _jump: Option<Arc<FakeHost>>,
    ) -> Result<Arc<FakeHost>, TransportError> {
        let before = self.connections(name);
        self.connects.lock().unwrap().push(name.to_string());
        if self.refuse.lock().unwrap().contains(name)
            || (before > 0 && self.once.lock().unwrap().contains(name))
        {
            return Err(TransportError::Unreachable(format!(
                "{name}: connection refused (fake)"
            )));
        }
        self.hosts
            .get(name)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("{name}: no such fake host")))
    }
}

/// The kind of a script: the word after `# wgprov:` on its first line (`other` without one).
pub fn kind_of(script: &str) -> String {
    script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# wgprov:"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("other")
        .to_string()
}

impl FakeHost {
    /// A host with no replies queued.
    pub fn new() -> Self {
        Self::default()
    }
    /// Queues `stdout` (exit 0) as the answer to the next script of `kind`.
    pub fn reply(&self, kind: &str, stdout: &str) -> &Self {
        self.replies
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default()
            .push_back(Ok(ExecOutput {
                status: 0,
                stdout: stdout.as_bytes().to_vec(),
                stderr: Vec::new(),
            }));
        self
    }
    /// Queues a transport error as the answer to the next script of `kind`.
    pub fn fail(&self, kind: &str, e: TransportError) -> &Self {
        self.replies
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default()
            .push_back(Err(e));
        self
    }
    /// Answers every script of `kind` that has no queued reply with `f(script)`.
    pub fn answer(
        &self,
        kind: &str,
        f: impl Fn(&str) -> Result<ExecOutput, TransportError> + Send + Sync + 'static,
    ) -> &Self {
        self.answers
            .lock()
            .unwrap()
            .insert(kind.to_string(), Box::new(f));
        self
    }
    /// From the `n`-th script on (0-based), the connection is gone.
    pub fn drop_from(&self, n: usize) -> &Self {
        *self.drop_from.lock().unwrap() = Some(n);
        self
    }
    /// Every script received, in order.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
    /// The kinds of the scripts received, in order.
    pub fn kinds(&self) -> Vec<String> {
        self.received().iter().map(|s| kind_of(s)).collect()
    }
}

impl Transport for FakeHost {
    async fn run_script_within(
        &self,
        script: &str,
        _timeout: Duration,
    ) -> Result<ExecOutput, TransportError> {
        let n = {
            let mut r = self.received.lock().unwrap();
            r.push(script.to_string());
            r.len() - 1
        };
        if self.drop_from.lock().unwrap().is_some_and(|d| n >= d) {
            return Err(TransportError::Lost("connection dropped (fake)".into()));
        }
        let kind = kind_of(script);
        let queued = self
            .replies
            .lock()
            .unwrap()
            .get_mut(&kind)
            .and_then(|q| q.pop_front());
        queued.unwrap_or_else(|| match self.answers.lock().unwrap().get(&kind) {
            Some(f) => f(script),
            None => Err(TransportError::Lost(format!(
                "the fake host has no reply for a `{kind}` script"
            ))),
        })
    }

    async fn run_script(&self, script: &str) -> Result<ExecOutput, TransportError> {
        self.run_script_within(script, Duration::from_secs(1)).await
    }
}
