//! Operator commands over user files: export, import, delete, per-user and overall
//! statistics, integrity checks and compaction. Long runs show a progress bar on
//! stderr and end with a summary; each returns the text to print on stdout.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use super::AdminError;
use crate::storage::StorageError;
use crate::storage::files::{self, UserExport};

impl From<StorageError> for AdminError {
    fn from(e: StorageError) -> AdminError {
        AdminError::Invalid(e.to_string())
    }
}

/// A progress bar over `len` items (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `user export UID`: the user's data as JSON.
pub fn export(data_dir: &Path, uid: u64) -> Result<String, AdminError> {
    let mut conn = files::open(data_dir, uid).map_err(|e| no_user(e, uid))?;
    let data = files::export(&mut conn, uid)?;
    serde_json::to_string_pretty(&data).map_err(|e| AdminError::Invalid(e.to_string()))
}

fn no_user(e: StorageError, uid: u64) -> AdminError {
    match e {
        StorageError::NotFound => AdminError::Invalid(format!("user {uid} has no data here")),
        e => e.into(),
    }
}

/// `user import [--uid UID] [--replace] < file.json`: writes an export back.
pub fn import(
    data_dir: &Path,
    json: &str,
    uid: Option<u64>,
    replace: bool,
) -> Result<String, AdminError> {
    let data: UserExport = serde_json::from_str(json)
        .map_err(|e| AdminError::Invalid(format!("not a user export: {e}")))?;
    if data.format != files::EXPORT_FORMAT {
        return Err(AdminError::Invalid(format!(
            "unknown export format {:?} (this version reads {:?})",
            data.format,
            files::EXPORT_FORMAT
        )));
    }
    let uid = uid.unwrap_or(data.uid);
    let existing = crate::storage::userdbs::user_path(data_dir, uid);
    if existing.exists() {
        // Never write through a file whose schema is not ours (a trigger would run).
        crate::storage::schema_check::check_user_file(&existing, uid)?;
    }
    let mut conn = files::open_or_create(data_dir, uid)?;
    let n = files::import(&mut conn, uid, &data, replace)?;
    Ok(format!(
        "user {uid}: imported {n} records in {} collections",
        data.collections.len()
    ))
}

/// Whether `bytes` are a SQLite database file (its header), not a JSON export.
pub fn is_sqlite_file(bytes: &[u8]) -> bool {
    bytes.starts_with(b"SQLite format 3\0")
}

/// `user import FILE.sqlite --uid UID [--replace]`: installs a copy of a user's SQLite
/// file (a backup), accepted only if it is sound and has exactly the schema of a
/// version this binary knows (see `storage::schema_check`); replaces the user's file
/// only with `replace`. For a user the server has open, do it with the server stopped.
pub fn import_file(
    data_dir: &Path,
    bytes: &[u8],
    uid: Option<u64>,
    replace: bool,
) -> Result<String, AdminError> {
    let uid = uid.ok_or_else(|| {
        AdminError::Invalid("a SQLite file names no user: give --uid".to_string())
    })?;
    let path = crate::storage::userdbs::user_path(data_dir, uid);
    if path.exists() && !replace {
        return Err(AdminError::Invalid(format!(
            "user {uid} already has a file here; --replace replaces it"
        )));
    }
    let checked = files::install_user_file(data_dir, uid, bytes)?;
    Ok(format!(
        "user {uid}: installed a schema version {} file with {} records",
        checked.version, checked.records
    ))
}

/// `user delete UID`.
pub fn delete(data_dir: &Path, uid: u64) -> Result<String, AdminError> {
    Ok(if files::delete_user(data_dir, uid)? {
        format!("user {uid}: deleted")
    } else {
        format!("user {uid}: had no data")
    })
}

/// `user stats UID`.
pub fn user_stats(data_dir: &Path, uid: u64) -> Result<String, AdminError> {
    let path = crate::storage::userdbs::user_path(data_dir, uid);
    let mut conn = files::open(data_dir, uid).map_err(|e| no_user(e, uid))?;
    let s = files::stats(&mut conn, uid, &path)?;
    let mut out = format!(
        "user {uid}: {} records, {} payload bytes, {} on disk, last write {}\n",
        s.records,
        s.payload_bytes,
        human_bytes(s.file_bytes),
        s.modified
    );
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>12}  modified",
        "collection", "records", "bytes"
    );
    for (name, n, b, ts) in &s.collections {
        let _ = writeln!(out, "{name:<16} {n:>9} {b:>12}  {ts}");
    }
    Ok(out)
}

/// Runs `f` over every user file on `threads` threads with a progress bar; returns
/// what each call gave, in uid order.
fn over_all_users<T: Send>(
    data_dir: &Path,
    what: &str,
    f: impl Fn(u64, &Path) -> T + Sync,
) -> Result<Vec<(u64, T)>, AdminError> {
    let users = files::list_users(data_dir)?;
    let bar = progress(users.len() as u64, what);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(u64, T)>> = Mutex::new(Vec::with_capacity(users.len()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((uid, path)) = users.get(i) else {
                        break;
                    };
                    let out = f(*uid, path);
                    results.lock().expect("no panics").push((*uid, out));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().expect("no panics");
    results.sort_by_key(|r| r.0);
    Ok(results)
}

/// `check`: SQLite's integrity check over every user file, in parallel.
/// Returns the report and whether every file was sound.
pub fn check(data_dir: &Path) -> Result<(String, bool), AdminError> {
    let results = over_all_users(data_dir, "checking", |uid, path| {
        files::integrity_check(path, uid).map_err(|e| e.to_string())
    })?;
    let mut out = String::new();
    let mut bad = 0;
    for (uid, r) in &results {
        let problem = match r {
            Ok(None) => continue,
            Ok(Some(p)) => p.clone(),
            Err(e) => e.clone(),
        };
        bad += 1;
        let path = crate::storage::userdbs::user_path(data_dir, *uid);
        let _ = writeln!(out, "BAD user {uid} ({}): {problem}", path.display());
    }
    let _ = writeln!(
        out,
        "checked {} user files: {} ok, {bad} bad",
        results.len(),
        results.len() - bad
    );
    Ok((out, bad == 0))
}

/// `compact`: vacuums user files whose free pages reach `threshold` (0–1).
pub fn compact(data_dir: &Path, threshold: f64) -> Result<String, AdminError> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(AdminError::Invalid(
            "--threshold must be between 0 and 1".into(),
        ));
    }
    let results = over_all_users(data_dir, "compacting", |uid, path| {
        files::compact(path, uid, threshold).map_err(|e| e.to_string())
    })?;
    let (mut done, mut saved, mut failed) = (0, 0u64, Vec::new());
    for (uid, r) in &results {
        match r {
            Ok((before, after)) if after < before => {
                done += 1;
                saved += before - after;
            }
            Ok((before, after)) if after > before => done += 1,
            Ok(_) => {}
            Err(e) => failed.push(format!("user {uid}: {e}")),
        }
    }
    let mut out = String::new();
    for f in &failed {
        let _ = writeln!(out, "FAILED {f}");
    }
    let _ = writeln!(
        out,
        "compacted {done} of {} user files, {} freed{}",
        results.len(),
        human_bytes(saved),
        if failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", failed.len())
        }
    );
    Ok(out)
}

/// `stats`: users, records, bytes, and the largest users.
pub fn stats(data_dir: &Path, top: usize) -> Result<String, AdminError> {
    let results = over_all_users(data_dir, "reading", |uid, path| {
        let path: PathBuf = path.to_path_buf();
        files::open(data_dir, uid)
            .and_then(|mut c| files::stats(&mut c, uid, &path))
            .map_err(|e| e.to_string())
    })?;
    let mut ok: Vec<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let failed = results.len() - ok.len();
    let disk: u64 = ok.iter().map(|s| s.file_bytes).sum();
    let records: i64 = ok.iter().map(|s| s.records).sum();
    let payload: i64 = ok.iter().map(|s| s.payload_bytes).sum();
    let mut out = format!(
        "{} users, {records} records, {} of payloads, {} on disk ({} a user on average)\n",
        results.len(),
        human_bytes(payload.max(0) as u64),
        human_bytes(disk),
        human_bytes(disk / (ok.len().max(1) as u64)),
    );
    if failed > 0 {
        let _ = writeln!(
            out,
            "{failed} user files could not be read (run `syncstore check`)"
        );
    }
    ok.sort_by_key(|s| std::cmp::Reverse(s.file_bytes));
    if !ok.is_empty() {
        let _ = writeln!(out, "largest users:");
        let _ = writeln!(
            out,
            "{:>12} {:>10} {:>10}  last write",
            "uid", "on disk", "records"
        );
        for s in ok.iter().take(top) {
            let _ = writeln!(
                out,
                "{:>12} {:>10} {:>10}  {}",
                s.uid,
                human_bytes(s.file_bytes),
                s.records,
                s.modified
            );
        }
    }
    Ok(out)
}

/// For `stats` on a node with an assignment database: how many user files here belong
/// to users who left the node (replaced, or placed on another node) and wait for
/// upkeep to delete them once `orphan_grace_secs` have passed since they left.
pub fn orphans_waiting(
    data_dir: &Path,
    db: &crate::tokenserver::db::AssignmentDb,
    node_url: &str,
) -> Result<String, AdminError> {
    use crate::storage::userdbs::upkeep::Placement;
    let uids: Vec<i64> = files::list_users(data_dir)?
        .into_iter()
        .map(|(uid, _)| uid as i64)
        .collect();
    let mut waiting = 0;
    for chunk in uids.chunks(1000) {
        let rows = db.transaction(|tx| crate::tokenserver::store::uid_placements(tx, chunk))?;
        waiting += rows
            .iter()
            .filter(|p| {
                matches!(
                    crate::cluster::placement(p, node_url),
                    Placement::Left { .. }
                )
            })
            .count();
    }
    Ok(format!(
        "{waiting} files of users who left {node_url} wait for deletion by upkeep\n"
    ))
}

/// What `import-legacy` does besides reading the source.
#[derive(Debug, Clone)]
pub struct LegacyImport {
    /// Read and check every user, write nothing.
    pub dry_run: bool,
    /// Only these users (`--users 1,2,3`); all of the source's when `None`.
    pub users: Option<Vec<u64>>,
    /// Re-import users who already have data here, replacing it with the source's
    /// (`--replace`: the final copy after a trial run, before clients sync here).
    pub replace: bool,
    /// The most bytes of record ids and payloads read for one user (`--max-user-bytes`):
    /// a larger user fails with the reason and the import goes on.
    pub max_user_bytes: u64,
}

impl Default for LegacyImport {
    fn default() -> LegacyImport {
        LegacyImport {
            dry_run: false,
            users: None,
            replace: false,
            max_user_bytes: DEFAULT_MAX_USER_BYTES,
        }
    }
}

/// `--max-user-bytes`' default: 1 GiB.
pub const DEFAULT_MAX_USER_BYTES: u64 = 1 << 30;

/// `import-legacy --from URL`: copies every user of a Mozilla storage server's database
/// into per-user files, one transaction per user. Users that already have data here
/// are skipped, so an interrupted run can simply be started again (with `replace`,
/// their data is replaced by the source's instead). A user that cannot
/// be read or written is named with the reason and the import goes on. Prints one
/// line per user to stdout as it goes (a progress bar with an ETA on stderr when it
/// is a terminal); returns the summary, an error if any user failed.
pub fn import_legacy(
    data_dir: &Path,
    url: &str,
    opts: &LegacyImport,
) -> Result<String, AdminError> {
    use crate::storage::legacy::{self, LegacySource};
    use std::io::Write;
    let mut source = LegacySource::open(url)?;
    // No message shows the source's password.
    let hide = |e: StorageError| legacy::scrub(&e.to_string(), url);
    let all = source.users().map_err(|e| AdminError::Invalid(hide(e)))?;
    // Each wanted user once, in the order given; those the source lacks fail, and so
    // do the source's negative ids (no tokenserver gives them out).
    // (i128 holds both the source's i64 ids and the u64 uids asked for.)
    let users: Vec<(i128, bool)> = match &opts.users {
        None => all.iter().map(|&u| (i128::from(u), true)).collect(),
        Some(wanted) => {
            let mut seen = std::collections::BTreeSet::new();
            wanted
                .iter()
                .filter(|u| seen.insert(**u))
                .map(|&u| {
                    let found = i64::try_from(u).is_ok_and(|id| all.binary_search(&id).is_ok());
                    (i128::from(u), found)
                })
                .collect()
        }
    };
    let bar = progress(
        users.len() as u64,
        if opts.dry_run {
            "checking"
        } else {
            "importing"
        },
    );
    let (mut imported, mut skipped, mut failed, mut records) = (0, 0, 0, 0);
    let mut stdout = std::io::stdout().lock();
    for (id, in_source) in users {
        let Ok(uid) = u64::try_from(id) else {
            failed += 1;
            let line = format!("user {id}: FAILED: a negative user id, not a tokenserver uid");
            bar.suspend(|| writeln!(stdout, "{line}"))
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            bar.inc(1);
            continue;
        };
        // Whether the user has data here (with --replace it does not matter); a file
        // here that cannot be read fails this user only.
        let has_data = || {
            if opts.replace {
                return Ok(false);
            }
            files::has_data(data_dir, uid).map_err(|e| {
                let path = crate::storage::userdbs::user_path(data_dir, uid);
                format!("its file here ({}) cannot be read: {e}", path.display())
            })
        };
        let have = if in_source { has_data() } else { Ok(false) };
        let line = if !in_source {
            failed += 1;
            format!("user {uid}: FAILED: not in the source database")
        } else if let Err(e) = &have {
            failed += 1;
            format!("user {uid}: FAILED: {e}")
        } else if have == Ok(true) {
            skipped += 1;
            format!("user {uid}: skipped (already has data here)")
        } else {
            let result = source.user(uid, opts.max_user_bytes).and_then(|data| {
                let n = if opts.dry_run {
                    legacy::check(&data)?
                } else {
                    let mut conn = files::open_or_create(data_dir, uid)?;
                    let existing = if opts.replace {
                        files::Existing::Replace
                    } else {
                        files::Existing::Skip
                    };
                    match files::import_with(&mut conn, uid, &data, existing)? {
                        Some(n) => n,
                        // A server wrote the user since the check: theirs is newer.
                        None => return Ok(None),
                    }
                };
                Ok(Some((n, data.collections.len())))
            });
            match result {
                Ok(None) => {
                    skipped += 1;
                    format!("user {uid}: skipped (already has data here)")
                }
                Ok(Some((n, c))) => {
                    imported += 1;
                    records += n;
                    if opts.dry_run {
                        format!("user {uid}: would import {n} records in {c} collections")
                    } else {
                        format!("user {uid}: imported {n} records in {c} collections")
                    }
                }
                Err(e) => {
                    failed += 1;
                    format!("user {uid}: FAILED: {}", hide(e))
                }
            }
        };
        bar.suspend(|| writeln!(stdout, "{line}"))
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    // The final copy (--replace, every user) leaves alone the users here that the
    // source no longer has (deleted their data, or were purged, since a trial run; or
    // never came from it): named, with the command that removes one.
    let mut absent = 0;
    if opts.replace && opts.users.is_none() {
        for (uid, _) in files::list_users(data_dir).unwrap_or_default() {
            let gone = i64::try_from(uid).map_or(true, |id| all.binary_search(&id).is_err());
            if gone {
                absent += 1;
                writeln!(
                    stdout,
                    "user {uid}: here but not in the source: left as it is \
                     (`syncstore user delete {uid}` removes it)"
                )
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            }
        }
    }
    let absent = if absent > 0 {
        format!("; {absent} users here are not in the source (left as they are)")
    } else {
        String::new()
    };
    let summary = if opts.dry_run {
        format!(
            "dry run: would import {imported} users ({records} records), skipped {skipped}, \
             failed {failed}{absent}; nothing was written"
        )
    } else {
        format!(
            "imported {imported} users ({records} records), skipped {skipped}, failed {failed}{absent}"
        )
    };
    if failed > 0 {
        return Err(AdminError::Invalid(summary));
    }
    Ok(summary)
}

/// `12.3 MB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
