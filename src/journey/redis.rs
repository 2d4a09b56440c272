//! The Redis hop: the stream and channel of the event's aggregate type, whether the Redis sink
//! delivered it (its cursor, see [`super::outbox`]), and its stream entry id.
//!
//! Stream entry ids are Redis's clock at `XADD`, after the event committed, and each entry has the
//! event id in its `id` field: an `XRANGE` from `created_at` (less
//! [`super::kafka::CLOCK_SKEW`]) reads at most [`SCAN_LIMIT`] entries, a page at a time, for it.
//! A stream trimmed past it (`relay.redis.stream_maxlen`) no longer has it. The channel keeps
//! nothing: a message published on it cannot be looked up afterwards.

use std::time::Instant;

use serde::Serialize;

use super::kafka::{not_delivered, CLOCK_SKEW};
use super::outbox::{Event, SinkState};
use super::{left, Sources};
use crate::relay::redis::{channel, stream};

/// Most stream entries read from the event's creation time on.
pub const SCAN_LIMIT: usize = 2_000;

/// Entries per `XRANGE`.
const PAGE: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redis {
    pub stream: String,
    pub channel: String,
    /// The Redis sink's cursor is past the event and nothing is parked.
    pub delivered: bool,
    /// The stream entry's id, when it was found.
    pub entry_id: Option<String>,
    pub entry_note: Option<String>,
}

/// The event's Redis hop, its entry looked up within `deadline` when the Redis sink's `state` is
/// delivered.
pub async fn locate(
    sources: &Sources,
    event: &Event,
    state: SinkState,
    deadline: Instant,
) -> Redis {
    let config = &sources.relay.redis;
    let delivered = state == SinkState::Delivered;
    let mut hop = Redis {
        stream: stream(config, &event.aggregate_type),
        channel: channel(config, &event.aggregate_type),
        delivered,
        entry_id: None,
        entry_note: None,
    };
    let note = match (&sources.redis, config.enabled, delivered) {
        (_, false, _) => "the redis sink is not enabled".to_owned(),
        (None, _, _) => "redis_url does not make a redis client".to_owned(),
        (_, _, false) => not_delivered("redis", state),
        (Some(client), true, true) => {
            let since = (event.created_at - CLOCK_SKEW).timestamp_millis().max(0);
            let id = event.id.to_string();
            match tokio::time::timeout(left(deadline), find(client, &hop.stream, since, &id, deadline))
                .await
            {
                Ok(Ok(Some(entry))) => {
                    hop.entry_id = Some(entry);
                    return hop;
                }
                Ok(Ok(None)) => format!(
                    "not found within {SCAN_LIMIT} entries from {since}-0 (the stream may have been trimmed)"
                ),
                Ok(Err(e)) => format!("redis unavailable: {e}"),
                Err(_) => "redis did not answer within the time budget".to_owned(),
            }
        }
    };
    hop.entry_note = Some(note);
    hop
}

/// The id of the first entry of `stream` from `since_ms` on whose `id` field is `id`.
async fn find(
    client: &::redis::Client,
    stream: &str,
    since_ms: i64,
    id: &str,
    deadline: Instant,
) -> ::redis::RedisResult<Option<String>> {
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(left(deadline)))
        .set_response_timeout(Some(left(deadline)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut start = format!("{since_ms}-0");
    let mut read = 0;
    while read < SCAN_LIMIT {
        let page: Vec<(String, Vec<String>)> = ::redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut c)
            .await?;
        read += page.len();
        for (entry, fields) in &page {
            // The sink writes `id` first; any position is accepted.
            let is_it = fields
                .chunks_exact(2)
                .any(|kv| kv[0] == "id" && kv[1] == id);
            if is_it {
                return Ok(Some(entry.clone()));
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => start = format!("({last}"),
            _ => break,
        }
    }
    Ok(None)
}
