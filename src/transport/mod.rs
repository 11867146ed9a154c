//! How wgprov reaches a host: one SSH connection per host ([`ssh`]), on which every step runs
//! as an exec with a script on stdin. [`Transport`] is all the rest of wgprov needs.

#[cfg(test)]
pub mod fake;
pub mod ssh;

use std::future::Future;
use std::time::Duration;

/// What one remote command returned. `Debug` shows sizes only: the output of a facts exec holds
/// the host's config (its private key) in base64.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status (255 when the command was killed or never reported one).
    pub status: u32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl std::fmt::Debug for ExecOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOutput")
            .field("status", &self.status)
            .field("stdout", &format_args!("{} bytes", self.stdout.len()))
            .field("stderr", &format_args!("{} bytes", self.stderr.len()))
            .finish()
    }
}

impl ExecOutput {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Standard error as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a host could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Could not connect or authenticate: the host is unreachable for this run.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The host key is unknown or changed: refused.
    #[error("host key refused: {0}")]
    HostKey(String),
    /// The connection broke or a command timed out.
    #[error("connection lost: {0}")]
    Lost(String),
}

/// Where and how to connect to one host, resolved before anything connects (defaults, the
/// inventory's layers and the OpenSSH config already applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub host: String,
    /// Login user.
    pub user: String,
    /// TCP port.
    pub port: u16,
    /// Private key file (`~` not yet expanded); `None`: the ssh-agent.
    pub identity_file: Option<String>,
    /// known_hosts file (`~` not yet expanded).
    pub known_hosts: String,
    /// Run as root through `sudo -n`.
    pub become_root: bool,
    /// Host to jump through (its name; the runner connects it first).
    pub proxy_jump: Option<String>,
}

/// Runs a shell script on a host: `script` is fed to `sh -s` on stdin (as root through
/// `sudo -n` when the host needs `become`).
pub trait Transport: Send + Sync {
    /// Runs the script within `timeout`; returns its output once the channel closes. A script
    /// that does not finish in time is reported as [`TransportError::Lost`].
    fn run_script_within(
        &self,
        script: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, TransportError>> + Send;

    /// [`Transport::run_script_within`] for a script handed over: the SSH transport sends its
    /// bytes as they are, without a copy (a wave's change scripts are each held once while
    /// every host of the wave is in flight).
    fn run_owned_within(
        &self,
        script: String,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, TransportError>> + Send {
        async move { self.run_script_within(&script, timeout).await }
    }

    /// Runs the script within the transport's default command timeout.
    fn run_script(
        &self,
        script: &str,
    ) -> impl Future<Output = Result<ExecOutput, TransportError>> + Send;

    /// How long connecting took (zero where that means nothing).
    fn connect_time(&self) -> Duration {
        Duration::ZERO
    }

    /// Closes the connection politely.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_printing_an_exec_output_never_shows_what_the_host_sent() {
        let o = ExecOutput {
            status: 0,
            stdout: b"PRIVATE\tPUBLIC\t51820\toff\n".to_vec(),
            stderr: b"oops".to_vec(),
        };
        let d = format!("{o:?}");
        assert!(!d.contains("PRIVATE") && !d.contains("oops"), "{d}");
        assert!(d.contains("stdout: 25 bytes"), "{d}");
    }
}
