//! The server's replacement for SQLite's reset of a WAL index (`-shm`) on a cold open
//! (storage::sqlite): whatever the index holds from an earlier life of the file, it
//! is rebuilt from the WAL, so every committed transaction is seen. This binary holds
//! one test so that the settings are applied before any connection in the process.

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use std::path::Path;
use syncstore::storage::sqlite;

/// Opens as the server does: WAL, no checkpoint on close (the WAL and its index stay).
fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    conn
}

/// An index whose header is valid but describes a shorter WAL than the one on disk
/// (here: a copy taken after the first transaction, put back later) must not be
/// trusted; trusting it would hide the later transactions.
#[test]
fn stale_wal_index_is_rebuilt_on_cold_open() {
    sqlite::configure();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.sqlite");
    let shm = dir.path().join("u.sqlite-shm");
    open(&db)
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let stale = std::fs::read(&shm).unwrap();
    assert_eq!(stale.len(), 32 * 1024, "one region");

    let zeroed = sqlite::shm_resets_zeroed();
    open(&db)
        .execute_batch("INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);")
        .unwrap();
    assert_eq!(sqlite::shm_resets_zeroed(), zeroed + 1, "reset in place");

    std::fs::write(&shm, &stale).unwrap();
    let conn = open(&db);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sqlite::shm_resets_zeroed(), zeroed + 2, "reset in place");
    assert_eq!(rows, 3, "the stale index was trusted");
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), 32 * 1024);
}
