//! How the model's types decode from rows. The impls live here, not as derives on the model, so
//! that `model` stays free of any IO crate; the orphan rule allows them anywhere in the crate.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::model::{AppendedEvent, RecordedEvent};

/// The columns of [`super::EVENT_COLUMNS`].
impl<'r> FromRow<'r, PgRow> for RecordedEvent {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            position: row.try_get("position")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            version: row.try_get("version")?,
            event_type: row.try_get("event_type")?,
            schema_id: row.try_get("schema_id")?,
            schema_version: row.try_get("schema_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl<'r> FromRow<'r, PgRow> for AppendedEvent {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            version: row.try_get("version")?,
            position: row.try_get("position")?,
        })
    }
}
