//! Live data: one Server-Sent-Events stream per tab, `/ui/live?view=...`.
//!
//! * `fragment` events carry re-rendered parts of the page (`{"id", "html"}`), sent after each
//!   reading of the pipeline monitor. While any tab is open the monitor samples once a second
//!   ([`crate::health::Monitor::watch`]); the readings are shared by every tab, so ten tabs
//!   cost the database what one does.
//! * `rows` events carry new events for the Events page's live tail, as table rows. One task
//!   follows the log for every tab ([`Tail`]), with the log's gap-safe reader, only while some
//!   tab is subscribed.
//!
//! A tab whose view needs neither gets only keep-alives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};

use super::pages;
use super::{Failure, UiState, Viewer};
use crate::model::RecordedEvent;
use crate::store::log::{read_committed_after, LogCursor, LogFilter};

/// How often the tail reads the log while a tab follows it.
const TAIL_EVERY: Duration = Duration::from_millis(500);
/// Most events one read of the tail takes.
const TAIL_PAGE: i64 = 500;

/// What the tail sends: each read's new events, in log order.
type Batch = Arc<Vec<RecordedEvent>>;
/// The running follower's sender, if one runs.
type Slot = Arc<Mutex<Option<broadcast::Sender<Batch>>>>;

/// The shared follower of the log behind every tab's live tail. Cheap to clone.
#[derive(Clone)]
pub struct Tail {
    pool: PgPool,
    sender: Slot,
}

impl Tail {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sender: Arc::default(),
        }
    }

    /// New events from now on, in log order; starts the follower if none runs.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        let mut slot = self.sender.lock().expect("tail lock");
        if let Some(sender) = slot.as_ref() {
            return sender.subscribe();
        }
        let sender = broadcast::Sender::new(64);
        let receiver = sender.subscribe();
        *slot = Some(sender.clone());
        tokio::spawn(follow(self.pool.clone(), sender, self.sender.clone()));
        receiver
    }
}

/// Follows the log until no tab listens, then clears the slot so the next tab starts afresh.
async fn follow(pool: PgPool, sender: broadcast::Sender<Batch>, slot: Slot) {
    let mut cursor = match newest_cursor(&pool).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the live tail cannot read the log's end");
            LogCursor::START
        }
    };
    let filter = LogFilter::default();
    loop {
        tokio::time::sleep(TAIL_EVERY).await;
        {
            let mut slot = slot.lock().expect("tail lock");
            if sender.receiver_count() == 0 {
                *slot = None;
                return;
            }
        }
        match read_committed_after(&pool, cursor, &filter, TAIL_PAGE, 0).await {
            Ok(page) if !page.is_empty() => {
                cursor = page.last().expect("not empty").cursor();
                let events: Vec<RecordedEvent> = page.into_iter().map(|e| e.event).collect();
                let _ = sender.send(Arc::new(events));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "the live tail cannot read the log"),
        }
    }
}

/// Where the log ends now, to tail from.
async fn newest_cursor(pool: &PgPool) -> sqlx::Result<LogCursor> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tx_id::text::bigint, position FROM events ORDER BY position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or(LogCursor::START, |(tx_id, position)| LogCursor {
        tx_id,
        position,
    }))
}

/// `GET /ui/live?view=<page>&<the page's filters>`
pub async fn stream(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let view = params.get("view").cloned().unwrap_or_default();
    let live = pages::live_view(&view, &params, &viewer)?;
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    tokio::spawn(feed(state, viewer, live, tx));
    let events = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Ok(sse(events))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Tells a buffering proxy (nginx) to pass each event on at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// What one tab's stream follows.
pub enum LiveView {
    /// Re-rendered fragments after each monitor reading.
    Fragments(pages::Fragments),
    /// New events matching the filter, as rows.
    Tail(Box<pages::events::TailFilter>),
    Nothing,
}

async fn feed(state: UiState, viewer: Viewer, live: LiveView, tx: mpsc::Sender<Event>) {
    match live {
        LiveView::Fragments(render) => {
            let monitor = state.app.monitor.clone();
            let _watching = monitor.watch();
            let mut readings = monitor.history().subscribe();
            loop {
                match readings.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                for (id, html) in render(&state, &viewer).await {
                    let data = json!({"id": id, "html": html}).to_string();
                    if tx
                        .send(Event::default().event("fragment").data(data))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        LiveView::Tail(filter) => {
            let mut events = state.tail.subscribe();
            loop {
                let batch = match events.recv().await {
                    Ok(batch) => batch,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "a live tail fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let rows = pages::events::tail_rows(&state, &viewer, &filter, &batch);
                if rows.is_empty() {
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                if tx
                    .send(Event::default().event("rows").data(rows))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        LiveView::Nothing => tx.closed().await,
    }
}
