//! The accounts database (accounts, tokens, devices and their command queues, OAuth codes and refresh tokens,
//! invites, email codes, the outboxes of deleted and of disabled or enabled accounts):
//! `<data_dir>/accounts.sqlite` by default, or the tokenserver's PostgreSQL database
//! when it has one, so that several processes serve one set of accounts. The SQL is
//! written once, for both backends, over the SQL layer ([`crate::db`]). Every secret a
//! client presents later (token ids, codes, refresh tokens) is kept as its SHA-256 only.
//!
//! One file per what is stored; each adds its methods to [`Store`]: `accounts.rs`,
//! `tokens.rs` (sessions, key fetch and password change tokens), `devices.rs`,
//! `commands.rs` (the device command queue),
//! `oauth.rs` (codes, refresh tokens, shared signing keys), `invites.rs`, `codes.rs`
//! (email verification), `outboxes.rs` (disabling, deletion), `purge.rs` (upkeep) and
//! `schema.rs` (the schema and the upgrade of older files).

use std::path::Path;

use crate::db::{self, DbError, Pool, Row, SqliteOptions, Tx};

mod accounts;
mod codes;
mod commands;
mod devices;
mod invites;
mod oauth;
mod outboxes;
mod purge;
mod schema;
mod tokens;

pub use accounts::{Account, Inserted, MAX_PENDING_SIGN_IN};
pub use codes::CodeCheck;
pub use commands::{
    MAX_QUEUED_BYTES_PER_DEVICE, MAX_QUEUED_PER_DEVICE, NewCommand, Queued, QueuedCommand,
};
pub use devices::{Device, MAX_DEVICES};
pub use invites::Invite;
pub use oauth::{Code, MAX_CODES, MAX_REFRESH_TOKENS, Refresh};
pub use outboxes::{Deletion, StateChange};
pub use purge::Retention;
pub use tokens::{MAX_TOKENS_PER_KIND, TokenRow};

/// Errors of the accounts database: the SQL layer's, said to be the accounts'.
#[derive(Debug, thiserror::Error)]
#[error("accounts database: {0}")]
pub struct StoreError(#[from] pub DbError);

/// The accounts database. Cheap to clone. Blocking.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T, DbError>) -> Result<Vec<T>, DbError> {
    rows.iter().map(f).collect()
}

/// Lower-cased email, the key accounts are looked up by.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

impl Store {
    /// Opens the accounts database: the PostgreSQL database at `database_url` (the
    /// tokenserver's, creating the tables), or, when it is empty (or not PostgreSQL),
    /// `<data_dir>/accounts.sqlite`, readable by the owner only.
    pub fn open(data_dir: &Path, database_url: &str) -> Result<Store, StoreError> {
        let pool = if db::is_postgres_url(database_url) {
            Pool::postgres(
                database_url,
                schema::POSTGRES_SCHEMA,
                schema::PG_SCHEMA_LOCK,
            )?
        } else {
            let options = SqliteOptions {
                file: "accounts.sqlite",
                pragmas: "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; \
                          PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            };
            Pool::sqlite(data_dir, &options, schema::sqlite_setup)?
        };
        Ok(Store { pool })
    }

    /// Whether the database is shared by several processes (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.pool.is_postgres()
    }

    /// Runs `f` in one transaction, committed when it returns `Ok((_, true))`, rolled
    /// back otherwise. SQLite write transactions take the write lock at once.
    fn tx<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<(T, bool), DbError>,
    ) -> Result<T, StoreError> {
        Ok(self.pool.transaction_with(write, f)?)
    }

    /// A write transaction committed when `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&mut dyn Tx) -> Result<T, DbError>) -> Result<T, StoreError> {
        self.tx(true, |tx| Ok((f(tx)?, true)))
    }

    /// A query.
    fn read<T>(&self, f: impl FnOnce(&mut dyn Tx) -> Result<T, DbError>) -> Result<T, StoreError> {
        self.tx(false, |tx| Ok((f(tx)?, true)))
    }
}
