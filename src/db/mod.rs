//! The SQL layer of the two databases several processes may share: the tokenserver's
//! assignments and the accounts. Each is a SQLite file in the data dir by default, or
//! PostgreSQL when a `postgres://` URL is given. Both backends speak through one small
//! interface ([`Tx`]) over one value type ([`Value`]), so the SQL of each database is
//! written once, in the dialect both understand (`ON CONFLICT`, `RETURNING`, `CAST`),
//! with numbered placeholders (`?1`, rewritten as `$1` for PostgreSQL).
//!
//! * `value.rs`: [`Value`], [`Row`] and the `args!` macro.
//! * `sqlite.rs`: the SQLite transaction, pool and migration helpers (columns added to an
//!   older file, a table rebuilt from its current definition).
//! * `postgres.rs`: the PostgreSQL transaction and pool ([`PgPool`]), which creates the
//!   schema under an advisory lock (TLS as the URL's `sslmode` says, see [`crate::pg`]).
//! * here: [`DbError`], [`Tx`] and [`Pool`], either backend's pool.
//!
//! The per-user storage databases are another thing (`crate::storage`).

use std::sync::Arc;

mod postgres;
mod sqlite;
mod value;

pub use postgres::PgPool;
pub use sqlite::{
    SqliteOptions, add_missing_columns, rebuild_table, stored_definition, table_definition,
};
pub(crate) use value::args;
pub use value::{Row, Value};

use crate::pg::PgError;

/// Errors of the SQL layer, either backend.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {}", crate::pg::message(.0))]
    Postgres(#[from] ::postgres::Error),
    /// No connection could be had.
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A value of an unexpected type came back (the column is named).
    #[error("unexpected column type in {0}")]
    Type(String),
    /// Something else went wrong (said how).
    #[error("{0}")]
    Other(String),
    /// Creating the database's folder or file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The URL or its TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error(transparent)]
    Url(#[from] PgError),
}

/// Whether `url` names a PostgreSQL database (else: SQLite in the data dir).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// One open transaction of either backend.
pub trait Tx {
    /// Runs a query and returns its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs a statement and returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Serializes the holders of `key` until the transaction ends (PostgreSQL: an
    /// advisory lock; SQLite write transactions are exclusive already).
    fn lock(&mut self, key: i64) -> Result<(), DbError>;
    /// As [`Tx::lock`], for a text key (PostgreSQL hashes it with `hashtext`).
    fn lock_key(&mut self, key: &str) -> Result<(), DbError>;
}

/// The first row of a query, if any.
pub fn one(tx: &mut dyn Tx, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
    Ok(tx.query(sql, args)?.into_iter().next())
}

/// A pool of connections to one database of either backend. Cheap to clone. Blocking:
/// use from the blocking pool or the CLI. May be dropped anywhere, a tokio worker too.
#[derive(Clone)]
pub enum Pool {
    /// A SQLite file (one process).
    Sqlite(r2d2::Pool<r2d2_sqlite::SqliteConnectionManager>),
    /// A PostgreSQL database (shared by several processes).
    Postgres(Arc<PgPool>),
}

impl Pool {
    /// Which backend this is, for logs and `node_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Whether the database is PostgreSQL (shared by several processes).
    pub fn is_postgres(&self) -> bool {
        matches!(self, Pool::Postgres(_))
    }

    /// Runs `f` in one write transaction (SQLite takes the write lock at once),
    /// committed only if `f` succeeds.
    pub fn transaction<T, E>(&self, f: impl FnOnce(&mut dyn Tx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        self.transaction_with(true, |tx| Ok((f(tx)?, true)))
    }

    /// Runs `f` in one transaction, committed when it returns `Ok((_, true))`, rolled
    /// back otherwise. A `write` transaction takes SQLite's write lock at once; a read
    /// one when it first writes, if ever (PostgreSQL: the same either way).
    pub fn transaction_with<T, E>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<(T, bool), E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match self {
            Pool::Sqlite(pool) => sqlite::transaction(pool, write, f),
            Pool::Postgres(pool) => pool.transaction(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            file: "t.sqlite",
            pragmas: "PRAGMA journal_mode=WAL;",
        };
        let pool = Pool::sqlite(dir.path(), &options, |c| {
            Ok(c.execute_batch(
                "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB, n INTEGER)",
            )?)
        })
        .unwrap();
        (dir, pool)
    }

    fn count(pool: &Pool) -> i64 {
        pool.transaction(|tx| one(tx, "SELECT count(*) FROM t", &[])?.unwrap().int(0))
            .unwrap()
    }

    #[test]
    fn a_transaction_commits_only_when_asked() {
        let (_dir, pool) = sqlite();
        assert_eq!(pool.kind(), "sqlite");
        assert!(!pool.is_postgres());
        let insert = |tx: &mut dyn Tx, k: &str| {
            tx.execute(
                "INSERT INTO t (k, v, n) VALUES (?1, ?2, ?3)",
                &args![k, &[7u8; 32], None::<i64>],
            )
        };
        pool.transaction_with(false, |tx| Ok::<_, DbError>((insert(tx, "a")?, false)))
            .unwrap();
        assert_eq!(count(&pool), 0, "rolled back");
        let failed: Result<(), DbError> = pool.transaction(|tx| {
            insert(tx, "b")?;
            Err(DbError::Other("no".into()))
        });
        assert!(failed.is_err());
        assert_eq!(count(&pool), 0, "rolled back on error");
        pool.transaction(|tx| insert(tx, "c")).unwrap();
        let row = pool
            .transaction(|tx| one(tx, "SELECT k, v, n FROM t", &[]))
            .unwrap()
            .unwrap();
        assert_eq!(row.text(0).unwrap(), "c");
        assert_eq!(row.b32(1).unwrap(), [7; 32]);
        assert_eq!(row.opt_int(2).unwrap(), None);
    }

    #[test]
    fn postgres_urls_are_told_apart() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url(""));
        assert!(!is_postgres_url("sqlite:///x"));
    }
}
