//! The lab: a faithful local copy of an inventory's sites in Linux network namespaces — an
//! "internet", a NAT router per site with the UDP port-forward of the reference procedure, site
//! LANs, nodes running a real OpenSSH server with their own mount, UTS and PID namespaces, and a
//! controller that reaches them over SSH (see [`plan`] for the layout and the management path).
//!
//! Safety: nothing is created in the machine's own network namespace — veth pairs are
//! created directly between the lab's namespaces; every name carries the lab's prefix; teardown
//! removes exactly the lab's namespaces, the processes inside them (by PID) and its directory.
//!
//! The lab uses the library only through its public API (inventory, topology), and nothing
//! outside the command line uses the lab. Where things are:
//!
//! | module | what |
//! | --- | --- |
//! | [`plan`] | the layout, pure: namespaces, addresses, NAT rules, directories |
//! | `build` | `up`: builds that layout, recording each step in the lab's state |
//! | [`systemd`] | nodes that are Debian machines booted under systemd-nspawn |
//! | `exec` | `exec`, `command`, `status`: entering a lab host, a summary |
//! | `change` | `mesh_only`, `readdress_wan`: changes a test plays out on a running lab |
//! | [`ipv6`] | an IPv6 internet added to a running lab, routers with IPv6 firewalls and pinholes |
//! | `teardown` | `down`: removes exactly what `up` made |
//! | [`demo`] | `wgprov lab demo` |
//! | `net`, `preflight` | the small commands it is built from; what the machine must have |

mod build;
mod change;
pub mod demo;
mod exec;
pub mod ipv6;
mod net;
pub mod plan;
mod preflight;
pub mod systemd;
mod teardown;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use build::up;
pub use change::{mesh_only, readdress_wan};
pub use exec::{command, exec, status};
use net::{run, write};
pub use plan::{LabPlan, check_prefix, lab_dir};
pub use preflight::{inotify_warning, neighbour_entries, neighbour_warning, preflight};
pub use teardown::{DownReport, down};

/// What a running lab is made of; written to `<lab dir>/state.json` as soon as `up` starts, so
/// that `down` can remove a half-built lab too.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    /// Prefix of every name.
    pub prefix: String,
    /// The inventory it was built from.
    pub inventory: PathBuf,
    /// Every namespace it creates.
    pub namespaces: Vec<String>,
    /// Holder processes we started (the `unshare` of each node and of the controller).
    pub holders: BTreeMap<String, u32>,
    /// A process inside each node's and the controller's namespaces, to enter them.
    pub inner: BTreeMap<String, u32>,
    /// Node name to namespace.
    pub nodes: BTreeMap<String, String>,
    /// Node name to management/LAN address.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Site name to router namespace.
    pub routers: BTreeMap<String, String>,
    /// Site name to WAN address.
    pub wan: BTreeMap<String, Ipv4Addr>,
    /// The internet namespace.
    pub inet_ns: String,
    /// The controller namespace.
    pub ctl_ns: String,
    /// The site whose LAN the controller also sits on (`--controller-at`).
    #[serde(default)]
    pub controller_lan: Option<String>,
    /// Systemd nodes (`up --systemd`): node name to the PID of its boot loop.
    #[serde(default)]
    pub boot_loops: BTreeMap<String, u32>,
    /// Cgroup directories made for systemd nodes (removed by `down`).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Systemd nodes: node name to nspawn machine name.
    #[serde(default)]
    pub machines: BTreeMap<String, String>,
}

/// A lab error with this message.
fn lab_err(m: impl Into<String>) -> Error {
    Error::Lab(m.into())
}

/// Namespaces that exist now and carry this prefix.
pub fn existing_namespaces(prefix: &str) -> Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    let want = format!("{prefix}-");
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_string)
        .collect())
}

/// Where the lab's state is kept.
fn state_path(prefix: &str) -> PathBuf {
    lab_dir(prefix).join("state.json")
}

/// Reads the state of the lab with this prefix, if it exists.
pub fn read_state(prefix: &str) -> Result<Option<LabState>> {
    let p = state_path(prefix);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| lab_err(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Writes the lab's state (owner-only), so that `down` knows what to remove.
fn save_state(st: &LabState) -> Result<()> {
    let text = serde_json::to_string_pretty(st).expect("state serializes");
    write(&state_path(&st.prefix), &text, 0o600)
}
