//! Dead letters by key sequence, in both stores that park (`consumer_dlq`, `relay_parked`):
//! sequences with their head and held count, bulk retries and skips by filter with a dry-run
//! count, `max_count`, the typed confirmation above the threshold, chunked runs and their audit
//! rows, and the `keel dlq` / `keel outbox` commands that send the same requests.
//!
//! Rows are parked through the dead-letter store's own `park` (the consumer runtime's call) or,
//! for the relay and for large stores, written as the relay writes them. Redelivery in order by
//! a running consumer is in `consumer.rs`.

use std::collections::HashMap;

use keel::consumer::dlq::{self, ParkReason};
use keel::consumer::record::Record;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with_key, run, spawn_app, Reply, TestApp};

const TOPIC: &str = "keel.agent";

/// Parks `record` of `key` at `offset` in `group`, as the consumer runtime does: `Held` when an
/// earlier record of the key is open.
async fn park(
    app: &TestApp,
    group: &str,
    key: &str,
    partition: i32,
    offset: i64,
    reason: ParkReason,
) {
    let record = Record {
        topic: TOPIC.into(),
        partition,
        offset,
        key: key.into(),
        headers: HashMap::from([(
            "keel-event-type".to_owned(),
            "agent.state.changed".to_owned(),
        )]),
        value: b"v".to_vec(),
    };
    let written = dlq::park(
        app.store.pool(),
        group,
        &record,
        reason,
        "it broke",
        1,
        None,
    )
    .await
    .unwrap();
    assert!(written);
}

/// The states of `group`'s rows of `key`, in offset order.
async fn states(app: &TestApp, group: &str, key: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT state FROM consumer_dlq WHERE group_id = $1 AND record_key = $2
          ORDER BY partition, kafka_offset",
    )
    .bind(group)
    .bind(key)
    .fetch_all(app.store.pool())
    .await
    .unwrap()
}

/// `n` keys in `group`, each with one parked row (the relay-sized stores of the threshold tests).
async fn park_many(app: &TestApp, group: &str, n: i64) {
    sqlx::query(
        "INSERT INTO consumer_dlq (group_id, topic, partition, kafka_offset, record_key, state,
                                   reason_class, reason, attempts)
         SELECT $1, 'keel.agent', 0, i, 'key-' || lpad(i::text, 6, '0'), 'parked', 'permanent',
                'it broke', 1
           FROM generate_series(1, $2) AS i",
    )
    .bind(group)
    .bind(n)
    .execute(app.store.pool())
    .await
    .unwrap();
}

/// The audit rows of `action`, oldest first.
async fn audit_rows(app: &TestApp, action: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/audit?action={action}&limit=500"))
        .await;
    let mut rows = reply.body["rows"].as_array().unwrap().clone();
    rows.reverse();
    rows
}

/// Three sequences in `group`: `a` (parked, two held behind it), `b` (crash loop), `c` (parked,
/// on partition 1).
async fn three_sequences(app: &TestApp, group: &str) {
    park(app, group, "a", 0, 1, ParkReason::Permanent).await;
    park(app, group, "a", 0, 2, ParkReason::Held).await;
    park(app, group, "a", 0, 4, ParkReason::Held).await;
    park(app, group, "b", 0, 3, ParkReason::CrashLoop).await;
    park(app, group, "c", 1, 1, ParkReason::Permanent).await;
}

fn keys(page: &Reply) -> Vec<&str> {
    page.body["sequences"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", page.body))
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn sequences_show_each_keys_head_and_how_many_rows_wait_behind_it() {
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;

    let page = app.get("/v1/dlq/billing/sequences").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(keys(&page), ["a", "b", "c"]);
    let a = &page.body["sequences"][0];
    assert_eq!(
        (a["topic"].as_str(), a["partition"].as_i64()),
        (Some(TOPIC), Some(0))
    );
    assert_eq!(a["held"], 2);
    assert_eq!(a["head"]["offset"], 1);
    assert_eq!(a["head"]["state"], "parked");
    assert_eq!(a["head"]["reason_class"], "permanent");
    assert_eq!(a["head"]["reason"], "it broke");
    assert_eq!(a["head"]["attempts"], 1);
    assert_eq!(a["head"]["event_type"], "agent.state.changed");
    assert!(a["first_failed_at"].is_string() && a["last_failed_at"].is_string());
    assert_eq!(page.body["sequences"][1]["held"], 0);
    assert!(page.body["next"].is_null());

    // Filters apply to the head.
    let crash = app
        .get("/v1/dlq/billing/sequences?reason_class=crash_loop")
        .await;
    assert_eq!(keys(&crash), ["b"]);
    let held = app.get("/v1/dlq/billing/sequences?reason_class=held").await;
    assert!(keys(&held).is_empty());
    let old = app.get("/v1/dlq/billing/sequences?older_than=1h").await;
    assert!(keys(&old).is_empty());
    sqlx::query(
        "UPDATE consumer_dlq SET created_at = now() - interval '2 hours' WHERE record_key = 'c'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    let old = app.get("/v1/dlq/billing/sequences?older_than=1h").await;
    assert_eq!(keys(&old), ["c"]);
    assert_eq!(
        keys(&app.get("/v1/dlq/billing/sequences?key=b").await),
        ["b"]
    );

    // Pages follow each other with the next token, and the last one has none.
    let mut seen = Vec::new();
    let mut path = "/v1/dlq/billing/sequences?limit=2".to_owned();
    loop {
        let page = app.get(&path).await;
        seen.extend(keys(&page).into_iter().map(str::to_owned));
        match page.body["next"].as_str() {
            Some(next) => path = format!("/v1/dlq/billing/sequences?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c"]);
    let bad = app.get("/v1/dlq/billing/sequences?after=nonsense").await;
    assert_eq!(
        (bad.status, bad.error_code()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
    let bad = app.get("/v1/dlq/billing/sequences?older_than=soon").await;
    assert_eq!(
        (bad.status, bad.error_code()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    // The overview: each group with open rows, its depth and the age of its oldest row.
    park(&app, "shipping", "s", 0, 1, ParkReason::Undecodable).await;
    let groups = app.get("/v1/dlq").await;
    assert_eq!(groups.status, StatusCode::OK, "{}", groups.body);
    let groups = groups.body["groups"].as_array().unwrap().clone();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["billing", "shipping"]);
    assert_eq!(
        (
            groups[0]["depth"].as_i64(),
            groups[0]["depth_capped"].as_bool()
        ),
        (Some(5), Some(false))
    );
    assert!(groups[0]["oldest_age_seconds"].as_f64().unwrap() >= 7200.0);
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_counts_exactly_what_the_run_then_touches() {
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;

    let dry = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"reason_class": "permanent", "dry_run": true}),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["would_touch"], 4, "{}", dry.body);
    assert_eq!(dry.body["sequences"], 2);
    assert!(dry.body.get("touched").is_none());
    assert_eq!(
        dry.body["run_with"],
        "keel dlq retry --group billing --reason-class permanent"
    );
    assert_eq!(
        states(&app, "billing", "a").await,
        ["parked", "held", "held"]
    );
    assert_eq!(states(&app, "billing", "c").await, ["parked"]);
    assert!(
        audit_rows(&app, "dlq.retry").await.is_empty(),
        "a dry run is not audited"
    );

    let done = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"reason_class": "permanent"}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(
        (
            done.body["touched"].as_u64(),
            done.body["would_touch"].as_u64()
        ),
        (Some(4), Some(4))
    );
    assert_eq!(
        states(&app, "billing", "a").await,
        ["retry", "retry", "retry"]
    );
    assert_eq!(states(&app, "billing", "b").await, ["parked"]);
    assert_eq!(states(&app, "billing", "c").await, ["retry"]);
    let audit = audit_rows(&app, "dlq.retry").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "ok");
    assert_eq!(
        audit[0]["target"],
        json!({"group": "billing", "reason_class": "permanent"})
    );
    assert_eq!(audit[0]["params"]["dry_run_count"], 4);
    assert_eq!(audit[0]["params"]["touched"], 4);
    assert_eq!(audit[0]["params"]["filter"]["reason_class"], "permanent");

    // max_count takes whole sequences in key order while they fit.
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;
    let too_small = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"key": "a", "max_count": 2, "dry_run": true}),
        )
        .await;
    assert_eq!(too_small.body["would_touch"], 0, "{}", too_small.body);
    let capped = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"all": true, "max_count": 4}),
        )
        .await;
    assert_eq!(capped.body["touched"], 4, "{}", capped.body);
    assert_eq!(states(&app, "billing", "b").await, ["retry"]);
    assert_eq!(states(&app, "billing", "c").await, ["parked"]);
}

#[tokio::test]
async fn above_the_threshold_a_run_is_refused_with_its_count_until_that_count_is_typed_back() {
    // Arrange: more keys than one chunk holds, each parked once.
    let app = spawn_app().await;
    park_many(&app, "billing", 1100).await;

    // Act and assert: no confirmation, a wrong one, then the count.
    let refused = app
        .post_json("/v1/dlq/billing/retry", &json!({"all": true}))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.error_code(), "confirmation_required");
    assert_eq!(refused.body["error"]["details"]["would_touch"], 1100);
    assert_eq!(
        refused.body["error"]["details"]["run_with"],
        "keel dlq retry --group billing --confirm 1100 --all"
    );
    let wrong = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"all": true, "confirm": 1099}),
        )
        .await;
    assert_eq!(wrong.error_code(), "confirmation_required");
    let retrying: i64 =
        sqlx::query_scalar("SELECT count(*) FROM consumer_dlq WHERE state = 'retry'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(retrying, 0, "a refused run changed rows");

    let dry = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"all": true, "dry_run": true}),
        )
        .await;
    assert_eq!(dry.body["would_touch"], 1100);
    let done = app
        .post_json(
            "/v1/dlq/billing/retry",
            &json!({"all": true, "confirm": 1100}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["touched"], 1100);
    let retrying: i64 =
        sqlx::query_scalar("SELECT count(*) FROM consumer_dlq WHERE state = 'retry'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(retrying, 1100);

    // The refusals are failed attempts; the run of three chunks starts and ends in the log.
    let audit = audit_rows(&app, "dlq.retry").await;
    let outcomes: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("failed", "confirmation_required"),
            ("failed", "confirmation_required"),
            ("started", ""),
            ("ok", "")
        ]
    );
    assert_eq!(audit[0]["params"]["dry_run_count"], 1100);
    assert_eq!(audit[2]["params"]["touched"], 500);
    assert_eq!(
        (
            audit[3]["params"]["dry_run_count"].as_u64(),
            audit[3]["params"]["touched"].as_u64()
        ),
        (Some(1100), Some(1100))
    );
}

#[tokio::test]
async fn a_skip_needs_a_reason_and_a_skipped_head_lets_the_rows_behind_it_be_redelivered() {
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;
    let head: i64 = sqlx::query_scalar(
        "SELECT id FROM consumer_dlq WHERE record_key = 'a' AND state = 'parked'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();

    for body in [json!({"id": head}), json!({"id": head, "reason": "  "})] {
        let refused = app.post_json("/v1/dlq/billing/skip", &body).await;
        assert_eq!(
            (refused.status, refused.error_code()),
            (StatusCode::BAD_REQUEST, "reason_required")
        );
    }
    let held = app
        .post_json(
            "/v1/dlq/billing/skip",
            &json!({"id": head + 1, "reason": "x"}),
        )
        .await;
    assert_eq!(
        (held.status, held.error_code()),
        (StatusCode::CONFLICT, "not_parked")
    );
    assert_eq!(
        states(&app, "billing", "a").await,
        ["parked", "held", "held"]
    );

    let skipped = app
        .post_json(
            "/v1/dlq/billing/skip",
            &json!({"id": head, "reason": "bad data, INC-7"}),
        )
        .await;
    assert_eq!(skipped.status, StatusCode::OK, "{}", skipped.body);
    assert_eq!(
        (
            skipped.body["touched"].as_u64(),
            skipped.body["released"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(
        states(&app, "billing", "a").await,
        ["skipped", "retry", "retry"]
    );
    let audit = audit_rows(&app, "dlq.skip").await;
    assert_eq!(audit.last().unwrap()["params"]["reason"], "bad data, INC-7");

    // `whole` drops every open row of the sequences.
    let whole = app
        .post_json(
            "/v1/dlq/billing/skip",
            &json!({"key": "b", "whole": true, "reason": "gone"}),
        )
        .await;
    assert_eq!(whole.body["touched"], 1, "{}", whole.body);
    assert_eq!(states(&app, "billing", "b").await, ["skipped"]);
}

#[tokio::test]
async fn a_dead_letter_reader_sees_sequences_but_cannot_retry_and_the_refusal_is_audited() {
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;
    let key = app
        .principal("dlq-reader", &[], &[("allow", "dlq.read", "billing", "*")])
        .await;
    let reader = client_with_key(&key);

    let page = reader
        .get(app.url("/v1/dlq/billing/sequences"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let overview: Value = reader
        .get(app.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["groups"][0]["group"], "billing");
    let refused = reader
        .post(app.url("/v1/dlq/billing/retry"))
        .json(&json!({"all": true, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let audit = audit_rows(&app, "dlq.retry").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (audit[0]["outcome"].as_str(), audit[0]["principal"].as_str()),
        (Some("denied"), Some("dlq-reader"))
    );
    assert_eq!(
        states(&app, "billing", "a").await,
        ["parked", "held", "held"]
    );
}

#[tokio::test]
async fn keel_dlq_commands_print_the_numbers_the_api_answers() {
    let app = spawn_app().await;
    three_sequences(&app, "billing").await;
    let keel = |args: &[&str]| {
        let mut command = app.keel();
        command.arg("dlq").args(args);
        run(command)
    };

    let lines = keel(&["sequences", "--group", "billing", "--json"])
        .await
        .json_lines("keel dlq sequences");
    let api = app.get("/v1/dlq/billing/sequences").await;
    assert_eq!(Value::Array(lines), api.body["sequences"]);
    let table = keel(&[
        "sequences",
        "--group",
        "billing",
        "--reason-class",
        "crash_loop",
    ])
    .await
    .expect_ok("the table");
    assert_eq!(table.lines().count(), 2, "{table}");

    let body = json!({"reason_class": "permanent", "dry_run": true});
    let api = app.post_json("/v1/dlq/billing/retry", &body).await;
    let dry = keel(&[
        "retry",
        "--group",
        "billing",
        "--reason-class",
        "permanent",
        "--dry-run",
        "--json",
    ])
    .await
    .json_lines("keel dlq retry --dry-run");
    assert_eq!(dry, std::slice::from_ref(&api.body));
    let words = keel(&[
        "retry",
        "--group",
        "billing",
        "--reason-class",
        "permanent",
        "--dry-run",
    ])
    .await
    .expect_ok("keel dlq retry --dry-run");
    assert!(
        words.starts_with("would touch 4 row(s) in 2 sequence(s)"),
        "{words}"
    );
    assert!(
        words.contains("to run it: keel dlq retry --group billing --reason-class permanent"),
        "{words}"
    );

    let done = keel(&[
        "retry",
        "--group",
        "billing",
        "--reason-class",
        "permanent",
        "--json",
    ])
    .await
    .json_lines("keel dlq retry");
    assert_eq!(done[0]["touched"], api.body["would_touch"]);
    let skipped = keel(&[
        "skip", "--group", "billing", "--key", "b", "--reason", "bad data",
    ])
    .await
    .expect_ok("keel dlq skip");
    assert!(skipped.starts_with("1 row(s) skipped"), "{skipped}");

    // Above the threshold the command says what to type.
    park_many(&app, "large", 101).await;
    let refused = keel(&["retry", "--group", "large", "--all"]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("--confirm 101")
            && refused.stderr.contains("confirmation_required"),
        "{}",
        refused.stderr
    );
    let done = keel(&["retry", "--group", "large", "--all", "--confirm", "101"])
        .await
        .expect_ok("a confirmed run");
    assert!(done.starts_with("101 row(s)"), "{done}");
}

/// Writes a parked (or held) outbox row for `sink`, as the relay does.
async fn relay_park(
    app: &TestApp,
    sink: &str,
    aggregate: Uuid,
    position: i64,
    state: &str,
    class: Option<&str>,
) -> Uuid {
    let event = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO relay_parked (sink, position, tx_id, partition, event_id, aggregate_type,
                                   aggregate_id, event_type, state, error_class, error, attempts)
         VALUES ($1, $2, '1', 0, $3, 'agent', $4, 'agent.state.changed', $5, $6, $7, 3)",
    )
    .bind(sink)
    .bind(position)
    .bind(event)
    .bind(aggregate)
    .bind(state)
    .bind(class)
    .bind(class.map(|c| format!("refused: {c}")))
    .execute(app.store.pool())
    .await
    .unwrap();
    event
}

async fn relay_states(app: &TestApp, aggregate: Uuid) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT sink, state, attempts FROM relay_parked WHERE aggregate_id = $1 ORDER BY sink, position",
    )
    .bind(aggregate)
    .fetch_all(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn outbox_sequences_group_parked_rows_by_sink_and_aggregate_and_retry_by_filter() {
    let app = spawn_app().await;
    let (big, wrong) = (Uuid::new_v4(), Uuid::new_v4());
    let big_head = relay_park(&app, "kafka", big, 10, "parked", Some("message_too_large")).await;
    relay_park(&app, "kafka", big, 11, "held", None).await;
    relay_park(&app, "kafka", big, 12, "held", None).await;
    relay_park(&app, "redis", wrong, 13, "parked", Some("wrong_type")).await;

    let page = app.get("/v1/outbox/parked/sequences").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let sequences = page.body["sequences"].as_array().unwrap();
    assert_eq!(sequences.len(), 2);
    assert_eq!(
        (sequences[0]["sink"].as_str(), sequences[0]["held"].as_i64()),
        (Some("kafka"), Some(2))
    );
    assert_eq!(sequences[0]["key"], big.to_string());
    assert_eq!(sequences[0]["aggregate_type"], "agent");
    assert_eq!(sequences[0]["head"]["event_id"], big_head.to_string());
    assert_eq!(sequences[0]["head"]["reason_class"], "message_too_large");
    let redis = app.get("/v1/outbox/parked/sequences?sink=redis").await;
    assert_eq!(redis.body["sequences"].as_array().unwrap().len(), 1);
    let bad = app.get("/v1/outbox/parked/sequences?key=not-a-uuid").await;
    assert_eq!(bad.error_code(), "invalid_key");

    // A dry run by filter counts the parked head; the run releases it, with fresh attempts.
    let body = json!({"reason_class": "message_too_large", "dry_run": true});
    let dry = app.post_json("/v1/outbox/retry", &body).await;
    assert_eq!(
        (
            dry.body["would_touch"].as_u64(),
            dry.body["sequences"].as_u64()
        ),
        (Some(1), Some(1)),
        "{}",
        dry.body
    );
    let mut command = app.keel();
    command.args([
        "outbox",
        "retry",
        "--reason-class",
        "message_too_large",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(
        run(command).await.json_lines("keel outbox retry --dry-run"),
        std::slice::from_ref(&dry.body)
    );
    let done = app
        .post_json(
            "/v1/outbox/retry",
            &json!({"reason_class": "message_too_large"}),
        )
        .await;
    assert_eq!(done.body["touched"], 1, "{}", done.body);
    assert_eq!(
        relay_states(&app, big).await,
        [
            ("kafka".into(), "retry".into(), 0),
            ("kafka".into(), "held".into(), 3),
            ("kafka".into(), "held".into(), 3)
        ]
    );

    // A skip by event needs a reason; the event is dropped, the rows behind it flow.
    let refused = app
        .post_json("/v1/outbox/skip", &json!({"event_id": big_head}))
        .await;
    assert_eq!(refused.error_code(), "reason_required");
    let missing = app
        .post_json(
            "/v1/outbox/skip",
            &json!({"event_id": Uuid::new_v4(), "reason": "x"}),
        )
        .await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let mut command = app.keel();
    command.args([
        "outbox",
        "skip",
        "--sink",
        "redis",
        "--key",
        &wrong.to_string(),
        "--reason",
        "wrong stream",
    ]);
    let out = run(command).await.expect_ok("keel outbox skip");
    assert!(out.starts_with("skipped 1 parked row(s)"), "{out}");
    assert!(relay_states(&app, wrong).await.is_empty());
    let audit = audit_rows(&app, "outbox.skip").await;
    let last = audit.last().unwrap();
    assert_eq!(
        (last["outcome"].as_str(), last["params"]["reason"].as_str()),
        (Some("ok"), Some("wrong stream"))
    );
    assert_eq!(last["target"]["sink"], "redis");
}
