//! A stack whose image is missing fails before anything is created, naming the command that
//! builds the image, and never pulls.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use keel_testkit::{Error, Images, KeelStack};

#[tokio::test]
async fn a_missing_image_fails_at_preflight_naming_its_build_command_without_pulling() {
    if !common::engine_expected() {
        return;
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let tag = format!("missing-{}", std::process::id());
    let local = format!("keel-local/keel:{tag}");
    let released = format!("keel:{tag}");
    let present = Images::from_env().unwrap();
    // The other three must be present for the check to single out the keel image.
    keel_testkit::preflight::check(&Images {
        keel: present.postgres.clone(),
        ..present.clone()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", common::NEEDS));

    for (keel, hint) in [
        (&local, "scripts/images".to_string()),
        (&released, format!("docker build -t {released} .")),
    ] {
        let images = Images {
            keel: keel.clone(),
            ..present.clone()
        };
        let err = KeelStack::builder()
            .images(images)
            .start()
            .await
            .err()
            .expect("a stack with a missing image must not start");
        let Error::MissingImages(missing) = &err else {
            panic!("expected a preflight failure, got: {err}");
        };
        assert_eq!(missing.len(), 1, "{err}");
        assert_eq!(&missing[0].image, keel);
        assert_eq!(missing[0].variable, "KEEL_IMAGE");
        let message = err.to_string();
        assert!(message.contains(&hint), "{message}");
        assert!(message.contains("none pulled"), "{message}");
    }

    // The engine saw no pull of either name and no container created from it.
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let events = Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
        ])
        .args([
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.image}}",
        ])
        .output()
        .expect("docker CLI");
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );
    let events = String::from_utf8_lossy(&events.stdout);
    for line in events.lines() {
        assert!(
            !line.contains(&tag),
            "the engine did something with the missing image: {line}"
        );
        assert!(
            !line.starts_with("image pull"),
            "an image was pulled: {line}"
        );
    }
}
