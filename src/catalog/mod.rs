//! The event catalog: the folder `schemas/`, one sub-folder per event type, and one file per
//! aggregate type that says how much of its history a purge may take.
//!
//! ```text
//! schemas/agent.state.changed/event.toml   description, owner, aggregate_type, topic,
//!                                           compatibility, retention
//! schemas/agent.state.changed/v1.avsc      Avro schema, version 1
//! schemas/agent.state.changed/v2.avsc      ... versions are contiguous from 1
//! schemas/_aggregates/agent.toml           history = "prefix" | "full" | "after_snapshot"
//! ```
//!
//! The catalog decides which event types exist. An append of a type it does not list is refused
//! before it reaches the database.
//!
//! **Retention** (see [`retention`]): `retention = "90d"` keeps events 90 days in PostgreSQL and
//! then lets them go once a verified archive holds them. The table form says it all:
//!
//! ```toml
//! [retention]
//! hot = "90d"            # d, w (7 days) or y (365 days); at least 1d; or "forever"
//! archive = "required"   # or "none", which needs allow_loss = true
//! cold = "7y"            # how long the archive keeps them; default "forever"
//! legal_hold = false     # true blocks every purge of the type
//! ```
//!
//! No key means forever: the type is never purged. A type's policy is only the first guard; the
//! aggregate's history rule (see [`aggregate`]) decides which of the eligible events may go
//! without leaving a hole. An aggregate type without a file in `_aggregates/` gets `prefix`.
//!
//! A file in `_aggregates/` for an aggregate type that no event type can be appended to (every
//! type names its `aggregate_type` and none names this one) is accepted, since it does no harm,
//! but logged as a warning: it is most likely a misspelt name, and the aggregate it meant gets the
//! default. Everything malformed (an unknown key, a bad age, a contradiction) fails the load,
//! naming the file and the key, so that a broken catalog stops `keel serve` and `keel schema
//! sync` rather than half-loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::model::{AggregateType, EventType};

pub mod aggregate;
pub mod retention;

pub use aggregate::{AggregateSpec, History};
pub use retention::{ArchiveRule, RetentionAge, RetentionPolicy, RetentionSpec};

/// The folder of per-aggregate-type files, next to the event type folders. Its leading `_` keeps
/// it apart from event types, which start with a letter.
pub const AGGREGATES_DIR: &str = "_aggregates";

/// The metadata file of one event type, `event.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub description: String,
    pub owner: String,
    /// When set, events of this type may only be appended to aggregates of this type.
    pub aggregate_type: Option<AggregateType>,
    /// The Kafka topic; when absent the relay derives one from the aggregate type.
    pub topic: Option<String>,
    /// The schema registry's compatibility mode for this type's subject.
    pub compatibility: Option<String>,
    /// How long events of this type are kept, as written (`"90d"` or a `[retention]` table); the
    /// checked form is [`EventTypeEntry::retention`].
    pub retention: Option<RetentionSpec>,
}

/// One event type: its metadata and the paths of its schema versions, `schemas[0]` being v1.
#[derive(Debug, Clone)]
pub struct EventTypeEntry {
    pub event_type: EventType,
    pub spec: EventSpec,
    /// The type's retention policy, checked; [`RetentionPolicy::FOREVER`] when `event.toml` has no
    /// `retention` key.
    pub retention: RetentionPolicy,
    pub schemas: Vec<PathBuf>,
}

/// All known event types, loaded once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<EventType, EventTypeEntry>,
    /// By aggregate type (names checked as [`AggregateType`] at load), only those with a file.
    aggregates: BTreeMap<String, AggregateSpec>,
}

impl Catalog {
    /// Loads every event type under `dir`. Fails, naming the file, on anything malformed, so that a
    /// broken catalog stops start-up rather than half-loading.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the event catalog at {}", dir.display()))?;
        let mut entries = BTreeMap::new();
        for item in read {
            let path = item?.path();
            if !path.is_dir() || path.file_name().is_some_and(|n| n == AGGREGATES_DIR) {
                continue;
            }
            let entry = load_type(&path)?;
            entries.insert(entry.event_type.clone(), entry);
        }
        if entries.is_empty() {
            bail!(
                "the event catalog at {} lists no event types",
                dir.display()
            );
        }
        let aggregates = load_aggregates(&dir.join(AGGREGATES_DIR))?;
        let catalog = Self {
            entries,
            aggregates,
        };
        catalog.warn_of_unreachable_aggregates();
        Ok(catalog)
    }

    /// Logs each `_aggregates` file that no event type can use: see the module docs.
    fn warn_of_unreachable_aggregates(&self) {
        let mut pinned = BTreeSet::new();
        for entry in self.entries.values() {
            match &entry.spec.aggregate_type {
                Some(t) => pinned.insert(t.as_str()),
                // A type that may land on any aggregate can reach every file.
                None => return,
            };
        }
        for name in self.aggregates.keys() {
            if !pinned.contains(name.as_str()) {
                tracing::warn!(
                    aggregate_type = %name,
                    "{AGGREGATES_DIR}/{name}.toml names an aggregate type that no event type in the catalog uses; check its name"
                );
            }
        }
    }

    pub fn get(&self, event_type: &EventType) -> Option<&EventTypeEntry> {
        self.entries.get(event_type)
    }

    /// The Kafka topic of an event of `event_type` on an aggregate of `aggregate_type`: the
    /// type's catalog topic, or `prefix` plus the aggregate type. The relay publishes there and
    /// projections subscribe there.
    pub fn topic(&self, event_type: &str, aggregate_type: &str, prefix: &str) -> String {
        EventType::parse(event_type)
            .ok()
            .and_then(|t| self.get(&t).and_then(|e| e.spec.topic.clone()))
            .unwrap_or_else(|| format!("{prefix}{aggregate_type}"))
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventTypeEntry> {
        self.entries.values()
    }

    /// The retention policy of `event_type`. A type the catalog does not list (keel's canaries, a
    /// type since removed) is kept forever: nothing is purged on a guess.
    pub fn retention(&self, event_type: &str) -> &RetentionPolicy {
        EventType::parse(event_type)
            .ok()
            .and_then(|t| self.entries.get(&t))
            .map_or(&RetentionPolicy::FOREVER, |e| &e.retention)
    }

    /// The history rule of `aggregate_type`: its `_aggregates` file, else
    /// [`AggregateSpec::DEFAULT`] (prefix).
    pub fn aggregate(&self, aggregate_type: &str) -> &AggregateSpec {
        self.aggregates
            .get(aggregate_type)
            .unwrap_or(&AggregateSpec::DEFAULT)
    }

    /// The aggregate types that have a file in `_aggregates/`, by name.
    pub fn aggregates(&self) -> impl Iterator<Item = (&str, &AggregateSpec)> {
        self.aggregates.iter().map(|(t, s)| (t.as_str(), s))
    }
}

/// Every `<aggregate type>.toml` in `dir`; no folder is no files. Other files are ignored, like
/// the files of an event type folder that are not `vN.avsc`.
fn load_aggregates(dir: &Path) -> anyhow::Result<BTreeMap<String, AggregateSpec>> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut found = BTreeMap::new();
    for item in read {
        let path = item?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        let aggregate_type = AggregateType::parse(stem).with_context(|| {
            format!(
                "{}: the file name must be an aggregate type and .toml",
                path.display()
            )
        })?;
        found.insert(aggregate_type.into(), aggregate::load(&path)?);
    }
    Ok(found)
}

fn load_type(dir: &Path) -> anyhow::Result<EventTypeEntry> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a UTF-8 folder name", dir.display()))?;
    let event_type =
        EventType::parse(name).with_context(|| format!("catalog folder {}", dir.display()))?;

    let spec_path = dir.join("event.toml");
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("cannot read {}", spec_path.display()))?;
    let spec: EventSpec =
        toml::from_str(&text).with_context(|| format!("invalid {}", spec_path.display()))?;
    let retention = match &spec.retention {
        Some(raw) => raw
            .policy()
            .with_context(|| spec_path.display().to_string())?,
        None => RetentionPolicy::FOREVER,
    };

    let mut versions = BTreeMap::new();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(number) = file.strip_prefix('v').and_then(|f| f.strip_suffix(".avsc")) else {
            continue;
        };
        let version: u32 = number
            .parse()
            .with_context(|| format!("{}: expected a name like v1.avsc", path.display()))?;
        versions.insert(version, path);
    }
    if versions.is_empty() {
        bail!("{} has no schema (expected v1.avsc)", dir.display());
    }
    for (expected, found) in (1u32..).zip(versions.keys()) {
        if expected != *found {
            bail!(
                "{}: schema versions must run 1, 2, 3... without gaps; v{expected}.avsc is missing",
                dir.display()
            );
        }
    }
    Ok(EventTypeEntry {
        event_type,
        spec,
        retention,
        schemas: versions.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Catalog {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
    }

    #[test]
    fn the_shipped_catalog_holds_the_audited_event_types_and_the_sagas() {
        let catalog = shipped();
        let names: Vec<&str> = catalog.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent.state.changed",
                "agent.task.completed",
                "agent.verification.completed",
                "control.operation.completed",
                "control.rollback.requested",
                "control.verification.requested",
                "l12.service_invoked",
                "saga.step",
                "state_change"
            ]
        );
    }

    /// A catalog folder with one type, `thing.happened`, whose `event.toml` ends with `extra`.
    fn one_type(extra: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-catalog-{}", uuid::Uuid::new_v4()));
        let ty = dir.join("thing.happened");
        std::fs::create_dir_all(&ty).unwrap();
        std::fs::write(
            ty.join("event.toml"),
            format!("description = \"d\"\nowner = \"o\"\naggregate_type = \"thing\"\n{extra}"),
        )
        .unwrap();
        std::fs::write(ty.join("v1.avsc"), "{}").unwrap();
        dir
    }

    fn refusal(dir: &Path) -> String {
        let err = Catalog::load(dir).unwrap_err();
        std::fs::remove_dir_all(dir).unwrap();
        format!("{err:#}")
    }

    #[test]
    fn a_gap_in_schema_versions_is_refused() {
        let dir = one_type("");
        std::fs::write(dir.join("thing.happened/v3.avsc"), "{}").unwrap();
        let err = refusal(&dir);
        assert!(err.contains("v2.avsc is missing"), "{err}");
    }

    #[test]
    fn the_shipped_catalog_gives_each_type_its_policy_and_agents_their_full_history() {
        let catalog = shipped();
        let policy = |t: &str| catalog.retention(t).to_string();
        assert_eq!(
            policy("l12.service_invoked"),
            "hot 90d, archive required, cold forever"
        );
        assert_eq!(policy("state_change"), "hot 1y, archive required, cold 7y");
        for forever in [
            "agent.state.changed",
            "agent.task.completed",
            "control.operation.completed",
            // Not in the catalog: kept, never purged on a guess.
            "keel.canary.heartbeat",
            "Not A Type",
        ] {
            assert_eq!(
                catalog.retention(forever),
                &RetentionPolicy::FOREVER,
                "{forever}"
            );
        }
        assert_eq!(catalog.aggregate("agent").history, History::Full);
        assert_eq!(catalog.aggregate("service"), &AggregateSpec::DEFAULT);
        let files: Vec<&str> = catalog.aggregates().map(|(t, _)| t).collect();
        assert_eq!(files, ["agent"]);
    }

    #[test]
    fn a_malformed_policy_fails_the_load_naming_the_file_and_the_key() {
        let err = refusal(&one_type("retention = \"90 days\"\n"));
        assert!(
            err.contains("thing.happened/event.toml: retention \"90 days\": use a whole number"),
            "{err}"
        );
        let err = refusal(&one_type("[retention]\nhot = \"0d\"\n"));
        assert!(
            err.contains(
                "thing.happened/event.toml: retention.hot \"0d\": a retention age is at least 1d"
            ),
            "{err}"
        );
        let err = refusal(&one_type("[retention]\nhot = \"9d\"\narchive = \"none\"\n"));
        assert!(
            err.contains("thing.happened/event.toml: retention.archive = \"none\" deletes events with no archive"),
            "{err}"
        );
        let err = refusal(&one_type("[retention]\nhot = \"9d\"\nkeep = true\n"));
        assert!(
            err.contains("invalid ")
                && err.contains("thing.happened/event.toml")
                && err.contains("unknown field `keep`"),
            "{err}"
        );
    }

    #[test]
    fn aggregate_files_are_read_and_a_malformed_one_fails_the_load_naming_it() {
        let dir = one_type("retention = \"30d\"\n");
        let aggregates = dir.join(AGGREGATES_DIR);
        std::fs::create_dir(&aggregates).unwrap();
        std::fs::write(
            aggregates.join("thing.toml"),
            "history = \"after_snapshot\"\nsnapshot_kind = \"thing-v2\"\n",
        )
        .unwrap();
        std::fs::write(aggregates.join("README.md"), "not a spec").unwrap();
        let catalog = Catalog::load(&dir).unwrap();
        assert_eq!(
            catalog.aggregate("thing").history,
            History::AfterSnapshot {
                snapshot_kind: "thing-v2".into()
            }
        );
        assert_eq!(catalog.aggregates().count(), 1, "README.md is not a spec");
        assert_eq!(
            catalog.retention("thing.happened").to_string(),
            "hot 30d, archive required, cold forever"
        );

        std::fs::write(
            aggregates.join("thing.toml"),
            "history = \"after_snapshot\"\n",
        )
        .unwrap();
        let err = format!("{:#}", Catalog::load(&dir).unwrap_err());
        assert!(
            err.contains(
                "_aggregates/thing.toml: history = \"after_snapshot\" needs snapshot_kind"
            ),
            "{err}"
        );
        std::fs::write(
            aggregates.join("thing.toml"),
            "history = \"full\"\nkind = \"x\"\n",
        )
        .unwrap();
        let err = format!("{:#}", Catalog::load(&dir).unwrap_err());
        assert!(
            err.contains("_aggregates/thing.toml") && err.contains("unknown field `kind`"),
            "{err}"
        );
        std::fs::remove_file(aggregates.join("thing.toml")).unwrap();
        std::fs::write(aggregates.join("Thing.toml"), "history = \"full\"\n").unwrap();
        let err = refusal(&dir);
        assert!(
            err.contains(
                "_aggregates/Thing.toml: the file name must be an aggregate type and .toml"
            ) && err.contains("must start with a lowercase letter"),
            "{err}"
        );
    }
}
