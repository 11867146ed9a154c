//! Peering cards as users run them: `import` edits the inventory and keeps everything else,
//! refuses a colliding card with exit 2 and the file untouched; `export` reads the next-hop's
//! public key over SSH. In the lab: two organisations, two inventories, one card each way, and
//! nodes of both ping across.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::common::{Inv, LabGuard, lab_available, root};

fn wgprov(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args(args)
        .output()
        .unwrap()
}

/// `wgprov import -i INV CARD`.
fn import(inv: &Inv, card: &std::path::Path) -> Output {
    wgprov(&[
        "import",
        "-i",
        inv.path.to_str().unwrap(),
        card.to_str().unwrap(),
    ])
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

/// A card as `wgprov export` writes it, for site `site` with `block`.
fn card(site: &str, block: &str) -> String {
    format!(
        "# wgprov peering card for site {site}\n\
         wgprov_peering_card: 1\n\
         site: {site}\n\
         wireguard_cidr: {block}\n\
         endpoint: {site}.example.org:51820\n\
         listen_port: 51820\n\
         public_key: \"{KEY}\"\n\
         mtu: 1420\n\
         wireguard_space: 10.100.0.0/16\n\
         reserved:\n  {site}: {block}\n\
         peer_section: |\n  [Peer]\n  PublicKey = {KEY}\n  AllowedIPs = {block}\n  Endpoint = {site}.example.org:51820\n"
    )
}

fn home() -> (Inv, String) {
    let t = std::fs::read_to_string(root().join("inventories/home.yaml")).unwrap();
    (Inv::new(&t), t)
}

fn write_card(inv: &Inv, name: &str, text: &str) -> PathBuf {
    let p = inv.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn import_adds_the_site_as_unmanaged_keeping_every_line_and_comment() {
    let (inv, before) = home();
    let c = write_card(&inv, "lake.card.yaml", &card("lake", "10.100.9.0/24"));
    let o = import(&inv, &c);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("added site lake (10.100.9.0/24) as managed: false"),
        "{out}"
    );
    let after = std::fs::read_to_string(&inv.path).unwrap();
    // the old file is a prefix, the new site its tail: nothing else moved
    assert!(after.starts_with(&before), "{after}");
    assert_eq!(
        &after[before.len()..],
        format!(
            "  lake:\n    managed: false                 # someone else's site: from its peering card (wgprov import)\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: lake.example.org:51820\n    public_key: \"{KEY}\"\n"
        )
    );
    assert!(!inv.lock_path().exists(), "import writes no lock file");
    // valid as any inventory, and the plan peers the next-hops with it
    let v = wgprov(&["plan", "-i", inv.path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v).1);
    assert!(text(&v).0.contains("10.100.9.0/24"));
    // importing it again changes nothing
    let again = import(&inv, &c);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again).0.contains("already as the card says"),
        "{}",
        text(&again).0
    );
}

#[test]
fn a_colliding_card_is_refused_with_exit_2_and_the_inventory_untouched() {
    let (inv, before) = home();
    let mtime = std::fs::metadata(&inv.path).unwrap().mtime_nsec();
    // home's block
    let c = write_card(&inv, "lake.card.yaml", &card("lake", "10.100.0.0/24"));
    let o = import(&inv, &c);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    let file = inv.path.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:18:3: sites.home.wireguard_cidr: 10.100.0.0/24 is site home's block"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&inv.path).unwrap(), before);
    assert_eq!(std::fs::metadata(&inv.path).unwrap().mtime_nsec(), mtime);
    // a managed site of the same name
    let c = write_card(&inv, "office.card.yaml", &card("office", "10.100.9.0/24"));
    let o = import(&inv, &c);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("a card never replaces a managed site"),
        "{}",
        text(&o).1
    );
    assert_eq!(std::fs::read_to_string(&inv.path).unwrap(), before);
    // a card that is not one, or of a newer version
    let c = write_card(
        &inv,
        "bad.card.yaml",
        &card("lake", "10.100.9.0/24").replace("card: 1", "card: 7"),
    );
    let o = import(&inv, &c);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("bad.card.yaml:2:"), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&inv.path).unwrap(), before);
    // no temporary file left beside it
    let names: Vec<String> = std::fs::read_dir(inv.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn import_check_shows_the_change_and_writes_nothing_and_reads_a_card_from_stdin() {
    let (inv, before) = home();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgprov"))
        .args([
            "import",
            "-i",
            inv.path.to_str().unwrap(),
            "-",
            "--check",
            "--as",
            "their-lake",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(card("lake", "10.100.9.0/24").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("+  their-lake:\n"), "{out}");
    assert!(out.contains("--check: nothing written"), "{out}");
    assert_eq!(std::fs::read_to_string(&inv.path).unwrap(), before);
}

#[test]
fn export_needs_a_managed_site_and_a_reachable_next_hop() {
    let inv = Inv::new(
        "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      node1:\n        address: 127.0.0.1\n        ssh: { port: 1 }\n  friend:\n    managed: false\n    wireguard_cidr: 10.100.7.0/24\n    public_key: \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n",
    );
    let p = inv.path.to_str().unwrap();
    let o = wgprov(&["export", "-i", p, "--site", "friend"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("its card comes from its owner"),
        "{}",
        text(&o).1
    );
    let o = wgprov(&["export", "-i", p, "--site", "nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("its sites: home, friend"),
        "{}",
        text(&o).1
    );
    // nothing answers on port 1: exit 1, and no card on stdout
    let o = wgprov(&[
        "export",
        "-i",
        p,
        "--site",
        "home",
        "--connect-timeout",
        "5",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("node1: unreachable"), "{err}");
}

#[test]
fn completions_and_the_man_page_know_export_and_import() {
    let o = wgprov(&["completions", "bash"]);
    let (out, _) = text(&o);
    assert!(out.contains("export") && out.contains("import") && out.contains("--as"));
    let o = wgprov(&["man"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("WGPROV EXPORT") && out.contains("WGPROV IMPORT"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// the lab: two organisations

/// Both organisations' sites, for building the lab (routers, port-forwards, nodes).
const BOTH: &str = "network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  alpha:
    wireguard_cidr: 10.100.1.0/24
    lan_cidrs: [192.168.1.0/24]
    endpoint: 203.0.113.11:51820
    next_hop: a1
    nodes:
      a1: { address: 192.168.1.10 }
      a2: { address: 192.168.1.11 }
  beta:
    wireguard_cidr: 10.100.2.0/24
    lan_cidrs: [192.168.2.0/24]
    endpoint: 198.51.100.22:51820
    next_hop: b1
    nodes:
      b1: { address: 192.168.2.10 }
      b2: { address: 192.168.2.11 }
";

/// Organisation A's own inventory: its site only; its hub is reached through the member (so
/// that export's key read goes through a jump host).
const ORG_A: &str = "# Organisation A: we run alpha.
network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]   # pods, services
sites:
  # our only site
  alpha:
    wireguard_cidr: 10.100.1.0/24
    lan_cidrs: [192.168.1.0/24]
    endpoint: 203.0.113.11:51820
    next_hop: a1
    nodes:
      a1: { address: 192.168.1.10, ssh: { proxy_jump: a2 } }   # the hub, reached through a2
      a2: { address: 192.168.1.11 }   # the member
# neighbours come from their cards (wgprov import)
";

/// Organisation B's own inventory: its site only.
const ORG_B: &str = "# Organisation B runs beta.
network:
  wireguard_cidr: 10.100.0.0/16
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]
sites:
  beta:
    wireguard_cidr: 10.100.2.0/24
    lan_cidrs: [192.168.2.0/24]
    endpoint: 198.51.100.22:51820   # router's port-forward
    next_hop: b1
    nodes:
      b1: { address: 192.168.2.10 }
      b2: { address: 192.168.2.11 }
";

struct Org<'a> {
    lab: &'a LabGuard,
    inv: PathBuf,
    outputs: &'a std::sync::Mutex<Vec<String>>,
}

impl Org<'_> {
    fn wgprov(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = vec![env!("CARGO_BIN_EXE_wgprov").to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let out = wgprov::lab::command(&self.lab.prefix, "controller", &cmd)
            .unwrap()
            .output()
            .unwrap();
        let (o, e) = text(&out);
        self.outputs.lock().unwrap().push(format!("{o}\n{e}"));
        (out.status.code().unwrap_or(-1), o, e)
    }
    fn inv(&self) -> &str {
        self.inv.to_str().unwrap()
    }
    /// Applies this organisation's inventory; the guard must confirm the change.
    fn apply(&self) {
        let (code, out, err) = self.wgprov(&["apply", "-i", self.inv(), "--format", "json"]);
        assert_eq!(code, 0, "apply -i {}:\n{out}\n{err}", self.inv());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["guard"]["outcome"], "confirmed", "{out}");
    }
    fn export(&self, site: &str, to: &Path) {
        let (code, out, err) = self.wgprov(&["export", "-i", self.inv(), "--site", site]);
        assert_eq!(code, 0, "export {site}: {err}");
        std::fs::write(to, out).unwrap();
    }
    fn import(&self, card: &Path) -> (i32, String, String) {
        self.wgprov(&["import", "-i", self.inv(), card.to_str().unwrap()])
    }
}

/// Every line of `before` is still in `after`, in order, and the lines added are exactly `added`.
fn only_added(before: &str, after: &str) -> Vec<String> {
    use similar::{ChangeTag, TextDiff};
    let mut added = Vec::new();
    for ch in TextDiff::from_lines(before, after).iter_all_changes() {
        match ch.tag() {
            ChangeTag::Delete => panic!("import removed a line: {:?}", ch.value()),
            ChangeTag::Insert => added.push(ch.value().trim_end().to_string()),
            ChangeTag::Equal => {}
        }
    }
    added
}

#[test]
fn two_organisations_exchange_cards_apply_their_own_sides_and_ping_across() {
    if !lab_available() {
        return;
    }
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    for d in ["lab", "a", "b"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let lab_inv = dir.path().join("lab/both.yaml");
    std::fs::write(&lab_inv, BOTH).unwrap();
    let (a_inv, b_inv) = (
        dir.path().join("a/org-a.yaml"),
        dir.path().join("b/org-b.yaml"),
    );
    std::fs::write(&a_inv, ORG_A).unwrap();
    std::fs::write(&b_inv, ORG_B).unwrap();
    let lab = LabGuard::up(&lab_inv, "peer", &[]);
    let outputs = std::sync::Mutex::new(Vec::new());
    let a = Org {
        lab: &lab,
        inv: a_inv.clone(),
        outputs: &outputs,
    };
    let b = Org {
        lab: &lab,
        inv: b_inv.clone(),
        outputs: &outputs,
    };

    // each organisation builds its own site; neither knows the other
    a.apply();
    b.apply();
    // before the cards, A's mesh has no way to beta's block
    let (code, _, _) = lab.exec("a2", &["ping", "-c", "1", "-W", "1", "10.100.2.2"]);
    assert_ne!(code, 0, "a2 reached beta before any card was exchanged");

    // cards, one each way
    let (a_card, b_card) = (
        dir.path().join("alpha.card.yaml"),
        dir.path().join("beta.card.yaml"),
    );
    a.export("alpha", &a_card);
    b.export("beta", &b_card);
    let a_text = std::fs::read_to_string(&a_card).unwrap();
    eprintln!("the card of alpha:\n{a_text}");
    let b1_key = lab.sh("b1", "wg show wg0 public-key").trim().to_string();
    let b_text = std::fs::read_to_string(&b_card).unwrap();
    assert!(
        b_text.contains(&format!("public_key: \"{b1_key}\"")),
        "{b_text}"
    );
    assert!(
        b_text.contains("wireguard_cidr: 10.100.2.0/24\nendpoint: 198.51.100.22:51820\n"),
        "{b_text}"
    );
    assert!(
        a_text.contains("AllowedIPs = 10.100.1.0/24\n  Endpoint = 203.0.113.11:51820\n"),
        "{a_text}"
    );

    // a card whose block collides with A's own site is refused, A's inventory untouched
    let bad = dir.path().join("collides.card.yaml");
    std::fs::write(
        &bad,
        b_text.replace(
            "wireguard_cidr: 10.100.2.0/24",
            "wireguard_cidr: 10.100.1.0/24",
        ),
    )
    .unwrap();
    let (code, out, err) = a.import(&bad);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("sites.alpha.wireguard_cidr: 10.100.1.0/24 is site alpha's block"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&a_inv).unwrap(), ORG_A);

    // each imports the other's card: the other site is added, every other line kept
    let (code, out, err) = a.import(&b_card);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = b.import(&a_card);
    assert_eq!(code, 0, "{out}{err}");
    let a_added = only_added(ORG_A, &std::fs::read_to_string(&a_inv).unwrap());
    assert_eq!(a_added[0], "  beta:");
    assert!(
        a_added.contains(&format!("    public_key: \"{b1_key}\"")),
        "{a_added:?}"
    );
    let b_added = only_added(ORG_B, &std::fs::read_to_string(&b_inv).unwrap());
    assert_eq!(b_added[0], "  alpha:");

    // each applies its own side only; nodes of both organisations ping across
    a.apply();
    b.apply();
    let ping = |from: &str, ip: &str| {
        (0..10).any(|_| lab.exec(from, &["ping", "-c", "1", "-W", "1", ip]).0 == 0)
    };
    let mut failed = Vec::new();
    for (from, to) in [
        ("a1", "10.100.2.1"),
        ("a2", "10.100.2.2"),
        ("b2", "10.100.1.2"),
        ("b1", "10.100.1.2"),
    ] {
        if !ping(from, to) {
            failed.push(format!("{from} -> {to}"));
        }
    }
    assert!(failed.is_empty(), "no ping across: {failed:?}");
    // B's config names A's hub by the key on A's card, and no private key was ever printed
    let b1_conf = lab.sh("b1", "cat /etc/wireguard/wg0.conf");
    let a1_key = lab.sh("a1", "wg show wg0 public-key").trim().to_string();
    assert!(
        b1_conf.contains(&format!("PublicKey = {a1_key}")),
        "{b1_conf}"
    );
    for n in ["a1", "a2", "b1", "b2"] {
        let private = lab.sh(n, "wg show wg0 private-key").trim().to_string();
        for o in outputs.lock().unwrap().iter() {
            assert!(!o.contains(&private), "{n}'s private key was printed:\n{o}");
        }
        assert!(!a_text.contains(&private) && !b_text.contains(&private));
    }
    eprintln!(
        "two organisations peered by cards in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// properties: over random inventories with comments everywhere, import only ever adds the
// site's lines, never moves an address, and a second import changes nothing

mod properties {
    use proptest::prelude::*;
    use similar::{ChangeTag, TextDiff};
    use wgprov::error::Error;
    use wgprov::inventory::lock::Lock;
    use wgprov::peering::import::{self, Action};
    use wgprov::peering::{Card, CardSource};

    use super::super::common::{Inv, gen_inventory};

    fn sites_strategy() -> impl Strategy<Value = Vec<(String, usize)>> {
        prop::collection::btree_map(0u16..60, 1usize..4, 1..6)
            .prop_map(|m| m.into_iter().map(|(id, n)| (format!("s{id}"), n)).collect())
    }

    /// `yaml` with comments: some lines get a trailing one, some a comment line before them.
    fn commented(yaml: &str, marks: &[u8], crlf: bool) -> String {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        for (i, l) in yaml.lines().enumerate() {
            match marks[i % marks.len()] % 4 {
                0 => out.push_str(&format!("{}# note {i}{eol}", " ".repeat(i % 5))),
                1 => {
                    out.push_str(&format!("{l}   # trailing {i}{eol}"));
                    continue;
                }
                _ => {}
            }
            out.push_str(&format!("{l}{eol}"));
        }
        out
    }

    fn card(block: &str) -> Card {
        let text = super::card("lake", block);
        Card::parse(std::path::Path::new("lake.card.yaml"), &text)
            .unwrap()
            .0
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn import_adds_lines_only_moves_nothing_and_is_idempotent(
            sites in sites_strategy(),
            marks in prop::collection::vec(any::<u8>(), 1..12),
            crlf in any::<bool>(),
            locked in any::<bool>(),
            pick in any::<usize>(),
        ) {
            let text = commented(&gen_inventory(&sites, true), &marks, crlf);
            let inv = Inv::new(&text);
            // with `locked`, the addresses are handed out (recorded in the lock file) first
            let before = wgprov::topology::plan_inventory(&inv.path, locked).unwrap();
            let lock = Lock::read(&inv.lock_path()).unwrap();
            let src = CardSource::default();

            // a free block: added, every old line kept in order, nothing moved
            let c = card("10.100.200.0/24");
            let out = import::plan(&inv.path, &text, &lock, &c, &src, None).unwrap();
            prop_assert_eq!(out.action, Action::Added);
            let mut added = Vec::new();
            for ch in TextDiff::from_lines(&text, &out.text).iter_all_changes() {
                prop_assert!(ch.tag() != ChangeTag::Delete, "removed {:?}", ch.value());
                if ch.tag() == ChangeTag::Insert {
                    added.push(ch.value().to_string());
                }
            }
            prop_assert_eq!(added.len(), 5, "{:?}", added);
            prop_assert_eq!(added[0].trim_end(), "  lake:");
            let eol = if crlf { "\r\n" } else { "\n" };
            prop_assert!(added.iter().all(|l| l.ends_with(eol)), "{:?}", added);
            inv.write(&out.text);
            let after = inv.plan();
            for s in &before.topology.sites {
                let now = after.topology.site(&s.name).unwrap();
                prop_assert_eq!(now.wireguard_cidr, s.wireguard_cidr, "site {} moved", &s.name);
            }
            for n in &before.topology.nodes {
                prop_assert_eq!(after.topology.node(&n.name).unwrap().wireguard_ip, n.wireguard_ip);
            }
            let again = import::plan(&inv.path, &out.text, &Lock::read(&inv.lock_path()).unwrap(), &c, &src, None).unwrap();
            prop_assert_eq!(again.action, Action::Unchanged);
            prop_assert_eq!(&again.text, &out.text);

            // a block handed out to one of ours: refused
            let taken = &before.topology.sites[pick % before.topology.sites.len()];
            let bad = card(&taken.wireguard_cidr.to_string());
            match import::plan(&inv.path, &text, &lock, &bad, &src, None) {
                Err(Error::Invalid(d)) => prop_assert!(
                    d.iter().any(|x| x.field == format!("sites.{}.wireguard_cidr", taken.name)),
                    "{:?}", d
                ),
                Ok(o) if !locked => prop_assert!(
                    o.warnings.iter().any(|w| w.contains(&format!("site {} has no block yet", taken.name))),
                    "{:?}", o.warnings
                ),
                other => prop_assert!(false, "a taken block was accepted: {:?}", other.map(|o| o.text)),
            }
        }
    }
}
