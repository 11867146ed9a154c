//! Facts in one round trip: one shell script gathers everything a host needs (os-release, the
//! managed files with their modes, `wg show dump`, which tools and init system it has), each
//! section behind a delimiter, file contents in base64 so that they come back byte for byte.
//! The parser turns that output into [`Facts`]. The private key in `wg show dump` is dropped as
//! soon as it is parsed.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub use crate::formats::state::{Facts, FileFact, PeerState, WgState, os_family_of, parse_wg_dump};
use crate::keys::PrivateKey;
use crate::shell::{InterfaceName, PATH_PRELUDE, RemotePath, sh_quote};

/// The units that run a kubelet, of every Kubernetes flavor.
pub const KUBE_UNITS: &[&str] = &["kubelet", "k3s", "k3s-agent", "rke2-server", "rke2-agent"];

/// Delimiter that starts a section of the facts output.
pub const MARK: &str = "@@WGPROV-FACT@@";

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
    let mut s = String::from("# wgprov:facts\n");
    s.push_str(PATH_PRELUDE);
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

/// Why a host's facts could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    /// A file's content did not decode.
    #[error("bad base64 in facts: {0}")]
    Base64(String),
    /// A file's mode did not parse.
    #[error("bad mode for {0}")]
    BadMode(String),
    /// A file came without its mode.
    #[error("no mode for {0}")]
    NoMode(String),
    /// The output ended before the script's last section.
    #[error("the facts script did not finish")]
    Unfinished,
    /// The script exited non-zero.
    #[error("facts script exited {status}: {stderr}")]
    Exited {
        /// Its exit status.
        status: u32,
        /// What it said on stderr.
        stderr: String,
    },
    /// The connection failed while it ran.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

fn b64(s: &str) -> Result<String, FactsError> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|e| FactsError::Base64(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses the output of [`script`].
pub fn parse(output: &str) -> Result<Facts, FactsError> {
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
                            .map_err(|_| FactsError::BadMode(path.to_string()))?;
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
                        mode: *modes
                            .get(arg)
                            .ok_or_else(|| FactsError::NoMode(arg.to_string()))?,
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
        return Err(FactsError::Unfinished);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::kubelet::OsFamily;

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
        let key = crate::keys::PrivateKey::generate();
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
