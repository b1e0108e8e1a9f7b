//! A Firefox Accounts-compatible accounts service (onepw sign-in, sessions, keys,
//! OAuth, devices, profile), so one syncstore process is a whole Sync deployment.
//!
//! * `crypto` — onepw: stretching, the scrypt verifier, token derivations, bundles.
//! * `store` — the accounts database (`<data_dir>/accounts.sqlite`).
//! * `oauth` — the service's RSA signing keys and its RS256 access tokens.
//! * `mail` — the verification mail of `open` sign-ups (SMTP, when configured).
//! * `limits` — attempt limits (reserved before the work) per account and per client
//!   address, and the gates and budget in front of password hardening.
//! * `api` — the HTTP routes under `/v1` (FxA's auth, OAuth and profile APIs) and the
//!   discovery documents, and the sign-in page Firefox opens at `/` (`pages/`: HTML,
//!   CSS and a script embedded in the binary, speaking Firefox's WebChannel).
//!
//! The server never sees the password or kB: clients send `authPW`, a one-way
//! derivation of the stretched password; the server keeps a scrypt-hardened verifier
//! and `wrapWrapKb`, which only `authPW` unwraps into `wrapKb` (still wrapped by the
//! client's `unwrapBKey`).

pub mod api;
pub mod crypto;
pub mod limits;
pub mod mail;
pub mod oauth;
pub mod store;

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::hawk::{self, SignedRequest};
use crate::auth::nonce::{NonceCache, NonceError};
use crate::tokenserver::fxa::{
    FxaError, IssuerRecord, LocalDecision, LocalIssuer, OAuthUser, OLDSYNC_SCOPE,
};
use limits::{Hardening, Limiter, Rule};
use oauth::{AccessClaims, Signer};
use store::{Account, Code, Device, Refresh, Store, TokenRow};

/// The Sync key scope (keys derived the legacy way from kB).
pub use crate::tokenserver::fxa::OLDSYNC_SCOPE as SYNC_SCOPE;
/// The profile scope.
pub const PROFILE_SCOPE: &str = "profile";
/// Lifetime of an authorization code, ms.
const CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// Lifetime of key fetch and password change tokens, ms.
const SHORT_TOKEN_TTL_MS: i64 = 15 * 60 * 1000;
/// Clock difference allowed in Hawk signatures, seconds.
const HAWK_SKEW_SECS: i64 = 60;
/// Lifetime of an email verification code, ms.
const EMAIL_CODE_TTL_MS: i64 = 15 * 60 * 1000;
/// Most Hawk nonces one account may have remembered at once (within the 2-minute
/// replay window: about 8 signed requests a second, far above any client's use);
/// beyond, that account's signed requests get 429 until its older nonces expire.
const NONCES_PER_ACCOUNT: usize = 1_000;
/// `retryAfter` of a request refused for its account's full share of nonces, s.
const NONCE_RETRY_SECS: u64 = 30;
/// What stored state may live unused (see `store::Retention`).
const RETENTION: store::Retention = store::Retention {
    short_token_ms: SHORT_TOKEN_TTL_MS,
    idle_session_ms: 30 * DAY_MS,
    idle_device_session_ms: 365 * DAY_MS,
    idle_refresh_ms: 365 * DAY_MS,
    unverified_account_ms: DAY_MS,
};
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Longest device name (FxA's limit), in characters.
const MAX_DEVICE_NAME: usize = 255;
/// Longest device type (FxA's limit).
const MAX_DEVICE_TYPE: usize = 16;
/// Longest push callback URL (FxA's limit).
const MAX_PUSH_CALLBACK: usize = 255;
/// Longest push key (base64url; FxA's limit for the public key).
const MAX_PUSH_KEY: usize = 88;
/// Most device commands, the longest command name, and the longest command data.
const MAX_COMMANDS: usize = 16;
const MAX_COMMAND_NAME: usize = 255;
const MAX_COMMAND_DATA: usize = 8 * 1024;

/// The current time, ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who may create an account over the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signups {
    /// Only the operator (`syncstore account add`).
    Closed,
    /// Holders of a single-use invite code (`syncstore account invite`).
    Invite,
    /// Anyone.
    Open,
}

impl Signups {
    /// Parses the `accounts_signups` setting.
    pub fn parse(s: &str) -> Option<Signups> {
        match s {
            "closed" => Some(Signups::Closed),
            "invite" => Some(Signups::Invite),
            "open" => Some(Signups::Open),
            _ => None,
        }
    }

    /// The setting's name (`closed`, `invite`, `open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signups::Closed => "closed",
            Signups::Invite => "invite",
            Signups::Open => "open",
        }
    }
}

/// Longest invite code accepted from a client (a CLI-made one has 32 characters).
const MAX_INVITE_LEN: usize = 64;

/// A fresh invite code: 24 random bytes, URL-safe base64 (192 bits), and the SHA-256
/// of its text, which is all the database keeps.
pub fn new_invite_code() -> (String, [u8; 32]) {
    use base64::Engine;
    let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let hash = crypto::sha256(code.as_bytes());
    (code, hash)
}

/// Errors of the accounts service, each an FxA error (status, errno).
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// 400 errno 101.
    #[error("Account already exists")]
    AccountExists,
    /// 400 errno 102.
    #[error("Unknown account")]
    UnknownAccount,
    /// 400 errno 103.
    #[error("Incorrect password")]
    IncorrectPassword,
    /// 400 errno 104: the account's email is not verified yet.
    #[error("Unverified account")]
    Unverified,
    /// 400 errno 183: a wrong, expired or absent email verification code.
    #[error("Invalid or expired verification code")]
    InvalidCode,
    /// 503 errno 151: the verification mail could not be sent (the cause is logged).
    #[error("Failed to send email: {0}")]
    MailFailed(&'static str),
    /// 400 errno 107.
    #[error("Invalid parameter in request body: {0}")]
    InvalidParameter(String),
    /// 400 errno 108.
    #[error("Missing parameter in request body: {0}")]
    MissingParameter(String),
    /// 401 errno 109.
    #[error("Invalid request signature")]
    InvalidSignature,
    /// 401 errno 110.
    #[error("The authentication token could not be found")]
    InvalidToken,
    /// 401 errno 111 (with the server's time).
    #[error("Invalid authentication timestamp")]
    InvalidTimestamp,
    /// 401 errno 115.
    #[error("Invalid nonce in request signature")]
    InvalidNonce,
    /// 429 errno 114, with `retryAfter` seconds.
    #[error("Client has sent too many requests")]
    TooManyRequests(u64),
    /// 400 errno 120: the email's case differs from the account's (which salts the
    /// client's stretch); the client retries with this one.
    #[error("Incorrect email case")]
    IncorrectEmailCase(String),
    /// 400 errno 125: sign-ups are closed, or the account is disabled.
    #[error("The request was blocked for security reasons: {0}")]
    Blocked(&'static str),
    /// 400 errno 162 (OAuth): unknown, expired or used code or refresh token, or a
    /// PKCE verifier that does not match.
    #[error("Invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// 400 errno 163 (OAuth): a scope this service does not grant.
    #[error("Requested scopes are not allowed")]
    InvalidScopes,
    /// 503 errno 202: a feature this server does not offer (push, device commands).
    #[error("Feature not enabled: {0}")]
    NotEnabled(&'static str),
    /// 500 errno 999: the database or a key failed (the cause is logged, not sent).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<store::StoreError> for AccountsError {
    fn from(e: store::StoreError) -> Self {
        AccountsError::Internal(e.to_string())
    }
}

impl From<oauth::KeyError> for AccountsError {
    fn from(e: oauth::KeyError) -> Self {
        AccountsError::Internal(e.to_string())
    }
}

type Result<T> = std::result::Result<T, AccountsError>;

/// How a request proved a token: Hawk (as Firefox signs) or a prefixed Bearer id
/// (as current FxA clients send, e.g. `Bearer fxs_<id>`).
#[derive(Debug, Clone)]
pub enum TokenAuth {
    /// A Hawk `Authorization` header and what the client signed.
    Hawk {
        /// The parsed header.
        header: Box<hawk::HawkHeader>,
        /// Method, path and query, host, port.
        method: String,
        /// Path and query as sent.
        path_and_query: String,
        /// Host as signed.
        host: String,
        /// Port as signed.
        port: u16,
        /// The body's hash, when the header carries one or there is a body: it is
        /// checked then, and a body without a signed hash is refused.
        body_hash: Option<String>,
    },
    /// A prefixed Bearer token: the kind's prefix and the hex token id.
    Bearer {
        /// `fxs`, `fxk`, `fxpc`.
        prefix: String,
        /// The token id, hex.
        id: String,
    },
}

/// A verified token and its account.
pub struct Authed {
    /// The token's row.
    pub token: TokenRow,
    /// The account.
    pub account: Account,
}

/// A newly made session (and key fetch token).
pub struct NewSession {
    /// The account.
    pub account: Account,
    /// The session token, hex.
    pub session_token: String,
    /// The key fetch token, hex, when keys were asked for.
    pub key_fetch_token: Option<String>,
    /// When the session was made, s.
    pub auth_at: i64,
}

/// An issued OAuth grant.
pub struct Grant {
    /// The access token (JWT).
    pub access_token: String,
    /// The refresh token, hex, for offline grants.
    pub refresh_token: Option<String>,
    /// Granted scopes.
    pub scope: String,
    /// Access token lifetime, s.
    pub expires_in: i64,
    /// When the user authenticated, s.
    pub auth_at: i64,
    /// The client's encrypted keys, passed through from the authorization.
    pub keys_jwe: Option<String>,
}

/// What an OAuth grant is for.
struct GrantRequest<'a> {
    client_id: &'a str,
    scope: &'a str,
    ttl: i64,
    offline: bool,
    /// When the session behind the grant proved the password, ms.
    auth_at: i64,
    keys_jwe: Option<String>,
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
}

fn prefix_of(kind: &str) -> &'static str {
    match kind {
        "sessionToken" => "fxs",
        "keyFetchToken" => "fxk",
        "passwordChangeToken" => "fxpc",
        _ => "",
    }
}

/// Parses a 64-hex-character value.
pub fn hex32(name: &str, value: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(value).map_err(|_| AccountsError::InvalidParameter(name.into()))?;
    bytes
        .try_into()
        .map_err(|_| AccountsError::InvalidParameter(name.into()))
}

/// Whether `email` is a bare `local@domain` address, as FxA accepts them: one `@`; a
/// local part of 1 to 64 characters from RFC 5322's unquoted set (no quotes, spaces,
/// commas, angle brackets, parentheses, control characters); a domain of dot-separated
/// labels of letters, digits and inner hyphens, at least two; 255 characters in all.
/// So the address stored is the one mailed, and nothing else is.
fn valid_email(email: &str) -> bool {
    if email.len() > 255 {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = (1..=64).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    local_ok && domain_ok
}

/// Scopes this service grants: oldsync, profile (and its sub-scopes) and FxA's
/// session-token scope.
fn allowed_scope(scope: &str) -> bool {
    scope == OLDSYNC_SCOPE
        || scope == PROFILE_SCOPE
        || scope.starts_with("profile:")
        || scope == "https://identity.mozilla.com/tokens/session"
}

/// Normalizes a space-separated scope list; refuses scopes not granted here.
fn parse_scopes(scope: &str) -> Result<String> {
    let mut scopes: Vec<&str> = scope.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    scopes.dedup();
    if scopes.is_empty() || !scopes.iter().all(|s| allowed_scope(s)) {
        return Err(AccountsError::InvalidScopes);
    }
    Ok(scopes.join(" "))
}

/// Public OAuth clients are identified by 16 hex characters (FxA's format).
fn check_client_id(client_id: &str) -> Result<()> {
    if client_id.len() == 16 && client_id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AccountsError::InvalidParameter("client_id".into()))
    }
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
            hardening: Hardening::new(0, 0.0),
            mailer,
            code_key: email_code_key(secret),
        })
    }

    /// Bounds password hardening: at most `concurrency` scrypt jobs at once (0: half
    /// the cores, at least one) and `per_sec` a second on average (0: one per two cores).
    pub fn with_hardening(mut self, concurrency: usize, per_sec: f64) -> Accounts {
        self.hardening = Hardening::new(concurrency, per_sec);
        self
    }

    /// The signer of access tokens.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.clone()
    }

    /// What the tokenserver trusts in-process: this service's access tokens, while
    /// their account exists and is enabled.
    pub fn local_issuer(&self) -> Arc<LocalTokens> {
        Arc::new(LocalTokens {
            signer: self.signer.clone(),
            store: self.store.clone(),
        })
    }

    /// The database (for operator commands).
    pub fn store(&self) -> &Store {
        &self.store
    }

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
    /// `ip` for `account` (see `limits::Hardening`: 429 when the budget is spent).
    async fn harden(
        &self,
        auth_pw: [u8; 32],
        salt: [u8; 32],
        ip: Option<IpAddr>,
        account: Option<&str>,
    ) -> Result<crypto::Hardened> {
        let _turn = self.hardening.turn(ip, account).await?;
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

    /// The keys a mail counts on: the requesting address (10 a minute), the recipient
    /// as asked for from that address (3 in 15 minutes: a stranger spends only their
    /// own share, never the owner's), and the recipient in all (20 a day).
    fn mail_keys(&self, ip: Option<IpAddr>, email: &str) -> Vec<limits::Key> {
        let recipient = store::normalize_email(email);
        let unit = ip.map(limits::client_unit);
        let mut keys = vec![
            self.limiter.key(Rule::MailRecipient, (&recipient, unit)),
            self.limiter.key(Rule::MailRecipientTotal, &recipient),
        ];
        keys.extend(ip.map(|ip| self.limiter.address(Rule::MailAddress, ip)));
        keys
    }

    /// The sign-up policy.
    pub fn signups(&self) -> Signups {
        self.signups
    }

    /// Creates an account from the client's `authPW` (API sign-up, subject to the
    /// sign-up policy: under `invite` an unspent invite code is needed) and signs it in.
    /// Every sign-up attempt counts per client address whatever its outcome (with the
    /// account lookups, 30 a minute: sign-up is no free existence oracle and no free
    /// hardening). The cheap checks come first, each counted before any work: the
    /// email's syntax; a wrong invite code counts per email and per client address and
    /// is refused by a read-only lookup (the code is spent in the account's insert
    /// transaction); an email with a verified account is refused by a read-only lookup;
    /// a sign-up that mails counts per address and per recipient (see `mail_keys`).
    /// Only then is the password hardened. A sign-up whose mail fails keeps its counts
    /// (the attempt happened); the unverified account it left is replaced by the next
    /// sign-up for that email and purged after a day.
    pub async fn create(
        &self,
        email: &str,
        auth_pw: &str,
        invite: Option<&str>,
        keys: bool,
        ip: Option<IpAddr>,
        user_agent: &str,
    ) -> Result<NewSession> {
        let normalized = store::normalize_email(email);
        let code = match self.signups {
            Signups::Closed => return Err(AccountsError::Blocked("sign-ups are closed")),
            Signups::Open => None,
            Signups::Invite => {
                let code = invite.map(str::trim).unwrap_or_default();
                if code.is_empty() {
                    return Err(AccountsError::Blocked(
                        "an invite code is needed to sign up on this server",
                    ));
                }
                Some(code)
            }
        };
        // Counted for good: never given back.
        if let Some(ip) = ip {
            self.limiter
                .reserve(&[self.limiter.address(Rule::LookupAddress, ip)])?;
        }
        let auth_pw = hex32("authPW", auth_pw)?;
        if !valid_email(email.trim()) {
            return Err(AccountsError::InvalidParameter("email".into()));
        }
        const INVITE: [Rule; 2] = [Rule::FailInvite, Rule::FailAddress];
        let mut attempt = None;
        let invite_hash = match code {
            None => None,
            Some(code) => {
                let mut counted = vec![self.limiter.key(Rule::FailInvite, &normalized)];
                counted.extend(ip.map(|ip| self.limiter.address(Rule::FailAddress, ip)));
                attempt = Some(self.limiter.reserve(&counted)?);
                let now = now_ms();
                let usable =
                    match (code.len() <= MAX_INVITE_LEN).then(|| crypto::sha256(code.as_bytes())) {
                        Some(h) => self
                            .blocking(move |s| Ok(s.invite_usable(&h, now)?))
                            .await?
                            .then_some(h),
                        None => None,
                    };
                // A failure stays counted.
                Some(usable.ok_or(AccountsError::Blocked(BAD_INVITE))?)
            }
        };
        // Everything from here on is not a failed invite code.
        let give_back = |attempt: Option<limits::Reservation<'_>>| {
            if let Some(a) = attempt {
                a.give_back_all();
            }
        };
        let e = email.to_string();
        let taken = self
            .blocking(move |s| Ok(s.account_by_email(&e)?.is_some_and(|a| a.email_verified)))
            .await;
        if !matches!(taken, Ok(false)) {
            give_back(attempt);
            return Err(taken.err().unwrap_or(AccountsError::AccountExists));
        }
        // Open sign-ups with SMTP mail a stranger's address.
        let mails = self.signups == Signups::Open && self.mailer.is_some();
        let mail = if mails {
            match self.limiter.reserve(&self.mail_keys(ip, email)) {
                Ok(m) => Some(m),
                Err(e) => {
                    give_back(attempt);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let turn = match self.hardening.turn(ip, Some(&normalized)).await {
            Ok(turn) => turn,
            Err(e) => {
                give_back(attempt);
                give_back(mail);
                return Err(e);
            }
        };
        // Open sign-ups prove their address when mail can be sent; invited ones are
        // vouched for by the operator's invite.
        let verified = !mails;
        let email = email.to_string();
        let store = self.store.clone();
        let made = self
            .hardening
            .run(move || {
                insert_new_account(&store, &email, &auth_pw, invite_hash.as_ref(), verified)
            })
            .await
            .and_then(|made| made);
        drop(turn);
        let account = match made {
            Ok(account) => account,
            // Another sign-up spent the code in between: a failed code.
            Err(AccountsError::Blocked(m)) if invite_hash.is_some() => {
                give_back(mail);
                return Err(AccountsError::Blocked(m));
            }
            Err(e) => {
                give_back(attempt);
                give_back(mail);
                return Err(e);
            }
        };
        if let Some(mut a) = attempt {
            a.give_back(&INVITE);
        }
        let session = self.new_session(account, keys, user_agent).await?;
        if !session.account.email_verified {
            // A failed mail keeps its counts: the attempt happened.
            self.send_email_code(&session.account).await?;
        }
        Ok(session)
    }

    /// Makes a fresh 6-digit verification code for an unverified account (replacing
    /// any earlier one; only its hash, salted with the uid, is stored) and mails it.
    /// Callers count the mail in the limits per address and recipient first.
    async fn send_email_code(&self, account: &Account) -> Result<()> {
        let Some(mailer) = &self.mailer else {
            return Err(AccountsError::NotEnabled("email verification"));
        };
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let hash = email_code_hash(&self.code_key, &account.uid, &code);
        let uid = account.uid.clone();
        let expires_at = now_ms() + EMAIL_CODE_TTL_MS;
        self.blocking(move |s| Ok(s.set_email_code(&uid, &hash, expires_at)?))
            .await?;
        if let Err(e) = mailer
            .send_code(&account.email, &code, self.signer.issuer())
            .await
        {
            tracing::error!(uid = %account.uid, error = %e, "verification mail not sent");
            return Err(AccountsError::MailFailed(
                "the verification code could not be mailed; try again later",
            ));
        }
        tracing::info!(uid = %account.uid, "verification code mailed");
        Ok(())
    }

    /// `POST /session/verify_code`: checks the mailed code. Each guess is counted
    /// before it is checked (per account and per client address, 10 a minute); the
    /// right code clears the account's count and gives back the address's.
    pub async fn verify_email(&self, a: &Authed, code: &str, ip: Option<IpAddr>) -> Result<()> {
        if a.account.email_verified {
            return Ok(());
        }
        let mut counted = vec![self.limiter.key(Rule::FailCode, &a.account.uid)];
        counted.extend(ip.map(|ip| self.limiter.address(Rule::FailAddress, ip)));
        let mut attempt = self.limiter.reserve(&counted)?;
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AccountsError::InvalidCode);
        }
        let hash = email_code_hash(&self.code_key, &a.account.uid, code);
        let uid = a.account.uid.clone();
        let now = now_ms();
        let found = self
            .blocking(move |s| Ok(s.verify_email_code(&uid, &hash, now)?))
            .await?;
        match found {
            store::CodeCheck::Verified => {}
            // The right code, but the address was verified by another sign-up first.
            store::CodeCheck::Taken => {
                attempt.give_back_all();
                return Err(AccountsError::AccountExists);
            }
            _ => return Err(AccountsError::InvalidCode),
        }
        attempt.clear(&[Rule::FailCode]);
        attempt.give_back(&[Rule::FailAddress]);
        tracing::info!(uid = %a.account.uid, "email verified");
        Ok(())
    }

    /// `POST /session/resend_code`: mails a new code, within the mail limits per
    /// recipient as asked for from this address (3 in 15 minutes, sign-up and sign-in
    /// mails included), per recipient in all (20 a day) and per client address (10 a
    /// minute), else 429.
    pub async fn resend_email_code(&self, a: &Authed, ip: Option<IpAddr>) -> Result<()> {
        if a.account.email_verified {
            return Ok(());
        }
        // A failed mail keeps its counts: the attempt happened.
        let _attempt = self
            .limiter
            .reserve(&self.mail_keys(ip, &a.account.email))?;
        self.send_email_code(&a.account).await
    }

    /// Refuses an account whose email is not verified yet (errno 104).
    pub fn require_verified(account: &Account) -> Result<()> {
        if account.email_verified {
            Ok(())
        } else {
            Err(AccountsError::Unverified)
        }
    }

    /// Makes an account (no session): the operator's `account add` and API sign-up.
    pub async fn add_account(&self, email: &str, auth_pw: &str) -> Result<Account> {
        let auth_pw = hex32("authPW", auth_pw)?;
        let email = email.to_string();
        let _turn = self.hardening.turn(None, None).await?;
        let store = self.store.clone();
        self.hardening
            .run(move || insert_new_account(&store, &email, &auth_pw, None, true))
            .await?
    }

    /// Checks `authPW` for `email`. Each attempt is counted as a failure before any
    /// work: per client address (10 a minute) first, then — only for an account that
    /// exists, so made-up emails make no per-account keys — per (account, address) (10
    /// a minute) and per account (100 an hour, all addresses together). Over that
    /// ceiling, an address that already failed for the account this hour is refused,
    /// but any other address still gets its attempt checked: failures from elsewhere
    /// never refuse the owner's correct password. An unknown account, another case of
    /// the email and a wrong password keep the failure counts; a correct password
    /// clears the (account, address) ones, gives back the rest, and only then counts as
    /// a sign-in (30 a minute per account and per address; over it 429), so attempts
    /// still in flight never hold the account's sign-in budget. The password is
    /// hardened only after the cheap checks (see `limits::Hardening`).
    async fn check_password(
        &self,
        email: &str,
        auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<Account> {
        const HERE: [Rule; 2] = [Rule::FailAccountAddress, Rule::FailAccountAddressHour];
        let auth_pw = hex32("authPW", auth_pw)?;
        let by_address: Vec<_> = ip
            .map(|ip| self.limiter.address(Rule::FailAddress, ip))
            .into_iter()
            .collect();
        let mut address = self.limiter.reserve(&by_address)?;
        // The verified account of the address, else its newest pending sign-ups
        // (each with its own password; see `pending_sign_in`). The per-account counts
        // are kept on the first of them.
        let e = email.to_string();
        let candidates = self
            .blocking(move |s| Ok(s.accounts_by_email(&e, store::MAX_PENDING_SIGN_IN)?))
            .await?;
        let Some(first) = candidates.first() else {
            return Err(AccountsError::UnknownAccount);
        };
        let unit = ip.map(limits::client_unit);
        let failed_here = self
            .limiter
            .key(Rule::FailAccountAddressHour, (&first.uid, unit));
        let mut attempt = match self.limiter.reserve_under_ceiling(
            &[
                self.limiter
                    .key(Rule::FailAccountAddress, (&first.uid, unit)),
                failed_here,
            ],
            self.limiter.key(Rule::FailAccount, &first.uid),
            failed_here,
        ) {
            Ok(a) => a,
            Err(e) => {
                address.give_back_all();
                return Err(e);
            }
        };
        // The email salts the client's stretch: another case gives another authPW, so
        // the client is told the account's own (as FxA does) before any check. It
        // counts as a failure: it tells the account exists.
        let same_case: Vec<&Account> = candidates
            .iter()
            .filter(|a| a.email == email.trim())
            .collect();
        if same_case.is_empty() {
            return Err(AccountsError::IncorrectEmailCase(first.email.clone()));
        }
        let mut matched = None;
        for account in same_case {
            let h = match self
                .harden(auth_pw, account.auth_salt, ip, Some(&account.uid))
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    attempt.give_back_all();
                    address.give_back_all();
                    return Err(e);
                }
            };
            if crypto::ct_eq(&h.verify_hash, &account.verify_hash) {
                matched = Some((account.clone(), h));
                break;
            }
        }
        let Some((account, h)) = matched else {
            return Err(AccountsError::IncorrectPassword);
        };
        attempt.clear(&HERE);
        attempt.give_back(&[Rule::FailAccount]);
        address.give_back(&[Rule::FailAddress]);
        // A sign-in, counted now that it is one.
        let mut signed_in = vec![self.limiter.key(Rule::LoginAccount, &account.uid)];
        signed_in.extend(ip.map(|ip| self.limiter.address(Rule::LoginAddress, ip)));
        self.limiter.reserve(&signed_in)?;
        if account.disabled {
            return Err(AccountsError::Blocked("the account is disabled"));
        }
        let wrap_kb = crypto::xor32(&account.wrap_wrap_kb, &h.wrapwrap_key);
        Ok(Account {
            // Only carried to make the key bundle; never stored in the clear.
            wrap_wrap_kb: wrap_kb,
            ..account
        })
    }

    /// Signs in with `authPW`.
    pub async fn login(
        &self,
        email: &str,
        auth_pw: &str,
        keys: bool,
        ip: Option<IpAddr>,
        user_agent: &str,
    ) -> Result<NewSession> {
        let account = self.check_password(email, auth_pw, ip).await?;
        let session = self.new_session(account, keys, user_agent).await?;
        // An account still to verify gets a fresh code, within the mail limits per
        // recipient and per address; past them the code mailed last stays valid (and
        // the session's holder can ask again with resend_code later).
        if !session.account.email_verified && self.mailer.is_some() {
            match self
                .limiter
                .reserve(&self.mail_keys(ip, &session.account.email))
            {
                Ok(attempt) => {
                    if self.send_email_code(&session.account).await.is_err() {
                        attempt.give_back_all();
                    }
                }
                Err(_) => {
                    tracing::info!(uid = %session.account.uid, "no new verification mail: mail limits reached");
                }
            }
        }
        Ok(session)
    }

    /// A new session (and key fetch token) for an account whose `wrap_wrap_kb` field
    /// holds the unwrapped `wrapKb` (see `check_password`; `add_account` made a random one).
    async fn new_session(&self, account: Account, keys: bool, ua: &str) -> Result<NewSession> {
        let now = now_ms();
        let session = crypto::random32();
        let sk = crypto::token_keys(&session, "sessionToken");
        let mut rows = vec![TokenRow {
            id_hash: crypto::sha256(&sk.id),
            kind: "sessionToken".into(),
            uid: account.uid.clone(),
            auth_key: sk.auth_key,
            data: None,
            created_at: now,
            last_used_at: now,
            user_agent: ua.chars().take(200).collect(),
        }];
        let mut key_fetch_token = None;
        if keys {
            let kft = crypto::random32();
            let kk = crypto::token_keys(&kft, "keyFetchToken");
            let mut payload = account.ka.to_vec();
            payload.extend_from_slice(&account.wrap_wrap_kb);
            rows.push(TokenRow {
                id_hash: crypto::sha256(&kk.id),
                kind: "keyFetchToken".into(),
                uid: account.uid.clone(),
                auth_key: kk.auth_key,
                // Stored encrypted for the token's holder only.
                data: Some(crypto::bundle(&kk.bundle_key, "account/keys", &payload)),
                created_at: now,
                last_used_at: now,
                user_agent: String::new(),
            });
            key_fetch_token = Some(hex::encode(kft));
        }
        self.blocking(move |s| {
            for r in &rows {
                s.insert_token(r)?;
            }
            Ok(())
        })
        .await?;
        Ok(NewSession {
            account,
            session_token: hex::encode(session),
            key_fetch_token,
            auth_at: now / 1000,
        })
    }

    /// Verifies a request's token of `kind` (Hawk or prefixed Bearer).
    pub async fn authenticate(&self, auth: &TokenAuth, kind: &str) -> Result<Authed> {
        let id = match auth {
            TokenAuth::Hawk { header, .. } => header.id.clone(),
            TokenAuth::Bearer { prefix, id } => {
                if prefix != prefix_of(kind) {
                    return Err(AccountsError::InvalidToken);
                }
                id.clone()
            }
        };
        let id = hex32("id", &id).map_err(|_| AccountsError::InvalidToken)?;
        let id_hash = crypto::sha256(&id);
        let k = kind.to_string();
        let found = self
            .blocking(move |s| {
                let Some(t) = s.token(&id_hash, &k)? else {
                    return Ok(None);
                };
                Ok(s.account(&t.uid)?.map(|a| (t, a)))
            })
            .await?;
        let Some((token, account)) = found else {
            return Err(AccountsError::InvalidToken);
        };
        let now = now_ms();
        if kind != "sessionToken" && token.created_at + SHORT_TOKEN_TTL_MS < now {
            return Err(AccountsError::InvalidToken);
        }
        if account.disabled {
            return Err(AccountsError::InvalidToken);
        }
        if let TokenAuth::Hawk {
            header,
            method,
            path_and_query,
            host,
            port,
            body_hash,
        } = auth
        {
            if (header.ts - now / 1000).abs() > HAWK_SKEW_SECS {
                return Err(AccountsError::InvalidTimestamp);
            }
            let req = SignedRequest {
                method,
                path_and_query,
                host,
                port: *port,
            };
            let mac = hawk::compute_mac(&token.auth_key, header, &req);
            if !hawk::macs_equal(&mac, &header.mac) {
                return Err(AccountsError::InvalidSignature);
            }
            // A body must be covered by the signature (Firefox and PyFxA always sign
            // it): else whoever sees the request could send another body with it.
            if let Some(actual) = body_hash {
                match &header.hash {
                    Some(signed) if hawk::macs_equal(signed, actual) => {}
                    _ => return Err(AccountsError::InvalidSignature),
                }
            }
            // Nonces are counted per account, not per token: an account with many
            // sessions cannot take more of the cache than one with a single session.
            let digest = crypto::sha256(account.uid.as_bytes());
            let owner = u64::from_be_bytes(digest[..8].try_into().expect("8"));
            self.nonces
                .check_and_insert(owner, &header.id, header.ts, &header.nonce, now / 1000)
                .map_err(|e| match e {
                    NonceError::Replay => AccountsError::InvalidNonce,
                    NonceError::Full => AccountsError::TooManyRequests(NONCE_RETRY_SECS),
                })?;
        }
        if kind == "sessionToken" {
            let h = token.id_hash;
            self.blocking(move |s| Ok(s.touch_token(&h, now)?)).await?;
        }
        Ok(Authed { token, account })
    }

    /// `GET /account/keys`: the encrypted key bundle (the key fetch token is used up).
    /// The bundle returned is the one the request took out of the database in one
    /// statement: of requests presenting one token at once, only one gets it.
    pub async fn keys_bundle(&self, auth: &TokenAuth) -> Result<String> {
        let a = self.authenticate(auth, "keyFetchToken").await?;
        Self::require_verified(&a.account)?;
        let h = a.token.id_hash;
        let taken = self
            .blocking(move |s| Ok(s.take_token(&h, "keyFetchToken")?))
            .await?;
        let Some(data) = taken else {
            // Another request used it first.
            return Err(AccountsError::InvalidToken);
        };
        data.map(hex::encode)
            .ok_or_else(|| AccountsError::Internal("key fetch token without keys".into()))
    }

    /// Whether an account exists (by uid or by email). A lookup by email tells whether
    /// an address has an account: it counts per client address (30 a minute).
    pub async fn exists(
        &self,
        uid: Option<String>,
        email: Option<String>,
        ip: Option<IpAddr>,
    ) -> Result<bool> {
        if uid.is_none()
            && email.is_some()
            && let Some(ip) = ip
        {
            self.limiter
                .reserve(&[self.limiter.address(Rule::LookupAddress, ip)])?;
        }
        self.blocking(move |s| {
            Ok(match (uid, email) {
                (Some(uid), _) => s.account(&uid)?.is_some(),
                (None, Some(email)) => s.account_by_email(&email)?.is_some(),
                (None, None) => false,
            })
        })
        .await
    }

    /// Destroys a session (and its device).
    pub async fn destroy_session(&self, a: &Authed) -> Result<()> {
        let h = a.token.id_hash;
        self.blocking(move |s| Ok(s.delete_token(&h).map(|_| ())?))
            .await
    }

    /// Deletes the account of session `a`, proven again by its password (`authPW` for
    /// `email`, under the attempt limits); its Sync data is queued for deletion.
    pub async fn destroy_account(
        &self,
        a: &Authed,
        email: &str,
        auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        let account = self.check_password(email, auth_pw, ip).await?;
        if account.uid != a.account.uid {
            return Err(AccountsError::InvalidToken);
        }
        let uid = account.uid.clone();
        let gone = self
            .blocking(move |s| Ok(s.delete_account_by_uid(&uid, now_ms())?))
            .await?;
        tracing::info!(uid = %account.uid, deleted = gone.is_some(), "account deleted by its owner");
        Ok(())
    }

    /// `POST /account/scoped-key-data`: key metadata of the requested key-bearing scopes.
    pub fn scoped_key_data(
        &self,
        account: &Account,
        client_id: &str,
        scope: &str,
    ) -> Result<serde_json::Value> {
        Self::require_verified(account)?;
        check_client_id(client_id)?;
        let scopes = parse_scopes(scope)?;
        let mut out = serde_json::Map::new();
        if scopes.split(' ').any(|s| s == OLDSYNC_SCOPE) {
            out.insert(
                OLDSYNC_SCOPE.into(),
                serde_json::json!({
                    "identifier": OLDSYNC_SCOPE,
                    "keyRotationSecret": "0".repeat(64),
                    "keyRotationTimestamp": account.keys_changed_at,
                }),
            );
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Signs an access token for `account`; `auth_at` (ms) is when the session behind
    /// it proved the password.
    fn access_token(
        &self,
        account: &Account,
        client_id: &str,
        scope: &str,
        ttl: i64,
        auth_at: i64,
    ) -> Result<(String, i64)> {
        let ttl = if ttl <= 0 {
            oauth::DEFAULT_ACCESS_TTL_SECS
        } else {
            ttl.min(oauth::MAX_ACCESS_TTL_SECS)
        };
        let now = now_ms() / 1000;
        let claims = AccessClaims {
            iss: self.signer.issuer().to_string(),
            sub: account.uid.clone(),
            aud: client_id.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            iat: now,
            exp: now + ttl,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            generation: account.verifier_set_at,
            auth_at,
        };
        Ok((self.signer.sign(&claims)?, ttl))
    }

    async fn grant(&self, account: &Account, g: GrantRequest<'_>) -> Result<Grant> {
        let GrantRequest {
            client_id,
            scope,
            ttl,
            offline,
            auth_at,
            keys_jwe,
        } = g;
        let (access_token, expires_in) =
            self.access_token(account, client_id, scope, ttl, auth_at)?;
        let mut refresh_token = None;
        if offline {
            let token = crypto::random32();
            let now = now_ms();
            let r = Refresh {
                token_hash: crypto::sha256(&token),
                uid: account.uid.clone(),
                client_id: client_id.to_string(),
                scope: scope.to_string(),
                created_at: now,
                last_used_at: now,
                // The session's (or code's) sign-in, not now: a refresh token made
                // with a stolen session is no fresher than that session.
                auth_at,
            };
            self.blocking(move |s| Ok(s.insert_refresh(&r)?)).await?;
            refresh_token = Some(hex::encode(token));
        }
        Ok(Grant {
            access_token,
            refresh_token,
            scope: scope.to_string(),
            expires_in,
            auth_at: auth_at / 1000,
            keys_jwe,
        })
    }

    /// `grant_type=fxa-credentials`: a token straight from a session.
    pub async fn token_from_session(
        &self,
        a: &Authed,
        client_id: &str,
        scope: &str,
        ttl: i64,
        offline: bool,
    ) -> Result<Grant> {
        Self::require_verified(&a.account)?;
        check_client_id(client_id)?;
        let scope = parse_scopes(scope)?;
        let g = GrantRequest {
            client_id,
            scope: &scope,
            ttl,
            offline,
            auth_at: a.token.created_at,
            keys_jwe: None,
        };
        self.grant(&a.account, g).await
    }

    /// `POST /oauth/authorization`: a code for the session's account.
    pub async fn authorize(
        &self,
        a: &Authed,
        client_id: &str,
        scope: &str,
        code_challenge: Option<String>,
        keys_jwe: Option<String>,
        offline: bool,
    ) -> Result<String> {
        Self::require_verified(&a.account)?;
        check_client_id(client_id)?;
        let scope = parse_scopes(scope)?;
        if let Some(c) = &code_challenge
            && (c.len() != 43
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(AccountsError::InvalidParameter("code_challenge".into()));
        }
        let code = crypto::random32();
        let row = Code {
            uid: a.account.uid.clone(),
            client_id: client_id.to_string(),
            scope,
            code_challenge,
            keys_jwe,
            offline,
            auth_at: a.token.created_at,
            expires_at: now_ms() + CODE_TTL_MS,
        };
        let h = crypto::sha256(&code);
        let now = now_ms();
        self.blocking(move |s| Ok(s.insert_code(&h, &row, now)?))
            .await?;
        Ok(hex::encode(code))
    }

    /// `grant_type=authorization_code`: trades a code (with its PKCE verifier).
    pub async fn token_from_code(
        &self,
        client_id: &str,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<Grant> {
        let code = hex32("code", code).map_err(|_| AccountsError::InvalidGrant("unknown code"))?;
        let h = crypto::sha256(&code);
        let row = self.blocking(move |s| Ok(s.take_code(&h)?)).await?;
        let row = row.ok_or(AccountsError::InvalidGrant("unknown code"))?;
        if row.expires_at < now_ms() || row.client_id != client_id {
            return Err(AccountsError::InvalidGrant("unknown code"));
        }
        match (&row.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                use base64::Engine;
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(crypto::sha256(v.as_bytes()));
                if !crypto::ct_eq(computed.as_bytes(), challenge.as_bytes()) {
                    return Err(AccountsError::InvalidGrant("PKCE verifier does not match"));
                }
            }
            (None, _) => {
                // Public clients must use PKCE; confidential clients do not exist here.
                return Err(AccountsError::InvalidGrant("code issued without PKCE"));
            }
            (Some(_), None) => return Err(AccountsError::MissingParameter("code_verifier".into())),
        }
        let uid = row.uid.clone();
        let account = self.blocking(move |s| Ok(s.account(&uid)?)).await?;
        let account = account
            .filter(|a| !a.disabled)
            .ok_or(AccountsError::InvalidGrant("unknown account"))?;
        Self::require_verified(&account)?;
        let g = GrantRequest {
            client_id,
            scope: &row.scope,
            ttl: 0,
            offline: row.offline,
            auth_at: row.auth_at,
            keys_jwe: row.keys_jwe.clone(),
        };
        self.grant(&account, g).await
    }

    /// `grant_type=refresh_token`: a new access token (scope narrowed if asked).
    pub async fn token_from_refresh(
        &self,
        client_id: &str,
        refresh: &str,
        scope: Option<&str>,
        ttl: i64,
    ) -> Result<Grant> {
        let token = hex32("refresh_token", refresh)
            .map_err(|_| AccountsError::InvalidGrant("unknown refresh token"))?;
        let h = crypto::sha256(&token);
        let now = now_ms();
        let row = self.blocking(move |s| Ok(s.use_refresh(&h, now)?)).await?;
        let row = row
            .filter(|r| r.client_id == client_id)
            .ok_or(AccountsError::InvalidGrant("unknown refresh token"))?;
        let scope = match scope {
            Some(s) if !s.trim().is_empty() => {
                let wanted = parse_scopes(s)?;
                if !wanted
                    .split(' ')
                    .all(|w| row.scope.split(' ').any(|g| g == w))
                {
                    return Err(AccountsError::InvalidScopes);
                }
                wanted
            }
            _ => row.scope.clone(),
        };
        let uid = row.uid.clone();
        let account = self.blocking(move |s| Ok(s.account(&uid)?)).await?;
        let account = account
            .filter(|a| !a.disabled)
            .ok_or(AccountsError::InvalidGrant("unknown account"))?;
        // The access token carries the sign-in the refresh token came from (0 for a
        // refresh token from before that was recorded: older than any sign-in).
        let (access_token, expires_in) =
            self.access_token(&account, client_id, &scope, ttl, row.auth_at)?;
        let shown_auth_at = if row.auth_at > 0 {
            row.auth_at
        } else {
            row.created_at
        };
        Ok(Grant {
            access_token,
            refresh_token: None,
            scope,
            expires_in,
            auth_at: shown_auth_at / 1000,
            keys_jwe: None,
        })
    }

    /// `POST /oauth/destroy`: revokes a refresh token. Access tokens are JWTs that
    /// stay valid until they expire (as FxA's).
    pub async fn destroy_token(&self, token: &str) -> Result<()> {
        if let Ok(t) = hex32("token", token) {
            let h = crypto::sha256(&t);
            self.blocking(move |s| Ok(s.delete_refresh(&h).map(|_| ())?))
                .await?;
        }
        Ok(())
    }

    /// Checks an access token of this service (`/v1/verify`, the profile endpoint): its
    /// signature and expiry, and its account now: it exists, is enabled, and its
    /// password has not changed since the token was issued (the token's generation is
    /// the account's). Anything else is an invalid token.
    pub async fn verify_access(&self, token: &str) -> Result<(AccessClaims, Account)> {
        let claims = self
            .signer
            .verify(token)
            .ok_or(AccountsError::InvalidToken)?;
        let account = self.account(&claims.sub).await?;
        match account {
            Some(a) if !a.disabled && a.verifier_set_at == claims.generation => Ok((claims, a)),
            _ => Err(AccountsError::InvalidToken),
        }
    }

    /// The account of a uid.
    pub async fn account(&self, uid: &str) -> Result<Option<Account>> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok(s.account(&uid)?)).await
    }

    /// Registers (no id) or updates the session's device.
    pub async fn put_device(&self, a: &Authed, update: DeviceUpdate) -> Result<Device> {
        update.check()?;
        let uid = a.account.uid.clone();
        let session = a.token.id_hash.to_vec();
        self.blocking(move |s| {
            let now = now_ms();
            let existing = s.devices(&uid)?.into_iter().find(|d| match &update.id {
                Some(id) => &d.id == id,
                None => d.session_id_hash.as_deref() == Some(&session[..]),
            });
            if update.id.is_some() && existing.is_none() {
                return Err(AccountsError::InvalidParameter("id".into()));
            }
            let mut d = existing.unwrap_or_else(|| Device {
                id: hex::encode(rand::random::<[u8; 16]>()),
                uid: uid.clone(),
                session_id_hash: Some(session.clone()),
                kind: "desktop".into(),
                available_commands: "{}".into(),
                created_at: now,
                ..Default::default()
            });
            if let Some(v) = update.name {
                d.name = v;
            }
            if let Some(v) = update.kind {
                d.kind = v;
            }
            if let Some(v) = update.push_callback {
                d.push_callback = Some(v);
            }
            if let Some(v) = update.push_public_key {
                d.push_public_key = Some(v);
            }
            if let Some(v) = update.push_auth_key {
                d.push_auth_key = Some(v);
            }
            if let Some(v) = update.available_commands {
                d.available_commands = v.to_string();
            }
            // Clearing a push registration (FxA takes empty strings for that).
            for field in [
                &mut d.push_callback,
                &mut d.push_public_key,
                &mut d.push_auth_key,
            ] {
                if field.as_deref() == Some("") {
                    *field = None;
                }
            }
            d.last_access_at = now;
            s.upsert_device(&d)?;
            Ok(d)
        })
        .await
    }

    /// The account's devices.
    pub async fn devices(&self, uid: &str) -> Result<Vec<Device>> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok(s.devices(&uid)?)).await
    }

    /// Deletes a device and its session.
    pub async fn destroy_device(&self, uid: &str, id: &str) -> Result<()> {
        let (uid, id) = (uid.to_string(), id.to_string());
        self.blocking(move |s| Ok(s.delete_device(&uid, &id).map(|_| ())?))
            .await
    }

    /// Sessions, devices and refresh tokens of the account (attached clients).
    pub async fn attached(&self, uid: &str) -> Result<(Vec<TokenRow>, Vec<Device>, Vec<Refresh>)> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok((s.sessions(&uid)?, s.devices(&uid)?, s.refresh_tokens(&uid)?)))
            .await
    }

    /// Revokes an attached client: a session (by id hash hex) or a refresh token.
    pub async fn destroy_attached(
        &self,
        uid: &str,
        session: Option<String>,
        refresh: Option<String>,
        device: Option<String>,
    ) -> Result<()> {
        let uid = uid.to_string();
        self.blocking(move |s| {
            if let Some(d) = device {
                s.delete_device(&uid, &d)?;
            }
            if let Some(h) = session.and_then(|h| hex32("sessionTokenId", &h).ok())
                && s.sessions(&uid)?.iter().any(|t| t.id_hash == h)
            {
                s.delete_token(&h)?;
            }
            if let Some(h) = refresh.and_then(|h| hex32("refreshTokenId", &h).ok())
                && s.refresh_tokens(&uid)?.iter().any(|t| t.token_hash == h)
            {
                s.delete_refresh(&h)?;
            }
            Ok(())
        })
        .await
    }

    /// `POST /password/change/start`: checks the old password; a key fetch token (for
    /// the current kB) and a password change token.
    pub async fn password_change_start(
        &self,
        email: &str,
        old_auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, String)> {
        let account = self.check_password(email, old_auth_pw, ip).await?;
        let session = self.new_session(account.clone(), true, "").await?;
        // The session that carried the key fetch token is not needed.
        let sk = crypto::token_keys(&hex32("s", &session.session_token)?, "sessionToken");
        let sh = crypto::sha256(&sk.id);
        let pct = crypto::random32();
        let pk = crypto::token_keys(&pct, "passwordChangeToken");
        let now = now_ms();
        let row = TokenRow {
            id_hash: crypto::sha256(&pk.id),
            kind: "passwordChangeToken".into(),
            uid: account.uid.clone(),
            auth_key: pk.auth_key,
            data: None,
            created_at: now,
            last_used_at: now,
            user_agent: String::new(),
        };
        self.blocking(move |s| {
            s.delete_token(&sh)?;
            Ok(s.insert_token(&row)?)
        })
        .await?;
        Ok((
            session.key_fetch_token.unwrap_or_default(),
            hex::encode(pct),
        ))
    }

    /// `POST /password/change/finish`: the new verifier and the same kB (wrapped under
    /// the new password); every other session and token is revoked; a new session.
    /// The password change token is taken (read and deleted in one statement) before
    /// the hardening: of requests presenting one token at once, only one goes on. The
    /// hardening counts for the client address `ip` and the account.
    pub async fn password_change_finish(
        &self,
        a: &Authed,
        auth_pw: &str,
        wrap_kb: &str,
        keys: bool,
        ua: &str,
        ip: Option<IpAddr>,
    ) -> Result<NewSession> {
        let auth_pw = hex32("authPW", auth_pw)?;
        let wrap_kb = hex32("wrapKb", wrap_kb)?;
        let th = a.token.id_hash;
        let taken = self
            .blocking(move |s| Ok(s.take_token(&th, "passwordChangeToken")?))
            .await?;
        if taken.is_none() {
            // Another request used it first.
            return Err(AccountsError::InvalidToken);
        }
        let salt = crypto::random32();
        let h = self.harden(auth_pw, salt, ip, Some(&a.account.uid)).await?;
        let wrap_wrap_kb = crypto::xor32(&wrap_kb, &h.wrapwrap_key);
        let uid = a.account.uid.clone();
        let now = now_ms();
        let vh = h.verify_hash;
        self.blocking(move |s| Ok(s.set_password(&uid, &salt, &vh, &wrap_wrap_kb, now, false)?))
            .await?;
        let mut account = a.account.clone();
        account.verifier_set_at = now;
        account.wrap_wrap_kb = wrap_kb;
        self.new_session(account, keys, ua).await
    }

    /// Resets an account's password from a new `authPW` (operator command): kB cannot
    /// be kept without the old password, so it changes (keys_changed_at moves, Sync
    /// starts over with new keys) and every session is revoked.
    pub async fn reset_password(&self, email: &str, auth_pw: &str) -> Result<()> {
        let e = email.to_string();
        let account = self.blocking(move |s| Ok(s.account_by_email(&e)?)).await?;
        let account = account.ok_or(AccountsError::UnknownAccount)?;
        let auth_pw = hex32("authPW", auth_pw)?;
        let salt = crypto::random32();
        let h = self.harden(auth_pw, salt, None, None).await?;
        let now = now_ms();
        let wwkb = crypto::random32();
        self.blocking(move |s| {
            Ok(s.set_password(&account.uid, &salt, &h.verify_hash, &wwkb, now, true)?)
        })
        .await
    }
}

/// The key of the email codes' hash: HKDF-SHA256 of the deployment secret (which is
/// in the configuration or the data dir's secret file, not in the accounts database).
fn email_code_key(secret: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, secret.as_bytes())
        .expand(b"syncstore accounts email code key v1", &mut key)
        .expect("32 bytes of HKDF output");
    key
}

/// What the store keeps of an email verification code: HMAC-SHA256 of uid and code
/// under the code key. A stolen database alone does not give the code back (its 10^6
/// candidates cannot be tried without the key).
fn email_code_hash(key: &[u8; 32], uid: &str, code: &str) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(uid.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The refusal of an unknown, spent or expired invite code.
const BAD_INVITE: &str = "the invite code is unknown, used or expired";

/// Makes an account from `authPW` and stores it (blocking: scrypt runs here). kB is
/// random: the stored `wrapWrapKb` is random, so `wrapKb` and kB are too.
pub fn insert_new_account(
    store: &Store,
    email: &str,
    auth_pw: &[u8; 32],
    invite: Option<&[u8; 32]>,
    email_verified: bool,
) -> Result<Account> {
    let email = email.trim().to_string();
    if !valid_email(&email) {
        return Err(AccountsError::InvalidParameter("email".into()));
    }
    let auth_salt = crypto::random32();
    let h = crypto::harden(auth_pw, &auth_salt);
    let now = now_ms();
    let account = Account {
        uid: hex::encode(rand::random::<[u8; 16]>()),
        email,
        auth_salt,
        verify_hash: h.verify_hash,
        wrap_wrap_kb: crypto::random32(),
        ka: crypto::random32(),
        verifier_set_at: now,
        keys_changed_at: now,
        created_at: now,
        disabled: false,
        display_name: None,
        email_verified,
    };
    match store.insert_account(&account, invite)? {
        store::Inserted::Created => {}
        store::Inserted::ReplacedUnverified => {
            tracing::info!(uid = %account.uid, "the pending (unverified) accounts of this email were replaced");
        }
        store::Inserted::EmailTaken => return Err(AccountsError::AccountExists),
        store::Inserted::BadInvite => {
            return Err(AccountsError::Blocked(BAD_INVITE));
        }
    }
    tracing::info!(uid = %account.uid, "account created");
    Ok(account)
}

/// This service's access tokens as the tokenserver sees them: valid by signature and
/// claims, and only while the account exists and is enabled (an access token outlives
/// neither the account's deletion nor its disabling).
pub struct LocalTokens {
    signer: Arc<Signer>,
    store: Store,
}

impl LocalIssuer for LocalTokens {
    fn verify_local<'a>(&'a self, token: &'a str) -> LocalDecision<'a> {
        Box::pin(async move {
            let (user, claims) = match self.signer.decide(token)? {
                Ok(decided) => decided,
                Err(e) => return Some(Err(e)),
            };
            let (store, uid) = (self.store.clone(), user.fxa_uid.clone());
            let found = tokio::task::spawn_blocking(move || store.account(&uid)).await;
            Some(match found {
                // The tokenserver holds the token's generation and X-KeyID to these.
                Ok(Ok(Some(a))) if !a.disabled => Ok(OAuthUser {
                    account: Some(IssuerRecord {
                        generation: a.verifier_set_at,
                        keys_changed_at: a.keys_changed_at,
                        auth_at: claims.auth_at,
                    }),
                    ..user
                }),
                Ok(Ok(_)) => Err(FxaError::Invalid(
                    "the account is deleted or disabled".into(),
                )),
                Ok(Err(e)) => Err(FxaError::Unavailable(e.to_string())),
                Err(e) => Err(FxaError::Unavailable(e.to_string())),
            })
        })
    }

    fn name(&self) -> String {
        self.signer.issuer().to_string()
    }
}

/// Fields of a device registration or update.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceUpdate {
    /// The device id (update) or none (register).
    #[serde(default)]
    pub id: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// desktop, mobile, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// WebPush endpoint.
    #[serde(default)]
    pub push_callback: Option<String>,
    /// WebPush public key.
    #[serde(default)]
    pub push_public_key: Option<String>,
    /// WebPush auth secret.
    #[serde(default)]
    pub push_auth_key: Option<String>,
    /// Command name → data.
    #[serde(default)]
    pub available_commands: Option<serde_json::Value>,
}

impl DeviceUpdate {
    /// Refuses fields beyond FxA's limits (400 errno 107), so that what an account
    /// stores per device stays small.
    fn check(&self) -> Result<()> {
        let bad = |name: &str| Err(AccountsError::InvalidParameter(name.into()));
        let b64url = |v: &str| {
            v.trim_end_matches('=')
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some(id) = &self.id
            && (id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("id");
        }
        if let Some(n) = &self.name
            && (n.chars().count() > MAX_DEVICE_NAME || n.chars().any(char::is_control))
        {
            return bad("name");
        }
        if let Some(t) = &self.kind
            && (t.is_empty()
                || t.len() > MAX_DEVICE_TYPE
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return bad("type");
        }
        if let Some(u) = &self.push_callback
            && !u.is_empty()
            && (u.len() > MAX_PUSH_CALLBACK
                || !u.starts_with("https://")
                || u.parse::<axum::http::Uri>().is_err())
        {
            return bad("pushCallback");
        }
        for (name, v) in [
            ("pushPublicKey", &self.push_public_key),
            ("pushAuthKey", &self.push_auth_key),
        ] {
            if let Some(k) = v
                && (k.len() > MAX_PUSH_KEY || !b64url(k))
            {
                return bad(name);
            }
        }
        if let Some(c) = &self.available_commands {
            let Some(map) = c.as_object() else {
                return bad("availableCommands");
            };
            let fits = map.len() <= MAX_COMMANDS
                && map.iter().all(|(k, v)| {
                    !k.is_empty()
                        && k.len() <= MAX_COMMAND_NAME
                        && v.as_str().is_some_and(|v| v.len() <= MAX_COMMAND_DATA)
                });
            if !fits {
                return bad("availableCommands");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_addresses_are_valid() {
        for good in [
            "a@b.example",
            "First.Last+tag@Mail.Example.org",
            "o'hara@example.co.uk",
            "x_y-z@sub-domain.example.org",
        ] {
            assert!(valid_email(good), "{good}");
        }
        for bad in [
            "\"victim@example.com\" <attacker@evil.example>",
            "<a@b.example>",
            "a@b.example,x@evil.example",
            "a b@example.org",
            "a@b@example.org",
            "a@example",
            "a@.example.org",
            "a@example.org.",
            "a@-x.example.org",
            "a@exa_mple.org",
            "@example.org",
            "a@example.org\n",
            "ä@example.org",
        ] {
            assert!(!valid_email(bad), "{bad:?}");
        }
        assert!(!valid_email(&format!("{}@example.org", "a".repeat(65))));
        assert!(!valid_email(&format!(
            "a@{}.example.org",
            vec!["b".repeat(60); 5].join(".")
        )));
    }

    #[test]
    fn email_codes_are_hashed_under_a_key_from_the_secret() {
        let key = email_code_key("secret one");
        assert_eq!(key, email_code_key("secret one"), "derived, not random");
        assert_ne!(key, email_code_key("secret two"));
        let h = email_code_hash(&key, "uid", "123456");
        assert_ne!(h, crypto::sha256(b"uid:123456"));
        assert_ne!(
            h,
            email_code_hash(&email_code_key("secret two"), "uid", "123456")
        );
        assert_ne!(h, email_code_hash(&key, "uid2", "123456"));
        assert_ne!(h, email_code_hash(&key, "uid", "123457"));
    }
}
