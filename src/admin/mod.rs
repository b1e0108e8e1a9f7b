//! Operator commands over the assignment database: nodes, rollout rules, sign-ups,
//! the audit log and the console's [`overview`]; [`users`] holds the commands over user
//! files, [`moves`] live moves and drains.
//! Changes take effect on the next token request; no restart is needed.
//!
//! Every change goes through one function here that takes an [`Actor`] (the CLI, the
//! console, or the canary guard) and writes a row to the audit log in the same
//! transaction as the change, so the CLI and the console do exactly the same thing and
//! `syncstore audit` shows who did it.

pub mod accounts;
pub mod backup;
pub mod moves;
pub mod overview;
pub mod restore;
pub mod users;

use std::fmt::Write;

use crate::tokenserver::db::{AssignmentDb, DbError, SqlTx};
use crate::tokenserver::rollout::ALL;
use crate::tokenserver::store::{self, AuditEntry, ListKind, NodeChange};

pub use overview::{DrainView, GuardInfo, ListEntry, MinutePoint, NodeView, Overview, overview};

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

/// Through what a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A `syncstore` command.
    Cli,
    /// The operator console.
    Console,
    /// The canary guard of a tokenserver.
    Guard,
}

impl Via {
    /// The name written to the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Console => "console",
            Via::Guard => "guard",
        }
    }
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    /// Through what.
    pub via: Via,
    /// `$USER@host` (CLI), the client address (console), `host:pid` (guard).
    pub who: String,
}

/// Longest `who` or `detail` written to the audit log, bytes (longer ones are cut).
const MAX_AUDIT_TEXT: usize = 2000;

impl Actor {
    /// The CLI, run by `$USER` on this host.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            via: Via::Cli,
            who: format!("{user}@{}", hostname()),
        }
    }

    /// The console, for a request from `client` (its address).
    pub fn console(client: impl std::fmt::Display) -> Actor {
        Actor {
            via: Via::Console,
            who: client.to_string(),
        }
    }

    /// The canary guard of this process (`host:pid`).
    pub fn guard() -> Actor {
        Actor {
            via: Via::Guard,
            who: format!("{}:{}", hostname(), std::process::id()),
        }
    }
}

/// This machine's host name (`unknown` if it cannot be had).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the local buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "unknown".into(),
    }
}

/// Now, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn cut(text: &str) -> &str {
    if text.len() <= MAX_AUDIT_TEXT {
        return text;
    }
    let mut end = MAX_AUDIT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Writes an audit row for `actor` (in the caller's transaction, with its change).
pub fn audit(
    tx: &mut dyn SqlTx,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), DbError> {
    store::add_audit(
        tx,
        now_ms(),
        actor.via.as_str(),
        cut(&actor.who),
        action,
        cut(target),
        cut(detail),
    )
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
pub fn node_add(
    db: &AssignmentDb,
    actor: &Actor,
    url: &str,
    capacity: i64,
) -> Result<String, AdminError> {
    let url = check_url(url)?;
    if capacity < 0 {
        return Err(AdminError::Invalid("capacity must not be negative".into()));
    }
    db.transaction(|tx| {
        if store::node_by_url(tx, &url)?.is_some() {
            return Err(AdminError::Invalid(format!("node {url} exists already")));
        }
        store::add_node(tx, &url, capacity)?;
        audit(tx, actor, "node.add", &url, &format!("capacity {capacity}"))?;
        Ok(format!("added node {url} (capacity {capacity})"))
    })
}

/// What a change of node settings is called in the audit log, and its details.
fn describe_change(c: &NodeChange) -> (&'static str, String) {
    let mut detail = Vec::new();
    let mut put = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            detail.push(format!("{name} {v}"));
        }
    };
    put("capacity", c.capacity.map(|v| v.to_string()));
    put("available", c.available.map(|v| v.to_string()));
    put("downed", c.downed.map(|v| v.to_string()));
    put("draining", c.draining.map(|v| v.to_string()));
    put("backoff", c.backoff.map(|v| v.to_string()));
    put(
        "percent",
        c.percent_bp.map(|v| format!("{:.2}%", v as f64 / 100.0)),
    );
    let only = |f: bool| f && detail.len() == 1;
    let action = if only(c.percent_bp.is_some()) {
        "rollout.set"
    } else if only(c.downed == Some(true)) {
        "node.down"
    } else if only(c.draining == Some(true)) {
        "node.drain"
    } else {
        "node.set"
    };
    (action, detail.join(", "))
}

/// `node set URL …`, `node down URL`, `node drain URL`, `rollout set URL PERCENT`.
pub fn node_set(
    db: &AssignmentDb,
    actor: &Actor,
    url: &str,
    change: &NodeChange,
) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    if change.percent_bp.is_some_and(|p| !(0..=ALL).contains(&p)) {
        return Err(AdminError::Invalid(
            "percent must be between 0 and 100".into(),
        ));
    }
    let negative = [change.capacity, change.available, change.backoff]
        .iter()
        .any(|v| v.is_some_and(|v| v < 0));
    if negative {
        return Err(AdminError::Invalid(
            "capacity, available and backoff must not be negative".into(),
        ));
    }
    let (action, detail) = describe_change(change);
    db.transaction(|tx| {
        if !store::set_node(tx, &url, change)? {
            return Err(AdminError::NoSuchNode(url.clone()));
        }
        audit(tx, actor, action, &url, &detail)?;
        Ok(format!("updated node {url}"))
    })
}

/// `rollout set URL PERCENT`: the node's share of new users, in basis points.
pub fn rollout_set(
    db: &AssignmentDb,
    actor: &Actor,
    url: &str,
    percent_bp: i64,
) -> Result<String, AdminError> {
    let change = NodeChange {
        percent_bp: Some(percent_bp),
        ..Default::default()
    };
    node_set(db, actor, url, &change)
}

/// `rollout resume URL`: clears the canary guard's pause (and suspicion) of a node, which
/// takes new users again at once.
pub fn rollout_resume(db: &AssignmentDb, actor: &Actor, url: &str) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    db.transaction(|tx| {
        let Some(was) = store::resume_node(tx, &url)? else {
            return Err(AdminError::NoSuchNode(url.clone()));
        };
        let detail = match (&was.paused_at, &was.pause_reason) {
            (Some(_), reason) => format!("was paused: {}", reason.as_deref().unwrap_or("")),
            (None, _) => "was not paused".to_string(),
        };
        audit(tx, actor, "rollout.resume", &url, &detail)?;
        Ok(match was.paused_at {
            Some(_) => format!("resumed {url}: it takes new users again"),
            None => format!("{url} was not paused (its suspicion, if any, is cleared)"),
        })
    })
}

/// `node remove URL`: its users get new nodes on their next token request.
pub fn node_remove(db: &AssignmentDb, actor: &Actor, url: &str) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    db.transaction(|tx| {
        if !store::remove_node(tx, &url)? {
            return Err(AdminError::NoSuchNode(url.clone()));
        }
        audit(tx, actor, "node.remove", &url, "")?;
        Ok(format!(
            "removed node {url}; its users move on their next sign-in"
        ))
    })
}

/// `node list`: a table of every node, with its last minute as it reported it.
pub fn node_list(db: &AssignmentDb) -> Result<String, AdminError> {
    let now = now_ms();
    db.transaction(|tx| {
        let nodes = store::nodes(tx)?;
        let users = store::users_per_node(tx)?;
        let health = store::health_rows(tx)?;
        let mut out = format!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>9} {}\n",
            "NODE",
            "CAPACITY",
            "LOAD",
            "USERS",
            "AVAIL",
            "ROLLOUT",
            "BACKOFF",
            "REQ/MIN",
            "5XX",
            "P99",
            "STATE"
        );
        for n in nodes {
            let count = users.iter().find(|(id, _)| *id == n.id).map_or(0, |u| u.1);
            let mut state = match (n.downed, n.draining, n.paused_at) {
                (true, _, _) => "down",
                (false, true, _) => "draining",
                (false, false, Some(_)) => "paused",
                _ => "up",
            }
            .to_string();
            let h = health.iter().find(|h| h.node == n.node);
            let (req, errors, p99) = match h {
                Some(h) => (
                    h.requests.to_string(),
                    format!("{:.1}%", percent(h.errors, h.requests)),
                    format!("{:.1}ms", h.p99_us as f64 / 1000.0),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            match h {
                None => state.push_str(", no report"),
                Some(h) if h.is_stale(now) => {
                    let _ = write!(state, ", stale (last report {})", time_text(h.reported_at));
                }
                Some(_) => {}
            }
            if let Some(reason) = n.paused_at.and(n.pause_reason.as_deref()) {
                let _ = write!(state, ": {reason}");
            } else if n.suspect_since.is_some() {
                state.push_str(", suspect");
            }
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>9} {:>9} {:>9} {:>7.2}% {:>8} {:>8} {:>6} {:>9} {}",
                n.node,
                n.capacity,
                n.current_load,
                count,
                n.available,
                n.percent_bp as f64 / 100.0,
                n.backoff,
                req,
                errors,
                p99,
                state
            );
        }
        Ok(out)
    })
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `rollout allow|deny|unlist URL WHO…`.
pub fn rollout_list(
    db: &AssignmentDb,
    actor: &Actor,
    url: &str,
    kind: Option<ListKind>,
    who: &[String],
) -> Result<String, AdminError> {
    let url = url.trim_end_matches('/').to_string();
    if who.is_empty() || who.len() > MAX_LIST_EDIT {
        return Err(AdminError::Invalid(format!(
            "name 1 to {MAX_LIST_EDIT} users at a time"
        )));
    }
    if let Some(bad) = who.iter().find(|w| !valid_list_entry(w)) {
        return Err(AdminError::Invalid(format!(
            "not an FxA uid or email (1 to {MAX_LIST_ENTRY} printable characters): {:?}",
            crate::web::observe::clip(bad, 80)
        )));
    }
    let action = match kind {
        Some(ListKind::Allow) => "rollout.allow",
        Some(ListKind::Deny) => "rollout.deny",
        None => "rollout.unlist",
    };
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
        audit(tx, actor, action, &url, &who.join(" "))?;
        Ok(format!("{} user(s) now on the {what} of {url}", who.len()))
    })
}

/// Most users one allow/deny/unlist names.
pub const MAX_LIST_EDIT: usize = 100;

/// Longest allow- or deny-list entry (an FxA uid or an email), bytes.
pub const MAX_LIST_ENTRY: usize = 254;

fn valid_list_entry(who: &str) -> bool {
    !who.is_empty()
        && who.len() <= MAX_LIST_ENTRY
        && !who.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `rollout show`: every node's share and lists, and whether sign-ups are open.
pub fn rollout_show(db: &AssignmentDb) -> Result<String, AdminError> {
    db.transaction(|tx| {
        let mut out = String::new();
        let signups = store::setting(tx, "signups")?.unwrap_or_else(|| "open".into());
        let _ = writeln!(out, "sign-ups: {signups}");
        for n in store::nodes(tx)? {
            let _ = write!(
                out,
                "{}: {:.2}% of new users",
                n.node,
                n.percent_bp as f64 / 100.0
            );
            match (n.paused_at, &n.pause_reason) {
                (Some(at), reason) => {
                    let reason = reason.as_deref().unwrap_or("");
                    let _ = writeln!(
                        out,
                        " (PAUSED by the canary guard {}: {reason}; `rollout resume` resumes it)",
                        time_text(at)
                    );
                }
                (None, _) => out.push('\n'),
            }
        }
        for (node, kind, who) in store::lists(tx)? {
            let _ = writeln!(out, "{node}: {kind} {who}");
        }
        Ok(out)
    })
}

/// `signups open|close`.
pub fn signups(db: &AssignmentDb, actor: &Actor, open: bool) -> Result<String, AdminError> {
    let value = if open { "open" } else { "closed" };
    db.transaction(|tx| {
        store::set_setting(tx, "signups", value)?;
        audit(tx, actor, "signups", "tokenserver", value)?;
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

/// Most audit rows one call returns.
pub const MAX_AUDIT_ROWS: i64 = 10_000;

/// The newest `limit` rows of the audit log (at most [`MAX_AUDIT_ROWS`]), newest first.
pub fn audit_log(db: &AssignmentDb, limit: i64) -> Result<Vec<AuditEntry>, AdminError> {
    let limit = limit.clamp(0, MAX_AUDIT_ROWS);
    Ok(db.transaction(|tx| store::audit_entries(tx, limit))?)
}

/// Audit rows as a table for the terminal, newest first.
pub fn audit_text(entries: &[AuditEntry]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<28} {:<15} {:<32} {}\n",
        "WHEN", "VIA", "WHO", "ACTION", "TARGET", "DETAIL"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<28} {:<15} {:<32} {}",
            time_text(e.at),
            e.via,
            e.who,
            e.action,
            e.target,
            e.detail
        );
    }
    if entries.is_empty() {
        out.push_str("(no changes recorded yet)\n");
    }
    out
}

/// A time (ms since the epoch) as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn time_text(ms: i64) -> String {
    let (y, m, d, h, mi, s) = civil(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Year, month, day, hour, minute, second of a Unix time (UTC).
pub(crate) fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}
