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
