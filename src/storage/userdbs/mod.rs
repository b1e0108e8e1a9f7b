//! `UserDbs`: the pooled connection manager that routes each uid to its own SQLite file.
//!
//! * A file lives at `<data-dir>/users/<uid % 1000, three digits>/<uid>.sqlite`; the
//!   path is built from the numeric uid only, so no client string reaches the filesystem.
//! * Each open user has a small pool of connections ([`UserDb`]); open users live in a
//!   bounded LRU, so open files and memory stay flat however many users exist. A
//!   connection is opened on the thread that needs it: r2d2 opens connections only on
//!   its helper threads, which put every cold open of every user behind one queue and
//!   two thread hand-offs (measured: cold opens and info/collections ran ~20–30%
//!   slower). r2d2 still pools the tokenserver's database connections.
//! * Writes of one user are serialized by an async lock taken before any blocking work,
//!   with a timeout (→ 503), and run in `BEGIN IMMEDIATE` transactions; SQLite's busy
//!   timeout covers the rare case of two handles for one uid (an evicted handle that is
//!   still finishing a request), so clients never see "database is locked".
//! * Every SQLite call runs on tokio's blocking pool, never on the reactor.
//!
//! This file holds the manager and its request path (the LRU, the write locks, reads,
//! writes, summaries, health); its parts are submodules, which see the manager's
//! private state and are the only code that does:
//!
//! * `pool` — one open user ([`UserDb`]): its connections and how each is set up;
//! * `disk` — user files on disk: paths, the new-user template, installing a checked
//!   file from outside, removal;
//! * `moves` — a user moving to another node: writes held off ([`MoveHold`]), the
//!   received copy installed, 401 once the user has left;
//! * `checkpointer` — the background thread that checkpoints long WALs and retires
//!   files leaving the LRU;
//! * [`upkeep`] — the periodic walk over every user file (purge, checkpoint, vacuum,
//!   idle close, files of users who left).

mod checkpointer;
mod disk;
mod moves;
mod pool;
pub mod upkeep;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use lru::LruCache;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use self::checkpointer::{BACKSTOP_PAGES, CHECKPOINT_AT_BYTES, Checkpointer};
use self::disk::{build_template, install_template};
use self::pool::{OPEN_FLAGS, prepare_connection};
use super::model::{Millis, Timestamp};
use super::schema::migrate;
use super::summary::{Summaries, Summary, WalStamp};
use super::{StorageError, Written, queries};
use crate::private;

pub use self::checkpointer::RETIRING_MAX;
pub(super) use self::disk::write_new_private_file;
pub use self::disk::{create_user_file, install_checked, remove_user_files, user_path};
pub use self::moves::MoveHold;
pub use self::pool::{PooledConn, UserDb};
pub use super::schema::USER_SCHEMA_VERSION;

/// How user files are opened and shared; taken from the server settings.
#[derive(Debug, Clone)]
pub struct UserDbsConfig {
    /// Root of the data directory (files go under `users/`).
    pub data_dir: PathBuf,
    /// How many users may be open at once (LRU capacity).
    pub max_open_users: usize,
    /// Connections per open user (readers run concurrently).
    pub connections_per_user: u32,
    /// How long a write waits for the user's write lock before answering 503.
    pub lock_timeout: Duration,
    /// `PRAGMA synchronous=FULL` instead of `NORMAL`.
    pub synchronous_full: bool,
    /// Per-user quota in payload bytes; 0 turns quotas off.
    pub quota_bytes: u64,
    /// How many users' summaries (collection timestamps) are kept in memory.
    pub summary_cache_users: usize,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A write in progress: the transaction, the write's timestamp and the wall clock.
pub struct WriteCtx<'a> {
    /// The open `BEGIN IMMEDIATE` transaction.
    pub tx: &'a Transaction<'a>,
    /// The timestamp every change of this write carries, strictly above the last one.
    pub ts: Timestamp,
    /// The wall-clock time at the start of the write: expiry checks compare with it
    /// and new expiries count from it.
    pub now: Millis,
    /// Records and payload bytes this write stores, counted in metrics once committed.
    written: std::cell::Cell<(u64, u64)>,
}

impl WriteCtx<'_> {
    /// Notes records this write stores (for the written-records metrics).
    pub fn wrote(&self, bsos: &[super::model::BsoInput]) {
        let (n, bytes) = self.written.get();
        let more: usize = bsos.iter().map(|b| b.payload_len()).sum();
        self.written
            .set((n + bsos.len() as u64, bytes + more as u64));
    }
}

/// The manager of all users' files. Cheap to clone.
#[derive(Clone)]
pub struct UserDbs {
    inner: Arc<Inner>,
}

/// A [`UserDbs`] that does not keep it alive (for its background thread).
pub struct WeakUserDbs(Weak<Inner>);

impl WeakUserDbs {
    /// The manager, while it exists.
    pub fn upgrade(&self) -> Option<UserDbs> {
        self.0.upgrade().map(|inner| UserDbs { inner })
    }
}

struct Inner {
    config: UserDbsConfig,
    open: Mutex<LruCache<u64, Arc<UserDb>>>,
    /// The PRAGMAs of every connection (from the settings).
    pragmas: Arc<str>,
    /// Each user's write lock, held for the whole of a write so a user's writes never
    /// contend inside SQLite. Kept apart from the open handles so that a user evicted
    /// from the LRU while a write is in flight still has exactly one lock.
    locks: Mutex<HashMap<u64, Weak<tokio::sync::Mutex<()>>>>,
    /// Users being copied to another node: their writes get 503 until it is over.
    moving: Mutex<std::collections::HashSet<u64>>,
    /// Users moved to another node by this process: every request gets 401.
    moved_away: Mutex<std::collections::HashSet<u64>>,
    /// How upkeep finds files of users who left this node (only with an assignment
    /// database; set once at startup).
    orphans: Mutex<Option<Arc<upkeep::OrphanPolicy>>>,
    /// Closed files that keep their `-wal` and `-shm` (users evicted from the LRU
    /// while active), with when each user was last active, oldest first: upkeep
    /// removes them once the user has been idle for `idle_user_secs`.
    lingering: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Recently active users' collection timestamps.
    summaries: Summaries,
    /// Checkpoints long WALs off the request path.
    checkpointer: Checkpointer,
    /// The bytes of an empty, migrated user file in WAL mode: new users get a copy,
    /// which is far cheaper than creating the schema (and switching journal modes)
    /// in every new file.
    template: Vec<u8>,
    /// The last health check's time and outcome: checks run one at a time (they share
    /// one probe file) and a result is reused for [`HEALTH_CHECK_REUSE`].
    health: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How many closed files with a `-wal` and `-shm` are remembered for upkeep to empty
/// (16 bytes each); past that, the oldest are left to upkeep's walk over every file.
const LINGERING_MAX: usize = 1 << 16;

/// How long one health check's result answers later checks.
const HEALTH_CHECK_REUSE: Duration = Duration::from_secs(1);

impl UserDbs {
    /// Creates the manager; files are opened lazily on first use.
    pub fn new(config: UserDbsConfig) -> Result<UserDbs, StorageError> {
        super::sqlite::configure();
        let users = config.data_dir.join("users");
        private::create_dir(&users).map_err(StorageError::Io)?;
        let template = build_template(&config.data_dir)?;
        let cap = NonZeroUsize::new(config.max_open_users.max(1)).expect("non-zero");
        let sync = if config.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        let (checkpointer, jobs) = Checkpointer::new();
        let pragmas = format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA cache_size=-{CACHE_KB}; \
             PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}; PRAGMA journal_size_limit={CHECKPOINT_AT_BYTES};"
        );
        let dbs = UserDbs {
            inner: Arc::new(Inner {
                locks: Mutex::new(HashMap::new()),
                moving: Mutex::new(Default::default()),
                moved_away: Mutex::new(Default::default()),
                orphans: Mutex::new(None),
                lingering: Mutex::new(Default::default()),
                summaries: Summaries::new(config.summary_cache_users),
                checkpointer,
                template,
                config,
                open: Mutex::new(LruCache::new(cap)),
                pragmas: pragmas.into(),
                health: tokio::sync::Mutex::new(None),
            }),
        };
        self::checkpointer::start(jobs, WeakUserDbs(Arc::downgrade(&dbs.inner)))
            .map_err(StorageError::Io)?;
        Ok(dbs)
    }

    /// The path of a user's file.
    pub fn user_path(&self, uid: u64) -> PathBuf {
        user_path(&self.inner.config.data_dir, uid)
    }

    /// How many users are open now.
    pub fn open_count(&self) -> usize {
        self.inner.open.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn cached(&self, uid: u64) -> Option<Arc<UserDb>> {
        let Some(db) = self.inner.open.lock().ok()?.get(&uid).cloned() else {
            metrics::counter!("syncstore_lru_misses_total").increment(1);
            return None;
        };
        metrics::counter!("syncstore_lru_hits_total").increment(1);
        db.last_used.store(unix_secs(), Ordering::Relaxed);
        Some(db)
    }

    /// The open handle of `uid`, if open, without touching the LRU order.
    pub fn peek(&self, uid: u64) -> Option<Arc<UserDb>> {
        self.inner.open.lock().ok()?.peek(&uid).cloned()
    }

    /// Has upkeep delete files of users who left this node (see [`OrphanPolicy`]).
    ///
    /// [`OrphanPolicy`]: upkeep::OrphanPolicy
    pub fn set_orphan_policy(&self, policy: upkeep::OrphanPolicy) {
        if let Ok(mut p) = self.inner.orphans.lock() {
            *p = Some(Arc::new(policy));
        }
    }

    /// The orphan policy set at startup, if any.
    fn orphan_policy(&self) -> Option<Arc<upkeep::OrphanPolicy>> {
        self.inner.orphans.lock().ok().and_then(|p| p.clone())
    }

    /// Forgets the cached summary of `uid`.
    fn forget_summary(&self, uid: u64) {
        self.inner.summaries.forget(uid);
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// Closes files idle for `idle_secs` and not in use; returns how many.
    /// Blocking (closing may checkpoint): call from the blocking pool.
    pub fn close_idle(&self, idle_secs: u64) -> usize {
        let cutoff = unix_secs().saturating_sub(idle_secs);
        let closed: Vec<Arc<UserDb>> = {
            let Ok(mut open) = self.inner.open.lock() else {
                return 0;
            };
            let idle: Vec<u64> = open
                .iter()
                .filter(|(_, db)| {
                    db.last_used.load(Ordering::Relaxed) <= cutoff && Arc::strong_count(db) == 1
                })
                .map(|(uid, _)| *uid)
                .collect();
            let closed = idle.iter().filter_map(|uid| open.pop(uid)).collect();
            metrics::gauge!("syncstore_open_users").set(open.len() as f64);
            closed
        };
        let n = closed.len();
        for db in closed {
            self.close_for_good(db);
        }
        n
    }

    /// Closes `db` (out of the LRU, no request holding it) and, unless a write of the
    /// user is in flight, leaves its file without a `-wal` and a `-shm`: a user idle
    /// this long gains nothing from a kept WAL index but 32 KB of disk.
    fn close_for_good(&self, db: Arc<UserDb>) {
        let lock = self.lock_for(db.uid);
        let Ok(_guard) = lock.try_lock() else {
            self.note_lingering(&db);
            return; // a write is queued: closed when the handle goes, files kept
        };
        self.forget_summary(db.uid);
        if !db.close_for_good() {
            tracing::debug!(
                uid = db.uid,
                "an idle file keeps its WAL: another connection has it"
            );
            self.note_lingering(&db);
        }
    }

    /// Remembers that `db`'s file, closed now, keeps its `-wal` and `-shm` (a recently
    /// active user's next cold open is faster with the index kept), so that upkeep
    /// removes them once the user has been idle for `idle_user_secs`.
    fn note_lingering(&self, db: &UserDb) {
        let mut lingering = self
            .inner
            .lingering
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if lingering.len() >= LINGERING_MAX {
            lingering.pop_front(); // left to upkeep's walk over every file
        }
        lingering.push_back((db.uid, db.last_used.load(Ordering::Relaxed)));
    }

    /// Removes the `-wal` and `-shm` of up to `max` closed files whose users have been
    /// idle since `cutoff` (Unix seconds), oldest first; returns how many were done.
    /// Blocking.
    pub(super) fn finish_lingering(&self, cutoff: u64, max: usize) -> usize {
        let mut done = 0;
        for _ in 0..max {
            let next = {
                let mut lingering = self
                    .inner
                    .lingering
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match lingering.front() {
                    Some(&(_, last_used)) if last_used <= cutoff => lingering.pop_front(),
                    _ => None,
                }
            };
            let Some((uid, _)) = next else { break };
            // Open again since (its next eviction or idle close notes it again).
            if self.peek(uid).is_some() {
                continue;
            }
            let lock = self.lock_for(uid);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            if self.peek(uid).is_some() {
                continue;
            }
            match self.close_closed_for_good(uid) {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => tracing::debug!(uid, error = %e, "could not empty an idle file"),
            }
        }
        done
    }

    /// Opens the closed file of `uid` (not in the LRU) only to close it so that SQLite
    /// removes its `-wal` and `-shm`; nothing is opened when there are none. Returns
    /// whether they are gone. Call holding the user's write lock.
    fn close_closed_for_good(&self, uid: u64) -> Result<bool, StorageError> {
        let path = self.user_path(uid);
        if !pool::side_files_exist(&path) || !path.exists() {
            return Ok(false);
        }
        self.forget_summary(uid);
        let conn = Connection::open_with_flags(&path, OPEN_FLAGS)
            .and_then(|conn| {
                prepare_connection(&conn, &self.inner.pragmas, busy_timeout(&self.inner.config))?;
                Ok(conn)
            })
            .map_err(|e| StorageError::from_sqlite(uid, e))?;
        pool::close_checkpointing(conn, uid);
        Ok(!pool::side_files_exist(&path))
    }

    /// Waits until the files handed to the background thread so far are closed (and
    /// its queued checkpoints done). Blocking.
    pub fn settle(&self) {
        self.inner.checkpointer.flush();
    }

    /// Checkpoints and closes every open file (at shutdown), after the files the
    /// background thread is closing. Blocking.
    pub fn close_all(&self) -> usize {
        self.settle();
        let all: Vec<Arc<UserDb>> = match self.inner.open.lock() {
            Ok(mut open) => {
                let mut v = Vec::with_capacity(open.len());
                while let Some((_, db)) = open.pop_lru() {
                    v.push(db);
                }
                v
            }
            Err(_) => return 0,
        };
        // Each file is checkpointed as its last connection closes, and its `-wal` and
        // `-shm` removed: a new process rebuilds every WAL index anyway.
        let n = all.len();
        for db in all {
            self.close_for_good(db);
        }
        n
    }

    fn open_blocking(&self, uid: u64) -> Result<Arc<UserDb>, StorageError> {
        // Another request may have opened it since this one looked.
        if let Some(db) = self
            .inner
            .open
            .lock()
            .ok()
            .and_then(|mut o| o.get(&uid).cloned())
        {
            return Ok(db);
        }
        let db = Arc::new(self.open_user(uid)?);
        let evicted = {
            let mut open = self.inner.open.lock().map_err(|_| StorageError::Poisoned)?;
            if let Some(existing) = open.get(&uid) {
                return Ok(existing.clone());
            }
            let evicted = open.push(uid, db.clone());
            metrics::gauge!("syncstore_open_users").set(open.len() as f64);
            evicted
        };
        if let Some((_, evicted)) = evicted {
            metrics::counter!("syncstore_lru_evictions_total").increment(1);
            self.note_lingering(&evicted);
            self.inner.checkpointer.retire(evicted);
        }
        Ok(db)
    }

    /// Opens `uid`'s file (creating it from the template if new) with one connection,
    /// which checks the schema; a file SQLite cannot use fails here with its error.
    fn open_user(&self, uid: u64) -> Result<UserDb, StorageError> {
        let cfg = &self.inner.config;
        let path = user_path(&cfg.data_dir, uid);
        if !path.exists() {
            if let Some(dir) = path.parent() {
                private::create_dir(dir).map_err(StorageError::Io)?;
            }
            install_template(&path, &self.inner.template)?;
        }
        let db = UserDb::new(
            uid,
            path,
            self.inner.pragmas.clone(),
            cfg.connections_per_user.max(1),
            busy_timeout(cfg),
        );
        drop(db.connection()?);
        Ok(db)
    }

    /// A connection to `uid`'s file outside the pool and the LRU (for upkeep), set up as
    /// the pool's are and brought to the current schema; `None` for a file that was
    /// created but never given a schema.
    fn open_unpooled(&self, uid: u64) -> rusqlite::Result<Option<Connection>> {
        let conn = Connection::open_with_flags(self.user_path(uid), OPEN_FLAGS)?;
        prepare_connection(&conn, &self.inner.pragmas, busy_timeout(&self.inner.config))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            return Ok(None);
        }
        migrate(&conn)?;
        Ok(Some(conn))
    }

    /// Checkpoints `uid`'s file with `TRUNCATE`, emptying its WAL, unless a reader is
    /// in the way (then `false`). The user's summary stays in use, re-stamped, if it
    /// was up to date and no other connection wrote meanwhile. Call holding the user's
    /// write lock, with a connection that is not in a transaction.
    fn empty_wal(&self, uid: u64, path: &Path, conn: &Connection) -> Result<bool, StorageError> {
        let sql = |e| StorageError::from_sqlite(uid, e);
        let data_version = || conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
        let before = data_version().map_err(sql)?;
        let summary = self.inner.summaries.peek_fresh(uid, path);
        // Never wait for readers here; the connection may go back to a pool.
        conn.busy_timeout(Duration::ZERO).map_err(sql)?;
        let done = queries::checkpoint(conn, true);
        conn.busy_timeout(busy_timeout(&self.inner.config))
            .map_err(sql)?;
        if !done.map_err(sql)? {
            return Ok(false);
        }
        let stamp = WalStamp::of(path);
        if let Some(summary) = summary
            && data_version().map_err(sql)? == before
        {
            self.inner
                .summaries
                .put(uid, Arc::new(summary.restamped(stamp)));
        }
        Ok(true)
    }

    /// Checks that the data dir is writable and SQLite works there (for heartbeats).
    /// One check runs at a time; its result answers the checks of the next second
    /// (a failure as `StorageError::Io` with the first check's message).
    pub async fn health_check(&self) -> Result<(), StorageError> {
        let mut last = self.inner.health.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < HEALTH_CHECK_REUSE
        {
            return result
                .clone()
                .map_err(|m| StorageError::Io(std::io::Error::other(m)));
        }
        let result = self.probe_data_dir().await;
        let kept = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        *last = Some((Instant::now(), kept));
        result
    }

    /// Creates, writes and removes a probe SQLite file in the data dir.
    async fn probe_data_dir(&self) -> Result<(), StorageError> {
        let dir = self.inner.config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let probe = dir.join(".heartbeat.sqlite");
            private::create_file(&probe).map_err(StorageError::Io)?;
            let result = Connection::open(&probe)
                .and_then(|c| {
                    c.execute_batch(
                        "CREATE TABLE IF NOT EXISTS probe (x); INSERT INTO probe VALUES (1);",
                    )
                })
                .map_err(|e| StorageError::from_sqlite(0, e));
            let _ = std::fs::remove_file(&probe);
            result
        })
        .await?
    }

    /// Closes `uid`'s file if it is open (the handle goes when its last request ends).
    fn evict(&self, uid: u64) {
        let gone = self.inner.open.lock().ok().and_then(|mut o| o.pop(&uid));
        drop(gone);
    }

    /// The write lock of `uid` (one per user while anyone holds it).
    pub fn lock_for(&self, uid: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(&uid).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 && locks.len().is_power_of_two() {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(uid, Arc::downgrade(&lock));
        lock
    }

    /// The handle of `uid`: from the LRU, or opened now. Blocking.
    fn handle(&self, cached: Option<Arc<UserDb>>, uid: u64) -> Result<Arc<UserDb>, StorageError> {
        match cached {
            Some(db) => Ok(db),
            None => self.open_blocking(uid),
        }
    }

    /// Runs `f` in a read transaction (one consistent snapshot) of `uid`'s file; a
    /// cold file is opened in the same trip to the blocking pool.
    pub async fn read<T, F>(&self, uid: u64, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, Millis) -> Result<T, StorageError> + Send + 'static,
    {
        self.check_not_moved(uid)?;
        let cached = self.cached(uid);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.handle(cached, uid)?;
            let mut conn = db.connection()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| StorageError::from_sqlite(uid, e))?;
            f(&tx, Millis::now())
        })
        .await?
    }

    /// Runs `f` as one write of `uid`: serialized with the user's other writes, in one
    /// transaction, with a timestamp strictly above every earlier one of this user.
    /// The write is committed only if `f` succeeds and, with quotas on, does not take
    /// the user's usage up past the quota; the storage's last-modified moves to the
    /// write's timestamp.
    pub async fn write<T, F>(&self, uid: u64, f: F) -> Result<Written<T>, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteCtx<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let timeout = self.inner.config.lock_timeout;
        let quota = self.inner.config.quota_bytes as i64;
        self.check_not_moved(uid)?;
        if self.is_moving(uid) {
            return Err(StorageError::Moving);
        }
        let waited = Instant::now();
        let guard = tokio::time::timeout(timeout, self.lock_for(uid).lock_owned())
            .await
            .map_err(|_| {
                metrics::counter!("syncstore_write_lock_timeouts_total").increment(1);
                StorageError::Busy
            })?;
        metrics::histogram!("syncstore_write_lock_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        // A move may have begun, or ended, while this write waited for the lock.
        self.check_not_moved(uid)?;
        if self.is_moving(uid) {
            return Err(StorageError::Moving);
        }
        let cached = self.cached(uid);
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let db = this.handle(cached, uid)?;
            let sql = |e| StorageError::from_sqlite(uid, e);
            let mut conn = db.connection()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let last = queries::storage_modified(&tx).map_err(sql)?;
            let now = Millis::now();
            let ts = Timestamp(now.timestamp().0.max(last.0 + 1));
            let usage = |tx: &Transaction<'_>| match quota {
                0 => Ok(0),
                _ => queries::usage_bytes(tx),
            };
            let before = usage(&tx).map_err(sql)?;
            let ctx = WriteCtx {
                tx: &tx,
                ts,
                now,
                written: Default::default(),
            };
            let value = f(&ctx)?;
            let (records, bytes) = ctx.written.get();
            let usage_bytes = usage(&tx).map_err(sql)?;
            if quota > 0 && usage_bytes > quota && usage_bytes > before {
                return Err(StorageError::OverQuota);
            }
            queries::set_storage_modified(&tx, ts).map_err(sql)?;
            tx.commit().map_err(sql)?;
            if records > 0 {
                metrics::counter!("syncstore_records_written_total").increment(records);
                metrics::counter!("syncstore_payload_bytes_written_total").increment(bytes);
            }
            // The next sync of this user starts with info/collections: have it ready.
            // (Still under the write lock; a failure here only costs a later read.)
            let stamp = WalStamp::of(&db.path);
            if this.inner.summaries.enabled() {
                match read_summary(uid, stamp, &mut conn) {
                    Ok(summary) => this.inner.summaries.put(uid, Arc::new(summary)),
                    Err(_) => this.inner.summaries.forget(uid),
                }
            }
            drop(conn);
            if stamp.is_some_and(|s| s.size() > CHECKPOINT_AT_BYTES) {
                this.inner.checkpointer.request(&db);
            }
            Ok(Written { value, usage_bytes })
        })
        .await?;
        drop(guard);
        result
    }

    /// `uid`'s summary (storage and collection last-modified times): from memory when
    /// the file has not changed since it was read, else read from the file — and kept,
    /// if no write of the user is in flight to race with it.
    pub async fn summary(&self, uid: u64) -> Result<Arc<Summary>, StorageError> {
        if let Some(summary) = self.fresh_summary(uid)? {
            return Ok(summary);
        }
        let lock = self.lock_for(uid).try_lock_owned().ok();
        let cached = self.cached(uid);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.handle(cached, uid)?;
            let stamp = WalStamp::of(&db.path);
            let summary = Arc::new(read_summary(uid, stamp, &mut *db.connection()?)?);
            if lock.is_some() {
                this.inner.summaries.put(uid, summary.clone());
            }
            Ok(summary)
        })
        .await?
    }

    /// `uid`'s summary if memory holds an up-to-date one.
    pub fn fresh_summary(&self, uid: u64) -> Result<Option<Arc<Summary>>, StorageError> {
        self.check_not_moved(uid)?;
        Ok(self.inner.summaries.get(uid, &self.user_path(uid)))
    }
}

/// Reads a user's summary in a read transaction of its own; `stamp` is the WAL's,
/// taken just before.
fn read_summary(
    uid: u64,
    stamp: Option<WalStamp>,
    conn: &mut Connection,
) -> Result<Summary, StorageError> {
    let sql = |e| StorageError::from_sqlite(uid, e);
    let tx = conn.transaction().map_err(sql)?;
    let modified = queries::storage_modified(&tx).map_err(sql)?;
    let collections = queries::collection_timestamps(&tx).map_err(sql)?;
    Ok(Summary::new(stamp, modified, collections))
}

/// How long a connection to a user file waits for SQLite's locks.
fn busy_timeout(config: &UserDbsConfig) -> Duration {
    config.lock_timeout.max(Duration::from_secs(1))
}

/// Page cache of one connection, KB. Small on purpose: most opens of a user file
/// serve one session and are closed again, so a page read once is rarely read from
/// this cache twice, and each page allocated is a page the allocator must fault in and
/// hand back. 64 KB spared a warm POST its page reads (strace: 25 pwrites and 24
/// preads per write → 17 and 0) and halved a 300-record batch upload's syscalls, but
/// the 100,000-user mix, nearly all cold opens, ran ~8% slower in two paired runs
/// (4,534 and 4,871 req/s against 4,949 and 5,317; peak RSS 111 against 100 MB).
/// 256 KB took the mix with 1,000 users open to ~300 MB peak RSS.
const CACHE_KB: u32 = 32;
