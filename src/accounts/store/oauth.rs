//! OAuth state: authorization codes (`oauth_codes`), refresh tokens
//! (`refresh_tokens`), both kept as their SHA-256, and the signing keys every process
//! of a shared (PostgreSQL) database uses (`account_signing_keys`).

use super::{Store, StoreError, rows};
use crate::db::{DbError, Row, args, one};

/// Most refresh tokens one account keeps (the least recently used go first).
pub const MAX_REFRESH_TOKENS: usize = 100;

/// Most unexpired authorization codes one account keeps (the oldest go first).
pub const MAX_CODES: usize = 20;

/// The advisory lock under which the shared signing keys are generated or rotated.
const PG_KEYS_LOCK: i64 = 727_276;

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

const REFRESH_COLS: &str = "token_hash, uid, client_id, scope, created_at, last_used_at, auth_at";

fn refresh_row(r: &Row) -> Result<Refresh, DbError> {
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

impl Store {
    /// Stores an authorization code under its hash; the account's expired codes go,
    /// and beyond [`MAX_CODES`] the oldest others.
    pub fn insert_code(&self, code_hash: &[u8; 32], c: &Code, now: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM oauth_codes WHERE uid = ?1 AND expires_at < ?2",
                &args![&c.uid, now],
            )?;
            let older = tx.query(
                "SELECT code_hash FROM oauth_codes WHERE uid = ?1 ORDER BY expires_at DESC",
                &args![&c.uid],
            )?;
            for r in older.iter().skip(MAX_CODES - 1) {
                tx.execute(
                    "DELETE FROM oauth_codes WHERE code_hash = ?1",
                    &args![&r.blob(0)?[..]],
                )?;
            }
            tx.execute(
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
                tx.execute(
                    "DELETE FROM refresh_tokens WHERE token_hash = ?1",
                    &args![&o.blob(0)?[..]],
                )?;
            }
            tx.execute(
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
            Ok(tx.execute(
                "DELETE FROM refresh_tokens WHERE token_hash = ?1",
                &args![hash],
            )? > 0)
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
            return Err(StoreError(DbError::Other(
                "signing keys are in the data dir".into(),
            )));
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
            tx.execute(
                "INSERT INTO account_signing_keys (id, keys) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET keys = excluded.keys",
                &args![&new],
            )?;
            Ok(Some(new))
        })
    }
}
