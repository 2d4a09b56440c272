//! `/ui/schemas`: the registry's subjects the viewer may read, each with its latest version,
//! its compatibility mode and the event types and topics that use it (from the catalog: an
//! event type's subject is its name). `/ui/schemas/{subject}`: its versions with their ids, a
//! line diff of two of them (`?a=1&b=2`), and a form that tests a payload against a version
//! with the append path's own check (the registry's schema for that version, then
//! [`crate::schema::validate`]); testing writes nothing.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use serde::Deserialize;
use serde_json::Value;

use super::super::diff::{self, Line};
use super::super::form::Posted;
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::api::ApiError;
use crate::auth::Action;
use crate::model::VersionSpec;
use crate::registry;

/// A missing subject or version is a 404 of its own; the rest is the API's mapping.
fn unavailable(e: registry::Error) -> Failure {
    use registry::Error as E;
    match e {
        E::SubjectNotFound(_) => Failure::not_found("subject_not_found", e.to_string()),
        E::VersionNotFound { .. } => Failure::not_found("version_not_found", e.to_string()),
        other => ApiError::from(other).into(),
    }
}

/// Where a subject's events go: the event type of the same name in the catalog and its topic.
struct Usage {
    event_type: String,
    topic: String,
}

fn usage(state: &UiState, subject: &str) -> Option<Usage> {
    let entry = state
        .app
        .catalog
        .iter()
        .find(|e| e.event_type.as_str() == subject)?;
    let topic = match (&entry.spec.topic, &entry.spec.aggregate_type) {
        (Some(t), _) => t.clone(),
        (None, Some(a)) => format!("{}{}", state.app.relay.kafka.topic_prefix, a.as_str()),
        (None, None) => "the aggregate type's topic".into(),
    };
    Some(Usage {
        event_type: entry.event_type.as_str().to_owned(),
        topic,
    })
}

pub struct Subject {
    pub name: String,
    pub latest: i32,
    pub versions: usize,
    /// The subject's own mode; empty when it follows the global one.
    pub own_mode: String,
    pub event_type: String,
    pub topic: String,
}

#[derive(Template)]
#[template(path = "ui/schemas.html")]
struct ListPage {
    layout: Layout,
    global: String,
    subjects: Vec<Subject>,
}

fn guard(viewer: &Viewer, subject: &str) -> Result<(), Failure> {
    if viewer.may(Action::RegistryRead, subject) {
        Ok(())
    } else {
        Err(Failure::forbidden(Action::RegistryRead))
    }
}

/// `GET /ui/schemas`
pub async fn list(State(state): State<UiState>, viewer: Viewer) -> Result<Html<String>, Failure> {
    if !viewer.may_some(Action::RegistryRead) {
        return Err(Failure::forbidden(Action::RegistryRead));
    }
    let registry = &state.app.registry;
    let global = registry.config(None).await.map_err(unavailable)?;
    let mut subjects = Vec::new();
    for name in registry.subjects(false).await.map_err(unavailable)? {
        if !viewer.may(Action::RegistryRead, &name) {
            continue;
        }
        let versions = registry.versions(&name, false).await.map_err(unavailable)?;
        let own = registry.config(Some(&name)).await.map_err(unavailable)?;
        let used = usage(&state, &name);
        subjects.push(Subject {
            latest: versions.iter().copied().max().unwrap_or(0),
            versions: versions.len(),
            own_mode: own.map(|m| m.as_str().to_owned()).unwrap_or_default(),
            event_type: used
                .as_ref()
                .map(|u| u.event_type.clone())
                .unwrap_or_default(),
            topic: used.map(|u| u.topic).unwrap_or_default(),
            name,
        });
    }
    let page = ListPage {
        layout: viewer.layout("Schemas", "schemas"),
        global: global.map_or("BACKWARD_TRANSITIVE".into(), |m| m.as_str().to_owned()),
        subjects,
    };
    Ok(Html(page.render()?))
}

pub struct Version {
    pub version: i32,
    pub id: i32,
}

/// What a payload test found.
pub struct Tested {
    pub version: i32,
    pub payload: String,
    /// The normalised payload when it validates, else why not.
    pub outcome: Result<String, String>,
}

#[derive(Template)]
#[template(path = "ui/schema.html")]
struct DetailPage {
    layout: Layout,
    subject: String,
    mode: String,
    own_mode: bool,
    event_type: String,
    topic: String,
    versions: Vec<Version>,
    a: i32,
    b: i32,
    diff: Vec<Line>,
    tested: Option<Tested>,
    test_version: i32,
}

#[derive(Debug, Default, Deserialize)]
pub struct Compare {
    a: Option<String>,
    b: Option<String>,
}

fn version_param(v: &Option<String>, name: &str) -> Result<Option<i32>, Failure> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| {
                Failure::bad_request(
                    "invalid_version",
                    format!("{name} must be a version number"),
                )
            }),
    }
}

/// The schema text of `version`, pretty-printed.
async fn pretty(state: &UiState, subject: &str, version: i32) -> Result<String, Failure> {
    let v = state
        .app
        .registry
        .version(subject, VersionSpec::Number(version), false)
        .await
        .map_err(unavailable)?;
    Ok(serde_json::from_str::<Value>(&v.schema)
        .and_then(|j| serde_json::to_string_pretty(&j))
        .unwrap_or(v.schema))
}

async fn render_detail(
    state: &UiState,
    viewer: &Viewer,
    subject: &str,
    compare: &Compare,
    tested: Option<Tested>,
) -> Result<Html<String>, Failure> {
    guard(viewer, subject)?;
    let (a, b) = (
        version_param(&compare.a, "a")?,
        version_param(&compare.b, "b")?,
    );
    let registry = &state.app.registry;
    let numbers = registry
        .versions(subject, false)
        .await
        .map_err(unavailable)?;
    let mut versions = Vec::with_capacity(numbers.len());
    for n in &numbers {
        let v = registry
            .version(subject, VersionSpec::Number(*n), false)
            .await
            .map_err(unavailable)?;
        versions.push(Version {
            version: v.version,
            id: v.id,
        });
    }
    let latest = numbers.iter().copied().max().unwrap_or(1);
    let b = b.unwrap_or(latest);
    let a = a.unwrap_or((b - 1).max(1));
    let diff = diff::lines(
        &pretty(state, subject, a).await?,
        &pretty(state, subject, b).await?,
    );
    let own = registry.config(Some(subject)).await.map_err(unavailable)?;
    let mode = registry
        .effective_config(subject)
        .await
        .map_err(unavailable)?;
    let used = usage(state, subject);
    let page = DetailPage {
        layout: viewer.layout(format!("Schema {subject}"), "schemas"),
        subject: subject.to_owned(),
        mode: mode.as_str().to_owned(),
        own_mode: own.is_some(),
        event_type: used
            .as_ref()
            .map(|u| u.event_type.clone())
            .unwrap_or_default(),
        topic: used.map(|u| u.topic).unwrap_or_default(),
        versions,
        a,
        b,
        diff,
        test_version: tested.as_ref().map_or(latest, |t| t.version),
        tested,
    };
    Ok(Html(page.render()?))
}

/// `GET /ui/schemas/{subject}`
pub async fn detail(
    State(state): State<UiState>,
    viewer: Viewer,
    Path(subject): Path<String>,
    Query(compare): Query<Compare>,
) -> Result<Html<String>, Failure> {
    render_detail(&state, &viewer, &subject, &compare, None).await
}

#[derive(Debug, Deserialize)]
pub struct TestForm {
    version: String,
    payload: String,
}

/// `POST /ui/schemas/{subject}/test`: whether a payload would pass an append's check.
pub async fn test(
    State(state): State<UiState>,
    Path(subject): Path<String>,
    posted: Posted<TestForm>,
) -> Result<Html<String>, Failure> {
    let Posted { viewer, form } = posted;
    guard(&viewer, &subject)?;
    let version = version_param(&Some(form.version.clone()), "version")?.ok_or_else(|| {
        Failure::bad_request("invalid_version", "version must be a version number")
    })?;
    let schema = state
        .app
        .registry
        .event_schema(&subject, Some(version))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Failure::not_found(
                "version_not_found",
                format!("{subject} has no version {version}"),
            )
        })?;
    let outcome = match serde_json::from_str::<Value>(&form.payload) {
        Err(e) => Err(format!("the payload is not JSON: {e}")),
        Ok(p) if !p.is_object() => Err("the payload must be a JSON object".to_owned()),
        Ok(p) => crate::schema::validate(&schema.schema, &p)
            .map(|n| serde_json::to_string_pretty(&n).unwrap_or_default())
            .map_err(|e| e.to_string()),
    };
    let tested = Tested {
        version,
        payload: form.payload,
        outcome,
    };
    render_detail(&state, &viewer, &subject, &Compare::default(), Some(tested)).await
}
