//! What the store needs to connect, and how its URL is shown in logs.

use std::fmt;

/// What the store needs to connect. Its `Debug` hides the URL's password.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// A PostgreSQL URL. keel creates the database if it is missing.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

/// `url` with its password (in the user info, or a `password=` query parameter) replaced by
/// `***`, for logs and `Debug`. Anything that does not parse as a URL is returned unchanged, as
/// it carries no recognisable password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_and_everything_else_is_kept() {
        for (url, shown) in [
            (
                "postgres://keel:s3cret@db:5432/keel",
                "postgres://keel:***@db:5432/keel",
            ),
            (
                "postgres://db/keel?user=keel&password=s3cret&sslmode=require",
                "postgres://db/keel?user=keel&password=***&sslmode=require",
            ),
            ("redis://:pw@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
            (
                "postgres://postgres@127.0.0.1:5432/keel",
                "postgres://postgres@127.0.0.1:5432/keel",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
