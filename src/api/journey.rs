//! `GET /v1/events/{id}/journey`: where one event went, hop by hop ([`crate::journey`]). HTTP
//! only. A caller who may not read the event's aggregate type gets the same 404 as for a missing
//! event (as from `GET /v1/events/{id}`), before Kafka or Redis is asked anything. Kafka or Redis
//! being away gives a partial journey with notes, never an error.

use axum::extract::State;
use axum::Extension;

use super::error::ApiError;
use super::events::{event_not_found, parse_uuid};
use super::extract::Path;
use super::AppState;
use crate::auth::{Action, Caller};
use crate::journey::{self, outbox, Journey};

/// `GET /v1/events/{id}/journey`
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Journey>, ApiError> {
    let id = parse_uuid(&id, "invalid_event_id", "event id")?;
    let pool = state.store.pool();
    let event = outbox::event(pool, id)
        .await?
        .filter(|e| caller.access.allows(Action::EventRead, &e.aggregate_type))
        .ok_or_else(|| event_not_found(id))?;
    Ok(axum::Json(
        journey::follow(pool, &state.journey, event).await?,
    ))
}
