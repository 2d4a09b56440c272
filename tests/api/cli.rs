//! The `keel` binary as an operator runs it: `migrate`, `serve`, configuration errors.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    agent_state_changed, bootstrap_key_file, client_with_key, eventually, fresh_database_url,
    TEST_KEY_SECRET,
};

pub fn keel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KEEL_CONFIG")
        .env("KEEL_LOG", "warn");
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// jemalloc answers the process's `malloc` itself (not only Rust's allocations under a prefix),
/// so librdkafka and the other C libraries get its background purge too: only then does it read
/// the unprefixed `MALLOC_CONF` (glibc ignores it), here to print its statistics at exit.
#[test]
fn the_binary_allocates_for_its_c_libraries_with_jemalloc_too() {
    let out = keel()
        .arg("--version")
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Begin jemalloc statistics"),
        "MALLOC_CONF was not read by the process's malloc: {stderr}"
    );
}

#[tokio::test]
async fn migrate_creates_the_database_and_serve_answers_until_terminated() {
    let database_url = fresh_database_url();
    let status = keel()
        .args(["migrate", "--database-url", &database_url])
        .status()
        .unwrap();
    assert!(status.success());
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('events', 'outbox', 'streams')",
    )
    .fetch_one(&sqlx::PgPool::connect(&database_url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(tables, 3);

    let port = free_port();
    let (key_file, key) = bootstrap_key_file();
    let mut server = keel()
        .arg("serve")
        .env("KEEL_DATABASE_URL", &database_url)
        .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEEL_AUTH__KEY_SECRET", TEST_KEY_SECRET)
        .env("KEEL_AUTH__BOOTSTRAP_KEY_FILE", &key_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = client_with_key(&key);
    let base = format!("http://127.0.0.1:{port}");
    eventually(
        Duration::from_secs(30),
        "keel serve to become ready",
        || {
            let (client, url) = (client.clone(), format!("{base}/v1/health/ready"));
            async move {
                let reply = client.get(url).send().await.ok()?;
                (reply.status() == StatusCode::OK).then_some(())
            }
        },
    )
    .await;

    let agent = Uuid::new_v4();
    let reply = client
        .post(format!("{base}/v1/aggregates/agent/{agent}/events"))
        .json(&json!({"events": [agent_state_changed(agent, "running")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);

    // SIGTERM: a graceful stop with exit status 0.
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "keel serve exited with {exit}");
}

/// Several `keel migrate` at once against a database that does not exist yet (a Kubernetes
/// Job and every pod's init container starting together): each one succeeds, whichever of
/// them created the database. `keel config check` then accepts the settings and names a
/// misspelt variable.
#[test]
fn concurrent_migrates_of_a_missing_database_all_succeed() {
    let database_url = fresh_database_url();
    let children: Vec<_> = (0..4)
        .map(|_| {
            keel()
                .arg("migrate")
                .env("KEEL_DATABASE_URL", &database_url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start keel migrate")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, out) = run(keel()
        .args(["config", "check"])
        .env("KEEL_DATABASE_URL", &database_url));
    assert!(ok && out.contains("configuration ok"), "{out}");
    let (ok, out) = run(keel()
        .args(["config", "check"])
        .env("KEEL_REDIS_ULR", "redis://x"));
    assert!(
        !ok && out.contains("KEEL_REDIS_ULR") && out.contains("keel config keys"),
        "{out}"
    );
}

#[test]
fn a_bad_configuration_fails_fast_with_the_reason() {
    let (ok, out) = run(keel().arg("migrate").env("KEEL_API__MAX_BATCH_EVENTS", "0"));
    assert!(!ok && out.contains("max_batch_events"), "{out}");

    let (ok, out) = run(keel().arg("migrate").env("KEEL_LISTEN", "not-an-address"));
    let out = out.to_lowercase();
    assert!(
        !ok && out.contains("invalid configuration") && out.contains("listen"),
        "{out}"
    );

    // A misspelt setting is reported, not silently dropped.
    let database_url = fresh_database_url();
    let (ok, out) = run(keel()
        .args(["migrate", "--database-url", &database_url])
        .env("KEEL_LISTN", "127.0.0.1:1"));
    assert!(
        ok && out.contains("ignoring KEEL_LISTN: not a keel setting"),
        "{out}"
    );
}

/// A copy of the shipped catalog in a temporary folder, to add schema files to.
fn catalog_copy() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-catalog-{}", Uuid::new_v4()));
    let status = Command::new("cp")
        .args([
            "-r",
            concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"),
            dir.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn schema_sync_registers_the_catalog_and_refuses_a_breaking_change_with_the_reason() {
    let database_url = fresh_database_url();
    let sync = |dir: &std::path::Path| {
        run(keel().args([
            "schema",
            "sync",
            "--database-url",
            &database_url,
            "--dir",
            dir.to_str().unwrap(),
        ]))
    };
    let catalog = catalog_copy();

    let (ok, out) = sync(&catalog);
    assert!(ok, "{out}");
    assert!(
        out.contains("registered")
            && out.contains("l12.service_invoked/v2.avsc -> subject l12.service_invoked version 2"),
        "{out}"
    );
    let (ok, out) = sync(&catalog);
    assert!(
        ok && out.contains("unchanged") && !out.contains("registered "),
        "a second sync changes nothing: {out}"
    );

    // v2 of state_change makes `entity` a number: data written with v1 cannot be read.
    let breaking = r#"{"type":"record","name":"state_change","fields":[
        {"name":"entity","type":"long"},
        {"name":"from_state","type":["null","string"],"default":null},
        {"name":"to_state","type":"string"},
        {"name":"attributes","type":{"type":"map","values":"string"},"default":{}}]}"#;
    std::fs::write(catalog.join("state_change/v2.avsc"), breaking).unwrap();
    let (ok, out) = sync(&catalog);
    assert!(!ok, "{out}");
    assert!(
        out.contains("state_change/v2.avsc is incompatible with subject state_change"),
        "{out}"
    );
    assert!(
        out.contains("$.entity") && out.contains("TypeMismatch"),
        "{out}"
    );

    let check_v2 = || {
        run(keel().args([
            "schema",
            "check",
            "--database-url",
            &database_url,
            catalog.join("state_change/v2.avsc").to_str().unwrap(),
        ]))
    };
    let (ok, out) = check_v2();
    assert!(!ok && out.contains("$.entity"), "{out}");

    // `keel serve` registers the catalog at start-up and refuses to start on the breaking change.
    let (ok, out) = run(keel()
        .args([
            "serve",
            "--database-url",
            &database_url,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--schemas-dir", catalog.to_str().unwrap()]));
    assert!(
        !ok && out.contains("state_change/v2.avsc is incompatible"),
        "{out}"
    );

    let compatible = breaking.replace(r#""type":"long""#, r#""type":"string""#).replace(
        r#"{"name":"to_state","type":"string"},"#,
        r#"{"name":"to_state","type":"string"},{"name":"note","type":["null","string"],"default":null},"#,
    );
    std::fs::write(catalog.join("state_change/v2.avsc"), compatible).unwrap();
    let (ok, out) = check_v2();
    assert!(
        ok && out.contains("is compatible with subject state_change (BACKWARD_TRANSITIVE)"),
        "{out}"
    );

    let (ok, out) = run(keel().args(["schema", "list", "--database-url", &database_url]));
    assert!(ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("l12.service_invoked")
            && l.contains("v1=id")
            && l.contains("v2=id")),
        "{out}"
    );
    std::fs::remove_dir_all(catalog).unwrap();
}

/// A malformed retention policy or `_aggregates` file stops `keel schema sync` and `keel serve`,
/// naming the file (so the type) and the key; the shipped policies pass.
#[test]
fn schema_sync_and_serve_refuse_a_malformed_retention_policy_naming_the_type_and_the_key() {
    let database_url = fresh_database_url();
    let catalog = catalog_copy();
    let sync = || {
        run(keel().args([
            "schema",
            "sync",
            "--database-url",
            &database_url,
            "--dir",
            catalog.to_str().unwrap(),
        ]))
    };
    let (ok, out) = sync();
    assert!(ok, "the shipped catalog: {out}");

    let invoked = catalog.join("l12.service_invoked/event.toml");
    let shipped = std::fs::read_to_string(&invoked).unwrap();
    assert!(shipped.contains("retention = \"90d\""), "{shipped}");
    let form = "use a whole number and a unit d, w or y, as in 90d";
    for (policy, expected) in [
        (
            "retention = \"90 days\"",
            format!("l12.service_invoked/event.toml: retention \"90 days\": {form}"),
        ),
        (
            "[retention]\nhot = \"0d\"",
            "l12.service_invoked/event.toml: retention.hot \"0d\": a retention age is at least 1d"
                .into(),
        ),
        (
            "[retention]\nhot = \"30d\"\narchive = \"none\"",
            "l12.service_invoked/event.toml: retention.archive = \"none\" deletes events with no archive, for good: add allow_loss = true".into(),
        ),
    ] {
        std::fs::write(&invoked, shipped.replace("retention = \"90d\"", policy)).unwrap();
        let (ok, out) = sync();
        assert!(!ok && out.contains(&expected), "{policy}: {out}");
    }
    std::fs::write(&invoked, &shipped).unwrap();

    let agent = catalog.join("_aggregates/agent.toml");
    std::fs::write(&agent, "history = \"after_snapshot\"\n").unwrap();
    let refused = "_aggregates/agent.toml: history = \"after_snapshot\" needs snapshot_kind";
    let (ok, out) = sync();
    assert!(!ok && out.contains(refused), "{out}");

    let (ok, out) = run(keel()
        .args([
            "serve",
            "--database-url",
            &database_url,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--schemas-dir", catalog.to_str().unwrap()]));
    assert!(!ok && out.contains(refused), "{out}");

    // A file for an aggregate type no event type can reach is accepted, with a warning, once
    // every type names its aggregate type (state_change may otherwise land on any aggregate).
    std::fs::write(&agent, "history = \"full\"\n").unwrap();
    std::fs::write(
        catalog.join("_aggregates/agnet.toml"),
        "history = \"full\"\n",
    )
    .unwrap();
    let (ok, out) = sync();
    assert!(
        ok && !out.contains("agnet"),
        "state_change may reach agnet: {out}"
    );
    // state_change and the types the sagas emit onto their own streams name none.
    for entry in std::fs::read_dir(&catalog).unwrap() {
        let file = entry.unwrap().path().join("event.toml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if !text.contains("aggregate_type") {
            std::fs::write(&file, format!("aggregate_type = \"entity\"\n{text}")).unwrap();
        }
    }
    let (ok, out) = sync();
    assert!(
        ok && out.contains(
            "_aggregates/agnet.toml names an aggregate type that no event type in the catalog uses"
        ),
        "{out}"
    );
    std::fs::remove_dir_all(catalog).unwrap();
}

#[test]
fn a_catalog_schema_must_be_a_record_named_after_its_event_type() {
    let catalog = catalog_copy();
    std::fs::write(
        catalog.join("state_change/v2.avsc"),
        r#"{"type":"record","name":"StateChange","fields":[{"name":"entity","type":"string"}]}"#,
    )
    .unwrap();
    let database_url = fresh_database_url();
    let (ok, out) = run(keel().args([
        "schema",
        "sync",
        "--database-url",
        &database_url,
        "--dir",
        catalog.to_str().unwrap(),
    ]));
    assert!(!ok);
    assert!(
        out.contains(
            "the record's full name is StateChange, but it must be the event type state_change"
        ),
        "{out}"
    );
    std::fs::remove_dir_all(catalog).unwrap();
}

#[test]
fn serve_refuses_to_start_without_an_api_key_secret_and_says_how_to_make_one() {
    let (ok, out) = run(keel()
        .arg("serve")
        .env("KEEL_DATABASE_URL", fresh_database_url())
        .env("KEEL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env_remove("KEEL_AUTH__KEY_SECRET")
        .env_remove("KEEL_AUTH__KEY_SECRET_FILE")
        .env_remove("KEEL_AUTH__MODE"));
    assert!(!ok, "keel serve started without a key secret: {out}");
    assert!(
        out.contains("auth.key_secret_file") && out.contains("auth.mode = \"none\""),
        "{out}"
    );
}
