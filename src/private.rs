//! Files and folders readable by their owner only: the data dir, user files, secrets.
//! At the bottom of the house, so every layer can use it.

use std::path::Path;

/// Creates a directory (and parents) readable by the owner only.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates a file readable by the owner only, if it does not exist. SQLite gives its
/// `-wal` and `-shm` files the same permissions as the database file.
pub fn create_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
}
