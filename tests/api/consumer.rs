//! The consumer runtime, run as real processes (`examples/recording_consumer.rs`, which records
//! each event it handles in `consumer_handled`) against the relay's topics on a real broker:
//! group takeover after `kill -9`, the dead-letter store's per-key order, crash loops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, TestApp};
use crate::relay_support::{
    append_concurrently, append_one, assert_in_order, merge, spawn_kafka_relayed_app, Broker,
    KafkaReader, Received, Server,
};

const TOPIC: &str = "keel.agent";

/// A `recording_consumer` process, killed on drop.
pub struct ConsumerProcess {
    child: Option<Child>,
}

impl ConsumerProcess {
    /// The example's binary, which `cargo test` builds.
    pub fn binary() -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        let bin: PathBuf = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target dir")
            .join("examples/recording_consumer");
        assert!(
            bin.exists(),
            "{} is missing: cargo test builds it",
            bin.display()
        );
        bin
    }

    pub fn start(app: &TestApp, broker: &Server, group: &str, name: &str, extra: &[&str]) -> Self {
        let child = Command::new(Self::binary())
            .args(["--database-url", &app.config.database_url])
            .args(["--brokers", &broker.brokers()])
            .args(["--group", group, "--topic", TOPIC, "--name", name])
            .args(extra)
            .args(
                std::env::var("KEEL_TEST_CONSUMER_KAFKA")
                    .ok()
                    .map(|p| vec!["--kafka-property".to_owned(), p])
                    .unwrap_or_default(),
            )
            .env(
                "RUST_LOG",
                std::env::var("KEEL_TEST_CONSUMER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start recording_consumer");
        Self { child: Some(child) }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running consumer");
        crate::helpers::signal(child, signal, "the consumer");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has exited (it aborts on a `crash` fault).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Each handled event as `(consumer, aggregate, version, event id)`, in the order handled.
pub(crate) async fn handled(app: &TestApp) -> Vec<(String, Uuid, i32, Uuid)> {
    sqlx::query_as(
        "SELECT consumer, aggregate_id, version, event_id FROM consumer_handled ORDER BY seq",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap_or_default()
}

fn as_received(rows: &[(String, Uuid, i32, Uuid)]) -> Vec<Received> {
    rows.iter()
        .map(|(_, aggregate, version, id)| Received {
            topic: TOPIC.to_owned(),
            key: aggregate.to_string(),
            value: Vec::new(),
            headers: [
                ("keel-event-id".to_owned(), id.to_string()),
                ("keel-aggregate-id".to_owned(), aggregate.to_string()),
                ("keel-aggregate-version".to_owned(), version.to_string()),
            ]
            .into(),
        })
        .collect()
}

async fn wait_handled(app: &TestApp, expected: &HashMap<Uuid, Vec<Uuid>>, timeout: Duration) {
    let wanted: Vec<Uuid> = expected.values().flatten().copied().collect();
    eventually(timeout, "every event to be handled", || async {
        let rows = handled(app).await;
        let seen: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.3).collect();
        wanted.iter().all(|id| seen.contains(id)).then_some(())
    })
    .await;
}

/// Makes the recording consumer fail on `event` as `kind` says (`poison`, `flaky`, `crash`).
pub(crate) async fn fault(app: &TestApp, event: Uuid, kind: &str) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS consumer_faults (event_id uuid PRIMARY KEY, kind text NOT NULL)",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO consumer_faults VALUES ($1, $2)")
        .bind(event)
        .bind(kind)
        .execute(app.store.pool())
        .await
        .unwrap();
}

async fn keel_dlq(app: &TestApp, args: &[&str]) -> String {
    let mut command = app.keel();
    command.arg("dlq").args(args);
    crate::helpers::run(command)
        .await
        .expect_ok(&format!("keel dlq {args:?}"))
}

/// `keel dlq list --json` as `(state, reason_class, event id)`, in offset order.
async fn dlq_rows(app: &TestApp, group: &str) -> Vec<(String, String, Uuid)> {
    keel_dlq(app, &["list", "--group", group, "--json"])
        .await
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["state"].as_str().unwrap().to_owned(),
                v["reason_class"].as_str().unwrap().to_owned(),
                v["event_id"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Appends `states` to `agent` in order and returns their event ids.
pub(crate) async fn append_states(app: &TestApp, agent: Uuid, states: &[&str]) -> Vec<Uuid> {
    let log = tokio::sync::Mutex::new(HashMap::new());
    for s in states {
        append_one(app, agent, &log, agent_state_changed(agent, s)).await;
    }
    let ids = log.into_inner().remove(&agent).unwrap();
    // Only the appended versions: earlier ones are nil placeholders.
    ids[ids.len() - states.len()..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumer_processes_share_a_group_and_a_killed_one_is_taken_over_in_order() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    // Create the topic (and some backlog) before the group subscribes.
    let before = append_concurrently(&app, 40, 3, 16).await;
    let group = "two-processes";
    // 3 ms per event: the kill lands mid-batch.
    let mut a = ConsumerProcess::start(&app, &broker, group, "a", &["--delay-ms", "3"]);
    let _b = ConsumerProcess::start(&app, &broker, group, "b", &["--delay-ms", "3"]);
    // Keep appending until the group has settled and both processes are handling events.
    let mut expected = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        expected = merge(expected, append_concurrently(&app, 20, 5, 16).await);
        let rows = handled(&app).await;
        let by = |name: &str| rows.iter().filter(|r| r.0 == name).count();
        if by("a") >= 30 && by("b") >= 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both consumers never handled events"
        );
    }
    let known: std::collections::HashSet<Uuid> = expected.keys().copied().collect();
    let during = tokio::spawn({
        let app = app.clone();
        async move { append_concurrently(&app, 40, 10, 16).await }
    });
    // Kill a while it is working through the new load: as soon as it has handled an event of
    // one of the new aggregates (whose later events then wait for b).
    eventually(
        Duration::from_secs(30),
        "consumer a to start on the new load",
        || async {
            let rows = handled(&app).await;
            rows.iter()
                .any(|r| r.0 == "a" && !known.contains(&r.1))
                .then_some(())
        },
    )
    .await;
    a.kill();
    let at_kill = handled(&app).await.len();
    let expected = merge(expected, during.await.unwrap());
    assert!(
        at_kill < expected.values().map(Vec::len).sum::<usize>(),
        "the kill must land before the load is done ({at_kill} handled)"
    );
    wait_handled(&app, &expected, Duration::from_secs(90)).await;

    let rows = handled(&app).await;
    assert_in_order(&as_received(&rows), &expected);
    // b took over a's partitions: it handled events a had not reached when it was killed.
    let a_saw: std::collections::HashSet<Uuid> =
        rows.iter().filter(|r| r.0 == "a").map(|r| r.1).collect();
    let b_after_kill: std::collections::HashSet<Uuid> = rows[at_kill..]
        .iter()
        .filter(|r| r.0 == "b")
        .map(|r| r.1)
        .collect();
    assert!(
        a_saw.iter().any(|agent| b_after_kill.contains(agent)),
        "no aggregate that a handled was continued by b after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_its_key_waits_others_flow_and_dlq_retry_delivers_in_order() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let (poisoned, flaky, healthy) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let p = append_states(&app, poisoned, &["p1", "p2", "p3"]).await;
    let f = append_states(&app, flaky, &["f1", "f2"]).await;
    fault(&app, p[1], "poison").await;
    fault(&app, f[0], "flaky").await;
    let group = "poison";
    let _c = ConsumerProcess::start(&app, &broker, group, "c", &["--max-retries", "2"]);
    let h = append_states(&app, healthy, &["h1", "h2", "h3"]).await;

    // Other keys flow; the poisoned key stops at its poison event, the flaky key at its first.
    let expected: HashMap<Uuid, Vec<Uuid>> = [(healthy, h.clone())].into();
    wait_handled(&app, &expected, Duration::from_secs(60)).await;
    let dlq = eventually(Duration::from_secs(30), "four dead-letter rows", || async {
        let rows = dlq_rows(&app, group).await;
        (rows.len() == 4).then_some(rows)
    })
    .await;
    let mut by_event: HashMap<Uuid, (String, String)> =
        dlq.into_iter().map(|(s, c, id)| (id, (s, c))).collect();
    assert_eq!(
        by_event.remove(&p[1]).unwrap(),
        ("parked".into(), "permanent".into())
    );
    assert_eq!(
        by_event.remove(&p[2]).unwrap(),
        ("held".into(), "held".into())
    );
    assert_eq!(
        by_event.remove(&f[0]).unwrap(),
        ("parked".into(), "retries_exhausted".into())
    );
    assert_eq!(
        by_event.remove(&f[1]).unwrap(),
        ("held".into(), "held".into())
    );
    // A live event of a parked key is held too.
    let p4 = append_states(&app, poisoned, &["p4"]).await[0];
    eventually(
        Duration::from_secs(30),
        "the new event to be held",
        || async {
            dlq_rows(&app, group)
                .await
                .iter()
                .any(|r| r.2 == p4 && r.0 == "held")
                .then_some(())
        },
    )
    .await;
    let handled_ids: Vec<Uuid> = handled(&app).await.iter().map(|r| r.3).collect();
    assert!(handled_ids.contains(&p[0]));
    for id in [p[1], p[2], p4, f[0], f[1]] {
        assert!(
            !handled_ids.contains(&id),
            "a parked or held event was handled"
        );
    }
    // The parked record is mirrored to the .dlq topic for Kafka tools.
    let mut mirror = KafkaReader::new(&broker.brokers(), &["keel.agent.dlq"]);
    mirror
        .read_ids(&[p[1], f[0]], Duration::from_secs(30))
        .await;
    let mirrored = mirror
        .received
        .iter()
        .find(|r| r.event_id() == p[1])
        .unwrap();
    assert_eq!(mirrored.headers["keel-dlq-reason"], "permanent");
    assert_eq!(mirrored.headers["keel-dlq-group"], group);

    // Fix the handler, redrive the poisoned key: its events arrive in order.
    sqlx::query("DELETE FROM consumer_faults")
        .execute(app.store.pool())
        .await
        .unwrap();
    let out = keel_dlq(
        &app,
        &["retry", "--group", group, "--key", &poisoned.to_string()],
    )
    .await;
    assert!(out.starts_with("3 row(s)"), "{out}");
    // A live event of the key that arrives while the chain waits for redelivery is held, then
    // delivered after it.
    let p5 = append_states(&app, poisoned, &["p5"]).await[0];
    let mut all = HashMap::from([(poisoned, vec![p[0], p[1], p[2], p4, p5]), (healthy, h)]);
    wait_handled(&app, &all, Duration::from_secs(30)).await;
    // The flaky key is still parked until it is retried too.
    assert_eq!(dlq_rows(&app, group).await.len(), 2);
    let parked_id = keel_dlq(&app, &["list", "--group", group, "--json"])
        .await
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["state"] == "parked")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    keel_dlq(&app, &["retry", "--group", group, &parked_id.to_string()]).await;
    all.insert(flaky, f);
    wait_handled(&app, &all, Duration::from_secs(30)).await;
    assert_in_order(&as_received(&handled(&app).await), &all);
    eventually(
        Duration::from_secs(10),
        "an empty dead-letter list",
        || async { dlq_rows(&app, group).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_keeps_crashing_on_an_event_ends_up_parking_it() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let agent = Uuid::new_v4();
    let ids = append_states(&app, agent, &["c1", "c2", "c3"]).await;
    let other = Uuid::new_v4();
    let o = append_states(&app, other, &["o1"]).await;
    fault(&app, ids[1], "crash").await;
    let group = "crashing";
    // Act as the supervisor: restart the consumer each time it dies.
    let mut restarts = 0;
    let mut c = ConsumerProcess::start(&app, &broker, group, "c", &[]);
    let parked = eventually(
        Duration::from_secs(120),
        "the crashing event to be parked",
        || {
            if c.exited() {
                restarts += 1;
                c = ConsumerProcess::start(&app, &broker, group, "c", &[]);
            }
            let (app, crashing) = (&app, ids[1]);
            async move {
                dlq_rows(app, group)
                    .await
                    .into_iter()
                    .find(|r| r.2 == crashing)
            }
        },
    )
    .await;
    assert_eq!(parked.0, "parked");
    assert_eq!(parked.1, "crash_loop");
    assert!(
        restarts >= 3,
        "parked after {restarts} restarts; crash_attempts is 3"
    );
    // The key's next event waits behind it; other keys were handled.
    let expected: HashMap<Uuid, Vec<Uuid>> = [(other, o)].into();
    wait_handled(&app, &expected, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(30),
        "the next event to be held",
        || async {
            dlq_rows(&app, group)
                .await
                .iter()
                .any(|r| r.2 == ids[2] && r.0 == "held")
                .then_some(())
        },
    )
    .await;
    // `keel dlq show` says why; the group's depth counts both rows.
    let parked_id = keel_dlq(&app, &["list", "--group", group, "--json"])
        .await
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["state"] == "parked")
        .unwrap()["id"]
        .to_string();
    let shown: Value =
        serde_json::from_str(&keel_dlq(&app, &["show", "--group", group, &parked_id]).await)
            .unwrap();
    assert_eq!(shown["reason_class"], "crash_loop");
    assert_eq!(shown["event_id"], ids[1].to_string());
    assert!(shown["value_base64"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    let (depth, age) = keel::consumer::dlq::depth(app.store.pool(), group)
        .await
        .unwrap();
    assert_eq!(depth, 2);
    assert!(age >= 0.0);
    // Skipping the parked record releases the one held behind it; the skipped one is never handled.
    keel_dlq(
        &app,
        &[
            "skip",
            "--group",
            group,
            &parked_id,
            "--reason",
            "crash loop",
        ],
    )
    .await;
    let rest: HashMap<Uuid, Vec<Uuid>> = [(agent, vec![ids[0], ids[2]])].into();
    wait_handled(&app, &rest, Duration::from_secs(30)).await;
    assert!(handled(&app).await.iter().all(|r| r.3 != ids[1]));
    eventually(
        Duration::from_secs(10),
        "an empty dead-letter list",
        || async { dlq_rows(&app, group).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_retry_over_several_keys_redelivers_each_keys_records_in_order() {
    // Arrange: three keys stopped at a poison record with records held behind it, and one
    // stopped by a flaky record, which a filter on the poison's class leaves alone.
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut expected = HashMap::new();
    for _ in 0..3 {
        let agent = Uuid::new_v4();
        let ids = append_states(&app, agent, &["1", "2", "3", "4"]).await;
        fault(&app, ids[1], "poison").await;
        expected.insert(agent, ids);
    }
    let flaky = Uuid::new_v4();
    let f = append_states(&app, flaky, &["f1", "f2"]).await;
    fault(&app, f[0], "flaky").await;
    let group = "bulk";
    let _c = ConsumerProcess::start(&app, &broker, group, "c", &["--max-retries", "1"]);
    eventually(
        Duration::from_secs(60),
        "eleven dead-letter rows",
        || async { (dlq_rows(&app, group).await.len() == 11).then_some(()) },
    )
    .await;

    // Act: the cause is fixed; a dry run, then the run, of every sequence a poison heads.
    sqlx::query("DELETE FROM consumer_faults")
        .execute(app.store.pool())
        .await
        .unwrap();
    let filter = [
        "retry",
        "--group",
        group,
        "--reason-class",
        "permanent",
        "--json",
    ];
    let dry: Value =
        serde_json::from_str(&keel_dlq(&app, &[&filter[..], &["--dry-run"]].concat()).await)
            .unwrap();
    assert_eq!(
        (dry["would_touch"].as_u64(), dry["sequences"].as_u64()),
        (Some(9), Some(3))
    );
    let done: Value = serde_json::from_str(&keel_dlq(&app, &filter).await).unwrap();
    assert_eq!(done["touched"], dry["would_touch"], "{done}");

    // Assert: each key's records arrive in order, and the flaky key still waits.
    wait_handled(&app, &expected, Duration::from_secs(60)).await;
    assert_in_order(&as_received(&handled(&app).await), &expected);
    let waiting = [("parked".to_owned(), f[0]), ("held".to_owned(), f[1])];
    eventually(
        Duration::from_secs(10),
        "only the flaky key's rows to be open",
        || async {
            let left = dlq_rows(&app, group).await;
            let open: Vec<(String, Uuid)> = left.into_iter().map(|r| (r.0, r.2)).collect();
            (open == waiting).then_some(())
        },
    )
    .await;
}
