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

/// The page size of new user files, bytes. Every table and index of a file takes at
/// least one page, so a light user's file is mostly nearly empty pages: see
/// docs/PERFORMANCE.md ("What an idle user costs") for the sizes weighed.
pub const NEW_FILE_PAGE_SIZE: u32 = 1024;

/// Builds the template of a new user file: the schema applied, WAL mode set, the WAL
/// checkpointed away; returns its bytes.
///
/// It is built under a name no other builder uses (processes in containers share pid 1,
/// threads share one pid): the pid and a random suffix, the file created exclusively;
/// only this call's own files are ever removed.
pub(super) fn build_template(data_dir: &Path) -> Result<Vec<u8>, StorageError> {
    let path = new_template_file(data_dir).map_err(StorageError::Io)?;
    let cleanup = |p: &Path| {
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
    };
    let sql = |e| StorageError::from_sqlite(0, e);
    {
        let conn = Connection::open(&path).map_err(sql)?;
        conn.execute_batch(&format!("PRAGMA page_size = {NEW_FILE_PAGE_SIZE};"))
            .map_err(sql)?;
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

/// Creates an empty owner-only file `.template-<pid>-<random>.sqlite` in `data_dir`
/// that did not exist (nor its journal, WAL or WAL index) and returns its path.
fn new_template_file(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let path = data_dir.join(format!(
            ".template-{}-{:016x}.sqlite",
            std::process::id(),
            rand::random::<u64>()
        ));
        let taken = ["-wal", "-shm", "-journal"]
            .iter()
            .any(|ext| Path::new(&format!("{}{ext}", path.display())).exists());
        if taken {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_builds_at_once_in_one_process_never_touch_each_others_files() {
        let dir = tempfile::tempdir().unwrap();
        // A file of the name the builder once used, as another process with this pid
        // (a container's pid 1) would have it: left alone.
        let other = dir
            .path()
            .join(format!(".template-{}.sqlite", std::process::id()));
        std::fs::write(&other, b"another process's").unwrap();
        let built: Vec<Vec<u8>> = std::thread::scope(|s| {
            let builders: Vec<_> = (0..8)
                .map(|_| s.spawn(|| build_template(dir.path()).unwrap()))
                .collect();
            builders.into_iter().map(|b| b.join().unwrap()).collect()
        });
        for t in &built {
            assert!(t.starts_with(b"SQLite format 3\0"));
            assert_eq!(t.len(), built[0].len());
        }
        assert_eq!(std::fs::read(&other).unwrap(), b"another process's");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
