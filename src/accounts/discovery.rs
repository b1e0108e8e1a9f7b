//! The discovery documents: `/.well-known/fxa-client-configuration` (where Firefox
//! finds the auth, OAuth, profile and token servers: all here) and
//! `/.well-known/openid-configuration`.

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;

use super::api::{ApiResult, ApiState, ok, origin};

pub(super) async fn client_configuration(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult {
    let o = origin(&headers, &st);
    ok(json!({
        "auth_server_base_url": format!("{o}/v1"),
        "oauth_server_base_url": o,
        "profile_server_base_url": format!("{o}/profile"),
        "sync_tokenserver_base_url": o,
        "pairing_server_base_uri": o,
    }))
}

pub(super) async fn openid_configuration(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult {
    let o = origin(&headers, &st);
    ok(json!({
        "issuer": st.accounts.signer().issuer(),
        "authorization_endpoint": format!("{o}/authorization"),
        "token_endpoint": format!("{o}/v1/oauth/token"),
        "revocation_endpoint": format!("{o}/v1/oauth/destroy"),
        "userinfo_endpoint": format!("{o}/profile/v1/profile"),
        "jwks_uri": format!("{o}/v1/jwks"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "fxa-credentials"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["profile", super::SYNC_SCOPE],
        "subject_types_supported": ["public"],
    }))
}
