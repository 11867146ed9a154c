//! Every inventory rule, checked on the raw (spanned) inventory. All problems
//! are collected, each with file, line, column and field; the typed [`Inventory`] is returned
//! only when there is no error.
//!
//! One check per section, in the order the problems are reported: [`network`] (and the
//! network-wide `ssh:` defaults), then each site ([`site`], its nodes in [`node`], a managed
//! router in [`router`], SSH settings merged in [`ssh`]), then what holds across sites
//! ([`mesh`]: router names, site pairs that can reach each other, ProxyJump targets and loops,
//! the OpenSSH config file).

mod dual;
mod mesh;
mod network;
mod node;
mod psk;
mod relay;
mod router;
mod site;
mod ssh;
mod standby;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use super::model::*;
use super::schema::*;
use super::sshconfig::ConfigRef;
use crate::error::{Diagnostic, Severity};
use crate::shell::InterfaceName;

pub use ssh::{is_host, is_safe_user};

/// kubeadm's default service CIDR.
pub const KUBEADM_DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Collects diagnostics for one file.
pub struct Diags<'a> {
    file: &'a Path,
    /// Everything found so far.
    pub list: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    /// An empty collection for `file`.
    pub fn new(file: &'a Path) -> Self {
        Diags {
            file,
            list: Vec::new(),
        }
    }
    /// Records an error at `loc`.
    pub fn error(&mut self, loc: Loc, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, loc, field.into(), message.into());
    }
    /// Records a warning at `loc`.
    pub fn warn(&mut self, loc: Loc, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, loc, field.into(), message.into());
    }
    fn push(&mut self, severity: Severity, loc: Loc, field: String, message: String) {
        self.list.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            field,
            message,
        });
    }
    /// True when an error (not a warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.is_error())
    }
}

/// The location of a spanned value.
pub fn loc<T>(s: &S<T>) -> Loc {
    Loc {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

/// True when `name` is a lowercase DNS label: safe as a host name, a file name and a shell word.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_name(d: &mut Diags, name: &S<String>, field: &str) -> bool {
    if is_safe_name(&name.value) {
        return true;
    }
    d.error(
        loc(name),
        field,
        format!(
            "`{}` is not a safe name: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen",
            name.value
        ),
    );
    false
}

fn port(d: &mut Diags, v: &S<i64>, field: &str) -> Option<u16> {
    if (1..=65535).contains(&v.value) {
        Some(v.value as u16)
    } else {
        d.error(
            loc(v),
            field,
            format!("port {} is outside 1-65535", v.value),
        );
        None
    }
}

fn v4net(d: &mut Diags, v: &S<String>, field: &str) -> Option<Ipv4Net> {
    let example = "an IPv4 CIDR like 10.100.0.0/16";
    match anynet_with(d, v, field, example)? {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => {
            let msg = format!("`{}` is IPv6; the WireGuard space is IPv4", v.value);
            d.error(loc(v), field, msg);
            None
        }
    }
}

fn anynet(d: &mut Diags, v: &S<String>, field: &str) -> Option<IpNet> {
    anynet_with(d, v, field, "a CIDR like 192.168.0.0/24")
}

fn anynet_with(d: &mut Diags, v: &S<String>, field: &str, example: &str) -> Option<IpNet> {
    match v.value.trim().parse::<IpNet>() {
        Ok(n) if n.trunc() == n => Some(n),
        Ok(n) => {
            let msg = format!(
                "`{}` has host bits set; the network is {}",
                v.value,
                n.trunc()
            );
            d.error(loc(v), field, msg);
            None
        }
        Err(_) => {
            d.error(loc(v), field, format!("`{}` is not {example}", v.value));
            None
        }
    }
}

/// A network interface's name: what [`InterfaceName`] accepts, and not starting with `-` (it
/// would read as an option to `ip`, `wg` and `uci`).
fn interface(d: &mut Diags, v: &S<String>, value: &str, field: &str) -> Option<InterfaceName> {
    if value.starts_with('-') {
        d.error(
            loc(v),
            field,
            format!("`{value}` is not a valid interface name: it must not start with `-`"),
        );
        return None;
    }
    InterfaceName::new(value)
        .map_err(|m| d.error(loc(v), field, m))
        .ok()
}

/// True when two networks share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What the checks of the sites gather for the checks across sites.
#[derive(Default)]
struct State {
    /// The sites checked so far.
    sites: Vec<Site>,
    /// Every node name, where it was first written.
    node_names: HashMap<String, Loc>,
    /// Every site block written, with its site and place.
    site_blocks: Vec<(Ipv4Net, String, Loc)>,
    /// Every `wireguard_ip` written, with its node and place.
    node_ips: HashMap<Ipv4Addr, (String, Loc)>,
    /// (node, the `proxy_jump` it names, the node's field path).
    jumps: Vec<(String, S<String>, String)>,
    /// Each node's (and managed router's) OpenSSH config file, by name.
    config_refs: HashMap<String, ConfigRef>,
    /// Where a managed router's SSH settings came from, by router name.
    router_origins: HashMap<String, SshOrigins>,
    /// Each site's own `relay:` as written: (site, relay, place).
    relay_refs: Vec<(String, String, Loc)>,
    /// `network.relay` as written, with its place.
    network_relay: Option<(String, Loc)>,
}

/// Checks a raw inventory and turns it into an [`Inventory`], or returns every problem found.
/// Warnings are returned in both cases.
pub fn validate(file: &Path, raw: &RawInventory) -> (Option<Inventory>, Vec<Diagnostic>) {
    let mut d = Diags::new(file);
    let net = network::check(&mut d, raw);
    ssh::defaults(&mut d, raw);
    let mut st = State {
        network_relay: net.relay.clone(),
        ..State::default()
    };
    if raw.sites.value.is_empty() {
        d.error(loc(&raw.sites), "sites", "no sites: nothing to build");
    }
    for (sname, ssite) in &raw.sites.value {
        site::check(&mut d, raw, &net, &mut st, sname, &ssite.value);
    }
    mesh::check(file, &mut d, &mut st);
    let ok = !d.has_errors()
        && net.wg.is_some()
        && net.site_prefix.is_some()
        && net.listen_port.is_some();
    let inv = ok.then(|| {
        let (sites, removed) = take_out_absent(st.sites);
        network::finish(file, net, sites, removed)
    });
    (inv, d.list)
}

/// Splits off what is marked `state: absent`: the sites that stay (without their absent nodes),
/// and the nodes and sites to take out.
fn take_out_absent(sites: Vec<Site>) -> (Vec<Site>, (Vec<Node>, Vec<Site>)) {
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    let mut removed_sites = Vec::new();
    for mut s in sites {
        let (gone, stay): (Vec<Node>, Vec<Node>) = std::mem::take(&mut s.nodes)
            .into_iter()
            .partition(|n| s.absent || n.absent);
        removed.extend(gone.into_iter().map(|mut n| {
            n.absent = true;
            n
        }));
        s.nodes = stay;
        if s.absent {
            removed_sites.push(s);
        } else {
            kept.push(s);
        }
    }
    (kept, (removed, removed_sites))
}

/// `state:` as written: true for `absent`.
fn absent(d: &mut Diags, state: Option<&S<String>>, field: String) -> bool {
    match state.map(|s| (s, s.value.as_str())) {
        None | Some((_, "present")) => false,
        Some((_, "absent")) => true,
        Some((s, other)) => {
            d.error(
                loc(s),
                field,
                format!("`{other}` is not one of present, absent"),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests;
