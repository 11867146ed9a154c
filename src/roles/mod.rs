//! The playbook and its roles: loading (from a directory, or the copies embedded in the binary),
//! one minijinja environment with strict undefined, and each role's `when` condition.
//!
//! A role is a folder `roles/<name>/` with `role.yaml` (the files it manages), `defaults.yaml`
//! (variables, lowest precedence) and `templates/`. A missing variable is an error, never an
//! empty string in a config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The default playbook and roles, compiled into the binary so it runs from anywhere.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "playbooks/site.yaml",
        include_str!("../../playbooks/site.yaml"),
    ),
    (
        "roles/wireguard/role.yaml",
        include_str!("../../roles/wireguard/role.yaml"),
    ),
    (
        "roles/wireguard/defaults.yaml",
        include_str!("../../roles/wireguard/defaults.yaml"),
    ),
    (
        "roles/wireguard/templates/wg0.conf.j2",
        include_str!("../../roles/wireguard/templates/wg0.conf.j2"),
    ),
    (
        "roles/kubelet/role.yaml",
        include_str!("../../roles/kubelet/role.yaml"),
    ),
    (
        "roles/kubelet/defaults.yaml",
        include_str!("../../roles/kubelet/defaults.yaml"),
    ),
    (
        "roles/kubelet/templates/k3s.yaml.j2",
        include_str!("../../roles/kubelet/templates/k3s.yaml.j2"),
    ),
    (
        "roles/kubelet/templates/rke2.yaml.j2",
        include_str!("../../roles/kubelet/templates/rke2.yaml.j2"),
    ),
    (
        "roles/boot_order/role.yaml",
        include_str!("../../roles/boot_order/role.yaml"),
    ),
    (
        "roles/boot_order/defaults.yaml",
        include_str!("../../roles/boot_order/defaults.yaml"),
    ),
    (
        "roles/boot_order/templates/after-wireguard.conf.j2",
        include_str!("../../roles/boot_order/templates/after-wireguard.conf.j2"),
    ),
    (
        "roles/forwarding/role.yaml",
        include_str!("../../roles/forwarding/role.yaml"),
    ),
    (
        "roles/forwarding/defaults.yaml",
        include_str!("../../roles/forwarding/defaults.yaml"),
    ),
    (
        "roles/forwarding/templates/sysctl.conf.j2",
        include_str!("../../roles/forwarding/templates/sysctl.conf.j2"),
    ),
    (
        "roles/port_forward/role.yaml",
        include_str!("../../roles/port_forward/role.yaml"),
    ),
    (
        "roles/port_forward/defaults.yaml",
        include_str!("../../roles/port_forward/defaults.yaml"),
    ),
    (
        "roles/port_forward/templates/port-forward.md.j2",
        include_str!("../../roles/port_forward/templates/port-forward.md.j2"),
    ),
    (
        "roles/router_hub/role.yaml",
        include_str!("../../roles/router_hub/role.yaml"),
    ),
    (
        "roles/router_hub/defaults.yaml",
        include_str!("../../roles/router_hub/defaults.yaml"),
    ),
    (
        "roles/router_hub/templates/router-hub.md.j2",
        include_str!("../../roles/router_hub/templates/router-hub.md.j2"),
    ),
    (
        "roles/reresolve/role.yaml",
        include_str!("../../roles/reresolve/role.yaml"),
    ),
    (
        "roles/reresolve/defaults.yaml",
        include_str!("../../roles/reresolve/defaults.yaml"),
    ),
    (
        "roles/reresolve/templates/reresolve.sh.j2",
        include_str!("../../roles/reresolve/templates/reresolve.sh.j2"),
    ),
    (
        "roles/reresolve/templates/reresolve.service.j2",
        include_str!("../../roles/reresolve/templates/reresolve.service.j2"),
    ),
    (
        "roles/reresolve/templates/reresolve.timer.j2",
        include_str!("../../roles/reresolve/templates/reresolve.timer.j2"),
    ),
    (
        "roles/metrics/role.yaml",
        include_str!("../../roles/metrics/role.yaml"),
    ),
    (
        "roles/metrics/defaults.yaml",
        include_str!("../../roles/metrics/defaults.yaml"),
    ),
    (
        "roles/metrics/templates/metrics.sh.j2",
        include_str!("../../roles/metrics/templates/metrics.sh.j2"),
    ),
    (
        "roles/metrics/templates/metrics.service.j2",
        include_str!("../../roles/metrics/templates/metrics.service.j2"),
    ),
    (
        "roles/metrics/templates/metrics.timer.j2",
        include_str!("../../roles/metrics/templates/metrics.timer.j2"),
    ),
    (
        "roles/failover/role.yaml",
        include_str!("../../roles/failover/role.yaml"),
    ),
    (
        "roles/failover/defaults.yaml",
        include_str!("../../roles/failover/defaults.yaml"),
    ),
    (
        "roles/failover/templates/failover.sh.j2",
        include_str!("../../roles/failover/templates/failover.sh.j2"),
    ),
    (
        "roles/failover/templates/failover.service.j2",
        include_str!("../../roles/failover/templates/failover.service.j2"),
    ),
    (
        "roles/failover/templates/failover.timer.j2",
        include_str!("../../roles/failover/templates/failover.timer.j2"),
    ),
];

/// Handlers a role may notify; what each does is defined by `apply`.
pub const HANDLERS: &[&str] = &[
    "wireguard",
    "kubelet",
    "sysctl",
    "daemon_reload",
    "reresolve",
    "metrics",
    "failover",
];

/// Where roles and the playbook come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleSource {
    /// The copies compiled into the binary.
    Embedded,
    /// A directory holding `<role>/…`; the playbook is `../playbooks/site.yaml` beside it when
    /// present, else the embedded one.
    Dir(PathBuf),
}

impl RoleSource {
    /// `--roles-path` when given, else a `roles/` directory beside the inventory, else embedded.
    pub fn resolve(roles_path: Option<&Path>, inventory: &Path) -> RoleSource {
        if let Some(p) = roles_path {
            return RoleSource::Dir(p.to_path_buf());
        }
        let beside = inventory.parent().unwrap_or(Path::new(".")).join("roles");
        if beside.is_dir() {
            RoleSource::Dir(beside)
        } else {
            RoleSource::Embedded
        }
    }

    fn read(&self, rel: &str) -> Result<Option<String>> {
        match self {
            RoleSource::Embedded => Ok(EMBEDDED
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, c)| c.to_string())),
            RoleSource::Dir(dir) => {
                let path = if let Some(r) = rel.strip_prefix("roles/") {
                    dir.join(r)
                } else {
                    let beside = dir.parent().unwrap_or(Path::new(".")).join(rel);
                    if !beside.exists() {
                        return RoleSource::Embedded.read(rel);
                    }
                    beside
                };
                match std::fs::read_to_string(&path) {
                    Ok(t) => Ok(Some(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(path, e)),
                }
            }
        }
    }

    fn templates(&self, role: &str) -> Result<Vec<(String, String)>> {
        match self {
            RoleSource::Embedded => {
                let prefix = format!("roles/{role}/templates/");
                Ok(EMBEDDED
                    .iter()
                    .filter_map(|(p, c)| {
                        p.strip_prefix(&prefix)
                            .map(|n| (n.to_string(), c.to_string()))
                    })
                    .collect())
            }
            RoleSource::Dir(dir) => {
                let tdir = dir.join(role).join("templates");
                let mut out = Vec::new();
                let entries = match std::fs::read_dir(&tdir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(Error::io(tdir, e)),
                };
                for e in entries {
                    let e = e.map_err(|e| Error::io(&tdir, e))?;
                    if e.path().is_file() {
                        let text = std::fs::read_to_string(e.path())
                            .map_err(|err| Error::io(e.path(), err))?;
                        out.push((e.file_name().to_string_lossy().into_owned(), text));
                    }
                }
                Ok(out)
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookFile {
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    files: Vec<FileSpec>,
}

/// How a managed file's content is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSpec {
    /// Rendered from a template of the role.
    Template {
        /// Template file name under `templates/`.
        name: String,
        /// Merge into the node's existing file (`wireguard`), or replace it.
        merge: Option<MergeKind>,
    },
    /// An edit of the existing file.
    Edit {
        /// Which edit.
        kind: EditKind,
        /// The value, a template expression rendered per node.
        value: String,
    },
}

/// Merges of a rendered file into the existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKind {
    /// wg-quick config: keep the key, comments and unknown keys; replace peers.
    Wireguard,
}

/// In-place edits of an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    /// Set `--node-ip` in `KUBELET_EXTRA_ARGS`.
    KubeletNodeIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    path: String,
    #[serde(default)]
    when: Option<String>,
    mode: String,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    merge: Option<MergeKind>,
    #[serde(default)]
    edit: Option<EditKind>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    notify: Vec<String>,
}

/// One file a role manages.
#[derive(Clone, Debug)]
pub struct ManagedFile {
    /// Path template (rendered per node).
    pub path: String,
    /// Condition for this file (a minijinja expression) on top of its role's; when false, a
    /// templated file is removed and an edited one is left alone (it is someone else's file).
    pub when: Option<String>,
    /// Mode bits.
    pub mode: u32,
    /// How the content is made.
    pub content: ContentSpec,
    /// Handlers to run when it changes.
    pub notify: Vec<crate::shell::Handler>,
}

/// A loaded role.
#[derive(Clone, Debug)]
pub struct Role {
    /// Name (its folder).
    pub name: String,
    /// Condition (a minijinja expression); `None`: always.
    pub when: Option<String>,
    /// Its files.
    pub files: Vec<ManagedFile>,
    /// Its defaults.
    pub defaults: BTreeMap<String, serde_json::Value>,
}

/// The playbook's roles and the template environment they render in.
pub struct Roles {
    /// Roles in playbook order.
    pub roles: Vec<Role>,
    /// Templates are registered as `<role>/<file>`.
    pub env: Environment<'static>,
    /// Where they came from.
    pub source: RoleSource,
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roles")
            .field("roles", &self.roles)
            .field("source", &self.source)
            .finish()
    }
}

fn role_err(role: &str, message: impl Into<String>) -> Error {
    Error::Role {
        role: role.to_string(),
        message: message.into(),
    }
}

/// A strict template environment: undefined variables are errors, blocks trimmed, the final
/// newline kept.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters"),
    );
    env
}

impl Roles {
    /// Loads the playbook and every role it names, compiling every template and condition, so
    /// that a broken role fails before any host is contacted.
    pub fn load(source: RoleSource) -> Result<Roles> {
        let pb_text = source
            .read("playbooks/site.yaml")?
            .ok_or_else(|| role_err("playbook", "playbooks/site.yaml not found"))?;
        let pb: PlaybookFile = serde_saphyr::from_str(&pb_text)
            .map_err(|e| role_err("playbook", format!("playbooks/site.yaml: {e}")))?;
        let mut env = environment();
        let mut roles = Vec::new();
        for name in pb.roles {
            let rf_text = source
                .read(&format!("roles/{name}/role.yaml"))?
                .ok_or_else(|| role_err(&name, format!("roles/{name}/role.yaml not found")))?;
            let rf: RoleFile = serde_saphyr::from_str(&rf_text)
                .map_err(|e| role_err(&name, format!("role.yaml: {e}")))?;
            let defaults: BTreeMap<String, serde_json::Value> =
                match source.read(&format!("roles/{name}/defaults.yaml"))? {
                    Some(t) if !t.trim().is_empty() => serde_saphyr::from_str(&t)
                        .map_err(|e| role_err(&name, format!("defaults.yaml: {e}")))?,
                    _ => BTreeMap::new(),
                };
            let templates = source.templates(&name)?;
            for (tname, text) in &templates {
                env.add_template_owned(format!("{name}/{tname}"), text.clone())
                    .map_err(|e| role_err(&name, format!("templates/{tname}: {e}")))?;
            }
            if let Some(w) = &rf.when {
                env.compile_expression(w)
                    .map_err(|e| role_err(&name, format!("when `{w}`: {e}")))?;
            }
            let mut files = Vec::new();
            for f in &rf.files {
                if let Some(w) = &f.when {
                    env.compile_expression(w)
                        .map_err(|e| role_err(&name, format!("{}: when `{w}`: {e}", f.path)))?;
                }
            }
            for f in rf.files {
                files.push(file_spec(&name, f, &templates)?);
            }
            roles.push(Role {
                name,
                when: rf.when,
                files,
                defaults,
            });
        }
        Ok(Roles { roles, env, source })
    }
}

fn file_spec(role: &str, f: FileSpec, templates: &[(String, String)]) -> Result<ManagedFile> {
    let mode = u32::from_str_radix(f.mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            role_err(
                role,
                format!("{}: mode `{}` is not octal like \"0644\"", f.path, f.mode),
            )
        })?;
    let mut notify = Vec::new();
    for h in &f.notify {
        match crate::shell::Handler::parse(h) {
            Some(h) => notify.push(h),
            None => {
                return Err(role_err(
                    role,
                    format!(
                        "{}: notify `{h}` is not a handler (known: {})",
                        f.path,
                        HANDLERS.join(", ")
                    ),
                ));
            }
        }
    }
    let content = match (f.template, f.edit) {
        (Some(t), None) => {
            if !templates.iter().any(|(n, _)| *n == t) {
                return Err(role_err(
                    role,
                    format!("{}: template {t} not found in templates/", f.path),
                ));
            }
            ContentSpec::Template {
                name: format!("{role}/{t}"),
                merge: f.merge,
            }
        }
        (None, Some(kind)) => ContentSpec::Edit {
            kind,
            value: f
                .value
                .ok_or_else(|| role_err(role, format!("{}: an edit needs a value", f.path)))?,
        },
        _ => {
            return Err(role_err(
                role,
                format!("{}: give exactly one of template or edit", f.path),
            ));
        }
    };
    Ok(ManagedFile {
        path: f.path,
        when: f.when,
        mode,
        content,
        notify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_roles_load_and_compile() {
        let r = Roles::load(RoleSource::Embedded).unwrap();
        let names: Vec<&str> = r.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "wireguard",
                "kubelet",
                "boot_order",
                "forwarding",
                "port_forward",
                "router_hub",
                "reresolve",
                "metrics",
                "failover"
            ]
        );
    }

    #[test]
    fn embedded_copies_match_the_repository_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (rel, text) in EMBEDDED {
            let on_disk = std::fs::read_to_string(root.join(rel)).unwrap();
            assert_eq!(&on_disk, text, "{rel}");
        }
    }

    #[test]
    fn strict_undefined_is_an_error() {
        let env = environment();
        let err = env
            .render_str("x = {{ nope }}", minijinja::context! {})
            .unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }
}
