//! The shell completions, loaded by the real shells (bash, zsh, fish) the way their completion
//! systems load them, and asked to complete: a subcommand from its prefix, a flag of `apply`.

use std::path::Path;
use std::process::Command;

use super::common::require;

/// Writes `wgprov completions SHELL` to `dir/name`.
fn completions(shell: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(o.status.success(), "{shell}: {o:?}");
    let p = dir.join(name);
    std::fs::write(&p, &o.stdout).unwrap();
    p
}

/// Runs `shell args... script`; returns stdout, after checking it exited 0 and wrote nothing
/// on stderr (a completion file that loads with warnings fails too).
fn run(shell: &str, args: &[&str], script: &str) -> String {
    let o = Command::new(shell)
        .args(args)
        .arg(script)
        .env_remove("BASH_ENV")
        .env_remove("ZDOTDIR")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success() && err.is_empty(),
        "{shell} {script}\nexit {:?}\nstdout: {out}\nstderr: {err}",
        o.status.code()
    );
    out
}

#[test]
fn bash_completion_registers_and_completes_subcommands_and_flags() {
    if !require("bash") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = completions("bash", dir.path(), "wgprov");
    // what bash-completion does on `wgprov <TAB>`: source the file, then call the function that
    // `complete -p` names with COMP_WORDS/COMP_CWORD set
    let script = format!(
        "source '{}'\n\
         spec=$(complete -p wgprov) || exit 1\n\
         echo \"$spec\"\n\
         fn=${{spec##*-F }}; fn=${{fn%% *}}\n\
         ask() {{ COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); COMP_LINE=\"$*\"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=(); \"$fn\" wgprov \"${{@: -1}}\" \"${{@: -2:1}}\"; echo \"[$*] ${{COMPREPLY[*]}}\"; }}\n\
         ask wgprov ap\n\
         ask wgprov apply --inv\n",
        f.display()
    );
    let out = run("bash", &["--norc", "--noprofile", "-c"], &script);
    assert!(out.contains("-F _wgprov wgprov"), "{out}");
    assert!(out.contains("[wgprov ap] apply\n"), "{out}");
    assert!(out.contains("[wgprov apply --inv] --inventory\n"), "{out}");
}

#[test]
fn zsh_compinit_loads_the_completion_function_and_binds_it_to_wgprov() {
    if !require("zsh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = completions("zsh", dir.path(), "_wgprov");
    // both ways zsh users load it: from $fpath by compinit (the .deb's vendor-completions
    // directory), and sourced after compinit
    let script = format!(
        "fpath=('{d}' $fpath)\n\
         autoload -U compinit && compinit -u -D\n\
         print -r -- \"fpath: $_comps[wgprov]\"\n\
         autoload +X _wgprov && print -r -- \"autoload: ${{+functions[_wgprov]}}\"\n\
         unfunction _wgprov; unset '_comps[wgprov]'\n\
         source '{f}'\n\
         print -r -- \"sourced: $_comps[wgprov] ${{+functions[_wgprov]}}\"\n\
         print -r -- \"$functions[_wgprov]\" | grep -c -- '--inventory'\n",
        d = dir.path().display(),
        f = f.display()
    );
    let out = run("zsh", &["-f", "-c"], &script);
    assert!(out.contains("fpath: _wgprov\n"), "{out}");
    assert!(out.contains("autoload: 1\n"), "{out}");
    assert!(out.contains("sourced: _wgprov 1\n"), "{out}");
    let flags: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(flags > 0, "the function knows no --inventory: {out}");
}

#[test]
fn fish_completes_subcommands_and_flags() {
    if !require("fish") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = completions("fish", dir.path(), "wgprov.fish");
    let script = format!(
        "source '{}'\n\
         complete -C 'wgprov ap'\n\
         echo ==\n\
         complete -C 'wgprov apply --inv'\n",
        f.display()
    );
    let out = run("fish", &["--no-config", "-c"], &script);
    let (sub, flag) = out.split_once("==\n").unwrap();
    assert!(
        sub.lines().any(|l| l.split('\t').next() == Some("apply")),
        "{out}"
    );
    assert!(
        flag.lines()
            .any(|l| l.split('\t').next() == Some("--inventory")),
        "{out}"
    );
}
