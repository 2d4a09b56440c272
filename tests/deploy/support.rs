//! What the deploy tests share: the repository, the validators' virtualenv, the engine gate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv `scripts/deploy-tools` makes (Docker Compose v5, kubernetes-validate,
/// yamllint, hadolint): from `KEEL_TEST_DEPLOY_TOOLS`, which `scripts/test` sets, else made once
/// per test process (the tests run in parallel and would race to create it).
pub fn deploy_tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        if let Some(venv) = std::env::var_os("KEEL_TEST_DEPLOY_TOOLS") {
            return PathBuf::from(venv);
        }
        let out = Command::new(repo().join("scripts/deploy-tools"))
            .output()
            .expect("cannot run scripts/deploy-tools");
        assert!(
            out.status.success(),
            "scripts/deploy-tools could not make the checkers' virtualenv (it needs python3 with venv \
             and PyPI): {}\nrun scripts/deploy-tools and set KEEL_TEST_DEPLOY_TOOLS to the path it prints",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
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
