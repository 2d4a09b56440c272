//! Who a request is from and what it may do: principals, API keys, grants, and the audit log of
//! what operators did. The HTTP layer (`api::auth`) turns a request's credential into a
//! [`Caller`]; every route then asks the caller's [`Access`].
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
//! - Grants ([`Grant`]) are deny by default, and a matching deny beats every allow. A principal's
//!   [`Access`] is its roles' grants ([`role_grants`]) and its custom grants together.
//! - Every operator action and principal change writes one [`audit`] row in the same transaction
//!   as the change; rows are append-only and hash-chained.
//!
//! - A bearer token that [`looks_like_jwt`] is for [`Oidc::verify`]: a JWT from the issuer
//!   `auth.oidc.issuer`, checked against its published keys, refused with
//!   [`Error::TokenExpired`] or [`Error::TokenInvalid`] (see [`oidc`] for the rules). Keys and
//!   tokens work side by side.
//!
//! Layout: `key` is the key format, `secret` the server secret and the digest, `principal` the
//! principal and its names, `cache` the verified keys, `keys` the store and authentication,
//! `grant` the grant words and roles, `access` the decisions, `caller` a request's identity,
//! `audit` the log, `oidc` the bearer tokens (with `oidc::jwks`, the issuer's keys).

/// Defines a closed set of names stored as text: the enum, `as_str`, `parse` and `Display`.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident, $error:ident, $what:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $error(pub String);

        impl fmt::Display for $error {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let names: &[&str] = &[$($text),+];
                write!(f, "unknown {} '{}': use one of {}", $what, self.0, names.join(", "))
            }
        }

        impl std::error::Error for $error {}

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Result<Self, $error> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    // Cut, so that an error message never carries a long input.
                    other => Err($error(other.chars().take(40).collect())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod access;
pub mod audit;
mod bootstrap;
mod cache;
mod caller;
mod error;
mod grant;
mod key;
mod keys;
pub mod oidc;
mod principal;
mod secret;

pub use access::Access;
pub use bootstrap::bootstrap;
pub use caller::{Caller, Method};
pub use error::{Error, Reason};
pub use grant::{role_grants, Action, Effect, Grant, InvalidGrant, Resource};
pub use key::{ApiKey, InvalidKey, KeyId};
pub use keys::{KeyInfo, Keys};
pub use oidc::{looks_like_jwt, Oidc, TokenIdentity};
pub use principal::{InvalidKind, InvalidName, InvalidRole, Kind, Principal, PrincipalName, Role};
pub use secret::{ServerSecret, MIN_SECRET_BYTES};
