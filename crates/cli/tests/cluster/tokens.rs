//! One identity across instances (issue 12): the cluster's tokens live in
//! PostgreSQL, so a token made through any instance (or with `token
//! create --metadata URL`) works on every instance, a revocation through
//! one ends the streams and calls of that token on the others, and jobs
//! stay their submitter's whichever instance is asked.

use std::process::Output;
use std::time::Duration;

use distribusync_proto::v1::{self, compute_client::ComputeClient};
use tonic::transport::Endpoint;

use super::super::token::json_rows;
use super::super::{cmd, tmp};
use super::KEYS;
use super::jobs::{cluster_flags, start};

/// `distribusync ARGS` against `server` with `token`.
fn with_token(dir: &std::path::Path, server: &str, token: &str, args: &[&str]) -> Output {
    cmd(
        dir,
        &[
            ("DISTRIBUSYNC_SERVER", server),
            ("DISTRIBUSYNC_TOKEN", token),
        ],
        args,
    )
    .output()
    .unwrap()
}

/// The token `distribusync token create …` printed.
fn created(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("dst_"), "{token}");
    token
}

/// A Compute client sending `token`.
async fn compute(
    addr: &str,
    token: &str,
) -> ComputeClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let channel = Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    ComputeClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    })
}

#[test]
fn a_token_works_on_every_instance_and_its_revocation_reaches_all_of_them() {
    let (_t, dir) = tmp();
    let (flags, url) = cluster_flags("tokens", 3);
    // Made on the command line, before any instance runs.
    let ops = created(
        cmd(
            &dir,
            &[],
            &[
                "token",
                "create",
                "ops",
                "--scopes",
                "admin",
                "--metadata",
                &url,
            ],
        )
        .output()
        .unwrap(),
    );
    let a = start(&dir, "a", &flags, &KEYS);
    let mut b = start(&dir, "b", &flags, &KEYS);
    // The cluster has a token: both instances require one, even on loopback.
    let refused = with_token(&dir, &b.addr, "dst_nope", &["ls"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid or missing token"),
        "{refused:?}"
    );
    // Made through A, it works on B.
    let laptop = created(with_token(
        &dir,
        &a.addr,
        &ops,
        &[
            "token",
            "create",
            "laptop",
            "--scopes",
            "read,write,compute",
        ],
    ));
    std::fs::write(dir.join("f.txt"), "hello").unwrap();
    b.wait_logged(&["token table read", "live=2"]);
    let put = with_token(&dir, &b.addr, &laptop, &["put", "f.txt"]);
    assert!(put.status.success(), "{put:?}");
    let listed = with_token(&dir, &a.addr, &laptop, &["ls"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "f.txt\n",
        "{listed:?}"
    );
    // A second identity, made on the command line while they run.
    let phone = created(
        cmd(
            &dir,
            &[],
            &[
                "token",
                "create",
                "phone",
                "--scopes",
                "compute",
                "--metadata",
                &url,
            ],
        )
        .output()
        .unwrap(),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Jobs stay their submitter's on every instance.
        let mut laptop_on_a = compute(&a.addr, &laptop).await;
        let job = v1::SubmitRequest {
            client_id: "laptop".into(),
            task: Some(v1::submit_request::Task::Add(v1::AddTask {
                numbers: Some(v1::Numbers::from(&[1i64, 2][..])),
            })),
            ..Default::default()
        };
        let id = laptop_on_a.submit(job).await.unwrap().into_inner().job_id;
        let mut laptop_on_b = compute(&b.addr, &laptop).await;
        let mut phone_on_b = compute(&b.addr, &phone).await;
        let get = |id: &str| v1::GetJobRequest { job_id: id.into() };
        b.wait_logged(&["token table read", "live=3"]);
        let hidden = phone_on_b.get_job(get(&id)).await.unwrap_err();
        assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
        let listed = phone_on_b
            .list_jobs(v1::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.jobs.is_empty(), "{listed:?}");
        laptop_on_b.get_job(get(&id)).await.unwrap();

        // Revoked through B: the stream open on A ends, refused.
        let mut events = laptop_on_a
            .callbacks(v1::CallbacksRequest {
                client_id: "laptop".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let out = with_token(&dir, &b.addr, &ops, &["token", "revoke", "laptop"]);
        assert!(out.status.success(), "{out:?}");
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match events.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the stream on A ended");
        let status = ended.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    });
    let refused = with_token(&dir, &a.addr, &laptop, &["ls"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid or missing token"),
        "{refused:?}"
    );
    // The table as the command line sees it.
    b.terminate();
    let rows = token_rows(&dir, &url);
    let row = rows.iter().find(|r| r["name"] == "laptop").unwrap();
    assert!(row["revoked"].is_string(), "{row}");
    assert_eq!(row["scopes"], "read,write,compute", "{row}");
}

/// `token list --json --metadata URL`, one JSON value a token.
fn token_rows(dir: &std::path::Path, url: &str) -> Vec<serde_json::Value> {
    json_rows(
        cmd(dir, &[], &["token", "list", "--json", "--metadata", url])
            .output()
            .unwrap(),
    )
}

/// When a token was last used reaches the cluster's table, written back
/// in batches and a last time when an instance stops cleanly (SIGTERM):
/// a token used just before the stop shows a last use, one never used
/// shows none.
#[test]
fn a_tokens_last_use_on_an_instance_is_kept_when_it_stops_cleanly() {
    let (_t, dir) = tmp();
    let (flags, url) = cluster_flags("tokens_used", 3);
    let create = |name: &str| {
        created(
            cmd(
                &dir,
                &[],
                &[
                    "token",
                    "create",
                    name,
                    "--scopes",
                    "read",
                    "--metadata",
                    &url,
                ],
            )
            .output()
            .unwrap(),
        )
    };
    let laptop = create("laptop");
    create("idle");
    let mut a = start(&dir, "a", &flags, &KEYS);
    let used = with_token(&dir, &a.addr, &laptop, &["ls"]);
    assert!(used.status.success(), "{used:?}");
    let status = a.terminate();
    assert!(status.success(), "{status:?}");
    let rows = token_rows(&dir, &url);
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert!(
        row("laptop")["last_used"].is_string(),
        "{rows:?} {:#?}",
        a.logs.lock().unwrap()
    );
    assert!(row("idle")["last_used"].is_null(), "{rows:?}");
}
