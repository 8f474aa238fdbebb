//! TLS through the real binary: a self-signed server pinned by fingerprint,
//! a CA chain, changed certificates, plaintext/TLS mismatches, the refusal
//! to serve plaintext beyond loopback, bad certificate files, `login` and a
//! sync daemon over TLS.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{BIN, cmd, tmp, wait_until};

/// `distribusync serve` with TLS; killed on drop.
struct TlsServer {
    child: Child,
    /// `https://127.0.0.1:PORT` (or `http://` when TLS is off).
    url: String,
    /// The fingerprint it printed at start (None without TLS).
    fingerprint: Option<String>,
}

impl TlsServer {
    fn start(root: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--root"])
            .arg(root)
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut url = None;
        let mut fingerprint = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(i) = line.find("fingerprint ") {
                fingerprint = Some(line[i + "fingerprint ".len()..].trim().to_owned());
            }
            if let Some(i) = line.find("https://").or_else(|| line.find("http://")) {
                url = Some(line[i..].trim().to_owned());
            }
            // The store's first log line comes after both.
            if url.is_some()
                && (fingerprint.is_some() || url.as_deref().unwrap().starts_with("http:"))
            {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url: url.expect("server printed its address"),
            fingerprint,
        }
    }

    fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap().to_owned()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    cmd(dir, &[], args).output().expect("runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with `code` and one line on stderr.
fn fail(dir: &Path, args: &[&str], code: i32) -> String {
    let out = run(dir, args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.starts_with("distribusync: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn print_fingerprint(dir: &Path, root: &Path) -> String {
    let root = root.to_str().unwrap();
    ok(dir, &["serve", "--root", root, "--print-fingerprint"])
        .trim()
        .to_owned()
}

#[test]
fn a_self_signed_server_pinned_by_fingerprint_serves_put_ls_get_and_keeps_its_fingerprint() {
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    let server = TlsServer::start(&root, "127.0.0.1:0", &["--tls", "on"]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let fp = server
        .fingerprint
        .clone()
        .expect("fingerprint printed at start");
    assert_eq!(print_fingerprint(&dir, &root), fp);
    // The key is private.
    let key = root.join(".distribusync/tls/key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    std::fs::write(dir.join("a.txt"), b"over TLS").unwrap();
    let s = ["--server", &server.url, "--fingerprint", &fp];
    ok(&dir, &[&["put", "a.txt"][..], &s].concat());
    assert_eq!(ok(&dir, &[&["ls"][..], &s].concat()), "a.txt\n");
    ok(&dir, &[&["get", "a.txt", "back.txt"][..], &s].concat());
    assert_eq!(std::fs::read(dir.join("back.txt")).unwrap(), b"over TLS");
    assert_eq!(
        ok(&dir, &[&["add", "2", "40"][..], &s].concat()).trim(),
        "42"
    );

    // The same identity after a restart.
    server.stop();
    let again = TlsServer::start(&root, "127.0.0.1:0", &["--tls", "on"]);
    assert_eq!(again.fingerprint.as_deref(), Some(fp.as_str()));
    assert_eq!(print_fingerprint(&dir, &root), fp);
}

#[test]
fn a_different_certificate_at_the_same_address_is_refused_naming_both_fingerprints() {
    let (_t, dir) = tmp();
    let first = TlsServer::start(&dir.join("one"), "127.0.0.1:0", &["--tls", "on"]);
    let pinned = first.fingerprint.clone().unwrap();
    let listen = format!("127.0.0.1:{}", first.port());
    first.stop();
    let other = TlsServer::start(&dir.join("two"), &listen, &["--tls", "on"]);
    let presented = other.fingerprint.clone().unwrap();
    assert_ne!(pinned, presented);
    let err = fail(
        &dir,
        &["ls", "--server", &other.url, "--fingerprint", &pinned],
        1,
    );
    assert!(err.contains("CHANGED"), "{err}");
    assert!(err.contains(&pinned) && err.contains(&presented), "{err}");
}

/// A root CA, an intermediate it signs, and a leaf for localhost and
/// 127.0.0.1 the intermediate signs: (root PEM, leaf + intermediate PEM,
/// leaf key PEM).
fn ca_chain() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(rcgen::DnType::CommonName, "test root");
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);

    let mid_key = KeyPair::generate().unwrap();
    let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
    mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid.distinguished_name
        .push(rcgen::DnType::CommonName, "test intermediate");
    let mid_cert = mid.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = Issuer::new(mid, mid_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &mid_issuer).unwrap();
    (
        root_cert.pem(),
        format!("{}{}", leaf_cert.pem(), mid_cert.pem()),
        leaf_key.serialize_pem(),
    )
}

#[test]
fn a_server_certificate_from_a_ca_chain_is_verified_with_ca() {
    let (_t, dir) = tmp();
    let (root, chain, key) = ca_chain();
    std::fs::write(dir.join("root.pem"), root).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let (cert, key) = (dir.join("chain.pem"), dir.join("key.pem"));
    let server = TlsServer::start(
        &dir.join("MASTER"),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}", server.port());
    std::fs::write(dir.join("a.txt"), b"by CA").unwrap();
    ok(
        &dir,
        &["put", "a.txt", "--server", &url, "--ca", "root.pem"],
    );
    assert_eq!(
        ok(&dir, &["ls", "--server", &url, "--ca", "root.pem"]),
        "a.txt\n"
    );
    // Without the CA the system does not trust it: one line that says so.
    let err = fail(&dir, &["ls", "--server", &url], 1);
    assert!(err.contains("--ca"), "{err}");
}

#[test]
fn plaintext_against_tls_and_tls_against_plaintext_each_get_one_clear_line() {
    let (_t, dir) = tmp();
    let tls = TlsServer::start(&dir.join("tls"), "127.0.0.1:0", &["--tls", "on"]);
    let plain = TlsServer::start(&dir.join("plain"), "127.0.0.1:0", &[]);
    assert!(plain.url.starts_with("http://"));
    let tls_port = tls.port();
    let err = fail(
        &dir,
        &["ls", "--server", &format!("http://127.0.0.1:{tls_port}")],
        1,
    );
    assert!(
        err.contains(&format!("speaks TLS: use https://127.0.0.1:{tls_port}")),
        "{err}"
    );
    let err = fail(
        &dir,
        &[
            "add",
            "1",
            "2",
            "--server",
            &format!("127.0.0.1:{tls_port}"),
        ],
        1,
    );
    assert!(err.contains("speaks TLS"), "{err}");
    let plain_port = plain.port();
    let err = fail(
        &dir,
        &[
            "ls",
            "--server",
            &format!("https://127.0.0.1:{plain_port}"),
            "--fingerprint",
            tls.fingerprint.as_deref().unwrap(),
        ],
        1,
    );
    assert!(
        err.contains(&format!(
            "does not speak TLS: use http://127.0.0.1:{plain_port}"
        )),
        "{err}"
    );
}

/// Every client command, `sync` (one pass and the daemon), `login` and the
/// menu: plaintext against a TLS server, and TLS against a plaintext one,
/// each say so in one line naming the URL to use.
#[test]
fn every_command_names_a_plaintext_tls_mismatch_in_one_line() {
    let (_t, dir) = tmp();
    let tls = TlsServer::start(&dir.join("tls"), "127.0.0.1:0", &["--tls", "on"]);
    let plain = TlsServer::start(&dir.join("plain"), "127.0.0.1:0", &[]);
    let fp = tls.fingerprint.clone().unwrap();
    std::fs::write(dir.join("a.txt"), b"a").unwrap();
    std::fs::create_dir_all(dir.join("here")).unwrap();
    let to_tls = format!("http://127.0.0.1:{}", tls.port());
    let to_plain = format!("https://127.0.0.1:{}", plain.port());
    let commands: &[&[&str]] = &[
        &["ls"],
        &["put", "a.txt", "a.txt"],
        &["get", "a.txt", "b.txt"],
        &["rm", "a.txt"],
        &["mv", "a.txt", "c.txt"],
        &["stat", "a.txt"],
        &["add", "1", "2"],
        &["sort", "3", "1"],
        &["job", "00000000-0000-0000-0000-000000000000"],
        &["jobs"],
        &["sync", "here", "--once"],
        &["token", "list"],
    ];
    for args in commands {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--server", &to_tls]);
        let err = fail(&dir, &a, 1);
        assert!(
            err.contains(&format!("speaks TLS: use https://127.0.0.1:{}", tls.port())),
            "{args:?}: {err}"
        );
        let mut a = args.to_vec();
        a.extend_from_slice(&["--server", &to_plain, "--fingerprint", &fp]);
        let err = fail(&dir, &a, 1);
        assert!(
            err.contains(&format!(
                "does not speak TLS: use http://127.0.0.1:{}",
                plain.port()
            )),
            "{args:?}: {err}"
        );
    }
    let err = fail(&dir, &["login", &to_tls], 1);
    assert!(err.contains("speaks TLS"), "{err}");
    let err = fail(&dir, &["login", &to_plain], 1);
    assert!(err.contains("does not speak TLS"), "{err}");

    // The sync daemon says why it cannot sync, not only that it cannot.
    let mut daemon = cmd(&dir, &[], &["sync", "here", "--server", &to_tls])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let said = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("speaks TLS") || l.contains("unreachable"));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let said = said.expect("the daemon said something about the server");
    assert!(said.contains("speaks TLS: use https://"), "{said}");

    // The menu's header names it too.
    let mut menu = cmd(&dir, &[], &["menu", "--server", &to_tls])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(menu.stdin.take());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut menu.stdout.take().unwrap(), &mut out).unwrap();
    menu.wait().unwrap();
    let header = out
        .lines()
        .find(|l| l.starts_with("DistribuSync"))
        .unwrap_or("");
    assert!(header.contains("speaks TLS: use https://"), "{out}");
}

#[test]
fn serving_plaintext_beyond_loopback_is_refused_unless_insecure_which_warns() {
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    let root = root.to_str().unwrap();
    let err = fail(
        &dir,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--tls",
            "off",
            "--root",
            root,
        ],
        2,
    );
    assert!(err.contains("--insecure"), "{err}");
    assert!(!dir.join("MASTER").exists(), "nothing made before refusing");

    let mut child = cmd(
        &dir,
        &[("RUST_LOG", "warn")],
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--tls",
            "off",
            "--insecure",
            "--root",
            root,
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        warned |= line.contains("WARN") && line.contains("--insecure");
        if line.contains("serving") && line.contains("http://") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "a warning at start");
}

/// A leaf certificate valid from `from` to `until` (years) and its key.
fn leaf(from: i32, until: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(until, 1, 1);
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn bad_certificate_files_get_one_line_naming_the_file() {
    let (_t, dir) = tmp();
    let (cert, key) = leaf(2020, 2090);
    let (_, other_key) = leaf(2020, 2090);
    let (old_cert, old_key) = leaf(2001, 2002);
    for (name, text) in [
        ("cert.pem", cert.as_str()),
        ("key.pem", key.as_str()),
        ("other-key.pem", other_key.as_str()),
        ("old-cert.pem", old_cert.as_str()),
        ("old-key.pem", old_key.as_str()),
        ("junk.pem", "this is not PEM\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let serve = |c: &str, k: &str| {
        fail(
            &dir,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--root",
                "M",
                "--tls-cert",
                c,
                "--tls-key",
                k,
            ],
            1,
        )
    };
    let err = serve("junk.pem", "key.pem");
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = serve("cert.pem", "junk.pem");
    assert!(
        err.contains("junk.pem") && err.contains("no PEM private key"),
        "{err}"
    );
    let err = serve("cert.pem", "other-key.pem");
    assert!(
        err.contains("other-key.pem") && err.contains("does not belong"),
        "{err}"
    );
    let err = serve("old-cert.pem", "old-key.pem");
    assert!(
        err.contains("old-cert.pem") && err.contains("expired") && err.contains("2002"),
        "{err}"
    );
    let err = serve("missing.pem", "key.pem");
    assert!(
        err.contains("missing.pem") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn login_saves_a_private_profile_that_later_commands_use() {
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    let server = TlsServer::start(&root, "127.0.0.1:0", &["--tls", "on"]);
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    // Trust on first use, confirmed with --yes: what login saw is what
    // the server prints.
    let out = run(
        &dir,
        &[
            "login",
            &server.url,
            "--yes",
            "--token-file",
            "token",
            "--profile",
            "work",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fp = print_fingerprint(&dir, &root);
    assert!(err.contains(&fp), "login showed the fingerprint: {err}");

    let profiles = dir.join("config/distribusync/profiles.json");
    let mode = std::fs::metadata(&profiles).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profiles).unwrap()).unwrap();
    let work = &saved["profiles"]["work"];
    assert_eq!(work["url"], server.url.as_str());
    assert_eq!(work["fingerprint"], fp.as_str());
    assert_eq!(work["token"], "s3cret-token");

    // Non-interactive login with --fingerprint as the default profile.
    ok(&dir, &["login", &server.url, "--fingerprint", &fp]);
    std::fs::write(dir.join("a.txt"), b"x").unwrap();
    ok(&dir, &["put", "a.txt"]);
    assert_eq!(ok(&dir, &["ls"]), "a.txt\n");
    assert_eq!(ok(&dir, &["ls", "--profile", "work"]), "a.txt\n");
    let err = fail(&dir, &["ls", "--profile", "nope"], 2);
    assert!(err.contains("nope") && err.contains("work"), "{err}");

    // A wrong fingerprint: nothing is saved.
    let wrong = format!("00{}", &fp[2..]);
    let err = fail(
        &dir,
        &[
            "login",
            &server.url,
            "--fingerprint",
            &wrong,
            "--profile",
            "bad",
        ],
        1,
    );
    assert!(err.contains("CHANGED"), "{err}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profiles).unwrap()).unwrap();
    assert!(saved["profiles"].get("bad").is_none());
}

#[test]
fn a_sync_daemon_over_tls_converges_with_the_server() {
    let (_t, dir) = tmp();
    let server = TlsServer::start(&dir.join("MASTER"), "127.0.0.1:0", &["--tls", "on"]);
    let fp = server.fingerprint.clone().unwrap();
    let s = [
        "--server",
        server.url.as_str(),
        "--fingerprint",
        fp.as_str(),
    ];
    std::fs::create_dir_all(dir.join("local")).unwrap();
    std::fs::write(dir.join("local/up.txt"), b"from the folder").unwrap();
    let mut daemon = cmd(&dir, &[], &[&["sync", "local"][..], &s].concat())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("up.txt on the server", || {
        ok(&dir, &[&["ls"][..], &s].concat()).contains("up.txt")
    });
    std::fs::write(dir.join("down.txt"), b"from the server").unwrap();
    ok(&dir, &[&["put", "down.txt"][..], &s].concat());
    wait_until("down.txt in the folder", || {
        std::fs::read(dir.join("local/down.txt")).is_ok_and(|d| d == b"from the server")
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A token made on the server's ROOT, as `token create` prints it.
fn token(dir: &Path, root: &Path, name: &str, scopes: &str, extra: &[&str]) -> String {
    let root = root.to_str().unwrap();
    let args = [
        &["token", "create", name, "--scopes", scopes, "--root", root][..],
        extra,
    ]
    .concat();
    let out = ok(dir, &args);
    let t = out.trim().to_owned();
    assert!(t.starts_with("dst_"), "{out}");
    std::fs::write(dir.join(format!("{name}.token")), &t).unwrap();
    t
}

#[test]
fn two_sync_daemons_over_tls_with_tokens_converge_and_scopes_hold() {
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    token(&dir, &root, "laptop", "read,write,compute", &[]);
    token(&dir, &root, "desktop", "read,write", &[]);
    token(&dir, &root, "frame", "read", &["--prefix", "photos/"]);
    let server = TlsServer::start(&root, "127.0.0.1:0", &["--tls", "on", "--auth", "on"]);
    let fp = server.fingerprint.clone().unwrap();
    let conn = |name: &str| -> Vec<String> {
        [
            "--server",
            server.url.as_str(),
            "--fingerprint",
            fp.as_str(),
            "--token-file",
            dir.join(format!("{name}.token")).to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let with = |base: &[&str], name: &str| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
        v.extend(conn(name));
        v
    };
    let ok_as = |base: &[&str], name: &str| {
        let args = with(base, name);
        ok(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // No token, or a token without the scope: one clear line each.
    let no_token = run(
        &dir,
        &[
            "ls",
            "--server",
            server.url.as_str(),
            "--fingerprint",
            fp.as_str(),
        ],
    );
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("invalid or missing token"),
        "{no_token:?}"
    );
    let args = with(&["add", "1", "2"], "desktop");
    let refused = run(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("compute"),
        "{refused:?}"
    );
    assert_eq!(ok_as(&["add", "40", "2"], "laptop").trim(), "42");

    // Two daemons, each with its own token, converge through the server.
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.join(d).join("photos")).unwrap();
    }
    std::fs::write(dir.join("a/from-a.txt"), b"written in a").unwrap();
    std::fs::write(dir.join("b/photos/cat.jpg"), b"a cat").unwrap();
    let spawn = |folder: &str, name: &str| {
        let args = with(&["sync", folder], name);
        cmd(
            &dir,
            &[],
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let mut daemons = [spawn("a", "laptop"), spawn("b", "desktop")];
    wait_until("both files in both folders", || {
        std::fs::read(dir.join("b/from-a.txt")).is_ok_and(|d| d == b"written in a")
            && std::fs::read(dir.join("a/photos/cat.jpg")).is_ok_and(|d| d == b"a cat")
    });
    std::fs::write(dir.join("b/from-a.txt"), b"edited in b").unwrap();
    wait_until("the edit in a", || {
        std::fs::read(dir.join("a/from-a.txt")).is_ok_and(|d| d == b"edited in b")
    });

    // The read-only photo frame sees only photos/ and cannot write there.
    let listed = ok_as(&["ls"], "frame");
    assert!(listed.contains("photos/cat.jpg"), "{listed}");
    assert!(!listed.contains("from-a.txt"), "{listed}");
    std::fs::write(dir.join("dog.jpg"), b"a dog").unwrap();
    let args = with(&["put", "dog.jpg", "photos/dog.jpg"], "frame");
    let put = run(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!put.status.success(), "{put:?}");
    assert!(
        String::from_utf8_lossy(&put.stderr).contains("write"),
        "{put:?}"
    );
    assert!(!root.join("photos/dog.jpg").exists());

    for d in &mut daemons {
        let _ = d.kill();
        let _ = d.wait();
    }
}

#[test]
fn processes_making_the_self_signed_identity_at_once_agree_on_it() {
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    let root = root.to_str().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            cmd(&dir, &[], &["serve", "--root", root, "--print-fingerprint"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let printed: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    assert!(printed.iter().all(|f| *f == printed[0]), "{printed:?}");
    assert_eq!(print_fingerprint(&dir, Path::new(root)), printed[0]);
}

/// The menu with nothing configured asks for the server, shows the
/// certificate's fingerprint and asks to trust it, asks for the token the
/// server wants (again after a wrong one), offers to save all that as a
/// profile, and then works; the saved profile works for other commands.
#[test]
fn the_menu_asks_for_what_is_missing_and_saves_it_as_a_profile() {
    use std::io::{Read, Write};
    let (_t, dir) = tmp();
    let root = dir.join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    let secret = token(&dir, &root, "laptop", "read,write", &[]);
    let server = TlsServer::start(&root, "127.0.0.1:0", &["--tls", "on", "--auth", "on"]);
    let fp = server.fingerprint.clone().unwrap();
    std::fs::write(dir.join("hello.txt"), b"hi").unwrap();
    let token_file = dir.join("laptop.token");
    let conn = [
        "--server",
        server.url.as_str(),
        "--fingerprint",
        fp.as_str(),
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    ok(
        &dir,
        &[&["put", "hello.txt", "hello.txt"][..], &conn[..]].concat(),
    );

    let mut menu = cmd(&dir, &[], &["menu"])
        .env_remove("DISTRIBUSYNC_SERVER")
        .env_remove("DISTRIBUSYNC_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = menu.stdin.take().unwrap();
    // Server, trust, a wrong token then the right one, the profile's name,
    // then Files > List files (everything) > Back, then Exit.
    let typed = format!(
        "{}\ny\ndst_wrong\n{secret}\nwork\n1\n5\n\n6\n5\n",
        server.url
    );
    stdin.write_all(typed.as_bytes()).unwrap();
    drop(stdin);
    let mut out = String::new();
    menu.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    menu.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(menu.wait().unwrap().success(), "{out}\n{err}");
    for said in [
        "Server address",
        &format!("fingerprint\n  {fp}"),
        "Trust it?",
        "wants an access token",
        "Save these settings as a profile?",
        "Saved profile \"work\"",
        "(connected)",
        "hello.txt",
    ] {
        assert!(out.contains(said), "{said:?} in:\n{out}\n{err}");
    }
    assert_eq!(
        out.matches("wants an access token").count(),
        2,
        "asked again after the wrong token:\n{out}"
    );
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("config/distribusync/profiles.json")).unwrap(),
    )
    .unwrap();
    let work = &saved["profiles"]["work"];
    assert_eq!(work["url"], server.url.as_str());
    assert_eq!(work["fingerprint"], fp.as_str());
    assert_eq!(work["token"], secret.as_str());
    let listed = ok(&dir, &["ls", "--profile", "work"]);
    assert!(listed.contains("hello.txt"), "{listed}");
}

/// A foreign client: Python's grpcio, given the CA file and the token as
/// `authorization: Bearer` metadata, lists files and adds numbers on a TLS
/// server with tokens (and is refused without the token). The script
/// makes its venv once under target/py-venv.
#[test]
fn python_grpcio_with_the_ca_and_a_token_lists_files_and_adds() {
    let (_t, dir) = tmp();
    let (root_ca, chain, key) = ca_chain();
    std::fs::write(dir.join("root.pem"), root_ca).unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let root = dir.join("MASTER");
    std::fs::create_dir_all(&root).unwrap();
    let secret = token(&dir, &root, "python", "read,write,compute", &[]);
    let server = TlsServer::start(
        &root,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            dir.join("chain.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("key.pem").to_str().unwrap(),
            "--auth",
            "on",
        ],
    );
    let url = format!("https://localhost:{}", server.port());
    std::fs::write(dir.join("report.txt"), b"twelve bytes").unwrap();
    ok(
        &dir,
        &[
            "put",
            "report.txt",
            "docs/report.txt",
            "--server",
            &url,
            "--ca",
            "root.pem",
            "--token-file",
            "python.token",
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/foreign/grpcio.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(format!("localhost:{}", server.port()))
        .arg(dir.join("root.pem"))
        .env("DISTRIBUSYNC_TOKEN", &secret)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("file docs/report.txt 12\n"), "{stdout}");
    assert!(stdout.contains("sum 41\n"), "{stdout}");
    assert!(
        stdout.contains("without a token: UNAUTHENTICATED"),
        "{stdout}"
    );
}
