//! `ApiError`: every way a request can fail, mapped to a status and a small JSON body
//! in one place. Internal causes are logged, never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::storage::StorageError;
use crate::storage::model::Timestamp;
use crate::tokenserver::TokenserverError;

use super::observe::{MAX_LOGGED_BYTES, clip};

/// Sync's numeric error codes (the body of a 400/403/413).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WeaveCode {
    /// Illegal method or protocol use (bad parameter or header).
    IllegalMethod = 1,
    /// The body is not valid JSON.
    InvalidJson = 6,
    /// The BSO is not valid.
    InvalidBso = 8,
    /// The collection name is not valid.
    InvalidCollection = 13,
    /// The user is over quota.
    OverQuota = 14,
    /// A size limit was exceeded.
    SizeLimitExceeded = 17,
}

/// Errors of the web layer, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a Sync error code; the message is logged only.
    #[error("bad request ({code:?}): {message}")]
    BadRequest {
        /// The code sent as the body.
        code: WeaveCode,
        /// What was wrong, for the log.
        message: String,
    },
    /// 401: not authenticated (503 for `AuthError::Busy`).
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    /// 404: no such resource or route.
    #[error("not found")]
    NotFound,
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 406: the requested response format is not available.
    #[error("not acceptable")]
    NotAcceptable,
    /// 413: the request body is larger than the server accepts.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 408: the request body did not arrive in time (or the connection broke).
    #[error("request body not received in time")]
    RequestTimeout,
    /// 415: the request body's content type is not supported.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Errors of the storage layer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Errors of the tokenserver.
    #[error(transparent)]
    Token(#[from] TokenserverError),
    /// 503: a dependency (e.g. the assignment database) is unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 with the given code and a message for the log.
    pub fn bad(code: WeaveCode, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }
}

fn json_body(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn with_last_modified(mut r: Response, ts: Timestamp) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ts.to_string()) {
        r.headers_mut().insert("x-last-modified", v);
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest { code, message } => {
                tracing::debug!(?code, message = %clip(&message, MAX_LOGGED_BYTES), "bad request");
                json_body(StatusCode::BAD_REQUEST, json!(code as u8))
            }
            ApiError::Unauthorized(AuthError::Busy) => {
                tracing::warn!("replay cache full (or one user's share of it): 503");
                unavailable(json!("server busy"), "5")
            }
            ApiError::Unauthorized(e) => {
                tracing::debug!(reason = %e, "unauthorized");
                let mut r = json_body(
                    StatusCode::UNAUTHORIZED,
                    json!({"status": "invalid-credentials", "errors": [
                        {"location": "header", "name": "Authorization", "description": e.to_string()}
                    ]}),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Hawk"));
                r
            }
            ApiError::NotFound => json_body(StatusCode::NOT_FOUND, json!(0)),
            ApiError::MethodNotAllowed => json_body(StatusCode::METHOD_NOT_ALLOWED, json!(0)),
            ApiError::NotAcceptable => json_body(StatusCode::NOT_ACCEPTABLE, json!(0)),
            ApiError::PayloadTooLarge => json_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!(WeaveCode::SizeLimitExceeded as u8),
            ),
            ApiError::RequestTimeout => json_body(StatusCode::REQUEST_TIMEOUT, json!(0)),
            ApiError::UnsupportedMediaType => {
                json_body(StatusCode::UNSUPPORTED_MEDIA_TYPE, json!(0))
            }
            ApiError::Storage(e) => storage_response(e),
            ApiError::Token(e) => token_response(e),
            ApiError::Unavailable(m) => {
                tracing::error!(error = %m, "dependency unavailable");
                unavailable(json!("server busy"), "30")
            }
        }
    }
}

fn unavailable(body: serde_json::Value, retry: &'static str) -> Response {
    let mut r = json_body(StatusCode::SERVICE_UNAVAILABLE, body);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry));
    r
}

/// Tokenserver errors in Mozilla's shape: `{"status", "errors": [{location, name, description}]}`.
/// The description is a fixed text per kind (as Mozilla's tokenserver sends
/// "Unauthorized"): the cause (JWT library, database, HTTP client messages) is logged
/// only, never sent.
fn token_response(e: TokenserverError) -> Response {
    use TokenserverError as E;
    const UNAUTHORIZED: &str = "Unauthorized";
    let (status, code, location, name, description) = match &e {
        E::InvalidCredentials(_) => (
            401,
            "invalid-credentials",
            "header",
            "Authorization",
            UNAUTHORIZED,
        ),
        E::InvalidKeyId => (
            401,
            "invalid-credentials",
            "header",
            "X-KeyID",
            UNAUTHORIZED,
        ),
        E::InvalidGeneration => (401, "invalid-generation", "body", "", UNAUTHORIZED),
        E::InvalidKeysChangedAt => (401, "invalid-keysChangedAt", "body", "", UNAUTHORIZED),
        E::InvalidClientState => (
            401,
            "invalid-client-state",
            "header",
            "X-KeyID",
            UNAUTHORIZED,
        ),
        E::NewUsersDisabled => (401, "new-users-disabled", "body", "", UNAUTHORIZED),
        E::NoNodes | E::VerifierUnavailable(_) | E::Db(_) => {
            (503, "server-error", "body", "", "Resource is not available")
        }
        E::Internal(_) => (500, "server-error", "body", "", "Internal server error"),
    };
    if status >= 500 {
        tracing::error!(error = %e, "token request failed");
    } else {
        tracing::debug!(error = %clip(&e.to_string(), MAX_LOGGED_BYTES), "token request refused");
    }
    let body = json!({"status": code, "errors": [
        {"location": location, "name": name, "description": description}
    ]});
    let status = StatusCode::from_u16(status).expect("valid status");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return unavailable(body, "30");
    }
    let mut r = json_body(status, body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn storage_response(e: StorageError) -> Response {
    match e {
        StorageError::NotModified(ts) => {
            with_last_modified(StatusCode::NOT_MODIFIED.into_response(), ts)
        }
        StorageError::PreconditionFailed(ts) => {
            with_last_modified(json_body(StatusCode::PRECONDITION_FAILED, json!(0)), ts)
        }
        StorageError::NotFound => json_body(StatusCode::NOT_FOUND, json!(0)),
        StorageError::InvalidOffset => {
            ApiError::bad(WeaveCode::IllegalMethod, "invalid offset").into_response()
        }
        StorageError::OverQuota => {
            json_body(StatusCode::FORBIDDEN, json!(WeaveCode::OverQuota as u8))
        }
        StorageError::BatchNotFound => ApiError::bad(
            WeaveCode::IllegalMethod,
            "unknown, expired or foreign batch",
        )
        .into_response(),
        StorageError::BatchTooLarge => ApiError::bad(
            WeaveCode::SizeLimitExceeded,
            "batch over max_total_records or max_total_bytes",
        )
        .into_response(),
        StorageError::Busy => {
            tracing::warn!("storage busy: write lock or connection not available in time");
            unavailable(json!("server busy"), "5")
        }
        StorageError::Moving => unavailable(json!("user is moving to another node"), "2"),
        StorageError::MovedAway => {
            ApiError::Unauthorized(crate::auth::AuthError::Reassigned).into_response()
        }
        StorageError::Unavailable { uid, ref source } => {
            tracing::error!(uid, error = %source, "user file unavailable");
            unavailable(json!("server busy"), "60")
        }
        other => {
            tracing::error!(error = %other, "internal error");
            json_body(StatusCode::INTERNAL_SERVER_ERROR, json!("internal error"))
        }
    }
}
