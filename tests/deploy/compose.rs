//! docker-compose.yml on a real engine, with the local images swapped in
//! (`deploy/ci/compose.local.yml`): the stack comes up healthy in dependency order, keel answers
//! on 127.0.0.1 only, an event appended over HTTP by a client inside the compose network reaches
//! the broker (decoded through keel's registry) and the Redis stream, and the README's quick
//! start (curl from the host, `redis-cli XRANGE` through `docker compose exec`) works. A
//! `down` and `up` with the volumes kept loses nothing and keeps the admin key working.
//!
//! Needs a Docker engine and the images `scripts/images` builds; `scripts/test` starts the one and
//! builds the other, and sets `KEEL_TEST_NO_ENGINE=1` (after printing `SKIPPED: no container
//! engine`) only where no engine can run. Anywhere else a missing engine or image fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use uuid::Uuid;

use crate::support::{deploy_tools, no_engine, repo};

/// One compose project of this test's own, taken down with its volumes however the test ends.
struct Stack {
    project: String,
    env_file: PathBuf,
    compose: PathBuf,
}

impl Stack {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose);
        command
            .current_dir(repo())
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .args(["--env-file"])
            .arg(&self.env_file)
            .args([
                "-f",
                "docker-compose.yml",
                "-f",
                "deploy/ci/compose.local.yml",
            ])
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.compose.display()))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["--profile", "smoke", "down", "-v", "--remove-orphans"]);
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_file(dir: &Path, http_port: u16) -> PathBuf {
    let path = dir.join("env");
    let made = Command::new(repo().join("scripts/compose-env"))
        .arg(&path)
        .output()
        .expect("scripts/compose-env runs");
    assert!(made.status.success(), "{}", text(&made));
    // It holds the admin key and the server secret: readable by its owner alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
    let mut env = std::fs::read_to_string(&path).unwrap();
    env.push_str(&format!("KEEL_HTTP_PORT={http_port}\n"));
    std::fs::write(&path, env).unwrap();
    path
}

#[tokio::test]
async fn the_compose_stack_comes_up_healthy_and_an_event_appended_over_http_reaches_kafka_and_redis(
) {
    if no_engine() {
        return;
    }
    let dir = tempdir();
    let port = free_port();
    let stack = Stack {
        project: format!("keeltest{}", &Uuid::new_v4().simple().to_string()[..10]),
        env_file: env_file(&dir, port),
        compose: deploy_tools().join("bin/docker-compose"),
    };
    let up = stack.run(&["up", "-d", "--wait", "--wait-timeout", "240"]);
    assert!(
        up.status.success(),
        "the stack did not come up healthy:\n{}\n{}",
        text(&up),
        text(&stack.run(&["logs", "--no-color", "--tail", "40"]))
    );
    // keel's health is the image's own HEALTHCHECK (the compose file sets none for it), and the
    // engine saw it pass.
    let health = text(&stack.run(&["ps", "--format", "{{.Service}} {{.Status}}", "keel"]));
    assert!(health.contains("(healthy)"), "{health}");
    // The migration ran once and finished before keel started; two relays run.
    let ps = text(&stack.run(&[
        "ps",
        "-a",
        "--format",
        "{{.Service}} {{.State}} {{.ExitCode}}",
    ]));
    assert!(ps.contains("keel-migrate exited 0"), "{ps}");
    assert_eq!(ps.matches("keel-relay running").count(), 2, "{ps}");

    // keel's API is published on 127.0.0.1 and nowhere else.
    let published = text(&stack.run(&["port", "keel", "8080"]));
    assert_eq!(published.trim(), format!("127.0.0.1:{port}"), "{published}");
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/v1/health/ready"))
        .await
        .expect("keel answers on its published port");
    assert_eq!(ready.status(), 200);

    // A client inside the compose network: append over HTTP, then find the event on the broker
    // and in Redis.
    let smoke = stack.run(&["run", "--rm", "smoke"]);
    let said = text(&smoke);
    assert!(smoke.status.success(), "the smoke client failed:\n{said}");
    for hop in [
        "smoke: appended",
        "smoke: kafka keel.agent",
        "smoke: redis keel.stream.agent",
        "smoke: ok",
    ] {
        assert!(said.contains(hop), "no `{hop}` in:\n{said}");
    }

    let key = std::fs::read_to_string(&stack.env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("KEEL_ADMIN_KEY=").map(str::to_owned))
        .unwrap();

    // The README's quick start from the host: the curl of the append example, then the event in
    // the Redis stream through `docker compose exec redis redis-cli XRANGE`.
    let agent = Uuid::new_v4();
    let appended = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/aggregates/agent/{agent}/events"
        ))
        .bearer_auth(&key)
        .json(
            &serde_json::json!({"events": [{"type": "agent.state.changed",
            "payload": {"agent_id": agent, "to_state": "running"}}]}),
        )
        .send()
        .await
        .expect("the append from the host");
    assert_eq!(appended.status(), 201, "{:?}", appended.text().await);
    let mut in_redis = String::new();
    for _ in 0..60 {
        in_redis = text(&stack.run(&[
            "exec",
            "-T",
            "redis",
            "redis-cli",
            "XRANGE",
            "keel.stream.agent",
            "-",
            "+",
        ]));
        if in_redis.contains(&agent.to_string()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        in_redis.contains(&agent.to_string()),
        "{agent} not in the stream:\n{in_redis}"
    );

    // The pipeline's own verdict agrees, seen from the host.
    let verdict: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/health/pipeline"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the pipeline verdict")
        .json()
        .await
        .expect("the pipeline verdict is JSON");
    assert_eq!(verdict["status"], "ok", "{verdict}");

    // `down` and `up` again, volumes kept (an upgrade, a host reboot): the migration runs again
    // and finds nothing to do, the admin key still works (the bootstrap file is not applied a
    // second time), and the aggregate appended before is still there.
    let down = stack.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    let up = stack.run(&["up", "-d", "--wait", "--wait-timeout", "240"]);
    assert!(
        up.status.success(),
        "the stack did not come back:\n{}",
        text(&up)
    );
    let history: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v1/aggregates/agent/{agent}/events"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("the read after the restart")
        .json()
        .await
        .expect("the history is JSON");
    assert_eq!(history["version"], 1, "{history}");
    assert_eq!(
        history["events"][0]["payload"]["to_state"], "running",
        "{history}"
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-compose-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
