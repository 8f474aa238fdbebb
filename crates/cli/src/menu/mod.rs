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
mod setup;

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distribusync_client::{ComputeClient, ConnectionConfig, FilesClient, Reachability, probe};
use tokio::runtime::Handle;

use crate::cli::Global;
use console::{Console, Input, Printer};

/// How long the header waits to learn whether a server answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a script's menu waits for its async results before it leaves.
const JOB_WAIT: Duration = Duration::from_secs(60);

/// The gRPC services the header asks about.
const FILES_SERVICE: &str = "distribusync.v1.Files";
const COMPUTE_SERVICE: &str = "distribusync.v1.Compute";

pub async fn run(global: &Global) -> anyhow::Result<()> {
    let resolved = crate::connection::resolve_given(global)?;
    let compute_server = global.compute_server.clone();
    let client_id = crate::cmd::compute::client_id(global);
    let delta = crate::connection::delta_policy(global);
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut console = Console::open(rt.clone());
        let Ok(config) = setup::complete(&mut console, resolved, compute_server.as_deref()) else {
            println!("Bye.");
            return Ok(());
        };
        // Lazy channels start a task: they are made inside the runtime.
        let (files, compute) = {
            let _entered = rt.enter();
            (
                FilesClient::lazy(&config)?.with_delta(delta),
                ComputeClient::lazy(&config, client_id)?,
            )
        };
        let printer = console.printer();
        let mut menu = Menu {
            rt,
            console,
            printer,
            files,
            compute,
            files_addr: config.endpoint.clone(),
            compute_addr: config.compute().to_owned(),
            config,
            autosync: autosync::AutoSync::default(),
            pending_jobs: Arc::default(),
        };
        menu.main_loop();
        menu.close();
        Ok(())
    })
    .await??;
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
    /// How every client of the menu connects (auto-sync too).
    config: ConnectionConfig,
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
        let files_up = self.probe(&self.config, FILES_SERVICE);
        let mut line = format!("DistribuSync — server {} ({files_up})", self.files_addr);
        if self.compute_addr != self.files_addr {
            let up = self.probe(&self.config.for_compute(), COMPUTE_SERVICE);
            line.push_str(&format!("   compute {} ({up})", self.compute_addr));
        }
        line.push_str(&format!("   auto-sync: {}", self.autosync.summary()));
        println!("{line}");
    }

    /// Whether the server at `addr` answers now, and serves `service` (a
    /// fresh connection and a health check, so the header is true also
    /// after a restart, and a hung server shows as one).
    fn probe(&self, config: &ConnectionConfig, service: &str) -> Reachability {
        self.rt.block_on(probe(config, service, PROBE_TIMEOUT))
    }

    /// Runs an action until it is done or the person presses Ctrl-C (then
    /// it is cancelled, `None`, and the menu carries on).
    fn act<F: std::future::Future>(&mut self, what: &str, action: F) -> Option<F::Output> {
        let done = self.console.interruptible(action);
        if done.is_none() {
            println!();
            println!("{what}: interrupted");
        }
        done
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

    /// Stops auto-sync and says what is left behind. A script (no
    /// terminal) that ends its input with async jobs still running gets
    /// their results first: it has no other way to see them.
    fn close(&mut self) {
        self.autosync.stop_quietly(&self.rt);
        let pending = self.pending_jobs.load(Ordering::SeqCst);
        if pending > 0 && !self.console.is_terminal() {
            println!("waiting for {pending} async job(s) to answer (Ctrl-C to stop waiting)");
            let jobs = self.pending_jobs.clone();
            let _ = self
                .console
                .interruptible(tokio::time::timeout(JOB_WAIT, async move {
                    while jobs.load(Ordering::SeqCst) > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
        }
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

/// Prints a failed action as the one-shot commands do.
fn report(what: &str, err: impl Display) {
    eprintln!("distribusync: {what}: {err}");
}
