//! `import-legacy`: users copied out of databases laid out as Mozilla's servers lay
//! them out (server-syncstorage on SQLite and MariaDB, syncstorage-rs on PostgreSQL and
//! MariaDB, among them real syncstorage-rs dumps from tests/fixtures), then read back
//! through the real server as a client would; and the operator's side, run as the real
//! binary: dry run, a subset of users, resuming, the progress bar, reading each user in
//! one snapshot while the source is written to. The PostgreSQL and MariaDB tests need
//! the servers `scripts/test` starts (SYNCSTORE_TEST_POSTGRES_URL,
//! SYNCSTORE_TEST_MYSQL_URL) and are not run without them.

use std::path::Path;
use std::process::Command;

use crate::common::{self, Server, fresh_database};
use serde_json::{Value, json};

fn import(dir: &Path, url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["import-legacy", "--from", url, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One source record; `expires_in` is seconds from now, `None` for never.
struct Row {
    user: i64,
    coll: i32,
    id: &'static str,
    sortindex: Option<i64>,
    modified_ms: i64,
    payload: &'static str,
    expires_in: Option<i64>,
}

/// What both sources hold: user 101 with bookmarks (7), tabs (9, one record live and
/// one expired, which is not imported) and a custom collection; user 102 with history
/// (4): 7 records to import.
const ROWS: [Row; 8] = [
    row(101, 7, "b1", None, 1699999999000, "bookmark 1", None),
    row(101, 7, "b2", Some(200), 1700000000000, "bookmark 2", None),
    row(101, 7, "b3", Some(300), 1700000000120, "bookmark 3 ✓", None),
    row(101, 9, "live", None, 1700000300500, "tab", Some(3600)),
    row(101, 9, "gone", None, 1700000300500, "old tab", Some(-10)),
    row(101, 100, "c1", None, 1700000200000, "custom", None),
    row(102, 4, "h1", None, 1700000400000, "visit", None),
    row(102, 4, "h2", None, 1700000500000, "visit 2", None),
];

/// Per user and collection: the collection's last-modified time, milliseconds.
const USER_COLLECTIONS: [(i64, i32, i64); 4] = [
    (101, 7, 1700000000120),
    (101, 9, 1700000300500),
    (101, 100, 1700000200000),
    (102, 4, 1700000500000),
];

const fn row(
    user: i64,
    coll: i32,
    id: &'static str,
    sortindex: Option<i64>,
    modified_ms: i64,
    payload: &'static str,
    expires_in: Option<i64>,
) -> Row {
    Row {
        user,
        coll,
        id,
        sortindex,
        modified_ms,
        payload,
        expires_in,
    }
}

/// Imports from `url` into a fresh data dir and checks what a client then sees.
async fn import_and_check(url: &str) {
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("imported 2 users (7 records), skipped 0, failed 0"),
        "{out}"
    );
    let server = Server::start_in(data, &[]);
    check_imported(&server).await;
}

/// Reads back what a client sees and checks it against what the source held.
async fn check_imported(server: &Server) {
    let c = server.client(101);
    let info = c.get("/info/collections").await.json();
    assert_eq!(
        info,
        json!({"bookmarks": 1700000000.12, "tabs": 1700000300.5, "my-custom": 1700000200.0})
    );
    let r = c.get("/storage/bookmarks?full=1&sort=index").await;
    let items: Vec<Value> = r.json().as_array().unwrap().clone();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], "b3");
    assert_eq!(items[0]["sortindex"], 300);
    assert_eq!(items[0]["payload"], "bookmark 3 ✓");
    assert_eq!(items[0]["modified"].to_string(), "1700000000.12");
    assert_eq!(items[2]["id"], "b1");
    assert!(items[2].get("sortindex").is_none());
    let r = c.get("/storage/my-custom/c1").await;
    assert_eq!(r.json()["payload"], "custom");
    // The record with a TTL in the future is there; the expired one is not.
    let tabs = c.get("/storage/tabs?full=1").await.json();
    let ids: Vec<&str> = tabs
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["live"]);
    let counts = c.get("/info/collection_counts").await.json();
    assert_eq!(counts["tabs"], 1);
    // User 102 came too, and later writes go on from the imported times.
    let d = server.client(102);
    let hist = d.get("/storage/history?full=1").await.json();
    assert_eq!(hist.as_array().unwrap().len(), 2);
    let r = d
        .put("/storage/history/h9", &json!({"payload": "new"}))
        .await;
    assert_eq!(r.status, 200);
}

/// Writes `ROWS` into a new SQLite file at `src` laid out as server-syncstorage lays it
/// out.
fn python_sqlite_source(src: &Path) {
    let now = common::now();
    let db = rusqlite::Connection::open(src).unwrap();
    // The layout server-syncstorage creates (syncstorage/storage/sql/dbconnect.py).
    db.execute_batch(
        "CREATE TABLE collections (collectionid INTEGER PRIMARY KEY,
             name VARCHAR(32) NOT NULL UNIQUE);
         CREATE TABLE user_collections (userid INTEGER NOT NULL,
             collection INTEGER NOT NULL, last_modified BIGINT NOT NULL,
             PRIMARY KEY (userid, collection));
         CREATE TABLE bso (userid INTEGER NOT NULL, collection INTEGER NOT NULL,
             id VARCHAR(64) NOT NULL, sortindex INTEGER, modified BIGINT NOT NULL,
             payload TEXT NOT NULL DEFAULT '', payload_size INTEGER NOT NULL DEFAULT 0,
             ttl INTEGER DEFAULT 2100000000, PRIMARY KEY (userid, collection, id));
         CREATE INDEX bso_ttl_idx ON bso (ttl);
         CREATE INDEX bso_usr_col_mod_idx ON bso (userid, collection, modified);
         INSERT INTO collections VALUES (100, 'my-custom');",
    )
    .unwrap();
    for (u, c, ms) in USER_COLLECTIONS {
        db.execute(
            "INSERT INTO user_collections VALUES (?1, ?2, ?3)",
            rusqlite::params![u, c, ms],
        )
        .unwrap();
    }
    let mut put = db
        .prepare("INSERT INTO bso VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
        .unwrap();
    for r in &ROWS {
        // `ttl` is an absolute expiry in seconds; 2100000000 means never.
        let ttl = r.expires_in.map_or(2_100_000_000, |s| now + s);
        put.execute(rusqlite::params![
            r.user,
            r.coll,
            r.id,
            r.sortindex,
            r.modified_ms,
            r.payload,
            r.payload.len() as i64,
            ttl
        ])
        .unwrap();
    }
}

#[tokio::test]
async fn python_server_sqlite_users_are_imported_and_reimport_is_a_no_op() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", src.display());
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 101: imported 5 records in 3 collections"),
        "{out}"
    );
    assert!(
        out.contains("user 102: imported 2 records in 1 collections"),
        "{out}"
    );
    assert!(
        out.contains("imported 2 users (7 records), skipped 0, failed 0"),
        "{out}"
    );

    // Running it again changes nothing.
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 0 users (0 records), skipped 2, failed 0"),
        "{out}"
    );

    let server = Server::start_in(data, &[]);
    check_imported(&server).await;

    // Not a syncstorage database, or an unknown scheme: a clear error.
    let (ok, _, err) = import(src_dir.path(), "mongodb://127.0.0.1/db");
    assert!(!ok && err.contains("unsupported source"), "{err}");
}

#[tokio::test]
async fn syncstorage_rs_postgres_users_are_imported() {
    if !have_postgres() {
        return;
    }
    let url = fresh_database().await;
    let now = common::now();
    let setup = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut pg = postgres::Client::connect(&setup, postgres::NoTls).unwrap();
        // The layout of syncstorage-rs's PostgreSQL backend.
        pg.batch_execute(
            "CREATE TABLE collections (collection_id INTEGER PRIMARY KEY,
                 name VARCHAR(32) UNIQUE NOT NULL);
             CREATE TABLE user_collections (user_id BIGINT NOT NULL,
                 collection_id INTEGER NOT NULL, modified TIMESTAMP NOT NULL,
                 count BIGINT, total_bytes BIGINT, PRIMARY KEY (user_id, collection_id));
             CREATE TABLE bsos (user_id BIGINT NOT NULL, collection_id INTEGER NOT NULL,
                 bso_id TEXT NOT NULL, sortindex BIGINT, payload TEXT NOT NULL,
                 modified TIMESTAMP NOT NULL, expiry TIMESTAMP NOT NULL,
                 PRIMARY KEY (user_id, collection_id, bso_id));
             INSERT INTO collections VALUES (1, 'clients'), (4, 'history'), (7, 'bookmarks'),
                 (9, 'tabs'), (100, 'my-custom');",
        )
        .unwrap();
        let ts = |ms: i64| format!("to_timestamp({ms} / 1000.0) AT TIME ZONE 'UTC'");
        let far = 2_100_000_000i64 * 1000;
        for (u, c, ms) in USER_COLLECTIONS {
            pg.batch_execute(&format!(
                "INSERT INTO user_collections VALUES ({u}, {c}, {}, 0, 0)",
                ts(ms)
            ))
            .unwrap();
        }
        for r in &ROWS {
            // Never expiring is a TTL of 2100000000 seconds after the write.
            let expiry = r
                .expires_in
                .map_or(r.modified_ms + far, |s| (now + s) * 1000);
            pg.execute(
                &format!(
                    "INSERT INTO bsos VALUES ($1, $2, $3, $4, $5, {}, {})",
                    ts(r.modified_ms),
                    ts(expiry)
                ),
                &[&r.user, &r.coll, &r.id, &r.sortindex, &r.payload],
            )
            .unwrap();
        }
    })
    .await
    .unwrap();

    import_and_check(&url).await;
}

#[tokio::test]
async fn python_server_mysql_users_are_imported() {
    use mysql::prelude::Queryable;
    let Some(admin) = mysql_admin() else {
        return;
    };
    let name = format!("t{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = format!("{}/{name}", admin.trim_end_matches('/'));
    let now = common::now();
    let setup = (admin.clone(), url.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        let (admin, url, name) = setup;
        let mut root = mysql::Conn::new(mysql::Opts::from_url(&admin).unwrap()).unwrap();
        root.query_drop(format!("CREATE DATABASE {name}")).unwrap();
        let mut db = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
        // server-syncstorage's tables (it declares them latin1, for ASCII payloads; the
        // test's payloads are not all ASCII, so they use utf8mb4 here).
        db.query_drop(
            "CREATE TABLE collections (collectionid INTEGER NOT NULL AUTO_INCREMENT,
                 name VARCHAR(32) NOT NULL, PRIMARY KEY (collectionid), UNIQUE (name))
                 ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )
        .unwrap();
        db.query_drop(
            "CREATE TABLE user_collections (userid INTEGER NOT NULL,
                 collection INTEGER NOT NULL, last_modified BIGINT NOT NULL,
                 PRIMARY KEY (userid, collection)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )
        .unwrap();
        // Sharded, as large deployments ran it: users spread over bso0 and bso1.
        for shard in ["bso0", "bso1"] {
            db.query_drop(format!(
                "CREATE TABLE {shard} (userid INTEGER NOT NULL, collection INTEGER NOT NULL,
                     id VARCHAR(64) NOT NULL, sortindex INTEGER, modified BIGINT NOT NULL,
                     payload MEDIUMTEXT NOT NULL, payload_size INTEGER NOT NULL DEFAULT 0,
                     ttl INTEGER DEFAULT 2100000000, PRIMARY KEY (userid, collection, id),
                     KEY {shard}_ttl_idx (ttl), KEY {shard}_usr_col_mod_idx (userid, collection, modified))
                     ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            ))
            .unwrap();
        }
        db.query_drop("INSERT INTO collections VALUES (100, 'my-custom')").unwrap();
        for (u, c, ms) in USER_COLLECTIONS {
            db.exec_drop("INSERT INTO user_collections VALUES (?, ?, ?)", (u, c, ms))
                .unwrap();
        }
        for r in &ROWS {
            let ttl = r.expires_in.map_or(2_100_000_000, |s| now + s);
            db.exec_drop(
                format!(
                    "INSERT INTO bso{} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    r.user % 2
                ),
                (r.user, r.coll, r.id, r.sortindex, r.modified_ms, r.payload, r.payload.len(), ttl),
            )
            .unwrap();
        }
    })
    .await
    .unwrap();

    import_and_check(&url).await;
}

/// Loads a plain SQL dump into the PostgreSQL database at `url` with psql.
fn psql(url: &str, args: &[&str]) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(args)
        .output()
        .expect("run psql (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Centiseconds of a JSON time (`1796529339.74`).
fn centis(v: &Value) -> i64 {
    (v.as_f64().unwrap_or_else(|| panic!("not a time: {v}")) * 100.0).round() as i64
}

#[tokio::test]
async fn a_real_syncstorage_rs_database_is_imported_as_it_answered() {
    if !have_postgres() {
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dump = fixtures.join("syncstorage-rs-0.23.3-postgres.sql");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("syncstorage-rs-0.23.3-postgres.expected.json"))
            .unwrap(),
    )
    .unwrap();
    // The database of a real syncstorage-rs 0.23.3 (its own migrations: sortindex and
    // collection_id INTEGER, times TIMESTAMPTZ), plus a user 14 whose record is in a
    // collection the server never named: that one user cannot be imported.
    let url = fresh_database().await;
    psql(&url, &["-f", dump.to_str().unwrap()]);
    psql(
        &url,
        &[
            "-c",
            "INSERT INTO user_collections VALUES (14, 555, now(), 0, 0);
             INSERT INTO bsos VALUES (14, 555, 'x', 1, 'p', now(), now() + interval '1 day');",
        ],
    );

    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(!ok, "one user failed: the exit status says so: {out}{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.contains("user 14: FAILED: source database: collection id 555 has no name"),
        "{out}"
    );
    assert!(
        err.contains("imported 3 users (") && err.contains("skipped 0, failed 1"),
        "{out}{err}"
    );
    for uid in [11, 12, 13] {
        assert!(out.contains(&format!("user {uid}: imported ")), "{out}");
    }

    // The history was written with a TTL of a day: its expiry came along.
    let history_expiry = |uid: u64| match uid {
        11 => 179661573975,
        12 => 179661573977,
        _ => 179661573979,
    };
    for uid in [11u64, 12, 13] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
            .args(["user", "export", &uid.to_string(), "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let export: Value = serde_json::from_slice(&out.stdout).unwrap();
        for c in export["collections"].as_array().unwrap() {
            for r in c["records"].as_array().unwrap() {
                if c["name"] == "history" {
                    assert_eq!(centis(&r["expires"]), history_expiry(uid), "{r}");
                } else {
                    assert!(r.get("expires").is_none(), "never expires: {r}");
                }
            }
        }
    }

    let server = Server::start_in(data, &[]);
    for uid in [11u64, 12, 13] {
        let want = &expected[uid.to_string()];
        let c = server.client(uid);
        let info = c.get("/info/collections").await.json();
        let got: Vec<(String, i64)> = info
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), centis(v)))
            .collect();
        let mut wanted: Vec<(String, i64)> = want["info_collections"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), centis(v)))
            .collect();
        wanted.sort();
        let mut got = got;
        got.sort();
        assert_eq!(got, wanted, "user {uid}");

        let items = c.get("/storage/bookmarks?full=1").await.json();
        let items = items.as_array().unwrap();
        let bookmarks = want["bookmarks"].as_object().unwrap();
        assert_eq!(items.len(), bookmarks.len(), "user {uid}");
        for item in items {
            let w = &bookmarks[item["id"].as_str().unwrap()];
            assert_eq!(item["payload"], w["payload"], "user {uid}: {item}");
            assert_eq!(item["sortindex"], w["sortindex"], "user {uid}: {item}");
            assert_eq!(centis(&item["modified"]), centis(&w["modified"]), "{item}");
        }
        let meta = c.get("/storage/meta/global").await.json();
        assert_eq!(
            meta["payload"],
            format!("{{\"syncID\": \"abc{uid}\", \"storageVersion\": 5}}"),
        );
        // Readable until its expiry (2026-12-07 03:55 UTC), not after; not checked in
        // the few seconds around that instant.
        let history = c.get("/storage/history").await.json();
        let left = history_expiry(uid) - common::now() * 100;
        if left.abs() > 500 {
            let live = if left > 0 { 30 } else { 0 };
            assert_eq!(
                history.as_array().unwrap().len(),
                live,
                "user {uid}: {history}"
            );
        }
    }
}

#[tokio::test]
async fn an_unreadable_syncstorage_rs_row_names_its_user_and_column() {
    if !have_postgres() {
        return;
    }
    let url = fresh_database().await;
    // sortindex as TEXT: not what any syncstorage-rs made, read as an error, not a panic.
    psql(
        &url,
        &[
            "-c",
            "CREATE TABLE collections (collection_id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE user_collections (user_id BIGINT, collection_id INTEGER,
                 modified TIMESTAMPTZ);
             CREATE TABLE bsos (user_id BIGINT, collection_id INTEGER, bso_id TEXT,
                 sortindex TEXT, payload TEXT, modified TIMESTAMPTZ, expiry TIMESTAMPTZ);
             INSERT INTO user_collections VALUES (1, 7, now()), (2, 7, now());
             INSERT INTO bsos VALUES (2, 7, 'b1', '5', 'p', now(), now() + interval '1 day');",
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(!ok && !err.contains("panicked"), "{out}{err}");
    assert!(
        out.contains(
            "user 2: FAILED: source database: bsos record \"b1\": column sortindex is of type text, not an integer"
        ),
        "{out}"
    );
    assert!(out.contains("user 1: imported 0 records"), "{out}");
    assert!(
        err.contains("imported 1 users (0 records), skipped 0, failed 1"),
        "{err}"
    );
}

#[tokio::test]
async fn python_server_mysql_null_ttl_is_never_and_an_unreadable_row_is_named() {
    use mysql::prelude::Queryable;
    let Some(admin) = mysql_admin() else {
        return;
    };
    let name = format!("t{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = format!("{}/{name}", admin.trim_end_matches('/'));
    let setup = (admin.clone(), url.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        let (admin, url, name) = setup;
        let mut root = mysql::Conn::new(mysql::Opts::from_url(&admin).unwrap()).unwrap();
        root.query_drop(format!("CREATE DATABASE {name}")).unwrap();
        let mut db = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
        // server-syncstorage's bso table: ttl is nullable. User 2's row has a
        // modified time no server wrote (text in a column the import reads as a number).
        db.query_drop(
            "CREATE TABLE collections (collectionid INTEGER NOT NULL, name VARCHAR(32));
             CREATE TABLE user_collections (userid INTEGER NOT NULL,
                 collection INTEGER NOT NULL, last_modified BIGINT NOT NULL);
             CREATE TABLE bso (userid INTEGER NOT NULL, collection INTEGER NOT NULL,
                 id VARCHAR(64) NOT NULL, sortindex INTEGER, modified VARCHAR(20) NOT NULL,
                 payload MEDIUMTEXT NOT NULL, payload_size INTEGER NOT NULL DEFAULT 0,
                 ttl INTEGER DEFAULT 2100000000);
             INSERT INTO user_collections VALUES (1, 7, 1700000000000), (2, 7, 1700000000000);
             INSERT INTO bso VALUES (1, 7, 'b1', 3, '1700000000000', 'kept', 1, NULL),
                 (2, 7, 'b2', 3, 'yesterday', 'bad', 1, NULL);",
        )
        .unwrap();
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(!ok && !err.contains("panicked"), "{out}{err}");
    assert!(
        out.contains("user 2: FAILED: source database: bso record \"b2\": column modified cannot be read as i64"),
        "{out}"
    );
    assert!(
        err.contains("imported 1 users (1 records), skipped 0, failed 1"),
        "{err}"
    );
    let server = Server::start_in(data, &[]);
    let items = server
        .client(1)
        .get("/storage/bookmarks?full=1")
        .await
        .json();
    assert_eq!(items[0]["payload"], "kept", "{items}");
    assert_eq!(items[0]["sortindex"], 3);
}

/// The throw-away MariaDB's admin URL, or `None` (the test is then not run).
fn mysql_admin() -> Option<String> {
    let url = std::env::var("SYNCSTORE_TEST_MYSQL_URL").ok();
    if url.is_none() {
        eprintln!("SYNCSTORE_TEST_MYSQL_URL is not set: not run on MySQL (scripts/test sets it)");
    }
    url
}

/// Whether PostgreSQL is there for the test (else it is not run).
fn have_postgres() -> bool {
    let set = std::env::var("SYNCSTORE_TEST_POSTGRES_URL").is_ok();
    if !set {
        eprintln!(
            "SYNCSTORE_TEST_POSTGRES_URL is not set: not run on PostgreSQL (scripts/test sets it)"
        );
    }
    set
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A fresh MariaDB database holding a `mysqldump` file; its URL.
async fn mysql_database_from(admin: &str, dump: &Path) -> String {
    use mysql::prelude::Queryable;
    let name = format!("t{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = format!("{}/{name}", admin.trim_end_matches('/'));
    let sql = std::fs::read_to_string(dump).unwrap();
    // MariaDB's dumps start with a line only its own client understands.
    let sql = match sql.split_once('\n') {
        Some((first, rest)) if first.starts_with("/*M!999999") => rest.to_string(),
        _ => sql,
    };
    let (admin, db_url) = (admin.to_string(), url.clone());
    tokio::task::spawn_blocking(move || {
        let mut root = mysql::Conn::new(mysql::Opts::from_url(&admin).unwrap()).unwrap();
        root.query_drop(format!("CREATE DATABASE {name}")).unwrap();
        let mut db = mysql::Conn::new(mysql::Opts::from_url(&db_url).unwrap()).unwrap();
        db.query_drop(sql).unwrap();
    })
    .await
    .unwrap();
    url
}

/// A collection's records as `[id, modified (10 ms units), sortindex, payload]`, sorted.
fn record_rows(items: &Value) -> Vec<(String, i64, Option<i64>, String)> {
    let mut rows: Vec<_> = items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|r| {
            if let Some(a) = r.as_array() {
                // The fixture's shape.
                (
                    a[0].as_str().unwrap().to_string(),
                    centis(&a[1]),
                    a[2].as_i64(),
                    a[3].as_str().unwrap().to_string(),
                )
            } else {
                (
                    r["id"].as_str().unwrap().to_string(),
                    centis(&r["modified"]),
                    r.get("sortindex").and_then(Value::as_i64),
                    r["payload"].as_str().unwrap().to_string(),
                )
            }
        })
        .collect();
    rows.sort();
    rows
}

/// Times of an `info/collections` answer in 10 ms units.
fn centis_map(v: &Value) -> std::collections::BTreeMap<String, i64> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, t)| (k.clone(), centis(t)))
        .collect()
}

/// Every user of `expected` answers through the server exactly as the source server
/// did: status, info/collections, info/collection_counts and every record of every
/// collection. `markers` are the users whose storage-wide time (collection id 0) is
/// newer than any collection: X-Last-Modified must still say it.
async fn answers_exactly(server: &Server, expected: &Value, markers: &[(u64, i64)]) {
    let users = expected.as_object().unwrap();
    assert_eq!(users.len(), 10);
    for (uid, want) in users {
        let uid: u64 = uid.parse().unwrap();
        let c = server.client(uid);
        let info = c.get("/info/collections").await;
        assert_eq!(
            info.status.as_u16() as i64,
            want["status"].as_i64().unwrap(),
            "user {uid}"
        );
        let got = centis_map(&info.json());
        assert_eq!(
            got,
            centis_map(&want["collections"]),
            "user {uid}: info/collections"
        );
        let newest = got.values().copied().max().unwrap_or(0);
        let storage = markers
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(newest, |(_, t)| *t);
        assert_eq!(
            info.ts("X-Last-Modified"),
            storage,
            "user {uid}: X-Last-Modified"
        );
        let counts = c.get("/info/collection_counts").await.json();
        assert_eq!(counts, want["counts"], "user {uid}: info/collection_counts");
        let data = want["data"].as_object().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "user {uid}"
        );
        for (coll, records) in data {
            let items = c.get(&format!("/storage/{coll}?full=1")).await.json();
            assert_eq!(
                record_rows(&items),
                record_rows(records),
                "user {uid}: {coll}"
            );
        }
    }
}

#[tokio::test]
async fn syncstorage_rs_postgres_with_batch_activity_answers_exactly_as_it_did() {
    if !have_postgres() {
        return;
    }
    let url = fresh_database().await;
    psql(
        &url,
        &[
            "-f",
            fixture("syncstorage-rs-0.23.3-postgres-batches.sql")
                .to_str()
                .unwrap(),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("imported 10 users (") && out.contains("skipped 0, failed 0"),
        "{out}"
    );
    // The uncommitted batches' record ("ghost") came nowhere.
    assert!(!out.contains("FAILED"), "{out}");
    let server = Server::start_in(data, &[]);
    answers_exactly(
        &server,
        &expected("syncstorage-rs-0.23.3-postgres-batches.expected.json"),
        // 892695477 deleted a collection at 09:23:40.01, after its last write.
        &[(892695477, 179663542001)],
    )
    .await;
}

#[tokio::test]
async fn syncstorage_rs_mysql_answers_exactly_as_it_did() {
    let Some(admin) = mysql_admin() else {
        return;
    };
    let url = mysql_database_from(&admin, &fixture("syncstorage-rs-0.23.3-mysql.sql")).await;
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("imported 10 users (") && out.contains("skipped 0, failed 0"),
        "{out}"
    );
    let server = Server::start_in(data, &[]);
    answers_exactly(
        &server,
        &expected("syncstorage-rs-0.23.3-mysql.expected.json"),
        // 2637021 deleted a collection at …62.97, after its last write.
        &[(2637021, 179663646297)],
    )
    .await;
}
/// Runs `syncstore import-legacy` with extra flags.
fn import_with(dir: &Path, url: &str, flags: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["import-legacy", "--from", url, "--data-dir"])
        .arg(dir)
        .args(flags)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files and folders in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn dry_run_writes_nothing_a_subset_goes_first_and_the_rest_resumes() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let data = tempfile::tempdir().unwrap();

    // --dry-run reads and checks every user, and writes nothing.
    let (ok, out, err) = import_with(data.path(), &url, &["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 101: would import 5 records in 3 collections")
            && out.contains("user 102: would import 2 records in 1 collections")
            && out.contains(
                "dry run: would import 2 users (7 records), skipped 0, failed 0; nothing was written"
            ),
        "{out}"
    );
    assert_eq!(entries(data.path()), Vec::<String>::new());

    // --users: only those; one the source does not have is named, the rest goes on.
    let (ok, out, err) = import_with(data.path(), &url, &["--users", "102,999"]);
    assert!(!ok, "a user failed: the exit status says so: {out}{err}");
    assert!(
        out.contains("user 102: imported 2 records in 1 collections")
            && out.contains("user 999: FAILED: not in the source database")
            && !out.contains("user 101"),
        "{out}"
    );
    assert!(
        err.contains("imported 1 users (2 records), skipped 0, failed 1"),
        "{err}"
    );

    // A dry run now says what is left; the full run imports only that.
    let (ok, out, err) = import_with(data.path(), &url, &["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 102: skipped (already has data here)")
            && out.contains("would import 1 users (5 records), skipped 1, failed 0"),
        "{out}"
    );
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 101: imported 5 records in 3 collections")
            && out.contains("user 102: skipped (already has data here)")
            && out.contains("imported 1 users (5 records), skipped 1, failed 0"),
        "{out}"
    );
    let server = Server::start_in(data, &[]);
    check_imported(&server).await;
}

#[test]
fn on_a_terminal_a_progress_bar_shows_users_done_of_all_and_an_eta() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` (util-linux) to give the import a terminal: not run");
        return;
    }
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let data = tempfile::tempdir().unwrap();
    // `script` runs the import on a pseudo-terminal and copies what it shows.
    let cmd = format!(
        "{} import-legacy --from sqlite://{} --data-dir {}",
        env!("CARGO_BIN_EXE_syncstore"),
        src.display(),
        data.path().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("importing [") && shown.contains("/2 (") && shown.contains("eta "),
        "{shown:?}"
    );
    assert!(
        shown.contains("imported 2 users (7 records), skipped 0, failed 0"),
        "{shown:?}"
    );
}

#[tokio::test]
async fn each_user_is_read_in_one_snapshot_while_the_source_keeps_writing() {
    if !have_postgres() {
        return;
    }
    let url = fresh_database().await;
    // syncstorage-rs's tables; 20 users with 5 bookmarks each.
    psql(
        &url,
        &[
            "-c",
            "CREATE TABLE collections (collection_id INTEGER PRIMARY KEY, name VARCHAR(32));
             CREATE TABLE user_collections (user_id BIGINT NOT NULL,
                 collection_id INTEGER NOT NULL, modified TIMESTAMPTZ NOT NULL,
                 count BIGINT, total_bytes BIGINT);
             CREATE TABLE bsos (user_id BIGINT NOT NULL, collection_id INTEGER NOT NULL,
                 bso_id TEXT NOT NULL, sortindex INTEGER, payload TEXT NOT NULL,
                 modified TIMESTAMPTZ NOT NULL, expiry TIMESTAMPTZ NOT NULL);
             INSERT INTO user_collections
                 SELECT u, 7, now(), 5, 5 FROM generate_series(1, 20) u;
             INSERT INTO bsos SELECT u, 7, 'r' || i, NULL, 'p', now(),
                     now() + interval '2100000000 seconds'
                 FROM generate_series(1, 20) u, generate_series(1, 5) i;",
        ],
    );
    // The source keeps serving: every user's records and collection row move between
    // bookmarks (7) and tabs (9), together, in one transaction after another. A reader
    // without a snapshot sees the row of one and the records of the other.
    let url_w = url.clone();
    let flip = move || {
        let mut pg = postgres::Client::connect(&url_w, postgres::NoTls).unwrap();
        move || {
            pg.batch_execute(
                "BEGIN;
                 UPDATE user_collections SET collection_id = 16 - collection_id;
                 UPDATE bsos SET collection_id = 16 - collection_id;
                 COMMIT;",
            )
            .unwrap()
        }
    };
    dry_runs_read_whole_users_while(&url, flip);
}

/// Runs `import-legacy --dry-run` five times from `url` (20 users of 5 records in one
/// collection) while a thread calls the function `writer` makes, over and over; every
/// run must see every user whole.
fn dry_runs_read_whole_users_while<W, F>(url: &str, writer: W)
where
    W: FnOnce() -> F + Send + 'static,
    F: FnMut(),
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut write = writer();
            let mut commits = 0;
            while !stop.load(Ordering::Relaxed) {
                write();
                commits += 1;
            }
            commits
        })
    };
    let data = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let (ok, out, err) = import_with(data.path(), url, &["--dry-run"]);
        assert!(ok, "{out}{err}");
        for uid in 1..=20 {
            assert!(
                out.contains(&format!(
                    "user {uid}: would import 5 records in 1 collections"
                )),
                "{out}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writing.join().unwrap();
    assert!(
        commits > 10,
        "the source was written to meanwhile: {commits}"
    );
    assert!(entries(data.path()).is_empty());
}

#[tokio::test]
async fn each_user_is_read_in_one_snapshot_of_mysql_too() {
    use mysql::prelude::Queryable;
    let Some(admin) = mysql_admin() else {
        return;
    };
    // syncstorage-rs's MySQL tables (as its migrations make them); 20 users with 5
    // bookmarks each.
    let dump = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        dump.path(),
        "CREATE TABLE collections (id INT NOT NULL AUTO_INCREMENT, name VARCHAR(32) NOT NULL,
             PRIMARY KEY (id), UNIQUE KEY (name)) ENGINE=InnoDB;
         CREATE TABLE user_collections (userid BIGINT NOT NULL, collection INT NOT NULL,
             last_modified BIGINT NOT NULL, total_bytes BIGINT, count INT,
             PRIMARY KEY (userid, collection)) ENGINE=InnoDB;
         CREATE TABLE bso (userid BIGINT NOT NULL, collection INT NOT NULL,
             id VARCHAR(64) NOT NULL, sortindex INT, payload MEDIUMTEXT NOT NULL,
             modified BIGINT NOT NULL, ttl BIGINT NOT NULL, payload_size INT DEFAULT 0,
             PRIMARY KEY (userid, collection, id)) ENGINE=InnoDB;
         INSERT INTO collections VALUES (100, '');
         INSERT INTO user_collections
             SELECT seq, 7, 1796636462930, 5, 5 FROM seq_1_to_20;
         INSERT INTO bso SELECT u.seq, 7, CONCAT('r', i.seq), NULL, 'p', 1796636462930,
                 2100000000000, 1
             FROM seq_1_to_20 u, seq_1_to_5 i;",
    )
    .unwrap();
    let url = mysql_database_from(&admin, dump.path()).await;
    let url_w = url.clone();
    let flip = move || {
        let mut db = mysql::Conn::new(mysql::Opts::from_url(&url_w).unwrap()).unwrap();
        move || {
            db.query_drop(
                "START TRANSACTION;
                 UPDATE user_collections SET collection = 16 - collection;
                 UPDATE bso SET collection = 16 - collection;
                 COMMIT;",
            )
            .unwrap()
        }
    };
    dry_runs_read_whole_users_while(&url, flip);
}

/// `syncstore user export UID` of `dir`, parsed.
fn export_user(dir: &Path, uid: u64) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["user", "export", &uid.to_string(), "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every record id of an export, as `collection/id`.
fn exported_ids(export: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for c in export["collections"].as_array().unwrap() {
        for r in c["records"].as_array().unwrap() {
            ids.push(format!(
                "{}/{}",
                c["name"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ));
        }
    }
    ids.sort();
    ids
}

#[test]
fn the_final_copy_after_a_trial_run_replaces_with_the_sources_newer_writes() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let data = tempfile::tempdir().unwrap();
    // The trial run, while the old server serves.
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    // The old server takes a write after the trial: a new bookmark, and one deleted.
    let db = rusqlite::Connection::open(&src).unwrap();
    db.execute_batch(
        "INSERT INTO bso VALUES (101, 7, 'b4', NULL, 1700000900000, 'late', 4, 2100000000);
         DELETE FROM bso WHERE userid = 101 AND id = 'b1';
         UPDATE user_collections SET last_modified = 1700000900000
             WHERE userid = 101 AND collection = 7;",
    )
    .unwrap();
    drop(db);
    // Without --replace the final run would keep the trial's copy.
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok && out.contains("skipped 2"), "{out}{err}");
    assert!(!exported_ids(&export_user(data.path(), 101)).contains(&"bookmarks/b4".into()));
    // With --replace it copies the source as it is now.
    let (ok, out, err) = import_with(data.path(), &url, &["--replace"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 101: imported 5 records in 3 collections")
            && out.contains("imported 2 users (7 records), skipped 0, failed 0"),
        "{out}"
    );
    let export = export_user(data.path(), 101);
    assert_eq!(
        exported_ids(&export),
        [
            "bookmarks/b2",
            "bookmarks/b3",
            "bookmarks/b4",
            "my-custom/c1",
            "tabs/live"
        ]
    );
    assert_eq!(export["modified"].to_string(), "1700000900.0");
    // A user who wiped their storage on the old server since is named, not kept
    // silently (nor deleted: a user here may never have come from the source).
    let db = rusqlite::Connection::open(&src).unwrap();
    db.execute_batch(
        "DELETE FROM bso WHERE userid = 102; DELETE FROM user_collections WHERE userid = 102;",
    )
    .unwrap();
    drop(db);
    let (ok, out, err) = import_with(data.path(), &url, &["--replace"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(
            "user 102: here but not in the source: left as it is (`syncstore user delete 102` removes it)"
        ) && out.contains("imported 1 users (5 records), skipped 0, failed 0; 1 users here are not in the source (left as they are)"),
        "{out}"
    );
}

#[test]
fn a_user_over_the_byte_cap_fails_with_its_size_and_the_import_goes_on() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let data = tempfile::tempdir().unwrap();
    // A record counts its id, its payload and 400 bytes: user 102's two records (16
    // bytes of ids and payloads, 816 in all) pass 1,000 bytes, user 101's do not.
    let (ok, out, err) = import_with(data.path(), &url, &["--max-user-bytes", "1000"]);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("user 101: FAILED: ")
            && out.contains("exceed the cap of 1000 bytes")
            && out.contains("--max-user-bytes")
            && out.contains("user 102: imported 2 records in 1 collections"),
        "{out}"
    );
    assert!(
        err.contains("imported 1 users (2 records), skipped 0, failed 1"),
        "{err}"
    );
    // With the default cap, the rerun takes user 101.
    let (ok, out, err) = import(data.path(), &url);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("imported 1 users (5 records), skipped 1, failed 0"),
        "{out}"
    );
}

#[test]
fn an_unreadable_file_here_fails_its_user_and_the_import_goes_on() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    for dry_run in [false, true] {
        let data = tempfile::tempdir().unwrap();
        // User 101's file is random bytes, user 102's path is a directory.
        let file = |uid: u64| {
            data.path()
                .join("users")
                .join(format!("{:03}", uid % 1000))
                .join(format!("{uid}.sqlite"))
        };
        std::fs::create_dir_all(file(101).parent().unwrap()).unwrap();
        std::fs::write(file(101), vec![0x5a; 8192]).unwrap();
        std::fs::create_dir_all(file(102)).unwrap();
        let flags: &[&str] = if dry_run { &["--dry-run"] } else { &[] };
        let (ok, out, err) = import_with(data.path(), &url, flags);
        assert!(!ok, "{out}{err}");
        assert!(
            out.contains("user 101: FAILED: its file here (")
                && out.contains("user 102: FAILED: its file here (")
                && err.contains("0 users (0 records), skipped 0, failed 2"),
            "{out}{err}"
        );
        // Nothing was written over them.
        assert_eq!(std::fs::read(file(101)).unwrap(), vec![0x5a; 8192]);
        assert!(file(102).is_dir());
    }
}

#[test]
fn records_the_server_could_not_serve_fail_their_user_with_the_row_named() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let db = rusqlite::Connection::open(&src).unwrap();
    // A pre-epoch record for user 101, a sortindex no client may write for user 102.
    db.execute_batch(
        "UPDATE bso SET modified = -5000 WHERE userid = 101 AND id = 'b1';
         UPDATE bso SET sortindex = 1000000000 WHERE userid = 102 AND id = 'h1';",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    for flags in [&["--dry-run"][..], &[]] {
        let (ok, out, err) = import_with(data.path(), &url, flags);
        assert!(!ok, "{out}{err}");
        assert!(
            out.contains(r#"user 101: FAILED: source database: record "b1" of "bookmarks": modified -5.00 is not a time"#)
                && out.contains(r#"user 102: FAILED: source database: record "h1" of "history": sortindex 1000000000 is outside"#)
                && err.contains("0 users (0 records), skipped 0, failed 2"),
            "{out}{err}"
        );
    }
    // Nothing was written.
    assert!(!data.path().join("users").exists());
    // A time past year 9999 too.
    db.execute_batch(
        "UPDATE bso SET modified = 9000000000000000 WHERE userid = 101 AND id = 'b1';",
    )
    .unwrap();
    let (ok, out, err) = import_with(data.path(), &url, &["--users", "101"]);
    assert!(
        !ok && out.contains("modified 9000000000000.00 is not a time"),
        "{out}{err}"
    );
}

#[test]
fn a_dry_run_leaves_an_existing_user_file_and_its_wal_as_they_were() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import_with(data.path(), &url, &["--users", "102"]);
    assert!(ok, "{out}{err}");
    // A write left in the WAL, not checkpointed (as a server's may be).
    let file = data.path().join("users/102/102.sqlite");
    let wal = data.path().join("users/102/102.sqlite-wal");
    {
        let db = rusqlite::Connection::open(&file).unwrap();
        db.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        db.execute_batch("PRAGMA wal_autocheckpoint = 0; UPDATE bso SET payload = 'later';")
            .unwrap();
    }
    let before = (std::fs::read(&file).unwrap(), std::fs::read(&wal).unwrap());
    assert!(!before.1.is_empty());
    let (ok, out, err) = import_with(data.path(), &url, &["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 102: skipped (already has data here)"),
        "{out}"
    );
    let after = (std::fs::read(&file).unwrap(), std::fs::read(&wal).unwrap());
    assert!(
        before == after,
        "the dry run wrote to user 102's file or WAL"
    );
}

#[test]
fn negative_ids_fail_users_without_collection_rows_come_and_duplicates_count_once() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let url = format!("sqlite://{}", src.display());
    let db = rusqlite::Connection::open(&src).unwrap();
    // A second shard holding a newer copy of user 101's b1, and all of user 103 (who
    // has no user_collections row); user -4 in both tables.
    db.execute_batch(
        "CREATE TABLE bso1 AS SELECT * FROM bso WHERE 0;
         INSERT INTO bso1 VALUES (101, 7, 'b1', NULL, 1700000000500, 'bookmark 1 newer', 16, 2100000000);
         INSERT INTO bso1 VALUES (103, 7, 'x', NULL, 1700000600000, 'only in bso', 11, 2100000000);
         INSERT INTO user_collections VALUES (-4, 7, 1700000000000);
         INSERT INTO bso VALUES (-4, 7, 'n', NULL, 1700000000000, 'negative', 8, 2100000000);",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = import(data.path(), &url);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("user -4: FAILED: a negative user id")
            && out.contains("user 101: imported 5 records in 3 collections")
            && out.contains("user 103: imported 1 records in 1 collections"),
        "{out}"
    );
    assert!(
        err.contains("imported 3 users (8 records), skipped 0, failed 1"),
        "{err}"
    );
    let export = export_user(data.path(), 101);
    let bookmarks = &export["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bookmarks")
        .unwrap()["records"];
    let b1: Vec<&Value> = bookmarks
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["id"] == "b1")
        .collect();
    assert_eq!(b1.len(), 1);
    assert_eq!(b1[0]["payload"], "bookmark 1 newer");
    let export = export_user(data.path(), 103);
    assert_eq!(exported_ids(&export), ["bookmarks/x"]);
}

#[test]
fn the_sources_password_never_shows_and_the_url_may_come_from_the_environment() {
    let data = tempfile::tempdir().unwrap();
    for url in [
        "mysqll://sync:s3cret@127.0.0.1:1/syncstorage",
        "mysql://sync:s3cret@127.0.0.1:1/syncstorage",
        "postgres://sync:s3cret@127.0.0.1:1/syncstorage",
        "postgres://sync:s3cret@127.0.0.1:1/syncstorage?sslmode=bogus",
    ] {
        let (ok, out, err) = import(data.path(), url);
        assert!(!ok, "{url}");
        assert!(
            !out.contains("s3cret") && !err.contains("s3cret"),
            "{out}{err}"
        );
    }
    let (_, _, err) = import(data.path(), "mysqll://sync:s3cret@127.0.0.1:1/syncstorage");
    assert!(
        err.contains("unsupported source \"mysqll://sync:***@127.0.0.1:1/syncstorage\""),
        "{err}"
    );

    // SYNCSTORE_IMPORT_FROM in place of --from.
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("syncstorage.db");
    python_sqlite_source(&src);
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["import-legacy", "--dry-run", "--data-dir"])
        .arg(data.path())
        .env(
            "SYNCSTORE_IMPORT_FROM",
            format!("sqlite://{}", src.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would import 2 users (7 records)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_byte_cap_holds_on_syncstorage_rs_postgres_and_mysql_too() {
    let mut urls = Vec::new();
    if have_postgres() {
        let url = fresh_database().await;
        let dump = fixture("syncstorage-rs-0.23.3-postgres-batches.sql");
        psql(&url, &["-f", dump.to_str().unwrap()]);
        urls.push(url);
    }
    if let Some(admin) = mysql_admin() {
        let dump = fixture("syncstorage-rs-0.23.3-mysql.sql");
        urls.push(mysql_database_from(&admin, &dump).await);
    }
    for url in urls {
        let data = tempfile::tempdir().unwrap();
        let (ok, out, err) = import_with(data.path(), &url, &["--max-user-bytes", "1"]);
        assert!(!ok, "{out}{err}");
        assert_eq!(
            out.matches("FAILED: too large to import: its records exceed the cap of 1 bytes")
                .count(),
            10,
            "{out}"
        );
        assert!(
            err.contains("imported 0 users (0 records), skipped 0, failed 10"),
            "{err}"
        );
        // Every user failed on the cap alone (each read began anew after the one
        // before failed); with room for them, all come.
        let (ok, out, err) = import(data.path(), &url);
        assert!(ok && out.contains("imported 10 users ("), "{out}{err}");
    }
}
