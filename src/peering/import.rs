//! `wgprov import`: the site a [`Card`] describes goes into the inventory as `managed: false`.
//! The file is edited as text — the new site's lines inserted at the end of `sites:`, or an
//! existing unmanaged site's values replaced in place — so that every comment and every other
//! byte stays as written. The result is checked like any inventory (and against the lock file:
//! a neighbour never takes a block already handed out here) before anything is written, and it
//! is written atomically.

use std::io::Write as _;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use super::{Card, CardSource, yaml_scalar};
use crate::error::{Diagnostic, Error, Result};
use crate::inventory::lock::Lock;
use crate::inventory::schema::{RawInventory, RawSite, S};
use crate::inventory::validate::{Diags, is_safe_name, loc, overlaps};
use crate::inventory::{Endpoint, Inventory};
use crate::keys::PublicKey;
use crate::topology::Topology;

/// What an import does to the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The site is new.
    Added,
    /// The site was there (unmanaged) with other values.
    Updated,
    /// The site is already as the card says.
    Unchanged,
}

/// A checked import, not yet written.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The site's name in the inventory.
    pub site: String,
    /// Added, updated or unchanged.
    pub action: Action,
    /// The inventory's text after the import.
    pub text: String,
    /// What changed, one line per field (`endpoint: a -> b`).
    pub changes: Vec<String>,
    /// Things worth knowing (an MTU or space that differs from ours).
    pub warnings: Vec<String>,
}

/// Plans the import of `card` into the inventory `text` (read from `path`, with its `lock`),
/// under `name` or the card's own site name. Nothing is written: on success the outcome holds
/// the new text, checked like any inventory; on failure every problem is returned with its
/// file (the inventory or the card), line and field.
pub fn plan(
    path: &Path,
    text: &str,
    lock: &Lock,
    card: &Card,
    src: &CardSource,
    name: Option<&str>,
) -> Result<Outcome> {
    let name = name.unwrap_or(&card.site).to_string();
    if !is_safe_name(&name) {
        return Err(Error::Usage(format!(
            "`{name}` is not a safe site name: use 1-63 lowercase letters, digits and hyphens"
        )));
    }
    // the inventory as it is must be valid: its own problems are shown first
    let current = crate::inventory::load_str(path, text)?.inventory;
    let (before, _) = Topology::build(&current, lock)?;
    let raw: RawInventory = crate::inventory::parse_yaml(path, text)?;
    let existing = raw
        .sites
        .value
        .iter()
        .find(|(k, _)| k.value == name)
        .map(|(k, v)| (k, &v.value));

    let mut inv_d = Diags::new(path);
    let mut card_d = Diags::new(&src.path);
    if let Some((key, _)) = existing
        && current.site(&name).is_some_and(|s| s.managed)
    {
        inv_d.error(
            loc(key),
            format!("sites.{name}"),
            format!(
                "site {name} is managed by this inventory: a card never replaces a managed site (import it under another name with --as NAME)"
            ),
        );
        return Err(Error::Invalid(inv_d.list));
    }

    let mut warnings = Vec::new();
    our_blocks(
        &mut inv_d,
        path,
        lock,
        (&current, &before),
        card,
        &name,
        &mut warnings,
    );
    their_reserved(&mut card_d, (&current, &before), card, src);
    let mut errors = inv_d.list;
    errors.append(&mut card_d.list);
    if errors.iter().any(Diagnostic::is_error) {
        return Err(Error::Invalid(errors));
    }

    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let (new_text, changes, action) = match existing {
        Some((key, site)) => {
            let (t, changes) = update_site(text, key, site, card, eol)?;
            let action = if changes.is_empty() {
                Action::Unchanged
            } else {
                Action::Updated
            };
            (t, changes, action)
        }
        None => (
            insert_site(text, &raw, &name, card, eol)?,
            Vec::new(),
            Action::Added,
        ),
    };
    check_result(path, lock, &current, &new_text, card, &name)?;

    if card.mtu != current.network.mtu {
        warnings.push(format!(
            "site {}'s wg0 MTU is {}, ours is {}: packets between the sites must fit the smaller (network.mtu)",
            card.site, card.mtu, current.network.mtu
        ));
    }
    if card.wireguard_space != current.network.wireguard_cidr {
        warnings.push(format!(
            "site {}'s nodes route {} into their mesh, ours route {}: hosts outside both cannot be reached across",
            card.site, card.wireguard_space, current.network.wireguard_cidr
        ));
    }
    Ok(Outcome {
        site: name,
        action,
        text: new_text,
        changes,
        warnings,
    })
}

/// A block handed out here (written, or recorded in the lock file) is never taken; a site
/// without a block yet is warned that it will not get the card's.
fn our_blocks(
    inv_d: &mut Diags,
    path: &Path,
    lock: &Lock,
    (current, before): (&Inventory, &Topology),
    card: &Card,
    name: &str,
    warnings: &mut Vec<String>,
) {
    let lock_file = crate::inventory::lock_path(path);
    let theirs = IpNet::V4(card.wireguard_cidr);
    for s in current.sites.iter().filter(|s| s.name != name) {
        let Some(b) = before.site(&s.name).map(|p| p.wireguard_cidr) else {
            continue;
        };
        if !overlaps(&theirs, &IpNet::V4(b)) {
            continue;
        }
        let recorded = lock.sites.get(&s.name).and_then(|l| l.wireguard_cidr) == Some(b);
        if s.wireguard_cidr.is_some() || recorded {
            let whence = if s.wireguard_cidr.is_some() {
                String::new()
            } else {
                format!(" (recorded in {})", lock_file.display())
            };
            inv_d.error(
                s.loc,
                format!("sites.{}.wireguard_cidr", s.name),
                format!(
                    "{b} is site {}'s block{whence}: the card's site {} ({}) collides with it; agree on another block with its owner",
                    s.name, card.site, card.wireguard_cidr
                ),
            );
        } else {
            warnings.push(format!(
                "site {} has no block yet: it will not get {b}, which the card's site {} uses",
                s.name, card.site
            ));
        }
    }
}

/// The blocks the other side already routes must not cover one of our sites.
fn their_reserved(
    card_d: &mut Diags,
    (current, before): (&Inventory, &Topology),
    card: &Card,
    src: &CardSource,
) {
    for (rname, rb) in card.reserved.iter().filter(|(n, _)| *n != card.site) {
        for s in current.sites.iter().filter(|s| s.managed) {
            let Some(b) = before.site(&s.name).map(|p| p.wireguard_cidr) else {
                continue;
            };
            // the same block is our own site as they know it (they peer with it already)
            if *rb != b && overlaps(&IpNet::V4(*rb), &IpNet::V4(b)) {
                card_d.error(
                    src.loc(&format!("reserved.{rname}")),
                    format!("reserved.{rname}"),
                    format!(
                        "the card's side routes {rb} to its site {rname}, which overlaps your site {}'s block {b}: the two networks cannot both route it; agree on other blocks",
                        s.name
                    ),
                );
            }
        }
    }
}

/// The edited text, checked like any inventory, and the edit did what it says: the site
/// holds the card's facts, the others are there.
fn check_result(
    path: &Path,
    lock: &Lock,
    current: &Inventory,
    new_text: &str,
    card: &Card,
    name: &str,
) -> Result<()> {
    let after = match crate::inventory::load_str(path, new_text) {
        Ok(l) => l.inventory,
        Err(Error::Invalid(d)) => return Err(Error::Invalid(as_after(d))),
        Err(e) => return Err(e),
    };
    match Topology::build(&after, lock) {
        Ok(_) => {}
        Err(Error::Invalid(d)) => return Err(Error::Invalid(as_after(d))),
        Err(e) => return Err(e),
    }
    let s = after.site(name);
    let holds = s.is_some_and(|s| {
        !s.managed
            && s.wireguard_cidr == Some(card.wireguard_cidr)
            && s.endpoint == card.endpoint
            && s.public_key == Some(card.public_key)
    });
    let others = current
        .sites
        .iter()
        .all(|o| o.name == name || after.site(&o.name).is_some());
    if !holds || !others {
        return Err(Error::Usage(format!(
            "could not edit {} safely (an unusual layout of `sites:` or of site {name}): nothing written; add the site by hand from the card",
            path.display()
        )));
    }
    Ok(())
}

/// Diagnostics of the inventory as the import would leave it: their lines are those of the
/// result, so they say so.
fn as_after(d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    d.into_iter()
        .map(|mut x| {
            x.message
                .push_str(" (in the inventory as the import would leave it)");
            x
        })
        .collect()
}

/// The byte offset of a 1-based line and (character) column.
fn offset_of(text: &str, line: u64, column: u64) -> Option<usize> {
    let mut start = 0usize;
    for _ in 1..line {
        start += text[start..].find('\n')? + 1;
    }
    let rest = &text[start..];
    let col = column.saturating_sub(1) as usize;
    let within = rest
        .char_indices()
        .nth(col)
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    Some(start + within)
}

fn offset<T>(text: &str, s: &S<T>) -> Option<usize> {
    offset_of(text, s.referenced.line(), s.referenced.column())
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0)
}

/// The offset just past the end of the line holding `at` (after its newline, if any).
fn line_end(text: &str, at: usize) -> usize {
    text[at..]
        .find('\n')
        .map(|i| at + i + 1)
        .unwrap_or(text.len())
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// True for a line that holds nothing for YAML: blank or a comment.
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The end of the single-line scalar starting at `start`: a quoted one with its closing quote,
/// a plain one up to a comment or the end of the line. `None` for anything else (a block
/// scalar, a flow collection, an alias or tag), which is not edited.
fn scalar_end(text: &str, start: usize) -> Option<usize> {
    let eol = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let seg = &text[start..eol];
    let b = seg.as_bytes();
    match b.first()? {
        b'"' => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(start + i + 1),
                    _ => i += 1,
                }
            }
            None
        }
        b'\'' => {
            let mut i = 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Some(start + i + 1);
                }
                i += 1;
            }
            None
        }
        b'|' | b'>' | b'{' | b'[' | b'&' | b'*' | b'!' => None,
        _ => {
            let cut = [" #", "\t#"]
                .iter()
                .filter_map(|c| seg.find(c))
                .min()
                .unwrap_or(seg.len());
            Some(start + seg[..cut].trim_end().len())
        }
    }
}

/// After a mapping key at `key_at`: true when its value starts on a later line (a block
/// mapping), false when something follows the colon on the key's own line (flow style).
fn value_is_block(text: &str, key_at: usize) -> bool {
    let eol = line_end(text, key_at);
    // past a quoted key's closing quote; a plain key ends at the first `:` followed by a space
    let from = match text.as_bytes().get(key_at) {
        Some(b'"' | b'\'') => match scalar_end(text, key_at) {
            Some(e) => e,
            None => return false,
        },
        _ => key_at,
    };
    let line = &text[from..eol];
    let colon = line
        .char_indices()
        .find(|(i, c)| *c == ':' && line[i + 1..].chars().next().is_none_or(char::is_whitespace));
    match colon {
        Some((i, _)) => is_filler(&line[i + 1..]),
        None => false,
    }
}

/// The indentation of the first line holding something after the line of `at`.
fn next_content_indent(text: &str, at: usize) -> Option<usize> {
    text[line_end(text, at)..]
        .split('\n')
        .find(|l| !is_filler(l))
        .map(indent_of)
}

struct Edit {
    start: usize,
    end: usize,
    with: String,
}

fn apply_edits(text: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = text.to_string();
    for e in edits {
        out.replace_range(e.start..e.end, &e.with);
    }
    out
}

fn refuse(name: &str, why: &str) -> Error {
    Error::Usage(format!(
        "site {name} is written in a way import does not edit ({why}): nothing written; rewrite it as a block mapping of plain values, or remove it, and import again"
    ))
}

/// Replaces an existing unmanaged site's values in place; returns the text and what changed.
fn update_site(
    text: &str,
    key: &S<String>,
    site: &RawSite,
    card: &Card,
    eol: &str,
) -> Result<(String, Vec<String>)> {
    let name = &key.value;
    let key_at = offset(text, key).ok_or_else(|| refuse(name, "its place is unknown"))?;
    if !value_is_block(text, key_at) {
        return Err(refuse(name, "flow style"));
    }
    let site_indent = indent_of(&text[line_start(text, key_at)..]);
    let child = next_content_indent(text, key_at)
        .filter(|i| *i > site_indent)
        .unwrap_or(site_indent + 2);
    let mut edits = Vec::new();
    let mut inserts = String::new();
    let mut changes = Vec::new();
    let mut set = |field: &str,
                   have: Option<&S<String>>,
                   same: &dyn Fn(&str) -> bool,
                   want: Option<String>|
     -> Result<()> {
        match (have, want) {
            (Some(h), Some(w)) if !same(h.value.trim()) => {
                let at = offset(text, h).ok_or_else(|| refuse(name, field))?;
                let end = scalar_end(text, at).ok_or_else(|| refuse(name, field))?;
                changes.push(format!("{field}: {} -> {w}", h.value.trim()));
                edits.push(Edit {
                    start: at,
                    end,
                    with: w,
                });
            }
            (Some(_), Some(_)) => {}
            (None, Some(w)) => {
                changes.push(format!("{field}: (none) -> {w}"));
                inserts.push_str(&format!("{}{field}: {w}{eol}", " ".repeat(child)));
            }
            (Some(h), None) => {
                let at = offset(text, h).ok_or_else(|| refuse(name, field))?;
                let start = line_start(text, at);
                if !text[start..at].trim_start().starts_with(field) {
                    return Err(refuse(name, field));
                }
                changes.push(format!("{field}: {} -> (none)", h.value.trim()));
                edits.push(Edit {
                    start,
                    end: line_end(text, at),
                    with: String::new(),
                });
            }
            (None, None) => {}
        }
        Ok(())
    };
    let block = card.wireguard_cidr;
    set(
        "wireguard_cidr",
        site.wireguard_cidr.as_ref(),
        &|v: &str| v.parse::<Ipv4Net>().ok() == Some(block),
        Some(block.to_string()),
    )?;
    set(
        "endpoint",
        site.endpoint.as_ref(),
        &|v: &str| Endpoint::parse(v).ok() == card.endpoint,
        card.endpoint.as_ref().map(|e| yaml_scalar(&e.to_string())),
    )?;
    let key_b64 = card.public_key;
    set(
        "public_key",
        site.public_key.as_ref(),
        &|v: &str| PublicKey::from_base64(v).ok() == Some(key_b64),
        Some(format!("\"{}\"", card.public_key)),
    )?;
    if !inserts.is_empty() {
        // the new fields go right under the site's name
        let at = line_end(text, key_at);
        let with = if at == text.len() && !text.ends_with('\n') {
            format!("{eol}{inserts}")
        } else {
            inserts
        };
        edits.push(Edit {
            start: at,
            end: at,
            with,
        });
    }
    Ok((apply_edits(text, edits), changes))
}

/// Inserts a new unmanaged site at the end of the `sites:` mapping, indented like the others.
fn insert_site(
    text: &str,
    raw: &RawInventory,
    name: &str,
    card: &Card,
    eol: &str,
) -> Result<String> {
    let cannot = |why: &str| {
        Error::Usage(format!(
            "cannot add site {name} to the inventory ({why}): nothing written; add it by hand from the card"
        ))
    };
    // the top-level `sites:` line, its block, and the last line that holds something in it
    let mut at = 0usize;
    let mut sites_line = None;
    while at < text.len() {
        let end = line_end(text, at);
        let line = &text[at..end];
        if let Some(rest) = line.strip_prefix("sites:") {
            if !is_filler(rest) {
                return Err(cannot("`sites:` is written in flow style"));
            }
            sites_line = Some(at);
            break;
        }
        at = end;
    }
    let sites_at = sites_line.ok_or_else(|| cannot("no top-level `sites:` line"))?;
    let mut insert_at = line_end(text, sites_at);
    let mut at = insert_at;
    while at < text.len() {
        let end = line_end(text, at);
        let line = text[at..end].trim_end_matches(['\n', '\r']);
        if !is_filler(line) {
            if indent_of(line) == 0 {
                break;
            }
            insert_at = end;
        }
        at = end;
    }
    // indentation: like the existing sites and their fields
    let (first_key, _) = raw
        .sites
        .value
        .first()
        .ok_or_else(|| cannot("no site to take the indentation from"))?;
    let first_at = offset(text, first_key).ok_or_else(|| cannot("no site's place is known"))?;
    let site_indent = indent_of(&text[line_start(text, first_at)..]);
    if site_indent == 0 {
        return Err(cannot("the sites are not indented under `sites:`"));
    }
    let step = next_content_indent(text, first_at)
        .filter(|i| *i > site_indent)
        .map(|i| i - site_indent)
        .unwrap_or(2);
    let (si, ci) = (" ".repeat(site_indent), " ".repeat(site_indent + step));
    let mut block = format!(
        "{si}{name}:{eol}\
         {ci}managed: false                 # someone else's site: from its peering card (wgprov import){eol}\
         {ci}wireguard_cidr: {}{eol}",
        card.wireguard_cidr
    );
    if let Some(e) = &card.endpoint {
        block.push_str(&format!(
            "{ci}endpoint: {}{eol}",
            yaml_scalar(&e.to_string())
        ));
    }
    block.push_str(&format!("{ci}public_key: \"{}\"{eol}", card.public_key));
    if insert_at == text.len() && !text.is_empty() && !text.ends_with('\n') {
        block.insert_str(0, eol);
    }
    Ok(apply_edits(
        text,
        vec![Edit {
            start: insert_at,
            end: insert_at,
            with: block,
        }],
    ))
}

/// Writes `text` to the inventory at `path` atomically (a temporary file beside it, renamed
/// over it), keeping its permissions; refuses when the file changed since it held `old`.
pub fn write_atomic(path: &Path, old: &str, text: &str) -> Result<()> {
    let real = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let dir = real
        .parent()
        .ok_or_else(|| Error::Usage(format!("{} has no directory", real.display())))?;
    let file_name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.wgprov-import.{}", std::process::id()));
    let perms = std::fs::metadata(&real)
        .map_err(|e| Error::io(&real, e))?
        .permissions();
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(perms)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    let now = std::fs::read_to_string(&real).map_err(|e| Error::io(&real, e))?;
    if now != old {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Usage(format!(
            "{} changed while the card was being imported: nothing written; import again",
            path.display()
        )));
    }
    if let Err(e) = std::fs::rename(&tmp, &real) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&real, e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Loc;
    use similar::{ChangeTag, TextDiff};

    const HOME: &str = include_str!("../../inventories/home.yaml");
    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn card(site: &str, block: &str, endpoint: Option<&str>) -> Card {
        Card {
            site: site.into(),
            wireguard_cidr: block.parse().unwrap(),
            endpoint: endpoint.map(|e| Endpoint::parse(e).unwrap()),
            listen_port: 51820,
            public_key: PublicKey::from_base64(KEY).unwrap(),
            mtu: 1420,
            wireguard_space: "10.100.0.0/16".parse().unwrap(),
            reserved: vec![(site.into(), block.parse().unwrap())],
            peer_section: String::new(),
        }
    }

    fn src() -> CardSource {
        CardSource {
            path: "neighbour.card.yaml".into(),
            ..Default::default()
        }
    }

    fn run(text: &str, lock: &Lock, c: &Card, name: Option<&str>) -> Result<Outcome> {
        plan(Path::new("inv.yaml"), text, lock, c, &src(), name)
    }

    /// The lines the import removed and the lines it added.
    fn delta(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
        let (mut gone, mut added) = (Vec::new(), Vec::new());
        for ch in TextDiff::from_lines(old, new).iter_all_changes() {
            match ch.tag() {
                ChangeTag::Delete => gone.push(ch.value().to_string()),
                ChangeTag::Insert => added.push(ch.value().to_string()),
                ChangeTag::Equal => {}
            }
        }
        (gone, added)
    }

    fn errors(r: Result<Outcome>) -> Vec<Diagnostic> {
        match r {
            Err(Error::Invalid(d)) => d,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_new_site_is_inserted_after_the_last_one_and_every_other_byte_is_kept() {
        let c = card("lake", "10.100.9.0/24", Some("lake.example.org:51820"));
        let out = run(HOME, &Lock::default(), &c, None).unwrap();
        assert_eq!(out.action, Action::Added);
        let block = format!(
            "  lake:\n    managed: false                 # someone else's site: from its peering card (wgprov import)\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: lake.example.org:51820\n    public_key: \"{KEY}\"\n"
        );
        // the original text, with the block inserted after the last site's last line
        let after_friend = HOME.find("Dg=\"\n").unwrap() + "Dg=\"\n".len();
        let expected = format!("{}{block}{}", &HOME[..after_friend], &HOME[after_friend..]);
        assert_eq!(out.text, expected);
        let (gone, _) = delta(HOME, &out.text);
        assert!(gone.is_empty(), "{gone:?}");
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), &out.text)
            .unwrap()
            .inventory;
        let lake = inv.site("lake").unwrap();
        assert!(!lake.managed);
        assert_eq!(lake.public_key, Some(c.public_key));
    }

    #[test]
    fn a_site_goes_before_a_following_top_level_key_and_its_comments() {
        let text = "# top\nsites:\n    # the first site\n    a:\n        nodes:\n            n1: {address: 192.168.0.10}\n\n# the network\nnetwork:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n";
        let c = card("b", "10.100.5.0/24", Some("198.51.100.5:51820"));
        let out = run(text, &Lock::default(), &c, None).unwrap();
        let (gone, added) = delta(text, &out.text);
        assert!(gone.is_empty(), "{gone:?}");
        assert_eq!(added[0], "    b:\n", "indented like the other sites");
        assert!(added[1].starts_with("        managed: false"), "{added:?}");
        assert!(
            out.text.contains("n1: {address: 192.168.0.10}\n    b:\n"),
            "{}",
            out.text
        );
        assert!(out.text.ends_with("\n\n# the network\nnetwork:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n"));
    }

    #[test]
    fn crlf_and_a_missing_final_newline_are_kept() {
        let text = "network:\r\n  wireguard_cidr: 10.100.0.0/16\r\n  cluster_cidrs: [10.244.0.0/16]\r\nsites:\r\n  a:\r\n    nodes:\r\n      n1:\r\n        address: 192.168.0.10";
        let c = card("b", "10.100.5.0/24", Some("198.51.100.5:51820"));
        let out = run(text, &Lock::default(), &c, None).unwrap();
        assert!(out.text.starts_with(text), "{:?}", out.text);
        let rest = &out.text[text.len()..];
        assert!(rest.starts_with("\r\n  b:\r\n"), "{rest:?}");
        assert_eq!(rest.matches('\n').count(), rest.matches("\r\n").count());
    }

    #[test]
    fn a_block_that_collides_is_refused_naming_the_site_it_collides_with() {
        // home's block is written in the inventory
        let c = card("lake", "10.100.0.0/24", Some("lake.example.org:51820"));
        let d = errors(run(HOME, &Lock::default(), &c, None));
        let home_line = HOME.lines().position(|l| l == "  home:").unwrap() as u32 + 1;
        assert!(
            d.iter().any(|x| x.field == "sites.home.wireguard_cidr"
                && x.line == home_line
                && x.file == Path::new("inv.yaml")
                && x.message.contains("collides")),
            "{d:?}"
        );
        // another neighbour's block
        let c = card("lake", "10.100.7.0/24", Some("lake.example.org:51820"));
        let d = errors(run(HOME, &Lock::default(), &c, None));
        assert!(
            d.iter().any(|x| x.field == "sites.friend.wireguard_cidr"),
            "{d:?}"
        );
    }

    #[test]
    fn a_block_handed_out_in_the_lock_file_is_refused_and_an_unsettled_one_moves() {
        // office has no written block: the lock file recorded 10.100.1.0/24 for it
        let c = card("lake", "10.100.1.0/24", Some("lake.example.org:51820"));
        let mut lock = Lock::default();
        lock.sites.insert(
            "office".into(),
            crate::inventory::lock::LockSite {
                wireguard_cidr: Some("10.100.1.0/24".parse().unwrap()),
                ..Default::default()
            },
        );
        let d = errors(run(HOME, &lock, &c, None));
        assert!(
            d.iter().any(|x| x.field == "sites.office.wireguard_cidr"
                && x.message.contains("recorded in inv.lock.yaml")),
            "{d:?}"
        );
        // without a lock nothing was handed out: office gets another block, and we say so
        let out = run(HOME, &Lock::default(), &c, None).unwrap();
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("site office has no block yet")),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn a_managed_site_of_the_same_name_is_never_replaced_and_as_renames() {
        let c = card("office", "10.100.9.0/24", Some("lake.example.org:51820"));
        let d = errors(run(HOME, &Lock::default(), &c, None));
        assert_eq!(d[0].field, "sites.office");
        assert!(d[0].message.contains("--as NAME"), "{d:?}");
        let out = run(HOME, &Lock::default(), &c, Some("their-office")).unwrap();
        assert!(out.text.contains("\n  their-office:\n"), "{}", out.text);
        assert!(run(HOME, &Lock::default(), &c, Some("Bad Name")).is_err());
    }

    #[test]
    fn an_unmanaged_site_is_updated_in_place_keeping_its_comments() {
        let text = HOME.replace(
            "    endpoint: friend.example.org:51820\n",
            "    # their router\n    endpoint: friend.example.org:51820   # forwarded to their hub\n",
        );
        let c = card("friend", "10.100.7.0/24", Some("203.0.113.77:51999"));
        let out = run(&text, &Lock::default(), &c, None).unwrap();
        assert_eq!(out.action, Action::Updated);
        let (gone, added) = delta(&text, &out.text);
        assert_eq!(
            gone,
            [
                "    endpoint: friend.example.org:51820   # forwarded to their hub\n",
                "    public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n"
            ]
        );
        assert_eq!(
            added,
            [
                "    endpoint: 203.0.113.77:51999   # forwarded to their hub\n".to_string(),
                format!("    public_key: \"{KEY}\"\n")
            ]
        );
        assert_eq!(out.changes.len(), 2, "{:?}", out.changes);
        // importing the same card again changes nothing
        let again = run(&out.text, &Lock::default(), &c, None).unwrap();
        assert_eq!(again.action, Action::Unchanged);
        assert_eq!(again.text, out.text);
    }

    #[test]
    fn a_card_without_endpoint_removes_the_stale_one_and_missing_fields_are_added() {
        let text = HOME.replace("    endpoint: friend.example.org:51820\n", "");
        let c = card("friend", "10.100.7.0/24", Some("friend.example.org:51820"));
        let out = run(&text, &Lock::default(), &c, None).unwrap();
        let (gone, added) = delta(&text, &out.text);
        assert!(gone.iter().all(|l| l.contains("public_key")), "{gone:?}");
        assert!(added.contains(&"    endpoint: friend.example.org:51820\n".to_string()));
        // and back: a card without an endpoint takes the line out
        let c = card("friend", "10.100.7.0/24", None);
        let out = run(HOME, &Lock::default(), &c, None).unwrap();
        let (gone, _) = delta(HOME, &out.text);
        assert!(gone.contains(&"    endpoint: friend.example.org:51820\n".to_string()));
    }

    #[test]
    fn blocks_the_other_side_routes_must_not_cover_ours() {
        let mut c = card("lake", "10.100.9.0/24", Some("lake.example.org:51820"));
        // they route 10.100.0.0/23 to one of their sites: it covers our home
        c.reserved
            .push(("big".into(), "10.100.0.0/23".parse().unwrap()));
        let mut s = src();
        s.locs.insert(
            "reserved.big".into(),
            Loc {
                line: 12,
                column: 8,
            },
        );
        let d = errors(plan(
            Path::new("inv.yaml"),
            HOME,
            &Lock::default(),
            &c,
            &s,
            None,
        ));
        assert!(
            d.iter().any(|x| x.file == Path::new("neighbour.card.yaml")
                && x.line == 12
                && x.field == "reserved.big"
                && x.message.contains("your site home's block")),
            "{d:?}"
        );
        // the very block of one of ours is ours as they know it (they peer with it)
        let mut c = card("lake", "10.100.9.0/24", Some("lake.example.org:51820"));
        c.reserved
            .push(("home".into(), "10.100.0.0/24".parse().unwrap()));
        assert!(run(HOME, &Lock::default(), &c, None).is_ok());
    }

    #[test]
    fn a_result_that_fails_validation_is_refused_with_its_lines() {
        // outside the WireGuard space: caught by the inventory's own rules
        let mut c = card("lake", "10.200.9.0/24", Some("lake.example.org:51820"));
        c.wireguard_space = "10.200.0.0/16".parse().unwrap();
        let d = errors(run(HOME, &Lock::default(), &c, None));
        assert!(
            d.iter().any(|x| x.field == "sites.lake.wireguard_cidr"
                && x.message.contains("outside the WireGuard space")
                && x.message.contains("as the import would leave it")),
            "{d:?}"
        );
    }

    #[test]
    fn layouts_it_does_not_edit_are_refused_not_mangled() {
        let text = HOME.replace(
            "  friend:\n    managed: false\n    wireguard_cidr: 10.100.7.0/24\n    endpoint: friend.example.org:51820\n    public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n",
            "  friend: {managed: false, wireguard_cidr: 10.100.7.0/24, endpoint: \"friend.example.org:51820\", public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"}\n",
        );
        assert_ne!(text, HOME);
        let c = card("friend", "10.100.7.0/24", Some("203.0.113.77:51999"));
        let e = run(&text, &Lock::default(), &c, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("flow style"), "{e}");
    }

    #[test]
    fn the_file_is_replaced_atomically_with_its_mode_and_not_when_it_changed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.yaml");
        std::fs::write(&p, "old\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "old\n", "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let e = write_atomic(&p, "old\n", "newer\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed while"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
