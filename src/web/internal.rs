//! Node-to-node routes (`/__internal__/…`), served only on the internal listener
//! (`internal_listen`), never on the public one. Each request is signed with the
//! deployment's secret for this node, once (see `auth::internal`): the signature, its
//! target, time and nonce are checked from the headers before a byte of the body is
//! read; a received file is streamed to the data dir under `max_moved_file_bytes` and
//! its hash compared with the signed one at the end. Bad signatures get 401.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::AppState;
use crate::auth::internal::{
    BODY_HASH_HEADER, RequestHead, SIGNATURE_HEADER, SeenNonces, VerifiedHead, verify_head,
};
use crate::cluster::{self, MoveError};

mod restore;

/// Largest move order (a small JSON object), bytes.
const MAX_ORDER_BYTES: usize = 64 * 1024;

/// What the internal routes reach: the node's state and the nonces already taken.
#[derive(Clone)]
pub struct InternalState {
    /// The process's state.
    app: AppState,
    /// Nonces of the signed requests taken within the validity window (replays).
    nonces: Arc<SeenNonces>,
    /// When these routes began to be served (unix seconds): the nonces taken before
    /// (by an earlier process) are not remembered, so older signatures are refused.
    started: i64,
}

/// The internal listener's routes.
pub fn router(app: AppState) -> Router {
    let state = InternalState {
        app,
        nonces: Arc::new(SeenNonces::default()),
        started: unix_now(),
    };
    Router::new()
        .route("/__internal__/move/{uid}", post(move_user))
        .route("/__internal__/receive/{uid}", post(receive))
        .route("/__internal__/delete/{uid}", post(delete_user))
        .route("/__internal__/restore/{uid}", post(restore::restore_user))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Why a request was turned away before its work began: a status and a message.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks the signature headers (for this node, in time, first use of the nonce)
/// without touching the body.
/// [`signed`], for a route whose body is a user's file: also refuses a declared length
/// over `max_moved_file_bytes` (413) before any of the body is read.
fn signed_file(
    s: &InternalState,
    headers: &HeaderMap,
    path: &str,
) -> Result<VerifiedHead, Box<Response>> {
    let verified = signed(s, headers, path).map_err(|r| Box::new(r.into_response()))?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.app.settings.max_moved_file_bytes) {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file too large",
        )));
    }
    Ok(verified)
}

fn signed(s: &InternalState, headers: &HeaderMap, path: &str) -> Result<VerifiedHead, Refusal> {
    let refused = || Refusal(StatusCode::UNAUTHORIZED, "unsigned");
    // Only a node of a cluster (an assignment database naming it) takes these.
    let Some(check) = &s.app.assignments else {
        return Err(refused());
    };
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let head = RequestHead {
        method: "POST",
        path,
        target: check.node_url(),
    };
    let now = unix_now();
    let verified = verify_head(
        s.app.auth.secrets(),
        text(SIGNATURE_HEADER),
        text(BODY_HASH_HEADER),
        &head,
        now,
    )
    .ok_or_else(refused)?;
    if !signed_since(&verified, s.started) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "signed before this node started (a replay?): sign it again",
        ));
    }
    if !s.nonces.first_use(&verified, now) {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "replayed"));
    }
    Ok(verified)
}

/// Whether a signature was made at or after `started` (unix seconds). The nonces of
/// the requests an earlier process took are gone with it: a request signed before this
/// one started could be one of them, replayed, so it is refused on every route.
fn signed_since(head: &VerifiedHead, started: i64) -> bool {
    head.ts >= started
}

fn failed(e: MoveError) -> Response {
    let status = match e {
        MoveError::BadTarget(_)
        | MoveError::NotHere(_)
        | MoveError::NotPending(_)
        | MoveError::NoAssignments => StatusCode::CONFLICT,
        MoveError::Storage(crate::storage::StorageError::Invalid(_)) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

/// The body of a move order.
#[derive(Deserialize)]
struct MoveOrder {
    to: String,
}

/// Checks a small signed order (the head before the body), reads its body under
/// `MAX_ORDER_BYTES` and checks it against the signed hash.
async fn signed_order(
    s: &InternalState,
    headers: &HeaderMap,
    path: &str,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    let verified = signed(s, headers, path).map_err(IntoResponse::into_response)?;
    let Ok(body) = axum::body::to_bytes(body, MAX_ORDER_BYTES).await else {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "order too large"));
    };
    if hex::encode(Sha256::digest(&body)) != verified.body_sha256 {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "body does not match its signature",
        ));
    }
    Ok(body)
}

/// `POST /__internal__/move/{uid}` `{"to": URL}`: move the user from this node to `to`.
async fn move_user(
    State(s): State<InternalState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/__internal__/move/{uid}");
    let body = match signed_order(&s, &headers, &path, body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let Ok(order) = serde_json::from_slice::<MoveOrder>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad order");
    };
    match cluster::move_out(s.app.this_node(), uid, &order.to).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /__internal__/delete/{uid}` (empty body): delete the data of a user whose
/// account was deleted; only for a uid the assignment database has retired.
async fn delete_user(
    State(s): State<InternalState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/__internal__/delete/{uid}");
    if let Err(r) = signed_order(&s, &headers, &path, body).await {
        return r;
    }
    if let Err(e) = cluster::is_retired(s.app.this_node(), uid).await {
        return failed(e);
    }
    match cluster::delete_here(s.app.this_node(), uid).await {
        Ok(()) => axum::Json(json!({"deleted": uid})).into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /__internal__/receive/{uid}` (the file's bytes): install a moved user's copy.
async fn receive(
    State(s): State<InternalState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let verified = match signed_file(&s, &headers, &format!("/__internal__/receive/{uid}")) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(e) = cluster::may_receive(s.app.this_node(), uid).await {
        return failed(e);
    }
    let cap = s.app.settings.max_moved_file_bytes;
    let incoming = match spool(&s.app, uid, body, cap, &verified.body_sha256).await {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    match cluster::receive(s.app.this_node(), uid, incoming, verified.body_sha256).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => failed(e),
    }
}

/// Streams `body` to a new owner-only file under `<data-dir>/moves`, at most `cap`
/// bytes, and checks it hashes to `sha256`; the file is removed on any failure.
async fn spool(
    app: &AppState,
    uid: u64,
    body: Body,
    cap: u64,
    sha256: &str,
) -> Result<PathBuf, Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(uid, error = %e, "cannot spool a received file");
        Refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot store the file")
    };
    let dir = app.storage.dbs().data_dir().join("moves");
    crate::private::create_dir(&dir).map_err(|e| unavailable(&e))?;
    let path = dir.join(format!("incoming-{uid}-{:08x}", rand::random::<u32>()));
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Refusal(StatusCode::BAD_REQUEST, "body cut short"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            if size > cap {
                return Err(Refusal(StatusCode::PAYLOAD_TOO_LARGE, "file too large"));
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(|e| unavailable(&e))?;
        }
        if hex::encode(hasher.finalize()) != sha256 {
            return Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "body does not match its signature",
            ));
        }
        file.sync_all().await.map_err(|e| unavailable(&e))?;
        Ok(())
    }
    .await;
    match written {
        Ok(()) => Ok(path),
        Err(r) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_older_than_the_process_is_refused() {
        let head = |ts| VerifiedHead {
            ts,
            nonce: "ab".repeat(16),
            body_sha256: "cd".repeat(32),
        };
        assert!(signed_since(&head(1000), 1000));
        assert!(signed_since(&head(1001), 1000));
        assert!(!signed_since(&head(999), 1000));
    }
}
