//! The inventory: the YAML schema (serde, unknown and duplicate keys refused), loading with
//! source locations, validation of every inventory rule, and the lock file of allocations.

pub mod lock;
pub mod model;
pub mod patterns;
pub mod schema;
pub mod sshconfig;
pub mod validate;

use std::path::{Path, PathBuf};

pub use model::*;

use crate::error::{Diagnostic, Error, Result, Severity};

/// A loaded, valid inventory and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The inventory.
    pub inventory: Inventory,
    /// Warnings (never errors).
    pub warnings: Vec<Diagnostic>,
}

/// Options for the YAML parser: duplicate keys refused, resource budget on. The budget's node
/// and event caps are raised from the parser's defaults (250k nodes) so that an inventory of
/// 255 sites x 250 nodes (~260k YAML nodes) loads; depth, alias and size limits stay.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 4_000_000;
    budget.max_events = 16_000_000;
    serde_saphyr::options! { with_snippet: false, budget: Some(budget) }
}

/// Reads and validates the inventory at `path`. On failure the error lists every problem.
pub fn load(path: &Path) -> Result<Loaded> {
    // An inventory that cannot be read is bad usage (exit 2), like an invalid one.
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read inventory {}: {e}", path.display())))?;
    load_str(path, &text)
}

/// Validates inventory text as if read from `path`.
pub fn load_str(path: &Path, text: &str) -> Result<Loaded> {
    let raw: schema::RawInventory = parse_yaml(path, text)?;
    let (inv, diags) = validate::validate(path, &raw);
    match inv {
        Some(inventory) => Ok(Loaded {
            inventory,
            warnings: diags,
        }),
        None => Err(Error::Invalid(diags)),
    }
}

/// Parses YAML into `T`, turning a parser error into a located [`Diagnostic`].
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_saphyr::from_str_with_options::<T>(text, yaml_options())
        .map_err(|e| Error::Invalid(vec![yaml_diagnostic(path, text, &e)]))
}

fn yaml_diagnostic(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let mut message = e.to_string();
    // The parser appends its own "at line L, column C"; we print the location up front.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let message = message.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line,
        column,
        field: yaml_path_at(text, line, column),
        message,
    }
}

/// The dotted path of mapping keys leading to `line:column` in block-style YAML, e.g.
/// `sites.home.nodes.node1`. Best effort: flow-style mappings give the enclosing block path.
pub fn yaml_path_at(text: &str, line: u32, column: u32) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line as usize > lines.len() {
        return String::new();
    }
    let mut path: Vec<String> = Vec::new();
    let here = lines[line as usize - 1];
    let here_indent = here.len() - here.trim_start().len();
    // The key on the error's own line, when the error points at that key or its value.
    if let Some(k) = key_of(here)
        && (column as usize).saturating_sub(1) >= here_indent
    {
        path.push(k);
    }
    let mut indent = here_indent;
    for l in lines[..line as usize - 1].iter().rev() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = l.len() - t.len();
        if ind < indent {
            if let Some(k) = key_of(l) {
                path.push(k);
            }
            indent = ind;
            if ind == 0 {
                break;
            }
        }
    }
    path.reverse();
    path.join(".")
}

fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches("- ");
    let (k, _) = t.split_once(':')?;
    let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
    (!k.is_empty() && !k.contains(' ') && !k.starts_with('#')).then(|| k.to_string())
}

/// The lock file that belongs to an inventory: `home.lock.yaml` beside `home.yaml`.
pub fn lock_path(inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "inventory".into());
    inventory.with_file_name(format!("{stem}.lock.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_path_names_the_nested_key() {
        let y = "network:\n  wireguard_cidr: x\nsites:\n  home:\n    nodes:\n      n1:\n        adress: 1\n";
        assert_eq!(yaml_path_at(y, 7, 9), "sites.home.nodes.n1.adress");
        assert_eq!(yaml_path_at(y, 2, 3), "network.wireguard_cidr");
    }

    #[test]
    fn lock_path_sits_beside_the_inventory() {
        assert_eq!(
            lock_path(Path::new("inv/home.yaml")),
            PathBuf::from("inv/home.lock.yaml")
        );
    }
}
