//! The shapes of the inventory's text values as regular expressions, for the JSON Schema
//! (`wgprov schema`), so that an editor flags what validation refuses. One constant per shape;
//! the unit tests hold each against the function validation uses for the same value.

/// 0-255.
macro_rules! octet {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    };
}
/// An IPv4 address.
macro_rules! ipv4 {
    () => {
        concat!(octet!(), "(\\.", octet!(), "){3}")
    };
}
/// A DNS label: letters, digits, hyphens inside, at most 63.
macro_rules! label {
    () => {
        "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    };
}
/// A DNS name (an IPv4 literal is one too).
macro_rules! dns {
    () => {
        concat!(label!(), "(\\.", label!(), ")*\\.?")
    };
}
/// An IPv6 address, loosely: hex digits, colons (and a dotted tail).
macro_rules! ipv6 {
    () => {
        "[0-9A-Fa-f]*:[0-9A-Fa-f:.]*"
    };
}
/// 1-65535.
macro_rules! port {
    () => {
        "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
    };
}

/// An IPv4 address (`wireguard_ip`).
pub const IPV4: &str = concat!("^", ipv4!(), "$");
/// An IPv4 CIDR (`wireguard_cidr`): prefix 0-32.
pub const IPV4_CIDR: &str = concat!("^", ipv4!(), "/(3[0-2]|[12]?[0-9])$");
/// An IPv4 or IPv6 CIDR (`lan_cidrs`, `cluster_cidrs`).
pub const CIDR: &str = concat!(
    "^(",
    ipv4!(),
    "/(3[0-2]|[12]?[0-9])|",
    ipv6!(),
    "/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
);
/// An IPv6 CIDR (`wireguard_cidr6`).
pub const IPV6_CIDR: &str = concat!("^", ipv6!(), "/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$");
/// An IP address or a DNS name (`address`, `ssh.host`, `router_address`).
pub const HOST: &str = concat!("^(", dns!(), "|", ipv6!(), ")$");
/// `host:port` or `[ipv6]:port` (`endpoint`).
pub const ENDPOINT: &str = concat!("^(", dns!(), "|\\[", ipv6!(), "\\]):", port!(), "$");
/// A WireGuard key: base64 of 32 bytes.
pub const KEY: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";
/// A site or node name (also `next_hop`, `proxy_jump`): a lowercase DNS label.
pub const SAFE_NAME: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A login name (`ssh.user`).
pub const USER: &str = "^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$";
/// A network interface (`network.interface`, `wan_interface`).
pub const INTERFACE: &str = "^[A-Za-z0-9_=+.][A-Za-z0-9_=+.-]{0,14}$";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::validate::{is_host, is_safe_name, is_safe_user};
    use crate::inventory::{Endpoint, is_dns_name};

    fn matches(pattern: &str, s: &str) -> bool {
        let schema = serde_json::json!({ "type": "string", "pattern": pattern });
        jsonschema::draft7::new(&schema)
            .unwrap()
            .is_valid(&serde_json::json!(s))
    }

    /// Each pattern says yes exactly where validation's function does, on these samples.
    fn agree(pattern: &str, check: impl Fn(&str) -> bool, samples: &[&str]) {
        for s in samples {
            assert_eq!(matches(pattern, s), check(s), "{pattern} on {s:?}");
        }
    }

    const WORDS: &[&str] = &[
        "node1",
        "a",
        "web-1",
        "-oProxyCommand=id",
        "a;id",
        "$(id)",
        "`id`",
        "a b",
        "a\nb",
        "",
        "Node1",
        "x-",
        "10.0.0.1",
        "host.example.net",
        "host.example.net.",
        "a_b",
        "2001:db8::1",
    ];

    #[test]
    fn names_users_and_hosts_agree_with_validation() {
        agree(SAFE_NAME, is_safe_name, WORDS);
        agree(USER, is_safe_user, WORDS);
        agree(HOST, is_host, WORDS);
        agree(
            HOST,
            |s| is_dns_name(s) || s.parse::<std::net::IpAddr>().is_ok(),
            WORDS,
        );
    }

    #[test]
    fn addresses_and_networks_agree_with_validation() {
        let nets = [
            "10.100.0.0/16",
            "10.100.0.0/33",
            "garbage",
            "10.0.0.0/8",
            "300.1.1.0/24",
            "0.0.0.0/0",
            "10.100.0.0",
            "fd00::/64",
            "fd00::/129",
        ];
        agree(IPV4_CIDR, |s| s.parse::<ipnet::Ipv4Net>().is_ok(), &nets);
        agree(CIDR, |s| s.parse::<ipnet::IpNet>().is_ok(), &nets);
        agree(
            IPV4,
            |s| s.parse::<std::net::Ipv4Addr>().is_ok(),
            &["10.1.2.3", "10.1.2.256", "10.1.2", "a", "10.1.2.3/32"],
        );
        agree(
            ENDPOINT,
            |s| Endpoint::parse(s).is_ok(),
            &[
                "203.0.113.10:51820",
                "home.example.net:51820",
                "[2001:db8::1]:51820",
                "203.0.113.10:70000",
                "203.0.113.10:0",
                "203.0.113.10:65535",
                "203.0.113.10",
                "a;b:51820",
                "-x:51820",
            ],
        );
    }

    #[test]
    fn keys_agree_with_validation() {
        let good = crate::keys::Keypair::generate().public.to_base64();
        let samples = [
            good.as_str(),
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
            "AAAA",
            "not base64!",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8DgAAAA=",
        ];
        agree(
            KEY,
            |s| crate::keys::PublicKey::from_base64(s).is_ok(),
            &samples,
        );
    }

    #[test]
    fn interfaces_agree_with_validation() {
        let check = |s: &str| crate::shell::InterfaceName::new(s).is_ok();
        agree(
            INTERFACE,
            check,
            &[
                "wg0",
                "-wg0",
                "eth0.100",
                "wg 0",
                "averyveryverylongname",
                "wg;0",
            ],
        );
    }
}
