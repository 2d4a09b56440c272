//! The route table: every route with the one decision that guards it ([`Need`]). The router is
//! built from this table ([`Table`]), so no route exists without a decision, and
//! `tests/api/authz.rs` walks the same table ([`super::table`]) with every kind of caller.

use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::RequestExt;
use axum::Router;

use serde_json::json;

use super::auth::{forbidden, unauthenticated, AuditLog, RequestId};
use crate::auth::audit::{self, Entry};
use crate::auth::{Action, Caller};
use crate::registry;

/// What a caller needs for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health probes.
    Anyone,
    /// Any valid credential (the registry's root, its schema types, its global settings).
    Authenticated,
    /// The action on every name (`*`): system-wide actions such as the outbox or principals.
    Action(Action),
    /// The action on the name in this path parameter (a subject, an aggregate type, a group).
    Path(Action, &'static str),
    /// The action on this one name (a built-in projection's own routes).
    Named(Action, &'static str),
    /// The action on some name; the handler filters what it returns (the log, subject lists) or
    /// checks each name it touches (appends, schema ids) before any lookup.
    Some(Action),
}

/// One route as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub need: Need,
}

/// A router and its table, built together.
pub(super) struct Table<S> {
    router: Router<S>,
    routes: Vec<Route>,
}

impl<S: Clone + Send + Sync + 'static> Table<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// `method path` served by `handler`, guarded by `need`.
    pub fn at<H, T>(self, method: Method, path: &'static str, need: Need, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        self.route(method, path, need, on(filter, handler))
    }

    /// Like [`Table::at`], with a method router that serves exactly `method`.
    pub fn route(
        mut self,
        method: Method,
        path: &'static str,
        need: Need,
        handler: MethodRouter<S>,
    ) -> Self {
        let guard = Guard {
            need,
            registry: registry::api::owns(path),
        };
        let handler =
            handler.route_layer(middleware::from_fn_with_state(Arc::new(guard), authorize));
        self.router = self.router.route(path, handler);
        self.routes.push(Route { method, path, need });
        self
    }

    pub fn merge(mut self, other: Table<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.routes.extend(other.routes);
        self
    }

    pub fn into_parts(self) -> (Router<S>, Vec<Route>) {
        (self.router, self.routes)
    }
}

struct Guard {
    need: Need,
    registry: bool,
}

/// The per-route layer: checks the route's [`Need`] against the request's [`Caller`], which
/// [`super::auth::authenticate`] put there. Runs before the handler, so a refusal comes before
/// any lookup and reads the same whether or not the resource exists.
async fn authorize(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    if guard.need == Need::Anyone {
        return next.run(req).await;
    }
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return unauthenticated(guard.registry);
    };
    let allowed = match guard.need {
        Need::Anyone | Need::Authenticated => true,
        Need::Action(action) => caller.access.allows(action, "*"),
        Need::Some(action) => caller.access.allows_some(action),
        Need::Named(action, name) => caller.access.allows(action, name),
        Need::Path(action, param) => match req.extract_parts::<RawPathParams>().await {
            Ok(params) => params
                .iter()
                .find(|(name, _)| *name == param)
                .is_some_and(|(_, value)| caller.access.allows(action, value)),
            // A path that does not decode (invalid UTF-8) names nothing: the handler's own
            // extractor refuses it with 4xx `invalid_path` before it looks anything up.
            Err(_) => true,
        },
    };
    if allowed {
        return next.run(req).await;
    }
    let action = match guard.need {
        Need::Action(a) | Need::Some(a) | Need::Path(a, _) | Need::Named(a, _) => a,
        Need::Anyone | Need::Authenticated => unreachable!("always allowed above"),
    };
    if action.is_operator() {
        if let Some(AuditLog(pool)) = req.extensions().get::<AuditLog>() {
            let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
            let target = json!({"method": req.method().as_str(), "path": req.uri().path()});
            let entry = Entry::new(&caller, action.as_str(), target).request(request_id, None);
            audit::record_denied(pool, entry).await;
        }
    }
    forbidden(guard.registry, action).into_response()
}
