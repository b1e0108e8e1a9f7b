//! `syncstore serve`: the server process.

use clap::Args;

use syncstore::config::Settings;

use super::{CliError, Common, load};

/// Flags of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on [env: SYNCSTORE_LISTEN] [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// What to serve: all (storage node and tokenserver), storage, or tokenserver
    /// [env: SYNCSTORE_ROLE] [default: all]
    #[arg(long, value_parser = ["all", "storage", "tokenserver"])]
    pub role: Option<String>,
    /// Log format: text (for people) or json (one object a line, for log pipelines)
    /// [env: SYNCSTORE_LOG_FORMAT] [default: text]
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
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

/// `serve`: runs the server until SIGTERM or Ctrl-C.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
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
        .map_err(CliError::io("cannot start the runtime"))?
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

async fn serve_on(settings: Settings) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(CliError::io(format!(
            "cannot listen on {}",
            settings.listen
        )))?;
    Ok(syncstore::run(settings, listener, shutdown_signal()).await?)
}
