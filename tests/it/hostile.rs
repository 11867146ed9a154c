//! What a hostile or sloppy inventory must not get through: values that would reach the SSH
//! connection stage as options or shell words, an interface name read as an option, a lock file
//! that is not text. Each is an inventory error (exit 2) found before any host is contacted.

use std::process::{Command, Output};

use super::common::Inv;

fn wgprov(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(args)
        .output()
        .unwrap()
}

/// A valid inventory with `extra` added to node n1's mapping (and no OpenSSH config read).
fn inventory(node_extra: &str) -> String {
    format!(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nssh:\n  config_file: none\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      n1:\n        address: 192.168.0.10\n{node_extra}      n2:\n        address: 192.168.0.11\n    next_hop: n1\n"
    )
}

/// Runs `validate` on `text`; asserts exit 2 and a diagnostic at `field`; returns stdout.
fn refused(text: &str, field: &str) -> String {
    let inv = Inv::new(text);
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{text}\n{out}\n{err}");
    assert!(
        out.contains(&format!(": {field}: ")),
        "{field}:\n{out}\n{err}"
    );
    out
}

/// YAML double-quoted, so that each arrives as written (a newline as `\n`).
const HOSTILE: &[&str] = &[
    "\"a;id\"",
    "\"$(id)\"",
    "\"`id`\"",
    "\"a\\nb\"",
    "\"a b\"",
    "\" a\"",
    "\"-oProxyCommand=id\"",
];

#[test]
fn the_fixture_is_valid() {
    let inv = Inv::new(&inventory(""));
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn ssh_host_with_shell_words_options_or_whitespace_is_an_inventory_error() {
    for v in HOSTILE {
        let out = refused(
            &inventory(&format!("        ssh:\n          host: {v}\n")),
            "sites.home.nodes.n1.ssh.host",
        );
        assert!(
            out.contains("neither an IP address nor a DNS name"),
            "{out}"
        );
    }
}

#[test]
fn ssh_host_option_is_refused_by_apply_before_any_host_is_contacted() {
    let inv = Inv::new(&inventory(
        "        ssh:\n          host: -oProxyCommand=id\n",
    ));
    let o = wgprov(&["apply", "-i", inv.path.to_str().unwrap()]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("sites.home.nodes.n1.ssh.host"), "{out}");
    assert!(!inv.lock_path().exists(), "nothing is written either");
}

#[test]
fn ssh_user_with_shell_words_options_or_whitespace_is_an_inventory_error() {
    for v in HOSTILE {
        let out = refused(
            &inventory(&format!("        ssh:\n          user: {v}\n")),
            "sites.home.nodes.n1.ssh.user",
        );
        assert!(out.contains("is not a valid user name"), "{out}");
    }
}

#[test]
fn proxy_jump_with_shell_words_options_or_whitespace_is_an_inventory_error() {
    for v in HOSTILE {
        let out = refused(
            &inventory(&format!("        ssh:\n          proxy_jump: {v}\n")),
            "sites.home.nodes.n1.ssh.proxy_jump",
        );
        assert!(out.contains("is not a node of the inventory"), "{out}");
    }
}

/// The inventory reads `ssh_config` (beside it) with `body` in it.
fn with_ssh_config(body: &str) -> Inv {
    let inv = Inv::new(&inventory("").replace("config_file: none", "config_file: ssh_config"));
    std::fs::write(inv.dir.path().join("ssh_config"), body).unwrap();
    inv
}

fn refused_with_config(body: &str, field: &str, says: &str) {
    let inv = with_ssh_config(body);
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{body}\n{out}");
    assert!(out.contains(field) && out.contains(says), "{body}\n{out}");
}

#[test]
fn ssh_config_values_with_shell_words_or_options_are_inventory_errors() {
    // the config file is read as OpenSSH reads it: its values reach the connection stage too
    let host = "sites.home.nodes.n1.ssh.host";
    let user = "sites.home.nodes.n1.ssh.user";
    let jump = "sites.home.nodes.n1.ssh.proxy_jump";
    for (body, field, says) in [
        (
            "Host 192.168.0.10\n  HostName -oProxyCommand=id\n",
            host,
            "neither an IP address nor a DNS name",
        ),
        ("Host 192.168.0.10\n  HostName a;id\n", host, "neither"),
        ("Host 192.168.0.10\n  HostName $(id)\n", host, "neither"),
        (
            "Host 192.168.0.10\n  User -oProxyCommand=id\n",
            user,
            "not a valid user name",
        ),
        (
            "Host 192.168.0.10\n  User $(id)\n",
            user,
            "not a valid user name",
        ),
        (
            "Host 192.168.0.10\n  User `id`\n",
            user,
            "not a valid user name",
        ),
        (
            "Host 192.168.0.10\n  ProxyJump a;id\n",
            jump,
            "is not a node of the inventory",
        ),
        (
            "Host 192.168.0.10\n  ProxyJump -oProxyCommand=id\n",
            jump,
            "is not a node",
        ),
    ] {
        refused_with_config(body, field, says);
    }
    // and a plain one is taken
    let inv = with_ssh_config("Host 192.168.0.10\n  User admin\n  HostName n1.example.net\n");
    let o = wgprov(&["validate", "-i", inv.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn interface_with_a_leading_dash_is_an_inventory_error() {
    let text = inventory("").replace(
        "  cluster_cidrs: [10.244.0.0/16]\n",
        "  cluster_cidrs: [10.244.0.0/16]\n  interface: -wg0\n",
    );
    let out = refused(&text, "network.interface");
    assert!(out.contains("must not start with `-`"), "{out}");
}

#[test]
fn lock_file_that_is_not_utf8_is_an_inventory_error() {
    let inv = Inv::new(&inventory(""));
    let lock = inv.lock_path();
    std::fs::write(&lock, b"version: 1\nsites:\n  home: \xff\xfe\n").unwrap();
    let o = wgprov(&["plan", "-i", inv.path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    let both = format!("{out}{err}");
    assert!(
        both.contains(&format!("{}:3:9: ", lock.display())) && both.contains("not valid UTF-8"),
        "{both}"
    );
}
