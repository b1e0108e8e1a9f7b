//! A push message's cryptography: the body encrypted to the device's keys (RFC 8291
//! `aes128gcm`, by `web-push-native`) and the server's VAPID identification (RFC 8292:
//! an ES256 JWT signed by `jsonwebtoken` with the server's P-256 key, whose public key
//! goes along in the `Authorization` header). A JWT is signed once per push service
//! (audience) and reused for an hour, so a burst of pushes does not sign each one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};

/// Largest payload one push message carries (RFC 8291: a 4096-byte body holds the
/// 86-byte header, one padding delimiter and the 16-byte tag besides the plaintext).
pub const MAX_PAYLOAD: usize = 4096 - 86 - 17;
/// How far ahead a VAPID JWT expires (RFC 8292 allows at most 24 h).
pub const JWT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a signed JWT is reused for its audience.
pub const JWT_REUSE: Duration = Duration::from_secs(3600);
/// Most audiences whose JWT is kept (beyond, the cache starts over).
const JWT_CACHE: usize = 256;

/// The server's VAPID key pair (P-256).
#[derive(Clone)]
pub struct VapidKey {
    secret: p256::SecretKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    fn from_secret(secret: p256::SecretKey) -> Result<VapidKey, String> {
        let der = secret.to_pkcs8_der().map_err(|e| e.to_string())?;
        Ok(VapidKey {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            secret,
        })
    }

    /// A new random key.
    pub fn generate() -> VapidKey {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        VapidKey::from_secret(secret).expect("a fresh P-256 key encodes")
    }

    /// The key from its PKCS#8 PEM (as [`to_pkcs8_pem`](Self::to_pkcs8_pem) writes).
    pub fn from_pkcs8_pem(pem: &str) -> Result<VapidKey, String> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| format!("VAPID key: {e}"))?;
        VapidKey::from_secret(secret)
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a P-256 key encodes")
            .to_string()
    }

    /// base64url (no padding) uncompressed public point: the `k=` of the header.
    pub fn public_key_b64(&self) -> String {
        let point = self.secret.public_key().to_encoded_point(false);
        URL_SAFE_NO_PAD.encode(point.as_bytes())
    }
}

/// The claims of a VAPID JWT.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct VapidClaims {
    /// The push service's origin.
    pub aud: String,
    /// Expiry, s.
    pub exp: i64,
    /// Who to contact about these pushes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
}

/// Signs the `Authorization` header of pushes, reusing a JWT per audience for a while.
pub(crate) struct VapidSigner {
    key: VapidKey,
    public: String,
    contact: String,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl VapidSigner {
    pub(crate) fn new(key: VapidKey, contact: &str) -> VapidSigner {
        VapidSigner {
            public: key.public_key_b64(),
            key,
            contact: contact.to_string(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `vapid t=<JWT>, k=<public key>` for a push service's origin
    /// (`scheme://host[:port]`).
    pub(crate) fn authorization(&self, audience: &str) -> Result<String, String> {
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(audience)
                .filter(|(_, made)| now.duration_since(*made) < JWT_REUSE)
                .map(|(jwt, _)| jwt.clone())
        };
        let jwt = match cached {
            Some(jwt) => jwt,
            None => {
                let jwt = self.sign(audience)?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.retain(|_, (_, made)| now.duration_since(*made) < JWT_REUSE);
                if cache.len() >= JWT_CACHE {
                    cache.clear();
                }
                cache.insert(audience.to_string(), (jwt.clone(), now));
                jwt
            }
        };
        Ok(format!("vapid t={jwt}, k={}", self.public))
    }

    fn sign(&self, audience: &str) -> Result<String, String> {
        let exp = crate::accounts::now_ms() / 1000 + JWT_LIFETIME.as_secs() as i64;
        let claims = VapidClaims {
            aud: audience.to_string(),
            exp,
            sub: self.contact.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key.encoding)
            .map_err(|e| format!("VAPID JWT: {e}"))
    }
}

/// Decodes a base64url value, padded or not.
fn b64url(v: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok()
}

/// The body of a push: `payload` encrypted (RFC 8291 `aes128gcm`) to a device's
/// `pushPublicKey` (base64url P-256 point) and `pushAuthKey` (base64url, 16 bytes).
pub(crate) fn encrypt(payload: &[u8], public_key: &str, auth_key: &str) -> Result<Vec<u8>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!("payload over {MAX_PAYLOAD} bytes"));
    }
    let public = b64url(public_key)
        .and_then(|b| p256::PublicKey::from_sec1_bytes(&b).ok())
        .ok_or("malformed push public key")?;
    let auth = b64url(auth_key)
        .filter(|a| a.len() == 16)
        .ok_or("malformed push auth key")?;
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    web_push_native::encrypt(payload.to_vec(), &public, &auth).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// A device's push keys: the private key and the registration's base64url values.
    fn device_keys() -> (p256::SecretKey, [u8; 16], String, String) {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let auth: [u8; 16] = rand::random();
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        (secret, auth, public, URL_SAFE_NO_PAD.encode(auth))
    }

    #[test]
    fn encryption_round_trip() {
        let (secret, auth, public, auth_b64) = device_keys();
        let payload = br#"{"version":1,"command":"fxaccounts:command_received"}"#;
        let body = encrypt(payload, &public, &auth_b64).unwrap();
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let plain = web_push_native::decrypt(body.clone(), &secret, &auth).unwrap();
        assert_eq!(plain, payload);
        // Padded keys are taken too; each message has its own salt and key.
        let padded = format!("{public}=");
        let again = encrypt(payload, &padded, &format!("{auth_b64}==")).unwrap();
        assert_ne!(again, body);
        assert_eq!(
            web_push_native::decrypt(again, &secret, &auth).unwrap(),
            payload
        );
        // The largest payload fits a 4096-byte message; a larger one is refused.
        let big = vec![b'x'; MAX_PAYLOAD];
        assert_eq!(encrypt(&big, &public, &auth_b64).unwrap().len(), 4096);
        assert!(encrypt(&[b'x'; MAX_PAYLOAD + 1], &public, &auth_b64).is_err());
        // Malformed keys.
        assert!(encrypt(payload, "AAAA", &auth_b64).is_err());
        assert!(encrypt(payload, "not base64!", &auth_b64).is_err());
        assert!(encrypt(payload, &public, "AAAA").is_err());
        assert!(encrypt(payload, &public, "").is_err());
    }

    #[test]
    fn vapid_key_pem_round_trip() {
        let key = VapidKey::generate();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = VapidKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key_b64(), key.public_key_b64());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(key.public_key_b64()).unwrap().len(),
            65
        );
        assert_ne!(VapidKey::generate().public_key_b64(), key.public_key_b64());
        assert!(VapidKey::from_pkcs8_pem("garbage").is_err());
        assert!(!format!("{key:?}").contains(&pem));
    }

    #[test]
    fn vapid_header_verifies() {
        let key = VapidKey::generate();
        let signer = VapidSigner::new(key.clone(), "mailto:ops@example.com");
        let header = signer
            .authorization("https://updates.push.services.mozilla.com")
            .unwrap();
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, key.public_key_b64());
        let point = URL_SAFE_NO_PAD.decode(k).unwrap();
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let decoding = DecodingKey::from_ec_components(&x, &y).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://updates.push.services.mozilla.com"]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<VapidClaims>(jwt, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims.sub, "mailto:ops@example.com");
        let now = crate::accounts::now_ms() / 1000;
        assert!(claims.exp > now + 11 * 3600 && claims.exp <= now + 12 * 3600 + 5);
        assert!(claims.exp < now + 24 * 3600);
        // Another key does not verify it.
        let other = VapidKey::generate().public_key_b64();
        let point = URL_SAFE_NO_PAD.decode(other).unwrap();
        let wrong = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..65]),
        )
        .unwrap();
        assert!(jsonwebtoken::decode::<VapidClaims>(jwt, &wrong, &validation).is_err());
        // Reused for the same audience, signed anew for another.
        assert_eq!(
            signer
                .authorization("https://updates.push.services.mozilla.com")
                .unwrap(),
            header
        );
        let other = signer.authorization("https://push.example:8443").unwrap();
        assert_ne!(other, header);
        let jwt = other
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap()
            .0;
        validation.set_audience(&["https://push.example:8443"]);
        assert!(jsonwebtoken::decode::<VapidClaims>(jwt, &decoding, &validation).is_ok());
    }
}
