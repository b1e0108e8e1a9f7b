//! syncstore: a Firefox Sync storage server (SyncStorage API 1.5) that keeps each
//! user's data in that user's own SQLite file.
//!
//! * [`config`] — settings: defaults < TOML file < `SYNCSTORE_*` env < flags.
//! * [`private`], [`pg`] — owner-only files and folders; PostgreSQL URLs and TLS.
//! * [`auth`] — tokenlib tokens, Hawk request signatures, the replay cache.
//! * [`storage`] — the data model and its rules, the per-user SQLite connection
//!   manager (`UserDbs`), the SQL, and one method per protocol operation (`Storage`).
//! * [`tokenserver`] — FxA OAuth verification, node assignment with rollout rules, the
//!   assignment database (SQLite or PostgreSQL).
//! * [`accounts`] — the built-in Firefox Accounts-compatible service (onepw, sessions,
//!   OAuth with its own RS256 key, devices, profile), trusted by the tokenserver.
//! * [`admin`] — operator commands (nodes, rollout rules, sign-ups).
//! * [`web`] — the axum router, extractors, handlers and the error → response mapping.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`], which tests call too.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod pg;
pub mod private;
pub mod storage;
pub mod tokenserver;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use auth::Authenticator;
use config::Settings;
use storage::{Storage, UserDbs, UserDbsConfig};
use tokenserver::db::AssignmentDb;
use tokenserver::fxa::{FxaConfig, FxaVerifier};
use tokenserver::{AssignmentCheck, Tokenserver, TokenserverConfig};

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
}

/// The URL this process is known by as a storage node.
pub fn node_url(settings: &Settings, bound: std::net::SocketAddr) -> String {
    let url = if !settings.node_url.is_empty() {
        settings.node_url.clone()
    } else if !settings.public_url.is_empty() {
        settings.public_url.clone()
    } else {
        format!("http://{bound}")
    };
    url.trim_end_matches('/').to_string()
}

/// Opens the assignment database (blocking work, off the reactor).
pub async fn open_assignments(settings: &Settings) -> Result<AssignmentDb, ServerError> {
    let url = settings.tokenserver_database_url.clone();
    let dir = settings.data_dir.clone();
    tokio::task::spawn_blocking(move || AssignmentDb::open(&url, &dir))
        .await
        .map_err(|e| ServerError::Tokenserver(e.to_string()))?
        .map_err(|e| ServerError::Tokenserver(e.to_string()))
}

/// Sets up the tokenserver (if this process serves tokens) and the storage node's
/// assignment check (if it shares an assignment database); registers this process as
/// the single node of an empty node list when it serves both.
async fn tokenserver_parts(
    settings: &Settings,
    node_url: &str,
    local_issuer: Option<Arc<dyn tokenserver::fxa::LocalIssuer>>,
) -> Result<(Option<Arc<Tokenserver>>, Option<Arc<AssignmentCheck>>), ServerError> {
    let shares_db = settings.serves_tokens() || !settings.tokenserver_database_url.is_empty();
    if !shares_db {
        return Ok((None, None));
    }
    let db = open_assignments(settings).await?;
    let mut tokenserver = None;
    if settings.serves_tokens() {
        if settings.serves_storage() {
            let (db2, url, cap) = (db.clone(), node_url.to_string(), settings.node_capacity);
            let added = tokio::task::spawn_blocking(move || admin::register_self(&db2, &url, cap))
                .await
                .map_err(|e| ServerError::Tokenserver(e.to_string()))?
                .map_err(|e| ServerError::Tokenserver(e.to_string()))?;
            if added {
                tracing::info!(
                    node = node_url,
                    "registered this process as the storage node"
                );
            }
        }
        let mut fxa = FxaVerifier::new(&FxaConfig {
            jwks: settings.fxa_jwks.clone(),
            issuer: settings.fxa_issuer.clone(),
            verify_url: settings.fxa_verify_url.clone(),
            cache_ttl: Duration::from_secs(settings.fxa_verify_cache_secs),
            own_accounts: local_issuer.is_some(),
        })
        .map_err(|e| ServerError::Tokenserver(e.to_string()))?;
        if let Some(local) = local_issuer {
            fxa.trust_local(local);
        }
        let trusted = fxa.trusted_issuers();
        if trusted.is_empty() {
            tracing::warn!("the tokenserver trusts no token issuer: every sign-in is refused");
        } else {
            tracing::info!(
                issuers = %trusted.join("; "),
                "the tokenserver trusts the tokens of these issuers only"
            );
        }
        let config = TokenserverConfig {
            secrets: settings.secrets.clone(),
            token_duration: settings.token_duration_secs,
            email_domain: settings.fxa_email_domain.clone(),
        };
        tokenserver = Some(Arc::new(Tokenserver::new(db.clone(), fxa, config)));
        tracing::info!(database = db.kind(), "tokenserver enabled at /1.0/sync/1.5");
    }
    let check = settings.serves_storage().then(|| {
        Arc::new(AssignmentCheck::new(
            db,
            node_url.to_string(),
            Duration::from_secs(settings.assignment_check_secs),
        ))
    });
    Ok((tokenserver, check))
}

/// Opens the accounts service when this process serves it; its tokens' issuer is the
/// public URL (else this process's own URL). Blocking work (the database, the signing
/// keys) runs off the reactor.
async fn accounts_service(
    settings: &Settings,
    node_url: &str,
) -> Result<Option<accounts::api::ApiState>, ServerError> {
    if !settings.serves_accounts() {
        return Ok(None);
    }
    let issuer = match settings.public_url.as_str() {
        "" => node_url,
        url => url,
    };
    let signups = accounts::Signups::parse(&settings.accounts_signups)
        .ok_or_else(|| ServerError::Accounts("bad accounts_signups".into()))?;
    let mailer = match settings.accounts_smtp_url.as_str() {
        "" => None,
        url => Some(
            accounts::mail::Mailer::new(url, &settings.accounts_mail_from)
                .map_err(|e| ServerError::Accounts(e.to_string()))?,
        ),
    };
    if signups == accounts::Signups::Open && mailer.is_none() {
        tracing::warn!(
            "accounts_signups is open without accounts_smtp_url: new accounts are verified \
             at once, their email addresses are not proven"
        );
    }
    let (dir, url, issuer) = (
        settings.data_dir.clone(),
        settings.tokenserver_database_url.clone(),
        issuer.to_string(),
    );
    // The signing secret (ensured before): keys the email codes' hash.
    let secret = settings.secrets.first().cloned().unwrap_or_default();
    let hardening = (
        settings.accounts_hardening_concurrency,
        settings.accounts_hardening_per_sec,
    );
    let service = tokio::task::spawn_blocking(move || {
        accounts::Accounts::open(&dir, &url, &issuer, signups, mailer, &secret)
            .map(|a| a.with_hardening(hardening.0, hardening.1))
    })
    .await
    .map_err(|e| ServerError::Accounts(e.to_string()))?
    .map_err(ServerError::Accounts)?;
    tracing::info!(signups = %settings.accounts_signups, "accounts service enabled at /v1");
    Ok(Some(accounts::api::ApiState {
        accounts: Arc::new(service),
        public_url: settings.public_url.clone(),
        trust_forwarded: settings.trust_forwarded_headers,
    }))
}

/// Builds the process's state from settings (which must hold a secret).
pub fn build_state(
    settings: Settings,
    tokenserver: Option<Arc<Tokenserver>>,
    assignments: Option<Arc<AssignmentCheck>>,
) -> Result<web::AppState, ServerError> {
    let dbs = UserDbs::new(UserDbsConfig {
        data_dir: settings.data_dir.clone(),
        max_open_users: settings.max_open_users,
        connections_per_user: settings.connections_per_user,
        lock_timeout: Duration::from_millis(settings.lock_timeout_ms),
        synchronous_full: settings.synchronous == "full",
        quota_bytes: settings.quota_bytes,
        summary_cache_users: settings.summary_cache_users,
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
        tokenserver,
        assignments,
    ))
}

/// Runs background upkeep every `interval` until `stop` turns true.
async fn upkeep_loop(
    dbs: UserDbs,
    interval: Duration,
    users_per_tick: usize,
    idle_secs: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = storage::userdbs::upkeep::UpkeepCursor::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick fires at once; start one interval in
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let tick_dbs = dbs.clone();
        let mut c = cursor.clone();
        let done = tokio::task::spawn_blocking(move || {
            let report = tick_dbs.upkeep_tick(&mut c, users_per_tick, idle_secs);
            (report, c)
        })
        .await;
        match done {
            Ok((report, c)) => {
                cursor = c;
                tracing::debug!(?report, "upkeep tick");
                if report.records_purged + report.batches_purged + report.orphans_deleted > 0
                    || report.closed > 0
                {
                    tracing::info!(
                        users = report.users,
                        records_purged = report.records_purged,
                        batches_purged = report.batches_purged,
                        pages_reclaimed = report.pages_reclaimed,
                        idle_closed = report.closed,
                        orphans_deleted = report.orphans_deleted,
                        "upkeep"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "upkeep tick failed"),
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one, as the system allows any
/// process to (a common soft default, 1,024, is below what the default settings can
/// hold open: each open user has up to `connections_per_user` connections of two
/// descriptors and one shared, plus the files being retired and every client
/// connection), and warns when even the hard limit is below that.
fn raise_descriptor_limit(settings: &Settings) {
    let users = settings.max_open_users + storage::RETIRING_MAX;
    let per_user = 2 * settings.connections_per_user as usize + 1;
    let wanted = (users * per_user + settings.max_connections + 128) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        lim.rlim_cur
    };
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the open-descriptor limit is below what these settings can use; raise it \
             (ulimit -n, LimitNOFILE=) or lower max_open_users / max_connections"
        );
    }
}

/// Says at start how client addresses are found when the settings look like a
/// reverse proxy setup that does not do what the operator may expect.
fn warn_about_client_addresses(settings: &Settings) {
    if settings.trust_forwarded_headers && settings.trusted_proxies.is_empty() {
        tracing::warn!(
            "trust_forwarded_headers is on but trusted_proxies is empty: X-Forwarded-For \
             is ignored and every client is its TCP peer; list the reverse proxy's \
             addresses in trusted_proxies"
        );
    } else if settings.serves_accounts()
        && !settings.trust_forwarded_headers
        && !settings.trusted_proxies.is_empty()
    {
        tracing::warn!(
            "trusted_proxies is set but trust_forwarded_headers is off: clients behind \
             the proxy share its address in the accounts service's attempt limits; set \
             trust_forwarded_headers = true to take them from X-Forwarded-For"
        );
    }
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
    raise_descriptor_limit(&settings);
    if let Some(path) = settings.ensure_secret()? {
        tracing::info!(path = %path.display(), "generated a new master secret (mode 0600)");
    }
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let limits = web::ConnectionLimits::from_settings(&settings)?;
    warn_about_client_addresses(&settings);
    let upkeep_every = Duration::from_secs(settings.upkeep_interval_secs);
    let (users_per_tick, idle_secs) = (settings.upkeep_users_per_tick, settings.idle_user_secs);
    let node_url = node_url(&settings, listener.local_addr()?);
    let accounts = accounts_service(&settings, &node_url).await?;
    let local_issuer = accounts.as_ref().map(|a| {
        let signer: Arc<dyn tokenserver::fxa::LocalIssuer> = a.accounts.local_issuer();
        signer
    });
    let (tokenserver, assignments) = tokenserver_parts(&settings, &node_url, local_issuer).await?;
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
    let upkeep = tokio::spawn(upkeep_loop(
        dbs.clone(),
        upkeep_every,
        users_per_tick,
        idle_secs,
        stop_rx.clone(),
    ));
    let deletions = tokio::spawn(web::events::drain_account_deletions(
        state.clone(),
        stop_rx.clone(),
    ));
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
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Some(i) = internal_server {
        i.abort();
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
