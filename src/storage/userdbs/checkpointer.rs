//! Background checkpoints of busy users' write-ahead logs.
//!
//! SQLite checkpoints a WAL inline, in the commit that takes it past
//! `wal_autocheckpoint` pages (1,000): that write copies every page back into the
//! database file and syncs it while it holds its user's write lock, and the user's
//! next writes queue behind it (the Sync mix's slowest writes, 100–170 ms, were these).
//! Instead, a write that leaves the WAL longer than [`CHECKPOINT_AT_BYTES`] (half that)
//! hands its user to one background thread, which runs a `PASSIVE` checkpoint (it
//! never waits for the user's readers or writers) with one of the user's pooled
//! connections. When it catches up, the next write starts the WAL over from its
//! beginning (and `journal_size_limit` trims a longer file back to
//! [`CHECKPOINT_AT_BYTES`]); a user writing without pause can keep it from catching
//! up, and then the inline checkpoint at 1,000 pages still runs, but finds most pages
//! already copied.
//!
//! The same thread retires files leaving the LRU. Every first open of a file rebuilds
//! the WAL's index from the `-wal` file, reading and checksumming every frame written
//! since the WAL last started over — and a user who is never hot would start it over
//! only every 1,000 frames, so each of their cold opens would pay for up to 4 MB of
//! frames. A retired file whose WAL holds more than [`RETIRE_AT_BYTES`] is
//! checkpointed with `TRUNCATE` (the WAL emptied) before it is closed; its summary,
//! which the WAL's new stamp would otherwise make stale, is re-stamped when nothing else
//! wrote meanwhile (`PRAGMA data_version`), so its next info/collections is still
//! answered from memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::pool::UserDb;
use super::{UserDbs, WeakUserDbs};
use crate::storage::summary::WalStamp;
use crate::storage::{StorageError, queries};

/// A WAL longer than this (500 frames of a 4 KB page) is checkpointed in the
/// background.
pub const CHECKPOINT_AT_BYTES: u64 = 500 * (4096 + 24);

/// Connections checkpoint inline past this many pages (SQLite's default).
pub const BACKSTOP_PAGES: u32 = 1000;

/// A file leaving the LRU with a WAL longer than this (32 frames) is checkpointed and
/// its WAL emptied: rebuilding the index of 32 frames costs about as much as the rest
/// of a cold open.
pub const RETIRE_AT_BYTES: u64 = 32 * (4096 + 24);

/// Jobs waiting for the thread; more than this are not queued (a checkpoint is then
/// left to the backstop, a retired file is closed at once). Each retired file waiting
/// here keeps its descriptors and memory: with 256 the 100,000-user mix peaked at
/// ~1,400 descriptors and ~115 MB.
const QUEUE: usize = 64;

/// Files that have left the LRU but may still be open: the queue and the one in hand.
pub const RETIRING_MAX: usize = QUEUE + 1;

/// What the thread does for a user.
pub enum Job {
    /// A `PASSIVE` checkpoint of an open user's long WAL.
    Checkpoint(Arc<UserDb>),
    /// Close a file that left the LRU, emptying its WAL first if it is long.
    Retire(Arc<UserDb>),
    /// Answer once every job queued before this one is done.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The handle writes and the LRU use to queue jobs. Cheap to clone.
#[derive(Clone)]
pub struct Checkpointer {
    queue: SyncSender<Job>,
}

impl Checkpointer {
    /// The handle and the queue its thread will read (see [`start`]).
    pub fn new() -> (Checkpointer, Receiver<Job>) {
        let (queue, rx) = sync_channel(QUEUE);
        (Checkpointer { queue }, rx)
    }

    /// Asks for a checkpoint of `db`'s file unless one is already queued.
    pub fn request(&self, db: &Arc<UserDb>) {
        if db.checkpoint_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.queue.try_send(Job::Checkpoint(db.clone())).is_err() {
            db.checkpoint_queued.store(false, Ordering::Release);
            metrics::counter!("syncstore_checkpoints_total", "outcome" => "dropped").increment(1);
        }
    }

    /// Waits until every job queued so far is done (for benchmarks and tests).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.queue.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Hands over a file that left the LRU; if the queue is full it is closed here
    /// (dropping the refused job drops the last handle).
    pub fn retire(&self, db: Arc<UserDb>) {
        drop(self.queue.try_send(Job::Retire(db)));
    }
}

/// Starts the thread; it ends when the manager is gone.
pub fn start(rx: Receiver<Job>, dbs: WeakUserDbs) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("syncstore-checkpoint".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let Some(dbs) = dbs.upgrade() else { return };
                match job {
                    Job::Checkpoint(db) => checkpoint(&db),
                    Job::Retire(db) => dbs.retire(db),
                    Job::Flush(done) => drop(done.send(())),
                }
            }
        })
        .map(drop)
}

fn checkpoint(db: &UserDb) {
    let result = db.connection().and_then(|conn| {
        queries::checkpoint(&conn, false).map_err(|e| StorageError::from_sqlite(db.uid, e))
    });
    // One cut short by readers counts as done too: the next long-WAL write asks again.
    // Writes while this ran saw the WAL still long: they ask again only from here.
    db.checkpoint_queued.store(false, Ordering::Release);
    count(result.map(|_| true), db.uid);
}

fn count(result: Result<bool, StorageError>, uid: u64) {
    let outcome = match result {
        Ok(true) => "done",
        Ok(false) => "busy",
        Err(e) => {
            tracing::warn!(uid, error = %e, "background checkpoint failed");
            "failed"
        }
    };
    metrics::counter!("syncstore_checkpoints_total", "outcome" => outcome).increment(1);
}

impl UserDbs {
    /// Closes `db` (gone from the LRU), emptying its WAL first if it is long and no
    /// request of the user is writing.
    fn retire(&self, db: Arc<UserDb>) {
        let long = WalStamp::of(&db.path).is_some_and(|s| s.size() > RETIRE_AT_BYTES);
        // Still in use by a request, or back in the LRU already (its new handle has the
        // file open): readers may be in the way, and there is little to gain.
        if !long || Arc::strong_count(&db) > 1 || self.peek(db.uid).is_some() {
            return;
        }
        let lock = self.lock_for(db.uid);
        let Ok(_guard) = lock.try_lock() else { return };
        let result = db
            .connection()
            .and_then(|conn| self.empty_wal(db.uid, &db.path, &conn));
        count(result, db.uid);
    }
}
