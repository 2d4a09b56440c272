//! `/ui/audit`: the audit log, newest first, keyset-paged by id (`before`), filtered by
//! principal and action, all in the URL. `/ui/audit.csv` is the same filter as CSV (at most
//! [`CSV_ROWS`] rows), quoted by RFC 4180, with cells a spreadsheet would run as a formula
//! neutralised by a leading `'`. Both read one index range of `audit_log`, never the whole.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::{audit, Action};

/// Rows per page.
const PAGE: i64 = 50;
/// Most rows one CSV export holds.
pub const CSV_ROWS: i64 = 10_000;

/// The page's filters, as typed (parsed here so a bad value is a coded 400).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    before: Option<String>,
    principal: Option<String>,
    action: Option<String>,
}

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl Filters {
    fn query(&self, limit: i64) -> Result<audit::Query, Failure> {
        let before = blank(&self.before)
            .map(|b| {
                b.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    Failure::bad_request("invalid_before", "before must be an audit entry's id")
                })
            })
            .transpose()?;
        Ok(audit::Query {
            before,
            limit,
            principal: blank(&self.principal).map(str::to_owned),
            action: blank(&self.action).map(str::to_owned),
        })
    }

    /// The query string of the filters (without `before`) with `extra` added.
    fn link(&self, path: &str, extra: &[(&str, Option<&str>)]) -> String {
        let mut pairs = vec![
            ("principal", blank(&self.principal)),
            ("action", blank(&self.action)),
        ];
        pairs.extend_from_slice(extra);
        format!("{path}{}", format::query(&pairs))
    }
}

fn guard(viewer: &Viewer) -> Result<(), Failure> {
    if viewer.may(Action::AuditRead, "*") {
        Ok(())
    } else {
        Err(Failure::forbidden(Action::AuditRead))
    }
}

async fn read(state: &UiState, query: &audit::Query) -> Result<Vec<audit::Row>, Failure> {
    audit::list(state.app.store.pool(), query)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "the dashboard cannot read the audit log");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the audit log cannot be read now; reload in a moment",
            )
        })
}

/// One entry as the table shows it.
pub struct Row {
    pub id: i64,
    pub at: Time,
    pub principal: String,
    pub method: String,
    pub action: String,
    pub target: String,
    pub params: String,
    pub outcome: String,
    pub reason: String,
}

impl Row {
    fn of(r: &audit::Row) -> Self {
        Self {
            id: r.id,
            at: Time(r.at),
            principal: r.principal.clone(),
            method: r.auth_method.clone(),
            action: r.action.clone(),
            target: r.target.to_string(),
            params: r.params.to_string(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct Page {
    layout: Layout,
    principal: String,
    action: String,
    rows: Vec<Row>,
    older: Option<String>,
    newer: Option<String>,
    csv: String,
}

/// `GET /ui/audit`
pub async fn list(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, Failure> {
    guard(&viewer)?;
    let query = filters.query(PAGE)?;
    let rows = read(&state, &query).await?;
    let older = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten()
        .map(|id| filters.link("/ui/audit", &[("before", Some(&id))]));
    let page = Page {
        layout: viewer.layout("Audit log", "audit"),
        principal: blank(&filters.principal).unwrap_or("").to_owned(),
        action: blank(&filters.action).unwrap_or("").to_owned(),
        rows: rows.iter().map(Row::of).collect(),
        older,
        newer: query.before.map(|_| filters.link("/ui/audit", &[])),
        csv: filters.link("/ui/audit.csv", &[("before", blank(&filters.before))]),
    };
    Ok(Html(page.render()?))
}

/// `GET /ui/audit.csv`
pub async fn csv(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Result<Response, Failure> {
    guard(&viewer)?;
    let rows = read(&state, &filters.query(CSV_ROWS)?).await?;
    let mut out = String::from(
        "id,at,principal,auth_method,action,target,params,outcome,reason,request_id,trace_id\r\n",
    );
    for r in &rows {
        let cells = [
            r.id.to_string(),
            Time(r.at).iso(),
            r.principal.clone(),
            r.auth_method.clone(),
            r.action.clone(),
            r.target.to_string(),
            r.params.to_string(),
            r.outcome.clone(),
            r.reason.clone().unwrap_or_default(),
            r.request_id.clone().unwrap_or_default(),
            r.trace_id.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"keel-audit.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// One CSV cell: a leading `=`, `+`, `-` or `@` (a formula to a spreadsheet) gets a `'` before
/// it; a cell with a comma, quote or line break is quoted, its quotes doubled.
pub fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=1+2"), "'=1+2");
        assert_eq!(cell("@SUM(A1),x"), "\"'@SUM(A1),x\"");
        assert_eq!(cell("-3"), "'-3");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
    }
}
