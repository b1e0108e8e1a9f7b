//! One open user: a small pool of connections to the user's file ([`UserDb`]),
//! opened on the thread that needs one, and how each connection is set up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::storage::StorageError;
use crate::storage::schema::migrate;

/// One open user: a small pool of connections to the user's file.
pub struct UserDb {
    pub(super) uid: u64,
    pub(super) path: PathBuf,
    /// The PRAGMAs every new connection runs.
    pragmas: Arc<str>,
    /// At most this many connections at once (readers run concurrently).
    max: u32,
    /// How long `connection` waits for a free connection before giving up (→ 503).
    wait: Duration,
    conns: Mutex<Conns>,
    freed: Condvar,
    /// Unix seconds of the last request, so upkeep can close idle files.
    pub(super) last_used: AtomicU64,
    /// Whether the background checkpointer has this file in its queue.
    pub(super) checkpoint_queued: AtomicBool,
}

/// The connections of one user: idle ones, and how many exist in all.
struct Conns {
    idle: Vec<Connection>,
    total: u32,
}

/// A connection borrowed from a [`UserDb`]; goes back to it when dropped.
pub struct PooledConn<'a> {
    db: &'a UserDb,
    conn: Option<Connection>,
}

impl std::ops::Deref for PooledConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for PooledConn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("held until drop")
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut conns = self.db.conns.lock().unwrap_or_else(|p| p.into_inner());
        // A connection left inside a transaction (a panic mid-request) is closed, not
        // reused: the next request must start from a clean state.
        if conn.is_autocommit() {
            conns.idle.push(conn);
        } else {
            conns.total -= 1;
            drop(conns);
            drop(conn);
        }
        self.db.freed.notify_one();
    }
}

impl UserDb {
    /// A user with no connection open yet: up to `max` of them, each set up with
    /// `pragmas`; `wait` bounds both the wait for a free connection and SQLite's busy
    /// timeout.
    pub(super) fn new(
        uid: u64,
        path: PathBuf,
        pragmas: Arc<str>,
        max: u32,
        wait: Duration,
    ) -> UserDb {
        UserDb {
            uid,
            path,
            pragmas,
            max,
            wait,
            conns: Mutex::new(Conns {
                idle: Vec::new(),
                total: 0,
            }),
            freed: Condvar::new(),
            last_used: AtomicU64::new(super::unix_secs()),
            checkpoint_queued: AtomicBool::new(false),
        }
    }

    /// A connection to the user's file: an idle one, a new one opened on this thread
    /// while under the limit, or the next one freed. Blocking.
    pub fn connection(&self) -> Result<PooledConn<'_>, StorageError> {
        let deadline = Instant::now() + self.wait;
        let mut conns = self.conns.lock().map_err(|_| StorageError::Poisoned)?;
        loop {
            if let Some(conn) = conns.idle.pop() {
                return Ok(PooledConn {
                    db: self,
                    conn: Some(conn),
                });
            }
            if conns.total < self.max {
                conns.total += 1;
                drop(conns);
                return match self.connect() {
                    Ok(conn) => Ok(PooledConn {
                        db: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.conns.lock().map_err(|_| StorageError::Poisoned)?.total -= 1;
                        self.freed.notify_one();
                        Err(StorageError::from_sqlite(self.uid, e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StorageError::Busy);
            }
            conns = self
                .freed
                .wait_timeout(conns, left)
                .map_err(|_| StorageError::Poisoned)?
                .0;
        }
    }

    /// Opens one more connection to the file and checks its schema.
    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(&self.path, OPEN_FLAGS)?;
        prepare_connection(&conn, &self.pragmas, self.wait)?;
        migrate(&conn)?;
        Ok(conn)
    }
}

/// How user files are opened: no SQLite-level mutex (a connection is used by one
/// thread at a time), never created by SQLite (new files come from the template).
pub(super) const OPEN_FLAGS: OpenFlags =
    OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// Sets up a connection to a user file: PRAGMAs, and no checkpoint when it closes —
/// evicting a user from the LRU must not cost a checkpoint and an fsync on the request
/// path; background upkeep and shutdown checkpoint instead. Foreign keys (the bundled
/// SQLite's default is on; the schema's cascades are done by the queries) and the busy
/// timeout are set through the C API: each PRAGMA is a statement to compile, on every
/// cold open.
pub(super) fn prepare_connection(
    conn: &Connection,
    pragmas: &str,
    busy: Duration,
) -> rusqlite::Result<()> {
    use rusqlite::config::DbConfig;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false)?;
    conn.busy_timeout(busy)?;
    conn.execute_batch(pragmas)
}
