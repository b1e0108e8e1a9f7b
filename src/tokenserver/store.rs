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
}

impl Node {
    /// Whether users may stay on (or be sent to) this node at all.
    pub fn serving(&self) -> bool {
        !self.downed && !self.draining
    }
}

const NODE_COLS: &str =
    "id, node, capacity, available, current_load, downed, draining, backoff, percent_bp";

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
