//! The state of a row set aside because it could not be delivered: the relay's `relay_parked`
//! (an event a sink refused) and the consumer's `consumer_dlq` (a record a handler refused) share
//! one state machine.
//!
//! * **parked**: it failed for good; it waits for an operator (`retry` or `skip`).
//! * **held**: an earlier row of its aggregate (its key) is parked; it waits behind it, in order.
//! * **retry**: an operator released it; it is delivered again, in order, stopping at the first
//!   row that fails again.
//!
//! The relay deletes a row once it is delivered or skipped; the dead-letter store keeps it as
//! **delivered** or **skipped**, closed. Stored as the same lowercase text the migrations'
//! `CHECK` constraints list. SQL statements keep these words as literals, so that the planner
//! matches them to the partial index on open rows.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Where a parked or dead-letter row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkState {
    /// Failed for good; waits for an operator.
    Parked,
    /// Waits behind a parked row of its aggregate or key.
    Held,
    /// Released by an operator; to be delivered again, in order.
    Retry,
    /// A dead-letter row redelivered and handled (the relay deletes such rows instead).
    Delivered,
    /// A dead-letter row an operator gave up on (the relay deletes such rows instead).
    Skipped,
}

impl ParkState {
    /// The text stored in the `state` columns.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParkState::Parked => "parked",
            ParkState::Held => "held",
            ParkState::Retry => "retry",
            ParkState::Delivered => "delivered",
            ParkState::Skipped => "skipped",
        }
    }

    /// Still waiting to be delivered: parked, held or released for a retry.
    pub const fn is_open(self) -> bool {
        matches!(self, ParkState::Parked | ParkState::Held | ParkState::Retry)
    }
}

impl fmt::Display for ParkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that table layouts (`{:<9}`) apply.
        f.pad(self.as_str())
    }
}

/// A `state` text that is none of keel's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown parked-row state {0:?}")]
pub struct UnknownParkState(pub String);

impl FromStr for ParkState {
    type Err = UnknownParkState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ParkState::Parked,
            ParkState::Held,
            ParkState::Retry,
            ParkState::Delivered,
            ParkState::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| UnknownParkState(s.to_owned()))
    }
}

/// For `#[sqlx(try_from = "String")]` on row structs, which keeps sqlx out of this module.
impl TryFrom<String> for ParkState {
    type Error = UnknownParkState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ParkState; 5] = [
        ParkState::Parked,
        ParkState::Held,
        ParkState::Retry,
        ParkState::Delivered,
        ParkState::Skipped,
    ];

    #[test]
    fn each_state_is_stored_as_the_text_the_migrations_allow() {
        let texts: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(texts, ["parked", "held", "retry", "delivered", "skipped"]);
        for state in ALL {
            assert_eq!(state.as_str().parse::<ParkState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(
            "Parked".parse::<ParkState>(),
            Err(UnknownParkState("Parked".into()))
        );
    }

    #[test]
    fn only_parked_held_and_retry_rows_are_open() {
        let open: Vec<ParkState> = ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, [ParkState::Parked, ParkState::Held, ParkState::Retry]);
    }

    #[test]
    fn display_pads_like_a_string() {
        assert_eq!(format!("[{:<7}]", ParkState::Held), "[held   ]");
    }
}
