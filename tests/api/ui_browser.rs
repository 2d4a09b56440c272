//! The dashboard in a real browser: keel runs in-process, and `ui-tests/flows.mjs` drives
//! Debian's Chromium through it with playwright-core (login, the overview, the live tail within
//! 2 s of an append, an event's detail, a full rebuild through the jobs page, a poison record's
//! sequence retried in order from the dead-letters page, every page of the navigation, a
//! viewer's read-only pages and forged posts). Any page
//! error, console error or CSP violation fails a flow; each leaves a screenshot in
//! `KEEL_UI_SHOTS` (default `<target>/ui-shots`).
//!
//! Chromium, Node 20+ and `ui-tests/node_modules` come from `scripts/browser` (CI runs it);
//! this test only installs `node_modules` (`scripts/browser --check`). Without a browser or
//! Node it fails and says what to install; `KEEL_SKIP_BROWSER=1` skips it, loudly.
//!
//! keel runs with its relay on a real broker, and a real `recording_consumer` in a group has
//! parked a poison record with a record of its key held behind it before the browser starts;
//! the fault is fixed by then, so the flow's retry delivers both, which is checked here after.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use uuid::Uuid;

use crate::consumer::{append_states, fault, handled, ConsumerProcess};
use crate::helpers::{eventually, TestApp};
use crate::relay_support::{spawn_kafka_relayed_app, Broker, Server};

/// All flows together, Chromium's start included, take a few seconds; this bounds a hang.
const FLOWS_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the screenshots go: `KEEL_UI_SHOTS`, or `ui-shots` in this build's target directory.
fn shots() -> PathBuf {
    std::env::var_os("KEEL_UI_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../ui-shots"))
}

/// The Chromium to drive, after `scripts/browser --check` made sure it, Node and
/// `ui-tests/node_modules` are there; panics with what to install when they are not.
async fn browser() -> String {
    let checked = tokio::process::Command::new(repo().join("scripts/browser"))
        .arg("--check")
        .current_dir(repo())
        .output()
        .await
        .expect("run scripts/browser --check");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success(),
        "the browser tests cannot run on this machine:\n{stderr}\n\
         install what is named above (scripts/browser does it, as CI's .ci/run does), \
         or set KEEL_SKIP_BROWSER=1 to skip them"
    );
    String::from_utf8_lossy(&checked.stdout).trim().to_owned()
}

/// The consumer group whose dead letters the dead-letters flow retries.
const DLQ_GROUP: &str = "ui-dead-letters";

/// `group`'s dead-letter rows as `(state, event id)`, in offset order.
async fn dead_letters(app: &TestApp, group: &str) -> Vec<(String, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT state, event_id FROM consumer_dlq WHERE group_id = $1
          ORDER BY partition, kafka_offset",
    )
    .bind(group)
    .fetch_all(app.store.pool())
    .await
    .unwrap()
}

/// A poison record parked in `DLQ_GROUP` with one record of its key held behind it, by a real
/// consumer process (returned: it must keep running to redeliver); then the handler is fixed
/// (its fault removed), as an operator would before retrying. Also the key's three events, in
/// order: the first one handled, the second parked, the third held.
async fn poison_parked(app: &TestApp, broker: &Server) -> (ConsumerProcess, Vec<Uuid>) {
    let agent = Uuid::new_v4();
    let events = append_states(app, agent, &["p1", "p2", "p3"]).await;
    fault(app, events[1], "poison").await;
    let consumer = ConsumerProcess::start(app, broker, DLQ_GROUP, "ui", &["--max-retries", "1"]);
    eventually(
        Duration::from_secs(60),
        "the poison record parked and the next one held",
        || async {
            let rows = dead_letters(app, DLQ_GROUP).await;
            (rows
                == [
                    ("parked".to_owned(), Some(events[1])),
                    ("held".to_owned(), Some(events[2])),
                ])
            .then_some(())
        },
    )
    .await;
    sqlx::query("DELETE FROM consumer_faults")
        .execute(app.store.pool())
        .await
        .unwrap();
    (consumer, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_flows_pass_in_a_real_chromium_with_no_page_console_or_csp_error() {
    if std::env::var("KEEL_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: the dashboard's browser flows (KEEL_SKIP_BROWSER=1); nothing was checked in a browser");
        return;
    }
    let chromium = browser().await;
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let (_consumer, poisoned) = poison_parked(&app, &broker).await;
    let reader = app
        .principal("ui-viewer", &[keel::auth::Role::Reader], &[])
        .await;

    let child = tokio::process::Command::new("node")
        .arg("ui-tests/flows.mjs")
        .current_dir(repo())
        .env("KEEL_UI_URL", app.url(""))
        .env("KEEL_UI_KEY", &app.admin_key)
        .env("KEEL_UI_READER_KEY", &reader)
        .env("KEEL_UI_SHOTS", shots())
        .env("KEEL_UI_DLQ_GROUP", DLQ_GROUP)
        .env("KEEL_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node ui-tests/flows.mjs");
    let output = tokio::time::timeout(FLOWS_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser flows did not finish in {FLOWS_TIMEOUT:?}"))
        .expect("node ui-tests/flows.mjs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "the browser flows failed ({}):\n{report}",
        output.status
    );

    if std::env::var_os("KEEL_UI_FLOWS").is_some() {
        eprintln!("KEEL_UI_FLOWS chose the flows: the dead-letters redelivery is not checked");
        return;
    }
    // The flow retried the sequence: the parked record and the one held behind it were handled,
    // after the key's first, in order, and nothing is left open.
    let key: Vec<Uuid> = handled(&app)
        .await
        .into_iter()
        .map(|r| r.3)
        .filter(|id| poisoned.contains(id))
        .collect();
    assert_eq!(
        key, poisoned,
        "the key's events were not handled once each, in order"
    );
    let open: Vec<String> = dead_letters(&app, DLQ_GROUP)
        .await
        .into_iter()
        .map(|r| r.0)
        .filter(|s| s != "delivered" && s != "skipped")
        .collect();
    assert!(open.is_empty(), "dead letters still open: {open:?}");
}
