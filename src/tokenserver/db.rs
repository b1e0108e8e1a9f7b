//! The assignment database: SQLite in the data dir by default, PostgreSQL when shared
//! by several tokenservers. Both speak through one small interface (`SqlTx`), so the
//! assignment logic and its SQL are written once; numbered placeholders (`?1`) are
//! rewritten for PostgreSQL (`$1`).
//!
//! PostgreSQL connections honour libpq's `sslmode` and `sslrootcert` URL parameters
//! (TLS through rustls; see [`crate::pg`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::pg::{self, PgError};
use postgres::types::{ToSql, Type};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::TransactionBehavior;
use tokio_postgres_rustls::MakeRustlsConnect;

const SQLITE_SCHEMA: &str = include_str!("../../schema/tokenserver_sqlite.sql");
const POSTGRES_SCHEMA: &str = include_str!("../../schema/tokenserver_postgres.sql");

/// Errors of the assignment database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {}", crate::pg::message(.0))]
    Postgres(#[from] postgres::Error),
    /// No connection could be had.
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A value of an unexpected type came back.
    #[error("unexpected column type in {0}")]
    Type(String),
    /// Creating the database's folder failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The URL or its TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error(transparent)]
    Url(#[from] PgError),
}

/// A SQL value as both backends exchange it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// NULL.
    Null,
    /// An integer (also used for booleans).
    Int(i64),
    /// Text.
    Text(String),
}

impl Val {
    /// The integer, or an error naming `what`.
    pub fn int(&self, what: &str) -> Result<i64, DbError> {
        match self {
            Val::Int(i) => Ok(*i),
            _ => Err(DbError::Type(what.into())),
        }
    }

    /// The integer or `None` for NULL.
    pub fn opt_int(&self, what: &str) -> Result<Option<i64>, DbError> {
        match self {
            Val::Null => Ok(None),
            v => v.int(what).map(Some),
        }
    }

    /// The text, or an error naming `what`.
    pub fn text(&self, what: &str) -> Result<String, DbError> {
        match self {
            Val::Text(s) => Ok(s.clone()),
            _ => Err(DbError::Type(what.into())),
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(v as i64)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Val {
        v.map_or(Val::Null, Val::Int)
    }
}

/// One open transaction of either backend.
pub trait SqlTx {
    /// Runs a query; every row comes back as values.
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError>;
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError>;
    /// Serializes sign-ins of one FxA user until the transaction ends (PostgreSQL takes
    /// an advisory lock; SQLite transactions are already exclusive).
    fn lock_key(&mut self, key: &str) -> Result<(), DbError>;
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl SqlTx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get::<_, rusqlite::types::Value>(i)? {
                    rusqlite::types::Value::Integer(v) => Val::Int(v),
                    rusqlite::types::Value::Text(t) => Val::Text(t),
                    rusqlite::types::Value::Real(f) => Val::Int(f as i64),
                    _ => Val::Null,
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        Ok(self.0.prepare_cached(sql)?.execute(params)? as u64)
    }

    fn lock_key(&mut self, _key: &str) -> Result<(), DbError> {
        Ok(())
    }
}

fn to_sqlite(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Null => rusqlite::types::Value::Null,
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

struct PgTx<'a>(postgres::Transaction<'a>);

/// Rewrites `?1` placeholders as PostgreSQL's `$1`.
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_args(args: &[Val]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Val::Null => Box::new(None::<i64>),
                Val::Int(i) => Box::new(*i),
                Val::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

impl SqlTx for PgTx<'_> {
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.0.query(pg_sql(sql).as_str(), &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                row.push(if *ty == Type::INT8 {
                    r.get::<_, Option<i64>>(i).map_or(Val::Null, Val::Int)
                } else if *ty == Type::INT4 {
                    r.get::<_, Option<i32>>(i)
                        .map_or(Val::Null, |v| Val::Int(v.into()))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    r.get::<_, Option<String>>(i).map_or(Val::Null, Val::Text)
                } else if *ty == Type::NUMERIC || *ty == Type::FLOAT8 {
                    return Err(DbError::Type(format!("{} ({ty})", col.name())));
                } else {
                    Val::Null
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        Ok(self.0.execute(pg_sql(sql).as_str(), &refs)?)
    }

    fn lock_key(&mut self, key: &str) -> Result<(), DbError> {
        self.0
            .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
        Ok(())
    }
}

type PgManager = PostgresConnectionManager<MakeRustlsConnect>;

/// The PostgreSQL pool. The `postgres` crate's blocking client runs its own small
/// runtime to close a connection, which panics ("Cannot start a runtime from within a
/// runtime") on a tokio worker thread; the last handle of the pool may well be dropped
/// there (when the server's state goes at shutdown), so the pool is closed on a thread
/// of its own then.
pub struct PgPool(Option<r2d2::Pool<PgManager>>);

/// Whether `url` names a PostgreSQL database (else: SQLite in the data dir).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgPool {
    /// Connects to `url` (TLS as its `sslmode` says) and creates `schema` (idempotent
    /// statements) under the advisory lock `lock`, as several processes may start at once.
    pub fn connect(url: &str, schema: &str, lock: i64) -> Result<PgPool, DbError> {
        let (config, tls) = pg::connector(url)?;
        // A first connection of its own, so that a wrong URL, password or
        // certificate is reported at once (the pool would retry for 10 s).
        let mut client = config.connect(tls.clone())?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])?;
        tx.batch_execute(schema)?;
        tx.commit()?;
        drop(client);
        let manager = PostgresConnectionManager::new(config, tls);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)?;
        Ok(PgPool(Some(pool)))
    }

    /// A connection of the pool.
    pub fn get(&self) -> Result<r2d2::PooledConnection<PgManager>, r2d2::Error> {
        self.0.as_ref().expect("pool present until dropped").get()
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            return drop(pool);
        }
        // Joined, so the connections are closed (the server told) before the process
        // goes on to exit.
        let closed = std::thread::Builder::new()
            .name("pg-pool-close".into())
            .spawn(move || drop(pool))
            .map(|t| t.join().is_ok());
        if !matches!(closed, Ok(true)) {
            tracing::warn!("closing the PostgreSQL pool failed");
        }
    }
}

/// A pool of connections to the assignment database. Cheap to clone. Blocking: use
/// from the blocking pool or the CLI. May be dropped anywhere, a tokio worker too.
#[derive(Clone)]
pub enum AssignmentDb {
    /// A SQLite file (one tokenserver process).
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    /// A PostgreSQL database (shared by several processes).
    Postgres(Arc<PgPool>),
}

impl std::fmt::Debug for AssignmentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AssignmentDb::Sqlite(_) => "AssignmentDb::Sqlite",
            AssignmentDb::Postgres(_) => "AssignmentDb::Postgres",
        })
    }
}

impl AssignmentDb {
    /// Opens (and creates the schema of) the database: `url` is a `postgres://` URL,
    /// or empty for `<data_dir>/tokenserver.sqlite`.
    pub fn open(url: &str, data_dir: &Path) -> Result<AssignmentDb, DbError> {
        if is_postgres_url(url) {
            let pool = PgPool::connect(url, POSTGRES_SCHEMA, 727274)?;
            return Ok(AssignmentDb::Postgres(Arc::new(pool)));
        }
        crate::private::create_dir(data_dir)?;
        let path = data_dir.join("tokenserver.sqlite");
        crate::private::create_file(&path)?;
        let manager = SqliteConnectionManager::file(path).with_init(|c| {
            c.execute_batch(
                "PRAGMA busy_timeout=10000; PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;",
            )
        });
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build_unchecked(manager);
        pool.get()?.execute_batch(SQLITE_SCHEMA)?;
        Ok(AssignmentDb::Sqlite(pool))
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
            .map_err(|e| E::from(DbError::Type(e.to_string())))?
    }

    /// Checks that the database answers (for heartbeats). Blocking.
    pub fn ping(&self) -> Result<(), DbError> {
        self.transaction(|tx| tx.query("SELECT 1", &[]).map(drop))
    }

    /// Which backend this is, for logs and `node_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignmentDb::Sqlite(_) => "sqlite",
            AssignmentDb::Postgres(_) => "postgres",
        }
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds.
    pub fn transaction<T, E>(&self, f: impl FnOnce(&mut dyn SqlTx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match self {
            AssignmentDb::Sqlite(pool) => {
                let mut conn = pool.get().map_err(DbError::from)?;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let mut stx = SqliteTx(tx);
                let out = f(&mut stx)?;
                stx.0.commit().map_err(DbError::from)?;
                Ok(out)
            }
            AssignmentDb::Postgres(pool) => {
                let mut client = pool.get().map_err(DbError::from)?;
                let tx = client.transaction().map_err(DbError::from)?;
                let mut ptx = PgTx(tx);
                let out = f(&mut ptx)?;
                ptx.0.commit().map_err(DbError::from)?;
                Ok(out)
            }
        }
    }
}
