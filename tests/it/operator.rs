//! Operator fit (issue 14): `-v` on SSH settings from `~/.ssh/config`, completions, the man
//! page, the inventory's JSON Schema, pictures.

use std::process::{Command, Output};

use super::common::{Inv, root};

fn wgprov(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(args)
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SSH_INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nssh:\n  config_file: ssh_config\nsites:\n  home:\n    nodes:\n      node1: {address: 192.168.0.10, ssh: {host: n1, become: true}}\n";

#[test]
fn verbose_says_where_each_ssh_setting_came_from() {
    let inv = Inv::new(SSH_INV);
    let cfg = inv.dir.path().join("ssh_config");
    std::fs::write(&cfg, "Host n1\n  HostName 198.51.100.7\n  Port 2200\n").unwrap();
    let o = wgprov(&["-v", "validate", "-i", inv.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let e = err(&o);
    let line = |k: &str| {
        e.lines()
            .find(|l| l.trim_start().starts_with(k))
            .unwrap_or_else(|| panic!("no {k} line in:\n{e}"))
            .to_string()
    };
    assert!(
        e.contains(&format!(
            "node1: ssh settings (`n1` looked up in {})",
            cfg.display()
        )),
        "{e}"
    );
    assert!(
        line("host").contains("198.51.100.7") && line("host").contains("(Host n1)"),
        "{e}"
    );
    assert!(line("port").contains("2200"), "{e}");
    assert!(
        line("user").contains("root") && line("user").ends_with("from default"),
        "{e}"
    );
    assert!(
        line("become").contains("inventory sites.home.nodes.node1.ssh.become (line 9:"),
        "{e}"
    );
    // without -v: nothing of it
    let quiet = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    assert!(!err(&quiet).contains("ssh settings"), "{}", err(&quiet));
}

#[test]
fn proxy_jump_outside_the_inventory_exits_2() {
    let inv = Inv::new(SSH_INV);
    std::fs::write(
        inv.dir.path().join("ssh_config"),
        "Host n1\n  ProxyJump gw.example.com\n",
    )
    .unwrap();
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        out(&o).contains(":9:7: sites.home.nodes.node1.ssh.proxy_jump: ProxyJump `gw.example.com`"),
        "{}",
        out(&o)
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_commands_and_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let o = wgprov(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", err(&o));
        let s = out(&o);
        assert!(
            s.contains("apply") && s.contains("inventory"),
            "{shell}:\n{s}"
        );
        assert!(
            s.contains("--inventory") || s.contains("-l inventory"),
            "{shell}:\n{s}"
        );
    }
    let bash = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bash.path(), out(&wgprov(&["completions", "bash"]))).unwrap();
    let n = Command::new("bash")
        .arg("-n")
        .arg(bash.path())
        .output()
        .unwrap();
    assert!(n.status.success(), "bash -n: {}", err(&n));
    assert!(out(&wgprov(&["completions", "bash"])).contains("--inventory"));
    let bad = wgprov(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_page_is_roff_with_every_subcommand() {
    let o = wgprov(&["man"]);
    assert_eq!(o.status.code(), Some(0));
    let m = out(&o);
    assert!(m.contains(".TH wgprov 1"), "{m}");
    for sub in [
        "validate",
        "plan",
        "render",
        "graph",
        "apply",
        "rollback",
        "status",
        "lab",
        "schema",
        "completions",
        "man",
    ] {
        assert!(
            m.contains(&format!(".SH \"WGPROV {}\"", sub.to_uppercase())),
            "{sub} missing:\n{m}"
        );
    }
    assert!(
        m.contains("\\-\\-inventory") && m.contains("\\-\\-detailed\\-exitcode"),
        "{m}"
    );
    assert!(m.contains(".SH \"EXIT STATUS\""));
}

fn schema_validator() -> jsonschema::Validator {
    let o = wgprov(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn yaml_as_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn every_shipped_inventory_validates_against_the_schema() {
    let v = schema_validator();
    let mut n = 0;
    for e in std::fs::read_dir(root().join("inventories")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name.ends_with(".lock.yaml") {
            continue;
        }
        let doc = yaml_as_json(&std::fs::read_to_string(&p).unwrap());
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        n += 1;
    }
    assert!(n >= 2, "found {n} inventories");
}

#[test]
fn schema_refuses_what_the_loader_refuses() {
    let v = schema_validator();
    let good = "network: {wireguard_cidr: 10.100.0.0/16}\nssh: {config_file: none, become: true}\nsites:\n  a:\n    router: openwrt\n    nodes:\n      n1: {address: 192.168.0.1, os_family: redhat, ssh: {port: 2222}}\n";
    assert!(v.is_valid(&yaml_as_json(good)));
    for (bad, why) in [
        (good.replace("address:", "adress:"), "unknown node key"),
        (good.replace("config_file", "confg_file"), "unknown ssh key"),
        (
            good.replace("network:", "network:\n  bogus: 1\nx:"),
            "unknown top-level key",
        ),
        (good.replace("openwrt", "mikrotik"), "router kind"),
        (good.replace("2222", "70000"), "port range"),
        (good.replace("become: true", "become: yes please"), "bool"),
    ] {
        assert!(
            !v.is_valid(&yaml_as_json(&bad)),
            "schema accepted {why}:\n{bad}"
        );
    }
    // and the loader agrees on the unknown key
    let inv = Inv::new(&good.replace("address:", "adress:"));
    let d = inv.diagnostics();
    assert!(
        d.iter()
            .any(|d| d.is_error() && d.message.contains("adress")),
        "{d:?}"
    );
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let committed = std::fs::read_to_string(root().join("inventories/wgprov.schema.json")).unwrap();
    assert_eq!(
        committed,
        out(&wgprov(&["schema"])),
        "inventories/wgprov.schema.json is stale: wgprov schema > inventories/wgprov.schema.json"
    );
}

#[test]
fn graph_svg_is_drawn_by_graphviz_and_dot_stays_the_default() {
    let inv = Inv::new(&std::fs::read_to_string(root().join("inventories/home.yaml")).unwrap());
    let p = inv.path.to_str().unwrap();
    let dot = wgprov(&["graph", "-i", p]);
    assert!(out(&dot).starts_with("graph wgprov {"));
    assert_eq!(
        out(&dot),
        out(&wgprov(&["graph", "-i", p, "--format", "dot"]))
    );
    if !super::common::have("dot") {
        assert!(
            std::env::var_os("CI").is_none(),
            "dot is missing under CI: scripts/install-deps installs graphviz"
        );
        super::common::skipped(
            "Graphviz `dot` not installed (scripts/install-deps, or apt-get install graphviz)",
        );
        return;
    }
    let o = wgprov(&["graph", "-i", p, "--format", "svg"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let svg = out(&o);
    assert!(
        svg.contains("<svg") && svg.contains("cluster_home"),
        "{svg}"
    );
    assert!(
        svg.contains("next&#45;hop") || svg.contains("next-hop"),
        "{svg}"
    );
}

#[test]
fn graph_svg_without_graphviz_says_how_to_get_it() {
    let inv = Inv::new(&std::fs::read_to_string(root().join("inventories/home.yaml")).unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(["graph", "-i", inv.path.to_str().unwrap(), "--format", "svg"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).is_empty());
    let e = err(&o);
    assert!(
        e.contains("install graphviz") && e.contains("--format dot | dot -Tsvg"),
        "{e}"
    );
}

/// The `assets` of Cargo.toml's `[package.metadata.deb]`: (source, destination).
fn deb_assets() -> Vec<(String, String)> {
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let section = toml
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("Cargo.toml has [package.metadata.deb]");
    let list = section
        .split("assets = [")
        .nth(1)
        .unwrap()
        .split("\n]")
        .next()
        .unwrap();
    list.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('"').collect();
            (f.len() >= 4).then(|| (f[1].to_string(), f[3].to_string()))
        })
        .collect()
}

#[test]
fn deb_package_has_binary_man_page_and_completions_that_scripts_package_generates() {
    let assets = deb_assets();
    let dests: Vec<&str> = assets.iter().map(|(_, d)| d.as_str()).collect();
    for want in [
        "usr/bin/",
        "usr/share/man/man1/",
        "usr/share/bash-completion/completions/wgprov",
        "usr/share/zsh/vendor-completions/",
        "usr/share/fish/vendor_completions.d/",
    ] {
        assert!(
            dests.contains(&want),
            "no asset installed to {want}: {assets:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let gen_dir = dir.path().join("package");
    let o = Command::new(root().join("scripts/package"))
        .args([
            "--assets",
            env!("CARGO_BIN_EXE_wgprov"),
            gen_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    for (src, _) in &assets {
        if let Some(generated) = src.strip_prefix("target/release/package/") {
            let p = gen_dir.join(generated);
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            assert!(len > 100, "scripts/package did not generate {src}");
        } else if src != "target/release/wgprov" {
            // files shipped from the repository: globs name at least one file
            let (dirpart, pat) = src.rsplit_once('/').unwrap_or((".", src.as_str()));
            let found = std::fs::read_dir(root().join(dirpart)).unwrap().any(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                pat == "*" || n == pat || pat.strip_prefix('*').is_some_and(|s| n.ends_with(s))
            });
            assert!(found, "asset {src} names no file");
        }
    }
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(gen_dir.join("wgprov.1.gz"))
        .output()
        .unwrap();
    assert!(out(&man).contains(".TH wgprov 1"));
    let n = Command::new("bash")
        .arg("-n")
        .arg(gen_dir.join("wgprov.bash"))
        .output()
        .unwrap();
    assert!(n.status.success());
}
