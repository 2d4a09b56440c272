//! `deploy/ci/check` over the real deployment files, and over the broken copies in
//! `deploy/ci/mutations/`.
//!
//! - Every file passes every check: Compose's own validation, the Kubernetes schemas (strict, with
//!   unknown kinds failing outside the CRD allow-list), yamllint, hadolint, and the semantic check
//!   against this keel binary's commands and settings.
//! - Every mutation fails, and at the check it says it targets: a mutation caught by the wrong
//!   check would leave its own check untested.
//! - Without its checkers `deploy/ci/check` refuses to run (exit 2) and names the script that
//!   installs them, so a missing tool never reads as a pass.
//!
//! The checkers come from `KEEL_TEST_DEPLOY_TOOLS` or from `scripts/deploy-tools` (a virtualenv
//! it creates once); without them these tests fail saying what to run, they are not skipped.

use std::process::{Command, Output};

use crate::support::{deploy_tools, repo};

/// The fewest mutations `--mutations` must have run: the five schema cases per file kind named
/// in the issue plus one per semantic rule. Fewer means mutations were lost, not that all passed.
const MIN_MUTATIONS: usize = 25;

fn check(args: &[&str]) -> Output {
    Command::new(repo().join("deploy/ci/check"))
        .args(args)
        .current_dir(repo())
        .env("KEEL_BIN", env!("CARGO_BIN_EXE_keel"))
        .env("KEEL_TEST_DEPLOY_TOOLS", deploy_tools())
        .output()
        .expect("cannot run deploy/ci/check")
}

fn report(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn deployment_files_pass_every_offline_check() {
    let out = check(&[]);

    assert!(
        out.status.success(),
        "deploy/ci/check failed:\n{}",
        report(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("check: ok"),
        "no verdict line:\n{}",
        report(&out)
    );
    assert!(
        stdout.contains("semantic: ok (5 rendered file(s))"),
        "semantic did not see two compose renders and three overlays:\n{}",
        report(&out)
    );
}

#[test]
fn every_mutation_fails_at_the_check_it_targets() {
    let out = check(&["--mutations"]);

    assert!(
        out.status.success(),
        "some mutations were not caught (PASSED: every check accepted it; WRONG: another check \
         caught it):\n{}",
        report(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let caught = stdout.lines().filter(|l| l.starts_with("caught ")).count();
    assert!(
        caught >= MIN_MUTATIONS,
        "only {caught} mutations ran, expected at least {MIN_MUTATIONS}:\n{}",
        report(&out)
    );
    for check in ["compose", "schema", "yamllint", "semantic"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("caught ") && l.contains(&format!("({check}: "))),
            "no mutation is caught by {check}:\n{}",
            report(&out)
        );
    }
}

#[test]
fn check_without_the_tools_fails_naming_the_script_to_run() {
    let missing = std::env::temp_dir().join(format!("keel-no-deploy-tools-{}", std::process::id()));

    let out = Command::new(repo().join("deploy/ci/check"))
        .current_dir(repo())
        .env("KEEL_BIN", env!("CARGO_BIN_EXE_keel"))
        .env("KEEL_TEST_DEPLOY_TOOLS", &missing)
        .output()
        .expect("cannot run deploy/ci/check");

    assert_eq!(out.status.code(), Some(2), "{}", report(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run scripts/deploy-tools"),
        "{}",
        report(&out)
    );
}
