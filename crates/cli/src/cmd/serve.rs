//! `distribusync serve`.

use anyhow::Context;
use distribusync_server::{ComputeConfig, ServerConfig, Services, TransportConfig};

use crate::UsageError;
use crate::cli::{AuthArg, ServeArgs, Service};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.services.is_empty() {
        return Err(UsageError("serve: --services needs files, compute or both".into()).into());
    }
    if args.auth == AuthArg::Off && !args.listen.ip().is_loopback() && !args.insecure {
        let refusal = distribusync_server::ServeError::Insecure(args.listen);
        return Err(UsageError(format!("serve: {refusal}")).into());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let open_files = distribusync_server::raise_descriptor_limit();
    tracing::debug!(?open_files, "open-file limit");
    let mut config = ServerConfig::new(&args.root);
    config.store.max_file_size = args.max_file_size;
    config.store.max_kept_parts = args.max_kept_parts;
    config.store.max_kept_bytes = args.max_kept_bytes;
    config.services = Services {
        files: args.services.contains(&Service::Files),
        compute: args.services.contains(&Service::Compute),
    };
    let defaults = ComputeConfig::default();
    config.compute = ComputeConfig {
        max_numbers: args.max_numbers,
        job_queue_capacity: args.job_queue,
        workers: args.job_workers.unwrap_or(defaults.workers),
        default_deadline: args.job_deadline,
        max_deadline: args.max_job_deadline,
        result_ttl: args.result_ttl,
        memory_budget: args.compute_memory,
        ..defaults
    };
    config.transport = TransportConfig {
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        keepalive: (!args.keepalive.is_zero()).then_some(args.keepalive),
        max_connections: args
            .max_connections
            .unwrap_or(config.transport.max_connections),
    };
    config.auth = distribusync_server::AuthConfig {
        mode: match args.auth {
            AuthArg::Auto => distribusync_server::AuthMode::Auto,
            AuthArg::On => distribusync_server::AuthMode::On,
            AuthArg::Off => distribusync_server::AuthMode::Off,
        },
        insecure: args.insecure,
        ..distribusync_server::AuthConfig::default()
    };
    let what = match (config.services.files, config.services.compute) {
        (true, true) => format!("{} and compute", args.root.display()),
        (true, false) => args.root.display().to_string(),
        _ => "compute".to_owned(),
    };
    eprintln!(
        "distribusync: serving {what} on http://{}",
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
