//! `keel schema`: register the event catalog's schemas, check one against the registry, list them.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::app::{self, Services};
use crate::config::{Config, Overrides};
use crate::model::VersionSpec;
use crate::registry::sync;

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Register every schema of the catalog, oldest version first; fail on an incompatible change.
    Sync {
        /// The catalog folder; overrides `KEEL_SCHEMAS_DIR`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check one schema file against its subject's registered versions, without registering it.
    Check {
        /// A schema file, for example `schemas/agent.state.changed/v3.avsc`.
        file: PathBuf,
        /// The subject; by default the name of the file's folder (the event type).
        #[arg(long)]
        subject: Option<String>,
    },
    /// List the registered subjects with their versions, schema ids and compatibility modes.
    List,
}

impl SchemaCommand {
    pub fn override_config(&self, overrides: &mut Overrides) {
        if let SchemaCommand::Sync { dir } = self {
            overrides.schemas_dir = dir.clone();
        }
    }
}

pub async fn run(config: &Config, command: SchemaCommand) -> anyhow::Result<()> {
    let Services { registry, store } = Services::connect(config).await?;
    match command {
        SchemaCommand::Sync { .. } => {
            let catalog = app::catalog(config)?;
            let all = sync::sync(&registry, &catalog).await?;
            app::audit_catalog_sync(store.pool(), config, &all).await?;
            for synced in all {
                let r = synced.registered;
                let what = if r.created { "registered" } else { "unchanged" };
                println!(
                    "{what:<10} {} -> subject {} version {} (id {})",
                    synced.file, synced.subject, r.version, r.id
                );
            }
            Ok(())
        }
        SchemaCommand::Check { file, subject } => {
            let subject = match subject {
                Some(s) => s,
                None => file
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .context("cannot tell the subject from the path; pass --subject")?,
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let found = registry.check(&subject, None, &text).await?;
            if found.is_empty() {
                let mode = registry.effective_config(&subject).await?;
                println!(
                    "{} is compatible with subject {subject} ({mode})",
                    file.display()
                );
                return Ok(());
            }
            for i in &found {
                println!("{} [{:?}]: {}", i.path, i.kind, i.message);
            }
            bail!("{} is incompatible with subject {subject}", file.display())
        }
        SchemaCommand::List => {
            for subject in registry.subjects(false).await? {
                let mode = registry.effective_config(&subject).await?;
                let mut versions = Vec::new();
                for v in registry.versions(&subject, false).await? {
                    let found = registry
                        .version(&subject, VersionSpec::Number(v), false)
                        .await?;
                    versions.push(format!("v{}=id {}", found.version, found.id));
                }
                println!("{subject:<32} {mode:<20} {}", versions.join(", "));
            }
            Ok(())
        }
    }
}
