//! Stage heartbeats: each running stage (a relay sink, a projection runner, a consumer group
//! member) shows in `pipeline_stages` that its loop still turns, so that every keel process's
//! pipeline monitor ([`crate::health`]) can tell a frozen stage from an idle one.
//!
//! * The loop calls [`Beat::tick`] each time it turns, busy or idle (an atomic store, no IO).
//! * A task beside it writes the time of the **last tick**, not the time of writing, every
//!   `every`. So a loop stuck in a call shows an ageing beat while its process still answers,
//!   and a process that is stopped (`SIGSTOP`, a long GC-like pause, a kill) stops writing.
//! * A loop with several lanes ticks one [`Lane`] each; the row shows the oldest lane's tick, so
//!   one stuck lane is not hidden by the others.
//! * While a loop waits on one long piece of work (a batch's transaction, a round of sends) it
//!   holds [`Lane::busy`]: its process is alive and working, so the row shows the time of writing.
//!   Whether that work gets anywhere is judged from positions, not from beats (see
//!   [`crate::health::rules`]).
//! * Dropping every handle of a beat deletes its row: a clean stop leaves nothing behind. A
//!   killed process leaves its row ageing, which is the point.
//!
//! Writes are best effort: a database outage delays them (and the monitor, which reads from the
//! same database, reports that instead).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// The interval stages beat at when nothing says otherwise (see
/// `ObservabilityConfig::sample_every`).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

/// A stage's heartbeat. Clones share the row; the row is deleted when the last clone drops.
#[derive(Clone)]
pub struct Beat {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("component", &self.inner.component)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

struct Inner {
    component: String,
    instance: Uuid,
    lanes: Mutex<Vec<Arc<LaneState>>>,
    detail: Mutex<Value>,
    /// Told when the last handle drops, so the writer deletes the row and ends.
    gone: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.gone.notify_one();
    }
}

#[derive(Debug, Default)]
struct LaneState {
    /// When the loop last turned, in ms since the epoch.
    ticked: AtomicI64,
    /// Pieces of work in progress (see [`Lane::busy`]).
    busy: AtomicUsize,
}

impl LaneState {
    /// What the row shows for this lane: now while busy, else the last tick.
    fn shown(&self, now: i64) -> i64 {
        match self.busy.load(Ordering::Relaxed) {
            0 => self.ticked.load(Ordering::Relaxed),
            _ => now,
        }
    }
}

/// One lane of a beat: ticked by one loop.
#[derive(Clone, Debug)]
pub struct Lane(Arc<LaneState>);

impl Lane {
    /// Marks that the loop turned now.
    pub fn tick(&self) {
        self.0.ticked.store(now_ms(), Ordering::Relaxed);
    }

    /// Marks the lane busy until the guard drops (which ticks it).
    pub fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// See [`Lane::busy`].
#[must_use = "the lane is busy only while the guard lives"]
pub struct Busy(Lane);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.tick();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Beat {
    /// Registers `component` (for example `relay.kafka`, `projection.agent_status`,
    /// `group.billing`) for this process and starts writing its row every `every`. `process`
    /// names the process in health reasons (host and pid, or a relay's name). Needs a tokio
    /// runtime.
    pub fn start(
        pool: PgPool,
        component: impl Into<String>,
        process: impl Into<String>,
        detail: Value,
        every: Duration,
    ) -> Beat {
        let inner = Arc::new(Inner {
            component: component.into(),
            instance: Uuid::new_v4(),
            lanes: Mutex::new(Vec::new()),
            detail: Mutex::new(detail),
            gone: Arc::new(Notify::new()),
        });
        let beat = Beat {
            inner: inner.clone(),
        };
        // The writer holds only a weak reference, so dropping the handles ends it.
        tokio::spawn(write_loop(
            pool,
            Arc::downgrade(&inner),
            inner.gone.clone(),
            process.into(),
            every,
        ));
        beat
    }

    /// A new lane, ticked once now. The row's beat is its oldest lane's last tick.
    pub fn lane(&self) -> Lane {
        let lane = Lane(Arc::new(LaneState {
            ticked: AtomicI64::new(now_ms()),
            busy: AtomicUsize::new(0),
        }));
        self.inner
            .lanes
            .lock()
            .expect("beat lanes lock")
            .push(lane.0.clone());
        lane
    }

    /// Replaces what the stage says of itself (written with the next beat).
    pub fn set_detail(&self, detail: Value) {
        *self.inner.detail.lock().expect("beat detail lock") = detail;
    }

    pub fn component(&self) -> &str {
        &self.inner.component
    }

    /// Time since the oldest lane last ticked, as this process sees it (for its readiness).
    pub fn age(&self) -> Duration {
        let oldest = self.oldest_tick();
        Duration::from_millis(now_ms().saturating_sub(oldest).max(0) as u64)
    }

    fn oldest_tick(&self) -> i64 {
        let now = now_ms();
        let lanes = self.inner.lanes.lock().expect("beat lanes lock");
        lanes.iter().map(|l| l.shown(now)).min().unwrap_or(now)
    }
}

/// The stages one process runs, as its readiness check sees them. Stages join as they start,
/// and are held weakly: a stage that stopped (dropped its beat) reads as stopped instead of
/// being kept beating by its observer.
#[derive(Clone, Default)]
pub struct Stages {
    inner: Arc<Mutex<StagesInner>>,
}

#[derive(Default)]
struct StagesInner {
    expected: usize,
    joined: Vec<(String, std::sync::Weak<Inner>)>,
}

/// What [`Stages::read`] says of one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageState {
    /// It beats; its oldest lane last turned this long ago.
    Beating(Duration),
    /// It dropped its beat: the stage ended.
    Stopped,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages = self.lock();
        f.debug_struct("Stages")
            .field("expected", &stages.expected)
            .field("joined", &stages.joined.len())
            .finish()
    }
}

impl Stages {
    /// Stages that have all started already (a relay's sinks).
    pub fn of(beats: &[Beat]) -> Self {
        let stages = Self::expecting(beats.len());
        for beat in beats {
            stages.join(beat);
        }
        stages
    }

    /// `expected` stages that join as they start (a process's projection runners): until they
    /// all have, the process is still starting.
    pub fn expecting(expected: usize) -> Self {
        let stages = Self::default();
        stages.lock().expected = expected;
        stages
    }

    pub fn join(&self, beat: &Beat) {
        self.lock()
            .joined
            .push((beat.component().to_owned(), Arc::downgrade(&beat.inner)));
    }

    /// How many expected stages have not joined yet, and each joined stage's state.
    pub fn read(&self) -> (usize, Vec<(String, StageState)>) {
        let stages = self.lock();
        let read = stages
            .joined
            .iter()
            .map(|(component, weak)| {
                let state = match weak.upgrade() {
                    Some(inner) => StageState::Beating(Beat { inner }.age()),
                    None => StageState::Stopped,
                };
                (component.clone(), state)
            })
            .collect();
        (stages.expected.saturating_sub(stages.joined.len()), read)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StagesInner> {
        self.inner.lock().expect("stages lock")
    }
}

async fn write_loop(
    pool: PgPool,
    inner: std::sync::Weak<Inner>,
    gone: Arc<Notify>,
    process: String,
    every: Duration,
) {
    let Some((component, instance)) = inner.upgrade().map(|i| (i.component.clone(), i.instance))
    else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gone.notified() => break,
        }
        // Read under a short-lived strong reference, so the handles' drop is never delayed.
        let Some((at, detail)) = inner.upgrade().map(|inner| {
            let detail = inner.detail.lock().expect("beat detail lock").clone();
            (Beat { inner }.oldest_tick(), detail)
        }) else {
            break;
        };
        match (
            write(&pool, &component, instance, &process, at, &detail).await,
            failing,
        ) {
            (Err(e), false) => {
                failing = true;
                tracing::warn!(component = %component, error = %e, "cannot write the stage heartbeat; retrying");
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
    }
    let deleted = sqlx::query("DELETE FROM pipeline_stages WHERE component = $1 AND instance = $2")
        .bind(&component)
        .bind(instance)
        .execute(&pool)
        .await;
    if let Err(e) = deleted {
        tracing::debug!(component = %component, error = %e, "cannot delete the stage heartbeat");
    }
}

async fn write(
    pool: &PgPool,
    component: &str,
    instance: Uuid,
    process: &str,
    at_ms: i64,
    detail: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO pipeline_stages (component, instance, process, beat_at, detail)
         VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000), $5)
         ON CONFLICT (component, instance)
         DO UPDATE SET beat_at = excluded.beat_at, detail = excluded.detail",
    )
    .bind(component)
    .bind(instance)
    .bind(process)
    .bind(at_ms as f64)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// This process's name in stage rows: the host name and the process id.
pub fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "keel".into());
    format!("{host}:{}", std::process::id())
}
