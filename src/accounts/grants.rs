//! OAuth grants: the scopes this service grants, access tokens (signed by `oauth`) and
//! refresh tokens, the token endpoint's three grant types (`fxa-credentials` from a
//! session, `authorization_code` from `authorization`'s codes, `refresh_token`),
//! revocation (`/oauth/destroy`), the check of an access token (`/v1/verify`, also
//! used by the profile) and the public keys (`/v1/jwks`).

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::oauth::{self, AccessClaims};
use super::store::{Account, Refresh};
use super::{Accounts, AccountsError, Authed, PROFILE_SCOPE, Result, crypto, hex32, now_ms};
use crate::tokenserver::fxa::OLDSYNC_SCOPE;

/// An issued OAuth grant.
pub struct Grant {
    /// The access token (JWT).
    pub access_token: String,
    /// The refresh token, hex, for offline grants.
    pub refresh_token: Option<String>,
    /// Granted scopes.
    pub scope: String,
    /// Access token lifetime, s.
    pub expires_in: i64,
    /// When the user authenticated, s.
    pub auth_at: i64,
    /// The client's encrypted keys, passed through from the authorization.
    pub keys_jwe: Option<String>,
}

/// What an OAuth grant is for.
pub(super) struct GrantRequest<'a> {
    pub(super) client_id: &'a str,
    pub(super) scope: &'a str,
    pub(super) ttl: i64,
    pub(super) offline: bool,
    /// When the session behind the grant proved the password, ms.
    pub(super) auth_at: i64,
    pub(super) keys_jwe: Option<String>,
}

/// Scopes this service grants: oldsync, profile (and its sub-scopes) and FxA's
/// session-token scope.
fn allowed_scope(scope: &str) -> bool {
    scope == OLDSYNC_SCOPE
        || scope == PROFILE_SCOPE
        || scope.starts_with("profile:")
        || scope == "https://identity.mozilla.com/tokens/session"
}

/// Normalizes a space-separated scope list; refuses scopes not granted here.
pub(super) fn parse_scopes(scope: &str) -> Result<String> {
    let mut scopes: Vec<&str> = scope.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    scopes.dedup();
    if scopes.is_empty() || !scopes.iter().all(|s| allowed_scope(s)) {
        return Err(AccountsError::InvalidScopes);
    }
    Ok(scopes.join(" "))
}

/// Public OAuth clients are identified by 16 hex characters (FxA's format).
pub(super) fn check_client_id(client_id: &str) -> Result<()> {
    if client_id.len() == 16 && client_id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AccountsError::InvalidParameter("client_id".into()))
    }
}

impl Accounts {
    /// Signs an access token for `account`; `auth_at` (ms) is when the session behind
    /// it proved the password.
    fn access_token(
        &self,
        account: &Account,
        client_id: &str,
        scope: &str,
        ttl: i64,
        auth_at: i64,
    ) -> Result<(String, i64)> {
        let ttl = if ttl <= 0 {
            oauth::DEFAULT_ACCESS_TTL_SECS
        } else {
            ttl.min(oauth::MAX_ACCESS_TTL_SECS)
        };
        let now = now_ms() / 1000;
        let claims = AccessClaims {
            iss: self.signer.issuer().to_string(),
            sub: account.uid.clone(),
            aud: client_id.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            iat: now,
            exp: now + ttl,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            generation: account.verifier_set_at,
            auth_at,
        };
        Ok((self.signer.sign(&claims)?, ttl))
    }

    pub(super) async fn grant(&self, account: &Account, g: GrantRequest<'_>) -> Result<Grant> {
        let GrantRequest {
            client_id,
            scope,
            ttl,
            offline,
            auth_at,
            keys_jwe,
        } = g;
        let (access_token, expires_in) =
            self.access_token(account, client_id, scope, ttl, auth_at)?;
        let mut refresh_token = None;
        if offline {
            let token = crypto::random32();
            let now = now_ms();
            let r = Refresh {
                token_hash: crypto::sha256(&token),
                uid: account.uid.clone(),
                client_id: client_id.to_string(),
                scope: scope.to_string(),
                created_at: now,
                last_used_at: now,
                // The session's (or code's) sign-in, not now: a refresh token made
                // with a stolen session is no fresher than that session.
                auth_at,
            };
            self.blocking(move |s| Ok(s.insert_refresh(&r)?)).await?;
            refresh_token = Some(hex::encode(token));
        }
        Ok(Grant {
            access_token,
            refresh_token,
            scope: scope.to_string(),
            expires_in,
            auth_at: auth_at / 1000,
            keys_jwe,
        })
    }

    /// `grant_type=fxa-credentials`: a token straight from a session.
    pub async fn token_from_session(
        &self,
        a: &Authed,
        client_id: &str,
        scope: &str,
        ttl: i64,
        offline: bool,
    ) -> Result<Grant> {
        Self::require_verified(&a.account)?;
        check_client_id(client_id)?;
        let scope = parse_scopes(scope)?;
        let g = GrantRequest {
            client_id,
            scope: &scope,
            ttl,
            offline,
            auth_at: a.token.created_at,
            keys_jwe: None,
        };
        self.grant(&a.account, g).await
    }

    /// `grant_type=refresh_token`: a new access token (scope narrowed if asked).
    pub async fn token_from_refresh(
        &self,
        client_id: &str,
        refresh: &str,
        scope: Option<&str>,
        ttl: i64,
    ) -> Result<Grant> {
        let token = hex32("refresh_token", refresh)
            .map_err(|_| AccountsError::InvalidGrant("unknown refresh token"))?;
        let h = crypto::sha256(&token);
        let now = now_ms();
        let row = self.blocking(move |s| Ok(s.use_refresh(&h, now)?)).await?;
        let row = row
            .filter(|r| r.client_id == client_id)
            .ok_or(AccountsError::InvalidGrant("unknown refresh token"))?;
        let scope = match scope {
            Some(s) if !s.trim().is_empty() => {
                let wanted = parse_scopes(s)?;
                if !wanted
                    .split(' ')
                    .all(|w| row.scope.split(' ').any(|g| g == w))
                {
                    return Err(AccountsError::InvalidScopes);
                }
                wanted
            }
            _ => row.scope.clone(),
        };
        let uid = row.uid.clone();
        let account = self.blocking(move |s| Ok(s.account(&uid)?)).await?;
        let account = account
            .filter(|a| !a.disabled)
            .ok_or(AccountsError::InvalidGrant("unknown account"))?;
        // The access token carries the sign-in the refresh token came from (0 for a
        // refresh token from before that was recorded: older than any sign-in).
        let (access_token, expires_in) =
            self.access_token(&account, client_id, &scope, ttl, row.auth_at)?;
        let shown_auth_at = if row.auth_at > 0 {
            row.auth_at
        } else {
            row.created_at
        };
        Ok(Grant {
            access_token,
            refresh_token: None,
            scope,
            expires_in,
            auth_at: shown_auth_at / 1000,
            keys_jwe: None,
        })
    }

    /// `POST /oauth/destroy`: revokes a refresh token. Access tokens are JWTs that
    /// stay valid until they expire (as FxA's).
    pub async fn destroy_token(&self, token: &str) -> Result<()> {
        if let Ok(t) = hex32("token", token) {
            let h = crypto::sha256(&t);
            self.blocking(move |s| Ok(s.delete_refresh(&h).map(|_| ())?))
                .await?;
        }
        Ok(())
    }

    /// Checks an access token of this service (`/v1/verify`, the profile endpoint): its
    /// signature and expiry, and its account now: it exists, is enabled, and its
    /// password has not changed since the token was issued (the token's generation is
    /// the account's). Anything else is an invalid token.
    pub async fn verify_access(&self, token: &str) -> Result<(AccessClaims, Account)> {
        let claims = self
            .signer
            .verify(token)
            .ok_or(AccountsError::InvalidToken)?;
        let account = self.account(&claims.sub).await?;
        match account {
            Some(a) if !a.disabled && a.verifier_set_at == claims.generation => Ok((claims, a)),
            _ => Err(AccountsError::InvalidToken),
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    grant_type: Option<String>,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn grant_body(g: Grant, user: Option<&str>) -> ApiResult {
    let mut body = json!({
        "access_token": g.access_token,
        "token_type": "bearer",
        "scope": g.scope,
        "expires_in": g.expires_in,
        "auth_at": g.auth_at,
    });
    if let Some(r) = g.refresh_token {
        body["refresh_token"] = json!(r);
    }
    if let Some(k) = g.keys_jwe {
        body["keys_jwe"] = json!(k);
    }
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    ok(body)
}

pub(super) async fn token(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: TokenBody = r.json()?;
    let ttl = b.ttl.unwrap_or(0);
    let need = |v: Option<String>, n: &str| v.ok_or(AccountsError::MissingParameter(n.into()));
    let grant = match b.grant_type.as_deref().unwrap_or("authorization_code") {
        "fxa-credentials" => {
            let a = session(&st, &r).await?;
            let offline = b.access_type.as_deref() == Some("offline");
            let scope = need(b.scope, "scope")?;
            st.accounts
                .token_from_session(&a, &b.client_id, &scope, ttl, offline)
                .await?
        }
        "authorization_code" => {
            let code = need(b.code, "code")?;
            st.accounts
                .token_from_code(&b.client_id, &code, b.code_verifier.as_deref())
                .await?
        }
        "refresh_token" => {
            let refresh = need(b.refresh_token, "refresh_token")?;
            st.accounts
                .token_from_refresh(&b.client_id, &refresh, b.scope.as_deref(), ttl)
                .await?
        }
        _ => return Err(AccountsError::InvalidParameter("grant_type".into())),
    };
    grant_body(grant, None)
}

#[derive(Deserialize)]
struct DestroyBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

pub(super) async fn destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: DestroyBody = r.json()?;
    let t = b
        .token
        .or(b.refresh_token)
        .or(b.access_token)
        .ok_or(AccountsError::MissingParameter("token".into()))?;
    st.accounts.destroy_token(&t).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct VerifyBody {
    token: String,
}

pub(super) async fn verify(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: VerifyBody = r.json()?;
    let (c, _) = st.accounts.verify_access(&b.token).await?;
    ok(json!({
        "user": c.sub,
        "client_id": c.client_id,
        "scope": c.scope.split(' ').collect::<Vec<_>>(),
        "generation": c.generation,
    }))
}

pub(super) async fn jwks(State(st): State<ApiState>) -> ApiResult {
    ok(st.accounts.signer().jwks())
}
