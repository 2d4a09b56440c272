//! Opening the store `archive.url` names: the URL's grammar, the directory (created when
//! missing, synced on write) and the S3 client with keel's timeouts and retries.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::{chain, key, Error};
use crate::config::ArchiveConfig;

/// The longest an S3 request may take, a part's upload included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest an S3 connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest object_store retries one request for before it gives up.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one request at most (waits of 0.1 s doubling to 5 s).
const MAX_RETRIES: usize = 5;

/// The store `config.url` names, and whether it is a bucket (S3) rather than a directory.
pub(super) fn store(
    config: &ArchiveConfig,
    aws_env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Arc<dyn ObjectStore>, bool), Error> {
    let url = config.url.as_str();
    Ok(match parse(url)? {
        Target::Directory(dir) => (Arc::new(directory(url, dir)?), false),
        Target::Bucket { bucket, prefix } => {
            let s3 = bucket_store(config, bucket, aws_env)?;
            if prefix.is_empty() {
                (Arc::new(s3), true)
            } else {
                (Arc::new(PrefixStore::new(s3, prefix)), true)
            }
        }
    })
}

/// What an archive URL names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Directory(&'a str),
    Bucket { bucket: &'a str, prefix: &'a str },
}

fn parse(url: &str) -> Result<Target<'_>, Error> {
    let bad = |why: &str| Error::Config(format!("archive.url {url:?}: {why}"));
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(bad(
                "a file URL needs an absolute path, as in file:///var/lib/keel/archive",
            ));
        }
        return Ok(Target::Directory(dir));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(bad("name the bucket, as in s3://bucket/prefix"));
        }
        if !prefix.is_empty() {
            key::check(prefix).map_err(|reason| bad(&format!("the prefix: {reason}")))?;
        }
        return Ok(Target::Bucket { bucket, prefix });
    }
    Err(bad("use file:///absolute/dir or s3://bucket/prefix"))
}

/// The directory, created when missing. Files are synced before a write returns: once the
/// events are purged from PostgreSQL, the archive holds their only copy.
fn directory(url: &str, dir: &str) -> Result<LocalFileSystem, Error> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "archive.url {url:?}: cannot use the directory: {e}; create it, or let keel create it"
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    LocalFileSystem::new_with_prefix(dir)
        .map(|fs| fs.with_fsync(true))
        .map_err(|e| failed(&e))
}

fn bucket_store(
    config: &ArchiveConfig,
    bucket: &str,
    aws_env: impl IntoIterator<Item = (String, String)>,
) -> Result<AmazonS3, Error> {
    // HTTPS to S3 goes through rustls with the process's provider (ring), as everywhere in keel.
    crate::tls::install_provider();
    // Timeouts and retries first: the AWS_* variables may add client settings (a proxy) to them.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(
            ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(CONNECT_TIMEOUT),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        });
    let mut region_set = false;
    for (name, value) in aws_env {
        if !name.starts_with("AWS_") {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse() {
            region_set |= matches!(name.as_str(), "AWS_REGION" | "AWS_DEFAULT_REGION");
            builder = builder.with_config(key, value);
        }
    }
    let s3 = &config.s3;
    if !s3.region.is_empty() {
        builder = builder.with_region(&s3.region);
    } else if !region_set {
        builder = builder.with_region("us-east-1");
    }
    if !s3.endpoint.is_empty() {
        // S3-compatible servers address buckets in the path, not in the host name.
        builder = builder
            .with_endpoint(&s3.endpoint)
            .with_virtual_hosted_style_request(false);
    }
    builder
        .with_bucket_name(bucket)
        .with_allow_http(s3.allow_http)
        .build()
        .map_err(|e| {
            Error::Config(format!(
                "archive.url {:?}: cannot open the bucket: {}; check archive.s3 and the AWS_* variables",
                config.url,
                chain(&e)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::objects::Objects;

    #[test]
    fn urls_name_a_directory_or_a_bucket_and_its_prefix() {
        assert_eq!(
            parse("file:///var/lib/keel").unwrap(),
            Target::Directory("/var/lib/keel")
        );
        assert_eq!(
            parse("s3://events").unwrap(),
            Target::Bucket {
                bucket: "events",
                prefix: ""
            }
        );
        assert_eq!(
            parse("s3://events/keel/prod/").unwrap(),
            Target::Bucket {
                bucket: "events",
                prefix: "keel/prod"
            }
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("file://relative/dir", "absolute path"),
            ("s3:///prefix", "name the bucket"),
            ("s3://b/a//c", "the prefix"),
            ("gs://bucket", "use file:///absolute/dir or s3://"),
            ("/var/lib/keel", "use file:///absolute/dir or s3://"),
        ] {
            let message = parse(url).unwrap_err().to_string();
            assert!(message.contains(says), "{url}: {message}");
            assert!(message.contains(url), "{url}: {message}");
        }
    }

    #[test]
    fn an_s3_url_opens_without_a_request_and_keeps_no_credentials_in_its_location() {
        let mut config = ArchiveConfig {
            url: "s3://bucket/keel".into(),
            ..ArchiveConfig::default()
        };
        config.s3.endpoint = "http://127.0.0.1:1".into();
        config.s3.allow_http = true;
        let objects = Objects::open_with(
            &config,
            [
                ("AWS_ACCESS_KEY_ID".to_owned(), "id".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned()),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(objects.location(), "s3://bucket/keel");
        assert!(!format!("{objects:?}").contains("secret"));
    }
}
