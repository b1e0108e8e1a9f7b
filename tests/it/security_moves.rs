//! Hardening of node-to-node moves and of the process's own secrets, black-box: real
//! server processes on 127.0.0.1 (a shared PostgreSQL assignment database, started by
//! `scripts/test`, where a cluster is needed).

use std::process::Command;
use std::time::Duration;

/// Runs `syncstore serve` on `data` without a configured secret; returns (exit ok, stderr).
fn serve_without_secret(data: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("SYNCSTORE_SECRETS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreadable_secret_file_stops_the_server_and_is_left_alone() {
    // Not UTF-8: reading it fails even as root.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    let bytes = b"\xff\xfe not a secret \xc3\x28\n".to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let (ok, err) = serve_without_secret(dir.path());
    assert!(!ok, "the server must not start: {err}");
    assert!(err.contains("cannot read the secret file"), "{err}");
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is unchanged"
    );

    // A directory where the file should be.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    let (ok, err) = serve_without_secret(dir.path());
    assert!(!ok, "the server must not start: {err}");
    assert!(err.contains("cannot read the secret file"), "{err}");
    assert!(path.is_dir() && path.join("keep").exists());
}

use crate::common::{self, Client, SECRET, Server, cli, fake_verifier, fresh_database, sign_in};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use syncstore::auth::internal::{BODY_HASH_HEADER, RequestHead, SIGNATURE_HEADER, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The internal listener's address, from the server's log.
fn internal_addr(s: &Server) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = s.log_text().split("internal routes on http://").nth(1) {
            return addr
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no internal listener: {}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unsigned_body_is_refused_unread_and_internal_routes_are_not_public() {
    let server = Server::start(&[("SYNCSTORE_INTERNAL_LISTEN", "127.0.0.1:0")]);
    let internal = internal_addr(&server);

    // The public listener does not know the internal routes.
    let public = reqwest::Client::new();
    for path in ["/__internal__/receive/7", "/__internal__/move/7"] {
        let r = public
            .post(format!("{}{path}", server.url()))
            .header(SIGNATURE_HEADER, "1:2:3")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the public listener");
    }

    // 1 GiB announced, streamed in 1 MiB chunks while the answer is awaited.
    const GIB: u64 = 1 << 30;
    let before = rss(server.pid());
    let mut stream = tokio::net::TcpStream::connect(&internal).await.unwrap();
    let head = format!(
        "POST /__internal__/receive/7 HTTP/1.1\r\nHost: {internal}\r\n\
         {SIGNATURE_HEADER}: {}:{}:{}\r\n{BODY_HASH_HEADER}: {}\r\n\
         Content-Length: {GIB}\r\n\r\n",
        common::now(),
        "ab".repeat(16),
        "cd".repeat(32),
        "ef".repeat(32),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sent < GIB && std::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), writer.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                _ => break, // refused: the server closed or stopped reading
            }
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut peak = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        peak = peak.max(rss(server.pid()));
        match tokio::time::timeout(Duration::from_millis(100), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(reader);
    let sent = sender.await.unwrap();
    peak = peak.max(rss(server.pid()));
    assert!(sent < GIB, "the whole body was read ({sent} bytes)");
    let growth = peak.saturating_sub(before);
    assert!(growth < 50 << 20, "RSS grew by {} MiB", growth >> 20);
}

/// Two storage nodes and a tokenserver on one fresh PostgreSQL database.
struct Cluster {
    a: Server,
    b: Server,
    tokenserver: Server,
    db: String,
}

async fn cluster() -> Cluster {
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let start = |role: &str| {
        Server::start(&[
            ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
            ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
            ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
            ("SYNCSTORE_ROLE", role),
        ])
    };
    let (a, b) = (start("storage"), start("storage"));
    cli(&db, &["node", "add", &a.url(), "--capacity", "1000"]);
    cli(&db, &["node", "add", &b.url(), "--capacity", "1000"]);
    cli(&db, &["node", "set", &b.url(), "--available", "0"]);
    let tokenserver = start("tokenserver");
    Cluster {
        a,
        b,
        tokenserver,
        db,
    }
}

/// Runs SQL on the cluster's database.
async fn sql(db: &str, statement: String) {
    let db = db.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
        c.batch_execute(&statement).unwrap();
    })
    .await
    .unwrap();
}

/// A signed request as a node sends one: (signature, body hash) headers.
fn signed_headers(target: &str, path: &str, body: &[u8]) -> (String, String) {
    let head = RequestHead {
        method: "POST",
        path,
        target,
    };
    let digest = hex::encode(Sha256::digest(body));
    sign(SECRET, &head, &digest, common::now())
}

/// Posts to a node's internal listener; returns (status, body).
async fn post_internal(
    addr: &str,
    path: &str,
    headers: &(String, String),
    body: Vec<u8>,
) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header(SIGNATURE_HEADER, &headers.0)
        .header(BODY_HASH_HEADER, &headers.1)
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A signed-in client for an FxA user.
async fn client_of(c: &Cluster, user: &str) -> Client {
    let t = sign_in(&c.tokenserver, user).await;
    let endpoint = t["api_endpoint"].as_str().unwrap();
    let server = if endpoint.starts_with(&c.a.url()) {
        &c.a
    } else {
        &c.b
    };
    Client::with_token(
        server,
        t["uid"].as_u64().unwrap(),
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    )
}

/// A pass-through to a node's internal listener that keeps a copy of every request.
type Captured = Arc<Mutex<Vec<(String, String, String, Vec<u8>)>>>;

async fn capturing_proxy(to: String) -> (String, Captured) {
    use axum::extract::{Path, State};
    let seen: Captured = Arc::default();
    let app = axum::Router::new()
        .route(
            "/__internal__/{kind}/{uid}",
            axum::routing::post(
                |State((to, seen)): State<(String, Captured)>,
                 Path((kind, uid)): Path<(String, u64)>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let path = format!("/__internal__/{kind}/{uid}");
                    let h = |n| headers[n].to_str().unwrap().to_string();
                    let sig = (h(SIGNATURE_HEADER), h(BODY_HASH_HEADER));
                    seen.lock().unwrap().push((
                        path.clone(),
                        sig.0.clone(),
                        sig.1.clone(),
                        body.to_vec(),
                    ));
                    let (status, text) = post_internal(&to, &path, &sig, body.to_vec()).await;
                    (axum::http::StatusCode::from_u16(status).unwrap(), text)
                },
            ),
        )
        .with_state((to, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captured_receive_replayed_to_the_source_or_the_target_is_refused() {
    let c = cluster().await;
    let client = client_of(&c, "replayed").await;
    let uid = client.uid;
    let r = client
        .put("/storage/tabs/before", &json!({"payload": "pre-move"}))
        .await;
    assert_eq!(r.status, 200);

    // B's internal address, as the nodes find it, points at a recording proxy.
    let (proxy, seen) = capturing_proxy(internal_addr(&c.b)).await;
    sql(
        &c.db,
        format!(
            "UPDATE node_internal SET internal_url = '{proxy}' WHERE node = '{}'",
            c.b.url()
        ),
    )
    .await;
    let out = cli(
        &c.db,
        &["user", "move", &uid.to_string(), "--to", &c.b.url()],
    );
    assert!(out.contains("moved from"), "{out}");
    let (path, signature, hash, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, format!("/__internal__/receive/{uid}"));
    let captured = (signature, hash);

    // Replayed to the source: the signature names another node.
    let (status, text) = post_internal(&internal_addr(&c.a), &path, &captured, body.clone()).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "unsigned"
    );
    // The source still refuses the user (its moved-away flag stands) and kept no file.
    let old = common::token(SECRET, uid, &c.a.url(), 3600.0);
    let stale = Client::with_token(&c.a, uid, old.0, old.1);
    assert_eq!(stale.get("/info/collections").await.status, 401);
    let file = |s: &Server| {
        s.data
            .path()
            .join("users")
            .join(format!("{:03}", uid % 1000))
            .join(format!("{uid}.sqlite"))
    };
    assert!(!file(&c.a).exists());

    // Replayed to the target itself: the nonce was taken.
    let (status, text) = post_internal(&internal_addr(&c.b), &path, &captured, body.clone()).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "replayed"
    );

    // The user carries on at the target with its data, written after the move intact.
    let client = client_of(&c, "replayed").await;
    assert_eq!(client.uid, uid);
    let r = client.get("/storage/tabs/before").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["payload"], "pre-move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receive_without_a_pending_move_to_this_node_is_refused() {
    let c = cluster().await;
    let client = client_of(&c, "stays").await;
    let uid = client.uid;
    assert_eq!(
        client
            .put("/storage/tabs/x", &json!({"payload": "kept"}))
            .await
            .status,
        200
    );
    // A genuine file, freshly and correctly signed for B, but no move is pending.
    let body = user_file(4, "");
    let path = format!("/__internal__/receive/{uid}");
    let headers = signed_headers(&c.b.url(), &path, &body);
    let (status, text) = post_internal(&internal_addr(&c.b), &path, &headers, body.clone()).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("no move of user"), "{text}");
    // A move pending to another node (A) does not let B take it either.
    sql(
        &c.db,
        format!(
            "INSERT INTO pending_moves (uid, node, started_at) VALUES ({uid}, '{}', 0)",
            c.a.url()
        ),
    )
    .await;
    let headers = signed_headers(&c.b.url(), &path, &body);
    let (status, _) = post_internal(&internal_addr(&c.b), &path, &headers, body).await;
    assert_eq!(status, 409);
    // A node with no assignment database takes no receive at all.
    let alone = Server::start(&[
        ("SYNCSTORE_ROLE", "storage"),
        ("SYNCSTORE_INTERNAL_LISTEN", "127.0.0.1:0"),
    ]);
    let body = user_file(4, "");
    let headers = signed_headers(&alone.url(), &path, &body);
    let (status, _) = post_internal(&internal_addr(&alone), &path, &headers, body).await;
    assert_eq!(status, 401);
    // A correctly signed delete of a user who is still current is refused by both
    // nodes: only uids the assignment database has retired may be deleted that way.
    let path = format!("/__internal__/delete/{uid}");
    for node in [&c.a, &c.b] {
        let headers = signed_headers(&node.url(), &path, &[]);
        let (status, text) = post_internal(&internal_addr(node), &path, &headers, vec![]).await;
        assert_eq!(status, 409, "{text}");
    }
    assert_eq!(
        client.get("/storage/tabs/x").await.json()["payload"],
        "kept"
    );
}

/// The bytes of a user file made from our schema files at `version`, plus `extra` SQL.
fn user_file(version: usize, extra: &str) -> Vec<u8> {
    const STEPS: [&str; 4] = [
        include_str!("../../schema/user.sql"),
        include_str!("../../schema/user_v2.sql"),
        include_str!("../../schema/user_v3.sql"),
        include_str!("../../schema/user_v4.sql"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut sql: String = STEPS[..version].concat();
        if version == 4 {
            sql.push_str("DROP TABLE batch_items;");
        }
        sql.push_str(extra);
        sql.push_str(&format!("PRAGMA user_version = {version};"));
        conn.execute_batch(&sql).unwrap();
    }
    std::fs::read(&path).unwrap()
}

/// A file with only `bso(x)` and a current version number.
fn bare_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE bso(x); PRAGMA user_version = 4;")
            .unwrap();
    }
    std::fs::read(&path).unwrap()
}

const TRIGGER: &str = "CREATE TRIGGER rewrite AFTER INSERT ON bso BEGIN \
     UPDATE bso SET payload = 'owned' WHERE rowid = new.rowid; END;";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn received_files_must_have_exactly_our_schema() {
    let c = cluster().await;
    let client = client_of(&c, "checked").await;
    let uid = client.uid;
    assert_eq!(
        client
            .put("/storage/tabs/x", &json!({"payload": "kept"}))
            .await
            .status,
        200
    );
    let pending = format!(
        "INSERT INTO pending_moves (uid, node, started_at) VALUES ({uid}, '{}', 0)
         ON CONFLICT (uid) DO UPDATE SET node = excluded.node",
        c.b.url()
    );
    sql(&c.db, pending.clone()).await;
    let path = format!("/__internal__/receive/{uid}");
    let b_file =
        c.b.data
            .path()
            .join("users")
            .join(format!("{:03}", uid % 1000))
            .join(format!("{uid}.sqlite"));
    for (what, body) in [
        ("trigger", user_file(4, TRIGGER)),
        ("bare bso(x)", bare_file()),
        ("view", user_file(3, "CREATE VIEW v AS SELECT 1;")),
        ("not sqlite", b"hello".to_vec()),
    ] {
        let headers = signed_headers(&c.b.url(), &path, &body);
        let (status, text) = post_internal(&internal_addr(&c.b), &path, &headers, body).await;
        assert_eq!(status, 422, "{what}: {text}");
        assert!(text.contains("refused"), "{what}: {text}");
        assert!(!b_file.exists(), "{what} was installed");
        assert!(
            std::fs::read_dir(c.b.data.path().join("moves"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
            "{what}: the spooled file was left behind"
        );
    }
    // The user's data where it lives is untouched.
    assert_eq!(
        client.get("/storage/tabs/x").await.json()["payload"],
        "kept"
    );

    // A genuine file of each supported version is taken.
    for version in 1..=4 {
        let body = user_file(version, "");
        let headers = signed_headers(&c.b.url(), &path, &body);
        let (status, text) = post_internal(&internal_addr(&c.b), &path, &headers, body).await;
        assert_eq!(status, 200, "version {version}: {text}");
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(r["records"], 0, "{text}");
        assert!(b_file.exists());
    }
}

/// Runs `syncstore user import FILE ARGS… --data-dir DIR`; returns (ok, stdout, stderr).
fn user_import(data: &std::path::Path, file: &[u8], args: &[&str]) -> (bool, String, String) {
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), file).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["user", "import"])
        .arg(src.path())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("SYNCSTORE_SECRETS", SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn user_import_takes_only_files_with_exactly_our_schema() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("users/005/5.sqlite");
    for (what, body) in [
        ("trigger", user_file(4, TRIGGER)),
        ("bare bso(x)", bare_file()),
    ] {
        let (ok, _, err) = user_import(data.path(), &body, &["--uid", "5"]);
        assert!(!ok, "{what} was imported");
        assert!(err.contains("user file 5 refused"), "{what}: {err}");
        assert!(!file.exists(), "{what} was installed");
    }
    let (ok, _, err) = user_import(data.path(), &user_file(4, TRIGGER), &[]);
    assert!(!ok && err.contains("give --uid"), "{err}");

    for version in 1..=4 {
        let (ok, out, err) = user_import(
            data.path(),
            &user_file(version, ""),
            &["--uid", "5", "--replace"],
        );
        assert!(ok, "version {version}: {err}");
        assert!(
            out.contains(&format!("installed a schema version {version} file")),
            "{out}"
        );
    }
    // Over an existing file: only with --replace, and a refused file leaves it be.
    let kept = std::fs::read(&file).unwrap();
    let (ok, _, err) = user_import(data.path(), &user_file(4, ""), &["--uid", "5"]);
    assert!(!ok && err.contains("--replace"), "{err}");
    let (ok, _, err) = user_import(data.path(), &bare_file(), &["--uid", "5", "--replace"]);
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), kept);

    // A JSON import never writes through a user file whose schema is not ours.
    std::fs::write(&file, user_file(4, TRIGGER)).unwrap();
    let export = json!({"format": "syncstore-user/1", "uid": 5, "modified": 1.0,
        "collections": [{"name": "tabs", "modified": 1.0,
            "records": [{"id": "a", "payload": "p", "modified": 1.0}]}]});
    let (ok, _, err) = user_import(data.path(), export.to_string().as_bytes(), &[]);
    assert!(!ok && err.contains("refused"), "{err}");
}
