//! One open user: a small pool of connections to the user's file ([`UserDb`]),
//! opened on the thread that needs one, and how each connection is set up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::checkpointer::BACKSTOP_PAGES;
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

    /// Closes every connection of this handle (none may be borrowed: call on the last
    /// handle), the last one letting SQLite checkpoint as it closes. When no other
    /// connection has the file open, in this process or another, SQLite then copies the
    /// WAL into the database and deletes the `-wal` and `-shm` files, and every
    /// descriptor of the file is closed. Free pages are handed back first. Returns
    /// whether the file was left without a `-wal` and a `-shm`.
    pub(super) fn close_for_good(&self) -> bool {
        let mut idle = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.total -= conns.idle.len() as u32;
            std::mem::take(&mut conns.idle)
        };
        let last = idle.pop();
        drop(idle); // closed without a checkpoint: the last one does it
        if let Some(last) = last {
            close_checkpointing(last, self.uid);
        }
        !side_files_exist(&self.path)
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
    conn.execute_batch(pragmas)?;
    // The checkpoint thresholds are set for 4 KB pages; a file of smaller pages writes
    // more frames for the same bytes, and its inline checkpoint would come before the
    // background one: its backstop is the same bytes of WAL.
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    if (1..LARGE_PAGE_SIZE).contains(&page_size) {
        let frames = BACKSTOP_PAGES.saturating_mul(LARGE_PAGE_SIZE / page_size);
        // SAFETY: the handle of a live connection, used on this thread only.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_wal_autocheckpoint(conn.handle(), frames as std::os::raw::c_int)
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rc),
                None,
            ));
        }
    }
    Ok(())
}

/// Closes `conn`, the last connection of this process to its file, so that SQLite
/// checkpoints and removes the `-wal` and `-shm` files (which it does only when it can
/// lock the database file exclusively: no other connection anywhere). Free pages are
/// handed back to the file system first (a file that was idle this long is done
/// growing for now; a light user's file is a few dozen pages, and the batch table a
/// single-request batch creates and drops leaves two or three of them free).
pub(super) fn close_checkpointing(conn: Connection, uid: u64) {
    use rusqlite::config::DbConfig;
    match fit_page_size(&conn) {
        Ok(Some(size)) => tracing::debug!(uid, size, "page size changed"),
        Ok(None) => {}
        Err(e) => tracing::warn!(uid, error = %e, "could not change the page size"),
    }
    let prepared = drop_free_pages(&conn)
        .and_then(|()| conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false));
    if let Err(e) = prepared {
        tracing::debug!(uid, error = %e, "closing an idle file without emptying it");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(uid, error = %e, "closing an idle user file failed");
    }
}

/// Rebuilds a file of at most [`GROW_PAST`] bytes that has free pages (`VACUUM`, in
/// WAL mode: the rebuilt pages go through the WAL, checkpointed as the connection
/// closes). Files made by the server never had `auto_vacuum` (the schema's PRAGMA runs
/// inside the migration's transaction, where SQLite ignores it), so free pages stay
/// in a file until a `VACUUM`: a light user's file had five of its nineteen 4 KB pages
/// free, left by the batch table that a single-request batch creates and drops.
fn drop_free_pages(conn: &Connection) -> rusqlite::Result<()> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free == 0 || page_size * pages > GROW_PAST as i64 {
        return Ok(());
    }
    conn.execute_batch("VACUUM")
}

/// Whether the `-wal` or the `-shm` file of the database at `db` exists.
pub(super) fn side_files_exist(db: &std::path::Path) -> bool {
    ["-wal", "-shm"].iter().any(|suffix| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::path::Path::new(&p).exists()
    })
}

/// Page size of user files while they are small (new files are made with it).
pub(super) const SMALL_PAGE_SIZE: u32 = super::disk::NEW_FILE_PAGE_SIZE;

/// Page size of user files once they are large.
pub(super) const LARGE_PAGE_SIZE: u32 = 4096;

/// A file of small pages larger than this is rebuilt with large pages, bytes.
const GROW_PAST: u64 = 512 * 1024;

/// A file of large pages up to this size is rebuilt with small pages, bytes (between
/// the two a file keeps the pages it has: no file is rebuilt back and forth).
const SHRINK_BELOW: u64 = 128 * 1024;

/// Rebuilds the file of `conn`, the only connection to it, with the page size that
/// fits its size (see [`SMALL_PAGE_SIZE`]); returns the new size when it did.
///
/// SQLite changes a page size only by `VACUUM` and never in WAL mode, so the file goes
/// to rollback-journal mode (which SQLite allows only to the one connection of a
/// file), is rebuilt under the journal with full syncs — a crash at any point leaves
/// the old file or the new one, the next connection rolling back a hot journal — and
/// goes back to WAL. The connection waits for no lock: with anyone else on the file,
/// nothing is done.
fn fit_page_size(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let bytes = u64::from(page_size) * u64::try_from(pages - free).unwrap_or(0);
    let target = if page_size != LARGE_PAGE_SIZE && bytes > GROW_PAST {
        LARGE_PAGE_SIZE
    } else if page_size != SMALL_PAGE_SIZE && bytes <= SHRINK_BELOW {
        SMALL_PAGE_SIZE
    } else {
        return Ok(None);
    };
    conn.busy_timeout(Duration::ZERO)?;
    let mode = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0));
    match mode {
        Ok(mode) if mode.eq_ignore_ascii_case("delete") => {}
        // Someone else has the file (SQLite leaves WAL mode only to its last connection).
        Ok(_) => return Ok(None),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let rebuilt = conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA page_size={target}; VACUUM;"
    ));
    let mode: rusqlite::Result<String> =
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0));
    rebuilt?;
    mode?;
    Ok(Some(target))
}
