//! OAuth authorization codes: `POST /oauth/authorization` makes a short-lived code for
//! the session's account (PKCE required), and the token endpoint's
//! `authorization_code` grant trades it, once, for tokens (see `grants`).

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::grants::{GrantRequest, check_client_id, parse_scopes};
use super::store::Code;
use super::{Accounts, AccountsError, Authed, Grant, Result, crypto, hex32, now_ms};

/// Lifetime of an authorization code, ms.
const CODE_TTL_MS: i64 = 10 * 60 * 1000;

impl Accounts {
    /// `POST /oauth/authorization`: a code for the session's account.
    pub async fn authorize(
        &self,
        a: &Authed,
        client_id: &str,
        scope: &str,
        code_challenge: Option<String>,
        keys_jwe: Option<String>,
        offline: bool,
    ) -> Result<String> {
        Self::require_verified(&a.account)?;
        check_client_id(client_id)?;
        let scope = parse_scopes(scope)?;
        if let Some(c) = &code_challenge
            && (c.len() != 43
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(AccountsError::InvalidParameter("code_challenge".into()));
        }
        let code = crypto::random32();
        let row = Code {
            uid: a.account.uid.clone(),
            client_id: client_id.to_string(),
            scope,
            code_challenge,
            keys_jwe,
            offline,
            auth_at: a.token.created_at,
            expires_at: now_ms() + CODE_TTL_MS,
        };
        let h = crypto::sha256(&code);
        let now = now_ms();
        self.blocking(move |s| Ok(s.insert_code(&h, &row, now)?))
            .await?;
        Ok(hex::encode(code))
    }

    /// `grant_type=authorization_code`: trades a code (with its PKCE verifier).
    pub async fn token_from_code(
        &self,
        client_id: &str,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<Grant> {
        let code = hex32("code", code).map_err(|_| AccountsError::InvalidGrant("unknown code"))?;
        let h = crypto::sha256(&code);
        let row = self.blocking(move |s| Ok(s.take_code(&h)?)).await?;
        let row = row.ok_or(AccountsError::InvalidGrant("unknown code"))?;
        if row.expires_at < now_ms() || row.client_id != client_id {
            return Err(AccountsError::InvalidGrant("unknown code"));
        }
        match (&row.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                use base64::Engine;
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(crypto::sha256(v.as_bytes()));
                if !crypto::ct_eq(computed.as_bytes(), challenge.as_bytes()) {
                    return Err(AccountsError::InvalidGrant("PKCE verifier does not match"));
                }
            }
            (None, _) => {
                // Public clients must use PKCE; confidential clients do not exist here.
                return Err(AccountsError::InvalidGrant("code issued without PKCE"));
            }
            (Some(_), None) => return Err(AccountsError::MissingParameter("code_verifier".into())),
        }
        let uid = row.uid.clone();
        let account = self.blocking(move |s| Ok(s.account(&uid)?)).await?;
        let account = account
            .filter(|a| !a.disabled)
            .ok_or(AccountsError::InvalidGrant("unknown account"))?;
        Self::require_verified(&account)?;
        let g = GrantRequest {
            client_id,
            scope: &row.scope,
            ttl: 0,
            offline: row.offline,
            auth_at: row.auth_at,
            keys_jwe: row.keys_jwe.clone(),
        };
        self.grant(&account, g).await
    }
}

#[derive(Deserialize)]
struct AuthorizationBody {
    client_id: String,
    state: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    code_challenge: Option<String>,
    #[serde(default)]
    code_challenge_method: Option<String>,
    #[serde(default)]
    keys_jwe: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

pub(super) async fn authorization(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: AuthorizationBody = r.json()?;
    if b.code_challenge.is_some() && b.code_challenge_method.as_deref().unwrap_or("S256") != "S256"
    {
        return Err(AccountsError::InvalidParameter(
            "code_challenge_method".into(),
        ));
    }
    let a = session(&st, &r).await?;
    let scope = b.scope.unwrap_or_else(|| super::PROFILE_SCOPE.into());
    let code = st
        .accounts
        .authorize(
            &a,
            &b.client_id,
            &scope,
            b.code_challenge,
            b.keys_jwe,
            b.access_type.as_deref() == Some("offline"),
        )
        .await?;
    let base = b
        .redirect_uri
        .unwrap_or_else(|| "urn:ietf:wg:oauth:2.0:oob:oauth-redirect-webchannel".into());
    let query = serde_urlencoded::to_string([("code", code.as_str()), ("state", b.state.as_str())])
        .map_err(|e| AccountsError::Internal(e.to_string()))?;
    let sep = if base.contains('?') { '&' } else { '?' };
    ok(json!({ "code": code, "state": b.state, "redirect": format!("{base}{sep}{query}") }))
}
