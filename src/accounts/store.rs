//! The accounts database: `<data_dir>/accounts.sqlite` (accounts, tokens, devices,
//! OAuth codes and refresh tokens). Every secret a client presents later (token ids,
//! codes, refresh tokens) is kept as its SHA-256 only.

use std::path::Path;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{OptionalExtension, Row, params};

/// Errors of the accounts database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("accounts database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// No connection could be had.
    #[error("accounts database pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// The file could not be created.
    #[error("accounts database file: {0}")]
    Io(String),
}

const SCHEMA: &str = "
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

/// The accounts database.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<SqliteConnectionManager>,
}

fn arr(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "expected 32 bytes".into(),
        )
    })
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        uid: r.get(0)?,
        email: r.get(1)?,
        auth_salt: arr(r.get(2)?)?,
        verify_hash: arr(r.get(3)?)?,
        wrap_wrap_kb: arr(r.get(4)?)?,
        ka: arr(r.get(5)?)?,
        verifier_set_at: r.get(6)?,
        keys_changed_at: r.get(7)?,
        created_at: r.get(8)?,
        disabled: r.get(9)?,
        display_name: r.get(10)?,
        email_verified: r.get(11)?,
    })
}

const ACCOUNT_COLS: &str = "uid, email, auth_salt, verify_hash, wrap_wrap_kb, ka, \
    verifier_set_at, keys_changed_at, created_at, disabled, display_name, email_verified";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id_hash: arr(r.get(0)?)?,
        kind: r.get(1)?,
        uid: r.get(2)?,
        auth_key: arr(r.get(3)?)?,
        data: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        user_agent: r.get(7)?,
    })
}

fn device_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        uid: r.get(1)?,
        session_id_hash: r.get(2)?,
        name: r.get(3)?,
        kind: r.get(4)?,
        push_callback: r.get(5)?,
        push_public_key: r.get(6)?,
        push_auth_key: r.get(7)?,
        available_commands: r.get(8)?,
        created_at: r.get(9)?,
        last_access_at: r.get(10)?,
    })
}

const DEVICE_COLS: &str = "id, uid, session_id_hash, name, type, push_callback, \
    push_public_key, push_auth_key, available_commands, created_at, last_access_at";

/// Lower-cased email, the key accounts are looked up by.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

impl Store {
    /// Opens (creating) `<data_dir>/accounts.sqlite`, readable by the owner only.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
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
        c.execute_batch(SCHEMA)?;
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
        Ok(Store { pool })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Inserts a new account, taking the invite code (SHA-256) if one is given, in one
    /// transaction: a refused invite makes no account and a taken email spends no invite.
    pub fn insert_account(
        &self,
        a: &Account,
        invite: Option<&[u8; 32]>,
    ) -> Result<Inserted, StoreError> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        let n = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO accounts ({ACCOUNT_COLS}, normalized_email) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                a.uid,
                a.email,
                a.auth_salt,
                a.verify_hash,
                a.wrap_wrap_kb,
                a.ka,
                a.verifier_set_at,
                a.keys_changed_at,
                a.created_at,
                a.disabled,
                a.display_name,
                a.email_verified,
                normalize_email(&a.email)
            ],
        )?;
        if n != 1 {
            return Ok(Inserted::EmailTaken);
        }
        if let Some(code_hash) = invite {
            let n = tx.execute(
                "UPDATE invites SET used_at = ?2, used_by = ?3 \
                 WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                params![code_hash, a.created_at, a.uid],
            )?;
            if n != 1 {
                return Ok(Inserted::BadInvite);
            }
        }
        tx.commit()?;
        Ok(Inserted::Created)
    }

    /// The account with this email (any case).
    pub fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE normalized_email = ?1"),
                [normalize_email(email)],
                account_row,
            )
            .optional()?)
    }

    /// The account with this uid.
    pub fn account(&self, uid: &str) -> Result<Option<Account>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE uid = ?1"),
                [uid],
                account_row,
            )
            .optional()?)
    }

    /// Every account, by email.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY normalized_email"
        ))?;
        let rows = st.query_map([], account_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Disables or enables an account; disabling revokes its tokens. False: no such
    /// account.
    pub fn set_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        let uid: Option<String> = tx
            .query_row(
                "UPDATE accounts SET disabled = ?2 WHERE normalized_email = ?1 RETURNING uid",
                params![normalize_email(email), disabled],
                |r| r.get(0),
            )
            .optional()?;
        if let (Some(uid), true) = (&uid, disabled) {
            revoke_all(&tx, uid)?;
        }
        tx.commit()?;
        Ok(uid.is_some())
    }

    /// Deletes an account and everything of it, and queues the deletion of its Sync
    /// data (`account_deletions`, drained by the server). The uid, or None: no such
    /// account.
    pub fn delete_account(&self, email: &str, now: i64) -> Result<Option<String>, StoreError> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        let gone: Option<(String, String)> = tx
            .query_row(
                "DELETE FROM accounts WHERE normalized_email = ?1 RETURNING uid, email",
                [normalize_email(email)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((uid, email)) = &gone {
            tx.execute(
                "INSERT OR REPLACE INTO account_deletions (uid, email, deleted_at) \
                 VALUES (?1, ?2, ?3)",
                params![uid, email, now],
            )?;
        }
        tx.commit()?;
        Ok(gone.map(|(uid, _)| uid))
    }

    /// Deleted accounts whose Sync data is still to be deleted, oldest first.
    pub fn pending_deletions(&self, limit: u32) -> Result<Vec<Deletion>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT uid, email, deleted_at FROM account_deletions \
             ORDER BY deleted_at LIMIT ?1",
        )?;
        let rows = st.query_map([limit], |r| {
            Ok(Deletion {
                uid: r.get(0)?,
                email: r.get(1)?,
                deleted_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The Sync data of a deleted account is gone: forget the deletion.
    pub fn finish_deletion(&self, uid: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute("DELETE FROM account_deletions WHERE uid = ?1", [uid])?;
        Ok(())
    }

    /// Stores a new invite code (its SHA-256), usable once until `expires_at` (ms).
    pub fn insert_invite(
        &self,
        code_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO invites (code_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
            params![code_hash, now, expires_at],
        )?;
        Ok(())
    }

    /// Every invite, newest first.
    pub fn invites(&self) -> Result<Vec<Invite>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT i.created_at, i.expires_at, i.used_at, a.email FROM invites i \
             LEFT JOIN accounts a ON a.uid = i.used_by ORDER BY i.created_at DESC",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Invite {
                created_at: r.get(0)?,
                expires_at: r.get(1)?,
                used_at: r.get(2)?,
                used_by: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (replacing any earlier one) the email verification code (its SHA-256) of an
    /// account, valid until `expires_at` (ms).
    pub fn set_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT OR REPLACE INTO email_codes (uid, code_hash, expires_at) \
             VALUES (?1, ?2, ?3)",
            params![uid, code_hash, expires_at],
        )?;
        Ok(())
    }

    /// Checks an email verification code; when it matches and is unexpired the account
    /// becomes verified and the code is spent. Comparison of the hashes is constant-time.
    pub fn verify_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        let row: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT code_hash, expires_at FROM email_codes WHERE uid = ?1",
                [uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((stored, expires_at)) = row else {
            return Ok(CodeCheck::NoCode);
        };
        if expires_at <= now {
            return Ok(CodeCheck::Expired);
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &code_hash[..])) {
            return Ok(CodeCheck::Wrong);
        }
        tx.execute("DELETE FROM email_codes WHERE uid = ?1", [uid])?;
        tx.execute(
            "UPDATE accounts SET email_verified = 1 WHERE uid = ?1",
            [uid],
        )?;
        tx.commit()?;
        Ok(CodeCheck::Verified)
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
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE accounts SET auth_salt = ?2, verify_hash = ?3, wrap_wrap_kb = ?4, \
             verifier_set_at = ?5, \
             keys_changed_at = CASE WHEN ?6 THEN ?5 ELSE keys_changed_at END WHERE uid = ?1",
            params![uid, auth_salt, verify_hash, wrap_wrap_kb, now, keys_changed],
        )?;
        revoke_all(&tx, uid)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the profile's display name.
    pub fn set_display_name(&self, uid: &str, name: Option<&str>) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE accounts SET display_name = ?2 WHERE uid = ?1",
            params![uid, name],
        )?;
        Ok(())
    }

    /// Stores a token.
    pub fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO tokens (id_hash, kind, uid, auth_key, data, created_at, \
             last_used_at, user_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                t.id_hash,
                t.kind,
                t.uid,
                t.auth_key,
                t.data,
                t.created_at,
                t.last_used_at,
                t.user_agent
            ],
        )?;
        Ok(())
    }

    /// The token with this id hash and kind.
    pub fn token(&self, id_hash: &[u8; 32], kind: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id_hash, kind, uid, auth_key, data, created_at, last_used_at, \
                 user_agent FROM tokens WHERE id_hash = ?1 AND kind = ?2",
                params![id_hash, kind],
                token_row,
            )
            .optional()?)
    }

    /// Records a token's use.
    pub fn touch_token(&self, id_hash: &[u8; 32], now: i64) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE tokens SET last_used_at = ?2 WHERE id_hash = ?1",
            params![id_hash, now],
        )?;
        Ok(())
    }

    /// Deletes a token (and the device of a session). True when it existed.
    pub fn delete_token(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let c = self.conn()?;
        c.execute("DELETE FROM devices WHERE session_id_hash = ?1", [id_hash])?;
        Ok(c.execute("DELETE FROM tokens WHERE id_hash = ?1", [id_hash])? > 0)
    }

    /// The account's sessions.
    pub fn sessions(&self, uid: &str) -> Result<Vec<TokenRow>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT id_hash, kind, uid, auth_key, data, created_at, last_used_at, user_agent \
             FROM tokens WHERE uid = ?1 AND kind = 'sessionToken' ORDER BY created_at",
        )?;
        let rows = st.query_map([uid], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or updates a device (by id).
    pub fn upsert_device(&self, d: &Device) -> Result<(), StoreError> {
        self.conn()?.execute(
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
            params![
                d.id,
                d.uid,
                d.session_id_hash,
                d.name,
                d.kind,
                d.push_callback,
                d.push_public_key,
                d.push_auth_key,
                d.available_commands,
                d.created_at,
                d.last_access_at
            ],
        )?;
        Ok(())
    }

    /// The account's devices.
    pub fn devices(&self, uid: &str) -> Result<Vec<Device>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE uid = ?1 ORDER BY created_at"
        ))?;
        let rows = st.query_map([uid], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a device and the session it belongs to. True when it existed.
    pub fn delete_device(&self, uid: &str, id: &str) -> Result<bool, StoreError> {
        let mut c = self.conn()?;
        let tx = c.transaction()?;
        let session: Option<Option<Vec<u8>>> = tx
            .query_row(
                "DELETE FROM devices WHERE uid = ?1 AND id = ?2 RETURNING session_id_hash",
                params![uid, id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(Some(s)) = &session {
            tx.execute("DELETE FROM tokens WHERE id_hash = ?1", [s])?;
        }
        tx.commit()?;
        Ok(session.is_some())
    }

    /// Stores an authorization code under its hash.
    pub fn insert_code(&self, code_hash: &[u8; 32], c: &Code) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO oauth_codes (code_hash, uid, client_id, scope, code_challenge, \
             keys_jwe, offline, auth_at, expires_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![
                code_hash,
                c.uid,
                c.client_id,
                c.scope,
                c.code_challenge,
                c.keys_jwe,
                c.offline,
                c.auth_at,
                c.expires_at
            ],
        )?;
        Ok(())
    }

    /// Takes (reads and deletes: codes are single-use) an authorization code.
    pub fn take_code(&self, code_hash: &[u8; 32]) -> Result<Option<Code>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "DELETE FROM oauth_codes WHERE code_hash = ?1 RETURNING uid, client_id, \
                 scope, code_challenge, keys_jwe, offline, auth_at, expires_at",
                [code_hash],
                |r| {
                    Ok(Code {
                        uid: r.get(0)?,
                        client_id: r.get(1)?,
                        scope: r.get(2)?,
                        code_challenge: r.get(3)?,
                        keys_jwe: r.get(4)?,
                        offline: r.get(5)?,
                        auth_at: r.get(6)?,
                        expires_at: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores a refresh token.
    pub fn insert_refresh(&self, r: &Refresh) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO refresh_tokens (token_hash, uid, client_id, scope, created_at, \
             last_used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.token_hash,
                r.uid,
                r.client_id,
                r.scope,
                r.created_at,
                r.last_used_at
            ],
        )?;
        Ok(())
    }

    /// The refresh token with this hash, marked used at `now`.
    pub fn use_refresh(&self, hash: &[u8; 32], now: i64) -> Result<Option<Refresh>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "UPDATE refresh_tokens SET last_used_at = ?2 WHERE token_hash = ?1 \
                 RETURNING token_hash, uid, client_id, scope, created_at, last_used_at",
                params![hash, now],
                |r| {
                    Ok(Refresh {
                        token_hash: arr(r.get(0)?)?,
                        uid: r.get(1)?,
                        client_id: r.get(2)?,
                        scope: r.get(3)?,
                        created_at: r.get(4)?,
                        last_used_at: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// The account's refresh tokens.
    pub fn refresh_tokens(&self, uid: &str) -> Result<Vec<Refresh>, StoreError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT token_hash, uid, client_id, scope, created_at, last_used_at \
             FROM refresh_tokens WHERE uid = ?1 ORDER BY created_at",
        )?;
        let rows = st.query_map([uid], |r| {
            Ok(Refresh {
                token_hash: arr(r.get(0)?)?,
                uid: r.get(1)?,
                client_id: r.get(2)?,
                scope: r.get(3)?,
                created_at: r.get(4)?,
                last_used_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a refresh token. True when it existed.
    pub fn delete_refresh(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .conn()?
            .execute("DELETE FROM refresh_tokens WHERE token_hash = ?1", [hash])?
            > 0)
    }

    /// Drops expired codes and single-use tokens older than `max_age_ms`.
    pub fn purge(&self, now: i64, max_age_ms: i64) -> Result<(), StoreError> {
        let c = self.conn()?;
        c.execute("DELETE FROM oauth_codes WHERE expires_at < ?1", [now])?;
        c.execute(
            "DELETE FROM tokens WHERE kind != 'sessionToken' AND created_at < ?1",
            [now - max_age_ms],
        )?;
        Ok(())
    }
}

/// Deletes every token, device and refresh token of an account.
fn revoke_all(tx: &rusqlite::Transaction<'_>, uid: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM devices WHERE uid = ?1", [uid])?;
    tx.execute("DELETE FROM tokens WHERE uid = ?1", [uid])?;
    tx.execute("DELETE FROM refresh_tokens WHERE uid = ?1", [uid])?;
    tx.execute("DELETE FROM oauth_codes WHERE uid = ?1", [uid])?;
    Ok(())
}
