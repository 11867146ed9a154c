//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use wgprov::desired::{self, DesiredFile, FileState, KeyRing};
use wgprov::error::{Diagnostic, Error};
use wgprov::roles::{RoleSource, Roles};
use wgprov::topology::{Planned, plan_inventory};

/// A temporary directory holding one inventory file.
pub struct Inv {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Inv {
    pub fn new(yaml: &str) -> Inv {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.yaml");
        std::fs::write(&path, yaml).unwrap();
        Inv { dir, path }
    }
    pub fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).unwrap();
    }
    pub fn plan(&self) -> Planned {
        plan_inventory(&self.path, true).unwrap_or_else(|e| panic!("plan failed:\n{e}"))
    }
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match plan_inventory(&self.path, false) {
            Ok(p) => p.warnings,
            Err(Error::Invalid(d)) => d,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    pub fn lock_path(&self) -> PathBuf {
        wgprov::inventory::lock_path(&self.path)
    }
}

/// Renders every node of a plan with fresh keys; returns (node, files) and the keys.
pub fn render(p: &Planned) -> (Vec<(String, Vec<DesiredFile>)>, KeyRing) {
    let roles = Roles::load(RoleSource::Embedded).unwrap();
    let keys = desired::fresh_keys(&p.topology);
    (
        desired::render_offline(&roles, &p.topology, &keys).unwrap(),
        keys,
    )
}

/// The content of the file at `path` in a node's desired files.
pub fn content<'a>(files: &'a [DesiredFile], path: &str) -> Option<&'a str> {
    files
        .iter()
        .find(|f| f.path == path)
        .and_then(|f| match &f.state {
            FileState::Present { content, .. } => Some(content.as_str()),
            FileState::Absent => None,
        })
}

/// True when a program is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Skips (returns false, with a visible message) when `prog` is missing — except under CI,
/// where `.ci/run` installs everything and a missing tool is a failure.
pub fn require(prog: &str) -> bool {
    if have(prog) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{prog} is missing under CI: .ci/run should install it");
    }
    eprintln!("SKIPPED: {prog} not installed (apt-get install wireguard-tools)");
    false
}

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A generated inventory: `sites` sites (names given), each with `nodes[i]` nodes.
pub fn gen_inventory(sites: &[(String, usize)], endpoint_all: bool) -> String {
    let mut y = String::from(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\nsites:\n",
    );
    for (i, (name, n)) in sites.iter().enumerate() {
        y.push_str(&format!("  {name}:\n"));
        if endpoint_all || i > 0 {
            y.push_str(&format!("    endpoint: {name}.example.net:51820\n"));
        }
        y.push_str(&format!("    next_hop: {name}-n0\n    nodes:\n"));
        for j in 0..*n {
            y.push_str(&format!(
                "      {name}-n{j}:\n        address: 192.168.{}.{}\n",
                i % 250,
                j + 10
            ));
        }
    }
    y
}

/// True when running as root; otherwise skips visibly (fails under CI, which runs as root).
pub fn require_root() -> bool {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() == Some("0") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root, and CI runs as root");
    }
    eprintln!("SKIPPED: needs root (network namespaces)");
    false
}
