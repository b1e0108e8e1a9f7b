//! The two backends of the accounts database behind one small interface: a
//! transaction that runs SQL with numbered placeholders (`?1`, rewritten as `$1` for
//! PostgreSQL) over a handful of value types. The SQL of `Store` is written once, in
//! the dialect both understand (`ON CONFLICT`, `RETURNING`, `CAST`).

use postgres::types::{ToSql, Type};
use rusqlite::types::Value as SqliteValue;

use super::StoreError;

/// A SQL value; NULL is typed so that PostgreSQL accepts it for its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V {
    /// An integer (booleans are 0/1 in both backends).
    Int(Option<i64>),
    /// Text.
    Text(Option<String>),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Option<Vec<u8>>),
}

impl From<i64> for V {
    fn from(v: i64) -> V {
        V::Int(Some(v))
    }
}
impl From<u32> for V {
    fn from(v: u32) -> V {
        V::Int(Some(v.into()))
    }
}
impl From<bool> for V {
    fn from(v: bool) -> V {
        V::Int(Some(v.into()))
    }
}
impl From<&str> for V {
    fn from(v: &str) -> V {
        V::Text(Some(v.into()))
    }
}
impl From<&String> for V {
    fn from(v: &String) -> V {
        V::Text(Some(v.clone()))
    }
}
impl From<String> for V {
    fn from(v: String) -> V {
        V::Text(Some(v))
    }
}
impl From<Option<&str>> for V {
    fn from(v: Option<&str>) -> V {
        V::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for V {
    fn from(v: &Option<String>) -> V {
        V::Text(v.clone())
    }
}
impl From<&[u8; 32]> for V {
    fn from(v: &[u8; 32]) -> V {
        V::Blob(Some(v.to_vec()))
    }
}
impl From<&[u8]> for V {
    fn from(v: &[u8]) -> V {
        V::Blob(Some(v.to_vec()))
    }
}
impl From<&Option<Vec<u8>>> for V {
    fn from(v: &Option<Vec<u8>>) -> V {
        V::Blob(v.clone())
    }
}

/// `[V::from(a), V::from(b), ...]`, an array of values.
macro_rules! args {
    ($($e:expr),* $(,)?) => { [$(V::from($e)),*] };
}
pub(crate) use args;

fn bad(what: &str) -> StoreError {
    StoreError::Type(what.into())
}

/// One row of a result.
pub struct Row(Vec<V>);

impl Row {
    fn at(&self, i: usize) -> Result<&V, StoreError> {
        self.0.get(i).ok_or_else(|| bad("missing column"))
    }

    fn is_null(&self, i: usize) -> Result<bool, StoreError> {
        Ok(matches!(
            self.at(i)?,
            V::Int(None) | V::Text(None) | V::Blob(None)
        ))
    }

    /// An integer column.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            V::Int(Some(v)) => Ok(*v),
            _ => Err(bad("expected an integer")),
        }
    }

    /// A nullable integer column.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        if self.is_null(i)? {
            return Ok(None);
        }
        self.int(i).map(Some)
    }

    /// A boolean (0/1) column.
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }

    /// A text column.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            V::Text(Some(v)) => Ok(v.clone()),
            _ => Err(bad("expected text")),
        }
    }

    /// A nullable text column.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        if self.is_null(i)? {
            return Ok(None);
        }
        self.text(i).map(Some)
    }

    /// A nullable bytes column.
    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.at(i)? {
            V::Blob(Some(v)) => Ok(Some(v.clone())),
            _ if self.is_null(i)? => Ok(None),
            _ => Err(bad("expected bytes")),
        }
    }

    /// A bytes column.
    pub fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.opt_blob(i)?.ok_or_else(|| bad("expected bytes"))
    }

    /// A 32-byte column (hashes, keys).
    pub fn b32(&self, i: usize) -> Result<[u8; 32], StoreError> {
        self.blob(i)?
            .try_into()
            .map_err(|_| bad("expected 32 bytes"))
    }
}

/// One open transaction of either backend.
pub trait Tx {
    /// Runs a query and returns its rows.
    fn query(&mut self, sql: &str, args: &[V]) -> Result<Vec<Row>, StoreError>;
    /// Runs a statement and returns how many rows it changed.
    fn exec(&mut self, sql: &str, args: &[V]) -> Result<u64, StoreError>;
    /// Serializes the holders of `key` until the transaction ends (PostgreSQL: an
    /// advisory lock; SQLite write transactions are exclusive already).
    fn lock(&mut self, key: i64) -> Result<(), StoreError>;
}

/// The first row of a query, if any.
pub fn one(tx: &mut dyn Tx, sql: &str, args: &[V]) -> Result<Option<Row>, StoreError> {
    Ok(tx.query(sql, args)?.into_iter().next())
}

pub struct SqliteTx<'a>(pub rusqlite::Transaction<'a>);

fn to_sqlite(v: &V) -> SqliteValue {
    match v {
        V::Int(Some(i)) => SqliteValue::Integer(*i),
        V::Text(Some(t)) => SqliteValue::Text(t.clone()),
        V::Blob(Some(b)) => SqliteValue::Blob(b.clone()),
        _ => SqliteValue::Null,
    }
}

impl Tx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, args: &[V]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.0.prepare_cached(sql)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(args.iter().map(to_sqlite)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get::<_, SqliteValue>(i)? {
                    SqliteValue::Integer(v) => V::Int(Some(v)),
                    SqliteValue::Text(t) => V::Text(Some(t)),
                    SqliteValue::Blob(b) => V::Blob(Some(b)),
                    SqliteValue::Real(_) => return Err(bad("unexpected real")),
                    SqliteValue::Null => V::Int(None),
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, args: &[V]) -> Result<u64, StoreError> {
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        Ok(self.0.prepare_cached(sql)?.execute(params)? as u64)
    }

    fn lock(&mut self, _key: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

pub struct PgTx<'a>(pub postgres::Transaction<'a>);

fn pg_args(args: &[V]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                V::Int(i) => Box::new(*i),
                V::Text(t) => Box::new(t.clone()),
                V::Blob(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

/// `?1` → `$1` (no statement here has a `?` elsewhere).
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

impl Tx for PgTx<'_> {
    fn query(&mut self, sql: &str, args: &[V]) -> Result<Vec<Row>, StoreError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.0.query(pg_sql(sql).as_str(), &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                row.push(if *ty == Type::INT8 {
                    V::Int(r.get::<_, Option<i64>>(i))
                } else if *ty == Type::INT4 {
                    V::Int(r.get::<_, Option<i32>>(i).map(i64::from))
                } else if *ty == Type::BOOL {
                    V::Int(r.get::<_, Option<bool>>(i).map(i64::from))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    V::Text(r.get::<_, Option<String>>(i))
                } else if *ty == Type::BYTEA {
                    V::Blob(r.get::<_, Option<Vec<u8>>>(i))
                } else {
                    return Err(StoreError::Type(format!("{} ({ty})", col.name())));
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, args: &[V]) -> Result<u64, StoreError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        Ok(self.0.execute(pg_sql(sql).as_str(), &refs)?)
    }

    fn lock(&mut self, key: i64) -> Result<(), StoreError> {
        self.0
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
        Ok(())
    }
}
