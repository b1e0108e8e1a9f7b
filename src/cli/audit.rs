//! `syncstore audit`: the audit log of rollout and node changes (who changed what,
//! when, through the CLI, the console or the canary guard), newest first.

use clap::Args;

use syncstore::admin;

use super::{CliError, Common, load};
use syncstore::tokenserver::db::AssignmentDb;

/// Flags of `audit`.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    common: Common,
    /// How many rows, newest first (at most 10000).
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// One JSON array of rows ({id, at, via, who, action, target, detail}; `at` in
    /// Unix milliseconds) instead of a table.
    #[arg(long)]
    json: bool,
}

/// `audit [--limit N] [--json]`.
pub fn audit(args: AuditArgs) -> Result<(), CliError> {
    let settings = load(&args.common)?;
    let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)?;
    let rows = admin::audit_log(&db, args.limit)?;
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", admin::audit_text(&rows));
    }
    Ok(())
}
