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
        TlsMode::Auto => args.tls_cert.is_some() || !all_loopback(args),
    }
}

/// True when every listen address (gRPC and WebDAV) is loopback.
fn all_loopback(args: &ServeArgs) -> bool {
    args.listen.ip().is_loopback() && args.webdav_listen.is_none_or(|a| a.ip().is_loopback())
}

/// The first listen address beyond loopback (for messages).
fn exposed(args: &ServeArgs) -> SocketAddr {
    args.webdav_listen
        .filter(|a| !a.ip().is_loopback())
        .unwrap_or(args.listen)
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
    if args.auth == AuthArg::Off && !all_loopback(&args) && !args.insecure {
        let refusal = distribusync_server::ServeError::Insecure(exposed(&args));
        return Err(UsageError(format!("serve: {refusal}")).into());
    }
    if args.print_fingerprint {
        println!("{}", identity(&args)?.fingerprint());
        return Ok(());
    }
    if args.tls == TlsMode::Off && args.tls_cert.is_some() {
        return Err(UsageError("serve: --tls off conflicts with --tls-cert".into()).into());
    }
    let tls = if tls_wanted(&args) {
        Some(identity(&args)?)
    } else if !all_loopback(&args) {
        if !args.insecure {
            return Err(insecure_refusal(exposed(&args)).into());
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
    config.tls = tls;
    distribusync_server::serve_with_webdav(listener, webdav, config, shutdown_signal())
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
