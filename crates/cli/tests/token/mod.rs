//! `token create|list|revoke` and `serve --auth` through the real binary.

use super::{Server, cmd, fail, ok, run, tmp, wait_until};

/// `token …` on the test's MASTER.
fn token(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let root = dir.join("MASTER");
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--root", root.to_str().unwrap()]);
    cmd(dir, &[], &all).output().unwrap()
}

/// The tokens `token list --json` printed, one JSON value a line.
pub(crate) fn json_rows(out: std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn one_line_exit(out: &std::process::Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("distribusync: ") && err.contains(says),
        "{err}"
    );
}

#[test]
fn token_mistakes_get_one_clear_line_and_the_right_exit_code() {
    let (_t, dir) = tmp();
    one_line_exit(
        &token(&dir, &["create", "a", "--scopes", "read,root"]),
        2,
        "unknown scope `root`",
    );
    one_line_exit(
        &token(
            &dir,
            &["create", "a", "--scopes", "read", "--expires", "soon"],
        ),
        2,
        "--expires `soon`",
    );
    one_line_exit(
        &token(
            &dir,
            &["create", "a", "--scopes", "read", "--expires", "2001-01-01"],
        ),
        2,
        "in the future",
    );
    one_line_exit(
        &token(&dir, &["create", "a b", "--scopes", "read"]),
        2,
        "token name",
    );
    one_line_exit(
        &token(&dir, &["revoke", "nobody"]),
        1,
        "no token named `nobody`",
    );
    let made = token(&dir, &["create", "a", "--scopes", "read"]);
    assert!(made.status.success(), "{made:?}");
    one_line_exit(
        &token(&dir, &["create", "a", "--scopes", "read"]),
        1,
        "already exists",
    );
}

#[test]
fn tokens_made_on_root_while_serving_lock_the_server_and_admin_works_remotely() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    std::fs::write(dir.join("f.txt"), "hello").unwrap();
    // Loopback and no token: the zero-set-up default still works.
    ok(&dir, s, &["put", "f.txt"]);
    // Each mutation is logged once, naming who made it.
    wait_until("the upload logged with its identity", || {
        server.logged(&["who=local", "uploaded", "f.txt"])
    });
    let made = token(
        &dir,
        &[
            "create",
            "boss",
            "--scopes",
            "admin,read",
            "--expires",
            "90d",
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let boss = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(boss.starts_with("dst_"), "{boss}");
    // The running server requires tokens within a second or so.
    wait_until("tokens to become required", || {
        let out = run(&dir, s, &["ls"]);
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("invalid or missing token")
    });
    // Remotely, with the admin token.
    let remote = |args: &[&str], token: &str| {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", s]);
        cmd(&dir, &[("DISTRIBUSYNC_TOKEN", token)], &all)
            .output()
            .unwrap()
    };
    let out = remote(
        &["create", "frame", "--scopes", "read", "--prefix", "photos/"],
        &boss,
    );
    assert!(out.status.success(), "{out:?}");
    let rows = json_rows(remote(&["list", "--json"], &boss));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let frame = rows.iter().find(|r| r["name"] == "frame").unwrap();
    assert_eq!(frame["prefix"], "photos/");
    assert_eq!(frame["scopes"], "read");
    let boss_row = rows.iter().find(|r| r["name"] == "boss").unwrap();
    assert!(boss_row["expires"].is_string() && boss_row["created"].is_string());
    one_line_exit(&remote(&["revoke", "nobody"], &boss), 1, "no token named");
    // --root with --server would be ignored: refused, and nothing made.
    let root = dir.join("MASTER");
    one_line_exit(
        &remote(
            &[
                "create",
                "x",
                "--scopes",
                "read",
                "--root",
                root.to_str().unwrap(),
            ],
            &boss,
        ),
        2,
        "--root",
    );
    one_line_exit(
        &remote(&["--root", root.to_str().unwrap(), "list"], &boss),
        2,
        "give one of them",
    );
    one_line_exit(
        &remote(&["list"], "dst_nope"),
        1,
        "invalid or missing token",
    );
    // The plain table names every column.
    let table = String::from_utf8(token(&dir, &["list"]).stdout).unwrap();
    for col in [
        "NAME",
        "SCOPES",
        "PREFIX",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "frame",
        "photos/",
    ] {
        assert!(table.contains(col), "{col}: {table}");
    }
    let out = token(&dir, &["revoke", "boss"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the revoked token to stop working", || {
        !remote(&["list"], &boss).status.success()
    });
}

#[test]
fn serve_with_auth_off_beyond_loopback_refuses_naming_insecure() {
    let (_t, dir) = tmp();
    let err = fail(
        &dir,
        "http://127.0.0.1:1",
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--auth",
            "off",
            "--root",
            "M",
        ],
        2,
    );
    assert!(err.contains("--insecure"), "{err}");
    assert!(!dir.join("M").exists(), "nothing made before refusing");
}

#[test]
fn serve_auth_on_requires_a_token_even_on_loopback() {
    let (_t, dir) = tmp();
    let server = Server::start_with(&dir, &["--auth", "on"]);
    let out = run(&dir, &server.addr, &["ls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid or missing token"));
}

/// A token's last use survives a clean stop (SIGTERM) of the server that
/// saw it: it is written back once requests are drained, not only every
/// few seconds while serving.
#[test]
fn a_tokens_last_use_is_kept_when_the_server_stops_cleanly() {
    let (_t, dir) = tmp();
    let made = token(&dir, &["create", "laptop", "--scopes", "read"]);
    assert!(made.status.success(), "{made:?}");
    let laptop = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(
        token(&dir, &["create", "idle", "--scopes", "read"])
            .status
            .success()
    );
    let mut server = Server::start(&dir);
    let used = cmd(
        &dir,
        &[
            ("DISTRIBUSYNC_SERVER", server.addr.as_str()),
            ("DISTRIBUSYNC_TOKEN", laptop.as_str()),
        ],
        &["ls"],
    )
    .output()
    .unwrap();
    assert!(used.status.success(), "{used:?}");
    assert!(server.terminate().success());
    let rows = json_rows(token(&dir, &["list", "--json"]));
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert!(row("laptop")["last_used"].is_string(), "{rows:?}");
    assert!(row("idle")["last_used"].is_null(), "{rows:?}");
}
