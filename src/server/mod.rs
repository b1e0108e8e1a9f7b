//! The server's wiring: [`run`] opens the services the settings ask for, builds the
//! shared state, serves the listeners (the public one, the internal one for other
//! nodes, the metrics one, the operator console's), runs the background tasks (storage upkeep, account-deletion
//! events) and, at shutdown, stops them and checkpoints and closes every user file.
//!
//! * `state` — one process's services from its settings: the tokenserver, the storage
//!   node's assignment check, the accounts service, and [`build_state`];
//! * `upkeep` — the loop that runs storage upkeep ticks on the blocking pool;
//! * `backup` — continuous backup (`backup_to`) on a low-priority thread of its own;
//! * `health` — the storage node's health report to the assignment database (the
//!   canary guard, `tokenserver::guard`, runs beside it in tokenservers);
//! * `startup` — checks at start that adjust the process or warn: the open-descriptor
//!   limit, reverse-proxy settings;
//! * `large_blocks` — the hook by which a thread (password hardening's) keeps its large
//!   freed block for the next use, where the binary's allocator supports it.

mod backup;
mod health;
pub mod large_blocks;
mod startup;
mod state;
mod upkeep;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Settings};
use crate::{cluster, storage, tokenserver, web};

pub use backup::{BackupStatus, status as backup_status};
pub use state::{build_state, node_url, open_assignments};

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad settings or an unusable secret file.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be used.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The tokenserver could not be set up.
    #[error("tokenserver: {0}")]
    Tokenserver(String),
    /// The accounts service could not be set up.
    #[error("accounts: {0}")]
    Accounts(String),
    /// Listening or serving failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The operator console (`admin_listen`) could not be set up.
    #[error(transparent)]
    Console(#[from] web::admin::ConsoleError),
}

/// Serves the node-to-node routes on their own listener and records its URL in the
/// assignment database for the other nodes.
async fn serve_internal(
    listener: TcpListener,
    state: &web::AppState,
    limits: web::ConnectionLimits,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, ServerError> {
    let bound = listener.local_addr()?;
    let url = match state.settings.internal_url.as_str() {
        "" => format!("http://{bound}"),
        url => url.trim_end_matches('/').to_string(),
    };
    if let Some(check) = &state.assignments {
        cluster::publish_internal_url(check.db(), check.node_url(), &url)
            .await
            .map_err(|e| ServerError::Tokenserver(e.to_string()))?;
    }
    tracing::info!("internal routes on {url} (bound to {bound})");
    let app = web::internal::router(state.clone());
    // The same connection limits as the public listener, except that a moved user's
    // file (up to max_moved_file_bytes) may take longer than a Sync request body.
    let limits = web::ConnectionLimits {
        body_read_timeout: Duration::from_secs(3600),
        ..limits
    };
    let served = web::serve_router(listener, app, limits, std::future::pending());
    Ok(tokio::spawn(served))
}

/// Runs the storage node on `listener` until `shutdown` completes; then stops
/// accepting, waits up to `shutdown_grace_secs` for requests in flight, and
/// checkpoints and closes every user file.
pub async fn run(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    storage::sqlite::configure();
    web::observe::metrics_handle();
    startup::raise_descriptor_limit(&settings);
    if let Some(path) = settings.ensure_secret()? {
        tracing::info!(path = %path.display(), "generated a new master secret (mode 0600)");
    }
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let limits = web::ConnectionLimits::from_settings(&settings)?;
    startup::warn_about_client_addresses(&settings);
    let upkeep_every = Duration::from_secs(settings.upkeep_interval_secs);
    let (users_per_tick, idle_secs) = (settings.upkeep_users_per_tick, settings.idle_user_secs);
    let node_url = node_url(&settings, listener.local_addr()?);
    let accounts = state::accounts_service(&settings, &node_url).await?;
    let local_issuer = accounts.as_ref().map(|a| {
        let signer: Arc<dyn tokenserver::fxa::LocalIssuer> = a.accounts.local_issuer();
        signer
    });
    let (tokenserver, assignments) =
        state::tokenserver_parts(&settings, &node_url, local_issuer).await?;
    let metrics_server = match settings.metrics_listen.as_str() {
        "" => None,
        addr => {
            let l = TcpListener::bind(addr).await?;
            tracing::info!("metrics on http://{}/__metrics__", l.local_addr()?);
            let app = web::observe::metrics_router(&settings.metrics_token);
            let served = web::serve_router(l, app, limits.clone(), std::future::pending());
            Some(tokio::spawn(served))
        }
    };
    let internal_listener = match settings.internal_listen_addr() {
        Some(addr) => Some(
            TcpListener::bind(&addr)
                .await
                .map_err(|e| std::io::Error::other(format!("internal_listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let mut state = build_state(settings, tokenserver, assignments)?;
    state.accounts = accounts;
    let admin_server = match state.settings.admin_listen.as_str() {
        "" => None,
        _ => Some(web::admin::start(&state, limits.clone()).await?),
    };
    let internal_server = match internal_listener {
        Some(l) => Some(serve_internal(l, &state, limits.clone()).await?),
        None => None,
    };
    let dbs = state.storage.dbs().clone();
    if let Some(check) = &state.assignments {
        let grace = state.settings.orphan_grace_secs;
        dbs.set_orphan_policy(cluster::orphan_policy(check, grace));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let upkeep = tokio::spawn(upkeep::upkeep_loop(
        dbs.clone(),
        upkeep_every,
        users_per_tick,
        idle_secs,
        stop_rx.clone(),
    ));
    backup::start(&state.settings, stop_rx.clone());
    let deletions = tokio::spawn(web::events::drain_account_deletions(
        state.clone(),
        stop_rx.clone(),
    ));
    let report_every = Duration::from_secs(state.settings.node_report_secs);
    let reporter = match &state.assignments {
        Some(check) if !report_every.is_zero() => Some(tokio::spawn(health::report_loop(
            check.db().clone(),
            check.node_url().to_string(),
            dbs.clone(),
            report_every,
            stop_rx.clone(),
        ))),
        _ => None,
    };
    let guard = match (
        &state.tokenserver,
        tokenserver::guard::CanaryConfig::from_settings(&state.settings),
    ) {
        (Some(ts), Some(c)) => Some(tokio::spawn(tokenserver::guard::run(
            ts.db().clone(),
            c,
            stop_rx.clone(),
        ))),
        _ => None,
    };
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let server = web::serve(listener, state, limits, signal);
    tokio::pin!(server);
    let mut stopping = stop_rx.clone();
    let served = tokio::select! {
        r = &mut server => r,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("requests still in flight after the grace period; closing them");
            Ok(())
        }
    };
    if !*stop_rx.borrow() {
        upkeep.abort(); // the server ended on its own (an error): no signal will come
    }
    let _ = upkeep.await;
    deletions.abort();
    for task in [reporter, guard].into_iter().flatten() {
        task.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Some(i) = internal_server {
        i.abort();
    }
    if let Some(a) = admin_server {
        a.abort();
    }
    let closed = tokio::task::spawn_blocking(move || dbs.close_all())
        .await
        .unwrap_or(0);
    tracing::info!(
        files = closed,
        "stopped: user files checkpointed and closed"
    );
    served?;
    Ok(())
}
