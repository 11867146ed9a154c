//! `preshared_key_file` of an unmanaged site: a file on the controller holding the preshared key
//! agreed with the site's operator. Refused when others may read it or when it is not a key;
//! its content is never shown, whatever is wrong with it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::network::Net;
use super::{Diags, loc};
use crate::inventory::schema::*;
use crate::keys::PresharedKey;

/// Where `written` points: as written when absolute, else beside the inventory.
fn resolve(inventory: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        inventory.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// The key of `preshared_key_file`, when it is written, allowed here and good.
pub(super) fn key_file(
    d: &mut Diags,
    net: &Net,
    sp: &str,
    site: &RawSite,
    managed: bool,
) -> Option<PresharedKey> {
    let f = site.preshared_key_file.as_ref()?;
    let field = format!("{sp}.preshared_key_file");
    if managed {
        d.error(
            loc(f),
            field,
            "only an unmanaged site has a preshared_key_file: wgprov makes and keeps the preshared keys of the links it runs",
        );
        return None;
    }
    if !net.preshared_keys {
        d.warn(
            loc(f),
            field,
            "network.preshared_keys is not true: the file is not used",
        );
        return None;
    }
    let path = resolve(d.file, &f.value);
    match read(&path) {
        Ok(k) => Some(k),
        Err(why) => {
            d.error(loc(f), field, format!("{}: {why}", path.display()));
            None
        }
    }
}

/// Why a preshared key file is refused (never quoting its content).
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("its mode is {0:04o}: a preshared key must be readable by its owner only (chmod 600)")]
    Mode(u32),
    #[error("its content is not a preshared key ({0}; `wg genpsk` makes one)")]
    NotAKey(crate::keys::KeyError),
}

/// The key in the file at `path`, or why not.
fn read(path: &Path) -> Result<PresharedKey, FileError> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::Mode(mode));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    PresharedKey::from_base64(text.trim()).map_err(FileError::NotAKey)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::error::Error;
    use crate::inventory::load_str;

    const INV: &str = "network:\n  wireguard_cidr: 10.100.0.0/16\n  preshared_keys: true\n  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    nodes:\n      n1: { address: 192.168.0.10 }\n  friend:\n    managed: false\n    wireguard_cidr: 10.100.9.0/24\n    endpoint: 198.51.100.9:51820\n    public_key: hWfUsZ3oPJMDCEnq+2HTrqDT3ryd8HBOsXVWCgjxflU=\n    preshared_key_file: FILE\n";

    fn load(dir: &Path, file: &str) -> Result<crate::inventory::Loaded, Error> {
        let inv = dir.join("inv.yaml");
        load_str(&inv, &INV.replace("FILE", file))
    }

    fn errors(r: Result<crate::inventory::Loaded, Error>) -> Vec<String> {
        match r {
            Err(Error::Invalid(d)) => d.iter().map(|d| d.to_string()).collect(),
            other => panic!("accepted: {:?}", other.map(|l| l.warnings)),
        }
    }

    #[test]
    fn a_good_file_beside_the_inventory_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = crate::keys::PresharedKey::generate();
        let p = dir.path().join("friend.psk");
        std::fs::write(&p, format!("{}\n", key.expose_base64().as_str())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let l = load(dir.path(), "friend.psk").unwrap();
        assert_eq!(l.inventory.site("friend").unwrap().preshared_key, Some(key));
        assert!(l.inventory.network.preshared_keys);
    }

    #[test]
    fn a_file_others_may_read_or_that_is_no_key_is_refused_without_its_content() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("friend.psk");
        let key = crate::keys::PresharedKey::generate();
        let key = key.expose_base64();
        std::fs::write(&p, key.as_str()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = errors(load(dir.path(), "friend.psk"));
        assert!(
            e.iter().any(|e| e.contains("inv.yaml:15")
                && e.contains("sites.friend.preshared_key_file")
                && e.contains("mode is 0644")),
            "{e:?}"
        );
        std::fs::write(&p, "SECRETbutshort").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = errors(load(dir.path(), "friend.psk"));
        assert!(e.iter().any(|e| e.contains("not a preshared key")), "{e:?}");
        assert!(!e.iter().any(|e| e.contains("SECRET")), "{e:?}");
        let e = errors(load(dir.path(), "missing.psk"));
        assert!(e.iter().any(|e| e.contains("cannot read it")), "{e:?}");
    }

    #[test]
    fn a_managed_site_has_no_preshared_key_file() {
        let y = "network:\n  wireguard_cidr: 10.100.0.0/16\nsites:\n  home:\n    endpoint: 203.0.113.10:51820\n    preshared_key_file: x.psk\n    nodes:\n      n1: { address: 192.168.0.10 }\n";
        let e = errors(load_str(Path::new("inv.yaml"), y));
        assert!(
            e.iter()
                .any(|e| e.contains("sites.home.preshared_key_file") && e.contains("unmanaged")),
            "{e:?}"
        );
    }

    #[test]
    fn preshared_keys_is_a_boolean() {
        let y = INV
            .replace("    preshared_key_file: FILE\n", "")
            .replace("preshared_keys: true", "preshared_keys: maybe");
        let e = errors(load_str(Path::new("inv.yaml"), &y));
        assert!(e.iter().any(|e| e.contains("inv.yaml:3")), "{e:?}");
    }
}
