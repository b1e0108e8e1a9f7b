//! Summaries: each user's collection timestamps, kept in memory so that
//! `info/collections` (the first request of every sync) and listings that ask only for
//! records newer than the collection's last change (most of the rest) are answered
//! without opening the user's file.
//!
//! A summary must never be older than the file it describes:
//! * inside this process, summaries are installed only by a holder of the user's write
//!   lock — after each committed write, or by a reader that found the lock free — so
//!   no write of this process can land between reading a summary and installing it;
//! * other processes (the admin commands, SQLite tools) write through the file's WAL,
//!   so every summary carries a stamp of the `-wal` file (inode, size, modification
//!   time) taken *before* it was read, and is used only while the WAL still matches.
//!   The admin commands that write also set the WAL's modification time to the precise
//!   current time ([`mark_changed`]), so even a write in the same file-system clock
//!   tick that leaves the WAL's size as it was shows.

use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::model::Timestamp;

/// What a user's `-wal` file looked like: any write to the file changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// The `-wal` file beside a user's database file.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl WalStamp {
    /// The stamp of the WAL of the database at `db`, or `None` when it has none (a
    /// summary is then not kept: a tool could write and remove a WAL unseen).
    ///
    /// A `stat` of a file this process uses is answered from the kernel's inode cache,
    /// so it is cheap enough to run on the reactor.
    pub fn of(db: &Path) -> Option<WalStamp> {
        let m = std::fs::metadata(wal_path(db)).ok()?;
        Some(WalStamp {
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }

    /// The WAL's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Sets the modification time of the WAL of the database at `db` to the precise
/// current time, after a write by another process than the server: the server then
/// sees a stamp it has never recorded, even if the write left the WAL's size unchanged
/// within one tick of the file system's coarse clock.
pub fn mark_changed(db: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(wal_path(db)) {
        Ok(wal) => wal.set_modified(std::time::SystemTime::now()),
        // No WAL: the writer checkpointed and removed it, which shows too.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One user's storage and collection last-modified times.
#[derive(Debug)]
pub struct Summary {
    /// The storage's last-modified time.
    pub modified: Timestamp,
    /// Each collection's last-modified time, sorted by name.
    pub collections: Box<[(Box<str>, Timestamp)]>,
    /// The WAL as it was before the summary was read.
    stamp: Option<WalStamp>,
}

impl Summary {
    /// A summary read after `stamp` was taken.
    pub fn new(
        stamp: Option<WalStamp>,
        modified: Timestamp,
        collections: Vec<(String, Timestamp)>,
    ) -> Summary {
        let mut collections: Box<[(Box<str>, Timestamp)]> = collections
            .into_iter()
            .map(|(name, ts)| (name.into_boxed_str(), ts))
            .collect();
        collections.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Summary {
            modified,
            collections,
            stamp,
        }
    }

    /// The same summary, for the WAL as it is now stamped (after a checkpoint that
    /// changed no data).
    pub fn restamped(&self, stamp: Option<WalStamp>) -> Summary {
        Summary {
            modified: self.modified,
            collections: self.collections.clone(),
            stamp,
        }
    }

    /// Whether the file at `db` is unchanged since this summary was read.
    fn is_fresh(&self, db: &Path) -> bool {
        self.stamp.is_some() && self.stamp == WalStamp::of(db)
    }

    /// The last-modified time of `collection`, if it exists.
    pub fn collection(&self, collection: &str) -> Option<Timestamp> {
        self.collections
            .binary_search_by(|(name, _)| name.as_ref().cmp(collection))
            .ok()
            .map(|i| self.collections[i].1)
    }
}

/// The summaries of the most recently active users (a bounded LRU; `None` keeps none).
pub struct Summaries {
    map: Option<Mutex<LruCache<u64, Arc<Summary>>>>,
}

impl Summaries {
    /// Room for `capacity` users (0 keeps none).
    pub fn new(capacity: usize) -> Summaries {
        Summaries {
            map: NonZeroUsize::new(capacity).map(|cap| Mutex::new(LruCache::new(cap))),
        }
    }

    /// `uid`'s summary, if one is kept and the user's file at `db` has not changed
    /// since it was read.
    pub fn get(&self, uid: u64, db: &Path) -> Option<Arc<Summary>> {
        let summary = self.map.as_ref()?.lock().ok()?.get(&uid).cloned();
        let fresh = summary.filter(|s| s.is_fresh(db));
        let outcome = if fresh.is_some() { "hit" } else { "miss" };
        metrics::counter!("syncstore_summary_lookups_total", "outcome" => outcome).increment(1);
        fresh
    }

    /// Like [`Summaries::get`], but neither counted nor moved up the LRU.
    pub fn peek_fresh(&self, uid: u64, db: &Path) -> Option<Arc<Summary>> {
        let summary = self.map.as_ref()?.lock().ok()?.peek(&uid).cloned();
        summary.filter(|s| s.is_fresh(db))
    }

    /// Whether summaries are kept at all (`summary_cache_users` above 0).
    pub fn enabled(&self) -> bool {
        self.map.is_some()
    }

    /// Keeps `summary` for `uid`. Call only while holding the user's write lock.
    pub fn put(&self, uid: u64, summary: Arc<Summary>) {
        if summary.stamp.is_none() {
            return self.forget(uid);
        }
        if let Some(Ok(mut map)) = self.map.as_ref().map(Mutex::lock) {
            map.put(uid, summary);
        }
    }

    /// Drops `uid`'s summary.
    pub fn forget(&self, uid: u64) {
        if let Some(Ok(mut map)) = self.map.as_ref().map(Mutex::lock) {
            map.pop(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_collections_by_name() {
        let s = Summary::new(
            None,
            Timestamp(30),
            vec![
                ("tabs".into(), Timestamp(30)),
                ("bookmarks".into(), Timestamp(10)),
                ("history".into(), Timestamp(20)),
            ],
        );
        assert_eq!(s.collection("bookmarks"), Some(Timestamp(10)));
        assert_eq!(s.collection("tabs"), Some(Timestamp(30)));
        assert_eq!(s.collection("forms"), None);
    }

    #[test]
    fn a_summary_is_used_only_while_the_wal_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("1.sqlite");
        let summaries = Summaries::new(10);
        let summary = |stamp| Arc::new(Summary::new(stamp, Timestamp(1), vec![]));

        // No WAL: nothing is kept.
        summaries.put(1, summary(WalStamp::of(&db)));
        assert!(summaries.get(1, &db).is_none());

        std::fs::write(wal_path(&db), b"frames").unwrap();
        summaries.put(1, summary(WalStamp::of(&db)));
        assert!(summaries.get(1, &db).is_some());

        // Another process writes the same number of bytes in the same clock tick,
        // then marks the change.
        std::fs::write(wal_path(&db), b"FRAMES").unwrap();
        mark_changed(&db).unwrap();
        assert!(summaries.get(1, &db).is_none());

        summaries.put(1, summary(WalStamp::of(&db)));
        std::fs::write(wal_path(&db), b"more frames").unwrap();
        assert!(summaries.get(1, &db).is_none(), "a larger WAL");

        summaries.put(1, summary(WalStamp::of(&db)));
        std::fs::remove_file(wal_path(&db)).unwrap();
        assert!(summaries.get(1, &db).is_none(), "a removed WAL");
    }
}
