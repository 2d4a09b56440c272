//! The closed sets of names a job's row holds: its [`Kind`] and its [`State`], stored as text.

use serde::Serialize;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Rebuild a projection from the event store; the target is the projection.
    Rebuild,
    /// Re-send stored events; the target is the topic.
    Republish,
}

/// Where a job stands. Every state but `running` is an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Done,
    Failed,
    Cancelled,
    /// Its process died or stopped while it ran.
    Interrupted,
}

macro_rules! words {
    ($name:ident { $($variant:ident = $text:literal),+ }) => {
        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// The value of this name, or `None`.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words!(Kind { Rebuild = "rebuild", Republish = "republish" });
words!(State {
    Running = "running",
    Done = "done",
    Failed = "failed",
    Cancelled = "cancelled",
    Interrupted = "interrupted"
});

impl State {
    /// Whether a job that ended so may be run again ([`Jobs::resumable`]).
    pub fn resumable(self) -> bool {
        matches!(self, Self::Interrupted | Self::Cancelled | Self::Failed)
    }
}
