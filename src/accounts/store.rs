//! The accounts database (accounts, tokens, devices, OAuth codes and refresh tokens,
//! invites, email codes, the outbox of deleted accounts): `<data_dir>/accounts.sqlite`
//! by default, or the tokenserver's PostgreSQL database when it has one, so that
//! several processes serve one set of accounts. The SQL is written once (see
//! [`backend`]). Every secret a client presents later (token ids, codes, refresh
//! tokens) is kept as its SHA-256 only.

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
    normalized_email TEXT NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL
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
";

/// The same tables in PostgreSQL (BYTEA, BIGINT; booleans are 0/1 as in SQLite). Their
/// names do not clash with the tokenserver's (`nodes`, `users`, `settings`, ...);
/// `account_signing_keys` holds the OAuth signing keys every process shares.
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
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
CREATE TABLE IF NOT EXISTS account_signing_keys (
    id BIGINT PRIMARY KEY,
    keys TEXT NOT NULL
);
";

/// Columns added after the first release, with their definitions: added to an older
/// file when it is opened.
const ADDED_COLUMNS: &[(&str, &str, &str)] =
    &[("accounts", "email_verified", "INTEGER NOT NULL DEFAULT 1")];

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
    /// When the user authenticated, s.
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
}

/// What `insert_account` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The account exists now (and the invite, if any, is spent).
    Created,
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

const REFRESH_COLS: &str = "token_hash, uid, client_id, scope, created_at, last_used_at";

fn refresh_row(r: &Row) -> Result<Refresh, StoreError> {
    Ok(Refresh {
        token_hash: r.b32(0)?,
        uid: r.text(1)?,
        client_id: r.text(2)?,
        scope: r.text(3)?,
        created_at: r.int(4)?,
        last_used_at: r.int(5)?,
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
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                 PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
            )
        });
        let pool = r2d2::Pool::builder().max_size(4).build(manager)?;
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
    pub fn insert_account(
        &self,
        a: &Account,
        invite: Option<&[u8; 32]>,
    ) -> Result<Inserted, StoreError> {
        self.tx(true, |tx| {
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
                    normalize_email(&a.email)
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
            Ok((Inserted::Created, true))
        })
    }

    /// The account with this email (any case).
    pub fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        self.read(|tx| {
            one(
                tx,
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE normalized_email = ?1"),
                &args![normalize_email(email)],
            )?
            .as_ref()
            .map(account_row)
            .transpose()
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

    /// Disables or enables an account; disabling revokes its tokens. False: no such
    /// account.
    pub fn set_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        self.write(|tx| {
            let uid = one(
                tx,
                "UPDATE accounts SET disabled = ?2 WHERE normalized_email = ?1 RETURNING uid",
                &args![normalize_email(email), disabled],
            )?
            .map(|r| r.text(0))
            .transpose()?;
            if let (Some(uid), true) = (&uid, disabled) {
                revoke_all(tx, uid)?;
            }
            Ok(uid.is_some())
        })
    }

    /// Deletes an account and everything of it, and queues the deletion of its Sync
    /// data (`account_deletions`, drained by the server). The uid, or None: no such
    /// account.
    pub fn delete_account(&self, email: &str, now: i64) -> Result<Option<String>, StoreError> {
        self.write(|tx| {
            let Some(gone) = one(
                tx,
                "DELETE FROM accounts WHERE normalized_email = ?1 RETURNING uid, email",
                &args![normalize_email(email)],
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
        })
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
    /// becomes verified and the code is spent. Comparison of the hashes is constant-time.
    pub fn verify_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        self.write(|tx| {
            let Some(row) = one(
                tx,
                "SELECT code_hash, expires_at FROM email_codes WHERE uid = ?1",
                &args![uid],
            )?
            else {
                return Ok(CodeCheck::NoCode);
            };
            let (stored, expires_at) = (row.blob(0)?, row.int(1)?);
            if expires_at <= now {
                return Ok(CodeCheck::Expired);
            }
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &code_hash[..])) {
                return Ok(CodeCheck::Wrong);
            }
            // Spent by whoever deletes it first.
            if tx.exec("DELETE FROM email_codes WHERE uid = ?1", &args![uid])? != 1 {
                return Ok(CodeCheck::NoCode);
            }
            tx.exec(
                "UPDATE accounts SET email_verified = 1 WHERE uid = ?1",
                &args![uid],
            )?;
            Ok(CodeCheck::Verified)
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

    /// Stores a token.
    pub fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.write(|tx| {
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

    /// Inserts or updates a device (by id).
    pub fn upsert_device(&self, d: &Device) -> Result<(), StoreError> {
        self.write(|tx| {
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

    /// Stores an authorization code under its hash.
    pub fn insert_code(&self, code_hash: &[u8; 32], c: &Code) -> Result<(), StoreError> {
        self.write(|tx| {
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

    /// Stores a refresh token.
    pub fn insert_refresh(&self, r: &Refresh) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                &format!(
                    "INSERT INTO refresh_tokens ({REFRESH_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                &args![
                    &r.token_hash,
                    &r.uid,
                    &r.client_id,
                    &r.scope,
                    r.created_at,
                    r.last_used_at
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

    /// Drops expired codes and single-use tokens older than `max_age_ms`.
    pub fn purge(&self, now: i64, max_age_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec("DELETE FROM oauth_codes WHERE expires_at < ?1", &args![now])?;
            tx.exec(
                "DELETE FROM tokens WHERE kind != 'sessionToken' AND created_at < ?1",
                &args![now - max_age_ms],
            )?;
            Ok(())
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

/// Deletes every token, device and refresh token of an account.
fn revoke_all(tx: &mut dyn Tx, uid: &str) -> Result<(), StoreError> {
    for table in ["devices", "tokens", "refresh_tokens", "oauth_codes"] {
        tx.exec(&format!("DELETE FROM {table} WHERE uid = ?1"), &args![uid])?;
    }
    Ok(())
}
