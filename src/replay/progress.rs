//! Progress for long operations (rebuilds, republishing): a bar with rate and ETA on a terminal,
//! a line every five seconds otherwise (logs, CI).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} ETA {eta}"
            } else {
                "{msg} {human_pos} {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            bar
        });
        Self {
            bar,
            label: label.to_owned(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            eprintln!("{}", self.line(done));
        }
    }

    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{}: {message}", self.label),
        }
    }

    pub fn finish(&self, message: &str) {
        let done = self.done.load(Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}; {message}", self.line(done));
    }

    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        match self.total {
            Some(total) if rate > 0.0 && total > done => format!(
                "{}: {done}/{total} ({rate:.0}/s, ETA {:.0} s)",
                self.label,
                (total - done) as f64 / rate
            ),
            _ => format!("{}: {done} ({rate:.0}/s)", self.label),
        }
    }
}
