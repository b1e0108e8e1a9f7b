//! Work on user files outside request serving: export and import of one user, wiping
//! a user, integrity checks, compaction and statistics. Used by the admin commands;
//! safe beside a running server (WAL mode, busy timeout, one transaction each).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::StorageError;
use super::model::{Millis, NEVER, Timestamp};
use super::queries;
use super::userdbs::{self, user_path};

/// The format tag of `user export` files.
pub const EXPORT_FORMAT: &str = "syncstore-user/1";

/// Everything of one user, as `user export` writes it and `user import` reads it.
/// Timestamps are seconds with two decimals, exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserExport {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The user's id on this node.
    pub uid: u64,
    /// The user's latest write.
    #[serde(with = "wire_ts")]
    pub modified: Timestamp,
    /// Every collection, with its records.
    pub collections: Vec<CollectionExport>,
}

/// One collection of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionExport {
    /// The collection's name.
    pub name: String,
    /// Its last-modified time.
    #[serde(with = "wire_ts")]
    pub modified: Timestamp,
    /// Its records (expired ones too: they are the user's data until purged).
    pub records: Vec<RecordExport>,
}

/// One record of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RecordWire", into = "RecordWire")]
pub struct RecordExport {
    /// The record id.
    pub id: String,
    /// The payload.
    pub payload: String,
    /// The sort index, if set.
    pub sortindex: Option<i64>,
    /// When it was last written.
    pub modified: Timestamp,
    /// When it expires, to the millisecond; absent for never.
    pub expires: Option<Millis>,
}

/// A record as the file holds it. `expires` is seconds with two decimals (rounded up
/// to 10 ms), as files before millisecond expiry had it and as older readers expect;
/// `expires_ms` is the exact expiry, preferred when present.
#[derive(Serialize, Deserialize)]
struct RecordWire {
    id: String,
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sortindex: Option<i64>,
    #[serde(with = "wire_ts")]
    modified: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_wire_ts")]
    expires: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<i64>,
}

impl From<RecordWire> for RecordExport {
    fn from(w: RecordWire) -> RecordExport {
        let expires = w
            .expires_ms
            .or_else(|| w.expires.map(|t| t.0.saturating_mul(10)))
            .map(Millis);
        RecordExport {
            id: w.id,
            payload: w.payload,
            sortindex: w.sortindex,
            modified: w.modified,
            expires,
        }
    }
}

impl From<RecordExport> for RecordWire {
    fn from(r: RecordExport) -> RecordWire {
        RecordWire {
            id: r.id,
            payload: r.payload,
            sortindex: r.sortindex,
            modified: r.modified,
            expires: r
                .expires
                .map(|m| Timestamp(m.0.div_euclid(10) + i64::from(m.0.rem_euclid(10) != 0))),
            expires_ms: r.expires.map(|m| m.0),
        }
    }
}

/// Reads a decimal timestamp (at most two decimals) exactly, without going through f64.
pub fn parse_wire_ts(s: &str) -> Option<Timestamp> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = int.parse().ok()?;
    let cents: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(cents).map(Timestamp)
}

mod wire_ts {
    use super::{Timestamp, parse_wire_ts};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        t.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        parse_wire_ts(&n.to_string())
            .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {n}")))
    }
}

mod opt_wire_ts {
    use super::Timestamp;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::wire_ts::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        super::wire_ts::deserialize(d).map(Some)
    }
}

/// Every user file under the data dir, as (uid, path), sorted by uid.
pub fn list_users(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let root = data_dir.join("users");
    let shards = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for shard in shards {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard)? {
            let path = f?.path();
            let uid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".sqlite"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(uid) = uid {
                out.push((uid, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Opens an existing user file for admin work.
pub fn open(data_dir: &Path, uid: u64) -> Result<Connection, StorageError> {
    let path = user_path(data_dir, uid);
    if !path.exists() {
        return Err(StorageError::NotFound);
    }
    open_path(&path, uid)
}

fn open_path(path: &Path, uid: u64) -> Result<Connection, StorageError> {
    super::sqlite::configure();
    let sql = |e| StorageError::from_sqlite(uid, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(sql)?;
    conn.execute_batch("PRAGMA journal_mode=WAL;")
        .map_err(sql)?;
    Ok(conn)
}

/// Opens a user's file, creating an empty one (from the schema) if there is none.
pub fn open_or_create(data_dir: &Path, uid: u64) -> Result<Connection, StorageError> {
    let path = user_path(data_dir, uid);
    if !path.exists() {
        userdbs::create_user_file(data_dir, uid)?;
    }
    open_path(&path, uid)
}

/// Installs `bytes`, a user's SQLite file from outside, as `uid`'s file, replacing
/// any: accepted only as `schema_check` allows (nothing is written otherwise).
pub fn install_user_file(
    data_dir: &Path,
    uid: u64,
    bytes: &[u8],
) -> Result<super::schema_check::CheckedFile, StorageError> {
    let path = user_path(data_dir, uid);
    if let Some(dir) = path.parent() {
        crate::private::create_dir(dir).map_err(StorageError::Io)?;
    }
    let tmp = path.with_extension(format!("incoming{:08x}", rand::random::<u32>()));
    if let Err(e) = userdbs::write_new_private_file(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    userdbs::install_checked(&path, &tmp, uid, || {})
}

/// Everything of one user.
pub fn export(conn: &mut Connection, uid: u64) -> Result<UserExport, StorageError> {
    let sql = |e| StorageError::from_sqlite(uid, e);
    let tx = conn.transaction().map_err(sql)?;
    let modified = queries::storage_modified(&tx).map_err(sql)?;
    let mut collections = Vec::new();
    let mut rows = tx
        .prepare(
            "SELECT id, sortindex, payload, modified, expiry FROM bso
             WHERE collection = ?1 ORDER BY id",
        )
        .map_err(sql)?;
    let names: Vec<(i64, String, i64)> = tx
        .prepare("SELECT id, name, modified FROM collections ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(sql)?;
    for (id, name, cmod) in names {
        let records = rows
            .query_map([id], |r| {
                let expiry: i64 = r.get(4)?;
                Ok(RecordExport {
                    id: r.get(0)?,
                    sortindex: r.get(1)?,
                    payload: r.get(2)?,
                    modified: Timestamp(r.get(3)?),
                    expires: (expiry != NEVER).then_some(Millis(expiry)),
                })
            })
            .and_then(|rs| rs.collect::<Result<Vec<_>, _>>())
            .map_err(sql)?;
        collections.push(CollectionExport {
            name,
            modified: Timestamp(cmod),
            records,
        });
    }
    Ok(UserExport {
        format: EXPORT_FORMAT.into(),
        uid,
        modified,
        collections,
    })
}

/// Writes an export into a user's file in one transaction, keeping every timestamp.
/// Records of the same collection and id are replaced; with `replace`, everything
/// the user had before goes first. Returns the records written.
pub fn import(
    conn: &mut Connection,
    uid: u64,
    data: &UserExport,
    replace: bool,
) -> Result<usize, StorageError> {
    let mode = if replace {
        Existing::Replace
    } else {
        Existing::Merge
    };
    Ok(import_with(conn, uid, data, mode)?.unwrap_or(0))
}

/// What an import does with data the user already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Keep it; records of the same collection and id are replaced.
    Merge,
    /// Delete it first.
    Replace,
    /// Write nothing if there is any (decided inside the write transaction, so a
    /// server writing the user at the same time is never overwritten).
    Skip,
}

/// [`import`], with what to do about data already there; `None` when `Existing::Skip`
/// found some (nothing was written).
pub fn import_with(
    conn: &mut Connection,
    uid: u64,
    data: &UserExport,
    existing: Existing,
) -> Result<Option<usize>, StorageError> {
    let sql = |e| StorageError::from_sqlite(uid, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    match existing {
        Existing::Merge => {}
        Existing::Replace => queries::delete_everything(&tx).map_err(sql)?,
        Existing::Skip => {
            if holds_data(&tx).map_err(sql)? {
                return Ok(None);
            }
        }
    }
    let mut written = 0;
    let mut newest_write = data.modified;
    for c in &data.collections {
        if !super::model::valid_collection(&c.name) {
            return Err(StorageError::Invalid(format!(
                "bad collection name {:?}",
                c.name
            )));
        }
        // A collection is never older than its records (listings rely on it).
        let newest = c.records.iter().map(|r| r.modified).max();
        let modified = newest.map_or(c.modified, |n| n.max(c.modified));
        newest_write = newest_write.max(modified);
        let coll: i64 = tx
            .query_row(
                "INSERT INTO collections (name, modified) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET modified = max(modified, excluded.modified)
                 RETURNING id",
                params![c.name, modified.0],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let mut insert = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO bso
                    (collection, id, sortindex, payload, payload_size, modified, expiry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sql)?;
        for r in &c.records {
            if !super::model::valid_bso_id(&r.id) {
                return Err(StorageError::Invalid(format!("bad record id {:?}", r.id)));
            }
            insert
                .execute(params![
                    coll,
                    r.id,
                    r.sortindex,
                    r.payload,
                    r.payload.len() as i64,
                    r.modified.0,
                    r.expires.map_or(NEVER, |t| t.0),
                ])
                .map_err(sql)?;
            written += 1;
        }
    }
    queries::recount_usage(&tx).map_err(sql)?;
    let last = queries::storage_modified(&tx).map_err(sql)?;
    queries::set_storage_modified(&tx, last.max(newest_write)).map_err(sql)?;
    tx.commit().map_err(sql)?;
    // A server serving this user from memory must see the change.
    if let Some(path) = conn.path() {
        super::summary::mark_changed(Path::new(path))?;
    }
    Ok(Some(written))
}

/// Whether a user file holds any collection (a record always has one).
fn holds_data(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM collections LIMIT 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|n| n.is_some())
}

/// Removes a user's data: wiped in one transaction first (a server holding the file
/// open sees an empty store at once), then the files are deleted. Returns whether
/// the user had a file.
pub fn delete_user(data_dir: &Path, uid: u64) -> Result<bool, StorageError> {
    let path = user_path(data_dir, uid);
    if !path.exists() {
        return Ok(false);
    }
    {
        let mut conn = open_path(&path, uid)?;
        let sql = |e| StorageError::from_sqlite(uid, e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        queries::delete_everything(&tx).map_err(sql)?;
        queries::delete_batches(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    userdbs::remove_user_files(&path, &["", "-wal", "-shm"])?;
    Ok(true)
}

/// One user's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserStats {
    /// The user's id.
    pub uid: u64,
    /// Bytes of the database file and its WAL on disk.
    pub file_bytes: u64,
    /// Live records.
    pub records: i64,
    /// Payload bytes stored.
    pub payload_bytes: i64,
    /// The latest write.
    pub modified: Timestamp,
    /// Per collection: name, live records, payload bytes, last-modified.
    pub collections: Vec<(String, i64, i64, Timestamp)>,
}

/// Bytes on disk of a user file and its WAL.
pub fn file_bytes(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|ext| std::fs::metadata(format!("{}{ext}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// A user's figures, read in one snapshot.
pub fn stats(conn: &mut Connection, uid: u64, path: &Path) -> Result<UserStats, StorageError> {
    let sql = |e| StorageError::from_sqlite(uid, e);
    let tx = conn.transaction().map_err(sql)?;
    let now = Millis::now();
    let sizes = queries::collection_sizes(&tx, now).map_err(sql)?;
    let stamps = queries::collection_timestamps(&tx).map_err(sql)?;
    let collections: Vec<_> = stamps
        .into_iter()
        .map(|(name, ts)| {
            let (n, b) = sizes
                .iter()
                .find(|s| s.0 == name)
                .map_or((0, 0), |s| (s.1, s.2));
            (name, n, b, ts)
        })
        .collect();
    Ok(UserStats {
        uid,
        file_bytes: file_bytes(path),
        records: collections.iter().map(|c| c.1).sum(),
        payload_bytes: queries::usage_bytes(&tx).map_err(sql)?,
        modified: queries::storage_modified(&tx).map_err(sql)?,
        collections,
    })
}

/// Runs SQLite's integrity check on a file; `Ok(None)` when sound, else what is wrong.
pub fn integrity_check(path: &Path, uid: u64) -> Result<Option<String>, StorageError> {
    let conn = open_path(path, uid)?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| StorageError::from_sqlite(uid, e))?;
    Ok((problems != ["ok"]).then(|| problems.join("; ")))
}

/// Rebuilds a file with `VACUUM` when at least `threshold` (0–1) of its pages are free;
/// returns the bytes on disk before and after (equal when nothing was done).
pub fn compact(path: &Path, uid: u64, threshold: f64) -> Result<(u64, u64), StorageError> {
    let conn = open_path(path, uid)?;
    let sql = |e| StorageError::from_sqlite(uid, e);
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .map_err(sql)?;
    let total: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sql)?;
    let before = file_bytes(path);
    if total == 0 || (free as f64) < threshold * total as f64 || free == 0 {
        return Ok((before, before));
    }
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .map_err(sql)?;
    Ok((before, file_bytes(path)))
}

/// Whether a user has any data here (for import-legacy's resume). Opens the file
/// read-only: nothing is written (no checkpoint on close), so a dry run leaves the
/// file and its WAL as they were.
pub fn has_data(data_dir: &Path, uid: u64) -> Result<bool, StorageError> {
    let path = user_path(data_dir, uid);
    if !path.exists() {
        return Ok(false);
    }
    super::sqlite::configure();
    let sql = |e| StorageError::from_sqlite(uid, e);
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(sql)?;
    holds_data(&conn).map_err(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_record(uid: u64, id: &str, payload: &str, modified: i64) -> UserExport {
        UserExport {
            format: EXPORT_FORMAT.into(),
            uid,
            modified: Timestamp(modified),
            collections: vec![CollectionExport {
                name: "bookmarks".into(),
                modified: Timestamp(modified),
                records: vec![RecordExport {
                    id: id.into(),
                    payload: payload.into(),
                    sortindex: None,
                    modified: Timestamp(modified),
                    expires: None,
                }],
            }],
        }
    }

    #[test]
    fn an_import_that_skips_users_with_data_decides_inside_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        // The file was empty when checked; then a server wrote the user.
        let mut conn = open_or_create(dir.path(), 5).unwrap();
        assert!(!has_data(dir.path(), 5).unwrap());
        import(&mut conn, 5, &one_record(5, "a", "newer", 200), false).unwrap();
        let old = one_record(5, "a", "older", 100);
        assert_eq!(
            import_with(&mut conn, 5, &old, Existing::Skip).unwrap(),
            None
        );
        let back = export(&mut conn, 5).unwrap();
        assert_eq!(back.collections[0].records[0].payload, "newer");
        // An empty file is written; replacing writes over data.
        let mut conn = open_or_create(dir.path(), 6).unwrap();
        assert_eq!(
            import_with(&mut conn, 6, &old, Existing::Skip).unwrap(),
            Some(1)
        );
        let new = one_record(6, "b", "x", 300);
        assert_eq!(
            import_with(&mut conn, 6, &new, Existing::Replace).unwrap(),
            Some(1)
        );
        let back = export(&mut conn, 6).unwrap();
        assert_eq!(back.collections[0].records.len(), 1);
        assert_eq!(back.collections[0].records[0].id, "b");
    }

    #[test]
    fn wire_timestamps_parse_exactly() {
        assert_eq!(
            parse_wire_ts("1700000000.05"),
            Some(Timestamp(170000000005))
        );
        assert_eq!(parse_wire_ts("1700000000.5"), Some(Timestamp(170000000050)));
        assert_eq!(parse_wire_ts("1700000000"), Some(Timestamp(170000000000)));
        for bad in ["", ".5", "1.234", "-1", "1e5", "1.x"] {
            assert_eq!(parse_wire_ts(bad), None, "{bad}");
        }
    }
}
