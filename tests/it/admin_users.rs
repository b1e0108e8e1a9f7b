//! The admin commands over user files, run as a real process against data written
//! through the real server: export/import round trip, delete, stats, check, compact.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{self, Server};
use serde_json::{Value, json};

/// Runs `syncstore ARGS --data-dir DIR` (stdin from `input`); returns success, stdout, stderr.
fn syncstore(dir: &Path, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run syncstore");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a client sees of a user: info/collections and every record of each collection.
async fn snapshot(server: &Server, uid: u64) -> Value {
    let c = server.client(uid);
    let info = c.get("/info/collections").await.json();
    let mut out = json!({"info": info.clone()});
    for name in info.as_object().unwrap().keys() {
        let r = c.get(&format!("/storage/{name}?full=1&sort=index")).await;
        assert_eq!(r.status, 200);
        out[name] = r.json();
    }
    out
}

#[tokio::test]
async fn export_delete_import_round_trips_every_record_and_timestamp() {
    let server = Server::start(&[]);
    let c = server.client(5);
    for i in 0..30 {
        let r = c
            .put(
                &format!("/storage/bookmarks/b{i:02}"),
                &json!({"payload": format!("bookmark {i} ünïcödé"), "sortindex": i * 3}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = c
        .post(
            "/storage/tabs",
            &json!([{"id": "t1", "payload": "tab", "ttl": 3600}, {"id": "t2", "payload": ""}]),
        )
        .await;
    assert_eq!(r.status, 200);
    let before = snapshot(&server, 5).await;
    let dir = server.stop();

    let (ok, export, err) = syncstore(dir.path(), &["user", "export", "5"], None);
    assert!(ok, "{err}");
    let parsed: Value = serde_json::from_str(&export).unwrap();
    assert_eq!(parsed["uid"], 5);
    assert_eq!(parsed["collections"].as_array().unwrap().len(), 2);

    let (ok, out, err) = syncstore(dir.path(), &["user", "stats", "5"], None);
    assert!(ok, "{err}");
    assert!(out.contains("32 records"), "{out}");
    assert!(out.contains("bookmarks") && out.contains("tabs"), "{out}");

    let (ok, out, _) = syncstore(dir.path(), &["user", "delete", "5"], None);
    assert!(ok);
    assert!(out.contains("deleted"), "{out}");
    assert!(!common_user_file(dir.path(), 5).exists());
    let (ok, _, err) = syncstore(dir.path(), &["user", "export", "5"], None);
    assert!(!ok && err.contains("no data"), "{err}");

    let (ok, out, err) = syncstore(dir.path(), &["user", "import"], Some(&export));
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 32 records in 2 collections"),
        "{out}"
    );
    // And into another uid, from a file.
    let file = dir.path().join("export.json");
    std::fs::write(&file, &export).unwrap();
    let (ok, _, err) = syncstore(
        dir.path(),
        &["user", "import", file.to_str().unwrap(), "--uid", "6"],
        None,
    );
    assert!(ok, "{err}");

    let server = Server::start_in(dir, &[]);
    assert_eq!(snapshot(&server, 5).await, before);
    assert_eq!(snapshot(&server, 6).await, before);
    // A later write still gets a timestamp above every imported one.
    let r = server
        .client(5)
        .put("/storage/bookmarks/new", &json!({"payload": "x"}))
        .await;
    assert_eq!(r.status, 200);
    let last = common::ts_value(&before["info"]["tabs"]);
    assert!(common::ts_value(&r.json()) > last);
}

/// The server answers info/collections and "anything newer?" listings from memory; an
/// admin command writing to the user's file while the server runs must show at once,
/// however soon after the server's own last write it lands.
#[tokio::test]
async fn admin_writes_beside_a_running_server_show_at_once() {
    let server = Server::start(&[]);
    let c = server.client(7);
    let dir = server.data.path();
    for round in 0..5 {
        // The client syncs: its write, then what it would ask next time.
        let r = c
            .put(
                "/storage/tabs/t",
                &json!({"payload": format!("tab {round}")}),
            )
            .await;
        assert_eq!(r.status, 200);
        let info = c.get("/info/collections").await;
        let since = info.header("x-last-modified").unwrap();
        assert_eq!(
            c.get(&format!("/storage/forms?newer={since}")).await.json(),
            json!([])
        );

        // An import adds a collection and a record newer than anything the client saw.
        // (The collection claims to be older than its record: the record wins.)
        let forms = format!("f{round}");
        let newer = common::parse_ts(&since) + 1;
        let export = format!(
            r#"{{"format": "syncstore-user/1", "uid": 7, "modified": 1.00,
                "collections": [{{"name": "forms", "modified": 1.00, "records": [
                    {{"id": "{forms}", "payload": "imported", "modified": {}.{:02}}}]}}]}}"#,
            newer / 100,
            newer % 100
        );
        let (ok, _, err) = syncstore(dir, &["user", "import"], Some(&export));
        assert!(ok, "{err}");
        let info = c.get("/info/collections").await.json();
        assert!(info.get("forms").is_some(), "round {round}: {info}");
        let listed = c.get(&format!("/storage/forms?newer={since}")).await.json();
        assert_eq!(listed, json!([forms]), "round {round}");
    }

    // A user deleted beside the server has nothing left to sync.
    let (ok, _, err) = syncstore(dir, &["user", "delete", "7"], None);
    assert!(ok, "{err}");
    assert_eq!(c.get("/info/collections").await.json(), json!({}));
    assert_eq!(c.get("/storage/tabs?newer=0").await.json(), json!([]));
}

fn common_user_file(dir: &Path, uid: u64) -> std::path::PathBuf {
    dir.join("users")
        .join(format!("{:03}", uid % 1000))
        .join(format!("{uid}.sqlite"))
}

#[test]
fn import_refuses_what_is_not_an_export() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = syncstore(dir.path(), &["user", "import"], Some("{\"x\": 1}"));
    assert!(!ok && err.contains("not a user export"), "{err}");
    let bad = json!({"format": "syncstore-user/1", "uid": 1, "modified": 1.0,
                     "collections": [{"name": "bad name!", "modified": 1.0, "records": []}]});
    let (ok, _, err) = syncstore(dir.path(), &["user", "import"], Some(&bad.to_string()));
    assert!(!ok && err.contains("bad collection name"), "{err}");
}

#[tokio::test]
async fn check_stats_and_compact_cover_every_user() {
    let server = Server::start(&[]);
    for uid in [1u64, 2, 3] {
        let records: Vec<Value> = (0..(uid * 50))
            .map(|i| json!({"id": format!("r{i}"), "payload": "p".repeat(2000)}))
            .collect();
        for chunk in records.chunks(100) {
            let r = server
                .client(uid)
                .post("/storage/history", &json!(chunk))
                .await;
            assert_eq!(r.status, 200);
        }
    }
    // User 3 deletes most of its data: its file is now mostly free pages.
    assert_eq!(
        server.client(3).delete("/storage/history").await.status,
        200
    );
    let dir = server.stop();

    let (ok, out, err) = syncstore(dir.path(), &["stats"], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("3 users, 150 records"), "{out}");
    let largest = out.lines().skip_while(|l| !l.contains("largest")).nth(2);
    assert!(largest.unwrap().trim_start().starts_with('3'), "{out}");

    let (ok, out, err) = syncstore(dir.path(), &["check"], None);
    assert!(ok, "{err}");
    assert!(out.contains("checked 3 user files: 3 ok, 0 bad"), "{out}");

    let path = common_user_file(dir.path(), 3);
    let before = std::fs::metadata(&path).unwrap().len()
        + std::fs::metadata(format!("{}-wal", path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    let (ok, out, err) = syncstore(dir.path(), &["compact", "--threshold", "0.5"], None);
    assert!(ok, "{err}");
    assert!(out.contains("compacted 1 of 3 user files"), "{out}");
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after < before / 4, "{before} -> {after}");

    // Damage user 2's file: check names it and fails.
    let path2 = common_user_file(dir.path(), 2);
    let _ = std::fs::remove_file(format!("{}-wal", path2.display()));
    let mut bytes = std::fs::read(&path2).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 8192] {
        *b = 0x5a;
    }
    std::fs::write(&path2, bytes).unwrap();
    let (ok, out, _) = syncstore(dir.path(), &["check"], None);
    assert!(!ok);
    assert!(out.contains("BAD user 2"), "{out}");
    assert!(out.contains("2 ok, 1 bad"), "{out}");

    // The data still serves: the files that are sound still work after all of this.
    let server = Server::start_in(dir, &[]);
    let r = server.client(1).get("/storage/history").await;
    assert_eq!(r.json().as_array().unwrap().len(), 50);
}
