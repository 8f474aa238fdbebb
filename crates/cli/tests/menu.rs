//! `distribusync menu` driven like a person at a terminal (a pseudo-terminal
//! through rexpect) and like a script (plain pipes), against real servers.
//!
//! Every wait is an expect with a timeout (a safety net); nothing sleeps a
//! fixed time and nothing asserts timings.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};

const BIN: &str = env!("CARGO_BIN_EXE_distribusync");
/// Safety net for every expect.
const TIMEOUT_MS: u64 = 20_000;

/// `distribusync serve` on `listen`; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(root: &Path) -> Self {
        Self::start_at(root, "127.0.0.1:0")
    }

    fn start_at(root: &Path, listen: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--root"])
            .arg(root)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some(i) = line.find("http://") {
                break line[i..].trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // The address shows once the port is bound, a moment before the
        // server answers (it opens its store first); the menu's header
        // probes with a short timeout, so wait until it answers.
        wait_serving(&addr);
        Self { child, addr }
    }
}

/// Waits until the server at `addr` answers a health check of its files
/// service.
fn wait_serving(addr: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = || {
        rt.block_on(distribusync_client::probe(
            addr,
            "distribusync.v1.Files",
            Duration::from_millis(TIMEOUT_MS),
        ))
    };
    wait_until(&format!("the server at {addr} never answered"), || {
        probe() == distribusync_client::Reachability::Serving
    });
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn menu_command(dir: &Path, server: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("menu")
        .current_dir(dir)
        .env("DISTRIBUSYNC_SERVER", server)
        .env_remove("DISTRIBUSYNC_COMPUTE_SERVER")
        .env_remove("DISTRIBUSYNC_SYNC_DIR")
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("TERM", "xterm");
    cmd
}

/// The menu in a pseudo-terminal, showing its main menu.
fn menu_in_terminal(dir: &Path, server: &str) -> PtySession {
    let mut p = spawn_command(menu_command(dir, server), Some(TIMEOUT_MS)).expect("spawns");
    p.exp_string("5) Exit").unwrap();
    p.exp_string("> ").unwrap();
    p
}

/// Sends `line` once `prompt` is showing.
fn answer(p: &mut PtySession, prompt: &str, line: &str) {
    p.exp_string(prompt).unwrap();
    p.send_line(line).unwrap();
}

fn exits_with_zero(p: &PtySession) {
    match p.process().wait().unwrap() {
        WaitStatus::Exited(_, 0) => {}
        other => panic!("menu ended with {other:?}"),
    }
}

#[test]
fn files_menu_uploads_lists_renames_downloads_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    std::fs::write(tmp.path().join("a.txt"), "hello menu\n").unwrap();
    let mut p = menu_in_terminal(tmp.path(), &server.addr);

    p.send_line("1").unwrap();
    answer(&mut p, "files> ", "1");
    answer(&mut p, "local file: ", "a.txt");
    answer(&mut p, "remote name (Enter: a.txt): ", "docs/a.txt");
    p.exp_string("uploaded docs/a.txt  11 bytes  revision 1")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("MASTER/docs/a.txt")).unwrap(),
        "hello menu\n"
    );

    answer(&mut p, "files> ", "5");
    answer(&mut p, "(Enter: everything): ", "");
    p.exp_string("docs/a.txt").unwrap();
    p.exp_string("1 file(s)").unwrap();

    answer(&mut p, "files> ", "4");
    answer(&mut p, "rename: ", "docs/a.txt");
    answer(&mut p, "to (a name, or FOLDER/ to move into it): ", "b.txt");
    p.exp_string("renamed docs/a.txt -> b.txt").unwrap();

    answer(&mut p, "files> ", "2");
    answer(&mut p, "remote file: ", "b.txt");
    answer(&mut p, "save as (Enter: b.txt): ", "copy.txt");
    p.exp_string("downloaded b.txt -> copy.txt (11 bytes)")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("copy.txt")).unwrap(),
        "hello menu\n"
    );

    // An unknown file is reported; the menu carries on.
    answer(&mut p, "files> ", "3");
    answer(&mut p, "remote file: ", "nope.txt");
    p.exp_string("distribusync: delete nope.txt: ").unwrap();
    answer(&mut p, "files> ", "3");
    answer(&mut p, "remote file: ", "b.txt");
    p.exp_string("deleted b.txt").unwrap();
    assert!(!tmp.path().join("MASTER/b.txt").exists());

    // A local file that does not exist.
    answer(&mut p, "files> ", "1");
    answer(&mut p, "local file: ", "missing.txt");
    p.exp_string("distribusync: upload missing.txt: ").unwrap();

    // Ctrl-D exits cleanly from a submenu.
    p.exp_string("files> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn compute_menu_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    let mut p = menu_in_terminal(tmp.path(), &server.addr);

    // Bad choices at the main menu.
    p.send_line("banana").unwrap();
    p.exp_string("Please choose a number from 1 to 5 (not \"banana\")")
        .unwrap();
    answer(&mut p, "> ", "9");
    p.exp_string("Please choose a number from 1 to 5 (not \"9\")")
        .unwrap();

    answer(&mut p, "> ", "2");
    answer(&mut p, "compute> ", "1");
    answer(
        &mut p,
        "numbers (separated by spaces or commas): ",
        "1 2 3.5",
    );
    p.exp_string("sum: 6.5").unwrap();

    answer(&mut p, "compute> ", "2");
    answer(
        &mut p,
        "numbers (separated by spaces or commas): ",
        "5 -1 3",
    );
    answer(&mut p, "largest first? [y/N]: ", "y");
    p.exp_string("sorted: 5 3 -1").unwrap();

    // An invalid list, and an add the server refuses.
    answer(&mut p, "compute> ", "1");
    answer(
        &mut p,
        "numbers (separated by spaces or commas): ",
        "1 two 3",
    );
    p.exp_string("distribusync: numbers: ").unwrap();
    p.exp_string("\"two\" is not a number").unwrap();
    answer(&mut p, "compute> ", "1");
    answer(&mut p, "numbers (separated by spaces or commas): ", "42");
    p.exp_string("distribusync: add: ").unwrap();
    answer(&mut p, "compute> ", "7");
    p.exp_string("Please choose a number from 1 to 3").unwrap();

    // Ctrl-C at a prompt goes back to the main menu; at the main menu it
    // exits cleanly.
    p.exp_string("compute> ").unwrap();
    p.send_control('c').unwrap();
    p.exp_string(" server http://").unwrap();
    p.exp_string("5) Exit").unwrap();
    p.exp_string("> ").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("Bye.").unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn async_result_prints_while_at_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    let mut p = menu_in_terminal(tmp.path(), &server.addr);

    p.send_line("3").unwrap();
    answer(&mut p, "async> ", "2");
    answer(&mut p, "numbers (separated by spaces or commas): ", "9 7 8");
    answer(&mut p, "largest first? [y/N]: ", "");
    p.exp_string("accepted job ").unwrap();
    // The person sits at the Async prompt, starting to type; the result
    // prints there when the server pushes it (the line editor clears the
    // prompt line, prints the result and draws the prompt again, with what
    // was typed so far). Not waiting for the prompt to show: the result may
    // come first, and waiting would skip past it.
    p.send("3").unwrap();
    p.exp_regex(r"\[job [0-9a-f-]+\] sort done: sorted: 7 8 9")
        .unwrap();
    // What was typed survived: Enter now sends "3", which is Back.
    p.send_line("").unwrap();
    p.exp_string(" server http://").unwrap();
    answer(&mut p, "> ", "5");
    p.exp_string("Bye.").unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn server_down_at_start_then_up() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on (yet).
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let addr = format!("http://{listen}");
    let mut p = spawn_command(menu_command(tmp.path(), &addr), Some(TIMEOUT_MS)).unwrap();
    p.exp_string(&format!("server {addr} (unreachable)"))
        .unwrap();
    answer(&mut p, "> ", "2");
    answer(&mut p, "compute> ", "1");
    answer(&mut p, "numbers (separated by spaces or commas): ", "1 2");
    p.exp_string("distribusync: add: cannot reach server")
        .unwrap();
    answer(&mut p, "compute> ", "3");
    answer(&mut p, "> ", "1");
    answer(&mut p, "files> ", "5");
    answer(&mut p, "(Enter: everything): ", "");
    p.exp_string("distribusync: list: cannot reach server")
        .unwrap();
    answer(&mut p, "files> ", "6");
    p.exp_string(&format!("server {addr} (unreachable)"))
        .unwrap();
    p.exp_string("5) Exit").unwrap();
    p.exp_string("> ").unwrap();

    let _server = Server::start_at(&tmp.path().join("MASTER"), &listen);
    p.send_line("2").unwrap();
    answer(&mut p, "compute> ", "3");
    // The header is drawn again, and now finds the server.
    p.exp_string(&format!("server {addr} (connected)")).unwrap();
    answer(&mut p, "> ", "2");
    answer(&mut p, "compute> ", "1");
    answer(&mut p, "numbers (separated by spaces or commas): ", "1 2");
    p.exp_string("sum: 3").unwrap();
    answer(&mut p, "compute> ", "3");
    answer(&mut p, "> ", "1");
    answer(&mut p, "files> ", "5");
    answer(&mut p, "(Enter: everything): ", "");
    p.exp_string("(no files)").unwrap();
    p.exp_string("files> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn auto_sync_from_the_menu_moves_a_file_to_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let master = tmp.path().join("MASTER");
    let server = Server::start(&master);
    let mut p = menu_in_terminal(tmp.path(), &server.addr);

    p.send_line("4").unwrap();
    answer(&mut p, "auto-sync> ", "3");
    p.exp_string("auto-sync: off").unwrap();
    answer(&mut p, "auto-sync> ", "1");
    answer(&mut p, "folder (Enter: ./SYNCHRONIZED): ", "");
    p.exp_string("auto-sync started: ./SYNCHRONIZED").unwrap();
    p.exp_string("auto-sync> ").unwrap();

    std::fs::write(tmp.path().join("SYNCHRONIZED/note.txt"), "synced\n").unwrap();
    // Wait (bounded) for the engine, running inside the menu process, to
    // put the file on the server.
    wait_until("note.txt never reached the server", || {
        std::fs::read_to_string(master.join("note.txt"))
            .ok()
            .as_deref()
            == Some("synced\n")
    });

    // The file is on the server's disk a moment before the engine has the
    // server's answer and records it: ask for the status until it says so.
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    loop {
        p.send_line("3").unwrap();
        p.exp_string("auto-sync of ./SYNCHRONIZED: ").unwrap();
        let (_, action) = p.exp_regex(r"last action: [^\r\n]*").unwrap();
        // Shown whatever it says: a first attempt may have met the file
        // while it was still being written, which the engine reports and
        // then retries.
        p.exp_string("last error: ").unwrap();
        p.exp_string("auto-sync> ").unwrap();
        if action.contains("uploaded note.txt") {
            break;
        }
        assert!(Instant::now() < deadline, "status never showed the upload");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.send_line("4").unwrap();
    p.exp_string("auto-sync: on (./SYNCHRONIZED)").unwrap();
    answer(&mut p, "> ", "4");
    answer(&mut p, "auto-sync> ", "2");
    p.exp_string("auto-sync of ./SYNCHRONIZED stopped").unwrap();
    answer(&mut p, "auto-sync> ", "4");
    p.exp_string("auto-sync: off").unwrap();
    answer(&mut p, "> ", "5");
    p.exp_string("Bye.").unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

/// Collects a child's output on a thread; `wait_for` blocks (bounded) until
/// some text has appeared.
struct Collected {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Collected {
    fn new(mut from: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
        while !self.text().contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!("no {needle:?} in:\n{}", self.text()),
            }
        }
    }

    fn rest(mut self) -> String {
        while let Ok(chunk) = self.rx.recv_timeout(Duration::from_millis(TIMEOUT_MS)) {
            self.seen.extend(chunk);
        }
        self.text()
    }
}

#[test]
fn driven_through_pipes_it_prints_plain_text() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    let mut child = menu_command(tmp.path(), &server.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = Collected::new(child.stdout.take().unwrap());
    let err = Collected::new(child.stderr.take().unwrap());

    stdin
        .write_all(b"x\n2\n1\n4 5 6\n3\n3\n1\n20 22\n")
        .unwrap();
    out.wait_for("accepted job");
    // The result arrives while the Async prompt waits for input.
    out.wait_for("add done: sum: 42");
    stdin.write_all(b"3\n1\n5\n\n6\n").unwrap();
    out.wait_for("(no files)");
    // End of input: exit 0.
    drop(stdin);
    let status = child.wait().unwrap();
    let out = out.rest();
    let err = err.rest();
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    assert!(out.contains("(connected)"), "{out}");
    assert!(out.contains("Please choose a number from 1 to 5"), "{out}");
    assert!(out.contains("sum: 15"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[job ") && l.ends_with("add done: sum: 42")),
        "the async result is a line of its own:\n{out}"
    );
    assert!(!out.contains('\x1b'), "escape codes on stdout:\n{out:?}");
    assert!(!err.contains('\x1b'), "escape codes on stderr:\n{err:?}");
}

#[test]
fn a_script_gets_its_async_results_and_bad_lines_are_asked_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    std::fs::write(tmp.path().join("a.txt"), "a\n").unwrap();
    let mut child = menu_command(tmp.path(), &server.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = Collected::new(child.stdout.take().unwrap());
    let err = Collected::new(child.stderr.take().unwrap());
    // Upload, with a line that is not UTF-8 first; rename into a folder;
    // an async add with commas; then the input ends at once.
    stdin.write_all(b"1\n1\ncaf\xe9.txt\na.txt\n\n").unwrap();
    stdin.write_all(b"4\na.txt\ndocs/\n6\n").unwrap();
    stdin.write_all(b"3\n1\n1,2,3\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let (out, err) = (out.rest(), err.rest());
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    assert!(err.contains("not valid UTF-8; try again"), "{err}");
    assert!(out.contains("uploaded a.txt"), "{out}");
    assert!(out.contains("renamed a.txt -> docs/a.txt"), "{out}");
    assert!(tmp.path().join("MASTER/docs/a.txt").is_file());
    // The result came before the goodbye.
    let result = out
        .find("add done: sum: 6")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(result < out.find("Bye.").unwrap(), "{out}");
}

/// Sizes of the regular files under `dir`, in its sub-folders too.
fn file_sizes(dir: &Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return sizes;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => sizes.extend(file_sizes(&entry.path())),
            Ok(t) if t.is_file() => sizes.extend(entry.metadata().map(|m| m.len())),
            _ => {}
        }
    }
    sizes
}

/// Polls `done` until it holds; panics with `what` after [`TIMEOUT_MS`]
/// (a safety net: the state polled is what the test waits for).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_during_a_transfer_cancels_it_and_the_menu_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    // Big enough that the upload is still running when Ctrl-C comes (a
    // sparse file: no disk used here, and the Ctrl-C comes long before
    // the server has stored much).
    let big = std::fs::File::create(tmp.path().join("big.bin")).unwrap();
    big.set_len(64 << 30).unwrap();
    let mut p = menu_in_terminal(tmp.path(), &server.addr);
    p.send_line("1").unwrap();
    answer(&mut p, "files> ", "1");
    answer(&mut p, "local file: ", "big.bin");
    answer(&mut p, "remote name (Enter: big.bin): ", "");
    // The progress bar is up: the transfer runs.
    p.exp_string("big.bin [").unwrap();
    // The server keeps an interrupted upload only once it has received
    // something of it: wait for the first bytes to land in a staging file
    // (staging is split into shard folders, whose own sizes say nothing).
    let staging = tmp.path().join("MASTER/.distribusync/staging");
    wait_until("the upload never reached the server", || {
        file_sizes(&staging).iter().any(|&len| len > 0)
    });
    p.send_control('c').unwrap();
    p.exp_string("upload: interrupted").unwrap();
    // Still in the menu, and nothing reached the server.
    answer(&mut p, "files> ", "5");
    answer(&mut p, "folder or file (Enter: everything): ", "");
    p.exp_string("(no files)").unwrap();
    assert!(!tmp.path().join("MASTER/big.bin").exists());
    // What the server received is kept, so uploading it again resumes.
    let partial = tmp.path().join("MASTER/.distribusync/partial");
    wait_until("nothing kept for resuming", || {
        file_sizes(&partial).iter().any(|&len| len > 0)
    });
    p.exp_string("files> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn lines_pasted_together_answer_one_prompt_each() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    let mut p = menu_in_terminal(tmp.path(), &server.addr);
    // A terminal pastes several lines as one bracketed paste.
    p.send("\x1b[200~2\r1\r40 2\r\x1b[201~").unwrap();
    p.send_line("").unwrap();
    p.exp_string("sum: 42").unwrap();
    p.exp_string("compute> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}

#[test]
fn a_hung_server_shows_as_not_responding() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("MASTER"));
    let pid = server.child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let mut p = spawn_command(menu_command(tmp.path(), &server.addr), Some(TIMEOUT_MS)).unwrap();
    let shown = p.exp_string("5) Exit");
    signal("-CONT");
    let header = shown.unwrap();
    assert!(header.contains("(not responding)"), "{header}");
    p.exp_string("> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    exits_with_zero(&p);
}
