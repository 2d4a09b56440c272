//! Progress of long operations (rebuilds, republishing), reported, not drawn.
//!
//! A library operation counts what it did into a [`Progress`]; a [`View`] decides how that is
//! shown. Without one installed, progress is logged (`tracing`, a line every five seconds), which
//! suits services and CI. The command line installs a view that draws a bar on a terminal (see
//! [`set_view`]); library code never prints. A caller that wants one operation's progress for
//! itself (a job writing it to its row, [`crate::jobs`]) hands the operation a [`Reporter`] of
//! its own views instead of the installed ones.
//!
//! An operation that reads the log also says where it is ([`Progress::advance_to`]): the cursor
//! of the last event it finished with, so that a report can say where to resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::store::LogCursor;

/// Where one operation's progress is shown.
pub trait View: Send + Sync {
    /// `done` moved on; called on every advance, so a view that writes lines should throttle.
    fn advanced(&self, at: &Snapshot<'_>);
    /// A message about the operation, beside the count.
    fn note(&self, at: &Snapshot<'_>, message: &str);
    /// The operation ended with `message` (done, interrupted...).
    fn finished(&self, at: &Snapshot<'_>, message: &str);
}

/// Makes the view of each new [`Progress`], from its label and expected total.
pub type Views = dyn Fn(&str, Option<u64>) -> Box<dyn View> + Send + Sync;

static VIEWS: OnceLock<Box<Views>> = OnceLock::new();

/// Installs how progress is shown for the rest of the process. Only the first call takes effect
/// (like a global log subscriber); it returns whether this one did.
pub fn set_view(
    views: impl Fn(&str, Option<u64>) -> Box<dyn View> + Send + Sync + 'static,
) -> bool {
    VIEWS.set(Box::new(views)).is_ok()
}

/// Where the progress of an operation goes: the installed views ([`Reporter::default`]), or
/// views of the caller's own. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reporter(Option<Arc<Views>>);

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Reporter(own views)",
            None => "Reporter(installed views)",
        })
    }
}

impl Reporter {
    /// Progress goes to the views `views` makes, whatever is installed.
    pub fn to(views: impl Fn(&str, Option<u64>) -> Box<dyn View> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(views)))
    }

    /// The progress of a new operation `label` with `total` expected.
    pub fn start(&self, label: &str, total: Option<u64>) -> Progress {
        match &self.0 {
            Some(views) => Progress::with_view(label, total, views(label, total)),
            None => Progress::new(label, total),
        }
    }
}

/// Where an operation stands.
pub struct Snapshot<'a> {
    pub label: &'a str,
    pub done: u64,
    pub total: Option<u64>,
    pub elapsed: Duration,
    /// The log cursor of the last event finished with, for operations that read the log.
    pub cursor: Option<LogCursor>,
}

impl Snapshot<'_> {
    /// `label: done/total (rate/s, ETA n s)`, or `label: done (rate/s)` without a total.
    pub fn line(&self) -> String {
        let rate = self.done as f64 / self.elapsed.as_secs_f64().max(1e-9);
        match self.total {
            Some(total) if rate > 0.0 && total > self.done => format!(
                "{}: {}/{total} ({rate:.0}/s, ETA {:.0} s)",
                self.label,
                self.done,
                (total - self.done) as f64 / rate
            ),
            _ => format!("{}: {} ({rate:.0}/s)", self.label, self.done),
        }
    }
}

/// One operation's count of work done.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: AtomicU64,
    cursor: Mutex<Option<LogCursor>>,
    started: Instant,
    view: Box<dyn View>,
}

impl Progress {
    /// Progress of `label`, shown through the installed view (or logged).
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let view = match VIEWS.get() {
            Some(views) => views(label, total),
            None => Box::new(Logged::default()),
        };
        Self::with_view(label, total, view)
    }

    pub fn with_view(label: &str, total: Option<u64>, view: Box<dyn View>) -> Self {
        Self {
            label: label.to_owned(),
            total,
            done: AtomicU64::new(0),
            cursor: Mutex::new(None),
            started: Instant::now(),
            view,
        }
    }

    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.view.advanced(&self.snapshot(done));
    }

    /// [`Progress::advance`], having finished with every event up to `cursor`.
    pub fn advance_to(&self, n: u64, cursor: LogCursor) {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(cursor);
        self.advance(n);
    }

    pub fn note(&self, message: &str) {
        self.view.note(&self.snapshot(self.done()), message);
    }

    pub fn finish(&self, message: &str) {
        self.view.finished(&self.snapshot(self.done()), message);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn snapshot(&self, done: u64) -> Snapshot<'_> {
        Snapshot {
            label: &self.label,
            done,
            total: self.total,
            elapsed: self.started.elapsed(),
            // A poisoned lock only means a panic mid-store of a Copy value: still valid.
            cursor: *self.cursor.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Writes a line at most every `every`; the view for logs and pipes.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(Instant::now()),
        }
    }

    /// Whether a line is due now; if so, the next one is due `every` later.
    pub fn due(&self) -> bool {
        // A poisoned lock only means another thread panicked mid-update of an Instant: still valid.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < self.every {
            return false;
        }
        *last = Instant::now();
        true
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

/// The view without one installed: `tracing` events, a line every five seconds.
#[derive(Debug, Default)]
struct Logged(Throttle);

impl View for Logged {
    fn advanced(&self, at: &Snapshot<'_>) {
        if self.0.due() {
            tracing::info!(done = at.done, total = at.total, "{}", at.line());
        }
    }

    fn note(&self, at: &Snapshot<'_>, message: &str) {
        tracing::info!("{}: {message}", at.label);
    }

    fn finished(&self, at: &Snapshot<'_>, message: &str) {
        tracing::info!(done = at.done, total = at.total, "{}; {message}", at.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_line_gives_the_count_the_rate_and_the_time_left() {
        let at = Snapshot {
            label: "rebuilding x",
            done: 50,
            total: Some(150),
            elapsed: Duration::from_secs(10),
            cursor: None,
        };
        assert_eq!(at.line(), "rebuilding x: 50/150 (5/s, ETA 20 s)");
        let open = Snapshot { total: None, ..at };
        assert_eq!(open.line(), "rebuilding x: 50 (5/s)");
    }

    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl View for std::sync::Arc<Recorded> {
        fn advanced(&self, at: &Snapshot<'_>) {
            let cursor = at.cursor.map(|c| format!(" after {c}")).unwrap_or_default();
            self.0
                .lock()
                .unwrap()
                .push(format!("at {}{cursor}", at.done));
        }
        fn note(&self, _at: &Snapshot<'_>, message: &str) {
            self.0.lock().unwrap().push(format!("note {message}"));
        }
        fn finished(&self, at: &Snapshot<'_>, message: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {message}", at.done));
        }
    }

    #[test]
    fn an_operation_reports_each_step_and_where_it_is_to_its_reporters_view() {
        let seen = std::sync::Arc::new(Recorded::default());
        let progress = Reporter::to({
            let seen = seen.clone();
            move |_, _| Box::new(seen.clone())
        })
        .start("copying", Some(10));
        progress.advance(4);
        progress.note("resuming");
        progress.advance_to(
            6,
            LogCursor {
                tx_id: 7,
                position: 10,
            },
        );
        progress.finish("done");
        assert_eq!(progress.done(), 10);
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["at 4", "note resuming", "at 10 after 7/10", "10 done"]
        );
    }
}
