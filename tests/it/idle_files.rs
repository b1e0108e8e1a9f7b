//! An idle user costs its database file and nothing else: once a user has been idle
//! for `idle_user_secs`, upkeep leaves no `-wal` or `-shm` beside the file and the
//! server holds no descriptor of it, whether the file was still open (closed idle) or
//! had left the LRU earlier (evicted while active, its WAL index kept until then); the
//! data reads back whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Client, Server};
use serde_json::{Value, json};

/// The server's open descriptors whose target is `db` or one of its side files.
fn descriptors_of(pid: u32, db: &Path) -> Vec<PathBuf> {
    let prefix = db.to_string_lossy().into_owned();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&prefix))
        .collect()
}

fn side_files(db: &Path) -> Vec<String> {
    ["-wal", "-shm"]
        .iter()
        .map(|s| format!("{}{s}", db.display()))
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// Waits (up to 30 s) until `db` has no side files and no descriptor in the server.
async fn wait_until_bare(s: &Server, db: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (files, fds) = (side_files(db), descriptors_of(s.pid(), db));
        if files.is_empty() && fds.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still there after the idle threshold: files {files:?}, descriptors {fds:?}\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a light user's data: single records, a POST, and a one-request batch.
async fn write_light_user(c: &Client) -> Value {
    let r = c
        .put(
            "/storage/meta/global",
            &json!({"payload": "{\"syncID\":\"abc\"}"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let bookmarks: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("b{i}"), "payload": "p".repeat(300 + i), "sortindex": i}))
        .collect();
    let r = c.post("/storage/bookmarks", &json!(bookmarks)).await;
    assert_eq!(r.status, 200);
    let tabs = json!([{"id": "t1", "payload": "t".repeat(1200), "ttl": 1_814_400}]);
    let r = c.post("/storage/tabs?batch=true&commit=true", &tabs).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    c.get("/storage/bookmarks?full=1&sort=oldest").await.json()
}

#[tokio::test]
async fn an_idle_users_file_is_left_alone_with_no_wal_index_or_descriptor() {
    let s = Server::start(&[
        ("SYNCSTORE_IDLE_USER_SECS", "5"),
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1"),
    ]);
    let c = s.client(77);
    let written = write_light_user(&c).await;
    let before = c.get("/info/collections").await.json();
    let db = s.data.path().join("users/077/77.sqlite");
    assert!(
        !side_files(&db).is_empty() && !descriptors_of(s.pid(), &db).is_empty(),
        "an active user has its WAL open"
    );
    wait_until_bare(&s, &db).await;
    assert!(
        s.log_text().contains("idle_closed="),
        "closed by the idle close: {}",
        s.log_text()
    );
    // Everything reads back, timestamps included.
    assert_eq!(c.get("/info/collections").await.json(), before);
    assert_eq!(
        c.get("/storage/bookmarks?full=1&sort=oldest").await.json(),
        written
    );
    let tabs = c.get("/storage/tabs?full=1").await.json();
    assert_eq!(tabs[0]["payload"], json!("t".repeat(1200)));
    // Reading opened it again; idle again, it is bare again.
    wait_until_bare(&s, &db).await;
}

#[tokio::test]
async fn a_file_evicted_while_active_loses_its_wal_index_once_idle() {
    let s = Server::start(&[
        ("SYNCSTORE_IDLE_USER_SECS", "3"),
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1"),
        ("SYNCSTORE_MAX_OPEN_USERS", "1"),
    ]);
    let (a, b) = (s.client(81), s.client(82));
    let written = write_light_user(&a).await;
    // b takes the one open slot: a's file is closed with its WAL index kept.
    write_light_user(&b).await;
    let db = s.data.path().join("users/081/81.sqlite");
    assert!(
        Path::new(&format!("{}-shm", db.display())).exists(),
        "evicted while active: the index is kept for a quick reopen"
    );
    wait_until_bare(&s, &db).await;
    assert_eq!(
        a.get("/storage/bookmarks?full=1&sort=oldest").await.json(),
        written
    );
}

/// The page size of the database file at `db` (read in a connection of its own that
/// leaves no WAL behind).
fn page_size(db: &Path) -> (i64, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let size = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let check = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    (size, check)
}

/// Everything a client can read of a user: collections with their timestamps, and
/// every record with its id, payload, sortindex and timestamp.
async fn everything(c: &Client) -> Value {
    let collections = c.get("/info/collections").await.json();
    let mut all = serde_json::Map::new();
    for name in collections.as_object().unwrap().keys() {
        let records = c
            .get(&format!("/storage/{name}?full=1&sort=oldest"))
            .await
            .json();
        all.insert(name.clone(), records);
    }
    json!({"collections": collections, "records": all})
}

/// A file made by the version 5 schema with 4 KB pages, as every file was before
/// small pages: `rows` is SQL inserting its data.
fn version_five_file(uid: u64, rows: &str) -> tempfile::TempDir {
    const STEPS: [&str; 5] = [
        include_str!("../../schema/user.sql"),
        include_str!("../../schema/user_v2.sql"),
        include_str!("../../schema/user_v3.sql"),
        include_str!("../../schema/user_v4.sql"),
        include_str!("../../schema/user_v5.sql"),
    ];
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("users").join(format!("{:03}", uid % 1000));
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(dir.join(format!("{uid}.sqlite"))).unwrap();
    conn.execute_batch("PRAGMA page_size = 4096;").unwrap();
    for step in STEPS {
        conn.execute_batch(step).unwrap();
    }
    conn.execute_batch("DROP TABLE batch_items; PRAGMA user_version = 5; PRAGMA journal_mode=WAL;")
        .unwrap();
    conn.execute_batch(rows).unwrap();
    data
}

#[tokio::test]
async fn small_files_go_to_small_pages_and_large_ones_to_large_keeping_every_record() {
    let uid = 91;
    let mut rows = String::from(
        "INSERT INTO collections (id, name, modified) VALUES
             (1, 'bookmarks', 170000000012), (2, 'tabs', 170000000345);
         INSERT INTO meta (key, value) VALUES ('last_modified', 170000000345);",
    );
    for i in 0..12 {
        rows.push_str(&format!(
            "INSERT INTO bso (collection, id, sortindex, payload, payload_size, modified, expiry)
             VALUES (1, 'b{i}', {i}, '{p}', {n}, {m}, 9223372036854775807);",
            p = "q".repeat(200 + 37 * i),
            n = 200 + 37 * i,
            m = 170000000000 + i as i64,
        ));
    }
    rows.push_str(
        "INSERT INTO bso (collection, id, sortindex, payload, payload_size, modified, expiry)
         VALUES (2, 't1', NULL, 'tabs!', 5, 170000000345, 9999999999999);
         UPDATE meta SET value = (SELECT sum(payload_size) FROM bso) WHERE key = 'usage_bytes';",
    );
    let data = version_five_file(uid, &rows);
    let db = data
        .path()
        .join(format!("users/{:03}/{uid}.sqlite", uid % 1000));
    assert_eq!(page_size(&db).0, 4096);
    let s = Server::start_in(
        data,
        &[
            ("SYNCSTORE_IDLE_USER_SECS", "3"),
            ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1"),
        ],
    );
    let c = s.client(uid);
    let before = everything(&c).await;
    assert_eq!(before["records"]["bookmarks"].as_array().unwrap().len(), 12);
    assert_eq!(
        before["records"]["tabs"][0]["modified"],
        json!(1700000003.45)
    );
    wait_until_bare(&s, &db).await;
    let (size, check) = page_size(&db);
    assert!(size < 4096, "a small file gets small pages: {size}");
    assert_eq!(check, "ok");
    assert_eq!(
        everything(&c).await,
        before,
        "every record and timestamp kept"
    );

    // Grown past the threshold, it goes back to large pages, whole.
    for n in 0..8 {
        let batch: Vec<Value> = (0..50)
            .map(|i| json!({"id": format!("h{n}x{i}"), "payload": "h".repeat(1500 + i)}))
            .collect();
        assert_eq!(c.post("/storage/history", &json!(batch)).await.status, 200);
    }
    let grown = everything(&c).await;
    wait_until_bare(&s, &db).await;
    let (size, check) = page_size(&db);
    assert_eq!(
        (size, check.as_str()),
        (4096, "ok"),
        "a large file gets large pages"
    );
    assert_eq!(everything(&c).await, grown);
}
