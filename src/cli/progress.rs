//! How the command line shows progress: the library's progress reports
//! ([`crate::replay::progress`]) as a bar with rate and ETA, and a job running on the server
//! ([`follow`]) as a spinner with its elapsed time and progress, on a terminal; a line every
//! five seconds otherwise (logs, CI). All on stderr, so that stdout keeps only results.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::{Job, Line};
use crate::replay::progress::{self, Snapshot, Throttle, View};
use crate::shutdown;

/// Makes every later progress report show on stderr.
pub fn install() {
    let terminal = std::io::stderr().is_terminal();
    progress::set_view(move |label, total| -> Box<dyn View> {
        if terminal {
            Box::new(Bar::new(label, total))
        } else {
            Box::new(Lines::default())
        }
    });
}

struct Bar(ProgressBar);

impl Bar {
    fn new(label: &str, total: Option<u64>) -> Self {
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
        Self(bar)
    }
}

impl View for Bar {
    fn advanced(&self, at: &Snapshot<'_>) {
        self.0.set_position(at.done);
    }

    fn note(&self, _at: &Snapshot<'_>, message: &str) {
        self.0.println(message);
    }

    fn finished(&self, at: &Snapshot<'_>, message: &str) {
        self.0.finish_and_clear();
        eprintln!("{}; {message}", at.line());
    }
}

#[derive(Default)]
struct Lines(Throttle);

impl View for Lines {
    fn advanced(&self, at: &Snapshot<'_>) {
        if self.0.due() {
            eprintln!("{}", at.line());
        }
    }

    fn note(&self, at: &Snapshot<'_>, message: &str) {
        eprintln!("{}: {message}", at.label);
    }

    fn finished(&self, at: &Snapshot<'_>, message: &str) {
        eprintln!("{}; {message}", at.line());
    }
}

/// Follows a job running on the server to its final line and returns its report. Ctrl-C (or
/// SIGTERM) stops following and fails: the job itself continues on the server to its end, and
/// `keel jobs show ID` shows how it stands (its audit rows, `keel audit list --action
/// <audit_action>`, record its start and end).
pub async fn follow(mut job: Job, label: &str, audit_action: &str) -> anyhow::Result<Value> {
    let view = JobView::new(label);
    let stop = shutdown::on_signals();
    let mut id = String::new();
    loop {
        let line = tokio::select! {
            line = job.next() => line,
            () = stop.wait() => {
                view.clear();
                let show = match id.as_str() {
                    "" => format!("`keel audit list --action {audit_action}`"),
                    id => format!("`keel jobs show {id}` (or `keel jobs cancel {id}`)"),
                };
                anyhow::bail!(
                    "stopped following {label}: the job continues on the server to its end; \
                     {show} shows how it stands"
                );
            }
        };
        match line {
            Ok(Some(Line::Started { job })) => {
                view.started(&job);
                id = job;
            }
            Ok(Some(Line::Running {
                elapsed_s,
                done,
                total,
                rate,
            })) => view.running(elapsed_s, done, total, rate),
            Ok(Some(Line::Done(report))) => {
                view.clear();
                return Ok(report);
            }
            Ok(None) => anyhow::bail!("the job's answer ended twice"),
            Err(err) => {
                view.clear();
                return Err(err.into());
            }
        }
    }
}

/// A spinner on a terminal; otherwise a line every five seconds.
enum JobView {
    Spinner { bar: ProgressBar, label: String },
    Lines { label: String, throttle: Throttle },
}

impl JobView {
    fn new(label: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines {
                label: label.to_owned(),
                throttle: Throttle::default(),
            };
        }
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            spinner.set_style(style);
        }
        spinner.set_message(format!("{label} on the server"));
        spinner.enable_steady_tick(Duration::from_millis(120));
        Self::Spinner {
            bar: spinner,
            label: label.to_owned(),
        }
    }

    fn started(&self, job: &str) {
        match self {
            Self::Spinner { bar, .. } => bar.println(format!("job {job}")),
            Self::Lines { label, .. } => eprintln!("{label}: job {job}"),
        }
    }

    fn running(&self, elapsed_s: f64, done: u64, total: Option<u64>, rate: Option<f64>) {
        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
        let rate = rate.map(|r| format!(", {r:.0}/s")).unwrap_or_default();
        match self {
            // The spinner keeps its own clock.
            Self::Spinner { bar, label } => {
                bar.set_message(format!("{label} on the server: {done}{of}{rate}"));
            }
            Self::Lines { label, throttle } => {
                if throttle.due() {
                    eprintln!("{label}: {done}{of} events{rate}, running on the server for {elapsed_s:.0} s");
                }
            }
        }
    }

    fn clear(&self) {
        if let Self::Spinner { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}
