//! `syncstore restore SRC --data-dir EMPTY_DIR`: a backup generation (see
//! [`super::backup`]) put back as a data dir. Every file's size and SHA-256 are checked
//! against the manifest before anything is written, and a data dir that holds anything
//! is refused; user files are installed as any file from outside is (SQLite's integrity
//! check and exactly a known version's schema, `storage::schema_check`); then the
//! restored dir gets `check`'s integrity check of every user file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::AdminError;
use super::backup::{self, FileEntry, Kind, Manifest};
use crate::storage::files;

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// A manifest path that stays inside the directory it is joined to: relative, no
/// `..`, no root, nothing but plain names.
fn safe_rel(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    plain.then(|| p.to_path_buf())
}

/// Where a file of the manifest belongs in a data dir: user files only at their
/// uid's path, the others only by their own name.
fn expected_rel(f: &FileEntry) -> Option<String> {
    Some(match f.kind {
        Kind::User => {
            let uid = f.uid?;
            format!("users/{:03}/{uid}.sqlite", uid % 1000)
        }
        Kind::Tokenserver => "tokenserver.sqlite".into(),
        Kind::Accounts => "accounts.sqlite".into(),
        Kind::Secret => "secret".into(),
        Kind::Keys => crate::accounts::oauth::KEYS_FILE.into(),
    })
}

/// Checks every file of `manifest` in the generation at `dir`: present, of its size and
/// SHA-256, at the path its kind allows. Returns every problem found (empty: sound).
pub fn verify(dir: &Path, manifest: &Manifest) -> Vec<String> {
    let bar = super::users::progress(manifest.files.len() as u64, "verifying");
    let mut problems = Vec::new();
    for f in &manifest.files {
        bar.inc(1);
        if expected_rel(f).as_deref() != Some(f.path.as_str()) || safe_rel(&f.path).is_none() {
            problems.push(format!("{}: not where a {:?} file goes", f.path, f.kind));
            continue;
        }
        match backup::digest_file(&dir.join(&f.path)) {
            Ok((sha, size)) if size != f.size => problems.push(format!(
                "{}: {size} bytes, the manifest says {} (sha256 {sha})",
                f.path, f.size
            )),
            Ok((sha, _)) if sha != f.sha256 => problems.push(format!(
                "{}: checksum {sha} does not match the manifest's {}",
                f.path, f.sha256
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", f.path)),
        }
    }
    bar.finish_and_clear();
    problems
}

/// Whether `dir` is missing or an empty directory.
fn is_empty_dir(dir: &Path) -> Result<bool, AdminError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(invalid(format!("{}: {e}", dir.display()))),
    }
}

/// What a restore did; `sound` is `check`'s verdict on the restored user files.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The report's text.
    pub text: String,
    /// Whether every restored user file and database passed the integrity check.
    pub sound: bool,
}

/// `restore SRC --data-dir DIR`: `src` is a backup destination (its `LATEST`
/// generation is restored) or one generation's directory.
pub fn restore(src: &Path, data_dir: &Path) -> Result<RestoreReport, AdminError> {
    let dir = backup::generation_dir(src)?;
    let manifest = backup::read_manifest(&dir)?;
    if !is_empty_dir(data_dir)? {
        return Err(invalid(format!(
            "{} is not empty: restore only into an empty (or new) data dir, with the \
             server stopped",
            data_dir.display()
        )));
    }
    if manifest.user_schema_version > crate::storage::userdbs::USER_SCHEMA_VERSION {
        return Err(invalid(format!(
            "the backup was taken by a newer syncstore ({}, user schema version {}); \
             this one knows up to {}: restore with that version",
            manifest.syncstore_version,
            manifest.user_schema_version,
            crate::storage::userdbs::USER_SCHEMA_VERSION
        )));
    }
    let problems = verify(&dir, &manifest);
    if !problems.is_empty() {
        let mut msg = format!(
            "refused: the backup {} is damaged, nothing was written:\n",
            dir.display()
        );
        for p in &problems {
            let _ = writeln!(msg, "  {p}");
        }
        return Err(invalid(msg.trim_end()));
    }

    crate::private::create_dir(data_dir)
        .map_err(|e| invalid(format!("cannot create {}: {e}", data_dir.display())))?;
    let bar = super::users::progress(manifest.files.len() as u64, "restoring");
    let (mut users, mut records, mut others) = (0usize, 0i64, Vec::new());
    for f in &manifest.files {
        let from = dir.join(&f.path);
        let bytes = std::fs::read(&from)
            .map_err(|e| invalid(format!("cannot read {}: {e}", from.display())))?;
        // Read again after the check: the bytes written are the bytes checked.
        if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != f.sha256 {
            return Err(invalid(format!("{}: changed while restoring", f.path)));
        }
        match (f.kind, f.uid) {
            (Kind::User, Some(uid)) => {
                let checked = files::install_user_file(data_dir, uid, &bytes)?;
                users += 1;
                records += checked.records;
            }
            _ => {
                let to = data_dir.join(&f.path);
                write_new(&to, &bytes)?;
                others.push(f.path.clone());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (mut check, mut sound) = super::users::check(data_dir)?;
    // The databases too: SQLite's integrity check of each restored one.
    for f in manifest
        .files
        .iter()
        .filter(|f| matches!(f.kind, Kind::Tokenserver | Kind::Accounts))
    {
        let path = data_dir.join(&f.path);
        let verdict = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)));
        match verdict {
            Ok(ok) if ok == "ok" => {
                let _ = writeln!(check, "checked {}: ok", f.path);
            }
            Ok(problem) => {
                sound = false;
                let _ = writeln!(check, "BAD {}: {problem}", f.path);
            }
            Err(e) => {
                sound = false;
                let _ = writeln!(check, "BAD {}: {e}", f.path);
            }
        }
    }
    let incomplete = if manifest.failed.is_empty() {
        ""
    } else {
        "INCOMPLETE "
    };
    let mut text = format!(
        "restored {incomplete}generation {} (taken by syncstore {}; every write acknowledged before {} \
         is in it) into {}: {users} users ({records} records)",
        manifest.generation,
        manifest.syncstore_version,
        manifest.consistent_to,
        data_dir.display()
    );
    if !others.is_empty() {
        let _ = write!(text, ", {}", others.join(", "));
    }
    text.push('\n');
    text.push_str(&check);
    for s in &manifest.skipped {
        let _ = writeln!(text, "not in the backup: {s}");
    }
    if manifest.secret_in_settings {
        let _ = writeln!(
            text,
            "the secret was set in the settings (secrets) when the backup was taken: \
             start the server with the same settings"
        );
    }
    for f in &manifest.failed {
        let _ = writeln!(
            text,
            "NOT RESTORED {}: the backup could not copy it ({}); an earlier generation may \
             have it",
            f.path, f.error
        );
    }
    Ok(RestoreReport { text, sound })
}

/// Writes a new owner-only file (its folder made owner-only too) and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        crate::private::create_dir(parent).map_err(invalid)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| invalid(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))
}

/// `restore SRC --user UID` into a running node: the user's copy in the backup
/// (checked against the manifest first) is sent to the node `node` over its internal
/// listener, signed with `secret`, where it is put in place by the path a live move's
/// target takes (`POST /__internal__/restore/{uid}`: the user's writes held, the file
/// checked and swapped, the open handle closed). Returns the report's text.
pub async fn restore_user(
    src: &Path,
    uid: u64,
    db: &crate::tokenserver::db::AssignmentDb,
    secret: &str,
    node: &str,
) -> Result<String, AdminError> {
    let dir = backup::generation_dir(src)?;
    let manifest = backup::read_manifest(&dir)?;
    let entry = manifest
        .files
        .iter()
        .find(|f| f.kind == Kind::User && f.uid == Some(uid))
        .ok_or_else(|| {
            invalid(format!(
                "user {uid} is not in generation {}",
                manifest.generation
            ))
        })?;
    if expected_rel(entry).as_deref() != Some(entry.path.as_str()) {
        return Err(invalid(format!(
            "{}: not where a user file goes",
            entry.path
        )));
    }
    let from = dir.join(&entry.path);
    let bytes = std::fs::read(&from)
        .map_err(|e| invalid(format!("cannot read {}: {e}", from.display())))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if bytes.len() as u64 != entry.size || sha != entry.sha256 {
        return Err(invalid(format!(
            "refused: {} does not match the manifest (size {}, sha256 {sha}; the \
             manifest says {} and {}): nothing was sent",
            entry.path,
            bytes.len(),
            entry.size,
            entry.sha256
        )));
    }
    let base = crate::cluster::internal_base(db, node)
        .await
        .map_err(invalid)?;
    let path = format!("/__internal__/restore/{uid}");
    let answer = crate::cluster::signed_post(secret, &base, node, &path, bytes)
        .await
        .map_err(AdminError::Invalid)?;
    let got: serde_json::Value = serde_json::from_slice(&answer).map_err(invalid)?;
    if got["sha256"] != entry.sha256.as_str() {
        return Err(invalid(format!("node {node}: the copy arrived damaged")));
    }
    Ok(format!(
        "user {uid}: restored on {node} from generation {} (its data as of {}; {} records); \
         its writes were held while the file was swapped",
        manifest.generation,
        backup::rfc3339(entry.copied_ms),
        got["records"]
    ))
}

/// The node whose data dir this is, for `restore --user`: `node` when given, else the
/// settings' `node_url` or `public_url`, else the only node the assignment database
/// lists.
pub fn this_node(
    settings: &crate::config::Settings,
    node: Option<&str>,
    db: &crate::tokenserver::db::AssignmentDb,
) -> Result<String, AdminError> {
    let configured = [node.unwrap_or(""), &settings.node_url, &settings.public_url]
        .into_iter()
        .find(|u| !u.is_empty());
    if let Some(url) = configured {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let nodes = db.transaction(|tx| crate::tokenserver::store::nodes(tx))?;
    match nodes.as_slice() {
        [only] => Ok(only.node.clone()),
        [] => Err(invalid(
            "the assignment database lists no node: is the server running here?",
        )),
        _ => Err(invalid(
            "the assignment database lists several nodes: name this one with --node URL",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_data_dir() {
        assert!(safe_rel("users/042/1042.sqlite").is_some());
        for bad in ["", "/etc/passwd", "../x", "users/../../x", "./secret"] {
            assert!(safe_rel(bad).is_none(), "{bad}");
        }
    }
}
