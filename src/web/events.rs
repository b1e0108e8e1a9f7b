//! `POST /1.0/webhooks/fxa/events`: FxA's event broker delivers account events as a
//! Security Event Token in `Authorization: Bearer …` (signed by FxA's key from
//! `fxa_jwks`, audience `fxa_events_client_id`). Served only when that client id is
//! set (else 404). A bad or foreign token is 401; unknown event types are logged and
//! acknowledged (200); a failure to apply one is 503 with `Retry-After`, so FxA
//! delivers it again (applying an event twice is harmless).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::tokenserver::events::AccountEvent;
use crate::tokenserver::fxa::EVENT_MAX_AGE_SECS;
use crate::tokenserver::{Tokenserver, TokenserverError};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Counts an event by type and outcome (both from fixed sets).
fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!("syncstore_fxa_events_total", "type" => kind, "outcome" => outcome)
        .increment(1);
}

/// Receives one Security Event Token and applies its events.
pub async fn fxa_events(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let client_id = s.settings.fxa_events_client_id.as_str();
    let Some(ts) = s.tokenserver.as_ref().filter(|_| !client_id.is_empty()) else {
        return ApiError::NotFound.into_response();
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    let now = unix_now();
    let set = match ts.fxa().verify_event(bearer, client_id, now) {
        Ok(set) => set,
        Err(e) => {
            count("none", "refused");
            tracing::warn!(error = %e, "account event token refused");
            return ApiError::Token(TokenserverError::InvalidCredentials(e.to_string()))
                .into_response();
        }
    };
    if ts.seen_events().seen(&set.jti) {
        count("none", "redelivered");
        return done(StatusCode::OK);
    }
    let mut failed = false;
    for (uri, payload) in &set.events {
        let event = AccountEvent::parse(uri, payload);
        let kind = event.label();
        count(kind, "received");
        let outcome = match apply(&s, ts, &set.fxa_uid, set.issued_at, &event).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(event = kind, error = %e, "account event not applied");
                failed = true;
                "failed"
            }
        };
        if outcome == "ignored" {
            tracing::info!(event = %uri, "account event ignored");
        }
        count(kind, outcome);
    }
    if failed {
        let mut r = done(StatusCode::SERVICE_UNAVAILABLE);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        return r;
    }
    ts.seen_events()
        .remember(&set.jti, set.issued_at + EVENT_MAX_AGE_SECS, now);
    done(StatusCode::OK)
}

fn done(status: StatusCode) -> Response {
    let text = if status.is_success() { "ok" } else { "retry" };
    (status, axum::Json(json!({"status": text}))).into_response()
}

/// Deletes the Sync data of an account deleted at `deleted_at` (unix seconds): retires
/// its tokenserver rows made before then and deletes each user on its node. Doing it
/// twice is harmless. Returns how many users were retired.
pub(crate) async fn delete_account_data(
    s: &AppState,
    ts: &Tokenserver,
    fxa_uid: &str,
    deleted_at: i64,
) -> Result<usize, String> {
    let retired = ts
        .retire_account(fxa_uid, deleted_at)
        .await
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for r in &retired {
        let Some(node) = &r.node else { continue };
        let deleted =
            crate::cluster::delete_retired(s.this_node(), ts.db(), r.uid as u64, node).await;
        if let Err(e) = deleted {
            errors.push(format!("uid {} on {node}: {e}", r.uid));
        }
    }
    tracing::info!(uids = retired.len(), "account deleted: user retired");
    if errors.is_empty() {
        Ok(retired.len())
    } else {
        Err(errors.join("; "))
    }
}

/// How often accounts deleted on this service (by the operator's `account delete`,
/// perhaps from another process) are looked for.
const DELETIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the accounts database drops expired and idle state.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Until `stop` turns true: deletes the Sync data of accounts the built-in accounts
/// service has deleted (its `account_deletions` outbox), forgetting each once done, and
/// tells the tokenserver which accounts were disabled or enabled (its
/// `account_state_changes` outbox); a failure is retried on the next round.
pub async fn drain_account_deletions(s: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let (Some(accounts), Some(ts)) = (s.accounts.clone(), s.tokenserver.clone()) else {
        return;
    };
    let store = accounts.accounts.store().clone();
    let mut last_purge: Option<std::time::Instant> = None;
    loop {
        // The accounts database's own upkeep (expired codes, idle sessions, unverified
        // accounts older than a day): at start, then every PURGE_EVERY.
        if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            last_purge = Some(std::time::Instant::now());
            match accounts.accounts.purge_stale().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "accounts upkeep: expired state removed"),
                Err(e) => tracing::error!(error = %e, "accounts upkeep failed"),
            }
        }
        let st = store.clone();
        let pending = tokio::task::spawn_blocking(move || st.pending_deletions(100)).await;
        match pending {
            Ok(Ok(pending)) => {
                for d in pending {
                    let deleted_at = d.deleted_at / 1000 + 1;
                    match delete_account_data(&s, &ts, &d.uid, deleted_at).await {
                        Ok(_) => {
                            let st = store.clone();
                            let uid = d.uid.clone();
                            let done =
                                tokio::task::spawn_blocking(move || st.finish_deletion(&uid)).await;
                            if !matches!(done, Ok(Ok(()))) {
                                tracing::error!(uid = %d.uid, "account deletion not recorded as done");
                            }
                        }
                        Err(e) => {
                            tracing::error!(uid = %d.uid, error = %e, "deleting an account's Sync data failed; will retry")
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "reading account deletions failed"),
            Err(e) => tracing::error!(error = %e, "reading account deletions failed"),
        }
        apply_account_state_changes(&s, &ts, &store).await;
        tokio::select! {
            _ = tokio::time::sleep(DELETIONS_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Marks the users of accounts disabled since the last round as disabled in the
/// assignment database (storage nodes then refuse their storage tokens; this node at
/// once, the others within `assignment_check_secs`), and unmarks enabled ones.
async fn apply_account_state_changes(
    s: &AppState,
    ts: &Tokenserver,
    store: &crate::accounts::store::Store,
) {
    let st = store.clone();
    let pending = match tokio::task::spawn_blocking(move || st.pending_state_changes(100)).await {
        Ok(Ok(pending)) => pending,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading account state changes failed");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reading account state changes failed");
            return;
        }
    };
    for change in pending {
        let uids = match ts.set_disabled(&change.uid, change.disabled).await {
            Ok(uids) => uids,
            Err(e) => {
                tracing::error!(uid = %change.uid, error = %e,
                    "applying an account's disabling or enabling failed; will retry");
                continue;
            }
        };
        if let Some(check) = &s.assignments {
            for uid in uids {
                check.forget(uid as u64);
            }
        }
        tracing::info!(uid = %change.uid, disabled = change.disabled,
            "account disabling or enabling applied to its Sync storage");
        let st = store.clone();
        let done = tokio::task::spawn_blocking(move || st.finish_state_change(&change)).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!("account disabling or enabling not recorded as applied");
        }
    }
}

/// Applies one event; returns its outcome label (`processed` or `ignored`).
async fn apply(
    s: &AppState,
    ts: &Tokenserver,
    fxa_uid: &str,
    issued_at: i64,
    event: &AccountEvent,
) -> Result<&'static str, String> {
    match event {
        AccountEvent::DeleteUser => {
            delete_account_data(s, ts, fxa_uid, issued_at).await?;
            Ok("processed")
        }
        AccountEvent::PasswordChange {
            change_time: Some(t),
        } => match ts.password_changed(fxa_uid, *t).await {
            Ok(_) => Ok("processed"),
            Err(TokenserverError::InvalidCredentials(m)) => {
                tracing::warn!(reason = %m, "password-change event ignored");
                Ok("ignored")
            }
            Err(e) => Err(e.to_string()),
        },
        _ => Ok("ignored"),
    }
}
