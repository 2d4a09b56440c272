//! The engine gate every container test goes through: a machine that declares it has no engine
//! (`KEEL_TEST_NO_ENGINE=1`) skips loudly; anywhere else a missing engine or image fails the
//! test with the testkit's own message, which names the script to run. Never a silent pass.

#![allow(dead_code)] // each test binary uses part of this

use std::sync::Arc;

use keel_testkit::KeelStack;

/// False, after saying so on stderr, when this machine has declared it has no container engine.
pub fn engine_expected() -> bool {
    if std::env::var("KEEL_TEST_NO_ENGINE").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no container engine");
        return false;
    }
    true
}

/// What a failure to start means for someone running the tests.
pub const NEEDS: &str = "this test needs a container engine and keel's local images: run \
    scripts/engine, then `eval \"$(scripts/images)\"` (it builds the images and prints the \
    KEEL_*_IMAGE variables); set KEEL_TEST_NO_ENGINE=1 only on a machine with no engine";

/// The test binary's shared stack, or `None` when the engine gate skips.
pub async fn stack() -> Option<Arc<KeelStack>> {
    if !engine_expected() {
        return None;
    }
    match keel_testkit::shared().await {
        Ok(stack) => Some(stack),
        Err(e) => panic!("the keel stack did not start: {e}\n{NEEDS}"),
    }
}
