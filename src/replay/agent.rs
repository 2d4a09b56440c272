//! The `agent` aggregate's state, folded from its history: its lifecycle state, from
//! `agent.state.changed` (the same fields [`crate::projection::agent_status`] keeps per agent), and
//! the tasks it completed, from `agent.task.completed`.
//!
//! Payloads are read as [`super::history`] resolves them, to their type's latest schema. An
//! event of another type, or one missing a field the state needs, changes only `version`: a
//! fold never fails on history it cannot interpret.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Aggregate, Snapshot};
use crate::model::RecordedEvent;

/// The aggregate type this state is of.
pub const AGGREGATE_TYPE: &str = "agent";

/// An agent as of some version of its history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The lifecycle state the last `agent.state.changed` moved it to; `None` before the first.
    pub state: Option<String>,
    /// The state it left then (`from_state`); `None` for a newly created agent.
    pub previous_state: Option<String>,
    /// Why it last changed state.
    pub reason: Option<String>,
    /// When the last state change was written.
    pub changed_at: Option<DateTime<Utc>>,
    /// State changes so far.
    pub transitions: u64,
    /// Tasks completed so far.
    pub tasks: Tasks,
    /// The last task it completed.
    pub last_task: Option<Task>,
    /// The version of the last event folded in (0 before any).
    pub version: i32,
}

/// Completed tasks by outcome, and their summed duration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub total_duration_ms: i64,
}

/// One completed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    /// `SUCCEEDED`, `FAILED` or `CANCELLED`.
    pub outcome: String,
    pub duration_ms: i64,
    pub error: Option<String>,
    /// When the completion was written.
    pub completed_at: DateTime<Utc>,
}

fn text(payload: &Value, field: &str) -> Option<String> {
    payload
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Aggregate for AgentState {
    fn apply(&mut self, event: &RecordedEvent) {
        self.version = event.version;
        let p = &event.payload;
        match event.event_type.as_str() {
            "agent.state.changed" => {
                let Some(to) = text(p, "to_state") else {
                    return;
                };
                self.state = Some(to);
                self.previous_state = text(p, "from_state");
                self.reason = text(p, "reason");
                self.changed_at = Some(event.created_at);
                self.transitions += 1;
            }
            "agent.task.completed" => {
                let (Some(task_id), Some(outcome)) = (text(p, "task_id"), text(p, "outcome"))
                else {
                    return;
                };
                let duration_ms = p.get("duration_ms").and_then(Value::as_i64).unwrap_or(0);
                match outcome.as_str() {
                    "SUCCEEDED" => self.tasks.succeeded += 1,
                    "FAILED" => self.tasks.failed += 1,
                    "CANCELLED" => self.tasks.cancelled += 1,
                    _ => {}
                }
                self.tasks.total_duration_ms += duration_ms;
                self.last_task = Some(Task {
                    task_id,
                    outcome,
                    duration_ms,
                    error: text(p, "error"),
                    completed_at: event.created_at,
                });
            }
            _ => {}
        }
    }
}

impl Snapshot for AgentState {
    const KIND: &'static str = "agent-v1";
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn event(version: i32, event_type: &str, payload: Value) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::new_v4(),
            position: i64::from(version),
            aggregate_type: AGGREGATE_TYPE.into(),
            aggregate_id: Uuid::nil(),
            version,
            event_type: event_type.into(),
            schema_id: None,
            schema_version: None,
            payload,
            metadata: json!({}),
            created_at: DateTime::from_timestamp(1_800_000_000 + i64::from(version), 0).unwrap(),
        }
    }

    fn fold(events: &[RecordedEvent]) -> AgentState {
        let mut state = AgentState::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    fn history() -> Vec<RecordedEvent> {
        vec![
            event(
                1,
                "agent.state.changed",
                json!({"to_state": "idle", "from_state": null}),
            ),
            event(
                2,
                "agent.state.changed",
                json!({"from_state": "idle", "to_state": "busy", "reason": "task t1"}),
            ),
            event(
                3,
                "agent.task.completed",
                json!({"task_id": "t1", "outcome": "SUCCEEDED", "duration_ms": 120}),
            ),
            event(
                4,
                "agent.task.completed",
                json!({"task_id": "t2", "outcome": "FAILED", "duration_ms": 30, "error": "boom"}),
            ),
            event(
                5,
                "agent.state.changed",
                json!({"from_state": "busy", "to_state": "idle"}),
            ),
        ]
    }

    #[test]
    fn state_changes_set_the_lifecycle_state_and_count_transitions() {
        let state = fold(&history()[..2]);
        assert_eq!(state.state.as_deref(), Some("busy"));
        assert_eq!(state.previous_state.as_deref(), Some("idle"));
        assert_eq!(state.reason.as_deref(), Some("task t1"));
        assert_eq!(state.changed_at, Some(history()[1].created_at));
        assert_eq!((state.transitions, state.version), (2, 2));
        assert_eq!(state.last_task, None);
    }

    #[test]
    fn completed_tasks_count_by_outcome_and_the_last_one_is_kept() {
        let state = fold(&history());
        assert_eq!(
            state.tasks,
            Tasks {
                succeeded: 1,
                failed: 1,
                cancelled: 0,
                total_duration_ms: 150
            }
        );
        let last = state.last_task.clone().unwrap();
        assert_eq!(
            (last.task_id.as_str(), last.error.as_deref()),
            ("t2", Some("boom"))
        );
        // The last state change came after the tasks; the reason of the one before is gone.
        assert_eq!(state.state.as_deref(), Some("idle"));
        assert_eq!(state.reason, None);
        assert_eq!((state.transitions, state.version), (3, 5));
    }

    #[test]
    fn an_event_it_cannot_interpret_moves_only_the_version() {
        let before = fold(&history()[..2]);
        let mut after = before.clone();
        after.apply(&event(3, "agent.renamed", json!({"name": "x"})));
        after.apply(&event(
            4,
            "agent.state.changed",
            json!({"from_state": "busy"}),
        ));
        assert_eq!(
            after,
            AgentState {
                version: 4,
                ..before
            }
        );
    }
}
