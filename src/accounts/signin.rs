//! Sign-in: `POST /account/login`, the password check under the attempt limits (per
//! client address, per account and address, and a per-account ceiling that never
//! refuses the owner; see `limits`) that sign-in, password change and deletion share,
//! and the account status lookups (`/account/status`, `/account/credentials/status`),
//! counted like sign-up as an existence oracle.

use std::net::IpAddr;

use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, KeysQuery, ok};
use super::limits::{self, Rule};
use super::sessions::session_body;
use super::store::{self, Account};
use super::{Accounts, AccountsError, NewSession, Result, crypto, hex32};

impl Accounts {
    /// Checks `authPW` for `email`. Each attempt is counted as a failure before any
    /// work: per client address (10 a minute) first, then — only for an account that
    /// exists, so made-up emails make no per-account keys — per (account, address) (10
    /// a minute) and per account (100 an hour, all addresses together). Over that
    /// ceiling, an address that already failed for the account this hour is refused,
    /// but any other address still gets its attempt checked: failures from elsewhere
    /// never refuse the owner's correct password. An unknown account, another case of
    /// the email and a wrong password keep the failure counts; a correct password
    /// clears the (account, address) ones, gives back the rest, and only then counts as
    /// a sign-in (30 a minute per account and per address; over it 429), so attempts
    /// still in flight never hold the account's sign-in budget. The password is
    /// hardened only after the cheap checks (see `hardening::Hardening`), and not at all
    /// once the account's or the address's sign-ins are used up.
    pub(super) async fn check_password(
        &self,
        email: &str,
        auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<Account> {
        const HERE: [Rule; 2] = [Rule::FailAccountAddress, Rule::FailAccountAddressHour];
        let auth_pw = hex32("authPW", auth_pw)?;
        let by_address: Vec<_> = ip
            .map(|ip| self.limiter.address(Rule::FailAddress, ip))
            .into_iter()
            .collect();
        let mut address = self.limiter.reserve(&by_address)?;
        // The verified account of the address, else its newest pending sign-ups
        // (each with its own password; see `pending_sign_in`). The per-account counts
        // are kept on the first of them.
        let e = email.to_string();
        let candidates = self
            .blocking(move |s| Ok(s.accounts_by_email(&e, store::MAX_PENDING_SIGN_IN)?))
            .await?;
        let Some(first) = candidates.first() else {
            return Err(AccountsError::UnknownAccount);
        };
        let unit = ip.map(limits::client_unit);
        let failed_here = self
            .limiter
            .key(Rule::FailAccountAddressHour, (&first.uid, unit));
        let mut attempt = match self.limiter.reserve_under_ceiling(
            &[
                self.limiter
                    .key(Rule::FailAccountAddress, (&first.uid, unit)),
                failed_here,
            ],
            self.limiter.key(Rule::FailAccount, &first.uid),
            failed_here,
        ) {
            Ok(a) => a,
            Err(e) => {
                address.give_back_all();
                return Err(e);
            }
        };
        // The email salts the client's stretch: another case gives another authPW, so
        // the client is told the account's own (as FxA does) before any check. It
        // counts as a failure: it tells the account exists.
        let same_case: Vec<&Account> = candidates
            .iter()
            .filter(|a| a.email == email.trim())
            .collect();
        if same_case.is_empty() {
            return Err(AccountsError::IncorrectEmailCase(first.email.clone()));
        }
        // A correct password here is a sign-in, counted below (30 a minute per account
        // and per address); when those are used up the attempt can only end in 429, so
        // it ends there before the hardening (a flood of correct sign-ins to one's own
        // account costs at most 30 hardenings a minute per address).
        let sign_in_keys = |uid: &str| {
            let mut keys = vec![self.limiter.key(Rule::LoginAccount, uid)];
            keys.extend(ip.map(|ip| self.limiter.address(Rule::LoginAddress, ip)));
            keys
        };
        let mut matched = None;
        for account in same_case {
            let h = match self
                .harden(
                    auth_pw,
                    account.auth_salt,
                    ip,
                    Some(&account.uid),
                    &sign_in_keys(&account.uid),
                )
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    attempt.give_back_all();
                    address.give_back_all();
                    return Err(e);
                }
            };
            if crypto::ct_eq(&h.verify_hash, &account.verify_hash) {
                matched = Some((account.clone(), h));
                break;
            }
        }
        let Some((account, h)) = matched else {
            return Err(AccountsError::IncorrectPassword);
        };
        attempt.clear(&HERE);
        attempt.give_back(&[Rule::FailAccount]);
        address.give_back(&[Rule::FailAddress]);
        // A sign-in, counted now that it is one.
        self.limiter.reserve(&sign_in_keys(&account.uid))?;
        if account.disabled {
            return Err(AccountsError::Blocked("the account is disabled"));
        }
        let wrap_kb = crypto::xor32(&account.wrap_wrap_kb, &h.wrapwrap_key);
        Ok(Account {
            // Only carried to make the key bundle; never stored in the clear.
            wrap_wrap_kb: wrap_kb,
            ..account
        })
    }

    /// Signs in with `authPW`.
    pub async fn login(
        &self,
        email: &str,
        auth_pw: &str,
        keys: bool,
        ip: Option<IpAddr>,
        user_agent: &str,
    ) -> Result<NewSession> {
        let account = self.check_password(email, auth_pw, ip).await?;
        let session = self.new_session(account, keys, user_agent).await?;
        // An account still to verify gets a fresh code, within the mail limits per
        // recipient and per address; past them the code mailed last stays valid (and
        // the session's holder can ask again with resend_code later).
        if !session.account.email_verified && self.mailer.is_some() {
            match self
                .limiter
                .reserve(&self.mail_keys(ip, &session.account.email))
            {
                Ok(attempt) => {
                    if self.send_email_code(&session.account).await.is_err() {
                        attempt.give_back_all();
                    }
                }
                Err(_) => {
                    tracing::info!(uid = %session.account.uid, "no new verification mail: mail limits reached");
                }
            }
        }
        Ok(session)
    }

    /// Whether an account exists (by uid or by email). A lookup by email tells whether
    /// an address has an account: it counts per client address (30 a minute).
    pub async fn exists(
        &self,
        uid: Option<String>,
        email: Option<String>,
        ip: Option<IpAddr>,
    ) -> Result<bool> {
        if uid.is_none()
            && email.is_some()
            && let Some(ip) = ip
        {
            self.limiter
                .reserve(&[self.limiter.address(Rule::LookupAddress, ip)])?;
        }
        self.blocking(move |s| {
            Ok(match (uid, email) {
                (Some(uid), _) => s.account(&uid)?.is_some(),
                (None, Some(email)) => s.account_by_email(&email)?.is_some(),
                (None, None) => false,
            })
        })
        .await
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
}

pub(super) async fn login(
    State(st): State<ApiState>,
    Query(q): Query<KeysQuery>,
    r: AuthRequest,
) -> ApiResult {
    let c: Credentials = r.json()?;
    let keys = q.keys.as_deref() == Some("true");
    session_body(
        st.accounts
            .login(&c.email, &c.auth_pw, keys, r.ip, &r.user_agent)
            .await?,
    )
}

#[derive(Deserialize)]
pub(super) struct UidQuery {
    uid: Option<String>,
}

pub(super) async fn status_by_uid(
    State(st): State<ApiState>,
    Query(q): Query<UidQuery>,
) -> ApiResult {
    let uid = q.uid.ok_or(AccountsError::MissingParameter("uid".into()))?;
    ok(json!({ "exists": st.accounts.exists(Some(uid), None, None).await? }))
}

#[derive(Deserialize)]
struct EmailBody {
    email: String,
}

pub(super) async fn status_by_email(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: EmailBody = r.json()?;
    ok(json!({ "exists": st.accounts.exists(None, Some(b.email), r.ip).await? }))
}

pub(super) async fn credentials_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: EmailBody = r.json()?;
    if !st.accounts.exists(None, Some(b.email), r.ip).await? {
        return Err(AccountsError::UnknownAccount);
    }
    // Only onepw's first stretching version is offered.
    ok(json!({ "currentVersion": "v1", "upgradeNeeded": false }))
}
