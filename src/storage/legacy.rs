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
//!   INTEGER, so integers are read at whatever width the column has;
//! * syncstorage-rs on MySQL/MariaDB: `collections (id, name)` (id 100 a placeholder
//!   named `''`), `user_collections (userid, collection, last_modified, …)` and `bso
//!   (userid, collection, id, sortindex, payload, modified, ttl, …)`, times and the
//!   absolute `ttl` in milliseconds (2100000000000: never). Told apart from the Python
//!   server's MySQL by the `collections` table's columns.
//!
//! syncstorage-rs's bookkeeping is not user data: its `user_collections` row with
//! collection id 0 (a storage-wide timestamp: only the user's last-modified time keeps
//! it), rows dated before the epoch (`0001-01-01`, left by abandoned batches), and its
//! batch tables (`batches`/`batch_bsos`, `batch_uploads`/`batch_upload_items`: never
//! read). Records already expired are not imported. Each user is read in one snapshot
//! of the source, so the source server may keep serving during an import.
//!
//! No value is assumed to convert: one that does not is an error naming the row and
//! column, and `import-legacy` reports that user as failed and goes on.
//!
//! All key users by the tokenserver's numeric uid, which stays the user's uid here.

use std::collections::BTreeMap;

use postgres::fallible_iterator::FallibleIterator;
use rusqlite::OpenFlags;

use super::StorageError;
use super::files::{CollectionExport, EXPORT_FORMAT, RecordExport, UserExport};
use super::model::{MAX_SORTINDEX, Millis, Timestamp, valid_bso_id, valid_collection};

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

/// The latest time a record or collection may carry (9999-12-31 23:59:59.99, in 10 ms
/// units): later ones are not times a client can be served.
const MAX_MODIFIED: Timestamp = Timestamp(25_340_230_079_999);

/// The Python server's "never expires" `ttl`.
const PYTHON_MAX_TTL: i64 = 2_100_000_000;
/// syncstorage-rs stores "never" as a default TTL of this many seconds after the write.
const RUST_NEVER_AFTER_SECS: i64 = 2_000_000_000;
/// syncstorage-rs on MySQL writes records of a committed batch with this flat `ttl`
/// (milliseconds): never, too.
const RUST_MYSQL_NEVER: i64 = 2_100_000_000_000;

/// An open source database.
pub enum LegacySource {
    /// server-syncstorage's schema in a SQLite file; the names of its BSO tables.
    PythonSqlite(rusqlite::Connection, Vec<String>),
    /// server-syncstorage's schema in MySQL (or MariaDB); the names of its BSO tables.
    PythonMysql(Box<mysql::Conn>, Vec<String>),
    /// syncstorage-rs's schema in MySQL (or MariaDB).
    RustMysql(Box<mysql::Conn>),
    /// syncstorage-rs's schema in PostgreSQL.
    RustPostgres(Box<postgres::Client>),
}

fn bad(e: impl std::fmt::Display) -> StorageError {
    StorageError::Invalid(format!("source database: {e}"))
}

fn pg_bad(e: postgres::Error) -> StorageError {
    bad(crate::pg::message(&e))
}

/// What one user's rows say, before they become an export: every `user_collections`
/// time (collection id, time) and every record with its collection id.
#[derive(Default)]
struct UserRows {
    names: BTreeMap<i64, String>,
    stamps: Vec<(i64, Timestamp)>,
    records: Vec<(i64, RecordExport)>,
    /// Bytes of record ids and payloads read so far, and `RECORD_OVERHEAD` a record.
    bytes: u64,
    /// The most `bytes` may reach: over it, the user fails.
    max_bytes: u64,
}

/// What a record costs in memory while its user is read and assembled, besides its id
/// and payload: a second review measured 386 bytes a record for a million records with
/// empty payloads, so a cap on ids and payloads alone let tiny records take 78 times
/// the cap.
const RECORD_OVERHEAD: usize = 400;

impl UserRows {
    /// Keeps a record read from the source, unless the user's records now exceed the
    /// cap (then the user fails, before reading more into memory).
    fn push(&mut self, coll: i64, record: RecordExport) -> Result<(), StorageError> {
        let size = record
            .payload
            .len()
            .saturating_add(record.id.len())
            .saturating_add(RECORD_OVERHEAD);
        self.bytes = self.bytes.saturating_add(size as u64);
        if self.bytes > self.max_bytes {
            return Err(StorageError::Invalid(format!(
                "too large to import: its records exceed the cap of {} bytes \
                 ({} bytes read before stopping: ids, payloads and {RECORD_OVERHEAD} \
                 bytes a record; raise it with --max-user-bytes)",
                self.max_bytes, self.bytes
            )));
        }
        self.records.push((coll, record));
        Ok(())
    }
}

impl LegacySource {
    /// Opens `sqlite:///path/to/file.db` (or `sqlite:relative.db`), `mysql://…` (either
    /// server's schema, told apart by the `collections` table's columns) or
    /// `postgres://…`.
    ///
    /// No error shows the URL's password (see [`scrub`]).
    pub fn open(url: &str) -> Result<LegacySource, StorageError> {
        LegacySource::open_url(url).map_err(|e| match e {
            StorageError::Invalid(m) => StorageError::Invalid(scrub(&m, url)),
            e => e,
        })
    }

    fn open_url(url: &str) -> Result<LegacySource, StorageError> {
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
            use mysql::prelude::Queryable;
            let opts = mysql::Opts::from_url(url).map_err(bad)?;
            let mut conn = mysql::Conn::new(opts).map_err(bad)?;
            let tables: Vec<String> = conn
                .query::<String, _>("SHOW TABLES")
                .map_err(bad)?
                .into_iter()
                .filter(|t| is_bso_table(t))
                .collect();
            if tables.is_empty() {
                return Err(bad(
                    "no bso table: not a server-syncstorage or syncstorage-rs database",
                ));
            }
            // syncstorage-rs names the id column `id`, server-syncstorage `collectionid`.
            let columns: Vec<String> = conn
                .query_map("SHOW COLUMNS FROM collections", |row: mysql::Row| {
                    row.get::<String, usize>(0).unwrap_or_default()
                })
                .map_err(bad)?;
            if columns.iter().any(|c| c == "collectionid") {
                return Ok(LegacySource::PythonMysql(Box::new(conn), tables));
            }
            if columns.iter().any(|c| c == "id") && tables.iter().any(|t| t == "bso") {
                return Ok(LegacySource::RustMysql(Box::new(conn)));
            }
            return Err(bad(format!(
                "table collections has columns {columns:?}: neither server-syncstorage's \
                 (collectionid, name) nor syncstorage-rs's (id, name)"
            )));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (config, tls) = crate::pg::connector(url).map_err(bad)?;
            let client = config.connect(tls).map_err(pg_bad)?;
            return Ok(LegacySource::RustPostgres(Box::new(client)));
        }
        Err(StorageError::Invalid(format!(
            "unsupported source {:?}: use sqlite:///path (server-syncstorage), \
             mysql://… (server-syncstorage or syncstorage-rs) or postgres://… (syncstorage-rs)",
            redact(url)
        )))
    }

    /// Every user with data, ascending: those of `user_collections` and of the record
    /// tables (a user may have records without `user_collections` rows). Negative ids
    /// are listed too, for the caller to report: they are no tokenserver's uids.
    pub fn users(&mut self) -> Result<Vec<i64>, StorageError> {
        let ids: Vec<i64> = match self {
            LegacySource::PythonSqlite(conn, tables) => {
                let sql = union_of_users("userid", "user_collections", tables, '"');
                conn.prepare(&sql)
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(bad)?
            }
            LegacySource::PythonMysql(conn, tables) => {
                let sql = union_of_users("userid", "user_collections", tables, '`');
                mysql_ids(conn, &sql)?
            }
            LegacySource::RustMysql(conn) => {
                let sql = union_of_users("userid", "user_collections", &["bso".into()], '`');
                mysql_ids(conn, &sql)?
            }
            LegacySource::RustPostgres(client) => {
                let sql = union_of_users("user_id", "user_collections", &["bsos".into()], '"');
                let rows = client.query(&sql, &[]).map_err(pg_bad)?;
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    ids.extend(pg_int(row, 0, "user_collections")?);
                }
                ids
            }
        };
        Ok(ids)
    }

    /// One user's collections and records, as an export, read in one snapshot of the
    /// source (a read-only REPEATABLE READ transaction on PostgreSQL and MySQL, a read
    /// transaction on SQLite), so a source server that keeps serving cannot make it
    /// see half of a write. Records already expired are left out. A user whose record
    /// ids and payloads exceed `max_bytes` fails as soon as they do (nothing more of
    /// that user is read into memory).
    pub fn user(&mut self, uid: u64, max_bytes: u64) -> Result<UserExport, StorageError> {
        let mut rows = UserRows {
            names: STANDARD_COLLECTIONS
                .iter()
                .map(|(id, n)| (*id, n.to_string()))
                .collect(),
            max_bytes,
            ..UserRows::default()
        };
        let user = uid as i64;
        match self {
            LegacySource::PythonSqlite(conn, tables) => {
                let tx = conn.transaction().map_err(bad)?;
                read_python_sqlite(&tx, tables, user, &mut rows)?;
                // Read only: nothing to keep.
                tx.rollback().map_err(bad)?;
            }
            LegacySource::PythonMysql(conn, tables) => {
                let tables = tables.clone();
                in_mysql_snapshot(conn, |conn| {
                    read_python_mysql(conn, &tables, user, &mut rows)
                })?;
            }
            LegacySource::RustMysql(conn) => {
                in_mysql_snapshot(conn, |conn| read_rust_mysql(conn, user, &mut rows))?;
            }
            LegacySource::RustPostgres(client) => {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .map_err(pg_bad)?;
                read_rust_postgres(&mut tx, user, &mut rows)?;
                tx.rollback().map_err(pg_bad)?;
            }
        }
        assemble(uid, rows, now_ms())
    }
}

/// The passwords in a URL, however mistyped: the user info's
/// (`scheme://user:password@host/…`, also after `scheme:/` or `scheme:`) and any
/// `password=` parameter.
fn passwords(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    // After the scheme (up to the first `:`) and any slashes.
    let rest = url
        .split_once(':')
        .map_or(url, |(_, r)| r)
        .trim_start_matches('/');
    // The user info ends at the last `@` before the path (or, for a password with an
    // unencoded `/`, at the last `@` at all).
    let path = rest.find('/').unwrap_or(rest.len());
    if let Some(at) = rest[..path].rfind('@').or_else(|| rest.rfind('@'))
        && let Some((_, pass)) = rest[..at].split_once(':')
        && !pass.is_empty()
    {
        found.push(pass);
    }
    let lower = url.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = url[start..]
            .find(['&', ' '])
            .map_or(url.len(), |e| start + e);
        if end > start {
            found.push(&url[start..end]);
        }
        from = end.max(start);
    }
    found
}

/// `url` with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    scrub(url, url)
}

/// `message` with every occurrence of `url`'s password (as written, and
/// percent-decoded) replaced by `***`.
pub fn scrub(message: &str, url: &str) -> String {
    let mut out = message.to_string();
    for pass in passwords(url) {
        out = out.replace(pass, "***");
        let decoded = percent_decode(pass);
        if !decoded.is_empty() && decoded != pass {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `SELECT <column> FROM <first> UNION SELECT <column> FROM <table>… ORDER BY 1`, the
/// tables quoted with `quote`.
fn union_of_users(column: &str, first: &str, tables: &[String], quote: char) -> String {
    let q = |t: &str| {
        let doubled = format!("{quote}{quote}");
        format!("{quote}{}{quote}", t.replace(quote, &doubled))
    };
    let mut sql = format!("SELECT {column} FROM {}", q(first));
    for t in tables {
        sql.push_str(&format!(" UNION SELECT {column} FROM {}", q(t)));
    }
    sql.push_str(" ORDER BY 1");
    sql
}

/// The ids a one-column MySQL query returns.
fn mysql_ids(conn: &mut mysql::Conn, sql: &str) -> Result<Vec<i64>, StorageError> {
    use mysql::prelude::Queryable;
    let mut ids = Vec::new();
    for row in conn.query_iter(sql).map_err(bad)? {
        ids.push(my_col::<i64>(&row.map_err(bad)?, 0, "users")?);
    }
    Ok(ids)
}

/// Now, in milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs `f` in a read-only transaction with a consistent snapshot; always ends it.
fn in_mysql_snapshot(
    conn: &mut mysql::Conn,
    f: impl FnOnce(&mut mysql::Conn) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    use mysql::prelude::Queryable;
    conn.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .map_err(bad)?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .map_err(bad)?;
    let result = f(conn);
    let end = conn.query_drop("ROLLBACK").map_err(bad);
    result.and(end)
}

fn read_python_sqlite(
    conn: &rusqlite::Connection,
    tables: &[String],
    user: i64,
    rows: &mut UserRows,
) -> Result<(), StorageError> {
    let mut s = conn
        .prepare("SELECT collectionid, name FROM collections")
        .map_err(bad)?;
    for row in s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(bad)?
    {
        let (id, name) = row.map_err(bad)?;
        rows.names.insert(id, name);
    }
    let mut s = conn
        .prepare("SELECT collection, last_modified FROM user_collections WHERE userid = ?1")
        .map_err(bad)?;
    for row in s
        .query_map([user], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(bad)?
    {
        let (id, ms) = row.map_err(bad)?;
        rows.stamps.push((id, Timestamp(ms / 10)));
    }
    for table in tables {
        let mut s = conn
            .prepare(&format!(
                "SELECT collection, id, sortindex, modified, payload, ttl
                 FROM \"{}\" WHERE userid = ?1",
                table.replace('"', "\"\"")
            ))
            .map_err(bad)?;
        let found = s
            .query_map([user], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    python_record(r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
                ))
            })
            .map_err(bad)?;
        for row in found {
            let (coll, record) = row.map_err(bad)?;
            rows.push(coll, record)?;
        }
    }
    Ok(())
}

fn read_python_mysql(
    conn: &mut mysql::Conn,
    tables: &[String],
    user: i64,
    rows: &mut UserRows,
) -> Result<(), StorageError> {
    use mysql::prelude::Queryable;
    for row in conn
        .query_iter("SELECT collectionid, name FROM collections")
        .map_err(bad)?
    {
        let row = row.map_err(bad)?;
        let what = "collections";
        rows.names
            .insert(my_col(&row, 0, what)?, my_col(&row, 1, what)?);
    }
    read_mysql_stamps(conn, user, rows)?;
    for table in tables {
        let sql = format!(
            "SELECT collection, id, sortindex, modified, payload, ttl
             FROM `{}` WHERE userid = ?",
            table.replace('`', "``")
        );
        for row in conn.exec_iter(sql, (user,)).map_err(bad)? {
            let row = row.map_err(bad)?;
            let id: String = my_col(&row, 1, table)?;
            let what = format!("{table} record {id:?}");
            rows.push(
                my_col(&row, 0, &what)?,
                python_record(
                    id,
                    my_col(&row, 2, &what)?,
                    my_col(&row, 3, &what)?,
                    my_col(&row, 4, &what)?,
                    my_col(&row, 5, &what)?,
                ),
            )?;
        }
    }
    Ok(())
}

/// The user's collection times from `user_collections (userid, collection,
/// last_modified)` in milliseconds: the same table in both servers' MySQL schemas.
fn read_mysql_stamps(
    conn: &mut mysql::Conn,
    user: i64,
    rows: &mut UserRows,
) -> Result<(), StorageError> {
    use mysql::prelude::Queryable;
    for row in conn
        .exec_iter(
            "SELECT collection, last_modified FROM user_collections WHERE userid = ?",
            (user,),
        )
        .map_err(bad)?
    {
        let row = row.map_err(bad)?;
        let what = "user_collections";
        let ms: i64 = my_col(&row, 1, what)?;
        rows.stamps
            .push((my_col::<i64>(&row, 0, what)?, Timestamp(ms / 10)));
    }
    Ok(())
}

/// syncstorage-rs's MySQL schema: `collections (id, name)` (id 100 is a placeholder
/// named `''`, never a user's collection), `user_collections (userid, collection,
/// last_modified, …)` and `bso (userid, collection, id, sortindex, payload, modified,
/// ttl, …)` with `modified` and `ttl` (the absolute expiry) in milliseconds.
fn read_rust_mysql(
    conn: &mut mysql::Conn,
    user: i64,
    rows: &mut UserRows,
) -> Result<(), StorageError> {
    use mysql::prelude::Queryable;
    for row in conn
        .query_iter("SELECT id, name FROM collections")
        .map_err(bad)?
    {
        let row = row.map_err(bad)?;
        let what = "collections";
        let name: String = my_col(&row, 1, what)?;
        if !name.is_empty() {
            rows.names.insert(my_col(&row, 0, what)?, name);
        }
    }
    read_mysql_stamps(conn, user, rows)?;
    for row in conn
        .exec_iter(
            "SELECT collection, id, sortindex, payload, modified, ttl FROM bso WHERE userid = ?",
            (user,),
        )
        .map_err(bad)?
    {
        let row = row.map_err(bad)?;
        let id: String = my_col(&row, 1, "bso")?;
        let what = format!("bso record {id:?}");
        let modified: i64 = my_col(&row, 4, &what)?;
        let ttl: i64 = my_col(&row, 5, &what)?;
        rows.push(
            my_col(&row, 0, &what)?,
            RecordExport {
                id,
                sortindex: my_col(&row, 2, &what)?,
                payload: my_col(&row, 3, &what)?,
                modified: Timestamp(modified / 10),
                expires: (ttl < RUST_MYSQL_NEVER && !rust_never(modified, ttl))
                    .then_some(Millis(ttl)),
            },
        )?;
    }
    Ok(())
}

/// Whether a syncstorage-rs expiry (milliseconds) means "never": its default TTL
/// after the write.
fn rust_never(modified_ms: i64, expiry_ms: i64) -> bool {
    expiry_ms.saturating_sub(modified_ms) >= RUST_NEVER_AFTER_SECS * 1000
}

fn read_rust_postgres(
    tx: &mut postgres::Transaction<'_>,
    user: i64,
    rows: &mut UserRows,
) -> Result<(), StorageError> {
    for row in tx
        .query("SELECT collection_id, name FROM collections", &[])
        .map_err(pg_bad)?
    {
        let id = pg_int(&row, 0, "collections")?;
        let name = pg_text(&row, 1, "collections")?;
        if let (Some(id), Some(name)) = (id, name) {
            rows.names.insert(id, name);
        }
    }
    let cs = "ROUND(EXTRACT(EPOCH FROM modified) * 100)::BIGINT";
    let sql = format!("SELECT collection_id, {cs} FROM user_collections WHERE user_id = $1");
    for row in tx.query(&sql, &[&user]).map_err(pg_bad)? {
        let what = "user_collections";
        let id = required(pg_int(&row, 0, what)?, &row, 0, what)?;
        let cs = required(pg_int(&row, 1, what)?, &row, 1, what)?;
        rows.stamps.push((id, Timestamp(cs)));
    }
    let sql = format!(
        "SELECT collection_id, bso_id, sortindex, payload, {cs},
                ROUND(EXTRACT(EPOCH FROM expiry) * 1000)::BIGINT
         FROM bsos WHERE user_id = $1"
    );
    // Streamed (not collected first), so the byte cap stops a large user early.
    let params: [&(dyn postgres::types::ToSql + Sync); 1] = [&user];
    let mut found = tx.query_raw(&sql, params).map_err(pg_bad)?;
    while let Some(row) = found.next().map_err(pg_bad)? {
        let id = pg_text(&row, 1, "bsos")?.unwrap_or_default();
        let what = format!("bsos record {id:?}");
        let coll = required(pg_int(&row, 0, &what)?, &row, 0, &what)?;
        let modified = required(pg_int(&row, 4, &what)?, &row, 4, &what)?;
        let expiry = required(pg_int(&row, 5, &what)?, &row, 5, &what)?;
        rows.push(
            coll,
            RecordExport {
                id,
                sortindex: pg_int(&row, 2, &what)?,
                payload: required(pg_text(&row, 3, &what)?, &row, 3, &what)?,
                modified: Timestamp(modified),
                expires: (!rust_never(modified * 10, expiry)).then_some(Millis(expiry)),
            },
        )?;
    }
    Ok(())
}

/// Turns a user's rows into an export, as syncstorage-rs answers for them:
/// * collection id 0 is syncstorage-rs's storage-wide timestamp marker (written when a
///   whole collection is deleted): not a collection, but the user's last-modified
///   time does not go back below it;
/// * a `user_collections` time at or before the epoch (syncstorage-rs's `0001-01-01`,
///   written when a batch is opened in a collection never written to and left there
///   when the batch is abandoned) is not a collection either;
/// * records expired at `now_ms` are left out (their collection stays, as it does in
///   the source's answers).
fn assemble(uid: u64, rows: UserRows, now_ms: i64) -> Result<UserExport, StorageError> {
    let UserRows {
        names,
        stamps,
        records,
        ..
    } = rows;
    let mut colls: BTreeMap<i64, CollectionExport> = BTreeMap::new();
    let mut marker = Timestamp::default();
    for (id, modified) in stamps {
        if modified > MAX_MODIFIED {
            return Err(bad(format!(
                "user_collections row of collection id {id}: modified {} is past year 9999",
                centis(modified)
            )));
        }
        if id == 0 {
            marker = marker.max(modified);
        } else if modified.0 > 0 {
            colls.insert(id, collection(&names, id, modified)?);
        }
    }
    // A record read twice (in two shards, or a table without its primary key): the
    // newest write is the record.
    let mut unique: BTreeMap<(i64, String), RecordExport> = BTreeMap::new();
    for (coll, record) in records {
        match unique.entry((coll, record.id.clone())) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(record);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if record.modified > e.get().modified {
                    e.insert(record);
                }
            }
        }
    }
    for ((coll, _), record) in unique {
        if record.expires.is_some_and(|e| e.0 <= now_ms) {
            continue;
        }
        servable(&names, coll, &record)?;
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
        .unwrap_or_default()
        .max(marker);
    Ok(UserExport {
        format: EXPORT_FORMAT.into(),
        uid,
        modified,
        collections,
    })
}

/// Fails a record the storage API would not have stored or cannot serve: `modified`
/// must be after the epoch and before year 10000, `sortindex` within what a client
/// may write (±`MAX_SORTINDEX`).
fn servable(
    names: &BTreeMap<i64, String>,
    coll: i64,
    record: &RecordExport,
) -> Result<(), StorageError> {
    let row = || {
        let coll = names
            .get(&coll)
            .map_or_else(|| format!("collection id {coll}"), |n| format!("{n:?}"));
        format!("record {:?} of {coll}", record.id)
    };
    if record.modified.0 <= 0 || record.modified > MAX_MODIFIED {
        return Err(bad(format!(
            "{}: modified {} is not a time this server can serve \
             (after 1970-01-01, before year 10000)",
            row(),
            centis(record.modified)
        )));
    }
    if let Some(i) = record.sortindex
        && !(-MAX_SORTINDEX..=MAX_SORTINDEX).contains(&i)
    {
        return Err(bad(format!(
            "{}: sortindex {i} is outside what the storage API accepts (±{MAX_SORTINDEX})",
            row()
        )));
    }
    Ok(())
}

/// A time in 10 ms units as seconds with two decimals, for messages (negative too).
fn centis(t: Timestamp) -> String {
    let sign = if t.0 < 0 { "-" } else { "" };
    let a = t.0.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Checks an export as `files::import` would before writing it (collection names,
/// record ids), for `--dry-run`; returns its number of records.
pub fn check(data: &UserExport) -> Result<usize, StorageError> {
    let mut n = 0;
    for c in &data.collections {
        if !valid_collection(&c.name) {
            return Err(StorageError::Invalid(format!(
                "bad collection name {:?}",
                c.name
            )));
        }
        for r in &c.records {
            if !valid_bso_id(&r.id) {
                return Err(StorageError::Invalid(format!("bad record id {:?}", r.id)));
            }
            n += 1;
        }
    }
    Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, modified: i64, expires: Option<i64>) -> RecordExport {
        RecordExport {
            id: id.into(),
            sortindex: None,
            payload: "p".into(),
            modified: Timestamp(modified),
            expires: expires.map(Millis),
        }
    }

    fn rows(stamps: &[(i64, i64)], records: Vec<(i64, RecordExport)>) -> UserRows {
        UserRows {
            names: STANDARD_COLLECTIONS
                .iter()
                .map(|(id, n)| (*id, n.to_string()))
                .collect(),
            stamps: stamps.iter().map(|&(c, t)| (c, Timestamp(t))).collect(),
            records,
            ..UserRows::default()
        }
    }

    #[test]
    fn the_storage_wide_marker_is_no_collection_but_keeps_the_users_time() {
        let data = assemble(
            7,
            rows(&[(0, 500), (7, 300)], vec![(7, record("b", 300, None))]),
            0,
        )
        .unwrap();
        let names: Vec<&str> = data.collections.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["bookmarks"]);
        assert_eq!(data.modified, Timestamp(500));
        // An older marker does not lower it either.
        let data = assemble(7, rows(&[(0, 100), (7, 300)], vec![]), 0).unwrap();
        assert_eq!(data.modified, Timestamp(300));
    }

    #[test]
    fn a_collection_dated_before_the_epoch_is_left_out() {
        // syncstorage-rs's 0001-01-01, in 10 ms units.
        let data = assemble(7, rows(&[(4, -6_213_559_680_000), (7, 300)], vec![]), 0).unwrap();
        let names: Vec<&str> = data.collections.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["bookmarks"]);
        assert_eq!(data.modified, Timestamp(300));
    }

    #[test]
    fn expired_records_are_left_out_and_their_collection_stays() {
        let data = assemble(
            7,
            rows(
                &[(9, 300)],
                vec![
                    (9, record("gone", 300, Some(1_000))),
                    (9, record("live", 200, Some(5_000))),
                    (9, record("never", 100, None)),
                ],
            ),
            2_000,
        )
        .unwrap();
        let ids: Vec<&str> = data.collections[0]
            .records
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(ids, ["live", "never"]);
        assert_eq!(data.collections[0].modified, Timestamp(300));
        assert_eq!(check(&data).unwrap(), 2);
    }

    #[test]
    fn passwords_never_show_in_messages() {
        let url = "mysqll://sync:s3cr%40t@db.example:3306/sync";
        assert_eq!(redact(url), "mysqll://sync:***@db.example:3306/sync");
        assert_eq!(
            scrub("access denied for sync with s3cr@t", url),
            "access denied for sync with ***"
        );
        assert_eq!(redact("postgres://a:b/c@h/db"), "postgres://a:***@h/db");
        // Mistyped schemes and password parameters (a second review).
        assert_eq!(redact("postgres:/u:s3cret@h/db"), "postgres:/u:***@h/db");
        assert_eq!(redact("mysql:u:s3cret@h/db"), "mysql:u:***@h/db");
        assert_eq!(
            redact("postgress://h/db?user=u&password=s3cret&sslmode=require"),
            "postgress://h/db?user=u&password=***&sslmode=require"
        );
        for plain in [
            "sqlite:///var/db.sqlite",
            "postgres://sync@h/db",
            "mysql://h/db",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn syncstorage_rs_never_is_its_default_ttl_after_the_write() {
        let modified = 1_796_636_462_930;
        assert!(rust_never(modified, modified + 2_100_000_000_000));
        assert!(!rust_never(modified, modified + 31_536_000_000));
    }
}
