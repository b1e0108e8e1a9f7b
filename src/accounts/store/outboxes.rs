//! Disabling and deleting accounts, and the two outboxes the server drains for them:
//! `account_state_changes` (disabled or enabled, for the tokenserver) and
//! `account_deletions` (Sync data still to delete).

use super::accounts::{revoke_all, uid_by_email};
use super::{Store, StoreError, rows};
use crate::db::{DbError, Tx, args, one};

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

impl Store {
    /// Disables or enables an account; disabling revokes its tokens. The change is
    /// queued for the tokenserver (`account_state_changes`, applied by the server:
    /// storage nodes refuse a disabled account's storage tokens). False: no such
    /// account.
    pub fn set_disabled(&self, email: &str, disabled: bool) -> Result<bool, StoreError> {
        let now = crate::accounts::now_ms();
        self.write(|tx| {
            let Some(uid) = uid_by_email(tx, email)? else {
                return Ok(false);
            };
            // Disabling also moves the account's token generation (`verifier_set_at`,
            // the access tokens' `fxa-generation`) forward: every access token issued
            // before is refused for good, also once the account is enabled again.
            tx.execute(
                "UPDATE accounts SET disabled = ?2, verifier_set_at = CASE \
                 WHEN CAST(?2 AS BIGINT) = 0 THEN verifier_set_at \
                 WHEN verifier_set_at < ?3 THEN ?3 ELSE verifier_set_at + 1 END \
                 WHERE uid = ?1",
                &args![&uid, disabled, now],
            )?;
            if disabled {
                revoke_all(tx, &uid)?;
            }
            tx.execute(
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
            tx.execute(
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
            tx.execute("DELETE FROM account_deletions WHERE uid = ?1", &args![uid])
                .map(drop)
        })
    }
}

/// See [`Store::delete_account`].
fn delete_account_uid(tx: &mut dyn Tx, uid: &str, now: i64) -> Result<Option<String>, DbError> {
    let Some(gone) = one(
        tx,
        "DELETE FROM accounts WHERE uid = ?1 RETURNING uid, email",
        &args![uid],
    )?
    else {
        return Ok(None);
    };
    let (uid, email) = (gone.text(0)?, gone.text(1)?);
    tx.execute(
        "INSERT INTO account_deletions (uid, email, deleted_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (uid) DO UPDATE SET email = excluded.email, \
         deleted_at = excluded.deleted_at",
        &args![&uid, email, now],
    )?;
    Ok(Some(uid))
}
