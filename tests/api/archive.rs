//! Retention and archival against the real PostgreSQL and a real archive directory (the S3 runs
//! are in `archive_objects.rs`): the archiver's gap-safe sealing, third-party readers, tampering,
//! crashes, the guarded purge, tiered rebuilds and restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel::archive::read::Tiered;
use keel::archive::segment::{self, ArchivedEvent};
use keel::archive::verify::Depth;
use keel::archive::{self, Objects, RunOptions};
use keel::catalog::Catalog;
use keel::projection::rebuild::{rebuild, RebuildOptions};
use keel::replay::progress::Reporter;
use keel::retention::{self, PurgeOptions, Reader};
use keel::store::{LogCursor, LogFilter};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, run, spawn_app_with, TestApp};

/// A keel with a catalog copy whose types get `policies` (an `event.toml` line or table each),
/// and an archive directory of its own.
pub struct Fixture {
    pub app: TestApp,
    pub archive_dir: PathBuf,
    pub catalog: Arc<Catalog>,
    pub objects: Objects,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the shipped catalog with `policies` as the named types' retention (every other
/// type keeps forever).
pub fn catalog_with(policies: &[(&str, &str)]) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("keel-archive-catalog-{}", Uuid::new_v4().simple()));
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"), &dir);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("event.toml");
        if !path.exists() {
            continue;
        }
        // Drop the shipped policy: the test decides.
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = cut_retention(&text);
        std::fs::write(&path, kept).unwrap();
    }
    // Every aggregate type keeps the default prefix rule unless a test says otherwise.
    let _ = std::fs::remove_dir_all(dir.join("_aggregates"));
    for (event_type, policy) in policies {
        let path = dir.join(event_type).join("event.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(policy);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    dir
}

/// `event.toml` without its `retention` key or `[retention]` table.
fn cut_retention(text: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = trimmed == "[retention]";
            if in_table {
                continue;
            }
        }
        if in_table || trimmed.starts_with("retention") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub async fn fixture(policies: &[(&str, &str)], segment_records: usize) -> Fixture {
    let schemas = catalog_with(policies);
    let archive_dir =
        std::env::temp_dir().join(format!("keel-archive-{}", Uuid::new_v4().simple()));
    let url = format!("file://{}", archive_dir.display());
    let app = spawn_app_with(|c| {
        c.schemas_dir = schemas.clone();
        c.archive.url = url.clone();
        c.archive.max_segment_records = segment_records;
    })
    .await;
    let catalog = Arc::new(Catalog::load(&schemas).unwrap());
    let objects = Objects::open(&app.config.archive).unwrap().unwrap();
    Fixture {
        app,
        archive_dir,
        catalog,
        objects,
    }
}

/// Well after every event's hot age (policies here are `1d`).
pub fn later() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(3)
}

impl Fixture {
    /// The `keel` binary on this fixture's database, catalog and archive, with `args`.
    pub fn keel(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.app.keel();
        command
            .args(args)
            .env("KEEL_DATABASE_URL", &self.app.config.database_url)
            .env("KEEL_SCHEMAS_DIR", &self.app.config.schemas_dir)
            .env("KEEL_ARCHIVE__URL", &self.app.config.archive.url);
        command
    }

    pub fn pool(&self) -> &PgPool {
        self.app.store.pool()
    }

    pub async fn archive(&self, now: DateTime<Utc>) -> archive::RunReport {
        archive::run(
            self.pool(),
            &self.objects,
            &self.catalog,
            &self.app.config.archive,
            &RunOptions { now, types: vec![] },
            &(),
        )
        .await
        .expect("the archiver runs")
    }

    pub async fn purge(&self, now: DateTime<Utc>) -> retention::PurgeReport {
        retention::purge(
            self.pool(),
            Some(&self.objects),
            &self.catalog,
            &readers(),
            &PurgeOptions {
                now,
                batch: 7,
                verify_max_age_secs: 3600,
            },
        )
        .await
        .expect("the purge runs")
    }

    /// Every event of every segment of `event_type`, in segment order.
    pub async fn archived(&self, event_type: &str) -> Vec<ArchivedEvent> {
        let mut out = Vec::new();
        for row in archive::manifest::list(self.pool(), Some(event_type))
            .await
            .unwrap()
        {
            let bytes = self.objects.get(&row.segment.object_key).await.unwrap();
            out.extend(segment::decode(&bytes).unwrap().events);
        }
        out
    }

    /// The store's events of `event_type` as the archive writes them.
    pub async fn stored(&self, event_type: &str) -> Vec<ArchivedEvent> {
        sqlx::query_as(
            "SELECT position, tx_id::text::bigint AS tx_id, id, aggregate_type, aggregate_id,
                    version, event_type, schema_id, schema_version, created_at,
                    payload::text AS payload_json, metadata::text AS metadata_json
               FROM events WHERE event_type = $1 ORDER BY tx_id, position",
        )
        .bind(event_type)
        .fetch_all(self.pool())
        .await
        .unwrap()
    }
}

fn readers() -> Vec<Reader> {
    keel::projection::builtin().iter().map(Reader::of).collect()
}

async fn append(app: &TestApp, aggregate_type: &str, id: Uuid, events: Vec<Value>) -> Value {
    let reply = app
        .append(aggregate_type, id, &json!({ "events": events }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body.clone()
}

fn task_completed(agent: Uuid, n: usize) -> Value {
    json!({"type": "agent.task.completed", "payload": {
        "agent_id": agent, "task_id": format!("t{n}"), "outcome": "SUCCEEDED",
        "duration_ms": n as i64, "error": null}})
}

fn service_invoked(n: usize) -> Value {
    json!({"type": "l12.service_invoked", "payload": {
        "service_name": format!("svc-{}", n % 3), "method": "GET", "execution_time": 1.5 + n as f64,
        "status": "OK"}})
}

/// The relay's work done by hand: every outbox row acknowledged (the purge keeps events whose
/// rows remain).
async fn deliver_everything(pool: &PgPool) {
    sqlx::query("DELETE FROM outbox")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_archiver_never_seals_a_range_an_open_transaction_can_still_commit_into() {
    let f = fixture(&[("agent.state.changed", "retention = \"1d\"")], 3).await;
    let agent = Uuid::new_v4();
    for n in 0..5 {
        append(
            &f.app,
            "agent",
            agent,
            vec![agent_state_changed(agent, &format!("s{n}"))],
        )
        .await;
    }
    // Transaction A takes an early position and stays open while later appends commit.
    let mut open = f.pool().begin().await.unwrap();
    let late = Uuid::new_v4();
    let a_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, aggregate_type, aggregate_id, version, event_type, payload)
         VALUES ($1, 'agent', $2, 1, 'agent.state.changed',
                 jsonb_build_object('agent_id', $2::text, 'from_state', null, 'to_state', 'late', 'reason', null))
         RETURNING position",
    )
    .bind(late)
    .bind(Uuid::new_v4())
    .fetch_one(&mut *open)
    .await
    .unwrap();
    let a_tx: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *open)
        .await
        .unwrap();
    for n in 5..10 {
        append(
            &f.app,
            "agent",
            agent,
            vec![agent_state_changed(agent, &format!("s{n}"))],
        )
        .await;
    }
    let first = f.archive(later()).await;
    assert_eq!(first.types[0].events, 5, "{first:?}");
    let sealed = f.archived("agent.state.changed").await;
    assert!(
        sealed.iter().all(|e| e.id != late && e.tx_id < a_tx),
        "a segment holds the open transaction's row or a later one"
    );
    assert!(sealed.iter().all(|e| e.position < a_position));

    open.commit().await.unwrap();
    let second = f.archive(later()).await;
    assert_eq!(second.types[0].events, 6, "{second:?}");

    // The union of the segments is exactly the committed rows: no gap, no duplicate.
    let archived = f.archived("agent.state.changed").await;
    let ids: Vec<Uuid> = archived.iter().map(|e| e.id).collect();
    let unique: BTreeSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a duplicate across segments");
    assert_eq!(archived, f.stored("agent.state.changed").await);
    assert!(archived.windows(2).all(|w| w[0].cursor() < w[1].cursor()));
    assert!(archived.iter().any(|e| e.id == late));

    // Every segment is verified against the database, and a third run writes nothing.
    let report = archive::verify::verify(f.pool(), &f.objects, None, Depth::AgainstDb)
        .await
        .unwrap();
    assert_eq!(report.failed(), 0, "{report:?}");
    assert!(report.segments.iter().all(|v| v.state == "verified"));
    assert!(report.orphans.is_empty());
    assert_eq!(f.archive(later()).await.types[0].events, 0);
    // Nothing is archived before its hot age.
    let g = fixture(&[("agent.state.changed", "retention = \"1d\"")], 3).await;
    append(
        &g.app,
        "agent",
        agent,
        vec![agent_state_changed(agent, "young")],
    )
    .await;
    assert_eq!(g.archive(Utc::now()).await.types[0].events, 0);
}

#[tokio::test]
async fn fastavro_reads_every_segment_and_each_payload_is_what_postgresql_held() {
    let Some(python) = std::env::var_os("KEEL_TEST_PYTHON") else {
        panic!("KEEL_TEST_PYTHON is not set: run scripts/pyenv (scripts/test does) and export its python");
    };
    let f = fixture(&[("l12.service_invoked", "retention = \"1d\"")], 4).await;
    let service = Uuid::new_v4();
    for n in 0..10 {
        append(&f.app, "service", service, vec![service_invoked(n)]).await;
    }
    f.archive(later()).await;
    let rows = archive::manifest::list(f.pool(), None).await.unwrap();
    assert_eq!(rows.len(), 3);
    let script = r#"
import json, sys, fastavro
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        meta = reader.metadata
        records = list(reader)
    print(json.dumps({"path": path, "codec": meta.get("avro.codec"), "count": meta.get("keel.record_count"),
                      "records": [[r["position"], r["payload_json"], str(r["aggregate_id"])] for r in records]}))
"#;
    let paths: Vec<String> = rows
        .iter()
        .map(|r| {
            f.archive_dir
                .join(&r.segment.object_key)
                .display()
                .to_string()
        })
        .collect();
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fastavro: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = f.stored("l12.service_invoked").await;
    let mut read = Vec::new();
    for (line, row) in String::from_utf8(output.stdout).unwrap().lines().zip(&rows) {
        let file: Value = serde_json::from_str(line).unwrap();
        assert_eq!(file["codec"], "deflate");
        assert_eq!(file["count"], row.segment.record_count.to_string());
        for r in file["records"].as_array().unwrap() {
            read.push((
                r[0].as_i64().unwrap(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap().to_owned(),
            ));
        }
    }
    let expected: Vec<_> = stored
        .iter()
        .map(|e| {
            (
                e.position,
                e.payload_json.clone(),
                e.aggregate_id.to_string(),
            )
        })
        .collect();
    assert_eq!(
        read, expected,
        "fastavro's records are not the store's rows"
    );
}

#[tokio::test]
async fn verify_names_the_tampered_truncated_missing_and_unchained_segments() {
    let f = fixture(&[("l12.service_invoked", "retention = \"1d\"")], 2).await;
    let service = Uuid::new_v4();
    for n in 0..10 {
        append(&f.app, "service", service, vec![service_invoked(n)]).await;
    }
    f.archive(later()).await;
    let rows = archive::manifest::list(f.pool(), None).await.unwrap();
    assert_eq!(rows.len(), 5);
    let path = |i: usize| f.archive_dir.join(&rows[i].segment.object_key);

    // 0: one payload changed, re-encoded, with a forged manifest and catalog row that match it.
    let mut events = segment::decode(&std::fs::read(path(0)).unwrap())
        .unwrap()
        .events;
    events[0].payload_json = events[0].payload_json.replace("svc-0", "svc-X");
    let decoded_header = segment::decode(&std::fs::read(path(0)).unwrap())
        .unwrap()
        .header;
    let forged = segment::encode(&events, &decoded_header, "deflate").unwrap();
    std::fs::write(path(0), &forged.bytes).unwrap();
    let mut s = rows[0].segment.clone();
    s.file_sha256 = segment::sha256(&forged.bytes);
    s.byte_size = forged.bytes.len() as i64;
    s.content_digest = forged.content_digest.clone();
    let manifest = s.manifest();
    std::fs::write(f.archive_dir.join(s.manifest_key()), &manifest).unwrap();
    sqlx::query("UPDATE archive_segments SET file_sha256 = $2, byte_size = $3, content_digest = $4, manifest_sha256 = $5 WHERE segment_id = $1")
        .bind(s.segment_id).bind(&s.file_sha256).bind(s.byte_size).bind(&s.content_digest).bind(segment::sha256(&manifest))
        .execute(f.pool()).await.unwrap();
    // The next segment's chain still names the old manifest: re-point it, as a forger would.
    sqlx::query("UPDATE archive_segments SET prev_manifest_sha256 = $2 WHERE segment_id = $1")
        .bind(rows[1].segment.segment_id)
        .bind(segment::sha256(&manifest))
        .execute(f.pool())
        .await
        .unwrap();
    let mut s1 = rows[1].segment.clone();
    s1.prev_manifest_sha256 = Some(segment::sha256(&manifest));
    let m1 = s1.manifest();
    std::fs::write(f.archive_dir.join(s1.manifest_key()), &m1).unwrap();
    sqlx::query("UPDATE archive_segments SET manifest_sha256 = $2 WHERE segment_id = $1")
        .bind(s1.segment_id)
        .bind(segment::sha256(&m1))
        .execute(f.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE archive_segments SET prev_manifest_sha256 = $2 WHERE segment_id = $1")
        .bind(rows[2].segment.segment_id)
        .bind(segment::sha256(&m1))
        .execute(f.pool())
        .await
        .unwrap();
    let mut s2 = rows[2].segment.clone();
    s2.prev_manifest_sha256 = Some(segment::sha256(&m1));
    std::fs::write(f.archive_dir.join(s2.manifest_key()), s2.manifest()).unwrap();
    sqlx::query("UPDATE archive_segments SET manifest_sha256 = $2 WHERE segment_id = $1")
        .bind(s2.segment_id)
        .bind(segment::sha256(&s2.manifest()))
        .execute(f.pool())
        .await
        .unwrap();
    // 3: truncated.
    let bytes = std::fs::read(path(3)).unwrap();
    std::fs::write(path(3), &bytes[..bytes.len() / 2]).unwrap();
    // 4: its data object deleted.
    std::fs::remove_file(path(4)).unwrap();

    let problems = |report: &archive::verify::Report| -> BTreeMap<i64, String> {
        report
            .segments
            .iter()
            .filter(|v| !v.problems.is_empty())
            .map(|v| (v.seq, v.problems.join("; ")))
            .collect()
    };
    let shallow = archive::verify::verify(f.pool(), &f.objects, None, Depth::Shallow)
        .await
        .unwrap();
    let found = problems(&shallow);
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        [4, 5],
        "{found:?}"
    );
    assert!(found[&4].contains("bytes, the catalog says"), "{found:?}");
    assert!(found[&5].contains("is missing"), "{found:?}");
    // The forged segment passes every check but the database's.
    let deep = archive::verify::verify(f.pool(), &f.objects, None, Depth::Deep)
        .await
        .unwrap();
    assert_eq!(problems(&deep).keys().copied().collect::<Vec<_>>(), [4, 5]);
    let against = archive::verify::verify(f.pool(), &f.objects, None, Depth::AgainstDb)
        .await
        .unwrap();
    let found = problems(&against);
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        [1, 4, 5],
        "{found:?}"
    );
    assert!(
        found[&1].contains("the database's events in its range differ"),
        "{found:?}"
    );

    // A broken chain: segment 3's manifest names something else.
    sqlx::query("UPDATE archive_segments SET prev_manifest_sha256 = 'feed' WHERE seq = 3")
        .execute(f.pool())
        .await
        .unwrap();
    let chain = archive::verify::verify(f.pool(), &f.objects, None, Depth::Shallow)
        .await
        .unwrap();
    assert!(
        problems(&chain)[&3].contains("hash chain is broken"),
        "{:?}",
        problems(&chain)
    );

    // The command says the same and exits non-zero.
    let out = run(f.keel(&["archive", "verify", "--deep"])).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stdout.contains(&rows[3].segment.object_key),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("failed verification"), "{}", out.stderr);
}

/// The read models of `projection`: every table of its live schema but the bookkeeping, as JSON.
async fn read_model(pool: &PgPool, projection: &str) -> BTreeMap<String, Value> {
    let schema = keel::projection::live_schema(projection);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1
          AND table_name NOT IN ('keel_rebuild') ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT COALESCE(jsonb_agg(to_jsonb(x) ORDER BY to_jsonb(x)::text), '[]') FROM {schema}.{t} x"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(t, rows);
    }
    out
}

async fn rebuild_all(f: &Fixture, archive: Tiered) {
    for projection in keel::projection::builtin() {
        rebuild(
            f.pool(),
            &f.app.registry,
            projection.as_ref(),
            &RebuildOptions {
                restart: true,
                page: 5,
                archive: archive.clone(),
                ..Default::default()
            },
            &Reporter::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    }
}

/// The store's whole log once it holds `events`: the log shows only what is below the server's
/// snapshot horizon, and another test's open write transaction holds its tail back for a while.
async fn settled_log(pool: &PgPool, events: usize) -> Vec<(i64, Uuid, Value, Value, Option<i32>)> {
    eventually(
        Duration::from_secs(30),
        &format!("the {events} events below the log's horizon"),
        || async {
            let log = whole_log(pool, &Tiered::default()).await;
            (log.len() == events).then_some(log)
        },
    )
    .await
}

/// Every event in the log, read through `tiered`, from the start.
async fn whole_log(pool: &PgPool, tiered: &Tiered) -> Vec<(i64, Uuid, Value, Value, Option<i32>)> {
    let mut out = Vec::new();
    let mut after = LogCursor::START;
    loop {
        let page = tiered
            .read_after(pool, after, &LogFilter::default(), 4)
            .await
            .unwrap();
        let Some(last) = page.last() else { return out };
        after = last.cursor();
        out.extend(page.into_iter().map(|e| {
            (
                e.event.position,
                e.event.id,
                e.event.payload,
                e.event.metadata,
                e.event.schema_id,
            )
        }));
    }
}

/// Each aggregate keeps a suffix of its history: versions truncated_before..=version, no hole.
async fn assert_no_holes(pool: &PgPool) {
    let holes: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT s.aggregate_type, s.aggregate_id FROM streams s
           LEFT JOIN events e USING (aggregate_type, aggregate_id)
          GROUP BY s.aggregate_type, s.aggregate_id, s.version, s.truncated_before
         HAVING count(e.*) <> s.version - s.truncated_before + 1
             OR COALESCE(min(e.version), s.truncated_before) <> s.truncated_before",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        holes.is_empty(),
        "aggregates with a hole in their history: {holes:?}"
    );
}

#[tokio::test]
async fn after_archiving_and_purging_two_of_three_types_rebuilds_replays_and_restores_are_whole() {
    let f = fixture(
        &[
            ("agent.state.changed", "retention = \"1d\""),
            (
                "l12.service_invoked",
                "[retention]\nhot = \"1d\"\narchive = \"required\"",
            ),
        ],
        5,
    )
    .await;
    let agents: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let services: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for round in 0..6 {
        for (i, agent) in agents.iter().enumerate() {
            let mut events = vec![agent_state_changed(*agent, &format!("r{round}"))];
            // Agent 0 completes a task (kept forever) in round 3: only its prefix before it goes.
            if i == 0 && round == 3 {
                events.push(task_completed(*agent, round));
            }
            append(&f.app, "agent", *agent, events).await;
        }
        for (i, service) in services.iter().enumerate() {
            append(
                &f.app,
                "service",
                *service,
                vec![service_invoked(round * 3 + i)],
            )
            .await;
        }
    }
    // The projections are registered and up to date; the relay has delivered everything.
    rebuild_all(&f, Tiered::default()).await;
    deliver_everything(f.pool()).await;
    let models_before: Vec<_> = futures_util::future::join_all(
        ["agent_status", "service_invocations"].map(|p| read_model(f.pool(), p)),
    )
    .await;
    let log_before = settled_log(f.pool(), 43).await;
    let rows_before = all_rows(f.pool()).await;

    // The plan changes nothing and says what would go.
    let plan = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap();
    let by_type = |t: &str| {
        plan.types
            .iter()
            .find(|p| p.event_type == t)
            .unwrap()
            .clone()
    };
    assert_eq!(by_type("l12.service_invoked").not_archived, 18, "{plan:?}");
    assert_eq!(by_type("l12.service_invoked").purge, 0);
    assert_eq!(all_rows(f.pool()).await, rows_before);

    f.archive(later()).await;
    let plan = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap();
    let by_type = |t: &str| {
        plan.types
            .iter()
            .find(|p| p.event_type == t)
            .unwrap()
            .clone()
    };
    assert_eq!(by_type("l12.service_invoked").purge, 18, "{plan:?}");
    // Agent 0: versions 1-4 go; the task event (v5) is kept forever, so v5.. stay (prefix rule).
    assert_eq!(by_type("agent.state.changed").purge, 3 * 6 + 4, "{plan:?}");
    assert_eq!(by_type("agent.state.changed").blocked.prefix, 2, "{plan:?}");
    assert_eq!(by_type("agent.task.completed").purge, 0);

    let report = f.purge(later()).await;
    assert_eq!(
        report.purged,
        [
            ("agent.state.changed".to_owned(), 22),
            ("l12.service_invoked".to_owned(), 18)
        ],
        "{report:?}"
    );
    assert_no_holes(f.pool()).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(
        left, 3,
        "agent 0's task event and the two state events after it"
    );
    // A second run is a no-op.
    assert!(f.purge(later()).await.purged.is_empty());

    // Optimistic concurrency survives: a service whose every event went still has version 6.
    let reply = f
        .app
        .append(
            "service",
            services[0],
            &json!({"expected_version": 0, "events": [service_invoked(99)]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    let reply = f
        .app
        .append(
            "service",
            services[0],
            &json!({"expected_version": 6, "events": [service_invoked(99)]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["events"][0]["version"], 7);
    sqlx::query("DELETE FROM outbox")
        .execute(f.pool())
        .await
        .unwrap();

    // Reads below the horizon are refused, never short.
    let reply = f.app.get("/v1/events").await;
    assert_eq!(reply.status, StatusCode::GONE, "{}", reply.body);
    assert_eq!(reply.error_code(), "archived");
    assert_eq!(
        reply.body["error"]["details"]["archive"],
        f.app.config.archive.url
    );
    let reply = f
        .app
        .get("/v1/events?event_type=agent.task.completed")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let stream = format!("/v1/aggregates/agent/{}/events", agents[0]);
    let reply = f.app.get(&stream).await;
    assert_eq!(reply.status, StatusCode::GONE, "{}", reply.body);
    assert_eq!(reply.body["error"]["details"]["truncated_before"], 5);
    let reply = f.app.get(&format!("{stream}?from_version=5")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["events"].as_array().unwrap().len(), 3);
    let metrics = f.app.get_text("/metrics").await;
    assert!(
        metrics.contains("keel_reads_position_archived_total"),
        "{metrics}"
    );

    // Through the archive, the log is what it was (plus the one new event), in the same order.
    let tiered = Tiered::new(Some(f.objects.clone()));
    let mut log_after = whole_log(f.pool(), &tiered).await;
    let new = log_after.pop().unwrap();
    assert_eq!(
        log_after, log_before,
        "the tiered log differs from the log before the purge"
    );
    assert_eq!(new.2["service_name"], "svc-0");
    // Rebuilt through the archive, the read models are what they were (plus that event).
    sqlx::query("DELETE FROM events WHERE id = $1")
        .bind(new.1)
        .execute(f.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE streams SET version = 6 WHERE aggregate_id = $1")
        .bind(services[0])
        .execute(f.pool())
        .await
        .unwrap();
    rebuild_all(&f, tiered.clone()).await;
    let models_after: Vec<_> = futures_util::future::join_all(
        ["agent_status", "service_invocations"].map(|p| read_model(f.pool(), p)),
    )
    .await;
    assert_eq!(models_after, models_before);
    // Without an archive the rebuild refuses instead of building a partial model.
    let err = rebuild(
        f.pool(),
        &f.app.registry,
        keel::projection::find("service_invocations")
            .unwrap()
            .as_ref(),
        &RebuildOptions {
            restart: true,
            ..Default::default()
        },
        &Reporter::default(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no archive is configured"),
        "{err:#}"
    );

    // Restore puts every row back as it was; twice changes nothing.
    for t in ["agent.state.changed", "l12.service_invoked"] {
        let report = archive::restore::restore(
            f.pool(),
            &f.objects,
            &archive::restore::RestoreOptions {
                event_type: t.into(),
                from: None,
                to: None,
                republish: false,
            },
        )
        .await
        .unwrap();
        assert!(report.restored > 0 && report.horizon_cleared, "{report:?}");
    }
    assert!(
        all_rows(f.pool()).await == rows_before,
        "the restored rows differ from those before the purge"
    );
    assert_eq!(
        f.app.count("outbox").await,
        0,
        "a restore sent something to the relay"
    );
    assert_no_holes(f.pool()).await;
    let again = archive::restore::restore(
        f.pool(),
        &f.objects,
        &archive::restore::RestoreOptions {
            event_type: "agent.state.changed".into(),
            from: None,
            to: None,
            republish: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(again.restored, 0);
    assert!(
        all_rows(f.pool()).await == rows_before,
        "a second restore changed something"
    );
    assert_eq!(f.app.get("/v1/events").await.status, StatusCode::OK);
}

/// Every event row, and every stream's head, as text.
async fn all_rows(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('%s %s %s %s %s %s %s %s %s %s', id, position, tx_id, aggregate_type,
                       aggregate_id, version, event_type, payload, metadata, created_at)
           FROM events
         UNION ALL
         SELECT format('stream %s %s %s %s', aggregate_type, aggregate_id, version, truncated_before)
           FROM streams
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn undelivered_events_and_lagging_projections_keep_their_events() {
    let f = fixture(&[("agent.state.changed", "retention = \"1d\"")], 50).await;
    let agents: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for agent in &agents {
        for n in 0..3 {
            append(
                &f.app,
                "agent",
                *agent,
                vec![agent_state_changed(*agent, &format!("s{n}"))],
            )
            .await;
        }
    }
    rebuild_all(&f, Tiered::default()).await;
    f.archive(later()).await;
    // Nothing was delivered yet: everything stays.
    let plan = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap();
    let t = plan
        .types
        .iter()
        .find(|p| p.event_type == "agent.state.changed")
        .unwrap();
    assert_eq!((t.purge, t.blocked.undelivered), (0, 9), "{t:?}");
    assert!(f.purge(later()).await.purged.is_empty());
    // Delivered, but the projection has applied only agent 0's first event.
    deliver_everything(f.pool()).await;
    sqlx::query("UPDATE keel_proj_agent_status.keel_applied SET version = CASE WHEN aggregate_id = $1 THEN 1 ELSE 0 END")
        .bind(agents[0])
        .execute(f.pool())
        .await
        .unwrap();
    let plan = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap();
    let t = plan
        .types
        .iter()
        .find(|p| p.event_type == "agent.state.changed")
        .unwrap();
    assert_eq!((t.purge, t.blocked.projection_behind), (1, 8), "{t:?}");
    assert_eq!(
        f.purge(later()).await.purged,
        [("agent.state.changed".to_owned(), 1)]
    );
    assert_no_holes(f.pool()).await;
    // An unknown registered projection blocks everything, saying why.
    sqlx::query("INSERT INTO projections (name) VALUES ('someone_elses')")
        .execute(f.pool())
        .await
        .unwrap();
    let err = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("someone_elses"), "{err}");
}

#[tokio::test]
async fn a_legal_hold_a_full_history_and_allow_loss_policies_are_obeyed() {
    let f = fixture(
        &[
            (
                "agent.state.changed",
                "[retention]\nhot = \"1d\"\nlegal_hold = true",
            ),
            (
                "l12.service_invoked",
                "[retention]\nhot = \"1d\"\narchive = \"none\"\nallow_loss = true",
            ),
        ],
        50,
    )
    .await;
    let agent = Uuid::new_v4();
    let service = Uuid::new_v4();
    for n in 0..3 {
        append(
            &f.app,
            "agent",
            agent,
            vec![agent_state_changed(agent, &format!("s{n}"))],
        )
        .await;
        append(&f.app, "service", service, vec![service_invoked(n)]).await;
    }
    deliver_everything(f.pool()).await;
    let report = f.archive(later()).await;
    assert!(
        report.types.is_empty(),
        "nothing needs an archive here: {report:?}"
    );
    let plan = retention::plan(f.pool(), &f.catalog, &readers(), later(), 3600)
        .await
        .unwrap();
    let t = plan
        .types
        .iter()
        .find(|p| p.event_type == "agent.state.changed")
        .unwrap();
    assert_eq!((t.purge, t.blocked.legal_hold), (0, 3), "{t:?}");
    // allow_loss: gone without an archive.
    assert_eq!(
        f.purge(later()).await.purged,
        [("l12.service_invoked".to_owned(), 3)]
    );
    assert_eq!(f.app.count("events").await, 3);
}

#[tokio::test]
async fn an_archiver_killed_mid_run_leaves_no_duplicate_and_a_rerun_finishes_the_work() {
    let f = fixture(&[("agent.state.changed", "retention = \"1d\"")], 1).await;
    let agent = Uuid::new_v4();
    for n in 0..150 {
        append(
            &f.app,
            "agent",
            agent,
            vec![agent_state_changed(agent, &format!("s{n}"))],
        )
        .await;
    }
    let keel = |args: &[&str]| {
        let mut command = f.keel(args);
        command.env("KEEL_ARCHIVE__MAX_SEGMENT_RECORDS", "1");
        command
    };
    let now = later().to_rfc3339();
    let mut child = keel(&["archive", "run", "--now", &now])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the archiver to write 20 segments",
        || async { (f.app.count("archive_segments").await >= 20).then_some(()) },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let written = f.app.count("archive_segments").await;
    assert!(written < 150, "the archiver finished before it was killed");

    // A crash between upload and commit leaves the next object with no row: plant one, as the
    // killed process may have, with exactly the database's next event in it.
    let next: Vec<ArchivedEvent> = f
        .stored("agent.state.changed")
        .await
        .into_iter()
        .skip(written as usize)
        .take(1)
        .collect();
    let key = archive::manifest::Segment::key_for(
        "agent.state.changed",
        next[0].schema_id,
        next[0].created_at,
        written + 1,
    );
    let id = Uuid::new_v4();
    let header = segment::Header {
        format: segment::FORMAT.into(),
        segment_id: id.to_string(),
        event_type: "agent.state.changed".into(),
        schema_id: next[0].schema_id.map_or("none".into(), |s| s.to_string()),
        cursor_lo: next[0].cursor().to_string(),
        cursor_hi: next[0].cursor().to_string(),
        record_count: "1".into(),
    };
    let planted = segment::encode(&next, &header, "deflate").unwrap();
    // The killed process may have left one there itself, which is the same case.
    let id = match f
        .objects
        .create(&key, planted.bytes.clone().into())
        .await
        .unwrap()
    {
        archive::objects::Created::New => id,
        archive::objects::Created::Exists => {
            let left = segment::decode(&f.objects.get(&key).await.unwrap()).unwrap();
            left.header.segment_id.parse().unwrap()
        }
    };

    let out = run(keel(&["archive", "run", "--now", &now, "--json"])).await;
    let report: Value = serde_json::from_str(&out.expect_ok("keel archive run")).unwrap();
    assert!(
        report["types"][0]["adopted"].as_u64().unwrap() <= 1,
        "{report}"
    );
    let archived = f.archived("agent.state.changed").await;
    assert_eq!(
        archived,
        f.stored("agent.state.changed").await,
        "segments and rows differ"
    );
    let rows = archive::manifest::list(f.pool(), None).await.unwrap();
    assert_eq!(rows.len(), 150);
    assert!(
        rows.iter()
            .any(|r| r.segment.object_key == key && r.segment.segment_id == id),
        "the planted object was not adopted"
    );
    let out = run(keel(&["archive", "verify", "--against-db", "--json"])).await;
    let verify: Value = serde_json::from_str(&out.expect_ok("keel archive verify")).unwrap();
    assert_eq!(verify["orphans"], json!([]), "{verify}");

    // An object in the way that holds other events stops the run, named, and marks nothing.
    append(
        &f.app,
        "agent",
        agent,
        vec![agent_state_changed(agent, "one more")],
    )
    .await;
    let last = f.stored("agent.state.changed").await.pop().unwrap();
    let key = archive::manifest::Segment::key_for(
        "agent.state.changed",
        last.schema_id,
        last.created_at,
        151,
    );
    let mut wrong = last.clone();
    wrong.payload_json = "{\"forged\": true}".into();
    let junk = segment::encode(&[wrong], &header, "deflate").unwrap();
    let _ = f.objects.create(&key, junk.bytes.into()).await.unwrap();
    let out = run(keel(&["archive", "run", "--now", &now])).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&key) && out.stderr.contains("never overwrites"),
        "{}",
        out.stderr
    );
    assert_eq!(f.app.count("archive_segments").await, 150);
}

#[tokio::test]
async fn a_purge_killed_midway_leaves_whole_prefixes_and_never_touches_an_unverified_segment() {
    let f = fixture(&[("agent.state.changed", "retention = \"1d\"")], 10).await;
    let agents: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for n in 0..20 {
        for agent in &agents {
            append(
                &f.app,
                "agent",
                *agent,
                vec![agent_state_changed(*agent, &format!("s{n}"))],
            )
            .await;
        }
    }
    deliver_everything(f.pool()).await;
    f.archive(later()).await;
    // Segment 12 of 20 fails its check: nothing from it or after it may go.
    sqlx::query(
        "UPDATE archive_segments SET state = 'written', verified_at = NULL WHERE seq >= 12",
    )
    .execute(f.pool())
    .await
    .unwrap();
    let broken = archive::manifest::list(f.pool(), None)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.segment.seq == 12)
        .unwrap();
    std::fs::write(f.archive_dir.join(&broken.segment.object_key), b"not avro").unwrap();
    let keel = || {
        let mut command = f.keel(&["retention", "run", "--now", &later().to_rfc3339()]);
        command.env("KEEL_ARCHIVE__PURGE_BATCH", "1");
        command
    };
    // It fails on the broken segment before deleting anything.
    let out = run(keel()).await;
    assert!(
        !out.ok && out.stderr.contains(&broken.segment.object_key),
        "{}",
        out.stderr
    );
    assert_eq!(f.app.count("events").await, 200);
    // Repaired (the catalog's record of it put back), it purges up to the unverified tail.
    // Repaired (rewritten from the rows it holds), the purge re-verifies it and goes on.
    sqlx::query("UPDATE archive_segments SET state = 'written' WHERE seq >= 12")
        .execute(f.pool())
        .await
        .unwrap();
    let restored_ok = restore_object(&f, &broken).await;
    assert!(restored_ok);
    let mut child = keel()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the purge to delete 20 events",
        || async { (f.app.count("events").await <= 180).then_some(()) },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_holes(f.pool()).await;
    let out = run(keel()).await;
    out.expect_ok("keel retention run");
    assert_no_holes(f.pool()).await;
    assert_eq!(
        f.app.count("events").await,
        0,
        "every event was archived and verified"
    );
    let horizon: i64 = sqlx::query_scalar("SELECT purged_events FROM retention_horizons")
        .fetch_one(f.pool())
        .await
        .unwrap();
    assert_eq!(horizon, 200);
}

fn header_of(row: &archive::manifest::SegmentRow) -> segment::Header {
    let s = &row.segment;
    segment::Header {
        format: segment::FORMAT.into(),
        segment_id: s.segment_id.to_string(),
        event_type: s.event_type.clone(),
        schema_id: s.schema_id.map_or("none".into(), |x| x.to_string()),
        cursor_lo: s.lo().to_string(),
        cursor_hi: s.hi().to_string(),
        record_count: s.record_count.to_string(),
    }
}

/// Writes a segment's object again from the database rows, and records its new sha256.
async fn restore_object(f: &Fixture, row: &archive::manifest::SegmentRow) -> bool {
    let rows = f.archived_rows(row).await;
    let encoded = segment::encode(&rows, &header_of(row), &row.segment.codec).unwrap();
    if encoded.content_digest != row.segment.content_digest {
        return false;
    }
    std::fs::write(f.archive_dir.join(&row.segment.object_key), &encoded.bytes).unwrap();
    let mut s = row.segment.clone();
    s.file_sha256 = segment::sha256(&encoded.bytes);
    s.byte_size = encoded.bytes.len() as i64;
    // The manifest and the chain from here on follow the new bytes.
    let rows_after = archive::manifest::list(f.pool(), None).await.unwrap();
    let mut prev = row.segment.prev_manifest_sha256.clone();
    for r in rows_after
        .iter()
        .filter(|r| r.segment.seq >= row.segment.seq)
    {
        let mut seg = if r.segment.seq == row.segment.seq {
            s.clone()
        } else {
            r.segment.clone()
        };
        seg.prev_manifest_sha256 = prev.clone();
        let manifest = seg.manifest();
        let sha = segment::sha256(&manifest);
        std::fs::write(f.archive_dir.join(seg.manifest_key()), &manifest).unwrap();
        sqlx::query("UPDATE archive_segments SET file_sha256 = $2, byte_size = $3, prev_manifest_sha256 = $4, manifest_sha256 = $5 WHERE segment_id = $1")
            .bind(seg.segment_id).bind(&seg.file_sha256).bind(seg.byte_size).bind(&seg.prev_manifest_sha256).bind(&sha)
            .execute(f.pool()).await.unwrap();
        prev = Some(sha);
    }
    true
}

impl Fixture {
    async fn archived_rows(&self, row: &archive::manifest::SegmentRow) -> Vec<ArchivedEvent> {
        self.stored(&row.segment.event_type)
            .await
            .into_iter()
            .filter(|e| e.cursor() >= row.segment.lo() && e.cursor() <= row.segment.hi())
            .collect()
    }
}

#[tokio::test]
async fn on_s3_the_archive_verifies_against_the_database_purges_and_reads_back_through() {
    let server = crate::archive_objects::Moto::start().await;
    let mut f = fixture(&[("l12.service_invoked", "retention = \"1d\"")], 4).await;
    f.objects =
        crate::archive_objects::on_server(&server, crate::archive_objects::BUCKET, "keel/e2e");
    let services: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for n in 0..12 {
        append(&f.app, "service", services[n % 3], vec![service_invoked(n)]).await;
    }
    deliver_everything(f.pool()).await;
    let before = settled_log(f.pool(), 12).await;
    let report = f.archive(later()).await;
    // Segments of at most 4 records; one more when the run met the server's snapshot horizon
    // part-way (other tests on the shared server hold transactions open) and closed a short one.
    assert_eq!(report.types[0].events, 12, "{report:?}");
    assert!((3..=4).contains(&report.types[0].segments), "{report:?}");
    let verified = archive::verify::verify(f.pool(), &f.objects, None, Depth::AgainstDb)
        .await
        .unwrap();
    assert_eq!(verified.failed(), 0, "{verified:?}");
    assert_eq!(
        f.purge(later()).await.purged,
        [("l12.service_invoked".to_owned(), 12)]
    );
    assert_eq!(f.app.count("events").await, 0);
    let tiered = Tiered::new(Some(f.objects.clone()));
    assert_eq!(
        whole_log(f.pool(), &tiered).await,
        before,
        "the log read back from S3 differs"
    );
    let restored = archive::restore::restore(
        f.pool(),
        &f.objects,
        &archive::restore::RestoreOptions {
            event_type: "l12.service_invoked".into(),
            from: None,
            to: None,
            republish: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(restored.restored, 12);
    // --republish hands every restored event to the relay again.
    assert_eq!(f.app.count("outbox").await, 12);
    assert_eq!(whole_log(f.pool(), &Tiered::default()).await, before);
}

#[tokio::test]
async fn keel_serve_with_a_schedule_archives_and_purges_by_itself_and_the_status_commands_say_so() {
    let f = fixture(&[("l12.service_invoked", "retention = \"1d\"")], 5).await;
    let service = Uuid::new_v4();
    for n in 0..8 {
        append(&f.app, "service", service, vec![service_invoked(n)]).await;
    }
    deliver_everything(f.pool()).await;
    // Aged past the policy's hot day, as time would.
    sqlx::query("UPDATE events SET created_at = created_at - interval '3 days'")
        .execute(f.pool())
        .await
        .unwrap();
    let cli = |args: &[&str]| f.keel(args);
    let plan = run(cli(&["retention", "plan", "--json"])).await;
    let plan: Value = serde_json::from_str(&plan.expect_ok("keel retention plan")).unwrap();
    let l12 = plan["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["event_type"] == "l12.service_invoked")
        .unwrap()
        .clone();
    assert_eq!(
        (
            l12["due"].as_i64(),
            l12["not_archived"].as_i64(),
            l12["purge"].as_i64()
        ),
        (Some(8), Some(8), Some(0)),
        "{l12}"
    );

    let _serve = crate::helpers::ServeProcess::start(
        &f.app,
        &[
            (
                "KEEL_SCHEMAS_DIR",
                f.app.config.schemas_dir.display().to_string(),
            ),
            ("KEEL_ARCHIVE__URL", f.app.config.archive.url.clone()),
            ("KEEL_ARCHIVE__SCHEDULE", "1s".into()),
        ],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the scheduled job to archive and purge",
        || async { (f.app.count("events").await == 0).then_some(()) },
    )
    .await;
    let states: Vec<(i64, String, i32)> =
        sqlx::query_as("SELECT seq, state, record_count FROM archive_segments ORDER BY seq")
            .fetch_all(f.pool())
            .await
            .unwrap();
    // keel serve cuts segments at its own (default) size: one segment here.
    assert_eq!(states, [(1, "purged".to_owned(), 8)]);

    let status = run(cli(&["retention", "status", "--json"])).await;
    let status: Value = serde_json::from_str(&status.expect_ok("keel retention status")).unwrap();
    let l12 = status["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["event_type"] == "l12.service_invoked")
        .unwrap()
        .clone();
    assert_eq!(
        (l12["segments"].as_i64(), l12["purged_events"].as_i64()),
        (Some(1), Some(8)),
        "{l12}"
    );
    assert!(l12["horizon"].is_string(), "{l12}");
    let text = run(cli(&["retention", "status"]))
        .await
        .expect_ok("keel retention status");
    assert!(
        text.contains("l12.service_invoked") && text.contains("hot 1d"),
        "{text}"
    );
}
