//! `serve --metadata … --blobs …` through the real binary: two server
//! processes on one PostgreSQL database and one S3 bucket serve the same
//! files; bad input is one line and exit code 2.
//!
//! PostgreSQL and SeaweedFS are real servers, started once for this test
//! binary by the server crate's harnesses.

mod faults;
mod jobs;
mod tokens;

#[path = "../../../server/tests/common/postgres.rs"]
mod postgres;
#[path = "../../../server/tests/common/seaweedfs.rs"]
mod seaweedfs;

use std::path::Path;

use postgres::postgres;
use seaweedfs::seaweedfs;

use super::{BIN, Server, noise, ok, tmp};

const KEYS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", seaweedfs::ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", seaweedfs::SECRET_KEY),
];

/// `serve` on the cluster backend with `env`; its exit code and stderr,
/// for a server that must refuse to start.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.join("MASTER"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a refusal: exit 2, one line saying `what` (after the log lines
/// of what did open: `serve` logs at info level).
fn one_line(dir: &Path, args: &[&str], env: &[(&str, &str)], what: &str) {
    let (code, err) = refused(dir, args, env);
    assert_eq!(code, Some(2), "{args:?}: {err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("distribusync: "))
        .collect();
    assert_eq!(said.len(), 1, "one line: {err}");
    assert!(said[0].starts_with("distribusync: serve: "), "{err}");
    assert!(
        said[0].contains(what),
        "{args:?}: expected {what:?} in {err}"
    );
}

#[test]
fn serve_on_a_cluster_refuses_bad_input_with_one_line_and_exit_code_2() {
    let (_t, dir) = tmp();
    let endpoint = seaweedfs().endpoint.clone();
    let bucket = format!("s3://{}", seaweedfs().bucket());
    let url = postgres().database("refusals");
    let flags = |metadata: &str, blobs: &str| -> Vec<String> {
        vec![
            "--metadata".into(),
            metadata.into(),
            "--blobs".into(),
            blobs.into(),
            "--s3-endpoint".into(),
            endpoint.clone(),
        ]
    };
    let run = |args: Vec<String>, env: &[(&str, &str)], what: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        one_line(&dir, &args, env, what);
    };
    run(flags("mysql://x", &bucket), &KEYS, "not a PostgreSQL URL");
    run(
        flags("postgres://postgres@127.0.0.1:1/nothing", &bucket),
        &KEYS,
        "cannot reach the metadata database",
    );
    run(flags(&url, "http://bucket"), &KEYS, "expected s3://BUCKET");
    run(flags(&url, &bucket), &[], "set AWS_ACCESS_KEY_ID");
    run(flags(&url, "s3://no-such-bucket"), &KEYS, "no such bucket");
    run(
        flags(&url, &bucket),
        &[
            ("AWS_ACCESS_KEY_ID", seaweedfs::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ],
        "credentials",
    );
    // A database a newer release wrote.
    let newer = postgres().database("newer");
    postgres().sql(
        &newer,
        "CREATE TABLE distribusync_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL); \
         INSERT INTO distribusync_schema VALUES (1, 99);",
    );
    run(flags(&newer, &bucket), &KEYS, "schema version 99");
    // TLS without a certificate given to every instance.
    let mut tls = flags(&url, &bucket);
    tls.extend(["--tls".into(), "on".into()]);
    run(tls, &KEYS, "needs --tls-cert and --tls-key");
    // One without the other is a usage error too.
    let (code, _) = refused(&dir, &["--metadata", &url], &KEYS);
    assert_eq!(code, Some(2));
}

#[test]
fn two_serve_processes_on_one_cluster_serve_the_same_files() {
    let (_t, dir) = tmp();
    let url = postgres().database("two_processes");
    let bucket = format!("s3://{}", seaweedfs().bucket());
    let endpoint = seaweedfs().endpoint.clone();
    let args = [
        "--metadata",
        url.as_str(),
        "--blobs",
        bucket.as_str(),
        "--s3-endpoint",
        endpoint.as_str(),
    ];
    let (da, db) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let a = Server::start_env(&da, &args, &KEYS);
    let b = Server::start_env(&db, &args, &KEYS);
    let data = noise(5 << 20, 12);
    std::fs::write(dir.join("report.bin"), &data).unwrap();
    ok(&dir, &a.addr, &["put", "report.bin", "docs/report.bin"]);
    ok(&dir, &b.addr, &["get", "docs/report.bin", "back.bin"]);
    assert!(
        std::fs::read(dir.join("back.bin")).unwrap() == data,
        "the bytes read through B differ from those sent through A"
    );
    ok(&dir, &b.addr, &["mv", "docs", "archive"]);
    assert_eq!(ok(&dir, &a.addr, &["ls"]), "archive/report.bin\n");
    ok(&dir, &a.addr, &["rm", "archive/report.bin"]);
    assert_eq!(ok(&dir, &b.addr, &["ls"]), "");
}
