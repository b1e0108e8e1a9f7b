//! `syncstore node …`: add, list, change, drain and remove storage nodes.

use clap::Subcommand;

use syncstore::admin::{self, Actor, moves::DrainStep};
use syncstore::tokenserver::store::NodeChange;

use super::{CliError, Common, live_moves, with_assignments};

/// `node` subcommands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add a node.
    Add {
        #[command(flatten)]
        common: Common,
        /// The node's base URL, e.g. https://sync2.example.com
        url: String,
        /// Most users the node should hold.
        #[arg(long, default_value_t = 100_000)]
        capacity: i64,
    },
    /// List nodes with capacity, load, available slots, rollout share, their last
    /// minute as they reported it (requests, 5xx rate, p99) and state (up, down,
    /// draining, paused by the canary guard; stale when a node stopped reporting).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Change a node's settings.
    Set {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// Most users the node should hold.
        #[arg(long)]
        capacity: Option<i64>,
        /// New users the node may still take.
        #[arg(long)]
        available: Option<i64>,
        /// Seconds clients should back off.
        #[arg(long)]
        backoff: Option<i64>,
        /// Mark the node down (true) or up (false).
        #[arg(long)]
        downed: Option<bool>,
        /// Start (true) or stop (false) draining.
        #[arg(long)]
        draining: Option<bool>,
    },
    /// Mark a node down: its users get a new node on their next token request.
    Down {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
    },
    /// Drain a node: no new users, and its users move on their next token request
    /// (with a new uid: clients upload again). With --live, every user is moved now,
    /// data included, with progress; run again to resume.
    Drain {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
        /// Move each user's data to another node now (live moves).
        #[arg(long)]
        live: bool,
        /// With --live: the node to move everyone to [default: the serving node with
        /// the most free capacity, for each user]
        #[arg(long, requires = "live")]
        to: Option<String>,
    },
    /// Remove a node: its users get a new node on their next token request.
    Remove {
        #[command(flatten)]
        common: Common,
        /// The node's URL.
        url: String,
    },
}

/// `node …`: the storage nodes in the assignment database.
pub fn node(cmd: NodeCommand) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Add {
            common,
            url,
            capacity,
        } => with_assignments(&common, |db| {
            admin::node_add(db, &Actor::cli(), &url, capacity)
        }),
        NodeCommand::List { common } => with_assignments(&common, admin::node_list),
        NodeCommand::Set {
            common,
            url,
            capacity,
            available,
            backoff,
            downed,
            draining,
        } => {
            let change = NodeChange {
                capacity,
                available,
                backoff,
                downed,
                draining,
                percent_bp: None,
            };
            with_assignments(&common, |db| {
                admin::node_set(db, &Actor::cli(), &url, &change)
            })
        }
        NodeCommand::Down { common, url } => {
            let change = NodeChange {
                downed: Some(true),
                ..Default::default()
            };
            with_assignments(&common, |db| {
                admin::node_set(db, &Actor::cli(), &url, &change)
            })
        }
        NodeCommand::Drain {
            common,
            url,
            live: true,
            to,
        } => live_moves(&common, |db, secret| async move {
            let bar = admin::users::progress(0, "moving");
            let shown = |step: &DrainStep| {
                let d = &step.drain;
                bar.set_length(d.total.max(0) as u64);
                bar.set_position((d.moved + d.failed).max(0) as u64);
                if let Some((uid, e)) = &step.failure {
                    bar.suspend(|| eprintln!("user {uid}: {e}"));
                }
            };
            let done =
                admin::moves::drain(&db, &Actor::cli(), &secret, &url, to.as_deref(), &shown).await;
            bar.finish_and_clear();
            done
        }),
        NodeCommand::Drain { common, url, .. } => {
            let change = NodeChange {
                draining: Some(true),
                ..Default::default()
            };
            with_assignments(&common, |db| {
                admin::node_set(db, &Actor::cli(), &url, &change)
            })
        }
        NodeCommand::Remove { common, url } => {
            with_assignments(&common, |db| admin::node_remove(db, &Actor::cli(), &url))
        }
    }
}
