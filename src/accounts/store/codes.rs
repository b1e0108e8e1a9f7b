//! Email verification codes (`email_codes`), one per pending account, kept as their
//! SHA-256; a verified code verifies the account and retires the address's other
//! pending accounts.

use super::accounts::{delete_pending, email_lock};
use super::{Store, StoreError};
use crate::db::{args, one};

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

impl Store {
    /// Sets (replacing any earlier one) the email verification code (its SHA-256) of an
    /// account, valid until `expires_at` (ms).
    pub fn set_email_code(
        &self,
        uid: &str,
        code_hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
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
            if tx.execute("DELETE FROM email_codes WHERE uid = ?1", &args![uid])? != 1 {
                return Ok((CodeCheck::NoCode, false));
            }
            let n = tx.execute(
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
}
