//! The `syncstore` command line: flags, and one file per command group, each with the
//! flags it reads beside the code that uses them. `main.rs` only parses, dispatches
//! through [`run`] and prints the error.

mod account;
mod audit;
mod backup;
mod import;
mod maintenance;
mod memory;
mod node;
mod rollout;
mod serve;
mod token;
mod user;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use syncstore::ServerError;
use syncstore::admin::AdminError;
use syncstore::config::{ConfigError, Settings};
use syncstore::tokenserver::db::{AssignmentDb, DbError};

pub use memory::configure as configure_memory;

/// A Firefox Sync storage server that keeps each user's data in their own SQLite file.
///
/// Settings come from defaults, then the TOML file given by --config, then
/// SYNCSTORE_* environment variables (e.g. SYNCSTORE_SECRETS, SYNCSTORE_MAX_POST_RECORDS),
/// then the flags below.
#[derive(Parser)]
#[command(name = "syncstore", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SYNCSTORE_COMMIT"), ")"))]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the storage node (Sync storage API 1.5) and the tokenserver
    /// (/1.0/sync/1.5), or one of them with --role.
    Serve(serve::ServeArgs),
    /// Print a token as a tokenserver would hand it out, signed with the configured
    /// (or generated) secret: for testing and for operators.
    Token(token::TokenArgs),
    /// Manage the storage nodes users are assigned to.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Roll a node out to a subset of new users (percentage, allow- and deny-lists).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Export, import, delete or inspect one user's data.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Check every user file with SQLite's integrity check (in parallel); exits
    /// non-zero and names the bad files if any.
    Check(maintenance::CheckArgs),
    /// Rebuild (VACUUM) user files with many free pages, giving the space back.
    Compact(maintenance::CompactArgs),
    /// Users, records and bytes stored, and the largest users.
    Stats(maintenance::StatsArgs),
    /// Copy users from a Mozilla storage server's database into per-user files:
    /// server-syncstorage (Python) on SQLite or MySQL, or syncstorage-rs on PostgreSQL or
    /// MySQL/MariaDB. Resumable: users already present here are skipped (--replace
    /// replaces their data with the source's, for the final copy after a trial run).
    ImportLegacy(import::ImportLegacyArgs),
    /// Ask a running server's /__heartbeat__ whether it is healthy (exit 0) or not
    /// (exit 1): for container health checks and monitoring scripts.
    Health(maintenance::HealthArgs),
    /// Manage the built-in accounts service's accounts and signing key.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Open or close sign-ups of new users.
    Signups(rollout::SignupsArgs),
    /// Print the audit log: every rollout, node and sign-up change (and the canary
    /// guard's pauses), newest first, with when, through what (cli, console, guard)
    /// and who.
    Audit(audit::AuditArgs),
    /// Copy everything that cannot be made again (user files, the assignment and
    /// accounts databases, the secret and signing keys) into DEST while the server
    /// runs, with a manifest; a second run copies only the users who changed.
    Backup(backup::BackupArgs),
    /// Put a backup back into an empty data dir (checksums checked first), then check
    /// every file; or, with --user, one user into the running server.
    Restore(backup::RestoreArgs),
}

/// Runs the command the flags name.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Token(args) => token::token(args),
        Command::Node(cmd) => node::node(cmd),
        Command::Rollout(cmd) => rollout::rollout(cmd),
        Command::Signups(args) => rollout::signups(args),
        Command::Audit(args) => audit::audit(args),
        Command::Account(cmd) => account::account(cmd),
        Command::User(cmd) => user::user(cmd),
        Command::Health(args) => maintenance::health(args),
        Command::ImportLegacy(args) => import::import_legacy(args),
        Command::Check(args) => maintenance::check(args),
        Command::Compact(args) => maintenance::compact(args),
        Command::Stats(args) => maintenance::stats(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
    }
}

/// Why a command failed; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The settings could not be loaded, or the secret file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not start or stopped with an error.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// An operator command failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// An account command failed.
    #[error(transparent)]
    Account(#[from] syncstore::admin::accounts::AccountAdminError),
    /// The assignment database could not be opened.
    #[error("cannot open the assignment database: {0}")]
    Assignments(#[from] DbError),
    /// A file, socket or runtime could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A check ran and its answer is "no" (an unhealthy server, damaged files), or the
    /// input is not what the command takes.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// An I/O error with what was being done.
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }
}

/// Flags every command takes: where the settings and the data are.
#[derive(Args)]
pub struct Common {
    /// TOML settings file (every key can also be set as SYNCSTORE_<KEY>).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for user files and the generated secret [env: SYNCSTORE_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// The settings: defaults < TOML file < environment < `--data-dir`.
fn load(common: &Common) -> Result<Settings, CliError> {
    let mut settings = Settings::load(common.config.as_deref())?;
    if let Some(dir) = &common.data_dir {
        settings.data_dir = dir.clone();
    }
    Ok(settings)
}

/// Runs an admin command over the assignment database and prints what it returns.
fn with_assignments(
    common: &Common,
    f: impl FnOnce(&AssignmentDb) -> Result<String, AdminError>,
) -> Result<(), CliError> {
    let settings = load(common)?;
    let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)?;
    let out = f(&db)?;
    println!("{}", out.trim_end());
    Ok(())
}

/// Runs an admin command over the data dir's user files and prints what it returns.
fn with_files(
    common: &Common,
    f: impl FnOnce(&std::path::Path) -> Result<String, AdminError>,
) -> Result<(), CliError> {
    let settings = load(common)?;
    let out = f(&settings.data_dir)?;
    println!("{}", out.trim_end());
    Ok(())
}

/// Runs a live-move command: opens the assignment database, finds the signing secret.
fn live_moves<F, Fut>(common: &Common, f: F) -> Result<(), CliError>
where
    F: FnOnce(AssignmentDb, String) -> Fut,
    Fut: std::future::Future<Output = Result<String, AdminError>>,
{
    let mut settings = load(common)?;
    settings.ensure_secret()?;
    let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)?;
    let secret = settings.secrets[0].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("cannot start a runtime"))?;
    let out = rt.block_on(f(db.clone(), secret));
    drop(rt);
    println!("{}", out?.trim_end());
    Ok(())
}
