//! What the deploy tests share: the repository, the validators' virtualenv, the engine gate.

use std::path::PathBuf;
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv `scripts/deploy-tools` makes (Docker Compose v5, the validators): from
/// `KEEL_TEST_DEPLOY_TOOLS`, which `scripts/test` sets, else made now.
pub fn deploy_tools() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_TEST_DEPLOY_TOOLS") {
        return dir.into();
    }
    let made = Command::new(repo().join("scripts/deploy-tools"))
        .output()
        .expect("scripts/deploy-tools runs");
    assert!(
        made.status.success(),
        "scripts/deploy-tools failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&made.stdout).trim())
}

/// True (after saying so loudly) only where `scripts/test` found that no container engine can
/// run. Otherwise the engine must answer: a test that needs it fails without it.
pub fn no_engine() -> bool {
    if std::env::var("KEEL_TEST_NO_ENGINE").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no container engine (KEEL_TEST_NO_ENGINE=1): this test did not run");
        return true;
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => false,
        _ => panic!("no container engine answers: run scripts/engine --install (scripts/test does), then scripts/images"),
    }
}
