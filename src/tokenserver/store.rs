//! The SQL of the assignment database, written once for both backends.

use crate::db::{DbError, Row, Tx, Value};

/// The service name rows are kept under.
pub const SERVICE: &str = "sync-1.5";

/// A storage node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Row id.
    pub id: i64,
    /// Base URL.
    pub node: String,
    /// Most users it should hold.
    pub capacity: i64,
    /// New users it may still take.
    pub available: i64,
    /// Users assigned now.
    pub current_load: i64,
    /// Dead: its users move on their next sign-in.
    pub downed: bool,
    /// Taking no new users; its users move on their next sign-in.
    pub draining: bool,
    /// Seconds clients should back off.
    pub backoff: i64,
    /// Share of new users it is rolled out to, in basis points (10000 = everyone).
    pub percent_bp: i64,
    /// When the canary guard paused the node (ms): it takes no new users until resumed.
    pub paused_at: Option<i64>,
    /// Why the guard paused it.
    pub pause_reason: Option<String>,
    /// Since when (ms) the guard has found the node's last minute worse than the others'.
    pub suspect_since: Option<i64>,
    /// How it looked worse, as of the last judgement.
    pub suspect_reason: Option<String>,
}

impl Node {
    /// Whether users may stay on (or be sent to) this node at all.
    pub fn serving(&self) -> bool {
        !self.downed && !self.draining
    }

    /// Whether new users may be sent to the node: serving and not paused by the guard.
    pub fn takes_new_users(&self) -> bool {
        self.serving() && self.paused_at.is_none()
    }
}

const NODE_COLS: &str = "id, node, capacity, available, current_load, downed, draining, backoff, \
     percent_bp, paused_at, pause_reason, suspect_since, suspect_reason";

fn node_from(r: &Row) -> Result<Node, DbError> {
    Ok(Node {
        id: r.int(0)?,
        node: r.text(1)?,
        capacity: r.int(2)?,
        available: r.int(3)?,
        current_load: r.int(4)?,
        downed: r.int(5)? != 0,
        draining: r.int(6)? != 0,
        backoff: r.int(7)?,
        percent_bp: r.int(8)?,
        paused_at: r.opt_int(9)?,
        pause_reason: r.opt_text(10)?,
        suspect_since: r.opt_int(11)?,
        suspect_reason: r.opt_text(12)?,
    })
}

/// Every node, by id.
pub fn nodes(tx: &mut dyn Tx) -> Result<Vec<Node>, DbError> {
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE service = ?1 ORDER BY id");
    tx.query(&sql, &[SERVICE.into()])?
        .iter()
        .map(node_from)
        .collect()
}

/// One node by URL.
pub fn node_by_url(tx: &mut dyn Tx, url: &str) -> Result<Option<Node>, DbError> {
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE service = ?1 AND node = ?2");
    tx.query(&sql, &[SERVICE.into(), url.into()])?
        .first()
        .map(node_from)
        .transpose()
}

/// Adds a node; `available` defaults to its capacity.
pub fn add_node(tx: &mut dyn Tx, url: &str, capacity: i64) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO nodes (service, node, capacity, available) VALUES (?1, ?2, ?3, ?3)",
        &[SERVICE.into(), url.into(), capacity.into()],
    )?;
    Ok(())
}

/// Changes of a node's settings (`None`: leave as is).
#[derive(Debug, Clone, Default)]
pub struct NodeChange {
    /// New capacity.
    pub capacity: Option<i64>,
    /// New number of slots for new users.
    pub available: Option<i64>,
    /// Mark dead or alive.
    pub downed: Option<bool>,
    /// Start or stop draining.
    pub draining: Option<bool>,
    /// Client back-off, seconds.
    pub backoff: Option<i64>,
    /// Rollout share, basis points.
    pub percent_bp: Option<i64>,
}

/// Applies a change to a node; returns whether the node exists.
pub fn set_node(tx: &mut dyn Tx, url: &str, c: &NodeChange) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE nodes SET
            capacity = coalesce(?3, capacity),
            available = coalesce(?4, available),
            downed = coalesce(?5, downed),
            draining = coalesce(?6, draining),
            backoff = coalesce(?7, backoff),
            percent_bp = coalesce(?8, percent_bp)
         WHERE service = ?1 AND node = ?2",
        &[
            SERVICE.into(),
            url.into(),
            c.capacity.into(),
            c.available.into(),
            c.downed.map(i64::from).into(),
            c.draining.map(i64::from).into(),
            c.backoff.into(),
            c.percent_bp.into(),
        ],
    )?;
    Ok(n > 0)
}

/// Removes a node; its users are moved on their next sign-in. Returns whether it existed.
pub fn remove_node(tx: &mut dyn Tx, url: &str) -> Result<bool, DbError> {
    let Some(node) = node_by_url(tx, url)? else {
        return Ok(false);
    };
    tx.execute(
        "DELETE FROM rollout_lists WHERE node_id = ?1",
        &[node.id.into()],
    )?;
    tx.execute("DELETE FROM nodes WHERE id = ?1", &[node.id.into()])?;
    Ok(true)
}

/// Takes one slot on a node for a new user, if it still has room; returns whether it did.
pub fn take_slot(tx: &mut dyn Tx, node_id: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE nodes SET current_load = current_load + 1, available = available - 1
         WHERE id = ?1 AND current_load < capacity AND available > 0",
        &[node_id.into()],
    )?;
    Ok(n == 1)
}

/// Places an allow-listed user on a node even past its capacity.
pub fn take_slot_forced(tx: &mut dyn Tx, node_id: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE nodes SET current_load = current_load + 1 WHERE id = ?1",
        &[node_id.into()],
    )?;
    Ok(())
}

/// Gives back a slot when a user leaves a node.
pub fn release_slot(tx: &mut dyn Tx, node_id: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE nodes SET current_load = current_load - 1 WHERE id = ?1 AND current_load > 0",
        &[node_id.into()],
    )?;
    Ok(())
}

/// Allow- or deny-list entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Always sent to the node.
    Allow,
    /// Never sent to the node.
    Deny,
}

impl ListKind {
    fn as_str(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        }
    }
}

/// Adds (or with `add = false` removes) a user to a node's allow- or deny-list.
pub fn edit_list(
    tx: &mut dyn Tx,
    node_id: i64,
    kind: ListKind,
    who: &str,
    add: bool,
) -> Result<(), DbError> {
    let args = [node_id.into(), kind.as_str().into(), who.into()];
    if add {
        tx.execute(
            "INSERT INTO rollout_lists (node_id, kind, who) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            &args,
        )?;
    } else {
        tx.execute(
            "DELETE FROM rollout_lists WHERE node_id = ?1 AND kind = ?2 AND who = ?3",
            &args,
        )?;
    }
    Ok(())
}

/// Every list entry: (node URL, kind, who).
pub fn lists(tx: &mut dyn Tx) -> Result<Vec<(String, String, String)>, DbError> {
    tx.query(
        "SELECT n.node, l.kind, l.who FROM rollout_lists l JOIN nodes n ON n.id = l.node_id
         ORDER BY n.node, l.kind, l.who",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
    .collect()
}

/// The lists that name this user (by FxA uid or email): (node id, kind).
pub fn lists_naming(
    tx: &mut dyn Tx,
    fxa_uid: &str,
    email: &str,
) -> Result<Vec<(i64, ListKind)>, DbError> {
    tx.query(
        "SELECT node_id, kind FROM rollout_lists WHERE who = ?1 OR who = ?2",
        &[fxa_uid.into(), email.into()],
    )?
    .iter()
    .map(|r| {
        let kind = match r.text(1)?.as_str() {
            "allow" => ListKind::Allow,
            _ => ListKind::Deny,
        };
        Ok((r.int(0)?, kind))
    })
    .collect()
}

/// A deployment-wide setting.
pub fn setting(tx: &mut dyn Tx, key: &str) -> Result<Option<String>, DbError> {
    tx.query("SELECT value FROM settings WHERE key = ?1", &[key.into()])?
        .first()
        .map(|r| r.text(0))
        .transpose()
}

/// Sets a deployment-wide setting.
pub fn set_setting(tx: &mut dyn Tx, key: &str, value: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[key.into(), value.into()],
    )?;
    Ok(())
}

/// A user's assignment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The storage uid.
    pub uid: i64,
    /// Last seen FxA generation.
    pub generation: i64,
    /// Last seen keys_changed_at (ms).
    pub keys_changed_at: Option<i64>,
    /// Last seen client state (hex).
    pub client_state: String,
    /// The node's row id.
    pub node_id: i64,
    /// Creation time (ms).
    pub created_at: i64,
}

/// The current row of an FxA user.
pub fn current_user(tx: &mut dyn Tx, fxa_uid: &str) -> Result<Option<User>, DbError> {
    tx.query(
        "SELECT uid, generation, keys_changed_at, client_state, node_id, created_at FROM users
         WHERE service = ?1 AND fxa_uid = ?2 AND replaced_at IS NULL",
        &[SERVICE.into(), fxa_uid.into()],
    )?
    .first()
    .map(|r| {
        Ok(User {
            uid: r.int(0)?,
            generation: r.int(1)?,
            keys_changed_at: r.opt_int(2)?,
            client_state: r.text(3)?,
            node_id: r.int(4)?,
            created_at: r.int(5)?,
        })
    })
    .transpose()
}

/// Whether the user used `client_state` in an earlier (replaced) row.
pub fn client_state_was_used(
    tx: &mut dyn Tx,
    fxa_uid: &str,
    client_state: &str,
) -> Result<bool, DbError> {
    Ok(!tx
        .query(
            "SELECT 1 FROM users WHERE service = ?1 AND fxa_uid = ?2 AND client_state = ?3
             AND replaced_at IS NOT NULL LIMIT 1",
            &[SERVICE.into(), fxa_uid.into(), client_state.into()],
        )?
        .is_empty())
}

/// A new assignment row.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// FxA uid.
    pub fxa_uid: &'a str,
    /// Email (`<fxa_uid>@<domain>`).
    pub email: &'a str,
    /// FxA generation.
    pub generation: i64,
    /// keys_changed_at (ms).
    pub keys_changed_at: Option<i64>,
    /// Client state (hex).
    pub client_state: &'a str,
    /// Node row id.
    pub node_id: i64,
    /// Now (ms).
    pub now: i64,
}

/// Inserts a current row; returns the new uid.
pub fn insert_user(tx: &mut dyn Tx, u: &NewUser<'_>) -> Result<i64, DbError> {
    tx.query(
        "INSERT INTO users (service, fxa_uid, email, generation, keys_changed_at, client_state,
                            node_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING uid",
        &[
            SERVICE.into(),
            u.fxa_uid.into(),
            u.email.into(),
            u.generation.into(),
            u.keys_changed_at.into(),
            u.client_state.into(),
            u.node_id.into(),
            u.now.into(),
        ],
    )?
    .first()
    .ok_or_else(|| DbError::Type("uid".into()))?
    .int(0)
}

/// Marks a row replaced (its uid is retired).
pub fn replace_user(tx: &mut dyn Tx, uid: i64, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE users SET replaced_at = ?2 WHERE uid = ?1 AND replaced_at IS NULL",
        &[uid.into(), now.into()],
    )?;
    Ok(())
}

/// Records a newer generation / keys_changed_at on the current row.
pub fn update_user(
    tx: &mut dyn Tx,
    uid: i64,
    generation: i64,
    keys_changed_at: Option<i64>,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE users SET generation = ?2, keys_changed_at = ?3 WHERE uid = ?1",
        &[uid.into(), generation.into(), keys_changed_at.into()],
    )?;
    Ok(())
}

/// For a storage node: whether `uid` is a current assignment, and to which node URL.
/// `None` when this database never issued the uid.
pub fn uid_assignment(
    tx: &mut dyn Tx,
    uid: i64,
) -> Result<Option<(bool, Option<String>)>, DbError> {
    tx.query(
        "SELECT u.replaced_at, n.node, n.downed, n.draining FROM users u
         LEFT JOIN nodes n ON n.id = u.node_id WHERE u.uid = ?1",
        &[uid.into()],
    )?
    .first()
    .map(|r| {
        let current = r.opt_int(0)?.is_none();
        let serving = r.opt_int(2)? == Some(0) && r.opt_int(3)? == Some(0);
        let node = r.opt_text(1)?.filter(|_| serving);
        Ok((current, node))
    })
    .transpose()
}

/// Whether the FxA user of `uid` is disabled (see [`set_user_disabled`]).
pub fn uid_disabled(tx: &mut dyn Tx, uid: i64) -> Result<bool, DbError> {
    Ok(!tx
        .query(
            "SELECT 1 FROM users u JOIN disabled_users d ON d.fxa_uid = u.fxa_uid
             WHERE u.uid = ?1",
            &[uid.into()],
        )?
        .is_empty())
}

/// Marks an FxA user disabled (storage nodes refuse the tokens of every uid of theirs)
/// or enabled again. Returns the user's uids, current or not, whose cached answers
/// are now stale.
pub fn set_user_disabled(
    tx: &mut dyn Tx,
    fxa_uid: &str,
    disabled: bool,
    now: i64,
) -> Result<Vec<i64>, DbError> {
    if disabled {
        tx.execute(
            "INSERT INTO disabled_users (fxa_uid, disabled_at) VALUES (?1, ?2)
             ON CONFLICT (fxa_uid) DO NOTHING",
            &[fxa_uid.into(), now.into()],
        )?;
    } else {
        tx.execute(
            "DELETE FROM disabled_users WHERE fxa_uid = ?1",
            &[fxa_uid.into()],
        )?;
    }
    tx.query(
        "SELECT uid FROM users WHERE service = ?1 AND fxa_uid = ?2",
        &[SERVICE.into(), fxa_uid.into()],
    )?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// Moves a current uid to another node, keeping the uid (its data moved with it);
/// node loads follow. Returns false when the uid is not current.
pub fn move_user(tx: &mut dyn Tx, uid: i64, to_node: i64) -> Result<bool, DbError> {
    let from = tx.query(
        "SELECT node_id FROM users WHERE uid = ?1 AND replaced_at IS NULL",
        &[uid.into()],
    )?;
    let Some(from) = from.first().map(|r| r.int(0)).transpose()? else {
        return Ok(false);
    };
    if from == to_node {
        return Ok(true);
    }
    tx.execute(
        "UPDATE users SET node_id = ?2 WHERE uid = ?1 AND replaced_at IS NULL",
        &[uid.into(), to_node.into()],
    )?;
    release_slot(tx, from)?;
    take_slot_forced(tx, to_node)?;
    Ok(true)
}

/// The current uids assigned to a node, ascending.
pub fn node_uids(tx: &mut dyn Tx, node_id: i64) -> Result<Vec<i64>, DbError> {
    tx.query(
        "SELECT uid FROM users WHERE node_id = ?1 AND replaced_at IS NULL ORDER BY uid",
        &[node_id.into()],
    )?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

/// The node URL a current uid is assigned to.
pub fn uid_node(tx: &mut dyn Tx, uid: i64) -> Result<Option<String>, DbError> {
    tx.query(
        "SELECT n.node FROM users u JOIN nodes n ON n.id = u.node_id
         WHERE u.uid = ?1 AND u.replaced_at IS NULL",
        &[uid.into()],
    )?
    .first()
    .map(|r| r.text(0))
    .transpose()
}

/// Number of current users per node id.
pub fn users_per_node(tx: &mut dyn Tx) -> Result<Vec<(i64, i64)>, DbError> {
    tx.query(
        "SELECT node_id, count(*) FROM users WHERE replaced_at IS NULL GROUP BY node_id",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.int(0)?, r.int(1)?)))
    .collect()
}

/// Records where `node` takes node-to-node requests (its internal listener's URL).
pub fn set_internal_url(tx: &mut dyn Tx, node: &str, url: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO node_internal (node, internal_url) VALUES (?1, ?2)
         ON CONFLICT (node) DO UPDATE SET internal_url = excluded.internal_url",
        &[node.into(), url.into()],
    )?;
    Ok(())
}

/// Where `node` takes node-to-node requests, if it has said.
pub fn internal_url(tx: &mut dyn Tx, node: &str) -> Result<Option<String>, DbError> {
    tx.query(
        "SELECT internal_url FROM node_internal WHERE node = ?1",
        &[node.into()],
    )?
    .first()
    .map(|r| r.text(0))
    .transpose()
}

/// Records that `uid` is being moved to `node` (replacing an older record).
pub fn begin_pending_move(tx: &mut dyn Tx, uid: i64, node: &str, now: i64) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO pending_moves (uid, node, started_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (uid) DO UPDATE SET node = excluded.node, started_at = excluded.started_at",
        &[uid.into(), node.into(), now.into()],
    )?;
    Ok(())
}

/// The node `uid` is being moved to, if a move is pending.
pub fn pending_move_target(tx: &mut dyn Tx, uid: i64) -> Result<Option<String>, DbError> {
    tx.query(
        "SELECT node FROM pending_moves WHERE uid = ?1",
        &[uid.into()],
    )?
    .first()
    .map(|r| r.text(0))
    .transpose()
}

/// Forgets the pending move of `uid` (it finished or failed).
pub fn end_pending_move(tx: &mut dyn Tx, uid: i64) -> Result<(), DbError> {
    tx.execute("DELETE FROM pending_moves WHERE uid = ?1", &[uid.into()])?;
    Ok(())
}

/// Raises the FxA generation of the user's current row to `generation` (a password
/// change at that time, ms): later token requests of an older generation are refused.
/// Returns whether a row changed.
pub fn raise_generation(tx: &mut dyn Tx, fxa_uid: &str, generation: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE users SET generation = ?3
         WHERE service = ?1 AND fxa_uid = ?2 AND replaced_at IS NULL AND generation < ?3",
        &[SERVICE.into(), fxa_uid.into(), generation.into()],
    )?;
    Ok(n > 0)
}

/// A row of an FxA user: its uid, whether it is current, its node (row id and URL,
/// if the node still exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The storage uid.
    pub uid: i64,
    /// Not replaced.
    pub current: bool,
    /// The node's row id.
    pub node_id: i64,
    /// The node's URL, if the node still exists.
    pub node: Option<String>,
}

/// Every row of an FxA user created at or before `cutoff` (ms), by uid.
pub fn user_rows_before(
    tx: &mut dyn Tx,
    fxa_uid: &str,
    cutoff: i64,
) -> Result<Vec<UserRow>, DbError> {
    tx.query(
        "SELECT u.uid, u.replaced_at, u.node_id, n.node FROM users u
         LEFT JOIN nodes n ON n.id = u.node_id
         WHERE u.service = ?1 AND u.fxa_uid = ?2 AND u.created_at <= ?3 ORDER BY u.uid",
        &[SERVICE.into(), fxa_uid.into(), cutoff.into()],
    )?
    .iter()
    .map(|r| {
        Ok(UserRow {
            uid: r.int(0)?,
            current: r.opt_int(1)?.is_none(),
            node_id: r.int(2)?,
            node: r.opt_text(3)?,
        })
    })
    .collect()
}

/// Forgets the client states of an FxA user's replaced rows (a deleted account's key
/// history) and the sign-in that registered the current one: a new account signing in
/// under the uid starts afresh.
pub fn forget_client_states(tx: &mut dyn Tx, fxa_uid: &str) -> Result<(), DbError> {
    tx.execute(
        "UPDATE users SET client_state = '' WHERE service = ?1 AND fxa_uid = ?2
         AND replaced_at IS NOT NULL",
        &[SERVICE.into(), fxa_uid.into()],
    )?;
    tx.execute(
        "DELETE FROM local_client_states WHERE fxa_uid = ?1",
        &[fxa_uid.into()],
    )?;
    Ok(())
}

/// For a user of this server's accounts service: the client state recorded for the
/// current row and the sign-in time (ms) that registered it (see `tokenserver::assign`).
pub fn local_client_state(
    tx: &mut dyn Tx,
    fxa_uid: &str,
) -> Result<Option<(String, i64)>, DbError> {
    tx.query(
        "SELECT client_state, auth_at FROM local_client_states WHERE fxa_uid = ?1",
        &[fxa_uid.into()],
    )?
    .first()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .transpose()
}

/// Records (or replaces) the client state of a user of this server's accounts service
/// and the sign-in time (ms) that registered it.
pub fn set_local_client_state(
    tx: &mut dyn Tx,
    fxa_uid: &str,
    client_state: &str,
    auth_at: i64,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO local_client_states (fxa_uid, client_state, auth_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (fxa_uid) DO UPDATE SET client_state = excluded.client_state,
         auth_at = excluded.auth_at",
        &[fxa_uid.into(), client_state.into(), auth_at.into()],
    )?;
    Ok(())
}

/// Where a uid stands, for a storage node's clean-up of files of users who left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidPlacement {
    /// The uid.
    pub uid: i64,
    /// The URL of the node its row names (`None` when that node was removed).
    pub node: Option<String>,
    /// When the uid was replaced by a newer one (key change, sign-in moved off a
    /// drained or downed node), Unix ms; `None` while current.
    pub replaced_at: Option<i64>,
    /// Whether a live move of the uid is in flight.
    pub moving: bool,
}

/// The placement of each of `uids` that this database issued, in one query (uids it
/// never issued are left out).
pub fn uid_placements(tx: &mut dyn Tx, uids: &[i64]) -> Result<Vec<UidPlacement>, DbError> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=uids.len()).map(|i| format!("?{i}")).collect();
    let args: Vec<Value> = uids.iter().map(|&u| u.into()).collect();
    tx.query(
        &format!(
            "SELECT u.uid, n.node, u.replaced_at,
                    (SELECT count(*) FROM pending_moves p WHERE p.uid = u.uid)
             FROM users u LEFT JOIN nodes n ON n.id = u.node_id
             WHERE u.uid IN ({})",
            marks.join(", ")
        ),
        &args,
    )?
    .iter()
    .map(|r| {
        Ok(UidPlacement {
            uid: r.int(0)?,
            node: r.opt_text(1)?,
            replaced_at: r.opt_int(2)?,
            moving: r.int(3)? > 0,
        })
    })
    .collect()
}

/// A live move in progress: the uid, the node it leaves (if still known) and the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingMove {
    /// The user.
    pub uid: i64,
    /// The node the user is on until the move flips (None: not assigned, or its node gone).
    pub from: Option<String>,
    /// The target node's URL.
    pub to: String,
    /// When the move started, ms.
    pub started_at: i64,
}

/// Every live move in progress, oldest first.
pub fn pending_moves(tx: &mut dyn Tx) -> Result<Vec<PendingMove>, DbError> {
    tx.query(
        "SELECT p.uid, n.node, p.node, p.started_at FROM pending_moves p
         LEFT JOIN users u ON u.uid = p.uid AND u.replaced_at IS NULL
         LEFT JOIN nodes n ON n.id = u.node_id
         ORDER BY p.started_at, p.uid",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(PendingMove {
            uid: r.int(0)?,
            from: r.opt_text(1)?,
            to: r.text(2)?,
            started_at: r.int(3)?,
        })
    })
    .collect()
}

/// A storage node's latest health report (see `node_health` in the schema).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The node's URL.
    pub node: String,
    /// When it reported, ms.
    pub reported_at: i64,
    /// Its report interval, ms (three missed make it stale).
    pub interval_ms: i64,
    /// When its process started, ms.
    pub started_at: i64,
    /// Its version and commit.
    pub version: String,
    /// Storage API requests of the last minute (401s left out).
    pub requests: i64,
    /// Of which answered 5xx.
    pub errors: i64,
    /// Median latency of the last minute, µs.
    pub p50_us: i64,
    /// 99th percentile latency of the last minute, µs.
    pub p99_us: i64,
    /// User files open now.
    pub open_users: i64,
    /// User files in its data dir (counted now and then).
    pub users: i64,
    /// Bytes free for its data dir.
    pub disk_free: i64,
}

impl Health {
    /// Whether the node stopped reporting: its row is older than three of its intervals.
    pub fn is_stale(&self, now: i64) -> bool {
        now - self.reported_at > 3 * self.interval_ms.max(1)
    }
}

/// One minute of a node's figures, for the chart of the last hour.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthMinute {
    /// The node's URL.
    pub node: String,
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

const HEALTH_COLS: &str = "node, reported_at, interval_ms, started_at, version, requests, errors, \
     p50_us, p99_us, open_users, users, disk_free";

/// Writes (replaces) a node's health row, and its current minute's row.
pub fn put_health(tx: &mut dyn Tx, h: &Health) -> Result<(), DbError> {
    tx.execute(
        &format!(
            "INSERT INTO node_health ({HEALTH_COLS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (node) DO UPDATE SET reported_at = excluded.reported_at,
             interval_ms = excluded.interval_ms, started_at = excluded.started_at,
             version = excluded.version, requests = excluded.requests,
             errors = excluded.errors, p50_us = excluded.p50_us, p99_us = excluded.p99_us,
             open_users = excluded.open_users, users = excluded.users,
             disk_free = excluded.disk_free"
        ),
        &[
            h.node.as_str().into(),
            h.reported_at.into(),
            h.interval_ms.into(),
            h.started_at.into(),
            h.version.as_str().into(),
            h.requests.into(),
            h.errors.into(),
            h.p50_us.into(),
            h.p99_us.into(),
            h.open_users.into(),
            h.users.into(),
            h.disk_free.into(),
        ],
    )?;
    let minute = h.reported_at - h.reported_at.rem_euclid(60_000);
    tx.execute(
        "INSERT INTO node_health_minutes (node, minute, requests, errors, p50_us, p99_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (node, minute) DO UPDATE SET requests = excluded.requests,
         errors = excluded.errors, p50_us = excluded.p50_us, p99_us = excluded.p99_us",
        &[
            h.node.as_str().into(),
            minute.into(),
            h.requests.into(),
            h.errors.into(),
            h.p50_us.into(),
            h.p99_us.into(),
        ],
    )?;
    Ok(())
}

/// Deletes a node's minute rows older than `before` (ms); returns how many.
pub fn prune_health_minutes(tx: &mut dyn Tx, node: &str, before: i64) -> Result<u64, DbError> {
    tx.execute(
        "DELETE FROM node_health_minutes WHERE node = ?1 AND minute < ?2",
        &[node.into(), before.into()],
    )
}

fn health_from(r: &Row) -> Result<Health, DbError> {
    Ok(Health {
        node: r.text(0)?,
        reported_at: r.int(1)?,
        interval_ms: r.int(2)?,
        started_at: r.int(3)?,
        version: r.text(4)?,
        requests: r.int(5)?,
        errors: r.int(6)?,
        p50_us: r.int(7)?,
        p99_us: r.int(8)?,
        open_users: r.int(9)?,
        users: r.int(10)?,
        disk_free: r.int(11)?,
    })
}

/// Every node's latest health row (nodes that never reported have none).
pub fn health_rows(tx: &mut dyn Tx) -> Result<Vec<Health>, DbError> {
    tx.query(
        &format!("SELECT {HEALTH_COLS} FROM node_health ORDER BY node"),
        &[],
    )?
    .iter()
    .map(health_from)
    .collect()
}

/// Every node's minute rows from `since` (ms) on, by node and minute.
pub fn health_minutes(tx: &mut dyn Tx, since: i64) -> Result<Vec<HealthMinute>, DbError> {
    tx.query(
        "SELECT node, minute, requests, errors, p50_us, p99_us FROM node_health_minutes
         WHERE minute >= ?1 ORDER BY node, minute",
        &[since.into()],
    )?
    .iter()
    .map(|r| {
        Ok(HealthMinute {
            node: r.text(0)?,
            minute: r.int(1)?,
            requests: r.int(2)?,
            errors: r.int(3)?,
            p50_us: r.int(4)?,
            p99_us: r.int(5)?,
        })
    })
    .collect()
}

/// Records that the guard finds node `id` suspect since `since`, with `reason` (the
/// reason is refreshed, the time kept when already suspect); nothing for a paused node.
pub fn set_suspect(tx: &mut dyn Tx, id: i64, since: i64, reason: &str) -> Result<(), DbError> {
    tx.execute(
        "UPDATE nodes SET suspect_since = coalesce(suspect_since, ?2), suspect_reason = ?3
         WHERE id = ?1 AND paused_at IS NULL",
        &[id.into(), since.into(), reason.into()],
    )?;
    Ok(())
}

/// Forgets the guard's suspicion of node `id` (it looks as good as the others again).
pub fn clear_suspect(tx: &mut dyn Tx, id: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE nodes SET suspect_since = NULL, suspect_reason = NULL
         WHERE id = ?1 AND suspect_since IS NOT NULL AND paused_at IS NULL",
        &[id.into()],
    )?;
    Ok(())
}

/// Pauses node `id` (no new users) unless it is paused already; returns whether this
/// call paused it (of several tokenservers pausing at once exactly one gets `true`).
pub fn pause_node(tx: &mut dyn Tx, id: i64, now: i64, reason: &str) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE nodes SET paused_at = ?2, pause_reason = ?3 WHERE id = ?1 AND paused_at IS NULL",
        &[id.into(), now.into(), reason.into()],
    )?;
    Ok(n == 1)
}

/// Clears a node's pause and the guard's suspicion; returns the node as it was, if it
/// exists.
pub fn resume_node(tx: &mut dyn Tx, url: &str) -> Result<Option<Node>, DbError> {
    let Some(node) = node_by_url(tx, url)? else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE nodes SET paused_at = NULL, pause_reason = NULL, suspect_since = NULL,
         suspect_reason = NULL WHERE id = ?1",
        &[node.id.into()],
    )?;
    Ok(Some(node))
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// When, ms.
    pub at: i64,
    /// `cli`, `console` or `guard`.
    pub via: String,
    /// `$USER@host`, the console's client address, or the guard's process.
    pub who: String,
    /// What was done, e.g. `rollout.set`.
    pub action: String,
    /// The node (or other thing) it was done to.
    pub target: String,
    /// The change's details.
    pub detail: String,
}

/// Appends a row to the audit log.
pub fn add_audit(
    tx: &mut dyn Tx,
    at: i64,
    via: &str,
    who: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO audit_log (at, via, who, action, target, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            at.into(),
            via.into(),
            who.into(),
            action.into(),
            target.into(),
            detail.into(),
        ],
    )?;
    Ok(())
}

/// The newest `limit` rows of the audit log, newest first.
pub fn audit_entries(tx: &mut dyn Tx, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
    tx.query(
        "SELECT id, at, via, who, action, target, detail FROM audit_log
         ORDER BY id DESC LIMIT ?1",
        &[limit.into()],
    )?
    .iter()
    .map(|r| {
        Ok(AuditEntry {
            id: r.int(0)?,
            at: r.int(1)?,
            via: r.text(2)?,
            who: r.text(3)?,
            action: r.text(4)?,
            target: r.text(5)?,
            detail: r.text(6)?,
        })
    })
    .collect()
}

/// A live drain and its progress (see `drains` in the schema).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drain {
    /// The node being emptied.
    pub node: String,
    /// When the drain started (a resumed drain keeps its start), ms.
    pub started_at: i64,
    /// Users to move.
    pub total: i64,
    /// Users moved so far.
    pub moved: i64,
    /// Users whose move failed in this run.
    pub failed: i64,
    /// Last progress, ms.
    pub updated_at: i64,
    /// When it ended, ms (None: running, or died).
    pub finished_at: Option<i64>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// `cli` or `console`.
    pub via: String,
    /// Who started it.
    pub who: String,
}

const DRAIN_COLS: &str =
    "node, started_at, total, moved, failed, updated_at, finished_at, last_error, via, who";

fn drain_from(r: &Row) -> Result<Drain, DbError> {
    Ok(Drain {
        node: r.text(0)?,
        started_at: r.int(1)?,
        total: r.int(2)?,
        moved: r.int(3)?,
        failed: r.int(4)?,
        updated_at: r.int(5)?,
        finished_at: r.opt_int(6)?,
        last_error: r.opt_text(7)?,
        via: r.text(8)?,
        who: r.text(9)?,
    })
}

/// The drain of `node`, if one was ever recorded.
pub fn drain(tx: &mut dyn Tx, node: &str) -> Result<Option<Drain>, DbError> {
    tx.query(
        &format!("SELECT {DRAIN_COLS} FROM drains WHERE node = ?1"),
        &[node.into()],
    )?
    .first()
    .map(drain_from)
    .transpose()
}

/// Every recorded drain, newest first.
pub fn drains(tx: &mut dyn Tx) -> Result<Vec<Drain>, DbError> {
    tx.query(
        &format!("SELECT {DRAIN_COLS} FROM drains ORDER BY started_at DESC, node"),
        &[],
    )?
    .iter()
    .map(drain_from)
    .collect()
}

/// Writes a drain's row as it is now (insert or replace).
pub fn put_drain(tx: &mut dyn Tx, d: &Drain) -> Result<(), DbError> {
    tx.execute(
        &format!(
            "INSERT INTO drains ({DRAIN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (node) DO UPDATE SET started_at = excluded.started_at,
             total = excluded.total, moved = excluded.moved, failed = excluded.failed,
             updated_at = excluded.updated_at, finished_at = excluded.finished_at,
             last_error = excluded.last_error, via = excluded.via, who = excluded.who"
        ),
        &[
            d.node.as_str().into(),
            d.started_at.into(),
            d.total.into(),
            d.moved.into(),
            d.failed.into(),
            d.updated_at.into(),
            d.finished_at.into(),
            d.last_error.as_deref().into(),
            d.via.as_str().into(),
            d.who.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Marks a running drain alive at `now` (a long move in progress).
pub fn touch_drain(tx: &mut dyn Tx, node: &str, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE drains SET updated_at = ?2 WHERE node = ?1 AND finished_at IS NULL",
        &[node.into(), now.into()],
    )?;
    Ok(())
}
