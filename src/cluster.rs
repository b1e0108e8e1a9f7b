//! Moving a user between storage nodes while they keep syncing, which Mozilla's servers
//! do not do (they hand the user a new uid and the client uploads everything again).
//!
//! The source node drives a move: it holds the user's writes (clients get 503 +
//! Retry-After; reads go on), copies the file with SQLite's online backup, sends it to
//! the target over a signed internal request, has the target check and install it,
//! checks the target's count and digest, flips the assignment in the shared database,
//! and from then on answers 401 for the user, so the client fetches a new token and
//! carries on at the target with all its data and timestamps. Until the flip the user
//! is wholly on the source; after it, wholly on the target.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::internal::{BODY_HASH_HEADER, RequestHead, SIGNATURE_HEADER, sign};
use crate::storage::StorageError;
use crate::storage::userdbs::UserDbs;
use crate::storage::userdbs::upkeep::{OrphanPolicy, Placement};
use crate::tokenserver::AssignmentCheck;
use crate::tokenserver::db::{AssignmentDb, DbError};
use crate::tokenserver::store;

/// What moves need of this node, handed in by the web layer: its user files, its view
/// of the shared assignment database (none on a node outside a cluster), and the
/// deployment's secret that signs node-to-node requests.
#[derive(Clone, Copy)]
pub struct ThisNode<'a> {
    /// The node's user files.
    pub dbs: &'a UserDbs,
    /// Who lives where, when the node shares an assignment database.
    pub assignments: Option<&'a AssignmentCheck>,
    /// The secret that signs node-to-node requests.
    pub secret: &'a str,
    /// Whether this process keeps user files (a storage node, not a tokenserver only).
    pub stores_users: bool,
}

/// Why a move failed (the user then stays on the source).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// This node has no shared assignment database to flip.
    #[error("moves need a shared assignment database (tokenserver_database_url)")]
    NoAssignments,
    /// The target is not a known node, or is this node.
    #[error("{0}")]
    BadTarget(String),
    /// The user is not assigned to this node.
    #[error("user {0} is not assigned to this node")]
    NotHere(u64),
    /// No move of the user to this node is pending in the assignment database.
    #[error("no move of user {0} to this node is pending")]
    NotPending(u64),
    /// Reading or holding the user's file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The target did not take the copy.
    #[error("target: {0}")]
    Target(String),
    /// The assignment database failed.
    #[error("assignment database: {0}")]
    Db(#[from] DbError),
}

/// What a finished move did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveReport {
    /// The user.
    pub uid: u64,
    /// Source node URL.
    pub from: String,
    /// Target node URL.
    pub to: String,
    /// Records copied.
    pub records: i64,
    /// Bytes of the copied file.
    pub bytes: u64,
    /// How long the user's writes were held, milliseconds.
    pub held_ms: u64,
}

/// What the target answers for a received copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    /// Records in the installed file.
    pub records: i64,
    /// SHA-256 of the bytes received, hex.
    pub sha256: String,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where the node `node` (its URL) takes node-to-node requests, from the assignment
/// database: each node records its internal listener there when it starts.
pub async fn internal_base(db: &AssignmentDb, node: &str) -> Result<String, MoveError> {
    let node = node.trim_end_matches('/').to_string();
    let lookup = node.clone();
    db.run(move |tx| store::internal_url(tx, &lookup))
        .await?
        .ok_or_else(|| {
            MoveError::BadTarget(format!(
                "node {node} has no internal address (is it running, with an \
                 internal_listen?)"
            ))
        })
}

/// Sends a signed internal request to the node `target` (its URL, which the signature
/// names) at its internal listener `base`; returns the response body on 200.
pub async fn signed_post(
    secret: &str,
    base: &str,
    target: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let head = RequestHead {
        method: "POST",
        path,
        target: target.trim_end_matches('/'),
    };
    let digest = hex::encode(Sha256::digest(&body));
    let (signature, hash) = sign(secret, &head, &digest, unix_now());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let node = head.target;
    let r = reqwest::Client::new()
        .post(&url)
        .header(SIGNATURE_HEADER, signature)
        .header(BODY_HASH_HEADER, hash)
        .body(body)
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| format!("node {node} ({url}): {e}"))?;
    let status = r.status();
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("node {node} ({url}): {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "node {node} ({url}): {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(bytes.to_vec())
}

/// The source's half: moves `uid` from this node to the node at `to`.
pub async fn move_out(node: ThisNode<'_>, uid: u64, to: &str) -> Result<MoveReport, MoveError> {
    let check = node.assignments.ok_or(MoveError::NoAssignments)?;
    let from = check.node_url().to_string();
    let to = to.trim_end_matches('/').to_string();
    if to == from {
        return Err(MoveError::BadTarget(format!("{to} is this node")));
    }
    let db = check.db();
    let (target_id, current) = {
        let to = to.clone();
        db.run(move |tx| {
            let node = store::node_by_url(tx, &to)?;
            Ok::<_, DbError>((node.map(|n| n.id), store::uid_node(tx, uid as i64)?))
        })
        .await?
    };
    let target_id = target_id.ok_or_else(|| MoveError::BadTarget(format!("no node {to}")))?;
    if current.as_deref() != Some(from.as_str()) {
        return Err(MoveError::NotHere(uid));
    }
    let target_base = internal_base(db, &to).await?;

    let dbs = node.dbs;
    let hold = dbs.begin_move(uid).await?;
    let held = Instant::now();
    let dir = dbs.data_dir().join("moves");
    crate::private::create_dir(&dir).map_err(StorageError::Io)?;
    let copy = dir.join(format!("{uid}-{:08x}.sqlite", rand::random::<u32>()));
    let result = async {
        dbs.backup(uid, copy.clone()).await?;
        let bytes = tokio::fs::read(&copy).await.map_err(StorageError::Io)?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        let path = format!("/__internal__/receive/{uid}");
        // The target installs the file only for a move recorded as pending to it.
        let pending_to = to.clone();
        db.run(move |tx| store::begin_pending_move(tx, uid as i64, &pending_to, unix_now()))
            .await?;
        let answer = signed_post(node.secret, &target_base, &to, &path, bytes)
            .await
            .map_err(MoveError::Target)?;
        let got: Received =
            serde_json::from_slice(&answer).map_err(|e| MoveError::Target(e.to_string()))?;
        if got.sha256 != digest {
            return Err(MoveError::Target("the copy arrived damaged".into()));
        }
        // The flip: from here on the user lives on the target.
        let moved = db
            .run(move |tx| {
                store::end_pending_move(tx, uid as i64)?;
                store::move_user(tx, uid as i64, target_id)
            })
            .await?;
        if !moved {
            return Err(MoveError::NotHere(uid));
        }
        check.forget(uid);
        dbs.finish_move_away(uid).await?;
        Ok(MoveReport {
            uid,
            from: from.clone(),
            to: to.clone(),
            records: got.records,
            bytes: size,
            held_ms: held.elapsed().as_millis() as u64,
        })
    }
    .await;
    drop(hold);
    let _ = tokio::fs::remove_file(&copy).await;
    if result.is_err() {
        // No file may be installed for this move any more (a no-op after the flip).
        let forgotten = db
            .run(move |tx| store::end_pending_move(tx, uid as i64))
            .await;
        if let Err(e) = forgotten {
            tracing::warn!(uid, error = %e, "could not clear the pending move");
        }
    }
    match &result {
        Ok(r) => {
            tracing::info!(uid, to = %r.to, records = r.records, held_ms = r.held_ms, "user moved")
        }
        Err(e) => tracing::warn!(uid, to = %to, error = %e, "move failed; the user stays here"),
    }
    result
}

/// Whether this node may take a copy of `uid`'s file now: only a node with an
/// assignment database, for a move it records as pending to this node, of a user
/// not served here. Checked before a byte of the copy is read, and again before it is
/// installed.
pub async fn may_receive(node: ThisNode<'_>, uid: u64) -> Result<(), MoveError> {
    let check = node.assignments.ok_or(MoveError::NoAssignments)?;
    let (pending, current) = check
        .db()
        .run(move |tx| {
            Ok::<_, DbError>((
                store::pending_move_target(tx, uid as i64)?,
                store::uid_node(tx, uid as i64)?,
            ))
        })
        .await?;
    if pending.as_deref() != Some(check.node_url()) {
        return Err(MoveError::NotPending(uid));
    }
    // Never overwrite a user this node is serving.
    if current.as_deref() == Some(check.node_url()) {
        return Err(MoveError::BadTarget(format!(
            "user {uid} already lives on this node"
        )));
    }
    Ok(())
}

/// The target's half: installs a copy of `uid`'s file sent by the source, spooled to
/// `incoming` (a file in the data dir) and hashing to `sha256`.
pub async fn receive(
    node: ThisNode<'_>,
    uid: u64,
    incoming: std::path::PathBuf,
    sha256: String,
) -> Result<Received, MoveError> {
    if let Err(e) = may_receive(node, uid).await {
        let _ = tokio::fs::remove_file(&incoming).await;
        return Err(e);
    }
    let records = node.dbs.install_copy(uid, incoming).await?;
    node.dbs.welcome_back(uid);
    if let Some(check) = node.assignments {
        // Whatever this node remembered about the uid is about to be wrong.
        check.forget(uid);
    }
    Ok(Received { records, sha256 })
}

/// Tells the other nodes, through the assignment database, where this node (`node`)
/// takes node-to-node requests.
pub async fn publish_internal_url(
    db: &AssignmentDb,
    node: &str,
    internal_url: &str,
) -> Result<(), DbError> {
    let (node, url) = (node.to_string(), internal_url.to_string());
    db.run(move |tx| store::set_internal_url(tx, &node, &url))
        .await
}

/// Deletes the data of `uid`, a uid the assignment database no longer has current
/// (its account was deleted), on the node `node`: here when that is this node, else
/// through a signed internal request to it (`POST /__internal__/delete/{uid}`).
/// Deleting data that is not there succeeds.
pub async fn delete_retired(
    this: ThisNode<'_>,
    db: &AssignmentDb,
    uid: u64,
    node: &str,
) -> Result<(), MoveError> {
    let node = node.trim_end_matches('/');
    let here = this.stores_users && this.assignments.is_some_and(|c| c.node_url() == node);
    if here {
        return delete_here(this, uid).await;
    }
    let base = internal_base(db, node).await?;
    let path = format!("/__internal__/delete/{uid}");
    signed_post(this.secret, &base, node, &path, Vec::new())
        .await
        .map_err(MoveError::Target)?;
    Ok(())
}

/// Whether `uid` is retired in the assignment database (issued, and not current):
/// only such a uid's data may be deleted on another node's word.
pub async fn is_retired(node: ThisNode<'_>, uid: u64) -> Result<(), MoveError> {
    let check = node.assignments.ok_or(MoveError::NoAssignments)?;
    let found = check
        .db()
        .run(move |tx| store::uid_assignment(tx, uid as i64))
        .await?;
    match found {
        Some((false, _)) => Ok(()),
        _ => Err(MoveError::BadTarget(format!("user {uid} is not retired"))),
    }
}

/// Deletes `uid`'s data on this node: its writes are held, its files removed, and
/// every later request for it answered 401.
pub async fn delete_here(node: ThisNode<'_>, uid: u64) -> Result<(), MoveError> {
    if let Some(check) = node.assignments {
        check.forget(uid);
    }
    let dbs = node.dbs;
    let hold = match dbs.begin_move(uid).await {
        Ok(hold) => hold,
        // Already gone from this node.
        Err(StorageError::MovedAway) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let done = dbs.finish_move_away(uid).await;
    drop(hold);
    done?;
    tracing::info!(uid, "deleted the data of a retired user");
    Ok(())
}

/// Upkeep's policy for files of users who left this node: a uid replaced by a newer
/// one (`replaced_at`, the time it left) or placed on another node is deleted here
/// `grace_secs` after it left; a uid with a move in flight, or one the database never
/// issued, is left alone.
pub fn orphan_policy(check: &AssignmentCheck, grace_secs: u64) -> OrphanPolicy {
    let db = check.db().clone();
    let here = check.node_url().to_string();
    let lookup = move |uids: &[u64]| {
        let ids: Vec<i64> = uids.iter().map(|&u| u as i64).collect();
        let rows = db
            .transaction(|tx| store::uid_placements(tx, &ids))
            .map_err(|e: DbError| e.to_string())?;
        Ok(rows
            .iter()
            .map(|p| (p.uid as u64, placement(p, &here)))
            .collect())
    };
    OrphanPolicy {
        lookup: Box::new(lookup),
        grace_ms: i64::try_from(grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    }
}

/// Where a uid stands for the node at `here` (see [`orphan_policy`]).
pub fn placement(p: &store::UidPlacement, here: &str) -> Placement {
    if p.moving {
        Placement::Moving
    } else if p.replaced_at.is_some() {
        Placement::Left {
            since_ms: p.replaced_at,
        }
    } else if p.node.as_deref() != Some(here) {
        Placement::Left { since_ms: None }
    } else {
        Placement::Here
    }
}
