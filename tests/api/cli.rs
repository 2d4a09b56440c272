//! The `keel` binary as an operator runs it: `migrate`, `serve`, configuration errors.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, fresh_database_url};

fn keel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KEEL_CONFIG")
        .env("KEEL_LOG", "warn");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let mut server = keel()
        .arg("serve")
        .env("KEEL_DATABASE_URL", &database_url)
        .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
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

#[test]
fn a_bad_configuration_fails_fast_with_the_reason() {
    let output = keel()
        .arg("migrate")
        .env("KEEL_API__MAX_BATCH_EVENTS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_batch_events"), "{stderr}");

    let output = keel()
        .arg("migrate")
        .env("KEEL_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(
        stderr.contains("invalid configuration") && stderr.contains("listen"),
        "{stderr}"
    );
}
