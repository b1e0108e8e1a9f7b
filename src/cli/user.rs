//! `syncstore user …`: export, import, delete, move or inspect one user's data.

use std::path::PathBuf;

use clap::Subcommand;

use syncstore::admin;

use super::{CliError, Common, live_moves, with_files};

/// `user` subcommands.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Write all of a user's data (every record, timestamps included) as JSON to stdout.
    Export {
        #[command(flatten)]
        common: Common,
        /// The user's numeric id.
        uid: u64,
    },
    /// Read an export (from FILE or stdin) back into a user's file; or install a copy
    /// of a user's SQLite file (a backup; needs --uid and, over an existing file,
    /// --replace), accepted only with exactly a known version's schema.
    Import {
        #[command(flatten)]
        common: Common,
        /// The export file (JSON) or a user's SQLite file; stdin when absent.
        file: Option<PathBuf>,
        /// Import as this user instead of the one named in the file.
        #[arg(long)]
        uid: Option<u64>,
        /// Remove everything the user has first (otherwise records are merged).
        #[arg(long)]
        replace: bool,
    },
    /// Delete all of a user's data and files.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The user's numeric id.
        uid: u64,
    },
    /// Move a user, live, to another storage node: data and timestamps go along, the
    /// client sees a few seconds of 503 and then a 401 that sends it to the new node.
    /// Needs a shared assignment database.
    Move {
        #[command(flatten)]
        common: Common,
        /// The user's numeric id.
        uid: u64,
        /// The target node's URL.
        #[arg(long)]
        to: String,
    },
    /// Show a user's collections, records and bytes.
    Stats {
        #[command(flatten)]
        common: Common,
        /// The user's numeric id.
        uid: u64,
    },
}

/// `user …`: one user's data.
pub fn user(cmd: UserCommand) -> Result<(), CliError> {
    use admin::users;
    match cmd {
        UserCommand::Export { common, uid } => with_files(&common, |dir| users::export(dir, uid)),
        UserCommand::Import {
            common,
            file,
            uid,
            replace,
        } => {
            let bytes = match &file {
                Some(path) => std::fs::read(path)
                    .map_err(CliError::io(format!("cannot read {}", path.display())))?,
                None => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .map_err(CliError::io("cannot read stdin"))?;
                    bytes
                }
            };
            if users::is_sqlite_file(&bytes) {
                return with_files(&common, |dir| users::import_file(dir, &bytes, uid, replace));
            }
            let json = String::from_utf8(bytes)
                .map_err(|_| CliError::Failed("not a user export: not UTF-8".into()))?;
            with_files(&common, |dir| users::import(dir, &json, uid, replace))
        }
        UserCommand::Delete { common, uid } => with_files(&common, |dir| users::delete(dir, uid)),
        UserCommand::Stats { common, uid } => {
            with_files(&common, |dir| users::user_stats(dir, uid))
        }
        UserCommand::Move { common, uid, to } => live_moves(&common, |db, secret| async move {
            let r = admin::moves::move_user(&db, &secret, uid, &to).await?;
            Ok(format!(
                "user {uid}: moved from {} to {} ({} records, {} bytes; writes held {} ms)",
                r.from, r.to, r.records, r.bytes, r.held_ms
            ))
        }),
    }
}
