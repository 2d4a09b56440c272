//! `/ui/dead-letters`: consumer-parked records (per group) and relay-parked outbox rows (per
//! sink), grouped by key sequence: each sequence's head with its error and how many records
//! wait behind it. Actions: retry a sequence in order, skip its head with a reason, and bulk
//! retry or skip over a filter, previewed with a dry-run count first and confirmed by typing the
//! count above the API's threshold. Every action runs the API's own function
//! (`api::operator::{dlq, outbox}::act`) and shows the `keel` command that does the same.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::super::form::Posted;
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::api::operator::bulk::{Outcome, Request, Verb, CONFIRM_ABOVE};
use crate::api::operator::page::SequencesQuery;
use crate::api::operator::{dlq, outbox};
use crate::api::RequestId;
use crate::auth::Action;
use crate::model::Age;

/// A sequence as the tables show it, from either store.
pub struct SequenceRow {
    /// The key: a record key or an aggregate id.
    pub key: String,
    /// Where: `topic/partition` or the sink.
    pub place: String,
    /// The head's row id (dead letters) or event id (outbox), for its actions.
    pub head: String,
    pub event_id: Option<String>,
    pub event_type: String,
    pub state: String,
    pub reason_class: String,
    pub reason: String,
    pub attempts: i32,
    pub held: i64,
    pub first: Time,
    pub last: Time,
}

#[derive(Template)]
#[template(path = "ui/sequences.html")]
struct Sequences<'a> {
    rows: &'a [SequenceRow],
    /// Where the row actions post: `/ui/dead-letters/<group>` or `/ui/relay/parked`.
    action: String,
    csrf: &'a str,
    may_retry: bool,
    may_skip: bool,
    /// The outbox's rows name their sink in their actions.
    sink_field: bool,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    group: Option<String>,
    key: Option<String>,
    reason_class: Option<String>,
    event_type: Option<String>,
    older_than: Option<String>,
    after: Option<String>,
}

fn some(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn age(v: &Option<String>) -> Result<Option<Age>, Failure> {
    some(v)
        .map(|t| {
            t.parse::<Age>().map_err(|_| {
                Failure::bad_request(
                    "invalid_older_than",
                    "older_than is like 90s, 15m, 2h or 7d",
                )
            })
        })
        .transpose()
}

impl Filters {
    fn query(&self) -> Result<SequencesQuery, Failure> {
        Ok(SequencesQuery {
            key: some(&self.key),
            reason_class: some(&self.reason_class),
            event_type: some(&self.event_type),
            older_than: age(&self.older_than)?,
            after: some(&self.after),
            limit: Some(50),
            ..Default::default()
        })
    }
}

#[derive(Template)]
#[template(path = "ui/dead_letters.html")]
struct Page {
    layout: Layout,
    groups: Vec<(String, String, String)>,
    group: Option<String>,
    f: Filters,
    consumer: String,
    relay: String,
    may_bulk: bool,
}

/// The consumer group's sequences, as a table with their actions.
async fn group_sequences(
    state: &UiState,
    viewer: &Viewer,
    group: &str,
    filters: &Filters,
) -> Result<String, Failure> {
    let page = dlq::sequences(&state.app, &viewer.caller, group, &filters.query()?).await?;
    let rows: Vec<SequenceRow> = page
        .sequences
        .iter()
        .map(|s| SequenceRow {
            key: s.key.clone(),
            place: format!("{}/{}", s.topic, s.partition),
            head: s.head.id.to_string(),
            event_id: s.head.event_id.map(|e| e.to_string()),
            event_type: s.head.event_type.clone().unwrap_or_default(),
            state: s.head.state.as_str().to_owned(),
            reason_class: s.head.reason_class.clone(),
            reason: s.head.reason.clone(),
            attempts: s.head.attempts,
            held: s.held,
            first: Time(s.first_failed_at),
            last: Time(s.last_failed_at),
        })
        .collect();
    let next = page.next.map(|n| {
        format!(
            "/ui/dead-letters{}",
            format::query(&[("group", Some(group)), ("after", Some(&n))])
        )
    });
    Ok(Sequences {
        rows: &rows,
        action: format!("/ui/dead-letters/{}", format::url_encode(group)),
        csrf: &viewer.csrf,
        may_retry: viewer.may(Action::DlqRetry, group),
        may_skip: viewer.may(Action::DlqSkip, group),
        sink_field: false,
        next,
    }
    .render()?)
}

/// The relay's parked sequences, as a table with their actions (also on the Relay page).
pub async fn relay_sequences(state: &UiState, viewer: &Viewer) -> Result<String, Failure> {
    let query = SequencesQuery {
        limit: Some(50),
        ..Default::default()
    };
    let page = outbox::sequences(&state.app, &viewer.caller, &query).await?;
    let rows: Vec<SequenceRow> = page
        .sequences
        .iter()
        .map(|s| SequenceRow {
            key: format!("{}/{}", s.aggregate_type, s.key),
            place: s.sink.clone(),
            head: s.head.event_id.to_string(),
            event_id: Some(s.head.event_id.to_string()),
            event_type: s.head.event_type.clone(),
            state: s.head.state.clone(),
            reason_class: s.head.reason_class.clone().unwrap_or_default(),
            reason: s.head.reason.clone().unwrap_or_default(),
            attempts: s.head.attempts,
            held: s.held,
            first: Time(s.first_failed_at),
            last: Time(s.last_failed_at),
        })
        .collect();
    Ok(Sequences {
        rows: &rows,
        action: "/ui/relay/parked".into(),
        csrf: &viewer.csrf,
        may_retry: viewer.may(Action::OutboxRetry, "*"),
        may_skip: viewer.may(Action::OutboxSkip, "*"),
        sink_field: true,
        next: None,
    }
    .render()?)
}

/// `GET /ui/dead-letters?group=&key=&reason_class=&event_type=&older_than=&after=`
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, Failure> {
    let relay_readable = viewer.may(Action::OutboxRead, "*");
    if !viewer.may_some(Action::DlqRead) && !relay_readable {
        return Err(Failure::forbidden(Action::DlqRead));
    }
    let groups = if viewer.may_some(Action::DlqRead) {
        let found = dlq::groups(&state.app, &viewer.caller, &Default::default()).await?;
        found
            .groups
            .iter()
            .map(|g| {
                (
                    g.group.clone(),
                    format!(
                        "{}{}",
                        format::count(g.depth),
                        if g.depth_capped { "+" } else { "" }
                    ),
                    format::duration(g.oldest_age_seconds),
                )
            })
            .collect()
    } else {
        vec![]
    };
    let group = some(&filters.group);
    let consumer = match &group {
        Some(g) => group_sequences(&state, &viewer, g, &filters).await?,
        None => String::new(),
    };
    let relay = match (relay_readable, &group) {
        (true, None) => relay_sequences(&state, &viewer).await?,
        _ => String::new(),
    };
    let may_bulk = group
        .as_ref()
        .is_some_and(|g| viewer.may(Action::DlqRetry, g) || viewer.may(Action::DlqSkip, g));
    let page = Page {
        layout: viewer.layout("Dead letters", "dead-letters"),
        groups,
        group,
        f: filters,
        consumer,
        relay,
        may_bulk,
    };
    Ok(Html(page.render()?))
}

/// A posted action: a row's (`id`) or a filter's, retry or skip, previewed or run.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    verb: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    sink: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    reason_class: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    older_than: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
    /// `preview` counts (a dry run); `run` changes.
    #[serde(default)]
    step: String,
}

impl ActionForm {
    fn verb(&self) -> Result<Verb, Failure> {
        match self.verb.as_str() {
            "retry" => Ok(Verb::Retry),
            "skip" => Ok(Verb::Skip),
            _ => Err(Failure::bad_request(
                "invalid_verb",
                "verb must be retry or skip",
            )),
        }
    }

    /// The API's request for this form, for the dead-letter store (`outbox: false`) or the
    /// outbox.
    fn request(&self, outbox: bool) -> Result<Request, Failure> {
        let text = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut r = Request {
            key: text(&self.key),
            reason_class: text(&self.reason_class),
            event_type: text(&self.event_type),
            older_than: age(&text(&self.older_than))?,
            reason: text(&self.reason),
            dry_run: self.step == "preview",
            ..Default::default()
        };
        if let Some(id) = text(&self.id) {
            if outbox {
                r.event_id = Some(uuid::Uuid::parse_str(&id).map_err(|_| {
                    Failure::bad_request("invalid_event_id", "the event id must be a UUID")
                })?);
                r.sink = text(&self.sink);
            } else {
                r.id = Some(id.parse().map_err(|_| {
                    Failure::bad_request("invalid_id", "the row id must be a number")
                })?);
            }
        } else if r.key.is_none()
            && r.reason_class.is_none()
            && r.event_type.is_none()
            && r.older_than.is_none()
        {
            r.all = true;
        }
        if let Some(c) = text(&self.confirm) {
            r.confirm = Some(c.parse().map_err(|_| {
                Failure::bad_request("invalid_confirm", "type the count as a number")
            })?);
        }
        Ok(r)
    }
}

#[derive(Template)]
#[template(path = "ui/dead_letter_result.html")]
struct Result_ {
    layout: Layout,
    outcome: Outcome,
    command: String,
    back: String,
    /// A dry run's form to run it for real, with the confirmation field when needed.
    action: String,
    fields: Vec<(&'static str, String)>,
    needs_confirm: bool,
    confirm_above: u64,
}

async fn act(
    state: &UiState,
    request_id: &RequestId,
    viewer: Viewer,
    form: ActionForm,
    group: Option<&str>,
) -> Result<Response, Failure> {
    let verb = form.verb()?;
    let request = form.request(group.is_none())?;
    let (outcome, command, back, action) = match group {
        Some(g) => (
            dlq::act(&state.app, &viewer.caller, request_id, g, verb, &request).await?,
            dlq::command_line(g, verb, &request),
            format!("/ui/dead-letters?group={}", format::url_encode(g)),
            format!("/ui/dead-letters/{}", format::url_encode(g)),
        ),
        None => (
            outbox::act(&state.app, &viewer.caller, request_id, verb, &request).await?,
            outbox::command_line(verb, &request),
            "/ui/relay".to_owned(),
            "/ui/relay/parked".to_owned(),
        ),
    };
    let needs_confirm = outcome.dry_run && outcome.would_touch > CONFIRM_ABOVE;
    let title = match (outcome.dry_run, verb) {
        (true, _) => "What this would touch",
        (false, Verb::Retry) => "Retried",
        (false, Verb::Skip) => "Skipped",
    };
    let fields = vec![
        ("verb", form.verb),
        ("id", form.id),
        ("sink", form.sink),
        ("key", form.key),
        ("reason_class", form.reason_class),
        ("event_type", form.event_type),
        ("older_than", form.older_than),
        ("reason", form.reason),
        ("step", "run".into()),
    ];
    let page = Result_ {
        layout: viewer.layout(title, "dead-letters"),
        command: outcome.run_with.clone().unwrap_or(command),
        outcome,
        back,
        action,
        fields,
        needs_confirm,
        confirm_above: CONFIRM_ABOVE,
    };
    Ok(Html(page.render()?).into_response())
}

/// `POST /ui/dead-letters/{group}`
pub async fn group_action(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Path(group): Path<String>,
    Posted { viewer, form }: Posted<ActionForm>,
) -> Result<Response, Failure> {
    act(&state, &request, viewer, form, Some(&group)).await
}

/// `POST /ui/relay/parked`
pub async fn relay_action(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Posted { viewer, form }: Posted<ActionForm>,
) -> Result<Response, Failure> {
    act(&state, &request, viewer, form, None).await
}
