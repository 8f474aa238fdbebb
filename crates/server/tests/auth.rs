//! Tokens, scopes, confinement and job ownership through a real server on
//! 127.0.0.1:0 and raw gRPC clients that send `authorization` themselves
//! (the table of every RPC against every kind of token runs over TLS).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::TestServer;
use distribusync_core::token::Scopes;
use distribusync_proto::v1::{
    self, admin_client::AdminClient, compute_client::ComputeClient, files_client::FilesClient,
};
use distribusync_server::auth::{NewToken, TokenStore};
use distribusync_server::{AuthConfig, AuthMode, ServerConfig, TlsIdentity};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const T: Duration = Duration::from_secs(20);

/// Makes a token on `root` as `distribusync token create` does.
fn make(root: &Path, name: &str, scopes: &str, prefix: Option<&str>) -> String {
    let store = TokenStore::open(root).expect("token table");
    let new = NewToken::parse(name, scopes, prefix, None, SystemTime::now()).expect("valid");
    store
        .create(&new, SystemTime::now())
        .expect("create")
        .0
        .reveal()
        .to_owned()
}

fn revoke(root: &Path, name: &str) {
    TokenStore::open(root)
        .expect("token table")
        .revoke(name, SystemTime::now())
        .expect("revoke");
}

fn config(root: &Path) -> ServerConfig {
    let mut c = ServerConfig::new(root);
    c.auth = AuthConfig {
        failure_burst: 100_000,
        ..AuthConfig::default()
    };
    c
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

/// A TLS channel to the server at `addr` (given as http://), trusting the
/// certificate whose fingerprint is `pin`.
async fn tls_channel(addr: &str, pin: distribusync_core::Fingerprint) -> Channel {
    let url = addr.replacen("http://", "https://", 1);
    distribusync_client::ConnectionConfig::new(
        &url,
        distribusync_client::TlsTrust::Pinned(pin),
        None,
    )
    .connect_bare()
    .await
    .expect("connects over TLS")
}

/// Sends `authorization: <value>` (as the other helper's client will).
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
        }
        Ok(r)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

fn token(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

#[derive(Clone)]
struct Clients {
    ch: Channel,
    auth: Option<String>,
}

impl Clients {
    fn new(ch: &Channel, auth: Option<String>) -> Self {
        Self {
            ch: ch.clone(),
            auth,
        }
    }
    fn files(&self) -> FilesClient<Authed> {
        FilesClient::with_interceptor(self.ch.clone(), Bearer(self.auth.clone()))
    }
    fn compute(&self) -> ComputeClient<Authed> {
        ComputeClient::with_interceptor(self.ch.clone(), Bearer(self.auth.clone()))
    }
    fn admin(&self) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.ch.clone(), Bearer(self.auth.clone()))
    }
}

fn hash(data: &[u8]) -> Vec<u8> {
    blake3::hash(data).as_bytes().to_vec()
}

fn header(path: &str, data: &[u8]) -> v1::UploadRequest {
    v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Header(v1::UploadHeader {
            path: path.into(),
            size: data.len() as u64,
            hash: hash(data),
            ..Default::default()
        })),
    }
}

fn chunk(data: &[u8]) -> v1::UploadRequest {
    v1::UploadRequest {
        msg: Some(v1::upload_request::Msg::Chunk(data.to_vec())),
    }
}

async fn put(c: &Clients, path: &str, data: &[u8]) -> Result<(), Status> {
    let msgs = vec![header(path, data), chunk(data)];
    c.files()
        .upload(futures::stream::iter(msgs))
        .await
        .map(drop)
}

async fn get(c: &Clients, path: &str) -> Result<Vec<u8>, Status> {
    let mut s = c
        .files()
        .download(v1::DownloadRequest {
            path: path.into(),
            offset: 0,
            length: None,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        if let Some(v1::download_response::Msg::Chunk(d)) = m?.msg {
            out.extend(d);
        }
    }
    Ok(out)
}

async fn list(c: &Clients, prefix: &str) -> Result<Vec<String>, Status> {
    let mut s = c
        .files()
        .list(v1::ListRequest {
            prefix: prefix.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        out.extend(m?.files.into_iter().map(|f| f.path));
    }
    Ok(out)
}

fn ints(v: &[i64]) -> Option<v1::Numbers> {
    Some(v1::Numbers::from(v))
}

async fn submit(c: &Clients, client_id: &str) -> Result<String, Status> {
    Ok(c.compute()
        .submit(v1::SubmitRequest {
            client_id: client_id.into(),
            task: Some(v1::submit_request::Task::Sort(v1::SortTask {
                numbers: ints(&[3, 1, 2]),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id)
}

async fn wait_done(c: &Clients, id: &str) {
    tokio::time::timeout(T, async {
        loop {
            let job = c
                .compute()
                .get_job(v1::GetJobRequest { job_id: id.into() })
                .await
                .expect("get job")
                .into_inner();
            if job.state() == v1::JobState::Succeeded {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("job finishes");
}

fn code<T>(r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Every RPC, called as `c`, with arguments that succeed for a caller with
/// the right scope. `job` is a finished sort of that caller's.
async fn call(rpc: &str, c: &Clients, job: &str, n: usize) -> Code {
    let p = |s: &str| format!("t/{n}/{s}");
    match rpc {
        "Upload" => code(put(c, &p("up"), b"data").await),
        "UploadOffset" => code(
            c.files()
                .upload_offset(v1::UploadOffsetRequest {
                    path: p("off"),
                    size: 10,
                    modified: Some(prost_types::Timestamp::default()),
                })
                .await,
        ),
        "UploadBatch" => code(
            c.files()
                .upload_batch(futures::stream::iter(vec![
                    header(&p("b"), b"x"),
                    chunk(b"x"),
                ]))
                .await
                .map(|r| {
                    assert!(matches!(
                        r.get_ref().results[0].result,
                        Some(v1::upload_result::Result::File(_))
                    ))
                }),
        ),
        "Download" => code(get(c, "seed/x").await),
        "Stat" => code(
            c.files()
                .stat(v1::StatRequest {
                    path: "seed/x".into(),
                })
                .await,
        ),
        "List" => code(list(c, "").await),
        "Delete" => code(
            c.files()
                .delete(v1::DeleteRequest {
                    path: format!("seed/del{n}"),
                    if_revision: None,
                })
                .await,
        ),
        "Rename" => code(
            c.files()
                .rename(v1::RenameRequest {
                    from: format!("seed/ren{n}"),
                    to: p("renamed"),
                    ..Default::default()
                })
                .await,
        ),
        "Watch" => code(
            async {
                let mut s = c
                    .files()
                    .watch(v1::WatchRequest { since: 0 })
                    .await?
                    .into_inner();
                s.next().await.expect("an event")
            }
            .await,
        ),
        "Add" => code(
            c.compute()
                .add(v1::AddRequest {
                    numbers: ints(&[1, 2]),
                })
                .await,
        ),
        "Sort" => code(
            async {
                let mut s = c
                    .compute()
                    .sort(futures::stream::iter(vec![v1::SortRequest {
                        numbers: ints(&[2, 1]),
                        ..Default::default()
                    }]))
                    .await?
                    .into_inner();
                while let Some(m) = s.next().await {
                    m?;
                }
                Ok(())
            }
            .await,
        ),
        "Submit" => code(submit(c, "dev").await),
        "Callbacks" => code(
            c.compute()
                .callbacks(v1::CallbacksRequest {
                    client_id: "dev".into(),
                })
                .await,
        ),
        "GetJob" => code(
            c.compute()
                .get_job(v1::GetJobRequest { job_id: job.into() })
                .await,
        ),
        "GetJobResult" => code(
            async {
                let mut s = c
                    .compute()
                    .get_job_result(v1::GetJobRequest { job_id: job.into() })
                    .await?
                    .into_inner();
                while let Some(m) = s.next().await {
                    m?;
                }
                Ok(())
            }
            .await,
        ),
        "CancelJob" => code(
            c.compute()
                .cancel_job(v1::CancelJobRequest { job_id: job.into() })
                .await,
        ),
        "ListJobs" => code(
            c.compute()
                .list_jobs(v1::ListJobsRequest {
                    client_id: String::new(),
                })
                .await,
        ),
        "CreateToken" => code(
            c.admin()
                .create_token(v1::CreateTokenRequest {
                    name: format!("made{n}"),
                    scopes: vec!["read".into()],
                    ..Default::default()
                })
                .await,
        ),
        "ListTokens" => code(c.admin().list_tokens(v1::ListTokensRequest {}).await),
        "RevokeToken" => code(
            c.admin()
                .revoke_token(v1::RevokeTokenRequest {
                    name: "victim".into(),
                })
                .await,
        ),
        other => panic!("no such rpc {other}"),
    }
}

#[tokio::test]
async fn every_rpc_answers_each_kind_of_token_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // RPC, the scope it needs, the code a caller with that scope gets.
    let table: &[(&str, &str, Code)] = &[
        ("Upload", "write", Code::Ok),
        ("UploadOffset", "write", Code::Ok),
        ("UploadBatch", "write", Code::Ok),
        ("Download", "read", Code::Ok),
        ("Stat", "read", Code::Ok),
        ("List", "read", Code::Ok),
        ("Delete", "write", Code::Ok),
        ("Rename", "write", Code::Ok),
        ("Watch", "read", Code::Ok),
        ("Add", "compute", Code::Ok),
        ("Sort", "compute", Code::Ok),
        ("Submit", "compute", Code::Ok),
        ("Callbacks", "compute", Code::Ok),
        ("GetJob", "compute", Code::Ok),
        ("GetJobResult", "compute", Code::Ok),
        // The job has finished: too late to cancel, but it was found.
        ("CancelJob", "compute", Code::FailedPrecondition),
        ("ListJobs", "compute", Code::Ok),
        ("CreateToken", "admin", Code::Ok),
        ("ListTokens", "admin", Code::Ok),
        ("RevokeToken", "admin", Code::Ok),
    ];
    let all = make(root, "all", "read,write,compute,admin", None);
    let mut only = std::collections::HashMap::new();
    let mut but = std::collections::HashMap::new();
    for s in ["read", "write", "compute", "admin"] {
        only.insert(s, make(root, &format!("only-{s}"), s, None));
        let others: Vec<&str> = ["read", "write", "compute", "admin"]
            .into_iter()
            .filter(|x| *x != s)
            .collect();
        but.insert(s, make(root, &format!("but-{s}"), &others.join(","), None));
    }
    let revoked = make(root, "gone", "read,write,compute,admin", None);
    revoke(root, "gone");
    let expired = {
        let store = TokenStore::open(root).unwrap();
        let new = NewToken {
            name: "old".into(),
            scopes: Scopes::all(),
            prefix: None,
            expires: Some(SystemTime::now() - Duration::from_secs(60)),
        };
        store
            .create(&new, SystemTime::now() - Duration::from_secs(3600))
            .unwrap()
            .0
            .reveal()
            .to_owned()
    };
    // The right id with the wrong secret, and a token nobody made.
    let wrong = format!(
        "{}{}",
        &all[..all.len() - 1],
        if all.ends_with('0') { '1' } else { '0' }
    );
    let unknown = format!("dst_{}_{}", "0".repeat(16), "0".repeat(64));
    make(root, "victim", "read", None);

    // Over TLS, as a client across machines talks to it.
    let mut cfg = config(root);
    let identity = TlsIdentity::self_signed(root, &["localhost".to_owned()]).unwrap();
    let pin = identity.fingerprint();
    cfg.tls = Some(identity);
    let server = TestServer::start_with(cfg).await;
    let ch = tls_channel(&server.addr, pin).await;
    let admin = Clients::new(&ch, token(&all));
    put(&admin, "seed/x", b"seed").await.unwrap();
    for n in 0..table.len() {
        put(&admin, &format!("seed/del{n}"), b"d").await.unwrap();
        put(&admin, &format!("seed/ren{n}"), b"r").await.unwrap();
    }
    let compute = Clients::new(&ch, token(&only["compute"]));
    let job = submit(&compute, "dev").await.unwrap();
    wait_done(&compute, &job).await;

    let mut failures = Vec::new();
    for (n, (rpc, scope, right)) in table.iter().enumerate() {
        let cases: Vec<(&str, Option<String>, Code)> = vec![
            ("no token", None, Code::Unauthenticated),
            (
                "malformed",
                Some("Bearer nope".into()),
                Code::Unauthenticated,
            ),
            ("not bearer", Some(all.clone()), Code::Unauthenticated),
            ("wrong secret", token(&wrong), Code::Unauthenticated),
            ("unknown", token(&unknown), Code::Unauthenticated),
            ("expired", token(&expired), Code::Unauthenticated),
            ("revoked", token(&revoked), Code::Unauthenticated),
            ("wrong scope", token(&but[scope]), Code::PermissionDenied),
            ("right scope", token(&only[scope]), *right),
        ];
        for (case, auth, expected) in cases {
            let got = call(rpc, &Clients::new(&ch, auth), &job, n).await;
            if got != expected {
                failures.push(format!("{rpc} with {case}: {got:?}, expected {expected:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Every bad token reads alike; a missing scope is named.
    let a = Clients::new(&ch, token(&wrong))
        .files()
        .stat(v1::StatRequest {
            path: "seed/x".into(),
        })
        .await
        .unwrap_err();
    let b = Clients::new(&ch, None)
        .files()
        .stat(v1::StatRequest {
            path: "seed/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(a.message(), "invalid or missing token");
    assert_eq!(a.message(), b.message());
    let d = Clients::new(&ch, token(&only["read"]))
        .files()
        .delete(v1::DeleteRequest {
            path: "seed/x".into(),
            if_revision: None,
        })
        .await
        .unwrap_err();
    assert!(d.message().contains("`write` scope"), "{}", d.message());
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    server.stop().await;
}

#[tokio::test]
async fn failed_attempts_from_one_address_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let good = make(dir.path(), "good", "read", None);
    let mut cfg = ServerConfig::new(dir.path());
    cfg.auth = AuthConfig {
        failure_burst: 3,
        failures_per_second: 0.0,
        ..AuthConfig::default()
    };
    let server = TestServer::start_with(cfg).await;
    let ch = channel(&server.addr).await;
    let bad = Clients::new(&ch, Some("Bearer wrong".into()));
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code(list(&bad, "").await));
    }
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ]
    );
    // Over the limit even the right token is refused without a look, so
    // an answer cannot tell a right guess.
    assert_eq!(
        code(list(&Clients::new(&ch, token(&good)), "").await),
        Code::ResourceExhausted
    );
    server.stop().await;
}

/// Sends the token under `header` instead of `authorization`.
#[derive(Clone)]
struct InHeader(&'static str, String);

impl tonic::service::Interceptor for InHeader {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        r.metadata_mut()
            .insert(self.0, self.1.parse().expect("ascii"));
        Ok(r)
    }
}

#[tokio::test]
async fn a_token_in_another_header_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let good = make(dir.path(), "good", "read", None);
    let server = TestServer::start_with(config(dir.path())).await;
    let ch = channel(&server.addr).await;
    for (header, value) in [
        ("x-api-key", good.clone()),
        ("token", good.clone()),
        ("x-authorization", format!("Bearer {good}")),
        ("proxy-authorization", format!("Bearer {good}")),
    ] {
        let mut files = FilesClient::with_interceptor(ch.clone(), InHeader(header, value.clone()));
        let err = files
            .stat(v1::StatRequest { path: "x".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{header}");
        assert_eq!(err.message(), "invalid or missing token", "{header}");
    }
    // The same token in the right header works.
    let err = Clients::new(&ch, token(&good))
        .files()
        .stat(v1::StatRequest { path: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_huge_authorization_header_fails_cleanly_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = make(dir.path(), "good", "read", None);
    let server = TestServer::start_with(config(dir.path())).await;
    let ch = channel(&server.addr).await;
    let huge = Clients::new(&ch, Some(format!("Bearer {}", "a".repeat(1 << 20))));
    let got = tokio::time::timeout(T, list(&huge, ""))
        .await
        .expect("answers");
    assert!(got.is_err(), "a 1 MiB header must not pass");
    // A fresh connection with the right token still works.
    let ch = channel(&server.addr).await;
    let files = tokio::time::timeout(T, list(&Clients::new(&ch, token(&good)), ""))
        .await
        .expect("answers");
    assert_eq!(files.expect("lists"), Vec::<String>::new());
    server.stop().await;
}

#[tokio::test]
async fn loopback_without_tokens_stays_open_and_the_first_token_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path())).await;
    let ch = channel(&server.addr).await;
    let anon = Clients::new(&ch, None);
    put(&anon, "a", b"1").await.expect("open with no tokens");
    // Made by another process while the server runs: seen within a second.
    let t = make(dir.path(), "first", "read", None);
    tokio::time::timeout(T, async {
        while code(list(&anon, "").await) != Code::Unauthenticated {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("tokens become required");
    assert_eq!(
        list(&Clients::new(&ch, token(&t)), "").await.unwrap(),
        ["a"]
    );
    server.stop().await;
}

#[tokio::test]
async fn auth_off_beyond_loopback_refuses_to_start_naming_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.auth.mode = AuthMode::Off;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = distribusync_server::serve(listener, cfg.clone(), async {})
        .await
        .expect_err("refuses");
    assert!(err.to_string().contains("--insecure"), "{err}");
    // With --insecure it serves (and stops at once here).
    cfg.auth.insecure = true;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    distribusync_server::serve(listener, cfg, async {})
        .await
        .expect("serves with --insecure");
}

#[tokio::test]
async fn a_running_server_takes_new_tokens_and_drops_revoked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let admin_token = make(root, "admin", "admin,read", None);
    let server = TestServer::start_with(config(root)).await;
    let ch = channel(&server.addr).await;
    let late = make(root, "late", "read", None);
    let late_c = Clients::new(&ch, token(&late));
    tokio::time::timeout(T, async {
        while list(&late_c, "").await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a new token works within the poll");
    // An open callbacks stream of a token ends UNAUTHENTICATED when it is
    // revoked, as an open watch does (below).
    let cb = make(root, "cb", "compute", None);
    let cb_c = Clients::new(&ch, token(&cb));
    let mut callbacks = tokio::time::timeout(T, async {
        loop {
            match cb_c
                .compute()
                .callbacks(v1::CallbacksRequest {
                    client_id: "dev".into(),
                })
                .await
            {
                Ok(s) => break s.into_inner(),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the new token works within the poll");
    revoke(root, "cb");
    let end = tokio::time::timeout(T, callbacks.next())
        .await
        .expect("the callbacks stream ends")
        .expect("with a status");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    // An open watch of the token ends UNAUTHENTICATED when it is revoked.
    let mut watch = late_c
        .files()
        .watch(v1::WatchRequest { since: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.expect("caught up").unwrap();
    assert!(matches!(
        first.event,
        Some(v1::watch_response::Event::CaughtUp(_))
    ));
    revoke(root, "late");
    let end = tokio::time::timeout(T, watch.next())
        .await
        .expect("the watch ends")
        .expect("with a status");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(code(list(&late_c, "").await), Code::Unauthenticated);
    // Through the Admin service: revocation applies at once.
    let admin = Clients::new(&ch, token(&admin_token));
    let made = admin
        .admin()
        .create_token(v1::CreateTokenRequest {
            name: "remote".into(),
            scopes: vec!["read".into()],
            prefix: "p/".into(),
            expires: "90d".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let remote = Clients::new(&ch, token(&made.token));
    assert_eq!(list(&remote, "").await.unwrap(), Vec::<String>::new());
    let dup = admin
        .admin()
        .create_token(v1::CreateTokenRequest {
            name: "remote".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let listed = admin
        .admin()
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: HashSet<String> = listed.tokens.iter().map(|t| t.name.clone()).collect();
    assert!(names.contains("remote") && names.contains("late"));
    assert!(listed.tokens.iter().all(|t| t.created.is_some()));
    admin
        .admin()
        .revoke_token(v1::RevokeTokenRequest {
            name: "remote".into(),
        })
        .await
        .unwrap();
    assert_eq!(code(list(&remote, "").await), Code::Unauthenticated);
    let unknown = admin
        .admin()
        .revoke_token(v1::RevokeTokenRequest {
            name: "remote".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn a_prefix_token_sees_and_changes_only_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let all = make(root, "all", "read,write", None);
    let photos = make(root, "frame", "read,write", Some("photos/"));
    let server = TestServer::start_with(config(root)).await;
    let ch = channel(&server.addr).await;
    let a = Clients::new(&ch, token(&all));
    let p = Clients::new(&ch, token(&photos));
    put(&a, "photos/1.jpg", b"one").await.unwrap();
    put(&a, "docs/secret.txt", b"s").await.unwrap();
    put(&a, "photos.txt", b"beside").await.unwrap();

    // List: only the folder, whatever prefix is asked for.
    assert_eq!(list(&p, "").await.unwrap(), ["photos/1.jpg"]);
    assert_eq!(list(&p, "photos").await.unwrap(), ["photos/1.jpg"]);
    assert_eq!(list(&p, "docs").await.unwrap(), Vec::<String>::new());
    // Outside: PERMISSION_DENIED, the same for a file that exists and one
    // that does not.
    let stat = |path: &str| {
        let p = p.clone();
        let path = path.to_owned();
        async move { p.files().stat(v1::StatRequest { path }).await }
    };
    let there = stat("docs/secret.txt").await.unwrap_err();
    let absent = stat("docs/none.txt").await.unwrap_err();
    assert_eq!(there.code(), Code::PermissionDenied);
    assert_eq!(absent.code(), Code::PermissionDenied);
    assert_eq!(
        there.message().replace("secret", "none"),
        absent.message(),
        "the answer must not tell whether it exists"
    );
    stat("photos/1.jpg").await.expect("inside");
    assert_eq!(
        code(get(&p, "docs/secret.txt").await),
        Code::PermissionDenied
    );
    assert_eq!(get(&p, "photos/1.jpg").await.unwrap(), b"one");
    assert_eq!(code(put(&p, "docs/x", b"x").await), Code::PermissionDenied);
    assert_eq!(
        code(put(&p, "photos.txt", b"x").await),
        Code::PermissionDenied
    );
    put(&p, "photos/2.jpg", b"two").await.expect("inside");
    let batch = p
        .files()
        .upload_batch(futures::stream::iter(vec![
            header("photos/3.jpg", b"3"),
            chunk(b"3"),
            header("docs/3", b"3"),
            chunk(b"3"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        batch.results[0].result,
        Some(v1::upload_result::Result::File(_))
    ));
    match &batch.results[1].result {
        Some(v1::upload_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::PermissionDenied as i32)
        }
        other => panic!("{other:?}"),
    }
    let del = |path: &str| {
        let p = p.clone();
        let path = path.to_owned();
        async move {
            p.files()
                .delete(v1::DeleteRequest {
                    path,
                    if_revision: None,
                })
                .await
        }
    };
    assert_eq!(code(del("docs/secret.txt").await), Code::PermissionDenied);
    assert_eq!(code(del("photos/3.jpg").await), Code::Ok);
    let ren = |from: &str, to: &str| {
        let p = p.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        async move {
            p.files()
                .rename(v1::RenameRequest {
                    from,
                    to,
                    ..Default::default()
                })
                .await
        }
    };
    assert_eq!(
        code(ren("photos/2.jpg", "docs/2.jpg").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(ren("docs/secret.txt", "photos/s").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(ren("photos/2.jpg", "photos/old/2.jpg").await),
        Code::Ok
    );
    assert_eq!(
        list(&a, "").await.unwrap(),
        [
            "docs/secret.txt",
            "photos.txt",
            "photos/1.jpg",
            "photos/old/2.jpg"
        ]
    );

    // Watch: a folder rename across the edge reads as deletes and puts.
    let mut w = p
        .files()
        .watch(v1::WatchRequest { since: u64::MAX })
        .await
        .unwrap()
        .into_inner();
    // since past the end: a resync, then caught up.
    loop {
        let e = w.next().await.unwrap().unwrap();
        if matches!(e.event, Some(v1::watch_response::Event::CaughtUp(_))) {
            break;
        }
    }
    put(&a, "docs/in/a", b"a").await.unwrap();
    put(&a, "docs/in/b", b"b").await.unwrap();
    let mv = |from: &str, to: &str| {
        let a = a.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        async move {
            a.files()
                .rename(v1::RenameRequest {
                    from,
                    to,
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    mv("docs/in", "photos/in").await; // in: two puts
    mv("photos/old", "docs/old").await; // out: one delete
    put(&a, "docs/after", b"z").await.unwrap(); // invisible
    put(&a, "photos/last", b"l").await.unwrap(); // a marker
    let mut seen = Vec::new();
    tokio::time::timeout(T, async {
        loop {
            let e = w.next().await.unwrap().unwrap();
            if let Some(v1::watch_response::Event::Change(c)) = e.event {
                let op = match c.op() {
                    v1::ChangeOp::Put => "put",
                    v1::ChangeOp::Delete => "delete",
                    v1::ChangeOp::Rename => "rename",
                    _ => "?",
                };
                let done = c.path == "photos/last";
                seen.push(format!("{op} {}", c.path));
                if done {
                    return;
                }
            }
        }
    })
    .await
    .expect("changes arrive");
    assert_eq!(
        seen,
        [
            "put photos/in/a",
            "put photos/in/b",
            "delete photos/old/2.jpg",
            "put photos/last"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn two_identities_never_see_each_others_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let alice_t = make(root, "alice", "compute", None);
    let bob_t = make(root, "bob", "compute", None);
    let server = TestServer::start_with(config(root)).await;
    let ch = channel(&server.addr).await;
    let alice = Clients::new(&ch, token(&alice_t));
    let bob = Clients::new(&ch, token(&bob_t));
    // Bob listens for callbacks under the same client id Alice uses.
    let mut bob_events = bob
        .compute()
        .callbacks(v1::CallbacksRequest {
            client_id: "laptop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut alice_events = alice
        .compute()
        .callbacks(v1::CallbacksRequest {
            client_id: "laptop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let job = submit(&alice, "laptop").await.unwrap();
    let ev = tokio::time::timeout(T, alice_events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.job.unwrap().job_id, job);
    wait_done(&alice, &job).await;

    let not_found = |r: Result<(), Status>| r.unwrap_err().code() == Code::NotFound;
    assert!(not_found(
        bob.compute()
            .get_job(v1::GetJobRequest {
                job_id: job.clone()
            })
            .await
            .map(drop)
    ));
    assert!(not_found(
        bob.compute()
            .cancel_job(v1::CancelJobRequest {
                job_id: job.clone()
            })
            .await
            .map(drop)
    ));
    assert!(not_found(
        bob.compute()
            .get_job_result(v1::GetJobRequest {
                job_id: job.clone()
            })
            .await
            .map(drop)
    ));
    for client_id in ["", "laptop"] {
        let bobs = bob
            .compute()
            .list_jobs(v1::ListJobsRequest {
                client_id: client_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(bobs.jobs.is_empty(), "{client_id:?}: {:?}", bobs.jobs);
        let alices = alice
            .compute()
            .list_jobs(v1::ListJobsRequest {
                client_id: client_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(alices.jobs.len(), 1);
    }
    // Bob's stream got nothing: a job of his own arrives first.
    let own = submit(&bob, "laptop").await.unwrap();
    let ev = tokio::time::timeout(T, bob_events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.job.unwrap().job_id, own);

    // Revoking Bob ends his callback stream, saying why.
    revoke(root, "bob");
    let end = tokio::time::timeout(T, bob_events.next())
        .await
        .expect("ends")
        .expect("a status");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    server.stop().await;
}
