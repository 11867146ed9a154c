//! The lock file beside the inventory (`home.lock.yaml` for `home.yaml`): every address handed
//! out so far, so that allocation is stable across edits. Meant to be committed, like
//! `Cargo.lock`. Written only when its content changes.

use std::net::Ipv4Addr;
use std::path::Path;

use indexmap::IndexMap;
use ipnet::Ipv4Net;
use serde::Deserialize;

use super::schema::S;
use super::validate::{Diags, loc};
use crate::error::{Error, Result};

/// Addresses recorded by earlier runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// Per site (in file order): its block and its nodes' addresses.
    pub sites: IndexMap<String, LockSite>,
}

/// One site's recorded addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockSite {
    /// The site's block.
    pub wireguard_cidr: Option<Ipv4Net>,
    /// Node name to WireGuard address.
    pub nodes: IndexMap<String, Ipv4Addr>,
    /// The whole site was removed: its block is never handed out again.
    pub retired: bool,
    /// Addresses of removed nodes, by name: never handed out again.
    pub retired_nodes: IndexMap<String, Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: S<u32>,
    #[serde(default)]
    sites: IndexMap<String, Option<RawLockSite>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockSite {
    #[serde(default)]
    wireguard_cidr: Option<S<String>>,
    #[serde(default)]
    nodes: IndexMap<String, S<String>>,
    #[serde(default)]
    retired: Option<S<bool>>,
    #[serde(default)]
    retired_nodes: IndexMap<String, S<String>>,
}

/// A lock file that is not UTF-8 text is an invalid inventory (it is part of it), located at
/// the first byte that is not.
fn not_utf8(path: &Path, bytes: &[u8], e: &std::string::FromUtf8Error) -> Error {
    let at = e.utf8_error().valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() as u32 + 1;
    let column = (at
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)) as u32
        + 1;
    let mut d = Diags::new(path);
    d.error(
        super::Loc { line, column },
        "",
        format!(
            "the lock file is not valid UTF-8 text (byte {at}): restore it from version control"
        ),
    );
    Error::Invalid(d.list)
}

const HEADER: &str = "# wgprov lock file: the WireGuard addresses handed out so far.\n\
# Commit it beside the inventory; wgprov keeps these addresses stable across edits.\n";

impl Lock {
    /// Reads the lock file at `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Lock> {
        let bytes = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let text = String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), &e))?;
        Self::parse(path, &text)
    }

    /// Parses lock-file text, locating every bad value.
    pub fn parse(path: &Path, text: &str) -> Result<Lock> {
        if text.trim().lines().all(|l| l.trim_start().starts_with('#')) {
            return Ok(Lock::default());
        }
        let raw: RawLock = super::parse_yaml(path, text)?;
        let mut d = Diags::new(path);
        if raw.version.value != 1 {
            d.error(
                loc(&raw.version),
                "version",
                format!(
                    "lock file version {} is not understood by this wgprov (1)",
                    raw.version.value
                ),
            );
        }
        let mut lock = Lock::default();
        for (site, rs) in raw.sites {
            let rs = rs.unwrap_or(RawLockSite {
                wireguard_cidr: None,
                nodes: IndexMap::new(),
                retired: None,
                retired_nodes: IndexMap::new(),
            });
            let mut ls = LockSite {
                retired: rs.retired.as_ref().is_some_and(|r| r.value),
                ..Default::default()
            };
            if let Some(c) = &rs.wireguard_cidr {
                match c.value.parse::<Ipv4Net>() {
                    Ok(n) => ls.wireguard_cidr = Some(n),
                    Err(_) => d.error(
                        loc(c),
                        format!("sites.{site}.wireguard_cidr"),
                        format!("`{}` is not an IPv4 CIDR", c.value),
                    ),
                }
            }
            for (field, raw, out) in [
                ("nodes", rs.nodes, &mut ls.nodes),
                ("retired_nodes", rs.retired_nodes, &mut ls.retired_nodes),
            ] {
                for (node, ip) in raw {
                    match ip.value.parse::<Ipv4Addr>() {
                        Ok(a) => {
                            out.insert(node, a);
                        }
                        Err(_) => d.error(
                            loc(&ip),
                            format!("sites.{site}.{field}.{node}"),
                            format!("`{}` is not an IPv4 address", ip.value),
                        ),
                    }
                }
            }
            lock.sites.insert(site, ls);
        }
        if d.has_errors() {
            return Err(Error::Invalid(d.list));
        }
        Ok(lock)
    }

    /// The file's text: stable order (inventory order), a header saying what it is.
    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        out.push_str("version: 1\nsites:");
        if self.sites.is_empty() {
            out.push_str(" {}\n");
            return out;
        }
        out.push('\n');
        for (name, s) in &self.sites {
            out.push_str(&format!("  {name}:\n"));
            if let Some(c) = s.wireguard_cidr {
                out.push_str(&format!("    wireguard_cidr: {c}\n"));
            }
            if s.retired {
                out.push_str("    retired: true\n");
            }
            for (field, map) in [("nodes", &s.nodes), ("retired_nodes", &s.retired_nodes)] {
                if !map.is_empty() {
                    out.push_str(&format!("    {field}:\n"));
                    for (n, ip) in map {
                        out.push_str(&format!("      {n}: {ip}\n"));
                    }
                }
            }
        }
        out
    }

    /// Writes the lock to `path` when its text differs from what is there; says whether it wrote.
    pub fn write_if_changed(&self, path: &Path) -> Result<bool> {
        let text = self.render();
        if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, &text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parse_round_trip() {
        let mut lock = Lock::default();
        let mut s = LockSite {
            wireguard_cidr: Some("10.100.0.0/24".parse().unwrap()),
            ..Default::default()
        };
        s.nodes
            .insert("node1".into(), "10.100.0.1".parse().unwrap());
        s.nodes
            .insert("node2".into(), "10.100.0.2".parse().unwrap());
        lock.sites.insert("home".into(), s);
        lock.sites.insert("empty".into(), LockSite::default());
        let mut gone = LockSite {
            wireguard_cidr: Some("10.100.2.0/24".parse().unwrap()),
            retired: true,
            ..Default::default()
        };
        gone.retired_nodes
            .insert("cabin1".into(), "10.100.2.1".parse().unwrap());
        lock.sites.insert("cabin".into(), gone);
        let text = lock.render();
        assert_eq!(Lock::parse(Path::new("x.lock.yaml"), &text).unwrap(), lock);
    }

    #[test]
    fn bad_lock_value_is_located() {
        let text = "version: 1\nsites:\n  home:\n    wireguard_cidr: 10.100.0.0/99\n";
        let err = Lock::parse(Path::new("h.lock.yaml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("h.lock.yaml:4:21: sites.home.wireguard_cidr:"),
            "{msg}"
        );
    }
}
