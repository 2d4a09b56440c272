//! With no engine answering, a stack fails at once with a message naming `scripts/engine`.
//! Its own test binary, because it points this process's DOCKER_HOST at nothing.

use keel_testkit::{Error, KeelStack};

#[tokio::test]
async fn no_engine_fails_naming_the_script_that_starts_one() {
    let socket = std::env::temp_dir().join(format!(
        "keel-testkit-no-engine-{}.sock",
        std::process::id()
    ));
    std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display()));

    let err = KeelStack::builder()
        .start()
        .await
        .err()
        .expect("no stack can start without an engine");

    assert!(matches!(err, Error::NoEngine { .. }), "{err}");
    assert!(err.to_string().contains("scripts/engine"), "{err}");
}
