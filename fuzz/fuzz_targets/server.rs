//! Every request message of the Files and Compute services, handled by a
//! real server in this process (the generated tonic servers over a store in
//! a temporary folder, called as tower services with a gRPC body, as hyper
//! would). Input: a method number, a flag byte, then messages, each a
//! 16-bit little-endian length and bytes. Each message is decoded with
//! prost as the method's request type and sent re-encoded when it decodes,
//! as it came when it does not (flag bit 0 sends the bytes unframed).
//!
//! The server must answer every call with a gRPC status (no panic, in the
//! handler or in a task it spawned: libFuzzer aborts on any panic), within
//! a bound for calls that are not subscriptions, and nothing may appear
//! outside ROOT.
#![no_main]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use distribusync_core::limits;
use distribusync_proto::v1 as pb;
use distribusync_proto::v1::files_server::FilesServer;
use distribusync_server::files::FilesService;
use distribusync_server::store::{Store, StoreConfig};
use distribusync_server::{ComputeConfig, ComputeService};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower_service::Service;

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;
type Call = Box<dyn Fn(http::Request<Body>) -> Answer + Send + Sync>;

struct Harness {
    rt: tokio::runtime::Runtime,
    files: Call,
    compute: Call,
    /// `TOP/a/b/root` is ROOT: anything new under TOP outside it escaped.
    top: PathBuf,
    root: PathBuf,
    outside: BTreeSet<PathBuf>,
    _dir: tempfile::TempDir,
}

fn call<S>(svc: S) -> Call
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Box::new(move |req| {
        let mut s = svc.clone();
        Box::pin(s.call(req))
    })
}

/// Every path under `top` except inside `root`.
fn outside(top: &Path, root: &Path) -> BTreeSet<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![top.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)
            .expect("read the test folder")
            .flatten()
        {
            let p = e.path();
            if p == root {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            seen.insert(p);
        }
    }
    seen
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let top = dir.path().to_path_buf();
        let root = top.join("a/b/root");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(top.join("a/canary"), b"outside ROOT").expect("canary");
        let token = CancellationToken::new();
        let store = rt
            .block_on(Store::open(&root, StoreConfig::default()))
            .expect("open the store");
        let files = FilesServer::new(
            FilesService::new(store, token.clone()).with_idle_timeout(Duration::from_secs(2)),
        )
        .max_decoding_message_size(limits::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(limits::MAX_MESSAGE_SIZE);
        let config = ComputeConfig {
            max_numbers: 1 << 16,
            workers: 1,
            memory_budget: 64 << 20,
            sort_run_min: 1 << 10,
            idle_timeout: Duration::from_secs(2),
            ..ComputeConfig::default()
        };
        let compute =
            rt.block_on(async { ComputeService::with_shutdown(config, token).into_server() });
        let outside = outside(&top, &root);
        Harness {
            rt,
            files: call(files),
            compute: call(compute),
            top,
            root,
            outside,
            _dir: dir,
        }
    })
}

/// Decodes `b` as `T` and re-encodes it; `None` if it does not decode.
fn canon<T: Message + Default>(b: &[u8]) -> Option<Vec<u8>> {
    T::decode(b).ok().map(|m| m.encode_to_vec())
}

struct Method {
    files: bool,
    path: &'static str,
    canon: fn(&[u8]) -> Option<Vec<u8>>,
    /// A subscription: the stream stays open while the server runs.
    endless: bool,
    /// The client sends a stream of messages (else exactly one).
    streamed: bool,
}

const fn m(
    files: bool,
    path: &'static str,
    canon: fn(&[u8]) -> Option<Vec<u8>>,
    endless: bool,
    streamed: bool,
) -> Method {
    Method {
        files,
        path,
        canon,
        endless,
        streamed,
    }
}

const METHODS: [Method; 17] = [
    m(
        true,
        "/distribusync.v1.Files/Upload",
        canon::<pb::UploadRequest>,
        false,
        true,
    ),
    m(
        true,
        "/distribusync.v1.Files/UploadOffset",
        canon::<pb::UploadOffsetRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/UploadBatch",
        canon::<pb::UploadRequest>,
        false,
        true,
    ),
    m(
        true,
        "/distribusync.v1.Files/Download",
        canon::<pb::DownloadRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/Stat",
        canon::<pb::StatRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/List",
        canon::<pb::ListRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/Delete",
        canon::<pb::DeleteRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/Rename",
        canon::<pb::RenameRequest>,
        false,
        false,
    ),
    m(
        true,
        "/distribusync.v1.Files/Watch",
        canon::<pb::WatchRequest>,
        true,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/Add",
        canon::<pb::AddRequest>,
        false,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/Sort",
        canon::<pb::SortRequest>,
        false,
        true,
    ),
    m(
        false,
        "/distribusync.v1.Compute/Submit",
        canon::<pb::SubmitRequest>,
        false,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/Callbacks",
        canon::<pb::CallbacksRequest>,
        true,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/GetJob",
        canon::<pb::GetJobRequest>,
        false,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/GetJobResult",
        canon::<pb::GetJobRequest>,
        false,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/CancelJob",
        canon::<pb::CancelJobRequest>,
        false,
        false,
    ),
    m(
        false,
        "/distribusync.v1.Compute/ListJobs",
        canon::<pb::ListJobsRequest>,
        false,
        false,
    ),
];

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").map(|v| {
        let code: i32 = v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("a numeric grpc-status");
        assert!((0..=16).contains(&code), "grpc-status {code}");
        code
    })
}

/// Reads the answer: `Some(code)`, or `None` when a subscription is still
/// open after its first quiet moment.
async fn answer(resp: http::Response<Body>, endless: bool) -> Option<i32> {
    if let Some(code) = status_of(resp.headers()) {
        return Some(code); // trailers-only
    }
    let mut body = resp.into_body();
    let quiet = Duration::from_millis(if endless { 20 } else { 5000 });
    loop {
        match tokio::time::timeout(quiet, body.frame()).await {
            Err(_) if endless => return None,
            Err(_) => panic!("no answer within {quiet:?}"),
            Ok(None) => panic!("the stream ended without a grpc-status"),
            Ok(Some(Err(e))) => panic!("the response body failed: {e}"),
            Ok(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    return Some(status_of(t).expect("trailers carry a grpc-status"));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [method, flags, rest @ ..] = data else {
        return;
    };
    let method = &METHODS[usize::from(*method) % METHODS.len()];
    let mut body = Vec::new();
    let mut rest = rest;
    // Whether every message was a well-formed request of the method's type.
    let mut well_formed = flags & 1 == 0;
    let mut sent = 0;
    while let [a, b, tail @ ..] = rest {
        sent += 1;
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        if flags & 1 == 1 {
            body.extend_from_slice(msg);
        } else {
            let decoded = (method.canon)(msg);
            well_formed &= decoded.is_some();
            let msg = decoded.unwrap_or_else(|| msg.to_vec());
            body.push(0); // not compressed
            body.extend_from_slice(&u32::try_from(msg.len()).expect("small").to_be_bytes());
            body.extend_from_slice(&msg);
        }
    }
    // tonic itself answers INTERNAL to a unary call without one message.
    well_formed &= method.streamed || sent == 1;
    let h = harness();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{}", method.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(Full::new(Bytes::from(body))))
        .expect("a request");
    let svc = if method.files { &h.files } else { &h.compute };
    let code = h.rt.block_on(async {
        let resp = svc(req).await.expect("infallible");
        answer(resp, method.endless).await
    });
    // A well-formed request is never the server's internal error: bad
    // input is INVALID_ARGUMENT or the like (the only INTERNAL a client may
    // cause is a message that does not decode).
    if well_formed {
        assert_ne!(
            code,
            Some(13),
            "{} answered INTERNAL to a well-formed request",
            method.path
        );
    }
    let now = outside(&h.top, &h.root);
    assert_eq!(now, h.outside, "{} wrote outside ROOT", method.path);
});
