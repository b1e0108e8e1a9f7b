//! The accounts themselves (`accounts`): sign-up (with its invite and the pending
//! accounts of an address), look-up by email or uid, password and profile changes, and
//! the helpers the other files delete an account's rows with.

use super::{Store, StoreError, normalize_email, rows};
use crate::db::{DbError, Row, Tx, args, one};

/// Most pending (unverified) accounts of one address whose password a sign-in by
/// email tries, newest first: each try is a hardening.
pub const MAX_PENDING_SIGN_IN: usize = 3;

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

const ACCOUNT_COLS: &str = "uid, email, auth_salt, verify_hash, wrap_wrap_kb, ka, \
    verifier_set_at, keys_changed_at, created_at, disabled, display_name, email_verified";

fn account_row(r: &Row) -> Result<Account, DbError> {
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

impl Store {
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
            let n = tx.execute(
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
                let n = tx.execute(
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

    /// How many accounts there are (without reading them).
    pub fn count_accounts(&self) -> Result<u64, StoreError> {
        self.read(|tx| match one(tx, "SELECT COUNT(*) FROM accounts", &[])? {
            Some(r) => Ok(u64::try_from(r.int(0)?).unwrap_or(0)),
            None => Ok(0),
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
            tx.execute(
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
            tx.execute(
                "UPDATE accounts SET display_name = ?2 WHERE uid = ?1",
                &args![uid, name],
            )
            .map(drop)
        })
    }
}

/// The uid an operator command by email means: the verified account of the address,
/// else its newest pending one.
pub(super) fn uid_by_email(tx: &mut dyn Tx, email: &str) -> Result<Option<String>, DbError> {
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
pub(super) fn delete_pending(
    tx: &mut dyn Tx,
    normalized: &str,
    keep: Option<&str>,
) -> Result<usize, DbError> {
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
pub(super) fn email_lock(normalized: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("syncstore accounts email:{normalized}"));
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Deletes an account that never held Sync data (an unverified one) and everything
/// of it (explicitly: the foreign keys cascade too, where they are enforced).
pub(super) fn delete_account_rows(tx: &mut dyn Tx, uid: &str) -> Result<(), DbError> {
    revoke_all(tx, uid)?;
    tx.execute("DELETE FROM email_codes WHERE uid = ?1", &args![uid])?;
    tx.execute("DELETE FROM accounts WHERE uid = ?1", &args![uid])?;
    Ok(())
}

/// Deletes every token, device (with its queued commands) and refresh token of an
/// account.
pub(super) fn revoke_all(tx: &mut dyn Tx, uid: &str) -> Result<(), DbError> {
    for table in [
        "device_commands",
        "devices",
        "tokens",
        "refresh_tokens",
        "oauth_codes",
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE uid = ?1"), &args![uid])?;
    }
    Ok(())
}
