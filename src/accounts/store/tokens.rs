//! Hawk tokens (`tokens`): sessions, key fetch and password change tokens, kept
//! under the SHA-256 of their id.

use super::{Store, StoreError, rows};
use crate::db::{DbError, Row, args, one};

/// Most sessions one account keeps (the least recently used go first, with their
/// devices); also the most key fetch and password change tokens (the oldest go).
pub const MAX_TOKENS_PER_KIND: usize = 100;

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

const TOKEN_COLS: &str = "id_hash, kind, uid, auth_key, data, created_at, last_used_at, user_agent";

fn token_row(r: &Row) -> Result<TokenRow, DbError> {
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

impl Store {
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
                tx.execute(
                    "DELETE FROM devices WHERE session_id_hash = ?1",
                    &args![&id[..]],
                )?;
                tx.execute("DELETE FROM tokens WHERE id_hash = ?1", &args![&id[..]])?;
            }
            tx.execute(
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
            tx.execute(
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
            tx.execute(
                "DELETE FROM devices WHERE session_id_hash = ?1",
                &args![id_hash],
            )?;
            Ok(tx.execute("DELETE FROM tokens WHERE id_hash = ?1", &args![id_hash])? > 0)
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
}
