//! `syncstore rollout …` and `signups`: which new users a node takes, and whether new
//! users are taken at all.

use clap::{Args, Subcommand};

use syncstore::admin::{self, Actor};
use syncstore::tokenserver::store::ListKind;

use super::{CliError, Common, with_assignments};

/// `rollout` subcommands.
#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Send PERCENT of new users (by a stable hash of their FxA uid) to the node;
    /// raising it later keeps the users already chosen. 100 makes it a general node.
    Set {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// Share of new users, 0–100 (decimals allowed).
        percent: String,
    },
    /// Always send these users (FxA uids or emails) to the node.
    Allow {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// FxA uids or emails.
        #[arg(required = true)]
        who: Vec<String>,
    },
    /// Never send these users to the node.
    Deny {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// FxA uids or emails.
        #[arg(required = true)]
        who: Vec<String>,
    },
    /// Take these users off the node's allow- and deny-lists.
    Unlist {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// FxA uids or emails.
        #[arg(required = true)]
        who: Vec<String>,
    },
    /// Let a node the canary guard paused take new users again (clears the pause and
    /// the guard's suspicion; audited).
    Resume {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
    },
    /// Show every node's share, the lists, and whether sign-ups are open.
    Show {
        #[command(flatten)]
        common: Common,
    },
}

/// Flags of `signups`.
#[derive(Args)]
pub struct SignupsArgs {
    #[command(flatten)]
    common: Common,
    /// `open` or `close`.
    #[arg(value_parser = ["open", "close"])]
    state: String,
}

/// `rollout …`: which new users go to which node.
pub fn rollout(cmd: RolloutCommand) -> Result<(), CliError> {
    match cmd {
        RolloutCommand::Set {
            common,
            url,
            percent,
        } => {
            let bp = admin::percent_to_bp(&percent)?;
            with_assignments(&common, |db| {
                admin::rollout_set(db, &Actor::cli(), &url, bp)
            })
        }
        RolloutCommand::Allow { common, url, who } => with_assignments(&common, |db| {
            admin::rollout_list(db, &Actor::cli(), &url, Some(ListKind::Allow), &who)
        }),
        RolloutCommand::Deny { common, url, who } => with_assignments(&common, |db| {
            admin::rollout_list(db, &Actor::cli(), &url, Some(ListKind::Deny), &who)
        }),
        RolloutCommand::Unlist { common, url, who } => with_assignments(&common, |db| {
            admin::rollout_list(db, &Actor::cli(), &url, None, &who)
        }),
        RolloutCommand::Resume { common, url } => {
            with_assignments(&common, |db| admin::rollout_resume(db, &Actor::cli(), &url))
        }
        RolloutCommand::Show { common } => with_assignments(&common, admin::rollout_show),
    }
}

/// `signups open|close`.
pub fn signups(args: SignupsArgs) -> Result<(), CliError> {
    let open = args.state == "open";
    with_assignments(&args.common, |db| admin::signups(db, &Actor::cli(), open))
}
