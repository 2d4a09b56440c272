//! `keel bench soak`: the short version CI runs. A real `keel serve --relay --projections` under a
//! steady load through its API for a minute; the command itself fails unless every acknowledged
//! event reached the store, a Kafka consumer group and the `service_invocations` projection, and
//! this test checks the counts it reports as well.

use serde_json::Value;

use crate::helpers::fresh_database_url;
use crate::relay_support::Broker;

#[tokio::test]
async fn a_one_minute_soak_through_keel_serve_loses_nothing_it_acknowledged() {
    let broker = Broker::start().await;
    let database = fresh_database_url();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "soak", "--minutes", "1", "--rate", "200", "--json"])
        .args(["--database-url", &database])
        .env("KEEL_DATABASE_URL", &database)
        .env("KEEL_KAFKA_BROKERS", broker.brokers())
        .env("KEEL_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("keel bench soak runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    // About 12,000 sent. The load is light, but CI runs other tests beside it: a refused request
    // is the client's to retry and is not part of the guarantee, so a few are allowed.
    assert!(n("sent") >= 10_000, "{report}");
    assert_eq!(n("acked") + n("failed"), n("sent"), "{report}");
    assert!(n("failed") * 100 <= n("sent"), "{report}");
    for reached in ["stored", "consumed", "projected"] {
        assert_eq!(n(reached), n("acked"), "{reached}: {report}");
    }
    assert_eq!(n("lost"), 0, "{report}");
    assert_eq!(report["outbox_left"], 0, "{report}");
    // The group's own account: its assignments are counted by its rebalance callback (errors
    // and redeliveries are reported, not asserted: at-least-once allows both).
    assert!(n("group_assignments") >= 1, "{report}");
    let _ = (n("group_read_errors"), n("group_redelivered"));
    // One line per 10 s, each with keel's RSS read and, once the group has joined (within the
    // first interval or two), latencies measured.
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= 5, "{report}");
    for i in intervals {
        assert!(i["rss_mib"].as_f64().unwrap() > 1.0, "{i}");
    }
    for i in &intervals[2..] {
        assert!(i["consume"]["n"].as_u64().unwrap() > 0, "{i}");
    }
}
