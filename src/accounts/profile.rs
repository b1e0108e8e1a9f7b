//! The profile: `GET /v1/profile` and `/profile/v1/profile` (for an access token with
//! a profile scope, or a session token) and the auth server's `GET /account/profile`.

use axum::extract::State;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::{AccountsError, TokenAuth};

pub(super) async fn account_profile(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    ok(json!({
        "email": a.account.email,
        "locale": null,
        "authenticationMethods": ["pwd"],
        "authenticatorAssuranceLevel": 1,
    }))
}

pub(super) async fn profile(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    // An OAuth access token with a profile scope (as Firefox's profile client sends),
    // or a session token.
    let uid = match &r.auth {
        Some(TokenAuth::Bearer { .. }) | None => {
            let bearer = r
                .auth
                .as_ref()
                .and_then(|a| match a {
                    TokenAuth::Bearer { prefix, id } if prefix.is_empty() => Some(id.clone()),
                    TokenAuth::Bearer { prefix, id } => Some(format!("{prefix}_{id}")),
                    _ => None,
                })
                .ok_or(AccountsError::InvalidToken)?;
            // A JWT is decided as an access token (its account must still exist, be
            // enabled and have the token's password generation); anything else is a
            // session token.
            if bearer.split('.').count() == 3 {
                let (c, account) = st.accounts.verify_access(&bearer).await?;
                if !c
                    .scope
                    .split(' ')
                    .any(|s| s == super::PROFILE_SCOPE || s.starts_with("profile:"))
                {
                    return Err(AccountsError::InvalidToken);
                }
                account.uid
            } else {
                session(&st, &r).await?.account.uid
            }
        }
        Some(TokenAuth::Hawk { .. }) => session(&st, &r).await?.account.uid,
    };
    let account = st
        .accounts
        .account(&uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    ok(json!({
        "uid": account.uid,
        "email": account.email,
        "displayName": account.display_name,
        "locale": null,
        "avatar": null,
        "avatarDefault": true,
        "amrValues": ["pwd"],
        "twoFactorAuthentication": false,
    }))
}
