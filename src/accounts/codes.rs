//! Email verification: the 6-digit codes mailed to the address of an `open` sign-up
//! (only a keyed hash of each is stored), their checks and resends under the attempt
//! and mail limits, and the routes `POST /session/verify_code`, `POST
//! /session/resend_code` and `GET /recovery_email/status`.

use std::net::IpAddr;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::limits::{self, Rule};
use super::store::{self, Account};
use super::{Accounts, AccountsError, Authed, Result, now_ms};

/// Lifetime of an email verification code, ms.
const EMAIL_CODE_TTL_MS: i64 = 15 * 60 * 1000;

impl Accounts {
    /// The keys a mail counts on: the requesting address (10 a minute), the recipient
    /// as asked for from that address (3 in 15 minutes: a stranger spends only their
    /// own share, never the owner's), and the recipient in all (20 a day).
    pub(super) fn mail_keys(&self, ip: Option<IpAddr>, email: &str) -> Vec<limits::Key> {
        let recipient = store::normalize_email(email);
        let unit = ip.map(limits::client_unit);
        let mut keys = vec![
            self.limiter.key(Rule::MailRecipient, (&recipient, unit)),
            self.limiter.key(Rule::MailRecipientTotal, &recipient),
        ];
        keys.extend(ip.map(|ip| self.limiter.address(Rule::MailAddress, ip)));
        keys
    }

    /// Makes a fresh 6-digit verification code for an unverified account (replacing
    /// any earlier one; only its hash, salted with the uid, is stored) and mails it.
    /// Callers count the mail in the limits per address and recipient first.
    pub(super) async fn send_email_code(&self, account: &Account) -> Result<()> {
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
}

/// The key of the email codes' hash: HKDF-SHA256 of the deployment secret (which is
/// in the configuration or the data dir's secret file, not in the accounts database).
pub(super) fn email_code_key(secret: &str) -> [u8; 32] {
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

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

pub(super) async fn verify_code(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: CodeBody = r.json()?;
    let a = session(&st, &r).await?;
    st.accounts.verify_email(&a, &b.code, r.ip).await?;
    ok(json!({}))
}

pub(super) async fn resend_code(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    st.accounts.resend_email_code(&a, r.ip).await?;
    ok(json!({}))
}

pub(super) async fn email_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let verified = a.account.email_verified;
    ok(json!({
        "email": a.account.email,
        "verified": verified,
        "sessionVerified": verified,
        "emailVerified": verified,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::crypto;

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
