//! Verification of Firefox Accounts OAuth access tokens: RS256 JWTs checked against a
//! JWK set, or opaque tokens checked by POSTing them to FxA's `/v1/verify`.
//!
//! With a JWK set, a JWT under one of its keys (or naming no key id) is decided here and
//! only here: a bad signature, expiry, issuer or scope is a refusal at once, never a
//! reason to ask the remote verifier (a forged token must not cost an outbound call).
//! Only tokens that are not JWTs, or name a key id the set lacks, are sent to the
//! verify URL, when there is one (`auto`: Mozilla's, unless a JWK set is configured or
//! this process runs its own accounts service, whose tokens alone are then trusted).
//!
//! The same keys check FxA's Security Event Tokens ([`FxaVerifier::verify_event`]).
//!
//! Remote verification must not amplify: results are cached (successes for
//! `cache_ttl`, refusals for `FAILURE_TTL`, keyed by a hash of the token, bounded in
//! number), concurrent verifications of one token share one outbound call, and at most
//! `MAX_CONCURRENT_VERIFICATIONS` calls are out at once (a request that cannot get a
//! slot within `SLOT_WAIT` is answered 503 with `Retry-After`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The scope a token must carry to use Sync.
pub const OLDSYNC_SCOPE: &str = "https://identity.mozilla.com/apps/oldsync";
/// Most verify results kept in the cache.
const CACHE_CAPACITY: usize = 10_000;
/// How long a token the remote verifier refused is refused without asking again.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Most remote verifications in flight at once.
const MAX_CONCURRENT_VERIFICATIONS: usize = 32;
/// How long a verification waits for a free slot before the request gets a 503.
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// Clock difference allowed when checking a JWT's `exp` and `nbf`, seconds.
const JWT_LEEWAY_SECS: u64 = 30;
/// FxA's verify endpoint, used when `verify_url` is `auto` and no JWK set is configured.
pub const MOZILLA_VERIFY_URL: &str = "https://oauth.accounts.firefox.com/v1/verify";
/// How old a Security Event Token may be (its `iat`), seconds: FxA retries deliveries
/// for a while; older ones are refused.
pub const EVENT_MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// How far in the future a Security Event Token's `iat` may be, seconds.
const EVENT_SKEW_SECS: i64 = 300;

/// A verified FxA user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthUser {
    /// The FxA uid (`sub`).
    pub fxa_uid: String,
    /// The FxA generation, when the token says.
    pub generation: Option<i64>,
    /// The account as its issuer records it now, for tokens of this process's own
    /// accounts service ([`LocalIssuer`]); `None` for FxA's tokens, whose issuer the
    /// tokenserver cannot ask.
    pub account: Option<IssuerRecord>,
}

/// What the issuer of a token knows of its account at the time of the request: the
/// truth the tokenserver holds X-KeyID and the token's generation to (see
/// `tokenserver::assign`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerRecord {
    /// When the password last changed, ms: the only generation accepted.
    pub generation: i64,
    /// When kB last changed, ms: the only keys_changed_at accepted in X-KeyID.
    pub keys_changed_at: i64,
    /// When the session behind this token proved the password, ms (the token's own
    /// claim; 0 when it has none): at the same keys_changed_at, only a token newer than
    /// the one that registered the current client state may register another.
    pub auth_at: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxaError {
    /// Not a valid token for Sync (401 invalid-credentials).
    #[error("invalid oauth token: {0}")]
    Invalid(String),
    /// The remote verifier could not be asked (503).
    #[error("oauth verifier unavailable: {0}")]
    Unavailable(String),
    /// The JWK set could not be loaded (at start-up).
    #[error("fxa_jwks: {0}")]
    Config(String),
}

/// How tokens are verified; from the settings.
#[derive(Debug, Clone, Default)]
pub struct FxaConfig {
    /// A JWK set: inline JSON (starting with `{`) or a file path; empty: none.
    pub jwks: String,
    /// Required `iss` of JWTs; empty: not checked.
    pub issuer: String,
    /// FxA's verify endpoint; `auto`: [`MOZILLA_VERIFY_URL`] unless `jwks` is set or
    /// `own_accounts` is; empty: none (JWTs only).
    pub verify_url: String,
    /// How long a remote verification is reused.
    pub cache_ttl: Duration,
    /// This process serves its own accounts service: `auto` then trusts no outside
    /// issuer (only that service's tokens, and `jwks`'s when it is set), so a server
    /// whose sign-ups are closed is not opened to every Mozilla account.
    pub own_accounts: bool,
}

/// An in-process token issuer the tokenserver trusts beside FxA (the accounts service).
pub trait LocalIssuer: Send + Sync {
    /// `None` when `token` is not this issuer's (it names none of its key ids);
    /// otherwise the decision: the user of a valid token carrying the oldsync scope,
    /// or why it is refused. A refused token of this issuer is never sent anywhere.
    fn verify_local<'a>(&'a self, token: &'a str) -> LocalDecision<'a>;

    /// The issuer's name (its `iss`), for logs.
    fn name(&self) -> String;
}

/// What [`LocalIssuer::verify_local`] decides, when it is ready.
pub type LocalDecision<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<Result<OAuthUser, FxaError>>> + Send + 'a>,
>;

/// Verifies FxA OAuth access tokens.
pub struct FxaVerifier {
    /// This process's accounts service, whose tokens are checked first, locally.
    local: Option<Arc<dyn LocalIssuer>>,
    keys: Vec<(Option<String>, DecodingKey)>,
    issuer: Option<String>,
    verify_url: Option<String>,
    http: reqwest::Client,
    cache_ttl: Duration,
    /// SHA-256 of a token → its user and when it was verified.
    cache: Mutex<HashMap<[u8; 32], (OAuthUser, Instant)>>,
    /// SHA-256 of a token the verifier refused → when it was refused.
    failures: Mutex<HashMap<[u8; 32], Instant>>,
    /// Verifications in flight by token hash: callers of one token share one call.
    in_flight: Mutex<HashMap<[u8; 32], Arc<VerifyCell>>>,
    /// Caps the outbound verifications in flight.
    slots: Semaphore,
}

/// A verified Security Event Token: what FxA says happened to one account.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvent {
    /// The FxA uid the events are about (`sub`).
    pub fxa_uid: String,
    /// The token's unique id (`jti`), for recognizing redeliveries.
    pub jti: String,
    /// When FxA issued it (`iat`), unix seconds.
    pub issued_at: i64,
    /// Event type URI → its payload.
    pub events: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct EventClaims {
    sub: String,
    jti: String,
    iat: i64,
    events: serde_json::Map<String, serde_json::Value>,
}

/// The shared result of one remote verification.
type VerifyCell = OnceCell<Result<OAuthUser, FxaError>>;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Scope,
    #[serde(rename = "fxa-generation", default)]
    generation: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Scope {
    /// Scopes separated by spaces or commas.
    Text(String),
    /// A list of scopes.
    List(Vec<String>),
    #[default]
    None,
}

impl Scope {
    fn has_oldsync(&self) -> bool {
        match self {
            Scope::Text(s) => s.split([' ', ',']).any(|s| s == OLDSYNC_SCOPE),
            Scope::List(l) => l.iter().any(|s| s == OLDSYNC_SCOPE),
            Scope::None => false,
        }
    }
}

#[derive(Deserialize)]
struct VerifyResponse {
    user: String,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    generation: Option<i64>,
}

impl FxaVerifier {
    /// Loads the JWK set (if any) and prepares the HTTP client.
    pub fn new(cfg: &FxaConfig) -> Result<FxaVerifier, FxaError> {
        let mut keys = Vec::new();
        let jwks = cfg.jwks.trim();
        if !jwks.is_empty() {
            let text = if jwks.starts_with('{') {
                jwks.to_string()
            } else {
                std::fs::read_to_string(jwks)
                    .map_err(|e| FxaError::Config(format!("{jwks}: {e}")))?
            };
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| FxaError::Config(e.to_string()))?;
            for jwk in &set.keys {
                let key =
                    DecodingKey::from_jwk(jwk).map_err(|e| FxaError::Config(e.to_string()))?;
                keys.push((jwk.common.key_id.clone(), key));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| FxaError::Config(e.to_string()))?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let verify_url = match cfg.verify_url.trim() {
            "auto" if keys.is_empty() && !cfg.own_accounts => Some(MOZILLA_VERIFY_URL.to_string()),
            "auto" => None,
            url => non_empty(url),
        };
        Ok(FxaVerifier {
            local: None,
            keys,
            issuer: non_empty(&cfg.issuer),
            verify_url,
            http,
            cache_ttl: cfg.cache_ttl,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            slots: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
        })
    }

    /// The verify URL in use, if any (after resolving `auto`).
    pub fn verify_url(&self) -> Option<&str> {
        self.verify_url.as_deref()
    }

    /// Also trusts the tokens of an in-process issuer (checked first, no remote call).
    pub fn trust_local(&mut self, issuer: Arc<dyn LocalIssuer>) {
        self.local = Some(issuer);
    }

    /// Whose tokens are accepted, in words (for the start-up log): the in-process
    /// accounts service, the JWK set's keys, the verify URL.
    pub fn trusted_issuers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(local) = &self.local {
            out.push(format!("this server's accounts service ({})", local.name()));
        }
        if !self.keys.is_empty() {
            let iss = self.issuer.as_deref().unwrap_or("any issuer");
            out.push(format!(
                "JWTs under fxa_jwks ({} keys, {iss})",
                self.keys.len()
            ));
        }
        if let Some(url) = &self.verify_url {
            out.push(format!("tokens verified by {url}"));
        }
        out
    }

    /// Verifies an access token: one of this process's accounts service is checked
    /// first; a JWT under a key of the JWK set is decided locally (refusals included);
    /// any other token goes to the verify URL, if there is one.
    pub async fn verify(&self, token: &str) -> Result<OAuthUser, FxaError> {
        if let Some(local) = &self.local
            && let Some(decided) = local.verify_local(token).await
        {
            return decided;
        }
        if let Some(header) = self.known_jwt_header(token) {
            return self.verify_jwt(token, &header);
        }
        if self.verify_url.is_some() {
            return self.verify_remote(token).await;
        }
        Err(FxaError::Invalid(
            "not a JWT under a known key, and no verify URL is configured".into(),
        ))
    }

    /// The header of `token` if it is a JWT that a key of the set may have signed: it
    /// names no key id, or one the set has (a key without an id matches any).
    fn known_jwt_header(&self, token: &str) -> Option<jsonwebtoken::Header> {
        if self.keys.is_empty() || token.split('.').count() != 3 {
            return None;
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let known = match &header.kid {
            None => true,
            Some(kid) => self
                .keys
                .iter()
                .any(|(k, _)| k.as_deref().is_none_or(|k| k == kid)),
        };
        known.then_some(header)
    }

    fn verify_jwt(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<OAuthUser, FxaError> {
        let invalid = |m: String| FxaError::Invalid(m);
        if header.alg != Algorithm::RS256 {
            return Err(invalid("only RS256 tokens are accepted".into()));
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("at+jwt")
            && !typ.eq_ignore_ascii_case("jwt")
        {
            return Err(invalid(format!("unexpected token type {typ}")));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        // The leeway (for clocks that differ a little) applies to `exp` and `nbf` alike.
        validation.leeway = JWT_LEEWAY_SECS;
        // A token not yet valid (`nbf` in the future) is refused.
        validation.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            // With an issuer configured, a token without `iss` is refused too (the
            // library checks `iss` only when present unless it is required).
            validation.set_required_spec_claims(&["exp", "sub", "iss"]);
            validation.set_issuer(&[iss]);
        } else {
            validation.set_required_spec_claims(&["exp", "sub"]);
        }
        let candidates = self
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.is_none() || kid.is_none() || kid == &header.kid);
        let mut last = String::from("no matching key");
        for (_, key) in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    if !data.claims.scope.has_oldsync() {
                        return Err(invalid("token lacks the oldsync scope".into()));
                    }
                    if data.claims.sub.is_empty() {
                        return Err(invalid("empty sub".into()));
                    }
                    return Ok(OAuthUser {
                        fxa_uid: data.claims.sub,
                        generation: data.claims.generation,
                        account: None,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(invalid(last))
    }

    /// Verifies a Security Event Token from FxA's event broker: RS256 under a key of
    /// the JWK set, `aud` = `audience` (our client id), `iss` = the configured issuer
    /// (a trailing `/` aside), `iat` no older than [`EVENT_MAX_AGE_SECS`] nor from the
    /// future, and `sub`, `jti` and `events` present. Never asks the remote verifier.
    pub fn verify_event(
        &self,
        token: &str,
        audience: &str,
        now_secs: i64,
    ) -> Result<SecurityEvent, FxaError> {
        let invalid = |m: &str| FxaError::Invalid(m.to_string());
        if audience.is_empty() {
            return Err(invalid("no audience configured"));
        }
        let header = self
            .known_jwt_header(token)
            .ok_or_else(|| invalid("not a JWT under a known key"))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid("only RS256 event tokens are accepted"));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        // SETs carry no `exp` (RFC 8417): their age is checked from `iat` below.
        validation.validate_exp = false;
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_audience(&[audience]);
        if let Some(iss) = &self.issuer {
            let bare = iss.trim_end_matches('/');
            validation.set_issuer(&[bare.to_string(), format!("{bare}/")]);
            validation.set_required_spec_claims(&["sub", "aud", "iss"]);
        } else {
            validation.set_required_spec_claims(&["sub", "aud"]);
        }
        let mut last = String::from("no matching key");
        for (kid, key) in &self.keys {
            if header.kid.is_some() && kid.is_some() && kid != &header.kid {
                continue;
            }
            match jsonwebtoken::decode::<EventClaims>(token, key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    if c.sub.is_empty() || c.jti.is_empty() {
                        return Err(invalid("empty sub or jti"));
                    }
                    if c.iat > now_secs + EVENT_SKEW_SECS {
                        return Err(invalid("issued in the future"));
                    }
                    if c.iat < now_secs - EVENT_MAX_AGE_SECS {
                        return Err(invalid("too old"));
                    }
                    return Ok(SecurityEvent {
                        fxa_uid: c.sub,
                        jti: c.jti,
                        issued_at: c.iat,
                        events: c.events,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(FxaError::Invalid(last))
    }

    async fn verify_remote(&self, token: &str) -> Result<OAuthUser, FxaError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.cached(&key) {
            return known;
        }
        let cell = match self.in_flight.lock() {
            Ok(mut in_flight) => in_flight.entry(key).or_default().clone(),
            Err(_) => Arc::new(VerifyCell::new()),
        };
        // The first caller asks; the others wait for its answer (if it goes away
        // before the answer, the next waiter asks instead).
        let result = cell
            .get_or_init(|| self.ask_verifier(token, key))
            .await
            .clone();
        if let Ok(mut in_flight) = self.in_flight.lock()
            && in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            in_flight.remove(&key);
        }
        result
    }

    /// What the caches say about a token: its user, a recent refusal, or nothing.
    fn cached(&self, key: &[u8; 32]) -> Option<Result<OAuthUser, FxaError>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((user, at)) = cache.get(key)
            && at.elapsed() < self.cache_ttl
        {
            return Some(Ok(user.clone()));
        }
        if let Ok(failures) = self.failures.lock()
            && let Some(at) = failures.get(key)
            && at.elapsed() < FAILURE_TTL
        {
            return Some(Err(FxaError::Invalid("refused by the verifier".into())));
        }
        None
    }

    /// One outbound verification (within the concurrency cap); caches its outcome.
    async fn ask_verifier(&self, token: &str, key: [u8; 32]) -> Result<OAuthUser, FxaError> {
        // A caller that waited for an earlier call of the same token finds its result.
        if let Some(known) = self.cached(&key) {
            return known;
        }
        let _slot = tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .map_err(|_| FxaError::Unavailable("too many verifications in flight".into()))?
            .map_err(|_| FxaError::Unavailable("verifier closed".into()))?;
        let result = self.post_verify(token).await;
        match &result {
            Ok(user) => remember(&self.cache, key, (user.clone(), Instant::now()), |v| {
                v.1.elapsed() < self.cache_ttl
            }),
            Err(FxaError::Invalid(_)) => remember(&self.failures, key, Instant::now(), |at| {
                at.elapsed() < FAILURE_TTL
            }),
            Err(_) => {} // unavailable: the next request asks again
        }
        result
    }

    async fn post_verify(&self, token: &str) -> Result<OAuthUser, FxaError> {
        let result = self.post_verify_once(token).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(FxaError::Invalid(_)) => "refused",
            Err(_) => "unavailable",
        };
        metrics::counter!("syncstore_fxa_remote_verifications_total", "outcome" => outcome)
            .increment(1);
        result
    }

    async fn post_verify_once(&self, token: &str) -> Result<OAuthUser, FxaError> {
        let url = self.verify_url.as_deref().unwrap_or_default();
        // Errors name the verifier, never the token (it travels in the body only).
        let resp = self
            .http
            .post(url)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .map_err(|e| FxaError::Unavailable(format!("verifier {url}: {}", e.without_url())))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(FxaError::Unavailable(format!(
                "verifier {url} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(FxaError::Invalid(format!("verifier answered {status}")));
        }
        let body: VerifyResponse = resp
            .json()
            .await
            .map_err(|e| FxaError::Invalid(format!("verifier answer: {e}")))?;
        if !body.scope.has_oldsync() {
            return Err(FxaError::Invalid("token lacks the oldsync scope".into()));
        }
        if body.user.is_empty() {
            return Err(FxaError::Invalid("empty user".into()));
        }
        Ok(OAuthUser {
            fxa_uid: body.user,
            generation: body.generation,
            account: None,
        })
    }
}

/// Inserts into a cache bounded by `CACHE_CAPACITY`: when full, entries no longer
/// `fresh` are dropped first, then everything.
fn remember<V>(
    cache: &Mutex<HashMap<[u8; 32], V>>,
    key: [u8; 32],
    value: V,
    fresh: impl Fn(&V) -> bool,
) {
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, v| fresh(v));
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../../tests/fixtures/fxa-test-jwks.json");

    #[test]
    fn jwk_sets_load_inline_or_from_a_file_and_bad_ones_are_reported() {
        let inline = FxaVerifier::new(&FxaConfig {
            jwks: JWKS.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(inline.keys.len(), 1);
        assert_eq!(inline.keys[0].0.as_deref(), Some("test-key-1"));
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fxa-test-jwks.json"
        );
        let from_file = FxaVerifier::new(&FxaConfig {
            jwks: path.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.keys.len(), 1);
        for bad in [
            "{not json",
            "/no/such/file.json",
            r#"{"keys": [{"kty": "RSA"}]}"#,
        ] {
            let cfg = FxaConfig {
                jwks: bad.into(),
                ..Default::default()
            };
            assert!(
                matches!(FxaVerifier::new(&cfg), Err(FxaError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn scopes_are_matched_exactly() {
        assert!(Scope::Text(format!("profile {OLDSYNC_SCOPE}")).has_oldsync());
        assert!(Scope::List(vec![OLDSYNC_SCOPE.into()]).has_oldsync());
        assert!(!Scope::Text(format!("{OLDSYNC_SCOPE}x profile")).has_oldsync());
        assert!(!Scope::None.has_oldsync());
    }
}
