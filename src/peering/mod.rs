//! Peering cards: how a site someone else runs is peered with, by exchanging public facts and
//! never keys. `wgprov export` writes a [`Card`] for one of our sites (its block, endpoint,
//! listen port, the public key of its next-hop, MTU, the blocks we already route, and the exact
//! `[Peer]` section the other side adds); `wgprov import` ([`import`]) puts the site a card
//! describes into an inventory as `managed: false`, editing the file's text so that every
//! comment and every other byte stays as it was.
//!
//! The card is YAML, versioned by its first key (`wgprov_peering_card: 1`); unknown keys are
//! refused like in an inventory. The next-hop's public key is derived on the node itself
//! (`wg pubkey` over the `PrivateKey` of its config): the private key never leaves it.

pub mod import;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::fleet::{Connect, Progress, Quiet, close_all, connect_all, with_jumps};
use crate::inventory::schema::S;
use crate::inventory::validate::{Diags, is_safe_name, loc};
use crate::inventory::{Endpoint, Loc};
use crate::keys::{KeyError, PublicKey};
use crate::shell::{InterfaceName, PATH_PRELUDE, RemotePath, sh_quote};
use crate::topology::{NodePlan, Topology};
use crate::transport::Transport;

/// The card format this wgprov writes and reads.
pub const CARD_VERSION: i64 = 1;

/// The public facts of one site, as exchanged with a neighbour. Holds no private or preshared
/// key: there is no field for one, and a card whose `[Peer]` section carries one is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// The site's name.
    pub site: String,
    /// Its WireGuard block (what the other side puts in `AllowedIPs`).
    pub wireguard_cidr: Ipv4Net,
    /// Its public `host:port` (the router's port-forward to the next-hop), if it has one.
    pub endpoint: Option<Endpoint>,
    /// The UDP port its next-hop listens on.
    pub listen_port: u16,
    /// The public key of its next-hop (the hub the other side peers with).
    pub public_key: PublicKey,
    /// wg0's MTU on its nodes.
    pub mtu: u16,
    /// The WireGuard space its nodes route into the mesh.
    pub wireguard_space: Ipv4Net,
    /// Blocks the exporting side already routes (its sites and the neighbours it peers with),
    /// by site name: the importing side's blocks must not overlap them.
    pub reserved: Vec<(String, Ipv4Net)>,
    /// The `[Peer]` section the other side adds to its hub's WireGuard config (empty in a card
    /// written by hand without one: import does not need it).
    pub peer_section: String,
}

/// Where a parsed card's fields are written (`reserved.<site>` for the reserved blocks).
#[derive(Clone, Debug, Default)]
pub struct CardSource {
    /// The card file.
    pub path: PathBuf,
    /// Field to location.
    pub locs: BTreeMap<String, Loc>,
}

impl CardSource {
    /// The location of `field` (line 0 when unknown).
    pub fn loc(&self, field: &str) -> Loc {
        self.locs.get(field).copied().unwrap_or_default()
    }
}

/// The card of managed site `site` of `topo`, whose next-hop has `public_key`.
pub fn card_for(topo: &Topology, site: &str, public_key: PublicKey) -> Result<Card> {
    let s = topo
        .site(site)
        .ok_or_else(|| Error::Usage(format!("no site `{site}` in the inventory")))?;
    if !s.managed {
        return Err(Error::Usage(format!(
            "site {site} is not managed by this inventory: its card comes from its owner"
        )));
    }
    let net = &topo.network;
    let mut peer = format!(
        "[Peer]\n# site {site}, from its wgprov peering card\nPublicKey = {public_key}\nAllowedIPs = {}\n",
        s.wireguard_cidr
    );
    match &s.endpoint {
        Some(e) => peer.push_str(&format!("Endpoint = {e}\n")),
        None => peer.push_str(&format!(
            "# no Endpoint: site {site} has none; it reaches you at yours, so yours needs one\n"
        )),
    }
    if net.persistent_keepalive > 0 {
        peer.push_str(&format!(
            "PersistentKeepalive = {}\n",
            net.persistent_keepalive
        ));
    }
    Ok(Card {
        site: site.to_string(),
        wireguard_cidr: s.wireguard_cidr,
        endpoint: s.endpoint.clone(),
        listen_port: net.listen_port,
        public_key,
        mtu: net.mtu,
        wireguard_space: net.wireguard_cidr,
        reserved: topo
            .sites
            .iter()
            .map(|o| (o.name.clone(), o.wireguard_cidr))
            .collect(),
        peer_section: peer,
    })
}

impl Card {
    /// The card as YAML, with comments that say what it is and how to use it.
    pub fn to_yaml(&self) -> String {
        let mut y = format!(
            "# wgprov peering card for site {site}: public facts only, no private or preshared key.\n\
             # With wgprov, the other side runs: wgprov import -i THEIR-INVENTORY THIS-CARD\n\
             wgprov_peering_card: {CARD_VERSION}\n\
             site: {site}\n\
             wireguard_cidr: {cidr}\n",
            site = self.site,
            cidr = self.wireguard_cidr,
        );
        match &self.endpoint {
            Some(e) => y.push_str(&format!("endpoint: {}\n", yaml_scalar(&e.to_string()))),
            None => y.push_str("# no endpoint: this site cannot be reached first; yours needs one and a port-forward\n"),
        }
        y.push_str(&format!(
            "listen_port: {}\npublic_key: \"{}\"\nmtu: {}\nwireguard_space: {}\n",
            self.listen_port, self.public_key, self.mtu, self.wireguard_space
        ));
        y.push_str(
            "# Blocks this side already routes: none of your sites' blocks may overlap them.\nreserved:\n",
        );
        for (name, block) in &self.reserved {
            y.push_str(&format!("  {name}: {block}\n"));
        }
        if self.peer_section.is_empty() {
            return y;
        }
        y.push_str(&format!(
            "# Without wgprov: add this to your hub's WireGuard config, route {} to the hub from your\n\
             # other nodes, and let UDP from this site's endpoint in.\n\
             peer_section: |\n",
            self.wireguard_cidr
        ));
        for l in self.peer_section.lines() {
            if l.is_empty() {
                y.push('\n');
            } else {
                y.push_str(&format!("  {l}\n"));
            }
        }
        y
    }

    /// Reads a card from `text` (read from `path`), checking every field; every problem found
    /// is reported with the card's file, line and field.
    pub fn parse(path: &Path, text: &str) -> Result<(Card, CardSource)> {
        // the version first, so that a newer card is named as such rather than as unknown keys
        check_version(path, text)?;
        let raw: RawCard = crate::inventory::parse_yaml(path, text)?;
        let mut d = Diags::new(path);
        let mut src = CardSource {
            path: path.to_path_buf(),
            locs: BTreeMap::new(),
        };
        let (site, block, space) = site_and_blocks(&mut d, &mut src, &raw);
        let (endpoint, listen_port, public_key, mtu) = values(&mut d, &mut src, &raw);
        let mut reserved = Vec::new();
        for (name, b) in raw.reserved.iter().flatten() {
            let f = format!("reserved.{}", name.value);
            src.at(&f, loc(b));
            if let Some(n) = cidr(&mut d, b, &f) {
                reserved.push((name.value.clone(), n));
            }
        }
        let empty = S {
            value: String::new(),
            referenced: raw.site.referenced,
            defined: raw.site.defined,
        };
        let peer = raw.peer_section.as_ref().unwrap_or(&empty);
        src.at("peer_section", loc(peer));
        no_secrets(&mut d, peer);
        if d.has_errors() {
            return Err(Error::Invalid(d.list));
        }
        let card = Card {
            site,
            wireguard_cidr: block.expect("checked"),
            endpoint,
            listen_port: listen_port.expect("checked"),
            public_key: public_key.expect("checked"),
            mtu: mtu.expect("checked"),
            wireguard_space: space.expect("checked"),
            reserved,
            peer_section: peer.value.clone(),
        };
        Ok((card, src))
    }

    /// Reads and parses the card at `path` (`-`: standard input).
    pub fn read(path: &Path) -> Result<(Card, CardSource)> {
        let text = if path == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| Error::Usage(format!("cannot read the card from stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read card {}: {e}", path.display())))?
        };
        Self::parse(path, &text)
    }
}

/// The card as written: values kept as text with their places, checked by [`Card::parse`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    #[allow(dead_code)]
    wgprov_peering_card: S<i64>,
    site: S<String>,
    wireguard_cidr: S<String>,
    #[serde(default)]
    endpoint: Option<S<String>>,
    listen_port: S<i64>,
    public_key: S<String>,
    mtu: S<i64>,
    wireguard_space: S<String>,
    #[serde(default)]
    reserved: Option<IndexMap<S<String>, S<String>>>,
    #[serde(default)]
    peer_section: Option<S<String>>,
}

impl CardSource {
    /// Records where `field` is written; returns the place.
    fn at(&mut self, field: &str, l: Loc) -> Loc {
        self.locs.insert(field.to_string(), l);
        l
    }
}

/// A card says `wgprov_peering_card: 1` first; anything else is no card of this wgprov's.
fn check_version(path: &Path, text: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        wgprov_peering_card: Option<S<i64>>,
    }
    let v: Version = crate::inventory::parse_yaml(path, text)?;
    let mut d = Diags::new(path);
    match &v.wgprov_peering_card {
        None => {
            d.error(
                Loc { line: 1, column: 1 },
                "wgprov_peering_card",
                "not a wgprov peering card (it starts with `wgprov_peering_card: 1`; `wgprov export` writes one)",
            );
            Err(Error::Invalid(d.list))
        }
        Some(n) if n.value != CARD_VERSION => {
            d.error(
                loc(n),
                "wgprov_peering_card",
                format!(
                    "card version {} is not understood by this wgprov ({CARD_VERSION})",
                    n.value
                ),
            );
            Err(Error::Invalid(d.list))
        }
        Some(_) => Ok(()),
    }
}

/// The card's site name, its block and the WireGuard space it lies in.
fn site_and_blocks(
    d: &mut Diags,
    src: &mut CardSource,
    raw: &RawCard,
) -> (String, Option<Ipv4Net>, Option<Ipv4Net>) {
    let site = raw.site.value.trim().to_string();
    let l = src.at("site", loc(&raw.site));
    if !is_safe_name(&site) {
        d.error(
            l,
            "site",
            format!("`{site}` is not a safe site name (lowercase letters, digits, hyphens)"),
        );
    }
    let block = cidr(d, &raw.wireguard_cidr, "wireguard_cidr");
    src.at("wireguard_cidr", loc(&raw.wireguard_cidr));
    let space = cidr(d, &raw.wireguard_space, "wireguard_space");
    src.at("wireguard_space", loc(&raw.wireguard_space));
    if let (Some(b), Some(s)) = (block, space)
        && !s.contains(&b)
    {
        d.error(
            loc(&raw.wireguard_cidr),
            "wireguard_cidr",
            format!("{b} lies outside the card's own wireguard_space {s}"),
        );
    }
    (site, block, space)
}

/// The card's endpoint, port, public key and MTU.
fn values(
    d: &mut Diags,
    src: &mut CardSource,
    raw: &RawCard,
) -> (
    Option<Endpoint>,
    Option<u16>,
    Option<PublicKey>,
    Option<u16>,
) {
    let endpoint = raw.endpoint.as_ref().and_then(|e| {
        src.at("endpoint", loc(e));
        Endpoint::parse(e.value.trim())
            .map_err(|m| d.error(loc(e), "endpoint", m.to_string()))
            .ok()
    });
    src.at("listen_port", loc(&raw.listen_port));
    let listen_port = u16::try_from(raw.listen_port.value).ok().filter(|p| *p > 0);
    if listen_port.is_none() {
        d.error(
            loc(&raw.listen_port),
            "listen_port",
            format!("port {} is outside 1-65535", raw.listen_port.value),
        );
    }
    src.at("public_key", loc(&raw.public_key));
    let public_key = PublicKey::from_base64(&raw.public_key.value)
        .map_err(|m| {
            d.error(
                loc(&raw.public_key),
                "public_key",
                format!("`{}` {m}", raw.public_key.value),
            )
        })
        .ok();
    src.at("mtu", loc(&raw.mtu));
    let mtu = u16::try_from(raw.mtu.value)
        .ok()
        .filter(|m| (1280..=1500).contains(m));
    if mtu.is_none() {
        d.error(
            loc(&raw.mtu),
            "mtu",
            format!("{} is outside 1280-1500", raw.mtu.value),
        );
    }
    (endpoint, listen_port, public_key, mtu)
}

/// A card carries public facts only: a secret key in its peer section is refused.
fn no_secrets(d: &mut Diags, peer: &S<String>) {
    for (i, l) in peer.value.lines().enumerate() {
        // wg drops every blank of a line before it reads the key's name
        let key: String = l
            .split('=')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if key == "privatekey" || key == "presharedkey" {
            // the block scalar's place is its first line
            let mut l0 = loc(peer);
            l0.line += i as u32;
            d.error(
                l0,
                "peer_section",
                "a card carries public facts only, and this one has a secret key in it: refused. Ask its owner for a new card, and for that key to be replaced: it has leaked",
            );
        }
    }
}

fn cidr(d: &mut Diags, v: &S<String>, field: &str) -> Option<Ipv4Net> {
    match v.value.trim().parse::<IpNet>() {
        Ok(IpNet::V4(n)) if n.trunc() == n => Some(n),
        Ok(IpNet::V4(n)) => {
            d.error(
                loc(v),
                field,
                format!(
                    "`{}` has host bits set; the network is {}",
                    v.value,
                    n.trunc()
                ),
            );
            None
        }
        _ => {
            d.error(
                loc(v),
                field,
                format!("`{}` is not an IPv4 CIDR like 10.100.7.0/24", v.value),
            );
            None
        }
    }
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted.
pub(crate) fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/+=".contains(&b))
        && !s.starts_with(|c: char| "-:".contains(c))
        && !s.contains(": ")
        && !s.ends_with(':');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The script that reports a next-hop's public key without its private key leaving the host:
/// `file KEY` (derived by `wg pubkey` from the config's `PrivateKey`), `file none` (no key in
/// the config), `file absent` (no readable config) or `file bad` (a key `wg` refuses); then
/// `running KEY` or `running none` for the live interface.
pub fn public_key_script(conf: &RemotePath, iface: &InterfaceName) -> String {
    key_script(
        &format!("f={}\n", sh_quote(conf)),
        "[ -r \"$f\" ]",
        "sed -n -e 's/#.*//' -e 's/^[[:space:]]*[Pp][Rr][Ii][Vv][Aa][Tt][Ee][Kk][Ee][Yy][[:space:]]*=[[:space:]]*\\([^[:space:]]*\\)[[:space:]]*$/\\1/p' \"$f\" | head -n 1",
        iface,
    )
}

/// [`public_key_script`] for an OpenWrt hub router: the key is uci's
/// (`network.<iface>.private_key`).
pub fn uci_public_key_script(iface: &InterfaceName) -> String {
    key_script(
        "",
        "command -v uci >/dev/null 2>&1",
        &format!("uci -q get network.{iface}.private_key"),
        iface,
    )
}

/// The key script: `setup`, then when `readable` succeeds the key `read` prints is turned into
/// its public key on the host.
fn key_script(setup: &str, readable: &str, read: &str, iface: &InterfaceName) -> String {
    format!(
        "{PATH_PRELUDE}{setup}\
         if {readable}; then\n\
         \x20 k=$({read})\n\
         \x20 if [ -z \"$k\" ]; then echo 'file none'\n\
         \x20 elif p=$(printf '%s\\n' \"$k\" | wg pubkey 2>/dev/null); then echo \"file $p\"\n\
         \x20 else echo 'file bad'; fi\n\
         \x20 k=\n\
         else echo 'file absent'; fi\n\
         if p=$(wg show {iface} public-key 2>/dev/null); then echo \"running $p\"; else echo 'running none'; fi\n",
        iface = sh_quote(iface),
    )
}

/// Why a next-hop's public key cannot be put on a card.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubKeyError {
    /// The script found a `PrivateKey` that `wg pubkey` refused.
    #[error("its PrivateKey is malformed (or `wg` is missing)")]
    Malformed,
    /// `wg pubkey` printed something that is not a key.
    #[error("`wg pubkey` printed a key that {0}")]
    BadKey(KeyError),
    /// The script printed no `file` line.
    #[error("the key script printed nothing: is `sh` there?")]
    Silent,
    /// The next-hop has no key yet.
    #[error(
        "{node} has no WireGuard key in {conf} yet: run `wgprov apply` first, so that the card carries the key the site will keep"
    )]
    NoKey {
        /// The next-hop.
        node: String,
        /// Where its key lives.
        conf: String,
    },
    /// Its key file (or uci option) cannot be read.
    #[error("{node}: {conf}: {source}")]
    Unreadable {
        /// The next-hop.
        node: String,
        /// Where its key lives.
        conf: String,
        /// Why.
        source: Box<HubKeyError>,
    },
}

/// What [`public_key_script`] found on a next-hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubKey {
    /// The key of the config's `PrivateKey`: `Ok(None)` when it has none (or there is no
    /// config); `Err` when `wg` refused it.
    pub file: std::result::Result<Option<PublicKey>, HubKeyError>,
    /// The live interface's key, when it is up.
    pub running: Option<PublicKey>,
}

impl HubKey {
    /// Parses the script's output.
    pub fn parse(out: &str) -> std::result::Result<HubKey, HubKeyError> {
        let mut file = None;
        let mut running = None;
        for l in out.lines() {
            match l.trim().split_once(' ') {
                Some(("file", v)) => {
                    file = Some(match v.trim() {
                        "none" | "absent" => Ok(None),
                        "bad" => Err(HubKeyError::Malformed),
                        k => PublicKey::from_base64(k)
                            .map(Some)
                            .map_err(HubKeyError::BadKey),
                    })
                }
                Some(("running", v)) => {
                    running = match v.trim() {
                        "none" => None,
                        k => PublicKey::from_base64(k).ok(),
                    }
                }
                _ => {}
            }
        }
        Ok(HubKey {
            file: file.ok_or(HubKeyError::Silent)?,
            running,
        })
    }

    /// The key to put on the card (the config's: it is what apply keeps), and a warning when
    /// the running interface has another one.
    pub fn decide(
        self,
        node: &str,
        conf: &str,
    ) -> std::result::Result<(PublicKey, Option<String>), HubKeyError> {
        match self.file {
            Ok(Some(k)) => {
                let warn = self.running.filter(|r| *r != k).map(|r| {
                    format!(
                        "{node}: the running interface has key {r}, {conf} has {k}: the card carries the file's, which apply brings the interface back to"
                    )
                });
                Ok((k, warn))
            }
            Ok(None) => Err(HubKeyError::NoKey {
                node: node.into(),
                conf: conf.into(),
            }),
            Err(e) => Err(HubKeyError::Unreadable {
                node: node.into(),
                conf: conf.into(),
                source: Box::new(e),
            }),
        }
    }
}

/// Reads the public key of `node` (a next-hop) over one connection and one exec, reaching it
/// through its `proxy_jump` chain when it has one (the fleet runner connects the jump hosts
/// first). Returns the key and an optional warning.
pub async fn hub_public_key<C: Connect>(
    topo: &Topology,
    node: &NodePlan,
    connector: Arc<C>,
) -> Result<(PublicKey, Option<String>)> {
    let iface = &topo.network.interface;
    // an OpenWrt hub keeps its key in uci, a node in its wg-quick file
    let openwrt = crate::hosts::openwrt_hub::of(topo, node).is_some();
    let (conf, script) = if openwrt {
        (
            format!("network.{iface}.private_key (uci)"),
            uci_public_key_script(iface),
        )
    } else {
        let conf = format!("/etc/wireguard/{iface}.conf");
        let path = RemotePath::new(&conf).map_err(|e| Error::Usage(e.to_string()))?;
        (conf, public_key_script(&path, iface))
    };
    let host_err = |message: String| Error::Host {
        host: node.name.clone(),
        message,
    };
    let quiet: Arc<dyn Progress> = Arc::new(Quiet);
    let sessions = connect_all(
        &connector,
        with_jumps(topo, std::slice::from_ref(&node.name)),
        1,
        &quiet,
    )
    .await;
    let out = match sessions.get(&node.name) {
        Some(Ok(s)) => s
            .run_script(&script)
            .await
            .map_err(|e| host_err(e.to_string())),
        Some(Err(e)) => Err(host_err(e.to_string())),
        None => Err(host_err("not contacted".into())),
    };
    close_all(&sessions).await;
    let out = out?;
    if out.status != 0 {
        return Err(host_err(format!(
            "the key script exited {}: {}",
            out.status,
            out.stderr_text().trim()
        )));
    }
    HubKey::parse(&out.stdout_text())
        .and_then(|k| k.decide(&node.name, &conf))
        .map_err(|e| host_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn topo(yaml: &str) -> Topology {
        let inv = crate::inventory::load_str(Path::new("inv.yaml"), yaml)
            .unwrap()
            .inventory;
        Topology::build(&inv, &Default::default()).unwrap().0
    }

    fn home() -> Topology {
        topo(include_str!("../../inventories/home.yaml"))
    }

    fn key() -> PublicKey {
        PublicKey::from_base64(KEY).unwrap()
    }

    /// Export's key read runs over the fleet runner: the jump host is connected first, the
    /// next-hop through it, one exec; a jump host that cannot be reached is the export's error.
    #[test]
    fn export_reads_the_hub_key_through_its_jump_host_over_the_runner() {
        use crate::transport::fake::{FakeConnector, FakeHost, ok};
        let t = topo(
            "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    next_hop: h1\n    nodes:\n      h1: { address: 192.168.0.10, ssh: { proxy_jump: bastion } }\n      bastion: { address: 192.168.0.2 }\n",
        );
        let hub = t.node("h1").unwrap();
        let run = |refuse: &[&str]| {
            let h1 = Arc::new(FakeHost::new());
            h1.answer("other", |_| Ok(ok(&format!("file {KEY}\nrunning {KEY}\n"))));
            let conn = Arc::new(FakeConnector::new(
                [
                    ("h1".to_string(), h1),
                    ("bastion".to_string(), Arc::new(FakeHost::new())),
                ]
                .into_iter()
                .collect(),
            ));
            conn.refuse
                .lock()
                .unwrap()
                .extend(refuse.iter().map(|s| s.to_string()));
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(hub_public_key(&t, hub, conn.clone()));
            (r, conn)
        };
        let (r, conn) = run(&[]);
        assert_eq!(r.unwrap(), (key(), None));
        assert_eq!(
            (conn.connections("bastion"), conn.connections("h1")),
            (1, 1)
        );
        assert!(conn.hosts["h1"].kinds() == ["other"]);
        let (r, conn) = run(&["bastion"]);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("h1") && e.contains("jump host bastion"), "{e}");
        assert_eq!(
            conn.connections("h1"),
            0,
            "nothing reached past a dead jump host"
        );
    }

    #[test]
    fn a_card_round_trips_through_its_yaml() {
        let card = card_for(&home(), "home", key()).unwrap();
        let text = card.to_yaml();
        let (back, src) = Card::parse(Path::new("home.card.yaml"), &text).unwrap();
        assert_eq!(back, card);
        assert_eq!(
            src.loc("reserved.friend").line,
            text.lines()
                .position(|l| l.contains("friend: 10.100.7.0/24"))
                .unwrap() as u32
                + 1
        );
        // what the card says, and the section the other side adds, exactly
        assert_eq!(card.wireguard_cidr.to_string(), "10.100.0.0/24");
        assert_eq!(
            card.endpoint.as_ref().unwrap().to_string(),
            "home.example.net:51820"
        );
        assert_eq!((card.listen_port, card.mtu), (51820, 1420));
        assert_eq!(
            card.peer_section,
            format!(
                "[Peer]\n# site home, from its wgprov peering card\nPublicKey = {KEY}\nAllowedIPs = 10.100.0.0/24\nEndpoint = home.example.net:51820\nPersistentKeepalive = 25\n"
            )
        );
        let names: Vec<&str> = card.reserved.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["home", "office", "friend"]);
    }

    #[test]
    fn a_card_without_endpoint_or_keepalive_round_trips_and_says_so() {
        let y = include_str!("../../inventories/home.yaml")
            .replace("    endpoint: home.example.net:51820\n", "")
            .replace("persistent_keepalive: 25", "persistent_keepalive: 0");
        let card = card_for(&topo(&y), "home", key()).unwrap();
        assert_eq!(card.endpoint, None);
        assert!(
            !card.peer_section.contains("Endpoint ="),
            "{}",
            card.peer_section
        );
        assert!(!card.peer_section.contains("PersistentKeepalive"));
        let text = card.to_yaml();
        assert!(text.contains("# no endpoint"), "{text}");
        assert_eq!(Card::parse(Path::new("c"), &text).unwrap().0, card);
    }

    #[test]
    fn a_hand_written_card_needs_only_the_facts() {
        let text = format!(
            "wgprov_peering_card: 1\nsite: lake\nwireguard_cidr: 10.100.9.0/24\nlisten_port: 51820\npublic_key: {KEY}\nmtu: 1420\nwireguard_space: 10.100.0.0/16\n"
        );
        let (card, _) = Card::parse(Path::new("lake.yaml"), &text).unwrap();
        assert_eq!((&card.endpoint, card.reserved.len()), (&None, 0));
        assert_eq!(card.peer_section, "");
        let again = Card::parse(Path::new("c"), &card.to_yaml()).unwrap().0;
        assert_eq!(again.public_key, card.public_key);
    }

    #[test]
    fn only_a_managed_site_has_a_card_here() {
        let e = card_for(&home(), "friend", key()).unwrap_err().to_string();
        assert!(e.contains("not managed by this inventory"), "{e}");
        assert!(card_for(&home(), "nowhere", key()).is_err());
    }

    #[test]
    fn a_card_never_holds_a_private_key() {
        let card = card_for(&home(), "home", key()).unwrap();
        let text = card.to_yaml();
        assert!(!text.to_ascii_lowercase().contains("privatekey"));
        assert!(!text.to_ascii_lowercase().contains("presharedkey"));
        // and one that does is refused, pointing at the line
        let leaked = text.replace("  PublicKey = ", "  PresharedKey = AAAA\n  PublicKey = ");
        let Err(Error::Invalid(d)) = Card::parse(Path::new("c.yaml"), &leaked) else {
            panic!("accepted a card with a preshared key");
        };
        let line = leaked
            .lines()
            .position(|l| l.contains("PresharedKey"))
            .unwrap() as u32
            + 1;
        assert_eq!(
            (d[0].field.as_str(), d[0].line),
            ("peer_section", line),
            "{d:?}"
        );
    }

    /// Found by the peering-card fuzz target: wg reads `Preshared Key =` as `PresharedKey`
    /// (it drops every blank of a line first), so a card must refuse it too.
    #[test]
    fn a_secret_key_line_with_blanks_inside_its_name_is_refused() {
        let text = card_for(&home(), "home", key()).unwrap().to_yaml();
        for spelled in ["Preshared Key", "Private\tKey", "P rivateKey"] {
            let leaked = text.replace(
                "  PublicKey = ",
                &format!(
                    "  {spelled} = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\n  PublicKey = "
                ),
            );
            assert!(
                matches!(
                    Card::parse(Path::new("c.yaml"), &leaked),
                    Err(Error::Invalid(_))
                ),
                "accepted `{spelled}`"
            );
        }
    }

    #[test]
    fn bad_cards_are_refused_with_file_line_and_field() {
        let good = card_for(&home(), "home", key()).unwrap().to_yaml();
        let cases = [
            (
                good.replace("wgprov_peering_card: 1", "wgprov_peering_card: 2"),
                "wgprov_peering_card",
                "version 2",
            ),
            (
                good.replace("wgprov_peering_card: 1\n", ""),
                "wgprov_peering_card",
                "not a wgprov peering card",
            ),
            (
                good.replace("mtu: 1420", "mtu: 1420\nextra: 1"),
                "extra",
                "unknown field",
            ),
            (
                good.replace(
                    "wireguard_cidr: 10.100.0.0/24",
                    "wireguard_cidr: 10.100.0.1/24",
                ),
                "wireguard_cidr",
                "host bits",
            ),
            (
                good.replace(
                    "wireguard_cidr: 10.100.0.0/24",
                    "wireguard_cidr: 10.200.0.0/24",
                ),
                "wireguard_cidr",
                "outside the card's own",
            ),
            (good.replace(KEY, "AAAA"), "public_key", "3 bytes"),
            (
                good.replace("listen_port: 51820", "listen_port: 0"),
                "listen_port",
                "1-65535",
            ),
            (good.replace("mtu: 1420", "mtu: 9000"), "mtu", "1280-1500"),
            (
                good.replace("site: home", "site: Home$"),
                "site",
                "safe site name",
            ),
        ];
        for (text, field, why) in cases {
            match Card::parse(Path::new("c.yaml"), &text) {
                Err(Error::Invalid(d)) => assert!(
                    d.iter()
                        .any(|x| x.field == field && x.message.contains(why) && x.line > 0),
                    "{field}: {d:?}"
                ),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_key_script_is_valid_sh_and_reads_the_key_on_the_host() {
        let conf = RemotePath::new("/etc/wireguard/wg0.conf").unwrap();
        let s = public_key_script(&conf, &InterfaceName::default());
        let check = std::process::Command::new("sh")
            .args(["-n", "-c", &s])
            .status()
            .unwrap();
        assert!(check.success(), "{s}");
        assert!(s.contains("wg pubkey") && !s.contains("cat "), "{s}");
        // an OpenWrt hub's key is uci's, turned into its public key on the router too
        let u = uci_public_key_script(&InterfaceName::default());
        if let Err(e) = crate::shell::sh_syntax(&u) {
            panic!("{e}\n{u}");
        }
        assert!(
            u.contains("k=$(uci -q get network.wg0.private_key)") && u.contains("wg pubkey"),
            "{u}"
        );
    }

    #[test]
    fn the_key_script_derives_the_public_key_where_wg_is_installed() {
        let on_path = |p: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .chain(["/usr/bin".into(), "/usr/sbin".into()])
                .any(|d| d.join(p).is_file())
        };
        if !on_path("wg") {
            eprintln!("SKIPPED: wg not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kp = crate::keys::Keypair::generate();
        let conf = dir.path().join("wg0.conf");
        std::fs::write(
            &conf,
            format!(
                "[Interface]\r\nAddress = 10.100.0.1/16\r\n  privatekey=  {} # ours\r\n",
                kp.private.expose_base64().as_str()
            ),
        )
        .unwrap();
        let path = RemotePath::new(conf.to_str().unwrap()).unwrap();
        let iface = InterfaceName::new("wgprovnone0").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &public_key_script(&path, &iface)])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(!out.contains(kp.private.expose_base64().as_str()));
        let hub = HubKey::parse(&out).unwrap();
        assert_eq!(hub.file, Ok(Some(kp.public)), "{out}");
        assert_eq!(hub.running, None);
    }

    #[test]
    fn the_card_carries_the_configs_key_and_names_a_missing_one() {
        let k = key();
        let other = crate::keys::Keypair::generate().public;
        let hub = HubKey::parse(&format!("file {KEY}\nrunning {other}\n")).unwrap();
        let (got, warn) = hub.decide("node1", "/etc/wireguard/wg0.conf").unwrap();
        assert_eq!(got, k);
        assert!(warn.unwrap().contains("running interface has key"));
        let none = HubKey::parse("file none\nrunning none\n").unwrap();
        let e = none
            .decide("node1", "/etc/wireguard/wg0.conf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run `wgprov apply` first"), "{e}");
        let bad = HubKey::parse("file bad\nrunning none\n").unwrap();
        assert!(
            bad.decide("n", "c")
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        assert!(HubKey::parse("").is_err());
    }

    #[test]
    fn yaml_scalars_read_back_as_written() {
        for s in [
            "203.0.113.10:51820",
            "[2001:db8::1]:51820",
            "a b",
            "-x",
            "x: y",
        ] {
            let y = format!("v: {}\n", yaml_scalar(s));
            #[derive(Deserialize)]
            struct V {
                v: String,
            }
            let v: V = serde_saphyr::from_str(&y).unwrap();
            assert_eq!(v.v, s, "{y}");
        }
        assert_eq!(yaml_scalar("203.0.113.10:51820"), "203.0.113.10:51820");
    }
}
