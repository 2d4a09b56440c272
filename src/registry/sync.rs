//! `keel schema sync`: registering the catalog folder, in version order, refusing a breaking change
//! with the file, the field and the rule.

use std::path::Path;

use anyhow::{bail, Context};

use super::{Error, Registered, Registry};
use crate::catalog::{Catalog, EventTypeEntry};
use crate::schema::{Compatibility, ParsedSchema};

/// What happened to one schema file.
#[derive(Debug, Clone)]
pub struct Synced {
    pub subject: String,
    pub file: String,
    pub registered: Registered,
}

/// Registers every schema of every event type, oldest version first. Each type's subject gets the
/// compatibility mode its `event.toml` names (or keeps the global default). Stops at the first
/// refusal, saying which file breaks which rule.
pub async fn sync(registry: &Registry, catalog: &Catalog) -> anyhow::Result<Vec<Synced>> {
    let mut out = Vec::new();
    for entry in catalog.iter() {
        let subject = entry.event_type.as_str();
        if let Some(level) = &entry.spec.compatibility {
            let wanted = Compatibility::parse(level).with_context(|| {
                format!("{}: unknown compatibility {level:?}", entry.event_type)
            })?;
            if registry.config(Some(subject)).await? != Some(wanted) {
                registry.set_config(Some(subject), wanted.as_str()).await?;
            }
        }
        for file in &entry.schemas {
            let text = read_schema(entry, file)?;
            let registered = match registry.register(subject, &text, None).await {
                Ok(registered) => registered,
                Err(Error::Incompatible { found, .. }) => {
                    let reasons: Vec<String> = found
                        .iter()
                        .map(|i| format!("  {} [{:?}]: {}", i.path, i.kind, i.message))
                        .collect();
                    bail!(
                        "{} is incompatible with subject {subject}:\n{}",
                        file.display(),
                        reasons.join("\n")
                    );
                }
                Err(other) => {
                    return Err(other)
                        .with_context(|| format!("cannot register {}", file.display()))
                }
            };
            out.push(Synced {
                subject: subject.to_owned(),
                file: file.display().to_string(),
                registered,
            });
        }
    }
    Ok(out)
}

/// Reads one catalog schema and checks it is a record named after its event type, so that the
/// subject, the event type and Confluent's RecordNameStrategy agree.
pub fn read_schema(entry: &EventTypeEntry, file: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = ParsedSchema::parse(&text).with_context(|| file.display().to_string())?;
    let event_type = entry.event_type.as_str();
    let avro_name_allowed = !event_type.contains('-');
    match parsed.record_name() {
        Some(name) if name == event_type || !avro_name_allowed => Ok(text),
        Some(name) => bail!(
            "{}: the record's full name is {name}, but it must be the event type {event_type} (namespace and name)",
            file.display()
        ),
        None => bail!("{}: an event schema must be a record", file.display()),
    }
}
