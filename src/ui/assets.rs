//! The dashboard's static files, compiled into the binary and served under
//! `/ui/assets/<hash>/<file>`: the hash is of the file's content, so a new build's file has a
//! new address and every address can be cached for good.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    hash: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        (
            "keel.css",
            "text/css; charset=utf-8",
            include_str!("../../assets/ui/keel.css"),
        ),
        (
            "keel.svg",
            "image/svg+xml",
            include_str!("../../assets/ui/keel.svg"),
        ),
        (
            "keel.js",
            "text/javascript; charset=utf-8",
            include_str!("../../assets/ui/keel.js"),
        ),
    ]
    .into_iter()
    .map(|(name, content_type, body)| Asset {
        name,
        content_type,
        body,
        hash: hex(&Sha256::digest(body.as_bytes())[..8]),
    })
    .collect()
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address of asset `name` (`keel.css`, `keel.js`).
pub fn url(name: &str) -> String {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .expect("templates name only assets that exist");
    format!("/ui/assets/{}/{}", asset.hash, asset.name)
}

/// `GET /ui/assets/{hash}/{file}`: 404 for any other hash, so an old page never gets new code
/// under an old address.
pub async fn serve(Path((hash, file)): Path<(String, String)>) -> Response {
    match ASSETS.iter().find(|a| a.name == file && a.hash == hash) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_addresses_change_with_their_content() {
        let css = url("keel.css");
        let js = url("keel.js");
        assert!(css.starts_with("/ui/assets/") && css.ends_with("/keel.css"));
        assert_ne!(css.split('/').nth(3), js.split('/').nth(3));
        assert_eq!(css.split('/').nth(3).unwrap().len(), 16);
    }
}
