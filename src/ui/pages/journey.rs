//! An event's delivery journey on its detail page: each hop (outbox and sinks, the Kafka record,
//! the Redis entry, each consumer group, each projection) as one box with its state, from
//! [`crate::journey`] (the same reading as `GET /v1/events/{id}/journey`). Shown inline, and
//! refreshed as a fragment (`/ui/events/{id}/journey`) so a pending hop turns delivered.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::Value;
use uuid::Uuid;

use super::super::{Failure, UiState, Viewer};
use crate::auth::Action;
use crate::journey::{self, outbox};

/// One hop.
pub struct Hop {
    pub stage: String,
    pub state: String,
    /// `ok`, `wait` or `bad`: the box's colour.
    pub tone: &'static str,
    pub detail: String,
    pub note: String,
}

fn tone(state: &str) -> &'static str {
    match state {
        "delivered" | "handled" | "passed" | "published" => "ok",
        "parked" | "failing" | "unreachable" => "bad",
        _ => "wait",
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The hops of a journey, read off its JSON (the API's shape), in the order an event travels.
fn hops(j: &Value) -> Vec<Hop> {
    let mut hops = vec![Hop {
        stage: "appended".into(),
        state: "stored".into(),
        tone: "ok",
        detail: format!(
            "position {}, version {}",
            text(&j["event"]["position"]),
            text(&j["event"]["version"])
        ),
        note: String::new(),
    }];
    for s in j["outbox"]["sinks"].as_array().into_iter().flatten() {
        if s["enabled"] == Value::Bool(false) {
            continue;
        }
        let state = text(&s["state"]);
        let parked = &s["parked"];
        hops.push(Hop {
            stage: format!("relay → {}", text(&s["sink"])),
            tone: tone(&state),
            detail: format!("outbox partition {}", text(&j["outbox"]["partition"])),
            note: if parked.is_null() {
                String::new()
            } else {
                format!(
                    "{} after {} attempts: {}",
                    text(&parked["error_class"]),
                    text(&parked["attempts"]),
                    text(&parked["error"])
                )
            },
            state,
        });
    }
    let k = &j["kafka"];
    let published = k["offset"].is_number();
    hops.push(Hop {
        stage: "kafka".into(),
        state: if published {
            "published".into()
        } else {
            "not found".into()
        },
        tone: if published { "ok" } else { "wait" },
        detail: format!(
            "topic {}, partition {}, offset {}",
            text(&k["topic"]),
            if k["partition"].is_null() {
                "?".into()
            } else {
                text(&k["partition"])
            },
            if published {
                text(&k["offset"])
            } else {
                "?".into()
            }
        ),
        note: text(&k["offset_note"]),
    });
    let r = &j["redis"];
    let delivered = r["delivered"] == Value::Bool(true);
    hops.push(Hop {
        stage: "redis".into(),
        state: if delivered {
            "delivered".into()
        } else {
            "pending".into()
        },
        tone: if delivered { "ok" } else { "wait" },
        detail: format!(
            "stream {}{}",
            text(&r["stream"]),
            if r["entry_id"].is_null() {
                String::new()
            } else {
                format!(", entry {}", text(&r["entry_id"]))
            }
        ),
        note: text(&r["entry_note"]),
    });
    for g in j["consumers"].as_array().into_iter().flatten() {
        let state = text(&g["state"]);
        let dl = &g["dead_letter"];
        hops.push(Hop {
            stage: format!("group {}", text(&g["group"])),
            tone: tone(&state),
            detail: if g["committed_offset"].is_null() {
                String::new()
            } else {
                format!("committed offset {}", text(&g["committed_offset"]))
            },
            note: if dl.is_null() {
                text(&g["note"])
            } else {
                format!("{}: {}", text(&dl["reason_class"]), text(&dl["reason"]))
            },
            state,
        });
    }
    for p in j["projections"].as_array().into_iter().flatten() {
        let state = match p["passed"] {
            Value::Bool(true) => "passed".to_owned(),
            Value::Bool(false) => "not yet".to_owned(),
            _ => "unknown".to_owned(),
        };
        hops.push(Hop {
            stage: format!("projection {}", text(&p["name"])),
            tone: tone(&state),
            detail: if p["next_offset"].is_null() {
                text(&p["state"])
            } else {
                format!(
                    "{}, checkpoint {}",
                    text(&p["state"]),
                    text(&p["next_offset"])
                )
            },
            note: [text(&p["note"]), text(&p["error"])]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
            state,
        });
    }
    hops
}

#[derive(Template)]
#[template(path = "ui/journey.html")]
struct Journey {
    hops: Vec<Hop>,
}

/// The journey of event `id` as HTML; `None` when there is no such event the viewer may read.
pub async fn render(state: &UiState, viewer: &Viewer, id: Uuid) -> Result<Option<String>, Failure> {
    let pool = state.app.store.pool();
    let Some(event) = outbox::event(pool, id)
        .await?
        .filter(|e| viewer.may(Action::EventRead, &e.aggregate_type))
    else {
        return Ok(None);
    };
    let journey = journey::follow(pool, &state.app.journey, event).await?;
    let value = serde_json::to_value(&journey).unwrap_or_default();
    Ok(Some(Journey { hops: hops(&value) }.render()?))
}

/// `GET /ui/events/{event_id}/journey`: the fragment alone.
pub async fn fragment(
    State(state): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Html<String>, Failure> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Failure::bad_request("invalid_event_id", "the event id must be a UUID"))?;
    render(&state, &viewer, id)
        .await?
        .map(Html)
        .ok_or_else(|| Failure::not_found("event_not_found", format!("no event with id {id}")))
}
