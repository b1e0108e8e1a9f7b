//! The accounts service's OAuth signing keys and access tokens: RS256 JWTs signed with
//! an RSA key generated on first start and kept in `<data_dir>/accounts-keys.json`
//! (mode 0600), or, when the accounts database is the shared PostgreSQL, in its
//! `account_signing_keys` table, so that every process signs with the same key and
//! verifies the others' tokens (the first process to start generates it, under a lock).
//! `syncstore account rotate-key` adds a new signing key; a retired key stays published
//! (and trusted) until every token it signed has expired. The OAuth routes and grants
//! that use these tokens are in `grants` and `authorization`. The same key set holds
//! the server's VAPID key (P-256) of outbound Web Push (`push`), generated when missing
//! and kept across rotations.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::push::VapidKey;
use super::store::Store;
use crate::tokenserver::fxa::{FxaError, OAuthUser, OLDSYNC_SCOPE};

/// Longest lifetime of an access token, seconds (a client asking for more gets this).
/// Every use of a token checks its account (exists, enabled, same password
/// generation); this bounds how long one outlives what is not checked per use: the
/// end of the session or refresh token it came from.
pub const MAX_ACCESS_TTL_SECS: i64 = 6 * 3600;
/// Lifetime of an access token when the client asks for none, seconds (a client whose
/// token is refused or expired asks for a new one).
pub const DEFAULT_ACCESS_TTL_SECS: i64 = 3600;
/// The file holding the signing keys.
pub const KEYS_FILE: &str = "accounts-keys.json";

/// Errors of the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A key in it is not usable.
    #[error("signing key: {0}")]
    Key(String),
    /// The shared keys could not be read or written.
    #[error("signing keys: {0}")]
    Store(#[from] super::store::StoreError),
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    created_at: i64,
    #[serde(default)]
    retired_at: Option<i64>,
    pem: String,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct KeyFile {
    keys: Vec<StoredKey>,
    /// The VAPID key of Web Push, PKCS#8 PEM (absent in files from before push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vapid: Option<String>,
}

struct PublicKey {
    kid: String,
    created_at: i64,
    jwk: Value,
    decoding: DecodingKey,
}

/// The signing key and the published (current and retired) public keys.
pub struct Signer {
    kid: String,
    encoding: EncodingKey,
    public: Vec<PublicKey>,
    issuer: String,
    vapid: VapidKey,
}

/// The claims of an access token this service signs.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    /// This service's issuer URL.
    pub iss: String,
    /// The account uid.
    pub sub: String,
    /// The client.
    pub aud: String,
    /// The client.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Issued at, s.
    pub iat: i64,
    /// Expiry, s.
    pub exp: i64,
    /// Unique id.
    pub jti: String,
    /// When the password last changed, ms (FxA's generation).
    #[serde(rename = "fxa-generation")]
    pub generation: i64,
    /// When the session behind the token proved the password, ms (a claim of this
    /// service's own): the session's creation for `fxa-credentials` and authorization
    /// codes, carried over by the refresh tokens made from them. The tokenserver lets
    /// a token replace the client state registered at the account's keys_changed_at
    /// only when it is newer than the one that registered it. 0 (absent) in tokens
    /// from before the claim: older than anything.
    #[serde(rename = "syncstore-auth-at", default)]
    pub auth_at: i64,
}

fn now_ms() -> i64 {
    super::now_ms()
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn new_key(now: i64) -> Result<StoredKey, KeyError> {
    let mut rng = rsa::rand_core::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| KeyError::Key(e.to_string()))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Key(e.to_string()))?;
    let kid = format!("syncstore-{}", hex::encode(rand::random::<[u8; 8]>()));
    Ok(StoredKey {
        kid,
        created_at: now,
        retired_at: None,
        pem: pem.to_string(),
    })
}

fn write_keys(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    let text = serde_json::to_vec_pretty(file).map_err(|e| file_err(path, e))?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn read_keys(path: &Path) -> Result<Option<KeyFile>, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).map_err(|e| file_err(path, e))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(path, e)),
    }
}

/// Whether a retired key is still needed to verify the tokens it signed.
fn still_published(k: &StoredKey, now: i64) -> bool {
    k.retired_at
        .is_none_or(|at| at + (MAX_ACCESS_TTL_SECS + 3600) * 1000 > now)
}

/// The key set with a new signing key, the current one retired (kept published until
/// its tokens expire) and retired keys no longer needed dropped.
fn rotated(mut file: KeyFile, now: i64) -> Result<KeyFile, KeyError> {
    for k in &mut file.keys {
        k.retired_at.get_or_insert(now);
    }
    file.keys.retain(|k| still_published(k, now));
    file.keys.insert(0, new_key(now)?);
    Ok(file)
}

/// Reads the key set where it lives (the data dir's file, or the shared database),
/// lets `edit` replace it (Some) and returns the set as stored afterwards.
fn edit_keys(
    data_dir: &Path,
    store: &Store,
    mut edit: impl FnMut(Option<KeyFile>) -> Result<Option<KeyFile>, KeyError>,
) -> Result<KeyFile, KeyError> {
    if !store.is_shared() {
        let path = data_dir.join(KEYS_FILE);
        let old = read_keys(&path)?;
        return match edit(old.clone())? {
            Some(new) => {
                write_keys(&path, &new)?;
                Ok(new)
            }
            None => Ok(old.unwrap_or_default()),
        };
    }
    let mut failed = None;
    let text = store.edit_shared_keys(&mut |old| {
        let parsed = match old.map(serde_json::from_str::<KeyFile>).transpose() {
            Ok(p) => p,
            Err(e) => {
                failed = Some(KeyError::Key(format!("shared keys: {e}")));
                return None;
            }
        };
        let text = edit(parsed).and_then(|new| {
            new.map(|n| serde_json::to_string(&n))
                .transpose()
                .map_err(|e| KeyError::Key(format!("shared keys: {e}")))
        });
        text.unwrap_or_else(|e| {
            failed = Some(e);
            None
        })
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    match text {
        Some(t) => serde_json::from_str(&t).map_err(|e| KeyError::Key(format!("shared keys: {e}"))),
        None => Ok(KeyFile::default()),
    }
}

/// Adds a new signing key, retiring the current one (kept published until its tokens
/// expire) and dropping retired keys no longer needed. Returns the new key's id.
pub fn rotate(data_dir: &Path, store: &Store) -> Result<String, KeyError> {
    let now = now_ms();
    let file = edit_keys(data_dir, store, |old| {
        rotated(old.unwrap_or_default(), now).map(Some)
    })?;
    file.keys
        .first()
        .map(|k| k.kid.clone())
        .ok_or_else(|| KeyError::Key("no current key".into()))
}

impl Signer {
    /// Loads the keys (from the data dir, or the shared database when `store` is
    /// PostgreSQL), generating the first one if there is none. `issuer` is the `iss`
    /// of the tokens signed.
    pub fn load(data_dir: &Path, store: &Store, issuer: &str) -> Result<Signer, KeyError> {
        let now = now_ms();
        let file = edit_keys(data_dir, store, |old| {
            let has_key = old
                .as_ref()
                .is_some_and(|f| f.keys.iter().any(|k| k.retired_at.is_none()));
            let has_vapid = old.as_ref().is_some_and(|f| f.vapid.is_some());
            if has_key && has_vapid {
                return Ok(None);
            }
            let mut file = old.unwrap_or_default();
            if !has_key {
                file = rotated(file, now)?;
            }
            if !has_vapid {
                file.vapid = Some(VapidKey::generate().to_pkcs8_pem());
            }
            Ok(Some(file))
        })?;
        let current = file
            .keys
            .iter()
            .find(|k| k.retired_at.is_none())
            .ok_or_else(|| KeyError::Key("no current key".into()))?;
        let encoding = EncodingKey::from_rsa_pem(current.pem.as_bytes())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let mut public = Vec::new();
        for k in file.keys.iter().filter(|k| still_published(k, now)) {
            let private = rsa::RsaPrivateKey::from_pkcs8_pem(&k.pem)
                .map_err(|e| KeyError::Key(e.to_string()))?;
            let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
            let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
            let decoding = DecodingKey::from_rsa_components(&n, &e)
                .map_err(|e| KeyError::Key(e.to_string()))?;
            public.push(PublicKey {
                kid: k.kid.clone(),
                created_at: k.created_at,
                jwk: json!({
                    "kty": "RSA", "alg": "RS256", "use": "sig", "kid": k.kid,
                    "n": n, "e": e, "fxa-createdAt": k.created_at / 1000,
                }),
                decoding,
            });
        }
        let vapid = file
            .vapid
            .as_deref()
            .ok_or_else(|| KeyError::Key("no VAPID key".into()))
            .and_then(|pem| VapidKey::from_pkcs8_pem(pem).map_err(KeyError::Key))?;
        Ok(Signer {
            kid: current.kid.clone(),
            encoding,
            public,
            issuer: issuer.trim_end_matches('/').to_string(),
            vapid,
        })
    }

    /// The server's VAPID key of Web Push.
    pub fn vapid(&self) -> VapidKey {
        self.vapid.clone()
    }

    /// The `iss` of this service's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The published keys as a JWK set.
    pub fn jwks(&self) -> Value {
        let mut keys: Vec<&PublicKey> = self.public.iter().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// Signs an access token (`typ: at+jwt`, as FxA's).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Key(e.to_string()))
    }

    /// Verifies an access token this service signed (signature, issuer, expiry).
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::RS256 {
            return None;
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 30;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        self.public
            .iter()
            .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
            .find_map(|k| {
                jsonwebtoken::decode::<AccessClaims>(token, &k.decoding, &validation).ok()
            })
            .map(|d| d.claims)
    }
}

/// The tokenserver's in-process trust in this service's tokens.
impl Signer {
    /// The tokenserver's decision on an access token by signature and claims alone
    /// (its user, and the claims the tokenserver goes on to check): `None` when it
    /// names none of this signer's key ids (see `tokenserver::fxa::LocalIssuer`).
    pub fn decide(&self, token: &str) -> Option<Result<(OAuthUser, AccessClaims), FxaError>> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid;
        let ours = kid.is_some_and(|kid| self.public.iter().any(|k| k.kid == kid));
        let claims = match self.verify(token) {
            Some(claims) => claims,
            // One of our key ids but not valid (expired, forged, wrong issuer).
            None if ours => return Some(Err(FxaError::Invalid("invalid access token".into()))),
            None => return None,
        };
        if !claims.scope.split(' ').any(|s| s == OLDSYNC_SCOPE) {
            return Some(Err(FxaError::Invalid("no oldsync scope".into())));
        }
        let user = OAuthUser {
            fxa_uid: claims.sub.clone(),
            generation: Some(claims.generation),
            account: None,
        };
        Some(Ok((user, claims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_rotate_and_old_tokens_stay_valid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "").unwrap();
        let signer = Signer::load(dir.path(), &store, "http://a.example/").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let claims = AccessClaims {
            iss: "http://a.example".into(),
            sub: "00".repeat(16),
            aud: "c".into(),
            client_id: "c".into(),
            scope: OLDSYNC_SCOPE.into(),
            iat: now_ms() / 1000,
            exp: now_ms() / 1000 + 60,
            jti: "j".into(),
            generation: 1,
            auth_at: 7,
        };
        let token = signer.sign(&claims).unwrap();
        let (user, decided) = signer.decide(&token).unwrap().unwrap();
        assert_eq!(user.fxa_uid, "00".repeat(16));
        assert_eq!(decided.auth_at, 7);
        rotate(dir.path(), &store).unwrap();
        let rotated = Signer::load(dir.path(), &store, "http://a.example").unwrap();
        assert_ne!(rotated.kid, signer.kid);
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
        assert!(rotated.verify(&token).is_some(), "old key still trusted");
        let other = Signer::load(dir.path(), &store, "http://b.example").unwrap();
        assert!(other.verify(&token).is_none(), "issuer is checked");
        // A token of ours that fails is decided here (refused), never passed on.
        assert!(matches!(other.decide(&token), Some(Err(_))));
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(matches!(signer.decide(&forged), Some(Err(_))));
        // A token naming a key id of no key of ours is not ours to decide.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path(), "").unwrap();
        let foreign = Signer::load(dir2.path(), &store2, "http://a.example")
            .unwrap()
            .sign(&claims)
            .unwrap();
        assert!(signer.decide(&foreign).is_none());
    }

    #[test]
    fn vapid_key_is_kept_with_the_signing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "").unwrap();
        let first = Signer::load(dir.path(), &store, "http://a.example").unwrap();
        let kid = first.kid.clone();
        // A key file from before push: no VAPID key.
        let path = dir.path().join(KEYS_FILE);
        let mut old: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("vapid");
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let loaded = Signer::load(dir.path(), &store, "http://a.example").unwrap();
        assert_eq!(loaded.kid, kid, "the signing key is kept");
        let vapid = loaded.vapid().public_key_b64();
        let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(stored["vapid"].as_str().unwrap().contains("PRIVATE KEY"));
        // Every load (every process) gets the same key, and a rotation keeps it.
        let again = Signer::load(dir.path(), &store, "http://a.example").unwrap();
        assert_eq!(again.vapid().public_key_b64(), vapid);
        rotate(dir.path(), &store).unwrap();
        let rotated = Signer::load(dir.path(), &store, "http://a.example").unwrap();
        assert_ne!(rotated.kid, kid);
        assert_eq!(rotated.vapid().public_key_b64(), vapid);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
