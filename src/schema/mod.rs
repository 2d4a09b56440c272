//! Avro schemas: parsing, compatibility, validating JSON payloads, and resolving stored payloads
//! to the schema version a reader asks for (upcasting). Every schema text is checked against
//! [`limits`] (depth, union, enum and record sizes) before it is parsed.

pub mod avro;
pub mod compat;
pub mod json;
pub mod limits;
pub mod resolve;

pub use avro::{InvalidSchema, ParsedSchema};
pub use compat::{can_read, Compatibility, Incompatibility};
pub use json::{validate, PayloadError};
pub use resolve::{resolve, resolve_owned, ResolveError};
