//! `POST /__internal__/restore/{uid}` (the file's bytes): `syncstore restore SRC --user
//! UID` puts one user's file from a backup back into this running node, by the path a
//! live move's target takes: the request is signed with the deployment's secret for
//! this node, the file is streamed to the data dir under `max_moved_file_bytes` and its
//! hash compared with the signed one, then `UserDbs::install_copy` holds the user's
//! writes (it takes the user's write lock, after the write in flight), checks the file
//! (integrity, exactly a known version's schema), closes the open handle and swaps the
//! file in, and forgets the user's summary; the assignment check forgets the uid too.
//! Only for a user who lives on this node (or whom the assignment database has placed
//! nowhere) and is not being moved.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{InternalState, failed, signed_file, spool};
use crate::cluster::{MoveError, ThisNode};
use crate::tokenserver::db::DbError;
use crate::tokenserver::store;

/// Whether `uid`'s file may be replaced here: it lives on this node (or nowhere), no
/// move of it is pending, and this process has not moved it away.
async fn may_restore(node: ThisNode<'_>, uid: u64) -> Result<(), MoveError> {
    let check = node.assignments.ok_or(MoveError::NoAssignments)?;
    let (current, pending) = check
        .db()
        .run(move |tx| {
            Ok::<_, DbError>((
                store::uid_node(tx, uid as i64)?,
                store::pending_move_target(tx, uid as i64)?,
            ))
        })
        .await?;
    if let Some(other) = current.filter(|n| n != check.node_url()) {
        return Err(MoveError::BadTarget(format!(
            "user {uid} lives on {other}, not on this node: restore it there"
        )));
    }
    if pending.is_some() {
        return Err(MoveError::BadTarget(format!(
            "user {uid} is being moved; restore it once the move is over"
        )));
    }
    // A user this process moved away answers 401 here: its file is not ours to put back.
    node.dbs.fresh_summary(uid)?;
    Ok(())
}

/// The route's handler (see the module doc).
pub(super) async fn restore_user(
    State(s): State<InternalState>,
    Path(uid): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let verified = match signed_file(&s, &headers, &format!("/__internal__/restore/{uid}")) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let node = s.app.this_node();
    if let Err(e) = may_restore(node, uid).await {
        return failed(e);
    }
    let cap = s.app.settings.max_moved_file_bytes;
    let incoming = match spool(&s.app, uid, body, cap, &verified.body_sha256).await {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    // Checked again now that the file is here: a move may have begun meanwhile.
    if let Err(e) = may_restore(node, uid).await {
        let _ = tokio::fs::remove_file(&incoming).await;
        return failed(e);
    }
    match node.dbs.install_copy(uid, incoming).await {
        Ok(records) => {
            if let Some(check) = node.assignments {
                check.forget(uid);
            }
            tracing::info!(uid, records, "user restored from a backup");
            axum::Json(json!({"uid": uid, "records": records, "sha256": verified.body_sha256}))
                .into_response()
        }
        Err(e) => failed(e.into()),
    }
}
