//! Pipeline health: keel watching its own pipeline, from PostgreSQL, so every keel process can
//! tell whether events still flow end to end.

pub mod canary;
