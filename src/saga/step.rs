//! One input delivered to one instance, inside the caller's transaction, under the instance's
//! lock (the caller takes it: see [`lock`]).
//!
//! The step's writes go in a savepoint: the `saga.step` record and the outputs appended to the
//! instance's stream through keel's append (validated against the registry, ids from the stream
//! version), the timers, the associations and the instance row. A permanent failure rolls the
//! savepoint back and parks the instance instead; a retriable one is returned, and the caller
//! rolls its whole transaction back and tries again later.

use std::panic::AssertUnwindSafe;

use serde_json::{json, Map, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::store::{self, Instance};
use super::{event_id, stream_type, DynSaga, Emit, End, Input, StepError};
use crate::append::{self, Validator};
use crate::auth::Access;
use crate::model::{AggregateType, EventType, ExpectedVersion, Metadata, NewEvent};

/// What a runner needs to decide and write steps of one saga.
pub struct Ctx {
    pub saga: std::sync::Arc<dyn DynSaga>,
    pub validator: Validator,
    pub max_state_bytes: usize,
    /// Wake the relays at each commit that wrote steps (`relay.notify`).
    pub notify: bool,
    stream: AggregateType,
}

impl Ctx {
    pub fn new(
        saga: std::sync::Arc<dyn DynSaga>,
        validator: Validator,
        max_state_bytes: usize,
    ) -> anyhow::Result<Self> {
        let stream = AggregateType::parse(stream_type(saga.name()))?;
        Ok(Self {
            saga,
            validator,
            max_state_bytes,
            notify: true,
            stream,
        })
    }

    pub fn name(&self) -> &'static str {
        self.saga.name()
    }

    pub fn stream(&self) -> &AggregateType {
        &self.stream
    }

    /// Asks the relays, in `tx`, to wake when it commits: the steps' outputs are in the outbox
    /// and no append through the store's commit signal announced them. One `NOTIFY` per
    /// transaction, not per step.
    pub async fn wake_relays(&self, tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        if self.notify {
            crate::relay::outbox::wake_relays(tx).await?;
        }
        Ok(())
    }
}

/// What happened to one input for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A step was recorded; the instance's status after it.
    Stepped(String),
    /// The instance is parked: the input is held in its inbox.
    Held,
    /// The step failed permanently: the instance is parked with this reason.
    Parked(String),
    /// No instance and the input may not start one.
    Unmatched,
    /// The instance has ended; the input changes nothing.
    AfterEnd,
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Stepped(_) => "stepped",
            Self::Held => "held",
            Self::Parked(_) => "parked",
            Self::Unmatched => "unmatched",
            Self::AfterEnd => "after_end",
        }
    }
}

/// Whether the input is redelivered from the inbox by a redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    /// A redrive: a parked instance is stepped, and a failure is returned instead of being
    /// parked again (the redrive keeps the input's inbox row).
    Redrive,
}

/// Takes the advisory locks of `instances`' streams for the transaction, sorted, in one
/// statement: the lock keel's append takes, so that steps of one instance are serialised
/// across partitions, runners and timer loops without deadlocks.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    ctx: &Ctx,
    instances: &[Uuid],
) -> Result<(), crate::store::Error> {
    let keys: Vec<(&AggregateType, Uuid)> = instances.iter().map(|i| (&ctx.stream, *i)).collect();
    crate::store::append::lock_aggregates(tx, &keys).await
}

/// Delivers `input` to the instance `instance` (key `correlation`); the caller holds its lock.
/// `Err` is retriable: the caller's transaction must be rolled back.
pub async fn deliver(
    tx: &mut Transaction<'_, Postgres>,
    ctx: &Ctx,
    instance: Uuid,
    correlation: &str,
    may_start: bool,
    input: &Input,
    mode: Mode,
) -> Result<Outcome, Failure> {
    let name = ctx.name();
    let stored = store::load(tx, name, instance).await?;
    match &stored {
        None if !may_start => return Ok(Outcome::Unmatched),
        Some(i) if i.ended() => return Ok(Outcome::AfterEnd),
        Some(i) if i.status == "parked" && mode == Mode::Live => {
            store::inbox(tx, name, instance, input, "held", None).await?;
            return Ok(Outcome::Held);
        }
        _ => {}
    }
    let mut savepoint = sqlx::Acquire::begin(&mut **tx).await?;
    match write(
        &mut savepoint,
        ctx,
        instance,
        correlation,
        stored.as_ref(),
        input,
    )
    .await
    {
        Ok(status) => {
            savepoint.commit().await?;
            Ok(Outcome::Stepped(status))
        }
        Err(Failure::Permanent(reason)) => {
            savepoint.rollback().await?;
            if mode == Mode::Redrive {
                return Err(Failure::Permanent(reason));
            }
            store::park(tx, name, instance, correlation, input, &reason).await?;
            tracing::warn!(saga = name, %instance, correlation, input = %input.label(), %reason, "saga instance parked");
            Ok(Outcome::Parked(reason))
        }
        Err(e) => Err(e),
    }
}

/// Why a delivery did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Park the instance (or, in a redrive, stop it).
    #[error("{0}")]
    Permanent(String),
    /// Roll back and try again.
    #[error("{0}")]
    Retriable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Permanent(s) => Self::Permanent(s),
            StepError::Retriable(s) => Self::Retriable(s),
        }
    }
}

/// Decides the step and writes it; returns the status after it.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    ctx: &Ctx,
    instance: Uuid,
    correlation: &str,
    stored: Option<&Instance>,
    input: &Input,
) -> Result<String, Failure> {
    super::inputs::fault_on_key(correlation);
    let saga = ctx.saga.as_ref();
    let name = saga.name();
    // A row parked on its first input has no state: it starts afresh.
    let previous = stored.and_then(|i| i.state.clone().map(|s| (s, i.state_version as u32)));
    let state = saga.load(previous)?;
    let before = match stored {
        Some(i) if i.status == "parked" => {
            i.resume_status.clone().unwrap_or_else(|| "active".into())
        }
        Some(i) if i.state.is_some() => i.status.clone(),
        _ => "new".to_owned(),
    };
    let step = std::panic::catch_unwind(AssertUnwindSafe(|| saga.handle(&state, input))).map_err(
        |p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Failure::Permanent(format!("the step panicked: {what}"))
        },
    )??;
    let state_bytes = serde_json::to_vec(&step.state)
        .map(|v| v.len())
        .unwrap_or(0);
    if state_bytes > ctx.max_state_bytes {
        return Err(Failure::Permanent(format!(
            "the new state is {state_bytes} bytes, over sagas.max_state_bytes ({})",
            ctx.max_state_bytes
        )));
    }
    let super::Settled {
        outputs,
        remembered,
        status,
    } = step.settle(
        &before,
        stored.map(Instance::compensations).unwrap_or_default(),
    );
    let status = status.to_owned();
    let ended = store::is_ended(&status);

    // The stream's version: an instance pruned and started again continues its stream.
    let version = match stored {
        Some(i) if i.state.is_some() || i.version > 0 => i.version,
        _ => crate::store::stream_version(&mut **tx, &ctx.stream, instance)
            .await
            .map_err(|e| Failure::Retriable(e.to_string()))?
            .unwrap_or(0),
    };
    let step_id = event_id(instance, version + 1);
    let output_ids: Vec<Uuid> = (0..outputs.len())
        .map(|i| event_id(instance, version + 2 + i as i32))
        .collect();
    let (causation, trace) = match input {
        Input::Event(e) => (
            e.id.to_string(),
            e.metadata
                .get(Metadata::TRACEPARENT)
                .and_then(Value::as_str)
                .filter(|t| crate::model::is_traceparent(t))
                .map(str::to_owned),
        ),
        Input::Timeout { .. } => (step_id.to_string(), None),
    };
    let metadata = |causation: &str| -> Result<Metadata, Failure> {
        let mut m = Map::new();
        m.insert("correlation_id".into(), json!(correlation));
        m.insert("causation_id".into(), json!(causation));
        m.insert("saga".into(), json!(name));
        if let Some(t) = &trace {
            m.insert("traceparent".into(), json!(t));
        }
        Metadata::parse(m).map_err(|e| {
            Failure::Permanent(format!(
                "the correlation key cannot be a metadata value: {e}"
            ))
        })
    };
    let record = step_record(
        name,
        instance,
        input,
        &before,
        &status,
        &step,
        &outputs,
        &output_ids,
        saga.state_version(),
    );
    let mut events = vec![NewEvent::new(event_type("saga.step")?, record)
        .with_id(step_id)
        .with_metadata(metadata(&causation)?)];
    for (out, id) in outputs.iter().zip(&output_ids) {
        events.push(
            NewEvent::new(event_type(&out.event_type)?, out.payload.clone())
                .with_id(*id)
                .with_metadata(metadata(&causation)?),
        );
    }
    let expected = ExpectedVersion::from_number(version.into()).ok_or_else(|| {
        Failure::Permanent(format!(
            "the instance's stream version {version} is invalid"
        ))
    })?;
    let appended = append::append(
        tx,
        &ctx.validator,
        &Access::everything(),
        &ctx.stream,
        instance,
        expected,
        events,
    )
    .await;
    let appended = match appended {
        Ok(a) => a,
        Err(e) if e.refusal().is_some() => {
            let r = e.refusal().expect("checked");
            return Err(Failure::Permanent(format!(
                "an emitted event was refused ({}): {}{}",
                r.code(),
                r,
                index_note(r, &outputs)
            )));
        }
        Err(e) if e.is_retriable() => return Err(Failure::Retriable(e.to_string())),
        Err(e) => return Err(Failure::Permanent(format!("appending the step: {e}"))),
    };
    if ended {
        store::clear(tx, name, instance).await?;
    } else {
        let pending = store::timers(
            tx,
            name,
            instance,
            step.cancel_all,
            &step.cancel,
            &step.schedule,
        )
        .await?;
        if status == "compensating" && pending == 0 {
            return Err(Failure::Permanent(
                "a compensating instance needs a pending timeout (its compensation deadline), and this step left none".into(),
            ));
        }
        store::associate(tx, name, instance, &step.associate).await?;
    }
    let error = match &step.end {
        Some(End::Failed(reason)) => Some(reason.as_str()),
        _ => None,
    };
    store::write(
        tx,
        name,
        store::Written {
            instance,
            correlation,
            status: &status,
            state: &step.state,
            state_version: saga.state_version() as i32,
            compensations: &remembered,
            version: appended.version,
            error,
        },
    )
    .await?;
    Ok(status)
}

/// Which emitted event a refusal is about (index 0 is the step record).
fn index_note(refusal: &append::Refusal, outputs: &[Emit]) -> String {
    let index = match refusal {
        append::Refusal::SchemaMismatch { index, .. }
        | append::Refusal::InvalidPayload { index }
        | append::Refusal::UnknownEventType { index, .. }
        | append::Refusal::AggregateTypeMismatch { index, .. }
        | append::Refusal::UnknownSchemaVersion { index, .. }
        | append::Refusal::DuplicateEventId { index, .. } => *index,
        append::Refusal::EmptyBatch => return String::new(),
    };
    match index.checked_sub(1).and_then(|i| outputs.get(i)) {
        Some(out) => format!(" (output {} of the step, {})", index, out.event_type),
        None => " (the step record)".into(),
    }
}

fn event_type(name: &str) -> Result<EventType, Failure> {
    EventType::parse(name).map_err(|e| Failure::Permanent(format!("an emitted event type: {e}")))
}

/// The `saga.step` record of a step: what came in, what went out, the timers, the state after.
#[allow(clippy::too_many_arguments)]
fn step_record(
    saga: &str,
    instance: Uuid,
    input: &Input,
    before: &str,
    after: &str,
    step: &super::Step<Value>,
    outputs: &[Emit],
    output_ids: &[Uuid],
    state_version: u32,
) -> Value {
    let (kind, event_id, input_type, aggregate, due_at, timeout_payload) = match input {
        Input::Event(e) => (
            "event",
            Some(e.id.to_string()),
            e.event_type.clone(),
            Some(format!(
                "{}/{}@{}",
                e.aggregate_type, e.aggregate_id, e.version
            )),
            None,
            None,
        ),
        Input::Timeout {
            name,
            payload,
            due_at,
        } => (
            "timeout",
            None,
            name.clone(),
            None,
            Some(due_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            Some(payload.to_string()),
        ),
    };
    json!({
        "saga": saga,
        "instance_id": instance.to_string(),
        "input_kind": kind,
        "input_event_id": event_id,
        "input_type": input_type,
        "input_aggregate": aggregate,
        "timeout_due_at": due_at,
        "timeout_payload": timeout_payload,
        "outputs": output_ids.iter().map(Uuid::to_string).collect::<Vec<_>>(),
        "output_types": outputs.iter().map(|o| o.event_type.clone()).collect::<Vec<_>>(),
        "timers_set": step.schedule.iter().map(|t| format!("{}@{}", t.name, t.after.as_millis())).collect::<Vec<_>>(),
        "timers_cancelled": if step.cancel_all { vec!["*".to_owned()] } else { step.cancel.clone() },
        "associations": step.associate.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "status_before": before,
        "status_after": after,
        "state_version": state_version as i32,
        "state": step.state.to_string(),
    })
}
