//! `keel archive` and `keel retention`: the archiver, its verification and restore, and the
//! guarded purge. Like `keel migrate` and `keel schema sync` these are maintenance commands that
//! open the database themselves (they are what a scheduled job runs); each purge batch is in the
//! audit log as `retention.purge` by principal `keel`.

use std::sync::Mutex;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::app::{self, Projections, Sagas, Services};
use crate::archive::verify::Depth;
use crate::archive::{self, Objects};
use crate::config::Config;
use crate::replay::progress::Progress;
use crate::retention::{self, Reader};

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Write every type whose policy requires an archive (or the types named) to segments, in
    /// the log's gap-safe order, then read each back and compare it with the database.
    Run {
        /// Only this event type (repeatable). A named type without a hot age is archived whole.
        #[arg(long = "type")]
        types: Vec<String>,
        #[command(flatten)]
        now: Now,
        #[arg(long)]
        json: bool,
    },
    /// Check every segment: the object and manifest exist with the catalog's size and sha256 and
    /// the hash chain holds; `--deep` also decodes and checks counts, order and the records'
    /// digest; `--against-db` also recomputes the digest from the database. Exits 1 on a
    /// failure, naming the segment.
    Verify {
        #[arg(long)]
        deep: bool,
        #[arg(long)]
        against_db: bool,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put archived events of one type back into the store with their original positions and
    /// ids. Idempotent; sends nothing to the relay unless `--republish`.
    Restore {
        #[arg(long = "type")]
        event_type: String,
        /// Only events at or above this position.
        #[arg(long)]
        from: Option<i64>,
        /// Only events at or below this position.
        #[arg(long)]
        to: Option<i64>,
        /// Also write outbox rows, so the relay sends the restored events again.
        #[arg(long)]
        republish: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// What a purge would delete now, per type, and why the rest stays. Changes nothing.
    Plan {
        #[command(flatten)]
        now: Now,
        #[arg(long)]
        json: bool,
    },
    /// Delete what the plan says may go, in small transactions, after re-verifying stale
    /// segments against the database.
    Run {
        #[command(flatten)]
        now: Now,
        #[arg(long)]
        json: bool,
    },
    /// Each type's policy, horizon and archive segments.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// `--now TIME`: the time that decides what is old enough (default: now).
#[derive(Debug, Args)]
pub struct Now {
    /// Act as if it were this RFC 3339 time, to see what a later run would do (only ages
    /// events; verification times stay real).
    #[arg(long = "now", value_parser = parse_time)]
    at: Option<DateTime<Utc>>,
}

impl Now {
    fn get(&self) -> DateTime<Utc> {
        self.at.unwrap_or_else(Utc::now)
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2027-03-01T00:00:00Z"))
}

fn objects(config: &Config) -> anyhow::Result<Objects> {
    Objects::open(&config.archive)?.ok_or_else(|| archive::Error::NotConfigured.into())
}

/// The projections and sagas the purge must not outrun: every one this binary knows.
fn readers(config: &Config) -> Vec<Reader> {
    Projections::builtin()
        .all()
        .iter()
        .map(Reader::of)
        .chain(Sagas::builtin(config).all().iter().map(Reader::of_saga))
        .collect()
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The archiver's progress as keel's usual bar (or lines, off a terminal).
#[derive(Default)]
struct Bar(Mutex<Option<Progress>>);

impl archive::run::Progress for Bar {
    fn start(&self, total: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Progress::new("archiving", Some(total)));
    }

    fn advance(&self, events: u64) {
        if let Some(p) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            p.advance(events);
        }
    }
}

pub async fn run_archive(config: &Config, command: ArchiveCommand) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let pool = services.pool();
    match command {
        ArchiveCommand::Run { types, now, json } => {
            let catalog = app::catalog(config)?;
            let objects = objects(config)?;
            let bar = Bar::default();
            let options = archive::RunOptions {
                now: now.get(),
                types,
            };
            let report =
                archive::run(pool, &objects, &catalog, &config.archive, &options, &bar).await?;
            if let Some(p) = &*bar.0.lock().unwrap_or_else(|p| p.into_inner()) {
                p.finish("done");
            }
            if json {
                return print_json(&report);
            }
            if report.types.is_empty() {
                println!("no event type's policy requires an archive (see [retention] in schemas/*/event.toml)");
            }
            for t in &report.types {
                println!(
                    "{:<32} {:>4} segment(s) {:>9} events {:>11} bytes  archived through {}{}",
                    t.event_type,
                    t.segments,
                    t.events,
                    t.bytes,
                    t.archived_through,
                    if t.adopted > 0 {
                        format!("  ({} left by an interrupted run, adopted)", t.adopted)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        ArchiveCommand::Verify {
            deep,
            against_db,
            event_type,
            json,
        } => {
            let depth = match (deep, against_db) {
                (_, true) => Depth::AgainstDb,
                (true, false) => Depth::Deep,
                _ => Depth::Shallow,
            };
            let objects = objects(config)?;
            let report =
                archive::verify::verify(pool, &objects, event_type.as_deref(), depth).await?;
            if json {
                print_json(&report)?;
            } else {
                for v in &report.segments {
                    let verdict = if v.problems.is_empty() {
                        "ok"
                    } else {
                        "FAILED"
                    };
                    println!(
                        "{verdict:<7} {} #{} {} ({})",
                        v.event_type, v.seq, v.object_key, v.state
                    );
                    for p in &v.problems {
                        println!("        {p}");
                    }
                }
                for o in &report.orphans {
                    println!("orphan  {o} (no segment names it; left by an interrupted run?)");
                }
                println!(
                    "{} segment(s) checked, {} failed",
                    report.segments.len(),
                    report.failed()
                );
            }
            if report.failed() > 0 {
                bail!("{} archive segment(s) failed verification", report.failed());
            }
            Ok(())
        }
        ArchiveCommand::Restore {
            event_type,
            from,
            to,
            republish,
            json,
        } => {
            let objects = objects(config)?;
            let report = archive::restore::restore(
                pool,
                &objects,
                &archive::restore::RestoreOptions {
                    event_type,
                    from,
                    to,
                    republish,
                },
            )
            .await?;
            if json {
                return print_json(&report);
            }
            println!(
                "restored {} event(s) from {} segment(s); {} were already in the store{}",
                report.restored,
                report.segments_read,
                report.already_present,
                if report.horizon_cleared {
                    "; the type's retention horizon is gone (nothing of it is purged now)"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}

pub async fn run_retention(config: &Config, command: RetentionCommand) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let pool = services.pool();
    let catalog = app::catalog(config)?;
    match command {
        RetentionCommand::Plan { now, json } => {
            let plan = retention::plan(
                pool,
                &catalog,
                &readers(config),
                now.get(),
                config.archive.verify_max_age_secs,
            )
            .await?;
            if json {
                return print_json(&plan);
            }
            println!(
                "{:<30} {:<40} {:>9} {:>9} {:>9} {:>11}  kept because",
                "type", "policy", "stored", "due", "purge", "bytes"
            );
            for t in &plan.types {
                let b = &t.blocked;
                let reasons: Vec<String> = [
                    (t.not_archived, "not archived/verified"),
                    (b.undelivered, "undelivered"),
                    (b.projection_behind, "projection behind"),
                    (b.legal_hold, "legal hold"),
                    (b.full_history, "full history"),
                    (b.not_in_snapshot, "not in snapshot"),
                    (b.prefix, "prefix rule"),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, why)| format!("{n} {why}"))
                .collect();
                println!(
                    "{:<30} {:<40} {:>9} {:>9} {:>9} {:>11}  {}",
                    t.event_type,
                    t.policy,
                    t.stored,
                    t.due,
                    t.purge,
                    t.purge_bytes,
                    if reasons.is_empty() {
                        "-".into()
                    } else {
                        reasons.join(", ")
                    }
                );
            }
            Ok(())
        }
        RetentionCommand::Run { now, json } => {
            let objects = Objects::open(&config.archive)?;
            let report = retention::purge(
                pool,
                objects.as_ref(),
                &catalog,
                &readers(config),
                &retention::PurgeOptions {
                    now: now.get(),
                    batch: config.archive.purge_batch,
                    verify_max_age_secs: config.archive.verify_max_age_secs,
                },
            )
            .await?;
            if json {
                return print_json(&report);
            }
            if report.purged.is_empty() {
                println!("nothing to purge (keel retention plan says why)");
            }
            for (t, n) in &report.purged {
                println!("purged {n} event(s) of {t}");
            }
            Ok(())
        }
        RetentionCommand::Status { json } => {
            let horizons = archive::read::horizons(pool).await?;
            let segments = archive::manifest::list(pool, None).await?;
            let mut rows = Vec::new();
            for entry in catalog.iter() {
                let name = entry.event_type.as_str();
                let mine: Vec<_> = segments
                    .iter()
                    .filter(|s| s.segment.event_type == name)
                    .collect();
                let count = |state: &str| mine.iter().filter(|s| s.state == state).count();
                let horizon = horizons.iter().find(|h| h.event_type == name);
                rows.push(serde_json::json!({
                    "event_type": name,
                    "policy": entry.retention.to_string(),
                    "segments": mine.len(),
                    "written": count("written"),
                    "verified": count("verified"),
                    "purged": count("purged"),
                    "archived_events": mine.iter().map(|s| s.segment.record_count as i64).sum::<i64>(),
                    "archived_through": mine.last().map(|s| s.segment.hi().to_string()),
                    "horizon": horizon.map(|h| h.cursor().to_string()),
                    "purged_events": horizon.map_or(0, |h| h.purged_events),
                }));
            }
            if json {
                return print_json(
                    &serde_json::json!({ "archive": config.archive.url, "types": rows }),
                );
            }
            println!(
                "archive: {}",
                if config.archive.url.is_empty() {
                    "(none configured)"
                } else {
                    &config.archive.url
                }
            );
            println!(
                "{:<30} {:<40} {:>8} {:>10} {:>12} {:>14}",
                "type", "policy", "segments", "archived", "purged", "horizon"
            );
            for r in rows {
                println!(
                    "{:<30} {:<40} {:>8} {:>10} {:>12} {:>14}",
                    r["event_type"].as_str().unwrap_or(""),
                    r["policy"].as_str().unwrap_or(""),
                    r["segments"],
                    r["archived_events"],
                    r["purged_events"],
                    r["horizon"].as_str().unwrap_or("-"),
                );
            }
            Ok(())
        }
    }
}
