//! The token a `ConnectionConfig` carries reaches the server on every
//! request: unary, client- and server-streaming, Watch, the compute
//! callback stream, and the requests of a lazy channel after the server
//! came back (a reconnect). The server here is the real Files and Compute
//! services behind a layer that records each request's `authorization`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distribusync_client::{ComputeClient, ConnectionConfig, FilesClient, TlsTrust, Token};
use distribusync_core::RemotePath;
use distribusync_proto::v1::files_server::FilesServer;
use distribusync_server::files::FilesService;
use distribusync_server::store::{Store, StoreConfig};
use distribusync_server::{ComputeConfig, ComputeService};
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// Serves Files and Compute on `listener` until `stop`, recording the
/// authorization header of every request into `seen`.
async fn serve(
    root: std::path::PathBuf,
    listener: tokio::net::TcpListener,
    seen: Seen,
    stop: CancellationToken,
) {
    let store = Store::open(&root, StoreConfig::default()).await.unwrap();
    let record = move |req: tonic::Request<()>| {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.lock().unwrap().push(auth);
        Ok(req)
    };
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(record))
        .add_service(FilesServer::new(FilesService::new(store, stop.clone())))
        .add_service(
            ComputeService::with_shutdown(ComputeConfig::default(), stop.clone()).into_server(),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { stop.cancelled().await },
        )
        .await
        .unwrap();
}

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

#[tokio::test]
async fn every_request_of_every_kind_carries_the_token_also_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        dir.path().join("M"),
        listener,
        seen.clone(),
        stop.clone(),
    ));

    let token = Token::new("tok-123").unwrap();
    let config = ConnectionConfig::new(
        &format!("http://{addr}"),
        TlsTrust::SystemRoots,
        Some(token),
    );
    let files = FilesClient::lazy(&config).unwrap();
    let local = dir.path().join("a.txt");
    std::fs::write(&local, b"hello").unwrap();
    files
        .upload(&local, &p("a.txt"), None, Arc::new(()))
        .await
        .unwrap();
    files
        .download(&p("a.txt"), &dir.path().join("b.txt"), Arc::new(()))
        .await
        .unwrap();
    files.list_all(None).await.unwrap();
    let mut watch = files.watch(0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap();
    drop(watch);

    let compute = ComputeClient::connect(&config).await.unwrap();
    compute.add(vec![1i64, 2]).await.unwrap();
    let job = compute.add_async(vec![3i64, 4]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), job)
        .await
        .unwrap()
        .unwrap();

    // The server goes away and comes back on the same address: the lazy
    // channel reconnects and still sends the token.
    stop.cancel();
    server.await.unwrap();
    let before = seen.lock().unwrap().len();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        dir.path().join("M"),
        listener,
        seen.clone(),
        stop.clone(),
    ));
    let mut stat = files.stat(&p("a.txt")).await;
    for _ in 0..50 {
        if stat.is_ok() {
            break;
        }
        stat = files.stat(&p("a.txt")).await;
    }
    stat.unwrap();
    stop.cancel();
    server.await.unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.len() > before && before >= 7,
        "{} requests",
        seen.len()
    );
    assert!(
        seen.iter().all(|a| a.as_deref() == Some("Bearer tok-123")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_plain_address_sends_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        dir.path().join("M"),
        listener,
        seen.clone(),
        stop.clone(),
    ));
    let files = FilesClient::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    files.list_all(None).await.unwrap();
    stop.cancel();
    server.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![None]);
}
