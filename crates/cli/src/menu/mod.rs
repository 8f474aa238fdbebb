//! `distribusync menu`: the numbered menu for people who do not want to
//! learn the commands.
//!
//! A front over the same library calls as the one-shot commands:
//! [`FilesClient`] for files, [`ComputeClient`] for compute and async jobs,
//! [`SyncEngine`](distribusync_client::sync::SyncEngine) for auto-sync, which
//! runs as a task of this process. Clients sit on lazy channels, so the menu
//! opens with the server down and an action after it comes back just works.
//!
//! The prompts run on a blocking thread (rustyline reads the terminal
//! synchronously); each action runs on the runtime with `block_on`, async
//! results and auto-sync run as tasks beside it.

mod autosync;
mod compute;
mod console;
mod files;

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distribusync_client::{ComputeClient, FilesClient, lazy_channel, normalize_addr};
use tokio::runtime::Handle;

use crate::cli::Global;
use console::{Console, Input, Printer};

/// How long the header waits to learn whether a server answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(global: &Global) -> anyhow::Result<()> {
    let files_addr = normalize_addr(&global.server);
    let compute_addr = normalize_addr(crate::cmd::compute::compute_addr(global));
    let files = FilesClient::new(lazy_channel(&files_addr)?, &files_addr);
    let compute = ComputeClient::new(
        lazy_channel(&compute_addr)?,
        &compute_addr,
        crate::cmd::compute::client_id(global),
    );
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || {
        let console = Console::open();
        let printer = console.printer();
        let mut menu = Menu {
            rt,
            console,
            printer,
            files,
            compute,
            files_addr,
            compute_addr,
            autosync: autosync::AutoSync::default(),
            pending_jobs: Arc::default(),
        };
        menu.main_loop();
        menu.close();
    })
    .await?;
    Ok(())
}

/// Why a prompt gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Ctrl-C: back to the main menu.
    Back,
    /// Ctrl-D or end of input: leave the menu.
    Exit,
}

#[derive(Debug)]
struct Menu {
    rt: Handle,
    console: Console,
    printer: Printer,
    files: FilesClient,
    compute: ComputeClient,
    files_addr: String,
    compute_addr: String,
    autosync: autosync::AutoSync,
    /// Async jobs whose result has not arrived yet.
    pending_jobs: Arc<AtomicUsize>,
}

impl Menu {
    fn main_loop(&mut self) {
        loop {
            self.header();
            println!(" 1) Files        upload, download, delete, rename, list");
            println!(" 2) Compute      add, sort (wait for the answer)");
            println!(" 3) Async        add, sort (answer arrives later)");
            println!(
                " 4) Auto-sync    start / stop / status for a folder (default {})",
                autosync::default_dir().display()
            );
            println!(" 5) Exit");
            let outcome = match self.choose("> ", 5) {
                Ok(1) => files::menu(self),
                Ok(2) => compute::menu(self, compute::Wait::Answer),
                Ok(3) => compute::menu(self, compute::Wait::Callback),
                Ok(4) => autosync::menu(self),
                Ok(_) | Err(_) => return,
            };
            if outcome == Err(Leave::Exit) {
                return;
            }
        }
    }

    fn header(&mut self) {
        let files_up = self.probe(&self.files_addr);
        let mut line = format!(
            "DistribuSync — server {} ({})",
            self.files_addr,
            reachability(files_up)
        );
        if self.compute_addr != self.files_addr {
            let up = self.probe(&self.compute_addr);
            line.push_str(&format!(
                "   compute {} ({})",
                self.compute_addr,
                reachability(up)
            ));
        }
        line.push_str(&format!("   auto-sync: {}", self.autosync.summary()));
        println!("{line}");
    }

    /// Whether a server answers at `addr` now (a fresh connection, so the
    /// header is true also after a restart).
    fn probe(&self, addr: &str) -> bool {
        self.rt.block_on(async {
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, distribusync_client::channel(addr)).await,
                Ok(Ok(_))
            )
        })
    }

    /// Reads one line at `prompt`, trimmed.
    fn ask(&mut self, prompt: &str) -> Result<String, Leave> {
        match self.console.read(prompt) {
            Input::Line(l) => Ok(l.trim().to_owned()),
            Input::Interrupted => Err(Leave::Back),
            Input::Eof => Err(Leave::Exit),
        }
    }

    /// Reads a choice 1..=`n`, asking again after anything else. An empty
    /// line asks again.
    fn choose(&mut self, prompt: &str, n: usize) -> Result<usize, Leave> {
        loop {
            let answer = self.ask(prompt)?;
            if answer.is_empty() {
                continue;
            }
            match answer.parse::<usize>() {
                Ok(k) if (1..=n).contains(&k) => return Ok(k),
                _ => println!("Please choose a number from 1 to {n} (not {answer:?})."),
            }
        }
    }

    /// Shows a numbered submenu whose last item is "Back"; returns the
    /// chosen item (1-based), or `Err(Back)` for Back.
    fn submenu(&mut self, title: &str, items: &[&str]) -> Result<usize, Leave> {
        println!("{title}:");
        for (i, item) in items.iter().enumerate() {
            println!(" {}) {item}", i + 1);
        }
        println!(" {}) Back", items.len() + 1);
        let prompt = format!("{}> ", title.to_lowercase());
        match self.choose(&prompt, items.len() + 1)? {
            k if k <= items.len() => Ok(k),
            _ => Err(Leave::Back),
        }
    }

    /// Stops auto-sync and says what is left behind.
    fn close(&mut self) {
        self.autosync.stop_quietly(&self.rt);
        let pending = self.pending_jobs.load(Ordering::SeqCst);
        if pending > 0 {
            println!(
                "{pending} async job(s) still running; see them with `distribusync jobs` \
                 and fetch a result with `distribusync job ID`."
            );
        }
        println!("Bye.");
    }
}

fn reachability(up: bool) -> &'static str {
    if up { "connected" } else { "unreachable" }
}

/// Prints a failed action as the one-shot commands do.
fn report(what: &str, err: impl Display) {
    eprintln!("distribusync: {what}: {err}");
}
