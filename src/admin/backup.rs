//! `syncstore backup DEST`: a consistent copy of everything a data dir holds that
//! cannot be made again (every user file, the assignment and accounts databases when
//! they are SQLite, the generated secret and the accounts service's signing keys),
//! with a manifest, taken while the server runs.
//!
//! Each run writes one *generation*, `DEST/<generation>/`, laid out as a data dir
//! (`users/042/1042.sqlite`, `tokenserver.sqlite`, …) with its `manifest.json`; the
//! file `DEST/LATEST` names the newest complete one. A generation is built under
//! `DEST/.partial-<generation>/` and renamed into place only once its manifest is
//! written, so `LATEST` always names a complete, consistent set.
//!
//! SQLite files are copied with SQLite's online backup in a single step, so each copy
//! is one read transaction of the live file (WAL mode: the server's writers go on, and
//! the copy is the file as of one commit), never a copy of the file's bytes. The live
//! files are opened as the other admin commands open them (`storage::files`): SQLite's
//! own locking shares them with the server, and only reads are run.
//!
//! **Incremental**: a user whose file has not changed since the previous generation is
//! not copied again; its copy is hard-linked from that generation. Unchanged means:
//! the file and its WAL have the same inode, size and modification time as when the
//! previous copy was taken (trusted only when both had been quiet for
//! [`QUIET_SECS`] before that look, so a write in the same clock tick cannot hide), or
//! else, looked up in the file, the same schema version, last-modified time (every
//! storage write sets a new, strictly larger one) and stored bytes as the copy has.
//! (`user import` of data older than the user's latest write may keep both: `--full`
//! copies everyone. Records that upkeep purged as expired may stay in a kept copy.)
//!
//! The destination is behind [`Destination`]: a directory ([`DirDestination`]) or
//! S3-compatible object storage ([`s3::S3Destination`], `s3://bucket/prefix`), named
//! by a [`BackupTarget`]. The running server can make the same backups on its own
//! (`backup_to`, see `server::backup`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AdminError;
use crate::config::Settings;

pub mod s3;
use crate::storage::files;
use crate::storage::userdbs::{USER_SCHEMA_VERSION, user_path};

/// The format tag of backup manifests.
pub const MANIFEST_FORMAT: &str = "syncstore-backup/1";
/// The manifest's name inside a generation.
pub const MANIFEST: &str = "manifest.json";
/// The file in the destination's root naming the newest complete generation.
pub const LATEST: &str = "LATEST";
/// How long a user file and its WAL must have been unchanged before a backup looks at
/// them for their stamp to be trusted by the next backup without opening the file.
pub const QUIET_SECS: u64 = 2;
/// The generations kept by default.
pub const DEFAULT_KEEP: usize = 7;

/// The generated secret's name in the data dir (see `Settings::ensure_secret`).
const SECRET_FILE: &str = "secret";
/// The assignment database's name in the data dir (see `tokenserver::db`).
const TOKENSERVER_DB: &str = "tokenserver.sqlite";
/// The accounts database's name in the data dir (see `accounts::store`).
const ACCOUNTS_DB: &str = "accounts.sqlite";

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// Where backups go: a directory, or S3-compatible object storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTarget {
    /// A directory (`file:///path`, or a plain path on the command line).
    Dir(PathBuf),
    /// `s3://bucket/prefix`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (no leading or trailing `/`; may be empty).
        prefix: String,
    },
}

impl BackupTarget {
    /// Parses `file:///absolute/path` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<BackupTarget, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                });
            if !bucket_ok {
                return Err(format!(
                    "{url:?}: the bucket name must be 3 to 63 lowercase letters, digits, dots \
                     and dashes (s3://bucket/prefix)"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == ".." || p.contains(['\\', '*']))
            {
                return Err(format!("{url:?}: the prefix has an empty, . or .. part"));
            }
            return Ok(BackupTarget::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(format!(
                    "{url:?}: a directory is named by an absolute path, file:///path"
                ));
            }
            return Ok(BackupTarget::Dir(PathBuf::from(path)));
        }
        Err(format!(
            "{url:?} is neither file:///path (a directory) nor s3://bucket/prefix"
        ))
    }

    /// A command-line argument: a URL as [`BackupTarget::parse`] reads, or a path.
    pub fn from_arg(arg: &str) -> Result<BackupTarget, String> {
        if arg.starts_with("s3://") || arg.starts_with("file://") {
            BackupTarget::parse(arg)
        } else {
            Ok(BackupTarget::Dir(PathBuf::from(arg)))
        }
    }

    /// Opens it (a directory is created and locked; object storage is not contacted
    /// yet).
    pub fn open(
        &self,
        settings: &Settings,
    ) -> Result<Box<dyn Destination + Send + Sync>, AdminError> {
        Ok(match self {
            BackupTarget::Dir(dir) => Box::new(DirDestination::open(dir)?),
            BackupTarget::S3 { bucket, prefix } => Box::new(s3::S3Destination::open(
                bucket,
                prefix,
                &s3::S3Options::from_settings(settings),
            )?),
        })
    }
}

impl std::fmt::Display for BackupTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupTarget::Dir(d) => write!(f, "{}", d.display()),
            BackupTarget::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            BackupTarget::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What one generation holds: written last, as `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The generation's name (its directory).
    pub generation: String,
    /// The version (and commit) of the syncstore that took it.
    pub syncstore_version: String,
    /// The user-file schema version of that syncstore (each file has its own too).
    pub user_schema_version: i64,
    /// Every write acknowledged before this time (Unix milliseconds) is in this
    /// generation: the run started then, and each file was copied, or found unchanged
    /// since its earlier copy, after it.
    pub consistent_to_ms: i64,
    /// The same time, RFC 3339 in UTC.
    pub consistent_to: String,
    /// When the run finished (Unix milliseconds).
    pub finished_ms: i64,
    /// The secret is set in the settings (`secrets`), not generated in the data dir:
    /// it is not in the backup; keep the settings.
    pub secret_in_settings: bool,
    /// What was deliberately left out, and why (e.g. PostgreSQL databases).
    pub skipped: Vec<String>,
    /// Files that could not be copied, with the reason: the generation lacks them.
    pub failed: Vec<Failed>,
    /// Every file, by path in the data dir.
    pub files: Vec<FileEntry>,
}

/// A file a backup could not copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failed {
    /// Its path in the data dir.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A user's storage file.
    User,
    /// The tokenserver's assignment database.
    Tokenserver,
    /// The accounts service's database.
    Accounts,
    /// The generated signing secret.
    Secret,
    /// The accounts service's signing keys (`accounts-keys.json`).
    Keys,
}

/// One file of a generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its path in the data dir (and in the generation), `/`-separated.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// The user, for a user file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u64>,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// For a SQLite file with a version number: `PRAGMA user_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// For a user file: records in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<i64>,
    /// For a user file: the user's last-modified time (10 ms units) in the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
    /// For a user file: payload bytes stored, in the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<i64>,
    /// When the copy was taken (Unix milliseconds): it is the file as of a moment
    /// between this and the end of the copy.
    pub copied_ms: i64,
    /// The generation whose run copied these bytes (an earlier one when the user had
    /// not changed since).
    pub copied_in: String,
    /// The live file's stamp at the last look, when trustworthy (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// A user file's and its WAL's identity and change marks, from `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The database file: inode, size, modification time (ns).
    pub db: (u64, u64, i128),
    /// The WAL, if there is one.
    pub wal: Option<(u64, u64, i128)>,
}

fn file_stamp(path: &Path) -> std::io::Result<Option<(u64, u64, i128)>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.ino(),
            m.len(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Stamp {
    /// The stamp of the user file `db` now; `None` when the file is not there.
    fn of(db: &Path) -> std::io::Result<Option<Stamp>> {
        let Some(main) = file_stamp(db)? else {
            return Ok(None);
        };
        let wal = file_stamp(&crate::storage::summary::wal_path(db))?;
        Ok(Some(Stamp { db: main, wal }))
    }

    /// Whether both files had been quiet for [`QUIET_SECS`] at `now_ms`.
    fn quiet_at(&self, now_ms: i64) -> bool {
        let newest = self.db.2.max(self.wal.map_or(0, |w| w.2));
        newest / 1_000_000 + (QUIET_SECS as i128) * 1000 < i128::from(now_ms)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ms` (Unix milliseconds) as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = super::civil(ms.div_euclid(1000));
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        ms.rem_euclid(1000)
    )
}

/// A generation's name for a run started at `ms`: `20261207T171500Z`.
fn generation_name(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = super::civil(ms.div_euclid(1000));
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Whether `name` is a generation's name (possibly with a `-N` suffix).
pub fn is_generation_name(name: &str) -> bool {
    let base = name.split_once('-').map_or(name, |(b, n)| {
        if n.bytes().all(|c| c.is_ascii_digit()) && !n.is_empty() {
            b
        } else {
            ""
        }
    });
    base.len() == 16
        && base.as_bytes()[8] == b'T'
        && base.ends_with('Z')
        && base[..8].bytes().all(|c| c.is_ascii_digit())
        && base[9..15].bytes().all(|c| c.is_ascii_digit())
}

/// Where generations are kept. A directory now; object storage later implements the
/// same operations (copies are made in a local staging directory first, then
/// stored; an unchanged file is reused from an earlier generation without copying its
/// bytes again).
pub trait Destination {
    /// The newest complete generation's manifest, if there is one.
    fn latest(&self) -> Result<Option<Manifest>, AdminError>;
    /// Starts generation `name`; returns the local directory where its files are made
    /// (each at its path in the data dir) before [`Destination::store`].
    fn begin(&mut self, name: &str) -> Result<PathBuf, AdminError>;
    /// Keeps the file made at `rel` in the staging directory as part of the generation.
    fn store(&self, rel: &str) -> Result<(), AdminError>;
    /// Makes `rel` of generation `from` (the latest, which is never pruned while a run
    /// goes on) part of the new generation without copying its bytes again.
    fn reuse(&self, from: &str, rel: &str) -> Result<(), AdminError>;
    /// Completes the generation with its manifest; from then on it is the latest.
    fn commit(&mut self, manifest: &Manifest) -> Result<(), AdminError>;
    /// Drops a started generation that will not be committed.
    fn abandon(&mut self);
    /// Removes complete generations beyond the newest `keep`; returns their names.
    fn prune(&self, keep: usize) -> Result<Vec<String>, AdminError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// A directory destination: `DEST/<generation>/…`, `DEST/LATEST`; unchanged files
/// hard-linked from the previous generation; a lock file (`DEST/.lock`) keeps two
/// backups from writing into one destination at once. `DEST` holds the secret and
/// private keys: it must be owned by the running user and writable by nobody else (a
/// new one is made owner-only); nothing planted in it is followed, committed or
/// counted as a generation.
pub struct DirDestination {
    root: PathBuf,
    staging: Option<(String, PathBuf)>,
    _lock: std::fs::File,
}

impl DirDestination {
    /// Opens (creating it, owner-only) the destination directory and locks it. An
    /// existing one must be owned by the running user and writable by nobody else
    /// ([`check_dest_dir`]): whoever else can write into it could swap generations.
    pub fn open(root: &Path) -> Result<DirDestination, AdminError> {
        crate::private::create_dir(root)
            .map_err(|e| invalid(format!("cannot create {}: {e}", root.display())))?;
        check_dest_dir(root)?;
        let lock_path = root.join(".lock");
        let lock = open_lock(&lock_path)
            .map_err(|e| invalid(format!("cannot open {}: {e}", lock_path.display())))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(invalid(format!(
                "another backup is writing into {} (its lock file {} is held)",
                root.display(),
                lock_path.display()
            )));
        }
        // A run that died part-way left its staging directory: it was never a
        // generation, so it goes (a link of that name is removed, not followed).
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".partial-") {
                    match std::fs::symlink_metadata(e.path()) {
                        Ok(m) if owned_dir(&m) => {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                        Ok(m) if !m.is_dir() => {
                            let _ = std::fs::remove_file(e.path());
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(DirDestination {
            root: root.to_path_buf(),
            staging: None,
            _lock: lock,
        })
    }

    fn staging(&self) -> Result<&(String, PathBuf), AdminError> {
        self.staging
            .as_ref()
            .ok_or_else(|| invalid("no generation started"))
    }

    /// The complete generations, oldest first: real directories owned by the running
    /// user whose manifest reads and names the generation itself (anything else in
    /// the destination, planted or damaged, is neither counted nor removed).
    fn generations(&self) -> Result<Vec<String>, AdminError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| invalid(format!("{}: {e}", self.root.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_generation_name(n) && self.is_generation(n))
            .collect();
        names.sort_by_key(|n| generation_order(n));
        Ok(names)
    }

    /// Whether `DEST/name` is a generation this user wrote (see [`Self::generations`]).
    fn is_generation(&self, name: &str) -> bool {
        let dir = self.root.join(name);
        std::fs::symlink_metadata(&dir).is_ok_and(|m| owned_dir(&m))
            && read_manifest(&dir).is_ok_and(|m| m.generation == name)
    }
}

/// Whether `meta` (from `symlink_metadata`) is a real directory owned by the running
/// user.
fn owned_dir(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions.
    meta.file_type().is_dir() && meta.uid() == unsafe { libc::geteuid() }
}

/// Refuses a destination directory not owned by the running user, or writable by
/// group or others.
fn check_dest_dir(root: &Path) -> Result<(), AdminError> {
    let meta = std::fs::metadata(root).map_err(|e| invalid(format!("{}: {e}", root.display())))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let why = if !meta.is_dir() {
        "is not a directory"
    } else if meta.uid() != me {
        "is not owned by the user running the backup"
    } else if meta.mode() & 0o022 != 0 {
        "is writable by group or others"
    } else {
        return Ok(());
    };
    Err(invalid(format!(
        "refused: the backup directory {} {why}: it holds the secret and private keys, \
         and whoever else can write into it could replace a generation; make it the \
         backup user's own (chmod 700)",
        root.display()
    )))
}

/// Opens (creating it, owner-only) the lock file, never through a symbolic link;
/// refused unless a regular file owned by the running user.
fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    if !m.is_file() || m.uid() != unsafe { libc::geteuid() } {
        return Err(std::io::Error::other(
            "not a regular file owned by the user running the backup",
        ));
    }
    Ok(f)
}

/// Sort key of generation names: by time, then by suffix.
fn generation_order(name: &str) -> (String, u64) {
    match name.split_once('-') {
        Some((base, n)) => (base.to_string(), n.parse().unwrap_or(0)),
        None => (name.to_string(), 0),
    }
}

/// The largest manifest read: a bigger one is refused rather than read into memory.
/// A user's entry takes about 620 bytes, so this is about 1.7 million users (a
/// 100,000-user node's manifest is about 62 MB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Reads the manifest of the generation at `dir` (not through a symbolic link, at
/// most [`MAX_MANIFEST_BYTES`]).
pub fn read_manifest(dir: &Path) -> Result<Manifest, AdminError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(MANIFEST);
    let mut text = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .and_then(|f| {
            manifest_size_ok(&path, f.metadata()?.len())?;
            f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut text)
        })
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    parse_manifest(&path, &text)
}

/// Refuses a manifest of `size` bytes beyond [`MAX_MANIFEST_BYTES`] before reading it.
pub fn manifest_size_ok(path: &Path, size: u64) -> std::io::Result<()> {
    if size > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other(format!(
            "{} is larger than {} MiB: not a manifest this version reads",
            path.display(),
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    Ok(())
}

/// A manifest from its bytes, read from `path`: refused when larger than
/// [`MAX_MANIFEST_BYTES`], not JSON of a manifest, or of another format.
pub fn parse_manifest(path: &Path, text: &[u8]) -> Result<Manifest, AdminError> {
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{} is larger than {} MiB: not a manifest this version reads",
            path.display(),
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    let m: Manifest = serde_json::from_slice(text)
        .map_err(|e| invalid(format!("{} is not a backup manifest: {e}", path.display())))?;
    if m.format != MANIFEST_FORMAT {
        return Err(invalid(format!(
            "{}: unknown manifest format {:?} (this version reads {MANIFEST_FORMAT:?})",
            path.display(),
            m.format
        )));
    }
    Ok(m)
}

/// The generation directory a restore reads from `src`: `src` itself when it holds a
/// manifest, else the one `src/LATEST` names.
pub fn generation_dir(src: &Path) -> Result<PathBuf, AdminError> {
    if src.join(MANIFEST).is_file() {
        return Ok(src.to_path_buf());
    }
    let latest = src.join(LATEST);
    let name = std::fs::read_to_string(&latest).map_err(|e| {
        invalid(format!(
            "{} is not a backup (no {MANIFEST}, and {}: {e})",
            src.display(),
            latest.display()
        ))
    })?;
    let name = name.trim();
    if !is_generation_name(name) {
        return Err(invalid(format!(
            "{} names no generation: {name:?}",
            latest.display()
        )));
    }
    Ok(src.join(name))
}

impl Destination for DirDestination {
    fn latest(&self) -> Result<Option<Manifest>, AdminError> {
        match std::fs::read_to_string(self.root.join(LATEST)) {
            Ok(name) if is_generation_name(name.trim()) => {
                read_manifest(&self.root.join(name.trim())).map(Some)
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(invalid(format!(
                "{}: {e}",
                self.root.join(LATEST).display()
            ))),
        }
    }

    fn begin(&mut self, name: &str) -> Result<PathBuf, AdminError> {
        let dir = self.root.join(format!(".partial-{name}"));
        // Not recursive: fails if anything (a link planted there) has the name.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        }
        .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
        self.staging = Some((name.to_string(), dir.clone()));
        Ok(dir)
    }

    fn store(&self, _rel: &str) -> Result<(), AdminError> {
        // Made in place: the staging directory becomes the generation.
        Ok(())
    }

    fn reuse(&self, from: &str, rel: &str) -> Result<(), AdminError> {
        let (_, dir) = self.staging()?;
        let src = self.root.join(from).join(rel);
        let dst = dir.join(rel);
        if let Some(parent) = dst.parent() {
            crate::private::create_dir(parent).map_err(invalid)?;
        }
        std::fs::hard_link(&src, &dst)
            .map_err(|e| invalid(format!("cannot link {}: {e}", src.display())))
    }

    fn commit(&mut self, manifest: &Manifest) -> Result<(), AdminError> {
        let (name, dir) = self.staging()?.clone();
        let text = serde_json::to_vec_pretty(manifest).map_err(invalid)?;
        write_private(&dir.join(MANIFEST), &text)?;
        let fin = self.root.join(&name);
        // What is renamed into place is the directory this run made.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if owned_dir(&m) => {}
            _ => {
                return Err(invalid(format!(
                    "refused: {} is no longer the directory this backup made",
                    dir.display()
                )));
            }
        }
        std::fs::rename(&dir, &fin)
            .map_err(|e| invalid(format!("cannot rename {}: {e}", dir.display())))?;
        let tmp = self.root.join(format!(".{LATEST}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, format!("{name}\n").as_bytes())?;
        std::fs::rename(&tmp, self.root.join(LATEST)).map_err(invalid)?;
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(invalid)?;
        self.staging = None;
        Ok(())
    }

    fn abandon(&mut self) {
        if let Some((_, dir)) = self.staging.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn prune(&self, keep: usize) -> Result<Vec<String>, AdminError> {
        let names = self.generations()?;
        let latest = std::fs::read_to_string(self.root.join(LATEST)).unwrap_or_default();
        let drop_n = names.len().saturating_sub(keep.max(1));
        let mut dropped = Vec::new();
        for name in names.into_iter().take(drop_n) {
            if name == latest.trim() {
                continue;
            }
            std::fs::remove_dir_all(self.root.join(&name))
                .map_err(|e| invalid(format!("cannot remove generation {name}: {e}")))?;
            dropped.push(name);
        }
        Ok(dropped)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Writes a new owner-only file (replacing any) and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| invalid(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))
}

/// SHA-256 (hex) and size of a file.
pub fn digest_file(path: &Path) -> std::io::Result<(String, u64)> {
    digest_open(std::fs::File::open(path)?)
}

/// SHA-256 (hex) and size of an open file, read from where it stands to its end.
pub fn digest_open(mut f: std::fs::File) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Opens a live SQLite file (never creating one) as the admin commands do: read and
/// write, so that when this is the file's last connection its close removes the WAL
/// and WAL index SQLite made for it (a read-only connection would leave a `-wal` and a
/// 32 KB `-shm` beside every idle user's file). Only reads are run on it.
fn open_live(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// Copies the live SQLite file `src` to the new file `dst` (owner-only) with the online
/// backup in one step: one read transaction, so the copy is the file as of one commit.
/// Then runs `read` on the copy and leaves it a single self-contained file (no WAL
/// beside it).
fn copy_sqlite<T>(
    src: &Path,
    dst: &Path,
    read: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> Result<T, String> {
    let from = open_live(src).map_err(|e| e.to_string())?;
    if let Some(parent) = dst.parent() {
        crate::private::create_dir(parent).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(dst);
    crate::private::create_file(dst).map_err(|e| e.to_string())?;
    let result = (|| {
        let mut to = Connection::open(dst)?;
        {
            let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
            loop {
                match backup.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => continue,
                    // Busy or locked: the source's writer holds it for a moment.
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        drop(from);
        let out = read(&mut to)?;
        to.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        drop(to); // the last connection: the WAL is checkpointed and removed
        Ok(out)
    })();
    for ext in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", dst.display()));
    }
    result.map_err(|e: rusqlite::Error| e.to_string())
}

/// A user file's change marks: schema version, last-modified, stored bytes.
fn user_marks(conn: &mut Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let tx = conn.transaction()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let meta = |key: &str| -> rusqlite::Result<i64> {
        Ok(tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    };
    let (last, usage) = (meta("last_modified")?, meta("usage_bytes")?);
    Ok((version, last, usage))
}

/// What happened to one user in a run.
enum UserOutcome {
    Copied(FileEntry),
    Kept(FileEntry),
    /// The file went between the listing and the copy (moved away, deleted).
    Gone,
    Failed(String),
}

/// `rel` of a user file: `users/042/1042.sqlite`.
fn user_rel(uid: u64) -> String {
    format!("users/{:03}/{uid}.sqlite", uid % 1000)
}

/// Backs up one user: kept from the previous generation when unchanged, else copied.
fn backup_user(
    data_dir: &Path,
    uid: u64,
    previous: &str,
    prev: Option<&FileEntry>,
    generation: &str,
    staging: &Path,
    dest: &(dyn Destination + Sync),
) -> UserOutcome {
    let path = user_path(data_dir, uid);
    let rel = user_rel(uid);
    let looked = now_ms();
    let stamp = match Stamp::of(&path) {
        Ok(Some(s)) => s,
        Ok(None) => return UserOutcome::Gone,
        Err(e) => return UserOutcome::Failed(e.to_string()),
    };
    let trusted = stamp.quiet_at(looked).then_some(stamp);
    if let Some(prev) = prev {
        let mut unchanged = prev.stamp.is_some() && prev.stamp == Some(stamp);
        if !unchanged {
            let marks = open_live(&path).and_then(|mut c| user_marks(&mut c));
            match marks {
                Ok((v, last, usage)) => {
                    unchanged = prev.schema_version == Some(v)
                        && prev.last_modified == Some(last)
                        && prev.usage_bytes == Some(usage);
                }
                Err(_) if !path.exists() => return UserOutcome::Gone,
                Err(e) => return UserOutcome::Failed(e.to_string()),
            }
        }
        // Linked from the previous generation (which holds the same bytes, however
        // long ago they were copied); if that fails, the user is copied again.
        if unchanged && dest.reuse(previous, &rel).is_ok() {
            let mut entry = prev.clone();
            entry.stamp = trusted;
            return UserOutcome::Kept(entry);
        }
    }
    let dst = staging.join(&rel);
    let copied_ms = now_ms();
    let read = |c: &mut Connection| {
        let marks = user_marks(c)?;
        let records: i64 = c.query_row("SELECT count(*) FROM bso", [], |r| r.get(0))?;
        Ok((marks, records))
    };
    let copied = copy_sqlite(&path, &dst, read).and_then(|((version, last, usage), records)| {
        let (sha256, size) = digest_file(&dst).map_err(|e| e.to_string())?;
        dest.store(&rel).map_err(|e| e.to_string())?;
        Ok(FileEntry {
            path: rel.clone(),
            kind: Kind::User,
            uid: Some(uid),
            size,
            sha256,
            schema_version: Some(version),
            records: Some(records),
            last_modified: Some(last),
            usage_bytes: Some(usage),
            copied_ms,
            copied_in: generation.to_string(),
            stamp: trusted,
        })
    });
    match copied {
        Ok(entry) => UserOutcome::Copied(entry),
        Err(_) if !path.exists() => {
            let _ = std::fs::remove_file(&dst);
            UserOutcome::Gone
        }
        Err(e) => UserOutcome::Failed(e),
    }
}

/// What `backup` did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The generation written.
    pub manifest: Manifest,
    /// Users copied in this run.
    pub copied: usize,
    /// Users unchanged since the previous generation (linked, not copied).
    pub kept: usize,
    /// Users whose files went during the run (moved away or deleted).
    pub gone: usize,
    /// Bytes copied in this run.
    pub bytes_copied: u64,
    /// Generations removed (beyond `keep`).
    pub pruned: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

impl BackupReport {
    /// The report's text for the operator.
    pub fn summary(&self, dest: &str) -> String {
        let m = &self.manifest;
        let users = m.files.iter().filter(|f| f.kind == Kind::User).count();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backup {} in {dest}: {users} users ({} copied, {} unchanged{}){}; \
             {} copied; consistent to {}; took {:.1} s",
            m.generation,
            self.copied,
            self.kept,
            if self.gone > 0 {
                format!(", {} gone during the run", self.gone)
            } else {
                String::new()
            },
            m.files
                .iter()
                .filter(|f| f.kind != Kind::User)
                .map(|f| format!(", {}", f.path))
                .collect::<String>(),
            super::users::human_bytes(self.bytes_copied),
            m.consistent_to,
            self.elapsed.as_secs_f64()
        );
        for s in &m.skipped {
            let _ = writeln!(out, "not backed up: {s}");
        }
        if m.secret_in_settings {
            let _ = writeln!(
                out,
                "the secret is set in the settings (secrets), not in the data dir: keep a \
                 copy of the settings with the backup"
            );
        }
        if !self.pruned.is_empty() {
            let _ = writeln!(out, "removed older generations: {}", self.pruned.join(", "));
        }
        const SHOWN: usize = 20;
        for f in m.failed.iter().take(SHOWN) {
            let _ = writeln!(out, "FAILED {}: {}", f.path, f.error);
        }
        if m.failed.len() > SHOWN {
            let _ = writeln!(
                out,
                "… and {} more (every one is listed in the generation's {MANIFEST})",
                m.failed.len() - SHOWN
            );
        }
        out
    }
}

/// How a backup runs.
#[derive(Debug, Clone, Copy)]
pub struct BackupOptions {
    /// The generations kept (older ones are removed after a run).
    pub keep: usize,
    /// Copy every user, changed or not.
    pub full: bool,
    /// Show a progress bar on stderr when it is a terminal (the command does; a
    /// backup run inside the server would not).
    pub progress: bool,
    /// Threads copying user files at once; 0: one per core.
    pub threads: usize,
}

impl Default for BackupOptions {
    fn default() -> BackupOptions {
        BackupOptions {
            keep: DEFAULT_KEEP,
            full: false,
            progress: false,
            threads: 0,
        }
    }
}

/// `backup DEST`: copies everything in `settings.data_dir` that cannot be made again
/// into a new generation of `dest`, keeping the newest `opts.keep` generations. Fails
/// (after committing the generation, which lists them) if any file could not be copied.
pub fn backup(
    settings: &Settings,
    dest: &mut (dyn Destination + Sync),
    opts: &BackupOptions,
) -> Result<BackupReport, AdminError> {
    let started = Instant::now();
    let start_ms = now_ms();
    let data_dir = &settings.data_dir;
    if !data_dir.is_dir() {
        return Err(invalid(format!("no data dir at {}", data_dir.display())));
    }
    let previous = dest.latest()?;
    let mut name = generation_name(start_ms);
    if let Some(p) = &previous
        && generation_order(&p.generation) >= generation_order(&name)
    {
        let (base, n) = generation_order(&p.generation);
        name = format!("{base}-{}", n + 1);
    }
    let staging = dest.begin(&name)?;
    let result = run(
        settings,
        &*dest,
        previous.as_ref().filter(|_| !opts.full),
        &name,
        &staging,
        start_ms,
        opts,
    );
    let (manifest, copied, kept, gone, bytes_copied) = match result {
        Ok(r) => r,
        Err(e) => {
            dest.abandon();
            return Err(e);
        }
    };
    if let Err(e) = dest.commit(&manifest) {
        dest.abandon();
        return Err(e);
    }
    let pruned = dest.prune(opts.keep)?;
    let report = BackupReport {
        manifest,
        copied,
        kept,
        gone,
        bytes_copied,
        pruned,
        elapsed: started.elapsed(),
    };
    if !report.manifest.failed.is_empty() {
        return Err(invalid(format!(
            "{}{} files could not be copied (the generation lacks them)",
            report.summary(&dest.describe()),
            report.manifest.failed.len()
        )));
    }
    Ok(report)
}

type RunResult = (Manifest, usize, usize, usize, u64);

fn run(
    settings: &Settings,
    dest: &(dyn Destination + Sync),
    previous: Option<&Manifest>,
    name: &str,
    staging: &Path,
    start_ms: i64,
    opts: &BackupOptions,
) -> Result<RunResult, AdminError> {
    let progress = opts.progress;
    let data_dir = &settings.data_dir;
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();

    // The secrets first: a token minted before any copy still verifies after a restore.
    let secret_in_settings = !settings.secrets.is_empty();
    for (file, kind) in [
        (SECRET_FILE, Kind::Secret),
        (crate::accounts::oauth::KEYS_FILE, Kind::Keys),
    ] {
        let src = data_dir.join(file);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                failed.push(Failed {
                    path: file.into(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let copied_ms = now_ms();
        write_private(&staging.join(file), &bytes)?;
        dest.store(file)?;
        entries.push(FileEntry {
            path: file.into(),
            kind,
            uid: None,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            schema_version: None,
            records: None,
            last_modified: None,
            usage_bytes: None,
            copied_ms,
            copied_in: name.into(),
            stamp: None,
        });
    }

    // The shared databases, when they are this data dir's SQLite files.
    if crate::db::is_postgres_url(&settings.tokenserver_database_url) {
        skipped.push(
            "the assignment and accounts databases (with the accounts service's \
             signing keys) are in PostgreSQL (tokenserver_database_url): back them up \
             with pg_dump"
                .to_string(),
        );
    } else {
        for (file, kind) in [
            (TOKENSERVER_DB, Kind::Tokenserver),
            (ACCOUNTS_DB, Kind::Accounts),
        ] {
            let src = data_dir.join(file);
            if !src.exists() {
                continue;
            }
            let dst = staging.join(file);
            let copied_ms = now_ms();
            let version =
                |c: &mut Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
            let done = copy_sqlite(&src, &dst, version).and_then(|v| {
                let (sha256, size) = digest_file(&dst).map_err(|e| e.to_string())?;
                dest.store(file).map_err(|e| e.to_string())?;
                Ok(FileEntry {
                    path: file.into(),
                    kind,
                    uid: None,
                    size,
                    sha256,
                    // These databases carry no version number (their tables are
                    // made and upgraded at start): the syncstore version says it.
                    schema_version: (v != 0).then_some(v),
                    records: None,
                    last_modified: None,
                    usage_bytes: None,
                    copied_ms,
                    copied_in: name.into(),
                    stamp: None,
                })
            });
            match done {
                Ok(e) => entries.push(e),
                Err(error) => failed.push(Failed {
                    path: file.into(),
                    error,
                }),
            }
        }
    }

    // Every user file, on as many threads as there are cores.
    let users = files::list_users(data_dir)?;
    let before: BTreeMap<u64, &FileEntry> = previous
        .map(|m| {
            m.files
                .iter()
                .filter(|f| f.kind == Kind::User)
                .filter_map(|f| Some((f.uid?, f)))
                .collect()
        })
        .unwrap_or_default();
    let prev_name = previous.map_or("", |m| m.generation.as_str());
    let bar = if progress {
        super::users::progress(users.len() as u64, "backing up")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(u64, UserOutcome)>> = Mutex::new(Vec::with_capacity(users.len()));
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((uid, _)) = users.get(i) else {
                        break;
                    };
                    let prev = before.get(uid).copied();
                    let out = backup_user(data_dir, *uid, prev_name, prev, name, staging, dest);
                    outcomes.lock().expect("no panics").push((*uid, out));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut outcomes = outcomes.into_inner().expect("no panics");
    outcomes.sort_by_key(|o| o.0);
    let (mut copied, mut kept, mut gone, mut bytes) = (0, 0, 0, 0u64);
    for (uid, o) in outcomes {
        match o {
            UserOutcome::Copied(e) => {
                copied += 1;
                bytes += e.size;
                entries.push(e);
            }
            UserOutcome::Kept(e) => {
                kept += 1;
                entries.push(e);
            }
            UserOutcome::Gone => gone += 1,
            UserOutcome::Failed(error) => failed.push(Failed {
                path: user_rel(uid),
                error,
            }),
        }
    }
    bytes += entries
        .iter()
        .filter(|e| e.kind != Kind::User)
        .map(|e| e.size)
        .sum::<u64>();
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        generation: name.into(),
        syncstore_version: format!(
            "{} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("SYNCSTORE_COMMIT")
        ),
        user_schema_version: USER_SCHEMA_VERSION,
        consistent_to_ms: start_ms,
        consistent_to: rfc3339(start_ms),
        finished_ms: now_ms(),
        secret_in_settings,
        skipped,
        failed,
        files: entries,
    };
    Ok((manifest, copied, kept, gone, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_662_800_123), "2026-12-07T17:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(generation_name(1_796_662_800_123), "20261207T170000Z");
        assert!(is_generation_name("20261207T170000Z"));
        assert!(is_generation_name("20261207T170000Z-3"));
        assert!(!is_generation_name("20261207T170000Z-"));
        assert!(!is_generation_name(".partial-20261207T170000Z"));
        assert!(!is_generation_name("LATEST"));
        assert!(generation_order("20261207T170000Z-10") > generation_order("20261207T170000Z-9"));
    }

    #[test]
    fn backup_targets_are_file_or_s3_urls() {
        assert_eq!(
            BackupTarget::parse("file:///var/backups/sync"),
            Ok(BackupTarget::Dir("/var/backups/sync".into()))
        );
        assert_eq!(
            BackupTarget::parse("s3://my-bucket/a/b/"),
            Ok(BackupTarget::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            BackupTarget::parse("s3://my.bucket"),
            Ok(BackupTarget::S3 {
                bucket: "my.bucket".into(),
                prefix: String::new()
            })
        );
        for bad in [
            "",
            "/var/backups",
            "file://var/backups",
            "file:///",
            "s3://",
            "s3://ab",
            "s3://Bucket/x",
            "s3://b_b/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "https://bucket.s3.amazonaws.com/x",
        ] {
            assert!(BackupTarget::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            BackupTarget::from_arg("relative/dir"),
            Ok(BackupTarget::Dir("relative/dir".into()))
        );
        assert_eq!(
            BackupTarget::parse("s3://b-1/p").unwrap().to_string(),
            "s3://b-1/p"
        );
    }

    #[test]
    fn a_stamp_is_trusted_only_once_the_file_and_its_wal_were_quiet() {
        // The WAL, written at 9 s, is the newer of the two.
        let s = Stamp {
            db: (1, 4096, 5_000_000_000),
            wal: Some((2, 0, 9_000_000_000)),
        };
        assert!(!s.quiet_at(9_500));
        assert!(!s.quiet_at(11_000));
        assert!(s.quiet_at(11_001));
        let no_wal = Stamp { wal: None, ..s };
        assert!(no_wal.quiet_at(7_001));
    }

    #[test]
    fn a_planted_staging_link_is_neither_followed_nor_committed() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dest_dir = root.path().join("dest");
        let mut dest = DirDestination::open(&dest_dir).unwrap();
        // A link where the next staging folder goes: begin fails, nothing followed.
        let link = dest_dir.join(".partial-20990101T000000Z");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        assert!(dest.begin("20990101T000000Z").is_err());
        std::fs::remove_file(&link).unwrap();
        // The staging folder swapped for a link before the commit: refused.
        let staging = dest.begin("20990101T000000Z").unwrap();
        std::fs::remove_dir(&staging).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &staging).unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            generation: "20990101T000000Z".into(),
            syncstore_version: String::new(),
            user_schema_version: USER_SCHEMA_VERSION,
            consistent_to_ms: 0,
            consistent_to: String::new(),
            finished_ms: 0,
            secret_in_settings: false,
            skipped: Vec::new(),
            failed: Vec::new(),
            files: Vec::new(),
        };
        let err = dest.commit(&manifest).unwrap_err().to_string();
        assert!(err.contains("no longer the directory"), "{err}");
        assert!(!dest_dir.join("20990101T000000Z").exists());
        assert!(!dest_dir.join(LATEST).exists());
        drop(dest);
        // A lock file that is a link: refused, its target not created.
        std::fs::remove_file(dest_dir.join(".lock")).unwrap();
        let target = elsewhere.path().join("made");
        std::os::unix::fs::symlink(&target, dest_dir.join(".lock")).unwrap();
        assert!(DirDestination::open(&dest_dir).is_err());
        assert!(!target.exists());
    }
}
