//! The kubelet defaults file (`/etc/default/kubelet`, `/etc/sysconfig/kubelet`): set
//! `--node-ip` inside `KUBELET_EXTRA_ARGS` and keep every other flag and line as written.
//! Handles quoted and unquoted values and both `--node-ip=X` and `--node-ip X`.

/// Operating-system family of a node: decides where the kubelet defaults file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// Debian, Ubuntu: `/etc/default/kubelet`.
    Debian,
    /// RHEL, Fedora, Rocky, Alma: `/etc/sysconfig/kubelet`.
    Redhat,
}

impl OsFamily {
    /// Every family.
    pub const ALL: [OsFamily; 2] = [Self::Debian, Self::Redhat];
    /// Parses the inventory spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "debian" => Some(Self::Debian),
            "redhat" => Some(Self::Redhat),
            _ => None,
        }
    }
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debian => "debian",
            Self::Redhat => "redhat",
        }
    }
}

/// The variable kubelet's systemd drop-in reads.
pub const VAR: &str = "KUBELET_EXTRA_ARGS";

struct Assignment {
    line: usize,
    prefix: String,
    quote: Option<char>,
    args: Vec<String>,
}

fn parse_assignment(line: &str, idx: usize) -> Option<Assignment> {
    let indent_len = line.len() - line.trim_start().len();
    let rest = &line[indent_len..];
    let (export, rest) = match rest.strip_prefix("export ") {
        Some(r) => ("export ", r.trim_start()),
        None => ("", rest),
    };
    let value = rest.strip_prefix(VAR)?.strip_prefix('=')?;
    let value = value.trim_end();
    let (quote, inner) = match value.chars().next() {
        Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
            (Some(q), &value[1..value.len() - 1])
        }
        _ => (None, value),
    };
    Some(Assignment {
        line: idx,
        prefix: format!("{}{export}{VAR}=", &line[..indent_len]),
        quote,
        args: inner.split_whitespace().map(str::to_string).collect(),
    })
}

/// The `--node-ip` value currently set, if any (the last assignment wins, as in systemd).
pub fn node_ip(content: &str) -> Option<String> {
    let lines: Vec<&str> = content.lines().collect();
    let a = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| parse_assignment(l, i))?;
    let mut it = a.args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = arg.strip_prefix("--node-ip=") {
            return Some(v.to_string());
        }
        if arg == "--node-ip" {
            return it.next().cloned();
        }
    }
    None
}

/// `content` with `--node-ip` set to `ip`. `None` (no file yet) gives a one-line file.
/// Every other line and flag is kept; the style of an existing `--node-ip` is kept.
pub fn set_node_ip(content: Option<&str>, ip: &str) -> String {
    let content = content.unwrap_or("");
    // Split on `\n` only: a `\r` before it (a CRLF file) stays part of its line.
    let mut lines: Vec<String> = if content.is_empty() {
        Vec::new()
    } else {
        let body = content.strip_suffix('\n').unwrap_or(content);
        body.split('\n').map(str::to_string).collect()
    };
    let last = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| parse_assignment(l, i));
    match last {
        None => lines.push(format!("{VAR}=--node-ip={ip}")),
        Some(mut a) => {
            let mut out: Vec<String> = Vec::new();
            let mut done = false;
            let mut it = a.args.drain(..);
            while let Some(arg) = it.next() {
                let (is_eq, is_sep) = (arg.starts_with("--node-ip="), arg == "--node-ip");
                if is_sep {
                    it.next();
                }
                if is_eq || is_sep {
                    if !done {
                        if is_sep {
                            out.push("--node-ip".into());
                            out.push(ip.to_string());
                        } else {
                            out.push(format!("--node-ip={ip}"));
                        }
                        done = true;
                    }
                    continue;
                }
                out.push(arg);
            }
            if !done {
                out.push(format!("--node-ip={ip}"));
            }
            let joined = out.join(" ");
            let quote = match a.quote {
                Some(q) => Some(q),
                None if out.len() > 1 => Some('"'),
                None => None,
            };
            let cr = if lines[a.line].ends_with('\r') {
                "\r"
            } else {
                ""
            };
            lines[a.line] = match quote {
                Some(q) => format!("{}{q}{joined}{q}{cr}", a.prefix),
                None => format!("{}{joined}{cr}", a.prefix),
            };
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// `content` without the `--node-ip` that `ours` says is wgprov's (a node being taken out gives
/// its kubelet back its own choice of address); every other line and flag kept. `None` when
/// there is nothing to take out.
pub fn unset_node_ip(content: &str, ours: &dyn Fn(&str) -> bool) -> Option<String> {
    let body = content.strip_suffix('\n').unwrap_or(content);
    let mut lines: Vec<String> = body.split('\n').map(str::to_string).collect();
    let a = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| parse_assignment(l, i))?;
    let mut out: Vec<&str> = Vec::new();
    let mut removed = false;
    let mut it = a.args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = arg.strip_prefix("--node-ip=")
            && ours(v)
        {
            removed = true;
            continue;
        }
        if arg == "--node-ip" {
            match it.next() {
                Some(v) if ours(v) => {
                    removed = true;
                    continue;
                }
                Some(v) => {
                    out.push(arg);
                    out.push(v);
                    continue;
                }
                None => {}
            }
        }
        out.push(arg);
    }
    if !removed {
        return None;
    }
    let cr = if lines[a.line].ends_with('\r') {
        "\r"
    } else {
        ""
    };
    let joined = out.join(" ");
    lines[a.line] = match a.quote {
        Some(q) if !out.is_empty() => format!("{}{q}{joined}{q}{cr}", a.prefix),
        _ => format!("{}{joined}{cr}", a.prefix),
    };
    let mut s = lines.join("\n");
    s.push('\n');
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_the_node_ip_out_keeps_every_other_flag_and_line() {
        let ours = |v: &str| v.starts_with("10.100.");
        let cases: &[(&str, Option<&str>)] = &[
            (
                "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n",
                Some("KUBELET_EXTRA_ARGS=\n"),
            ),
            (
                "# keep me\nKUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=10.100.0.1\"\nOTHER=1\n",
                Some("# keep me\nKUBELET_EXTRA_ARGS=\"--max-pods=200\"\nOTHER=1\n"),
            ),
            (
                "KUBELET_EXTRA_ARGS='--node-ip 10.100.0.1 --v=2'\n",
                Some("KUBELET_EXTRA_ARGS='--v=2'\n"),
            ),
            // an address that is not wgprov's stays, and nothing changes
            ("KUBELET_EXTRA_ARGS=\"--node-ip=192.168.0.5 --v=2\"\n", None),
            ("FOO=bar\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(unset_node_ip(input, &ours).as_deref(), *want, "{input:?}");
        }
        // set then unset gives the file back as it was, but for an emptied variable
        let before = "# keep me\nKUBELET_EXTRA_ARGS=\"--max-pods=200\"\n";
        let set = set_node_ip(Some(before), "10.100.0.7");
        assert_eq!(unset_node_ip(&set, &ours).as_deref(), Some(before));
    }

    #[test]
    fn table() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n"),
            (Some(""), "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n"),
            (
                Some("KUBELET_EXTRA_ARGS=\n"),
                "KUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n",
            ),
            (
                Some(
                    "# keep me\nKUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=192.168.0.10\"\nOTHER=1\n",
                ),
                "# keep me\nKUBELET_EXTRA_ARGS=\"--max-pods=200 --node-ip=10.100.0.1\"\nOTHER=1\n",
            ),
            (
                Some("KUBELET_EXTRA_ARGS='--node-ip 1.2.3.4 --v=2'\n"),
                "KUBELET_EXTRA_ARGS='--node-ip 10.100.0.1 --v=2'\n",
            ),
            (
                Some("KUBELET_EXTRA_ARGS=--cgroup-driver=systemd\n"),
                "KUBELET_EXTRA_ARGS=\"--cgroup-driver=systemd --node-ip=10.100.0.1\"\n",
            ),
            (
                Some("KUBELET_EXTRA_ARGS=\"--node-ip=1.1.1.1 --node-ip=2.2.2.2\"\n"),
                "KUBELET_EXTRA_ARGS=\"--node-ip=10.100.0.1\"\n",
            ),
            (
                Some("FOO=bar"),
                "FOO=bar\nKUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n",
            ),
            (
                Some("export KUBELET_EXTRA_ARGS=\"--v=2\"\n"),
                "export KUBELET_EXTRA_ARGS=\"--v=2 --node-ip=10.100.0.1\"\n",
            ),
        ];
        for (input, want) in cases {
            let got = set_node_ip(*input, "10.100.0.1");
            assert_eq!(&got, want, "input {input:?}");
            assert_eq!(node_ip(&got).as_deref(), Some("10.100.0.1"));
            assert_eq!(set_node_ip(Some(&got), "10.100.0.1"), got, "idempotent");
        }
    }

    #[test]
    fn crlf_file_keeps_its_carriage_returns() {
        // found by the kubelet fuzz target: the other lines lost their `\r`
        let got = set_node_ip(
            Some("# top\r\nKUBELET_EXTRA_ARGS=\"--v=2\"\r\nOTHER=1\r\n"),
            "10.100.0.1",
        );
        assert_eq!(
            got,
            "# top\r\nKUBELET_EXTRA_ARGS=\"--v=2 --node-ip=10.100.0.1\"\r\nOTHER=1\r\n"
        );
        assert_eq!(node_ip(&got).as_deref(), Some("10.100.0.1"));
        assert_eq!(
            set_node_ip(Some("A=1\r"), "10.100.0.1"),
            "A=1\r\nKUBELET_EXTRA_ARGS=--node-ip=10.100.0.1\n"
        );
    }

    #[test]
    fn reads_both_styles() {
        assert_eq!(
            node_ip("KUBELET_EXTRA_ARGS=\"--node-ip 1.2.3.4\"").as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(node_ip("KUBELET_EXTRA_ARGS=--v=2"), None);
        assert_eq!(node_ip("# nothing"), None);
    }
}
