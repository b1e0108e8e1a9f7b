//! The tokenserver: signs FxA users in, assigns each to a storage node (sticky, with
//! rollout rules), and hands out tokenlib tokens for that node.
//!
//! `fxa` verifies OAuth tokens (and FxA's event tokens), `events` applies FxA's
//! account events, `db` is the assignment database (SQLite or PostgreSQL),
//! `store` its SQL, `rollout` the choice of node for a new user, `guard` the canary
//! guard that pauses a node in rollout doing worse than the others. Storage nodes use
//! `AssignmentCheck` to refuse tokens of users who were moved away.

pub mod db;
pub mod events;
pub mod fxa;
pub mod guard;
pub mod rollout;
pub mod store;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::auth::token::{TokenPayload, make_token, new_salt};
use db::{AssignmentDb, DbError, SqlTx};
use fxa::{FxaError, FxaVerifier, OAuthUser};
use store::NewUser;

/// Why a token request fails; each maps to Mozilla's status strings.
#[derive(Debug, thiserror::Error)]
pub enum TokenserverError {
    /// 401 `invalid-credentials`: the OAuth token is not valid for Sync.
    #[error("invalid credentials: {0}")]
    InvalidCredentials(String),
    /// 401 `invalid-credentials` (X-KeyID): missing or malformed X-KeyID.
    #[error("invalid X-KeyID")]
    InvalidKeyId,
    /// 401 `invalid-generation`: an older generation than already seen.
    #[error("stale generation")]
    InvalidGeneration,
    /// 401 `invalid-keysChangedAt`: an older keys_changed_at than already seen, or one
    /// from the future.
    #[error("stale keys_changed_at")]
    InvalidKeysChangedAt,
    /// 401 `invalid-client-state`: a client state the user already moved away from.
    #[error("stale client state")]
    InvalidClientState,
    /// 401 `new-users-disabled`: sign-ups are closed.
    #[error("new users are disabled")]
    NewUsersDisabled,
    /// 503: no node can take the user.
    #[error("no storage node available")]
    NoNodes,
    /// 503: the OAuth verifier could not be reached.
    #[error("oauth verifier unavailable: {0}")]
    VerifierUnavailable(String),
    /// 503: the assignment database failed.
    #[error("assignment database: {0}")]
    Db(#[from] DbError),
    /// 500: a blocking task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<FxaError> for TokenserverError {
    fn from(e: FxaError) -> Self {
        match e {
            FxaError::Unavailable(m) => TokenserverError::VerifierUnavailable(m),
            other => TokenserverError::InvalidCredentials(other.to_string()),
        }
    }
}

/// How far ahead of this server's clock an X-KeyID's keys_changed_at may be (FxA's
/// clock and ours may differ a little), milliseconds.
pub const KEYS_CHANGED_AT_SKEW_MS: i64 = 5 * 60 * 1000;

/// The parsed `X-KeyID` header: `<keys_changed_at>-<base64url(client_state)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    /// When the user's keys last changed, ms.
    pub keys_changed_at: i64,
    /// The client state, hex.
    pub client_state: String,
}

/// Parses `X-KeyID`.
pub fn parse_key_id(value: &str) -> Result<KeyId, TokenserverError> {
    let (kca, state) = value
        .trim()
        .split_once('-')
        .ok_or(TokenserverError::InvalidKeyId)?;
    let keys_changed_at: i64 = kca.parse().map_err(|_| TokenserverError::InvalidKeyId)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(state.trim_end_matches('='))
        .map_err(|_| TokenserverError::InvalidKeyId)?;
    if keys_changed_at < 0 || bytes.is_empty() || bytes.len() > 32 {
        return Err(TokenserverError::InvalidKeyId);
    }
    Ok(KeyId {
        keys_changed_at,
        client_state: hex::encode(bytes),
    })
}

/// The answer to a token request.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// The token id (Hawk id).
    pub id: String,
    /// The Hawk key.
    pub key: String,
    /// The storage uid.
    pub uid: i64,
    /// `<node>/1.5/<uid>`.
    pub api_endpoint: String,
    /// Token lifetime, seconds.
    pub duration: u64,
    /// The FxA uid, hashed for metrics.
    pub hashed_fxa_uid: String,
    /// Always `sha256`.
    pub hashalg: &'static str,
    /// What the node stores data in.
    pub node_type: &'static str,
    /// Seconds the client should back off (not part of the body).
    #[serde(skip)]
    pub backoff: i64,
}

/// Settings of the tokenserver.
#[derive(Debug, Clone)]
pub struct TokenserverConfig {
    /// Master secrets; the first signs tokens.
    pub secrets: Vec<String>,
    /// Token lifetime, seconds.
    pub token_duration: u64,
    /// Domain of the emails formed from FxA uids (`<uid>@<domain>`).
    pub email_domain: String,
}

/// Signs users in and assigns them to nodes.
pub struct Tokenserver {
    db: AssignmentDb,
    fxa: FxaVerifier,
    config: TokenserverConfig,
    /// Account events already processed (redeliveries are acknowledged, not redone).
    seen_events: events::SeenEvents,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Tokenserver {
    /// Creates the tokenserver over an open database.
    pub fn new(db: AssignmentDb, fxa: FxaVerifier, config: TokenserverConfig) -> Tokenserver {
        Tokenserver {
            db,
            fxa,
            config,
            seen_events: events::SeenEvents::default(),
        }
    }

    /// The FxA token verifier.
    pub fn fxa(&self) -> &FxaVerifier {
        &self.fxa
    }

    /// The assignment database.
    pub fn db(&self) -> &AssignmentDb {
        &self.db
    }

    /// HMAC-SHA256 of `value`, keyed by the signing secret, hex, first 32 characters.
    fn hashed(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.config.secrets[0].as_bytes())
            .expect("any key length");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())[..32].to_string()
    }

    /// Marks the user of an FxA uid disabled (storage nodes refuse their tokens, their
    /// data is kept) or enabled again; returns the user's uids.
    pub async fn set_disabled(
        &self,
        fxa_uid: &str,
        disabled: bool,
    ) -> Result<Vec<i64>, TokenserverError> {
        let fxa_uid = fxa_uid.to_string();
        let now = now_ms();
        Ok(self
            .db
            .run(move |tx| {
                tx.lock_key(&fxa_uid)?;
                store::set_user_disabled(tx, &fxa_uid, disabled, now)
            })
            .await?)
    }

    /// Handles `GET /1.0/sync/1.5`: verifies the OAuth token, applies the X-KeyID rules,
    /// assigns a node and returns a token for it.
    pub async fn issue(
        &self,
        bearer: &str,
        key_id: Option<&str>,
    ) -> Result<TokenResponse, TokenserverError> {
        let user = self.fxa.verify(bearer).await?;
        let key_id = parse_key_id(key_id.ok_or(TokenserverError::InvalidKeyId)?)?;
        check_issuer_record(&user, &key_id)?;
        let db = self.db.clone();
        let email = format!("{}@{}", user.fxa_uid, self.config.email_domain);
        let (u, k) = (user.clone(), key_id.clone());
        // Not `db.run`: a panicked task is an internal error (500) here, not a 503.
        let assignment = tokio::task::spawn_blocking(move || {
            db.transaction(|tx| assign(tx, &u, &email, &k, now_ms()))
        })
        .await
        .map_err(|e| TokenserverError::Internal(e.to_string()))??;
        let expires = now_ms() as f64 / 1000.0 + self.config.token_duration as f64;
        let hashed_fxa_uid = self.hashed(&user.fxa_uid);
        let payload = TokenPayload {
            uid: assignment.uid as u64,
            node: assignment.node.clone(),
            expires,
            salt: new_salt(),
            fxa_uid: Some(user.fxa_uid.clone()),
            fxa_kid: Some(format!(
                "{:013}-{}",
                key_id.keys_changed_at,
                URL_SAFE_NO_PAD.encode(hex::decode(&key_id.client_state).unwrap_or_default())
            )),
            hashed_fxa_uid: Some(hashed_fxa_uid.clone()),
            hashed_device_id: Some(self.hashed("none")),
        };
        let (id, key) = make_token(&self.config.secrets[0], &payload);
        Ok(TokenResponse {
            id,
            key,
            uid: assignment.uid,
            api_endpoint: format!("{}/1.5/{}", assignment.node, assignment.uid),
            duration: self.config.token_duration,
            hashed_fxa_uid,
            hashalg: "sha256",
            node_type: "sqlite",
            backoff: assignment.backoff,
        })
    }
}

/// For the service's own tokens, whose issuer says what is true of the account now:
/// the token's generation must be the account's (a token from before a password change
/// is refused) and X-KeyID's keys_changed_at must be the account's (no other value can
/// be right; taking one would give the caller a fresh uid and lock the owner out).
/// Decided before the database is touched.
pub fn check_issuer_record(user: &OAuthUser, key_id: &KeyId) -> Result<(), TokenserverError> {
    let Some(account) = user.account else {
        return Ok(());
    };
    if user.generation != Some(account.generation) {
        return Err(TokenserverError::InvalidGeneration);
    }
    if key_id.keys_changed_at != account.keys_changed_at {
        return Err(TokenserverError::InvalidKeysChangedAt);
    }
    Ok(())
}

/// Where a user is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The storage uid.
    pub uid: i64,
    /// The node's base URL.
    pub node: String,
    /// The node's back-off, seconds.
    pub backoff: i64,
}

/// Takes a slot on the best node for a new user (allow-lists, rollout, capacity).
fn place(
    tx: &mut dyn SqlTx,
    nodes: &[store::Node],
    fxa_uid: &str,
    email: &str,
) -> Result<i64, TokenserverError> {
    let lists = store::lists_naming(tx, fxa_uid, email)?;
    for choice in rollout::choices(nodes, &lists, fxa_uid) {
        if choice.forced {
            store::take_slot_forced(tx, choice.node_id)?;
            return Ok(choice.node_id);
        }
        if store::take_slot(tx, choice.node_id)? {
            return Ok(choice.node_id);
        }
    }
    Err(TokenserverError::NoNodes)
}

/// The sign-in rules, in one transaction serialized per FxA user: stale generation,
/// keys_changed_at or client state → 401; a key change → a fresh uid on the same node;
/// a user whose node is down, draining or gone → a fresh uid on a new node; a new user →
/// the best node allowed by the rollout rules (unless sign-ups are closed).
pub fn assign(
    tx: &mut dyn SqlTx,
    user: &OAuthUser,
    email: &str,
    key_id: &KeyId,
    now: i64,
) -> Result<Assignment, TokenserverError> {
    // keys_changed_at is FxA's clock (ms) of the user's last key change: a value from
    // the future cannot be true, and taking it would give the user a fresh uid now and
    // refuse every later sign-in with the real value as "going backwards". Mozilla's
    // tokenserver answers implausible keys_changed_at values (greater than the
    // generation) with 401 `invalid-keysChangedAt`; so does this, before anything about
    // the user is read or written.
    if key_id.keys_changed_at > now.saturating_add(KEYS_CHANGED_AT_SKEW_MS) {
        return Err(TokenserverError::InvalidKeysChangedAt);
    }
    let fxa_uid = user.fxa_uid.as_str();
    tx.lock_key(fxa_uid)?;
    let nodes = store::nodes(tx)?;
    let node_of = |id: i64| nodes.iter().find(|n| n.id == id);
    let current = store::current_user(tx, fxa_uid)?;
    let kca = key_id.keys_changed_at;
    let state = key_id.client_state.as_str();
    let new_row = |tx: &mut dyn SqlTx, generation: i64, node_id: i64| {
        store::insert_user(
            tx,
            &NewUser {
                fxa_uid,
                email,
                generation,
                keys_changed_at: Some(kca),
                client_state: state,
                node_id,
                now,
            },
        )
    };
    // For the service's own tokens: when the token's session proved the password.
    let local_auth = user.account.map(|a| a.auth_at);
    let recorded = match local_auth {
        Some(_) => store::local_client_state(tx, fxa_uid)?,
        None => None,
    };
    // The (uid, node) assigned, and the sign-in time to record for its client state.
    let (uid, node_id, record) = match current {
        None => {
            if store::setting(tx, "signups")?.as_deref() == Some("closed") {
                return Err(TokenserverError::NewUsersDisabled);
            }
            if store::client_state_was_used(tx, fxa_uid, state)? {
                return Err(TokenserverError::InvalidClientState);
            }
            let node_id = place(tx, &nodes, fxa_uid, email)?;
            let uid = new_row(tx, user.generation.unwrap_or(0), node_id)?;
            (uid, node_id, local_auth)
        }
        Some(u) => {
            let generation = user.generation.unwrap_or(u.generation);
            if generation < u.generation {
                return Err(TokenserverError::InvalidGeneration);
            }
            let known_kca = u.keys_changed_at.unwrap_or(0);
            // The service's own tokens carry the truth: their keys_changed_at is the
            // account's (checked in `issue`), so keys from before a key change cannot
            // come back. What the row holds was set by some holder of the account's
            // tokens, perhaps a thief with a stolen session registering a client state
            // of no real key. A change that does not move keys_changed_at forward
            // (another state at the same time, or an earlier time than recorded)
            // overrides the row only from a newer generation than the row's (the
            // owner, after a password change, which revokes every other session and
            // keeps kB), or, for the same keys_changed_at, from a token whose session
            // proved the password after the one that registered the row's state (the
            // owner signing in again: a stolen session, and every code or refresh
            // token made with it, keeps its old sign-in time). FxA's tokens never do.
            let owner_recovers = user.account.is_some() && generation > u.generation;
            // When the row's client state was registered (service tokens only): the
            // recorded sign-in, else (rows from before the record) the row's creation.
            let registered_at = match local_auth {
                Some(_) => Some(
                    recorded
                        .as_ref()
                        .filter(|(s, _)| *s == u.client_state)
                        .map_or(u.created_at, |(_, at)| *at),
                ),
                None => None,
            };
            if kca < known_kca && !owner_recovers {
                return Err(TokenserverError::InvalidKeysChangedAt);
            }
            let state_changed = state != u.client_state;
            let same_kca = kca == known_kca && u.keys_changed_at.is_some();
            let signed_in_later = matches!(
                (local_auth, registered_at),
                (Some(auth_at), Some(registered)) if auth_at > registered
            );
            if state_changed && !owner_recovers && !(same_kca && signed_in_later) {
                if same_kca && local_auth.is_some() {
                    // Another client state from a sign-in no newer than the one that
                    // registered this row's: refused, nothing changes.
                    return Err(TokenserverError::InvalidClientState);
                }
                if store::client_state_was_used(tx, fxa_uid, state)? {
                    return Err(TokenserverError::InvalidClientState);
                }
                if same_kca {
                    return Err(TokenserverError::InvalidKeysChangedAt);
                }
            }
            let key_change = state_changed || kca != known_kca;
            // A new state is registered by this token's sign-in; the same state keeps
            // the newest sign-in that presented it (a thief then needs a session newer
            // than every one that synced).
            let record = match (local_auth, registered_at) {
                (Some(auth_at), _) if key_change => Some(auth_at),
                (Some(auth_at), Some(registered)) => Some(auth_at.max(registered)),
                _ => None,
            };
            let serving = node_of(u.node_id).filter(|n| n.serving());
            match (key_change, serving) {
                (false, Some(_)) => {
                    if generation > u.generation || u.keys_changed_at != Some(kca) {
                        store::update_user(tx, u.uid, generation, Some(kca))?;
                    }
                    (u.uid, u.node_id, record)
                }
                (true, Some(_)) => {
                    // New keys: the old data cannot be read any more; a fresh uid on the
                    // same node lets the client start over.
                    store::replace_user(tx, u.uid, now)?;
                    (new_row(tx, generation, u.node_id)?, u.node_id, record)
                }
                (_, None) => {
                    // The node is down, draining or gone: move to a new node.
                    let node_id = place(tx, &nodes, fxa_uid, email)?;
                    if node_of(u.node_id).is_some() {
                        store::release_slot(tx, u.node_id)?;
                    }
                    store::replace_user(tx, u.uid, now)?;
                    (new_row(tx, generation, node_id)?, node_id, record)
                }
            }
        }
    };
    // Written only when it changes (not on every token request).
    if let Some(auth_at) = record
        && recorded.as_ref().map(|(s, at)| (s.as_str(), *at)) != Some((state, auth_at))
    {
        store::set_local_client_state(tx, fxa_uid, state, auth_at)?;
    }
    let node = node_of(node_id).ok_or(TokenserverError::NoNodes)?;
    Ok(Assignment {
        uid,
        node: node.node.clone(),
        backoff: node.backoff,
    })
}

/// Lets a storage node refuse tokens of users who no longer belong to it (moved to
/// another node, or given a new uid) or whose account is disabled, by asking the
/// shared assignment database.
/// Answers are cached for a short time; uids the database never issued are allowed
/// (tokens minted elsewhere, e.g. by Mozilla's tokenserver or `syncstore token`).
pub struct AssignmentCheck {
    db: AssignmentDb,
    node_url: String,
    ttl: Duration,
    cache: Mutex<HashMap<u64, (bool, Instant)>>,
}

impl AssignmentCheck {
    /// A check for the node at `node_url`.
    pub fn new(db: AssignmentDb, node_url: String, ttl: Duration) -> AssignmentCheck {
        AssignmentCheck {
            db,
            node_url,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The assignment database.
    pub fn db(&self) -> &AssignmentDb {
        &self.db
    }

    /// This node's URL in the assignment database.
    pub fn node_url(&self) -> &str {
        &self.node_url
    }

    /// Drops what is cached about `uid` (its assignment just changed).
    pub fn forget(&self, uid: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&uid);
        }
    }

    /// Whether `uid` may use this node.
    pub async fn allows(&self, uid: u64) -> Result<bool, DbError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((ok, at)) = cache.get(&uid)
            && at.elapsed() < self.ttl
        {
            return Ok(*ok);
        }
        let (found, disabled) = self
            .db
            .run(move |tx| {
                let found = store::uid_assignment(tx, uid as i64)?;
                let disabled = found.is_some() && store::uid_disabled(tx, uid as i64)?;
                Ok::<_, DbError>((found, disabled))
            })
            .await?;
        let ok = match found {
            None => true,
            Some(_) if disabled => false,
            Some((current, node)) => current && node.as_deref() == Some(self.node_url.as_str()),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(uid, (ok, Instant::now()));
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_parse() {
        let k = parse_key_id("1234-qg").unwrap();
        assert_eq!(k.keys_changed_at, 1234);
        assert_eq!(k.client_state, "aa");
        let k = parse_key_id("1700000000000-EjRWeJq83vA=").unwrap();
        assert_eq!(k.client_state, "12345678 9abcdef0".replace(' ', ""));
        for bad in ["", "123", "abc-qg", "-1-qg", "12-", "12-!!"] {
            assert!(parse_key_id(bad).is_err(), "{bad}");
        }
    }
}
