//! Facts in one round trip: one shell script gathers everything a host needs (os-release, the
//! managed files with their modes, `wg show dump`, which tools and init system it has), each
//! section behind a delimiter, file contents in base64 so that they come back byte for byte.
//! The parser turns that output into [`Facts`]. The private key in `wg show dump` is dropped as
//! soon as it is parsed.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::inventory::OsFamily;
use crate::shell::{InterfaceName, PATH_PRELUDE, RemotePath, sh_quote};
use crate::topology::keys::{KeyError, PrivateKey};

/// The units that run a kubelet, of every Kubernetes flavor.
pub const KUBE_UNITS: &[&str] = &["kubelet", "k3s", "k3s-agent", "rke2-server", "rke2-agent"];

/// Delimiter that starts a section of the facts output.
pub const MARK: &str = "@@WGPROV-FACT@@";

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
                .field("content", &crate::facts::wgconf::redact(content))
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
    /// The private key an OpenWrt router's uci holds for the interface
    /// (`network.<iface>.private_key`, section [`UCI_PRIVATE_KEY`]): `Err` when it is malformed.
    /// Kept as a key, which never prints itself.
    pub uci_private_key: Option<Result<PrivateKey, KeyError>>,
    /// Sections added by a caller's extra facts (a managed router's), by name.
    pub extra: BTreeMap<String, String>,
}

/// The facts section that carries an OpenWrt router's uci private key, parsed into
/// [`Facts::uci_private_key`] and never kept as text.
pub const UCI_PRIVATE_KEY: &str = "uci_private_key";

/// The gathering script for `iface` and the given file paths. It spawns as few processes as it
/// can (they are what a facts round trip costs on the target): shell builtins for os-release and
/// the tool checks, one `stat` for every mode, one `base64` per present file, one `wg show`.
pub fn script(iface: &InterfaceName, paths: &[RemotePath]) -> String {
    script_with(iface, paths, "")
}

/// [`script`] with `extra` sections (shell text using `sec NAME`), parsed into [`Facts::extra`].
pub fn script_with(iface: &InterfaceName, paths: &[RemotePath], extra: &str) -> String {
    let mut s = String::from(PATH_PRELUDE);
    s.push_str(&format!(
        "M='{MARK}'\nsec() {{ printf '%s %s\\n' \"$M\" \"$*\"; }}\n"
    ));
    s.push_str(
        "sec os_release\nif [ -r /etc/os-release ]; then while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < /etc/os-release; fi\n",
    );
    let quoted: Vec<String> = paths.iter().map(|p| sh_quote(p)).collect();
    let list = quoted.join(" ");
    s.push_str(&format!(
        "set --\nfor f in {list}; do [ -f \"$f\" ] && set -- \"$@\" \"$f\"; done\n\
         sec modes\nif [ $# -gt 0 ]; then stat -c '%a %n' -- \"$@\"; fi\n\
         for f in {list}; do\n  sec file \"$f\"\n  if [ -f \"$f\" ]; then base64 -w0 < \"$f\"; echo; else echo absent; fi\ndone\n"
    ));
    s.push_str(&format!(
        "sec wg\nwg show {} dump 2>/dev/null\n",
        sh_quote(iface)
    ));
    s.push_str("sec tools\nfor t in systemctl wg wg-quick kubelet iptables sudo resolvconf nft conntrack; do command -v $t >/dev/null 2>&1 && printf '%s ' $t; done; echo\n");
    s.push_str("sec systemd\nif [ -d /run/systemd/system ]; then echo yes; else echo no; fi\n");
    // shell tests only: a unit is installed when its file is in one of systemd's unit paths
    s.push_str(&format!(
        "sec units\nfor u in {units}; do for d in /etc/systemd/system /run/systemd/system /usr/local/lib/systemd/system /lib/systemd/system /usr/lib/systemd/system; do if [ -e \"$d/$u.service\" ]; then printf '%s ' \"$u\"; break; fi; done; done; echo\n\
         sec wg_enabled\nif [ -e {wants} ]; then echo yes; else echo no; fi\n",
        units = KUBE_UNITS.join(" "),
        wants = sh_quote(&format!(
            "/etc/systemd/system/multi-user.target.wants/wg-quick@{iface}.service"
        )),
    ));
    s.push_str(extra);
    s.push_str("sec now\ndate +%s\nsec end\n");
    s
}

fn b64(s: &str) -> Result<String, String> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| format!("bad base64 in facts: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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

/// Parses the output of [`script`].
pub fn parse(output: &str) -> Result<Facts, String> {
    let mut facts = Facts::default();
    let mut complete = false;
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix(MARK) {
            sections.push((rest.trim_start().to_string(), Vec::new()));
        } else if let Some(last) = sections.last_mut() {
            last.1.push(line);
        }
    }
    for (head, body) in sections {
        let value = body.join("\n");
        let (name, arg) = head.split_once(' ').unwrap_or((head.as_str(), ""));
        match name {
            "os_release" => (facts.os_family, facts.os_id) = os_family_of(&value),
            "modes" => {
                for l in value.lines() {
                    if let Some((m, path)) = l.split_once(' ') {
                        let m = u32::from_str_radix(m, 8)
                            .map_err(|_| format!("bad mode for {path}"))?;
                        modes.insert(path.to_string(), m);
                    }
                }
            }
            "file" => {
                let v = value.trim();
                let fact = if v == "absent" {
                    FileFact::Absent
                } else {
                    FileFact::Present {
                        mode: *modes.get(arg).ok_or_else(|| format!("no mode for {arg}"))?,
                        content: b64(v)?,
                    }
                };
                facts.files.insert(arg.to_string(), fact);
            }
            "wg" => facts.wg = parse_wg_dump(&value),
            "tools" => facts.tools = value.split_whitespace().map(str::to_string).collect(),
            "systemd" => facts.systemd = value.trim() == "yes",
            "units" => facts.units = value.split_whitespace().map(str::to_string).collect(),
            "wg_enabled" => facts.wg_enabled = value.trim() == "yes",
            "now" => facts.now = value.trim().parse().unwrap_or(0),
            "end" => complete = true,
            UCI_PRIVATE_KEY => {
                let k = value.trim();
                facts.uci_private_key = (!k.is_empty()).then(|| PrivateKey::from_base64(k));
            }
            other => {
                facts.extra.insert(other.to_string(), value);
            }
        }
    }
    if !complete {
        return Err("the facts script did not finish".into());
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_script_prints() {
        let conf = "[Interface]\nPrivateKey = SECRET\n";
        let out = format!(
            "{MARK} os_release\nID=rocky\nID_LIKE=\"rhel centos fedora\"\n{MARK} modes\n600 /etc/wireguard/wg0.conf\n{MARK} file /etc/wireguard/wg0.conf\n{}\n{MARK} file /etc/default/kubelet\nabsent\n{MARK} wg\nPRIV\tPUB\t51820\toff\nPEER\t(none)\t1.2.3.4:51820\t10.100.0.2/32\t1699999990\t100\t200\t25\n{MARK} tools\nwg wg-quick iptables \n{MARK} systemd\nno\n{MARK} now\n1700000000\n{MARK} end\n",
            STANDARD.encode(conf),
        );
        let f = parse(&out).unwrap();
        assert_eq!(f.os_family, Some(OsFamily::Redhat));
        assert_eq!(
            f.files["/etc/wireguard/wg0.conf"],
            FileFact::Present {
                mode: 0o600,
                content: conf.into()
            }
        );
        assert_eq!(f.files["/etc/default/kubelet"], FileFact::Absent);
        let wg = f.wg.clone().unwrap();
        assert_eq!((wg.public_key.as_str(), wg.listen_port), ("PUB", 51820));
        assert_eq!(wg.peers[0].endpoint.as_deref(), Some("1.2.3.4:51820"));
        assert_eq!(wg.peers[0].latest_handshake, 1699999990);
        assert!(
            !format!("{wg:?}").contains("PRIV"),
            "the dump's private key is dropped"
        );
        assert!(f.tools.contains("wg-quick") && !f.systemd && f.now == 1_700_000_000);
    }

    #[test]
    fn an_openwrt_routers_uci_key_is_parsed_into_a_key_that_never_prints() {
        let key = crate::topology::keys::PrivateKey::generate();
        let b64 = key.expose_base64();
        let out =
            |k: &str| format!("{MARK} {UCI_PRIVATE_KEY}\n{k}\n{MARK} router_hub\nok\n{MARK} end\n");
        let f = parse(&out(&b64)).unwrap();
        assert_eq!(f.uci_private_key, Some(Ok(key)));
        assert!(!format!("{f:?}").contains(b64.as_str()), "{f:?}");
        assert!(!f.extra.contains_key(UCI_PRIVATE_KEY));
        assert_eq!(f.extra["router_hub"], "ok");
        assert_eq!(parse(&out("")).unwrap().uci_private_key, None);
        assert!(matches!(
            parse(&out("not-a-key")).unwrap().uci_private_key,
            Some(Err(_))
        ));
    }

    #[test]
    fn truncated_output_is_an_error() {
        assert!(parse(&format!("{MARK} os_release\n\n")).is_err());
    }
}
