//! `syncstore rollout …` and `signups`: which new users a node takes, and whether new
//! users are taken at all.

use clap::{Args, Subcommand};

use syncstore::admin;
use syncstore::tokenserver::store::{ListKind, NodeChange};

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
            let change = NodeChange {
                percent_bp: Some(bp),
                ..Default::default()
            };
            with_assignments(&common, |db| admin::node_set(db, &url, &change))
        }
        RolloutCommand::Allow { common, url, who } => with_assignments(&common, |db| {
            admin::rollout_list(db, &url, Some(ListKind::Allow), &who)
        }),
        RolloutCommand::Deny { common, url, who } => with_assignments(&common, |db| {
            admin::rollout_list(db, &url, Some(ListKind::Deny), &who)
        }),
        RolloutCommand::Unlist { common, url, who } => {
            with_assignments(&common, |db| admin::rollout_list(db, &url, None, &who))
        }
        RolloutCommand::Show { common } => with_assignments(&common, admin::rollout_show),
    }
}

/// `signups open|close`.
pub fn signups(args: SignupsArgs) -> Result<(), CliError> {
    let open = args.state == "open";
    with_assignments(&args.common, |db| admin::signups(db, open))
}
