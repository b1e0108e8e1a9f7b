//! The onepw protocol's cryptography, as Firefox Accounts specifies it.
//!
//! Client side (also used by the `account add` command): the password is stretched
//! with PBKDF2-SHA256 (1,000 rounds, salted with the email), then split by HKDF into
//! `authPW` (sent to the server) and `unwrapBKey` (never sent). Server side: `authPW`
//! is hardened with scrypt (N=65536, r=8, p=1) under a random `authSalt`, and split by
//! HKDF into `verifyHash` (stored, compared in constant time) and `wrapwrapKey` (never
//! stored: it unwraps the stored `wrapWrapKb` into `wrapKb` at sign-in). So the server
//! keeps neither the password nor anything that gives `kB` without the password:
//! `kB = wrapKb XOR unwrapBKey`, computed by the client only.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every onepw HKDF `info` and PBKDF2 salt.
pub const NAMESPACE: &str = "identity.mozilla.com/picl/v1/";
/// scrypt cost as log2(N): FxA's N = 65,536 (64 MiB per check, with r = 8).
const SCRYPT_LOG_N: u8 = 16;

/// HKDF-SHA256 with an empty salt and `NAMESPACE + name` as info, `len` bytes.
pub fn derive(secret: &[u8], name: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::new(None, secret)
        .expand(format!("{NAMESPACE}{name}").as_bytes(), &mut out)
        .expect("HKDF output within 255 blocks");
    out
}

fn derive32(secret: &[u8], name: &str) -> [u8; 32] {
    derive(secret, name, 32).try_into().expect("32 bytes")
}

/// The client's quick stretch: PBKDF2-SHA256, 1,000 rounds, salt `quickStretch:<email>`.
pub fn quick_stretch(email: &str, password: &str) -> [u8; 32] {
    let salt = format!("{NAMESPACE}quickStretch:{email}");
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), 1000, &mut out);
    out
}

/// `authPW`: what the client sends in place of the password.
pub fn auth_pw(stretched: &[u8; 32]) -> [u8; 32] {
    derive32(stretched, "authPW")
}

/// `unwrapBKey`: the client's half of `kB` (never sent).
pub fn unwrap_b_key(stretched: &[u8; 32]) -> [u8; 32] {
    derive32(stretched, "unwrapBkey")
}

/// What the server keeps of `authPW` (`verifyHash`) and the key that unwraps the
/// stored `wrapWrapKb` (`wrapwrapKey`), both from scrypt(authPW, authSalt).
pub struct Hardened {
    /// Compared with the stored verifier.
    pub verify_hash: [u8; 32],
    /// XORed with the stored `wrapWrapKb` to give `wrapKb`; never stored.
    pub wrapwrap_key: [u8; 32],
}

/// Hardens `authPW` with scrypt under `auth_salt` (CPU- and memory-heavy: call it off
/// the async reactor).
pub fn harden(auth_pw: &[u8; 32], auth_salt: &[u8; 32]) -> Hardened {
    let params = scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32).expect("valid scrypt params");
    let mut big = [0u8; 32];
    scrypt::scrypt(auth_pw, auth_salt, &params, &mut big).expect("32-byte output");
    Hardened {
        verify_hash: derive32(&big, "verifyHash"),
        wrapwrap_key: derive32(&big, "wrapwrapKey"),
    }
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// XOR of two equally long 32-byte values.
pub fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The three values derived from a token (session, key fetch, password change):
/// its id (what the server looks it up by), its Hawk key and its bundle key.
pub struct TokenKeys {
    /// The token id, sent by the client (Hawk `id`, or in a prefixed Bearer header).
    pub id: [u8; 32],
    /// The Hawk key that signs requests with this token.
    pub auth_key: [u8; 32],
    /// The key of encrypted answers (`account/keys`).
    pub bundle_key: [u8; 32],
}

/// Derives a token's id, Hawk key and bundle key; `kind` is e.g. `sessionToken`.
pub fn token_keys(token: &[u8; 32], kind: &str) -> TokenKeys {
    let m = derive(token, kind, 96);
    TokenKeys {
        id: m[..32].try_into().expect("32"),
        auth_key: m[32..64].try_into().expect("32"),
        bundle_key: m[64..].try_into().expect("32"),
    }
}

/// Encrypts `payload` for the holder of `bundle_key`: XOR with an HKDF stream, then
/// HMAC-SHA256 of the ciphertext appended (onepw's `account/keys` bundle).
pub fn bundle(bundle_key: &[u8; 32], name: &str, payload: &[u8]) -> Vec<u8> {
    let m = derive(bundle_key, name, 32 + payload.len());
    let (hmac_key, xor_key) = m.split_at(32);
    let mut out: Vec<u8> = payload.iter().zip(xor_key).map(|(p, k)| p ^ k).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(hmac_key).expect("any key length");
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// Reverses [`bundle`]; `None` when the HMAC does not match.
pub fn unbundle(bundle_key: &[u8; 32], name: &str, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 32 {
        return None;
    }
    let (ct, tag) = data.split_at(data.len() - 32);
    let m = derive(bundle_key, name, 32 + ct.len());
    let (hmac_key, xor_key) = m.split_at(32);
    let mut mac = Hmac::<Sha256>::new_from_slice(hmac_key).expect("any key length");
    mac.update(ct);
    mac.verify_slice(tag).ok()?;
    Some(ct.iter().zip(xor_key).map(|(c, k)| c ^ k).collect())
}

/// Sync's client state for `kB`: the first 16 bytes of SHA-256(kB).
pub fn client_state(kb: &[u8; 32]) -> [u8; 16] {
    Sha256::digest(kb)[..16].try_into().expect("16")
}

/// SHA-256, for keeping token ids and codes as lookup keys rather than as they are.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// 32 random bytes.
pub fn random32() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The onepw protocol's published test vector (email andré@example.org,
    /// password pässwörd).
    #[test]
    fn client_derivations_match_the_onepw_test_vector() {
        let stretched = quick_stretch("andr\u{e9}@example.org", "p\u{e4}ssw\u{f6}rd");
        assert_eq!(
            hex::encode(stretched),
            "e4e8889bd8bd61ad6de6b95c059d56e7b50dacdaf62bd84644af7e2add84345d"
        );
        assert_eq!(
            hex::encode(auth_pw(&stretched)),
            "247b675ffb4c46310bc87e26d712153abe5e1c90ef00a4784594f97ef54f2375"
        );
        assert_eq!(
            hex::encode(unwrap_b_key(&stretched)),
            "de6a2648b78284fcb9ffa81ba95803309cfba7af583c01a8a1a63e567234dd28"
        );
    }

    #[test]
    fn bundles_round_trip_and_detect_tampering() {
        let key = random32();
        let payload = [7u8; 64];
        let mut b = bundle(&key, "account/keys", &payload);
        assert_eq!(b.len(), 96);
        assert_eq!(unbundle(&key, "account/keys", &b).unwrap(), payload);
        b[0] ^= 1;
        assert!(unbundle(&key, "account/keys", &b).is_none());
    }
}
