//! The accounts database's schema (`schema/accounts_sqlite.sql`,
//! `schema/accounts_postgres.sql`) and the upgrade of an older SQLite file before it
//! runs (PostgreSQL's schema upgrades its own tables, `ALTER ... IF`).

use crate::db::{self, DbError};

/// The SQLite schema (idempotent: run at every open).
pub(super) const SQLITE_SCHEMA: &str = include_str!("../../../schema/accounts_sqlite.sql");
/// The PostgreSQL schema (idempotent: run at every start, under [`PG_SCHEMA_LOCK`]).
pub(super) const POSTGRES_SCHEMA: &str = include_str!("../../../schema/accounts_postgres.sql");

/// The advisory lock under which the PostgreSQL tables are created.
pub(super) const PG_SCHEMA_LOCK: i64 = 727_275;

/// Columns added after the first release, with their definitions: added to an older
/// file when it is opened. A refresh token's `auth_at` is unknown for rows from before
/// it: 0, older than any sign-in.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("accounts", "email_verified", "INTEGER NOT NULL DEFAULT 1"),
    ("refresh_tokens", "auth_at", "INTEGER NOT NULL DEFAULT 0"),
    (
        "devices",
        "push_endpoint_expired",
        "INTEGER NOT NULL DEFAULT 0",
    ),
];

/// Upgrades an older SQLite file (the columns added since; an accounts table whose
/// `normalized_email` was UNIQUE over every account is rebuilt as the schema defines
/// it now: an email is unique among verified accounts only), then runs the schema.
pub(super) fn sqlite_setup(c: &rusqlite::Connection) -> Result<(), DbError> {
    db::add_missing_columns(c, ADDED_COLUMNS)?;
    let old = db::stored_definition(c, "accounts")?;
    if old.is_some_and(|sql| sql.contains("normalized_email TEXT NOT NULL UNIQUE")) {
        let definition = db::table_definition(SQLITE_SCHEMA, "accounts")
            .ok_or_else(|| DbError::Other("no accounts table in the schema".into()))?;
        db::rebuild_table(c, "accounts", definition)?;
    }
    c.execute_batch(SQLITE_SCHEMA)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounts_table_is_found_in_the_schema() {
        let d = db::table_definition(SQLITE_SCHEMA, "accounts").unwrap();
        assert!(d.contains("normalized_email TEXT NOT NULL,"), "{d}");
        assert!(
            d.contains("email_verified INTEGER NOT NULL DEFAULT 1"),
            "{d}"
        );
    }
}
