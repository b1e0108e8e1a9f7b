//! `syncstore import-legacy`: users from a Mozilla storage server's database.

use clap::Args;

use syncstore::admin::users;

use super::{CliError, Common, with_files};

/// Flags of `import-legacy`.
#[derive(Args)]
pub struct ImportLegacyArgs {
    #[command(flatten)]
    common: Common,
    /// sqlite:///path/to/syncstorage.db or postgres://user:pass@host/db
    #[arg(long, value_name = "URL")]
    from: String,
}

/// `import-legacy --from URL`.
pub fn import_legacy(args: ImportLegacyArgs) -> Result<(), CliError> {
    with_files(&args.common, |dir| users::import_legacy(dir, &args.from))
}
