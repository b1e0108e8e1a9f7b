//! Sessions: how a request proves a token (`TokenAuth`: Hawk as Firefox signs, or a
//! prefixed Bearer id) and its check (`authenticate`: the token, its account, the Hawk
//! MAC, body hash, timestamp and nonce), new sessions with their key fetch tokens (made
//! by sign-up, sign-in and password change), and the routes `GET /session/status` and
//! `POST /session/destroy`.

use axum::extract::State;
use serde_json::{Value, json};

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::store::{Account, TokenRow};
use super::{
    Accounts, AccountsError, HAWK_SKEW_SECS, Result, SHORT_TOKEN_TTL_MS, crypto, hex32, now_ms,
};
use crate::auth::hawk::{self, SignedRequest};
use crate::auth::nonce::NonceError;

/// `retryAfter` of a request refused for its account's full share of nonces, s.
const NONCE_RETRY_SECS: u64 = 30;

/// How a request proved a token: Hawk (as Firefox signs) or a prefixed Bearer id
/// (as current FxA clients send, e.g. `Bearer fxs_<id>`).
#[derive(Debug, Clone)]
pub enum TokenAuth {
    /// A Hawk `Authorization` header and what the client signed.
    Hawk {
        /// The parsed header.
        header: Box<hawk::HawkHeader>,
        /// Method, path and query, host, port.
        method: String,
        /// Path and query as sent.
        path_and_query: String,
        /// Host as signed.
        host: String,
        /// Port as signed.
        port: u16,
        /// The body's hash, when the header carries one or there is a body: it is
        /// checked then, and a body without a signed hash is refused.
        body_hash: Option<String>,
    },
    /// A prefixed Bearer token: the kind's prefix and the hex token id.
    Bearer {
        /// `fxs`, `fxk`, `fxpc`.
        prefix: String,
        /// The token id, hex.
        id: String,
    },
}

/// A verified token and its account.
pub struct Authed {
    /// The token's row.
    pub token: TokenRow,
    /// The account.
    pub account: Account,
}

/// A newly made session (and key fetch token).
pub struct NewSession {
    /// The account.
    pub account: Account,
    /// The session token, hex.
    pub session_token: String,
    /// The key fetch token, hex, when keys were asked for.
    pub key_fetch_token: Option<String>,
    /// When the session was made, s.
    pub auth_at: i64,
}

fn prefix_of(kind: &str) -> &'static str {
    match kind {
        "sessionToken" => "fxs",
        "keyFetchToken" => "fxk",
        "passwordChangeToken" => "fxpc",
        _ => "",
    }
}

impl Accounts {
    /// A new session (and key fetch token) for an account whose `wrap_wrap_kb` field
    /// holds the unwrapped `wrapKb` (see `check_password`; `add_account` made a random one).
    pub(super) async fn new_session(
        &self,
        account: Account,
        keys: bool,
        ua: &str,
    ) -> Result<NewSession> {
        let now = now_ms();
        let session = crypto::random32();
        let sk = crypto::token_keys(&session, "sessionToken");
        let mut rows = vec![TokenRow {
            id_hash: crypto::sha256(&sk.id),
            kind: "sessionToken".into(),
            uid: account.uid.clone(),
            auth_key: sk.auth_key,
            data: None,
            created_at: now,
            last_used_at: now,
            user_agent: ua.chars().take(200).collect(),
        }];
        let mut key_fetch_token = None;
        if keys {
            let kft = crypto::random32();
            let kk = crypto::token_keys(&kft, "keyFetchToken");
            let mut payload = account.ka.to_vec();
            payload.extend_from_slice(&account.wrap_wrap_kb);
            rows.push(TokenRow {
                id_hash: crypto::sha256(&kk.id),
                kind: "keyFetchToken".into(),
                uid: account.uid.clone(),
                auth_key: kk.auth_key,
                // Stored encrypted for the token's holder only.
                data: Some(crypto::bundle(&kk.bundle_key, "account/keys", &payload)),
                created_at: now,
                last_used_at: now,
                user_agent: String::new(),
            });
            key_fetch_token = Some(hex::encode(kft));
        }
        self.blocking(move |s| {
            for r in &rows {
                s.insert_token(r)?;
            }
            Ok(())
        })
        .await?;
        Ok(NewSession {
            account,
            session_token: hex::encode(session),
            key_fetch_token,
            auth_at: now / 1000,
        })
    }

    /// Verifies a request's token of `kind` (Hawk or prefixed Bearer).
    pub async fn authenticate(&self, auth: &TokenAuth, kind: &str) -> Result<Authed> {
        let id = match auth {
            TokenAuth::Hawk { header, .. } => header.id.clone(),
            TokenAuth::Bearer { prefix, id } => {
                if prefix != prefix_of(kind) {
                    return Err(AccountsError::InvalidToken);
                }
                id.clone()
            }
        };
        let id = hex32("id", &id).map_err(|_| AccountsError::InvalidToken)?;
        let id_hash = crypto::sha256(&id);
        let k = kind.to_string();
        let found = self
            .blocking(move |s| {
                let Some(t) = s.token(&id_hash, &k)? else {
                    return Ok(None);
                };
                Ok(s.account(&t.uid)?.map(|a| (t, a)))
            })
            .await?;
        let Some((token, account)) = found else {
            return Err(AccountsError::InvalidToken);
        };
        let now = now_ms();
        if kind != "sessionToken" && token.created_at + SHORT_TOKEN_TTL_MS < now {
            return Err(AccountsError::InvalidToken);
        }
        if account.disabled {
            return Err(AccountsError::InvalidToken);
        }
        if let TokenAuth::Hawk {
            header,
            method,
            path_and_query,
            host,
            port,
            body_hash,
        } = auth
        {
            if (header.ts - now / 1000).abs() > HAWK_SKEW_SECS {
                return Err(AccountsError::InvalidTimestamp);
            }
            let req = SignedRequest {
                method,
                path_and_query,
                host,
                port: *port,
            };
            let mac = hawk::compute_mac(&token.auth_key, header, &req);
            if !hawk::macs_equal(&mac, &header.mac) {
                return Err(AccountsError::InvalidSignature);
            }
            // A body must be covered by the signature (Firefox and PyFxA always sign
            // it): else whoever sees the request could send another body with it.
            if let Some(actual) = body_hash {
                match &header.hash {
                    Some(signed) if hawk::macs_equal(signed, actual) => {}
                    _ => return Err(AccountsError::InvalidSignature),
                }
            }
            // Nonces are counted per account, not per token: an account with many
            // sessions cannot take more of the cache than one with a single session.
            let digest = crypto::sha256(account.uid.as_bytes());
            let owner = u64::from_be_bytes(digest[..8].try_into().expect("8"));
            self.nonces
                .check_and_insert(owner, &header.id, header.ts, &header.nonce, now / 1000)
                .map_err(|e| match e {
                    NonceError::Replay => AccountsError::InvalidNonce,
                    NonceError::Full => AccountsError::TooManyRequests(NONCE_RETRY_SECS),
                })?;
        }
        if kind == "sessionToken" {
            let h = token.id_hash;
            self.blocking(move |s| Ok(s.touch_token(&h, now)?)).await?;
        }
        Ok(Authed { token, account })
    }

    /// Destroys a session (and its device; the account's devices are told).
    pub async fn destroy_session(&self, a: &Authed) -> Result<()> {
        let h = a.token.id_hash;
        self.removing_devices(&a.account.uid, move |s| {
            Ok(s.delete_token(&h).map(|_| ())?)
        })
        .await
    }
}

pub(super) fn session_body(s: NewSession) -> ApiResult {
    let verified = s.account.email_verified;
    let mut body = json!({
        "uid": s.account.uid,
        "sessionToken": s.session_token,
        "authAt": s.auth_at,
        "verified": verified,
        "emailVerified": verified,
        "sessionVerified": verified,
        "verificationMethod": if verified { Value::Null } else { json!("email-otp") },
        "verificationReason": if verified { Value::Null } else { json!("signup") },
    });
    if let Some(k) = s.key_fetch_token {
        body["keyFetchToken"] = json!(k);
    }
    ok(body)
}

pub(super) async fn session_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let state = if a.account.email_verified {
        "verified"
    } else {
        "unverified"
    };
    ok(json!({ "state": state, "uid": a.account.uid }))
}

pub(super) async fn session_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    st.accounts.destroy_session(&a).await?;
    ok(json!({}))
}
