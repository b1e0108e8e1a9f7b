//! `syncstore restore SRC --data-dir EMPTY_DIR`: a backup generation (see
//! [`super::backup`]) put back as a data dir. Every file's size and SHA-256 are checked
//! against the manifest before anything is written, and a data dir that holds anything
//! is refused. Only what the running user owns and nobody else can write is trusted:
//! the destination, its `LATEST`, the generation and every file and folder in it
//! (never a symbolic link, files opened with `O_NOFOLLOW`, only regular files); a
//! manifest listing a path twice, or larger than `backup::MAX_MANIFEST_BYTES`, is
//! refused. The data dir is built in a folder inside it (`.restoring-…`) and its files
//! moved into place only once every one is written and checked: user files as any file
//! from outside is (SQLite's integrity check and exactly a known version's schema,
//! `storage::schema_check`), the assignment and accounts databases by SQLite's
//! integrity check and by holding no table, index, trigger or view that this version's
//! schema does not make. A failure leaves the data dir empty (and owner-only).
//!
//! `restore SRC --user UID` puts one user back into the running node; it refuses a uid
//! the assignment database retired, never issued or assigns to no node (`--force`),
//! and, when the live user was written after the backup's copy, says which writes are
//! discarded and refuses unless `--discard-newer`.
//!
//! A restore puts each user back in time, and Firefox would not notice: its engines ask
//! only for records newer than their own last sync (later than anything restored), and
//! upload only what changed locally since, so what it synced after the backup's
//! consistency time would stay missing on the server for good. So by default every
//! restored user is **marked for re-sync** ([`mark_for_resync`]): meta/global gets a
//! new global `syncID` (everything else in it, and crypto/keys, unchanged). On its next
//! sync each Firefox sees the new syncID, resets its local Sync state (every engine's
//! last-sync time; bookmarks marked "new") and merges with the server as on a first
//! sync: it downloads everything, keeps its local data, and uploads what the server
//! lacks. No device wipes anything, and the server is not wiped either (as a missing
//! meta/global or a new storageVersion would make the first client do).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::OptionalExtension;

use super::AdminError;
use super::backup::{self, FileEntry, Kind, Manifest};
use crate::storage::model::{BsoInput, Field, Millis, Timestamp};
use crate::storage::{files, queries};

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// A manifest path that stays inside the directory it is joined to: relative, no
/// `..`, no root, nothing but plain names.
fn safe_rel(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then(|| p.to_path_buf())
}

/// Where a file of the manifest belongs in a data dir: user files only at their
/// uid's path, the others only by their own name.
fn expected_rel(f: &FileEntry) -> Option<String> {
    Some(match f.kind {
        Kind::User => {
            let uid = f.uid?;
            format!("users/{:03}/{uid}.sqlite", uid % 1000)
        }
        Kind::Tokenserver => "tokenserver.sqlite".into(),
        Kind::Accounts => "accounts.sqlite".into(),
        Kind::Secret => "secret".into(),
        Kind::Keys => crate::accounts::oauth::KEYS_FILE.into(),
    })
}

/// At most this many problems are printed (then a count of the others).
const SHOWN_PROBLEMS: usize = 20;

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Why a path of a backup is not trusted, if it is not: a symlink, not a `dir`ectory
/// (or not a regular file), not owned by the running user, or writable by group or
/// others (anyone else who can write it could have put something else there).
fn untrusted(meta: &std::fs::Metadata, dir: bool) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Some("a symbolic link");
    }
    if dir && !ft.is_dir() {
        return Some("not a directory");
    }
    if !dir && !ft.is_file() {
        return Some("not a regular file");
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Some("not owned by the user running this command");
    }
    if meta.mode() & 0o022 != 0 {
        return Some("writable by group or others");
    }
    None
}

/// Checks the generation directory `dir` found from `src` (see [`untrusted`]): the
/// generation itself and, when `src` is a destination, `src` and its `LATEST` (which
/// whoever could write them could point at another generation).
fn check_generation_dir(src: &Path, dir: &Path) -> Result<(), AdminError> {
    let refuse = |what: &Path, why: &str| {
        invalid(format!(
            "refused: {} is {why}; nothing was written (a backup must be owned by the \
             user who restores it and writable by nobody else)",
            what.display()
        ))
    };
    let meta = |p: &Path, follow: bool| {
        if follow {
            std::fs::metadata(p)
        } else {
            std::fs::symlink_metadata(p)
        }
        .map_err(|e| invalid(format!("{}: {e}", p.display())))
    };
    if dir != src {
        if let Some(why) = untrusted(&meta(src, true)?, true) {
            return Err(refuse(src, why));
        }
        let latest = src.join(backup::LATEST);
        if let Some(why) = untrusted(&meta(&latest, false)?, false) {
            return Err(refuse(&latest, why));
        }
    }
    match untrusted(&meta(dir, false)?, true) {
        Some(why) => Err(refuse(dir, why)),
        None => Ok(()),
    }
}

/// Opens the file `rel` of the generation at `dir` for reading, without following a
/// symbolic link anywhere below `dir`: every folder on the way and the file itself
/// must be trusted ([`untrusted`]). The checks are made on the open file.
fn open_in_generation(dir: &Path, rel: &str) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let rel_path = safe_rel(rel).ok_or_else(|| "not a plain relative path".to_string())?;
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rel_path.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        let meta = std::fs::symlink_metadata(&at).map_err(|e| e.to_string())?;
        if let Some(why) = untrusted(&meta, true) {
            return Err(format!("its folder {} is {why}", at.display()));
        }
    }
    let path = dir.join(&rel_path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                "a symbolic link".to_string()
            } else {
                e.to_string()
            }
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if let Some(why) = untrusted(&meta, false) {
        return Err(why.to_string());
    }
    Ok(file)
}

/// Reads the whole of the file `rel` of the generation at `dir` ([`open_in_generation`]).
fn read_in_generation(dir: &Path, rel: &str) -> Result<Vec<u8>, AdminError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_in_generation(dir, rel)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(|e| e.to_string()))
        .map_err(|e| invalid(format!("cannot read {rel} of {}: {e}", dir.display())))?;
    Ok(bytes)
}

/// Checks every file of `manifest` in the generation at `dir`: listed once, at the path
/// its kind allows, a trusted regular file ([`open_in_generation`]: never a symbolic
/// link, whose target's size or hash is never shown), of its size and SHA-256, and a
/// SQLite file where one belongs. Returns every problem found (empty: sound).
pub fn verify(dir: &Path, manifest: &Manifest) -> Vec<String> {
    let bar = super::users::progress(manifest.files.len() as u64, "verifying");
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &manifest.files {
        bar.inc(1);
        if expected_rel(f).as_deref() != Some(f.path.as_str()) || safe_rel(&f.path).is_none() {
            problems.push(format!("{}: not where a {:?} file goes", f.path, f.kind));
            continue;
        }
        if !seen.insert(f.path.as_str()) {
            problems.push(format!("{}: listed more than once in the manifest", f.path));
            continue;
        }
        let file = match open_in_generation(dir, &f.path) {
            Ok(file) => file,
            Err(e) => {
                problems.push(format!("{}: {e}", f.path));
                continue;
            }
        };
        if matches!(f.kind, Kind::User | Kind::Tokenserver | Kind::Accounts) {
            use std::os::unix::fs::FileExt;
            let mut head = [0u8; 16];
            if file.read_exact_at(&mut head, 0).is_err() || &head != SQLITE_HEADER {
                problems.push(format!("{}: not a SQLite database", f.path));
                continue;
            }
        }
        match backup::digest_open(file) {
            Ok((sha, size)) if size != f.size => problems.push(format!(
                "{}: {size} bytes, the manifest says {} (sha256 {sha})",
                f.path, f.size
            )),
            Ok((sha, _)) if sha != f.sha256 => problems.push(format!(
                "{}: checksum {sha} does not match the manifest's {}",
                f.path, f.sha256
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", f.path)),
        }
    }
    bar.finish_and_clear();
    problems
}

/// `problems`, one a line, at most [`SHOWN_PROBLEMS`] of them and a count of the rest.
fn list_problems(problems: &[String]) -> String {
    let mut out = String::new();
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        let _ = writeln!(out, "  {p}");
    }
    if problems.len() > SHOWN_PROBLEMS {
        let _ = writeln!(
            out,
            "  … and {} more problems",
            problems.len() - SHOWN_PROBLEMS
        );
    }
    out
}

/// The prefix of the folder inside the data dir where a full restore is built.
const STAGING_PREFIX: &str = ".restoring-";

/// Whether `dir` is missing or an empty directory; a folder left by a restore that
/// died part-way ([`STAGING_PREFIX`]) does not count, and is removed.
fn is_empty_dir(dir: &Path) -> Result<bool, AdminError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(invalid(format!("{}: {e}", dir.display()))),
    };
    let mut left = Vec::new();
    for e in entries {
        let e = e.map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            left.push(e.path());
        } else {
            return Ok(false);
        }
    }
    for l in left {
        std::fs::remove_dir_all(&l)
            .map_err(|e| invalid(format!("cannot remove {}: {e}", l.display())))?;
    }
    Ok(true)
}

/// The (type, name, sql) of every schema object of the SQLite file at `path`.
fn schema_objects(path: &Path) -> rusqlite::Result<Vec<(String, String, Option<String>)>> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let mut stmt = c.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// The schema objects this version of the project makes in a new assignment or
/// accounts database (by opening one, as the server does, in a temporary folder).
fn fresh_schema(kind: Kind) -> Result<Vec<(String, String, Option<String>)>, String> {
    let tmp = std::env::temp_dir().join(format!("syncstore-schema-{:016x}", rand::random::<u64>()));
    crate::private::create_dir(&tmp).map_err(|e| e.to_string())?;
    let result = (|| {
        let file = match kind {
            Kind::Tokenserver => {
                let db = crate::tokenserver::db::AssignmentDb::open("", &tmp)
                    .map_err(|e| e.to_string())?;
                drop(db);
                "tokenserver.sqlite"
            }
            _ => {
                let store =
                    crate::accounts::store::Store::open(&tmp, "").map_err(|e| e.to_string())?;
                drop(store);
                "accounts.sqlite"
            }
        };
        schema_objects(&tmp.join(file)).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Checks a restored assignment or accounts database at `path`: SQLite's integrity
/// check, and no schema object (table, index, trigger, view) that this version's
/// schema does not make; triggers and views exactly as it makes them. Returns the
/// problem, if any.
fn check_shared_db(path: &Path, kind: Kind) -> Option<String> {
    let verdict =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)));
    match verdict {
        Ok(ok) if ok == "ok" => {}
        Ok(problem) => return Some(problem),
        Err(e) => return Some(e.to_string()),
    }
    let known = match fresh_schema(kind) {
        Ok(k) => k,
        Err(e) => return Some(format!("cannot make the schema to compare with: {e}")),
    };
    let have = match schema_objects(path) {
        Ok(h) => h,
        Err(e) => return Some(e.to_string()),
    };
    let extra: Vec<String> = have
        .iter()
        .filter(|(ty, name, sql)| {
            let same = |k: &&(String, String, Option<String>)| {
                k.0 == *ty
                    && k.1 == *name
                    && (!matches!(ty.as_str(), "trigger" | "view") || k.2 == *sql)
            };
            !known.iter().any(|k| same(&k))
        })
        .map(|(ty, name, _)| format!("{ty} {name}"))
        .collect();
    (!extra.is_empty()).then(|| {
        format!(
            "holds what this version's schema does not make: {}",
            extra.join(", ")
        )
    })
}

/// How a restore treats what it restores.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Mark every restored user for re-sync ([`mark_for_resync`]), so that Firefox
    /// uploads again what it synced after the backup. On unless asked otherwise.
    pub resync: bool,
    /// `--user`: restore even when the live user's data is newer than the backup's
    /// copy (its writes since are discarded).
    pub discard_newer: bool,
    /// `--user`: restore even a uid the assignment database lists as replaced, or
    /// assigns to no node, or never issued.
    pub force: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            resync: true,
            discard_newer: false,
            force: false,
        }
    }
}

/// What [`mark_for_resync`] did to one user's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resync {
    /// meta/global's global syncID was replaced (`old` → `new`), at server time `at`.
    Marked {
        /// The syncID the backup held.
        old: String,
        /// The syncID the clients will find.
        new: String,
        /// The new timestamp of meta/global (and of the meta collection).
        at: Timestamp,
    },
    /// The user has no meta/global (or none a client could use): Firefox starts over
    /// on its own, nothing to mark.
    NoMetaGlobal,
}

/// A new syncID as Sync makes them (`Utils.makeGUID`): 12 characters of URL-safe
/// base64, from 9 random bytes.
fn new_sync_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 9]>())
}

/// Marks the user file at `path` so that every Sync client re-syncs it: meta/global's
/// global `syncID` is replaced by a new one and meta/global is written with a new
/// timestamp, later than any of the user's (so `info/collections` shows `meta` changed
/// and every client fetches it again). Nothing else changes: storageVersion, the
/// engines' syncIDs and versions, declined, crypto/keys and all other records stay.
///
/// What Firefox does with it (services-sync `service.sys.mjs`, `_remoteSetup`): "Sync
/// IDs differ" → `resetClient()` (every engine's last-sync time to 0; the bookmarks
/// engine marks every local bookmark "new" and clears its mirror; nothing local is
/// deleted), take the new syncID, fetch the (same) keys; then each engine syncs as a
/// first sync: all server records downloaded and merged with the local ones, and what
/// the server lacks uploaded. A missing meta/global, no syncID or a new storageVersion
/// would instead make the first client wipe the server (`_freshStart`), losing what
/// only the backup held.
pub fn mark_for_resync(path: &Path) -> Result<Resync, AdminError> {
    let fail = |e: rusqlite::Error| invalid(format!("{}: {e}", path.display()));
    let mut conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    let now = Millis::now();
    let Some((coll, _)) = queries::collection(&tx, "meta").map_err(fail)? else {
        return Ok(Resync::NoMetaGlobal);
    };
    let payload: Option<String> = tx
        .query_row(
            "SELECT payload FROM bso WHERE collection = ?1 AND id = 'global' AND expiry > ?2",
            rusqlite::params![coll, now.0],
            |r| r.get(0),
        )
        .optional()
        .map_err(fail)?;
    let Some(mut meta) = payload
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
        .filter(|m| m.is_object())
    else {
        return Ok(Resync::NoMetaGlobal);
    };
    let Some(old) = meta["syncID"].as_str().map(str::to_string) else {
        return Ok(Resync::NoMetaGlobal);
    };
    let new = new_sync_id();
    meta["syncID"] = serde_json::Value::String(new.clone());
    let last = queries::storage_modified(&tx).map_err(fail)?;
    let at = now.timestamp().max(Timestamp(last.0 + 1));
    let record = BsoInput {
        id: "global".into(),
        payload: Field::Set(meta.to_string()),
        sortindex: Field::Absent,
        ttl: Field::Absent,
    };
    queries::store_bsos(&tx, "meta", &[record], at, now).map_err(fail)?;
    queries::set_storage_modified(&tx, at).map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(Resync::Marked { old, new, at })
}

/// `bytes` (a user's SQLite file) marked for re-sync, through a private temporary
/// file: the marked file's bytes and what was done.
fn mark_bytes(uid: u64, bytes: &[u8]) -> Result<(Vec<u8>, Resync), AdminError> {
    let dir = std::env::temp_dir().join(format!(
        "syncstore-restore-{uid}-{:016x}",
        rand::random::<u64>()
    ));
    let path = dir.join("user.sqlite");
    let result = write_new(&path, bytes)
        .and_then(|()| mark_for_resync(&path))
        .and_then(|done| {
            let marked = std::fs::read(&path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
            Ok((marked, done))
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What a restore did; `sound` is `check`'s verdict on the restored user files.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The report's text.
    pub text: String,
    /// Whether every restored user file and database passed the integrity check.
    pub sound: bool,
}

/// `restore SRC --data-dir DIR`: `src` is a backup destination (its `LATEST`
/// generation is restored) or one generation's directory. Every user is marked for
/// re-sync ([`RestoreOptions::default`]).
pub fn restore(src: &Path, data_dir: &Path) -> Result<RestoreReport, AdminError> {
    restore_with(src, data_dir, &RestoreOptions::default())
}

/// [`restore`] with `opts`.
pub fn restore_with(
    src: &Path,
    data_dir: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, AdminError> {
    let dir = backup::generation_dir(src)?;
    check_generation_dir(src, &dir)?;
    let manifest = read_checked_manifest(&dir)?;
    if !is_empty_dir(data_dir)? {
        return Err(invalid(format!(
            "{} is not empty: restore only into an empty (or new) data dir, with the \
             server stopped",
            data_dir.display()
        )));
    }
    if manifest.user_schema_version > crate::storage::userdbs::USER_SCHEMA_VERSION {
        return Err(invalid(format!(
            "the backup was taken by a newer syncstore ({}, user schema version {}); \
             this one knows up to {}: restore with that version",
            manifest.syncstore_version,
            manifest.user_schema_version,
            crate::storage::userdbs::USER_SCHEMA_VERSION
        )));
    }
    let problems = verify(&dir, &manifest);
    if !problems.is_empty() {
        return Err(invalid(format!(
            "refused: the backup {} is damaged, nothing was written:\n{}",
            dir.display(),
            list_problems(&problems).trim_end()
        )));
    }

    // Built in a folder inside the data dir, moved into place once every file is
    // written and checked: a failure leaves the data dir as it was (empty).
    crate::private::create_dir(data_dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| invalid(format!("cannot create {}: {e}", data_dir.display())))?;
    let staging = data_dir.join(format!("{STAGING_PREFIX}{:016x}", rand::random::<u64>()));
    crate::private::create_dir(&staging)
        .map_err(|e| invalid(format!("cannot create {}: {e}", staging.display())))?;
    let built = build(&dir, &manifest, &staging, opts);
    let (users, records, others, marked) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(invalid(format!(
                "{e}\nnothing was restored: {} is left empty",
                data_dir.display()
            )));
        }
    };
    let moved = (|| -> std::io::Result<()> {
        for e in std::fs::read_dir(&staging)? {
            let e = e?;
            std::fs::rename(e.path(), data_dir.join(e.file_name()))?;
        }
        std::fs::remove_dir(&staging)?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    moved.map_err(|e| {
        invalid(format!(
            "cannot move the restored files from {} into {}: {e}",
            staging.display(),
            data_dir.display()
        ))
    })?;

    let (mut check, sound) = super::users::check(data_dir)?;
    for f in manifest
        .files
        .iter()
        .filter(|f| matches!(f.kind, Kind::Tokenserver | Kind::Accounts))
    {
        let _ = writeln!(check, "checked {}: ok", f.path);
    }
    let incomplete = if manifest.failed.is_empty() {
        ""
    } else {
        "INCOMPLETE "
    };
    let mut text = format!(
        "restored {incomplete}generation {} (taken by syncstore {}; every write acknowledged before {} \
         is in it) into {}: {users} users ({records} records)",
        manifest.generation,
        manifest.syncstore_version,
        manifest.consistent_to,
        data_dir.display()
    );
    if !others.is_empty() {
        let _ = write!(text, ", {}", others.join(", "));
    }
    text.push('\n');
    if opts.resync {
        let _ = write!(
            text,
            "marked {marked} of {users} users for re-sync (meta/global has a new syncID): \
             each Firefox merges its data with the server on its next sync and uploads what \
             the server lacks"
        );
        if marked < users {
            let _ = write!(
                text,
                "; {} have no meta/global (Firefox starts them over by itself)",
                users - marked
            );
        }
        text.push('\n');
    } else {
        let _ = writeln!(
            text,
            "not marked for re-sync (--no-resync): Firefox will not upload again what it \
             synced after {}",
            manifest.consistent_to
        );
    }
    text.push_str(&check);
    for s in &manifest.skipped {
        let _ = writeln!(text, "not in the backup: {s}");
    }
    if manifest.secret_in_settings {
        let _ = writeln!(
            text,
            "the secret was set in the settings (secrets) when the backup was taken: \
             start the server with the same settings"
        );
    }
    for f in &manifest.failed {
        let _ = writeln!(
            text,
            "NOT RESTORED {}: the backup could not copy it ({}); an earlier generation may \
             have it",
            f.path, f.error
        );
    }
    Ok(RestoreReport { text, sound })
}

/// Reads the manifest of the generation at `dir` ([`open_in_generation`]), at most
/// [`backup::MAX_MANIFEST_BYTES`].
fn read_checked_manifest(dir: &Path) -> Result<Manifest, AdminError> {
    use std::io::Read;
    let path = dir.join(backup::MANIFEST);
    let mut text = Vec::new();
    open_in_generation(dir, backup::MANIFEST)
        .and_then(|f| {
            let size = f.metadata().map_err(|e| e.to_string())?.len();
            backup::manifest_size_ok(&path, size).map_err(|e| e.to_string())?;
            f.take(backup::MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut text)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    backup::parse_manifest(&path, &text)
}

/// Writes every file of `manifest` (verified) from the generation at `dir` into
/// `staging`, laid out as a data dir, each checked: user files as any file from
/// outside is, the databases by [`check_shared_db`]. Returns users, records, the
/// other files' paths and the users marked for re-sync.
fn build(
    dir: &Path,
    manifest: &Manifest,
    staging: &Path,
    opts: &RestoreOptions,
) -> Result<(usize, i64, Vec<String>, usize), AdminError> {
    let bar = super::users::progress(manifest.files.len() as u64, "restoring");
    let (mut users, mut records, mut others) = (0usize, 0i64, Vec::new());
    let mut marked = 0usize;
    for f in &manifest.files {
        let bytes = read_in_generation(dir, &f.path)?;
        // Read again after the check: the bytes written are the bytes checked.
        if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != f.sha256 {
            return Err(invalid(format!("{}: changed while restoring", f.path)));
        }
        match (f.kind, f.uid) {
            (Kind::User, Some(uid)) => {
                let checked = files::install_user_file(staging, uid, &bytes)
                    .map_err(|e| invalid(format!("{} (user {uid}) of the backup: {e}", f.path)))?;
                users += 1;
                records += checked.records;
                if opts.resync {
                    let path = staging.join(&f.path);
                    match mark_for_resync(&path) {
                        Ok(Resync::Marked { .. }) => marked += 1,
                        Ok(Resync::NoMetaGlobal) => {}
                        Err(e) => {
                            return Err(invalid(format!(
                                "user {uid} could not be marked for re-sync: {e}"
                            )));
                        }
                    }
                }
            }
            (kind, _) => {
                let to = staging.join(&f.path);
                write_new(&to, &bytes)?;
                if matches!(kind, Kind::Tokenserver | Kind::Accounts)
                    && let Some(problem) = check_shared_db(&to, kind)
                {
                    return Err(invalid(format!(
                        "{} of the backup is refused: {problem}",
                        f.path
                    )));
                }
                others.push(f.path.clone());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((users, records, others, marked))
}

/// Writes a new owner-only file (its folder made owner-only too) and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        crate::private::create_dir(parent).map_err(invalid)?;
    }
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

/// `restore SRC --user UID` into a running node: the user's copy in the backup
/// (checked against the manifest first) is sent to the node `node` over its internal
/// listener, signed with `secret`, where it is put in place by the path a live move's
/// target takes (`POST /__internal__/restore/{uid}`: the user's writes held, the file
/// checked and swapped, the open handle closed). Returns the report's text.
pub async fn restore_user(
    src: &Path,
    uid: u64,
    db: &crate::tokenserver::db::AssignmentDb,
    secret: &str,
    node: &str,
) -> Result<String, AdminError> {
    restore_user_with(src, uid, db, secret, node, None, &RestoreOptions::default()).await
}

/// The live user's last-modified time (10 ms units) in the user file at `path`;
/// `None` when there is no such file.
fn live_last_modified(path: &Path) -> Result<Option<i64>, AdminError> {
    if !path.exists() {
        return Ok(None);
    }
    let read = || -> rusqlite::Result<i64> {
        let c = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(c.query_row(
            "SELECT value FROM meta WHERE key = 'last_modified'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
    };
    read()
        .map(Some)
        .map_err(|e| invalid(format!("cannot read the live file {}: {e}", path.display())))
}

/// Why the assignment database says `uid` should not be restored, if it does: the uid
/// was never issued, was replaced by a newer one (retired), or is assigned to no node.
async fn assignment_problem(
    db: &crate::tokenserver::db::AssignmentDb,
    uid: u64,
) -> Result<Option<String>, AdminError> {
    let placements = db
        .run(move |tx| crate::tokenserver::store::uid_placements(tx, &[uid as i64]))
        .await
        .map_err(invalid)?;
    Ok(match placements.first() {
        None => Some(format!("the assignment database never issued uid {uid}")),
        Some(p) if p.replaced_at.is_some() => Some(format!(
            "uid {uid} was replaced by a newer uid at {} (retired: its user syncs under \
             the new one)",
            backup::rfc3339(p.replaced_at.unwrap_or(0))
        )),
        Some(p) if p.node.is_none() => Some(format!("uid {uid} is assigned to no node")),
        Some(_) => None,
    })
}

/// [`restore_user`] with `opts`: with `resync`, the copy sent is marked for re-sync
/// ([`mark_for_resync`]) first.
pub async fn restore_user_with(
    src: &Path,
    uid: u64,
    db: &crate::tokenserver::db::AssignmentDb,
    secret: &str,
    node: &str,
    data_dir: Option<&Path>,
    opts: &RestoreOptions,
) -> Result<String, AdminError> {
    let dir = backup::generation_dir(src)?;
    check_generation_dir(src, &dir)?;
    let manifest = read_checked_manifest(&dir)?;
    let entry = manifest
        .files
        .iter()
        .find(|f| f.kind == Kind::User && f.uid == Some(uid))
        .ok_or_else(|| {
            invalid(format!(
                "user {uid} is not in generation {}",
                manifest.generation
            ))
        })?;
    if expected_rel(entry).as_deref() != Some(entry.path.as_str()) {
        return Err(invalid(format!(
            "{}: not where a user file goes",
            entry.path
        )));
    }
    let from = dir.join(&entry.path);
    let file = open_in_generation(&dir, &entry.path).map_err(|e| {
        invalid(format!(
            "refused: {}: {e}; nothing was sent",
            from.display()
        ))
    })?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut { file }, &mut bytes)
        .map_err(|e| invalid(format!("cannot read {}: {e}", from.display())))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if bytes.len() as u64 != entry.size || sha != entry.sha256 {
        return Err(invalid(format!(
            "refused: {} does not match the manifest (size {}, sha256 {sha}; the \
             manifest says {} and {}): nothing was sent",
            entry.path,
            bytes.len(),
            entry.size,
            entry.sha256
        )));
    }
    if let Some(problem) = assignment_problem(db, uid).await?
        && !opts.force
    {
        return Err(invalid(format!(
            "refused: {problem}; nothing was sent (--force restores it anyway)"
        )));
    }
    // What the restore discards: the live user's writes after the backup's copy.
    let backup_lm = entry.last_modified.unwrap_or(0);
    let live_lm = match data_dir {
        Some(d) => live_last_modified(&crate::storage::userdbs::user_path(d, uid))?,
        None => None,
    };
    let at = |t: i64| backup::rfc3339(t.saturating_mul(10));
    let discarded = match live_lm {
        Some(live) if live > backup_lm => {
            let text = format!(
                "the live user was last written at {}, the backup's copy at {}: writes \
                 between {} and {} are discarded; Firefox re-uploads what it still has, \
                 see the re-sync mark",
                at(live),
                at(backup_lm),
                at(backup_lm),
                at(live)
            );
            if !opts.discard_newer {
                return Err(invalid(format!(
                    "refused: {text}. Nothing was sent: restore with --discard-newer to \
                     go back to the backup anyway"
                )));
            }
            format!("\n{text}")
        }
        Some(live) => format!(
            "\nthe live user was last written at {}, not after the backup's copy ({}): \
             nothing is discarded",
            at(live),
            at(backup_lm)
        ),
        None => String::new(),
    };
    let (bytes, resync) = if opts.resync {
        let (bytes, done) = mark_bytes(uid, &bytes)?;
        (bytes, Some(done))
    } else {
        (bytes, None)
    };
    let sent_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let base = crate::cluster::internal_base(db, node)
        .await
        .map_err(invalid)?;
    let path = format!("/__internal__/restore/{uid}");
    let answer = crate::cluster::signed_post(secret, &base, node, &path, bytes)
        .await
        .map_err(AdminError::Invalid)?;
    let got: serde_json::Value = serde_json::from_slice(&answer).map_err(invalid)?;
    if got["sha256"] != sent_sha.as_str() {
        return Err(invalid(format!("node {node}: the copy arrived damaged")));
    }
    let resync = match resync {
        Some(Resync::Marked { .. }) => {
            "; marked for re-sync (meta/global has a new syncID): each Firefox merges its \
             data with the server on its next sync and uploads what the server lacks"
        }
        Some(Resync::NoMetaGlobal) => "; no meta/global to mark for re-sync",
        None => "; not marked for re-sync (--no-resync)",
    };
    Ok(format!(
        "user {uid}: restored on {node} from generation {} (its data as of {}; {} records); \
         its writes were held while the file was swapped{resync}{discarded}",
        manifest.generation,
        backup::rfc3339(entry.copied_ms),
        got["records"]
    ))
}

/// The node whose data dir this is, for `restore --user`: `node` when given, else the
/// settings' `node_url` or `public_url`, else the only node the assignment database
/// lists.
pub fn this_node(
    settings: &crate::config::Settings,
    node: Option<&str>,
    db: &crate::tokenserver::db::AssignmentDb,
) -> Result<String, AdminError> {
    let configured = [node.unwrap_or(""), &settings.node_url, &settings.public_url]
        .into_iter()
        .find(|u| !u.is_empty());
    if let Some(url) = configured {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let nodes = db.transaction(|tx| crate::tokenserver::store::nodes(tx))?;
    match nodes.as_slice() {
        [only] => Ok(only.node.clone()),
        [] => Err(invalid(
            "the assignment database lists no node: is the server running here?",
        )),
        _ => Err(invalid(
            "the assignment database lists several nodes: name this one with --node URL",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &Path, collection: &str, id: &str, payload: &str, ts: i64) {
        let mut conn = rusqlite::Connection::open(path).unwrap();
        let tx = conn.transaction().unwrap();
        let bso = BsoInput {
            id: id.into(),
            payload: Field::Set(payload.into()),
            sortindex: Field::Absent,
            ttl: Field::Absent,
        };
        queries::store_bsos(&tx, collection, &[bso], Timestamp(ts), Millis::now()).unwrap();
        queries::set_storage_modified(&tx, Timestamp(ts)).unwrap();
        tx.commit().unwrap();
    }

    fn read(path: &Path, sql: &str) -> String {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| match v {
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Integer(i) => i.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap()
    }

    #[test]
    fn marking_replaces_only_the_global_sync_id_with_a_later_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        files::open_or_create(dir.path(), 7).unwrap();
        let path = crate::storage::userdbs::user_path(dir.path(), 7);
        // A user without meta/global: nothing to mark.
        assert_eq!(mark_for_resync(&path).unwrap(), Resync::NoMetaGlobal);
        let meta = r#"{"syncID":"oldGlobalId1","storageVersion":5,"engines":{"bookmarks":{"version":2,"syncID":"bookmarksId1"}},"declined":["addons"]}"#;
        put(&path, "meta", "global", meta, 100);
        put(&path, "crypto", "keys", "{\"ciphertext\":\"x\"}", 101);
        // A user whose timestamps run ahead of the clock still gets a later one.
        let ahead = Millis::now().timestamp().0 + 50_000;
        put(&path, "bookmarks", "abc", "{}", ahead);
        let Resync::Marked { old, new, at } = mark_for_resync(&path).unwrap() else {
            panic!("not marked");
        };
        assert_eq!(old, "oldGlobalId1");
        assert_eq!(new.len(), 12);
        assert_ne!(new, old);
        assert!(at.0 > ahead, "{at:?}");
        let payload: serde_json::Value =
            serde_json::from_str(&read(&path, "SELECT payload FROM bso WHERE id = 'global'"))
                .unwrap();
        let mut want: serde_json::Value = serde_json::from_str(meta).unwrap();
        want["syncID"] = new.clone().into();
        assert_eq!(payload, want);
        let at_s = at.0.to_string();
        assert_eq!(
            read(&path, "SELECT modified FROM bso WHERE id = 'global'"),
            at_s
        );
        assert_eq!(
            read(
                &path,
                "SELECT modified FROM collections WHERE name = 'meta'"
            ),
            at_s
        );
        assert_eq!(
            read(&path, "SELECT value FROM meta WHERE key = 'last_modified'"),
            at_s
        );
        assert_eq!(
            read(&path, "SELECT modified FROM bso WHERE id = 'keys'"),
            "101"
        );
        // Marking again makes yet another syncID.
        let Resync::Marked { old: again, .. } = mark_for_resync(&path).unwrap() else {
            panic!("not marked");
        };
        assert_eq!(again, new);
    }

    #[test]
    fn a_copy_sent_by_restore_user_is_marked_through_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(files::open_or_create(dir.path(), 8).unwrap());
        let path = crate::storage::userdbs::user_path(dir.path(), 8);
        let meta = r#"{"syncID":"oldGlobalId2","storageVersion":5,"engines":{}}"#;
        put(&path, "meta", "global", meta, 100);
        let bytes = std::fs::read(&path).unwrap();
        let (marked, done) = mark_bytes(8, &bytes).unwrap();
        let Resync::Marked { old, new, .. } = done else {
            panic!("not marked");
        };
        assert_eq!(old, "oldGlobalId2");
        let copy = dir.path().join("copy.sqlite");
        std::fs::write(&copy, &marked).unwrap();
        let payload = read(&copy, "SELECT payload FROM bso WHERE id = 'global'");
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(payload["syncID"], new.as_str());
        // The source is untouched.
        let before = read(&path, "SELECT payload FROM bso WHERE id = 'global'");
        assert!(before.contains("oldGlobalId2"), "{before}");
    }

    #[test]
    fn manifest_paths_stay_inside_the_data_dir() {
        assert!(safe_rel("users/042/1042.sqlite").is_some());
        for bad in ["", "/etc/passwd", "../x", "users/../../x", "./secret"] {
            assert!(safe_rel(bad).is_none(), "{bad}");
        }
    }
}
