//! The server-side secret that API keys are stored under, and the one digest keel stores.
//!
//! The stored value is HMAC-SHA256, keyed with the server secret, over a version label, the key
//! id and the key's 32 secret bytes. Without the server secret, a copy of the `api_keys` table
//! does not let anyone test a guessed key; and since keys carry 256 random bits, a slow password
//! hash (argon2) would add nothing but a per-request CPU and memory cost an attacker could lever.
//! Verification recomputes the HMAC and compares it in constant time.

use std::fmt;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::key::ApiKey;
use crate::config::AuthConfig;

pub use crate::config::MIN_KEY_SECRET_BYTES as MIN_SECRET_BYTES;

/// Separates this use of the server secret from any later one.
const LABEL: &[u8] = b"keel api key v1\0";

/// The length of a stored digest.
pub(super) const DIGEST_BYTES: usize = 32;

/// The HMAC key. `Debug` shows only its length.
#[derive(Clone)]
pub struct ServerSecret(Vec<u8>);

impl ServerSecret {
    /// A secret of at least [`MIN_SECRET_BYTES`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> anyhow::Result<Self> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            bail!(
                "the api key secret has {} bytes; it needs at least {MIN_SECRET_BYTES}",
                bytes.len()
            );
        }
        Ok(Self(bytes))
    }

    /// The secret that `config` names: `auth.key_secret`, or the contents of
    /// `auth.key_secret_file` without surrounding whitespace. Exactly one must be set.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        match (&config.key_secret, &config.key_secret_file) {
            (Some(_), Some(_)) => {
                bail!("set auth.key_secret or auth.key_secret_file, not both")
            }
            (Some(inline), None) => Self::new(inline.expose().as_bytes())
                .context("auth.key_secret is too short"),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read auth.key_secret_file {}", path.display())
                })?;
                Self::new(text.trim().as_bytes()).with_context(|| {
                    format!("auth.key_secret_file {} is too short", path.display())
                })
            }
            (None, None) => bail!(
                "no api key secret: set auth.key_secret_file (KEEL_AUTH__KEY_SECRET_FILE) or auth.key_secret"
            ),
        }
    }

    fn mac(&self, key: &ApiKey) -> Hmac<Sha256> {
        // Every key length is valid for HMAC; `new_from_slice` only fails for fixed-size MACs.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(LABEL);
        mac.update(key.id().as_bytes());
        mac.update(key.secret());
        mac
    }

    /// What keel stores for `key`.
    pub(super) fn digest(&self, key: &ApiKey) -> [u8; DIGEST_BYTES] {
        self.mac(key).finalize().into_bytes().into()
    }

    /// Whether `stored` is `key`'s digest, compared in constant time.
    pub(super) fn verify(&self, key: &ApiKey, stored: &[u8]) -> bool {
        self.mac(key).verify_slice(stored).is_ok()
    }
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSecret(*** {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    fn secret(fill: u8) -> ServerSecret {
        ServerSecret::new(vec![fill; 32]).unwrap()
    }

    #[test]
    fn a_digest_verifies_under_its_own_server_secret_only() {
        let key = ApiKey::generate().unwrap();
        let stored = secret(1).digest(&key);
        assert!(secret(1).verify(&key, &stored));
        assert!(
            !secret(2).verify(&key, &stored),
            "another server's secret does not verify"
        );
        assert!(!secret(1).verify(&ApiKey::generate().unwrap(), &stored));
        assert!(
            !secret(1).verify(&key, &stored[..31]),
            "a prefix is no match"
        );
        assert!(!secret(1).verify(&key, &[]));
    }

    #[test]
    fn the_stored_bytes_are_neither_the_secret_nor_a_plain_hash_of_it() {
        let key = ApiKey::generate().unwrap();
        let stored = secret(7).digest(&key);
        let text = key.expose_secret();
        let (_, secret_hex) = text.rsplit_once('_').unwrap();
        assert_ne!(&stored[..], &key.secret()[..]);
        for plain in [
            &key.secret()[..],
            secret_hex.as_bytes(),
            text.as_bytes(),
            key.id().as_bytes(),
        ] {
            assert_ne!(&stored[..], &sha2::Sha256::digest(plain)[..]);
        }
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        let err = ServerSecret::new(vec![b'x'; 31]).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        let shown = format!(
            "{:?}",
            ServerSecret::new("correct horse battery staple 1234").unwrap()
        );
        assert!(!shown.contains("horse"), "{shown}");
    }
}
