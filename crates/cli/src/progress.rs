//! Progress bars on stderr when it is a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use distribusync_client::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// An indicatif bar as a [`Progress`].
#[derive(Debug)]
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64, done: u64) {
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

/// A bar labelled `label` in a terminal, or no reporting.
pub fn transfer(label: &str) -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    Arc::new(Bar(bar))
}
