//! `syncstore backup DEST` and `syncstore restore SRC`.

use std::path::PathBuf;

use clap::Args;

use syncstore::admin::backup::{self, DirDestination};
use syncstore::admin::restore;

use super::{CliError, Common, load};

/// Flags of `backup`.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// The backup directory: each run adds a generation (DEST/<time>/, DEST/LATEST
    /// names the newest); users unchanged since the previous one are linked, not copied
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

/// `restore SRC --data-dir DIR`.
pub fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let settings = load(&args.common)?;
    let report = restore::restore(&args.src, &settings.data_dir)?;
    println!("{}", report.text.trim_end());
    if report.sound {
        Ok(())
    } else {
        Err(CliError::Failed(
            "some restored user files are damaged (see above)".into(),
        ))
    }
}
