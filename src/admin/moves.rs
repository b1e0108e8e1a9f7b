//! `user move` and `node drain --live`: live moves of users between storage nodes,
//! ordered over signed internal requests to each user's current node (see `cluster`).
//! A drain records its progress in the `drains` table as it goes and reports it to a
//! callback (the CLI's progress bar, the console's background task).

use std::time::Duration;

use super::{Actor, AdminError, audit, now_ms};
use crate::cluster::{MoveReport, internal_base, signed_post};
use crate::tokenserver::db::AssignmentDb;
use crate::tokenserver::store::{self, Drain, NodeChange};

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

/// One step of a live drain, for its progress callback: the drain's row as it is now
/// and, when the user just tried failed, which one and why.
#[derive(Debug, Clone)]
pub struct DrainStep {
    /// The drain's row (also in the `drains` table).
    pub drain: Drain,
    /// The user whose move just failed, and the error.
    pub failure: Option<(i64, String)>,
}

/// What a drain calls after every user (and once at the start): the CLI's progress
/// bar, the console's background task.
pub type DrainProgress<'a> = &'a (dyn Fn(&DrainStep) + Send + Sync);

/// How often a running drain marks itself alive while one move is in flight.
const DRAIN_ALIVE_EVERY: Duration = Duration::from_secs(5);

/// Moves every user off `node`, live: the node takes no new users from the start, each
/// user goes to `to` or else to the serving node with the most free capacity, and the
/// node is marked draining once empty. Progress goes to the `drains` table as it goes
/// (anyone can watch it) and to `progress`; the start and the end are audited for
/// `actor`. Stopping and running it again carries on with the users still there (the
/// row keeps its start and counts).
pub async fn drain(
    db: &AssignmentDb,
    actor: &Actor,
    secret: &str,
    node: &str,
    to: Option<&str>,
    progress: DrainProgress<'_>,
) -> Result<String, AdminError> {
    let node = node.trim_end_matches('/').to_string();
    let (uids, node_id, mut row) = {
        let (node, actor, to) = (node.clone(), actor.clone(), to.map(str::to_string));
        db.run(move |tx| {
            let n = store::node_by_url(tx, &node)?
                .ok_or_else(|| AdminError::NoSuchNode(node.clone()))?;
            let stop_new = NodeChange {
                available: Some(0),
                ..Default::default()
            };
            store::set_node(tx, &node, &stop_new)?;
            let uids = store::node_uids(tx, n.id)?;
            let now = now_ms();
            let left = uids.len() as i64;
            let row = match store::drain(tx, &node)? {
                // A drain that died or ended with failures resumes: its start and its
                // moved count are kept.
                Some(d) if d.finished_at.is_none() || d.failed > 0 => Drain {
                    total: d.moved + left,
                    failed: 0,
                    updated_at: now,
                    finished_at: None,
                    last_error: None,
                    via: actor.via.as_str().into(),
                    who: actor.who.clone(),
                    ..d
                },
                _ => Drain {
                    node: node.clone(),
                    started_at: now,
                    total: left,
                    moved: 0,
                    failed: 0,
                    updated_at: now,
                    finished_at: None,
                    last_error: None,
                    via: actor.via.as_str().into(),
                    who: actor.who.clone(),
                },
            };
            store::put_drain(tx, &row)?;
            let detail = format!(
                "{left} users to move{}{}",
                to.map(|t| format!(" to {t}")).unwrap_or_default(),
                if row.moved > 0 {
                    format!(" (resumed; {} moved before)", row.moved)
                } else {
                    String::new()
                }
            );
            audit(tx, &actor, "drain.start", &node, &detail)?;
            Ok::<_, AdminError>((uids, n.id, row))
        })
        .await?
    };
    progress(&DrainStep {
        drain: row.clone(),
        failure: None,
    });
    let (mut moved, mut failed, mut records) = (0, Vec::new(), 0);
    for uid in &uids {
        let one = async {
            let target = match to {
                Some(t) => t.to_string(),
                None => least_loaded(db, node_id).await?,
            };
            move_user(db, secret, *uid as u64, &target).await
        };
        let result = alive_while(db, &node, one).await;
        let failure = match result {
            Ok(r) => {
                moved += 1;
                records += r.records;
                row.moved += 1;
                None
            }
            Err(e) => {
                tracing::warn!(node = %node, uid = *uid, error = %e, "drain: a move failed");
                failed.push(*uid);
                row.failed += 1;
                row.last_error = Some(format!("user {uid}: {e}"));
                Some((*uid, e.to_string()))
            }
        };
        row.updated_at = now_ms();
        let r = row.clone();
        db.run(move |tx| store::put_drain(tx, &r)).await?;
        progress(&DrainStep {
            drain: row.clone(),
            failure,
        });
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
    row.finished_at = Some(now_ms());
    row.updated_at = row.finished_at.unwrap_or_default();
    {
        let (node, actor, summary, r, ok) = (
            node.clone(),
            actor.clone(),
            summary.clone(),
            row.clone(),
            failed.is_empty(),
        );
        db.run(move |tx| {
            if ok {
                let change = NodeChange {
                    draining: Some(true),
                    ..Default::default()
                };
                store::set_node(tx, &node, &change)?;
            }
            store::put_drain(tx, &r)?;
            audit(tx, &actor, "drain.end", &node, &summary)
        })
        .await?;
    }
    progress(&DrainStep {
        drain: row,
        failure: None,
    });
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(AdminError::Invalid(summary))
    }
}

/// Runs `work`, marking the drain of `node` alive every few seconds meanwhile (a large
/// user's move may take minutes; the row must not look stalled).
async fn alive_while<T>(
    db: &AssignmentDb,
    node: &str,
    work: impl std::future::Future<Output = Result<T, AdminError>>,
) -> Result<T, AdminError> {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(DRAIN_ALIVE_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = ticker.tick() => {
                let node = node.to_string();
                let now = now_ms();
                if let Err(e) = db.run(move |tx| store::touch_drain(tx, &node, now)).await {
                    tracing::warn!(error = %e, "drain: could not mark the drain alive");
                }
            }
        }
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
