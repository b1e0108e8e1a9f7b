//! Background upkeep of user files, off the request path and bounded per tick:
//! purge expired records and abandoned batches, checkpoint the WAL, hand free pages
//! back, and close files idle for too long.

use std::path::PathBuf;

use rusqlite::{Connection, TransactionBehavior};

use super::model::Millis;
use super::userdbs::UserDbs;
use super::{StorageError, queries};

/// Most expired records purged from one user per visit.
const PURGE_LIMIT: i64 = 10_000;
/// Free pages below which a file is not worth vacuuming.
const MIN_FREE_PAGES: i64 = 64;

/// Where the next tick continues its walk over the user files.
#[derive(Debug, Default, Clone)]
pub struct UpkeepCursor {
    /// The shard folder (0–999) being walked.
    shard: u32,
    /// The last uid visited in that shard.
    after: Option<u64>,
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpkeepReport {
    /// User files visited.
    pub users: usize,
    /// Expired records deleted.
    pub records_purged: usize,
    /// Abandoned batches deleted.
    pub batches_purged: usize,
    /// Free pages handed back to the file system.
    pub pages_reclaimed: i64,
    /// Idle files closed.
    pub closed: usize,
    /// Files that could not be visited (busy, corrupt, …).
    pub failed: usize,
}

impl UserDbs {
    /// Runs one tick: closes idle files, then visits up to `max_users` user files in
    /// a round-robin walk over the shards. Blocking: call from the blocking pool.
    pub fn upkeep_tick(
        &self,
        cursor: &mut UpkeepCursor,
        max_users: usize,
        idle_secs: u64,
    ) -> UpkeepReport {
        let mut report = UpkeepReport {
            closed: self.close_idle(idle_secs),
            ..Default::default()
        };
        let now = Millis::now();
        for uid in self.next_users(cursor, max_users) {
            report.users += 1;
            match self.upkeep_user(uid, now) {
                Ok((records, batches, pages)) => {
                    report.records_purged += records;
                    report.batches_purged += batches;
                    report.pages_reclaimed += pages;
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(uid, error = %e, "upkeep skipped a user file");
                }
            }
        }
        report
    }

    /// The next uids of the walk (at most one full pass over the shards per call).
    fn next_users(&self, cursor: &mut UpkeepCursor, max_users: usize) -> Vec<u64> {
        let users_dir = self.data_dir().join("users");
        let mut out = Vec::new();
        for _ in 0..1000 {
            let dir: PathBuf = users_dir.join(format!("{:03}", cursor.shard));
            let mut uids: Vec<u64> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".sqlite")?.parse().ok()
                })
                .filter(|uid| cursor.after.is_none_or(|a| *uid > a))
                .collect();
            uids.sort_unstable();
            for uid in uids {
                if out.len() >= max_users {
                    return out;
                }
                out.push(uid);
                cursor.after = Some(uid);
            }
            cursor.shard = (cursor.shard + 1) % 1000;
            cursor.after = None;
        }
        out
    }

    /// Purges, checkpoints and vacuums one user's file (skipped this tick if a write
    /// holds the user's lock). An open user is served through its pool; a closed one
    /// through a short-lived connection, so upkeep never churns the LRU, and its WAL
    /// is emptied.
    fn upkeep_user(&self, uid: u64, now: Millis) -> Result<(usize, usize, i64), StorageError> {
        let sql = |e| StorageError::from_sqlite(uid, e);
        let work = |conn: &mut Connection| -> Result<(usize, usize, i64), StorageError> {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let (records, batches) = queries::purge_expired(&tx, now, PURGE_LIMIT).map_err(sql)?;
            tx.commit().map_err(sql)?;
            let pages = queries::reclaim_free_pages(conn, MIN_FREE_PAGES).map_err(sql)?;
            Ok((records, batches, pages))
        };
        let lock = self.lock_for(uid);
        let Ok(_guard) = lock.try_lock() else {
            return Ok((0, 0, 0));
        };
        match self.peek(uid) {
            Some(db) => {
                let mut conn = db.connection()?;
                let done = work(&mut conn)?;
                queries::checkpoint(&conn, false).map_err(sql)?;
                Ok(done)
            }
            None => {
                let Some(mut conn) = self.open_unpooled(uid).map_err(sql)? else {
                    return Ok((0, 0, 0)); // never written: nothing stored
                };
                let done = work(&mut conn)?;
                // Closed files are left with an empty WAL (one checkpoint, not a
                // passive one first): cheap to open next time.
                self.empty_wal(uid, &self.user_path(uid), &conn)?;
                Ok(done)
            }
        }
    }
}
