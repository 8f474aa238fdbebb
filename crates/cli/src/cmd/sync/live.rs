//! The live one-line status `sync` shows when its stderr is a terminal:
//! what it is sending or receiving, how much is left, when the last pass
//! ended. Log lines are printed above it (the log writer moves the line
//! out of the way for each one), so the two never draw over each other.
//!
//! Invariant: the line exists only for a person. Not a terminal, or
//! `--log-format json` (a machine reads stderr), means no line and logs
//! written straight to stderr, byte for byte as before.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use distribusync_client::sync::{Direction, SyncPhase, SyncStatus};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::LogFormat;

/// How often the line is redrawn (progress moves between status changes
/// too, and "last pass 5s ago" ages).
const REDRAW: Duration = Duration::from_millis(200);

/// The status line; see the module documentation.
#[derive(Debug, Clone)]
pub struct StatusLine {
    bar: ProgressBar,
}

impl StatusLine {
    /// A line on stderr when it is a terminal and logs are for a person;
    /// `None` otherwise.
    pub fn for_terminal(format: LogFormat) -> Option<Self> {
        if format != LogFormat::Plain || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {wide_msg}").expect("the template is valid"),
        );
        Some(StatusLine { bar })
    }

    /// Where log lines go: stderr, above the line.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.bar.clone())
    }

    /// Prints `text` (a line of the binary's own) above the status line.
    pub fn println(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Keeps the line up to date with `status` until `stop`, then clears
    /// it. Redrawn on a clock, not on each change: a transfer changes the
    /// status with every chunk it moves.
    pub async fn follow(self, status: watch::Receiver<SyncStatus>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REDRAW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let text = line(&status.borrow(), SystemTime::now());
            self.bar.set_message(text);
            self.bar.tick();
        }
        self.bar.finish_and_clear();
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`] that writes each log line
/// above the status line.
#[derive(Debug, Clone)]
pub struct LogWriter(ProgressBar);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(self.0.clone())
    }
}

/// One log event's writer (the formatter writes an event in one call).
#[derive(Debug)]
pub struct LogLine(ProgressBar);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut result = Ok(());
        self.0
            .suspend(|| result = std::io::stderr().lock().write_all(buf));
        result.map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The line's text for `s` at `now`, e.g. `syncing · sending video.mp4
/// 12.0 MiB/64.0 MiB (+2 more) · 3 left, 80.0 MiB · last pass 5s ago`.
pub fn line(s: &SyncStatus, now: SystemTime) -> String {
    let mut parts = vec![match s.phase {
        SyncPhase::Idle => "in sync".to_owned(),
        phase => phase.to_string(),
    }];
    if let Some(m) = s.moving.first() {
        let verb = match m.direction {
            Direction::Up => "sending",
            Direction::Down => "receiving",
        };
        let mut what = format!(
            "{verb} {} {}/{}",
            m.what,
            HumanBytes(m.done),
            HumanBytes(m.total)
        );
        if s.moving.len() > 1 {
            what.push_str(&format!(" (+{} more)", s.moving.len() - 1));
        }
        parts.push(what);
    }
    if s.pending > 0 {
        parts.push(format!(
            "{} left, {}",
            s.pending,
            HumanBytes(s.bytes_pending)
        ));
    }
    parts.push(match s.last_pass {
        Some(at) => {
            let ago = now.duration_since(at).unwrap_or_default().as_secs();
            format!(
                "last pass {} ago",
                humantime::format_duration(Duration::from_secs(ago))
            )
        }
        None => "no pass yet".to_owned(),
    });
    parts.push(format!("{} up, {} down", s.uploaded, s.downloaded));
    if let Some(e) = &s.last_error {
        parts.push(format!("last error: {e}"));
    }
    parts.join(" · ")
}
