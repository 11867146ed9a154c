//! The facts parser and the `wg show dump` parser never panic, on any output a host could send
//! back; what they parse prints (Debug, with redaction) without panicking either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgprov::facts::gather::{parse, parse_wg_dump};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(facts) = parse(text) {
        let _ = format!("{facts:?}");
    }
    if let Some(st) = parse_wg_dump(text) {
        let _ = format!("{st:?}");
    }
});
