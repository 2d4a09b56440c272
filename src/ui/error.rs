//! A page that could not be shown: the status and the API's machine-readable code (in the page
//! and in `data-code`), and what to do next. Never the internal text of a database error.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::assets;
use crate::api::ApiError;
use crate::auth::Action;

#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(action: Action) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your principal is not granted {action}; ask an admin for it (keel grant add)"),
        )
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::new(e.status, e.code, e.message)
    }
}

impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "a dashboard page cannot read the database");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database cannot be read now; reload in a moment",
        )
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "a dashboard page cannot be rendered");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the page cannot be rendered; see keel's log",
        )
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    failure: &'a Failure,
    css: String,
    icon: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            failure: &self,
            css: assets::url("keel.css"),
            icon: assets::url("keel.svg"),
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

/// Any other path under `/ui`.
pub async fn not_found() -> Failure {
    Failure::not_found(
        "page_not_found",
        "there is no such page in keel's dashboard",
    )
}
