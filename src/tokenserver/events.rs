//! Account events from FxA's event broker (Security Event Tokens, verified by
//! `fxa::FxaVerifier::verify_event`): what each event type means for the assignment
//! database. `delete-user` retires the account's rows (its data is then deleted on the
//! nodes by the caller, see `cluster::delete_retired`); `password-change` raises the
//! user's generation so tokens minted before the change are refused.
//!
//! Redeliveries are harmless by construction: a deletion touches only rows created
//! before the event was issued, a generation only ever rises. A bounded memory of
//! recent `jti`s only spares the database the repeated work.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use super::db::{DbError, SqlTx};
use super::{KEYS_CHANGED_AT_SKEW_MS, Tokenserver, TokenserverError, store};

/// The URI prefix of FxA's event types.
pub const EVENT_PREFIX: &str = "https://schemas.accounts.firefox.com/event/";
/// Most event ids remembered (when full, expired ones go first, then all: a
/// redelivery is harmless anyway).
const MAX_REMEMBERED_EVENTS: usize = 100_000;

/// One event of a Security Event Token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// The account was deleted: retire the user, delete their data.
    DeleteUser,
    /// The password changed at `change_time` (ms): older tokens are refused.
    PasswordChange {
        /// When, ms (FxA's clock); `None` when the event did not say.
        change_time: Option<i64>,
    },
    /// Profile data changed (nothing of it is kept here).
    ProfileChange,
    /// A subscription changed (nothing of it is kept here).
    SubscriptionStateChange,
    /// A type this server does not know.
    Unknown,
}

impl AccountEvent {
    /// Reads one entry of the `events` claim.
    pub fn parse(uri: &str, payload: &Value) -> AccountEvent {
        match uri.strip_prefix(EVENT_PREFIX).unwrap_or("") {
            "delete-user" => AccountEvent::DeleteUser,
            "password-change" => AccountEvent::PasswordChange {
                change_time: payload.get("changeTime").and_then(Value::as_i64),
            },
            "profile-change" => AccountEvent::ProfileChange,
            "subscription-state-change" => AccountEvent::SubscriptionStateChange,
            _ => AccountEvent::Unknown,
        }
    }

    /// The metrics label of the type (a fixed set).
    pub fn label(&self) -> &'static str {
        match self {
            AccountEvent::DeleteUser => "delete-user",
            AccountEvent::PasswordChange { .. } => "password-change",
            AccountEvent::ProfileChange => "profile-change",
            AccountEvent::SubscriptionStateChange => "subscription-state-change",
            AccountEvent::Unknown => "unknown",
        }
    }
}

/// A uid whose data is to be deleted, and the URL of the node holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredUid {
    /// The storage uid (no longer current).
    pub uid: i64,
    /// The node's URL; `None` when the node was removed (nothing to reach).
    pub node: Option<String>,
}

/// Ids of recently processed events → when they stop mattering (unix seconds).
#[derive(Debug, Default)]
pub struct SeenEvents(Mutex<HashMap<String, i64>>);

impl SeenEvents {
    /// Whether event `jti` was processed already.
    pub fn seen(&self, jti: &str) -> bool {
        self.0.lock().map(|m| m.contains_key(jti)).unwrap_or(false)
    }

    /// Records that `jti` was processed; remembered until `until` (unix seconds).
    pub fn remember(&self, jti: &str, until: i64, now: i64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_REMEMBERED_EVENTS {
                m.retain(|_, t| *t >= now);
                if m.len() >= MAX_REMEMBERED_EVENTS {
                    m.clear();
                }
            }
            m.insert(jti.to_string(), until);
        }
    }
}

/// Retires every row of `fxa_uid` created at or before `cutoff` (ms): the current one
/// is marked replaced (the next sign-in gets a fresh uid) and its node slot freed; the
/// key history is forgotten. Returns the uids whose data is to be deleted.
pub fn retire_account(
    tx: &mut dyn SqlTx,
    fxa_uid: &str,
    cutoff: i64,
    now: i64,
) -> Result<Vec<RetiredUid>, DbError> {
    tx.lock_key(fxa_uid)?;
    let rows = store::user_rows_before(tx, fxa_uid, cutoff)?;
    for row in rows.iter().filter(|r| r.current) {
        store::replace_user(tx, row.uid, now)?;
        if row.node.is_some() {
            store::release_slot(tx, row.node_id)?;
        }
    }
    if !rows.is_empty() {
        store::forget_client_states(tx, fxa_uid)?;
    }
    // A disabled account that is deleted leaves no mark behind.
    store::set_user_disabled(tx, fxa_uid, false, now)?;
    Ok(rows
        .into_iter()
        .map(|r| RetiredUid {
            uid: r.uid,
            node: r.node,
        })
        .collect())
}

impl Tokenserver {
    /// `delete-user` issued at `issued_at` (unix seconds): retires the account's rows
    /// created before then (with a little clock skew); returns the uids to delete.
    pub async fn retire_account(
        &self,
        fxa_uid: &str,
        issued_at: i64,
    ) -> Result<Vec<RetiredUid>, TokenserverError> {
        let cutoff = issued_at
            .saturating_mul(1000)
            .saturating_add(KEYS_CHANGED_AT_SKEW_MS);
        let fxa_uid = fxa_uid.to_string();
        let now = super::now_ms();
        Ok(self
            .db()
            .run(move |tx| retire_account(tx, &fxa_uid, cutoff, now))
            .await?)
    }

    /// `password-change` at `change_time` (ms): the user's generation becomes at
    /// least that, so tokens of an earlier generation get 401 `invalid-generation`.
    /// A time from the future is refused (it would lock the user out). Returns whether
    /// a row changed.
    pub async fn password_changed(
        &self,
        fxa_uid: &str,
        change_time: i64,
    ) -> Result<bool, TokenserverError> {
        if change_time <= 0 || change_time > super::now_ms() + KEYS_CHANGED_AT_SKEW_MS {
            return Err(TokenserverError::InvalidCredentials(
                "password-change time out of range".into(),
            ));
        }
        let fxa_uid = fxa_uid.to_string();
        Ok(self
            .db()
            .run(move |tx| {
                tx.lock_key(&fxa_uid)?;
                store::raise_generation(tx, &fxa_uid, change_time)
            })
            .await?)
    }

    /// Recently processed event ids.
    pub fn seen_events(&self) -> &SeenEvents {
        &self.seen_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_types_are_read_from_their_uris() {
        let p = |t: &str, v| AccountEvent::parse(&format!("{EVENT_PREFIX}{t}"), &v);
        assert_eq!(p("delete-user", json!({})), AccountEvent::DeleteUser);
        assert_eq!(
            p("password-change", json!({"changeTime": 5})),
            AccountEvent::PasswordChange {
                change_time: Some(5)
            }
        );
        assert_eq!(p("profile-change", json!({})), AccountEvent::ProfileChange);
        assert_eq!(p("nope", json!({})), AccountEvent::Unknown);
        assert_eq!(
            AccountEvent::parse("https://evil.test/event/delete-user", &json!({})),
            AccountEvent::Unknown
        );
    }

    #[test]
    fn remembered_events_stay_bounded() {
        let seen = SeenEvents::default();
        for i in 0..MAX_REMEMBERED_EVENTS + 10 {
            seen.remember(&i.to_string(), 10, 20);
        }
        assert!(seen.0.lock().unwrap().len() <= MAX_REMEMBERED_EVENTS);
        assert!(seen.seen(&(MAX_REMEMBERED_EVENTS + 9).to_string()));
    }
}
