//! Merging a rendered wg-quick config into the one a node already has, so that adopting a
//! hand-made setup loses nothing the operator wrote: the interface's unknown keys (DNS, Table,
//! SaveConfig…), their hook commands and foreign sections and leading comments are kept; the
//! managed keys (Address, ListenPort, MTU, PrivateKey) take the rendered values; the peers are
//! replaced by the rendered ones. Merging twice gives the same text as merging once.

use crate::formats::wgconf::{Line, Section, WgConfig};

/// Hook keys that may repeat: rendered ones are added when missing, existing ones kept.
const MULTI: &[&str] = &["PreUp", "PostUp", "PreDown", "PostDown"];

/// The merged config text.
pub fn merge(existing: &str, rendered: &str) -> String {
    let old = WgConfig::parse(existing);
    let new = WgConfig::parse(rendered);
    let mut out = WgConfig {
        preamble: new.preamble.clone(),
        sections: Vec::new(),
        trailing_newline: true,
    };
    for l in &old.preamble {
        if !l.trim().is_empty() && !out.preamble.contains(l) {
            out.preamble.push(l.clone());
        }
    }
    let new_iface = new
        .interface()
        .cloned()
        .unwrap_or_else(|| Section::new("Interface"));
    let iface = match old.interface() {
        None => new_iface,
        Some(o) => {
            let mut s = o.clone();
            for l in &new_iface.lines {
                if let Line::Entry { key, value, .. } = l {
                    if MULTI.iter().any(|m| m.eq_ignore_ascii_case(key)) {
                        if !s.get_all(key).contains(&value.as_str()) {
                            s.push_entry(l.clone());
                        }
                    } else {
                        s.set(key, value);
                    }
                }
            }
            s
        }
    };
    out.sections.push(iface);
    for s in &old.sections {
        if !s.is("Interface") && !s.is("Peer") {
            out.sections.push(s.clone());
        }
    }
    out.sections.extend(new.peers().cloned());
    // one blank line between sections
    let n = out.sections.len();
    for (i, s) in out.sections.iter_mut().enumerate() {
        while matches!(s.lines.last(), Some(Line::Other(r)) if r.trim().is_empty()) {
            s.lines.pop();
        }
        if i + 1 < n {
            s.lines.push(Line::Other(String::new()));
        }
    }
    out.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAND: &str = "# written by hand from the wiki\n[Interface]\nAddress = 10.100.0.1/16\nPrivateKey = OLDKEY\nListenPort = 51820\nDNS = 10.100.0.53\nPostUp = echo up\n\n[Peer]\n# old friend\nPublicKey = xyz\nAllowedIPs = 10.100.9.0/24\n";
    const NEW: &str = "# Managed by wgprov\n[Interface]\nAddress = 10.100.0.1/16\nListenPort = 51820\nPrivateKey = OLDKEY\nPostUp = fwd\n\n[Peer]\n# node2\nPublicKey = abc\nAllowedIPs = 10.100.0.2/32\n";

    #[test]
    fn keeps_what_the_operator_wrote_and_replaces_peers() {
        let m = merge(HAND, NEW);
        assert_eq!(
            m,
            "# Managed by wgprov\n# written by hand from the wiki\n[Interface]\nAddress = 10.100.0.1/16\nPrivateKey = OLDKEY\nListenPort = 51820\nDNS = 10.100.0.53\nPostUp = echo up\nPostUp = fwd\n\n[Peer]\n# node2\nPublicKey = abc\nAllowedIPs = 10.100.0.2/32\n"
        );
    }

    #[test]
    fn merging_is_idempotent_and_fresh_render_is_unchanged() {
        let once = merge(HAND, NEW);
        assert_eq!(merge(&once, NEW), once);
        assert_eq!(merge(NEW, NEW), NEW);
    }
}
