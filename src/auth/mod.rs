//! Principals, API keys and OIDC bearer tokens: who a request is from. (Grants, audit and the
//! HTTP middleware that use this come later; no route checks a credential yet.)
//!
//! The contract:
//! - A principal (service, human or admin) has a unique name, built-in [`Role`]s and any number
//!   of keys `keel_<key id>_<secret>` ([`ApiKey`]: a 16-hex-character public id and 32 random
//!   bytes of secret, as 64 hex characters).
//! - A key's secret exists in plaintext only in the [`ApiKey`] that [`Keys::create_key`] returns,
//!   once. The database holds HMAC-SHA256 of it under the server secret ([`ServerSecret`],
//!   `auth.key_secret_file`), never the secret or a plain hash of it; verification compares in
//!   constant time.
//! - [`Keys::authenticate`] refuses malformed, unknown, wrong, revoked and expired keys and keys
//!   of disabled principals with one error, [`Error::Unauthenticated`], that reads the same
//!   whatever the cause; [`Error::reason`] tells the cause to metrics and logs.
//! - Verified keys are cached for `auth.key_cache_ttl_ms` (5 s by default). A revocation or a
//!   disabled principal takes effect at once through the process that made it and within that
//!   TTL through every other keel process. Expiry is exact: it is checked on every use.
//!
//! - A bearer token that [`looks_like_jwt`] is for [`Oidc::verify`]: a JWT from the issuer
//!   `auth.oidc.issuer`, checked against its published keys, refused with
//!   [`Error::TokenExpired`] or [`Error::TokenInvalid`] (see [`oidc`] for the rules). Keys and
//!   tokens work side by side.
//!
//! Layout: `key` is the key format, `secret` the server secret and the digest, `principal` the
//! principal and its names, `cache` the verified keys, `keys` the store and authentication,
//! `oidc` the bearer tokens (with `oidc::jwks`, the issuer's keys).

mod cache;
mod error;
mod key;
mod keys;
pub mod oidc;
mod principal;
mod secret;

pub use error::{Error, Reason};
pub use key::{ApiKey, InvalidKey, KeyId};
pub use keys::{KeyInfo, Keys};
pub use oidc::{looks_like_jwt, Oidc, TokenIdentity};
pub use principal::{InvalidKind, InvalidName, InvalidRole, Kind, Principal, PrincipalName, Role};
pub use secret::{ServerSecret, MIN_SECRET_BYTES};
