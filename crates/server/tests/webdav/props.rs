//! What WebDAV shows beside contents: dead properties that follow the
//! file whoever moves it, and folder dates.

use super::*;

fn set_color(value: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example:z"><D:set><D:prop>
<Z:color>{value}</Z:color></D:prop></D:set></D:propertyupdate>"#
    )
    .into_bytes()
}

const ASK_COLOR: &[u8] = br#"<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:Z="urn:example:z"><D:prop><Z:color/></D:prop></D:propfind>"#;

async fn color(addr: std::net::SocketAddr, path: &str) -> String {
    let a = send(addr, "PROPFIND", path, &[("depth", "0")], ASK_COLOR).await;
    assert_eq!(a.status, StatusCode::MULTI_STATUS, "{path}: {}", a.text());
    a.text()
}

#[tokio::test]
async fn dead_properties_follow_a_grpc_rename_and_go_with_a_grpc_delete() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();

    send(s.dav, "PUT", "/doc.txt", &[], b"d").await;
    let patch = send(s.dav, "PROPPATCH", "/doc.txt", &[], &set_color("red")).await;
    assert_eq!(patch.status, StatusCode::MULTI_STATUS, "{}", patch.text());
    assert!(color(s.dav, "/doc.txt").await.contains("red"));

    // A sync client renames the file: the property goes with it.
    grpc.rename(&p("doc.txt"), &p("moved.txt"), false, None)
        .await
        .unwrap();
    assert!(color(s.dav, "/moved.txt").await.contains("red"));
    // A new file at the old name starts without it.
    common::put_bytes(&grpc, dir.path(), "doc.txt", b"new").await;
    assert!(!color(s.dav, "/doc.txt").await.contains("red"));

    // Deleted, then made again: the old property is gone for good.
    grpc.delete(&p("moved.txt"), None).await.unwrap();
    common::put_bytes(&grpc, dir.path(), "moved.txt", b"again").await;
    assert!(!color(s.dav, "/moved.txt").await.contains("red"));

    // A folder's property, and those of the files in it, follow a folder
    // rename.
    // (A folder that exists because a file is in it: a sync client's.)
    common::put_bytes(&grpc, dir.path(), "dir/a.txt", b"a").await;
    for (path, value) in [("/dir", "blue"), ("/dir/a.txt", "green")] {
        let patch = send(s.dav, "PROPPATCH", path, &[], &set_color(value)).await;
        assert_eq!(patch.status, StatusCode::MULTI_STATUS, "{}", patch.text());
    }
    grpc.rename(&p("dir"), &p("dir2"), false, None)
        .await
        .unwrap();
    assert!(color(s.dav, "/dir2").await.contains("blue"));
    assert!(color(s.dav, "/dir2/a.txt").await.contains("green"));
    s.stop().await;
}

/// The `<D:response>` element of `href` in a multistatus answer.
fn response_of<'a>(text: &'a str, href: &str) -> &'a str {
    let at = text
        .find(&format!("<D:href>{href}</D:href>"))
        .unwrap_or_else(|| panic!("{href} not in {text}"));
    let start = text[..at].rfind("<D:response>").expect("response start");
    let end = at + text[at..].find("</D:response>").expect("response end");
    &text[start..end]
}

#[tokio::test]
async fn folders_show_real_dates_not_1970() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    assert_eq!(
        send(s.dav, "MKCOL", "/made", &[], b"").await.status,
        StatusCode::CREATED
    );
    // A folder that exists because a sync client put a file in it.
    let grpc = FilesClient::connect(s.grpc.as_str()).await.unwrap();
    common::put_bytes(&grpc, dir.path(), "implicit/a.txt", b"a").await;
    let list = send(s.dav, "PROPFIND", "/", &[("depth", "1")], b"").await;
    assert_eq!(list.status, StatusCode::MULTI_STATUS);
    let text = list.text();
    for href in ["/", "/made/", "/implicit/"] {
        let r = response_of(&text, href);
        assert!(r.contains("getlastmodified"), "{href}: {r}");
        assert!(r.contains("creationdate"), "{href}: {r}");
        assert!(!r.contains("1970"), "{href}: {r}");
    }
    // Asked on its own too.
    let one = send(s.dav, "PROPFIND", "/made", &[("depth", "0")], b"").await;
    assert!(!one.text().contains("1970"), "{}", one.text());
    assert!(one.text().contains("getlastmodified"), "{}", one.text());
    s.stop().await;
}

#[tokio::test]
async fn a_folder_listing_shows_each_child_its_own_dead_properties() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("M");
    let s = DavServer::start(&root).await;
    for path in [
        "/list/a.txt",
        "/list/b.txt",
        "/list/sub/c.txt",
        "/other.txt",
    ] {
        if path == "/list/a.txt" {
            send(s.dav, "MKCOL", "/list", &[], b"").await;
            send(s.dav, "MKCOL", "/list/sub", &[], b"").await;
        }
        let put = send(s.dav, "PUT", path, &[], b"x").await;
        assert!(put.status.is_success(), "{path}: {}", put.text());
    }
    for (path, value) in [
        ("/list/a.txt", "crimson"),
        ("/list/sub", "azure"),
        ("/list/sub/c.txt", "emerald"),
        ("/other.txt", "slategrey"),
    ] {
        let patch = send(s.dav, "PROPPATCH", path, &[], &set_color(value)).await;
        assert_eq!(patch.status, StatusCode::MULTI_STATUS, "{}", patch.text());
    }
    // Asked by name and with allprop, one level and the whole tree.
    for (depth, body) in [("1", ASK_COLOR), ("1", &b""[..]), ("infinity", ASK_COLOR)] {
        let list = send(s.dav, "PROPFIND", "/list", &[("depth", depth)], body).await;
        assert_eq!(list.status, StatusCode::MULTI_STATUS, "{}", list.text());
        let text = list.text();
        let a = response_of(&text, "/list/a.txt");
        assert!(a.contains("crimson") && !a.contains("azure"), "{a}");
        let b = response_of(&text, "/list/b.txt");
        assert!(!b.contains("crimson") && !b.contains("emerald"), "{b}");
        let sub = response_of(&text, "/list/sub/");
        assert!(sub.contains("azure") && !sub.contains("emerald"), "{sub}");
        assert!(!text.contains("slategrey"), "{text}");
        if depth == "infinity" {
            let c = response_of(&text, "/list/sub/c.txt");
            assert!(c.contains("emerald") && !c.contains("azure"), "{c}");
        }
    }
    s.stop().await;
}
