//! Checks of user files that come from outside this node (a copy received in a move,
//! a file given to `user import`) before they are installed: a file is accepted only
//! if it is sound and its schema is exactly the one our own code gives a file of its
//! version, nothing more (no extra trigger, view, index or table) and nothing less.
//!
//! The file is opened with SQLite's defensive mode on, `trusted_schema` off, and
//! triggers and views disabled, so that nothing in it runs while it is looked at.

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::StorageError;
use super::queries;
use super::schema::{USER_SCHEMA, USER_SCHEMA_VERSION};

/// One row of `sqlite_schema`: type, name, table name and SQL (rootpage left out).
type SchemaRow = (String, String, String, Option<String>);

/// What a checked file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedFile {
    /// Its schema version (`PRAGMA user_version`), 1 to the current one.
    pub version: i64,
    /// Records in it.
    pub records: i64,
}

/// Opens a connection to a file from outside with every safety SQLite offers on:
/// defensive mode (no writes to the schema, no corruption-prone PRAGMAs), schema
/// objects untrusted (no functions with side effects from views or triggers),
/// triggers and views off.
pub fn open_untrusted(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    conn.execute_batch("PRAGMA trusted_schema = OFF;")?;
    Ok(conn)
}

fn schema_of(conn: &Connection) -> rusqlite::Result<Vec<SchemaRow>> {
    let mut rows: Vec<SchemaRow> = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.sort();
    Ok(rows)
}

/// The schema our code gives a file of `version`, and (for versions whose batch table
/// exists only while a batch is open) that table's rows, which may be there or not.
fn template(version: i64) -> rusqlite::Result<(Vec<SchemaRow>, Vec<SchemaRow>)> {
    let conn = Connection::open_in_memory()?;
    let steps = usize::try_from(version).unwrap_or(0).min(USER_SCHEMA.len());
    for step in &USER_SCHEMA[..steps] {
        conn.execute_batch(step)?;
    }
    if version < 4 {
        return Ok((schema_of(&conn)?, Vec::new()));
    }
    // From version 4 on, batch_items is there exactly while a batch is open.
    queries::drop_batch_table_if_empty(&conn)?;
    let base = schema_of(&conn)?;
    conn.execute_batch(queries::BATCH_TABLE)?;
    let optional = schema_of(&conn)?
        .into_iter()
        .filter(|r| !base.contains(r))
        .collect();
    Ok((base, optional))
}

/// Checks the user file at `path` (see the module doc); `uid` names it in errors.
/// Refuses, with a message saying why, a file that is not a sound user file of a
/// version this binary knows with exactly that version's schema.
pub fn check_user_file(path: &Path, uid: u64) -> Result<CheckedFile, StorageError> {
    let sql = |e| StorageError::from_sqlite(uid, e);
    let refuse = |why: String| StorageError::Invalid(format!("user file {uid} refused: {why}"));
    let conn = open_untrusted(path).map_err(|e| refuse(format!("not a SQLite file ({e})")))?;
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| refuse(format!("unreadable ({e})")))?;
    if ok != "ok" {
        return Err(refuse(format!("integrity check failed: {ok}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if !(1..=USER_SCHEMA_VERSION).contains(&version) {
        return Err(refuse(format!(
            "schema version {version} (this binary knows 1 to {USER_SCHEMA_VERSION})"
        )));
    }
    let (base, optional) = template(version).map_err(sql)?;
    let mut found = schema_of(&conn).map_err(|e| refuse(format!("unreadable schema ({e})")))?;
    if !optional.is_empty() && optional.iter().all(|r| found.contains(r)) {
        found.retain(|r| !optional.contains(r));
    }
    if found != base {
        let extra: Vec<&str> = found
            .iter()
            .filter(|r| !base.contains(r))
            .map(|r| r.1.as_str())
            .collect();
        let missing: Vec<&str> = base
            .iter()
            .filter(|r| !found.contains(r))
            .map(|r| r.1.as_str())
            .collect();
        return Err(refuse(format!(
            "its schema is not version {version}'s (unexpected: {extra:?}; missing or \
             different: {missing:?})"
        )));
    }
    let records = conn
        .query_row("SELECT count(*) FROM bso", [], |r| r.get(0))
        .map_err(sql)?;
    Ok(CheckedFile { version, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, name: &str, sql: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        path
    }

    #[test]
    fn every_version_our_code_makes_passes_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for v in 1..=USER_SCHEMA_VERSION {
            let mut sql: String = USER_SCHEMA[..v as usize].concat();
            if v >= 4 {
                sql.push_str("DROP TABLE batch_items;");
            }
            sql.push_str(&format!("PRAGMA user_version = {v};"));
            let path = file_with(dir.path(), &format!("v{v}.sqlite"), &sql);
            assert_eq!(check_user_file(&path, 1).unwrap().version, v);
        }
        // Versions 4 and 5 with a batch open.
        for v in 4..=5 {
            let mut sql: String = USER_SCHEMA[..v].concat();
            sql.push_str(&format!("PRAGMA user_version = {v};"));
            let path = file_with(dir.path(), &format!("v{v}batch.sqlite"), &sql);
            assert_eq!(check_user_file(&path, 1).unwrap().version, v as i64);
        }
        assert_eq!(USER_SCHEMA_VERSION, 5, "cover the new version above");

        let bare = file_with(
            dir.path(),
            "bare.sqlite",
            "CREATE TABLE bso(x); PRAGMA user_version = 4;",
        );
        assert!(check_user_file(&bare, 1).is_err());
        let mut sql: String = USER_SCHEMA.concat();
        sql.push_str(
            "DROP TABLE batch_items; CREATE TRIGGER t AFTER INSERT ON bso BEGIN \
             UPDATE bso SET payload = 'x'; END; PRAGMA user_version = 5;",
        );
        let trigger = file_with(dir.path(), "trigger.sqlite", &sql);
        let e = check_user_file(&trigger, 1).unwrap_err().to_string();
        assert!(e.contains("unexpected: [\"t\"]"), "{e}");
    }
}
