//! `syncstore backup DEST` and `syncstore restore SRC`.

use std::path::PathBuf;

use clap::Args;

use syncstore::admin::backup::{self, DirDestination};
use syncstore::admin::restore;

use super::{CliError, Common, live_moves, load};

/// Flags of `backup`.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// The backup directory: each run adds a generation (DEST/<time>/, DEST/LATEST
    /// names the newest); users unchanged since the previous one are linked, not copied.
    /// It holds the secret and private keys: it must be owned by the user running the
    /// backup and writable by nobody else (a new one is made owner-only)
    dest: PathBuf,
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
    /// directory
    src: PathBuf,
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
    let mut dest = DirDestination::open(&args.dest)?;
    let opts = backup::BackupOptions {
        keep: args.keep,
        full: args.full,
        progress: true,
    };
    let report = backup::backup(&settings, &mut dest, &opts)?;
    println!(
        "{}",
        report.summary(&args.dest.display().to_string()).trim_end()
    );
    Ok(())
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
        let (src, node) = (args.src.clone(), args.node.clone());
        return live_moves(&args.common, move |db, secret| async move {
            let node = restore::this_node(&settings, node.as_deref(), &db)?;
            let data_dir = Some(settings.data_dir.as_path());
            restore::restore_user_with(&src, uid, &db, &secret, &node, data_dir, &opts).await
        });
    }
    let settings = load(&args.common)?;
    let report = restore::restore_with(&args.src, &settings.data_dir, &opts)?;
    println!("{}", report.text.trim_end());
    if report.sound {
        Ok(())
    } else {
        Err(CliError::Failed(
            "some restored user files are damaged (see above)".into(),
        ))
    }
}
