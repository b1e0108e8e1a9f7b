//! PostgreSQL: the transaction behind [`Tx`] (placeholders `?1` rewritten as `$1`) and
//! the pool ([`PgPool`]), which creates its database's schema on connecting.

use std::sync::Arc;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{DbError, Pool, Row, Tx, Value};

struct PgTx<'a>(postgres::Transaction<'a>);

/// Rewrites `?1` placeholders as PostgreSQL's `$1` (no statement has a `?` elsewhere).
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_args(args: &[Value]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Value::Int(i) => Box::new(*i),
                Value::Text(t) => Box::new(t.clone()),
                Value::Blob(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

impl Tx for PgTx<'_> {
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.0.query(pg_sql(sql).as_str(), &refs)?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = first.columns().iter().map(|c| c.name().into()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                row.push(if *ty == Type::INT8 {
                    Value::Int(r.get::<_, Option<i64>>(i))
                } else if *ty == Type::INT4 {
                    Value::Int(r.get::<_, Option<i32>>(i).map(i64::from))
                } else if *ty == Type::BOOL {
                    Value::Int(r.get::<_, Option<bool>>(i).map(i64::from))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    Value::Text(r.get::<_, Option<String>>(i))
                } else if *ty == Type::BYTEA {
                    Value::Blob(r.get::<_, Option<Vec<u8>>>(i))
                } else {
                    return Err(DbError::Type(format!("{} ({ty})", col.name())));
                });
            }
            out.push(Row::new(row, columns.clone()));
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        Ok(self.0.execute(pg_sql(sql).as_str(), &refs)?)
    }

    fn lock(&mut self, key: i64) -> Result<(), DbError> {
        self.0
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        Ok(())
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

impl PgPool {
    /// Connects to `url` (TLS as its `sslmode` says) and creates `schema` (idempotent
    /// statements) under the advisory lock `lock`, as several processes may start at once.
    pub fn connect(url: &str, schema: &str, lock: i64) -> Result<PgPool, DbError> {
        let (config, tls) = crate::pg::connector(url)?;
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

    /// See [`Pool::transaction_with`] (read or write is the same here).
    pub(super) fn transaction<T, E>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<(T, bool), E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut client = self.get().map_err(DbError::from)?;
        let tx = client.transaction().map_err(DbError::from)?;
        let mut tx = PgTx(tx);
        let (out, commit) = f(&mut tx)?;
        if commit {
            tx.0.commit().map_err(DbError::from)?;
        }
        Ok(out)
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

impl Pool {
    /// Connects to the PostgreSQL database at `url`, creating `schema` under the
    /// advisory lock `lock` (see [`PgPool::connect`]).
    pub fn postgres(url: &str, schema: &str, lock: i64) -> Result<Pool, DbError> {
        Ok(Pool::Postgres(Arc::new(PgPool::connect(
            url, schema, lock,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_with_dollars() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
    }
}

/// Against a real PostgreSQL (`SYNCSTORE_TEST_POSTGRES_URL`, as `scripts/test` sets),
/// in a temporary table: typed NULLs are accepted for their columns, every column type
/// the databases use comes back as its value, and a locked transaction commits.
#[cfg(test)]
mod live_tests {
    use super::*;
    use crate::db::{args, one};

    #[test]
    fn values_round_trip_through_postgres() {
        let Ok(url) = std::env::var("SYNCSTORE_TEST_POSTGRES_URL") else {
            eprintln!("SYNCSTORE_TEST_POSTGRES_URL is not set: not run on PostgreSQL");
            return;
        };
        let pool = Pool::postgres(&url, "", 727_299).unwrap();
        assert_eq!(pool.kind(), "postgres");
        let row = pool
            .transaction(|tx| {
                tx.lock(1)?;
                tx.lock_key("a key")?;
                tx.execute(
                    "CREATE TEMPORARY TABLE t (k TEXT, b BYTEA, n BIGINT, i INTEGER, f BOOLEAN)",
                    &[],
                )?;
                tx.execute(
                    "INSERT INTO t (k, b, n, i, f) VALUES (?1, ?2, ?3, 5, true)",
                    &args![None::<&str>, &None::<Vec<u8>>, None::<i64>],
                )?;
                tx.execute(
                    "INSERT INTO t (k, b, n, i, f) VALUES (?1, ?2, ?3, NULL, false)",
                    &args!["x", &[9u8; 32], 3i64],
                )?;
                one(
                    tx,
                    "SELECT k, b, n, i, f FROM t ORDER BY k NULLS FIRST",
                    &[],
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(row.opt_text(0).unwrap(), None);
        assert_eq!(row.opt_blob(1).unwrap(), None);
        assert_eq!(row.opt_int(2).unwrap(), None);
        assert_eq!(row.int(3).unwrap(), 5);
        assert!(row.bool(4).unwrap());
        let err = pool
            .transaction(|tx| tx.query("SELECT 1.5::float8 AS ratio", &[]))
            .unwrap_err();
        assert!(err.to_string().contains("ratio"), "{err}");
    }
}
