//! Strings that reach a remote shell or a path on a host, as types checked once at the edge
//! (inventory validation, role loading): a script builder can only receive a value that passed
//! the check. Quoting lives here too. A leaf: depends on nothing else of wgprov.

use std::fmt;

/// Quotes a string for the shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The PATH every remote script starts with (sshd's default PATH may lack sbin).
pub const PATH_PRELUDE: &str =
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C\n";

/// Why a string cannot be a checked value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not an interface name.
    #[error("`{0}` is not a valid interface name (1-15 of letters, digits, _=+.-)")]
    Interface(String),
    /// An interface name that would read as an option to `ip`, `wg` and `uci`.
    #[error("`{0}` is not a valid interface name: it must not start with `-`")]
    LeadingDash(String),
    /// A path that does not start with `/`.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    /// A path with an empty, `.` or `..` component.
    #[error("`{0}`: empty, `.` or `..` path components are not allowed")]
    Component(String),
    /// A path with a character that could escape a shell word or a manifest line.
    #[error("`{path}`: `{ch}` is not allowed in a path on a host (letters, digits, ._+@- and /)")]
    Character {
        /// The path, escaped for printing.
        path: String,
        /// The character, escaped for printing.
        ch: String,
    },
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.to_string()
    }
}

/// What `sh -n` said of a script that is not valid shell.
#[cfg(test)]
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ShSyntax(String);

/// A WireGuard interface name: 1-15 of letters, digits and `_=+.-` (what the kernel and
/// wg-quick accept), so it is safe in a unit name, a path and a shell word.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Checks `s`; the error says what is allowed.
    pub fn new(s: &str) -> Result<InterfaceName, Invalid> {
        if s.starts_with('-') {
            return Err(Invalid::LeadingDash(s.to_string()));
        }
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b))
            && s != "."
            && s != "..";
        if ok {
            Ok(InterfaceName(s.to_string()))
        } else {
            Err(Invalid::Interface(s.to_string()))
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for InterfaceName {
    fn default() -> Self {
        InterfaceName("wg0".into())
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for InterfaceName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// An absolute path on a host: `/`-separated components of letters, digits and `._+@-`, none
/// of them empty, `.` or `..`. No whitespace, newline, quote or shell metacharacter can be in
/// one, so it can neither forge a line of the backup manifest nor escape a shell word.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RemotePath(String);

impl RemotePath {
    /// Checks `s`; the error says what is wrong.
    pub fn new(s: &str) -> Result<RemotePath, Invalid> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(Invalid::NotAbsolute(s.escape_debug().to_string()));
        };
        for c in rest.split('/') {
            if c.is_empty() || c == "." || c == ".." {
                return Err(Invalid::Component(s.escape_debug().to_string()));
            }
            if let Some(bad) = c
                .chars()
                .find(|ch| !(ch.is_ascii_alphanumeric() || "._+@-".contains(*ch)))
            {
                return Err(Invalid::Character {
                    path: s.escape_debug().to_string(),
                    ch: bad.escape_debug().to_string(),
                });
            }
        }
        Ok(RemotePath(s.to_string()))
    }
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Its directory (`/` for a file at the root).
    pub fn parent(&self) -> &str {
        match self.0.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &self.0[..i],
        }
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for RemotePath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for RemotePath {
    fn eq(&self, o: &str) -> bool {
        self.0 == o
    }
}

impl PartialEq<&str> for RemotePath {
    fn eq(&self, o: &&str) -> bool {
        self.0 == *o
    }
}

impl PartialEq<String> for RemotePath {
    fn eq(&self, o: &String) -> bool {
        &self.0 == o
    }
}

/// What a changed file makes happen on its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Handler {
    /// Bring the WireGuard interface up to date.
    Wireguard,
    /// `sysctl -p` wgprov's file.
    Sysctl,
    /// Restart the node's kubelet unit (kubelet, k3s, rke2; where installed), after checking
    /// that the node IP is an address of the host.
    Kubelet,
    /// `systemctl daemon-reload` (a unit file or drop-in changed).
    DaemonReload,
    /// Enable (or, its timer gone, disable) the endpoint re-resolution timer.
    Reresolve,
    /// Enable (or, its timer gone, disable) the timer that writes node_exporter's metrics file,
    /// the file deleted with it.
    Metrics,
    /// On a managed router: install the port-forward rules (or remove them when their script is
    /// gone) and flush the conntrack entries of the WireGuard port.
    PortForward,
    /// On an OpenWrt hub router: set its WireGuard interface, peers and firewall through uci
    /// and bring the interface up (or remove wgprov's sections when the script is gone).
    RouterHub,
    /// The failover watchdog: enable its timer (or, its files gone, stop it and delete its
    /// state).
    Failover,
}

impl Handler {
    /// Every handler, by the name roles use in `notify`.
    pub const ALL: [(&'static str, Handler); 9] = [
        ("wireguard", Handler::Wireguard),
        ("kubelet", Handler::Kubelet),
        ("sysctl", Handler::Sysctl),
        ("daemon_reload", Handler::DaemonReload),
        ("reresolve", Handler::Reresolve),
        ("metrics", Handler::Metrics),
        ("port_forward", Handler::PortForward),
        ("router_hub", Handler::RouterHub),
        ("failover", Handler::Failover),
    ];
    /// The handler a role's `notify` names.
    pub fn parse(s: &str) -> Option<Handler> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, h)| *h)
    }
    /// Its name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, h)| *h == self)
            .map(|(n, _)| *n)
            .expect("every handler is named")
    }
}

/// `sh -n` over a script: `Err(what sh said)` when it is not valid shell. For tests of the
/// script builders.
#[cfg(test)]
pub(crate) fn sh_syntax(text: &str) -> Result<(), ShSyntax> {
    use std::io::Write;
    let out = std::process::Command::new("sh")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().expect("piped").write_all(text.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("sh runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(ShSyntax(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_odd_strings() {
        assert_eq!(sh_quote("/a b/it's"), "'/a b/it'\\''s'");
    }

    #[test]
    fn a_path_with_a_newline_dots_or_metacharacters_never_reaches_a_host() {
        for bad in [
            "etc/x",
            "/etc/../root/x",
            "/etc/./x",
            "/etc//x",
            "/etc/x\n1 absent /etc/passwd",
            "/etc/x y",
            "/etc/$(id)",
            "/etc/x;rm",
            "/etc/'x'",
            "/etc/`x`",
            "/etc/x\\y",
            "/",
        ] {
            assert!(RemotePath::new(bad).is_err(), "{bad:?} accepted");
        }
        let p = RemotePath::new("/etc/systemd/system/k3s.service.d/50-wgprov.conf").unwrap();
        assert_eq!(p.parent(), "/etc/systemd/system/k3s.service.d");
        assert_eq!(RemotePath::new("/x").unwrap().parent(), "/");
    }

    #[test]
    fn interface_names_are_what_the_kernel_accepts_and_nothing_a_shell_reads() {
        for good in ["wg0", "wg-mesh_1", "a.b+c=d"] {
            assert!(InterfaceName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "waytoolonginterface",
            "wg0;x",
            "wg 0",
            "wg/0",
            "..",
            "wg\n0",
            "-wg0",
        ] {
            assert!(InterfaceName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn handlers_by_name() {
        for (n, h) in Handler::ALL {
            assert_eq!(Handler::parse(n), Some(h));
            assert_eq!(h.as_str(), n);
        }
        assert_eq!(Handler::parse("reboot"), None);
    }
}
