//! Storage: the protocol's operations over per-user SQLite files.
//!
//! `model` holds the data model and validation rules, `userdbs` the pooled connection
//! manager (with its background checkpointer and upkeep), `queries` the SQL, `schema`
//! the per-user schema and its migration. `Storage` offers one method per protocol operation; each
//! runs in one transaction of the user's file and checks the request's precondition
//! (`X-If-Modified-Since` / `X-If-Unmodified-Since`) inside that transaction.

pub mod files;
pub mod legacy;
pub mod model;
pub mod queries;
pub mod schema;
pub mod schema_check;
pub mod sqlite;
pub mod summary;
pub mod userdbs;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use model::{Bso, BsoInput, ClientTime, Timestamp};
use queries::{Cursor, ListQuery};
pub use userdbs::{RETIRING_MAX, UserDbs, UserDbsConfig};

/// Errors of the storage layer. The web layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// 304: nothing changed since `X-If-Modified-Since`.
    #[error("not modified")]
    NotModified(Timestamp),
    /// 412: the resource changed after `X-If-Unmodified-Since`.
    #[error("precondition failed")]
    PreconditionFailed(Timestamp),
    /// 404: no such record.
    #[error("not found")]
    NotFound,
    /// 400: an `offset` token this server did not issue.
    #[error("invalid offset")]
    InvalidOffset,
    /// 403: the write would take the user past their quota; nothing was written.
    #[error("over quota")]
    OverQuota,
    /// 400: the batch id is unknown, expired, committed, or of another collection.
    #[error("invalid batch")]
    BatchNotFound,
    /// 400: the batch would hold more records or bytes than allowed.
    #[error("batch too large")]
    BatchTooLarge,
    /// 503: the user is being moved to another node; try again in a moment.
    #[error("user is moving")]
    Moving,
    /// 401: the user now lives on another node (moved away from this one).
    #[error("user moved to another node")]
    MovedAway,
    /// 503: the user's write lock or a connection could not be had in time.
    #[error("storage busy")]
    Busy,
    /// 503: the user's file is unusable (corrupt, unreadable, disk full).
    #[error("user {uid}: storage unavailable: {source}")]
    Unavailable {
        /// Whose file failed.
        uid: u64,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// 500: any other SQLite failure.
    #[error("user {uid}: database error: {source}")]
    Sqlite {
        /// Whose file failed.
        uid: u64,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// 500: file system error creating directories.
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    /// 500: a blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Bad input to an admin command (an import file, say).
    #[error("{0}")]
    Invalid(String),
    /// 500: an internal lock was poisoned by a panic.
    #[error("internal lock poisoned")]
    Poisoned,
}

impl StorageError {
    /// Classifies a SQLite error of `uid`'s file: busy → `Busy`; corruption, I/O and
    /// full-disk errors → `Unavailable`; the rest → `Sqlite`.
    pub fn from_sqlite(uid: u64, e: rusqlite::Error) -> StorageError {
        use rusqlite::ErrorCode as C;
        let error = match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => StorageError::Busy,
            Some(
                C::DatabaseCorrupt
                | C::NotADatabase
                | C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly
                | C::PermissionDenied
                | C::FileLockingProtocolFailed,
            ) => StorageError::Unavailable { uid, source: e },
            _ => StorageError::Sqlite { uid, source: e },
        };
        let kind = match error {
            StorageError::Busy => "busy",
            StorageError::Unavailable { .. } => "unavailable",
            _ => "other",
        };
        metrics::counter!("syncstore_db_errors_total", "kind" => kind).increment(1);
        error
    }
}

/// The `X-If-Modified-Since` / `X-If-Unmodified-Since` condition of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No condition.
    #[default]
    None,
    /// Answer 304 unless the resource changed after this time (reads only).
    IfModifiedSince(ClientTime),
    /// Answer 412 if the resource changed after this time.
    IfUnmodifiedSince(ClientTime),
}

impl Precondition {
    /// Checks the condition against the resource's last-modified time.
    pub fn check(&self, resource: Timestamp) -> Result<(), StorageError> {
        match self {
            Precondition::IfModifiedSince(t) if !t.is_before(resource) => {
                Err(StorageError::NotModified(resource))
            }
            Precondition::IfUnmodifiedSince(t) if t.is_before(resource) => {
                Err(StorageError::PreconditionFailed(resource))
            }
            _ => Ok(()),
        }
    }
}

/// Which per-collection figure `info/*` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKind {
    /// `info/collections`: last-modified times.
    Timestamps,
    /// `info/collection_counts`: live record counts.
    Counts,
    /// `info/collection_usage`: live payload kilobytes.
    Usage,
}

/// One collection's figure in an `info/*` answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum InfoValue {
    /// Last-modified time (serialized with exactly two decimals).
    Modified(Timestamp),
    /// Live records.
    Count(i64),
    /// Stored payload kilobytes.
    Kilobytes(f64),
}

/// The answer to an `info/*` request.
#[derive(Debug, Clone)]
pub struct Info {
    /// The storage's last-modified time.
    pub modified: Timestamp,
    /// One figure per collection.
    pub collections: BTreeMap<String, InfoValue>,
    /// Payload bytes stored in all collections, expired records not yet purged
    /// included (for `info/quota`; the sum of `info/collection_usage`).
    pub total_bytes: i64,
}

/// A page of a collection listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The collection's last-modified time (0 when it does not exist).
    pub modified: Timestamp,
    /// The records (with empty payloads unless `full` was asked).
    pub items: Vec<Bso>,
    /// The opaque offset of the next page, when there is one.
    pub next_offset: Option<String>,
}

impl Listing {
    /// A page with no records, of a collection last modified at `modified`.
    fn empty(modified: Timestamp) -> Listing {
        Listing {
            modified,
            items: vec![],
            next_offset: None,
        }
    }
}

/// The answer to a POST of records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PostResult {
    /// The write's timestamp.
    pub modified: Timestamp,
    /// Ids stored.
    pub success: Vec<String>,
    /// Ids refused, with reasons.
    pub failed: BTreeMap<String, String>,
}

/// The result of a committed write and the user's payload bytes after it (0 when
/// quotas are off).
#[derive(Debug, Clone)]
pub struct Written<T> {
    /// What the operation returns.
    pub value: T,
    /// Payload bytes the user stores now (only tracked with quotas on).
    pub usage_bytes: i64,
}

/// Which batch a POST adds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRef {
    /// `batch=true`: open a new batch.
    Start,
    /// `batch=<id>`: an open batch.
    Existing(String),
}

/// A POST that is a step of a batch upload.
#[derive(Debug, Clone)]
pub struct BatchPost {
    /// The collection.
    pub collection: String,
    /// Which batch.
    pub batch: BatchRef,
    /// Apply the batch after appending these records.
    pub commit: bool,
    /// The valid records of this POST.
    pub bsos: Vec<BsoInput>,
    /// Most records a batch may hold.
    pub max_records: usize,
    /// Most payload bytes a batch may hold.
    pub max_bytes: usize,
    /// Lifetime of a new batch, seconds.
    pub batch_ttl_secs: i64,
}

/// The answer to a batch step.
#[derive(Debug, Clone)]
pub struct BatchResult {
    /// The batch id, while the batch is open (not after commit).
    pub batch: Option<String>,
    /// The commit's timestamp, or the collection's last-modified time before commit.
    pub modified: Timestamp,
    /// Ids of this POST that were accepted.
    pub success: Vec<String>,
}

/// A new unguessable batch id: 128 random bits, URL-safe.
fn new_batch_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// One method per protocol operation over the users' files. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    dbs: UserDbs,
}

/// Encodes a listing cursor as an opaque, URL-safe offset token.
pub fn encode_offset(c: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", c.key, c.id))
}

/// Decodes an offset token made by `encode_offset`.
pub fn decode_offset(token: &str) -> Result<Cursor, StorageError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StorageError::InvalidOffset)?;
    let text = String::from_utf8(raw).map_err(|_| StorageError::InvalidOffset)?;
    let (key, id) = text.split_once(':').ok_or(StorageError::InvalidOffset)?;
    let key = key.parse().map_err(|_| StorageError::InvalidOffset)?;
    if !model::valid_bso_id(id) {
        return Err(StorageError::InvalidOffset);
    }
    Ok(Cursor {
        key,
        id: id.to_string(),
    })
}

impl Storage {
    /// Wraps the connection manager.
    pub fn new(dbs: UserDbs) -> Storage {
        Storage { dbs }
    }

    /// The connection manager (for health checks and upkeep).
    pub fn dbs(&self) -> &UserDbs {
        &self.dbs
    }

    /// `GET info/collections|collection_counts|collection_usage|quota`.
    pub async fn info(
        &self,
        uid: u64,
        kind: InfoKind,
        pre: Precondition,
    ) -> Result<Info, StorageError> {
        if kind == InfoKind::Timestamps {
            let summary = self.dbs.summary(uid).await?;
            pre.check(summary.modified)?;
            let collections = summary.collections.iter();
            return Ok(Info {
                modified: summary.modified,
                collections: collections
                    .map(|(name, ts)| (name.to_string(), InfoValue::Modified(*ts)))
                    .collect(),
                total_bytes: 0,
            });
        }
        self.dbs
            .read(uid, move |tx, now| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let modified = queries::storage_modified(tx).map_err(sql)?;
                pre.check(modified)?;
                let mut collections = BTreeMap::new();
                let total_bytes = queries::usage_bytes(tx).map_err(sql)?;
                for (name, count, bytes) in queries::collection_sizes(tx, now).map_err(sql)? {
                    match kind {
                        InfoKind::Counts if count > 0 => {
                            collections.insert(name, InfoValue::Count(count))
                        }
                        InfoKind::Usage => {
                            collections.insert(name, InfoValue::Kilobytes(bytes as f64 / 1024.0))
                        }
                        _ => None,
                    };
                }
                Ok(Info {
                    modified,
                    collections,
                    total_bytes,
                })
            })
            .await
    }

    /// `GET storage/{collection}`.
    pub async fn list(
        &self,
        uid: u64,
        collection: String,
        query: ListQuery,
        pre: Precondition,
    ) -> Result<Listing, StorageError> {
        // A collection that does not exist, or has not changed since `newer`, has
        // nothing to list: its summary says so without opening the file.
        if let Some(summary) = self.dbs.fresh_summary(uid)? {
            let modified = summary.collection(&collection);
            let last = modified.unwrap_or_default();
            pre.check(last)?;
            if modified.is_none() || query.newer_than.is_some_and(|newer| newer >= last.0) {
                return Ok(Listing::empty(last));
            }
        }
        self.dbs
            .read(uid, move |tx, now| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let Some((coll, modified)) = queries::collection(tx, &collection).map_err(sql)?
                else {
                    pre.check(Timestamp(0))?;
                    return Ok(Listing::empty(Timestamp(0)));
                };
                pre.check(modified)?;
                let (items, next) = queries::list_bsos(tx, coll, &query, now).map_err(sql)?;
                Ok(Listing {
                    modified,
                    items,
                    next_offset: next.as_ref().map(encode_offset),
                })
            })
            .await
    }

    /// `GET storage/{collection}/{id}`.
    pub async fn get(
        &self,
        uid: u64,
        collection: String,
        id: String,
        pre: Precondition,
    ) -> Result<Bso, StorageError> {
        self.dbs
            .read(uid, move |tx, now| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let (coll, _) = queries::collection(tx, &collection)
                    .map_err(sql)?
                    .ok_or(StorageError::NotFound)?;
                let bso = queries::get_bso(tx, coll, &id, now)
                    .map_err(sql)?
                    .ok_or(StorageError::NotFound)?;
                pre.check(bso.modified)?;
                Ok(bso)
            })
            .await
    }

    /// `PUT storage/{collection}/{id}`: returns the write's timestamp.
    pub async fn put(
        &self,
        uid: u64,
        collection: String,
        bso: BsoInput,
        pre: Precondition,
    ) -> Result<Written<Timestamp>, StorageError> {
        self.dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                // Without a precondition nothing needs the record's current time: two
                // statements fewer (each compiled anew on a cold connection).
                if pre != Precondition::None {
                    let current = match queries::collection(w.tx, &collection).map_err(sql)? {
                        Some((coll, _)) => {
                            queries::bso_modified(w.tx, coll, &bso.id, w.now).map_err(sql)?
                        }
                        None => None,
                    };
                    pre.check(current.unwrap_or_default())?;
                }
                let bsos = std::slice::from_ref(&bso);
                queries::store_bsos(w.tx, &collection, bsos, w.ts, w.now).map_err(sql)?;
                w.wrote(bsos);
                Ok(w.ts)
            })
            .await
    }

    /// `POST storage/{collection}` (without batch): stores the valid records.
    pub async fn post(
        &self,
        uid: u64,
        collection: String,
        bsos: Vec<BsoInput>,
        pre: Precondition,
    ) -> Result<Written<PostResult>, StorageError> {
        self.dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                if pre != Precondition::None {
                    let current = queries::collection(w.tx, &collection).map_err(sql)?;
                    pre.check(current.map(|c| c.1).unwrap_or_default())?;
                }
                queries::store_bsos(w.tx, &collection, &bsos, w.ts, w.now).map_err(sql)?;
                w.wrote(&bsos);
                Ok(PostResult {
                    modified: w.ts,
                    success: bsos.into_iter().map(|b| b.id).collect(),
                    failed: BTreeMap::new(),
                })
            })
            .await
    }

    /// `DELETE storage/{collection}[?ids=…]`: returns the write's timestamp.
    pub async fn delete_collection(
        &self,
        uid: u64,
        collection: String,
        ids: Option<Vec<String>>,
        pre: Precondition,
    ) -> Result<Written<Timestamp>, StorageError> {
        self.dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let current = queries::collection(w.tx, &collection).map_err(sql)?;
                pre.check(current.map(|c| c.1).unwrap_or_default())?;
                if let Some((coll, _)) = current {
                    match &ids {
                        Some(ids) => {
                            queries::delete_bsos(w.tx, coll, ids).map_err(sql)?;
                            queries::touch_collection(w.tx, &collection, w.ts).map_err(sql)?;
                        }
                        None => queries::delete_collection(w.tx, coll).map_err(sql)?,
                    }
                }
                Ok(w.ts)
            })
            .await
    }

    /// `DELETE storage/{collection}/{id}`: returns the write's timestamp.
    pub async fn delete(
        &self,
        uid: u64,
        collection: String,
        id: String,
        pre: Precondition,
    ) -> Result<Written<Timestamp>, StorageError> {
        self.dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let (coll, _) = queries::collection(w.tx, &collection)
                    .map_err(sql)?
                    .ok_or(StorageError::NotFound)?;
                let current = queries::bso_modified(w.tx, coll, &id, w.now).map_err(sql)?;
                pre.check(current.unwrap_or_default())?;
                if !queries::delete_bso(w.tx, coll, &id, w.now).map_err(sql)? {
                    return Err(StorageError::NotFound);
                }
                queries::touch_collection(w.tx, &collection, w.ts).map_err(sql)?;
                Ok(w.ts)
            })
            .await
    }

    /// `DELETE storage` and `DELETE /1.5/{uid}`: removes all the user's data.
    pub async fn delete_all(
        &self,
        uid: u64,
        pre: Precondition,
    ) -> Result<Written<Timestamp>, StorageError> {
        self.dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                pre.check(queries::storage_modified(w.tx).map_err(sql)?)?;
                queries::delete_everything(w.tx).map_err(sql)?;
                Ok(w.ts)
            })
            .await
    }
}

impl Storage {
    /// `POST storage/{collection}?batch=…[&commit=true]`: opens a batch or appends to
    /// one, and on commit applies every record of the batch atomically with one
    /// timestamp (TTLs count from the commit).
    pub async fn batch_post(
        &self,
        uid: u64,
        post: BatchPost,
        pre: Precondition,
    ) -> Result<Written<BatchResult>, StorageError> {
        let (create, commit) = (matches!(post.batch, BatchRef::Start), post.commit);
        let result = self
            .dbs
            .write(uid, move |w| {
                let sql = |e| StorageError::from_sqlite(uid, e);
                let current = queries::collection(w.tx, &post.collection).map_err(sql)?;
                let coll_modified = current.map(|c| c.1).unwrap_or_default();
                pre.check(coll_modified)?;
                let id = match post.batch {
                    BatchRef::Start => {
                        let id = new_batch_id();
                        let expiry = w.now.plus_secs(post.batch_ttl_secs);
                        queries::create_batch(w.tx, &id, &post.collection, expiry).map_err(sql)?;
                        id
                    }
                    BatchRef::Existing(id) => {
                        let bound = queries::batch_collection(w.tx, &id, w.now).map_err(sql)?;
                        match bound {
                            Some(c) if c == post.collection => id,
                            _ => return Err(StorageError::BatchNotFound),
                        }
                    }
                };
                let totals = queries::append_batch(w.tx, &id, &post.bsos).map_err(sql)?;
                if totals.records > post.max_records as i64 || totals.bytes > post.max_bytes as i64
                {
                    return Err(StorageError::BatchTooLarge);
                }
                let success = post.bsos.iter().map(|b| b.id.clone()).collect();
                if !post.commit {
                    return Ok(BatchResult {
                        batch: Some(id),
                        modified: coll_modified,
                        success,
                    });
                }
                let records = queries::batch_bsos(w.tx, &id).map_err(sql)?;
                queries::store_bsos(w.tx, &post.collection, &records, w.ts, w.now).map_err(sql)?;
                queries::delete_batch(w.tx, &id).map_err(sql)?;
                w.wrote(&records);
                Ok(BatchResult {
                    batch: None,
                    modified: w.ts,
                    success,
                })
            })
            .await;
        if result.is_ok() {
            let count = |op: &'static str| metrics::counter!("syncstore_batches_total", "op" => op);
            count("append").increment(1);
            if create {
                count("create").increment(1);
            }
            if commit {
                count("commit").increment(1);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_reject_garbage() {
        let c = Cursor {
            key: -5,
            id: "a:b c".into(),
        };
        let token = encode_offset(&c);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_offset(&token).unwrap(), c);
        for bad in ["", "!!", "bm9jb2xvbg", "YWJj"] {
            assert!(decode_offset(bad).is_err(), "{bad}");
        }
    }
}
