//! The server's handling of a WAL file's shared-memory index (`-shm`) on a cold open
//! (storage::sqlite). SQLite rebuilds the index whenever a process is the first to
//! attach to it; syncstore keeps an index this process has reset before (it can only
//! have been changed by SQLite since), and rebuilds any other.
//!
//! * An index kept this way sees every committed transaction, including those of
//!   another process that wrote while this one had the file closed.
//! * An index left by an earlier process (after a crash of the machine it may be older
//!   than the WAL on disk) is rebuilt by the next process, the server restarted.
//!
//! A test binary of its own, not a module of the `it` binary (tests/it/main.rs) with
//! the other integration tests: `sqlite::configure` takes effect only in a process
//! that has not opened an SQLite database yet (there, other tests open them in the same
//! process, in any order), and the `-shm` counters it asserts on are process-wide (there,
//! other tests' opens would move them while these run).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use serde_json::{Value, json};
use syncstore::storage::model::parse_bso;
use syncstore::storage::{Precondition, Storage, UserDbs, UserDbsConfig, sqlite};

/// The counters are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Opens as the server does: WAL, no checkpoint on close (the WAL and its index stay).
fn open(path: &Path) -> Connection {
    sqlite::configure();
    let conn = Connection::open(path).unwrap();
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    conn
}

fn rows(path: &Path) -> (i64, i64) {
    open(path)
        .query_row("SELECT count(*), total(x) FROM t", [], |r| {
            Ok((r.get(0)?, r.get::<_, f64>(1)? as i64))
        })
        .unwrap()
}

/// Another process writes one row and exits without closing, as a killed admin
/// command would: its WAL frames and the index it updated stay.
fn write_elsewhere_and_exit(path: &Path, x: i64) {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import os, sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1])\n\
                  c.execute('INSERT INTO t VALUES (?)', (int(sys.argv[2]),))\n\
                  c.commit()\n\
                  os._exit(0)\n";
    let status = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .arg(x.to_string())
        .status()
        .expect("run python3");
    assert!(status.success());
}

#[test]
fn an_index_reset_by_this_process_is_kept_and_sees_every_write() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.sqlite");
    let (zeroed, kept) = (sqlite::shm_resets_zeroed(), sqlite::shm_indexes_kept());
    open(&db)
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    open(&db)
        .execute_batch("INSERT INTO t VALUES (2);")
        .unwrap();
    assert_eq!(
        sqlite::shm_indexes_kept(),
        kept + 1,
        "the second open kept it"
    );
    assert_eq!(rows(&db), (2, 3));

    // Written by another process while this one had the file closed.
    write_elsewhere_and_exit(&db, 4);
    assert_eq!(rows(&db), (3, 7), "a write of the other process is missing");

    // The WAL started over (emptied here, then written there), twice.
    for x in [8, 16] {
        open(&db)
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        write_elsewhere_and_exit(&db, x);
    }
    assert_eq!(rows(&db), (5, 31), "a write after a WAL restart is missing");
    open(&db)
        .execute_batch("INSERT INTO t VALUES (32);")
        .unwrap();
    assert_eq!(rows(&db), (6, 63));

    assert_eq!(
        sqlite::shm_resets_zeroed(),
        zeroed,
        "created here: its one region written at once, which is not a reset"
    );
    assert_eq!(
        sqlite::shm_indexes_kept(),
        kept + 8,
        "every later open kept it"
    );
}

#[test]
fn an_index_left_by_an_earlier_process_is_rebuilt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let dbs = UserDbs::new(UserDbsConfig {
        data_dir: dir.path().to_path_buf(),
        max_open_users: 1,
        connections_per_user: 2,
        lock_timeout: Duration::from_secs(5),
        synchronous_full: false,
        quota_bytes: 0,
        summary_cache_users: 0,
    })
    .unwrap();
    let shm = format!("{}-shm", dbs.user_path(7).display());
    let st = Storage::new(dbs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let put = |id: &str| {
        let bso = parse_bso(&json!({"id": id, "payload": id}), None, 1 << 20).unwrap();
        rt.block_on(st.put(7, "clients".into(), bso, Precondition::None))
            .unwrap();
        // Another user takes the one open slot: 7's file is closed as a recently
        // active user's is, its index kept (an idle close would remove it).
        let other = parse_bso(&json!({"id": id, "payload": id}), None, 1 << 20).unwrap();
        rt.block_on(st.put(8, "clients".into(), other, Precondition::None))
            .unwrap();
        st.dbs().settle();
    };
    put("a");
    let stale = std::fs::read(&shm).unwrap();
    put("b");
    put("c");
    // What a crash of the machine can leave: an index with a valid header that
    // describes a shorter WAL than the one on disk (the index is never synced).
    std::fs::write(&shm, &stale).unwrap();

    // The next process reads the user through the same storage code.
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["user", "export", "7", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = export["collections"][0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"], "the stale index was trusted");
}
