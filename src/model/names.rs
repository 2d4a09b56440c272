//! Newtypes for the names that route events: event types and aggregate types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A name that failed validation, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

/// Checks `value` against the shared naming rule: 1..=max characters of lowercase ASCII letters,
/// digits, `.`, `_` and `-`, starting with a letter. These names become Kafka topic names, Redis
/// keys and Avro namespaces, so the rule is deliberately narrow.
fn check(kind: &'static str, value: &str, max: usize) -> Result<(), InvalidName> {
    let fail = |rule| {
        Err(InvalidName {
            kind,
            value: value.chars().take(200).collect(),
            rule,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > max {
        return fail("is too long");
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("must start with a lowercase letter");
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if !value.chars().all(allowed) {
        return fail("may contain only a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                check($kind, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An event type such as `agent.state.changed`. Known types are listed in the catalog.
    EventType,
    "event type",
    128
);

name_type!(
    /// An aggregate type such as `agent`. Together with an aggregate id it names one stream.
    AggregateType,
    "aggregate type",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_lowercase_names() {
        for ok in [
            "agent.state.changed",
            "l12.service_invoked",
            "state_change",
            "a-b",
        ] {
            assert!(EventType::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_that_cannot_become_topics() {
        for (bad, rule) in [
            ("", "must not be empty"),
            ("Agent", "must start with a lowercase letter"),
            ("1agent", "must start with a lowercase letter"),
            ("agent state", "may contain only a-z, 0-9, '.', '_' and '-'"),
            ("agent/x", "may contain only a-z, 0-9, '.', '_' and '-'"),
        ] {
            assert_eq!(AggregateType::parse(bad).unwrap_err().rule, rule, "{bad:?}");
        }
        assert_eq!(
            AggregateType::parse("a".repeat(65)).unwrap_err().rule,
            "is too long"
        );
    }
}
