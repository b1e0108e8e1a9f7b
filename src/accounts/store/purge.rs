//! The accounts database's upkeep: what has expired or lain unused too long goes.

use super::accounts::delete_account_rows;
use super::{Store, StoreError};
use crate::db::args;

/// How long stored state lives unused (ms), applied by [`Store::purge`].
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Key fetch and password change tokens, from their creation.
    pub short_token_ms: i64,
    /// Sessions without a device, from their last use.
    pub idle_session_ms: i64,
    /// Sessions with a device (a Firefox that may be off for a while), from their
    /// last use.
    pub idle_device_session_ms: i64,
    /// Refresh tokens, from their last use.
    pub idle_refresh_ms: i64,
    /// Unverified accounts, from their creation.
    pub unverified_account_ms: i64,
}

impl Store {
    /// Drops what has expired or lain unused too long (see [`Retention`]): codes, email
    /// codes and device commands past their expiry, key fetch and password change tokens, idle
    /// sessions (with their devices) and refresh tokens, and unverified accounts (with
    /// everything of theirs). Returns how many rows went.
    pub fn purge(&self, now: i64, r: &Retention) -> Result<u64, StoreError> {
        self.write(|tx| {
            let mut n = 0;
            n += tx.execute("DELETE FROM oauth_codes WHERE expires_at < ?1", &args![now])?;
            n += tx.execute("DELETE FROM email_codes WHERE expires_at < ?1", &args![now])?;
            n += tx.execute(
                "DELETE FROM device_commands WHERE expires_at <= ?1",
                &args![now],
            )?;
            n += tx.execute(
                "DELETE FROM tokens WHERE kind != 'sessionToken' AND created_at < ?1",
                &args![now - r.short_token_ms],
            )?;
            n += tx.execute(
                "DELETE FROM tokens WHERE kind = 'sessionToken' AND last_used_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.session_id_hash = tokens.id_hash)",
                &args![now - r.idle_session_ms],
            )?;
            let idle = now - r.idle_device_session_ms;
            n += tx.execute(
                "DELETE FROM devices WHERE session_id_hash IN (SELECT id_hash FROM tokens \
                 WHERE kind = 'sessionToken' AND last_used_at < ?1)",
                &args![idle],
            )?;
            n += tx.execute(
                "DELETE FROM tokens WHERE kind = 'sessionToken' AND last_used_at < ?1",
                &args![idle],
            )?;
            n += tx.execute(
                "DELETE FROM refresh_tokens WHERE last_used_at < ?1",
                &args![now - r.idle_refresh_ms],
            )?;
            let unverified = tx.query(
                "SELECT uid FROM accounts WHERE email_verified = 0 AND created_at < ?1",
                &args![now - r.unverified_account_ms],
            )?;
            for a in &unverified {
                delete_account_rows(tx, &a.text(0)?)?;
                n += 1;
            }
            Ok(n)
        })
    }
}
