//! What the token check costs per call (bench/auth.sh; figures in
//! bench/RESULTS.md).
//!
//! 1. The check alone: `Auth::authenticate` on a cached, valid token (and
//!    on a wrong one, and with tokens not required), ns per call.
//! 2. The check in a real call: sequential unary `Add` on 127.0.0.1,
//!    p50 and calls/s, against a server with no tokens (open) and one
//!    that requires a token, alternating which goes first.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use distribusync_proto::v1::{self, compute_client::ComputeClient};
use distribusync_server::auth::{Auth, NewToken, TokenStore};
use distribusync_server::{AuthConfig, ServerConfig};

fn check_alone(root: &std::path::Path) -> anyhow_free::Result<()> {
    let store = std::sync::Arc::new(TokenStore::open(root)?);
    let mut tokens = Vec::new();
    for i in 0..100 {
        let new = NewToken::parse(
            &format!("t{i}"),
            "read,write",
            None,
            None,
            SystemTime::now(),
        )?;
        tokens.push(store.create(&new, SystemTime::now())?.0);
    }
    // No failure limit here: the malformed case measures the check, not
    // the limiter's early refusal.
    let config = AuthConfig {
        failure_burst: u32::MAX,
        failures_per_second: 1e12,
        ..AuthConfig::default()
    };
    let auth = Auth::new(config, Some(store), true);
    auth.refresh()?;
    let header = format!("Bearer {}", tokens[42].reveal());
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let n = 1_000_000;
    for (what, value) in [
        ("valid token (cached)", header.as_bytes().to_vec()),
        ("malformed token", b"Bearer nope".to_vec()),
    ] {
        let start = Instant::now();
        let mut ok = 0usize;
        for _ in 0..n {
            ok += usize::from(auth.authenticate(Some(&value), peer).is_ok());
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!("check alone, {what}: {ns:.0} ns/call ({ok} accepted)");
    }
    let open = Auth::open();
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(open.authenticate(None, peer).is_ok());
    }
    println!(
        "check alone, tokens not required: {:.0} ns/call",
        start.elapsed().as_nanos() as f64 / f64::from(n)
    );
    Ok(())
}

/// Minimal error plumbing for an example (no anyhow in this crate).
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}

async fn start(root: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = ServerConfig::new(root);
    tokio::spawn(async move {
        let _ = distribusync_server::serve(listener, config, async {
            let _ = rx.await;
        })
        .await;
    });
    (addr, tx)
}

async fn adds(addr: &str, token: Option<String>, calls: usize) -> (Duration, f64) {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .expect("uri")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let value: Option<tonic::metadata::MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse().expect("ascii"));
    let mut client = ComputeClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        if let Some(v) = &value {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    });
    let req = || v1::AddRequest {
        numbers: Some(v1::Numbers::from(&[1i64, 2][..])),
    };
    for _ in 0..500 {
        client.add(req()).await.expect("add");
    }
    let mut times = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        client.add(req()).await.expect("add");
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort();
    (times[calls / 2], calls as f64 / total.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow_free::Result<()> {
    let dir = tempfile::tempdir()?;
    check_alone(&dir.path().join("alone"))?;

    let open_root = dir.path().join("open");
    let auth_root = dir.path().join("auth");
    let token = {
        let store = TokenStore::open(&auth_root)?;
        let new = NewToken::parse("bench", "compute", None, None, SystemTime::now())?;
        store.create(&new, SystemTime::now())?.0.reveal().to_owned()
    };
    let (open_addr, _s1) = start(&open_root).await;
    let (auth_addr, _s2) = start(&auth_root).await;
    let calls = 20_000;
    for round in 0..3 {
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_token in order {
            let (p50, rate) = if with_token {
                adds(&auth_addr, Some(token.clone()), calls).await
            } else {
                adds(&open_addr, None, calls).await
            };
            println!(
                "round {round}, add {}: p50 {:.1} µs, {:.0} calls/s",
                if with_token {
                    "with a token  "
                } else {
                    "open, no token"
                },
                p50.as_secs_f64() * 1e6,
                rate
            );
        }
    }
    Ok(())
}
