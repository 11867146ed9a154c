//! What a node taken out (`state: absent`) should have: none of the files wgprov created
//! (its drop-ins, timers, scripts, sysctl file, notes and its interface's config), the files it
//! edited given back without its part (the kubelet's `--node-ip`), and the interface's config
//! kept under [`REMOVED_DIR`] (0600) so that a mistake can be undone by hand.

use serde_json::json;

use super::{DesiredFile, FileState, render_path, role_context};
use crate::error::Result;
use crate::formats::kubelet;
use crate::inventory::OsFamily;
use crate::roles::{ContentSpec, EditKind, Roles};
use crate::shell::{InterfaceName, RemotePath};

/// Where a removed node's interface config is kept.
pub const REMOVED_DIR: &str = "/var/lib/wgprov/removed";

/// The kept copy of `iface`'s config.
pub fn kept_copy(iface: &InterfaceName) -> RemotePath {
    RemotePath::new(&format!("{REMOVED_DIR}/{iface}.conf")).expect("a checked interface name")
}

/// Every role file of a node, for either OS family, each with its rendered path (once).
fn role_files<'r>(
    roles: &'r Roles,
    iface: &InterfaceName,
) -> Result<Vec<(RemotePath, &'r crate::roles::ManagedFile, &'r str)>> {
    let mut out: Vec<(RemotePath, &crate::roles::ManagedFile, &str)> = Vec::new();
    for os in OsFamily::ALL {
        let base = json!({ "interface": iface, "os_family": os.as_str() });
        for role in &roles.roles {
            let ctx = role_context(role, &base);
            for f in &role.files {
                let path = render_path(roles, role, f, &ctx)?;
                if !out.iter().any(|(p, _, _)| *p == path) {
                    out.push((path, f, role.name.as_str()));
                }
            }
        }
    }
    Ok(out)
}

/// What facts must read on a node being taken out: every path a role may have written, and
/// the kept copy.
pub fn paths(roles: &Roles, iface: &InterfaceName) -> Result<Vec<RemotePath>> {
    let mut v: Vec<RemotePath> = role_files(roles, iface)?
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    v.push(kept_copy(iface));
    Ok(v)
}

/// The desired files of a node being taken out, from what it has (`existing`): `ours` says
/// which `--node-ip` value is wgprov's (an address of the WireGuard space).
pub fn files(
    roles: &Roles,
    iface: &InterfaceName,
    ours: &dyn Fn(&str) -> bool,
    existing: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<DesiredFile>> {
    let conf = format!("/etc/wireguard/{iface}.conf");
    let mut out = Vec::new();
    for (path, f, role) in role_files(roles, iface)? {
        let state = match &f.content {
            // an edited file is someone else's: given back without wgprov's part, never removed
            ContentSpec::Edit {
                kind: EditKind::KubeletNodeIp,
                ..
            } => match existing(&path).and_then(|c| kubelet::unset_node_ip(&c, ours)) {
                Some(content) => FileState::Present {
                    content,
                    mode: f.mode,
                },
                None => continue,
            },
            ContentSpec::Template { .. } => FileState::Absent,
        };
        if path == conf.as_str()
            && let Some(content) = existing(&path)
        {
            out.push(DesiredFile {
                role: role.to_string(),
                path: kept_copy(iface),
                state: FileState::Present {
                    content,
                    mode: 0o600,
                },
                notify: Vec::new(),
            });
        }
        out.push(DesiredFile {
            role: role.to_string(),
            path,
            state,
            notify: f.notify.clone(),
        });
    }
    Ok(out)
}
