//! Progress on the terminal: a bar on a TTY, occasional plain lines otherwise (CI logs).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

/// Progress shown on stderr.
pub struct TermProgress {
    tty: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ProgressBar>,
    what: String,
    total: Option<u64>,
    last_line: Option<Instant>,
    done: u64,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl TermProgress {
    /// `tty` chooses a live bar (true) or line-based progress (false).
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

impl Progress for TermProgress {
    fn begin(&self, what: &str, total: Option<u64>) {
        let mut s = self.lock();
        *s = State {
            what: what.to_string(),
            total,
            ..State::default()
        };
        if self.tty {
            let bar = match total {
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{msg:>12} {spinner} {bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_message(what.to_string());
            s.bar = Some(bar);
        } else {
            eprintln!("{what}: started");
            s.last_line = Some(Instant::now());
        }
    }

    fn set(&self, done: u64) {
        let mut s = self.lock();
        s.done = done;
        if let Some(bar) = &s.bar {
            bar.set_position(done);
        } else if s.last_line.is_some_and(|t| t.elapsed() >= LINE_EVERY) {
            match s.total {
                Some(t) if t > 0 => eprintln!(
                    "{}: {} of {} ({}%)",
                    s.what,
                    mib(done),
                    mib(t),
                    done * 100 / t
                ),
                _ => eprintln!("{}: {}", s.what, mib(done)),
            }
            s.last_line = Some(Instant::now());
        }
    }

    fn end(&self) {
        let mut s = self.lock();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        } else if s.last_line.is_some() {
            eprintln!("{}: done, {}", s.what, mib(s.done));
        }
    }
}
