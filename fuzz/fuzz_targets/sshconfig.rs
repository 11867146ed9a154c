//! The OpenSSH client config reader: the first line of the input is the name looked up, the
//! rest is the config file. Parsing, `Host` matching and the lookup never panic; a refused file
//! is an error that names it.
//!
//! `Include` lines are skipped (the input is dropped): the reader follows them on the real
//! filesystem, and a fuzzer must not read (or block on) files of the machine it runs on.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgprov::inventory::sshconfig::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.to_ascii_lowercase().contains("include") {
        return;
    }
    let (alias, config) = text.split_once('\n').unwrap_or(("node1", text));
    let file = match ConfigFile::parse(Path::new("fuzz_config"), &mut config.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz_config: "), "{e}");
            return;
        }
    };
    let l = file.lookup(alias);
    let _ = (file.names(alias), format!("{l:?}"));
    // a name the file writes literally finds its block: what it sets is reported with it
    if let Some(h) = l.host_name.as_ref().or(l.user.as_ref()) {
        assert!(h.host.starts_with("Host "), "{h:?}");
    }
});
