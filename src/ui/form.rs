//! Forms that change something: [`Posted`] checks, before any handler runs, that the request
//! comes from keel's own pages (a same-origin `Origin`, or `Sec-Fetch-Site: same-origin`) and
//! carries the viewer's CSRF token. SameSite=Strict already keeps the cookie off cross-site
//! requests; the token is the second lock, for browsers or proxies that do not honour it.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{Failure, UiState, Viewer};

/// Refuses a request a browser sent from another site. A request without `Origin` and
/// `Sec-Fetch-Site` is not from a browser (browsers send one on every POST) and passes; the
/// CSRF token still guards it.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Failure> {
    let refuse = || {
        Failure::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "this form was not sent from keel's own pages; reload the page and try again",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(refuse());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin = origin.to_str().ok();
        let ok = match (origin, host) {
            (Some(o), Some(h)) => {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    == Some(h)
            }
            _ => false,
        };
        if !ok {
            return Err(refuse());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Token {
    #[serde(default)]
    csrf: String,
}

/// A form with no fields but its token.
#[derive(Deserialize)]
pub struct Nothing {}

/// A posted form of `T`, from the [`Viewer`] who may post it: same origin and the right CSRF
/// token (except for a caller with an `Authorization` header, which a browser does not add on
/// its own).
pub struct Posted<T> {
    pub viewer: Viewer,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<UiState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &UiState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        same_origin(&parts.headers).map_err(IntoResponse::into_response)?;
        let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let token: Token = serde_urlencoded::from_bytes(&bytes).map_err(|_| bad_form())?;
        let needs_token = viewer.session || viewer.caller.method == crate::auth::Method::Open;
        if needs_token && (viewer.csrf.is_empty() || !constant_eq(&token.csrf, &viewer.csrf)) {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "this form's CSRF token is missing or old; reload the page and try again",
            )
            .into_response());
        }
        let form: T = serde_urlencoded::from_bytes(&bytes).map_err(|_| bad_form())?;
        Ok(Posted { viewer, form })
    }
}

fn bad_form() -> Response {
    Failure::bad_request(
        "invalid_form",
        "the form's fields do not parse; reload the page",
    )
    .into_response()
}

/// Compares in time independent of where the strings differ.
fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_same_origin_posts_pass() {
        assert!(same_origin(&headers(&[("host", "k:8080"), ("origin", "http://k:8080")])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&headers(&[])).is_ok());
        for bad in [
            headers(&[("host", "k:8080"), ("origin", "http://evil:8080")]),
            headers(&[("host", "k:8080"), ("origin", "null")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            assert_eq!(same_origin(&bad).unwrap_err().code, "csrf_failed");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_eq("abc", "abc"));
        assert!(!constant_eq("abc", "abd"));
        assert!(!constant_eq("abc", "abcd"));
    }
}
