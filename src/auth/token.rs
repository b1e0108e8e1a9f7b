//! tokenlib v1 tokens: HMAC-signed JSON payloads and their HKDF-derived Hawk keys.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const INFO_SIGNING: &[u8] = b"services.mozilla.com/tokenlib/v1/signing";
const INFO_DERIVE: &str = "services.mozilla.com/tokenlib/v1/derive/";
const SIG_LEN: usize = 32;

/// URL-safe base64 that accepts tokens with or without `=` padding.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The signed content of a token, as a tokenserver issues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPayload {
    /// The user's numeric id on the storage node.
    pub uid: u64,
    /// The storage node's base URL.
    #[serde(default)]
    pub node: String,
    /// Expiry, Unix seconds.
    pub expires: f64,
    /// Random salt for the derived key.
    pub salt: String,
    /// The user's Firefox Accounts uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fxa_uid: Option<String>,
    /// The key id (keys_changed_at and client state) of the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fxa_kid: Option<String>,
    /// Hashed FxA uid, for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_fxa_uid: Option<String>,
    /// Hashed device id, for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_device_id: Option<String>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64, too short, or not JSON of the right shape.
    #[error("malformed token")]
    Malformed,
    /// The signature matches none of the configured secrets.
    #[error("invalid token signature")]
    BadSignature,
}

/// A verified token: its payload and the Hawk key derived for it.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The token's payload.
    pub payload: TokenPayload,
    /// The derived Hawk key (the ASCII of its base64, as clients use it).
    pub key: String,
}

fn hkdf32(ikm: &[u8], salt: Option<&[u8]>, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

fn signature(secret: &str, payload: &[u8]) -> Hmac<Sha256> {
    let key = hkdf32(secret.as_bytes(), None, INFO_SIGNING);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(payload);
    mac
}

/// The Hawk key a client gets for `token_id` (URL-safe base64 of the HKDF output).
pub fn derive_key(secret: &str, salt: &str, token_id: &str) -> String {
    let info = format!("{INFO_DERIVE}{token_id}");
    URL_SAFE.encode(hkdf32(
        secret.as_bytes(),
        Some(salt.as_bytes()),
        info.as_bytes(),
    ))
}

/// Signs a payload with `secret`; returns the token id and its derived Hawk key.
pub fn make_token(secret: &str, payload: &TokenPayload) -> (String, String) {
    let mut bytes = serde_json::to_vec(payload).expect("payload serializes");
    let sig = signature(secret, &bytes).finalize().into_bytes();
    bytes.extend_from_slice(&sig);
    let id = URL_SAFE.encode(&bytes);
    let key = derive_key(secret, &payload.salt, &id);
    (id, key)
}

/// A fresh random salt, as tokenlib makes them (hex).
pub fn new_salt() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Verifies a token id against every secret (first match wins), in constant time per
/// secret. Expiry is the caller's business.
pub fn verify_token(secrets: &[String], token_id: &str) -> Result<VerifiedToken, TokenError> {
    let raw = URL_SAFE_LENIENT
        .decode(token_id)
        .map_err(|_| TokenError::Malformed)?;
    if raw.len() <= SIG_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload, sig) = raw.split_at(raw.len() - SIG_LEN);
    let secret = secrets
        .iter()
        .find(|s| signature(s, payload).verify_slice(sig).is_ok())
        .ok_or(TokenError::BadSignature)?;
    let payload: TokenPayload =
        serde_json::from_slice(payload).map_err(|_| TokenError::Malformed)?;
    let key = derive_key(secret, &payload.salt, token_id);
    Ok(VerifiedToken { payload, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TokenPayload {
        TokenPayload {
            uid: 42,
            node: "http://127.0.0.1:8000".into(),
            expires: 2e9,
            salt: "abc123".into(),
            fxa_uid: Some("f".into()),
            fxa_kid: None,
            hashed_fxa_uid: None,
            hashed_device_id: None,
        }
    }

    #[test]
    fn tokens_verify_with_any_configured_secret() {
        let (id, key) = make_token("old", &payload());
        let v = verify_token(&["new".into(), "old".into()], &id).unwrap();
        assert_eq!(v.payload, payload());
        assert_eq!(v.key, key);
        assert_eq!(
            verify_token(&["other".into()], &id).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn tampered_or_garbled_tokens_fail() {
        let (id, _) = make_token("s", &payload());
        let mut raw = URL_SAFE.decode(&id).unwrap();
        raw[5] ^= 1;
        let tampered = URL_SAFE.encode(&raw);
        assert_eq!(
            verify_token(&["s".into()], &tampered).unwrap_err(),
            TokenError::BadSignature
        );
        for bad in ["", "!!!!", "YWJj", &URL_SAFE.encode([0u8; 40])] {
            assert!(verify_token(&["s".into()], bad).is_err(), "{bad}");
        }
    }
}
