//! What the operator sees while a job runs: a progress bar on a terminal, periodic log lines
//! anywhere else (CI logs, systemd, files), nothing when asked for quiet.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::report::metrics::{LineOutcome, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    Off,
}

/// A running progress display; [`ProgressDisplay::finish`] stops it.
pub struct ProgressDisplay {
    task: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

/// The progress bar being drawn, if any. There is one terminal, so this is process-wide: log
/// lines and a launched engine's output are written around the bar through it, so they never
/// tear each other.
static ACTIVE_BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Prints a line on stderr, above the progress bar when one is drawn.
pub fn print_line(text: &str) {
    match active_bar() {
        Some(bar) => bar.println(text),
        None => eprintln!("{text}"),
    }
}

/// A stderr writer for the log subscriber that hides the bar while a log line is written.
pub struct StderrAboveBar;

impl std::io::Write for StderrAboveBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One line of progress, e.g. `1200/5000 (24.0%) ok 1190 failed 10 | 410.2 req/s 9120 tok/s | ETA 9s`.
pub fn describe(stats: &Stats, elapsed: Duration) -> String {
    let done = stats.done();
    let planned = Stats::load(&stats.planned);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = stats.done_now() as f64 / secs;
    let tokens = stats.output_tokens_now() as f64 / secs;
    let eta = if rate > 0.0 && planned > done {
        format_duration(Duration::from_secs_f64((planned - done) as f64 / rate))
    } else {
        "-".to_owned()
    };
    let percent = if planned > 0 {
        100.0 * done as f64 / planned as f64
    } else {
        100.0
    };
    let in_flight = match Stats::load(&stats.concurrency_limit) {
        0 => Stats::load(&stats.in_flight).to_string(),
        limit => format!("{} (limit {limit})", Stats::load(&stats.at_engines)),
    };
    let down = match Stats::load(&stats.engines_down) {
        0 => String::new(),
        1 => " | 1 engine down".to_owned(),
        n => format!(" | {n} engines down"),
    };
    format!(
        "{done}/{planned} ({percent:.1}%) ok {} failed {} | {rate:.1} req/s {tokens:.0} output tok/s | in flight {in_flight}{down} | ETA {eta}",
        stats.count(LineOutcome::Succeeded),
        stats.failed(),
    )
}

/// `1h02m03s`, `4m05s`, `6.5s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60),
    }
}

impl ProgressDisplay {
    pub fn start(stats: Arc<Stats>, mode: ProgressMode, log_interval: Duration) -> Self {
        let started = Instant::now();
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            other => other,
        };
        match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(
                    Some(Stats::load(&stats.planned)),
                    ProgressDrawTarget::stderr(),
                );
                bar.set_style(
                    ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                let shown = bar.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        tick.tick().await;
                        shown.set_length(Stats::load(&stats.planned));
                        shown.set_position(stats.done());
                        shown.set_message(describe(&stats, started.elapsed()));
                    }
                });
                set_active_bar(Some(bar.clone()));
                Self {
                    task: Some(task),
                    bar: Some(bar),
                }
            }
            ProgressMode::Log => {
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(log_interval);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        tracing::info!("progress: {}", describe(&stats, started.elapsed()));
                    }
                });
                Self {
                    task: Some(task),
                    bar: None,
                }
            }
            ProgressMode::Auto | ProgressMode::Off => Self {
                task: None,
                bar: None,
            },
        }
    }

    pub fn finish(self) {
        set_active_bar(None);
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn describes_progress_with_rates_and_eta() {
        let s = Stats::default();
        s.planned.store(10, Ordering::Relaxed);
        for _ in 0..4 {
            s.record(LineOutcome::Succeeded);
        }
        s.record(LineOutcome::EngineError);
        let text = describe(&s, Duration::from_secs(5));
        assert!(
            text.starts_with("5/10 (50.0%) ok 4 failed 1 | 1.0 req/s"),
            "{text}"
        );
        assert!(text.ends_with("ETA 5.0s"), "{text}");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(Duration::from_millis(6500)), "6.5s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
