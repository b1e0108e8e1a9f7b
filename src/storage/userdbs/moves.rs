//! Moves of a user to another node, as the manager sees them: while the copy is
//! taken the user's writes get 503 ([`MoveHold`]); the target installs the checked
//! copy; once the move is done, every request of the user here gets 401 and the
//! files go; a user moved back is served again.

use std::path::PathBuf;

use super::{UserDbs, install_checked, remove_user_files};
use crate::storage::StorageError;

impl UserDbs {
    pub(super) fn is_moving(&self, uid: u64) -> bool {
        self.inner.moving.lock().is_ok_and(|m| m.contains(&uid))
    }

    pub(super) fn check_not_moved(&self, uid: u64) -> Result<(), StorageError> {
        match self.inner.moved_away.lock() {
            Ok(m) if m.contains(&uid) => Err(StorageError::MovedAway),
            _ => Ok(()),
        }
    }

    /// Starts moving `uid` away: from now on its writes get 503 (reads go on), and once
    /// the write in flight (if any) is done, no other can start until the hold ends.
    pub async fn begin_move(&self, uid: u64) -> Result<MoveHold, StorageError> {
        self.check_not_moved(uid)?;
        if !self
            .inner
            .moving
            .lock()
            .map_err(|_| StorageError::Poisoned)?
            .insert(uid)
        {
            return Err(StorageError::Moving);
        }
        let mut hold = MoveHold {
            dbs: self.clone(),
            uid,
            lock: None,
        };
        let timeout = self.inner.config.lock_timeout;
        let lock = tokio::time::timeout(timeout, self.lock_for(uid).lock_owned())
            .await
            .map_err(|_| StorageError::Busy)?;
        hold.lock = Some(lock);
        Ok(hold)
    }

    /// Copies `uid`'s file, consistently, to `dest` with SQLite's online backup.
    pub async fn backup(&self, uid: u64, dest: PathBuf) -> Result<(), StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = this.handle(this.cached(uid), uid)?;
            let conn = db.connection()?;
            conn.backup(rusqlite::MAIN_DB, &dest, None)
                .map_err(|e| StorageError::from_sqlite(uid, e))
        })
        .await?
    }

    /// Installs a copy of `uid`'s file received from another node (spooled to
    /// `incoming`, a file in the data dir), replacing whatever this node had for the
    /// uid; the copy is checked first (integrity, exactly a known version's schema,
    /// see `schema_check`) and removed if refused. Returns the number of records in it.
    pub async fn install_copy(&self, uid: u64, incoming: PathBuf) -> Result<i64, StorageError> {
        let this = self.clone();
        let _lock = self.lock_for(uid).lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let path = this.user_path(uid);
            let checked = install_checked(&path, &incoming, uid, || this.evict(uid))?;
            this.inner.summaries.forget(uid);
            Ok(checked.records)
        })
        .await?
    }

    /// After `uid` moved to another node: every later request gets 401, and its files
    /// here are removed.
    pub async fn finish_move_away(&self, uid: u64) -> Result<(), StorageError> {
        self.inner
            .moved_away
            .lock()
            .map_err(|_| StorageError::Poisoned)?
            .insert(uid);
        let this = self.clone();
        self.inner.summaries.forget(uid);
        tokio::task::spawn_blocking(move || {
            this.evict(uid);
            remove_user_files(&this.user_path(uid), &["", "-wal", "-shm"])?;
            Ok(())
        })
        .await?
    }

    /// Lets `uid` be served here again (it was moved back to this node).
    pub fn welcome_back(&self, uid: u64) {
        if let Ok(mut m) = self.inner.moved_away.lock() {
            m.remove(&uid);
        }
    }
}

/// A move of one user in progress (see [`UserDbs::begin_move`]); ends when dropped.
pub struct MoveHold {
    dbs: UserDbs,
    uid: u64,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for MoveHold {
    fn drop(&mut self) {
        if let Ok(mut m) = self.dbs.inner.moving.lock() {
            m.remove(&self.uid);
        }
    }
}
