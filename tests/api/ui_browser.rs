//! The dashboard in a real browser: keel runs in-process, and `ui-tests/flows.mjs` drives
//! Debian's Chromium through it with playwright-core (login, the overview, the live tail within
//! 2 s of an append, an event's detail, a viewer's read-only pages and forged posts). Any page
//! error, console error or CSP violation fails a flow; each leaves a screenshot in
//! `KEEL_UI_SHOTS` (default `<target>/ui-shots`).
//!
//! Chromium, Node 20+ and `ui-tests/node_modules` come from `scripts/browser` (CI runs it);
//! this test only installs `node_modules` (`scripts/browser --check`). Without a browser or
//! Node it fails and says what to install; `KEEL_SKIP_BROWSER=1` skips it, loudly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::spawn_app_with;

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

#[tokio::test]
async fn the_dashboard_flows_pass_in_a_real_chromium_with_no_page_console_or_csp_error() {
    if std::env::var("KEEL_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: the dashboard's browser flows (KEEL_SKIP_BROWSER=1); nothing was checked in a browser");
        return;
    }
    let chromium = browser().await;
    let app = spawn_app_with(|_| {}).await;
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
}
