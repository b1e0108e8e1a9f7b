//! `syncstore account …`: the built-in accounts service's accounts and signing key.

use clap::Subcommand;

use syncstore::accounts::store::Store;
use syncstore::admin::Actor;
use syncstore::admin::accounts as acc;
use syncstore::tokenserver::db::AssignmentDb;

use super::{CliError, Common, load};

/// `account` subcommands.
#[derive(Subcommand)]
pub enum AccountCommand {
    /// Add an account; the password is read without echo (or from stdin) and
    /// stretched here as a Firefox Accounts client does.
    Add {
        #[command(flatten)]
        common: Common,
        /// The account's email (its case matters: it salts the password).
        email: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Disable an account (its sessions and tokens are revoked).
    Disable {
        #[command(flatten)]
        common: Common,
        /// The account's email.
        email: String,
    },
    /// Enable a disabled account.
    Enable {
        #[command(flatten)]
        common: Common,
        /// The account's email.
        email: String,
    },
    /// Delete an account.
    Delete {
        #[command(flatten)]
        common: Common,
        /// The account's email.
        email: String,
    },
    /// Set a new password (the account gets new keys: Sync starts over).
    ResetPassword {
        #[command(flatten)]
        common: Common,
        /// The account's email.
        email: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a single-use invite code (for the `invite` sign-up policy); it is printed
    /// once, only its hash is stored.
    Invite {
        #[command(flatten)]
        common: Common,
        /// How long the code works: a number with m, h or d (at most a year).
        #[arg(long, default_value = "7d")]
        valid_for: String,
    },
    /// List the invite codes (created, expires, used, used by).
    Invites {
        #[command(flatten)]
        common: Common,
    },
    /// Add a new OAuth signing key (the old one stays published until its tokens
    /// expire); restart the server to use it.
    RotateKey {
        #[command(flatten)]
        common: Common,
    },
}

/// Reads a password: the first line of stdin, or from the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String, CliError> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(CliError::io("cannot read stdin"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let prompt = |p: &str| rpassword::prompt_password(p).map_err(CliError::io("no terminal"));
        let first = prompt("Password: ")?;
        if first != prompt("Again: ")? {
            return Err(CliError::Failed("the passwords differ".into()));
        }
        first
    };
    if password.len() < 8 {
        return Err(CliError::Failed(
            "the password must have at least 8 characters".into(),
        ));
    }
    Ok(password)
}

/// Runs an account command over the accounts database (the data dir's, or the
/// tokenserver's PostgreSQL database when configured) and prints what it returns.
fn with_accounts(
    common: &Common,
    f: impl FnOnce(&std::path::Path, &Store) -> Result<String, acc::AccountAdminError>,
) -> Result<(), CliError> {
    let settings = load(common)?;
    let store = Store::open(&settings.data_dir, &settings.tokenserver_database_url)
        .map_err(acc::AccountAdminError::from)?;
    let out = f(&settings.data_dir, &store)?;
    println!("{}", out.trim_end());
    Ok(())
}

/// `account …`.
pub fn account(cmd: AccountCommand) -> Result<(), CliError> {
    match cmd {
        AccountCommand::Add {
            common,
            email,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            with_accounts(&common, |_, store| acc::add(store, &email, &password))
        }
        AccountCommand::List { common } => with_accounts(&common, |_, store| acc::list(store)),
        AccountCommand::Disable { common, email } => {
            with_accounts(&common, |_, store| acc::set_disabled(store, &email, true))
        }
        AccountCommand::Enable { common, email } => {
            with_accounts(&common, |_, store| acc::set_disabled(store, &email, false))
        }
        AccountCommand::Delete { common, email } => {
            with_accounts(&common, |_, store| acc::delete(store, &email))
        }
        AccountCommand::ResetPassword {
            common,
            email,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            with_accounts(&common, |_, store| {
                acc::reset_password(store, &email, &password)
            })
        }
        AccountCommand::Invite { common, valid_for } => {
            let ms = acc::parse_valid_for(&valid_for).ok_or_else(|| {
                CliError::Failed(format!(
                    "--valid-for {valid_for}: expected e.g. 30m, 12h or 7d (at most a year)"
                ))
            })?;
            let settings = load(&common)?;
            let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)?;
            with_accounts(&common, |_, store| {
                acc::invite(store, &db, &Actor::cli(), ms)
            })
        }
        AccountCommand::Invites { common } => {
            with_accounts(&common, |_, store| acc::invites(store))
        }
        AccountCommand::RotateKey { common } => with_accounts(&common, acc::rotate_key),
    }
}
