//! Password change, in FxA's two steps (`POST /password/change/start` proves the old
//! password under the attempt limits; `POST /password/change/finish` sets the new
//! verifier, keeps kB and revokes every other session), and the operator's reset
//! (`syncstore account reset-password`: kB cannot be kept, so it changes).

use std::net::IpAddr;

use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, KeysQuery, ok};
use super::sessions::session_body;
use super::store::TokenRow;
use super::{Accounts, AccountsError, Authed, NewSession, Result, crypto, hex32, now_ms};

impl Accounts {
    /// `POST /password/change/start`: checks the old password; a key fetch token (for
    /// the current kB) and a password change token.
    pub async fn password_change_start(
        &self,
        email: &str,
        old_auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, String)> {
        let account = self.check_password(email, old_auth_pw, ip).await?;
        let session = self.new_session(account.clone(), true, "").await?;
        // The session that carried the key fetch token is not needed.
        let sk = crypto::token_keys(&hex32("s", &session.session_token)?, "sessionToken");
        let sh = crypto::sha256(&sk.id);
        let pct = crypto::random32();
        let pk = crypto::token_keys(&pct, "passwordChangeToken");
        let now = now_ms();
        let row = TokenRow {
            id_hash: crypto::sha256(&pk.id),
            kind: "passwordChangeToken".into(),
            uid: account.uid.clone(),
            auth_key: pk.auth_key,
            data: None,
            created_at: now,
            last_used_at: now,
            user_agent: String::new(),
        };
        self.blocking(move |s| {
            s.delete_token(&sh)?;
            Ok(s.insert_token(&row)?)
        })
        .await?;
        Ok((
            session.key_fetch_token.unwrap_or_default(),
            hex::encode(pct),
        ))
    }

    /// `POST /password/change/finish`: the new verifier and the same kB (wrapped under
    /// the new password); every other session and token is revoked; a new session.
    /// The password change token is taken (read and deleted in one statement) before
    /// the hardening: of requests presenting one token at once, only one goes on. The
    /// hardening counts for the client address `ip` and the account.
    pub async fn password_change_finish(
        &self,
        a: &Authed,
        auth_pw: &str,
        wrap_kb: &str,
        keys: bool,
        ua: &str,
        ip: Option<IpAddr>,
    ) -> Result<NewSession> {
        let auth_pw = hex32("authPW", auth_pw)?;
        let wrap_kb = hex32("wrapKb", wrap_kb)?;
        let th = a.token.id_hash;
        let taken = self
            .blocking(move |s| Ok(s.take_token(&th, "passwordChangeToken")?))
            .await?;
        if taken.is_none() {
            // Another request used it first.
            return Err(AccountsError::InvalidToken);
        }
        let salt = crypto::random32();
        let h = self
            .harden(auth_pw, salt, ip, Some(&a.account.uid), &[])
            .await?;
        let wrap_wrap_kb = crypto::xor32(&wrap_kb, &h.wrapwrap_key);
        let uid = a.account.uid.clone();
        let now = now_ms();
        let vh = h.verify_hash;
        let devices = self
            .blocking(move |s| {
                let devices = s.devices(&uid)?;
                s.set_password(&uid, &salt, &vh, &wrap_wrap_kb, now, false)?;
                Ok(devices)
            })
            .await?;
        self.push_password_changed(&devices);
        let mut account = a.account.clone();
        account.verifier_set_at = now;
        account.wrap_wrap_kb = wrap_kb;
        self.new_session(account, keys, ua).await
    }

    /// Resets an account's password from a new `authPW` (operator command): kB cannot
    /// be kept without the old password, so it changes (keys_changed_at moves, Sync
    /// starts over with new keys) and every session is revoked.
    pub async fn reset_password(&self, email: &str, auth_pw: &str) -> Result<()> {
        let e = email.to_string();
        let account = self.blocking(move |s| Ok(s.account_by_email(&e)?)).await?;
        let account = account.ok_or(AccountsError::UnknownAccount)?;
        let auth_pw = hex32("authPW", auth_pw)?;
        let salt = crypto::random32();
        let h = self.harden(auth_pw, salt, None, None, &[]).await?;
        let now = now_ms();
        let wwkb = crypto::random32();
        self.blocking(move |s| {
            Ok(s.set_password(&account.uid, &salt, &h.verify_hash, &wwkb, now, true)?)
        })
        .await
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeStart {
    email: String,
    #[serde(rename = "oldAuthPW")]
    old_auth_pw: String,
}

pub(super) async fn password_change_start(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: ChangeStart = r.json()?;
    let (kft, pct) = st
        .accounts
        .password_change_start(&b.email, &b.old_auth_pw, r.ip)
        .await?;
    ok(json!({ "keyFetchToken": kft, "passwordChangeToken": pct, "verified": true }))
}

#[derive(Deserialize)]
struct ChangeFinish {
    #[serde(rename = "authPW")]
    auth_pw: String,
    #[serde(rename = "wrapKb")]
    wrap_kb: String,
}

pub(super) async fn password_change_finish(
    State(st): State<ApiState>,
    Query(q): Query<KeysQuery>,
    r: AuthRequest,
) -> ApiResult {
    let b: ChangeFinish = r.json()?;
    let a = st
        .accounts
        .authenticate(r.auth()?, "passwordChangeToken")
        .await?;
    let keys = q.keys.as_deref() == Some("true");
    session_body(
        st.accounts
            .password_change_finish(&a, &b.auth_pw, &b.wrap_kb, keys, &r.user_agent, r.ip)
            .await?,
    )
}
