//! SSH over russh: host keys checked against known_hosts (an unknown host refused unless
//! `accept_new_host_keys`, a changed key always refused), keys from the identity file or the
//! ssh-agent (then the default key files), `proxy_jump` through another node with direct-tcpip,
//! connect and command timeouts, keepalives so that a dead connection fails instead of hanging.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use super::{ExecOutput, Target, Transport, TransportError};

/// Settings for every connection of a run.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// Record unknown host keys instead of refusing them (trust on first use).
    pub accept_new_host_keys: bool,
    /// TCP connect + handshake + authentication.
    pub connect_timeout: Duration,
    /// One remote command.
    pub command_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(120),
        }
    }
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(rest),
        None => PathBuf::from(p),
    }
}

/// What the host-key check concluded, kept for a clear error message.
#[derive(Clone, Debug, Default)]
enum KeyVerdict {
    #[default]
    NotChecked,
    Known,
    Learned,
    Unknown(String),
    Changed(String),
    Error(String),
}

struct Checker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    verdict: Arc<Mutex<KeyVerdict>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().unwrap() = KeyVerdict::Error(
                "the server offered a certificate; wgprov checks plain host keys".into(),
            );
            return Ok(false);
        };
        let fp = key.fingerprint(Default::default()).to_string();
        let verdict = match russh::keys::check_known_hosts_path(
            &self.host,
            self.port,
            key,
            &self.known_hosts,
        ) {
            Ok(true) => KeyVerdict::Known,
            Ok(false) if self.accept_new => {
                match russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                ) {
                    Ok(()) => KeyVerdict::Learned,
                    Err(e) => KeyVerdict::Error(format!(
                        "recording the host key in {}: {e}",
                        self.known_hosts.display()
                    )),
                }
            }
            Ok(false) => KeyVerdict::Unknown(format!(
                "{}:{} is not in {} (key {fp}); verify it and add it, or run once with --accept-new-host-keys",
                self.host,
                self.port,
                self.known_hosts.display()
            )),
            Err(russh::keys::Error::KeyChanged { line }) => KeyVerdict::Changed(format!(
                "THE HOST KEY OF {}:{} HAS CHANGED (now {fp}; {} line {line} has another). Someone may be intercepting the connection (man-in-the-middle), or the host was reinstalled. Refused: check the new key out of band, then fix line {line}",
                self.host,
                self.port,
                self.known_hosts.display()
            )),
            Err(e) => KeyVerdict::Error(format!("reading {}: {e}", self.known_hosts.display())),
        };
        let ok = matches!(verdict, KeyVerdict::Known | KeyVerdict::Learned);
        *self.verdict.lock().unwrap() = verdict;
        Ok(ok)
    }
}

/// Private keys loaded once per run, shared by every host that uses them. Each key file is read
/// (and its passphrase asked) exactly once, however many hosts ask for it at the same moment.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<PathBuf, KeyCell>>,
}

type KeyCell = Arc<std::sync::OnceLock<Result<Arc<PrivateKey>, KeyFileError>>>;

/// Why a private key file could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read or decoded.
    #[error("{path}: {why}")]
    Unreadable {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// It is encrypted and the passphrase given did not open it.
    #[error("{path}: {why} (wrong passphrase?)")]
    WrongPassphrase {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// It is encrypted, and there is neither a passphrase in the environment nor a terminal.
    #[error("{path} is encrypted: set WGPROV_KEY_PASSPHRASE")]
    NoPassphrase {
        /// The file.
        path: String,
    },
}

/// Why authentication failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The SSH protocol failed on the way.
    #[error("{0}")]
    Protocol(String),
    /// The server refused the key named.
    #[error("the server refused the key {key} for user {user}")]
    Refused {
        /// The identity file.
        key: String,
        /// The login user.
        user: String,
    },
    /// No key of the agent or the default files was accepted.
    #[error("no key was accepted for user {user} (ssh-agent: {agent}; tried {tried})")]
    NoKeyAccepted {
        /// The login user.
        user: String,
        /// Whether an agent ran.
        agent: &'static str,
        /// The default key files tried.
        tried: String,
    },
}

impl KeyCache {
    /// Loads `path`, asking for its passphrase once (`WGPROV_KEY_PASSPHRASE`, else the terminal).
    pub fn load(&self, path: &Path) -> Result<Arc<PrivateKey>, KeyFileError> {
        self.load_with(path, load_key_file)
    }

    /// [`KeyCache::load`] with the loader given: it runs at most once per path; everyone else
    /// asking for that path meanwhile waits for its result.
    pub fn load_with(
        &self,
        path: &Path,
        loader: impl FnOnce(&Path) -> Result<PrivateKey, KeyFileError>,
    ) -> Result<Arc<PrivateKey>, KeyFileError> {
        let cell = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        cell.get_or_init(|| loader(path).map(Arc::new)).clone()
    }
}

fn load_key_file(path: &Path) -> Result<PrivateKey, KeyFileError> {
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let pass = match std::env::var("WGPROV_KEY_PASSPHRASE") {
                Ok(p) => p,
                Err(_) => ask_passphrase(path)?,
            };
            russh::keys::load_secret_key(path, Some(&pass)).map_err(|e| {
                KeyFileError::WrongPassphrase {
                    path: path.display().to_string(),
                    why: e.to_string(),
                }
            })
        }
        Err(e) => Err(KeyFileError::Unreadable {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}

fn ask_passphrase(path: &Path) -> Result<String, KeyFileError> {
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| KeyFileError::NoPassphrase {
            path: path.display().to_string(),
        })?;
    let _ = std::process::Command::new("stty")
        .arg("-echo")
        .stdin(tty.try_clone().unwrap())
        .status();
    let mut w = tty.try_clone().unwrap();
    let _ = write!(w, "passphrase for {}: ", path.display());
    let mut line = String::new();
    let r = std::io::BufReader::new(tty.try_clone().unwrap()).read_line(&mut line);
    let _ = std::process::Command::new("stty")
        .arg("echo")
        .stdin(tty)
        .status();
    let _ = writeln!(w);
    r.map_err(|e| KeyFileError::Unreadable {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// One authenticated connection to a host.
pub struct SshSession {
    handle: Handle<Checker>,
    /// The jump host's connection, kept alive while this one is used.
    _jump: Option<Arc<SshSession>>,
    become_root: bool,
    command_timeout: Duration,
    /// How long connecting took.
    pub connect_time: Duration,
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        // a dead peer is noticed within ~45 s even while a command waits
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

/// Connects to `ssh` (reaching it through `jump` when given), checks its host key and
/// authenticates.
pub async fn connect(
    ssh: &Target,
    jump: Option<Arc<SshSession>>,
    keys: &KeyCache,
    opts: &SshOptions,
) -> Result<SshSession, TransportError> {
    let started = std::time::Instant::now();
    let fut = connect_inner(ssh, jump, keys, opts);
    let mut s = tokio::time::timeout(opts.connect_timeout, fut)
        .await
        .map_err(|_| {
            TransportError::Unreachable(format!(
                "{}:{}: no answer within {} s",
                ssh.host,
                ssh.port,
                opts.connect_timeout.as_secs()
            ))
        })??;
    s.connect_time = started.elapsed();
    Ok(s)
}

/// TCP to `host:port`. "No route to host" is also what an unanswered neighbour (ARP) lookup
/// gives, which on a loaded LAN is transient: it is tried twice more (after 200 ms, then
/// 400 ms), within the connect timeout that bounds the whole connection — a host that is truly
/// gone is still reported in a few seconds. A refused connection is an answer: not retried.
async fn tcp_connect(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut wait = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        match tokio::net::TcpStream::connect((host, port)).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if tries < 3 && e.raw_os_error() == Some(libc::EHOSTUNREACH) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn connect_inner(
    ssh: &Target,
    jump: Option<Arc<SshSession>>,
    keys: &KeyCache,
    opts: &SshOptions,
) -> Result<SshSession, TransportError> {
    let verdict = Arc::new(Mutex::new(KeyVerdict::default()));
    let checker = Checker {
        host: ssh.host.clone(),
        port: ssh.port,
        known_hosts: expand_home(&ssh.known_hosts),
        accept_new: opts.accept_new_host_keys,
        verdict: verdict.clone(),
    };
    let unreachable =
        |e: String| TransportError::Unreachable(format!("{}:{}: {e}", ssh.host, ssh.port));
    let result = match &jump {
        None => {
            let tcp = tcp_connect(&ssh.host, ssh.port)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            client::connect_stream(config(), tcp, checker).await
        }
        Some(j) => {
            let ch = j
                .handle
                .channel_open_direct_tcpip(ssh.host.clone(), ssh.port as u32, "127.0.0.1", 0)
                .await
                .map_err(|e| unreachable(format!("through the jump host: {e}")))?;
            client::connect_stream(config(), ch.into_stream(), checker).await
        }
    };
    let mut handle = match result {
        Ok(h) => h,
        Err(e) => {
            return Err(match verdict.lock().unwrap().clone() {
                KeyVerdict::Unknown(m) | KeyVerdict::Changed(m) | KeyVerdict::Error(m) => {
                    TransportError::HostKey(m)
                }
                _ => unreachable(e.to_string()),
            });
        }
    };
    authenticate(&mut handle, ssh, keys)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(SshSession {
        handle,
        _jump: jump,
        become_root: ssh.become_root,
        command_timeout: opts.command_timeout,
        connect_time: Duration::ZERO,
    })
}

async fn authenticate(
    handle: &mut Handle<Checker>,
    ssh: &Target,
    keys: &KeyCache,
) -> Result<(), AuthError> {
    let user = ssh.user.as_str();
    let protocol = |e: russh::Error| AuthError::Protocol(e.to_string());
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(protocol)?
        .flatten();
    if let Some(id) = &ssh.identity_file {
        let key = keys.load(&expand_home(id))?;
        let ok = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, rsa_hash))
            .await
            .map_err(protocol)?
            .success();
        return if ok {
            Ok(())
        } else {
            Err(AuthError::Refused {
                key: id.clone(),
                user: user.to_string(),
            })
        };
    }
    // the ssh-agent, then the default key files, as OpenSSH does
    if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
        && let Ok(ids) = agent.request_identities().await
    {
        for id in ids {
            let pk = id.public_key().into_owned();
            if let Ok(r) = handle
                .authenticate_publickey_with(user, pk, rsa_hash, &mut agent)
                .await
                && r.success()
            {
                return Ok(());
            }
        }
    }
    let mut tried = Vec::new();
    for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let path = expand_home(&format!("~/.ssh/{name}"));
        if !path.exists() {
            continue;
        }
        tried.push(path.display().to_string());
        let key = keys.load(&path)?;
        if handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, rsa_hash))
            .await
            .map_err(protocol)?
            .success()
        {
            return Ok(());
        }
    }
    Err(AuthError::NoKeyAccepted {
        user: user.to_string(),
        agent: if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            "none accepted"
        } else {
            "not running"
        },
        tried: if tried.is_empty() {
            "no default key files".into()
        } else {
            tried.join(", ")
        },
    })
}

impl SshSession {
    async fn exec(&self, command: &str, stdin: Vec<u8>) -> Result<ExecOutput, TransportError> {
        let lost = |e: String| TransportError::Lost(e);
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| lost(e.to_string()))?;
        ch.exec(true, command)
            .await
            .map_err(|e| lost(e.to_string()))?;
        if !stdin.is_empty() {
            ch.data_bytes(stdin)
                .await
                .map_err(|e| lost(e.to_string()))?;
        }
        ch.eof().await.map_err(|e| lost(e.to_string()))?;
        let mut out = ExecOutput {
            status: 255,
            ..Default::default()
        };
        // read until the channel closes, not just until the exit status: data may follow it
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = exit_status,
                _ => {}
            }
        }
        Ok(out)
    }
}

impl Transport for SshSession {
    async fn run_script_within(
        &self,
        script: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, TransportError> {
        self.run_owned_within(script.to_string(), timeout).await
    }

    async fn run_owned_within(
        &self,
        script: String,
        timeout: Duration,
    ) -> Result<ExecOutput, TransportError> {
        let command = if self.become_root {
            "sudo -n sh -s"
        } else {
            "sh -s"
        };
        tokio::time::timeout(timeout, self.exec(command, script.into_bytes()))
            .await
            .map_err(|_| {
                TransportError::Lost(format!("no answer within {} s", timeout.as_secs()))
            })?
    }

    async fn run_script(&self, script: &str) -> Result<ExecOutput, TransportError> {
        self.run_script_within(script, self.command_timeout).await
    }

    fn connect_time(&self) -> Duration {
        self.connect_time
    }

    async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passphrase_is_asked_once_even_when_many_hosts_need_the_key_at_once() {
        let cache = Arc::new(KeyCache::default());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[7u8; 32],
        ));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls, key) = (cache.clone(), calls.clone(), key.clone());
                std::thread::spawn(move || {
                    cache
                        .load_with(Path::new("/k/id_ed25519"), |_| {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(key)
                        })
                        .unwrap()
                })
            })
            .collect();
        let got: Vec<Arc<PrivateKey>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(got.iter().all(|k| Arc::ptr_eq(k, &got[0])));
    }
}
