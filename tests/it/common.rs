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
        wgprov::hosts::render::render_offline(&roles, &p.topology, &keys).unwrap(),
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
    if Path::new("/usr/sbin").join(prog).is_file() {
        return true;
    }
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
    skipped(&format!(
        "{prog} not installed (apt-get install wireguard-tools)"
    ));
    false
}

/// Says, where the person running the tests sees it, that the current test did not run. The
/// test harness captures `eprintln!` of passing tests, so a skip printed that way would pass
/// silently: this writes to the process's stderr directly.
pub fn skipped(why: &str) {
    use std::io::Write;
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {name}: {why}");
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
    skipped("needs root (network namespaces)");
    false
}

/// Lab tests take this lock: labs are built one at a time (2 cores: several at once starve each other).
pub static LAB_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A lab that is torn down when dropped — also when the test panics half-way.
pub struct LabGuard {
    pub prefix: String,
    pub state: wgprov::lab::LabState,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl LabGuard {
    /// Builds a lab from `inventory` with a prefix unique to this process and `tag`.
    pub fn up(inventory: &Path, tag: &str, no_port_forward: &[&str]) -> LabGuard {
        LabGuard::up_at(inventory, tag, no_port_forward, None)
    }

    /// Like [`LabGuard::up`], with the controller also on `controller_at`'s LAN.
    pub fn up_at(
        inventory: &Path,
        tag: &str,
        no_port_forward: &[&str],
        controller_at: Option<&str>,
    ) -> LabGuard {
        LabGuard::build(inventory, tag, no_port_forward, controller_at, None)
    }

    /// Like [`LabGuard::up`], with every node Debian booted under systemd-nspawn from `image`.
    pub fn up_systemd(
        inventory: &Path,
        tag: &str,
        image: &Path,
        no_port_forward: &[&str],
    ) -> LabGuard {
        LabGuard::build(inventory, tag, no_port_forward, None, Some(image))
    }

    fn build(
        inventory: &Path,
        tag: &str,
        no_port_forward: &[&str],
        controller_at: Option<&str>,
        systemd: Option<&Path>,
    ) -> LabGuard {
        let lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("t{}{tag}", std::process::id() % 100_000);
        let _ = wgprov::lab::down(&prefix);
        let p = plan_inventory(inventory, true).unwrap();
        let npf: Vec<String> = no_port_forward.iter().map(|s| s.to_string()).collect();
        let mut layout =
            wgprov::lab::plan::plan(&p.inventory, &p.topology, &prefix, &npf, controller_at)
                .unwrap();
        layout.systemd = systemd.map(Path::to_path_buf);
        let state = wgprov::lab::up(inventory, &layout).unwrap_or_else(|e| panic!("lab up: {e}"));
        LabGuard {
            prefix,
            state,
            _lock: lock,
        }
    }

    /// Runs a command inside `name`; returns (exit code, stdout, stderr).
    pub fn exec(&self, name: &str, cmd: &[&str]) -> (i32, String, String) {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let out = wgprov::lab::command(&self.prefix, name, &cmd)
            .unwrap()
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sends `signal` (e.g. `STOP`, `KILL`) to `node`'s sshd, from inside the node.
    pub fn signal_sshd(&self, node: &str, signal: &str) {
        let pidfile = wgprov::lab::lab_dir(&self.prefix)
            .join("nodes")
            .join(node)
            .join("sshd.pid");
        self.sh(
            node,
            &format!("kill -{signal} $(cat {})", pidfile.display()),
        );
    }

    /// Puts an executable `name` with `script` in `node`'s own `/usr/local/sbin` (first on the
    /// PATH of every wgprov script): a wrapper around a real tool, to inject a fault.
    pub fn wrap_tool(&self, node: &str, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = wgprov::lab::lab_dir(&self.prefix)
            .join("nodes")
            .join(node)
            .join("sbin")
            .join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Removes a wrapper put there by [`LabGuard::wrap_tool`].
    pub fn unwrap_tool(&self, node: &str, name: &str) {
        let p = wgprov::lab::lab_dir(&self.prefix)
            .join("nodes")
            .join(node)
            .join("sbin")
            .join(name);
        let _ = std::fs::remove_file(p);
    }

    /// Runs a shell command inside `name` and expects success; returns stdout.
    pub fn sh(&self, name: &str, script: &str) -> String {
        let (code, out, err) = self.exec(name, &["sh", "-c", script]);
        assert_eq!(code, 0, "{name}: `{script}` failed: {err}{out}");
        out
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = wgprov::lab::down(&self.prefix) {
            eprintln!("lab down {}: {e}", self.prefix);
        }
    }
}

/// True when lab tests can run here (root and the packages); otherwise skips visibly.
pub fn lab_available() -> bool {
    require_root() && require("wireguard-go") && require("sshd") && require("iptables")
}

/// The systemd image, or `None` (a visible skip; a failure under CI, whose install step builds
/// it) when it is not built.
pub fn systemd_image() -> Option<PathBuf> {
    if !lab_available() || !require("systemd-nspawn") {
        return None;
    }
    let image = wgprov::lab::systemd::image_dir();
    if wgprov::lab::systemd::image_ready(&image) {
        return Some(image);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the systemd lab image {} is missing under CI: scripts/install-deps builds it (scripts/lab-image)",
            image.display()
        );
    }
    skipped(&format!(
        "the systemd lab image {} is not built (run scripts/lab-image as root)",
        image.display()
    ));
    None
}

/// A copy of the project's roles under `dir` with one line of `role`'s defaults replaced (a lab
/// test that shortens a wait, e.g. a hold time); the path to give `--roles-path`.
pub fn roles_with_default(dir: &Path, role: &str, from: &str, to: &str) -> String {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let t = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &t);
            } else {
                std::fs::copy(e.path(), &t).unwrap();
            }
        }
    }
    let out = dir.join("roles");
    copy_dir(&root().join("roles"), &out);
    let d = out.join(role).join("defaults.yaml");
    let text = std::fs::read_to_string(&d).unwrap();
    assert!(text.contains(from), "{}: {text}", d.display());
    std::fs::write(&d, text.replace(from, to)).unwrap();
    out.display().to_string()
}
