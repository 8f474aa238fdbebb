//! `distribusync`: the one binary. Parses flags, builds configs, calls the
//! libraries; the logic lives in distribusync-server and -client.
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod config;
mod connection;
mod menu;
mod output;
mod progress;

use std::process::ExitCode;

use anyhow::Context;

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
    let mut parsed = match config::parse(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("distribusync: {e:#}");
            return ExitCode::from(2);
        }
    };
    let root_typed = root_on_command_line(&parsed.matches);
    if let Command::Token(args) = &mut parsed.cli.command {
        args.target.root_on_command_line = root_typed;
    }
    let cli = &parsed.cli;
    if !matches!(cli.command, Command::Sort(_)) {
        // mimalloc asks for transparent huge pages, so a thread's first
        // allocations fault in and zero 2 MiB at a time: a fifth of the
        // server's CPU in a first sync of 10,000 small files. Only `sort`,
        // whose answer can be one 80 MB vector, keeps them (a 10-million
        // number sort gains ~20%); see docs/DESIGN.md.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    let line = init_tracing(&cli.command);
    if matches!(cli.command, Command::Config(_)) {
        return match config::print(&parsed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("distribusync: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
    match runtime.block_on(run(parsed.cli, line)) {
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

/// Whether `token … --root DIR` was typed (not taken from
/// DISTRIBUSYNC_ROOT or the default): `--root` is global to the token
/// subcommands, so it may sit on `token` or on its subcommand.
fn root_on_command_line(matches: &clap::ArgMatches) -> bool {
    let Some(token) = matches.subcommand_matches("token") else {
        return false;
    };
    let sub = token.subcommand().map(|(_, m)| m);
    std::iter::once(token)
        .chain(sub)
        .any(|m| m.value_source("root") == Some(clap::parser::ValueSource::CommandLine))
}

/// Installs the log subscriber; returns the live status line of `sync`
/// when it has one (its log lines are then written above the line).
fn init_tracing(command: &Command) -> Option<cmd::sync::live::StatusLine> {
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
    let format = match command {
        Command::Serve(a) => a.log_format,
        Command::Sync(c) => c.args.log_format,
        _ => cli::LogFormat::Plain,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let line = match command {
        Command::Sync(_) => cmd::sync::live::StatusLine::for_terminal(format),
        _ => None,
    };
    match (format, &line) {
        // One JSON object a line: the event's fields at the top level
        // (`code`, `method`, …), beside `timestamp`, `level`, `target`.
        (cli::LogFormat::Json, _) => builder.json().flatten_event(true).init(),
        (cli::LogFormat::Plain, Some(line)) => builder
            .with_ansi(true)
            .with_writer(line.log_writer())
            .init(),
        // Colours only for a person; a log file or a pipe gets plain text.
        (cli::LogFormat::Plain, None) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    line
}

async fn run(cli: Cli, line: Option<cmd::sync::live::StatusLine>) -> anyhow::Result<ExitCode> {
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
        Command::Sync(c) => cmd::sync::run(&c.global, c.args, line).await,
        Command::Status(c) => cmd::status::run(&c.global, c.args).await,
        Command::Menu(c) => menu::run(&c.global).await,
        Command::Token(args) => cmd::token::run(args).await,
        Command::Login(args) => cmd::login::run(args).await,
        Command::Config(_) => Ok(()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "distribusync", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("man")
        }
    }
    .map(|()| ExitCode::SUCCESS)
}
