//! What a host has, as wgprov reads it: its files (mode and content), its live interface as
//! `wg show dump` prints it, its OS family from os-release, its tools and init system. The
//! parsers of those formats live here; gathering them is the facts script's job.

use std::collections::{BTreeMap, BTreeSet};

use crate::formats::kubelet::OsFamily;
use crate::keys::{KeyError, PrivateKey};

/// A file as found on the host. `Debug` shows it with private keys redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum FileFact {
    /// Not there.
    Absent,
    /// There, with its mode and content.
    Present {
        /// Permission bits.
        mode: u32,
        /// Content (lossy UTF-8 when the bytes were not text).
        content: String,
    },
}

impl std::fmt::Debug for FileFact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileFact::Absent => f.write_str("Absent"),
            FileFact::Present { mode, content } => f
                .debug_struct("Present")
                .field("mode", &format_args!("{mode:o}"))
                .field("content", &crate::formats::wgconf::redact(content))
                .finish(),
        }
    }
}

impl FileFact {
    /// The content, when present.
    pub fn content(&self) -> Option<&str> {
        match self {
            FileFact::Present { content, .. } => Some(content),
            FileFact::Absent => None,
        }
    }
}

/// One peer as `wg show dump` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// Base64 public key.
    pub public_key: String,
    /// Where its packets come from (or `(none)`).
    pub endpoint: Option<String>,
    /// AllowedIPs.
    pub allowed_ips: Vec<String>,
    /// Unix time of the last handshake (0: never).
    pub latest_handshake: u64,
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
    /// Keepalive seconds (0: off).
    pub keepalive: u32,
}

/// The live interface as `wg show <iface> dump` reports it (private key dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgState {
    /// The interface's public key.
    pub public_key: String,
    /// Its listen port.
    pub listen_port: u16,
    /// Its peers.
    pub peers: Vec<PeerState>,
}

/// Everything gathered from one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// OS family from /etc/os-release, when recognised.
    pub os_family: Option<OsFamily>,
    /// `ID` from /etc/os-release.
    pub os_id: String,
    /// The files asked about, by path.
    pub files: BTreeMap<String, FileFact>,
    /// The live interface, when it exists.
    pub wg: Option<WgState>,
    /// Tools found on PATH (systemctl, wg, wg-quick, kubelet, iptables, sudo, resolvconf).
    pub tools: BTreeSet<String>,
    /// True when systemd is the running init.
    pub systemd: bool,
    /// Which units of the Kubernetes flavors (kubelet, k3s, k3s-agent, rke2-server,
    /// rke2-agent) are installed.
    pub units: BTreeSet<String>,
    /// True when `wg-quick@<iface>` is enabled (systemd only).
    pub wg_enabled: bool,
    /// Unix time on the host when the facts were read.
    pub now: u64,
    /// When the controller received them (with `now`, the host's clock at any later moment,
    /// without asking the host again).
    pub read_at: Option<std::time::Instant>,
    /// The private key an OpenWrt router's uci holds for the interface
    /// (`network.<iface>.private_key`, the facts section `uci_private_key`): `Err` when it is malformed.
    /// Kept as a key, which never prints itself.
    pub uci_private_key: Option<Result<PrivateKey, KeyError>>,
    /// Sections added by a caller's extra facts (a managed router's), by name.
    pub extra: BTreeMap<String, String>,
}

/// The OS family an os-release file describes.
pub fn os_family_of(os_release: &str) -> (Option<OsFamily>, String) {
    let mut id = String::new();
    let mut like = String::new();
    for l in os_release.lines() {
        if let Some((k, v)) = l.split_once('=') {
            let v = v.trim().trim_matches('"').to_ascii_lowercase();
            match k.trim() {
                "ID" => id = v,
                "ID_LIKE" => like = v,
                _ => {}
            }
        }
    }
    let words: Vec<&str> = id
        .split_whitespace()
        .chain(like.split_whitespace())
        .collect();
    let fam = if words.iter().any(|w| ["debian", "ubuntu"].contains(w)) {
        Some(OsFamily::Debian)
    } else if words
        .iter()
        .any(|w| ["rhel", "fedora", "centos", "rocky", "almalinux", "redhat"].contains(w))
    {
        Some(OsFamily::Redhat)
    } else {
        None
    };
    (fam, id)
}

/// Parses `wg show <iface> dump`; the interface's private key is read past, never kept.
pub fn parse_wg_dump(text: &str) -> Option<WgState> {
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next()?.split('\t').collect();
    if first.len() < 3 {
        return None;
    }
    let mut st = WgState {
        public_key: first[1].to_string(),
        listen_port: first[2].parse().unwrap_or(0),
        peers: Vec::new(),
    };
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 8 {
            continue;
        }
        st.peers.push(PeerState {
            public_key: f[0].to_string(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_string()),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(str::to_string).collect()
            },
            latest_handshake: f[4].parse().unwrap_or(0),
            rx: f[5].parse().unwrap_or(0),
            tx: f[6].parse().unwrap_or(0),
            keepalive: f[7].parse().unwrap_or(0),
        });
    }
    Some(st)
}
