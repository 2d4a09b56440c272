//! The archive's object storage: one small interface over a local directory (`file:///dir`) and
//! an S3-compatible bucket (`s3://bucket/prefix`), both through `object_store`.
//!
//! What it guarantees:
//! - **An object is written once.** [`Objects::create`] never replaces an object: a second create
//!   of the same key answers [`Created::Exists`] and leaves the first bytes as they were. On a
//!   local directory, and on S3 up to [`MULTIPART_ABOVE`] bytes, the write is one create-only
//!   step (a hard link; a `PUT` with `If-None-Match: *`), so that holds even between writers
//!   racing on the key. Larger objects go to S3 in parts, and object_store 0.14 has no
//!   create-only multipart upload, so such a create looks with a `HEAD` first: two writers that
//!   race on one key within the upload's time could both write it, the later one winning. The
//!   archive's catalog claims a key in PostgreSQL before anyone writes it, which rules that out.
//! - **An object is seen whole or not at all.** A multipart upload appears when it completes;
//!   one that fails is aborted (best effort: a bucket lifecycle rule for incomplete multipart
//!   uploads removes the parts of one that could not be).
//! - **No call hangs.** Each S3 request has a timeout, failed requests are retried a bounded
//!   number of times ([`RETRY_TIMEOUT`] at most), then the error comes back to the caller.
//! - Keys are relative to the archive's root (the directory, or the bucket's prefix), such as
//!   `segments/000001.avro`, and use only the characters every backend stores as they are.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
};

use crate::config::ArchiveConfig;

mod key;
mod open;

pub use open::RETRY_TIMEOUT;

/// Objects larger than this go to S3 as a multipart upload, in parts of this size.
pub const MULTIPART_ABOVE: usize = 8 << 20;
/// Parts of one multipart upload in flight at once.
const PARALLEL_PARTS: usize = 4;

/// Why an archive object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No object has this key.
    #[error("archive object {key} not found: it was never written or has been deleted")]
    NotFound { key: String },

    /// `archive.url` or the S3 settings cannot open a store.
    #[error("{0}")]
    Config(String),

    /// A key the archive cannot store on every backend. A bug in the caller, not in the data.
    #[error("archive key {key:?}: {reason}")]
    Key { key: String, reason: &'static str },

    /// The store failed or refused the request (unreachable, denied, no such bucket, timeout).
    #[error("archive object {key} at {location}: {message}")]
    Store {
        key: String,
        location: String,
        message: String,
    },
}

/// What [`Objects::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is new and holds the given bytes.
    New,
    /// An object with this key was there already; it was left as it was. Also the answer when
    /// S3 reports another create of the key in progress (409), and when a retried write finds
    /// the object its own first attempt wrote; read it back to compare when that matters.
    Exists,
}

/// The archive's object store: a directory or a bucket prefix. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// `archive.url`, which holds no credentials: for messages.
    location: String,
    /// Whether large objects go up in parts (S3) or in one create-only write (a directory).
    multipart: bool,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("location", &self.location)
            .finish()
    }
}

impl Objects {
    /// The archive that `config.url` names, with S3 credentials from the process's `AWS_*`
    /// variables; `None` when the URL is empty (no archive).
    pub fn open(config: &ArchiveConfig) -> Result<Option<Self>, Error> {
        Self::open_with(config, std::env::vars())
    }

    /// [`Objects::open`] with the `AWS_*` variables given (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`...) instead of read from the
    /// process; other names are ignored. The `archive.s3` settings win over these.
    pub fn open_with(
        config: &ArchiveConfig,
        aws_env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Option<Self>, Error> {
        let url = config.url.as_str();
        if url.is_empty() {
            return Ok(None);
        }
        let (store, multipart) = open::store(config, aws_env)?;
        Ok(Some(Self {
            store,
            location: url.to_owned(),
            multipart,
        }))
    }

    /// Where the archive is (`archive.url`, with no credentials), for messages and API errors.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `bytes` at `key` unless an object is there already, which is never replaced (see
    /// the module docs for the one narrow race of large objects on S3).
    #[tracing::instrument(skip_all, fields(archive = %self.location, key = %key, bytes = bytes.len()))]
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<Created, Error> {
        let path = key::path(key)?;
        let written = if self.multipart && bytes.len() > MULTIPART_ABOVE {
            if self.head(key).await?.is_some() {
                return Ok(Created::Exists);
            }
            self.upload_in_parts(&path, bytes).await
        } else {
            let options = PutOptions::from(PutMode::Create);
            self.store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
                .map(drop)
        };
        match written {
            Ok(()) => Ok(Created::New),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Created::Exists),
            // A 404 to a write: the bucket is missing (said so by `error`), or S3 lost the
            // multipart upload, as when a retried completion finds it already completed.
            Err(e) => Err(match self.error(key, e) {
                Error::NotFound { key } => Error::Store {
                    key,
                    location: self.location.clone(),
                    message: "the store lost the upload (404): look with head whether the object arrived, and create it again if not".into(),
                },
                e => e,
            }),
        }
    }

    /// A multipart upload, aborted when it fails; the part's error, not the abort's, comes back.
    async fn upload_in_parts(&self, path: &Path, bytes: Bytes) -> object_store::Result<()> {
        let mut upload = self
            .store
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await?;
        // Each part takes its number when its future is made, so the parts may finish in any
        // order and still complete in order.
        let parts: Vec<_> = (0..bytes.len())
            .step_by(MULTIPART_ABOVE)
            .map(|start| {
                let end = (start + MULTIPART_ABOVE).min(bytes.len());
                upload.put_part(PutPayload::from_bytes(bytes.slice(start..end)))
            })
            .collect();
        let uploaded = futures_util::stream::iter(parts)
            .buffer_unordered(PARALLEL_PARTS)
            .try_collect::<Vec<()>>()
            .await;
        let completed = match uploaded {
            Ok(_) => upload.complete().await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = &completed {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(error = %e, abort_error = %abort, location = %path, "archive: a failed multipart upload could not be aborted; its parts stay until the bucket's lifecycle rule removes them");
            }
        }
        completed
    }

    /// The object's bytes.
    #[tracing::instrument(skip_all, fields(archive = %self.location, key = %key))]
    pub async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let path = key::path(key)?;
        let read = async { self.store.get(&path).await?.bytes().await };
        read.await.map_err(|e| self.error(key, e))
    }

    /// The bytes `range` of the object; a range past its end is an error.
    #[tracing::instrument(skip_all, fields(archive = %self.location, key = %key, start = range.start, end = range.end))]
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, Error> {
        let path = key::path(key)?;
        self.store
            .get_range(&path, range)
            .await
            .map_err(|e| self.error(key, e))
    }

    /// The object's size, or `None` when no object has this key. On S3 the answer to a `HEAD`
    /// has no body, so a missing bucket looks like a missing key here: [`Objects::check`] tells
    /// them apart.
    #[tracing::instrument(skip_all, fields(archive = %self.location, key = %key))]
    pub async fn head(&self, key: &str) -> Result<Option<u64>, Error> {
        let path = key::path(key)?;
        match self.store.head(&path).await.map_err(|e| self.error(key, e)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the archive can be read: the directory, or the bucket with these credentials.
    /// One cheap listing of the archive's top folder, for start-up checks that should fail
    /// before any work is done.
    #[tracing::instrument(skip_all, fields(archive = %self.location))]
    pub async fn check(&self) -> Result<(), Error> {
        match self.store.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.error("*", e) {
                Error::NotFound { key } => Error::Store {
                    key,
                    location: self.location.clone(),
                    message: "the archive's directory or bucket is not there: create it, or correct archive.url".into(),
                },
                e => e,
            }),
        }
    }

    /// Every key that starts with `prefix` (`""` for all, `segments/` for a folder,
    /// `segments/0001` for the keys that begin so), with its size, sorted by key.
    #[tracing::instrument(skip_all, fields(archive = %self.location, prefix = %prefix))]
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        // object_store lists whole folders: list the folder the prefix is in, then keep the keys
        // that start with the rest.
        let folder = match prefix.rfind('/') {
            Some(i) => Some(key::path(&prefix[..i])?),
            None => None,
        };
        let listed: object_store::Result<Vec<(String, u64)>> = self
            .store
            .list(folder.as_ref())
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_filter(|(key, _)| std::future::ready(key.starts_with(prefix)))
            .try_collect()
            .await;
        let mut found = match listed.map_err(|e| self.error(&format!("{prefix}*"), e)) {
            Ok(found) => found,
            // A folder that is not there holds no keys.
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        found.sort_unstable();
        Ok(found)
    }

    /// Removes the object; removing one that is not there succeeds.
    #[tracing::instrument(skip_all, fields(archive = %self.location, key = %key))]
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let path = key::path(key)?;
        match self
            .store
            .delete(&path)
            .await
            .map_err(|e| self.error(key, e))
        {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// object_store's error as the archive's, mapped here once: a missing key is
    /// [`Error::NotFound`], a missing bucket (also a 404 on S3) is a [`Error::Store`] that says
    /// so, and the message of anything else says what to check.
    fn error(&self, key: &str, error: object_store::Error) -> Error {
        let text = chain(&error);
        let message = match &error {
            _ if text.contains("NoSuchBucket") => {
                "the bucket does not exist: create it, or correct archive.url".to_owned()
            }
            object_store::Error::NotFound { .. } => {
                return Error::NotFound {
                    key: key.to_owned(),
                }
            }
            _ if self.multipart => format!(
                "{text} (check that archive.s3.endpoint answers and that the AWS_* credentials may use the bucket)"
            ),
            _ => format!("{text} (check that the directory exists and keel may write to it)"),
        };
        Error::Store {
            key: key.to_owned(),
            location: self.location.clone(),
            message,
        }
    }
}

/// The error and its sources in one line, each cause once.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ArchiveConfig {
        ArchiveConfig {
            url: url.into(),
            ..ArchiveConfig::default()
        }
    }

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("keel-objects-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn an_empty_url_opens_no_archive() {
        assert!(Objects::open(&config("")).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_directory_is_created_and_written_once_per_key() {
        let root = temp_dir();
        let dir = root.join("nested/archive");
        let url = format!("file://{}", dir.display());
        let objects = Objects::open(&config(&url)).unwrap().unwrap();
        assert!(dir.is_dir());

        let big = Bytes::from(vec![7u8; MULTIPART_ABOVE + 1]);
        assert_eq!(
            objects.create("a/big", big.clone()).await.unwrap(),
            Created::New
        );
        assert_eq!(
            objects
                .create("a/big", Bytes::from_static(b"other"))
                .await
                .unwrap(),
            Created::Exists
        );
        assert_eq!(objects.get("a/big").await.unwrap(), big);
        assert_eq!(
            std::fs::read(dir.join("a/big")).unwrap().len(),
            MULTIPART_ABOVE + 1
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_missing_folder_lists_nothing_and_a_missing_key_is_not_found() {
        let dir = temp_dir();
        let objects = Objects::open(&config(&format!("file://{}", dir.display())))
            .unwrap()
            .unwrap();
        assert!(objects.list("nothing/here").await.unwrap().is_empty());
        assert!(matches!(
            objects.get("nothing").await,
            Err(Error::NotFound { key }) if key == "nothing"
        ));
        assert_eq!(objects.head("nothing").await.unwrap(), None);
        objects.delete("nothing").await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
