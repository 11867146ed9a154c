//! The OpenSSH client config (`~/.ssh/config`, or `ssh.config_file`) read the way `ssh` reads
//! it, for the settings wgprov uses: HostName, User, Port, IdentityFile, ProxyJump (chains) and
//! UserKnownHostsFile. Parsing and `Host` matching are ssh2-config's (patterns, `!` negation,
//! `Include`, options before the first `Host`; the first value found wins, as in OpenSSH).
//!
//! Precedence per setting: a value written in the inventory (top, site or node `ssh:`) wins;
//! else the config file's; else wgprov's default. The name looked up is the node's `ssh.host`
//! when the inventory writes one (an alias, as typed after `ssh`), else the node's name when a
//! `Host` line names it literally, else the node's `address`; a `HostName` for that name is
//! where SSH connects.
//! A ProxyJump hop must be a node of the inventory: it maps to the node whose name, address or
//! `ssh.host` it is (after its own HostName), and anything else is an inventory error.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

use super::model::{Loc, Node, Origin, Site};
use super::validate::Diags;

/// The config file a node's settings ask for, and where that was said.
#[derive(Clone, Debug)]
pub struct ConfigRef {
    /// As written: a path (`~/` and inventory-relative allowed) or `none`.
    pub spec: String,
    /// Where it was written (or [`Origin::Default`] for `~/.ssh/config`).
    pub origin: Origin,
}

impl Default for ConfigRef {
    fn default() -> Self {
        ConfigRef {
            spec: DEFAULT_CONFIG.into(),
            origin: Origin::Default,
        }
    }
}

/// The file read when the inventory names none.
pub const DEFAULT_CONFIG: &str = "~/.ssh/config";

/// A value found in the config file, with the `Host` line of the block that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<T> {
    /// The value, tokens not yet expanded.
    pub value: T,
    /// E.g. `Host web-* !web-0`.
    pub host: String,
}

/// What the config file says about one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// `HostName`.
    pub host_name: Option<Found<String>>,
    /// `User`.
    pub user: Option<Found<String>>,
    /// `Port`.
    pub port: Option<Found<u16>>,
    /// The first `IdentityFile` (`~` expanded by the parser).
    pub identity_file: Option<Found<String>>,
    /// The first file of `UserKnownHostsFile` (`none` becomes `/dev/null`).
    pub known_hosts: Option<Found<String>>,
    /// `ProxyJump` hops, in order (`none`: an empty list).
    pub proxy_jump: Option<Found<Vec<String>>>,
}

/// Why an OpenSSH client config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The parser refused it.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        message: String,
    },
    /// It has a `Match` block.
    #[error(
        "{}: `Match` blocks are not supported (in or after {host}): use `Host` patterns, or set ssh.config_file to a file without them (or `none`)",
        path.display()
    )]
    Match {
        /// The file.
        path: PathBuf,
        /// The `Host` line the block is in or after.
        host: String,
    },
}

/// One parsed OpenSSH client config file.
#[derive(Debug)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    config: SshConfig,
}

impl ConfigFile {
    /// Reads and parses `path`; `Ok(None)` when the file does not exist (nothing to apply).
    pub fn load(path: &Path) -> Result<Option<ConfigFile>, ConfigError> {
        match std::fs::File::open(path) {
            Ok(f) => Self::parse(path, &mut BufReader::new(f)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses config text as if read from `path`. Options ssh2-config does not know are
    /// skipped (OpenSSH has many wgprov does not use); a `Match` block is refused, since its
    /// options would otherwise land in the `Host` block before it.
    pub fn parse(
        path: &Path,
        reader: &mut impl std::io::BufRead,
    ) -> Result<ConfigFile, ConfigError> {
        let config = SshConfig::default()
            .parse(
                reader,
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        for h in config.get_hosts() {
            if h.params
                .ignored_fields
                .keys()
                .any(|k| k.eq_ignore_ascii_case("match"))
            {
                return Err(ConfigError::Match {
                    path: path.to_path_buf(),
                    host: host_line(h),
                });
            }
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            config,
        })
    }

    /// True when a `Host` line names `name` literally (not through a wildcard or negation).
    pub fn names(&self, name: &str) -> bool {
        self.config.get_hosts().iter().any(|h| {
            h.pattern.iter().any(|c| {
                !c.negated
                    && !c.pattern.contains(['*', '?'])
                    && c.pattern.eq_ignore_ascii_case(name)
            })
        })
    }

    /// The settings the file gives `alias`: per setting the first block (in file order) that
    /// matches and sets it, as OpenSSH does.
    pub fn lookup(&self, alias: &str) -> Lookup {
        let mut l = Lookup::default();
        for h in self.config.intersecting_hosts(alias) {
            let p = &h.params;
            let found = |v| {
                Some(Found {
                    value: v,
                    host: host_line(h),
                })
            };
            if l.host_name.is_none()
                && let Some(v) = &p.host_name
            {
                l.host_name = found(v.clone());
            }
            if l.user.is_none()
                && let Some(v) = &p.user
            {
                l.user = found(v.clone());
            }
            if l.port.is_none()
                && let Some(v) = p.port
            {
                l.port = Some(Found {
                    value: v,
                    host: host_line(h),
                });
            }
            if l.identity_file.is_none()
                && let Some(v) = p.identity_file.as_ref().and_then(|v| v.first())
            {
                l.identity_file = found(v.display().to_string());
            }
            if l.known_hosts.is_none()
                && let Some((_, v)) = p
                    .unsupported_fields
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("userknownhostsfile"))
                && let Some(first) = v.first()
            {
                let file = if first.eq_ignore_ascii_case("none") {
                    "/dev/null".to_string()
                } else {
                    first.trim_matches('"').to_string()
                };
                l.known_hosts = found(file);
            }
            if l.proxy_jump.is_none()
                && let Some(v) = &p.proxy_jump
            {
                let hops = if v.len() == 1 && v[0].eq_ignore_ascii_case("none") {
                    Vec::new()
                } else {
                    v.clone()
                };
                l.proxy_jump = Some(Found {
                    value: hops,
                    host: host_line(h),
                });
            }
        }
        l
    }
}

fn host_line(h: &ssh2_config::Host) -> String {
    let pats: Vec<String> = h
        .pattern
        .iter()
        .map(|c| format!("{}{}", if c.negated { "!" } else { "" }, c.pattern))
        .collect();
    format!("Host {}", pats.join(" "))
}

/// The file `spec` names: `None` for `none`; `~/` is the home directory, a relative path is
/// relative to the inventory's directory.
pub fn resolve_path(spec: &str, inventory: &Path) -> Option<PathBuf> {
    if spec.eq_ignore_ascii_case("none") {
        return None;
    }
    if let Some(rest) = spec.strip_prefix("~/") {
        return Some(home().join(rest));
    }
    let p = Path::new(spec);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        inventory
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_path_buf())
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The values OpenSSH's `%` tokens stand for.
struct Tokens<'a> {
    /// `%n`: the name as looked up.
    alias: &'a str,
    /// `%h`: the host connected to.
    host: &'a str,
    /// `%r`: the remote user.
    user: &'a str,
    /// `%p`: the port.
    port: u16,
}

/// Expands `%%`, `%n`, `%h`, `%r`, `%p`, `%d` (home) and `%u` (local user); other tokens stay.
fn expand(s: &str, t: &Tokens) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(t.alias),
            Some('h') => out.push_str(t.host),
            Some('r') => out.push_str(t.user),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('d') => out.push_str(&home().display().to_string()),
            Some('u') => out.push_str(&std::env::var("USER").unwrap_or_else(|_| "root".into())),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The host of a ProxyJump hop: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
/// (The hop's user and port are not used: the jump node connects with its own settings.)
pub fn hop_host(hop: &str) -> &str {
    let h = hop.strip_prefix("ssh://").unwrap_or(hop);
    let h = h.rsplit_once('@').map(|(_, h)| h).unwrap_or(h);
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').map(|(a, _)| a).unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') && p.parse::<u16>().is_ok() => a,
        _ => h,
    }
}

/// Fills every SSH setting the inventory leaves unset from each node's config file, records
/// where each came from, and turns ProxyJump hops into inventory nodes (errors into `d`).
/// `refs` holds each node's [`ConfigRef`] by node name.
pub fn apply(
    inventory: &Path,
    sites: &mut [Site],
    refs: &HashMap<String, ConfigRef>,
    d: &mut Diags,
) {
    let mut files: HashMap<PathBuf, Option<ConfigFile>> = HashMap::new();
    let mut failed: Vec<PathBuf> = Vec::new();
    // (node, its config file, the hops and the Host line they came from)
    let mut hops: Vec<(String, PathBuf, Found<Vec<String>>)> = Vec::new();

    for site in sites.iter_mut() {
        for node in site.nodes.iter_mut() {
            let r = refs.get(&node.name).cloned().unwrap_or_default();
            let Some(path) = load_once(inventory, &r, &mut files, &mut failed, d) else {
                continue;
            };
            let Some(cf) = files.get(&path).and_then(|f| f.as_ref()) else {
                continue;
            };
            if let Some(f) = fill(node, &path, cf, d) {
                hops.push((node.name.clone(), path.clone(), f));
            }
        }
    }
    if hops.is_empty() {
        return;
    }
    let chain = jump_through(sites, &files, hops, d);
    chain_jumps(sites, chain, d);
}

/// The config file `r` names, read once per path (`None` for `none`, or when it cannot be
/// read: that is reported once, at the field that named it).
fn load_once(
    inventory: &Path,
    r: &ConfigRef,
    files: &mut HashMap<PathBuf, Option<ConfigFile>>,
    failed: &mut Vec<PathBuf>,
    d: &mut Diags,
) -> Option<PathBuf> {
    let path = resolve_path(&r.spec, inventory)?;
    if failed.contains(&path) {
        return None;
    }
    if !files.contains_key(&path) {
        match ConfigFile::load(&path) {
            Ok(f) => {
                files.insert(path.clone(), f);
            }
            Err(m) => {
                let (loc, field) = match &r.origin {
                    Origin::Inventory { field, loc } => (*loc, field.clone()),
                    _ => (Loc::default(), "ssh.config_file".to_string()),
                };
                d.error(loc, field, m.to_string());
                failed.push(path);
                return None;
            }
        }
    }
    Some(path)
}

/// Fills one node's unset settings from `cf`; returns the ProxyJump hops it gives the node
/// (resolved once every node is read).
fn fill(
    node: &mut Node,
    path: &Path,
    cf: &ConfigFile,
    d: &mut Diags,
) -> Option<Found<Vec<String>>> {
    let np = format!("sites.{}.nodes.{}.ssh", node.site, node.name);
    let o = &mut node.ssh_origin;
    let alias = if matches!(o.host, Origin::Inventory { .. }) {
        node.ssh.host.clone()
    } else if cf.names(&node.name) {
        node.name.clone()
    } else {
        node.address.clone()
    };
    o.config = Some((path.to_path_buf(), alias.clone()));
    let l = cf.lookup(&alias);
    let from = |host: &str| Origin::SshConfig {
        file: path.to_path_buf(),
        host: host.to_string(),
    };
    let bad = |d: &mut Diags, field: &str, what: String, host: &str| {
        d.error(
            node.loc,
            format!("{np}.{field}"),
            format!("{what} (from {} {host}, for `{alias}`)", path.display()),
        )
    };
    // HostName maps the name looked up (the inventory's `ssh.host` is that name, as
    // typed after `ssh`), so it applies whichever way the name was given.
    if let Some(f) = &l.host_name {
        let t = Tokens {
            alias: &alias,
            host: &alias,
            user: &node.ssh.user,
            port: node.ssh.port,
        };
        let h = expand(&f.value, &t);
        if super::validate::is_host(&h) {
            node.ssh.host = h;
            o.host = from(&f.host);
        } else {
            bad(
                d,
                "host",
                format!("HostName `{h}` is neither an IP address nor a DNS name"),
                &f.host,
            );
        }
    }
    if o.user == Origin::Default
        && let Some(f) = &l.user
    {
        if super::validate::is_safe_user(&f.value) {
            node.ssh.user = f.value.clone();
            o.user = from(&f.host);
        } else {
            bad(
                d,
                "user",
                format!("User `{}` is not a valid user name", f.value),
                &f.host,
            );
        }
    }
    if o.port == Origin::Default
        && let Some(f) = &l.port
    {
        if f.value == 0 {
            bad(d, "port", "Port 0 is outside 1-65535".into(), &f.host);
        } else {
            node.ssh.port = f.value;
            o.port = from(&f.host);
        }
    }
    fill_files(node, &alias, &l, &from);
    let o = &node.ssh_origin;
    if o.proxy_jump == Origin::Default
        && let Some(f) = l.proxy_jump
        && !f.value.is_empty()
    {
        return Some(f);
    }
    None
}

/// IdentityFile and UserKnownHostsFile, their tokens expanded for the node's final settings.
fn fill_files(node: &mut Node, alias: &str, l: &Lookup, from: &dyn Fn(&str) -> Origin) {
    let o = &mut node.ssh_origin;
    let t = Tokens {
        alias,
        host: &node.ssh.host,
        user: &node.ssh.user,
        port: node.ssh.port,
    };
    if o.identity_file == Origin::Default
        && let Some(f) = &l.identity_file
    {
        node.ssh.identity_file = Some(expand(&f.value, &t));
        o.identity_file = from(&f.host);
    }
    if o.known_hosts == Origin::Default
        && let Some(f) = &l.known_hosts
    {
        node.ssh.known_hosts = expand(&f.value, &t);
        o.known_hosts = from(&f.host);
    }
}

/// Each node's position, by name.
fn index(sites: &[Site]) -> HashMap<String, (usize, usize)> {
    sites
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.nodes
                .iter()
                .enumerate()
                .map(move |(j, n)| (n.name.clone(), (i, j)))
        })
        .collect()
}

/// Which node a hop is: by name, address or ssh.host.
fn find(sites: &[Site], name: &str) -> Option<String> {
    let all = || sites.iter().flat_map(|s| s.nodes.iter());
    all()
        .find(|n| n.name == name)
        .or_else(|| all().find(|n| n.address == name || n.ssh.host == name))
        .map(|n| n.name.clone())
}

/// Sets each node's jump node to the last of its hops (each an inventory node: by name,
/// address or ssh.host, also after the hop's own HostName). Returns the chain: (node, the
/// node it must jump through, origin) for each hop before the last.
fn jump_through(
    sites: &mut [Site],
    files: &HashMap<PathBuf, Option<ConfigFile>>,
    hops: Vec<(String, PathBuf, Found<Vec<String>>)>,
    d: &mut Diags,
) -> Vec<(String, String, Origin)> {
    let index = index(sites);
    let mut chain: Vec<(String, String, Origin)> = Vec::new();
    for (node, path, f) in hops {
        let (si, ni) = index[&node];
        let n = &sites[si].nodes[ni];
        let field = format!("sites.{}.nodes.{}.ssh.proxy_jump", n.site, n.name);
        let loc = n.loc;
        let mut names = Vec::new();
        for hop in &f.value {
            let h = hop_host(hop);
            let via_config = files
                .get(&path)
                .and_then(|c| c.as_ref())
                .and_then(|c| c.lookup(h).host_name)
                .map(|x| {
                    expand(
                        &x.value,
                        &Tokens {
                            alias: h,
                            host: h,
                            user: "",
                            port: 22,
                        },
                    )
                });
            match find(sites, h).or_else(|| via_config.and_then(|x| find(sites, &x))) {
                Some(name) => names.push(name),
                None => {
                    d.error(
                        loc,
                        &field,
                        format!(
                            "ProxyJump `{hop}` (from {} {}) is not a node of the inventory: wgprov jumps only through inventory nodes (matched by name, address or ssh.host); add it as a node, or set ssh.config_file to another file or `none`",
                            path.display(),
                            f.host
                        ),
                    );
                    names.clear();
                    break;
                }
            }
        }
        let Some(last) = names.last().cloned() else {
            continue;
        };
        let origin = Origin::SshConfig {
            file: path.clone(),
            host: f.host.clone(),
        };
        let n = &mut sites[si].nodes[ni];
        n.ssh.proxy_jump = Some(last);
        n.ssh_origin.proxy_jump = origin;
        for w in names.windows(2) {
            chain.push((
                w[1].clone(),
                w[0].clone(),
                Origin::SshConfig {
                    file: path.clone(),
                    host: format!("{}, ProxyJump chain of {node}", f.host),
                },
            ));
        }
    }
    chain
}

/// A chain a,b: b itself jumps through a (unless it jumps through another node already).
fn chain_jumps(sites: &mut [Site], chain: Vec<(String, String, Origin)>, d: &mut Diags) {
    let index = index(sites);
    for (next, prev, origin) in chain {
        let (si, ni) = index[&next];
        let n = &mut sites[si].nodes[ni];
        match &n.ssh.proxy_jump {
            None => {
                n.ssh.proxy_jump = Some(prev);
                n.ssh_origin.proxy_jump = origin;
            }
            Some(p) if *p == prev => {}
            Some(p) => d.error(
                n.loc,
                format!("sites.{}.nodes.{}.ssh.proxy_jump", n.site, n.name),
                format!(
                    "{origin} makes {next} jump through {prev}, but {next} jumps through {p} ({})",
                    n.ssh_origin.proxy_jump
                ),
            ),
        }
    }
}

/// Per node, each SSH setting with where it came from: what `-v` prints.
pub fn explain(inv: &super::Inventory) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for n in inv.nodes() {
        let s = &n.ssh;
        let g = &n.ssh_origin;
        match &g.config {
            Some((f, alias)) => {
                let _ = writeln!(
                    o,
                    "{}: ssh settings (`{alias}` looked up in {})",
                    n.name,
                    f.display()
                );
            }
            None => {
                let _ = writeln!(o, "{}: ssh settings (no ssh config file read)", n.name);
            }
        }
        let rows: [(&str, String, &Origin); 7] = [
            ("host", s.host.clone(), &g.host),
            ("user", s.user.clone(), &g.user),
            ("port", s.port.to_string(), &g.port),
            (
                "identity_file",
                s.identity_file
                    .clone()
                    .unwrap_or_else(|| "(ssh-agent, then ~/.ssh/id_*)".into()),
                &g.identity_file,
            ),
            ("known_hosts", s.known_hosts.clone(), &g.known_hosts),
            ("become", s.become_root.to_string(), &g.become_root),
            (
                "proxy_jump",
                s.proxy_jump.clone().unwrap_or_else(|| "(none)".into()),
                &g.proxy_jump,
            ),
        ];
        for (k, v, from) in rows {
            let _ = writeln!(o, "  {k:<13} {v:<28} from {from}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    const INV: &str =
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n";

    /// An inventory and an ssh config side by side in a temp dir; the inventory points at the
    /// config with a relative `ssh.config_file`.
    fn setup(ssh: &str, sites: &str, config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ssh_config"), config).unwrap();
        let inv = dir.path().join("inv.yaml");
        std::fs::write(
            &inv,
            format!("{INV}ssh:\n  config_file: ssh_config\n{ssh}sites:\n{sites}"),
        )
        .unwrap();
        (dir, inv)
    }

    const TWO_SITES: &str = "  home:\n    endpoint: home.example.net:51820\n    next_hop: bastion\n    nodes:\n      bastion: {address: 192.168.0.10}\n      web1: {address: 192.168.0.11, ssh: {host: web1.lan}}\n      db: {address: 192.168.0.12}\n  cloud:\n    nodes:\n      far: {address: 10.9.0.5, ssh: {host: far-alias, user: admin}}\n";

    const CONFIG: &str = "\
# global options come first and win, as in OpenSSH
UserKnownHostsFile ~/.ssh/wg_known_hosts
Host far-alias
    HostName far.example.org
    User ignored-because-inventory-wins
    Port 2202
    ProxyJump bastion
Host web*.lan !web9.lan
    HostName %h.example.net
    User deploy
    IdentityFile ~/.ssh/web_key
Host 192.168.0.*
    User ops
    Port 2222
Host *
    User fallback
    IdentityFile ~/.ssh/id_default
";

    fn load(inv: &Path) -> crate::inventory::Loaded {
        crate::inventory::load(inv).unwrap_or_else(|e| panic!("{e}"))
    }

    fn node<'a>(l: &'a crate::inventory::Loaded, name: &str) -> &'a crate::inventory::Node {
        l.inventory.nodes().find(|n| n.name == name).unwrap()
    }

    #[test]
    fn config_fills_what_the_inventory_leaves_unset_and_says_where_from() {
        let (dir, inv) = setup("", TWO_SITES, CONFIG);
        let l = load(&inv);
        let cfg = dir.path().join("ssh_config");

        // looked up by address: the 192.168.0.* block, then Host *
        let b = node(&l, "bastion");
        assert_eq!(b.ssh.host, "192.168.0.10");
        assert_eq!(b.ssh.user, "ops");
        assert_eq!(b.ssh.port, 2222);
        assert!(
            b.ssh
                .identity_file
                .as_deref()
                .unwrap()
                .ends_with("/.ssh/id_default")
        );
        assert!(b.ssh.known_hosts.ends_with("/.ssh/wg_known_hosts"));
        assert_eq!(
            b.ssh_origin.user,
            Origin::SshConfig {
                file: cfg.clone(),
                host: "Host 192.168.0.*".into()
            }
        );
        assert_eq!(b.ssh_origin.host, Origin::Default);

        // looked up by the inventory's alias: HostName with %h, the first User wins
        let w = node(&l, "web1");
        assert_eq!(w.ssh.host, "web1.lan.example.net");
        assert_eq!(w.ssh.user, "deploy");
        assert_eq!(
            w.ssh.port, 22,
            "192.168.0.* is not matched: the alias is looked up"
        );
        assert!(
            w.ssh
                .identity_file
                .as_deref()
                .unwrap()
                .ends_with("/.ssh/web_key")
        );

        // the inventory's user wins; port and HostName from the file; ProxyJump to a node
        let f = node(&l, "far");
        assert_eq!(f.ssh.user, "admin");
        assert!(matches!(f.ssh_origin.user, Origin::Inventory { .. }));
        assert_eq!(f.ssh.host, "far.example.org");
        assert_eq!(f.ssh.port, 2202);
        assert_eq!(f.ssh.proxy_jump.as_deref(), Some("bastion"));

        let text = explain(&l.inventory);
        assert!(
            text.contains(&format!("`far-alias` looked up in {}", cfg.display())),
            "{text}"
        );
        assert!(
            text.lines().any(|x| x.contains("user")
                && x.contains("admin")
                && x.contains("inventory sites.cloud.nodes.far.ssh.user (line")),
            "{text}"
        );
        assert!(
            text.lines().any(|x| x.contains("port")
                && x.contains("2202")
                && x.contains("(Host far-alias)")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|x| x.contains("become") && x.contains("from default")),
            "{text}"
        );
    }

    #[test]
    fn a_host_line_naming_the_node_is_its_alias() {
        // db has no ssh.host: `Host db` names it literally, so it is looked up as `db`, not by
        // its address (which would have matched 192.168.0.*)
        let config = "Host db\n  HostName 198.51.100.12\n  Port 2022\nHost 192.168.0.*\n  Port 2222\nHost bast*\n  Port 2323\n";
        let (_d, inv) = setup("", TWO_SITES, config);
        let l = load(&inv);
        let db = node(&l, "db");
        assert_eq!((db.ssh.host.as_str(), db.ssh.port), ("198.51.100.12", 2022));
        assert_eq!(db.ssh_origin.config.as_ref().unwrap().1, "db");
        // a wildcard does not make an alias: bastion is looked up by its address
        let b = node(&l, "bastion");
        assert_eq!((b.ssh.host.as_str(), b.ssh.port), ("192.168.0.10", 2222));
    }

    #[test]
    fn explicit_inventory_values_win_at_every_level() {
        let ssh = "  user: root\n  port: 22\n  known_hosts: /etc/wgprov/known_hosts\n";
        let (_d, inv) = setup(ssh, TWO_SITES, CONFIG);
        let l = load(&inv);
        let b = node(&l, "bastion");
        assert_eq!((b.ssh.user.as_str(), b.ssh.port), ("root", 22));
        assert_eq!(b.ssh.known_hosts, "/etc/wgprov/known_hosts");
        assert!(matches!(b.ssh_origin.port, Origin::Inventory { .. }));
    }

    #[test]
    fn missing_file_applies_nothing_and_none_reads_nothing() {
        let (dir, inv) = setup("", TWO_SITES, CONFIG);
        std::fs::remove_file(dir.path().join("ssh_config")).unwrap();
        let l = load(&inv);
        let b = node(&l, "bastion");
        assert_eq!((b.ssh.user.as_str(), b.ssh.port), ("root", 22));
        assert_eq!(b.ssh_origin.config, None);

        let (_d, inv) = setup("", TWO_SITES, CONFIG);
        let text = std::fs::read_to_string(&inv)
            .unwrap()
            .replace("config_file: ssh_config", "config_file: none");
        std::fs::write(&inv, text).unwrap();
        let b = node(&load(&inv), "bastion").clone();
        assert_eq!((b.ssh.user.as_str(), b.ssh.port), ("root", 22));
    }

    #[test]
    fn proxy_jump_chains_become_jumps_through_inventory_nodes() {
        // far jumps through db then bastion: far -> bastion, bastion -> db
        let config = "Host far-alias\n  ProxyJump ops@db:22,bastion-alias\nHost bastion-alias\n  HostName 192.168.0.10\n";
        let (_d, inv) = setup("", TWO_SITES, config);
        let l = load(&inv);
        assert_eq!(node(&l, "far").ssh.proxy_jump.as_deref(), Some("bastion"));
        let b = node(&l, "bastion");
        assert_eq!(b.ssh.proxy_jump.as_deref(), Some("db"));
        assert!(
            b.ssh_origin
                .proxy_jump
                .to_string()
                .contains("ProxyJump chain of far"),
            "{}",
            b.ssh_origin.proxy_jump
        );
        assert_eq!(node(&l, "db").ssh.proxy_jump, None);
    }

    fn errors(inv: &Path) -> Vec<crate::error::Diagnostic> {
        match crate::inventory::load(inv) {
            Err(Error::Invalid(d)) => d.into_iter().filter(|d| d.is_error()).collect(),
            Ok(_) => panic!("loaded"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn proxy_jump_to_a_host_outside_the_inventory_is_an_inventory_error() {
        let config = "Host far-alias\n  ProxyJump jumpbox.example.com\n";
        let (_d, inv) = setup("", TWO_SITES, config);
        let e = errors(&inv);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "sites.cloud.nodes.far.ssh.proxy_jump");
        assert_eq!(e[0].line, 16, "points at the node: {}", e[0]);
        assert!(
            e[0].message.contains("`jumpbox.example.com`")
                && e[0].message.contains("not a node of the inventory"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn proxy_jump_loops_through_the_config_are_refused() {
        // Host * matches bastion itself: it would jump through itself
        let config = "Host *\n  ProxyJump bastion\n";
        let (_d, inv) = setup("", TWO_SITES, config);
        let e = errors(&inv);
        assert!(
            e.iter()
                .any(|d| d.field == "sites.home.nodes.bastion.ssh.proxy_jump"
                    && d.message.contains("loops back to bastion")),
            "{e:?}"
        );
    }

    #[test]
    fn bad_values_and_match_blocks_are_errors() {
        let (_d, inv) = setup("", TWO_SITES, "Host 192.168.0.*\n  User -oProxyCommand=x\n");
        let e = errors(&inv);
        assert!(e.iter().all(|d| d.field.ends_with(".ssh.user")), "{e:?}");
        assert_eq!(e.len(), 2, "bastion and db: {e:?}");

        let (_d, inv) = setup("", TWO_SITES, "Host x\n  User a\nMatch host y\n  User b\n");
        let e = errors(&inv);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "ssh.config_file");
        assert_eq!(e[0].line, 5, "{}", e[0]);
        assert!(
            e[0].message.contains("`Match` blocks are not supported"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn config_file_is_a_known_key_and_typos_near_it_are_not() {
        let (_d, inv) = setup("  confg_file: x\n", TWO_SITES, "");
        let e = errors(&inv);
        assert_eq!(e[0].field, "ssh.confg_file", "{e:?}");
        assert_eq!((e[0].line, e[0].column), (6, 3));
    }

    #[test]
    fn hop_hosts() {
        assert_eq!(hop_host("bastion"), "bastion");
        assert_eq!(hop_host("ops@bastion:2222"), "bastion");
        assert_eq!(hop_host("ssh://ops@[fd00::1]:22"), "fd00::1");
        assert_eq!(hop_host("fd00::1"), "fd00::1");
    }
}
