//! `keel replay saga NAME --check`: re-runs the current definition over every instance's
//! recorded inputs (events from the store at the saga's reader version, timeouts as recorded) and
//! compares what it decides with what was recorded: outputs (types and payloads), timers set,
//! status and state. It writes nothing; the first diverging step of each instance is named. It is
//! the gate before deploying a changed definition.

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{stream_type, DynSaga, Emit, Input};
use crate::model::RecordedEvent;
use crate::registry::Registry;

#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub instance_id: Uuid,
    /// The stream version of the diverging step record.
    pub version: i32,
    /// The step's input: an event type or `timeout:<name>`.
    pub input: String,
    /// What differs, recorded then decided now.
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub saga: String,
    pub instances: usize,
    pub steps: usize,
    /// Instances whose input events are no longer in the store (purged), so not checked.
    pub unchecked: usize,
    pub divergences: Vec<Divergence>,
}

/// Checks every instance of `saga` (or only `only`), with a progress report per instance.
pub async fn check(
    pool: &PgPool,
    registry: &Registry,
    saga: &dyn DynSaga,
    only: Option<Uuid>,
) -> anyhow::Result<CheckReport> {
    let stream = stream_type(saga.name());
    let instances: Vec<Uuid> = sqlx::query_scalar(
        "SELECT aggregate_id FROM streams WHERE aggregate_type = $1 AND ($2::uuid IS NULL OR aggregate_id = $2)
          ORDER BY aggregate_id",
    )
    .bind(&stream)
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut report = CheckReport {
        saga: saga.name().to_owned(),
        instances: instances.len(),
        ..Default::default()
    };
    let progress = crate::replay::progress::Progress::new(
        &format!("checking {} instances", saga.name()),
        Some(instances.len() as u64),
    );
    for instance in &instances {
        let events: Vec<RecordedEvent> = crate::store::read_stream(
            pool,
            &crate::model::AggregateType::parse(&stream)?,
            *instance,
            0,
            i64::MAX,
        )
        .await?;
        match check_instance(pool, registry, saga, *instance, &events, &mut report.steps).await? {
            Outcome::Same => {}
            Outcome::Unchecked => report.unchecked += 1,
            Outcome::Diverged(d) => report.divergences.push(d),
        }
        progress.advance(1);
    }
    progress.finish(&format!(
        "{} steps checked, {} divergent instances",
        report.steps,
        report.divergences.len()
    ));
    Ok(report)
}

enum Outcome {
    Same,
    Unchecked,
    Diverged(Divergence),
}

async fn check_instance(
    pool: &PgPool,
    registry: &Registry,
    saga: &dyn DynSaga,
    instance: Uuid,
    events: &[RecordedEvent],
    steps: &mut usize,
) -> anyhow::Result<Outcome> {
    let mut state = match saga.load(None) {
        Ok(s) => s,
        Err(e) => anyhow::bail!("the saga's initial state: {e}"),
    };
    let mut remembered: Vec<Emit> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let record = &events[i];
        if record.event_type != "saga.step" {
            i += 1;
            continue;
        }
        let p = &record.payload;
        let recorded_ids: Vec<&str> = p["outputs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let recorded: Vec<&RecordedEvent> =
            events[i + 1..].iter().take(recorded_ids.len()).collect();
        i += 1 + recorded.len();
        let diverged = |what: String, label: String| {
            Ok(Outcome::Diverged(Divergence {
                instance_id: instance,
                version: record.version,
                input: label,
                what,
            }))
        };
        let input = match p["input_kind"].as_str() {
            Some("timeout") => Input::Timeout {
                name: p["input_type"].as_str().unwrap_or_default().to_owned(),
                payload: p["timeout_payload"]
                    .as_str()
                    .and_then(|t| serde_json::from_str(t).ok())
                    .unwrap_or(Value::Null),
                due_at: p["timeout_due_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_default(),
            },
            _ => {
                let id = p["input_event_id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok());
                let Some(id) = id else {
                    return Ok(Outcome::Unchecked);
                };
                let Some(event) = crate::store::get_event(pool, id).await? else {
                    return Ok(Outcome::Unchecked);
                };
                let event = registry.upcast_owned(event, saga.reader()).await?;
                Input::Event(Box::new(event))
            }
        };
        let label = input.label();
        *steps += 1;
        let step = match saga.handle(&state, &input) {
            Ok(s) => s,
            Err(e) => return diverged(format!("the step now fails: {e}"), label),
        };
        let before = p["status_before"].as_str().unwrap_or("active");
        let settled = step.settle(before, std::mem::take(&mut remembered));
        let outputs = settled.outputs;
        remembered = settled.remembered;
        let status = settled.status;
        let then: Vec<&str> = recorded.iter().map(|e| e.event_type.as_str()).collect();
        let now: Vec<&str> = outputs.iter().map(|o| o.event_type.as_str()).collect();
        if then != now {
            return diverged(format!("outputs were {then:?}, now {now:?}"), label);
        }
        for (was, is) in recorded.iter().zip(&outputs) {
            if !contains(&was.payload, &is.payload) {
                return diverged(
                    format!(
                        "{} payload was {}, now {}",
                        is.event_type, was.payload, is.payload
                    ),
                    label,
                );
            }
        }
        let timers: Vec<String> = step
            .schedule
            .iter()
            .map(|t| format!("{}@{}", t.name, t.after.as_millis()))
            .collect();
        let was_timers: Vec<String> = p["timers_set"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if timers != was_timers {
            return diverged(
                format!("timers set were {was_timers:?}, now {timers:?}"),
                label,
            );
        }
        let was_status = p["status_after"].as_str().unwrap_or_default();
        if status != was_status {
            return diverged(
                format!("status after was {was_status}, now {status}"),
                label,
            );
        }
        let was_state: Value = p["state"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        if was_state != step.state {
            return diverged(format!("state was {was_state}, now {}", step.state), label);
        }
        state = step.state;
    }
    Ok(Outcome::Same)
}

/// Whether `stored` holds every field of `emitted` with the same value (the write path adds the
/// schema's defaults to what a step emitted).
fn contains(stored: &Value, emitted: &Value) -> bool {
    match (stored, emitted) {
        (Value::Object(s), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| s.get(k).is_some_and(|sv| contains(sv, v))),
        (s, e) => s == e,
    }
}
