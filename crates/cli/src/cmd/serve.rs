//! `distribusync serve`.

use anyhow::Context;
use distribusync_server::ServerConfig;

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = ServerConfig::new(&args.root);
    config.store.max_file_size = args.max_file_size;
    eprintln!(
        "distribusync: serving {} on http://{}",
        args.root.display(),
        listener.local_addr().unwrap_or(args.listen)
    );
    distribusync_server::serve(listener, config, shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still works");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
