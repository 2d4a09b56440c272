//! The archive's object storage on a local directory and on a real S3-compatible server: the
//! same checks on both, then what only a server can get wrong (a bucket that is not there, a
//! server killed in the middle of an upload).
//!
//! The server is moto (`moto[server]` from PyPI), in memory, one per test on a free loopback
//! port. It comes from keel's Python virtualenv, which `scripts/pyenv` creates and whose python
//! `scripts/test` exports as `KEEL_TEST_PYTHON`; without it these tests fail and say so.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel::archive::objects::{Created, Error, Objects, MULTIPART_ABOVE, RETRY_TIMEOUT};
use keel::config::ArchiveConfig;

use crate::helpers::eventually;
use crate::relay_support::{scratch_dir, Server};

pub(crate) const BUCKET: &str = "keel-archive";

fn python() -> String {
    std::env::var("KEEL_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// An S3-compatible server (moto) with an empty bucket [`BUCKET`].
pub(crate) struct Moto;

impl Moto {
    pub(crate) async fn start() -> Server {
        let python = python();
        let found = Command::new(&python)
            .args(["-c", "import moto.server"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run scripts/pyenv, which installs moto[server], and set KEEL_TEST_PYTHON to its python (scripts/test does)"));
        assert!(
            found.status.success(),
            "moto's S3 server is not installed for {python}: run scripts/pyenv, which installs moto[server], and set KEEL_TEST_PYTHON to its python (scripts/test does):\n{}",
            String::from_utf8_lossy(&found.stderr)
        );
        let server = Server::start("moto's S3 server", move |port| {
            let mut c = Command::new(&python);
            c.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string());
            c
        })
        .await;
        // moto takes any credentials and creates a bucket on an unsigned PUT.
        let url = format!("{}/{BUCKET}", endpoint(&server));
        eventually(Duration::from_secs(20), "moto to create the bucket", || {
            let url = url.clone();
            async move {
                let response = reqwest::Client::new().put(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        server
    }
}

fn endpoint(server: &Server) -> String {
    format!("http://127.0.0.1:{}", server.port)
}

/// The archive at `s3://bucket/prefix` on `server`, with throwaway credentials.
pub(crate) fn on_server(server: &Server, bucket: &str, prefix: &str) -> Objects {
    let mut config = ArchiveConfig {
        url: format!("s3://{bucket}/{prefix}"),
        ..ArchiveConfig::default()
    };
    config.s3.endpoint = endpoint(server);
    config.s3.allow_http = true;
    let credentials = [
        ("AWS_ACCESS_KEY_ID", "keel-test"),
        ("AWS_SECRET_ACCESS_KEY", "keel-test"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    Objects::open_with(&config, credentials)
        .expect("an s3:// archive opens")
        .expect("a URL is an archive")
}

/// Bytes that differ along their length, so a part out of place shows.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// What every backend must do alike.
async fn keeps_the_archive_contract(objects: &Objects) {
    objects.check().await.unwrap();

    // Written once: a second create leaves the first bytes.
    let first = Bytes::from_static(b"first segment");
    assert_eq!(
        objects
            .create("segments/0001.avro", first.clone())
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(
        objects
            .create("segments/0001.avro", Bytes::from_static(b"second"))
            .await
            .unwrap(),
        Created::Exists
    );
    assert_eq!(objects.get("segments/0001.avro").await.unwrap(), first);
    assert_eq!(
        objects.head("segments/0001.avro").await.unwrap(),
        Some(first.len() as u64)
    );
    assert_eq!(
        objects
            .get_range("segments/0001.avro", 6..13)
            .await
            .unwrap(),
        Bytes::from_static(b"segment")
    );

    // A key that is not there.
    assert!(matches!(
        objects.get("segments/missing.avro").await,
        Err(Error::NotFound { key }) if key == "segments/missing.avro"
    ));
    assert_eq!(objects.head("segments/missing.avro").await.unwrap(), None);

    // Above the multipart threshold (parts on S3), byte for byte, and still written once.
    let big = pattern(20 << 20);
    assert!(big.len() > MULTIPART_ABOVE);
    assert_eq!(
        objects
            .create("segments/0002.avro", big.clone())
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(
        objects
            .create("segments/0002.avro", pattern(MULTIPART_ABOVE + 7))
            .await
            .unwrap(),
        Created::Exists
    );
    assert_eq!(objects.get("segments/0002.avro").await.unwrap(), big);
    assert_eq!(
        objects.head("segments/0002.avro").await.unwrap(),
        Some(big.len() as u64)
    );

    // Listing: keys relative to the archive, sorted, by folder or by any prefix.
    objects
        .create("manifests/0001.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    objects
        .create("segments/0010.avro", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let all = vec![
        ("manifests/0001.json".to_owned(), 2),
        ("segments/0001.avro".to_owned(), first.len() as u64),
        ("segments/0002.avro".to_owned(), big.len() as u64),
        ("segments/0010.avro".to_owned(), 1),
    ];
    assert_eq!(objects.list("").await.unwrap(), all);
    assert_eq!(objects.list("segments/").await.unwrap(), all[1..]);
    assert_eq!(objects.list("segments/000").await.unwrap(), all[1..3]);
    assert_eq!(objects.list("seg").await.unwrap(), all[1..]);
    assert!(objects.list("nothing/").await.unwrap().is_empty());

    // Deleting, twice.
    objects.delete("segments/0001.avro").await.unwrap();
    objects.delete("segments/0001.avro").await.unwrap();
    assert_eq!(objects.head("segments/0001.avro").await.unwrap(), None);
    assert!(matches!(
        objects.get("segments/0001.avro").await,
        Err(Error::NotFound { .. })
    ));
    let left: Vec<String> = objects
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        left,
        [
            "manifests/0001.json",
            "segments/0002.avro",
            "segments/0010.avro"
        ]
    );
}

#[tokio::test]
async fn a_local_directory_keeps_the_archive_contract() {
    let dir = scratch_dir("archive").join("not/yet/there");
    let config = ArchiveConfig {
        url: format!("file://{}", dir.display()),
        ..ArchiveConfig::default()
    };
    let objects = Objects::open(&config).unwrap().unwrap();
    assert_eq!(objects.location(), config.url);
    keeps_the_archive_contract(&objects).await;
    // The keys are the files' paths under the directory.
    assert_eq!(
        std::fs::read(dir.join("manifests/0001.json")).unwrap(),
        b"{}"
    );
}

#[tokio::test]
async fn an_s3_compatible_server_keeps_the_archive_contract() {
    let server = Moto::start().await;
    let objects = on_server(&server, BUCKET, "keel/test");
    assert_eq!(objects.location(), "s3://keel-archive/keel/test");
    keeps_the_archive_contract(&objects).await;
    // The keys live under the URL's prefix in the bucket.
    let whole_bucket = on_server(&server, BUCKET, "");
    assert_eq!(
        whole_bucket
            .get("keel/test/manifests/0001.json")
            .await
            .unwrap(),
        Bytes::from_static(b"{}")
    );
    assert_eq!(whole_bucket.list("keel/").await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_bucket_that_does_not_exist_gives_an_error_that_says_so() {
    let server = Moto::start().await;
    let objects = on_server(&server, "no-such-bucket", "keel");
    let small = objects
        .create("segments/0001.avro", Bytes::from_static(b"x"))
        .await;
    let big = objects
        .create("segments/0002.avro", pattern(MULTIPART_ABOVE + 1))
        .await;
    let read = objects.get("segments/0001.avro").await;
    let listed = objects.list("").await.map(drop);
    let checked = objects.check().await;
    for (what, result) in [
        ("a check", checked),
        ("a create", small.map(drop)),
        ("a multipart create", big.map(drop)),
        ("a read", read.map(drop)),
        ("a list", listed),
    ] {
        match result {
            Err(Error::Store {
                location, message, ..
            }) => {
                assert_eq!(location, "s3://no-such-bucket/keel", "{what}");
                assert!(
                    message.contains("the bucket does not exist"),
                    "{what}: {message}"
                );
            }
            other => panic!("{what} in a missing bucket gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_server_killed_mid_upload_gives_an_error_within_the_retry_bound() {
    let mut server = Moto::start().await;
    let objects = on_server(&server, BUCKET, "keel");
    objects
        .create("segments/0001.avro", Bytes::from_static(b"x"))
        .await
        .unwrap();

    // A large upload, and the server killed once moto has its multipart upload under way.
    let upload = tokio::spawn({
        let objects = objects.clone();
        async move {
            objects
                .create("segments/0002.avro", pattern(96 << 20))
                .await
        }
    });
    let uploads = format!("{}/{BUCKET}?uploads", endpoint(&server));
    eventually(
        Duration::from_secs(30),
        "moto to see the multipart upload",
        || {
            let uploads = uploads.clone();
            async move {
                let listing = reqwest::get(&uploads).await.ok()?.text().await.ok()?;
                listing.contains("<UploadId>").then_some(())
            }
        },
    )
    .await;
    server.stop();
    let killed = Instant::now();

    let bound = RETRY_TIMEOUT + Duration::from_secs(30);
    let result = tokio::time::timeout(bound, upload)
        .await
        .unwrap_or_else(|_| panic!("the upload still hangs {bound:?} after the server died"))
        .unwrap();
    match result {
        Err(Error::Store { key, message, .. }) => {
            assert_eq!(key, "segments/0002.avro");
            assert!(message.contains("archive.s3.endpoint"), "{message}");
        }
        other => panic!("an upload to a killed server gave {other:?}"),
    }
    // Reads fail too, and as quickly.
    let read = tokio::time::timeout(bound, objects.get("segments/0001.avro"))
        .await
        .expect("a read from a killed server hangs");
    assert!(matches!(read, Err(Error::Store { .. })), "{read:?}");
    eprintln!("errors came {:?} after the kill", killed.elapsed());
}
