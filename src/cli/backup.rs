//! `syncstore backup DEST` and `syncstore restore SRC`.

use std::path::PathBuf;

use clap::Args;

use syncstore::admin::backup::{self, BackupTarget};
use syncstore::admin::restore;
use syncstore::config::Settings;

use super::{CliError, Common, live_moves, load};

/// Flags of `backup`.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// The backup directory, or s3://bucket/prefix (S3-compatible storage, reached
    /// with the backup_s3_* settings or the AWS_* variables): each run adds a
    /// generation (DEST/<time>/, DEST/LATEST names the newest); users unchanged since
    /// the previous one are linked (in S3: referenced), not copied. It holds the secret
    /// and private keys: a directory must be owned by the user running the backup and
    /// writable by nobody else (a new one is made owner-only)
    dest: String,
    /// How many generations to keep (older ones are removed after a successful run)
    #[arg(long, default_value_t = backup::DEFAULT_KEEP)]
    keep: usize,
    /// Copy every user, changed or not (after changing user files by other means than
    /// the server, e.g. `user import` of older data, which an incremental run may miss)
    #[arg(long)]
    full: bool,
}

/// Flags of `restore`.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    common: Common,
    /// The backup directory (its latest generation is restored) or one generation's
    /// directory; or s3://bucket/prefix (its latest generation), or
    /// s3://bucket/prefix/<generation>
    src: String,
    /// Restore only this user, into the running server of this data dir, as a live
    /// move installs a user: its writes held, the file checked and swapped. Needs the
    /// server's internal listener (internal_listen)
    #[arg(long, value_name = "UID")]
    user: Option<u64>,
    /// With --user: the node's URL, when the settings (node_url, public_url) do not
    /// give it and the assignment database lists several nodes
    #[arg(long, value_name = "URL", requires = "user")]
    node: Option<String>,
    /// Leave each user's meta/global as the backup has it. By default every restored
    /// user gets a new syncID in meta/global, so that each Firefox merges its data with
    /// the server on its next sync and uploads what it synced after the backup (without
    /// it, Firefox does not notice the restore and that data stays missing)
    #[arg(long)]
    no_resync: bool,
    /// With --user: restore even when the live user's data is newer than the backup's
    /// copy (the writes since are discarded; Firefox re-uploads what it still has)
    #[arg(long, requires = "user")]
    discard_newer: bool,
    /// With --user: restore even a uid the assignment database lists as replaced
    /// (retired), never issued or assigned to no node
    #[arg(long, requires = "user")]
    force: bool,
}

/// `backup DEST [--keep N]`.
pub fn backup(args: BackupArgs) -> Result<(), CliError> {
    let settings = load(&args.common)?;
    let target = BackupTarget::from_arg(&args.dest).map_err(CliError::Failed)?;
    let mut dest = target.open(&settings)?;
    let opts = backup::BackupOptions {
        keep: args.keep,
        full: args.full,
        progress: true,
        threads: 0,
    };
    let report = backup::backup(&settings, &mut *dest, &opts)?;
    println!("{}", report.summary(&target.to_string()).trim_end());
    Ok(())
}

/// A local directory to restore from: `src` itself, or a generation of an S3 backup
/// downloaded to a temporary directory (removed when this is dropped).
struct Source {
    dir: PathBuf,
    temp: Option<PathBuf>,
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

/// `src` as a local directory; for `s3://…`, its generation downloaded (with `user`,
/// only that user's file beside the manifest).
fn source(src: &str, user: Option<u64>, settings: &Settings) -> Result<Source, CliError> {
    let Some(rest) = src.strip_prefix("s3://") else {
        return Ok(Source {
            dir: PathBuf::from(src),
            temp: None,
        });
    };
    // s3://bucket/prefix/<generation> names one generation.
    let rest = rest.trim_end_matches('/');
    let (url, generation) = match rest.rsplit_once('/') {
        Some((head, last)) if backup::is_generation_name(last) => {
            (format!("s3://{head}"), Some(last))
        }
        _ => (format!("s3://{rest}"), None),
    };
    let BackupTarget::S3 { bucket, prefix } =
        BackupTarget::parse(&url).map_err(CliError::Failed)?
    else {
        unreachable!("an s3:// URL");
    };
    let temp = std::env::temp_dir().join(format!(
        "syncstore-restore-{}-{}",
        std::process::id(),
        backup::now_ms()
    ));
    let source = Source {
        dir: temp.join("generation"),
        temp: Some(temp.clone()),
    };
    syncstore::private::create_dir(&temp)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", temp.display())))?;
    let opts = backup::s3::S3Options::from_settings(settings);
    let name = backup::s3::download(&bucket, &prefix, generation, user, &opts, &source.dir)?;
    eprintln!("downloaded generation {name} of {url}");
    Ok(source)
}

/// `restore SRC --data-dir DIR`, or `restore SRC --user UID [--node URL]`.
pub fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let opts = restore::RestoreOptions {
        resync: !args.no_resync,
        discard_newer: args.discard_newer,
        force: args.force,
    };
    if let Some(uid) = args.user {
        let settings = load(&args.common)?;
        let source = source(&args.src, Some(uid), &settings)?;
        let (src, node) = (source.dir.clone(), args.node.clone());
        let done = live_moves(&args.common, move |db, secret| async move {
            let node = restore::this_node(&settings, node.as_deref(), &db)?;
            let data_dir = Some(settings.data_dir.as_path());
            restore::restore_user_with(&src, uid, &db, &secret, &node, data_dir, &opts).await
        });
        drop(source);
        return done;
    }
    let settings = load(&args.common)?;
    let source = source(&args.src, None, &settings)?;
    let report = restore::restore_with(&source.dir, &settings.data_dir, &opts)?;
    println!("{}", report.text.trim_end());
    if report.sound {
        Ok(())
    } else {
        Err(CliError::Failed(
            "some restored user files are damaged (see above)".into(),
        ))
    }
}
