//! Background upkeep of user files, off the request path and bounded per tick:
//! purge expired records and abandoned batches, checkpoint the WAL, hand free pages
//! back, and close files idle for too long. On a node with an assignment database it
//! also deletes the files of users who left the node, once a grace period has passed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use super::UserDbs;
use super::disk::remove_user_files;
use crate::storage::model::Millis;
use crate::storage::{StorageError, queries};

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
    /// Users seen placed on another node with no recorded time of leaving (a live
    /// move's flip keeps the uid): when this process first saw them so, Unix ms. The
    /// grace period counts from there (a restart starts it over: later, never sooner).
    left_seen: HashMap<u64, i64>,
}

/// Where a user with a file here stands in the assignment database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Still placed on this node (or unknown to the database: left alone).
    Here,
    /// A live move of the user is in flight: never touched.
    Moving,
    /// No longer placed here: replaced by a newer uid, or placed on another node.
    Left {
        /// When it left (Unix ms), when the database says (`replaced_at`).
        since_ms: Option<i64>,
    },
}

/// Looks up where a batch of uids stands, in one query; uids missing from the answer
/// are left alone.
pub type PlacementLookup = dyn Fn(&[u64]) -> Result<HashMap<u64, Placement>, String> + Send + Sync;

/// How upkeep finds and deletes files of users who left this node.
pub struct OrphanPolicy {
    /// The assignment database's answer for the uids of one tick.
    pub lookup: Box<PlacementLookup>,
    /// How long after leaving a user's file is kept (a user moved back in that time,
    /// or an operator's mistake undone, finds its data).
    pub grace_ms: i64,
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
    /// Closed files of users idle for `idle_secs` whose `-wal` and `-shm` were removed
    /// (files evicted from the LRU keep them until then: their index makes the next
    /// cold open cheaper).
    pub emptied: usize,
    /// Files that could not be visited (busy, corrupt, …).
    pub failed: usize,
    /// Files of users who left this node, deleted.
    pub orphans_deleted: usize,
    /// Files of users who left this node, kept until their grace period ends.
    pub orphans_waiting: usize,
}

/// What upkeep did about one user's possibly orphaned file.
enum OrphanStep {
    /// The user is placed here (or unknown, or moving): nothing to do.
    Kept,
    /// The user left, within the grace period.
    Waiting,
    /// The user left long enough ago: the file is gone.
    Deleted,
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
        let idle_since = super::unix_secs().saturating_sub(idle_secs);
        report.emptied = self.finish_lingering(idle_since, max_users);
        let now = Millis::now();
        let uids = self.next_users(cursor, max_users);
        let placements = self.placements(&uids);
        for uid in uids {
            report.users += 1;
            if let Some((policy, placements)) = &placements {
                match self.orphan_step(uid, placements.get(&uid), policy, cursor, now) {
                    Ok(OrphanStep::Deleted) => {
                        report.orphans_deleted += 1;
                        continue;
                    }
                    Ok(OrphanStep::Waiting) => report.orphans_waiting += 1,
                    Ok(OrphanStep::Kept) => {}
                    Err(e) => {
                        report.failed += 1;
                        tracing::warn!(uid, error = %e, "could not delete the file of a user who left");
                        continue;
                    }
                }
            }
            match self.upkeep_user(uid, now, idle_since) {
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

    /// The orphan policy and its answer for `uids` (`None` without a policy, or when
    /// the assignment database could not answer: nothing is deleted this tick).
    fn placements(&self, uids: &[u64]) -> Option<(Arc<OrphanPolicy>, HashMap<u64, Placement>)> {
        let policy = self.orphan_policy()?;
        if uids.is_empty() {
            return None;
        }
        match (policy.lookup)(uids) {
            Ok(found) => Some((policy, found)),
            Err(e) => {
                tracing::warn!(error = %e, "upkeep could not look up user placements");
                None
            }
        }
    }

    /// Deletes `uid`'s file if the user left this node more than the grace period ago
    /// (and no move of it is in flight here or in the database).
    fn orphan_step(
        &self,
        uid: u64,
        placement: Option<&Placement>,
        policy: &OrphanPolicy,
        cursor: &mut UpkeepCursor,
        now: Millis,
    ) -> Result<OrphanStep, StorageError> {
        let since = match placement {
            Some(Placement::Left { since_ms }) => match since_ms {
                Some(t) => *t,
                None => *cursor.left_seen.entry(uid).or_insert(now.0),
            },
            _ => {
                cursor.left_seen.remove(&uid);
                return Ok(OrphanStep::Kept);
            }
        };
        if now.0.saturating_sub(since) < policy.grace_ms || self.is_moving(uid) {
            return Ok(OrphanStep::Waiting);
        }
        let lock = self.lock_for(uid);
        let Ok(_guard) = lock.try_lock() else {
            return Ok(OrphanStep::Waiting); // a write is in flight: next pass
        };
        self.evict(uid);
        self.forget_summary(uid);
        remove_user_files(&self.user_path(uid), &["", "-wal", "-shm"])?;
        cursor.left_seen.remove(&uid);
        metrics::counter!("syncstore_orphan_files_deleted_total").increment(1);
        tracing::info!(
            uid,
            left_ms_ago = now.0 - since,
            "deleted the file of a user who left this node"
        );
        Ok(OrphanStep::Deleted)
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
    /// is emptied — and removed with its index when the WAL was last written before
    /// `idle_since` (Unix seconds) or there was none: the user is idle.
    fn upkeep_user(
        &self,
        uid: u64,
        now: Millis,
        idle_since: u64,
    ) -> Result<(usize, usize, i64), StorageError> {
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
                let path = self.user_path(uid);
                let idle = wal_written_before(&path, idle_since);
                let Some(mut conn) = self.open_unpooled(uid).map_err(sql)? else {
                    return Ok((0, 0, 0)); // never written: nothing stored
                };
                let done = work(&mut conn)?;
                if idle {
                    self.forget_summary(uid);
                    super::pool::close_checkpointing(conn, uid);
                } else {
                    // Closed files are left with an empty WAL (one checkpoint, not a
                    // passive one first): cheap to open next time.
                    self.empty_wal(uid, &path, &conn)?;
                }
                Ok(done)
            }
        }
    }
}

/// Whether the WAL of the database at `db` was last written before `since` (Unix
/// seconds), or there is none.
fn wal_written_before(db: &std::path::Path, since: u64) -> bool {
    let modified = std::fs::metadata(crate::storage::summary::wal_path(db))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    modified.is_none_or(|t| t.as_secs() < since)
}
