//! What every page knows about who is looking ([`Viewer`]) and the frame around its content
//! ([`Layout`]): the navigation, the principal, the CSRF token its forms carry.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};

use super::{assets, UiState};
use crate::auth::{Action, Caller};

/// The session a request came with: its CSRF token. Put in the request by
/// [`super::session::resolve`].
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub csrf: String,
}

/// Who is looking at a page. A request without a credential is sent to `/ui/login`.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    /// The token this viewer's forms carry; empty for a caller with an `Authorization` header
    /// (its requests are not sent by a browser on its own, so they need none).
    pub csrf: String,
    /// Whether the caller came with a session cookie (and so may log out).
    pub session: bool,
}

impl Viewer {
    pub fn may(&self, action: Action, name: &str) -> bool {
        self.caller.access.allows(action, name)
    }

    pub fn may_some(&self, action: Action) -> bool {
        self.caller.access.allows_some(action)
    }

    /// The frame of a page titled `title` in navigation section `section`.
    pub fn layout(&self, title: impl Into<String>, section: &'static str) -> Layout {
        let nav = NAV
            .iter()
            .filter(|(_, _, _, allowed)| allowed(self))
            .map(|&(s, l, h, _)| (s, l, h))
            .collect();
        Layout {
            nav,
            title: title.into(),
            section,
            who: self.caller.name.clone(),
            csrf: self.csrf.clone(),
            session: self.session,
            css: assets::url("keel.css"),
            js: assets::url("keel.js"),
            icon: assets::url("keel.svg"),
        }
    }
}

impl FromRequestParts<UiState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &UiState) -> Result<Self, Response> {
        let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
            let here = parts
                .uri
                .path_and_query()
                .map_or("/ui", |p| p.as_str())
                .to_owned();
            let to = format!("/ui/login?next={}", super::format::url_encode(&here));
            return Err(Redirect::to(&to).into_response());
        };
        let (csrf, session) = match parts.extensions.get::<SessionInfo>() {
            Some(s) => (s.csrf.clone(), true),
            None if caller.method == crate::auth::Method::Open => {
                (state.open_csrf.to_string(), false)
            }
            None => (String::new(), false),
        };
        Ok(Viewer {
            caller,
            csrf,
            session,
        })
    }
}

/// The frame around a page's content.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The sections this viewer may read: (section, label, address).
    pub nav: Vec<(&'static str, &'static str, &'static str)>,
    pub title: String,
    /// Which navigation entry is this page's.
    pub section: &'static str,
    pub who: String,
    pub csrf: String,
    pub session: bool,
    pub css: String,
    pub js: String,
    pub icon: String,
}

/// Whether a viewer may read a section.
type Allowed = fn(&Viewer) -> bool;

/// The navigation: (section, label, address, who sees it). A section the viewer may not read
/// is left out (its page would answer 403).
const NAV: &[(&str, &str, &str, Allowed)] = &[
    ("overview", "Overview", "/ui", |_| true),
    ("events", "Events", "/ui/events", |v| {
        v.may_some(Action::EventRead)
    }),
    ("relay", "Relay", "/ui/relay", |v| {
        v.may(Action::OutboxRead, "*")
    }),
    ("groups", "Consumer groups", "/ui/groups", |v| {
        v.may_some(Action::DlqRead) || v.may_some(Action::ProjectionRead)
    }),
    ("dead-letters", "Dead letters", "/ui/dead-letters", |v| {
        v.may_some(Action::DlqRead) || v.may(Action::OutboxRead, "*")
    }),
    ("projections", "Projections", "/ui/projections", |v| {
        v.may_some(Action::ProjectionRead)
    }),
    ("jobs", "Jobs", "/ui/jobs", |v| v.may_some(Action::JobRead)),
    ("schemas", "Schemas", "/ui/schemas", |v| {
        v.may_some(Action::RegistryRead)
    }),
    ("audit", "Audit", "/ui/audit", |v| {
        v.may(Action::AuditRead, "*")
    }),
];
