//! What a run reports: per host its status, file changes, handlers, drift, warnings and
//! timings; the guard's outcome; the exit code.

use super::*;

/// How a host ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Nothing to change (or, with `--check`, nothing pending).
    Ok,
    /// Changed and verified (or, with `--check`, changes pending).
    Changed,
    /// Failed and left as it is (`--no-rollback`), or failed before changing anything.
    Failed,
    /// Could not be reached or its host key was refused.
    Unreachable,
    /// Failed and was put back as it was.
    RolledBack,
    /// Changed, then put back by the guard (the network would have been worse).
    Reverted,
}

impl HostStatus {
    /// The word used in JSON and progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Ok => "ok",
            HostStatus::Changed => "changed",
            HostStatus::Failed => "failed",
            HostStatus::Unreachable => "unreachable",
            HostStatus::RolledBack => "rolled_back",
            HostStatus::Reverted => "reverted",
        }
    }
}

/// One file of a host's report.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// Path on the node.
    pub path: String,
    /// What happened (or would happen).
    pub action: Action,
    /// Unified diff, private keys redacted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

/// Per-phase timings of one host, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Connect, key exchange, authentication.
    pub connect: f64,
    /// The facts exec.
    pub facts: f64,
    /// The transaction exec (writes, handlers, read-back).
    pub apply: f64,
    /// The confirmation or put-back over a fresh connection, if one ran.
    pub guard: f64,
}

/// What happened on one host.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    /// Node name.
    #[serde(skip)]
    pub name: String,
    /// Final status.
    pub status: HostStatus,
    /// Files compared, with what happened to each.
    pub changes: Vec<FileReport>,
    /// Handlers run (or that would run).
    pub handlers: Vec<String>,
    /// How the running interface differed from its file (repaired by the handlers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Things worth knowing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Per-phase timings.
    pub timings: Timings,
    /// True for a node being taken out (`state: absent`): when it cannot be reached, its peers
    /// drop it all the same and the run warns, without failing for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl HostReport {
    pub(super) fn new(name: &str) -> Self {
        HostReport {
            name: name.to_string(),
            status: HostStatus::Ok,
            changes: Vec::new(),
            handlers: Vec::new(),
            drift: Vec::new(),
            error: None,
            warnings: Vec::new(),
            timings: Timings::default(),
            removed: false,
        }
    }
    /// Files changed (or to change).
    pub fn changed(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .count()
    }
}

/// How the guard ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardOutcome {
    /// Every changed host confirmed: the change is kept.
    Confirmed,
    /// The change was put back everywhere.
    Reverted,
    /// Nothing was gated (`--no-guard`, or no host changed).
    #[default]
    Skipped,
}

impl GuardOutcome {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardOutcome::Confirmed => "confirmed",
            GuardOutcome::Reverted => "reverted",
            GuardOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for GuardOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for GuardOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What the guard did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardReport {
    /// How it ended.
    pub outcome: GuardOutcome,
    /// Links up before the change (among those it could touch).
    pub links_before: usize,
    /// Probed links that answered after it.
    pub links_after: usize,
    /// Links up before and down after.
    pub broken: Vec<guard::Link>,
    /// New links that did not come up.
    pub new_down: Vec<guard::Link>,
    /// Links up before that could not be probed after (no connection to either end).
    pub unknown: Vec<guard::Link>,
    /// Why this outcome.
    pub why: String,
    /// Hosts the controller could not put back: their dead-man does it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_to_dead_man: Vec<String>,
    /// The confirmation timeout, seconds (0 without the guard).
    pub confirm_timeout: u64,
    /// Seconds spent probing links.
    pub gate_seconds: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Targeted hosts in inventory order.
    pub hosts: Vec<HostReport>,
    /// Run-wide warnings (untargeted nodes that could not be read, …).
    pub warnings: Vec<String>,
    /// True for `--check`.
    pub check: bool,
    /// What the guard did (apply only).
    pub guard: Option<GuardReport>,
    /// True when the operator stopped the run (exit 130).
    pub interrupted: bool,
    /// The router rules still to be done by hand (routers wgprov does not manage), listed once.
    pub router_rules: Vec<String>,
    /// Hub routers wgprov does not manage: the tunnel and peers to create, with every key known.
    pub router_hubs: Vec<crate::hosts::hub::Hub>,
}

/// Counts for the recap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Hosts that ended ok (unchanged).
    pub ok: usize,
    /// Hosts changed (or with changes pending under `--check`).
    pub changed: usize,
    /// Hosts failed or rolled back.
    pub failed: usize,
    /// Hosts unreachable.
    pub unreachable: usize,
}

impl Report {
    /// Counts per status.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for h in &self.hosts {
            match h.status {
                HostStatus::Ok => s.ok += 1,
                HostStatus::Changed => s.changed += 1,
                HostStatus::Failed | HostStatus::RolledBack | HostStatus::Reverted => s.failed += 1,
                HostStatus::Unreachable => s.unreachable += 1,
            }
        }
        s
    }
    /// Exit status (the documented exit codes): 1 when any host failed, was unreachable or rolled back; 3 with
    /// `--check --detailed-exitcode` when changes are pending; else 0.
    pub fn exit_code(&self, detailed: bool) -> u8 {
        let s = self.summary();
        let new_down = self.guard.as_ref().is_some_and(|g| !g.new_down.is_empty());
        // a node being taken out that cannot be reached is dropped by its peers all the same
        let unreachable = self
            .hosts
            .iter()
            .filter(|h| h.status == HostStatus::Unreachable && !h.removed)
            .count();
        if self.interrupted {
            130
        } else if s.failed > 0 || unreachable > 0 || new_down {
            1
        } else if self.check && detailed && s.changed > 0 {
            3
        } else {
            0
        }
    }
}

/// What a host's report says of each file compared: the action, and the diff when it changes.
pub(super) fn file_reports(changes: &[Change]) -> Vec<FileReport> {
    changes
        .iter()
        .map(|c| FileReport {
            path: c.desired.path.to_string(),
            action: c.action,
            diff: if c.action == Action::Unchanged {
                String::new()
            } else {
                c.unified_diff()
            },
        })
        .collect()
}
