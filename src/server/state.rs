//! One process's services, opened from its settings: the tokenserver and the storage
//! node's assignment check (sharing the assignment database), the accounts service,
//! and the state every request handler shares ([`build_state`]).

use std::sync::Arc;
use std::time::Duration;

use super::ServerError;
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::storage::{Storage, UserDbs, UserDbsConfig};
use crate::tokenserver::db::AssignmentDb;
use crate::tokenserver::fxa::{FxaConfig, FxaVerifier};
use crate::tokenserver::{self, AssignmentCheck, Tokenserver, TokenserverConfig};
use crate::{accounts, admin, web};

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
pub(super) async fn tokenserver_parts(
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
pub(super) async fn accounts_service(
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
    // VAPID's `sub` (RFC 8292: an https URL or mailto:): the public URL when it is https.
    let contact = if issuer.starts_with("https://") {
        issuer.clone()
    } else {
        String::new()
    };
    // The signing secret (ensured before): keys the email codes' hash.
    let secret = settings.secrets.first().cloned().unwrap_or_default();
    let hardening = (
        settings.accounts_hardening_concurrency,
        settings.accounts_hardening_per_sec,
        settings.accounts_hardening_nice,
    );
    let service = tokio::task::spawn_blocking(move || {
        accounts::Accounts::open(&dir, &url, &issuer, signups, mailer, &secret)
            .map(|a| a.with_hardening(hardening.0, hardening.1, hardening.2))
    })
    .await
    .map_err(|e| ServerError::Accounts(e.to_string()))?
    .map_err(ServerError::Accounts)?;
    // Push: signed with the service's VAPID key, `sub` its public URL.
    let push = accounts::push::PushConfig {
        enabled: settings.accounts_push,
        allow_private: settings
            .push_allow_private_nets()
            .map_err(|e| ServerError::Accounts(e.to_string()))?,
        contact: contact.clone(),
        services: settings.accounts_push_services.clone(),
    };
    let service = service.with_push(push);
    tracing::info!(signups = %settings.accounts_signups, push = settings.accounts_push, "accounts service enabled at /v1");
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
