//! `user move` and `node drain --live`: live moves of users between storage nodes,
//! ordered over signed internal requests to each user's current node (see `cluster`).

use super::AdminError;
use crate::cluster::{MoveReport, internal_base, signed_post};
use crate::tokenserver::db::AssignmentDb;
use crate::tokenserver::store::{self, NodeChange};

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// Asks the node holding `uid` to move it to `to`; waits for the move to finish.
pub async fn move_user(
    db: &AssignmentDb,
    secret: &str,
    uid: u64,
    to: &str,
) -> Result<MoveReport, AdminError> {
    let from = db.run(move |tx| store::uid_node(tx, uid as i64)).await?;
    let from = from.ok_or_else(|| AdminError::Invalid(format!("user {uid} is not assigned")))?;
    let body = serde_json::to_vec(&serde_json::json!({ "to": to })).map_err(invalid)?;
    let base = internal_base(db, &from).await.map_err(invalid)?;
    let path = format!("/__internal__/move/{uid}");
    let answer = signed_post(secret, &base, &from, &path, body)
        .await
        .map_err(AdminError::Invalid)?;
    serde_json::from_slice(&answer).map_err(invalid)
}

/// Moves every user off `node`, live, with a progress bar: the node takes no new users
/// from the start, each user goes to `to` or else to the serving node with the most
/// free capacity, and the node is marked draining once empty. Stopping and running it
/// again carries on with the users still there.
pub async fn drain(
    db: &AssignmentDb,
    secret: &str,
    node: &str,
    to: Option<&str>,
) -> Result<String, AdminError> {
    let node = node.trim_end_matches('/').to_string();
    let (uids, node_id) = {
        let node = node.clone();
        db.run(move |tx| {
            let n = store::node_by_url(tx, &node)?
                .ok_or_else(|| AdminError::NoSuchNode(node.clone()))?;
            let stop_new = NodeChange {
                available: Some(0),
                ..Default::default()
            };
            store::set_node(tx, &node, &stop_new)?;
            Ok::<_, AdminError>((store::node_uids(tx, n.id)?, n.id))
        })
        .await?
    };
    let bar = super::users::progress(uids.len() as u64, "moving");
    let (mut moved, mut failed, mut records) = (0, Vec::new(), 0);
    for uid in &uids {
        let target = match to {
            Some(t) => t.to_string(),
            None => least_loaded(db, node_id).await?,
        };
        match move_user(db, secret, *uid as u64, &target).await {
            Ok(r) => {
                moved += 1;
                records += r.records;
            }
            Err(e) => {
                bar.suspend(|| eprintln!("user {uid}: {e}"));
                failed.push(*uid);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed.is_empty() {
        let node = node.clone();
        db.run(move |tx| {
            let change = NodeChange {
                draining: Some(true),
                ..Default::default()
            };
            store::set_node(tx, &node, &change)
        })
        .await?;
    }
    let summary = format!(
        "moved {moved} of {} users ({records} records) off {node}{}",
        uids.len(),
        if failed.is_empty() {
            "; the node is empty and marked draining".to_string()
        } else {
            format!("; {} failed (run it again to retry)", failed.len())
        }
    );
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(AdminError::Invalid(summary))
    }
}

/// The serving node, other than `except`, with the most free capacity.
async fn least_loaded(db: &AssignmentDb, except: i64) -> Result<String, AdminError> {
    db.run(move |tx| {
        let best = store::nodes(tx)?
            .into_iter()
            .filter(|n| n.id != except && n.serving())
            .max_by_key(|n| n.capacity - n.current_load);
        best.map(|n| n.node)
            .ok_or_else(|| AdminError::Invalid("no other serving node to move to".into()))
    })
    .await
}
