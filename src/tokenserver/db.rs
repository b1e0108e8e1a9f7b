//! The assignment database: SQLite in the data dir by default, PostgreSQL when shared
//! by several tokenservers. Both speak through the SQL layer ([`crate::db`]), so the
//! assignment logic and its SQL (`store.rs`) are written once; the schema is
//! `schema/tokenserver_sqlite.sql` and `schema/tokenserver_postgres.sql`.
//!
//! PostgreSQL connections honour libpq's `sslmode` and `sslrootcert` URL parameters
//! (TLS through rustls; see [`crate::pg`]).

use std::path::Path;

use crate::db::{Pool, SqliteOptions, is_postgres_url};

/// The SQL layer's error and transaction, under the names the assignment logic and
/// its callers (`syncstore::tokenserver::db::{DbError, SqlTx}`) use.
pub use crate::db::{DbError, Tx as SqlTx};

const SQLITE_SCHEMA: &str = include_str!("../../schema/tokenserver_sqlite.sql");
const POSTGRES_SCHEMA: &str = include_str!("../../schema/tokenserver_postgres.sql");

/// Columns added since the first schema, added to older SQLite files on open as
/// `(table, column, definition)` (PostgreSQL's schema adds its own, `ADD COLUMN IF NOT
/// EXISTS`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("nodes", "paused_at", "INTEGER"),
    ("nodes", "pause_reason", "TEXT"),
    ("nodes", "suspect_since", "INTEGER"),
    ("nodes", "suspect_reason", "TEXT"),
];

/// The advisory lock under which the PostgreSQL tables are created.
const PG_SCHEMA_LOCK: i64 = 727_274;

/// A pool of connections to the assignment database. Cheap to clone. Blocking: use
/// from the blocking pool or the CLI. May be dropped anywhere, a tokio worker too.
#[derive(Clone)]
pub struct AssignmentDb(Pool);

impl std::fmt::Debug for AssignmentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Pool::Sqlite(_) => "AssignmentDb::Sqlite",
            Pool::Postgres(_) => "AssignmentDb::Postgres",
        })
    }
}

impl AssignmentDb {
    /// Opens (and creates the schema of) the database: `url` is a `postgres://` URL,
    /// or empty for `<data_dir>/tokenserver.sqlite`.
    pub fn open(url: &str, data_dir: &Path) -> Result<AssignmentDb, DbError> {
        if is_postgres_url(url) {
            return Ok(AssignmentDb(Pool::postgres(
                url,
                POSTGRES_SCHEMA,
                PG_SCHEMA_LOCK,
            )?));
        }
        let options = SqliteOptions {
            file: "tokenserver.sqlite",
            pragmas: "PRAGMA busy_timeout=10000; PRAGMA journal_mode=WAL; \
                      PRAGMA foreign_keys=ON;",
        };
        let pool = Pool::sqlite(data_dir, &options, |c| {
            crate::db::add_missing_columns(c, ADDED_COLUMNS)?;
            Ok(c.execute_batch(SQLITE_SCHEMA)?)
        })?;
        Ok(AssignmentDb(pool))
    }

    /// Runs `f` in one transaction on the blocking pool (for async callers).
    pub async fn run<T, E>(
        &self,
        f: impl FnOnce(&mut dyn SqlTx) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.transaction(f))
            .await
            .map_err(|e| E::from(DbError::Other(e.to_string())))?
    }

    /// Checks that the database answers (for heartbeats). Blocking.
    pub fn ping(&self) -> Result<(), DbError> {
        self.transaction(|tx| tx.query("SELECT 1", &[]).map(drop))
    }

    /// Which backend this is, for logs and `node_type`.
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds.
    pub fn transaction<T, E>(&self, f: impl FnOnce(&mut dyn SqlTx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        self.0.transaction(f)
    }
}
