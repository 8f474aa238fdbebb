//! `add`, `sort`, `job`, `jobs` and `serve --services` through the real
//! binary.

use std::io::{BufRead, BufReader};

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Server, cmd, fail, ok, run, tmp};

#[test]
fn add_and_sort_answer_directly() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    assert_eq!(ok(&dir, s, &["add", "2", "3", "4"]), "9\n");
    assert_eq!(ok(&dir, s, &["add", "-1", "2.5"]), "1.5\n");
    assert_eq!(ok(&dir, s, &["add", "1", "2", "--json"]), "{\"sum\":3}\n");
    assert_eq!(ok(&dir, s, &["sort", "5", "1", "4", "--desc"]), "5\n4\n1\n");
    assert_eq!(ok(&dir, s, &["sort"]), "");
    std::fs::write(dir.join("numbers.txt"), "3 -1\n\n2\t10\n").unwrap();
    assert_eq!(
        ok(&dir, s, &["sort", "--file", "numbers.txt"]),
        "-1\n2\n3\n10\n"
    );
    assert_eq!(
        ok(&dir, s, &["sort", "--file", "numbers.txt", "--json"]),
        "{\"sorted\":[-1,2,3,10]}\n"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_the_right_exit_code() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let err = fail(&dir, s, &["add", "1", "two"], 2);
    assert!(err.contains("\"two\""), "{err}");
    let err = fail(&dir, s, &["add", "1"], 2);
    assert!(err.contains("at least two"), "{err}");
    fail(&dir, s, &["add"], 2);
    let err = fail(&dir, s, &["add", "9223372036854775807", "1"], 1);
    assert!(err.contains("overflow"), "{err}");
    std::fs::write(dir.join("bad.txt"), "1 2\n3\n4 oops 5\n").unwrap();
    let err = fail(&dir, s, &["sort", "--file", "bad.txt"], 1);
    assert!(err.contains("line 3") && err.contains("oops"), "{err}");
    let err = fail(&dir, s, &["job", "not-a-job"], 1);
    assert!(err.contains("no job"), "{err}");
    // The server survived all of it.
    assert_eq!(ok(&dir, s, &["add", "1", "1"]), "2\n");
}

#[test]
fn an_exact_sum_that_fits_comes_back_in_any_order_and_negative_zero_keeps_its_sign() {
    // Issue 9, item 7: the first order overflowed while the others answered.
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;
    let max = "9223372036854775807";
    for args in [[max, "1", "-1"], ["1", "-1", max], ["1", max, "-1"]] {
        let mut argv = vec!["add"];
        argv.extend(args);
        assert_eq!(ok(&dir, s, &argv), format!("{max}\n"), "{args:?}");
        argv.push("--async");
        assert_eq!(ok(&dir, s, &argv), format!("{max}\n"), "{args:?} --async");
    }
    let err = fail(&dir, s, &["add", "-1", max, "1", "1"], 1);
    assert!(err.contains("overflow"), "{err}");
    assert_eq!(ok(&dir, s, &["add", "-0.0", "-0.0"]), "-0.0\n");
    assert_eq!(ok(&dir, s, &["add", "-0.0", "-0.0", "--async"]), "-0.0\n");
    assert_eq!(ok(&dir, s, &["add", "-0.0", "0.0"]), "0.0\n");
}

#[test]
fn serve_compute_memory_bounds_what_a_sort_may_hold() {
    let (_t, dir) = tmp();
    let server = Server::start_with(&dir, &["--compute-memory", "1MiB"]);
    let s = &server.addr;
    let text: String = (0..200_000)
        .map(|i| format!("{}\n", (i * 7919) % 200_000))
        .collect();
    std::fs::write(dir.join("big.txt"), text).unwrap();
    let err = fail(&dir, s, &["sort", "--file", "big.txt"], 1);
    assert!(
        err.contains("compute memory budget (1 MiB, serve --compute-memory)"),
        "{err}"
    );
    assert_eq!(ok(&dir, s, &["sort", "3", "1", "2"]), "1\n2\n3\n");
    let out = cmd(&dir, &[], &["serve", "--compute-memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a byte size"),
        "{out:?}"
    );
}

#[test]
fn async_detach_job_and_jobs() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = &server.addr;

    let out = run(&dir, s, &["add", "1", "2", "--async"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "3\n");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("accepted job "), "{err}");
    let async_id = err
        .trim_end()
        .trim_start_matches("accepted job ")
        .to_owned();

    let id = ok(&dir, s, &["sort", "3", "1", "2", "--async", "--detach"])
        .trim()
        .to_owned();
    // The detached job finishes on its own; wait for it with a safety net.
    let started = Instant::now();
    let shown = loop {
        let shown = ok(&dir, s, &["job", &id]);
        if !shown.contains("queued") && !shown.contains("running") {
            break shown;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{shown}");
        std::thread::yield_now();
    };
    assert_eq!(shown, format!("job {id}  sort  succeeded\n1\n2\n3\n"));
    let v: serde_json::Value = serde_json::from_str(&ok(&dir, s, &["job", &id, "--json"])).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["sorted"], serde_json::json!([1, 2, 3]));

    let err = fail(&dir, s, &["job", "cancel", &id], 1);
    assert!(err.contains("already finished: succeeded"), "{err}");

    // Both runs used the persisted client id, so `jobs` lists both.
    let jobs = ok(&dir, s, &["jobs"]);
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
    assert!(jobs.contains(&id) && jobs.contains(&async_id), "{jobs}");
    let other = cmd(
        &dir,
        &[
            ("DISTRIBUSYNC_SERVER", s),
            ("DISTRIBUSYNC_CLIENT_ID", "someone-else"),
        ],
        &["jobs"],
    )
    .output()
    .unwrap();
    assert!(other.status.success());
    assert!(other.stdout.is_empty(), "{other:?}");
}

#[test]
fn a_killed_client_with_a_job_in_flight_leaves_the_server_serving() {
    let (_t, dir) = tmp();
    let server = Server::start(&dir);
    let s = server.addr.clone();
    let text: String = (0..300_000u64)
        .map(|i| format!("{}\n", i.wrapping_mul(2_654_435_761) % 1_000_003))
        .collect();
    std::fs::write(dir.join("big.txt"), text).unwrap();
    let mut child = cmd(
        &dir,
        &[("DISTRIBUSYNC_SERVER", &s)],
        &["sort", "--file", "big.txt", "--async"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let id = line
        .trim_end()
        .strip_prefix("accepted job ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(ok(&dir, &s, &["add", "40", "2"]), "42\n");
    let started = Instant::now();
    loop {
        let shown = ok(&dir, &s, &["job", &id]);
        let head = shown.lines().next().unwrap_or_default().to_owned();
        if head.ends_with("succeeded") {
            assert_eq!(shown.lines().count(), 300_001);
            break;
        }
        assert!(
            head.ends_with("queued") || head.ends_with("running"),
            "{head}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{head}");
        std::thread::yield_now();
    }
}

#[test]
fn dedicated_files_and_compute_servers() {
    let (_t, dir) = tmp();
    let files = Server::start_with(&dir, &["--services", "files"]);
    let compute = Server::start_with(&dir, &["--services", "compute"]);
    let env = [
        ("DISTRIBUSYNC_SERVER", files.addr.as_str()),
        ("DISTRIBUSYNC_COMPUTE_SERVER", compute.addr.as_str()),
    ];
    std::fs::write(dir.join("a.txt"), b"hello").unwrap();
    for (args, expected) in [
        (&["put", "a.txt"][..], ""),
        (&["ls"][..], "a.txt\n"),
        (&["add", "2", "3"][..], "5\n"),
        (&["sort", "3", "1", "--desc"][..], "3\n1\n"),
        (&["add", "1", "2", "--async"][..], "3\n"),
    ] {
        let out = cmd(&dir, &env, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        if !expected.is_empty() {
            assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{args:?}");
        }
    }
    // --compute-server wins over the environment; each server hosts only
    // its own service.
    let err = fail(&dir, &files.addr, &["add", "1", "2"], 1);
    assert!(err.contains("does not host the Compute service"), "{err}");
    let out = cmd(
        &dir,
        &env,
        &["add", "--compute-server", &files.addr, "1", "2"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The compute-only server has no MASTER of its own to open.
    assert_eq!(ok(&dir, &compute.addr, &["add", "1", "1"]), "2\n");
}
