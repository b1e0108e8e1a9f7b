//! The per-user schema: the SQL steps in `schema/user*.sql`, version by version, and
//! the migration that brings a file to the current version (`PRAGMA user_version`).
//! Used by the connection manager (every connection and the new-user template) and by
//! `schema_check` (what a file of each version must hold).

use rusqlite::Connection;

use super::queries;

/// The per-user schema, version by version: entry `i` takes a file from version `i`
/// to `i + 1`.
pub(super) const USER_SCHEMA: [&str; 5] = [
    include_str!("../../schema/user.sql"),
    include_str!("../../schema/user_v2.sql"),
    include_str!("../../schema/user_v3.sql"),
    include_str!("../../schema/user_v4.sql"),
    include_str!("../../schema/user_v5.sql"),
];
/// The schema version written to `PRAGMA user_version` after migration.
pub const USER_SCHEMA_VERSION: i64 = USER_SCHEMA.len() as i64;

/// Brings a user file to the current schema; a no-op read of `user_version` when warm.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == USER_SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let result = match usize::try_from(version) {
        Ok(from) if from <= USER_SCHEMA.len() => upgrade(conn, from),
        // A newer schema than this binary knows: refuse rather than damage it.
        _ => Err(rusqlite::Error::InvalidQuery),
    };
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Takes a file from schema version `from` to the current one, inside migrate's
/// transaction. `from` may already be current: another connection can finish the
/// migration between migrate's first look and its transaction.
fn upgrade(conn: &Connection, from: usize) -> rusqlite::Result<()> {
    for step in &USER_SCHEMA[from..] {
        conn.execute_batch(step)?;
    }
    // Version 5's step for open batches, in Rust: their expiry goes to milliseconds
    // too (the table may be missing from version 4 on).
    if from < 5 {
        queries::batch_expiry_to_millis(conn)?;
    }
    // Version 4's step, in Rust: the batch table (every version 3 file has it) goes
    // unless a batch is open. From version 4 on, the table is there only with a batch.
    if from < 4 {
        queries::drop_batch_table_if_empty(conn)?;
    }
    conn.execute_batch(&format!("PRAGMA user_version = {USER_SCHEMA_VERSION};"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::OptionalExtension;

    /// The batch table the storage code creates when a batch starts is the one the
    /// version 3 migration created (a user's file is the same whichever made it), and
    /// it goes with the user's last batch.
    #[test]
    fn batch_table_comes_and_goes_as_version_three_made_it() {
        let sql_of = |conn: &Connection| -> Option<String> {
            conn.query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'batch_items'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
        };
        let v3 = Connection::open_in_memory().unwrap();
        for step in &USER_SCHEMA[..3] {
            v3.execute_batch(step).unwrap();
        }
        let mut now = Connection::open_in_memory().unwrap();
        migrate(&now).unwrap();
        assert_eq!(sql_of(&now), None, "no batch, no table");
        let tx = now.transaction().unwrap();
        queries::create_batch(&tx, "b1", "bookmarks", i64::MAX).unwrap();
        queries::create_batch(&tx, "b2", "bookmarks", i64::MAX).unwrap();
        assert_eq!(sql_of(&tx), sql_of(&v3));
        queries::delete_batch(&tx, "b1").unwrap();
        assert!(sql_of(&tx).is_some(), "b2 is still open");
        queries::delete_batch(&tx, "b2").unwrap();
        assert_eq!(sql_of(&tx), None);
    }

    /// A migration that finds the file already current once it holds the write lock
    /// (another connection migrated it meanwhile) leaves it as it is.
    #[test]
    fn upgrading_a_current_file_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        upgrade(&conn, USER_SCHEMA.len()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, USER_SCHEMA_VERSION);
    }
}
