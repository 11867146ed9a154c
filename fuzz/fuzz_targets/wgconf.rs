//! wg0.conf text: parse → render gives the input back byte for byte; `redact` masks the value of
//! every line that `wg` would read as a PrivateKey or PresharedKey (wg's own rules: `#` starts a
//! comment, all whitespace is ignored, keys case-insensitive) and changes no other line; merging
//! into an existing config and editing a section never panic, merging is idempotent and an
//! edit reads back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgprov::desired::wgmerge::merge;
use wgprov::facts::wgconf::{WgConfig, redact};
use wgprov::topology::keys::REDACTED;

/// What wgprov renders for a next-hop: the `rendered` side of a merge.
const RENDERED: &str = "# Managed by wgprov\n[Interface]\nAddress = 10.100.0.1/16\nListenPort = 51820\nPrivateKey = cGxhY2Vob2xkZXIgcHJpdmF0ZSBrZXkgMzIgYnl0ZXM=\nPostUp = sysctl -q -w net.ipv4.ip_forward=1\n\n[Peer]\n# node2\nPublicKey = bm9kZTIgcHVibGljIGtleSBwbGFjZWhvbGRlciAzMmI=\nAllowedIPs = 10.100.0.2/32\nEndpoint = 192.168.0.11:51820\n";

/// Splits the input into an existing config and a rendered one.
const SEP: &str = "\n%%rendered%%\n";

/// `(key, value)` as wg reads the line, whitespace removed.
fn wg_entry(line: &str) -> Option<(String, String)> {
    let s: String = line
        .split('#')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
        .collect();
    let (k, v) = s.split_once('=')?;
    Some((k.to_string(), v.to_string()))
}

fn is_secret(key: &str) -> bool {
    key.eq_ignore_ascii_case("PrivateKey") || key.eq_ignore_ascii_case("PresharedKey")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = WgConfig::parse(text);
    assert_eq!(cfg.render(), text, "parse . render is not the identity");
    let _ = (cfg.private_key(), cfg.peers().count());

    let red = redact(text);
    let (before, after): (Vec<&str>, Vec<&str>) =
        (text.split('\n').collect(), red.split('\n').collect());
    assert_eq!(before.len(), after.len(), "redact changed the line count");
    for (b, a) in before.iter().zip(&after) {
        match wg_entry(b) {
            Some((k, v)) if is_secret(&k) => {
                let (k2, v2) = wg_entry(a).expect("a redacted line is still an entry");
                assert!(k2.eq_ignore_ascii_case(&k), "key renamed: {b:?} -> {a:?}");
                assert_eq!(
                    v2, REDACTED,
                    "secret left in {a:?} (from {b:?}, value {v:?})"
                );
            }
            _ => assert_eq!(b, a, "redact changed a line that holds no secret"),
        }
    }

    let (existing, rendered) = text.split_once(SEP).unwrap_or((text, RENDERED));
    let _ = merge(existing, rendered);
    let once = merge(existing, RENDERED);
    assert_eq!(
        merge(&once, RENDERED),
        once,
        "merging twice differs from once"
    );

    let mut edited = WgConfig::parse(existing);
    if let Some(i) = edited.interface_mut() {
        i.set("ListenPort", "51821");
        i.remove("MTU");
        let back = WgConfig::parse(&edited.render());
        let i = back.interface().expect("interface kept");
        assert_eq!(i.get("listenport"), Some("51821"), "edit not read back");
        assert_eq!(i.get_all("ListenPort").len(), 1);
        assert_eq!(i.get("MTU"), None);
    }
});
