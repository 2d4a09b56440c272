//! The gap-safe log: no event is ever skipped, whenever its transaction commits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::append;
use keel::model::{AggregateType, EventType, ExpectedVersion, NewEvent};
use keel::store::{self, LogCursor, LogFilter, LoggedEvent, Store};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{eventually, spawn_app};

fn event(to: &str) -> NewEvent {
    NewEvent::new(
        EventType::parse("state_change").unwrap(),
        json!({"entity": "x", "from_state": null, "to_state": to, "attributes": {}}),
    )
}

fn entity() -> AggregateType {
    AggregateType::parse("entity").unwrap()
}

/// Follows the log the way the relay will: read a page after the cursor, move the cursor to the
/// last event, repeat. Records everything it reads, in order.
struct Follower {
    seen: Arc<Mutex<Vec<LoggedEvent>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(store: Store) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut cursor = LogCursor::START;
            while !st.load(Ordering::Relaxed) {
                let page = store::log::read_committed_after(
                    store.pool(),
                    cursor,
                    &LogFilter::default(),
                    37,
                    0,
                )
                .await
                .unwrap();
                for e in &page {
                    assert!(e.cursor() > cursor, "the log went backwards");
                    cursor = e.cursor();
                }
                let empty = page.is_empty();
                s.lock().unwrap().extend(page);
                if empty {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Self { seen, stop, task }
    }

    fn seen(&self) -> Vec<LoggedEvent> {
        self.seen.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<LoggedEvent> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_never_skips_an_event_committed_late_or_shows_one_rolled_back() {
    let app = spawn_app().await;
    let store = app.store.clone();
    let appender = app.appender.clone();
    let follower = Follower::start(store.clone());

    // One transaction appends and then stays open while everyone else commits around it.
    let held_aggregate = Uuid::new_v4();
    let mut held = store.pool().begin().await.unwrap();
    let held_result = append::append(
        &mut held,
        appender.validator(),
        &keel::auth::Access::everything(),
        &entity(),
        held_aggregate,
        ExpectedVersion::NoStream,
        vec![event("held")],
    )
    .await
    .unwrap();
    let held_tx: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    let held_id = held_result.events[0].id;

    // Eight writers over twenty aggregates; one append in four is rolled back.
    let aggregates: Arc<Vec<Uuid>> = Arc::new((0..20).map(|_| Uuid::new_v4()).collect());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, appender, aggregates) =
                (store.clone(), appender.clone(), aggregates.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let aggregate = aggregates[rand::thread_rng().gen_range(0..aggregates.len())];
                    let batch = [event(&format!("w{w}-{i}")), event(&format!("w{w}-{i}b"))];
                    let batch = &batch[..1 + i % 2];
                    if i % 4 == 3 {
                        let mut tx = store.pool().begin().await.unwrap();
                        match append::append(
                            &mut tx,
                            appender.validator(),
                            &keel::auth::Access::everything(),
                            &entity(),
                            aggregate,
                            ExpectedVersion::Any,
                            batch.to_vec(),
                        )
                        .await
                        {
                            Ok(_) | Err(append::Error::Store(store::Error::TransactionOrder)) => {
                                tx.rollback().await.unwrap()
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    } else {
                        appender
                            .append(
                                &keel::auth::Access::everything(),
                                &entity(),
                                aggregate,
                                ExpectedVersion::Any,
                                batch.to_vec(),
                            )
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }

    // Everything the writers committed sorts after the held transaction, so while it is open the
    // follower must not have read any of it, however long we keep it open.
    let committed_after_held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tx_id > $1::bigint::text::xid8")
            .bind(held_tx)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(
        committed_after_held >= 200,
        "writers committed {committed_after_held} events"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the scenario: a transaction held open
    let while_held = follower.seen();
    assert!(
        while_held.iter().all(|e| e.tx_id < held_tx),
        "the follower advanced past a transaction that was still open"
    );

    held.commit().await.unwrap();

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the follower to read every committed event",
        || {
            let n = follower.seen().len() as i64;
            async move { (n >= total).then_some(()) }
        },
    )
    .await;
    let seen = follower.stop().await;

    // Exactly once: the follower's events are the committed events, no more, no fewer.
    let ids: Vec<Uuid> = seen.iter().map(|e| e.event.id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was read twice");
    let stored: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        unique, stored,
        "the follower's events differ from the committed events"
    );
    assert!(
        unique.contains(&held_id),
        "the late-committing event was skipped"
    );

    // In an order consistent with every aggregate's versions: 1, 2, 3... each.
    let mut next_version: HashMap<Uuid, i32> = HashMap::new();
    for e in &seen {
        let next = next_version.entry(e.event.aggregate_id).or_insert(1);
        assert_eq!(
            e.event.version, *next,
            "aggregate {} out of order",
            e.event.aggregate_id
        );
        *next += 1;
    }
}

/// Shows that the scenario above is the real hazard: a reader that follows `position` alone moves
/// past the held transaction's event and never comes back for it.
#[tokio::test]
async fn a_plain_position_cursor_would_skip_the_late_committing_event() {
    let app = spawn_app().await;
    let store = app.store.clone();

    let mut held = store.pool().begin().await.unwrap();
    let held_event = append::append(
        &mut held,
        app.appender.validator(),
        &keel::auth::Access::everything(),
        &entity(),
        Uuid::new_v4(),
        ExpectedVersion::Any,
        vec![event("held")],
    )
    .await
    .unwrap()
    .events[0];
    let later = app
        .appender
        .append(
            &keel::auth::Access::everything(),
            &entity(),
            Uuid::new_v4(),
            ExpectedVersion::Any,
            vec![event("later")],
        )
        .await
        .unwrap()
        .events[0];
    assert!(later.position > held_event.position);

    let naive_cursor: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    held.commit().await.unwrap();
    let naive_next: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM events WHERE position > $1")
            .bind(naive_cursor)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(
        naive_next.is_empty(),
        "the naive reader never sees the held event"
    );

    // The log reads both, held first: it had the older transaction.
    // (Polled: an open write transaction in another test's database holds the horizon too.)
    let ids = eventually(Duration::from_secs(20), "both events in the log", || {
        let store = store.clone();
        async move {
            let page = store::log::read_committed_after(
                store.pool(),
                LogCursor::START,
                &LogFilter::default(),
                10,
                0,
            )
            .await
            .unwrap();
            let ids: Vec<Uuid> = page.iter().map(|e| e.event.id).collect();
            (ids.len() == 2).then_some(ids)
        }
    })
    .await;
    assert_eq!(ids, [held_event.id, later.id]);
}
