//! Round trips over generated text: a wg0.conf built from arbitrary sections, keys, comments,
//! blank and junk lines (LF or CRLF, with or without a final newline) parses and prints back byte
//! for byte, reads its entries as written, and redacts every key `wg` would read as a private or
//! preshared key; the kubelet editor sets `--node-ip` and keeps every other line and flag.

use proptest::prelude::*;
use wgprov::facts::kubelet::{node_ip, set_node_ip};
use wgprov::facts::wgconf::{Line, WgConfig, redact};

/// One generated wg0.conf line, with what the parser should make of it.
#[derive(Clone, Debug)]
enum Gen {
    Header(String),
    /// key, value, the line as written.
    Entry(String, String, String),
    /// A secret entry (key spelled in any way wg accepts): the value must never be shown.
    Secret(String, String),
    Other(String),
}

fn header() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![
            Just("Interface"),
            Just("Peer"),
            Just("peer"),
            Just("INTERFACE"),
            Just("Foreign")
        ],
        "[ \t]{0,2}",
        prop_oneof![Just(""), Just(" # note"), Just("#x")],
    )
        .prop_map(|(name, pad, tail)| Gen::Header(format!("{pad}[{name}]{tail}")))
}

fn entry() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![
            Just("Address".to_string()),
            Just("ListenPort".to_string()),
            Just("DNS".to_string()),
            Just("MTU".to_string()),
            Just("Table".to_string()),
            Just("PostUp".to_string()),
            Just("PublicKey".to_string()),
            Just("AllowedIPs".to_string()),
            Just("Endpoint".to_string()),
            Just("persistentkeepalive".to_string()),
            "[A-Za-z][A-Za-z0-9_]{0,12}",
        ],
        "[ \t]{0,2}",
        "[ \t]{0,2}",
        // no `#` (a comment) and nothing that spells SECRET
        "[a-z0-9./:,;%=_ -]{0,24}",
        prop_oneof![Just(""), Just(" # why"), Just("#")],
    )
        .prop_map(|(key, l, r, value, comment)| {
            let raw = format!("{key}{l}={r}{value}{comment}");
            Gen::Entry(key.to_string(), value.trim().to_string(), raw)
        })
}

fn secret() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![
            Just("PrivateKey"),
            Just("privatekey"),
            Just("PresharedKey"),
            Just("presharedKEY"),
            Just(" Private Key"),
            Just("Preshared\tKey"),
        ],
        "[ \t]{0,2}",
        "SECRET[A-Za-z0-9+/]{4,40}={0,1}",
        prop_oneof![Just(""), Just(" # mine")],
    )
        .prop_map(|(key, pad, value, comment)| {
            Gen::Secret(format!("{key}{pad}={pad}{value}{comment}"), value)
        })
}

fn other() -> impl Strategy<Value = Gen> {
    prop_oneof![
        Just(String::new()),
        "[ \t]{1,3}",
        "#[ -~]{0,30}",
        // junk without `=`, `[`, `#`: kept as it is
        "[a-z0-9 ./:-]{1,20}",
    ]
    .prop_map(Gen::Other)
}

fn conf_lines() -> impl Strategy<Value = Vec<Gen>> {
    prop::collection::vec(
        prop_oneof![2 => header(), 4 => entry(), 2 => secret(), 3 => other()],
        0..24,
    )
}

/// The text, each line ended by `\n` or `\r\n`, the last one's ending optional.
fn text_of(lines: &[Gen], crlf: &[bool], final_newline: bool) -> String {
    let mut t = String::new();
    for (i, g) in lines.iter().enumerate() {
        t.push_str(match g {
            Gen::Header(r) | Gen::Entry(_, _, r) | Gen::Secret(r, _) | Gen::Other(r) => r,
        });
        let last = i + 1 == lines.len();
        if crlf[i % crlf.len()] && (!last || final_newline) {
            t.push('\r');
        }
        if !last || final_newline {
            t.push('\n');
        }
    }
    t
}

fn is_secret(key: &str) -> bool {
    key.eq_ignore_ascii_case("PrivateKey") || key.eq_ignore_ascii_case("PresharedKey")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn wg_conf_parse_then_print_is_the_identity(
        lines in conf_lines(),
        crlf in prop::collection::vec(any::<bool>(), 1..4),
        final_newline in any::<bool>(),
    ) {
        let text = text_of(&lines, &crlf, final_newline);
        let cfg = WgConfig::parse(&text);
        prop_assert_eq!(cfg.render(), text.clone());

        // one section per header line; entries inside sections read as written
        let headers = lines.iter().filter(|g| matches!(g, Gen::Header(_))).count();
        prop_assert_eq!(cfg.sections.len(), headers);
        let first_header = lines.iter().position(|g| matches!(g, Gen::Header(_)));
        let in_sections = &lines[first_header.map_or(lines.len(), |i| i + 1)..];
        let want: Vec<(String, String)> = in_sections
            .iter()
            .filter_map(|g| match g {
                Gen::Entry(k, v, _) if !is_secret(k) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
        let got: Vec<(String, String)> = cfg
            .sections
            .iter()
            .flat_map(|s| &s.lines)
            .filter_map(|l| match l {
                Line::Entry { key, value, .. } if !is_secret(key) => {
                    Some((key.clone(), value.clone()))
                }
                _ => None,
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn redacted_wg_conf_shows_no_secret_and_keeps_every_other_line(
        lines in conf_lines(),
        crlf in prop::collection::vec(any::<bool>(), 1..4),
        final_newline in any::<bool>(),
    ) {
        let text = text_of(&lines, &crlf, final_newline);
        let red = redact(&text);
        for g in &lines {
            if let Gen::Secret(_, value) = g {
                prop_assert!(!red.contains(value.as_str()), "{} shown in {}", value, red);
            }
        }
        prop_assert!(!red.contains("SECRET"), "{}", red);
        let (a, b): (Vec<&str>, Vec<&str>) = (text.split('\n').collect(), red.split('\n').collect());
        prop_assert_eq!(a.len(), b.len());
        let mut secrets = 0;
        for (x, y) in a.iter().zip(&b) {
            if x.contains("SECRET") {
                secrets += 1;
                prop_assert!(y.contains("= (redacted)"), "{:?} -> {:?}", x, y);
            } else {
                prop_assert_eq!(x, y);
            }
        }
        let want = lines.iter().filter(|g| matches!(g, Gen::Secret(..))).count();
        prop_assert_eq!(secrets, want);
    }
}

/// One generated kubelet-defaults line that is not a `KUBELET_EXTRA_ARGS` assignment.
fn kubelet_other() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "#[ -~]{0,30}",
        "[A-Z][A-Z_]{0,10}=[a-z0-9 \"'-]{0,12}",
        // a comment that mentions the flag is not an assignment
        Just("# KUBELET_EXTRA_ARGS=--node-ip=1.2.3.4".to_string()),
    ]
}

/// A flag other than `--node-ip`: `--name`, `--name=value` or `--name value`.
fn flag() -> impl Strategy<Value = Vec<String>> {
    (
        "[a-z][a-z-]{0,12}".prop_filter("not --node-ip", |n| n != "node-ip"),
        prop::option::of("[a-z0-9./:,=]{0,10}"),
        any::<bool>(),
    )
        .prop_map(|(name, value, separate)| match value {
            None => vec![format!("--{name}")],
            Some(v) if separate && !v.is_empty() => vec![format!("--{name}"), v],
            Some(v) => vec![format!("--{name}={v}")],
        })
}

/// Every flag of the assignment other than `--node-ip` and its value, in order.
fn other_flags(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.split_whitespace();
    while let Some(a) = it.next() {
        if a == "--node-ip" {
            it.next();
        } else if !a.starts_with("--node-ip=") {
            out.push(a.to_string());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn kubelet_editor_keeps_every_other_flag_and_line(
        before in prop::collection::vec(kubelet_other(), 0..5),
        after in prop::collection::vec(kubelet_other(), 0..5),
        flags in prop::collection::vec(flag(), 0..6),
        old_ip in prop::option::of((any::<u8>(), any::<u8>(), 0usize..7, any::<bool>())),
        quote in prop_oneof![Just(""), Just("\""), Just("'")],
        export in any::<bool>(),
        indent in "[ \t]{0,2}",
        crlf in any::<bool>(),
        assignment in any::<bool>(),
        ip in (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.100.{a}.{b}")),
    ) {
        let mut args: Vec<String> = flags.into_iter().flatten().collect();
        if let Some((a, b, at, separate)) = old_ip {
            let at = at.min(args.len());
            if separate {
                args.insert(at, format!("192.168.{a}.{b}"));
                args.insert(at, "--node-ip".into());
            } else {
                args.insert(at, format!("--node-ip=192.168.{a}.{b}"));
            }
        }
        // an unquoted value holds one word at most, as in a shell
        let quote = if args.len() > 1 && quote.is_empty() { "\"" } else { quote };
        let export = if export { "export " } else { "" };
        let line = format!("{indent}{export}KUBELET_EXTRA_ARGS={quote}{}{quote}", args.join(" "));
        let mut lines = before.clone();
        if assignment {
            lines.push(line);
        }
        lines.extend(after.iter().cloned());
        let eol = if crlf { "\r\n" } else { "\n" };
        let text: String = lines.iter().map(|l| format!("{l}{eol}")).collect();

        let out = set_node_ip(Some(&text), &ip);
        prop_assert_eq!(node_ip(&out), Some(ip.clone()));
        prop_assert_eq!(set_node_ip(Some(&out), &ip), out.clone(), "idempotent");
        let got: Vec<&str> = out.strip_suffix('\n').unwrap().split('\n').collect();
        let want: Vec<String> = lines.iter().map(|l| format!("{l}{eol}").trim_end_matches('\n').to_string()).collect();
        if !assignment {
            // appended, every line before it as it was
            prop_assert_eq!(got.len(), want.len() + 1);
            prop_assert_eq!(&got[..want.len()], &want[..]);
            prop_assert_eq!(got[want.len()], format!("KUBELET_EXTRA_ARGS=--node-ip={ip}"));
            return Ok(());
        }
        prop_assert_eq!(got.len(), want.len());
        let at = before.len();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if i != at {
                prop_assert_eq!(*g, w.as_str(), "line {} changed", i);
            }
        }
        let edited = got[at].trim_end_matches('\r');
        let value = edited.split_once("KUBELET_EXTRA_ARGS=").unwrap().1;
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        prop_assert_eq!(other_flags(value), other_flags(&args.join(" ")));
        let prefix = format!("{indent}{export}KUBELET_EXTRA_ARGS=");
        prop_assert!(edited.starts_with(&prefix), "{:?}", edited);
        prop_assert_eq!(got[at].ends_with('\r'), crlf, "the edited line keeps its line ending");
    }
}
