//! Avro schemas: parsing, compatibility, validating JSON payloads, and resolving stored payloads
//! to the schema version a reader asks for (upcasting).

pub mod avro;
pub mod compat;
pub mod json;
pub mod resolve;

pub use avro::{InvalidSchema, ParsedSchema};
pub use compat::{can_read, Compatibility, Incompatibility};
pub use json::{validate, PayloadError};
pub use resolve::{resolve, ResolveError};
