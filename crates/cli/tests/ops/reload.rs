//! SIGHUP while the server is busy: a download in flight finishes, and
//! every listener (gRPC, the web page, WebDAV) presents the new
//! certificate to new connections.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::Reloading;
use crate::{cmd, tmp};

/// A self-signed server leaf for localhost, as `serve` makes its own (not
/// a CA, for server authentication): (certificate PEM, key PEM).
fn server_leaf() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// The certificate files and a config file naming them with `extra`
/// settings; returns the config's path.
fn setup(dir: &Path, cert_pem: &str, key_pem: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key_pem).unwrap();
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "tls = \"on\"\ntls-cert = {:?}\ntls-key = {:?}\n{extra}",
            dir.join("cert.pem").to_str().unwrap(),
            dir.join("key.pem").to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

/// A TLS connection to `addr` that trusts only `cert_pem` and offers
/// HTTP/2 and HTTP/1.1 as a browser does; the handshake is done.
fn tls_to(
    addr: &str,
    cert_pem: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

/// Sends one HTTP/1.1 request on `tls` (closing after it) and returns the
/// status line.
fn status_line(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    method: &str,
) -> String {
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "an HTTP/1.1 listener must not take h2"
    );
    write!(
        tls,
        "{method} / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or_default().to_owned()
}

/// The address `serve` printed after `label` (`web page on https://A/`).
fn listed(server: &Reloading, label: &str) -> String {
    server.wait_for(label, |l| {
        let url = &l[l.find(label).unwrap() + label.len()..];
        url.trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    })
}

/// Starts `serve` with `listen_key` (web-listen or webdav-listen), checks
/// that `method /` on it answers over TLS with certificate A, reloads to
/// certificate B, and checks new handshakes see B only while a connection
/// made before the reload still works.
fn an_http_listener_follows_the_reload(listen_key: &str, label: &str, method: &str) {
    let (_t, dir) = tmp();
    let (cert_a, key_a) = server_leaf();
    let (cert_b, key_b) = server_leaf();
    let config = setup(
        &dir,
        &cert_a,
        &key_a,
        &format!("{listen_key} = \"127.0.0.1:0\"\n"),
    );
    let server = Reloading::start(&dir, &config);
    let addr = listed(&server, label);
    let answer = status_line(&mut tls_to(&addr, &cert_a).unwrap(), method);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    // Made before the reload, used after it.
    let mut old = tls_to(&addr, &cert_a).unwrap();

    std::fs::write(dir.join("cert.pem"), &cert_b).unwrap();
    std::fs::write(dir.join("key.pem"), &key_b).unwrap();
    server.hup("reloaded the TLS certificate");
    let refused = tls_to(&addr, &cert_a).err();
    assert!(
        refused.is_some(),
        "{listen_key} still presents the old certificate after SIGHUP"
    );
    let answer = status_line(&mut tls_to(&addr, &cert_b).unwrap(), method);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    let answer = status_line(&mut old, method);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
}

#[test]
fn sighup_gives_the_web_page_the_new_certificate() {
    an_http_listener_follows_the_reload("web-listen", "web page on ", "GET");
}

#[test]
fn sighup_gives_webdav_the_new_certificate() {
    an_http_listener_follows_the_reload("webdav-listen", "WebDAV on ", "OPTIONS");
}

/// Bytes nothing compresses or repeats (xorshift).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn sighup_while_a_download_runs_lets_it_finish_byte_identical_and_new_handshakes_see_the_new_certificate()
 {
    use distribusync_client::{ConnectionConfig, TlsTrust};
    use distribusync_proto::v1::{self, download_response::Msg, files_client::FilesClient};
    let (_t, dir) = tmp();
    let (cert_a, key_a) = server_leaf();
    let (cert_b, key_b) = server_leaf();
    let config = setup(&dir, &cert_a, &key_a, "max-file-size = 100000000\n");
    let server = Reloading::start(&dir, &config);
    let fp_a = server.fingerprint.clone();
    let with = |fp: &str, args: &[&str]| {
        cmd(
            &dir,
            &[],
            &[args, &["--server", &server.url, "--fingerprint", fp][..]].concat(),
        )
        .output()
        .unwrap()
    };
    // Larger than every window between the two ends (32 MiB at most),
    // so the server is still sending when the reload comes.
    let data = noise(40 << 20);
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    let put = with(&fp_a, &["put", "big.bin"]);
    assert!(put.status.success(), "{put:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let trust = TlsTrust::Pinned(fp_a.parse().unwrap());
        let channel = ConnectionConfig::new(&server.url, trust, None)
            .connect_bare()
            .await
            .unwrap();
        let mut files = FilesClient::new(channel)
            .max_decoding_message_size(distribusync_core::limits::MAX_MESSAGE_SIZE);
        let mut stream = files
            .download(v1::DownloadRequest {
                path: "big.bin".into(),
                offset: 0,
                length: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::with_capacity(data.len());
        // The file info, then the first chunk; then nothing is read (the
        // server waits on flow control) until the reload is done.
        while got.is_empty() {
            match stream.message().await.unwrap().unwrap().msg {
                Some(Msg::Chunk(c)) => got.extend_from_slice(&c),
                Some(Msg::Info(i)) => assert_eq!(i.size, data.len() as u64),
                None => panic!("an empty message"),
            }
        }

        // A new certificate and a changed setting, then SIGHUP (the
        // largest file accepted is logged only when it changed).
        std::fs::write(dir.join("cert.pem"), &cert_b).unwrap();
        std::fs::write(dir.join("key.pem"), &key_b).unwrap();
        std::fs::write(
            &config,
            std::fs::read_to_string(&config)
                .unwrap()
                .replace("100000000", "90000000"),
        )
        .unwrap();
        server.hup("reloaded the largest file accepted");
        assert!(server.count("reloaded the TLS certificate") >= 1);
        assert!(
            got.len() < data.len(),
            "the download was over before the reload"
        );

        // New handshakes see the new certificate; the old pin is refused.
        let fp_b = distribusync_server::TlsIdentity::from_pem_files(
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
        )
        .unwrap()
        .fingerprint()
        .to_string();
        assert_ne!(fp_a, fp_b);
        let listed = with(&fp_b, &["ls"]);
        assert!(listed.status.success(), "{listed:?}");
        assert!(String::from_utf8_lossy(&listed.stdout).contains("big.bin"));
        assert_eq!(with(&fp_a, &["ls"]).status.code(), Some(1));

        // The download made before the reload goes on to the end.
        while let Some(m) = stream.message().await.unwrap() {
            match m.msg {
                Some(Msg::Chunk(c)) => got.extend_from_slice(&c),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the download is not byte-identical");
    });
}
