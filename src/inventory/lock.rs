//! The lock file beside the inventory (`home.lock.yaml` for `home.yaml`): every address handed
//! out so far, so that allocation is stable across edits. Meant to be committed, like
//! `Cargo.lock`. Written only when its content changes. With dual stack it records the IPv6
//! block and addresses beside the IPv4 ones, and a change of the IPv6 plan that would move them
//! is refused ([`Lock::check_ip6`]).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use indexmap::IndexMap;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::schema::S;
use super::validate::{Diags, loc};
use super::{Loc, Network};
use crate::error::{Diagnostic, Error, Result};

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
    /// Dual stack: the site's IPv6 block.
    pub wireguard_cidr6: Option<At<Ipv6Net>>,
    /// Node name to WireGuard address.
    pub nodes: IndexMap<String, Ipv4Addr>,
    /// Dual stack: node name to IPv6 WireGuard address.
    pub nodes6: IndexMap<String, At<Ipv6Addr>>,
    /// The whole site was removed: its block is never handed out again.
    pub retired: bool,
    /// Addresses of removed nodes, by name: never handed out again.
    pub retired_nodes: IndexMap<String, Ipv4Addr>,
    /// Dual stack: IPv6 addresses of removed nodes, by name.
    pub retired_nodes6: IndexMap<String, At<Ipv6Addr>>,
}

/// A value the lock file records and where it is written (default: not read from a file).
/// Two are equal when their values are: where a value stands is not part of the lock.
#[derive(Clone, Copy, Debug, Default, Eq)]
pub struct At<T> {
    /// The value.
    pub value: T,
    /// Where the lock file has it.
    pub loc: Loc,
}

impl<T> At<T> {
    /// A value not read from a file.
    pub fn new(value: T) -> Self {
        At {
            value,
            loc: Loc::default(),
        }
    }
}

impl<T: PartialEq> PartialEq for At<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    version: S<u32>,
    #[serde(default)]
    sites: IndexMap<String, Option<RawLockSite>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLockSite {
    #[serde(default)]
    wireguard_cidr: Option<S<String>>,
    #[serde(default)]
    wireguard_cidr6: Option<S<String>>,
    #[serde(default)]
    nodes: IndexMap<String, S<String>>,
    #[serde(default)]
    nodes6: IndexMap<String, S<String>>,
    #[serde(default)]
    retired: Option<S<bool>>,
    #[serde(default)]
    retired_nodes: IndexMap<String, S<String>>,
    #[serde(default)]
    retired_nodes6: IndexMap<String, S<String>>,
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

/// One value of a site's entry (`field`, e.g. `nodes.node1`), parsed, or located when bad
/// (`what` says what it should be).
fn parse_value<T: std::str::FromStr>(
    d: &mut Diags,
    site: &str,
    field: &str,
    v: &S<String>,
    what: &str,
) -> Option<At<T>> {
    match v.value.parse::<T>() {
        Ok(value) => Some(At { value, loc: loc(v) }),
        Err(_) => {
            d.error(
                loc(v),
                format!("sites.{site}.{field}"),
                format!("`{}` is not {what}", v.value),
            );
            None
        }
    }
}

/// Every value of a `name: value` map of one site's entry (`field`), the bad ones located.
fn parse_map<T: std::str::FromStr>(
    d: &mut Diags,
    site: &str,
    field: &str,
    raw: IndexMap<String, S<String>>,
    what: &str,
) -> IndexMap<String, At<T>> {
    let mut out = IndexMap::new();
    for (node, v) in raw {
        if let Some(a) = parse_value(d, site, &format!("{field}.{node}"), &v, what) {
            out.insert(node, a);
        }
    }
    out
}

fn values<T>(m: IndexMap<String, At<T>>) -> IndexMap<String, T> {
    m.into_iter().map(|(k, v)| (k, v.value)).collect()
}

/// One site's entry. An IPv6 value stands beside the IPv4 one it mirrors: one without it is
/// an error (the lock file is wgprov's to write).
fn parse_site(d: &mut Diags, site: &str, rs: RawLockSite) -> LockSite {
    let ls = LockSite {
        retired: rs.retired.as_ref().is_some_and(|r| r.value),
        wireguard_cidr: rs.wireguard_cidr.and_then(|c| {
            parse_value::<Ipv4Net>(d, site, "wireguard_cidr", &c, "an IPv4 CIDR").map(|a| a.value)
        }),
        wireguard_cidr6: rs
            .wireguard_cidr6
            .and_then(|c| parse_value(d, site, "wireguard_cidr6", &c, "an IPv6 CIDR")),
        nodes: values(parse_map(d, site, "nodes", rs.nodes, "an IPv4 address")),
        nodes6: parse_map(d, site, "nodes6", rs.nodes6, "an IPv6 address"),
        retired_nodes: values(parse_map(
            d,
            site,
            "retired_nodes",
            rs.retired_nodes,
            "an IPv4 address",
        )),
        retired_nodes6: parse_map(
            d,
            site,
            "retired_nodes6",
            rs.retired_nodes6,
            "an IPv6 address",
        ),
    };
    if let Some(c) = &ls.wireguard_cidr6
        && ls.wireguard_cidr.is_none()
    {
        d.error(
            c.loc,
            format!("sites.{site}.wireguard_cidr6"),
            "an IPv6 block without the IPv4 block it mirrors (wireguard_cidr): delete this line",
        );
    }
    for (field, v6, v4) in [
        ("nodes6", &ls.nodes6, &ls.nodes),
        ("retired_nodes6", &ls.retired_nodes6, &ls.retired_nodes),
    ] {
        for (node, a) in v6.iter().filter(|(n, _)| !v4.contains_key(*n)) {
            d.error(
                a.loc,
                format!("sites.{site}.{field}.{node}"),
                format!(
                    "an IPv6 address without the IPv4 one it mirrors ({}.{node}): delete this line",
                    field.trim_end_matches('6')
                ),
            );
        }
    }
    ls
}

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
            let ls = parse_site(&mut d, &site, rs.unwrap_or_default());
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
            if let Some(c) = &s.wireguard_cidr6 {
                out.push_str(&format!("    wireguard_cidr6: {}\n", c.value));
            }
            if s.retired {
                out.push_str("    retired: true\n");
            }
            render_map(&mut out, "nodes", s.nodes.iter());
            render_map(
                &mut out,
                "nodes6",
                s.nodes6.iter().map(|(n, a)| (n, &a.value)),
            );
            render_map(&mut out, "retired_nodes", s.retired_nodes.iter());
            render_map(
                &mut out,
                "retired_nodes6",
                s.retired_nodes6.iter().map(|(n, a)| (n, &a.value)),
            );
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

/// One IPv6 value the lock file records: the field naming it, where it stands, the value, and
/// what the network gives now for the IPv4 value beside it (`None`: no counterpart now, as for
/// an IPv4 value outside the WireGuard space, which allocation moves with a warning of its own).
struct Entry6 {
    field: String,
    loc: Loc,
    recorded: String,
    now: Option<String>,
}

impl Lock {
    /// Every IPv6 value recorded, in file order.
    fn entries6<'a>(&'a self, net: &'a Network) -> impl Iterator<Item = Entry6> + 'a {
        self.sites.iter().flat_map(move |(site, ls)| {
            let block = ls.wireguard_cidr6.iter().map(move |c| Entry6 {
                field: format!("sites.{site}.wireguard_cidr6"),
                loc: c.loc,
                recorded: c.value.to_string(),
                now: ls
                    .wireguard_cidr
                    .and_then(|b| net.block6_of(b))
                    .map(|n| n.to_string()),
            });
            let nodes = [
                ("nodes6", &ls.nodes6, &ls.nodes),
                ("retired_nodes6", &ls.retired_nodes6, &ls.retired_nodes),
            ]
            .into_iter()
            .flat_map(move |(field, v6, v4)| {
                v6.iter().map(move |(n, a)| Entry6 {
                    field: format!("sites.{site}.{field}.{n}"),
                    loc: a.loc,
                    recorded: a.value.to_string(),
                    now: v4
                        .get(n)
                        .and_then(|ip| net.ip6_of(*ip))
                        .map(|x| x.to_string()),
                })
            });
            block.chain(nodes)
        })
    }

    /// Checks the IPv6 values recorded (the lock file read from `path`) against what the
    /// network's IPv6 plan gives now for the IPv4 values beside them. One that differs (the
    /// operator changed `wireguard_cidr6`, `site_prefix6`, or the IPv4 space they mirror) is an
    /// error: handed-out IPv6 addresses, and so the cluster's node IPs, would move. Without
    /// `wireguard_cidr6` the recorded values are dropped by the next write, with a warning.
    pub fn check_ip6(&self, path: &Path, net: &Network) -> Vec<Diagnostic> {
        let mut d = Diags::new(path);
        let mut all = self.entries6(net);
        let Some((space6, prefix6)) = net.wireguard_cidr6 else {
            if let Some(e) = all.next() {
                d.warn(
                    e.loc,
                    e.field,
                    format!(
                        "the inventory has no network.wireguard_cidr6 any more: the IPv6 addresses recorded in {} are dropped by the next plan, render or apply, and the next apply takes them off the nodes (node IPs of the cluster become IPv4 only)",
                        path.display()
                    ),
                );
            }
            return d.list;
        };
        let total = self.entries6(net).count();
        let moved: Vec<Entry6> = all
            .filter(|e| e.now.as_ref().is_some_and(|n| *n != e.recorded))
            .collect();
        if let Some(e) = moved.first() {
            d.error(
                e.loc,
                e.field.clone(),
                format!(
                    "the lock file records {}, but the network now gives {} (wireguard_cidr6 {space6} in /{prefix6} blocks, mirroring {} in /{} blocks); {} of the {total} IPv6 values recorded differ. The IPv6 addresses already handed out would move, and with them node IPs of the cluster. Put back the wireguard_cidr6 and site_prefix6 they were handed out with, or, to move them on purpose, delete the IPv6 entries (wireguard_cidr6, nodes6, retired_nodes6) from {}: the next plan, render or apply records the new ones",
                    e.recorded,
                    e.now.as_deref().unwrap_or_default(),
                    net.wireguard_cidr,
                    net.site_prefix,
                    moved.len(),
                    path.display()
                ),
            );
        }
        d.list
    }
}

/// `    field:` and one `      name: value` line per entry; nothing for none.
fn render_map<'a, T: std::fmt::Display + 'a>(
    out: &mut String,
    field: &str,
    map: impl ExactSizeIterator<Item = (&'a String, &'a T)>,
) {
    if map.len() == 0 {
        return;
    }
    out.push_str(&format!("    {field}:\n"));
    for (n, v) in map {
        out.push_str(&format!("      {n}: {v}\n"));
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

    fn at<T: std::str::FromStr>(s: &str) -> At<T>
    where
        T::Err: std::fmt::Debug,
    {
        At::new(s.parse().unwrap())
    }

    #[test]
    fn render_parse_round_trip_with_ipv6() {
        let mut s = LockSite {
            wireguard_cidr: Some("10.100.0.0/24".parse().unwrap()),
            wireguard_cidr6: Some(at("fd10:100::/64")),
            ..Default::default()
        };
        s.nodes.insert("n1".into(), "10.100.0.1".parse().unwrap());
        s.nodes6.insert("n1".into(), at("fd10:100::1"));
        s.retired_nodes
            .insert("n2".into(), "10.100.0.2".parse().unwrap());
        s.retired_nodes6.insert("n2".into(), at("fd10:100::2"));
        let mut lock = Lock::default();
        lock.sites.insert("home".into(), s);
        let text = lock.render();
        assert!(
            text.ends_with(
                "  home:\n    wireguard_cidr: 10.100.0.0/24\n    wireguard_cidr6: fd10:100::/64\n    nodes:\n      n1: 10.100.0.1\n    nodes6:\n      n1: fd10:100::1\n    retired_nodes:\n      n2: 10.100.0.2\n    retired_nodes6:\n      n2: fd10:100::2\n"
            ),
            "{text}"
        );
        let read = Lock::parse(Path::new("x.lock.yaml"), &text).unwrap();
        assert_eq!(read, lock);
        // and where each IPv6 value stands is known (the header is two lines)
        let home = &read.sites["home"];
        assert_eq!(home.wireguard_cidr6.unwrap().loc.line, 7);
        assert_eq!(home.nodes6["n1"].loc.line, 11);
        assert_eq!(home.retired_nodes6["n2"].loc.line, 15);
        // an IPv6 value is no IPv4 one: equal values at other places are still equal
        assert_ne!(at::<Ipv6Addr>("fd10:100::1"), at("fd10:100::2"));
    }

    #[test]
    fn an_ipv6_value_without_its_ipv4_one_or_not_ipv6_is_located() {
        let text = "version: 1\nsites:\n  home:\n    wireguard_cidr6: fd10:100::/64\n    nodes:\n      n1: 10.100.0.1\n    nodes6:\n      n1: 10.100.0.1\n      n9: fd10:100::9\n";
        let Err(Error::Invalid(d)) = Lock::parse(Path::new("h.lock.yaml"), text) else {
            panic!("accepted")
        };
        let got: Vec<(u32, &str)> = d.iter().map(|x| (x.line, x.field.as_str())).collect();
        assert_eq!(
            got,
            [
                (8, "sites.home.nodes6.n1"),
                (4, "sites.home.wireguard_cidr6"),
                (9, "sites.home.nodes6.n9"),
            ],
            "{d:?}"
        );
        assert!(d[0].message.contains("is not an IPv6 address"), "{d:?}");
        assert!(d[2].message.contains("nodes.n9"), "{d:?}");
    }

    /// The network of an inventory with `network_extra` lines.
    fn network(network_extra: &str) -> Network {
        let text = format!(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n{network_extra}sites:\n  home:\n    endpoint: h.example.net:51820\n    nodes:\n      n1: {{ address: 192.168.0.10 }}\n"
        );
        super::super::load_str(Path::new("inv.yaml"), &text)
            .unwrap()
            .inventory
            .network
    }

    const DUAL: &str = "version: 1\nsites:\n  home:\n    wireguard_cidr: 10.100.1.0/24\n    wireguard_cidr6: fd10:100:0:1::/64\n    nodes:\n      n1: 10.100.1.1\n    nodes6:\n      n1: fd10:100:0:1::1\n    retired_nodes:\n      n2: 10.100.1.2\n    retired_nodes6:\n      n2: fd10:100:0:1::2\n";

    #[test]
    fn recorded_ipv6_values_that_the_network_still_gives_pass() {
        let lock = Lock::parse(Path::new("h.lock.yaml"), DUAL).unwrap();
        let net = network("  wireguard_cidr6: fd10:100::/48\n");
        assert_eq!(lock.check_ip6(Path::new("h.lock.yaml"), &net), []);
    }

    #[test]
    fn a_changed_ipv6_plan_is_refused_at_the_first_value_it_moves() {
        let lock = Lock::parse(Path::new("h.lock.yaml"), DUAL).unwrap();
        let path = Path::new("h.lock.yaml");
        let d = lock.check_ip6(path, &network("  wireguard_cidr6: fd20:100::/48\n"));
        assert_eq!(d.len(), 1, "{d:?}");
        let msg = d[0].to_string();
        assert!(
            d[0].is_error()
                && msg.starts_with("h.lock.yaml:5:22: sites.home.wireguard_cidr6: the lock file records fd10:100:0:1::/64, but the network now gives fd20:100:0:1::/64")
                && msg.contains("3 of the 3 IPv6 values recorded differ")
                && msg.contains("would move, and with them node IPs of the cluster")
                && msg.contains("delete the IPv6 entries (wireguard_cidr6, nodes6, retired_nodes6) from h.lock.yaml"),
            "{msg}"
        );
        // site_prefix6 alone: the block and both addresses move
        let d = lock.check_ip6(
            path,
            &network("  wireguard_cidr6: fd10:100::/48\n  site_prefix6: 56\n"),
        );
        assert!(d[0].message.contains("3 of the 3"), "{d:?}");
        // only a retired node's address differs (edited by hand): still refused, there
        let moved = DUAL.replace("n2: fd10:100:0:1::2", "n2: fd10:100:0:1::7");
        let lock = Lock::parse(path, &moved).unwrap();
        let d = lock.check_ip6(path, &network("  wireguard_cidr6: fd10:100::/48\n"));
        assert_eq!(
            (d[0].line, d[0].field.as_str(), d.len()),
            (13, "sites.home.retired_nodes6.n2", 1),
            "{d:?}"
        );
    }

    #[test]
    fn without_dual_stack_recorded_ipv6_values_are_a_warning_not_an_error() {
        let lock = Lock::parse(Path::new("h.lock.yaml"), DUAL).unwrap();
        let d = lock.check_ip6(Path::new("h.lock.yaml"), &network(""));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            !d[0].is_error()
                && d[0].line == 5
                && d[0].message.contains("no network.wireguard_cidr6 any more"),
            "{d:?}"
        );
        // an old lock without IPv6 values says nothing either way
        let old = Lock::parse(Path::new("h.lock.yaml"), "version: 1\nsites:\n  home:\n    wireguard_cidr: 10.100.1.0/24\n    nodes:\n      n1: 10.100.1.1\n").unwrap();
        for extra in ["", "  wireguard_cidr6: fd10:100::/48\n"] {
            assert_eq!(old.check_ip6(Path::new("h.lock.yaml"), &network(extra)), []);
        }
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
