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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use super::userdbs::UserDb;
use super::{StorageError, queries};

/// A WAL longer than this (500 frames of a 4 KB page) is checkpointed in the
/// background.
pub const CHECKPOINT_AT_BYTES: u64 = 500 * (4096 + 24);

/// Connections checkpoint inline past this many pages (SQLite's default).
pub const BACKSTOP_PAGES: u32 = 1000;

/// Users waiting for the thread; more requests than this are dropped (the
/// backstop covers them).
const QUEUE: usize = 256;

/// The handle writes use to ask for a checkpoint. Cheap to clone.
#[derive(Clone)]
pub struct Checkpointer {
    queue: SyncSender<Arc<UserDb>>,
}

impl Checkpointer {
    /// Starts the checkpoint thread; it ends when the last handle is dropped.
    pub fn start() -> std::io::Result<Checkpointer> {
        let (queue, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("syncstore-checkpoint".into())
            .spawn(move || run(rx))?;
        Ok(Checkpointer { queue })
    }

    /// Asks for a checkpoint of `db`'s file unless one is already queued.
    pub fn request(&self, db: &Arc<UserDb>) {
        if db.checkpoint_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.queue.try_send(db.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(db) | TrySendError::Disconnected(db)) => {
                db.checkpoint_queued.store(false, Ordering::Release);
                metrics::counter!("syncstore_checkpoints_total", "outcome" => "dropped")
                    .increment(1);
            }
        }
    }
}

fn run(rx: Receiver<Arc<UserDb>>) {
    while let Ok(db) = rx.recv() {
        let result = db.connection().and_then(|conn| {
            queries::checkpoint(&conn, false).map_err(|e| StorageError::from_sqlite(db.uid, e))
        });
        // Writes while this ran saw the WAL still long: they ask again only from here.
        db.checkpoint_queued.store(false, Ordering::Release);
        let outcome = match result {
            Ok(()) => "done",
            Err(e) => {
                tracing::warn!(uid = db.uid, error = %e, "background checkpoint failed");
                "failed"
            }
        };
        metrics::counter!("syncstore_checkpoints_total", "outcome" => outcome).increment(1);
    }
}
