//! `keel consume`: tail topics as JSON lines on stdout, one decoded event per record.

use std::io::Write;

use clap::Args;

use crate::app::Services;
use crate::config::Config;
use crate::consumer::tail::{tail, TailOptions};
use crate::model::VersionSpec;
use crate::shutdown;

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// A topic to read; repeat for several.
    #[arg(long, required = true)]
    pub topic: Vec<String>,
    /// Join this consumer group and commit what was printed; without it, a throwaway group that
    /// commits nothing.
    #[arg(long)]
    pub group: Option<String>,
    /// Start where the group has no offset from the beginning of the topics, not the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Resolve payloads to this version of their type's schema (`latest` or a number), as a
    /// subscriber declaring it would get them; by default, as written.
    #[arg(long)]
    pub schema_version: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
}

pub async fn run(config: &Config, args: ConsumeArgs) -> anyhow::Result<()> {
    let schema_version = args
        .schema_version
        .as_deref()
        .map(VersionSpec::parse)
        .transpose()
        .map_err(|_| anyhow::anyhow!("--schema-version takes `latest` or a positive number"))?;
    let options = TailOptions {
        topics: args.topic,
        group: args.group,
        from_beginning: args.from_beginning,
        schema_version,
        max_messages: args.max_messages,
        // Connect as the relay does (TLS, SASL): the only Kafka credentials in the config.
        properties: crate::kafka::connection_settings(&config.relay.kafka.properties),
    };
    let services = Services::connect(config).await?;
    tail(
        &config.kafka_brokers,
        services.registry.clone(),
        &options,
        &shutdown::on_signals(),
        // Stdout is line-buffered, so a pipe reader sees each record as it arrives.
        |line| Ok(writeln!(std::io::stdout(), "{line}")?),
    )
    .await?;
    Ok(())
}
