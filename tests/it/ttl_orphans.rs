//! Record expiry to the millisecond (a `ttl` counts from the write's wall-clock time,
//! however far the user's timestamps have run ahead of the clock), the upgrade of
//! older files to millisecond expiry, and the removal of files of users who left a node.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, Server};
use serde_json::json;

/// The wall clock in milliseconds (the server's clock: same machine).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `syncstore ARGS --data-dir DIR` with `input` on stdin; panics on failure.
fn syncstore(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run syncstore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A record written with `ttl=1` is readable until one second after its write and
/// gone from the first read that starts a second after the write's response, even
/// when the user's timestamps run an hour ahead of the clock (an import of data
/// written "in the future", e.g. by a node whose clock was ahead, puts them there:
/// every later write gets a timestamp above it). Expiry used to count from the
/// write's timestamp, so such a record stayed visible for an hour.
#[tokio::test]
async fn ttl_counts_from_the_write_to_the_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let ahead_secs = 3600;
    let future = (now_ms() + ahead_secs * 1000) / 1000;
    let export = json!({
        "format": "syncstore-user/1", "uid": 7, "modified": future,
        "collections": [{"name": "clients", "modified": future, "records": [
            {"id": "c1", "payload": "old", "modified": future}]}]
    });
    syncstore(dir.path(), &["user", "import"], &export.to_string());
    let server = Server::start_in(dir, &[]);
    let c = server.client(7);

    let write_start = now_ms();
    let r = c
        .put("/storage/tabs/t1", &json!({"payload": "x", "ttl": 1}))
        .await;
    let write_end = now_ms();
    assert_eq!(r.status, 200, "{}", r.text);
    // The setup holds: the write's timestamp is far ahead of the clock.
    let ts = r.ts("x-last-modified");
    assert!(ts * 10 > write_end + (ahead_secs - 60) * 1000, "{ts}");

    // Read until the record is gone (bounded: 3 s, 300 reads).
    let mut gone_at = None;
    for _ in 0..300 {
        let start = now_ms();
        let r = c.get("/storage/tabs/t1").await;
        let end = now_ms();
        match r.status.as_u16() {
            200 => {
                assert_eq!(r.json()["payload"], "x");
                assert!(
                    start < write_end + 1000,
                    "visible in a read that started {} ms after the write's response",
                    start - write_end
                );
            }
            404 => {
                assert!(
                    end >= write_start + 1000,
                    "gone {} ms after the write started",
                    end - write_start
                );
                gone_at = Some(start);
                break;
            }
            s => panic!("status {s}: {}", r.text),
        }
        if start > write_start + 3000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone_at.is_some(), "the ttl=1 record never expired");
    // And gone from listings and counts too.
    let list = c.get("/storage/tabs").await;
    assert_eq!(list.json(), json!([]));
    let counts = c.get("/info/collection_counts").await.json();
    assert!(counts.get("tabs").is_none(), "{counts}");
    assert_eq!(counts["clients"], 1, "{counts}");
}

/// A record written with a ttl in a batch expires that long after the commit.
#[tokio::test]
async fn batch_ttl_counts_from_the_commit() {
    let server = Server::start(&[]);
    let c = server.client(8);
    let r = c
        .post(
            "/storage/tabs?batch=true",
            &json!([{"id": "b1", "payload": "x", "ttl": 1}]),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let batch = r.json()["batch"].as_str().unwrap().to_string();
    // The append happened well before the commit: the ttl must not count from it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let commit_start = now_ms();
    let r = c
        .post(
            &format!("/storage/tabs?batch={batch}&commit=true"),
            &json!([]),
        )
        .await;
    let commit_end = now_ms();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.get("/storage/tabs/b1").await;
    if now_ms() < commit_start + 1000 {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let wait = commit_end + 1000 - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    assert_eq!(c.get("/storage/tabs/b1").await.status, 404);
}

/// A version 4 file (expiry in 10 ms units), opened by this binary, is upgraded to
/// millisecond expiry: what was live stays live, what was expired stays expired, a
/// never-expiring record never expires, and an open batch can still be committed.
#[tokio::test]
async fn a_version_4_file_keeps_its_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let uid = 9u64;
    let path = syncstore::storage::userdbs::user_path(dir.path(), uid);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    for step in [
        include_str!("../../schema/user.sql"),
        include_str!("../../schema/user_v2.sql"),
        include_str!("../../schema/user_v3.sql"),
        include_str!("../../schema/user_v4.sql"),
    ] {
        conn.execute_batch(step).unwrap();
    }
    let cs = now_ms() / 10; // 10 ms units
    let (hour, minute) = (360_000, 6_000);
    conn.execute_batch(&format!(
        "PRAGMA user_version = 4;
         INSERT INTO meta (key, value) VALUES ('last_modified', {m});
         INSERT INTO collections (id, name, modified) VALUES (1, 'tabs', {m});
         INSERT INTO bso VALUES (1, 'live', NULL, 'a', 1, {m}, {live});
         INSERT INTO bso VALUES (1, 'dead', NULL, 'b', 1, {m}, {dead});
         INSERT INTO bso VALUES (1, 'never', NULL, 'c', 1, {m}, 9223372036854775807);
         UPDATE meta SET value = 3 WHERE key = 'usage_bytes';
         INSERT INTO batch_items (batch, id, collection, expiry) VALUES ('B', '', 'tabs', {live});
         INSERT INTO batch_items (batch, id, payload, sent) VALUES ('B', 'fromb', 'd', 0);",
        m = cs - 2 * minute,
        live = cs + hour,
        dead = cs - minute,
    ))
    .unwrap();
    drop(conn);

    let server = Server::start_in(dir, &[]);
    let c = server.client(uid);
    let r = c.get("/storage/tabs?full=1&sort=index").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["live", "never"]);
    assert_eq!(c.get("/storage/tabs/dead").await.status, 404);
    let r = c
        .post("/storage/tabs?batch=B&commit=true", &json!([]))
        .await;
    assert_eq!(
        r.status, 200,
        "the open batch survived the upgrade: {}",
        r.text
    );
    assert_eq!(c.get("/storage/tabs/fromb").await.json()["payload"], "d");

    // Stored expiry is now in milliseconds: an hour ahead stays an hour ahead.
    let dir = server.stop();
    let conn = rusqlite::Connection::open(syncstore::storage::userdbs::user_path(dir.path(), uid))
        .unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let live: i64 = conn
        .query_row("SELECT expiry FROM bso WHERE id = 'live'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(live, (cs + hour) * 10);
    let never: i64 = conn
        .query_row("SELECT expiry FROM bso WHERE id = 'never'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(never, i64::MAX);
}

/// Runs `syncstore ARGS --data-dir DIR` against the assignment database `db`, as the
/// node at `node_url`; panics on failure.
fn node_cli(db: &str, dir: &Path, node_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("SYNCSTORE_TOKENSERVER_DATABASE_URL", db)
        .env("SYNCSTORE_NODE_URL", node_url)
        .env("SYNCSTORE_SECRETS", common::SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client of the user `user` with a token from `tokenserver`, for `node`.
async fn sign_in_to(tokenserver: &Server, node: &Server, user: &str) -> (common::Client, u64) {
    let t = common::sign_in(tokenserver, user).await;
    let endpoint = t["api_endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with(&node.url()), "{endpoint}");
    let uid = t["uid"].as_u64().unwrap();
    let c = common::Client::with_token(
        node,
        uid,
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    (c, uid)
}

/// After a plain drain (users get a new uid on another node at their next sign-in),
/// the old node's upkeep deletes the files of the uids that left once the grace
/// period has passed since they left; `stats` counts them while they wait. A user
/// still placed on the old node keeps its file, and the new node's data is untouched.
#[tokio::test]
async fn files_of_users_who_left_are_deleted_after_the_grace_period() {
    let db = common::fresh_database().await;
    let verify = common::fake_verifier().await;
    let base: Vec<(&str, String)> = vec![
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.clone()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0".into()),
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1".into()),
    ];
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_at = format!("127.0.0.1:{metrics_port}");
    let start = |data: Option<(tempfile::TempDir, String)>, role: &'static str, grace: &str| {
        let mut e: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.push(("SYNCSTORE_ROLE", role));
        e.push(("SYNCSTORE_ORPHAN_GRACE_SECS", grace));
        if data.is_some() {
            e.push(("SYNCSTORE_METRICS_LISTEN", &metrics_at));
        }
        match data {
            Some((dir, listen)) => Server::start_at(dir, &listen, &e),
            None => Server::start(&e),
        }
    };
    let a = start(None, "storage", "3600");
    let b = start(None, "storage", "1");
    common::cli(&db, &["node", "add", &a.url(), "--capacity", "100"]);
    common::cli(&db, &["node", "add", &b.url(), "--capacity", "100"]);
    common::cli(&db, &["node", "set", &b.url(), "--available", "0"]);
    let tokenserver = start(None, "tokenserver", "1");

    let mut old = Vec::new();
    for user in ["leaver1", "leaver2", "stayer"] {
        let (c, uid) = sign_in_to(&tokenserver, &a, user).await;
        let r = c
            .put("/storage/bookmarks/r1", &json!({"payload": user}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        old.push(uid);
    }
    let path_on_a = |uid: u64| syncstore::storage::userdbs::user_path(a.data.path(), uid);
    assert!(old.iter().all(|&uid| path_on_a(uid).exists()));

    // A plain drain: the leavers' next sign-in gives them a new uid on B.
    common::cli(&db, &["node", "drain", &a.url()]);
    common::cli(&db, &["node", "set", &b.url(), "--available", "100"]);
    let mut new = Vec::new();
    for user in ["leaver1", "leaver2"] {
        let (c, uid) = sign_in_to(&tokenserver, &b, user).await;
        assert!(!old.contains(&uid));
        let r = c
            .put("/storage/bookmarks/r2", &json!({"payload": "on b"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        new.push((c, uid));
    }

    // A's grace period is an hour: after several upkeep ticks nothing is deleted yet,
    // and stats (run beside the server) counts the two files waiting.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(old.iter().all(|&uid| path_on_a(uid).exists()));
    let a_url = a.url();
    let out = node_cli(&db, a.data.path(), &a_url, &["stats"]);
    assert!(out.contains("3 users"), "{out}");
    assert!(
        out.contains(&format!(
            "2 files of users who left {a_url} wait for deletion"
        )),
        "{out}"
    );

    // With a grace period of a second, A's upkeep deletes the leavers' files.
    let listen = a.addr.clone();
    let dir = a.stop();
    let a = start(Some((dir, listen)), "storage", "1");
    assert_eq!(a.url(), a_url);
    let path_on_a = |uid: u64| syncstore::storage::userdbs::user_path(a.data.path(), uid);
    for _ in 0..200 {
        if !path_on_a(old[0]).exists() && !path_on_a(old[1]).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!path_on_a(old[0]).exists() && !path_on_a(old[1]).exists());
    assert!(
        path_on_a(old[2]).exists(),
        "the user still placed on A keeps its file"
    );
    let out = node_cli(&db, a.data.path(), &a_url, &["stats"]);
    assert!(out.contains("1 users, 1 records"), "{out}");
    assert!(out.contains("0 files of users who left"), "{out}");
    let metrics = reqwest::get(format!("http://{metrics_at}/__metrics__"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("syncstore_orphan_files_deleted_total 2"),
        "{metrics}"
    );

    // The leavers' data on B is untouched (B's own upkeep, with a grace of a second,
    // keeps the files of users placed on it).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (c, uid) in &new {
        assert!(syncstore::storage::userdbs::user_path(b.data.path(), *uid).exists());
        assert_eq!(
            c.get("/storage/bookmarks/r2").await.json()["payload"],
            "on b"
        );
    }
}
