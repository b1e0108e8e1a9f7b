//! syncstore: a Firefox Sync storage server (SyncStorage API 1.5) that keeps each
//! user's data in that user's own SQLite file.
//!
//! * [`config`] — settings: defaults < TOML file < `SYNCSTORE_*` env < flags.
//! * [`auth`] — tokenlib tokens, Hawk request signatures, the replay cache.
//! * [`storage`] — the data model and its rules, the per-user SQLite connection
//!   manager (`UserDbs`), the SQL, and one method per protocol operation (`Storage`).
//! * [`web`] — the axum router, extractors, handlers and the error → response mapping.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`], which tests call too.

pub mod auth;
pub mod config;
pub mod storage;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use auth::Authenticator;
use config::Settings;
use storage::{Storage, UserDbs, UserDbsConfig};

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad settings or an unusable secret file.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be used.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// Listening or serving failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the storage node's state from settings (which must hold a secret).
pub fn build_state(settings: Settings) -> Result<web::AppState, ServerError> {
    let dbs = UserDbs::new(UserDbsConfig {
        data_dir: settings.data_dir.clone(),
        max_open_users: settings.max_open_users,
        connections_per_user: settings.connections_per_user,
        lock_timeout: Duration::from_millis(settings.lock_timeout_ms),
        synchronous_full: settings.synchronous == "full",
        quota_bytes: settings.quota_bytes,
    })?;
    let auth = Authenticator::new(
        settings.secrets.clone(),
        settings.hawk_skew_secs,
        settings.nonce_cache_size,
    );
    Ok(web::AppState::new(
        Storage::new(dbs),
        Arc::new(auth),
        Arc::new(settings),
    ))
}

/// Runs the storage node on `listener` until `shutdown` completes.
pub async fn run(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Some(path) = settings.ensure_secret()? {
        tracing::info!(path = %path.display(), "generated a new master secret (mode 0600)");
    }
    let state = build_state(settings)?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    web::serve(listener, state, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
