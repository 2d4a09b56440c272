//! [`Caller`]: who a request is from, how it proved it, and what it may do.

use std::sync::Arc;

use serde::Serialize;

use super::access::Access;
use super::key::KeyId;
use super::oidc::TokenIdentity;
use super::principal::Principal;

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    ApiKey {
        key_id: KeyId,
    },
    /// An OIDC bearer token from the configured issuer.
    Token,
    /// A TLS client certificate.
    Certificate,
    /// `auth.mode = "none"`: nobody authenticated.
    Open,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ApiKey { .. } => "api_key",
            Self::Token => "token",
            Self::Certificate => "certificate",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal's name; `oidc:<sub>` for a token, `cert:<subject>` for a certificate,
    /// `anonymous` when authentication is off. This is what the audit log records.
    pub name: String,
    pub method: Method,
    pub access: Arc<Access>,
}

impl Caller {
    /// A caller authenticated with one of `principal`'s keys.
    pub fn with_key(principal: &Principal, key_id: KeyId) -> Self {
        Self {
            name: principal.name.to_string(),
            method: Method::ApiKey { key_id },
            access: Arc::new(Access::new(&principal.roles, &principal.grants)),
        }
    }

    /// A caller with a verified OIDC token: the token's roles; custom grants belong to stored
    /// principals only.
    pub fn with_token(identity: &TokenIdentity) -> Self {
        Self {
            name: format!("oidc:{}", identity.subject),
            method: Method::Token,
            access: Arc::new(Access::new(&identity.roles, &[])),
        }
    }

    /// Anyone, when `auth.mode = "none"`: allowed everything, recorded as `anonymous`.
    pub fn open() -> Self {
        Self {
            name: "anonymous".into(),
            method: Method::Open,
            access: Arc::new(Access::everything()),
        }
    }
}
