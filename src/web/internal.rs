//! Node-to-node routes (`/__internal__/…`), each request signed with the deployment's
//! secret (see `auth::internal`); unsigned or stale requests get 401 and nothing else.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::auth::internal::{SIGNATURE_HEADER, verify};
use crate::cluster::{self, MoveError};

fn signed(state: &AppState, headers: &HeaderMap, path: &str, body: &[u8]) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    verify(state.auth.secrets(), header, "POST", path, body, now)
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "unsigned"})),
    )
        .into_response()
}

fn failed(e: MoveError) -> Response {
    let status = match e {
        MoveError::BadTarget(_) | MoveError::NotHere(_) | MoveError::NoAssignments => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, axum::Json(json!({"error": e.to_string()}))).into_response()
}

/// The body of a move order.
#[derive(Deserialize)]
struct MoveOrder {
    to: String,
}

/// `POST /__internal__/move/{uid}` `{"to": URL}`: move the user from this node to `to`.
pub async fn move_user(
    State(s): State<AppState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !signed(&s, &headers, &format!("/__internal__/move/{uid}"), &body) {
        return refused();
    }
    let Ok(order) = serde_json::from_slice::<MoveOrder>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad order"})),
        )
            .into_response();
    };
    match cluster::move_out(&s, uid, &order.to).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /__internal__/receive/{uid}` (the file's bytes): install a moved user's copy.
pub async fn receive(
    State(s): State<AppState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !signed(&s, &headers, &format!("/__internal__/receive/{uid}"), &body) {
        return refused();
    }
    match cluster::receive(&s, uid, body.to_vec()).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => failed(e),
    }
}
