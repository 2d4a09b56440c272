//! The event archive: where events live once they leave PostgreSQL. [`objects`] is the object
//! storage underneath (a local directory or an S3-compatible bucket, written create-only so an
//! archived object never changes); the segment files, their manifests and the readers over them
//! are built on it.

pub mod objects;
