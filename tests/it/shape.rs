//! The shape of `src/` stays as reshaped: no function over 100 lines, no file over 800 lines
//! before its test module, no import cycle between top-level modules, none of the layering rules
//! broken (e.g. planning never touches transport or facts), no `Result<_, String>`.
//! `scripts/shape` measures it; this runs it with `--check`.

use std::process::Command;

#[test]
fn src_keeps_its_shape() {
    let root = super::common::root();
    let o = Command::new("python3")
        .arg(root.join("scripts/shape"))
        .arg("--check")
        .output()
        .expect("python3 runs scripts/shape");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("functions over 100 lines: 0"), "{out}");
}

#[test]
fn the_shape_check_fails_on_a_long_function_and_a_layering_break() {
    let root = super::common::root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("plan")).unwrap();
    let body: String = (0..120)
        .map(|i| format!("    let _x{i} = {i};\n"))
        .collect();
    std::fs::write(
        src.join("plan/mod.rs"),
        format!("use crate::transport::Transport;\nfn long() {{\n{body}}}\n"),
    )
    .unwrap();
    std::fs::write(src.join("transport.rs"), "pub trait Transport {}\n").unwrap();
    let o = Command::new("python3")
        .arg(root.join("scripts/shape"))
        .arg("--check")
        .env("WGPROV_SHAPE_SRC", &src)
        .output()
        .expect("python3 runs scripts/shape");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("functions over 100 lines: 1"), "{out}");
    assert!(out.contains("plan uses transport"), "{out}");
}
