//! User files on disk: where each one lives, how a new one is made from the template
//! (or, for the admin commands, from the schema), how a file from outside is checked
//! and moved into place, and how one is removed.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::private;
use crate::storage::StorageError;
use crate::storage::schema::migrate;
use crate::storage::schema_check::{self, CheckedFile};

/// Builds `<data-dir>/users/<shard>/<uid>.sqlite` from the numeric uid.
pub fn user_path(data_dir: &Path, uid: u64) -> PathBuf {
    data_dir
        .join("users")
        .join(format!("{:03}", uid % 1000))
        .join(format!("{uid}.sqlite"))
}

/// Creates an empty user file (for admin commands; the server uses its own template).
pub fn create_user_file(data_dir: &Path, uid: u64) -> Result<(), StorageError> {
    let path = user_path(data_dir, uid);
    if let Some(dir) = path.parent() {
        private::create_dir(dir).map_err(StorageError::Io)?;
    }
    let template = build_template(data_dir)?;
    install_template(&path, &template)
}

/// Checks the user file `incoming` (see `schema_check`) and, if it passes, moves it
/// into place as `path` (same file system), replacing the old file and its WAL;
/// `before` runs just before the old file goes (to close it). A refused or failed
/// file is removed. Blocking.
pub fn install_checked(
    path: &Path,
    incoming: &Path,
    uid: u64,
    before: impl FnOnce(),
) -> Result<CheckedFile, StorageError> {
    let result = (|| {
        if let Some(dir) = path.parent() {
            private::create_dir(dir).map_err(StorageError::Io)?;
        }
        let checked = schema_check::check_user_file(incoming, uid)?;
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", incoming.display()));
        }
        before();
        // The old file's WAL and index go with it (a WAL index left behind would
        // describe a WAL that is no longer there).
        remove_user_files(path, &["-wal", "-shm"])?;
        std::fs::rename(incoming, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(checked)
    })();
    if result.is_err() {
        let _ = remove_user_files(incoming, &["", "-wal", "-shm"]);
    }
    result
}

/// Removes `path` with each of `suffixes` appended (`""` for the file itself, `-wal`,
/// `-shm`), in that order; a file that is not there is fine, any other failure stops.
pub fn remove_user_files(path: &Path, suffixes: &[&str]) -> std::io::Result<()> {
    for suffix in suffixes {
        match std::fs::remove_file(format!("{}{suffix}", path.display())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Builds the template of a new user file: the schema applied, WAL mode set, the WAL
/// checkpointed away; returns its bytes.
pub(super) fn build_template(data_dir: &Path) -> Result<Vec<u8>, StorageError> {
    let path = data_dir.join(format!(".template-{}.sqlite", std::process::id()));
    let cleanup = |p: &Path| {
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
    };
    cleanup(&path);
    let sql = |e| StorageError::from_sqlite(0, e);
    {
        let conn = Connection::open(&path).map_err(sql)?;
        migrate(&conn).map_err(sql)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql)?;
        debug_assert_eq!(mode, "wal");
    } // the last close checkpoints and removes the WAL
    let bytes = std::fs::read(&path).map_err(StorageError::Io);
    cleanup(&path);
    bytes
}

/// Writes `bytes` to a new owner-only file and syncs it (fails if the file exists).
pub(in crate::storage) fn write_new_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Installs a new user file from the template, atomically: written to a temporary
/// file, synced, then hard-linked into place (which fails if another request created
/// the file first — then that one is used).
pub(super) fn install_template(path: &Path, template: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let result = (|| {
        write_new_private_file(&tmp, template)?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(StorageError::Io)
}
