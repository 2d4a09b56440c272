//! The web dashboard at `/ui`, served by `keel serve` from the binary itself.
//!
//! * **Server-rendered.** Every page is an askama template (`templates/ui/`) rendered from the
//!   same library calls the API makes, so a page reads without JavaScript, every filter is in
//!   the URL, and escaping is the template engine's (HTML-escaped by default). Charts are SVG
//!   drawn here ([`chart`]), not by a chart library.
//! * **One small script, no third-party code.** `assets/ui/keel.js` (hand-written) swaps live
//!   fragments in from one Server-Sent-Events stream per tab ([`live`]), refreshes tables,
//!   shows relative times and asks for confirmations. Nothing is fetched from elsewhere; the
//!   Content-Security-Policy forbids it ([`headers`]).
//! * **The same code as the API.** Actions call the API's own functions with the page's
//!   [`crate::auth::Caller`], so grants, the audit log and the results are the API's; each
//!   action shows the `keel` command that does the same.
//! * **Sessions.** `/ui/login` takes an API key or an OIDC token and sets an HttpOnly,
//!   SameSite=Strict cookie ([`session`]); every form carries the session's CSRF token and
//!   every POST is checked for it and for a same-origin `Origin` ([`form`]). A request with an
//!   `Authorization` header acts as that credential, as on the API.
//! * **Bounded load.** Live numbers come from the pipeline monitor's readings
//!   ([`crate::health::History`]), taken once per second for all open tabs together while any
//!   is open; the live tail reads the log once per half second for all tabs. No page counts the
//!   store.

mod assets;
mod chart;
mod diff;
mod error;
mod form;
mod format;
mod headers;
mod live;
mod page;
mod pages;
mod session;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use error::Failure;
pub use page::Viewer;

use crate::api::AppState;
use crate::config::{Config, Payloads};

/// What every dashboard handler shares. Cheap to clone.
#[derive(Clone)]
pub struct UiState {
    pub app: AppState,
    pub payloads: Payloads,
    /// A session's length.
    pub session_ttl: chrono::Duration,
    /// Cookies get `Secure` when the API is served over TLS.
    pub secure_cookies: bool,
    /// The CSRF token of forms when authentication is off (there are no sessions then).
    pub open_csrf: Arc<str>,
    pub tail: live::Tail,
}

impl UiState {
    pub fn new(app: AppState, config: &Config) -> anyhow::Result<Self> {
        let tail = live::Tail::new(app.store.pool().clone());
        Ok(Self {
            app,
            payloads: config.ui.payloads,
            session_ttl: chrono::Duration::seconds(config.ui.session_ttl_s as i64),
            secure_cookies: config.api.tls.enabled(),
            open_csrf: session::random_token()?.into(),
            tail,
        })
    }
}

/// The dashboard's routes, to be served inside the API's layers (authentication, limits,
/// tracing): see [`crate::api::router_with`].
pub fn routes(state: UiState) -> Router {
    Router::new()
        .route("/ui", get(pages::overview::page))
        .route("/ui/", get(pages::overview::page))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/live", get(live::stream))
        .route("/ui/events", get(pages::events::list))
        .route("/ui/events/{event_id}", get(pages::events::detail))
        .route(
            "/ui/events/{event_id}/journey",
            get(pages::journey::fragment),
        )
        .route("/ui/relay", get(pages::relay::page))
        .route("/ui/relay/parked", post(pages::dead_letters::relay_action))
        .route("/ui/dead-letters", get(pages::dead_letters::page))
        .route(
            "/ui/dead-letters/{group}",
            post(pages::dead_letters::group_action),
        )
        .route("/ui/projections", get(pages::jobs::projections))
        .route("/ui/projections/{name}/rebuild", post(pages::jobs::rebuild))
        .route("/ui/jobs", get(pages::jobs::jobs))
        .route("/ui/jobs/republish", post(pages::jobs::republish))
        .route("/ui/jobs/{id}/cancel", post(pages::jobs::cancel))
        .route("/ui/jobs/{id}/resume", post(pages::jobs::resume))
        .route("/ui/schemas", get(pages::schemas::list))
        .route("/ui/schemas/{subject}", get(pages::schemas::detail))
        .route("/ui/schemas/{subject}/test", post(pages::schemas::test))
        .route("/ui/audit", get(pages::audit::list))
        .route("/ui/audit.csv", get(pages::audit::csv))
        .route(
            "/ui/aggregates/{aggregate_type}/{aggregate_id}",
            get(pages::aggregate::page),
        )
        .route("/ui/groups", get(pages::groups::list))
        .route("/ui/groups/{group}", get(pages::groups::detail))
        .route("/ui/assets/{hash}/{file}", get(assets::serve))
        .route("/ui/{*rest}", get(error::not_found))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::resolve,
        ))
        .layer(axum::middleware::from_fn(headers::secure))
        .with_state(state)
}
