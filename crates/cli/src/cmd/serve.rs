//! `distribusync serve`.

use std::net::SocketAddr;

use anyhow::Context;
use distribusync_server::{ComputeConfig, ServerConfig, Services, TlsIdentity, TransportConfig};

use crate::UsageError;
use crate::cli::{AuthArg, ServeArgs, Service, TlsMode};

/// Whether the server speaks TLS: `--tls on/off`, or with `auto` on
/// unless it listens on loopback only (a certificate given means on).
fn tls_wanted(args: &ServeArgs) -> bool {
    match args.tls {
        TlsMode::On => true,
        TlsMode::Off => false,
        TlsMode::Auto => args.tls_cert.is_some() || exposed(args).is_some(),
    }
}

/// The first address (gRPC, the web page, then WebDAV) beyond loopback,
/// if any.
fn exposed(args: &ServeArgs) -> Option<SocketAddr> {
    std::iter::once(args.listen)
        .chain(args.web_listen)
        .chain(args.webdav_listen)
        .find(|a| !a.ip().is_loopback())
}

/// The names a generated certificate is made for: `--tls-name`, else the
/// host name, `localhost` and the listen address (when it is one address,
/// not 0.0.0.0 / ::).
fn tls_names(args: &ServeArgs) -> Vec<String> {
    if !args.tls_names.is_empty() {
        return args.tls_names.clone();
    }
    let mut names = Vec::new();
    if let Some(host) = hostname::get().ok().and_then(|h| h.into_string().ok()) {
        names.push(host);
    }
    names.push("localhost".to_owned());
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    if let Some(w) = args.webdav_listen.filter(|w| !w.ip().is_unspecified()) {
        names.push(w.ip().to_string());
    }
    names.dedup();
    names
}

/// The identity to serve TLS with: the operator's files, else the one kept
/// under the root (made now if there is none).
fn identity(args: &ServeArgs) -> anyhow::Result<TlsIdentity> {
    Ok(match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key)?,
        _ => TlsIdentity::self_signed(&args.root, &tls_names(args))?,
    })
}

/// The refusal to serve plaintext beyond loopback.
fn insecure_refusal(listen: SocketAddr) -> UsageError {
    UsageError(format!(
        "serve: refusing to listen on {listen} without TLS: anyone who can reach it could read and change the traffic; \
         leave TLS on (the default off loopback), or pass --insecure to serve plaintext anyway"
    ))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.services.is_empty() {
        return Err(UsageError("serve: --services needs files, compute or both".into()).into());
    }
    if let (AuthArg::Off, Some(addr), false) = (args.auth, exposed(&args), args.insecure) {
        let refusal = distribusync_server::ServeError::Insecure(addr);
        return Err(UsageError(format!("serve: {refusal}")).into());
    }
    if args.job_lease < std::time::Duration::from_millis(100) {
        return Err(UsageError("serve: --job-lease must be at least 100ms".into()).into());
    }
    if args.print_fingerprint {
        println!("{}", identity(&args)?.fingerprint());
        return Ok(());
    }
    if args.tls == TlsMode::Off && args.tls_cert.is_some() {
        return Err(UsageError("serve: --tls off conflicts with --tls-cert".into()).into());
    }
    if tls_wanted(&args) && args.metadata.is_some() && args.tls_cert.is_none() {
        return Err(UsageError(
            "serve: TLS on the cluster backend (--metadata) needs --tls-cert and --tls-key, the same on every instance: \
             a certificate made by each instance has its own fingerprint, and a client pinned to one would refuse the others"
                .into(),
        )
        .into());
    }
    let tls = if tls_wanted(&args) {
        Some(identity(&args)?)
    } else if let Some(addr) = exposed(&args) {
        if !args.insecure {
            return Err(insecure_refusal(addr).into());
        }
        tracing::warn!(
            listen = %args.listen,
            "serving plaintext beyond loopback (--insecure): anyone on the way can read and change the traffic"
        );
        None
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let cluster = open_cluster(&args).await?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(std::sync::Arc::new(
            std::net::TcpListener::bind(addr).map_err(|e| {
                UsageError(format!("serve: cannot listen for metrics on {addr}: {e}"))
            })?,
        )),
        None => None,
    };
    let open_files = distribusync_server::raise_descriptor_limit();
    tracing::debug!(?open_files, "open-file limit");
    let mut config = ServerConfig::new(&args.root);
    config.cluster = cluster;
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
        job_lease: args.job_lease,
        job_attempts: args.job_attempts,
        hold_claimed_jobs: args.test_hold_jobs,
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
    let files = match (&args.metadata, &args.blobs) {
        (Some(_), Some(blobs)) => format!("the cluster ({blobs})"),
        _ => args.root.display().to_string(),
    };
    let what = match (config.services.files, config.services.compute) {
        (true, true) => format!("{files} and compute"),
        (true, false) => files,
        _ => "compute".to_owned(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "distribusync: serving {what} on {scheme}://{}",
        listener.local_addr().unwrap_or(args.listen)
    );
    if let Some(id) = &tls {
        eprintln!(
            "distribusync: TLS certificate {} (valid until {})\ndistribusync: SHA-256 fingerprint {}",
            id.cert_path().display(),
            id.not_after(),
            id.fingerprint()
        );
    }
    let webdav = match args.webdav_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--webdav-listen)"))?;
            eprintln!(
                "distribusync: WebDAV on {scheme}://{}/ (user name: anything; password: a token)",
                l.local_addr().unwrap_or(addr)
            );
            Some(l)
        }
        None => None,
    };
    if let Some(addr) = args.web_listen {
        let web = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (--web-listen)"))?;
        eprintln!(
            "distribusync: web page on {scheme}://{}/",
            web.local_addr().unwrap_or(addr)
        );
        config.web = Some(distribusync_server::WebListener::new(web)?);
    }
    config.tls = tls;
    if let Some(m) = &metrics {
        eprintln!(
            "distribusync: metrics on http://{}/metrics",
            m.local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string())
        );
    }
    config.metrics = metrics;
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(distribusync_server::Reloadable {
        tls: config.tls.clone(),
        max_file_size: args.max_file_size,
    });
    config.reload = Some(reload_rx);
    tokio::spawn(reload_on_sighup(reload_tx));
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    config.ready = Some(ready.clone());
    // systemd (Type=notify): READY=1 once the server answers, STOPPING=1
    // when it starts draining. Outside systemd these do nothing.
    tokio::spawn(async move {
        ready.notified().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    });
    let shutdown = async {
        shutdown_signal().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    };
    distribusync_server::serve_with_webdav(listener, webdav, config, shutdown)
        .await
        .context("server failed")?;
    Ok(())
}

/// The cluster backend `--metadata` and `--blobs` name, opened (its
/// database and bucket checked); `None` without them. Anything wrong is a
/// usage error (exit 2), one line saying what.
async fn open_cluster(
    args: &ServeArgs,
) -> anyhow::Result<Option<distribusync_server::store::ClusterBackend>> {
    let (Some(metadata), Some(blobs)) = (&args.metadata, &args.blobs) else {
        return Ok(None);
    };
    if !args.services.contains(&Service::Files) {
        return Err(UsageError(
            "serve: --metadata and --blobs hold the files: they need the files service (--services files)"
                .into(),
        )
        .into());
    }
    let refusal = |e: distribusync_server::ServiceError| UsageError(format!("serve: {e}"));
    let config =
        distribusync_server::store::BlobsConfig::from_url(blobs, args.s3_endpoint.as_deref())
            .map_err(refusal)?;
    let max_changes = distribusync_server::store::StoreConfig::default().max_changes;
    let backend = distribusync_server::store::ClusterBackend::open(metadata, &config, max_changes)
        .await
        .map_err(refusal)?;
    Ok(Some(backend))
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

/// On each SIGHUP: reads the command line, environment and `--config` file
/// again and hands the server what it can take live (the TLS certificate,
/// the largest file accepted). A broken file keeps the running settings
/// and says why.
async fn reload_on_sighup(tx: tokio::sync::watch::Sender<distribusync_server::Reloadable>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: no reloads");
        return;
    };
    while hup.recv().await.is_some() {
        match reloaded() {
            Ok(new) => {
                tracing::info!("SIGHUP: settings read again");
                tx.send_replace(new);
            }
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "SIGHUP: reload failed; keeping the running settings"
            ),
        }
    }
}

/// The reloadable settings as the command line, environment and file give
/// them now.
fn reloaded() -> anyhow::Result<distribusync_server::Reloadable> {
    let parsed = crate::config::try_parse(std::env::args_os().collect())?;
    let crate::cli::Command::Serve(args) = parsed.cli.command else {
        anyhow::bail!("not serve");
    };
    if tls_wanted(&args) && args.metadata.is_some() && args.tls_cert.is_none() {
        return Err(UsageError(
            "serve: TLS on the cluster backend (--metadata) needs --tls-cert and --tls-key, the same on every instance: \
             a certificate made by each instance has its own fingerprint, and a client pinned to one would refuse the others"
                .into(),
        )
        .into());
    }
    let tls = if tls_wanted(&args) {
        Some(identity(&args)?)
    } else {
        None
    };
    Ok(distribusync_server::Reloadable {
        tls,
        max_file_size: args.max_file_size,
    })
}
