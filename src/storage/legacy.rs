//! Reading users out of Mozilla's storage servers' databases, for `import-legacy`:
//!
//! * the older Python server (server-syncstorage) on SQLite or MySQL: tables `collections
//!   (collectionid, name)`, `user_collections (userid, collection, last_modified)` and
//!   `bso` (or shards `bso0`…`bsoN`) `(userid, collection, id, sortindex, modified,
//!   payload, payload_size, ttl)`; times in milliseconds, `ttl` an absolute expiry in
//!   seconds with 2100000000 meaning never; the standard collections have fixed ids;
//! * syncstorage-rs on PostgreSQL: `collections (collection_id, name)`,
//!   `user_collections (user_id, collection_id, modified, …)`, `bsos (user_id,
//!   collection_id, bso_id, sortindex, payload, modified, expiry)` with TIMESTAMP
//!   (0.23: TIMESTAMPTZ) times; its migrations declare `collection_id` and `sortindex`
//!   INTEGER, so integers are read at whatever width the column has.
//!
//! No value is assumed to convert: one that does not is an error naming the row and
//! column, and `import-legacy` reports that user as failed and goes on.
//!
//! Both key users by the tokenserver's numeric uid, which stays the user's uid here.

use std::collections::BTreeMap;

use rusqlite::OpenFlags;

use super::StorageError;
use super::files::{CollectionExport, EXPORT_FORMAT, RecordExport, UserExport};
use super::model::{Millis, Timestamp};

/// Collection ids both servers reserve for the standard collections.
const STANDARD_COLLECTIONS: [(i64, &str); 11] = [
    (1, "clients"),
    (2, "crypto"),
    (3, "forms"),
    (4, "history"),
    (5, "keys"),
    (6, "meta"),
    (7, "bookmarks"),
    (8, "prefs"),
    (9, "tabs"),
    (10, "passwords"),
    (11, "addons"),
];

/// The Python server's "never expires" `ttl`.
const PYTHON_MAX_TTL: i64 = 2_100_000_000;
/// syncstorage-rs stores "never" as a default TTL of this many seconds after the write.
const RUST_NEVER_AFTER_SECS: i64 = 2_000_000_000;

/// An open source database.
pub enum LegacySource {
    /// server-syncstorage's schema in a SQLite file; the names of its BSO tables.
    PythonSqlite(rusqlite::Connection, Vec<String>),
    /// server-syncstorage's schema in MySQL (or MariaDB); the names of its BSO tables.
    PythonMysql(Box<mysql::Conn>, Vec<String>),
    /// syncstorage-rs's schema in PostgreSQL.
    RustPostgres(Box<postgres::Client>),
}

fn bad(e: impl std::fmt::Display) -> StorageError {
    StorageError::Invalid(format!("source database: {e}"))
}

impl LegacySource {
    /// Opens `sqlite:///path/to/file.db` (or `sqlite:relative.db`) or `postgres://…`.
    pub fn open(url: &str) -> Result<LegacySource, StorageError> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or(url.strip_prefix("sqlite:"))
        {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(bad)?;
            let mut tables: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(bad)?;
            tables.retain(|t| is_bso_table(t));
            if tables.is_empty() {
                return Err(bad("no bso table: not a server-syncstorage database"));
            }
            return Ok(LegacySource::PythonSqlite(conn, tables));
        }
        if url.starts_with("mysql://") {
            let opts = mysql::Opts::from_url(url).map_err(bad)?;
            let mut conn = mysql::Conn::new(opts).map_err(bad)?;
            use mysql::prelude::Queryable;
            let tables: Vec<String> = conn
                .query::<String, _>("SHOW TABLES")
                .map_err(bad)?
                .into_iter()
                .filter(|t| is_bso_table(t))
                .collect();
            if tables.is_empty() {
                return Err(bad("no bso table: not a server-syncstorage database"));
            }
            return Ok(LegacySource::PythonMysql(Box::new(conn), tables));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (config, tls) = crate::pg::connector(url).map_err(bad)?;
            let client = config
                .connect(tls)
                .map_err(|e| bad(crate::pg::message(&e)))?;
            return Ok(LegacySource::RustPostgres(Box::new(client)));
        }
        Err(StorageError::Invalid(format!(
            "unsupported source {url:?}: use sqlite:///path or mysql://… (server-syncstorage) \
             or postgres://… (syncstorage-rs)"
        )))
    }

    /// Every user with data, ascending.
    pub fn users(&mut self) -> Result<Vec<u64>, StorageError> {
        let ids: Vec<i64> = match self {
            LegacySource::PythonSqlite(conn, _) => conn
                .prepare("SELECT DISTINCT userid FROM user_collections ORDER BY userid")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(bad)?,
            LegacySource::PythonMysql(conn, _) => {
                use mysql::prelude::Queryable;
                let mut ids = Vec::new();
                for row in conn
                    .query_iter("SELECT DISTINCT userid FROM user_collections ORDER BY userid")
                    .map_err(bad)?
                {
                    ids.push(my_col::<i64>(&row.map_err(bad)?, 0, "user_collections")?);
                }
                ids
            }
            LegacySource::RustPostgres(client) => {
                let rows = client
                    .query(
                        "SELECT DISTINCT user_id FROM user_collections ORDER BY user_id",
                        &[],
                    )
                    .map_err(|e| bad(crate::pg::message(&e)))?;
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    ids.extend(pg_int(row, 0, "user_collections")?);
                }
                ids
            }
        };
        Ok(ids
            .into_iter()
            .filter_map(|i| u64::try_from(i).ok())
            .collect())
    }

    /// One user's collections and records, as an export.
    pub fn user(&mut self, uid: u64) -> Result<UserExport, StorageError> {
        let mut names: BTreeMap<i64, String> = STANDARD_COLLECTIONS
            .iter()
            .map(|(id, n)| (*id, n.to_string()))
            .collect();
        let mut colls: BTreeMap<i64, CollectionExport> = BTreeMap::new();
        let mut records: Vec<(i64, RecordExport)> = Vec::new();
        let user = uid as i64;
        match self {
            LegacySource::PythonSqlite(conn, tables) => {
                let mut s = conn
                    .prepare("SELECT collectionid, name FROM collections")
                    .map_err(bad)?;
                for row in s
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(bad)?
                {
                    let (id, name) = row.map_err(bad)?;
                    names.insert(id, name);
                }
                let mut s = conn
                    .prepare(
                        "SELECT collection, last_modified FROM user_collections
                         WHERE userid = ?1",
                    )
                    .map_err(bad)?;
                for row in s
                    .query_map([user], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(bad)?
                {
                    let (id, ms) = row.map_err(bad)?;
                    colls.insert(id, collection(&names, id, Timestamp(ms / 10))?);
                }
                for table in tables.iter() {
                    let mut s = conn
                        .prepare(&format!(
                            "SELECT collection, id, sortindex, modified, payload, ttl
                             FROM \"{}\" WHERE userid = ?1",
                            table.replace('"', "\"\"")
                        ))
                        .map_err(bad)?;
                    let rows = s
                        .query_map([user], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                python_record(
                                    r.get(1)?,
                                    r.get(2)?,
                                    r.get(3)?,
                                    r.get(4)?,
                                    r.get(5)?,
                                ),
                            ))
                        })
                        .map_err(bad)?;
                    for row in rows {
                        records.push(row.map_err(bad)?);
                    }
                }
            }
            LegacySource::PythonMysql(conn, tables) => {
                use mysql::prelude::Queryable;
                for row in conn
                    .query_iter("SELECT collectionid, name FROM collections")
                    .map_err(bad)?
                {
                    let row = row.map_err(bad)?;
                    let what = "collections";
                    names.insert(my_col(&row, 0, what)?, my_col(&row, 1, what)?);
                }
                let mut stamps = Vec::new();
                for row in conn
                    .exec_iter(
                        "SELECT collection, last_modified FROM user_collections WHERE userid = ?",
                        (user,),
                    )
                    .map_err(bad)?
                {
                    let row = row.map_err(bad)?;
                    let what = "user_collections";
                    stamps.push((my_col::<i64>(&row, 0, what)?, my_col::<i64>(&row, 1, what)?));
                }
                for (id, ms) in stamps {
                    colls.insert(id, collection(&names, id, Timestamp(ms / 10))?);
                }
                for table in tables.iter() {
                    let sql = format!(
                        "SELECT collection, id, sortindex, modified, payload, ttl
                         FROM `{}` WHERE userid = ?",
                        table.replace('`', "``")
                    );
                    for row in conn.exec_iter(sql, (user,)).map_err(bad)? {
                        let row = row.map_err(bad)?;
                        let id: String = my_col(&row, 1, table)?;
                        let what = format!("{table} record {id:?}");
                        records.push((
                            my_col(&row, 0, &what)?,
                            python_record(
                                id,
                                my_col(&row, 2, &what)?,
                                my_col(&row, 3, &what)?,
                                my_col(&row, 4, &what)?,
                                my_col(&row, 5, &what)?,
                            ),
                        ));
                    }
                }
            }
            LegacySource::RustPostgres(client) => {
                let query =
                    |client: &mut postgres::Client,
                     sql: &str,
                     args: &[&(dyn postgres::types::ToSql + Sync)]| {
                        client
                            .query(sql, args)
                            .map_err(|e| bad(crate::pg::message(&e)))
                    };
                for row in query(client, "SELECT collection_id, name FROM collections", &[])? {
                    let id = pg_int(&row, 0, "collections")?;
                    let name = pg_text(&row, 1, "collections")?;
                    if let (Some(id), Some(name)) = (id, name) {
                        names.insert(id, name);
                    }
                }
                let cs = "ROUND(EXTRACT(EPOCH FROM modified) * 100)::BIGINT";
                let sql =
                    format!("SELECT collection_id, {cs} FROM user_collections WHERE user_id = $1");
                for row in query(client, &sql, &[&user])? {
                    let what = "user_collections";
                    let id = required(pg_int(&row, 0, what)?, &row, 0, what)?;
                    let ms = required(pg_int(&row, 1, what)?, &row, 1, what)?;
                    colls.insert(id, collection(&names, id, Timestamp(ms))?);
                }
                let sql = format!(
                    "SELECT collection_id, bso_id, sortindex, payload, {cs},
                            ROUND(EXTRACT(EPOCH FROM expiry) * 1000)::BIGINT
                     FROM bsos WHERE user_id = $1"
                );
                for row in query(client, &sql, &[&user])? {
                    let id = pg_text(&row, 1, "bsos")?.unwrap_or_default();
                    let what = format!("bsos record {id:?}");
                    let coll = required(pg_int(&row, 0, &what)?, &row, 0, &what)?;
                    let modified = required(pg_int(&row, 4, &what)?, &row, 4, &what)?;
                    let expiry = required(pg_int(&row, 5, &what)?, &row, 5, &what)?;
                    let never = expiry - modified * 10 >= RUST_NEVER_AFTER_SECS * 1000;
                    records.push((
                        coll,
                        RecordExport {
                            id,
                            sortindex: pg_int(&row, 2, &what)?,
                            payload: required(pg_text(&row, 3, &what)?, &row, 3, &what)?,
                            modified: Timestamp(modified),
                            expires: (!never).then_some(Millis(expiry)),
                        },
                    ));
                }
            }
        }
        for (coll, record) in records {
            let entry = match colls.get_mut(&coll) {
                Some(c) => c,
                None => {
                    // A record without its user_collections row: the collection's
                    // time is its newest record's.
                    let c = collection(&names, coll, record.modified)?;
                    colls.entry(coll).or_insert(c)
                }
            };
            entry.modified = entry.modified.max(record.modified);
            entry.records.push(record);
        }
        let collections: Vec<CollectionExport> = colls.into_values().collect();
        let modified = collections
            .iter()
            .map(|c| c.modified)
            .max()
            .unwrap_or_default();
        Ok(UserExport {
            format: EXPORT_FORMAT.into(),
            uid,
            modified,
            collections,
        })
    }
}

/// Column `idx` of a MySQL row as `T` (sortindex and ttl may be NULL: `Option`);
/// `what` names the row in errors.
fn my_col<T: mysql::prelude::FromValue>(
    row: &mysql::Row,
    idx: usize,
    what: &str,
) -> Result<T, StorageError> {
    let name = row
        .columns_ref()
        .get(idx)
        .map(|c| c.name_str().into_owned())
        .unwrap_or_default();
    match row.get_opt::<T, usize>(idx) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(bad(format!(
            "{what}: column {name} cannot be read as {}: {}",
            std::any::type_name::<T>(),
            match e.0 {
                mysql::Value::NULL => "NULL".to_string(),
                mysql::Value::Bytes(b) => format!("{} bytes", b.len()),
                v => format!("{v:?}"),
            }
        ))),
        None => Err(bad(format!("{what}: no column {idx}"))),
    }
}

/// Integer column `idx` of a syncstorage-rs row, whichever width the schema gave it
/// (its tables declare `sortindex` and `collection_id` INTEGER, `user_id` BIGINT);
/// `what` names the row in errors.
fn pg_int(row: &postgres::Row, idx: usize, what: &str) -> Result<Option<i64>, StorageError> {
    use postgres::types::Type;
    let col = &row.columns()[idx];
    let ty = col.type_();
    let value = if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(idx)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(idx).map(|v| v.map(i64::from))
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(idx).map(|v| v.map(i64::from))
    } else {
        return Err(bad(format!(
            "{what}: column {} is of type {ty}, not an integer",
            col.name()
        )));
    };
    value.map_err(|e| bad(format!("{what}: column {}: {e}", col.name())))
}

/// Text column `idx` of a syncstorage-rs row (TEXT, VARCHAR, …).
fn pg_text(row: &postgres::Row, idx: usize, what: &str) -> Result<Option<String>, StorageError> {
    let col = &row.columns()[idx];
    row.try_get::<_, Option<String>>(idx).map_err(|e| {
        bad(format!(
            "{what}: column {} (type {}): {e}",
            col.name(),
            col.type_()
        ))
    })
}

/// A column's value that may not be NULL.
fn required<T>(
    value: Option<T>,
    row: &postgres::Row,
    idx: usize,
    what: &str,
) -> Result<T, StorageError> {
    value.ok_or_else(|| {
        bad(format!(
            "{what}: column {} is NULL",
            row.columns()[idx].name()
        ))
    })
}

/// A record of the Python server: times in milliseconds, `ttl` an absolute expiry in
/// seconds (2100000000: never).
fn python_record(
    id: String,
    sortindex: Option<i64>,
    modified_ms: i64,
    payload: String,
    ttl: Option<i64>,
) -> RecordExport {
    // The column is nullable (its default is "never"): NULL is never too.
    let ttl = ttl.unwrap_or(PYTHON_MAX_TTL);
    RecordExport {
        id,
        sortindex,
        modified: Timestamp(modified_ms / 10),
        payload,
        expires: (ttl < PYTHON_MAX_TTL).then_some(Millis(ttl.saturating_mul(1000))),
    }
}

/// `bso`, or a shard `bso0`…`bsoN`.
fn is_bso_table(name: &str) -> bool {
    name.strip_prefix("bso")
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

fn collection(
    names: &BTreeMap<i64, String>,
    id: i64,
    modified: Timestamp,
) -> Result<CollectionExport, StorageError> {
    let name = names
        .get(&id)
        .ok_or_else(|| bad(format!("collection id {id} has no name")))?;
    Ok(CollectionExport {
        name: name.clone(),
        modified,
        records: Vec::new(),
    })
}
