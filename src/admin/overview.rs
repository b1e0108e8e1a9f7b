//! [`overview`]: everything the operator console shows, in one call and a few queries
//! (no query per node or per user): every node with its settings, its share of new
//! users, its latest health and the last hour of minute rows, the guard's state, the
//! rollout lists, sign-ups, live moves and drains in progress, and the audit log's tail.

use serde::Serialize;

use super::AdminError;
use crate::tokenserver::db::AssignmentDb;
use crate::tokenserver::rollout;
use crate::tokenserver::store::{self, AuditEntry, Drain, Health, HealthMinute, Node, PendingMove};

/// How many audit rows the overview carries.
pub const OVERVIEW_AUDIT_ROWS: i64 = 50;

/// A drain whose row has not moved for this long (ms) and has not finished died: it
/// shows as stalled (a running drain marks itself alive every few seconds, even while
/// one large user moves).
pub const DRAIN_STALL_MS: i64 = 60_000;

/// How far back the chart's minute rows go, ms.
pub const CHART_MS: i64 = 3_600_000;

/// Everything the console shows (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When this was read, ms.
    pub now: i64,
    /// The tokenserver's sign-ups switch: `open` or `closed`.
    pub signups: String,
    /// Every node, by id.
    pub nodes: Vec<NodeView>,
    /// Every allow- and deny-list entry.
    pub lists: Vec<ListEntry>,
    /// Live moves in progress.
    pub moves: Vec<PendingMove>,
    /// Live drains: running, stalled, or finished (newest first).
    pub drains: Vec<DrainView>,
    /// The audit log's newest rows, newest first.
    pub audit: Vec<AuditEntry>,
    /// What the tokenservers' canary guard last said of itself (None: no guard ran).
    pub guard: Option<GuardInfo>,
}

/// A node as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its row: URL, capacity, available, current_load, downed, draining, backoff,
    /// percent_bp, and the guard's paused_at, pause_reason, suspect_since,
    /// suspect_reason.
    #[serde(flatten)]
    pub node: Node,
    /// Users assigned to it now.
    pub users: i64,
    /// `down`, `draining`, `paused` (by the guard), `rollout` (in rollout, see
    /// `rollout::in_rollout`) or `serving`.
    pub state: &'static str,
    /// Whether the guard judges it (in rollout, serving).
    pub in_rollout: bool,
    /// The chance that the next new user lands on it, 0–1 (`rollout::shares`).
    pub share: f64,
    /// Its latest health report (None: it never reported).
    pub health: Option<Health>,
    /// Whether that report is stale (older than three of its intervals) or missing.
    pub stale: bool,
    /// Its minute rows of the last hour, oldest first.
    pub minutes: Vec<MinutePoint>,
}

/// One minute of a node's chart.
#[derive(Debug, Clone, Serialize)]
pub struct MinutePoint {
    /// The minute's start, ms.
    pub minute: i64,
    /// Storage API requests.
    pub requests: i64,
    /// Of which answered 5xx.
    pub errors: i64,
    /// Median latency, µs.
    pub p50_us: i64,
    /// 99th percentile latency, µs.
    pub p99_us: i64,
}

/// An allow- or deny-list entry.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// The node's URL.
    pub node: String,
    /// `allow` or `deny`.
    pub kind: String,
    /// The FxA uid or email.
    pub who: String,
}

/// A drain with whether it is still running.
#[derive(Debug, Clone, Serialize)]
pub struct DrainView {
    /// Its row: node, started_at, total, moved, failed, updated_at, finished_at,
    /// last_error, via, who.
    #[serde(flatten)]
    pub drain: Drain,
    /// `running`, `stalled` (no progress for [`DRAIN_STALL_MS`]: it died; run it again
    /// to resume), `done` or `failed` (finished with users left: run it again).
    pub status: &'static str,
}

/// What the canary guard of the tokenservers last recorded of itself.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GuardInfo {
    /// When a guard last judged the nodes, ms.
    pub at: i64,
    /// Which process (`host:pid`).
    pub who: String,
    /// How long a node must look bad before it is paused, seconds.
    pub window_secs: u64,
    /// 5xx rate above which a node may be suspect (with the factor).
    pub error_rate: f64,
    /// How many times the others' 5xx rate a node must exceed.
    pub error_factor: f64,
    /// How many times the others' p99 a node must exceed.
    pub p99_factor: f64,
    /// p99 below this never counts, ms.
    pub p99_floor_ms: u64,
    /// Fewer requests in the minute than this: not judged.
    pub min_requests: u64,
}

/// The settings key the guard records itself under.
pub const GUARD_SETTING: &str = "canary_guard";

/// Everything the console shows, as of `now` (ms).
pub fn overview(db: &AssignmentDb, now: i64) -> Result<Overview, AdminError> {
    db.transaction(|tx| {
        let nodes = store::nodes(tx)?;
        let users = store::users_per_node(tx)?;
        let health = store::health_rows(tx)?;
        let minutes = store::health_minutes(tx, now - CHART_MS)?;
        let lists = store::lists(tx)?;
        let signups = store::setting(tx, "signups")?.unwrap_or_else(|| "open".into());
        let guard = store::setting(tx, GUARD_SETTING)?
            .and_then(|json| serde_json::from_str::<GuardInfo>(&json).ok());
        let moves = store::pending_moves(tx)?;
        let drains = store::drains(tx)?;
        let audit = store::audit_entries(tx, OVERVIEW_AUDIT_ROWS)?;
        let shares = rollout::shares(&nodes);
        let views = nodes
            .into_iter()
            .zip(shares)
            .map(|(n, share)| node_view(n, share, &users, &health, &minutes, &lists, now))
            .collect();
        Ok(Overview {
            now,
            signups,
            nodes: views,
            lists: lists
                .into_iter()
                .map(|(node, kind, who)| ListEntry { node, kind, who })
                .collect(),
            moves,
            drains: drains
                .into_iter()
                .map(|d| DrainView {
                    status: drain_status(&d, now),
                    drain: d,
                })
                .collect(),
            audit,
            guard,
        })
    })
}

fn node_view(
    n: Node,
    share: f64,
    users: &[(i64, i64)],
    health: &[Health],
    minutes: &[HealthMinute],
    lists: &[(String, String, String)],
    now: i64,
) -> NodeView {
    let allow_listed = lists
        .iter()
        .any(|(node, kind, _)| *node == n.node && kind == "allow");
    let in_rollout = rollout::in_rollout(&n, allow_listed);
    let state = if n.downed {
        "down"
    } else if n.draining {
        "draining"
    } else if n.paused_at.is_some() {
        "paused"
    } else if in_rollout {
        "rollout"
    } else {
        "serving"
    };
    let health = health.iter().find(|h| h.node == n.node).cloned();
    let stale = health.as_ref().is_none_or(|h| h.is_stale(now));
    let minutes = minutes
        .iter()
        .filter(|m| m.node == n.node)
        .map(|m| MinutePoint {
            minute: m.minute,
            requests: m.requests,
            errors: m.errors,
            p50_us: m.p50_us,
            p99_us: m.p99_us,
        })
        .collect();
    NodeView {
        users: users.iter().find(|(id, _)| *id == n.id).map_or(0, |u| u.1),
        state,
        in_rollout,
        share,
        health,
        stale,
        minutes,
        node: n,
    }
}

fn drain_status(d: &Drain, now: i64) -> &'static str {
    match d.finished_at {
        Some(_) if d.moved >= d.total && d.failed == 0 => "done",
        Some(_) => "failed",
        None if now - d.updated_at > DRAIN_STALL_MS => "stalled",
        None => "running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_running_stalled_done_or_failed() {
        let d = |moved, failed, updated_at, finished_at| Drain {
            node: "http://n".into(),
            started_at: 0,
            total: 10,
            moved,
            failed,
            updated_at,
            finished_at,
            last_error: None,
            via: "cli".into(),
            who: "me@here".into(),
        };
        let now = 1_000_000;
        assert_eq!(drain_status(&d(3, 0, now - 5_000, None), now), "running");
        assert_eq!(
            drain_status(&d(3, 0, now - DRAIN_STALL_MS - 1, None), now),
            "stalled"
        );
        assert_eq!(drain_status(&d(10, 0, now, Some(now)), now), "done");
        assert_eq!(drain_status(&d(8, 2, now, Some(now)), now), "failed");
    }
}
