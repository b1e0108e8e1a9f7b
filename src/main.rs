//! The `syncstore` command: parses flags and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use syncstore::admin::{self, AdminError};
use syncstore::auth::token::{TokenPayload, make_token, new_salt};
use syncstore::config::Settings;
use syncstore::tokenserver::db::AssignmentDb;
use syncstore::tokenserver::store::{ListKind, NodeChange};

/// A Firefox Sync storage server that keeps each user's data in their own SQLite file.
///
/// Settings come from defaults, then the TOML file given by --config, then
/// SYNCSTORE_* environment variables (e.g. SYNCSTORE_SECRETS, SYNCSTORE_MAX_POST_RECORDS),
/// then the flags below.
#[derive(Parser)]
#[command(name = "syncstore", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SYNCSTORE_COMMIT"), ")"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the storage node (Sync storage API 1.5) and the tokenserver
    /// (/1.0/sync/1.5), or one of them with --role.
    Serve(ServeArgs),
    /// Print a token as a tokenserver would hand it out, signed with the configured
    /// (or generated) secret: for testing and for operators.
    Token(TokenArgs),
    /// Manage the storage nodes users are assigned to.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Roll a node out to a subset of new users (percentage, allow- and deny-lists).
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Export, import, delete or inspect one user's data.
    #[command(subcommand)]
    User(UserCommand),
    /// Check every user file with SQLite's integrity check (in parallel); exits
    /// non-zero and names the bad files if any.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Rebuild (VACUUM) user files with many free pages, giving the space back.
    Compact {
        #[command(flatten)]
        common: Common,
        /// Share of free pages (0–1) from which a file is rebuilt.
        #[arg(long, default_value_t = 0.25)]
        threshold: f64,
    },
    /// Users, records and bytes stored, and the largest users.
    Stats {
        #[command(flatten)]
        common: Common,
        /// How many of the largest users to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Copy users from a Mozilla storage server's database into per-user files:
    /// server-syncstorage (Python) on SQLite, or syncstorage-rs on PostgreSQL. Resumable:
    /// users already present here are skipped.
    ImportLegacy {
        #[command(flatten)]
        common: Common,
        /// sqlite:///path/to/syncstorage.db or postgres://user:pass@host/db
        #[arg(long, value_name = "URL")]
        from: String,
    },
    /// Ask a running server's /__heartbeat__ whether it is healthy (exit 0) or not
    /// (exit 1): for container health checks and monitoring scripts.
    Health {
        #[command(flatten)]
        common: Common,
        /// The server's base URL [default: http://<listen>]
        #[arg(long)]
        url: Option<String>,
    },
    /// Manage the built-in accounts service's accounts and signing key.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Open or close sign-ups of new users.
    Signups {
        #[command(flatten)]
        common: Common,
        /// `open` or `close`.
        #[arg(value_parser = ["open", "close"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
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
    /// List nodes with capacity, load, available slots, rollout share and state.
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

#[derive(Subcommand)]
enum AccountCommand {
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
    /// Add a new OAuth signing key (the old one stays published until its tokens
    /// expire); restart the server to use it.
    RotateKey {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum UserCommand {
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

#[derive(Subcommand)]
enum RolloutCommand {
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

#[derive(Args)]
struct Common {
    /// TOML settings file (every key can also be set as SYNCSTORE_<KEY>).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for user files and the generated secret [env: SYNCSTORE_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on [env: SYNCSTORE_LISTEN] [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// What to serve: all (storage node and tokenserver), storage, or tokenserver
    /// [env: SYNCSTORE_ROLE] [default: all]
    #[arg(long, value_parser = ["all", "storage", "tokenserver"])]
    role: Option<String>,
    /// Log format: text (for people) or json (one object a line, for log pipelines)
    /// [env: SYNCSTORE_LOG_FORMAT] [default: text]
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    common: Common,
    /// The user's numeric id.
    #[arg(long)]
    uid: u64,
    /// The storage node's base URL [default: public_url, else http://<listen>]
    #[arg(long, value_name = "URL")]
    node: Option<String>,
    /// Token lifetime in seconds [default: token_duration_secs, 3600]
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

/// mimalloc: less time in malloc and less memory lost to fragmentation across the
/// many threads that serve users' files.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn load(common: &Common) -> Result<Settings, String> {
    let mut settings = Settings::load(common.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(dir) = &common.data_dir {
        settings.data_dir = dir.clone();
    }
    Ok(settings)
}

/// Logs go to stderr, filtered by RUST_LOG (default `info`: one line per request).
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = load(&args.common)?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(role) = args.role {
        settings.role = role;
    }
    if let Some(format) = args.log_format {
        settings.log_format = format;
    }
    init_logging(&settings.log_format);
    ignore_file_size_signal();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(settings.max_blocking_threads)
        .build()
        .map_err(|e| e.to_string())?
        .block_on(serve_on(settings))
}

/// A write past a file size limit (RLIMIT_FSIZE) must fail that one write with an
/// error (SQLite reports "disk full"), not kill the process and every user with it.
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to run and no
    // memory effects; it is done once, before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

async fn serve_on(settings: Settings) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    syncstore::run(settings, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn token(args: TokenArgs) -> Result<(), String> {
    let mut settings = load(&args.common)?;
    if let Some(path) = settings.ensure_secret().map_err(|e| e.to_string())? {
        eprintln!("generated a new master secret in {}", path.display());
    }
    let node = args.node.unwrap_or_else(|| {
        if settings.public_url.is_empty() {
            format!("http://{}", settings.listen)
        } else {
            settings.public_url.clone()
        }
    });
    let node = node.trim_end_matches('/').to_string();
    let duration = args.duration.unwrap_or(settings.token_duration_secs);
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs_f64()
        + duration as f64;
    let payload = TokenPayload {
        uid: args.uid,
        node: node.clone(),
        expires,
        salt: new_salt(),
        fxa_uid: None,
        fxa_kid: None,
        hashed_fxa_uid: None,
        hashed_device_id: None,
    };
    let (id, key) = make_token(&settings.secrets[0], &payload);
    let out = json!({
        "id": id,
        "key": key,
        "uid": args.uid,
        "api_endpoint": format!("{node}/1.5/{}", args.uid),
        "duration": duration,
        "hashalg": "sha256",
    });
    println!("{out}");
    Ok(())
}

fn admin(
    common: &Common,
    f: impl FnOnce(&AssignmentDb) -> Result<String, AdminError>,
) -> Result<(), String> {
    let settings = load(common)?;
    let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)
        .map_err(|e| format!("cannot open the assignment database: {e}"))?;
    let out = f(&db).map_err(|e| e.to_string())?;
    println!("{}", out.trim_end());
    Ok(())
}

fn health(common: &Common, url: Option<String>) -> Result<(), String> {
    let settings = load(common)?;
    let base = url.unwrap_or_else(|| {
        let listen = settings.listen.replace("0.0.0.0", "127.0.0.1");
        format!("http://{listen}")
    });
    let url = format!("{}/__heartbeat__", base.trim_end_matches('/'));
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            let r = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await?;
            Ok::<_, reqwest::Error>((r.status(), r.text().await?))
        })
        .map_err(|e| format!("{url}: {e}"))?;
    println!("{}", answer.1.trim_end());
    if answer.0.is_success() {
        Ok(())
    } else {
        Err(format!("{url}: {}", answer.0))
    }
}

/// Runs an admin command over the data dir's user files and prints what it returns.
fn files(
    common: &Common,
    f: impl FnOnce(&std::path::Path) -> Result<String, AdminError>,
) -> Result<(), String> {
    let settings = load(common)?;
    let out = f(&settings.data_dir).map_err(|e| e.to_string())?;
    println!("{}", out.trim_end());
    Ok(())
}

/// Reads a password: the first line of stdin, or from the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String, String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    };
    if password.len() < 8 {
        return Err("the password must have at least 8 characters".into());
    }
    Ok(password)
}

fn account(cmd: AccountCommand) -> Result<(), String> {
    use admin::accounts as acc;
    let run =
        |common: &Common,
         f: &dyn Fn(&std::path::Path) -> Result<String, acc::AccountAdminError>| {
            let settings = load(common)?;
            let out = f(&settings.data_dir).map_err(|e| e.to_string())?;
            println!("{}", out.trim_end());
            Ok(())
        };
    match cmd {
        AccountCommand::Add {
            common,
            email,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            run(&common, &|dir| acc::add(dir, &email, &password))
        }
        AccountCommand::List { common } => run(&common, &acc::list),
        AccountCommand::Disable { common, email } => {
            run(&common, &|dir| acc::set_disabled(dir, &email, true))
        }
        AccountCommand::Enable { common, email } => {
            run(&common, &|dir| acc::set_disabled(dir, &email, false))
        }
        AccountCommand::Delete { common, email } => run(&common, &|dir| acc::delete(dir, &email)),
        AccountCommand::ResetPassword {
            common,
            email,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            run(&common, &|dir| acc::reset_password(dir, &email, &password))
        }
        AccountCommand::RotateKey { common } => run(&common, &acc::rotate_key),
    }
}

fn user(cmd: UserCommand) -> Result<(), String> {
    use admin::users;
    match cmd {
        UserCommand::Export { common, uid } => files(&common, |dir| users::export(dir, uid)),
        UserCommand::Import {
            common,
            file,
            uid,
            replace,
        } => {
            let bytes = match &file {
                Some(path) => std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                None => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                        .map_err(|e| format!("cannot read stdin: {e}"))?;
                    bytes
                }
            };
            if users::is_sqlite_file(&bytes) {
                return files(&common, |dir| users::import_file(dir, &bytes, uid, replace));
            }
            let json = String::from_utf8(bytes).map_err(|_| "not a user export: not UTF-8")?;
            files(&common, |dir| users::import(dir, &json, uid, replace))
        }
        UserCommand::Delete { common, uid } => files(&common, |dir| users::delete(dir, uid)),
        UserCommand::Stats { common, uid } => files(&common, |dir| users::user_stats(dir, uid)),
        UserCommand::Move { common, uid, to } => live_moves(&common, |db, secret| async move {
            let r = admin::moves::move_user(&db, &secret, uid, &to).await?;
            Ok(format!(
                "user {uid}: moved from {} to {} ({} records, {} bytes; writes held {} ms)",
                r.from, r.to, r.records, r.bytes, r.held_ms
            ))
        }),
    }
}

/// Runs a live-move command: opens the assignment database, finds the signing secret.
fn live_moves<F, Fut>(common: &Common, f: F) -> Result<(), String>
where
    F: FnOnce(AssignmentDb, String) -> Fut,
    Fut: std::future::Future<Output = Result<String, AdminError>>,
{
    let mut settings = load(common)?;
    settings.ensure_secret().map_err(|e| e.to_string())?;
    let db = AssignmentDb::open(&settings.tokenserver_database_url, &settings.data_dir)
        .map_err(|e| format!("cannot open the assignment database: {e}"))?;
    let secret = settings.secrets[0].clone();
    // `db` outlives the runtime: closing its PostgreSQL connections blocks, which must
    // not happen on a runtime thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let out = rt.block_on(f(db.clone(), secret));
    drop(rt);
    let out = out.map_err(|e| e.to_string())?;
    println!("{}", out.trim_end());
    Ok(())
}

fn node(cmd: NodeCommand) -> Result<(), String> {
    match cmd {
        NodeCommand::Add {
            common,
            url,
            capacity,
        } => admin(&common, |db| admin::node_add(db, &url, capacity)),
        NodeCommand::List { common } => admin(&common, admin::node_list),
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
            admin(&common, |db| admin::node_set(db, &url, &change))
        }
        NodeCommand::Down { common, url } => {
            let change = NodeChange {
                downed: Some(true),
                ..Default::default()
            };
            admin(&common, |db| admin::node_set(db, &url, &change))
        }
        NodeCommand::Drain {
            common,
            url,
            live: true,
            to,
        } => live_moves(&common, |db, secret| async move {
            admin::moves::drain(&db, &secret, &url, to.as_deref()).await
        }),
        NodeCommand::Drain { common, url, .. } => {
            let change = NodeChange {
                draining: Some(true),
                ..Default::default()
            };
            admin(&common, |db| admin::node_set(db, &url, &change))
        }
        NodeCommand::Remove { common, url } => admin(&common, |db| admin::node_remove(db, &url)),
    }
}

fn rollout(cmd: RolloutCommand) -> Result<(), String> {
    match cmd {
        RolloutCommand::Set {
            common,
            url,
            percent,
        } => {
            let bp = admin::percent_to_bp(&percent).map_err(|e| e.to_string())?;
            let change = NodeChange {
                percent_bp: Some(bp),
                ..Default::default()
            };
            admin(&common, |db| admin::node_set(db, &url, &change))
        }
        RolloutCommand::Allow { common, url, who } => admin(&common, |db| {
            admin::rollout_list(db, &url, Some(ListKind::Allow), &who)
        }),
        RolloutCommand::Deny { common, url, who } => admin(&common, |db| {
            admin::rollout_list(db, &url, Some(ListKind::Deny), &who)
        }),
        RolloutCommand::Unlist { common, url, who } => {
            admin(&common, |db| admin::rollout_list(db, &url, None, &who))
        }
        RolloutCommand::Show { common } => admin(&common, admin::rollout_show),
    }
}

/// mimalloc's `purge_delay` and `allow_thp` options (see mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Memory settings for the whole process, made before any other thread exists. Each
/// yields to mimalloc's own environment variable (`MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ALLOW_THP`) when the operator sets one.
/// * Freed memory goes back to the OS at once rather than after 10 ms: the blocking
///   threads that run SQLite each keep a heap, and delayed purging let their idle pages
///   add up (measured: ~100 MB more peak RSS under the Sync mix, no speed gain).
/// * No transparent huge pages: the kernel zeroed a 2 MiB page on first touch, and each
///   purge inside one split it again (measured under the Sync mix at 10,000 users: 6% of
///   the server's CPU in page faults and TLB flushes; without: 3% more requests a
///   second, 15 MB less peak RSS).
fn configure_memory() {
    let unset = |name: &str| std::env::var_os(name).is_none();
    if unset("MIMALLOC_PURGE_DELAY") {
        // SAFETY: a process-wide allocator option, set while no other thread runs.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if unset("MIMALLOC_ALLOW_THP") {
        // mimalloc read this option when it started (before main); setting it now stops
        // its later mappings asking for huge pages, and the prctl keeps the kernel from
        // backing any mapping of the process, earlier ones included, with them.
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        #[cfg(target_os = "linux")]
        // SAFETY: as above; PR_SET_THP_DISABLE only sets a flag of this process.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0)
        };
    }
}

fn main() -> ExitCode {
    configure_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Node(cmd) => node(cmd),
        Command::Rollout(cmd) => rollout(cmd),
        Command::User(cmd) => user(cmd),
        Command::Account(cmd) => account(cmd),
        Command::Health { common, url } => health(&common, url),
        Command::ImportLegacy { common, from } => {
            files(&common, |dir| admin::users::import_legacy(dir, &from))
        }
        Command::Check { common } => load(&common).and_then(|settings| {
            let (report, sound) =
                admin::users::check(&settings.data_dir).map_err(|e| e.to_string())?;
            print!("{report}");
            if sound {
                Ok(())
            } else {
                Err("some user files are damaged".into())
            }
        }),
        Command::Compact { common, threshold } => {
            files(&common, |dir| admin::users::compact(dir, threshold))
        }
        Command::Stats { common, top } => files(&common, |dir| admin::users::stats(dir, top)),
        Command::Signups { common, state } => {
            admin(&common, |db| admin::signups(db, state == "open"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncstore: {e}");
            ExitCode::FAILURE
        }
    }
}
