//! `distribusync sync DIR`: the sync daemon (or one pass with --once),
//! with its metrics endpoint (`metrics`) and, in a terminal, its live
//! status line (`live`).

pub mod live;
mod metrics;

use std::time::Duration;

use anyhow::Context;
use distribusync_client::FilesClient;
use distribusync_client::sync::{Mode, SyncEngine, SyncOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, SyncArgs, SyncMode};
use live::StatusLine;

/// The engine options a `sync` command line asks for.
pub fn options(args: &SyncArgs) -> SyncOptions {
    let mut opts = SyncOptions::new(&args.dir);
    opts.mode = match args.mode {
        SyncMode::TwoWay => Mode::TwoWay,
        SyncMode::Push => Mode::Push,
        SyncMode::Pull => Mode::Pull,
    };
    opts.rescan_every = Duration::from_secs(args.rescan_secs.max(1));
    opts.parallel = usize::from(args.transfers);
    opts
}

/// Runs `sync`; `line` is the live status line when stderr is a terminal
/// (made with the log subscriber, whose lines it moves out of the way).
pub async fn run(global: &Global, args: SyncArgs, line: Option<StatusLine>) -> anyhow::Result<()> {
    let what = format!("sync {}", args.dir.display());
    // Before anything starts: an address in use is a usage error.
    let metrics = args.metrics_listen.map(metrics::bind).transpose()?;
    let config = crate::connection::resolve(global)?;
    let shutdown = CancellationToken::new();
    if args.once {
        let client = FilesClient::connect(&config)
            .await?
            .with_delta(crate::connection::delta_policy(global));
        let mut engine = SyncEngine::open(options(&args), client).context(what.clone())?;
        let drawn = line.map(|l| tokio::spawn(l.follow(engine.status(), shutdown.clone())));
        let result = engine.run_once().await.context(what);
        shutdown.cancel();
        if let Some(drawn) = drawn {
            let _ = drawn.await;
        }
        return result;
    }
    // The daemon starts even when the server is down; changes wait for it.
    let client = FilesClient::lazy(&config)?.with_delta(crate::connection::delta_policy(global));
    let engine = SyncEngine::open(options(&args), client).context(what.clone())?;
    let say = |text: String| match &line {
        Some(l) => l.println(&text),
        None => eprintln!("{text}"),
    };
    say(format!(
        "distribusync: syncing {} with {} (Ctrl-C to stop)",
        args.dir.display(),
        config.endpoint
    ));
    if let Some(listener) = metrics {
        let addr = listener.local_addr().context("metrics address")?;
        metrics::serve(listener, engine.status(), shutdown.clone()).context("serving metrics")?;
        say(format!("distribusync: metrics on http://{addr}/metrics"));
    }
    let _socket = super::status::serve_socket(
        &args.dir,
        config.endpoint.clone(),
        engine.status(),
        shutdown.clone(),
    );
    let drawn = line.map(|l| tokio::spawn(l.follow(engine.status(), shutdown.clone())));
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        trigger.cancel();
    });
    let result = engine.run(shutdown.clone()).await.context(what);
    // The engine may stop on its own (the safety stop): the line goes too.
    shutdown.cancel();
    if let Some(drawn) = drawn {
        let _ = drawn.await;
    }
    result
}
