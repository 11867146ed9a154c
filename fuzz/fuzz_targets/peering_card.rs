//! A peering card, as another organisation sends it: `Card::parse` never panics; a refused card
//! is a non-empty list of diagnostics located in the card file; an accepted card carries no
//! line that `wg` would read as a PrivateKey or PresharedKey (wg's rules: `#` starts a comment,
//! all whitespace is ignored, keys case-insensitive), and its public facts read back as written
//! by `to_yaml`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgprov::error::Error;
use wgprov::peering::Card;

/// The key of a line as wg reads it, whitespace removed, lowercased.
fn wg_key(line: &str) -> Option<String> {
    let s: String = line
        .split('#')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
        .collect();
    s.split_once('=').map(|(k, _)| k.to_ascii_lowercase())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.card.yaml");
    let card = match Card::parse(path, text) {
        Ok((card, _)) => card,
        Err(Error::Invalid(d)) => {
            assert!(!d.is_empty(), "refused with no diagnostic");
            for x in &d {
                assert!(!x.message.is_empty(), "empty message");
                assert!(x.to_string().starts_with("fuzz.card.yaml:"), "{x}");
            }
            return;
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    };
    for l in card.peer_section.split('\n') {
        let key = wg_key(l);
        assert!(
            !matches!(key.as_deref(), Some("privatekey" | "presharedkey")),
            "a card with a secret key line was accepted: {l:?}"
        );
    }
    // the public facts round-trip (the free-text [Peer] section aside)
    let facts = Card {
        peer_section: String::new(),
        ..card
    };
    let (back, _) = Card::parse(path, &facts.to_yaml())
        .unwrap_or_else(|e| panic!("own card refused: {e}\n{}", facts.to_yaml()));
    assert_eq!(back, facts, "card round trip");
});
