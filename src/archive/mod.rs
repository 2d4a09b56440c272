//! The event archive: each event type's history as open Avro files in object storage (a local
//! directory or any S3-compatible store), so that the hot store in PostgreSQL can stay small
//! while the history stays complete.
//!
//! - [`objects`] is the storage: create-only puts, gets, lists.
//! - [`segment`] is one file: an Avro Object Container File of [`segment::ArchivedEvent`]
//!   records and the content digest that pins them.
//! - [`manifest`] is the catalog of segments (`archive_segments`) and the manifest object next
//!   to each file, chained per type.
//! - [`run`] is the archiver, which walks the log's gap-safe order below the transaction
//!   horizon; [`verify`] checks segments against storage and the database; [`read`] reads a
//!   type's history back out of the archive for the tiered readers; [`restore`] puts archived
//!   events back into the store.
//!
//! What may be deleted from the store, and when, is [`crate::retention`]'s business; the
//! archive never deletes events.

pub mod manifest;
pub mod objects;
pub mod read;
pub mod restore;
pub mod run;
pub mod segment;
pub mod verify;

pub use objects::Objects;
pub use run::{run, RunOptions, RunReport};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another archiver or purge is running (it holds the archive lease); run again once it has finished")]
    Busy,
    #[error("event type {0:?} is not in the catalog (see schemas/)")]
    UnknownType(String),
    #[error("no archive is configured: set archive.url (KEEL_ARCHIVE__URL) to file:///dir or s3://bucket/prefix")]
    NotConfigured,
    #[error("archive object {key} is in the way: {why}; keel never overwrites an object, so move it aside (or compare it with `keel archive verify`) and run again")]
    Orphan { key: String, why: String },
    #[error("segment {key} failed verification: {why}")]
    Verify { key: String, why: String },
    #[error(transparent)]
    Objects(#[from] objects::Error),
    #[error(transparent)]
    Segment(#[from] segment::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}
