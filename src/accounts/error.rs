//! The accounts service's errors, each an FxA error (status, errno), and the JSON
//! response FxA's clients read from one (`errno`, `retryAfter`, `serverTime`, …).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{now_ms, oauth, store};

/// Errors of the accounts service, each an FxA error (status, errno).
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// 400 errno 101.
    #[error("Account already exists")]
    AccountExists,
    /// 400 errno 102.
    #[error("Unknown account")]
    UnknownAccount,
    /// 400 errno 103.
    #[error("Incorrect password")]
    IncorrectPassword,
    /// 400 errno 104: the account's email is not verified yet.
    #[error("Unverified account")]
    Unverified,
    /// 400 errno 183: a wrong, expired or absent email verification code.
    #[error("Invalid or expired verification code")]
    InvalidCode,
    /// 503 errno 151: the verification mail could not be sent (the cause is logged).
    #[error("Failed to send email: {0}")]
    MailFailed(&'static str),
    /// 400 errno 107.
    #[error("Invalid parameter in request body: {0}")]
    InvalidParameter(String),
    /// 400 errno 108.
    #[error("Missing parameter in request body: {0}")]
    MissingParameter(String),
    /// 401 errno 109.
    #[error("Invalid request signature")]
    InvalidSignature,
    /// 401 errno 110.
    #[error("The authentication token could not be found")]
    InvalidToken,
    /// 401 errno 111 (with the server's time).
    #[error("Invalid authentication timestamp")]
    InvalidTimestamp,
    /// 401 errno 115.
    #[error("Invalid nonce in request signature")]
    InvalidNonce,
    /// 429 errno 114, with `retryAfter` seconds.
    #[error("Client has sent too many requests")]
    TooManyRequests(u64),
    /// 400 errno 120: the email's case differs from the account's (which salts the
    /// client's stretch); the client retries with this one.
    #[error("Incorrect email case")]
    IncorrectEmailCase(String),
    /// 400 errno 125: sign-ups are closed, or the account is disabled.
    #[error("The request was blocked for security reasons: {0}")]
    Blocked(&'static str),
    /// 400 errno 162 (OAuth): unknown, expired or used code or refresh token, or a
    /// PKCE verifier that does not match.
    #[error("Invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// 400 errno 163 (OAuth): a scope this service does not grant.
    #[error("Requested scopes are not allowed")]
    InvalidScopes,
    /// 503 errno 202: a feature this server does not offer (email verification
    /// without a mail server).
    #[error("Feature not enabled: {0}")]
    NotEnabled(&'static str),
    /// 400 errno 123: a device id that is not one of the account's, or a session
    /// without a device where one is needed.
    #[error("Unknown device")]
    UnknownDevice,
    /// 400 errno 157: a command the target device does not offer.
    #[error("Unavailable device command")]
    UnavailableCommand,
    /// 500 errno 999: the database or a key failed (the cause is logged, not sent).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<store::StoreError> for AccountsError {
    fn from(e: store::StoreError) -> Self {
        AccountsError::Internal(e.to_string())
    }
}

impl From<oauth::KeyError> for AccountsError {
    fn from(e: oauth::KeyError) -> Self {
        AccountsError::Internal(e.to_string())
    }
}

pub(super) type Result<T> = std::result::Result<T, AccountsError>;

impl IntoResponse for AccountsError {
    fn into_response(self) -> Response {
        use AccountsError::*;
        let (code, errno) = match &self {
            AccountExists => (400, 101),
            UnknownAccount => (400, 102),
            IncorrectPassword => (400, 103),
            Unverified => (400, 104),
            InvalidCode => (400, 183),
            MailFailed(_) => (503, 151),
            InvalidParameter(_) => (400, 107),
            MissingParameter(_) => (400, 108),
            InvalidSignature => (401, 109),
            InvalidToken => (401, 110),
            InvalidTimestamp => (401, 111),
            InvalidNonce => (401, 115),
            TooManyRequests(_) => (429, 114),
            IncorrectEmailCase(_) => (400, 120),
            Blocked(_) => (400, 125),
            InvalidGrant(_) => (400, 162),
            InvalidScopes => (400, 163),
            NotEnabled(_) => (503, 202),
            UnknownDevice => (400, 123),
            UnavailableCommand => (400, 157),
            Internal(_) => (500, 999),
        };
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &self {
            Internal(cause) => {
                tracing::error!(error = %cause, "accounts service failure");
                "Unspecified error".to_string()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "code": code,
            "errno": errno,
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": message,
            "info": "https://mozilla.github.io/ecosystem-platform/api#section/Response-format",
        });
        match &self {
            TooManyRequests(secs) => {
                body["retryAfter"] = json!(secs);
                body["retryAfterLocalized"] = json!(format!("in {secs} seconds"));
            }
            InvalidTimestamp => body["serverTime"] = json!(now_ms() / 1000),
            IncorrectEmailCase(email) => body["email"] = json!(email),
            _ => {}
        }
        let mut res = (status, axum::Json(body)).into_response();
        if let TooManyRequests(secs) = &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}
