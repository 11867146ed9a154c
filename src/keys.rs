//! WireGuard keys: x25519 from the OS random source, base64 as `wg` writes them, public keys
//! derived from private ones (so a node's existing key can be adopted). A [`PrivateKey`] never
//! prints itself: `Debug` shows `(redacted)` and there is no `Display`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// What is shown wherever a private key would be.
pub const REDACTED: &str = "(redacted)";

/// A WireGuard private key: its bytes are wiped from memory when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for PrivateKey {}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// A private key with its public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keypair {
    /// The secret half.
    pub private: PrivateKey,
    /// The public half.
    pub public: PublicKey,
}

/// Why a text is not a WireGuard key. The texts complete a sentence that names the key, e.g.
/// "public_key is not valid base64".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64.
    #[error("is not valid base64")]
    NotBase64,
    /// The text is base64 of the wrong number of bytes.
    #[error("decodes to {0} bytes, a WireGuard key is 32")]
    WrongLength(usize),
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::NotBase64)?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::WrongLength(b.len()))
}

impl PrivateKey {
    /// A fresh key from the OS random source, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut k = PrivateKey(StaticSecret::random().to_bytes());
        k.0[0] &= 248;
        k.0[31] &= 127;
        k.0[31] |= 64;
        k
    }
    /// Parses the base64 form found in a `PrivateKey =` line.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let mut bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map(PrivateKey)
            .map_err(|_| KeyError::WrongLength(bytes.len()));
        bytes.zeroize();
        key
    }
    /// The base64 form, for writing into a config file (wiped when dropped). Named so that
    /// every use stands out.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }
    /// The matching public key (what `wg pubkey` prints).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&StaticSecret::from(self.0)).to_bytes())
    }
    /// This key with its public key.
    pub fn into_keypair(self) -> Keypair {
        let public = self.public_key();
        Keypair {
            private: self,
            public,
        }
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PublicKey {
    /// Parses base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(PublicKey)
    }
    /// The base64 form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard preshared key (`PresharedKey =`): 32 random bytes shared by the two ends of a
/// link. Like a private key it never prints itself and is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for PresharedKey {}

impl PresharedKey {
    /// A fresh key from the OS random source (what `wg genpsk` does).
    pub fn generate() -> Self {
        // a static secret is 32 bytes from the OS random source, unclamped until it is used
        PresharedKey(StaticSecret::random().to_bytes())
    }
    /// Parses the base64 form found in a `PresharedKey =` line.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let mut bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map(PresharedKey)
            .map_err(|_| KeyError::WrongLength(bytes.len()));
        bytes.zeroize();
        key
    }
    /// The base64 form, for writing into a config file (wiped when dropped).
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Keypair {
    /// A fresh key pair.
    pub fn generate() -> Self {
        PrivateKey::generate().into_keypair()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_zeroized_on_drop() {
        // the key type wipes itself, and the base64 text handed out for templates does too
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let k = PrivateKey::generate();
        wiped_on_drop(&k);
        let text: Zeroizing<String> = k.expose_base64();
        assert_eq!(PrivateKey::from_base64(&text).unwrap(), k);
        let mut bytes = k.clone();
        bytes.0.zeroize();
        assert_eq!(bytes.0, [0u8; 32], "what Drop does");
    }

    #[test]
    fn rfc7748_vector_public_key() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private = PrivateKey(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            private.public_key().0,
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let k = PrivateKey::generate();
        assert_eq!(k.0[0] & 7, 0);
        assert_eq!(k.0[31] & 0xc0, 0x40);
        let again = PrivateKey::from_base64(&k.expose_base64()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_ne!(PrivateKey::generate(), k);
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let kp = Keypair::generate();
        let shown = format!("{kp:?} {:?}", kp.private);
        assert!(!shown.contains(kp.private.expose_base64().as_str()));
        assert!(shown.contains(REDACTED));
        assert!(shown.contains(&kp.public.to_base64()));
    }

    #[test]
    fn preshared_keys_are_random_round_trip_and_never_shown() {
        let k = PresharedKey::generate();
        assert_ne!(k, PresharedKey::generate());
        let text = k.expose_base64();
        assert_eq!(PresharedKey::from_base64(&text).unwrap(), k);
        assert_eq!(format!("{k:?}"), REDACTED);
        assert!(PresharedKey::from_base64("AAAA").is_err());
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(
            PublicKey::from_base64("not base64!")
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
        assert!(
            PublicKey::from_base64("AAAA")
                .unwrap_err()
                .to_string()
                .contains("3 bytes")
        );
    }
}
