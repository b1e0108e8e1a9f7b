//! The `syncstore` command: parses flags and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use syncstore::auth::token::{TokenPayload, make_token, new_salt};
use syncstore::config::Settings;

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
    /// Run the storage node (Sync storage API 1.5).
    Serve(ServeArgs),
    /// Print a token as a tokenserver would hand it out, signed with the configured
    /// (or generated) secret: for testing and for operators.
    Token(TokenArgs),
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

fn load(common: &Common) -> Result<Settings, String> {
    let mut settings = Settings::load(common.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(dir) = &common.data_dir {
        settings.data_dir = dir.clone();
    }
    Ok(settings)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = load(&args.common)?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(serve(args)))
        }
        Command::Token(args) => token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncstore: {e}");
            ExitCode::FAILURE
        }
    }
}
