//! A Firefox Accounts-compatible accounts service (onepw sign-in, sessions, keys,
//! OAuth, devices, profile), so one syncstore process is a whole Sync deployment.
//!
//! One file per concern, each holding its part of the service (an `impl Accounts`
//! block) and the handlers of its routes; this file holds the `Accounts` type, its
//! constructor and what the concerns share.
//!
//! * `signup` — API sign-up under the sign-up policy, and accounts the operator adds.
//! * `invites` — invite codes: made by the operator, checked at sign-up.
//! * `codes` — email verification: the mailed 6-digit codes, their limits and routes.
//! * `signin` — sign-in with `authPW` under the attempt limits; account status lookups.
//! * `sessions` — session tokens: Hawk and Bearer authentication, new sessions, status,
//!   sign-out.
//! * `keys` — the key fetch token's bundle and the scoped-key metadata.
//! * `grants` — OAuth grants: the token endpoint (session, code, refresh token),
//!   revocation, access-token verification, the JWKS.
//! * `authorization` — OAuth authorization codes (with PKCE).
//! * `devices` — device registration, listing and removal; `devices/notify`, relayed
//!   by push.
//! * `commands` — device commands (Send Tab): invoking one, the target's queue.
//! * `attached` — attached clients (sessions, devices, refresh tokens) and revoking them.
//! * `profile` — the profile routes.
//! * `password` — password change (start, finish) and the operator's reset.
//! * `deletion` — an account's deletion by its owner.
//! * `issuer` — this service's access tokens as the in-process tokenserver trusts them.
//! * `discovery` — the discovery documents (`/.well-known/…`).
//! * `pages` — the sign-in page Firefox opens at `/` and the settings page (`pages/`:
//!   HTML, CSS and scripts embedded in the binary, speaking Firefox's WebChannel).
//! * `api` — what the routes share: their state, the request extractor (token proof,
//!   client address, body) and the route table.
//! * `error` — the service's errors, each an FxA error (status, errno), as responses.
//! * `limits` — attempt limits (reserved before the work) per account and per client
//!   address.
//! * `hardening` — the gates, budget and low-priority threads in front of scrypt.
//! * `crypto` — onepw: stretching, the scrypt verifier, token derivations, bundles.
//! * `oauth` — the service's RSA signing keys and its RS256 access tokens.
//! * `push` — outbound Web Push (encryption, VAPID, the guard against request forgery,
//!   bounded delivery with retries).
//! * `notices` — the Web Push notices FxA sends an account's devices (a command
//!   queued, a device connected or removed, a password changed, an account deleted,
//!   what a device asks to relay), through `push`.
//! * `push` — the Web Push sender: RFC 8291 encryption, VAPID, the endpoint guard,
//!   bounded delivery with retries.
//! * `mail` — the verification mail of `open` sign-ups (SMTP, when configured).
//! * `store` — the accounts database (`<data_dir>/accounts.sqlite`, or the shared
//!   PostgreSQL).
//!
//! The server never sees the password or kB: clients send `authPW`, a one-way
//! derivation of the stretched password; the server keeps a scrypt-hardened verifier
//! and `wrapWrapKb`, which only `authPW` unwraps into `wrapKb` (still wrapped by the
//! client's `unwrapBKey`).

pub mod api;
mod attached;
mod authorization;
mod codes;
mod commands;
pub mod crypto;
mod deletion;
mod devices;
mod discovery;
mod error;
mod grants;
pub mod hardening;
mod invites;
mod issuer;
mod keys;
pub mod limits;
pub mod mail;
mod notices;
pub mod oauth;
mod pages;
mod password;
mod profile;
pub mod push;
mod sessions;
mod signin;
mod signup;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::nonce::NonceCache;
use codes::email_code_key;
use hardening::Hardening;
use limits::Limiter;
use oauth::Signer;
use store::{Account, Store};

pub use devices::DeviceUpdate;
pub use error::AccountsError;
use error::Result;
pub use grants::Grant;
pub use invites::new_invite_code;
pub use issuer::LocalTokens;
pub use sessions::{Authed, NewSession, TokenAuth};
pub use signup::{Signups, insert_new_account};

/// The Sync key scope (keys derived the legacy way from kB).
pub use crate::tokenserver::fxa::OLDSYNC_SCOPE as SYNC_SCOPE;

/// The profile scope.
pub const PROFILE_SCOPE: &str = "profile";

/// Lifetime of key fetch and password change tokens, ms.
const SHORT_TOKEN_TTL_MS: i64 = 15 * 60 * 1000;
/// Clock difference allowed in Hawk signatures, seconds.
const HAWK_SKEW_SECS: i64 = 60;

/// Most Hawk nonces one account may have remembered at once (within the 2-minute
/// replay window: about 8 signed requests a second, far above any client's use);
/// beyond, that account's signed requests get 429 until its older nonces expire.
const NONCES_PER_ACCOUNT: usize = 1_000;

/// What stored state may live unused (see `store::Retention`).
const RETENTION: store::Retention = store::Retention {
    short_token_ms: SHORT_TOKEN_TTL_MS,
    idle_session_ms: 30 * DAY_MS,
    idle_device_session_ms: 365 * DAY_MS,
    idle_refresh_ms: 365 * DAY_MS,
    unverified_account_ms: DAY_MS,
};
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The current time, ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The accounts service.
pub struct Accounts {
    store: Store,
    signer: Arc<Signer>,
    signups: Signups,
    limiter: Limiter,
    nonces: NonceCache,
    hardening: Hardening,
    mailer: Option<mail::Mailer>,
    /// The key of the email codes' keyed hash (from the deployment secret, never in
    /// the accounts database).
    code_key: [u8; 32],
    /// The Web Push sender (none: push is off).
    pusher: Option<Arc<push::Pusher>>,
    /// Networks a push endpoint may be on although not public.
    push_allow: Vec<ipnet::IpNet>,
}

/// Parses a 64-hex-character value.
pub fn hex32(name: &str, value: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(value).map_err(|_| AccountsError::InvalidParameter(name.into()))?;
    bytes
        .try_into()
        .map_err(|_| AccountsError::InvalidParameter(name.into()))
}

impl Accounts {
    /// Opens the database and the signing keys: in `data_dir`, or in the PostgreSQL
    /// database at `database_url` (the tokenserver's) when it is one.
    /// `secret` is the deployment's signing secret: the key of the email codes' keyed
    /// hash is derived from it, so every process sharing the database derives the same.
    pub fn open(
        data_dir: &std::path::Path,
        database_url: &str,
        issuer: &str,
        signups: Signups,
        mailer: Option<mail::Mailer>,
        secret: &str,
    ) -> std::result::Result<Accounts, String> {
        let store = Store::open(data_dir, database_url).map_err(|e| e.to_string())?;
        let signer = Signer::load(data_dir, &store, issuer).map_err(|e| e.to_string())?;
        Ok(Accounts {
            store,
            signer: Arc::new(signer),
            signups,
            limiter: Limiter::default(),
            nonces: NonceCache::with_share(HAWK_SKEW_SECS * 2, 1_000_000, NONCES_PER_ACCOUNT),
            hardening: Hardening::new(0, 0.0, 0),
            mailer,
            code_key: email_code_key(secret),
            pusher: None,
            push_allow: Vec::new(),
        })
    }

    /// Bounds password hardening: at most `concurrency` scrypt jobs at once (0: half
    /// the cores, at least one) and `per_sec` a second on average (0: one per two cores),
    /// on threads at nice `nice` (0–19).
    pub fn with_hardening(mut self, concurrency: usize, per_sec: f64, nice: u8) -> Accounts {
        self.hardening = Hardening::new(concurrency, per_sec, nice);
        self
    }

    /// The signer of access tokens.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.clone()
    }

    /// The database (for operator commands).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` on the database off the reactor (tokio's blocking pool).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| AccountsError::Internal(e.to_string()))?
    }

    /// scrypt off the reactor, in a turn of the hardening budget for a request from
    /// `ip` for `account` (see `hardening::Hardening`: 429 when the budget is spent),
    /// unless a limit of `unless_refused` would refuse what follows anyway (429 then,
    /// without the work).
    async fn harden(
        &self,
        auth_pw: [u8; 32],
        salt: [u8; 32],
        ip: Option<IpAddr>,
        account: Option<&str>,
        unless_refused: &[limits::Key],
    ) -> Result<crypto::Hardened> {
        let _turn = self.hardening.turn(ip, account).await?;
        // Checked once the turn is ours: attempts queued behind the one that used up a
        // limit are refused without hardening.
        self.limiter.check(unless_refused)?;
        metrics::counter!("syncstore_accounts_hardenings_total").increment(1);
        self.hardening
            .run(move || crypto::harden(&auth_pw, &salt))
            .await
    }

    /// Periodic upkeep: drops expired codes and tokens, idle sessions and refresh
    /// tokens, and unverified accounts older than a day (see `RETENTION`). Returns
    /// how many rows went.
    pub async fn purge_stale(&self) -> Result<u64> {
        let now = now_ms();
        self.blocking(move |s| Ok(s.purge(now, &RETENTION)?)).await
    }

    /// The account of a uid.
    pub async fn account(&self, uid: &str) -> Result<Option<Account>> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok(s.account(&uid)?)).await
    }
}
