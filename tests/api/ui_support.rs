//! What the dashboard tests share: a browser-like client, logging in, reading a page, posting
//! a form with the page's CSRF token.

use reqwest::header;
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use crate::helpers::TestApp;

/// A browser-like client: no credential header, follows no redirects (so tests see them).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `key`; returns the session's `Cookie` header value, after checking the cookie's
/// attributes and the redirect to the overview.
pub async fn login(app: &TestApp, key: &str) -> String {
    let reply = browser()
        .post(app.url("/ui/login"))
        .form(&[("key", key), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    assert_eq!(reply.headers()[header::LOCATION], "/ui");
    let cookie = reply.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

pub async fn page(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, String) {
    let reply = browser()
        .get(app.url(path))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (reply.status(), reply.text().await.unwrap())
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("data-csrf=\"")
        .expect("the page carries a csrf token")
        + 11;
    html[at..at + 64].to_owned()
}

/// Posts `fields` and the session's CSRF token (read from the overview) to `path`; returns the
/// status, the `Location` if any, and the body.
pub async fn post(
    app: &TestApp,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, Option<String>, String) {
    let (_, html) = page(app, cookie, "/ui").await;
    let csrf = csrf_of(&html);
    let mut form: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
    form.extend_from_slice(fields);
    let reply = browser()
        .post(app.url(path))
        .header(header::COOKIE, cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    let location = reply
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    (reply.status(), location, reply.text().await.unwrap())
}
