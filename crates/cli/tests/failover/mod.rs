//! `--server a,b`: several servers that share their state (issue 12). A
//! client connects to the first that answers and, when its server goes
//! away, continues on the next. (The two servers here have separate
//! folders, so where a file lands shows which one served a request.)

use super::*;

/// A port on which nothing listens.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[test]
fn a_command_uses_the_first_server_of_the_list_that_answers() {
    let (_t, dir) = tmp();
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let mut a = Server::start(&a_dir);
    let b = Server::start(&b_dir);
    let both = format!("{},{}", a.addr, b.addr);
    std::fs::write(dir.join("one.txt"), b"one").unwrap();
    std::fs::write(dir.join("two.txt"), b"two").unwrap();

    ok(&dir, &both, &["put", "one.txt"]);
    assert!(a_dir.join("MASTER/one.txt").exists());
    assert!(!b_dir.join("MASTER/one.txt").exists());

    // The first server is gone: the same command goes to the second.
    a.terminate();
    ok(&dir, &both, &["put", "two.txt"]);
    assert_eq!(std::fs::read(b_dir.join("MASTER/two.txt")).unwrap(), b"two");
    // Also when the first address never answered at all.
    let listed = ok(&dir, &format!("{},{}", dead_addr(), b.addr), &["ls"]);
    assert!(listed.contains("two.txt"), "{listed}");
}

#[test]
fn no_server_of_the_list_answering_names_them_all_in_one_line() {
    let (_t, dir) = tmp();
    let (x, y) = (dead_addr(), dead_addr());
    let err = fail(&dir, &format!("{x},{y}"), &["ls"], 1);
    assert!(err.contains(&x) && err.contains(&y), "{err}");

    let err = fail(&dir, &format!("https://127.0.0.1:1,{y}"), &["ls"], 1);
    assert!(err.contains("must all be https:// or all http://"), "{err}");
}

#[test]
fn a_long_running_client_continues_on_the_next_server_when_its_own_dies() {
    use distribusync_client::{ConnectionConfig, FilesClient};
    use distribusync_core::RemotePath;
    let (_t, dir) = tmp();
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let mut a = Server::start(&a_dir);
    let b = Server::start(&b_dir);
    std::fs::write(dir.join("f.txt"), b"f").unwrap();
    ok(&dir, &a.addr, &["put", "f.txt", "on-a.txt"]);
    ok(&dir, &b.addr, &["put", "f.txt", "on-b.txt"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let files =
            FilesClient::lazy(ConnectionConfig::plain(&format!("{},{}", a.addr, b.addr))).unwrap();
        let on_a = RemotePath::parse("on-a.txt").unwrap();
        let on_b = RemotePath::parse("on-b.txt").unwrap();
        files.stat(&on_a).await.expect("served by the first server");
        a.terminate();
        // What was in flight when the connection broke fails once; the
        // next connection goes to the second server.
        let mut tries = 0;
        loop {
            tries += 1;
            match files.stat(&on_b).await {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("never reached the second server: {e}"),
            }
        }
        // It stays there: the first server's file is not found on it.
        assert!(files.stat(&on_a).await.is_err());
    });
}
