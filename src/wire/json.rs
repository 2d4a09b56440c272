//! The JSON envelope: a [`RecordedEvent`] serialised as the read API returns it. JSON topics
//! (`relay.kafka.json_topics`) and Redis carry it.

use super::Error;
use crate::model::RecordedEvent;

pub fn encode(event: &RecordedEvent) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(event).map_err(|e| Error::Json(e.to_string()))
}

pub fn decode(value: &[u8]) -> Result<RecordedEvent, Error> {
    serde_json::from_slice(value).map_err(|e| Error::Json(e.to_string()))
}
