//! Signatures of node-to-node requests (`/__internal__/…`): HMAC-SHA256 under a key
//! derived from the deployment's master secret over the method, path, a timestamp and
//! the body's SHA-256, sent as `X-Syncstore-Signature: <unix secs>:<hex mac>`. Only
//! holders of the secret can sign; a signature is good for `INTERNAL_SKEW_SECS`.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-syncstore-signature";
/// How far a signature's time may be from ours, seconds.
pub const INTERNAL_SKEW_SECS: i64 = 60;

fn mac(secret: &str, method: &str, path: &str, ts: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret.as_bytes())
        .expand(b"syncstore/internal-requests/v1", &mut key)
        .expect("32 bytes is a valid length");
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    let body_hash = hex::encode(Sha256::digest(body));
    m.update(format!("{method}\n{path}\n{ts}\n{body_hash}\n").as_bytes());
    m
}

/// The signature header value for a request.
pub fn sign(secret: &str, method: &str, path: &str, body: &[u8], now: i64) -> String {
    let tag = mac(secret, method, path, now, body).finalize().into_bytes();
    format!("{now}:{}", hex::encode(tag))
}

/// Whether `header` signs this request under any of `secrets`, within the skew.
pub fn verify(
    secrets: &[String],
    header: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: i64,
) -> bool {
    let Some((ts, tag)) = header.and_then(|h| h.split_once(':')) else {
        return false;
    };
    let (Ok(ts), Ok(tag)) = (ts.parse::<i64>(), hex::decode(tag)) else {
        return false;
    };
    if (ts - now).abs() > INTERNAL_SKEW_SECS {
        return false;
    }
    secrets
        .iter()
        .any(|s| mac(s, method, path, ts, body).verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_signed_request_within_the_window_verifies() {
        let secrets = vec!["old".to_string(), "new".to_string()];
        let h = sign("new", "POST", "/__internal__/move/5", b"{}", 1000);
        assert!(verify(
            &secrets,
            Some(&h),
            "POST",
            "/__internal__/move/5",
            b"{}",
            1030
        ));
        assert!(!verify(
            &secrets,
            Some(&h),
            "POST",
            "/__internal__/move/6",
            b"{}",
            1000
        ));
        assert!(!verify(
            &secrets,
            Some(&h),
            "POST",
            "/__internal__/move/5",
            b"{ }",
            1000
        ));
        assert!(!verify(
            &secrets,
            Some(&h),
            "GET",
            "/__internal__/move/5",
            b"{}",
            1000
        ));
        assert!(!verify(
            &secrets,
            Some(&h),
            "POST",
            "/__internal__/move/5",
            b"{}",
            1100
        ));
        assert!(!verify(
            &["other".into()],
            Some(&h),
            "POST",
            "/__internal__/move/5",
            b"{}",
            1000
        ));
        assert!(!verify(
            &secrets,
            None,
            "POST",
            "/__internal__/move/5",
            b"{}",
            1000
        ));
        assert!(!verify(
            &secrets,
            Some("1000:zz"),
            "POST",
            "/__internal__/move/5",
            b"{}",
            1000
        ));
    }
}
