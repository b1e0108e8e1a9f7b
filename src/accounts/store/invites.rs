//! Invite codes (`invites`), kept as their SHA-256.

use super::{Store, StoreError, rows};
use crate::db::{args, one};

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

impl Store {
    /// Stores a new invite code (its SHA-256), usable once until `expires_at` (ms).
    pub fn insert_invite(
        &self,
        code_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
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
}
