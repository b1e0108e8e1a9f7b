//! Authentication of storage requests: tokenlib tokens (`token`), Hawk signatures
//! (`hawk`) and replay protection (`nonce`), combined by `Authenticator`.

pub mod hawk;
pub mod internal;
pub mod nonce;
pub mod token;

use hawk::SignedRequest;
use nonce::{NonceCache, NonceError};
use token::TokenPayload;

/// Why a request is not authenticated; every variant is a 401 except `Busy` (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Hawk` header, or a malformed one.
    #[error("missing or malformed Hawk authorization header")]
    MissingOrMalformed,
    /// The token id is not a valid token of this deployment.
    #[error("invalid token")]
    InvalidToken,
    /// The token's lifetime is over.
    #[error("token expired")]
    Expired,
    /// The request's MAC does not match.
    #[error("invalid signature")]
    BadSignature,
    /// The token belongs to another user than the URL names.
    #[error("token does not match the user in the url")]
    WrongUser,
    /// The request's timestamp is outside the allowed clock skew.
    #[error("timestamp outside the allowed clock skew")]
    Skew,
    /// The (id, ts, nonce) triple was seen before.
    #[error("replayed nonce")]
    Replay,
    /// The replay cache has no room for the request (full, or this user's share of it
    /// is): 503, since remembering fewer nonces would reopen replay windows.
    #[error("too many requests in the replay window")]
    Busy,
    /// The user was moved to another node (or given a new uid) by the tokenserver.
    #[error("user is assigned to another node")]
    Reassigned,
    /// The token was minted for another storage node.
    #[error("token was issued for another node")]
    WrongNode,
    /// The payload hash in the header does not match the body.
    #[error("payload hash mismatch")]
    PayloadHash,
}

/// How long after its expiry a token may still read `info/collections`, seconds: two
/// hours, the allowance of Mozilla's Python syncstorage server
/// (`DEFAULT_EXPIRED_TOKEN_TIMEOUT`).
pub const EXPIRED_TOKEN_GRACE_SECS: f64 = 2.0 * 3600.0;

/// An authenticated request's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user's id, equal to the one in the URL.
    pub uid: u64,
    /// The verified token's payload.
    pub token: TokenPayload,
    /// The payload hash the client signed, to be checked against the body.
    pub payload_hash: Option<String>,
}

/// Verifies Hawk-signed requests made with tokens of this deployment's secrets.
pub struct Authenticator {
    /// Master secrets; the first signs new tokens, all verify.
    secrets: Vec<String>,
    /// Allowed difference between the client's and the server's clock, seconds.
    skew: i64,
    nonces: NonceCache,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("secrets", &format!("[{} redacted]", self.secrets.len()))
            .field("skew", &self.skew)
            .finish()
    }
}

impl Authenticator {
    /// Creates an authenticator; `nonce_capacity` bounds the replay cache (one user may
    /// fill a `nonce::PER_USER_SHARE`th of it).
    pub fn new(secrets: Vec<String>, skew: i64, nonce_capacity: usize) -> Authenticator {
        Authenticator {
            secrets,
            skew,
            nonces: NonceCache::new(skew, nonce_capacity),
        }
    }

    /// The secret that signs new tokens.
    pub fn signing_secret(&self) -> &str {
        &self.secrets[0]
    }

    /// Every secret that verifies (tokens and internal requests).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Authenticates a request for `path_uid`. `allow_expired` lets a token expired less
    /// than `EXPIRED_TOKEN_GRACE_SECS` ago through (for `GET info/collections`, as
    /// Mozilla's servers do). `now` is Unix seconds.
    pub fn verify(
        &self,
        header: Option<&str>,
        req: &SignedRequest<'_>,
        path_uid: u64,
        allow_expired: bool,
        now: f64,
    ) -> Result<Identity, AuthError> {
        let h = header
            .and_then(hawk::parse_header)
            .ok_or(AuthError::MissingOrMalformed)?;
        let token =
            token::verify_token(&self.secrets, &h.id).map_err(|_| AuthError::InvalidToken)?;
        let expected = hawk::compute_mac(token.key.as_bytes(), &h, req);
        if !hawk::macs_equal(&expected, &h.mac) {
            return Err(AuthError::BadSignature);
        }
        let grace = if allow_expired {
            EXPIRED_TOKEN_GRACE_SECS
        } else {
            0.0
        };
        if token.payload.expires + grace <= now {
            return Err(AuthError::Expired);
        }
        if token.payload.uid != path_uid {
            return Err(AuthError::WrongUser);
        }
        let now_secs = now as i64;
        if (h.ts - now_secs).abs() > self.skew {
            return Err(AuthError::Skew);
        }
        self.nonces
            .check_and_insert(path_uid, &h.id, h.ts, &h.nonce, now_secs)
            .map_err(|e| match e {
                NonceError::Replay => AuthError::Replay,
                NonceError::Full => AuthError::Busy,
            })?;
        Ok(Identity {
            uid: path_uid,
            token: token.payload,
            payload_hash: h.hash,
        })
    }
}
