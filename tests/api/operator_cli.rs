//! The operator commands as an operator runs them: the `keel` binary against a running keel's
//! API (`KEEL_URL`, `KEEL_API_KEY`), never its database, so each action passes authorisation and
//! lands in the audit log.

use keel::auth::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_state_changed, client_with_key, run, spawn_app, TestApp};

/// `keel ARGS` as the admin.
async fn admin(app: &TestApp, args: &[&str]) -> crate::helpers::Run {
    let mut command = app.keel();
    command.args(args);
    run(command).await
}

async fn append_with(app: &TestApp, key: &str, agent: Uuid) -> StatusCode {
    client_with_key(key)
        .post(app.url(&format!("/v1/aggregates/agent/{agent}/events")))
        .json(&json!({"events": [agent_state_changed(agent, "running")]}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_principal_created_with_the_cli_gets_a_key_that_appends_until_it_is_revoked() {
    let app = spawn_app().await;
    admin(
        &app,
        &["principal", "create", "billing", "--role", "producer"],
    )
    .await
    .expect_ok("principal create");

    let created = admin(&app, &["principal", "key", "create", "billing"]).await;
    assert!(
        created.stderr.contains("only time it is shown"),
        "{}",
        created.stderr
    );
    let key = created.expect_ok("key create").trim().to_owned();
    assert!(
        key.starts_with("keel_"),
        "stdout holds the key alone: {key}"
    );
    assert_eq!(
        append_with(&app, &key, Uuid::new_v4()).await,
        StatusCode::CREATED
    );

    let principals = admin(&app, &["principal", "list", "--json"])
        .await
        .json_lines("principal list");
    let billing = principals
        .iter()
        .find(|p| p["name"] == "billing")
        .expect("billing is listed");
    assert_eq!(billing["roles"], json!(["producer"]));

    // The key list shows ids, never the secret.
    let key_id = key.split('_').nth(1).unwrap();
    let keys = admin(&app, &["principal", "key", "list", "billing", "--json"])
        .await
        .json_lines("key list");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key_id"], key_id);
    assert!(!keys[0]
        .to_string()
        .contains(key.rsplit('_').next().unwrap()));

    // A whole key is refused as a revoke argument: its secret would show in `ps`.
    let whole = admin(&app, &["principal", "key", "revoke", &key]).await;
    assert!(!whole.ok && whole.stderr.contains("whole key"), "{whole:?}");

    admin(&app, &["principal", "key", "revoke", key_id])
        .await
        .expect_ok("key revoke");
    assert_eq!(
        append_with(&app, &key, Uuid::new_v4()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn grants_added_with_the_cli_are_listed_beside_the_roles_and_removed_again() {
    let app = spawn_app().await;
    admin(&app, &["principal", "create", "auditor"])
        .await
        .expect_ok("principal create");
    admin(
        &app,
        &[
            "grant",
            "add",
            "auditor",
            "event.read",
            "--resource",
            "invoice*",
        ],
    )
    .await
    .expect_ok("grant add");
    admin(
        &app,
        &[
            "grant",
            "add",
            "auditor",
            "event.read",
            "--resource",
            "invoice.secret",
            "--deny",
        ],
    )
    .await
    .expect_ok("grant add --deny");

    let held = admin(&app, &["grant", "list", "auditor", "--json"])
        .await
        .json_lines("grant list");
    let words: Vec<(String, String, String)> = held
        .iter()
        .map(|g| {
            let s = |k: &str| g[k].as_str().unwrap().to_owned();
            (s("effect"), s("action"), s("resource"))
        })
        .collect();
    assert_eq!(
        words,
        [
            ("allow".into(), "event.read".into(), "invoice*".into()),
            ("deny".into(), "event.read".into(), "invoice.secret".into())
        ]
    );
    // The admin's grants come from its role.
    let admin_grants = admin(&app, &["grant", "list", "admin", "--json"])
        .await
        .json_lines("grant list admin");
    assert!(admin_grants
        .iter()
        .any(|g| g["from"] == "role admin" && g["action"] == "principal.manage"));

    admin(
        &app,
        &[
            "grant",
            "remove",
            "auditor",
            "event.read",
            "--resource",
            "invoice*",
        ],
    )
    .await
    .expect_ok("grant remove");
    let again = admin(
        &app,
        &[
            "grant",
            "remove",
            "auditor",
            "event.read",
            "--resource",
            "invoice*",
        ],
    )
    .await;
    assert!(
        !again.ok && again.stderr.contains("holds no custom grant"),
        "{again:?}"
    );
    let held = admin(&app, &["grant", "list", "auditor", "--json"])
        .await
        .json_lines("grant list");
    assert_eq!(held.len(), 1, "{held:?}");

    // A grant keel cannot store is refused with the server's reason.
    let bad = admin(
        &app,
        &["grant", "add", "auditor", "audit.read", "--resource", "x"],
    )
    .await;
    assert!(!bad.ok && bad.stderr.contains("'*'"), "{bad:?}");
}

#[tokio::test]
async fn outbox_status_json_parses_into_one_row_per_enabled_sink() {
    let app = spawn_app().await;
    let status: Value = serde_json::from_str(
        &admin(&app, &["outbox", "status", "--json"])
            .await
            .expect_ok("outbox status"),
    )
    .unwrap();
    let sinks = status.as_array().expect("an array of sinks");
    for sink in sinks {
        assert!(
            sink["backlog"].is_i64() && sink["parked"].is_i64(),
            "{sink}"
        );
    }
    let table = admin(&app, &["outbox", "status"]).await.expect_ok("table");
    assert!(table.starts_with("sink"), "{table}");
}

#[tokio::test]
async fn an_operator_command_says_which_key_or_grant_it_lacks_and_where_the_server_should_be() {
    let app = spawn_app().await;
    let dlq_retry = ["dlq", "retry", "--group", "billing", "--all"];

    // No key at all.
    let mut command = app.keel_with(None);
    command.args(dlq_retry);
    let out = run(command).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unauthenticated")
            && out.stderr.contains("KEEL_API_KEY is not set")
            && out.stderr.contains("dlq.retry"),
        "{}",
        out.stderr
    );

    // A reader's key: 403, with the grant to ask for.
    let reader = app.principal("looker", &[Role::Reader], &[]).await;
    let mut command = app.keel_with(Some(&reader));
    command.args(dlq_retry);
    let out = run(command).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("forbidden")
            && out.stderr.contains("lacks the grant dlq.retry on billing")
            && out
                .stderr
                .contains("keel grant add PRINCIPAL dlq.retry --resource billing"),
        "{}",
        out.stderr
    );
    // The refusal is audited.
    let denied = admin(
        &app,
        &[
            "audit",
            "list",
            "--json",
            "--principal",
            "looker",
            "--action",
            "dlq.retry",
        ],
    )
    .await
    .json_lines("audit list");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["outcome"], "denied");

    // A key keel does not know.
    let unknown = keel::auth::ApiKey::generate().unwrap().expose_secret();
    let mut command = app.keel_with(Some(&unknown));
    command.args(dlq_retry);
    let out = run(command).await;
    assert!(
        !out.ok
            && out
                .stderr
                .contains("the key in KEEL_API_KEY is not accepted"),
        "{}",
        out.stderr
    );

    // No server where KEEL_URL points.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut command = app.keel();
    command.args(["outbox", "status"]).env("KEEL_URL", &url);
    let out = run(command).await;
    assert!(
        !out.ok
            && out
                .stderr
                .contains(&format!("is `keel serve` running at {url}?"))
            && out.stderr.contains("KEEL_URL"),
        "{}",
        out.stderr
    );
    // --url beats KEEL_URL.
    let mut command = app.keel();
    command
        .args(["outbox", "status", "--url", &app.url("")])
        .env("KEEL_URL", &url);
    run(command).await.expect_ok("--url");
}

#[tokio::test]
async fn audit_list_shows_principal_changes_and_verify_finds_a_tampered_row() {
    let app = spawn_app().await;
    admin(
        &app,
        &["principal", "create", "billing", "--role", "producer"],
    )
    .await
    .expect_ok("principal create");
    let rows = admin(
        &app,
        &["audit", "list", "--json", "--action", "principal.create"],
    )
    .await
    .json_lines("audit list");
    let row = rows
        .iter()
        .find(|r| r["target"].to_string().contains("billing"))
        .unwrap_or_else(|| panic!("a principal.create row for billing: {rows:?}"));
    assert_eq!(
        (&row["principal"], &row["outcome"]),
        (&json!("admin"), &json!("ok"))
    );
    let table = admin(&app, &["audit", "list"])
        .await
        .expect_ok("audit list");
    assert!(table.contains("principal.create"), "{table}");

    let verified = admin(&app, &["audit", "verify"])
        .await
        .expect_ok("audit verify");
    assert!(verified.contains("the audit chain holds"), "{verified}");

    // Edit the row around the trigger, as a superuser could: verify names it.
    let id = row["id"].as_i64().unwrap();
    let mut tx = app.store.pool().begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET principal = 'mallory' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let broken = admin(&app, &["audit", "verify"]).await;
    assert!(!broken.ok, "{broken:?}");
    assert!(
        broken
            .stderr
            .contains(&format!("the audit chain is broken at row {id}")),
        "{}",
        broken.stderr
    );
}

#[tokio::test]
async fn the_cli_reaches_an_https_keel_through_the_ca_it_is_given() {
    let pki = crate::tls_support::Pki::new("cli");
    pki.server("server", 0x1001);
    let app = crate::helpers::spawn_app_with(|c| {
        c.api.tls = keel::config::ApiTlsConfig {
            cert_file: Some(pki.cert("server")),
            key_file: Some(pki.key("server")),
            ..Default::default()
        };
    })
    .await;
    let https = format!("https://{}", app.addr);

    // The system's roots do not vouch for a private CA: refused, with what to set.
    let mut command = app.keel();
    command.args(["outbox", "status"]).env("KEEL_URL", &https);
    let out = run(command).await;
    assert!(
        !out.ok && out.stderr.contains("UnknownIssuer") && out.stderr.contains("set KEEL_CA_FILE"),
        "{}",
        out.stderr
    );

    let mut command = app.keel();
    command
        .args(["principal", "list", "--json"])
        .env("KEEL_URL", &https)
        .env("KEEL_CA_FILE", pki.ca());
    let principals = run(command).await.json_lines("principal list over https");
    assert!(principals.iter().any(|p| p["name"] == "admin"));
}
