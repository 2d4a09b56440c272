//! How the command line shows the library's progress reports ([`crate::replay::progress`]): a
//! bar with rate and ETA on a terminal, a line every five seconds otherwise (logs, CI), on stderr
//! so that stdout keeps only results.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::replay::progress::{self, Snapshot, Throttle, View};

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
