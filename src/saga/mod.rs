//! Sagas: durable process managers on keel's own log.
//!
//! A [`Saga`] is a definition: the event types it listens to ([`Route`]), how each input finds its
//! instance ([`Correlate`]), which inputs may start one ([`Start`]), and a **pure** step: state +
//! input (an event or a timeout) → a [`Step`]: the new state, events to emit, timers to set or
//! cancel, associations, compensations to remember, and an end. Steps do no IO and read no clock.
//!
//! How it runs ([`runner`]):
//! * Inputs come from Kafka through the projection runner ([`crate::projection::runner`]): the
//!   saga is wrapped as the projection `saga_<name>` ([`inputs::Inputs`]), so its partition
//!   offsets are stored in the transaction of each batch, records are fenced between runners, and
//!   each source aggregate's events are applied once (`keel_applied`): relay duplicates,
//!   republishes and group resets are skipped.
//! * Each input's step ([`step`]) runs under the instance's advisory lock, the one keel's append
//!   takes for the instance's stream `saga.<name>/<instance>`, inside the batch's transaction: the
//!   state, the emitted events with their outbox rows (through [`crate::append`], validated
//!   against the registry), the timers, the associations and a `saga.step` record on the
//!   instance's stream commit together with the input's offset. Emitted ids are deterministic.
//! * Timeouts ([`timers`]) live in `saga_timeouts`, due by PostgreSQL's clock; each fires in a
//!   transaction that deletes its row under the instance lock, so it fires once per schedule.
//!   An end deletes the instance's timeouts in its own transaction.
//! * A step that fails permanently parks its instance ([`store`]): its later inputs and due
//!   timeouts are held in `saga_inbox` in order while other instances flow; `keel saga retry`
//!   and `keel saga skip` redrive it.

pub mod check;
pub mod inputs;
pub mod op_verify;
pub mod runner;
pub mod status;
pub mod step;
pub mod store;
pub mod timers;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{RecordedEvent, VersionSpec};

/// How an input finds its instance. A route's rules are tried in order; the first that yields a
/// key wins.
#[derive(Debug, Clone)]
pub enum Correlate {
    /// A string in the input's metadata (for example `correlation_id`): the instance's key.
    Metadata(&'static str),
    /// A top-level payload field (a string, or a number shown as text): the instance's key.
    Field(&'static str),
    /// The instances an earlier step associated with `key` = the payload field's value.
    Association {
        key: &'static str,
        field: &'static str,
    },
    /// The instance that emitted the event named by the input's `causation_id`.
    Causation,
}

/// Which inputs may start an instance when none exists for their key.
#[derive(Clone, Copy)]
pub enum Start {
    Never,
    Always,
    When(fn(&RecordedEvent) -> bool),
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Never => "Never",
            Self::Always => "Always",
            Self::When(_) => "When(..)",
        })
    }
}

/// One event type a saga listens to.
#[derive(Debug, Clone)]
pub struct Route {
    pub event_type: &'static str,
    pub correlate: Vec<Correlate>,
    pub start: Start,
}

/// What a step is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// An event, decoded at the saga's reader version.
    Event(Box<RecordedEvent>),
    /// A timeout the instance set, as it set it. `due_at` is PostgreSQL's time when it became
    /// due; the step is not told when it fired, so replaying it decides the same.
    Timeout {
        name: String,
        payload: Value,
        due_at: chrono::DateTime<chrono::Utc>,
    },
}

impl Input {
    /// The event type, or `timeout:<name>`.
    pub fn label(&self) -> String {
        match self {
            Self::Event(e) => e.event_type.clone(),
            Self::Timeout { name, .. } => format!("timeout:{name}"),
        }
    }
}

/// An event a step emits onto its instance's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emit {
    pub event_type: String,
    pub payload: Value,
}

/// A timeout to set: due `after` the step commits, by PostgreSQL's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub name: String,
    #[serde(with = "millis")]
    pub after: Duration,
    pub payload: Value,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// How an instance ends. Ending deletes its timeouts and associations in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Completed,
    Compensated,
    /// Terminal and alerting: for example a compensation that failed or missed its deadline.
    Failed(String),
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<S> {
    pub state: S,
    pub emit: Vec<Emit>,
    pub schedule: Vec<Timer>,
    pub cancel: Vec<String>,
    /// Cancel every pending timeout of the instance before `schedule` is applied.
    pub cancel_all: bool,
    pub associate: Vec<(String, String)>,
    /// Compensations to remember; emitted in reverse order by [`Step::compensate`].
    pub on_compensate: Vec<Emit>,
    /// Emit the remembered compensations (newest first) and turn `compensating`. The instance
    /// must then have a pending timeout (its compensation deadline).
    pub compensate: Option<String>,
    pub end: Option<End>,
}

impl<S> Step<S> {
    /// A step that only keeps `state`.
    pub fn new(state: S) -> Self {
        Self {
            state,
            emit: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            cancel_all: false,
            associate: Vec::new(),
            on_compensate: Vec::new(),
            compensate: None,
            end: None,
        }
    }

    pub fn emit(mut self, event_type: &str, payload: Value) -> Self {
        self.emit.push(Emit {
            event_type: event_type.to_owned(),
            payload,
        });
        self
    }

    pub fn schedule(mut self, name: &str, after: Duration, payload: Value) -> Self {
        self.schedule.push(Timer {
            name: name.to_owned(),
            after,
            payload,
        });
        self
    }

    pub fn cancel(mut self, name: &str) -> Self {
        self.cancel.push(name.to_owned());
        self
    }

    pub fn cancel_all(mut self) -> Self {
        self.cancel_all = true;
        self
    }

    pub fn associate(mut self, key: &str, value: impl Into<String>) -> Self {
        self.associate.push((key.to_owned(), value.into()));
        self
    }

    pub fn on_compensate(mut self, event_type: &str, payload: Value) -> Self {
        self.on_compensate.push(Emit {
            event_type: event_type.to_owned(),
            payload,
        });
        self
    }

    /// Starts compensating, for `reason`.
    pub fn compensate(mut self, reason: impl Into<String>) -> Self {
        self.compensate = Some(reason.into());
        self
    }

    pub fn end(mut self, end: End) -> Self {
        self.end = Some(end);
        self
    }

    fn map<T>(self, f: impl FnOnce(S) -> T) -> Step<T> {
        Step {
            state: f(self.state),
            emit: self.emit,
            schedule: self.schedule,
            cancel: self.cancel,
            cancel_all: self.cancel_all,
            associate: self.associate,
            on_compensate: self.on_compensate,
            compensate: self.compensate,
            end: self.end,
        }
    }
}

/// What a decided step means for its instance, the one rule the runner writes by and
/// `keel replay saga --check` compares by.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The step's own events, then on compensation the remembered ones, newest first.
    pub outputs: Vec<Emit>,
    /// The compensations still remembered after it (none once the instance ended).
    pub remembered: Vec<Emit>,
    pub status: &'static str,
}

impl<S> Step<S> {
    /// Settles this step for an instance whose status was `before` (`new` for a first step)
    /// and which remembered `remembered`.
    pub fn settle(&self, before: &str, mut remembered: Vec<Emit>) -> Settled {
        let mut outputs = self.emit.clone();
        if self.compensate.is_some() {
            outputs.extend(remembered.drain(..).rev());
        }
        remembered.extend(self.on_compensate.iter().cloned());
        let status = match (&self.end, &self.compensate) {
            (Some(End::Completed), _) => "completed",
            (Some(End::Compensated), _) => "compensated",
            (Some(End::Failed(_)), _) => "failed",
            (None, Some(_)) => "compensating",
            (None, None) if before == "compensating" => "compensating",
            (None, None) => "active",
        };
        if store::is_ended(status) {
            remembered.clear();
        }
        Settled {
            outputs,
            remembered,
            status,
        }
    }
}

/// Why a step did not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Try again later, in place (the input is not passed over).
    #[error("retriable: {0}")]
    Retriable(String),
    /// Park the instance: its later inputs are held until an operator redrives it.
    #[error("{0}")]
    Permanent(String),
}

/// A saga definition, shaped like [`crate::projection::Projection`].
pub trait Saga: Send + Sync + 'static {
    type State: Serialize + DeserializeOwned + Default + Send;
    /// Unique, `[a-z0-9_]+`: the instances' streams are `saga.<name>/<instance>`.
    fn name(&self) -> &'static str;
    fn routes(&self) -> Vec<Route>;
    /// The schema version inputs are resolved to (upcasting), as for projections.
    fn reader(&self) -> VersionSpec {
        VersionSpec::Latest
    }
    /// The version of `State`'s shape. A runner never overwrites state written by a newer one.
    fn state_version(&self) -> u32 {
        1
    }
    /// Turns state written at version `from` into the next version's shape.
    fn upcast_state(&self, from: u32, _state: Value) -> anyhow::Result<Value> {
        anyhow::bail!(
            "no upcaster from state version {from} to {}",
            self.state_version()
        )
    }
    /// Pure: no IO, no clock, no randomness. Time arrives as [`Input::Timeout`].
    fn handle(&self, state: &Self::State, input: &Input) -> Result<Step<Self::State>, StepError>;
}

/// A saga with its state as JSON, so that runners can hold any definition.
pub trait DynSaga: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn routes(&self) -> Vec<Route>;
    fn reader(&self) -> VersionSpec;
    fn state_version(&self) -> u32;
    /// The stored state (`None`: a new instance) brought to the current version.
    fn load(&self, stored: Option<(Value, u32)>) -> Result<Value, StepError>;
    fn handle(&self, state: &Value, input: &Input) -> Result<Step<Value>, StepError>;
}

impl<T: Saga> DynSaga for T {
    fn name(&self) -> &'static str {
        Saga::name(self)
    }

    fn routes(&self) -> Vec<Route> {
        Saga::routes(self)
    }

    fn reader(&self) -> VersionSpec {
        Saga::reader(self)
    }

    fn state_version(&self) -> u32 {
        Saga::state_version(self)
    }

    fn load(&self, stored: Option<(Value, u32)>) -> Result<Value, StepError> {
        let current = Saga::state_version(self);
        let Some((mut state, mut version)) = stored else {
            return serde_json::to_value(T::State::default()).map_err(|e| {
                StepError::Permanent(format!("the initial state does not encode: {e}"))
            });
        };
        if version > current {
            return Err(StepError::Retriable(format!(
                "the instance's state was written by a newer definition (state version {version}, this runner knows {current}); it is left alone"
            )));
        }
        while version < current {
            state = self.upcast_state(version, state).map_err(|e| {
                StepError::Permanent(format!("upcasting the state from version {version}: {e:#}"))
            })?;
            version += 1;
        }
        Ok(state)
    }

    fn handle(&self, state: &Value, input: &Input) -> Result<Step<Value>, StepError> {
        let typed: T::State = serde_json::from_value(state.clone())
            .map_err(|e| StepError::Permanent(format!("the stored state does not decode: {e}")))?;
        let step = Saga::handle(self, &typed, input)?;
        let encoded = serde_json::to_value(&step.state)
            .map_err(|e| StepError::Permanent(format!("the new state does not encode: {e}")))?;
        Ok(step.map(|_| encoded))
    }
}

/// The aggregate type of a saga's instance streams.
pub fn stream_type(saga: &str) -> String {
    format!("saga.{saga}")
}

/// The instance of `saga` for correlation key `key`: the same key always gives the same id (and
/// so the same lock), so two racing starts meet on one instance.
pub fn instance_id(saga: &str, key: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{saga}\n{key}").as_bytes())
}

/// The id of the event at `version` of an instance's stream: a retried step emits the same ids.
pub fn event_id(instance: Uuid, version: i32) -> Uuid {
    Uuid::new_v5(&instance, format!("v{version}").as_bytes())
}

/// keel's namespace for saga ids (UUIDv5).
const NAMESPACE: Uuid = Uuid::from_u128(0x6b65_656c_7361_6761_8000_0000_0000_0001);

/// The sagas keel ships, with their settings.
pub fn builtin(config: &crate::config::SagasConfig) -> Vec<Arc<dyn DynSaga>> {
    vec![Arc::new(op_verify::OpVerify::new(&config.op_verify))]
}
