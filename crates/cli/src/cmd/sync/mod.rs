//! `distribusync sync DIR`: the sync daemon (or one pass with --once).

use std::time::Duration;

use anyhow::Context;
use distribusync_client::FilesClient;
use distribusync_client::sync::{Mode, SyncEngine, SyncOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, SyncArgs, SyncMode};

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

pub async fn run(global: &Global, args: SyncArgs) -> anyhow::Result<()> {
    let what = format!("sync {}", args.dir.display());
    let config = crate::connection::resolve(global)?;
    if args.once {
        let client = FilesClient::connect(&config)
            .await?
            .with_delta(crate::connection::delta_policy(global));
        let mut engine = SyncEngine::open(options(&args), client).context(what.clone())?;
        engine.run_once().await.context(what)?;
        return Ok(());
    }
    // The daemon starts even when the server is down; changes wait for it.
    let client = FilesClient::lazy(&config)?.with_delta(crate::connection::delta_policy(global));
    let engine = SyncEngine::open(options(&args), client).context(what.clone())?;
    eprintln!(
        "distribusync: syncing {} with {} (Ctrl-C to stop)",
        args.dir.display(),
        config.endpoint
    );
    let shutdown = CancellationToken::new();
    let _socket = super::status::serve_socket(
        &args.dir,
        config.endpoint.clone(),
        engine.status(),
        shutdown.clone(),
    );
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        trigger.cancel();
    });
    engine.run(shutdown).await.context(what)?;
    Ok(())
}
