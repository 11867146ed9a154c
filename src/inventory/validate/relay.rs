//! Which sites can reach each other. Two sites without an endpoint (behind carrier-grade NAT, no
//! port-forward possible) cannot peer directly: they need a relay, a managed site with an
//! endpoint whose next-hop forwards between them (`network.relay`, or a site's own `relay:`,
//! which wins). Every relay named must be such a site.

use super::{Diags, State};
use crate::inventory::model::*;

/// Checks every relay named, then every pair of sites without an endpoint.
pub(super) fn check(d: &mut Diags, st: &State) {
    let refs = st.network_relay.iter().map(|(r, l)| (None, r, *l)).chain(
        st.relay_refs
            .iter()
            .map(|(s, r, l)| (Some(s.as_str()), r, *l)),
    );
    for (site, relay, l) in refs {
        let field = match site {
            None => "network.relay".to_string(),
            Some(s) => format!("sites.{s}.relay"),
        };
        if let Some(why) = unusable(&st.sites, relay) {
            d.error(l, field, why);
            continue;
        }
        if let Some(s) = site.and_then(|s| st.sites.iter().find(|x| x.name == s))
            && s.endpoint.is_some()
        {
            d.warn(
                l,
                field,
                format!(
                    "site {} has an endpoint: every site reaches it directly, so its relay is never used",
                    s.name
                ),
            );
        }
    }
    pairs(d, &st.sites);
}

/// Why `relay` cannot relay, if it cannot.
fn unusable(sites: &[Site], relay: &str) -> Option<String> {
    match sites.iter().find(|s| s.name == relay) {
        None => Some(format!(
            "`{relay}` is not a site of the inventory: a relay is a managed site with an endpoint"
        )),
        Some(s) if !s.managed => Some(format!(
            "site {relay} is someone else's (managed: false): wgprov cannot make its hub forward between sites; name a managed site with an endpoint"
        )),
        Some(s) if s.absent => Some(format!(
            "site {relay} is being taken out (state: absent): name another relay first (one apply), then remove it"
        )),
        Some(s) if s.endpoint.is_none() => Some(format!(
            "site {relay} has no endpoint: the sites it relays for must reach it, so it needs an endpoint and a UDP port-forward (a small VPS with a public address does)"
        )),
        _ => None,
    }
}

/// Every pair of sites without an endpoint needs a relay they agree on; one error per site,
/// at the first earlier site it cannot reach.
fn pairs(d: &mut Diags, sites: &[Site]) {
    let without: Vec<&Site> = sites
        .iter()
        .filter(|s| s.endpoint.is_none() && !s.absent)
        .collect();
    for (i, s) in without.iter().enumerate() {
        if let Some(why) = without[..i].iter().find_map(|f| pair_problem(f, s)) {
            d.error(s.loc, format!("sites.{}.endpoint", s.name), why);
        }
    }
}

/// Why `f` and `s` (neither with an endpoint) cannot reach each other, if they cannot.
fn pair_problem(f: &Site, s: &Site) -> Option<String> {
    let base = format!(
        "neither site {} nor site {} (line {}) has an endpoint, so they cannot peer directly",
        s.name, f.name, f.loc.line
    );
    if let Some(u) = [s, f].into_iter().find(|x| !x.managed) {
        return Some(format!(
            "{base}, and site {} is someone else's: a relay carries only managed sites (wgprov configures both ends); give one of them an endpoint and a UDP port-forward",
            u.name
        ));
    }
    match (&s.relay, &f.relay) {
        (None, None) => Some(format!(
            "{base}: give one of them an endpoint and a UDP port-forward, or route them through a relay, a managed site with an endpoint (e.g. a small VPS): `network.relay: SITE`, or a site's own `relay: SITE`"
        )),
        (Some(a), Some(b)) if a != b => Some(format!(
            "{base}, and they name different relays ({a} for {}, {b} for {}): two sites reach each other through one relay, so give them the same one",
            s.name, f.name
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    /// A VPS with an endpoint and two sites behind CGNAT (lines: `relay` 4, vps 6, north 10,
    /// south 13).
    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  cluster_cidrs: [10.244.0.0/16]\n  relay: vps\nsites:\n  vps:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      v1: {address: 192.168.5.10}\n  north:\n    nodes:\n      n1: {address: 192.168.1.10}\n  south:\n    nodes:\n      s1: {address: 192.168.2.10}\n";

    /// (line, field, message, is_error) of every diagnostic.
    fn diags(text: &str) -> Vec<(u32, String, String, bool)> {
        let d = match load_str(Path::new("inv.yaml"), text) {
            Ok(l) => l.warnings,
            Err(Error::Invalid(d)) => d,
            Err(e) => panic!("{e}"),
        };
        d.into_iter()
            .filter(|x| x.field.ends_with("relay") || x.field.ends_with("endpoint"))
            .map(|x| (x.line, x.field.clone(), x.message.clone(), x.is_error()))
            .collect()
    }

    fn has(d: &[(u32, String, String, bool)], line: u32, field: &str, what: &str) -> bool {
        d.iter()
            .any(|(l, f, m, e)| *e && *l == line && f == field && m.contains(what))
    }

    #[test]
    fn two_sites_without_endpoint_are_fine_with_a_relay() {
        let l = load_str(Path::new("inv.yaml"), INV).unwrap();
        assert_eq!(l.inventory.network.relay.as_deref(), Some("vps"));
        assert!(
            l.inventory
                .sites
                .iter()
                .all(|s| s.relay.as_deref() == Some("vps"))
        );
        assert!(diags(INV).is_empty(), "{:?}", diags(INV));
    }

    #[test]
    fn without_a_relay_the_error_names_both_sites_and_the_hint() {
        let d = diags(&INV.replace("  relay: vps\n", ""));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            has(
                &d,
                12,
                "sites.south.endpoint",
                "neither site south nor site north (line 9)"
            ),
            "{d:?}"
        );
        assert!(
            d[0].2.contains("network.relay: SITE") && d[0].2.contains("`relay: SITE`"),
            "{d:?}"
        );
    }

    #[test]
    fn the_relay_must_be_a_managed_site_with_an_endpoint() {
        let d = diags(&INV.replace("  relay: vps\n", "  relay: nowhere\n"));
        assert!(
            has(&d, 4, "network.relay", "`nowhere` is not a site"),
            "{d:?}"
        );
        let d = diags(&INV.replace("    endpoint: 203.0.113.10:51820\n", ""));
        assert!(
            has(&d, 4, "network.relay", "site vps has no endpoint"),
            "{d:?}"
        );
        let d = diags(&INV.replace(
            "    endpoint: 203.0.113.10:51820\n    nodes:\n      v1: {address: 192.168.5.10}\n",
            "    managed: false\n    endpoint: 203.0.113.10:51820\n    wireguard_cidr: 10.100.9.0/24\n    public_key: 5Jm2EIfl9pBOTYnAUOO7Fr6RUMAhdY9i6ZsqzGMK4Xc=\n",
        ));
        assert!(has(&d, 4, "network.relay", "someone else's"), "{d:?}");
    }

    #[test]
    fn a_relay_being_taken_out_is_refused_and_an_absent_site_needs_none() {
        let d = diags(&INV.replace("  vps:\n", "  vps:\n    state: absent\n"));
        assert!(has(&d, 4, "network.relay", "being taken out"), "{d:?}");
        // south taken out: north is the only site without an endpoint left
        let y = INV
            .replace("  relay: vps\n", "")
            .replace("  south:\n", "  south:\n    state: absent\n");
        assert!(!diags(&y).iter().any(|x| x.3), "{:?}", diags(&y));
    }

    #[test]
    fn a_site_s_own_relay_is_checked_where_it_is_written() {
        let y = INV
            .replace("  relay: vps\n", "")
            .replace("  north:\n", "  north:\n    relay: south\n");
        let d = diags(&y);
        assert!(
            has(&d, 10, "sites.north.relay", "site south has no endpoint"),
            "{d:?}"
        );
        // a site with an endpoint that names a relay is told it is never used (a warning)
        let d = diags(&INV.replace("  vps:\n", "  vps:\n    relay: vps\n"));
        assert!(
            d.iter().any(|(l, f, m, e)| !e
                && *l == 7
                && f == "sites.vps.relay"
                && m.contains("never used")),
            "{d:?}"
        );
    }

    #[test]
    fn two_sites_naming_different_relays_cannot_reach_each_other() {
        let y = INV
            .replace("  relay: vps\n", "")
            .replace("  vps:\n", "  office:\n    endpoint: 198.51.100.20:51820\n    nodes:\n      o1: {address: 192.168.6.10}\n  vps:\n")
            .replace("  north:\n", "  north:\n    relay: vps\n")
            .replace("  south:\n", "  south:\n    relay: office\n");
        let d = diags(&y);
        assert!(
            has(
                &d,
                17,
                "sites.south.endpoint",
                "different relays (office for south, vps for north)"
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_relay_carries_only_managed_sites() {
        let y = INV.replace(
            "  south:\n    nodes:\n      s1: {address: 192.168.2.10}\n",
            "  south:\n    managed: false\n    wireguard_cidr: 10.100.9.0/24\n    public_key: 5Jm2EIfl9pBOTYnAUOO7Fr6RUMAhdY9i6ZsqzGMK4Xc=\n",
        );
        let d = diags(&y);
        assert!(
            has(
                &d,
                13,
                "sites.south.endpoint",
                "site south is someone else's"
            ),
            "{d:?}"
        );
    }
}
