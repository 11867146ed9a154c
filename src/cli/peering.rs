//! `export` and `import`: peering cards for sites someone else runs.

use super::*;

pub(super) fn export(path: &Path, site: &str, connect: &ConnectArgs) -> Result<u8> {
    let p = planned(path, true)?;
    let topo = &p.topology;
    let s = topo.site(site).ok_or_else(|| {
        let names: Vec<&str> = topo.sites.iter().map(|s| s.name.as_str()).collect();
        Error::Usage(format!(
            "no site `{site}` in {} (its sites: {})",
            path.display(),
            names.join(", ")
        ))
    })?;
    if !s.managed {
        return Err(Error::Usage(format!(
            "site {site} is not managed by {}: its card comes from its owner",
            path.display()
        )));
    }
    let (key, whose, after) = if let (Some(_), Some(key)) = (&s.router_address, s.public_key) {
        // a hub router wgprov does not manage: its key is the inventory's
        (
            key,
            "its hub router's public key (from the inventory)".to_string(),
            ", and the router needs a peer for them (wgprov apply prints it)",
        )
    } else {
        let hub = s
            .next_hop
            .as_deref()
            .and_then(|n| topo.node(n))
            .ok_or_else(|| Error::Usage(format!("site {site} has no next-hop node")))?;
        let connector = std::sync::Arc::new(crate::fleet::SshConnector::new(connect.options()));
        let (key, warning) =
            runtime()?.block_on(crate::peering::hub_public_key(topo, hub, connector))?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        (key, format!("{}'s public key", hub.name), "")
    };
    let card = crate::peering::card_for(topo, site, key)?;
    print!("{}", card.to_yaml());
    eprintln!(
        "site {site}: card written with {whose}; it holds no secret. The other side runs: wgprov import -i THEIR-INVENTORY CARD{after}"
    );
    Ok(EXIT_OK)
}

pub(super) fn import(path: &Path, card_path: &Path, name: Option<&str>, check: bool) -> Result<u8> {
    use crate::peering::import::{self, Action};
    let (card, src) = crate::peering::Card::read(card_path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read inventory {}: {e}", path.display())))?;
    let lock = inventory::lock::Lock::read(&inventory::lock_path(path))?;
    let out = import::plan(path, &text, &lock, &card, &src, name)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let site = &out.site;
    if out.action == Action::Unchanged {
        println!(
            "{}: site {site} is already as the card says; nothing written",
            path.display()
        );
        return Ok(EXIT_OK);
    }
    let shown = path.display().to_string();
    print!(
        "{}",
        similar::TextDiff::from_lines(&text, &out.text)
            .unified_diff()
            .context_radius(2)
            .header(&shown, &shown)
    );
    if check {
        println!("--check: nothing written");
        return Ok(EXIT_OK);
    }
    import::write_atomic(path, &text, &out.text)?;
    let what = match out.action {
        Action::Added => format!(
            "added site {site} ({}) as managed: false",
            card.wireguard_cidr
        ),
        _ => format!("updated site {site}: {}", out.changes.join(", ")),
    };
    println!(
        "{}: {what}; `wgprov apply -i {}` gives every next-hop its peer",
        path.display(),
        path.display()
    );
    Ok(EXIT_OK)
}
