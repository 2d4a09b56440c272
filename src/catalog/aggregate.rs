//! Per aggregate type: which part of an aggregate's history a purge may take, from
//! `schemas/_aggregates/<aggregate type>.toml`.
//!
//! Purge never leaves a hole in an aggregate's history: whatever the event types' policies say,
//! an aggregate loses only a prefix of its versions. [`History`] says how long that prefix may be.
//! It belongs to the aggregate type, not to an event type, because one aggregate's history mixes
//! the events of several types (and a type without `aggregate_type` may land on any aggregate).

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Which of an aggregate's events a purge may delete, on top of each event's own type policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "history", rename_all = "snake_case")]
pub enum History {
    /// The default: the versions below the aggregate's first version that its own type's policy
    /// does not yet let go.
    #[default]
    Prefix,
    /// Nothing: the aggregate's events are archived but never purged.
    Full,
    /// Like `Prefix`, and only the versions strictly below the version of the aggregate's latest
    /// stored snapshot of `snapshot_kind` (table `aggregate_snapshots`); the snapshot stays, and
    /// an aggregate with no snapshot of that kind loses nothing.
    AfterSnapshot { snapshot_kind: String },
}

/// `prefix`, `full`, or `after_snapshot (kind agent-v1)`, for plans and status output.
impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            History::Prefix => f.write_str("prefix"),
            History::Full => f.write_str("full"),
            History::AfterSnapshot { snapshot_kind } => {
                write!(f, "after_snapshot (kind {snapshot_kind})")
            }
        }
    }
}

/// One aggregate type's file in `schemas/_aggregates/`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AggregateSpec {
    #[serde(flatten)]
    pub history: History,
    pub description: Option<String>,
}

impl AggregateSpec {
    /// What an aggregate type without a file gets: [`History::Prefix`].
    pub const DEFAULT: Self = Self {
        history: History::Prefix,
        description: None,
    };
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    history: Option<String>,
    snapshot_kind: Option<String>,
    description: Option<String>,
}

/// Reads and checks one `_aggregates/<type>.toml`. Errors name the file and the key.
pub(super) fn load(path: &Path) -> anyhow::Result<AggregateSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    parse(file).with_context(|| path.display().to_string())
}

fn parse(file: File) -> anyhow::Result<AggregateSpec> {
    let choices = r#"use "prefix", "full" or "after_snapshot""#;
    let history = match (file.history.as_deref(), file.snapshot_kind) {
        (None, _) => bail!("history is missing: {choices}"),
        (Some("after_snapshot"), Some(kind)) if !kind.trim().is_empty() => {
            History::AfterSnapshot {
                snapshot_kind: kind,
            }
        }
        (Some("after_snapshot"), Some(_)) => bail!("snapshot_kind is empty: name the snapshot kind that counts, as stored in aggregate_snapshots.kind"),
        (Some("after_snapshot"), None) => bail!(
            r#"history = "after_snapshot" needs snapshot_kind = "...": the snapshot kind whose latest snapshot decides what may go"#
        ),
        (Some(other @ ("prefix" | "full")), Some(_)) => {
            bail!(r#"snapshot_kind applies only to history = "after_snapshot", not {other:?}: remove it"#)
        }
        (Some("prefix"), None) => History::Prefix,
        (Some("full"), None) => History::Full,
        (Some(other), _) => bail!("history {other:?}: {choices}"),
    };
    Ok(AggregateSpec {
        history,
        description: file.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<AggregateSpec, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        parse(file).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn each_history_rule_is_read_with_its_description() {
        assert_eq!(
            spec(r#"history = "prefix""#).unwrap(),
            AggregateSpec::DEFAULT
        );
        assert_eq!(
            spec("history = \"full\"\ndescription = \"audit trail\"").unwrap(),
            AggregateSpec {
                history: History::Full,
                description: Some("audit trail".into())
            }
        );
        let after = spec("history = \"after_snapshot\"\nsnapshot_kind = \"agent-v1\"").unwrap();
        assert_eq!(
            after.history,
            History::AfterSnapshot {
                snapshot_kind: "agent-v1".into()
            }
        );
        assert_eq!(after.history.to_string(), "after_snapshot (kind agent-v1)");
        assert_eq!(
            serde_json::to_value(&after).unwrap(),
            serde_json::json!({"history": "after_snapshot", "snapshot_kind": "agent-v1",
                "description": null})
        );
        assert_eq!(
            serde_json::to_value(AggregateSpec::DEFAULT).unwrap(),
            serde_json::json!({"history": "prefix", "description": null})
        );
    }

    #[test]
    fn a_snapshot_kind_goes_with_after_snapshot_and_only_with_it() {
        assert_eq!(
            spec(r#"history = "after_snapshot""#).unwrap_err(),
            r#"history = "after_snapshot" needs snapshot_kind = "...": the snapshot kind whose latest snapshot decides what may go"#
        );
        assert_eq!(
            spec("history = \"after_snapshot\"\nsnapshot_kind = \" \"").unwrap_err(),
            "snapshot_kind is empty: name the snapshot kind that counts, as stored in aggregate_snapshots.kind"
        );
        for rule in ["prefix", "full"] {
            assert_eq!(
                spec(&format!(
                    "history = \"{rule}\"\nsnapshot_kind = \"agent-v1\""
                ))
                .unwrap_err(),
                format!(
                    r#"snapshot_kind applies only to history = "after_snapshot", not "{rule}": remove it"#
                )
            );
        }
    }

    #[test]
    fn a_missing_or_unknown_history_or_key_is_refused() {
        let choices = r#"use "prefix", "full" or "after_snapshot""#;
        assert_eq!(
            spec(r#"description = "x""#).unwrap_err(),
            format!("history is missing: {choices}")
        );
        assert_eq!(
            spec(r#"history = "all""#).unwrap_err(),
            format!(r#"history "all": {choices}"#)
        );
        let typo = spec(r#"histroy = "full""#).unwrap_err();
        assert!(typo.contains("unknown field `histroy`"), "{typo}");
    }
}
