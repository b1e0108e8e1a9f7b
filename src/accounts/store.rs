//! The accounts database (accounts, tokens, devices, OAuth codes and refresh tokens,
//! invites, email codes, the outboxes of deleted and of disabled or enabled accounts):
//! `<data_dir>/accounts.sqlite` by default, or the tokenserver's PostgreSQL database
//! when it has one, so that several processes serve one set of accounts. The SQL is
//! written once (see [`backend`]). Every secret a client presents later (token ids,
//! codes, refresh tokens) is kept as its SHA-256 only.

use std::path::Path;
use std::sync::Arc;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::TransactionBehavior;

use crate::tokenserver::db::{DbError, PgPool, is_postgres_url};

mod backend;

use backend::{PgTx, Row, SqliteTx, Tx, V, args, one};

/// Errors of the accounts database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("accounts database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("accounts database: postgres: {}", crate::pg::message(.0))]
    Postgres(#[from] postgres::Error),
    /// Connecting to PostgreSQL or creating its tables failed.
    #[error("accounts database: {0}")]
    Open(#[from] DbError),
    /// No connection could be had.
    #[error("accounts database pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// The file could not be created.
    #[error("accounts database file: {0}")]
    Io(String),
    /// A value of an unexpected type came back.
    #[error("accounts database: {0}")]
    Type(String),
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL,
    auth_salt BLOB NOT NULL,
    verify_hash BLOB NOT NULL,
    wrap_wrap_kb BLOB NOT NULL,
    ka BLOB NOT NULL,
    verifier_set_at INTEGER NOT NULL,
    keys_changed_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    display_name TEXT,
    email_verified INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tokens (
    id_hash BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    auth_key BLOB NOT NULL,
    data BLOB,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_uid ON tokens(uid);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    session_id_hash BLOB UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT 'desktop',
    push_callback TEXT,
    push_public_key TEXT,
    push_auth_key TEXT,
    available_commands TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    last_access_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_uid ON devices(uid);
CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash BLOB PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT,
    keys_jwe TEXT,
    offline INTEGER NOT NULL,
    auth_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_codes_uid ON oauth_codes(uid);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    auth_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_uid ON refresh_tokens(uid);
CREATE TABLE IF NOT EXISTS invites (
    code_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS email_codes (
    uid TEXT PRIMARY KEY REFERENCES accounts(uid) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account_deletions (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    deleted_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account_state_changes (
    uid TEXT PRIMARY KEY,
    disabled INTEGER NOT NULL,
    changed_at INTEGER NOT NULL
);
";

/// The same tables in PostgreSQL (BYTEA, BIGINT; booleans are 0/1 as in SQLite). Their
/// names do not clash with the tokenserver's (`nodes`, `users`, `settings`, ...);
/// `account_signing_keys` holds the OAuth signing keys every process shares.
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL,
    auth_salt BYTEA NOT NULL,
    verify_hash BYTEA NOT NULL,
    wrap_wrap_kb BYTEA NOT NULL,
    ka BYTEA NOT NULL,
    verifier_set_at BIGINT NOT NULL,
    keys_changed_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    display_name TEXT,
    email_verified BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tokens (
    id_hash BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    auth_key BYTEA NOT NULL,
    data BYTEA,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_uid ON tokens(uid);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    session_id_hash BYTEA UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT 'desktop',
    push_callback TEXT,
    push_public_key TEXT,
    push_auth_key TEXT,
    available_commands TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    last_access_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_uid ON devices(uid);
CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash BYTEA PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT,
    keys_jwe TEXT,
    offline BIGINT NOT NULL,
    auth_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_codes_uid ON oauth_codes(uid);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    auth_at BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS auth_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS refresh_tokens_uid ON refresh_tokens(uid);
CREATE TABLE IF NOT EXISTS invites (
    code_hash BYTEA PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS email_codes (
    uid TEXT PRIMARY KEY REFERENCES accounts(uid) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_deletions (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    deleted_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_state_changes (
    uid TEXT PRIMARY KEY,
    disabled BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_signing_keys (
    id BIGINT PRIMARY KEY,
    keys TEXT NOT NULL
);
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_normalized_email_key;
CREATE UNIQUE INDEX IF NOT EXISTS accounts_verified_email ON accounts(normalized_email)
    WHERE email_verified = 1;
CREATE INDEX IF NOT EXISTS accounts_email ON accounts(normalized_email);
";

/// Indexes of the SQLite accounts table, made after the columns they name exist: an
/// email is unique among VERIFIED accounts only (several pending sign-ups of one
/// address may wait side by side, each with its own code; the first verified takes
/// the address). The PostgreSQL schema has the same.
const SQLITE_ACCOUNT_INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS accounts_verified_email ON accounts(normalized_email)
    WHERE email_verified = 1;
CREATE INDEX IF NOT EXISTS accounts_email ON accounts(normalized_email);
";

/// The SQLite accounts table as it is now, to rebuild an older file's (whose
/// `normalized_email` was UNIQUE over every account) into.
const SQLITE_ACCOUNTS_REBUILD: &str = "
CREATE TABLE accounts_rebuilt (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL,
    auth_salt BLOB NOT NULL,
    verify_hash BLOB NOT NULL,
    wrap_wrap_kb BLOB NOT NULL,
    ka BLOB NOT NULL,
    verifier_set_at INTEGER NOT NULL,
    keys_changed_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    display_name TEXT,
    email_verified INTEGER NOT NULL DEFAULT 1
);
INSERT INTO accounts_rebuilt (uid, email, normalized_email, auth_salt, verify_hash,
    wrap_wrap_kb, ka, verifier_set_at, keys_changed_at, created_at, disabled,
    display_name, email_verified)
  SELECT uid, email, normalized_email, auth_salt, verify_hash, wrap_wrap_kb, ka,
    verifier_set_at, keys_changed_at, created_at, disabled, display_name, email_verified
  FROM accounts;
DROP TABLE accounts;
ALTER TABLE accounts_rebuilt RENAME TO accounts;
";

/// Most pending (unverified) accounts of one address whose password a sign-in by
/// email tries, newest first: each try is a hardening.
pub const MAX_PENDING_SIGN_IN: usize = 3;

/// Columns added after the first release, with their definitions: added to an older
/// file when it is opened.
/// (PostgreSQL's schema adds them itself, `ADD COLUMN IF NOT EXISTS`.) A refresh
/// token's `auth_at` is unknown for rows from before it: 0, older than any sign-in.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("accounts", "email_verified", "INTEGER NOT NULL DEFAULT 1"),
    ("refresh_tokens", "auth_at", "INTEGER NOT NULL DEFAULT 0"),
];

/// An account as stored.
#[derive(Clone)]
pub struct Account {
    /// 32 hex characters.
    pub uid: String,
    /// The email as given at sign-up (it salts the client's stretch, so its case matters).
    pub email: String,
    /// scrypt salt of the verifier.
    pub auth_salt: [u8; 32],
    /// The verifier derived from authPW.
    pub verify_hash: [u8; 32],
    /// `wrapKb` XOR `wrapwrapKey`.
    pub wrap_wrap_kb: [u8; 32],
    /// The class-A key (server-held).
    pub ka: [u8; 32],
    /// When the password last changed, ms (the JWT's `fxa-generation`).
    pub verifier_set_at: i64,
    /// When kB last changed, ms (the oldsync key's rotation timestamp).
    pub keys_changed_at: i64,
    /// When the account was made, ms.
    pub created_at: i64,
    /// Disabled by the operator: no sign-in, no tokens.
    pub disabled: bool,
    /// The profile's display name.
    pub display_name: Option<String>,
    /// The email address is verified (always, but for open sign-ups that mail a code).
    pub email_verified: bool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("uid", &self.uid)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A token row (session, key fetch or password change).
#[derive(Clone)]
pub struct TokenRow {
    /// SHA-256 of the token id.
    pub id_hash: [u8; 32],
    /// `sessionToken`, `keyFetchToken`, `passwordChangeToken`.
    pub kind: String,
    /// The account.
    pub uid: String,
    /// The Hawk key.
    pub auth_key: [u8; 32],
    /// Kind-specific data (the encrypted key bundle of a key fetch token).
    pub data: Option<Vec<u8>>,
    /// When it was made, ms.
    pub created_at: i64,
    /// When it was last used, ms.
    pub last_used_at: i64,
    /// The User-Agent that made it.
    pub user_agent: String,
}

/// A registered device.
#[derive(Debug, Clone, Default)]
pub struct Device {
    /// 32 hex characters.
    pub id: String,
    /// The account.
    pub uid: String,
    /// The session it belongs to.
    pub session_id_hash: Option<Vec<u8>>,
    /// Its name.
    pub name: String,
    /// desktop, mobile, ...
    pub kind: String,
    /// WebPush endpoint.
    pub push_callback: Option<String>,
    /// WebPush public key.
    pub push_public_key: Option<String>,
    /// WebPush auth secret.
    pub push_auth_key: Option<String>,
    /// JSON object of command name → data.
    pub available_commands: String,
    /// When it registered, ms.
    pub created_at: i64,
    /// When it was last seen, ms.
    pub last_access_at: i64,
}

/// An OAuth authorization code as stored.
#[derive(Debug, Clone)]
pub struct Code {
    /// The account.
    pub uid: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// The client's encrypted scoped keys, passed through.
    pub keys_jwe: Option<String>,
    /// Whether a refresh token is wanted.
    pub offline: bool,
    /// When the session that asked for it proved the password, ms.
    pub auth_at: i64,
    /// Expiry, ms.
    pub expires_at: i64,
}

/// A refresh token as stored.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The account.
    pub uid: String,
    /// The client.
    pub client_id: String,
    /// Granted scopes.
    pub scope: String,
    /// When it was made, ms.
    pub created_at: i64,
    /// When it was last used, ms.
    pub last_used_at: i64,
    /// When the session it came from proved the password, ms (0: unknown, a token
    /// from before this was recorded).
    pub auth_at: i64,
}

/// What `insert_account` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The account exists now (and the invite, if any, is spent).
    Created,
    /// The (verified) account exists now, in place of the pending unverified ones
    /// with the same email (deleted with their tokens, devices and codes).
    ReplacedUnverified,
    /// Another account has this email; nothing changed.
    EmailTaken,
    /// The invite is unknown, spent or expired; nothing changed.
    BadInvite,
}

/// An invite code as listed (the code itself is not stored).
#[derive(Debug, Clone)]
pub struct Invite {
    /// When it was made, ms.
    pub created_at: i64,
    /// When it stops working, ms.
    pub expires_at: i64,
    /// When it was used, ms.
    pub used_at: Option<i64>,
    /// The email of the account made with it (while that account exists).
    pub used_by: Option<String>,
}

/// A deleted account whose Sync data is still to be deleted.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The account's uid.
    pub uid: String,
    /// Its email.
    pub email: String,
    /// When it was deleted, ms.
    pub deleted_at: i64,
}

/// An account disabled or enabled whose state the tokenserver is still to learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The account's uid.
    pub uid: String,
    /// Disabled (true) or enabled again.
    pub disabled: bool,
    /// When, ms.
    pub changed_at: i64,
}

/// What `verify_email_code` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// The code matched: the account is verified.
    Verified,
    /// Another code.
    Wrong,
    /// The code expired.
    Expired,
    /// No code is pending for the account.
    NoCode,
    /// The code matched, but another account of the address is verified already:
    /// nothing changed.
    Taken,
}

#[derive(Clone)]
enum Backend {
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    Postgres(Arc<PgPool>),
}

/// The accounts database. Cheap to clone. Blocking.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

fn account_row(r: &Row) -> Result<Account, StoreError> {
    Ok(Account {
        uid: r.text(0)?,
        email: r.text(1)?,
        auth_salt: r.b32(2)?,
        verify_hash: r.b32(3)?,
        wrap_wrap_kb: r.b32(4)?,
        ka: r.b32(5)?,
        verifier_set_at: r.int(6)?,
        keys_changed_at: r.int(7)?,
        created_at: r.int(8)?,
        disabled: r.bool(9)?,
        display_name: r.opt_text(10)?,
        email_verified: r.bool(11)?,
    })
}

const ACCOUNT_COLS: &str = "uid, email, auth_salt, verify_hash, wrap_wrap_kb, ka, \
    verifier_set_at, keys_changed_at, created_at, disabled, display_name, email_verified";

const TOKEN_COLS: &str = "id_hash, kind, uid, auth_key, data, created_at, last_used_at, user_agent";

fn token_row(r: &Row) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id_hash: r.b32(0)?,
        kind: r.text(1)?,
        uid: r.text(2)?,
        auth_key: r.b32(3)?,
        data: r.opt_blob(4)?,
        created_at: r.int(5)?,
        last_used_at: r.int(6)?,
        user_agent: r.text(7)?,
    })
}

fn device_row(r: &Row) -> Result<Device, StoreError> {
    Ok(Device {
        id: r.text(0)?,
        uid: r.text(1)?,
        session_id_hash: r.opt_blob(2)?,
        name: r.text(3)?,
        kind: r.text(4)?,
        push_callback: r.opt_text(5)?,
        push_public_key: r.opt_text(6)?,
        push_auth_key: r.opt_text(7)?,
        available_commands: r.text(8)?,
        created_at: r.int(9)?,
        last_access_at: r.int(10)?,
    })
}

const DEVICE_COLS: &str = "id, uid, session_id_hash, name, type, push_callback, \
    push_public_key, push_auth_key, available_commands, created_at, last_access_at";

const REFRESH_COLS: &str = "token_hash, uid, client_id, scope, created_at, last_used_at, auth_at";

fn refresh_row(r: &Row) -> Result<Refresh, StoreError> {
    Ok(Refresh {
        token_hash: r.b32(0)?,
        uid: r.text(1)?,
        client_id: r.text(2)?,
        scope: r.text(3)?,
        created_at: r.int(4)?,
        last_used_at: r.int(5)?,
        auth_at: r.int(6)?,
    })
}

fn rows<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

/// Lower-cased email, the key accounts are looked up by.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Most sessions one account keeps (the least recently used go first, with their
/// devices); also the most key fetch and password change tokens (the oldest go).
pub const MAX_TOKENS_PER_KIND: usize = 100;
/// Most devices one account keeps (the least recently seen go first, with their
/// sessions).
pub const MAX_DEVICES: usize = 100;
/// Most refresh tokens one account keeps (the least recently used go first).
pub const MAX_REFRESH_TOKENS: usize = 100;
/// Most unexpired authorization codes one account keeps (the oldest go first).
pub const MAX_CODES: usize = 20;

/// How long stored state lives unused (ms), applied by [`Store::purge`].
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Key fetch and password change tokens, from their creation.
    pub short_token_ms: i64,
    /// Sessions without a device, from their last use.
    pub idle_session_ms: i64,
    /// Sessions with a device (a Firefox that may be off for a while), from their
    /// last use.
    pub idle_device_session_ms: i64,
    /// Refresh tokens, from their last use.
    pub idle_refresh_ms: i64,
    /// Unverified accounts, from their creation.
    pub unverified_account_ms: i64,
}

/// The advisory lock under which the PostgreSQL tables are created.
const PG_SCHEMA_LOCK: i64 = 727_275;
/// The advisory lock under which the shared signing keys are generated or rotated.
const PG_KEYS_LOCK: i64 = 727_276;

impl Store {
    /// Opens the accounts database: the PostgreSQL database at `database_url` (the
    /// tokenserver's, creating the tables), or, when it is empty (or not PostgreSQL),
    /// `<data_dir>/accounts.sqlite`, readable by the owner only.
    pub fn open(data_dir: &Path, database_url: &str) -> Result<Store, StoreError> {
        if is_postgres_url(database_url) {
            let pool = PgPool::connect(database_url, POSTGRES_SCHEMA, PG_SCHEMA_LOCK)?;
            return Ok(Store {
                backend: Backend::Postgres(Arc::new(pool)),
            });
        }
        crate::private::create_dir(data_dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let path = data_dir.join("accounts.sqlite");
        crate::private::create_file(&path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let manager = SqliteConnectionManager::file(&path).with_init(|c| {
            c.execute_batch(
                "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; \
                 PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
        });
        // Connections are made on demand: made all at once at start, they raced the
        // schema set-up below for the file's first lock ("database is locked").
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build(manager)?;
        let c = pool.get()?;
        c.execute_batch(SQLITE_SCHEMA)?;
        for (table, column, definition) in ADDED_COLUMNS {
            let present: bool = c.query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get(0),
            )?;
            if !present {
                c.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))?;
            }
        }
        migrate_email_unique(&c)?;
        c.execute_batch(SQLITE_ACCOUNT_INDEXES)?;
        drop(c);
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    /// Whether the database is shared by several processes (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Runs `f` in one transaction, committed when it returns `Ok((_, true))`, rolled
    /// back otherwise. SQLite write transactions take the write lock at once.
    fn tx<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut c = pool.get()?;
                let behavior = if write {
                    TransactionBehavior::Immediate
                } else {
                    TransactionBehavior::Deferred
                };
                let mut tx = SqliteTx(c.transaction_with_behavior(behavior)?);
                let (out, commit) = f(&mut tx)?;
                if commit {
                    tx.0.commit()?;
                }
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut c = pool.get()?;
                let mut tx = PgTx(c.transaction()?);
                let (out, commit) = f(&mut tx)?;
                if commit {
                    tx.0.commit()?;
                }
                Ok(out)
            }
        }
    }

    /// A write transaction committed when `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.tx(true, |tx| Ok((f(tx)?, true)))
    }

    /// A query.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.tx(false, |tx| Ok((f(tx)?, true)))
    }

    /// Inserts a new account, taking the invite code (SHA-256) if one is given, in one
    /// transaction: a refused invite makes no account and a taken email spends no invite.
    /// A verified account holds its address (EmailTaken). An unverified one does not:
    /// several pending sign-ups of one address wait side by side, each with its own
    /// code, until one is verified ([`Store::verify_email_code`]) or a day passes. A new
    /// VERIFIED account (invited, or made by the operator) takes the address at once:
    /// the pending ones go, with everything of theirs.
    pub fn insert_account(
        &self,
        a: &Account,
        invite: Option<&[u8; 32]>,
    ) -> Result<Inserted, StoreError> {
        let normalized = normalize_email(&a.email);
        self.tx(true, |tx| {
            tx.lock(email_lock(&normalized))?;
            if one(
                tx,
                "SELECT uid FROM accounts WHERE normalized_email = ?1 AND email_verified = 1",
                &args![&normalized],
            )?
            .is_some()
            {
                return Ok((Inserted::EmailTaken, false));
            }
            let mut replaced = false;
            if a.email_verified {
                replaced = delete_pending(tx, &normalized, None)? > 0;
            }
            let n = tx.exec(
                &format!(
                    "INSERT INTO accounts ({ACCOUNT_COLS}, normalized_email) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     ON CONFLICT DO NOTHING"
                ),
                &args![
                    &a.uid,
                    &a.email,
                    &a.auth_salt,
                    &a.verify_hash,
                    &a.wrap_wrap_kb,
                    &a.ka,
                    a.verifier_set_at,
                    a.keys_changed_at,
                    a.created_at,
                    a.disabled,
                    &a.display_name,
                    a.email_verified,
                    &normalized
                ],
            )?;
            if n != 1 {
                return Ok((Inserted::EmailTaken, false));
            }
            if let Some(code_hash) = invite {
                let n = tx.exec(
                    "UPDATE invites SET used_at = ?2, used_by = ?3 \
                     WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                    &args![code_hash, a.created_at, &a.uid],
                )?;
                if n != 1 {
                    return Ok((Inserted::BadInvite, false));
                }
            }
            let done = if replaced {
                Inserted::ReplacedUnverified
            } else {
                Inserted::Created
            };
            Ok((done, true))
        })
    }

    /// The account with this email (any case): the verified one, else the newest
    /// pending (unverified) one.
    pub fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.accounts_by_email(email, 1)?.into_iter().next())
    }

    /// The accounts a sign-in by this email (any case) may be for: the verified one
    /// alone when there is one, else at most `pending` unverified ones, newest first.
    pub fn accounts_by_email(
        &self,
        email: &str,
        pending: usize,
    ) -> Result<Vec<Account>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE normalized_email = ?1 \
                     ORDER BY email_verified DESC, created_at DESC, uid LIMIT ?2"
                ),
                &args![normalize_email(email), pending.max(1) as i64],
            )?;
            let mut found = rows(r, account_row)?;
            if found.first().is_some_and(|a| a.email_verified) {
                found.truncate(1);
            }
            Ok(found)
        })
    }

    /// The account with this uid.
    pub fn account(&self, uid: &str) -> Result<Option<Account>, StoreError> {
        self.read(|tx| {
            one(
                tx,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE uid = ?1"),
                &args![uid],
            )?
            .as_ref()
            .map(account_row)
            .transpose()
        })
    }

    /// Every account, by email.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY normalized_email"),
                &[],
            )?;
            rows(r, account_row)
        })
    }

    /// Disables or enables an account; disabling revokes its tokens. The change is
    /// queued for the tokenserver (`account_state_changes`, applied by the server:
    /// storage nodes refuse a disabled account's storage tokens). False: no such
    /// account.
    pub fn set_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        let now = super::now_ms();
        self.write(|tx| {
            let Some(uid) = uid_by_email(tx, email)? else {
                return Ok(false);
            };
            // Disabling also moves the account's token generation (`verifier_set_at`,
            // the access tokens' `fxa-generation`) forward: every access token issued
            // before is refused for good, also once the account is enabled again.
            tx.exec(
                "UPDATE accounts SET disabled = ?2, verifier_set_at = CASE \
                 WHEN CAST(?2 AS BIGINT) = 0 THEN verifier_set_at \
                 WHEN verifier_set_at < ?3 THEN ?3 ELSE verifier_set_at + 1 END \
                 WHERE uid = ?1",
                &args![&uid, disabled, now],
            )?;
            if disabled {
                revoke_all(tx, &uid)?;
            }
            tx.exec(
                "INSERT INTO account_state_changes (uid, disabled, changed_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (uid) DO UPDATE SET \
                 disabled = excluded.disabled, changed_at = excluded.changed_at",
                &args![&uid, disabled, now],
            )?;
            Ok(true)
        })
    }

    /// Disablings and enablings still to be applied by the tokenserver, oldest first.
    pub fn pending_state_changes(&self, limit: u32) -> Result<Vec<StateChange>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                "SELECT uid, disabled, changed_at FROM account_state_changes \
                 ORDER BY changed_at LIMIT ?1",
                &args![limit],
            )?;
            rows(r, |r| {
                Ok(StateChange {
                    uid: r.text(0)?,
                    disabled: r.bool(1)?,
                    changed_at: r.int(2)?,
                })
            })
        })
    }

    /// The tokenserver applied `change`: forget it (unless the account changed again
    /// since, which is then still to apply).
    pub fn finish_state_change(&self, change: &StateChange) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM account_state_changes \
                 WHERE uid = ?1 AND disabled = ?2 AND changed_at = ?3",
                &args![&change.uid, change.disabled, change.changed_at],
            )
            .map(drop)
        })
    }

    /// Deletes an account and everything of it, and queues the deletion of its Sync
    /// data (`account_deletions`, drained by the server). The uid, or None: no such
    /// account.
    pub fn delete_account(&self, email: &str, now: i64) -> Result<Option<String>, StoreError> {
        self.write(|tx| {
            let Some(uid) = uid_by_email(tx, email)? else {
                return Ok(None);
            };
            delete_account_uid(tx, &uid, now)
        })
    }

    /// Deletes the account with this uid as [`Store::delete_account`] does.
    pub fn delete_account_by_uid(&self, uid: &str, now: i64) -> Result<Option<String>, StoreError> {
        self.write(|tx| delete_account_uid(tx, uid, now))
    }

    /// Deleted accounts whose Sync data is still to be deleted, oldest first.
    pub fn pending_deletions(&self, limit: u32) -> Result<Vec<Deletion>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                "SELECT uid, email, deleted_at FROM account_deletions \
                 ORDER BY deleted_at LIMIT ?1",
                &args![limit],
            )?;
            rows(r, |r| {
                Ok(Deletion {
                    uid: r.text(0)?,
                    email: r.text(1)?,
                    deleted_at: r.int(2)?,
                })
            })
        })
    }

    /// The Sync data of a deleted account is gone: forget the deletion.
    pub fn finish_deletion(&self, uid: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec("DELETE FROM account_deletions WHERE uid = ?1", &args![uid])
                .map(drop)
        })
    }

    /// Stores a new invite code (its SHA-256), usable once until `expires_at` (ms).
    pub fn insert_invite(
        &self,
        code_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO invites (code_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
                &args![code_hash, now, expires_at],
            )
            .map(drop)
        })
    }

    /// Whether an invite code (its SHA-256) is unspent and unexpired: a read-only check
    /// before any work on a sign-up (the code is spent by `insert_account`).
    pub fn invite_usable(&self, code_hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
        self.read(|tx| {
            Ok(one(
                tx,
                "SELECT expires_at FROM invites \
                 WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                &args![code_hash, now],
            )?
            .is_some())
        })
    }

    /// Every invite, newest first.
    pub fn invites(&self) -> Result<Vec<Invite>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                "SELECT i.created_at, i.expires_at, i.used_at, a.email FROM invites i \
                 LEFT JOIN accounts a ON a.uid = i.used_by ORDER BY i.created_at DESC",
                &[],
            )?;
            rows(r, |r| {
                Ok(Invite {
                    created_at: r.int(0)?,
                    expires_at: r.int(1)?,
                    used_at: r.opt_int(2)?,
                    used_by: r.opt_text(3)?,
                })
            })
        })
    }

    /// Sets (replacing any earlier one) the email verification code (its SHA-256) of an
    /// account, valid until `expires_at` (ms).
    pub fn set_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO email_codes (uid, code_hash, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (uid) DO UPDATE SET code_hash = excluded.code_hash, \
                 expires_at = excluded.expires_at",
                &args![uid, code_hash, expires_at],
            )
            .map(drop)
        })
    }

    /// Checks an email verification code; when it matches and is unexpired the account
    /// becomes verified and the code is spent, and the other pending accounts of its
    /// address go (with everything of theirs), all in one transaction under the
    /// address's lock; the update is conditional (the account still unverified, no
    /// verified account of the address), so that of two verifications or a sign-up
    /// racing, only one account ever holds the address. Comparison of the hashes is
    /// constant-time.
    pub fn verify_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        self.tx(true, |tx| {
            let Some(acc) = one(
                tx,
                "SELECT normalized_email FROM accounts WHERE uid = ?1",
                &args![uid],
            )?
            else {
                return Ok((CodeCheck::NoCode, false));
            };
            let normalized = acc.text(0)?;
            tx.lock(email_lock(&normalized))?;
            let Some(row) = one(
                tx,
                "SELECT code_hash, expires_at FROM email_codes WHERE uid = ?1",
                &args![uid],
            )?
            else {
                return Ok((CodeCheck::NoCode, false));
            };
            let (stored, expires_at) = (row.blob(0)?, row.int(1)?);
            if expires_at <= now {
                return Ok((CodeCheck::Expired, false));
            }
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &code_hash[..])) {
                return Ok((CodeCheck::Wrong, false));
            }
            // Spent by whoever deletes it first.
            if tx.exec("DELETE FROM email_codes WHERE uid = ?1", &args![uid])? != 1 {
                return Ok((CodeCheck::NoCode, false));
            }
            let n = tx.exec(
                "UPDATE accounts SET email_verified = 1 \
                 WHERE uid = ?1 AND email_verified = 0 AND NOT EXISTS \
                 (SELECT 1 FROM accounts v WHERE v.normalized_email = ?2 \
                 AND v.email_verified = 1)",
                &args![uid, &normalized],
            )?;
            if n != 1 {
                return Ok((CodeCheck::Taken, false));
            }
            delete_pending(tx, &normalized, Some(uid))?;
            Ok((CodeCheck::Verified, true))
        })
    }

    /// Replaces the verifier and wrapped key (a password change or reset), revoking
    /// every token and refresh token of the account.
    pub fn set_password(
        &self,
        uid: &str,
        auth_salt: &[u8; 32],
        verify_hash: &[u8; 32],
        wrap_wrap_kb: &[u8; 32],
        now: i64,
        keys_changed: bool,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE accounts SET auth_salt = ?2, verify_hash = ?3, wrap_wrap_kb = ?4, \
                 verifier_set_at = ?5, keys_changed_at = CASE WHEN CAST(?6 AS BIGINT) = 1 \
                 THEN ?5 ELSE keys_changed_at END WHERE uid = ?1",
                &args![uid, auth_salt, verify_hash, wrap_wrap_kb, now, keys_changed],
            )?;
            revoke_all(tx, uid)
        })
    }

    /// Sets the profile's display name.
    pub fn set_display_name(&self, uid: &str, name: Option<&str>) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE accounts SET display_name = ?2 WHERE uid = ?1",
                &args![uid, name],
            )
            .map(drop)
        })
    }

    /// Stores a token; beyond [`MAX_TOKENS_PER_KIND`] of its kind for the account, the
    /// least recently used others go (a session with its device).
    pub fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.write(|tx| {
            let older = tx.query(
                "SELECT id_hash FROM tokens WHERE uid = ?1 AND kind = ?2 AND id_hash != ?3 \
                 ORDER BY last_used_at DESC, created_at DESC",
                &args![&t.uid, &t.kind, &t.id_hash],
            )?;
            for r in older.iter().skip(MAX_TOKENS_PER_KIND - 1) {
                let id = r.blob(0)?;
                tx.exec(
                    "DELETE FROM devices WHERE session_id_hash = ?1",
                    &args![&id[..]],
                )?;
                tx.exec("DELETE FROM tokens WHERE id_hash = ?1", &args![&id[..]])?;
            }
            tx.exec(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                &args![
                    &t.id_hash,
                    &t.kind,
                    &t.uid,
                    &t.auth_key,
                    &t.data,
                    t.created_at,
                    t.last_used_at,
                    &t.user_agent
                ],
            )
            .map(drop)
        })
    }

    /// The token with this id hash and kind.
    pub fn token(&self, id_hash: &[u8; 32], kind: &str) -> Result<Option<TokenRow>, StoreError> {
        self.read(|tx| {
            one(
                tx,
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id_hash = ?1 AND kind = ?2"),
                &args![id_hash, kind],
            )?
            .as_ref()
            .map(token_row)
            .transpose()
        })
    }

    /// Records a token's use.
    pub fn touch_token(&self, id_hash: &[u8; 32], now: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE tokens SET last_used_at = ?2 WHERE id_hash = ?1",
                &args![id_hash, now],
            )
            .map(drop)
        })
    }

    /// Takes a token of `kind` (reads and deletes it in one statement, so that of
    /// several requests or processes presenting it at once only one gets it): its data
    /// (`Some(None)` for a token without), or None when it is gone.
    pub fn take_token(
        &self,
        id_hash: &[u8; 32],
        kind: &str,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        self.write(|tx| {
            one(
                tx,
                "DELETE FROM tokens WHERE id_hash = ?1 AND kind = ?2 RETURNING data",
                &args![id_hash, kind],
            )?
            .map(|r| r.opt_blob(0))
            .transpose()
        })
    }

    /// Deletes a token (and the device of a session). True when it existed.
    pub fn delete_token(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM devices WHERE session_id_hash = ?1",
                &args![id_hash],
            )?;
            Ok(tx.exec("DELETE FROM tokens WHERE id_hash = ?1", &args![id_hash])? > 0)
        })
    }

    /// The account's sessions.
    pub fn sessions(&self, uid: &str) -> Result<Vec<TokenRow>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!(
                    "SELECT {TOKEN_COLS} FROM tokens WHERE uid = ?1 AND kind = 'sessionToken' \
                     ORDER BY created_at"
                ),
                &args![uid],
            )?;
            rows(r, token_row)
        })
    }

    /// Inserts or updates a device (by id); beyond [`MAX_DEVICES`] for the account,
    /// the least recently seen others go, with their sessions.
    pub fn upsert_device(&self, d: &Device) -> Result<(), StoreError> {
        self.write(|tx| {
            let older = tx.query(
                "SELECT id, session_id_hash FROM devices WHERE uid = ?1 AND id != ?2 \
                 ORDER BY last_access_at DESC, created_at DESC",
                &args![&d.uid, &d.id],
            )?;
            for r in older.iter().skip(MAX_DEVICES - 1) {
                tx.exec("DELETE FROM devices WHERE id = ?1", &args![r.text(0)?])?;
                if let Some(s) = r.opt_blob(1)? {
                    tx.exec("DELETE FROM tokens WHERE id_hash = ?1", &args![&s[..]])?;
                }
            }
            tx.exec(
                &format!(
                    "INSERT INTO devices ({DEVICE_COLS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT(id) DO UPDATE SET name = excluded.name, type = excluded.type, \
                     push_callback = excluded.push_callback, \
                     push_public_key = excluded.push_public_key, \
                     push_auth_key = excluded.push_auth_key, \
                     available_commands = excluded.available_commands, \
                     last_access_at = excluded.last_access_at"
                ),
                &args![
                    &d.id,
                    &d.uid,
                    &d.session_id_hash,
                    &d.name,
                    &d.kind,
                    &d.push_callback,
                    &d.push_public_key,
                    &d.push_auth_key,
                    &d.available_commands,
                    d.created_at,
                    d.last_access_at
                ],
            )
            .map(drop)
        })
    }

    /// The account's devices.
    pub fn devices(&self, uid: &str) -> Result<Vec<Device>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!("SELECT {DEVICE_COLS} FROM devices WHERE uid = ?1 ORDER BY created_at"),
                &args![uid],
            )?;
            rows(r, device_row)
        })
    }

    /// Deletes a device and the session it belongs to. True when it existed.
    pub fn delete_device(&self, uid: &str, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let Some(row) = one(
                tx,
                "DELETE FROM devices WHERE uid = ?1 AND id = ?2 RETURNING session_id_hash",
                &args![uid, id],
            )?
            else {
                return Ok(false);
            };
            if let Some(s) = row.opt_blob(0)? {
                tx.exec("DELETE FROM tokens WHERE id_hash = ?1", &args![&s[..]])?;
            }
            Ok(true)
        })
    }

    /// Stores an authorization code under its hash; the account's expired codes go,
    /// and beyond [`MAX_CODES`] the oldest others.
    pub fn insert_code(&self, code_hash: &[u8; 32], c: &Code, now: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM oauth_codes WHERE uid = ?1 AND expires_at < ?2",
                &args![&c.uid, now],
            )?;
            let older = tx.query(
                "SELECT code_hash FROM oauth_codes WHERE uid = ?1 ORDER BY expires_at DESC",
                &args![&c.uid],
            )?;
            for r in older.iter().skip(MAX_CODES - 1) {
                tx.exec(
                    "DELETE FROM oauth_codes WHERE code_hash = ?1",
                    &args![&r.blob(0)?[..]],
                )?;
            }
            tx.exec(
                "INSERT INTO oauth_codes (code_hash, uid, client_id, scope, code_challenge, \
                 keys_jwe, offline, auth_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                &args![
                    code_hash,
                    &c.uid,
                    &c.client_id,
                    &c.scope,
                    &c.code_challenge,
                    &c.keys_jwe,
                    c.offline,
                    c.auth_at,
                    c.expires_at
                ],
            )
            .map(drop)
        })
    }

    /// Takes (reads and deletes: codes are single-use, also when several requests or
    /// processes present one at once) an authorization code.
    pub fn take_code(&self, code_hash: &[u8; 32]) -> Result<Option<Code>, StoreError> {
        self.write(|tx| {
            one(
                tx,
                "DELETE FROM oauth_codes WHERE code_hash = ?1 RETURNING uid, client_id, \
                 scope, code_challenge, keys_jwe, offline, auth_at, expires_at",
                &args![code_hash],
            )?
            .map(|r| {
                Ok(Code {
                    uid: r.text(0)?,
                    client_id: r.text(1)?,
                    scope: r.text(2)?,
                    code_challenge: r.opt_text(3)?,
                    keys_jwe: r.opt_text(4)?,
                    offline: r.bool(5)?,
                    auth_at: r.int(6)?,
                    expires_at: r.int(7)?,
                })
            })
            .transpose()
        })
    }

    /// Stores a refresh token; beyond [`MAX_REFRESH_TOKENS`] for the account, the least
    /// recently used others go.
    pub fn insert_refresh(&self, r: &Refresh) -> Result<(), StoreError> {
        self.write(|tx| {
            let older = tx.query(
                "SELECT token_hash FROM refresh_tokens WHERE uid = ?1 AND token_hash != ?2 \
                 ORDER BY last_used_at DESC, created_at DESC",
                &args![&r.uid, &r.token_hash],
            )?;
            for o in older.iter().skip(MAX_REFRESH_TOKENS - 1) {
                tx.exec(
                    "DELETE FROM refresh_tokens WHERE token_hash = ?1",
                    &args![&o.blob(0)?[..]],
                )?;
            }
            tx.exec(
                &format!(
                    "INSERT INTO refresh_tokens ({REFRESH_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                &args![
                    &r.token_hash,
                    &r.uid,
                    &r.client_id,
                    &r.scope,
                    r.created_at,
                    r.last_used_at,
                    r.auth_at
                ],
            )
            .map(drop)
        })
    }

    /// The refresh token with this hash, marked used at `now`.
    pub fn use_refresh(&self, hash: &[u8; 32], now: i64) -> Result<Option<Refresh>, StoreError> {
        self.write(|tx| {
            one(
                tx,
                &format!(
                    "UPDATE refresh_tokens SET last_used_at = ?2 WHERE token_hash = ?1 \
                     RETURNING {REFRESH_COLS}"
                ),
                &args![hash, now],
            )?
            .as_ref()
            .map(refresh_row)
            .transpose()
        })
    }

    /// The account's refresh tokens.
    pub fn refresh_tokens(&self, uid: &str) -> Result<Vec<Refresh>, StoreError> {
        self.read(|tx| {
            let r = tx.query(
                &format!(
                    "SELECT {REFRESH_COLS} FROM refresh_tokens WHERE uid = ?1 \
                     ORDER BY created_at"
                ),
                &args![uid],
            )?;
            rows(r, refresh_row)
        })
    }

    /// Revokes a refresh token. True when it existed.
    pub fn delete_refresh(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.exec(
                "DELETE FROM refresh_tokens WHERE token_hash = ?1",
                &args![hash],
            )? > 0)
        })
    }

    /// Drops what has expired or lain unused too long (see [`Retention`]): codes and
    /// email codes past their expiry, key fetch and password change tokens, idle
    /// sessions (with their devices) and refresh tokens, and unverified accounts (with
    /// everything of theirs). Returns how many rows went.
    pub fn purge(&self, now: i64, r: &Retention) -> Result<u64, StoreError> {
        self.write(|tx| {
            let mut n = 0;
            n += tx.exec("DELETE FROM oauth_codes WHERE expires_at < ?1", &args![now])?;
            n += tx.exec("DELETE FROM email_codes WHERE expires_at < ?1", &args![now])?;
            n += tx.exec(
                "DELETE FROM tokens WHERE kind != 'sessionToken' AND created_at < ?1",
                &args![now - r.short_token_ms],
            )?;
            n += tx.exec(
                "DELETE FROM tokens WHERE kind = 'sessionToken' AND last_used_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.session_id_hash = tokens.id_hash)",
                &args![now - r.idle_session_ms],
            )?;
            let idle = now - r.idle_device_session_ms;
            n += tx.exec(
                "DELETE FROM devices WHERE session_id_hash IN (SELECT id_hash FROM tokens \
                 WHERE kind = 'sessionToken' AND last_used_at < ?1)",
                &args![idle],
            )?;
            n += tx.exec(
                "DELETE FROM tokens WHERE kind = 'sessionToken' AND last_used_at < ?1",
                &args![idle],
            )?;
            n += tx.exec(
                "DELETE FROM refresh_tokens WHERE last_used_at < ?1",
                &args![now - r.idle_refresh_ms],
            )?;
            let unverified = tx.query(
                "SELECT uid FROM accounts WHERE email_verified = 0 AND created_at < ?1",
                &args![now - r.unverified_account_ms],
            )?;
            for a in &unverified {
                delete_account_rows(tx, &a.text(0)?)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// PostgreSQL only: edits the OAuth signing keys every process shares (a JSON
    /// document), under a lock so that processes starting at once or a rotation do
    /// not race. `f` gets the stored text (None: none yet) and returns the text to
    /// store, or None to leave it. Returns the text stored afterwards.
    pub fn edit_shared_keys(
        &self,
        f: &mut dyn FnMut(Option<&str>) -> Option<String>,
    ) -> Result<Option<String>, StoreError> {
        if !self.is_shared() {
            return Err(StoreError::Type("signing keys are in the data dir".into()));
        }
        self.write(|tx| {
            tx.lock(PG_KEYS_LOCK)?;
            let old = one(
                tx,
                "SELECT keys FROM account_signing_keys WHERE id = 1",
                &[],
            )?
            .map(|r| r.text(0))
            .transpose()?;
            let Some(new) = f(old.as_deref()) else {
                return Ok(old);
            };
            tx.exec(
                "INSERT INTO account_signing_keys (id, keys) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET keys = excluded.keys",
                &args![&new],
            )?;
            Ok(Some(new))
        })
    }
}

/// See [`Store::delete_account`].
fn delete_account_uid(tx: &mut dyn Tx, uid: &str, now: i64) -> Result<Option<String>, StoreError> {
    let Some(gone) = one(
        tx,
        "DELETE FROM accounts WHERE uid = ?1 RETURNING uid, email",
        &args![uid],
    )?
    else {
        return Ok(None);
    };
    let (uid, email) = (gone.text(0)?, gone.text(1)?);
    tx.exec(
        "INSERT INTO account_deletions (uid, email, deleted_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (uid) DO UPDATE SET email = excluded.email, \
         deleted_at = excluded.deleted_at",
        &args![&uid, email, now],
    )?;
    Ok(Some(uid))
}

/// The uid an operator command by email means: the verified account of the address,
/// else its newest pending one.
fn uid_by_email(tx: &mut dyn Tx, email: &str) -> Result<Option<String>, StoreError> {
    one(
        tx,
        "SELECT uid FROM accounts WHERE normalized_email = ?1 \
         ORDER BY email_verified DESC, created_at DESC, uid LIMIT 1",
        &args![normalize_email(email)],
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// Deletes the pending (unverified) accounts of an address but `keep`, with
/// everything of theirs. How many went.
fn delete_pending(
    tx: &mut dyn Tx,
    normalized: &str,
    keep: Option<&str>,
) -> Result<usize, StoreError> {
    let pending = tx.query(
        "SELECT uid FROM accounts WHERE normalized_email = ?1 AND email_verified = 0 \
         AND uid != ?2",
        &args![normalized, keep.unwrap_or("")],
    )?;
    for r in &pending {
        delete_account_rows(tx, &r.text(0)?)?;
    }
    Ok(pending.len())
}

/// The advisory lock (PostgreSQL) under which an address's accounts are inserted or
/// verified, so that two of them never both see the address free.
fn email_lock(normalized: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("syncstore accounts email:{normalized}"));
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// An older SQLite file has `normalized_email` UNIQUE over every account: its
/// accounts table is rebuilt without that, in one transaction, with the foreign keys
/// off meanwhile (so that dropping the old table deletes nothing that refers to it).
fn migrate_email_unique(c: &rusqlite::Connection) -> Result<(), StoreError> {
    let sql: String = c.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'accounts'",
        [],
        |r| r.get(0),
    )?;
    if !sql.contains("normalized_email TEXT NOT NULL UNIQUE") {
        return Ok(());
    }
    c.execute_batch("PRAGMA foreign_keys=OFF")?;
    let done = c.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SQLITE_ACCOUNTS_REBUILD} COMMIT;"
    ));
    if done.is_err() {
        let _ = c.execute_batch("ROLLBACK");
    }
    c.execute_batch("PRAGMA foreign_keys=ON")?;
    done?;
    Ok(())
}

/// Deletes an account that never held Sync data (an unverified one) and everything
/// of it (explicitly: the foreign keys cascade too, where they are enforced).
fn delete_account_rows(tx: &mut dyn Tx, uid: &str) -> Result<(), StoreError> {
    revoke_all(tx, uid)?;
    tx.exec("DELETE FROM email_codes WHERE uid = ?1", &args![uid])?;
    tx.exec("DELETE FROM accounts WHERE uid = ?1", &args![uid])?;
    Ok(())
}

/// Deletes every token, device and refresh token of an account.
fn revoke_all(tx: &mut dyn Tx, uid: &str) -> Result<(), StoreError> {
    for table in ["devices", "tokens", "refresh_tokens", "oauth_codes"] {
        tx.exec(&format!("DELETE FROM {table} WHERE uid = ?1"), &args![uid])?;
    }
    Ok(())
}
