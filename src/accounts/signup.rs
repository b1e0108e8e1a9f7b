//! Sign-up: who may create an account over the API (`Signups`), `POST
//! /account/create` under that policy and the attempt limits, the accounts the operator
//! adds, and what every new account is made of (`insert_new_account`).

use std::net::IpAddr;

use axum::extract::{Query, State};
use serde::Deserialize;

use super::api::{ApiResult, ApiState, AuthRequest, KeysQuery};
use super::invites::BAD_INVITE;
use super::limits::{self, Rule};
use super::sessions::session_body;
use super::store::{self, Account, Store};
use super::{Accounts, AccountsError, NewSession, Result, crypto, hex32, now_ms};

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

impl Accounts {
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
        let (attempt, invite_hash) = match code {
            None => (None, None),
            Some(code) => {
                let (attempt, hash) = self.check_invite(code, &normalized, ip).await?;
                (Some(attempt), Some(hash))
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
}

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

/// `account/create`'s body: the credentials and, under the `invite` policy, the code.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewAccount {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
    #[serde(default)]
    invite_code: Option<String>,
}

pub(super) async fn create(
    State(st): State<ApiState>,
    Query(q): Query<KeysQuery>,
    r: AuthRequest,
) -> ApiResult {
    let c: NewAccount = r.json()?;
    let keys = q.keys.as_deref() == Some("true");
    session_body(
        st.accounts
            .create(
                &c.email,
                &c.auth_pw,
                c.invite_code.as_deref(),
                keys,
                r.ip,
                &r.user_agent,
            )
            .await?,
    )
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
}
