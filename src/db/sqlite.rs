//! SQLite: the transaction behind [`Tx`], the pool of a file in the data dir, and the
//! helpers that upgrade an older file on open (columns added since, a table rebuilt as
//! its current definition says).

use std::path::Path;
use std::sync::Arc;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::Value as SqliteValue;
use rusqlite::{OptionalExtension, TransactionBehavior};

use super::{DbError, Pool, Row, Tx, Value};

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

fn to_sqlite(v: &Value) -> SqliteValue {
    match v {
        Value::Int(Some(i)) => SqliteValue::Integer(*i),
        Value::Text(Some(t)) => SqliteValue::Text(t.clone()),
        Value::Blob(Some(b)) => SqliteValue::Blob(b.clone()),
        _ => SqliteValue::Null,
    }
}

impl Tx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut st = self.0.prepare_cached(sql)?;
        let columns: Arc<[String]> = st.column_names().into_iter().map(String::from).collect();
        let n = columns.len();
        let mut rows = st.query(rusqlite::params_from_iter(args.iter().map(to_sqlite)))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get::<_, SqliteValue>(i)? {
                    SqliteValue::Integer(v) => Value::Int(Some(v)),
                    SqliteValue::Text(t) => Value::Text(Some(t)),
                    SqliteValue::Blob(b) => Value::Blob(Some(b)),
                    SqliteValue::Null => Value::Int(None),
                    SqliteValue::Real(_) => {
                        return Err(DbError::Type(format!("{} (a real)", columns[i])));
                    }
                });
            }
            out.push(Row::new(row, columns.clone()));
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError> {
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        Ok(self.0.prepare_cached(sql)?.execute(params)? as u64)
    }

    fn lock(&mut self, _key: i64) -> Result<(), DbError> {
        Ok(())
    }

    fn lock_key(&mut self, _key: &str) -> Result<(), DbError> {
        Ok(())
    }
}

/// See [`Pool::transaction_with`].
pub(super) fn transaction<T, E>(
    pool: &r2d2::Pool<SqliteConnectionManager>,
    write: bool,
    f: impl FnOnce(&mut dyn Tx) -> Result<(T, bool), E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    let mut c = pool.get().map_err(DbError::from)?;
    let behavior = if write {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let tx = c
        .transaction_with_behavior(behavior)
        .map_err(DbError::from)?;
    let mut tx = SqliteTx(tx);
    let (out, commit) = f(&mut tx)?;
    if commit {
        tx.0.commit().map_err(DbError::from)?;
    }
    Ok(out)
}

/// How a SQLite database is opened.
pub struct SqliteOptions<'a> {
    /// The file's name in the data dir.
    pub file: &'a str,
    /// Run on every new connection (`PRAGMA busy_timeout=...; ...`).
    pub pragmas: &'static str,
}

impl Pool {
    /// Opens `<data_dir>/<file>` (the folder and file made readable by the owner only),
    /// and runs `setup` (migrations, then the schema) on a first connection. The pool
    /// holds at most 4 connections, made on demand: made all at once at start, they
    /// raced the set-up for the file's first lock ("database is locked").
    pub fn sqlite(
        data_dir: &Path,
        o: &SqliteOptions<'_>,
        setup: impl FnOnce(&rusqlite::Connection) -> Result<(), DbError>,
    ) -> Result<Pool, DbError> {
        crate::private::create_dir(data_dir)?;
        let path = data_dir.join(o.file);
        crate::private::create_file(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let pragmas = o.pragmas;
        let manager =
            SqliteConnectionManager::file(path).with_init(move |c| c.execute_batch(pragmas));
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build_unchecked(manager);
        setup(&*pool.get()?)?;
        Ok(Pool::Sqlite(pool))
    }
}

/// Adds to an older file the columns added to its tables since, as `(table, column,
/// definition)`; a table that does not exist yet is left to the schema.
pub fn add_missing_columns(
    c: &rusqlite::Connection,
    columns: &[(&str, &str, &str)],
) -> Result<(), DbError> {
    for (table, column, definition) in columns {
        let present: Vec<String> = c
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !present.is_empty() && !present.iter().any(|p| p == column) {
            c.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// The definition (`(col TYPE ..., ...)`) of `table` in `schema`, as written in its
/// `CREATE TABLE IF NOT EXISTS table (...)` statement.
pub fn table_definition<'a>(schema: &'a str, table: &str) -> Option<&'a str> {
    let head = format!("CREATE TABLE IF NOT EXISTS {table} (");
    let start = schema.find(&head)? + head.len() - 1;
    let len = schema[start..].find(");")? + 1;
    Some(&schema[start..start + len])
}

/// The `CREATE TABLE` text of `table` as the file holds it, or None: no such table.
pub fn stored_definition(c: &rusqlite::Connection, table: &str) -> Result<Option<String>, DbError> {
    Ok(c.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .optional()?)
}

/// Rebuilds `table` as `definition` says (SQLite cannot drop a constraint in place):
/// a new table made, the rows copied (the columns of the new table, which the old
/// must have), the old one dropped and the new renamed, in one transaction, with the
/// foreign keys off meanwhile (so that dropping the old table deletes nothing that
/// refers to it).
pub fn rebuild_table(
    c: &rusqlite::Connection,
    table: &str,
    definition: &str,
) -> Result<(), DbError> {
    let rebuilt = format!("{table}_rebuilt");
    c.execute_batch("PRAGMA foreign_keys=OFF")?;
    let done = (|| -> Result<(), DbError> {
        c.execute_batch("BEGIN IMMEDIATE")?;
        c.execute_batch(&format!("CREATE TABLE {rebuilt} {definition}"))?;
        let columns: Vec<String> = c
            .prepare(&format!("SELECT name FROM pragma_table_info('{rebuilt}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let columns = columns.join(", ");
        c.execute_batch(&format!(
            "INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {table}; \
             DROP TABLE {table}; ALTER TABLE {rebuilt} RENAME TO {table}; COMMIT;"
        ))?;
        Ok(())
    })();
    if done.is_err() {
        let _ = c.execute_batch("ROLLBACK");
    }
    c.execute_batch("PRAGMA foreign_keys=ON")?;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS parent (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    added INTEGER NOT NULL DEFAULT 7
);
CREATE TABLE IF NOT EXISTS child (
    id TEXT NOT NULL REFERENCES parent(id) ON DELETE CASCADE
);
";

    #[test]
    fn definitions_are_found_in_the_schema() {
        let d = table_definition(SCHEMA, "parent").unwrap();
        assert!(d.starts_with("(\n    id TEXT PRIMARY KEY"), "{d}");
        assert!(d.ends_with("DEFAULT 7\n)"), "{d}");
        assert!(
            table_definition(SCHEMA, "child")
                .unwrap()
                .contains("REFERENCES")
        );
        assert_eq!(table_definition(SCHEMA, "nope"), None);
    }

    #[test]
    fn an_old_table_gains_columns_and_is_rebuilt_keeping_its_rows() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys=ON;
             CREATE TABLE parent (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE child (id TEXT NOT NULL REFERENCES parent(id) ON DELETE CASCADE);
             INSERT INTO parent VALUES ('a', 'x'); INSERT INTO child VALUES ('a');",
        )
        .unwrap();
        let added = [
            ("parent", "added", "INTEGER NOT NULL DEFAULT 7"),
            ("gone", "x", "TEXT"),
        ];
        add_missing_columns(&c, &added).unwrap();
        add_missing_columns(&c, &added).unwrap();
        rebuild_table(&c, "parent", table_definition(SCHEMA, "parent").unwrap()).unwrap();
        let sql = stored_definition(&c, "parent").unwrap().unwrap();
        assert!(!sql.contains("UNIQUE"), "{sql}");
        c.execute("INSERT INTO parent (id, name) VALUES ('b', 'x')", [])
            .unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM parent p JOIN child c ON c.id = p.id WHERE p.added = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(stored_definition(&c, "gone").unwrap(), None);
    }
}
