//! Desired files against what a host has: the change set (an empty one means "unchanged", which
//! is what idempotency is) and unified diffs with private keys shown as `(redacted)`.

use serde::Serialize;
use similar::TextDiff;

use crate::desired::{DesiredFile, FileState};
use crate::formats::state::FileFact;
use crate::formats::wgconf::redact;

/// What happens to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It does not exist yet.
    Created,
    /// Its content or mode changes.
    Updated,
    /// It is removed.
    Removed,
    /// Nothing to do.
    Unchanged,
}

impl Action {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Removed => "removed",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One file's comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The desired file.
    pub desired: DesiredFile,
    /// What the host has.
    pub current: FileFact,
    /// What happens.
    pub action: Action,
}

impl Change {
    /// The unified diff, private keys redacted; a note when only a key or the mode changed.
    pub fn unified_diff(&self) -> String {
        let old = self.current.content().unwrap_or("");
        let (new, mode) = match &self.desired.state {
            FileState::Present { content, mode } => (content.as_str(), Some(*mode)),
            FileState::Absent => ("", None),
        };
        let (old_r, new_r) = (redact(old), redact(new));
        let path = &self.desired.path;
        let mut out = TextDiff::from_lines(&old_r, &new_r)
            .unified_diff()
            .context_radius(3)
            .header(
                &if matches!(self.current, FileFact::Absent) {
                    "/dev/null".to_string()
                } else {
                    format!("a{path}")
                },
                &if mode.is_none() {
                    "/dev/null".to_string()
                } else {
                    format!("b{path}")
                },
            )
            .to_string();
        if old_r == new_r && old != new {
            out.push_str(&format!(
                "--- a{path}\n+++ b{path}\n  (a private or preshared key changes; shown as (redacted))\n"
            ));
        }
        if let (FileFact::Present { mode: m0, .. }, Some(m1)) = (&self.current, mode)
            && *m0 != m1
        {
            out.push_str(&format!("  mode {m0:04o} -> {m1:04o}\n"));
        }
        out
    }
}

/// Compares each desired file with the host's.
pub fn compare(desired: &[DesiredFile], current: &dyn Fn(&str) -> FileFact) -> Vec<Change> {
    desired
        .iter()
        .map(|d| {
            let cur = current(&d.path);
            let action = match (&d.state, &cur) {
                (FileState::Present { .. }, FileFact::Absent) => Action::Created,
                (
                    FileState::Present { content, mode },
                    FileFact::Present {
                        content: c,
                        mode: m,
                    },
                ) => {
                    if content == c && mode == m {
                        Action::Unchanged
                    } else {
                        Action::Updated
                    }
                }
                (FileState::Absent, FileFact::Present { .. }) => Action::Removed,
                (FileState::Absent, FileFact::Absent) => Action::Unchanged,
            };
            Change {
                desired: d.clone(),
                current: cur,
                action,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str, mode: u32) -> DesiredFile {
        DesiredFile {
            role: "wireguard".into(),
            path: crate::shell::RemotePath::new("/etc/wireguard/wg0.conf").unwrap(),
            state: FileState::Present {
                content: content.into(),
                mode,
            },
            notify: vec![crate::shell::Handler::Wireguard],
        }
    }

    #[test]
    fn actions_and_redacted_diffs() {
        let old = "[Interface]\nPrivateKey = OLDSECRET\nListenPort = 51820\n";
        let new = "[Interface]\nPrivateKey = NEWSECRET\nListenPort = 51821\n";
        let cur = FileFact::Present {
            mode: 0o600,
            content: old.into(),
        };
        let c = &compare(&[file(new, 0o600)], &|_| cur.clone())[0];
        assert_eq!(c.action, Action::Updated);
        let d = c.unified_diff();
        assert!(
            d.contains("-ListenPort = 51820") && d.contains("+ListenPort = 51821"),
            "{d}"
        );
        assert!(!d.contains("SECRET"), "{d}");
        let same = &compare(&[file(old, 0o600)], &|_| cur.clone())[0];
        assert_eq!(same.action, Action::Unchanged);
        let mode = &compare(&[file(old, 0o644)], &|_| cur.clone())[0];
        assert_eq!(mode.action, Action::Updated);
        assert!(mode.unified_diff().contains("mode 0600 -> 0644"));
        let only_key = &compare(&[file(&old.replace("OLD", "NEW"), 0o600)], &|_| cur.clone())[0];
        assert!(
            only_key
                .unified_diff()
                .contains("private or preshared key changes")
        );
        let created = &compare(&[file(new, 0o600)], &|_| FileFact::Absent)[0];
        assert_eq!(created.action, Action::Created);
        assert!(created.unified_diff().starts_with("--- /dev/null"));
    }
}
