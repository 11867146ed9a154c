//! Link health by packets, not by strings: from one end of a WireGuard link, ping the other
//! end's WireGuard address over the interface until one answer comes back or the wait runs
//! out. One exec per probing host, every target at once. Shared by the guard's health gate
//! and `status`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::shell::{InterfaceName, PATH_PRELUDE, sh_quote};

/// Marker of one probe result line.
pub const PROBE: &str = "@@WGPROV-PROBE@@";

/// The script that pings every target from this host over `iface`, each until its first
/// answer or `wait`. With dual stack (`six` gives a target's IPv6 address), a target is up only
/// when it answers in both families: a link that carries IPv4 and not IPv6 is broken too.
pub fn ping_script(
    iface: &InterfaceName,
    targets: &[Ipv4Addr],
    wait: Duration,
    six: &dyn Fn(Ipv4Addr) -> Option<Ipv6Addr>,
) -> String {
    let secs = wait.as_secs().max(1);
    let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let cases: String = targets
        .iter()
        .filter_map(|t| six(*t).map(|s| format!("{t}) echo {s};; ")))
        .collect();
    let ping = |addr: &str| {
        format!(
            "ping -c 1 -i 0.5 -w {secs} -q -I {} {addr} >/dev/null 2>&1",
            sh_quote(iface)
        )
    };
    format!(
        "# wgprov:probe\n{PATH_PRELUDE}\
         six() {{ case \"$1\" in {cases}*) ;; esac; }}\n\
         p() {{ if {v4} && {{ s=$(six \"$1\"); [ -z \"$s\" ] || {v6}; }}; then echo \"{PROBE} up $1\"; else echo \"{PROBE} down $1\"; fi; }}\n\
         for t in {targets}; do p \"$t\" & done\nwait\n",
        v4 = ping("\"$1\""),
        v6 = ping("-6 \"$s\""),
        targets = list.join(" "),
    )
}

/// Reads a probe's output: target address to whether it answered. Targets missing from the
/// output did not answer.
pub fn parse(stdout: &str, targets: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, bool> {
    let mut r: BTreeMap<Ipv4Addr, bool> = targets.iter().map(|t| (*t, false)).collect();
    for l in stdout.lines() {
        let mut w = l.strip_prefix(PROBE).unwrap_or("").split_whitespace();
        if let (Some(state), Some(ip)) = (w.next(), w.next())
            && let Ok(ip) = ip.parse::<Ipv4Addr>()
            && let Some(v) = r.get_mut(&ip)
        {
            *v = state == "up";
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_pinged_at_once_and_a_missing_answer_is_down() {
        let t: Vec<Ipv4Addr> = vec!["10.100.1.1".parse().unwrap(), "10.100.2.1".parse().unwrap()];
        let s = ping_script(
            &InterfaceName::default(),
            &t,
            Duration::from_secs(7),
            &|_| None,
        );
        assert!(s.contains("-w 7 -q -I 'wg0'"));
        assert!(s.contains("six() { case \"$1\" in *) ;; esac; }"));
        let dual = ping_script(
            &InterfaceName::default(),
            &t,
            Duration::from_secs(7),
            &|a| {
                Some(std::net::Ipv6Addr::new(
                    0xfd10,
                    0x100,
                    0,
                    0,
                    0,
                    0,
                    0,
                    a.octets()[3].into(),
                ))
            },
        );
        assert!(dual.contains("10.100.2.1) echo fd10:100::1;;"), "{dual}");
        assert!(dual.contains("-I 'wg0' -6 \"$s\""), "{dual}");
        assert!(s.contains("for t in 10.100.1.1 10.100.2.1; do p \"$t\" & done\nwait"));
        let r = parse(&format!("{PROBE} up 10.100.1.1\nnoise\n"), &t);
        assert!(r[&t[0]]);
        assert!(!r[&t[1]]);
    }
}
