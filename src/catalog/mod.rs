//! The event catalog: the folder `schemas/`, one sub-folder per event type.
//!
//! ```text
//! schemas/agent.state.changed/event.toml   description, owner, aggregate_type, topic, compatibility
//! schemas/agent.state.changed/v1.avsc      Avro schema, version 1
//! schemas/agent.state.changed/v2.avsc      ... versions are contiguous from 1
//! ```
//!
//! The catalog decides which event types exist. An append of a type it does not list is refused
//! before it reaches the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::model::{AggregateType, EventType};

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
    /// How long events of this type are kept, for example "90d". Unused until retention lands.
    pub retention: Option<String>,
}

/// One event type: its metadata and the paths of its schema versions, `schemas[0]` being v1.
#[derive(Debug, Clone)]
pub struct EventTypeEntry {
    pub event_type: EventType,
    pub spec: EventSpec,
    pub schemas: Vec<PathBuf>,
}

/// All known event types, loaded once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<EventType, EventTypeEntry>,
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
            if !path.is_dir() {
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
        Ok(Self { entries })
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
    fn the_shipped_catalog_holds_the_audited_event_types() {
        let catalog = shipped();
        let names: Vec<&str> = catalog.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent.state.changed",
                "agent.task.completed",
                "control.operation.completed",
                "l12.service_invoked",
                "state_change"
            ]
        );
    }

    #[test]
    fn a_gap_in_schema_versions_is_refused() {
        let dir = std::env::temp_dir().join(format!("keel-catalog-{}", uuid::Uuid::new_v4()));
        let ty = dir.join("thing.happened");
        std::fs::create_dir_all(&ty).unwrap();
        std::fs::write(
            ty.join("event.toml"),
            "description = \"d\"\nowner = \"o\"\n",
        )
        .unwrap();
        std::fs::write(ty.join("v1.avsc"), "{}").unwrap();
        std::fs::write(ty.join("v3.avsc"), "{}").unwrap();
        let err = Catalog::load(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("v2.avsc is missing"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
