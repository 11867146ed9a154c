//! A wg-quick config reader and editor that loses nothing. It reads the way `wg` and `wg-quick`
//! do (section names and keys case-insensitive, `#` starts a comment, whitespace around `=`
//! ignored) and keeps every line as written, so a file round-trips byte for byte and an edit
//! changes only the lines it means to. Comments, unknown keys (DNS, Table, PostUp, SaveConfig…)
//! and foreign sections survive.

use std::fmt::Write as _;

/// One line of a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank, a comment, or something that is not `key = value` (kept as written).
    Other(String),
    /// A `key = value` line.
    Entry {
        /// The key as written.
        key: String,
        /// The value, trimmed, without a trailing comment.
        value: String,
        /// The line as written.
        raw: String,
    },
}

impl Line {
    /// A new entry written as `Key = value`.
    pub fn entry(key: &str, value: &str) -> Line {
        Line::Entry {
            key: key.to_string(),
            value: value.to_string(),
            raw: format!("{key} = {value}"),
        }
    }
    fn raw(&self) -> &str {
        match self {
            Line::Other(r) => r,
            Line::Entry { raw, .. } => raw,
        }
    }
    /// The key when the line is an entry.
    pub fn key(&self) -> Option<&str> {
        match self {
            Line::Entry { key, .. } => Some(key),
            Line::Other(_) => None,
        }
    }
}

/// A `[Section]` and the lines up to the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The header line as written, e.g. `[Peer]`.
    pub header: String,
    /// The lines after it.
    pub lines: Vec<Line>,
}

impl Section {
    /// A new section with header `[name]`.
    pub fn new(name: &str) -> Self {
        Section {
            header: format!("[{name}]"),
            lines: Vec::new(),
        }
    }
    /// The section name, e.g. `Peer`, as written.
    pub fn name(&self) -> &str {
        self.header
            .trim()
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim()
    }
    /// True when the section is `[name]` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }
    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { key: k, value, .. } if k.eq_ignore_ascii_case(key) => {
                Some(value.as_str())
            }
            _ => None,
        })
    }
    /// Every value of `key` (case-insensitive), in order.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Entry { key: k, value, .. } if k.eq_ignore_ascii_case(key) => {
                    Some(value.as_str())
                }
                _ => None,
            })
            .collect()
    }
    /// Sets `key` to `value`: the first occurrence is rewritten (keeping its spelling of the key),
    /// later ones removed; appended after the last entry when absent. No-op when already equal.
    pub fn set(&mut self, key: &str, value: &str) {
        let mut found = false;
        self.lines.retain_mut(|l| match l {
            Line::Entry {
                key: k,
                value: v,
                raw,
            } if k.eq_ignore_ascii_case(key) => {
                if found {
                    return false;
                }
                found = true;
                if v != value {
                    *raw = format!("{k} = {value}");
                    *v = value.to_string();
                }
                true
            }
            _ => true,
        });
        if !found {
            self.push_entry(Line::entry(key, value));
        }
    }
    /// Removes every `key` entry.
    pub fn remove(&mut self, key: &str) {
        self.lines
            .retain(|l| !matches!(l.key(), Some(k) if k.eq_ignore_ascii_case(key)));
    }
    /// Appends an entry after the last entry (before trailing blank lines and comments).
    pub fn push_entry(&mut self, line: Line) {
        let at = self
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Entry { .. }))
            .map(|i| i + 1)
            .unwrap_or_else(|| {
                self.lines
                    .iter()
                    .position(|l| l.raw().trim().is_empty())
                    .unwrap_or(self.lines.len())
            });
        self.lines.insert(at, line);
    }
}

/// A whole config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgConfig {
    /// Lines before the first section (comments, usually).
    pub preamble: Vec<String>,
    /// Sections in order.
    pub sections: Vec<Section>,
    /// Whether the text ended with a newline.
    pub trailing_newline: bool,
}

impl WgConfig {
    /// Parses config text. Never fails: lines that are not entries are kept as they are.
    pub fn parse(text: &str) -> WgConfig {
        let mut cfg = WgConfig {
            trailing_newline: text.ends_with('\n') || text.is_empty(),
            ..Default::default()
        };
        let body = text.strip_suffix('\n').unwrap_or(text);
        for raw in body.split('\n').filter(|_| !text.is_empty()) {
            let stripped = raw.split('#').next().unwrap_or("").trim();
            if stripped.starts_with('[') && stripped.contains(']') {
                cfg.sections.push(Section {
                    header: raw.to_string(),
                    lines: Vec::new(),
                });
                continue;
            }
            let line = match stripped.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !k.trim().contains(char::is_whitespace) => {
                    Line::Entry {
                        key: k.trim().to_string(),
                        value: v.trim().to_string(),
                        raw: raw.to_string(),
                    }
                }
                _ => Line::Other(raw.to_string()),
            };
            match cfg.sections.last_mut() {
                Some(s) => s.lines.push(line),
                None => cfg.preamble.push(line.raw().to_string()),
            }
        }
        cfg
    }

    /// The text, byte for byte as parsed when nothing was edited.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut first = true;
        let mut push = |s: &str, out: &mut String| {
            if !first {
                out.push('\n');
            }
            first = false;
            out.push_str(s);
        };
        for l in &self.preamble {
            push(l, &mut out);
        }
        for s in &self.sections {
            push(&s.header, &mut out);
            for l in &s.lines {
                push(l.raw(), &mut out);
            }
        }
        // A single empty line ("\n") is a line too: ask whether a line was written, not a byte.
        if self.trailing_newline && !first {
            out.push('\n');
        }
        out
    }

    /// The `[Interface]` section.
    pub fn interface(&self) -> Option<&Section> {
        self.sections.iter().find(|s| s.is("Interface"))
    }
    /// The `[Interface]` section, mutable.
    pub fn interface_mut(&mut self) -> Option<&mut Section> {
        self.sections.iter_mut().find(|s| s.is("Interface"))
    }
    /// Every `[Peer]` section.
    pub fn peers(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(|s| s.is("Peer"))
    }
    /// The interface's `PrivateKey`, if any.
    pub fn private_key(&self) -> Option<&str> {
        self.interface().and_then(|i| i.get("PrivateKey"))
    }
    /// Every peer's `PublicKey` (empty when missing) and `AllowedIPs`, in order.
    pub fn peer_list(&self) -> Vec<(String, Vec<String>)> {
        self.peers()
            .map(|p| {
                (
                    p.get("PublicKey").unwrap_or("").to_string(),
                    p.get("AllowedIPs")
                        .unwrap_or("")
                        .split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect(),
                )
            })
            .collect()
    }
}

/// True when `wg` reads `key` as `PrivateKey` or `PresharedKey`: it drops every whitespace
/// character of a line before reading it, so `Private Key` is a private key too.
fn is_secret_key(key: &str) -> bool {
    let key: String = key
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
        .collect();
    key.eq_ignore_ascii_case("PrivateKey") || key.eq_ignore_ascii_case("PresharedKey")
}

/// What marks a private or preshared key in uci's spelling (`network.wg0.private_key='…'`,
/// the `private_key='…'` line of an OpenWrt hub's script, a peer's `preshared_key='…'`).
const UCI_KEYS: [&str; 2] = ["private_key=", "preshared_key="];

/// Replaces the value of every `PrivateKey` and `PresharedKey` line with `(redacted)`, and the
/// rest of every line after a `private_key=` (uci's spelling, in an OpenWrt hub's script): the
/// form in which any config or script text may be shown.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, raw) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let stripped = raw.split('#').next().unwrap_or("");
        match stripped.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                let _ = write!(out, "{} = {}", k.trim_end(), crate::keys::REDACTED);
            }
            _ => {
                // ASCII lowercasing keeps every byte offset
                let lower = raw.to_ascii_lowercase();
                let at = UCI_KEYS
                    .iter()
                    .filter_map(|k| lower.find(k).map(|at| at + k.len()))
                    .min();
                match at {
                    Some(at) => {
                        out.push_str(&raw[..at]);
                        out.push_str(crate::keys::REDACTED);
                    }
                    None => out.push_str(raw),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAND: &str = "# home next-hop, written by hand\n[Interface]\nAddress = 10.100.0.1/16\nprivatekey=KEY # mine\nListenPort = 51820\nDNS = 1.1.1.1\nPostUp = iptables -A FORWARD -i %i -j ACCEPT\n\n[peer]\n# laptop\nPublicKey = abc\nAllowedIPs = 10.100.0.2/32\n";

    #[test]
    fn round_trips_byte_for_byte() {
        for t in [
            HAND,
            "",
            "[Interface]",
            "junk line\n[Interface]\n  \n",
            "[Interface]\r\nA = b\r\n",
        ] {
            assert_eq!(WgConfig::parse(t).render(), t, "{t:?}");
        }
    }

    #[test]
    fn a_file_of_one_empty_line_round_trips() {
        // a lone newline was parsed as one empty line, then rendered as nothing
        for t in ["\n", "\n\n", " \n", "[Interface]\n\n"] {
            assert_eq!(WgConfig::parse(t).render(), t, "{t:?}");
        }
    }

    #[test]
    fn keys_and_sections_are_case_insensitive_and_comments_stripped() {
        let c = WgConfig::parse(HAND);
        assert_eq!(c.private_key(), Some("KEY"));
        assert_eq!(c.interface().unwrap().get("dns"), Some("1.1.1.1"));
        assert_eq!(c.peers().count(), 1);
        assert_eq!(
            c.peers().next().unwrap().get("allowedips"),
            Some("10.100.0.2/32")
        );
    }

    #[test]
    fn set_rewrites_only_that_line() {
        let mut c = WgConfig::parse(HAND);
        c.interface_mut().unwrap().set("ListenPort", "51821");
        c.interface_mut().unwrap().set("MTU", "1420");
        let out = c.render();
        assert!(out.contains("ListenPort = 51821\n"));
        assert!(out.contains("PostUp = iptables -A FORWARD -i %i -j ACCEPT\nMTU = 1420\n\n[peer]"));
        assert!(out.contains("privatekey=KEY # mine"));
        let mut same = WgConfig::parse(HAND);
        same.interface_mut()
            .unwrap()
            .set("address", "10.100.0.1/16");
        assert_eq!(same.render(), HAND);
    }

    #[test]
    fn preshared_key_in_an_existing_config_is_redacted_in_diffs() {
        let conf = "[Interface]\nPrivateKey = AAAA\n\n[Peer]\nPublicKey = PUB\npresharedkey=SECRETPSK= # hand-made\nPresharedKey = OTHERPSK\n";
        let r = redact(conf);
        assert!(!r.contains("SECRETPSK") && !r.contains("OTHERPSK"), "{r}");
        assert!(r.contains("PublicKey = PUB"), "{r}");
        assert_eq!(r.matches("(redacted)").count(), 3, "{r}");
    }

    #[test]
    fn redact_hides_a_key_whose_name_wg_reads_through_whitespace() {
        // found by the wgconf fuzz target: wg strips every space in a line, so it reads these
        // lines as PrivateKey and PresharedKey, and their values must not be shown
        let conf = "[Interface]\nPrivateKe y = SECRET1\n\tPrivate\x0bKey=SECRET2\n[Peer]\nPre shared Key = SECRET3\nPublic Key = PUB\n";
        let r = redact(conf);
        assert!(!r.contains("SECRET"), "{r}");
        assert_eq!(r.matches("(redacted)").count(), 3, "{r}");
        assert!(r.contains("Public Key = PUB"), "{r}");
    }

    #[test]
    fn redact_hides_a_uci_private_key_wherever_it_is_set() {
        let script = "#!/bin/sh\nprivate_key='SECRET1'\ncheck() {\n  [ \"$(uci -q get network.wg0.private_key)\" = \"$private_key\" ]\n}\nuci set network.wg0.private_key='SECRET2' || exit 1\nnetwork.wg0.Private_Key='SECRET3'\n";
        let r = redact(script);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(r.contains("\nprivate_key=(redacted)\n"), "{r}");
        assert!(
            r.contains("uci set network.wg0.private_key=(redacted)\n"),
            "{r}"
        );
        // the check reads the key without a value: shown as it is
        assert!(r.contains("[ \"$(uci -q get network.wg0.private_key)\" = \"$private_key\" ]"));
    }

    #[test]
    fn redact_hides_a_uci_preshared_key_and_every_spelling_of_presharedkey() {
        let t = "uci set network.wgprov_peer_1.preshared_key='SECRET1'\nPRESHAREDKEY=SECRET2\n[Peer]\nPresharedKey = SECRET3\nnetwork.x.Preshared_Key='SECRET4'\n";
        let r = redact(t);
        assert!(!r.contains("SECRET"), "{r}");
        assert_eq!(r.matches("(redacted)").count(), 4, "{r}");
    }

    #[test]
    fn redact_hides_every_spelling_of_private_key() {
        let r = redact(HAND);
        assert!(!r.contains("KEY"));
        assert!(r.contains("privatekey = (redacted)"));
        assert!(r.contains("PublicKey = abc"));
    }
}
