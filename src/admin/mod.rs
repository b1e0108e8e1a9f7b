//! Operator commands over the assignment database: nodes, rollout rules, sign-ups;
//! [`users`] holds the commands over user files.
//! Changes take effect on the next token request; no restart is needed.

pub mod accounts;
pub mod backup;
pub mod moves;
pub mod restore;
pub mod users;

use std::fmt::Write;

use crate::tokenserver::db::{AssignmentDb, DbError, SqlTx};
use crate::tokenserver::rollout::ALL;
use crate::tokenserver::store::{self, ListKind, NodeChange};

/// Errors of operator commands.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The command names a node that does not exist.
    #[error("no node {0}")]
    NoSuchNode(String),
    /// The command's arguments are not valid.
    #[error("{0}")]
    Invalid(String),
}

/// Adds this process as the only node when the node list is empty; returns whether it did.
pub fn register_self(db: &AssignmentDb, url: &str, capacity: i64) -> Result<bool, DbError> {
    db.transaction(|tx| {
        tx.lock_key("register-self")?;
        if store::nodes(tx)?.is_empty() {
            store::add_node(tx, url, capacity)?;
            return Ok(true);
        }
        Ok(false)
    })
}

fn check_url(url: &str) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<axum::http::Uri>().is_err()
    {
        return Err(AdminError::Invalid(format!("not an http(s) URL: {url}")));
    }
    Ok(url.to_string())
}

fn node_id(tx: &mut dyn SqlTx, url: &str) -> Result<i64, AdminError> {
    store::node_by_url(tx, url)?
        .map(|n| n.id)
        .ok_or_else(|| AdminError::NoSuchNode(url.to_string()))
}

/// `node add URL --capacity N`.
pub fn node_add(db: &AssignmentDb, url: &str, capacity: i64) -> Result<String, AdminError> {
    let url = check_url(url)?;
    if capacity < 0 {
        return Err(AdminError::Invalid("capacity must not be negative".into()));
    }
    db.transaction(|tx| {
        if store::node_by_url(tx, &url)?.is_some() {
            return Err(AdminError::Invalid(format!("node {url} exists already")));
        }
        store::add_node(tx, &url, capacity)?;
        Ok(format!("added node {url} (capacity {capacity})"))
    })
}

/// `node set URL …`, `node down URL`, `node drain URL`, `rollout set URL PERCENT`.
pub fn node_set(db: &AssignmentDb, url: &str, change: &NodeChange) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    if change.percent_bp.is_some_and(|p| !(0..=ALL).contains(&p)) {
        return Err(AdminError::Invalid(
            "percent must be between 0 and 100".into(),
        ));
    }
    db.transaction(|tx| {
        if !store::set_node(tx, &url, change)? {
            return Err(AdminError::NoSuchNode(url.clone()));
        }
        Ok(format!("updated node {url}"))
    })
}

/// `node remove URL`: its users get new nodes on their next token request.
pub fn node_remove(db: &AssignmentDb, url: &str) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    db.transaction(|tx| {
        if !store::remove_node(tx, &url)? {
            return Err(AdminError::NoSuchNode(url.clone()));
        }
        Ok(format!(
            "removed node {url}; its users move on their next sign-in"
        ))
    })
}

/// `node list`: a table of every node.
pub fn node_list(db: &AssignmentDb) -> Result<String, AdminError> {
    db.transaction(|tx| {
        let nodes = store::nodes(tx)?;
        let users = store::users_per_node(tx)?;
        let mut out = format!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {}\n",
            "NODE", "CAPACITY", "LOAD", "USERS", "AVAIL", "ROLLOUT", "BACKOFF", "STATE"
        );
        for n in nodes {
            let count = users.iter().find(|(id, _)| *id == n.id).map_or(0, |u| u.1);
            let state = match (n.downed, n.draining) {
                (true, _) => "down",
                (false, true) => "draining",
                _ => "up",
            };
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>9} {:>9} {:>9} {:>7.2}% {:>8} {}",
                n.node,
                n.capacity,
                n.current_load,
                count,
                n.available,
                n.percent_bp as f64 / 100.0,
                n.backoff,
                state
            );
        }
        Ok(out)
    })
}

/// `rollout allow|deny|unlist URL WHO…`.
pub fn rollout_list(
    db: &AssignmentDb,
    url: &str,
    kind: Option<ListKind>,
    who: &[String],
) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    db.transaction(|tx| {
        let id = node_id(tx, &url)?;
        for w in who {
            match kind {
                Some(k) => store::edit_list(tx, id, k, w, true)?,
                None => {
                    store::edit_list(tx, id, ListKind::Allow, w, false)?;
                    store::edit_list(tx, id, ListKind::Deny, w, false)?;
                }
            }
        }
        let what = match kind {
            Some(ListKind::Allow) => "allow-list",
            Some(ListKind::Deny) => "deny-list",
            None => "no list",
        };
        Ok(format!("{} user(s) now on the {what} of {url}", who.len()))
    })
}

/// `rollout show`: every node's share and lists, and whether sign-ups are open.
pub fn rollout_show(db: &AssignmentDb) -> Result<String, AdminError> {
    db.transaction(|tx| {
        let mut out = String::new();
        let signups = store::setting(tx, "signups")?.unwrap_or_else(|| "open".into());
        let _ = writeln!(out, "sign-ups: {signups}");
        for n in store::nodes(tx)? {
            let _ = writeln!(
                out,
                "{}: {:.2}% of new users",
                n.node,
                n.percent_bp as f64 / 100.0
            );
        }
        for (node, kind, who) in store::lists(tx)? {
            let _ = writeln!(out, "{node}: {kind} {who}");
        }
        Ok(out)
    })
}

/// `signups open|close`.
pub fn signups(db: &AssignmentDb, open: bool) -> Result<String, AdminError> {
    let value = if open { "open" } else { "closed" };
    db.transaction(|tx| {
        store::set_setting(tx, "signups", value)?;
        Ok(format!("sign-ups are {value}"))
    })
}

/// Parses a percentage such as `5`, `12.5` or `100` into basis points.
pub fn percent_to_bp(text: &str) -> Result<i64, AdminError> {
    let p: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| AdminError::Invalid(format!("not a percentage: {text}")))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(AdminError::Invalid(
            "percent must be between 0 and 100".into(),
        ));
    }
    Ok((p * 100.0).round() as i64)
}
