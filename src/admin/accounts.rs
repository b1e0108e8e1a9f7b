//! Operator commands over the accounts service's database: add, list, disable,
//! enable, delete accounts, reset a password, rotate the OAuth signing key. The
//! password is stretched here exactly as a Firefox Accounts client would (the quick
//! stretch and `authPW`), so the database only ever sees `authPW`'s hardened verifier.

use std::fmt::Write;
use std::path::Path;

use crate::accounts::store::Store;
use crate::accounts::{self, crypto};

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
}

type Result<T> = std::result::Result<T, AccountAdminError>;

/// `authPW` of a password, as a client derives it.
fn client_auth_pw(email: &str, password: &str) -> [u8; 32] {
    crypto::auth_pw(&crypto::quick_stretch(email.trim(), password))
}

/// Adds an account (marked verified: the operator vouches for it).
pub fn add(data_dir: &Path, email: &str, password: &str) -> Result<String> {
    let store = Store::open(data_dir)?;
    let a =
        accounts::insert_new_account(&store, email, &client_auth_pw(email, password), None, true)?;
    Ok(format!("added {} (uid {})", a.email, a.uid))
}

/// Lists the accounts: email, uid, state, creation time.
pub fn list(data_dir: &Path) -> Result<String> {
    let store = Store::open(data_dir)?;
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
pub fn set_disabled(data_dir: &Path, email: &str, disabled: bool) -> Result<String> {
    let store = Store::open(data_dir)?;
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
pub fn delete(data_dir: &Path, email: &str) -> Result<String> {
    let store = Store::open(data_dir)?;
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
pub fn reset_password(data_dir: &Path, email: &str, password: &str) -> Result<String> {
    let store = Store::open(data_dir)?;
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
pub fn rotate_key(data_dir: &Path) -> Result<String> {
    let kid = accounts::oauth::rotate(data_dir)?;
    Ok(format!(
        "new signing key {kid}; restart the server to sign with it"
    ))
}
