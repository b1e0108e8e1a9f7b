//! Operator commands over the accounts service's database: add, list, disable,
//! enable, delete accounts, reset a password, rotate the OAuth signing key. The
//! password is stretched here exactly as a Firefox Accounts client would (the quick
//! stretch and `authPW`), so the database only ever sees `authPW`'s hardened verifier.
//! The database is the one the server uses: the data dir's SQLite file, or the
//! tokenserver's PostgreSQL database when `tokenserver_database_url` names one.

use std::fmt::Write;
use std::path::Path;

use super::Actor;
use crate::accounts::store::Store;
use crate::accounts::{self, crypto};
use crate::tokenserver::db::AssignmentDb;

/// Errors of the account commands.
#[derive(Debug, thiserror::Error)]
pub enum AccountAdminError {
    /// The accounts database failed.
    #[error(transparent)]
    Store(#[from] accounts::store::StoreError),
    /// The service refused (e.g. the email is taken).
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    /// The signing keys could not be rotated.
    #[error(transparent)]
    Keys(#[from] accounts::oauth::KeyError),
    /// No account has this email.
    #[error("no account {0}")]
    NoSuchAccount(String),
    /// The change was made but its audit row could not be written.
    #[error("audit log: {0}")]
    Audit(#[source] crate::tokenserver::db::DbError),
}

type Result<T> = std::result::Result<T, AccountAdminError>;

/// `authPW` of a password, as a client derives it.
fn client_auth_pw(email: &str, password: &str) -> [u8; 32] {
    crypto::auth_pw(&crypto::quick_stretch(email.trim(), password))
}

/// Adds an account (marked verified: the operator vouches for it).
pub fn add(store: &Store, email: &str, password: &str) -> Result<String> {
    let a =
        accounts::insert_new_account(store, email, &client_auth_pw(email, password), None, true)?;
    Ok(format!("added {} (uid {})", a.email, a.uid))
}

/// Parses an invite's lifetime: a number with `m`, `h` or `d` (minutes, hours, days),
/// at most a year; ms.
pub fn parse_valid_for(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms <= 366 * 86_400_000)
}

/// A new invite code: shown once (only its hash is stored).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewInvite {
    /// The code to hand out.
    pub code: String,
    /// When it stops working, ms.
    pub expires_at: i64,
}

/// Makes a single-use invite code valid for `valid_for_ms` and records it in the audit
/// log of the assignment database `db` for `actor`.
pub fn create_invite(
    store: &Store,
    db: &AssignmentDb,
    actor: &Actor,
    valid_for_ms: i64,
) -> Result<NewInvite> {
    let (code, hash) = accounts::new_invite_code();
    let now = accounts::now_ms();
    let expires_at = now + valid_for_ms;
    store.insert_invite(&hash, now, expires_at)?;
    // The accounts database may be another database than the assignment database (the
    // data dir's accounts.sqlite beside tokenserver.sqlite), so the audit row cannot
    // share the invite's transaction: it is written right after it.
    let detail = format!("valid until {} UTC", super::time_text(expires_at));
    db.transaction(|tx| super::audit(tx, actor, "account.invite", "accounts", &detail))
        .map_err(AccountAdminError::Audit)?;
    Ok(NewInvite { code, expires_at })
}

/// `account invite`: makes a single-use invite code (audited) and prints it (only its
/// SHA-256 is stored: it cannot be shown again).
pub fn invite(
    store: &Store,
    db: &AssignmentDb,
    actor: &Actor,
    valid_for_ms: i64,
) -> Result<String> {
    let invite = create_invite(store, db, actor, valid_for_ms)?;
    Ok(format!(
        "{}\n(single use, valid until {}; only its hash is stored)",
        invite.code,
        time_text(invite.expires_at)
    ))
}

/// Lists the invites: created, expires, used (when, by whom).
pub fn invites(store: &Store) -> Result<String> {
    let now = accounts::now_ms();
    let mut out = String::from("created\texpires\tused\tused by\n");
    let list = store.invites()?;
    for i in &list {
        let used = match i.used_at {
            Some(t) => time_text(t),
            None if i.expires_at <= now => "expired".into(),
            None => "unused".into(),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{used}\t{}",
            time_text(i.created_at),
            time_text(i.expires_at),
            i.used_by.as_deref().unwrap_or("-")
        );
    }
    if list.is_empty() {
        out = "no invites\n".into();
    }
    Ok(out)
}

/// A time (ms since the epoch) as `YYYY-MM-DD HH:MM UTC`.
fn time_text(ms: i64) -> String {
    let (y, m, d, h, mi, _) = super::civil(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02} UTC")
}

/// Lists the accounts: email, uid, state, creation time.
pub fn list(store: &Store) -> Result<String> {
    let mut out = String::new();
    for a in store.accounts()? {
        let state = if a.disabled { "disabled" } else { "enabled" };
        let _ = writeln!(
            out,
            "{}\t{}\t{state}\tcreated {}",
            a.email,
            a.uid,
            a.created_at / 1000
        );
    }
    if out.is_empty() {
        out.push_str("no accounts\n");
    }
    Ok(out)
}

/// Disables (revoking every session and token) or enables an account.
pub fn set_disabled(store: &Store, email: &str, disabled: bool) -> Result<String> {
    if !store.set_disabled(email, disabled)? {
        return Err(AccountAdminError::NoSuchAccount(email.into()));
    }
    Ok(format!(
        "{} {email}",
        if disabled { "disabled" } else { "enabled" }
    ))
}

/// Deletes an account and everything of it, and queues the deletion of its Sync data
/// (carried out by the running server).
pub fn delete(store: &Store, email: &str) -> Result<String> {
    if store.delete_account(email, accounts::now_ms())?.is_none() {
        return Err(AccountAdminError::NoSuchAccount(email.into()));
    }
    Ok(format!(
        "deleted {email}; the running server deletes its Sync data within seconds"
    ))
}

/// Sets a new password. kB cannot survive without the old password, so the account
/// gets new keys (Sync data encrypted with the old ones is unreadable; clients start
/// over) and every session is revoked.
pub fn reset_password(store: &Store, email: &str, password: &str) -> Result<String> {
    let a = store
        .account_by_email(email)?
        .ok_or_else(|| AccountAdminError::NoSuchAccount(email.into()))?;
    let auth_pw = client_auth_pw(&a.email, password);
    let salt = crypto::random32();
    let h = crypto::harden(&auth_pw, &salt);
    store.set_password(
        &a.uid,
        &salt,
        &h.verify_hash,
        &crypto::random32(),
        accounts::now_ms(),
        true,
    )?;
    Ok(format!(
        "password reset for {}: new keys, every session signed out",
        a.email
    ))
}

/// Adds a new OAuth signing key; the old one stays published until its tokens expire.
/// A running server picks it up when restarted.
/// With the shared PostgreSQL database every process of it must be restarted.
pub fn rotate_key(data_dir: &Path, store: &Store) -> Result<String> {
    let kid = accounts::oauth::rotate(data_dir, store)?;
    Ok(format!(
        "new signing key {kid}; restart the server (every process sharing the database) to sign with it"
    ))
}
