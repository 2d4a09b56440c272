//! `op_verify`: an operation that reports success on an agent must be verified by that agent
//! within a deadline, else it is rolled back; the rollback has a deadline of its own.
//!
//! | status + input | outputs | timers | next |
//! |---|---|---|---|
//! | none + `control.operation.completed` (deploy, scale or restart; succeeded; names `agent_id`) | `control.verification.requested` | set `verify_deadline` | active |
//! | active + `agent.verification.completed` passed | `state_change` operation → `verified` | cancel all | completed |
//! | active + verification failed, the agent crashed/failed/terminated (`agent.state.changed`, by association), or `verify_deadline` | `state_change` → `rollback_requested`, then the remembered `control.rollback.requested` | set `rollback_deadline` | compensating |
//! | compensating + `control.operation.completed` with `operation` = rollback and `undoes` = the operation, succeeded | `state_change` → `rolled_back` | — | compensated |
//! | compensating + that rollback failed, or `rollback_deadline` | `state_change` → `rollback_failed` | — | failed |
//! | anything else | none (the step is recorded) | — | unchanged |
//!
//! The correlation key is the operation id: `undoes` for a rollback's completion, else
//! `operation_id`. An operation names its agent in `agent_id` (`control.operation.completed` v2);
//! one that names none never starts the saga.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Correlate, End, Input, Route, Saga, Start, Step, StepError};
use crate::config::OpVerifyConfig;
use crate::model::RecordedEvent;

pub const NAME: &str = "op_verify";
/// Operations that are verified.
const VERIFIED_OPERATIONS: [&str; 3] = ["deploy", "scale", "restart"];
/// Agent states that fail a verification outright.
const FAILED_AGENT_STATES: [&str; 3] = ["crashed", "failed", "terminated"];

pub struct OpVerify {
    verify_deadline: Duration,
    rollback_deadline: Duration,
}

impl OpVerify {
    pub fn new(config: &OpVerifyConfig) -> Self {
        Self {
            verify_deadline: Duration::from_millis(config.verify_deadline_ms),
            rollback_deadline: Duration::from_millis(config.rollback_deadline_ms),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub operation_id: String,
    pub operation: String,
    pub agent_id: String,
    /// Why the operation is being rolled back, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn starts(e: &RecordedEvent) -> bool {
    let p = &e.payload;
    p["succeeded"] == json!(true)
        && p["operation"]
            .as_str()
            .is_some_and(|o| VERIFIED_OPERATIONS.contains(&o))
        && p["agent_id"].as_str().is_some()
        && p["undoes"].is_null()
}

impl Saga for OpVerify {
    type State = State;

    fn name(&self) -> &'static str {
        NAME
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route {
                event_type: "control.operation.completed",
                correlate: vec![Correlate::Field("undoes"), Correlate::Field("operation_id")],
                start: Start::When(starts),
            },
            Route {
                event_type: "agent.verification.completed",
                correlate: vec![Correlate::Field("operation_id")],
                start: Start::Never,
            },
            Route {
                event_type: "agent.state.changed",
                correlate: vec![Correlate::Association {
                    key: "agent_id",
                    field: "agent_id",
                }],
                start: Start::Never,
            },
        ]
    }

    fn handle(&self, state: &State, input: &Input) -> Result<Step<State>, StepError> {
        let compensating = state.reason.is_some();
        match input {
            Input::Event(e) => self.on_event(state, compensating, e),
            Input::Timeout { name, .. } => Ok(match (name.as_str(), compensating) {
                ("verify_deadline", false) => self.roll_back(
                    state,
                    format!(
                        "no verification within {} ms",
                        self.verify_deadline.as_millis()
                    ),
                ),
                ("rollback_deadline", true) => self.rollback_failed(
                    state,
                    format!(
                        "the rollback did not finish within {} ms",
                        self.rollback_deadline.as_millis()
                    ),
                ),
                _ => Step::new(state.clone()),
            }),
        }
    }
}

impl OpVerify {
    fn on_event(
        &self,
        state: &State,
        compensating: bool,
        e: &RecordedEvent,
    ) -> Result<Step<State>, StepError> {
        let p = &e.payload;
        let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
        Ok(match e.event_type.as_str() {
            "control.operation.completed" if state.operation_id.is_empty() => {
                // A new instance (only a start-capable completion gets here).
                let next = State {
                    operation_id: text("operation_id"),
                    operation: text("operation"),
                    agent_id: text("agent_id"),
                    reason: None,
                };
                let deadline = self.verify_deadline.as_millis() as i64;
                Step::new(next.clone())
                    .emit(
                        "control.verification.requested",
                        json!({"operation_id": next.operation_id, "agent_id": next.agent_id,
                               "operation": next.operation, "check": "smoke", "deadline_ms": deadline}),
                    )
                    .schedule("verify_deadline", self.verify_deadline, Value::Null)
                    .associate("agent_id", next.agent_id.clone())
                    .on_compensate(
                        "control.rollback.requested",
                        json!({"operation_id": next.operation_id, "agent_id": next.agent_id,
                               "deadline_ms": self.rollback_deadline.as_millis() as i64}),
                    )
            }
            "control.operation.completed"
                if compensating
                    && p["operation"] == json!("rollback")
                    && p["undoes"].as_str() == Some(state.operation_id.as_str()) =>
            {
                if p["succeeded"] == json!(true) {
                    Step::new(state.clone())
                        .emit(
                            "state_change",
                            self.change(state, "rollback_requested", "rolled_back", None),
                        )
                        .end(End::Compensated)
                } else {
                    self.rollback_failed(
                        state,
                        format!(
                            "the rollback failed: {}",
                            p["message"].as_str().unwrap_or("no message")
                        ),
                    )
                }
            }
            "agent.verification.completed" if !compensating => {
                if p["passed"] == json!(true) {
                    Step::new(state.clone())
                        .emit(
                            "state_change",
                            self.change(state, "verifying", "verified", None),
                        )
                        .cancel_all()
                        .end(End::Completed)
                } else {
                    self.roll_back(
                        state,
                        format!(
                            "the verification failed: {}",
                            p["detail"].as_str().unwrap_or("no detail")
                        ),
                    )
                }
            }
            "agent.state.changed"
                if !compensating
                    && FAILED_AGENT_STATES
                        .contains(&p["to_state"].as_str().unwrap_or_default()) =>
            {
                self.roll_back(state, format!("the agent is {}", text("to_state")))
            }
            // A duplicate start, a late verification, another agent state: recorded, no effect.
            _ => Step::new(state.clone()),
        })
    }

    fn change(&self, state: &State, from: &str, to: &str, reason: Option<&str>) -> Value {
        let mut attributes = json!({"operation": state.operation, "agent_id": state.agent_id});
        if let Some(r) = reason {
            attributes["reason"] = json!(r);
        }
        json!({"entity": format!("operation:{}", state.operation_id), "from_state": from,
               "to_state": to, "attributes": attributes})
    }

    fn roll_back(&self, state: &State, reason: String) -> Step<State> {
        let next = State {
            reason: Some(reason.clone()),
            ..state.clone()
        };
        Step::new(next)
            .emit(
                "state_change",
                self.change(state, "verifying", "rollback_requested", Some(&reason)),
            )
            .cancel_all()
            .schedule("rollback_deadline", self.rollback_deadline, Value::Null)
            .compensate(reason)
    }

    fn rollback_failed(&self, state: &State, reason: String) -> Step<State> {
        Step::new(state.clone())
            .emit(
                "state_change",
                self.change(
                    state,
                    "rollback_requested",
                    "rollback_failed",
                    Some(&reason),
                ),
            )
            .end(End::Failed(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn saga() -> OpVerify {
        OpVerify::new(&OpVerifyConfig {
            verify_deadline_ms: 5_000,
            rollback_deadline_ms: 9_000,
        })
    }

    fn event(event_type: &str, payload: Value) -> Input {
        Input::Event(Box::new(RecordedEvent {
            id: Uuid::new_v4(),
            position: 1,
            aggregate_type: "x".into(),
            aggregate_id: Uuid::new_v4(),
            version: 1,
            event_type: event_type.into(),
            schema_id: None,
            schema_version: None,
            payload,
            metadata: json!({}),
            created_at: Utc::now(),
        }))
    }

    fn completed(op: &str, operation: &str, succeeded: bool, undoes: Option<&str>) -> Input {
        event(
            "control.operation.completed",
            json!({"operation_id": op, "operation": operation, "target": "agent:a", "succeeded": succeeded,
                   "duration_ms": 5, "message": null, "agent_id": "7d0e0f7e-8f56-4a43-9a7e-1b1f0d7f8d11", "undoes": undoes}),
        )
    }

    fn timeout(name: &str) -> Input {
        Input::Timeout {
            name: name.into(),
            payload: Value::Null,
            due_at: Utc::now(),
        }
    }

    fn types(step: &Step<State>) -> Vec<(String, Option<String>)> {
        step.emit
            .iter()
            .map(|e| {
                (
                    e.event_type.clone(),
                    e.payload["to_state"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn a_successful_deploy_requests_a_verification_with_a_deadline_and_remembers_its_rollback() {
        let s = saga();
        let Input::Event(start) = completed("op-1", "deploy", true, None) else {
            unreachable!()
        };
        assert!(starts(&start));
        let Input::Event(failed) = completed("op-1", "deploy", false, None) else {
            unreachable!()
        };
        assert!(!starts(&failed));
        let Input::Event(rollback) = completed("op-2", "rollback", true, Some("op-1")) else {
            unreachable!()
        };
        assert!(!starts(&rollback));
        let step = s.handle(&State::default(), &Input::Event(start)).unwrap();
        assert_eq!(
            types(&step),
            [("control.verification.requested".into(), None)]
        );
        assert_eq!(step.schedule[0].name, "verify_deadline");
        assert_eq!(step.schedule[0].after, Duration::from_millis(5_000));
        assert_eq!(
            step.on_compensate[0].event_type,
            "control.rollback.requested"
        );
        assert_eq!(step.associate[0].0, "agent_id");
        assert!(step.end.is_none() && step.compensate.is_none());
    }

    #[test]
    fn each_path_ends_as_the_table_says() {
        let s = saga();
        let started = s
            .handle(&State::default(), &completed("op-1", "deploy", true, None))
            .unwrap()
            .state;
        let ok = s
            .handle(
                &started,
                &event(
                    "agent.verification.completed",
                    json!({"passed": true, "operation_id": "op-1"}),
                ),
            )
            .unwrap();
        assert_eq!(ok.end, Some(End::Completed));
        assert_eq!(
            types(&ok),
            [("state_change".into(), Some("verified".into()))]
        );

        let late = s.handle(&started, &timeout("verify_deadline")).unwrap();
        assert!(late.compensate.is_some());
        assert_eq!(late.schedule[0].name, "rollback_deadline");
        let comp = late.state;
        let rolled = s
            .handle(&comp, &completed("op-9", "rollback", true, Some("op-1")))
            .unwrap();
        assert_eq!(rolled.end, Some(End::Compensated));
        let failed = s
            .handle(&comp, &completed("op-9", "rollback", false, Some("op-1")))
            .unwrap();
        assert!(matches!(failed.end, Some(End::Failed(_))));
        let expired = s.handle(&comp, &timeout("rollback_deadline")).unwrap();
        assert!(matches!(expired.end, Some(End::Failed(_))));
        // A verification arriving during the rollback changes nothing.
        let ignored = s
            .handle(
                &comp,
                &event("agent.verification.completed", json!({"passed": true})),
            )
            .unwrap();
        assert!(ignored.emit.is_empty() && ignored.end.is_none());
        // The agent crashing compensates before the deadline.
        let crashed = s
            .handle(
                &started,
                &event("agent.state.changed", json!({"to_state": "crashed"})),
            )
            .unwrap();
        assert!(crashed.compensate.is_some());
        let fine = s
            .handle(
                &started,
                &event("agent.state.changed", json!({"to_state": "busy"})),
            )
            .unwrap();
        assert!(fine.compensate.is_none() && fine.emit.is_empty());
    }
}
