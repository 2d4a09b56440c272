//! A keel that cannot start fails the stack's start with the end of keel's own log, rather than
//! a bare timeout, and leaves no container behind.

mod common;

use std::process::Command;
use std::time::Duration;

use keel_testkit::{Error, KeelStack};

#[tokio::test(flavor = "multi_thread")]
async fn a_keel_that_exits_at_start_fails_with_its_log() {
    if !common::engine_expected() {
        return;
    }
    let err = KeelStack::builder()
        // keel refuses a server secret shorter than 32 bytes and exits.
        .keel_env("KEEL_AUTH__KEY_SECRET", "too-short")
        .startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .err()
        .expect("keel must refuse a short server secret");

    let Error::NotReady { what, detail } = &err else {
        panic!(
            "expected keel not to become ready, got: {err}\n{}",
            common::NEEDS
        );
    };
    assert!(what.starts_with("keel"), "{err}");
    assert!(detail.contains("its container exited"), "{err}");
    assert!(
        detail.contains("key_secret"),
        "keel's log names the setting: {err}"
    );

    // Every container of the failed start is gone again (removed on drop, not at exit). No other
    // stack runs meanwhile: cargo runs test binaries one at a time, and this one has one test.
    let names = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "name=keel-testkit-",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker CLI");
    let left = String::from_utf8_lossy(&names.stdout);
    assert!(left.trim().is_empty(), "containers left behind: {left}");
}
