//! The node's health report: every `node_report_secs`, a storage node with an
//! assignment database (the shared PostgreSQL, or the SQLite file of `--role all`)
//! writes its row of `node_health` — its last minute of storage API requests from
//! [`crate::web::window`] (requests, 5xx, p50, p99), user files open now, user files
//! in its data dir, bytes free on the data dir's file system, version, start time —
//! and the current minute's row of `node_health_minutes` (for the console's chart),
//! and once a minute deletes its minute rows older than two hours. Nothing scrapes the
//! nodes: the tokenservers' canary guard and the console read the rows.
//!
//! The user-file count is a walk of the data dir's `users/` folders, made at start and
//! then at most every [`USERS_RECOUNT`] on the blocking pool (never a walk per report).

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin::now_ms;
use crate::storage::UserDbs;
use crate::tokenserver::db::AssignmentDb;
use crate::tokenserver::store::{self, Health};
use crate::web::window;

/// How often the user files are counted again.
pub const USERS_RECOUNT: Duration = Duration::from_secs(300);

/// How long minute rows are kept, ms.
const MINUTES_KEPT_MS: i64 = 2 * 3_600_000;

/// This build's version and commit, as reported.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SYNCSTORE_COMMIT"),
    ")"
);

/// Counts the user files (`users/<shard>/<uid>.sqlite`) under `data_dir`. Blocking.
pub fn count_user_files(data_dir: &Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(data_dir.join("users")) else {
        return 0;
    };
    let mut n = 0;
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        n += files
            .flatten()
            .filter(|f| {
                let name = f.file_name();
                let name = name.to_string_lossy();
                name.strip_suffix(".sqlite")
                    .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
            })
            .count() as u64;
    }
    n
}

/// Bytes free (for an unprivileged user) on the file system of `path`.
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs on a NUL-terminated path into a zeroed local struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Writes the node's health row every `interval` until `stop` turns true.
pub(super) async fn report_loop(
    db: AssignmentDb,
    node: String,
    dbs: UserDbs,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let started_at = now_ms();
    let data_dir = dbs.data_dir().to_path_buf();
    let mut users: Option<(u64, Instant)> = None;
    let mut pruned_at: Option<Instant> = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let recount = users.is_none_or(|(_, at)| at.elapsed() >= USERS_RECOUNT);
        let prune = pruned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        let stats = window::REQUESTS.stats();
        let open = dbs.open_count() as i64;
        let dir = data_dir.clone();
        let known = users.map(|(n, _)| n);
        let mut h = Health {
            node: node.clone(),
            reported_at: 0,
            interval_ms: interval.as_millis() as i64,
            started_at,
            version: VERSION.into(),
            requests: stats.requests as i64,
            errors: stats.errors as i64,
            p50_us: stats.p50_us as i64,
            p99_us: stats.p99_us as i64,
            open_users: open,
            users: 0,
            disk_free: 0,
        };
        let db2 = db.clone();
        let done = tokio::task::spawn_blocking(move || {
            let count = match known {
                Some(n) if !recount => n,
                _ => count_user_files(&dir),
            };
            h.users = count as i64;
            h.disk_free = disk_free(&dir).unwrap_or(0).min(i64::MAX as u64) as i64;
            h.reported_at = now_ms();
            db2.transaction(|tx| {
                store::put_health(tx, &h)?;
                if prune {
                    store::prune_health_minutes(tx, &h.node, h.reported_at - MINUTES_KEPT_MS)?;
                }
                Ok::<_, crate::tokenserver::db::DbError>(())
            })
            .map(|()| count)
        })
        .await;
        match done {
            Ok(Ok(count)) => {
                if recount {
                    users = Some((count, Instant::now()));
                }
                if prune {
                    pruned_at = Some(Instant::now());
                }
                if failing {
                    tracing::info!("health report written again");
                    failing = false;
                }
            }
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, "could not write the node's health report");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "health report task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_files_are_counted_and_companions_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("users").join("042");
        std::fs::create_dir_all(&shard).unwrap();
        for name in [
            "42.sqlite",
            "42.sqlite-wal",
            "1042.sqlite",
            "x.sqlite",
            ".sqlite",
        ] {
            std::fs::write(shard.join(name), b"").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("users").join("007")).unwrap();
        std::fs::write(dir.path().join("users/007/7.sqlite"), b"").unwrap();
        assert_eq!(count_user_files(dir.path()), 3);
        assert_eq!(count_user_files(&dir.path().join("none")), 0);
        assert!(disk_free(dir.path()).is_some_and(|b| b > 0));
    }
}
