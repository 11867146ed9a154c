//! SSH settings: the network-wide `ssh:` defaults, and one node's settings merged from its
//! layers (network, site or router, node), each with where it was written.

use super::{Diags, loc, port};
use crate::inventory::model::*;
use crate::inventory::schema::*;
use crate::inventory::sshconfig::ConfigRef;

/// One `ssh:` mapping and the field path it is at.
pub(super) struct SshLayer<'a> {
    /// The mapping.
    pub raw: &'a RawSsh,
    /// E.g. `sites.home.ssh`.
    pub path: String,
}

/// Checks the network-wide `ssh:`: `host` and `proxy_jump` belong to a node or site.
pub(super) fn defaults(d: &mut Diags, raw: &RawInventory) {
    if let Some(s) = &raw.ssh
        && let Some(h) = &s.value.host
    {
        d.error(
            loc(h),
            "ssh.host",
            "`host` is per node: it says where one node's SSH server is",
        );
    }
    if let Some(s) = &raw.ssh
        && let Some(j) = &s.value.proxy_jump
    {
        d.error(
            loc(j),
            "ssh.proxy_jump",
            "`proxy_jump` belongs to a site or a node: the jump node cannot jump through itself",
        );
    }
}

/// Merges `layers` (later ones win) over wgprov's defaults for a host at `address`.
pub(super) fn resolve_ssh(
    d: &mut Diags,
    address: &str,
    layers: &[Option<SshLayer>],
) -> (SshSettings, SshOrigins, ConfigRef) {
    let mut s = SshSettings {
        host: address.to_string(),
        user: "root".into(),
        port: 22,
        identity_file: None,
        known_hosts: "~/.ssh/known_hosts".into(),
        become_root: false,
        proxy_jump: None,
    };
    let mut o = SshOrigins::default();
    let mut config = ConfigRef::default();
    for l in layers.iter().flatten() {
        let r = l.raw;
        let at = |field: &str, loc: Loc| Origin::Inventory {
            field: format!("{}.{field}", l.path),
            loc,
        };
        if let Some(h) = &r.host {
            if is_host(&h.value) {
                s.host = h.value.clone();
                o.host = at("host", loc(h));
            } else {
                d.error(
                    loc(h),
                    format!("{}.host", l.path),
                    format!(
                        "`{}` is neither an IP address nor a DNS name (it is where SSH connects, or a name looked up in the OpenSSH config)",
                        h.value.escape_debug()
                    ),
                );
            }
        }
        if let Some(u) = &r.user {
            if is_safe_user(&u.value) {
                s.user = u.value.clone();
                o.user = at("user", loc(u));
            } else {
                d.error(
                    loc(u),
                    format!("{}.user", l.path),
                    format!("`{}` is not a valid user name", u.value),
                );
            }
        }
        if let Some(p) = &r.port
            && let Some(pv) = port(d, p, &format!("{}.port", l.path))
        {
            s.port = pv;
            o.port = at("port", loc(p));
        }
        if let Some(i) = &r.identity_file {
            s.identity_file = Some(i.value.clone());
            o.identity_file = at("identity_file", loc(i));
        }
        if let Some(k) = &r.known_hosts {
            s.known_hosts = k.value.clone();
            o.known_hosts = at("known_hosts", loc(k));
        }
        if let Some(b) = &r.become_root {
            s.become_root = b.value;
            o.become_root = at("become", loc(b));
        }
        if let Some(j) = &r.proxy_jump {
            s.proxy_jump = Some(j.value.clone());
            o.proxy_jump = at("proxy_jump", loc(j));
        }
        if let Some(c) = &r.config_file {
            config = ConfigRef {
                spec: c.value.clone(),
                origin: at("config_file", loc(c)),
            };
        }
    }
    (s, o, config)
}

/// True when `h` can be where SSH connects: an IP address or a DNS name (so never an option,
/// a shell word or whitespace).
pub fn is_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok() || is_dns_name(h)
}

/// True when `u` is a plausible login name (letters, digits, `_-.`, not starting with `-`).
pub fn is_safe_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !u.starts_with('-')
}
