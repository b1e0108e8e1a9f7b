//! Maintenance commands over a node's files: `check`, `compact`, `stats`, and `health`
//! of a running server.

use clap::Args;

use syncstore::admin::users;
use syncstore::tokenserver::db::AssignmentDb;

use super::{CliError, Common, load, with_files};

/// Flags of `check`.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    common: Common,
}

/// Flags of `compact`.
#[derive(Args)]
pub struct CompactArgs {
    #[command(flatten)]
    common: Common,
    /// Share of free pages (0–1) from which a file is rebuilt.
    #[arg(long, default_value_t = 0.25)]
    threshold: f64,
}

/// Flags of `stats`.
#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    common: Common,
    /// How many of the largest users to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// Flags of `health`.
#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    common: Common,
    /// The server's base URL [default: http://<listen>]
    #[arg(long)]
    url: Option<String>,
}

/// `check`: SQLite's integrity check of every user file.
pub fn check(args: CheckArgs) -> Result<(), CliError> {
    let settings = load(&args.common)?;
    let (report, sound) = users::check(&settings.data_dir)?;
    print!("{report}");
    if sound {
        Ok(())
    } else {
        Err(CliError::Failed("some user files are damaged".into()))
    }
}

/// `compact`: rebuilds files with many free pages.
pub fn compact(args: CompactArgs) -> Result<(), CliError> {
    with_files(&args.common, |dir| users::compact(dir, args.threshold))
}

/// `stats`: the user files, and on a node with an assignment database, how many
/// files of users who left it wait for deletion.
pub fn stats(args: StatsArgs) -> Result<(), CliError> {
    let settings = load(&args.common)?;
    let mut out = users::stats(&settings.data_dir, args.top)?;
    let has_db = !settings.tokenserver_database_url.is_empty()
        || settings.data_dir.join("tokenserver.sqlite").exists();
    if has_db {
        let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)?;
        let here = [&settings.node_url, &settings.public_url]
            .into_iter()
            .find(|u| !u.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("http://{}", settings.listen));
        let here = here.trim_end_matches('/');
        out.push_str(&users::orphans_waiting(&settings.data_dir, &db, here)?);
    }
    println!("{}", out.trim_end());
    Ok(())
}

/// `health`: asks a running server's /__heartbeat__.
pub fn health(args: HealthArgs) -> Result<(), CliError> {
    let (settings, url) = (load(&args.common)?, args.url);
    let base = url.unwrap_or_else(|| {
        let listen = settings.listen.replace("0.0.0.0", "127.0.0.1");
        format!("http://{listen}")
    });
    let url = format!("{}/__heartbeat__", base.trim_end_matches('/'));
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("cannot start a runtime"))?
        .block_on(async {
            let r = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await?;
            Ok::<_, reqwest::Error>((r.status(), r.text().await?))
        })
        .map_err(|e| CliError::Failed(format!("{url}: {e}")))?;
    println!("{}", answer.1.trim_end());
    if answer.0.is_success() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("{url}: {}", answer.0)))
    }
}
