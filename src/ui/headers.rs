//! The security headers on every dashboard response: a strict Content-Security-Policy (scripts,
//! styles and connections from keel itself only, no inline script, no framing), no MIME
//! sniffing, no referrer leaving keel, and no caching of pages (which show data).

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The policy. `'self'` only: the dashboard's one script and one stylesheet are served by keel
/// under `/ui/assets/`; charts are inline SVG, which needs no `img-src`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

pub async fn secure(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
