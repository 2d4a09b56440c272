//! Dashboard sessions: `/ui/login` takes an API key or an OIDC token, checks it as the API
//! does, and sets the `keel_session` cookie (HttpOnly, SameSite=Strict, `Path=/ui`, `Secure`
//! over TLS). The cookie holds a random id; the `ui_sessions` row holds its SHA-256, the
//! principal, how it logged in, and the session's CSRF token.
//!
//! Each request with the cookie becomes that principal's [`Caller`] again ([`resolve`]): a key
//! session asks the key store whether the key is still valid (cached as API keys are), so
//! revoking a key or disabling its principal ends its sessions; a token session keeps the
//! token's roles until the token's expiry. A failed login answers 401, which the peer limiter
//! counts like any refused credential.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::form::{same_origin, Nothing, Posted};
use super::page::SessionInfo;
use super::{assets, Failure, UiState};
use crate::api::LoginRefused;
use crate::auth::{Access, Caller, KeyId, Method, Role};

pub const COOKIE: &str = "keel_session";

/// 32 random bytes as hex.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The session id in the request's cookies.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(sqlx::FromRow)]
struct Row {
    principal: String,
    method: String,
    key_id: Option<String>,
    roles: Vec<String>,
    csrf: String,
}

/// The layer: a request with a valid session cookie (and no `Authorization` header, which wins)
/// gets the session's [`Caller`] and [`SessionInfo`].
pub async fn resolve(State(state): State<UiState>, mut req: Request, next: Next) -> Response {
    let has_caller = req.extensions().get::<Caller>().is_some();
    if let (false, Some(id)) = (has_caller, cookie(req.headers())) {
        match session_caller(&state, &id).await {
            Ok(Some((caller, csrf))) => {
                req.extensions_mut().insert(caller);
                req.extensions_mut().insert(SessionInfo { csrf });
            }
            Ok(None) => {}
            Err(failure) => return failure.into_response(),
        }
    }
    next.run(req).await
}

async fn session_caller(state: &UiState, id: &str) -> Result<Option<(Caller, String)>, Failure> {
    let pool = state.app.store.pool();
    let row: Option<Row> = sqlx::query_as(
        "SELECT principal, method, key_id, roles, csrf FROM ui_sessions
          WHERE id_hash = $1 AND expires_at > now()",
    )
    .bind(digest(id))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let caller = match row.method.as_str() {
        "api_key" => {
            let key = row.key_id.as_deref().and_then(|k| KeyId::parse(k).ok());
            match key {
                Some(key) => match state.app.authn.key_session(&key).await {
                    Ok(caller) => Some(caller),
                    Err(LoginRefused::Invalid) => None,
                    Err(LoginRefused::Unavailable) => {
                        return Err(Failure::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "keel cannot check your session now; reload in a moment",
                        ))
                    }
                },
                None => None,
            }
        }
        "token" => {
            let roles: Vec<Role> = row
                .roles
                .iter()
                .filter_map(|r| Role::parse(r).ok())
                .collect();
            Some(Caller {
                name: row.principal.clone(),
                method: Method::Token,
                access: Arc::new(Access::new(&roles, &[])),
            })
        }
        // A session from when authentication was off is not valid once it is on.
        _ => state.app.authn.is_open().then(Caller::open),
    };
    match caller {
        Some(c) => Ok(Some((c, row.csrf))),
        None => {
            end(state, id).await;
            Ok(None)
        }
    }
}

async fn end(state: &UiState, id: &str) {
    let deleted = sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1 OR expires_at < now()")
        .bind(digest(id))
        .execute(state.app.store.pool())
        .await;
    if let Err(e) = deleted {
        tracing::warn!(error = %e, "cannot delete a dashboard session");
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    css: String,
    icon: String,
    next: String,
    error: Option<String>,
    open: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only an address inside the dashboard: never another site (`//host`, `/\host`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.contains("//") && !n.contains('\\') => n.to_owned(),
        _ => "/ui".to_owned(),
    }
}

fn login_form(next: String, error: Option<String>, open: bool) -> Result<String, Failure> {
    Ok(LoginPage {
        css: assets::url("keel.css"),
        icon: assets::url("keel.svg"),
        next,
        error,
        open,
    }
    .render()?)
}

/// `GET /ui/login`
pub async fn login_page(
    State(state): State<UiState>,
    Query(query): Query<LoginQuery>,
) -> Result<Html<String>, Failure> {
    let next = safe_next(query.next.as_deref());
    Ok(Html(login_form(next, None, state.app.authn.is_open())?))
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
    next: Option<String>,
}

/// `POST /ui/login`: 303 to where the viewer was going, with the cookie; 401 with the form
/// again when the credential is refused.
pub async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Failure> {
    same_origin(&headers)?;
    let next = safe_next(form.next.as_deref());
    let open = state.app.authn.is_open();
    let login = match state.app.authn.login(&form.key).await {
        Ok(login) => login,
        Err(LoginRefused::Invalid) => {
            let page = login_form(
                next,
                Some("keel does not accept that key or token: check it, or ask an admin for a new one (keel principal key create)".into()),
                open,
            )?;
            return Ok((StatusCode::UNAUTHORIZED, Html(page)).into_response());
        }
        Err(LoginRefused::Unavailable) => {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "keel cannot check credentials now; try again in a moment",
            ))
        }
    };
    let id = random_token().map_err(|e| {
        tracing::error!(error = %e, "cannot open a dashboard session");
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot open a session now",
        )
    })?;
    let csrf = random_token().map_err(|_| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot open a session now",
        )
    })?;
    let mut expires = Utc::now() + state.session_ttl;
    let (method, key_id, roles) = match (&login.caller.method, &login.token) {
        (Method::ApiKey { key_id }, _) => ("api_key", Some(key_id.to_string()), vec![]),
        (Method::Token, Some(token)) => {
            expires = expires.min(token.expires_at);
            let roles = token.roles.iter().map(|r| r.as_str().to_owned()).collect();
            ("token", None, roles)
        }
        _ => ("open", None, vec![]),
    };
    sqlx::query(
        "INSERT INTO ui_sessions (id_hash, principal, method, key_id, roles, csrf, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(digest(&id))
    .bind(&login.caller.name)
    .bind(method)
    .bind(key_id)
    .bind(roles)
    .bind(&csrf)
    .bind(expires)
    .execute(state.app.store.pool())
    .await?;
    tracing::info!(principal = %login.caller.name, method, "dashboard session opened");
    let max_age = (expires - Utc::now()).num_seconds().max(0);
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("the cookie is ASCII"),
    );
    Ok(response)
}

/// `POST /ui/logout`: ends the session and clears the cookie.
pub async fn logout(
    State(state): State<UiState>,
    headers: HeaderMap,
    Posted {
        viewer,
        form: Nothing {},
    }: Posted<Nothing>,
) -> Result<Response, Failure> {
    tracing::info!(principal = %viewer.caller.name, "dashboard session closed");
    if let Some(id) = cookie(&headers) {
        end(&state, &id).await;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keel_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_inside_the_dashboard_are_followed_after_login() {
        assert_eq!(
            safe_next(Some("/ui/events?event_type=a")),
            "/ui/events?event_type=a"
        );
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/ui//evil",
            "/ui\\x",
            "/v1/events",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_must_look_like_one() {
        let mut h = HeaderMap::new();
        let id = "ab".repeat(32);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}; c=d")).unwrap(),
        );
        assert_eq!(cookie(&h), Some(id));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("keel_session=../../etc"),
        );
        assert_eq!(cookie(&h), None);
    }
}
