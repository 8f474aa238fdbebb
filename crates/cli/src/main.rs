//! `distribusync`: the one binary. Parses flags, builds configs, calls the
//! libraries; the logic lives in distribusync-server and -client.
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod connection;
mod menu;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// mimalloc keeps freed memory for reuse instead of handing big blocks back
/// to the kernel at once, as glibc does above its mmap threshold: on this
/// project's machine a fresh 80 MB buffer costs 40 ms of page faults, most
/// of a 10-million-number sort's transfer (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A mistake in how the command was called (exit 2), as opposed to a
/// failure while doing it (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Sort(_)) {
        // mimalloc asks for transparent huge pages, so a thread's first
        // allocations fault in and zero 2 MiB at a time: a fifth of the
        // server's CPU in a first sync of 10,000 small files. Only `sort`,
        // whose answer can be one 80 MB vector, keeps them (a 10-million
        // number sort gains ~20%); see docs/DESIGN.md.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    init_tracing(&cli.command);
    // The one rustls crypto provider of the process (the libraries pass it
    // explicitly too; this covers any dependency that asks for a default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("distribusync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`distribusync ls | head`) is not a failure.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("distribusync: {err:#}");
            if err.chain().any(|e| e.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(command: &Command) {
    use tracing_subscriber::EnvFilter;
    // Long-running commands log what they do; one-shot commands stay quiet
    // unless RUST_LOG asks.
    let default = match command {
        Command::Serve(_) => "info",
        Command::Sync(_) => "warn,distribusync_client::sync=info",
        // Log lines would land in the middle of prompts; the menu reports
        // failures itself (auto-sync errors are in its status).
        Command::Menu(_) => "error",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person; a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => cmd::serve::run(args).await,
        Command::Ls(c) => cmd::files::ls(&c.global, c.args).await,
        Command::Put(c) => cmd::files::put(&c.global, c.args).await,
        Command::Get(c) => cmd::files::get(&c.global, c.args).await,
        Command::Rm(c) => cmd::files::rm(&c.global, c.args).await,
        Command::Mv(c) => cmd::files::mv(&c.global, c.args).await,
        Command::Stat(c) => cmd::files::stat(&c.global, c.args).await,
        Command::Traffic(c) => cmd::files::traffic(&c.global).await,
        Command::Add(c) => cmd::compute::add(&c.global, c.args).await,
        Command::Sort(c) => cmd::compute::sort(&c.global, c.args).await,
        Command::Job(c) => cmd::compute::job(&c.global, c.args).await,
        Command::Jobs(c) => cmd::compute::jobs(&c.global, c.args).await,
        Command::Sync(c) => cmd::sync::run(&c.global, c.args).await,
        Command::Menu(c) => menu::run(&c.global).await,
        Command::Token(args) => cmd::token::run(args).await,
        Command::Login(args) => cmd::login::run(args).await,
    }
    .map(|()| ExitCode::SUCCESS)
}
