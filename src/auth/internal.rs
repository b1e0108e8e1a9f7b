//! Signatures of node-to-node requests (`/__internal__/…`): HMAC-SHA256 under a key
//! derived from the deployment's master secret over the method, path, a timestamp, a
//! random nonce, the target node's URL and the body's SHA-256, sent as
//! `X-Syncstore-Signature: <unix secs>:<nonce>:<hex mac>` with the body's hash in
//! `X-Syncstore-Content-SHA256`. Only holders of the secret can sign; a signature is
//! good for `INTERNAL_SKEW_SECS`, at one node (the target it names), once (the node
//! remembers nonces for the window: [`SeenNonces`]).
//!
//! Everything signed but the body is checked from the headers alone
//! ([`verify_head`]), before a byte of the body is read; the receiver then hashes the
//! body as it streams in and compares it with the signed hash at the end.

use std::collections::HashMap;
use std::sync::Mutex;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-syncstore-signature";
/// The header carrying the body's SHA-256 (hex), covered by the signature.
pub const BODY_HASH_HEADER: &str = "x-syncstore-content-sha256";
/// How far a signature's time may be from ours, seconds.
pub const INTERNAL_SKEW_SECS: i64 = 60;
/// Most nonces a node remembers at once; signed requests beyond it (within one
/// validity window) are refused rather than let the memory grow.
pub const MAX_REMEMBERED_NONCES: usize = 100_000;

fn mac(
    secret: &str,
    head: &RequestHead<'_>,
    ts: i64,
    nonce: &str,
    body_sha256: &str,
) -> Hmac<Sha256> {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret.as_bytes())
        .expand(b"syncstore/internal-requests/v2", &mut key)
        .expect("32 bytes is a valid length");
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    m.update(
        format!(
            "{}\n{}\n{ts}\n{nonce}\n{}\n{body_sha256}\n",
            head.method, head.path, head.target
        )
        .as_bytes(),
    );
    m
}

/// What a signature covers besides time, nonce and body.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The path, e.g. `/__internal__/receive/7`.
    pub path: &'a str,
    /// The target node's URL as the assignment database names it (no trailing `/`).
    pub target: &'a str,
}

/// The two header values of a signed request: (signature, body hash).
pub fn sign(secret: &str, head: &RequestHead<'_>, body_sha256: &str, now: i64) -> (String, String) {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let tag = mac(secret, head, now, &nonce, body_sha256)
        .finalize()
        .into_bytes();
    (
        format!("{now}:{nonce}:{}", hex::encode(tag)),
        body_sha256.to_string(),
    )
}

/// A request whose headers carry a good signature; its body is still to be checked
/// against `body_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHead {
    /// The signature's time, unix seconds.
    pub ts: i64,
    /// The signature's nonce (to be used once).
    pub nonce: String,
    /// The signed SHA-256 of the body, lower-case hex.
    pub body_sha256: String,
}

/// Checks the signature headers of a request for `head` under any of `secrets`,
/// within the skew, without the body; `None` if they do not sign it.
pub fn verify_head(
    secrets: &[String],
    signature: Option<&str>,
    body_sha256: Option<&str>,
    head: &RequestHead<'_>,
    now: i64,
) -> Option<VerifiedHead> {
    let mut parts = signature?.splitn(3, ':');
    let (ts, nonce, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let ts = ts.parse::<i64>().ok()?;
    let tag = hex::decode(tag).ok()?;
    let body_sha256 = body_sha256?.to_ascii_lowercase();
    let well_formed =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed(nonce, 32) || !well_formed(&body_sha256, 64) {
        return None;
    }
    if (ts - now).abs() > INTERNAL_SKEW_SECS {
        return None;
    }
    secrets
        .iter()
        .any(|s| {
            mac(s, head, ts, nonce, &body_sha256)
                .verify_slice(&tag)
                .is_ok()
        })
        .then(|| VerifiedHead {
            ts,
            nonce: nonce.to_string(),
            body_sha256,
        })
}

/// The nonces of signed requests this node took within the validity window, so that
/// each signed request is taken once.
#[derive(Debug, Default)]
pub struct SeenNonces {
    /// nonce → the unix second after which its signature is stale anyway.
    seen: Mutex<HashMap<String, i64>>,
}

impl SeenNonces {
    /// Records the nonce of a verified request; false if it was seen before (a
    /// replay) or the memory is full.
    pub fn first_use(&self, head: &VerifiedHead, now: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED_NONCES / 2 {
            seen.retain(|_, until| *until >= now);
        }
        if seen.len() >= MAX_REMEMBERED_NONCES || seen.contains_key(&head.nonce) {
            return false;
        }
        seen.insert(head.nonce.clone(), head.ts + INTERNAL_SKEW_SECS);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn head<'a>(path: &'a str, target: &'a str) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            path,
            target,
        }
    }

    #[test]
    fn only_the_signed_request_at_its_target_within_the_window_verifies() {
        let secrets = vec!["old".to_string(), "new".to_string()];
        let h = head("/__internal__/move/5", "http://b");
        let (sig, hash) = sign("new", &h, HASH, 1000);
        let ok = |s: &[String], sig: Option<&str>, hash: Option<&str>, h, now| {
            verify_head(s, sig, hash, &h, now).is_some()
        };
        assert!(ok(&secrets, Some(&sig), Some(&hash), h, 1030));
        let other_path = head("/__internal__/move/6", "http://b");
        assert!(!ok(&secrets, Some(&sig), Some(&hash), other_path, 1000));
        let other_target = head("/__internal__/move/5", "http://a");
        assert!(!ok(&secrets, Some(&sig), Some(&hash), other_target, 1000));
        let other_body = "0".repeat(64);
        assert!(!ok(&secrets, Some(&sig), Some(&other_body), h, 1000));
        let get = RequestHead { method: "GET", ..h };
        assert!(!ok(&secrets, Some(&sig), Some(&hash), get, 1000));
        assert!(!ok(&secrets, Some(&sig), Some(&hash), h, 1100));
        assert!(!ok(&["other".into()], Some(&sig), Some(&hash), h, 1000));
        assert!(!ok(&secrets, None, Some(&hash), h, 1000));
        assert!(!ok(&secrets, Some(&sig), None, h, 1000));
        assert!(!ok(&secrets, Some("1000:zz:zz"), Some(&hash), h, 1000));
    }

    #[test]
    fn a_nonce_is_taken_once() {
        let secrets = vec!["s".to_string()];
        let h = head("/__internal__/receive/1", "http://b");
        let (sig, hash) = sign("s", &h, HASH, 1000);
        let v = verify_head(&secrets, Some(&sig), Some(&hash), &h, 1000).unwrap();
        let seen = SeenNonces::default();
        assert!(seen.first_use(&v, 1000));
        assert!(!seen.first_use(&v, 1001));
        let (sig2, _) = sign("s", &h, HASH, 1000);
        let v2 = verify_head(&secrets, Some(&sig2), Some(&hash), &h, 1000).unwrap();
        assert!(seen.first_use(&v2, 1000));
    }
}
