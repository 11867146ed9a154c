//! Pictures of the network: the topology as Graphviz DOT (sites as clusters, next-hops drawn
//! double, links labelled with their endpoints), the same picture with each link coloured by its
//! health, and SVG through Graphviz's `dot` where it is installed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::error::{Error, Result};
use crate::status::LinkHealth;
use crate::topology::{PeerRef, Topology};

/// Quoted DOT identifier or string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Quoted DOT label whose lines are separated by `\n` in the output (DOT's line break).
fn label(lines: &[&str]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| l.replace('\\', "\\\\").replace('"', "\\\""))
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

/// The topology as DOT. With `health`, each link is coloured: green when up, red and dashed
/// when down, grey and dotted when not reported.
pub fn picture(topo: &Topology, health: Option<&[LinkHealth]>) -> String {
    let mut o = String::from(
        "graph wgprov {\n  node [shape=box, fontname=\"monospace\"];\n  edge [fontname=\"monospace\", fontsize=10];\n",
    );
    for s in &topo.sites {
        o.push_str(&cluster(topo, s));
    }
    let health: Option<BTreeMap<(String, String), bool>> =
        health.map(|h| h.iter().map(|(a, b, up)| (ordered(a, b), *up)).collect());
    for ((a, b), l) in &links(topo) {
        o.push_str(&edge(a, b, l, health.as_ref()));
    }
    o.push_str("}\n");
    o
}

/// A site as a DOT cluster: its title, the hub drawn for an unmanaged site or a hub router set
/// up by hand, and its nodes (next-hops drawn double).
fn cluster(topo: &Topology, s: &crate::topology::SitePlan) -> String {
    let mut o = String::new();
    let ep = s
        .endpoint
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no endpoint".into());
    let _ = writeln!(o, "  subgraph {} {{", q(&format!("cluster_{}", s.name)));
    let title = format!(
        "{}{} {}",
        s.name,
        if s.managed { "" } else { " (unmanaged)" },
        s.wireguard_cidr
    );
    let _ = writeln!(o, "    label={};", label(&[&title, &ep]));
    if !s.managed {
        let _ = writeln!(
            o,
            "    {} [label={}, style=dashed];",
            q(&format!("site:{}", s.name)),
            label(&[&format!("{} next-hop", s.name)])
        );
    } else if s.router_address.is_some() {
        // a hub router set up by hand: the site's hub, drawn like a next-hop, dashed
        let ip = crate::topology::alloc::hub_ip(s.wireguard_cidr)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "    {} [label={}, peripheries=2, style=dashed];",
            q(&format!("site:{}", s.name)),
            label(&[&format!("{}-router", s.name), &ip, "hub (by hand)"])
        );
    }
    for n in s.nodes.iter().filter_map(|n| topo.node(n)) {
        let ip = n.wireguard_ip.to_string();
        let mut lines = vec![n.name.as_str(), ip.as_str()];
        if n.is_next_hop {
            lines.push("next-hop");
        }
        let style = if n.is_next_hop {
            ", peripheries=2, style=bold"
        } else {
            ""
        };
        let _ = writeln!(o, "    {} [label={}{}];", q(&n.name), label(&lines), style);
    }
    o.push_str("  }\n");
    o
}

/// A link of the picture: whether it crosses sites, and the endpoint each end dials.
struct Link {
    cross_site: bool,
    endpoints: Vec<String>,
    /// For two sites without an endpoint: `via relay R (NODE)`.
    relay: Option<String>,
}

/// One link per pair of ends (ordered by name), with the endpoint each end dials (when it dials
/// one).
fn links(topo: &Topology) -> BTreeMap<(String, String), Link> {
    let mut links: BTreeMap<(String, String), Link> = BTreeMap::new();
    for n in &topo.nodes {
        for p in topo.peers(n) {
            let other = match &p.peer {
                PeerRef::Node(x) => x.clone(),
                PeerRef::Site(x) => format!("site:{x}"),
            };
            let key = ordered(&n.name, &other);
            let l = links.entry(key).or_insert(Link {
                cross_site: p.site != n.site,
                endpoints: Vec::new(),
                relay: None,
            });
            if let Some(e) = &p.endpoint {
                l.endpoints.push(format!("{} -> {e}", n.name));
            }
        }
    }
    // links of unmanaged sites are only seen from the managed end: that end's endpoint is what
    // the unmanaged side dials, when its site has one
    for ((a, b), l) in links.iter_mut() {
        for (x, other) in [(a, b), (b, a)] {
            if let Some(site) = x.strip_prefix("site:")
                && let Some(o_node) = topo.node(other)
                && let Some(ep) = topo
                    .sites
                    .iter()
                    .find(|s| s.name == o_node.site)
                    .and_then(|s| s.endpoint.as_ref())
            {
                l.endpoints.push(format!("{site} -> {ep}"));
            }
        }
    }
    // two next-hops without an endpoint: no tunnel of their own, their traffic crosses the relay
    for r in topo.relayed_links() {
        links.insert(
            ordered(&r.from, &r.to),
            Link {
                cross_site: true,
                endpoints: Vec::new(),
                relay: Some(format!("via relay {} ({})", r.sites.relay, r.via)),
            },
        );
    }
    links
}

/// A link as a DOT edge, coloured by its health when `health` is given (by ordered ends).
fn edge(a: &str, b: &str, l: &Link, health: Option<&BTreeMap<(String, String), bool>>) -> String {
    let mut attrs = Vec::new();
    if l.cross_site {
        attrs.push("style=bold".to_string());
    }
    let mut text: Vec<&str> = l.endpoints.iter().map(|s| s.as_str()).collect();
    if let Some(r) = &l.relay {
        attrs.retain(|x| x != "style=bold");
        attrs.push("style=dashed".to_string());
        text.push(r);
    }
    if let Some(h) = health {
        match h.get(&(a.to_string(), b.to_string())) {
            Some(true) => attrs.push("color=green4, penwidth=2".into()),
            Some(false) => {
                attrs.retain(|x| !x.starts_with("style="));
                attrs.push("color=red, fontcolor=red, style=dashed, penwidth=3".into());
                text.insert(0, "DOWN");
            }
            None => {
                attrs.retain(|x| !x.starts_with("style="));
                attrs.push("color=grey60, style=dotted".into());
            }
        }
    }
    if !text.is_empty() {
        attrs.push(format!("label={}", label(&text)));
    }
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        format!(" [{}]", attrs.join(", "))
    };
    format!("  {} -- {}{attrs};\n", q(a), q(b))
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The topology with every link coloured by its health (for `status`): green up, red dashed
/// and labelled DOWN when down, grey dotted when `links` does not mention it. Pure: the caller
/// says which links are up.
pub fn health_dot(topo: &Topology, links: &[LinkHealth]) -> String {
    picture(topo, Some(links))
}

/// Renders DOT as SVG with Graphviz's `dot -Tsvg`; a clear error when Graphviz is missing.
pub fn render_svg(dot: &str) -> Result<Vec<u8>> {
    render_svg_with("dot", dot)
}

/// [`render_svg`] with the `dot` program named (for tests).
pub fn render_svg_with(program: &str, dot: &str) -> Result<Vec<u8>> {
    let child = std::process::Command::new(program)
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: program.into(),
                source: std::io::Error::new(
                    e.kind(),
                    "--format svg needs Graphviz's `dot`, which is not installed: install graphviz (apt-get install graphviz), or run `wgprov graph -i INV --format dot | dot -Tsvg > net.svg` where it is",
                ),
            });
        }
        Err(e) => return Err(Error::io(program, e)),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = dot.to_string();
    // write on a thread: dot may fill its stdout pipe before reading all of stdin
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(program, e))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::Io {
            path: program.into(),
            source: std::io::Error::other(format!(
                "dot -Tsvg failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::lock::Lock;

    fn topo() -> Topology {
        let y = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\nsites:\n  home:\n    endpoint: home.example.net:51820\n    next_hop: n1\n    nodes:\n      n1: {address: 192.168.0.10}\n      n2: {address: 192.168.0.11}\n  office:\n    endpoint: 203.0.113.9:51820\n    nodes:\n      o1: {address: 192.168.1.10}\n";
        let l = crate::inventory::load_str(std::path::Path::new("t.yaml"), y).unwrap();
        Topology::build(&l.inventory, &Lock::default()).unwrap().0
    }

    fn edge<'a>(dot: &'a str, a: &str, b: &str) -> &'a str {
        dot.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{a}\" -- \"{b}\"")))
            .unwrap_or_else(|| panic!("no edge {a} -- {b} in\n{dot}"))
    }

    #[test]
    fn picture_has_clusters_next_hops_and_link_endpoints() {
        let dot = picture(&topo(), None);
        assert!(dot.contains("subgraph \"cluster_home\""), "{dot}");
        assert!(
            dot.contains("\"n1\" [label=\"n1\\n10.100.0.1\\nnext-hop\", peripheries=2"),
            "{dot}"
        );
        let cross = edge(&dot, "n1", "o1");
        assert!(cross.contains("style=bold"), "{cross}");
        assert!(
            cross.contains("n1 -> 203.0.113.9:51820")
                && cross.contains("o1 -> home.example.net:51820"),
            "{cross}"
        );
        let local = edge(&dot, "n1", "n2");
        assert!(local.contains("n2 -> 192.168.0.10:51820"), "{local}");
        assert!(
            !dot.contains("color="),
            "no health colours without health: {dot}"
        );
    }

    #[test]
    fn health_colours_each_link() {
        let dot = health_dot(
            &topo(),
            &[
                ("o1".into(), "n1".into(), false),
                ("n1".into(), "n2".into(), true),
            ],
        );
        let down = edge(&dot, "n1", "o1");
        assert!(
            down.contains("color=red") && down.contains("label=\"DOWN\\n"),
            "{down}"
        );
        assert!(edge(&dot, "n1", "n2").contains("color=green4"), "{dot}");
        // a link nobody reported: grey
        let dot = health_dot(&topo(), &[]);
        assert!(edge(&dot, "n1", "o1").contains("color=grey60"), "{dot}");
    }

    #[test]
    fn svg_without_graphviz_says_what_to_do() {
        let e = render_svg_with("/nonexistent/dot", "graph {}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("install graphviz") && e.contains("--format dot | dot -Tsvg"),
            "{e}"
        );
    }
}
