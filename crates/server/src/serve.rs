//! Building and running the gRPC server from a [`ServerConfig`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use distribusync_core::limits;
use std::sync::Arc;

use distribusync_proto::v1::{
    admin_server::AdminServer, compute_server::ComputeServer, files_server::FilesServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::auth::{Auth, AuthConfig, AuthLayer, AuthMode, TokenStore};
use crate::compute::{ComputeConfig, ComputeService};
use crate::files::FilesService;
use crate::observe::{Live, ObserveLayer};
use crate::store::{Store, StoreConfig};
use crate::tls::SharedTls;
use crate::transport::{self, KEEPALIVE_TIMEOUT, TransportConfig};

/// Which services one server process hosts (`serve --services`). The
/// default hosts both on one port; the seed's layout of dedicated servers
/// is one process with only `files` and another with only `compute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub files: bool,
    pub compute: bool,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            files: true,
            compute: true,
        }
    }
}

/// Everything `serve` needs; the binary builds it from flags and environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// MASTER: the folder the server owns (created if missing). Not opened
    /// when the Files service is not hosted.
    pub root: PathBuf,
    pub store: StoreConfig,
    pub services: Services,
    pub compute: ComputeConfig,
    /// After shutdown is triggered, how long in-flight requests may take.
    pub shutdown_grace: Duration,
    /// Connection bound and timeouts.
    pub transport: TransportConfig,
    /// When tokens are required (docs/DESIGN.md, "Identity").
    pub auth: AuthConfig,
    /// TLS identity; `None`: plaintext.
    pub tls: Option<crate::TlsIdentity>,
    /// Where to serve the web page (`serve --web-listen`); `None`: nowhere.
    pub web: Option<crate::WebListener>,
    /// Where to serve Prometheus metrics (`GET /metrics`), bound by the
    /// caller (so a taken address is the caller's error to report);
    /// `None`: no metrics are recorded.
    pub metrics: Option<Arc<std::net::TcpListener>>,
    /// Notified once the server is about to answer calls (the store is
    /// open, the services built): `serve` tells systemd it is ready then.
    pub ready: Option<Arc<tokio::sync::Notify>>,
    /// Settings sent here apply while serving (`serve` sends them on
    /// SIGHUP): see [`Reloadable`].
    pub reload: Option<tokio::sync::watch::Receiver<Reloadable>>,
    /// The WebDAV listener's settings (used with [`serve_with_webdav`]).
    pub webdav: crate::WebDavConfig,
    /// The cluster backend (`serve --metadata … --blobs …`), opened by the
    /// caller; `None`: the local backend, MASTER at `root`. With it, `root`
    /// holds only this instance's own state (staging, kept parts, TLS
    /// identity, tokens).
    pub cluster: Option<crate::store::ClusterBackend>,
}

/// The settings a running server takes without a restart (and without
/// dropping a connection): the TLS identity for new handshakes on every
/// listener (gRPC, the web page, WebDAV), and the
/// largest file accepted for uploads that start from then on. Changing
/// between TLS and plaintext, or anything else, needs a restart.
#[derive(Debug, Clone)]
pub struct Reloadable {
    pub tls: Option<crate::TlsIdentity>,
    pub max_file_size: u64,
}

impl ServerConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            store: StoreConfig::default(),
            services: Services::default(),
            compute: ComputeConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            transport: TransportConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            web: None,
            metrics: None,
            ready: None,
            reload: None,
            webdav: crate::WebDavConfig::default(),
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the server folder: {0}")]
    Store(#[from] crate::ServiceError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("web page: {0}")]
    Web(std::io::Error),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("cannot open the token table: {0}")]
    Tokens(#[from] crate::auth::TokenStoreError),
    #[error(
        "refusing to serve {0} without authentication (--auth off) beyond loopback: \
         anyone who reaches the port could read, change and delete every file; \
         use --auth auto (the default) and `distribusync token create`, or pass \
         --insecure to do it anyway"
    )]
    Insecure(std::net::SocketAddr),
    #[error("WebDAV serves the files: it needs the files service (--services files)")]
    WebDavWithoutFiles,
    #[error("{0} is not available on the cluster backend (--metadata, --blobs) yet")]
    NotOnCluster(&'static str),
}

/// Serves on `listener` until `shutdown` completes, then stops accepting,
/// ends watch and callback streams, cancels compute jobs, and waits up to `config.shutdown_grace` for
/// in-flight requests.
///
/// # Errors
/// When MASTER or its index cannot be opened, or the transport fails.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_webdav(listener, None, config, shutdown).await
}

/// [`serve`], and WebDAV on `webdav` (see docs/DESIGN.md, "WebDAV") with
/// the same store, tokens and TLS identity. Tokens are required unless
/// both listeners are on loopback.
///
/// # Errors
/// As [`serve`]; [`ServeError::WebDavWithoutFiles`] when the files
/// service is not hosted.
pub async fn serve_with_webdav(
    listener: TcpListener,
    webdav: Option<TcpListener>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = CancellationToken::new();
    if webdav.is_some() && !config.services.files {
        return Err(ServeError::WebDavWithoutFiles);
    }
    if config.cluster.is_some() {
        if webdav.is_some() {
            return Err(ServeError::NotOnCluster("WebDAV (--webdav-listen)"));
        }
        if config.web.is_some() {
            return Err(ServeError::NotOnCluster("the web page (--web-listen)"));
        }
    }
    let addr = listener.local_addr().ok();
    // The web page's and WebDAV's addresses count too: tokens are required as soon as
    // either is reachable beyond loopback.
    let web_addr = config.web.as_ref().and_then(crate::WebListener::local_addr);
    let addr = match (addr, web_addr) {
        (Some(a), Some(w)) if a.ip().is_loopback() && !w.ip().is_loopback() => Some(w),
        (a, _) => a,
    };
    let webdav_addr = webdav.as_ref().and_then(|l| l.local_addr().ok());
    let loopback = addr.is_none_or(|a| a.ip().is_loopback())
        && webdav_addr.is_none_or(|a| a.ip().is_loopback());
    if config.auth.mode == AuthMode::Off && !loopback {
        let addr = webdav_addr
            .filter(|a| !a.ip().is_loopback())
            .or(addr)
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        if !config.auth.insecure {
            return Err(ServeError::Insecure(addr));
        }
        tracing::warn!(
            %addr,
            "--insecure: serving without authentication beyond loopback; anyone who reaches \
             the port can read, change and delete every file"
        );
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();

    let started = std::time::Instant::now();
    let mut store_handle = None;
    let files = if config.services.files {
        let store = match &config.cluster {
            Some(c) => Store::open_cluster(&config.root, config.store.clone(), c.clone()).await?,
            None => Store::open(&config.root, config.store.clone()).await?,
        };
        store_handle = Some(store.clone());
        health_reporter
            .set_serving::<FilesServer<FilesService>>()
            .await;
        Some(
            FilesServer::new(
                FilesService::new(store, token.clone())
                    .with_idle_timeout(config.transport.idle_timeout),
            )
            .max_decoding_message_size(limits::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(limits::MAX_MESSAGE_SIZE),
        )
    } else {
        None
    };
    let mut compute_handle = None;
    let compute = if config.services.compute {
        health_reporter
            .set_serving::<ComputeServer<ComputeService>>()
            .await;
        let compute = ComputeConfig {
            idle_timeout: config.transport.idle_timeout,
            ..config.compute.clone()
        };
        let service = match &config.cluster {
            Some(cluster) => {
                let queue = cluster.job_queue(compute.job_attempts).await?;
                ComputeService::on_cluster(compute, token.clone(), queue).await?
            }
            None => ComputeService::with_shutdown(compute, token.clone()),
        };
        compute_handle = Some(service.clone());
        Some(service.into_server())
    } else {
        None
    };
    let web_compute = compute_handle.clone();
    let live = Arc::new(Live::default());
    let recorder = config.metrics.as_ref().map(|_| crate::metrics::recorder());
    if let (Some(listener), Some(recorder)) = (&config.metrics, &recorder) {
        let listener = listener
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .map_err(ServeError::Metrics)?;
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics on /metrics");
        let sources = crate::metrics::Sources {
            store: store_handle.clone(),
            compute: compute_handle.clone(),
            live: live.clone(),
            started,
        };
        tokio::spawn(crate::metrics::serve_endpoint(
            listener,
            recorder.clone(),
            sources,
            token.clone(),
        ));
    }
    let observe = ObserveLayer::new(
        &[
            distribusync_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        recorder,
        live.clone(),
    );

    let tokens = if config.auth.mode == AuthMode::Off {
        None
    } else {
        let opened = match &config.cluster {
            // Shared by every instance (docs/DESIGN.md, "Cluster backend").
            Some(cluster) => TokenStore::open_cluster(cluster.database().clone()).await?,
            None => {
                let root = config.root.clone();
                tokio::task::spawn_blocking(move || TokenStore::open(&root))
                    .await
                    .map_err(|e| crate::auth::TokenStoreError::Io {
                        context: "opening the token table".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??
            }
        };
        Some(Arc::new(opened))
    };
    let auth = Auth::new(config.auth.clone(), tokens.clone(), loopback);
    auth.start(token.clone()).await?;
    // Kept to write back the tokens' last use once requests are drained.
    let auth_at_stop = auth.clone();
    tracing::info!(
        mode = ?config.auth.mode,
        required = auth.required(),
        "authentication"
    );
    // One identity for the three listeners: a reload swaps it for all.
    let shared_tls = config.tls.as_ref().map(SharedTls::new);
    if let (Some(listener), Some(store)) = (webdav, store_handle.clone()) {
        tokio::spawn(crate::webdav::run(
            listener,
            store,
            auth.clone(),
            shared_tls.clone(),
            config.webdav.clone(),
            token.clone(),
        ));
    }

    let root = config
        .services
        .files
        .then(|| std::path::absolute(&config.root).unwrap_or_else(|_| config.root.clone()));
    let admin = AdminServer::new(AdminService::new(tokens, auth.clone()).with_status(
        crate::admin::StatusSource {
            store: store_handle.clone(),
            compute: compute_handle.clone(),
            live: live.clone(),
            started,
            root,
            tls: config.tls.is_some(),
        },
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distribusync_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distribusync_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The web page: its own listener, the same store, compute and tokens.
    let web_tasks = tokio_util::task::TaskTracker::new();
    if let Some(web) = config.web.clone() {
        let parts = crate::web::Parts {
            store: store_handle.clone(),
            compute: web_compute,
            auth: auth.clone(),
            tls: shared_tls.clone(),
            root: config.root.clone(),
        };
        crate::web::start(web, parts, token.clone(), web_tasks.clone())
            .await
            .map_err(ServeError::Web)?;
    }
    web_tasks.close();

    let addr = listener.local_addr().ok();
    if let Some(mut reload) = config.reload.clone() {
        let shared_tls = shared_tls.clone();
        let store = store_handle.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = reload.changed() => if changed.is_err() { return },
                }
                let new = reload.borrow_and_update().clone();
                apply_reload(&new, shared_tls.as_ref(), store.as_ref());
            }
        });
    }
    let incoming = transport::incoming(listener, &config.transport, shared_tls);
    let signal_token = token.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        signal_token.cancel();
    };
    tracing::info!(
        addr = ?addr,
        root = %config.root.display(),
        services = ?config.services,
        max_connections = config.transport.max_connections,
        tls = config.tls.is_some(),
        "serving"
    );
    let server = Server::builder()
        .initial_stream_window_size(Some(limits::SERVER_STREAM_WINDOW))
        .initial_connection_window_size(Some(limits::SERVER_CONNECTION_WINDOW))
        .tcp_nodelay(true)
        .max_frame_size(limits::HTTP2_MAX_FRAME)
        // Metrics and the log line of each failed call (see `observe`);
        // outermost, so it sees refusals and the final status codes.
        .layer(observe)
        // A message over the size limit is RESOURCE_EXHAUSTED, not tonic's
        // OUT_OF_RANGE (see `oversize`).
        .layer(crate::oversize::OversizeLayer)
        // Every call but health and reflection needs a token with the
        // method's scope (see `auth`).
        .layer(AuthLayer::new(auth))
        .http2_keepalive_interval(config.transport.keepalive)
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(files)
        .add_optional_service(compute)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    if let Some(ready) = &config.ready {
        ready.notify_one();
    }
    let grace = config.shutdown_grace;
    tokio::select! {
        r = &mut server => r?,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight requests did not finish in time; stopping anyway");
        }
    }
    token.cancel();
    if tokio::time::timeout(grace, web_tasks.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "web requests did not finish in time; stopping anyway"
        );
    }
    if tokio::time::timeout(grace, auth_at_stop.write_back_uses())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "tokens' last use not written back in time; stopping anyway"
        );
    }
    Ok(())
}

/// Applies reloaded settings; see [`Reloadable`].
fn apply_reload(new: &Reloadable, tls: Option<&SharedTls>, store: Option<&Store>) {
    match (tls, &new.tls) {
        (Some(shared), Some(id)) => {
            shared.replace(id);
            tracing::info!(
                fingerprint = %id.fingerprint(),
                not_after = id.not_after(),
                "reloaded the TLS certificate (new connections on every listener use it)"
            );
        }
        (None, None) => {}
        _ => tracing::warn!("switching between TLS and plaintext needs a restart"),
    }
    if let Some(store) = store
        && store.max_file_size() != new.max_file_size
    {
        store.set_max_file_size(new.max_file_size);
        tracing::info!(
            max_file_size = new.max_file_size,
            "reloaded the largest file accepted"
        );
    }
}
