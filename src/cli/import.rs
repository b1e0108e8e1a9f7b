//! `syncstore import-legacy`: users from a Mozilla storage server's database.

use clap::Args;

use syncstore::admin::users;

use super::{CliError, Common, with_files};

/// Flags of `import-legacy`.
#[derive(Args)]
pub struct ImportLegacyArgs {
    #[command(flatten)]
    common: Common,
    /// sqlite:///path/to/syncstorage.db (server-syncstorage), mysql://user:pass@host/db
    /// (server-syncstorage or syncstorage-rs) or postgres://user:pass@host/db
    /// (syncstorage-rs). Or in the environment, so the password is not on the command
    /// line (visible in `ps`)
    #[arg(
        long,
        value_name = "URL",
        env = "SYNCSTORE_IMPORT_FROM",
        hide_env_values = true
    )]
    from: String,
    /// Read and check every user as an import would, write nothing
    #[arg(long)]
    dry_run: bool,
    /// Only these users (comma-separated uids), e.g. to try a few before the rest
    #[arg(long, value_name = "UID,...", value_delimiter = ',')]
    users: Option<Vec<u64>>,
    /// Re-import users who already have data here, replacing their data with the
    /// source's: for the final copy after a trial run, before clients sync to this node
    #[arg(long)]
    replace: bool,
    /// The most bytes of record ids and payloads to read for one user: a larger user
    /// fails (named, with its size) and the import goes on
    #[arg(long, value_name = "BYTES", default_value_t = users::DEFAULT_MAX_USER_BYTES)]
    max_user_bytes: u64,
}

/// `import-legacy --from URL [--dry-run] [--users UID,...] [--replace] [--max-user-bytes N]`.
pub fn import_legacy(args: ImportLegacyArgs) -> Result<(), CliError> {
    let opts = users::LegacyImport {
        dry_run: args.dry_run,
        users: args.users,
        replace: args.replace,
        max_user_bytes: args.max_user_bytes,
    };
    with_files(&args.common, |dir| {
        users::import_legacy(dir, &args.from, &opts)
    })
}
