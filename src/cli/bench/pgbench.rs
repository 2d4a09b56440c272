//! The append benchmark's second baseline: PostgreSQL's own load generator, `pgbench`, running
//! the research's `append1` transaction (bump a stream's version, insert the event, insert an
//! outbox row, commit) with as many clients as keel had producers.
//!
//! It writes to a schema of its own in a database of its own (`keel_bench_pgbench`): bigint
//! stream ids, no expected-version check (the `UPDATE`'s row lock orders writers), no event ids,
//! no metadata, so it is the floor of what an append transaction costs on this server, with no
//! client library in the way. The payload is the same size as keel's.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Connection, Postgres};

use super::stats::Sample;

/// A prepared pgbench run: its database, with a stream row per aggregate, and its script.
pub struct Pgbench {
    program: PathBuf,
    url: String,
    dir: PathBuf,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE streams (stream_id bigint PRIMARY KEY, version bigint NOT NULL DEFAULT 0)",
    "CREATE TABLE events (
        global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id bigint NOT NULL,
        version bigint NOT NULL,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (stream_id, version))",
    "CREATE TABLE outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
        stream_id bigint NOT NULL,
        version bigint NOT NULL,
        payload jsonb NOT NULL)",
    "CREATE INDEX outbox_tx ON outbox (tx, id)",
];

/// The transaction, one event each, for streams `1..=aggregates` and a pad of `pad` bytes.
fn script(aggregates: usize, pad: usize) -> String {
    let payload = format!(
        "jsonb_build_object('sid', :sid::bigint, 'v', :v::bigint, 'pad', repeat('x', {pad}))"
    );
    format!(
        "\\set sid random(1, {aggregates})\n\
         BEGIN;\n\
         UPDATE streams SET version = version + 1 WHERE stream_id = :sid RETURNING version AS v \\gset\n\
         INSERT INTO events (stream_id, version, event_type, payload) VALUES (:sid, :v, 'state_change', {payload});\n\
         INSERT INTO outbox (stream_id, version, payload) VALUES (:sid, :v, {payload});\n\
         END;\n"
    )
}

/// `pgbench` on the `PATH`, or `None` (said loudly by the caller: the line is then missing, not
/// passed).
fn find_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
}

impl Pgbench {
    /// Creates the database at `url` anew with `aggregates` stream rows, and writes the script
    /// for payloads of about `payload_bytes`. `None` when there is no `pgbench` to run.
    pub async fn prepare(
        url: String,
        aggregates: usize,
        payload_bytes: usize,
    ) -> anyhow::Result<Option<Self>> {
        let Some(program) = find_program() else {
            return Ok(None);
        };
        if Postgres::database_exists(&url).await? {
            Postgres::drop_database(&url).await?;
        }
        Postgres::create_database(&url)
            .await
            .context("cannot create the pgbench database")?;
        let mut db = sqlx::PgConnection::connect(&url).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut db).await?;
        }
        sqlx::query("INSERT INTO streams SELECT g, 0 FROM generate_series(1, $1::bigint) g")
            .bind(aggregates as i64)
            .execute(&mut db)
            .await?;
        sqlx::query("VACUUM ANALYZE streams")
            .execute(&mut db)
            .await?;
        db.close().await?;
        let dir = std::env::temp_dir().join(format!(
            "keel-bench-pgbench-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        // keel's bench payload is its pad plus ~80 bytes of other fields; so is this one.
        let pad = payload_bytes.saturating_sub(80);
        std::fs::write(dir.join("append1.sql"), script(aggregates, pad))?;
        Ok(Some(Self { program, url, dir }))
    }

    /// Runs `clients` clients for `warmup + seconds` and measures the transactions that ended
    /// in the last `seconds`, from pgbench's per-transaction log.
    pub async fn measure(
        &self,
        clients: usize,
        warmup: Duration,
        seconds: Duration,
    ) -> anyhow::Result<Sample> {
        let prefix = self.dir.join(format!("run{clients}"));
        let measure_from = SystemTime::now() + warmup;
        let output = tokio::process::Command::new(&self.program)
            .arg("--no-vacuum")
            .args(["--protocol", "prepared"])
            .arg("--file")
            .arg(self.dir.join("append1.sql"))
            .args(["--client", &clients.to_string()])
            .args(["--jobs", &clients.clamp(1, 2).to_string()])
            .args(["--time", &(warmup + seconds).as_secs().to_string()])
            .arg("--log")
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg(&self.url)
            .current_dir(&self.dir)
            .output()
            .await
            .context("cannot run pgbench")?;
        anyhow::ensure!(
            output.status.success(),
            "pgbench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let from_us = measure_from.duration_since(UNIX_EPOCH)?.as_micros() as u64;
        let mut sample = Sample {
            events: 0,
            elapsed: seconds,
            latency_us: Sample::new_histogram(),
        };
        for log in logs(&self.dir, &prefix)? {
            for line in std::fs::read_to_string(&log)?.lines() {
                let Some((latency, ended)) = parse_line(line) else {
                    anyhow::bail!("unexpected pgbench log line in {}: {line}", log.display());
                };
                if ended >= from_us {
                    sample.events += 1;
                    sample.latency_us.saturating_record(latency.max(1));
                }
            }
            std::fs::remove_file(&log)?;
        }
        anyhow::ensure!(sample.events > 0, "pgbench logged no transactions");
        Ok(sample)
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The files pgbench logged for `prefix`: `prefix.PID`, and `prefix.PID.N` for its other threads.
fn logs(dir: &Path, prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let stem = format!(
        "{}.",
        prefix.file_name().context("log prefix")?.to_string_lossy()
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// One line of pgbench's transaction log, `client_id transaction_no time script_no time_epoch
/// time_us`: the latency in microseconds and when the transaction ended, in microseconds since
/// the epoch. `None` for a line of another shape (a failed transaction logs `failed` as its time).
fn parse_line(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, _, latency, _, epoch, us, ..] = fields[..] else {
        return None;
    };
    let ended = epoch.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?;
    Some((latency.parse().ok()?, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_gives_its_latency_and_end() {
        assert_eq!(
            parse_line("3 117 2250 0 1764660000 123456"),
            Some((2250, 1_764_660_000_123_456))
        );
        assert_eq!(parse_line("3 117 failed 0 1764660000 123456"), None);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn the_script_bumps_a_stream_and_writes_both_rows_in_one_transaction() {
        let s = script(100, 420);
        assert!(s.starts_with("\\set sid random(1, 100)\nBEGIN;\n"));
        assert!(s.contains("RETURNING version AS v \\gset"));
        assert_eq!(s.matches("repeat('x', 420)").count(), 2);
        assert!(s.ends_with("END;\n"));
    }
}
