//! Progress bars on stderr when it is a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use distribusync_client::Progress;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

/// An indicatif bar as a [`Progress`].
#[derive(Debug)]
struct Bar(ProgressBar, String);

impl Progress for Bar {
    fn start(&self, total: u64, done: u64) {
        if done > 0 {
            self.0.println(resuming(&self.1, total, done));
        }
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Without a terminal: one line when a transfer resumes, nothing else.
#[derive(Debug)]
struct Quiet(String);

impl Progress for Quiet {
    fn start(&self, total: u64, done: u64) {
        if done > 0 {
            eprintln!("{}", resuming(&self.0, total, done));
        }
    }
}

fn resuming(label: &str, total: u64, done: u64) -> String {
    format!(
        "{label}: resuming at {} of {}",
        HumanBytes(done),
        HumanBytes(total)
    )
}

/// A bar labelled `label` in a terminal, or no reporting but a note when
/// the transfer resumes an interrupted one.
pub fn transfer(label: &str) -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(Quiet(label.to_owned()));
    }
    Arc::new(Bar(new_bar(label), label.to_owned()))
}

/// No bar, only a line when the transfer resumes an interrupted one (for
/// output that is not a terminal).
pub fn quiet(label: &str) -> Arc<dyn Progress> {
    Arc::new(Quiet(label.to_owned()))
}

/// Bars for transfers running side by side, stacked so they do not draw
/// over each other.
#[derive(Debug, Clone)]
pub struct Transfers(Option<MultiProgress>);

impl Transfers {
    pub fn new() -> Self {
        Self(std::io::stderr().is_terminal().then(MultiProgress::new))
    }

    /// What [`distribusync_client::FilesClient::upload_many`] asks for.
    pub fn factory(&self) -> distribusync_client::tree::ProgressFor {
        let multi = self.0.clone();
        Arc::new(move |remote| -> Arc<dyn Progress> {
            let label = remote.to_string();
            match &multi {
                Some(m) => Arc::new(Bar(m.add(new_bar(&label)), label)),
                None => Arc::new(Quiet(label)),
            }
        })
    }

    /// Runs `f` (printing a line) with the bars out of the way.
    pub fn suspend(&self, f: impl FnOnce()) {
        match &self.0 {
            Some(m) => m.suspend(f),
            None => f(),
        }
    }
}

fn new_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}
