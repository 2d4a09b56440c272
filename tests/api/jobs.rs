//! Operator jobs with their state in PostgreSQL (`src/jobs/`, `/v1/jobs`, `keel jobs`): each
//! rebuild and republish has a row that shows who started it, how far it got and how it ended;
//! a cancel reaches a job in another keel process; a job whose process died or stopped is
//! marked interrupted and resumes from its cursor; a dry run counts what the job then does.

use std::time::Duration;

use keel::auth::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    agent_state_changed, client_with_key, eventually, run, ServeProcess, TestApp,
};

const LONG: Duration = Duration::from_secs(60);

/// Appends `per_agent` state changes to each of `agents` new agents, twenty to a request.
async fn seed(app: &TestApp, agents: usize, per_agent: usize) -> usize {
    use futures::StreamExt;
    let batches: Vec<(Uuid, Vec<Value>)> = (0..agents)
        .flat_map(|_| {
            let agent = Uuid::new_v4();
            let events: Vec<Value> = (0..per_agent)
                .map(|i| agent_state_changed(agent, &format!("s{i}")))
                .collect();
            events
                .chunks(20)
                .map(|c| (agent, c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    // One request per agent at a time keeps each agent's batches in order.
    let mut by_agent: std::collections::BTreeMap<Uuid, Vec<Vec<Value>>> = Default::default();
    for (agent, batch) in batches {
        by_agent.entry(agent).or_default().push(batch);
    }
    futures::stream::iter(by_agent)
        .for_each_concurrent(8, |(agent, batches)| async move {
            for batch in batches {
                let reply = app.append("agent", agent, &json!({"events": batch})).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            }
        })
        .await;
    agents * per_agent
}

/// A client of `base` (an API's URL) with `key`.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: client_with_key(key),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let reply = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let reply = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = reply.status();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// Starts the job at `path` and reads its answer's first line, `started` with the job's id.
    async fn start(&self, path: &str, body: &Value) -> (Uuid, Lines) {
        let reply = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let mut lines = Lines {
            reply,
            buffer: Vec::new(),
        };
        let first = lines.next().await.expect("a first line");
        assert_eq!(first["state"], "started", "{first}");
        let id = first["job"].as_str().unwrap().parse().unwrap();
        (id, lines)
    }

    async fn job(&self, id: Uuid) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    /// Job `id` once `check` holds for it.
    async fn job_until(&self, id: Uuid, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(LONG, what, || async {
            let job = self.job(id).await;
            check(&job).then_some(job)
        })
        .await
    }

    /// What a rebuild of agent_status would read, once it would read `events` events.
    async fn preview_until(&self, body: &Value, events: usize) -> Value {
        let mut body = body.clone();
        body["dry_run"] = json!(true);
        eventually(LONG, "the log to show every event", || async {
            let (status, preview) = self
                .post("/v1/projections/agent_status/rebuild", &body)
                .await;
            assert_eq!(status, StatusCode::OK, "{preview}");
            (preview["events"] == events).then_some(preview)
        })
        .await
    }
}

/// A job's NDJSON answer, line by line.
struct Lines {
    reply: reqwest::Response,
    buffer: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            self.buffer
                .extend_from_slice(&self.reply.chunk().await.unwrap()?);
        }
    }

    /// Every line left, to the end of the answer.
    async fn rest(mut self) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(line) = self.next().await {
            all.push(line);
        }
        all
    }
}

/// Audit rows of `action`, oldest first: (principal, outcome).
async fn audited(app: &TestApp, action: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT principal, outcome FROM audit_log WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(app.store.pool())
        .await
        .unwrap()
}

/// The live agent_status read model: (agents, transitions).
async fn agent_status(app: &TestApp) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), COALESCE(sum(transitions), 0)::bigint FROM keel_proj_agent_status.agent_status",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_jobs_row_runs_to_done_with_its_progress_its_starter_and_the_count_its_dry_run_gave(
) {
    let app = crate::helpers::spawn_app().await;
    let ops = Api::new(
        &app.url(""),
        &app.principal("ops", &[Role::Operator], &[]).await,
    );
    let events = seed(&app, 30, 10).await;
    let preview = ops.preview_until(&json!({"page": 7}), events).await;
    assert_eq!(
        (&preview["kind"], &preview["target"], &preview["schema"]),
        (
            &json!("rebuild"),
            &json!("agent_status"),
            &json!("keel_proj_agent_status_rebuild")
        ),
        "{preview}"
    );
    assert_eq!(preview["event_types"], json!(["agent.state.changed"]));
    let said = run({
        let mut c = app.keel();
        c.args(["replay", "projection", "agent_status", "--dry-run"]);
        c
    })
    .await
    .expect_ok("keel replay projection --dry-run");
    assert_eq!(
        serde_json::from_str::<Value>(&said).unwrap()["events"],
        events
    );
    // A dry run starts nothing.
    assert_eq!(app.count("jobs").await, 0);

    // Hold the projection's creation lock, so that the job waits at its start, visibly running.
    let mut holder = app.store.pool().acquire().await.unwrap().detach();
    sqlx::query("SELECT pg_advisory_lock(hashtext('keel_projection_agent_status'))")
        .execute(&mut holder)
        .await
        .unwrap();
    let (id, lines) = ops
        .start("/v1/projections/agent_status/rebuild", &json!({"page": 7}))
        .await;
    let first = ops.job(id).await;
    assert_eq!(
        (
            &first["state"],
            &first["kind"],
            &first["target"],
            &first["started_by"]
        ),
        (
            &json!("running"),
            &json!("rebuild"),
            &json!("agent_status"),
            &json!("ops")
        ),
        "{first}"
    );
    assert_eq!(
        first["params"],
        json!({"until": null, "aggregate": null, "restart": false, "page": 7})
    );
    assert!(
        first["process"].as_str().is_some_and(|p| !p.is_empty()),
        "{first}"
    );
    // Its heartbeat moves while the work waits.
    ops.job_until(id, "the heartbeat to move", |j| {
        j["heartbeat_at"] != first["heartbeat_at"]
    })
    .await;
    drop(holder);

    let done = ops
        .job_until(id, "the rebuild to end", |j| j["state"] != "running")
        .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (&done["done"], &done["total"]),
        (&json!(events), &json!(events)),
        "{done}"
    );
    assert_eq!(done["report"]["events_read"], preview["events"], "{done}");
    assert_eq!(done["report"]["swapped"], true);
    assert!(
        done["ended_at"].is_string() && done["eta_s"].is_null(),
        "{done}"
    );
    assert_eq!(agent_status(&app).await, (30, events as i64));
    let last = lines.rest().await.pop().unwrap();
    assert_eq!(
        (&last["state"], &last["job"]),
        (&json!("done"), &json!(id)),
        "{last}"
    );
    assert_eq!(last["report"], done["report"]);

    // The CLI lists it and shows it.
    let listed = run({
        let mut c = app.keel();
        c.args(["jobs", "list", "--json"]);
        c
    })
    .await
    .json_lines("keel jobs list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["id"], &listed[0]["state"]),
        (&json!(id), &json!("done"))
    );
    let table = run({
        let mut c = app.keel();
        c.args(["jobs", "list", "--kind", "rebuild"]);
        c
    })
    .await
    .expect_ok("keel jobs list");
    assert!(
        table.starts_with("id ") && table.contains(&id.to_string()),
        "{table}"
    );
    assert!(table.contains(&format!("{events}/{events}")), "{table}");
    let shown = run({
        let mut c = app.keel();
        c.args(["jobs", "show", &id.to_string()]);
        c
    })
    .await
    .expect_ok("keel jobs show");
    assert!(
        shown.contains("state: done") && shown.contains("started_by: ops"),
        "{shown}"
    );
    let (status, none) = ops.get("/v1/jobs?state=running").await;
    assert_eq!((status, &none["jobs"]), (StatusCode::OK, &json!([])));
    let (status, bad) = ops.get("/v1/jobs?state=sleeping").await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_state"))
    );
}

/// The shadow schema's stored cursor, and the sum of its aggregates' applied versions (the
/// number of events applied, since each agent's events are applied in version order).
async fn shadow(app: &TestApp) -> ((i64, i64), i64) {
    let cursor: (i64, i64) =
        sqlx::query_as("SELECT tx_id, position FROM keel_proj_agent_status_rebuild.keel_rebuild")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    let applied: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(version), 0)::bigint FROM keel_proj_agent_status_rebuild.keel_applied",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    (cursor, applied)
}

/// The log cursor of the `n`th agent event in log order.
async fn nth_cursor(app: &TestApp, n: i64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT tx_id::text::bigint, position FROM events WHERE event_type = 'agent.state.changed'
          ORDER BY tx_id, position OFFSET $1 - 1 LIMIT 1",
    )
    .bind(n)
    .fetch_one(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_rebuild_in_another_process_at_a_page_boundary_and_its_resume_reads_only_the_rest(
) {
    let app = crate::helpers::spawn_app().await;
    let ops_key = app.principal("ops", &[Role::Operator], &[]).await;
    let reader_key = app.principal("looker", &[Role::Reader], &[]).await;
    // Enough pages that the rebuild is still running when its first progress line (after 2 s)
    // and the cancel arrive, on a quiet machine too (600 events took 1.7 s there).
    let agents = 300;
    let events = seed(&app, agents, 10).await;
    // The job runs in a keel serve process of its own; it is cancelled through this one's API.
    let server = ServeProcess::start(&app, &[]).await;
    let there = Api::new(&server.url, &ops_key);
    let here = Api::new(&app.url(""), &ops_key);
    here.preview_until(&json!({"page": 2}), events).await;
    let (id, mut lines) = there
        .start("/v1/projections/agent_status/rebuild", &json!({"page": 2}))
        .await;
    // Its answer's progress lines carry the counts once the work has them.
    let line = loop {
        let line = lines.next().await.expect("a line while the rebuild runs");
        assert_eq!(line["state"], "running", "{line}");
        if line["done"].as_u64() > Some(0) {
            break line;
        }
    };
    assert_eq!(
        (&line["job"], &line["total"]),
        (&json!(id), &json!(events)),
        "{line}"
    );
    assert!(
        line["rate"].is_number() && line["elapsed_s"].is_number(),
        "{line}"
    );
    let running = here.job(id).await;
    assert_eq!(
        (&running["state"], &running["total"]),
        (&json!("running"), &json!(events)),
        "{running}"
    );
    assert!(running["done"].as_u64() > Some(0), "{running}");

    // A reader sees the job but may not cancel it; the attempt is audited.
    let reader = Api::new(&app.url(""), &reader_key);
    let (status, body) = reader
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, &body["error"]["details"]["action"]),
        (StatusCode::FORBIDDEN, &json!("projection.rebuild")),
        "{body}"
    );
    assert_eq!(reader.job(id).await["cancel_requested_at"], Value::Null);

    // The operator cancels through this process, with the CLI, and waits for the stop.
    let out = run({
        let mut c = app.keel_with(Some(&ops_key));
        c.args(["jobs", "cancel", &id.to_string(), "--wait"]);
        c
    })
    .await
    .expect_ok("keel jobs cancel --wait");
    assert!(out.contains(&format!("job {id} is cancelled")), "{out}");
    let cancelled = here.job(id).await;
    assert_eq!(
        (&cancelled["state"], &cancelled["cancelled_by"]),
        (&json!("cancelled"), &json!("ops")),
        "{cancelled}"
    );
    assert!(cancelled["cancel_requested_at"].is_string(), "{cancelled}");
    let read = cancelled["report"]["events_read"].as_i64().unwrap();
    assert!(read > 0 && (read as usize) < events, "{cancelled}");
    assert_eq!(cancelled["report"]["cancelled"], true);
    // Stopped at a page boundary: whole pages read, and the stored cursor is the last event
    // read, with every event up to it applied.
    assert_eq!(read % 2, 0, "{cancelled}");
    assert_eq!(shadow(&app).await, (nth_cursor(&app, read).await, read));
    assert_eq!(cancelled["done"], read);
    let last = lines.rest().await.pop().unwrap();
    assert_eq!(
        (&last["state"], &last["report"]),
        (&json!("cancelled"), &cancelled["report"])
    );
    let (status, again) = here
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, &again["error"]["code"]),
        (StatusCode::CONFLICT, &json!("job_not_running"))
    );

    // A resume is a new job that continues from the cursor: it reads only the rest.
    let (status, resumed) = here
        .post(&format!("/v1/jobs/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(
        (&resumed["resumes"], &resumed["started_by"]),
        (&json!(id), &json!("ops"))
    );
    let new: Uuid = resumed["id"].as_str().unwrap().parse().unwrap();
    let done = here
        .job_until(new, "the resumed rebuild to end", |j| {
            j["state"] != "running"
        })
        .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["report"]["events_read"].as_i64().unwrap() + read,
        events as i64,
        "{done}"
    );
    assert_eq!(done["report"]["swapped"], true);
    assert_eq!(agent_status(&app).await, (agents as i64, events as i64));
    let (_, listed) = here.get("/v1/jobs?kind=rebuild").await;
    let ids: Vec<&Value> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(ids, [&json!(new), &json!(id)], "newest first");

    assert_eq!(
        audited(&app, "job.cancel").await,
        [
            ("looker".into(), "denied".into()),
            ("ops".into(), "ok".into()),
            ("ops".into(), "failed".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_left_running_by_a_dead_process_is_marked_interrupted_at_the_next_start_and_resumes()
{
    let app = crate::helpers::spawn_app().await;
    let events = seed(&app, 10, 3).await;
    let insert = |kind: &'static str,
                  target: &'static str,
                  params: Value,
                  age: &'static str,
                  cursor: Option<&'static str>| {
        let pool = app.store.pool().clone();
        async move {
            let id = Uuid::new_v4();
            sqlx::query(&format!(
                "INSERT INTO jobs (id, kind, target, params, started_by, process, owner, cursor, heartbeat_at)
                 VALUES ($1, $2, $3, $4, 'ops', 'gone-host:4242', gen_random_uuid(), $5, now() - interval '{age}')"
            ))
            .bind(id)
            .bind(kind)
            .bind(target)
            .bind(params)
            .bind(cursor)
            .execute(&pool)
            .await
            .unwrap();
            id
        }
    };
    let rebuild = insert(
        "rebuild",
        "agent_status",
        json!({"restart": true, "page": 5}),
        "1 hour",
        None,
    )
    .await;
    let republish = insert(
        "republish",
        "copy",
        json!({"topic": "copy", "rate": 10}),
        "1 hour",
        Some("djE6MTA6MjA"),
    )
    .await;
    let alive = insert(
        "rebuild",
        "service_invocations",
        json!({}),
        "1 second",
        None,
    )
    .await;

    // Another keel process starts on the database.
    let again = keel::app::Application::build(&app.config).await.unwrap();
    tokio::spawn(again.run_until_stopped(std::future::pending()));

    let admin = Api::new(&app.url(""), &app.admin_key);
    let lost = admin.job(rebuild).await;
    assert_eq!(lost["state"], "interrupted", "{lost}");
    let error = lost["error"].as_str().unwrap();
    assert!(
        error.contains("gone-host:4242 stopped beating")
            && error.contains(&format!("keel jobs resume {rebuild}"))
            && error.contains("continues from its cursor"),
        "{error}"
    );
    assert!(lost["ended_at"].is_string());
    let lost = admin.job(republish).await;
    assert_eq!(lost["state"], "interrupted");
    assert!(
        lost["error"]
            .as_str()
            .unwrap()
            .contains("after cursor djE6MTA6MjA"),
        "{lost}"
    );
    assert_eq!(admin.job(alive).await["state"], "running");

    // Resumed, the rebuild runs again with its parameters, and never starts over.
    let out = run({
        let mut c = app.keel();
        c.args(["jobs", "resume", &rebuild.to_string()]);
        c
    })
    .await
    .expect_ok("keel jobs resume");
    let new: Uuid = out.trim().parse().unwrap();
    let done = admin
        .job_until(new, "the resumed rebuild to end", |j| {
            j["state"] != "running"
        })
        .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (
            &done["resumes"],
            &done["params"]["restart"],
            &done["params"]["page"],
            &done["started_by"]
        ),
        (&json!(rebuild), &json!(false), &json!(5), &json!("admin"))
    );
    assert_eq!(done["report"]["events_read"], events);
    let (status, body) = admin
        .post(&format!("/v1/jobs/{new}/resume"), &json!({}))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("job_not_resumable"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keel_serve_stopped_with_sigterm_stops_its_job_which_ends_interrupted_with_how_to_resume()
{
    let app = crate::helpers::spawn_app().await;
    let events = seed(&app, 40, 10).await;
    let server = ServeProcess::start(&app, &[]).await;
    let there = Api::new(&server.url, &app.admin_key);
    let here = Api::new(&app.url(""), &app.admin_key);
    here.preview_until(&json!({"page": 1}), events).await;
    let (id, lines) = there
        .start("/v1/projections/agent_status/rebuild", &json!({"page": 1}))
        .await;
    here.job_until(id, "the rebuild to report progress", |j| {
        j["done"].as_u64() > Some(0)
    })
    .await;

    server.terminate();
    let stopped = here.job(id).await;
    assert_eq!(stopped["state"], "interrupted", "{stopped}");
    let error = stopped["error"].as_str().unwrap();
    assert!(
        error.contains("stopped while it ran") && error.contains(&format!("keel jobs resume {id}")),
        "{error}"
    );
    let read = stopped["report"]["events_read"].as_i64().unwrap();
    assert_eq!(shadow(&app).await, (nth_cursor(&app, read).await, read));
    let last = lines.rest().await.pop().unwrap();
    assert_eq!(
        (&last["state"], &last["error"]["code"]),
        (&json!("interrupted"), &json!("job_interrupted"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_dry_run_counts_what_the_job_then_sends_and_its_row_keeps_the_cursor() {
    use crate::relay_support::Broker;
    let broker = Broker::start().await;
    let app = crate::helpers::spawn_app_with(|c| c.kafka_brokers = broker.brokers()).await;
    let events = seed(&app, 5, 3).await;
    let service = Uuid::new_v4();
    let reply = app
        .append("service", service, &json!({"events": [{"type": "l12.service_invoked",
            "payload": {"service_name": "billing", "method": "charge", "execution_time": 3.0, "status": "OK"}}]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let republish = |extra: &[&str]| {
        let mut c = app.keel();
        c.args([
            "replay",
            "republish",
            "--topic",
            "jobs.copy",
            "--event-type",
            "agent.state.changed",
        ])
        .args(extra);
        run(c)
    };
    let said = eventually(LONG, "the log to show every event", || async {
        let out = republish(&["--dry-run"])
            .await
            .expect_ok("keel replay republish --dry-run");
        out.contains(&format!("would republish {events} events"))
            .then_some(out)
    })
    .await;
    assert!(
        said.contains("of types agent.state.changed to topic jobs.copy"),
        "{said}"
    );
    assert_eq!(app.count("jobs").await, 0);
    let admin = Api::new(&app.url(""), &app.admin_key);
    let (status, none) = admin
        .post(
            "/v1/replay/republish",
            &json!({"topic": "jobs.copy", "to": "2000-01-01T00:00:00Z", "dry_run": true}),
        )
        .await;
    assert_eq!(
        (status, &none["events"], &none["kind"]),
        (StatusCode::OK, &json!(0), &json!("republish"))
    );

    let report: Value = serde_json::from_str(
        &republish(&["--json"])
            .await
            .expect_ok("keel replay republish"),
    )
    .unwrap();
    assert_eq!(report["sent"], events);
    let (_, listed) = admin.get("/v1/jobs?kind=republish").await;
    let job = &listed["jobs"][0];
    assert_eq!(
        (&job["state"], &job["target"], &job["started_by"]),
        (&json!("done"), &json!("jobs.copy"), &json!("admin")),
        "{job}"
    );
    assert_eq!(
        (&job["done"], &job["total"]),
        (&json!(events), &json!(events))
    );
    assert_eq!(job["cursor"], report["cursor"]);
    assert_eq!(job["params"]["event_types"], json!(["agent.state.changed"]));
}
