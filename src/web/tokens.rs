//! `GET /1.0/sync/1.5`: the tokenserver's one route.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::tokenserver::TokenserverError;

/// Exchanges an FxA OAuth token (and X-KeyID) for a storage token and node.
pub async fn token(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tokenserver = s.tokenserver.as_ref().ok_or(ApiError::NotFound)?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenserverError::InvalidCredentials("missing bearer token".into()))?;
    let key_id = headers.get("x-keyid").and_then(|v| v.to_str().ok());
    let answer = tokenserver.issue(bearer, key_id).await?;
    let backoff = answer.backoff;
    let mut r = axum::Json(&answer).into_response();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    r.headers_mut()
        .insert("x-timestamp", HeaderValue::from(now));
    if backoff > 0 {
        r.headers_mut()
            .insert("x-backoff", HeaderValue::from(backoff));
    }
    Ok(r)
}
