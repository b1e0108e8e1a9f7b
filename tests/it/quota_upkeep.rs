//! Quota enforcement, background upkeep and graceful shutdown, seen from outside.

use std::time::Duration;

use crate::common::Server;
use rusqlite::Connection;
use serde_json::json;

#[tokio::test]
async fn quota_refuses_writes_past_it_and_reports_usage() {
    let s = Server::start(&[("SYNCSTORE_QUOTA_BYTES", "1000")]);
    let c = s.client(1);
    let r = c
        .put("/storage/col/a", &json!({"payload": "x".repeat(500)}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-weave-quota-remaining").is_none(),
        "not near the quota yet"
    );
    let r = c
        .post(
            "/storage/col",
            &json!([{"id": "b", "payload": "x".repeat(350)}]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weave-quota-remaining").as_deref(), Some("0.15"));
    // Past the quota: 403 with code 14, nothing written.
    let r = c
        .put("/storage/col/c", &json!({"payload": "x".repeat(300)}))
        .await;
    assert_eq!((r.status.as_u16(), r.json()), (403, json!(14)));
    assert_eq!(c.get("/storage/col/c").await.status, 404);
    let r = c
        .post(
            "/storage/col",
            &json!([{"id": "d", "payload": "x".repeat(300)}]),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .post(
            "/storage/other?batch=true&commit=true",
            &json!([{"id": "e", "payload": "x".repeat(300)}]),
        )
        .await;
    assert_eq!(r.status, 403);
    // info/quota and info/collection_usage agree with what is stored.
    let quota = c.get("/info/quota").await.json();
    assert!((quota[0].as_f64().unwrap() - 850.0 / 1024.0).abs() < 1e-9);
    assert!((quota[1].as_f64().unwrap() - 1000.0 / 1024.0).abs() < 1e-9);
    let usage = c.get("/info/collection_usage").await.json();
    assert!((usage["col"].as_f64().unwrap() - 850.0 / 1024.0).abs() < 1e-9);
    // Shrinking is always allowed, and frees room.
    assert_eq!(
        c.put("/storage/col/a", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    assert_eq!(
        c.put("/storage/col/c", &json!({"payload": "x".repeat(300)}))
            .await
            .status,
        200
    );
    c.delete("/storage/col").await;
    let quota = c.get("/info/quota").await.json();
    assert_eq!(quota[0].as_f64().unwrap(), 0.0);
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Whether the user file has the batch table (schema 4: only while a batch is open).
fn has_batch_table(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'batch_items'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

/// A data dir holding one user file as a server of schema `version` (1 or 2) left it:
/// the schema files up to that version applied, then `sql` (journal mode and
/// `user_version` are set here).
fn old_user_file(uid: u64, version: usize, sql: &str) -> tempfile::TempDir {
    const STEPS: [&str; 2] = [
        include_str!("../../schema/user.sql"),
        include_str!("../../schema/user_v2.sql"),
    ];
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("users").join(format!("{:03}", uid % 1000));
    std::fs::create_dir_all(&dir).unwrap();
    let conn = Connection::open(dir.join(format!("{uid}.sqlite"))).unwrap();
    for step in &STEPS[..version] {
        conn.execute_batch(step).unwrap();
    }
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA user_version = {version}; {sql}"
    ))
    .unwrap();
    data
}

#[tokio::test]
async fn upkeep_purges_expired_records_and_abandoned_batches_from_disk() {
    let s = Server::start(&[
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1"),
        ("SYNCSTORE_BATCH_TTL_SECS", "1"),
        ("SYNCSTORE_IDLE_USER_SECS", "1"),
    ]);
    let c = s.client(42);
    let short: Vec<_> = (0..50)
        .map(|i| json!({"id": format!("t{i}"), "payload": "x".repeat(100), "ttl": 1}))
        .collect();
    c.post("/storage/col", &serde_json::Value::Array(short))
        .await;
    c.put("/storage/col/keep", &json!({"payload": "kept"}))
        .await;
    let r = c
        .post(
            "/storage/col?batch=true",
            &json!([{"id": "abandoned", "payload": "x"}]),
        )
        .await;
    assert_eq!(r.status, 202);
    let path = s.data.path().join("users/042/42.sqlite");
    assert!(
        has_batch_table(&Connection::open(&path).unwrap()),
        "a batch is open"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conn = Connection::open(&path).unwrap();
        let (bsos, batch_open) = (count(&conn, "bso"), has_batch_table(&conn));
        if bsos == 1 && !batch_open {
            let usage: i64 = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'usage_bytes'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(usage, 4, "usage follows purges");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not purged: {bsos} records, batch table left: {batch_open}"
        );
    }
    assert_eq!(c.get("/storage/col").await.json(), json!(["keep"]));
    let log = s.log_text();
    assert!(log.contains("records_purged=50"), "{log}");
    assert!(log.contains("idle_closed="), "{log}");
}

#[tokio::test]
async fn sigterm_finishes_and_closes_files_cleanly() {
    let mut s = Server::start(&[]);
    let c = s.client(5);
    for i in 0..20 {
        c.put(&format!("/storage/col/{i}"), &json!({"payload": "x"}))
            .await;
    }
    assert!(s.terminate(20), "clean exit on SIGTERM:\n{}", s.log_text());
    assert!(s.log_text().contains("stopped"), "{}", s.log_text());
    let wal = s.data.path().join("users/005/5.sqlite-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL checkpointed at shutdown");
    // Everything acknowledged is there after a restart.
    let dir = s.stop();
    let s = Server::start_in(dir, &[]);
    assert_eq!(
        s.client(5).get("/info/collection_counts").await.json(),
        json!({"col": 20})
    );
}

/// A file written by a version-1 server (usage kept by triggers, which missed records
/// dropped by INSERT OR REPLACE) is brought to the current schema on first use: the
/// figure is recounted, the triggers are gone, the records are untouched.
#[tokio::test]
async fn version_one_files_are_migrated_on_first_open() {
    let data = old_user_file(
        9,
        1,
        "INSERT INTO collections (name, modified) VALUES ('forms', 170000000000);
         INSERT INTO bso (collection, id, payload, payload_size, modified, expiry)
         VALUES (1, 'f1', 'hello', 5, 170000000000, 9223372036854775807);
         INSERT INTO meta (key, value) VALUES ('last_modified', 170000000000);
         UPDATE meta SET value = 1000005 WHERE key = 'usage_bytes';",
    );
    let s = Server::start_in(data, &[]);
    let c = s.client(9);
    assert_eq!(c.get("/storage/forms/f1").await.json()["payload"], "hello");
    let quota = c.get("/info/quota").await.json();
    assert_eq!(quota[0].as_f64().unwrap(), 5.0 / 1024.0);
    // Writes keep the figure from here on, without triggers.
    let r = c.put("/storage/forms/f1", &json!({"payload": "hi"})).await;
    assert_eq!(r.status, 200);
    let quota = c.get("/info/quota").await.json();
    assert_eq!(quota[0].as_f64().unwrap(), 2.0 / 1024.0);
    let conn = Connection::open(s.data.path().join("users/009/9.sqlite")).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, syncstore::storage::userdbs::USER_SCHEMA_VERSION);
    let triggers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0);
}

/// A batch left open by a version-2 server (two batch tables) survives the move to
/// version 3 (one table): after the upgrade it is still bound to its collection, keeps
/// its records with the fields that were sent, takes more records, and commits them all.
#[tokio::test]
async fn open_batches_survive_the_version_three_migration() {
    let far = 9_000_000_000_000_i64; // batch expiry, 10 ms units: far in the future
    let data = old_user_file(
        11,
        2,
        &format!(
            "INSERT INTO batches (id, collection, expiry, records, bytes)
             VALUES ('oldbatch', 'bookmarks', {far}, 3, 6);
             INSERT INTO batch_bsos (batch, id, seq, payload, sortindex, sortindex_set, ttl, ttl_set)
             VALUES ('oldbatch', 'zz', 1, 'first', 7, 1, NULL, 0),
                    ('oldbatch', 'aa', 2, NULL, NULL, 1, 3600, 1),
                    ('oldbatch', 'mm', 3, 'third', NULL, 0, NULL, 0);"
        ),
    );
    let s = Server::start_in(data, &[]);
    let c = s.client(11);
    let r = c
        .post(
            "/storage/history?batch=oldbatch",
            &json!([{"id": "x", "payload": "y"}]),
        )
        .await;
    assert_eq!(r.status, 400, "still bound to its collection");
    let r = c
        .post(
            "/storage/bookmarks?batch=oldbatch&commit=true",
            &json!([{"id": "aa", "payload": "second"}, {"id": "new", "payload": "fourth"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = c.get("/storage/bookmarks?full=1&sort=oldest").await.json();
    let fields: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].clone(),
                b["payload"].clone(),
                b["sortindex"].clone(),
            )
        })
        .collect();
    assert_eq!(fields.len(), 4, "{listed}");
    let by_id = |id: &str| fields.iter().find(|f| f.0 == id).cloned().unwrap();
    assert_eq!(by_id("zz"), (json!("zz"), json!("first"), json!(7)));
    assert_eq!(by_id("aa"), (json!("aa"), json!("second"), json!(null)));
    assert_eq!(by_id("mm"), (json!("mm"), json!("third"), json!(null)));
    assert_eq!(by_id("new"), (json!("new"), json!("fourth"), json!(null)));
    let conn = Connection::open(s.data.path().join("users/011/11.sqlite")).unwrap();
    assert!(!has_batch_table(&conn), "the committed batch is gone");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('batches', 'batch_bsos')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

/// A user's WAL is checkpointed in the background once it passes 500 frames (~2 MB;
/// the hourly upkeep is off here): the next write starts it over, so it never reaches
/// the 1,000 frames at which SQLite would checkpoint inline, in a client's write.
#[tokio::test]
async fn long_wals_are_checkpointed_in_the_background() {
    const THRESHOLD: u64 = 500 * (4096 + 24);
    let s = Server::start(&[
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "3600"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let c = s.client(77);
    let wal = s.data.path().join("users/077/77.sqlite-wal");
    let checkpoints = || async {
        let text = reqwest::get(format!("{}/__metrics__", s.metrics_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("syncstore_checkpoints_total{outcome=\"done\"} "))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let (mut longest, mut seen) = (0, 0);
    for round in 0..60 {
        let records: Vec<_> = (0..100)
            .map(|i| json!({"id": format!("r{round}-{i}"), "payload": "x".repeat(1000)}))
            .collect();
        let r = c
            .post("/storage/history", &serde_json::Value::Array(records))
            .await;
        assert_eq!(r.status, 200);
        let len = std::fs::metadata(&wal).unwrap().len();
        longest = longest.max(len);
        if len > THRESHOLD {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while checkpoints().await == seen {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint at {len} bytes"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen = checkpoints().await;
        }
    }
    assert!(seen >= 2, "{seen} background checkpoints");
    assert!(
        longest < THRESHOLD + (1 << 20),
        "the WAL grew to {longest} bytes"
    );
    assert_eq!(
        c.get("/info/collection_counts").await.json(),
        json!({"history": 6000})
    );
}

/// Upkeep visits files no request has opened since an upgrade: it brings them to the
/// current schema first, then purges them.
#[tokio::test]
async fn upkeep_migrates_files_it_visits_before_purging() {
    let data = old_user_file(
        12,
        2,
        "INSERT INTO collections (name, modified) VALUES ('tabs', 170000000000);
         INSERT INTO bso (collection, id, payload, payload_size, modified, expiry)
         VALUES (1, 'gone', 'old', 3, 170000000000, 170000000100),
                (1, 'kept', 'new', 3, 170000000000, 9223372036854775807);
         UPDATE meta SET value = 6 WHERE key = 'usage_bytes';",
    );
    let s = Server::start_in(data, &[("SYNCSTORE_UPKEEP_INTERVAL_SECS", "1")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !s.log_text().contains("records_purged=1") {
        assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!s.log_text().contains("upkeep skipped"), "{}", s.log_text());
    let conn = Connection::open(s.data.path().join("users/012/12.sqlite")).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, syncstore::storage::userdbs::USER_SCHEMA_VERSION);
    assert_eq!(count(&conn, "bso"), 1);
    assert_eq!(
        s.client(12).get("/storage/tabs").await.json(),
        json!(["kept"])
    );
}

/// A user whose file leaves the LRU with a long WAL has the WAL emptied in the
/// background (its next open has nothing to replay), and its info/collections is still
/// answered from memory with the right figures, without opening the file.
#[tokio::test]
async fn files_leaving_the_lru_with_long_wals_are_left_with_empty_ones() {
    let s = Server::start(&[
        ("SYNCSTORE_MAX_OPEN_USERS", "1"),
        ("SYNCSTORE_UPKEEP_INTERVAL_SECS", "3600"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let (a, b) = (s.client(31), s.client(32));
    let mut modified = 0;
    for round in 0..2 {
        let records: Vec<_> = (0..100)
            .map(|i| json!({"id": format!("h{round}-{i}"), "payload": "x".repeat(1000)}))
            .collect();
        let r = a
            .post("/storage/history", &serde_json::Value::Array(records))
            .await;
        assert_eq!(r.status, 200);
        modified = r.ts("x-last-modified");
    }
    let wal = s.data.path().join("users/031/31.sqlite-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 32 * 4120);
    // b's first request evicts a from the LRU of one.
    assert_eq!(
        b.put("/storage/tabs/t", &json!({"payload": "p"}))
            .await
            .status,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&wal).unwrap().len() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scrape = || async {
        reqwest::get(format!("{}/__metrics__", s.metrics_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let misses = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("syncstore_lru_misses_total "))
            .map(|n| n.trim().to_string())
    };
    let before = misses(&scrape().await);
    let info = a.get("/info/collections").await;
    assert_eq!(info.status, 200);
    assert_eq!(info.ts("x-last-modified"), modified);
    assert!(info.json()["history"].is_number());
    assert_eq!(
        misses(&scrape().await),
        before,
        "answered without opening the file"
    );
    assert_eq!(
        a.get("/info/collection_counts").await.json(),
        json!({"history": 200})
    );
}
