//! An account's deletion by its owner: `POST /account/destroy`, with the account's own
//! session and its password (checked under the attempt limits); its Sync data is queued
//! for deletion. (The operator's `account delete` is in `admin::accounts`.)

use std::net::IpAddr;

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::{Accounts, AccountsError, Authed, Result, now_ms};

impl Accounts {
    /// Deletes the account of session `a`, proven again by its password (`authPW` for
    /// `email`, under the attempt limits); its Sync data is queued for deletion.
    pub async fn destroy_account(
        &self,
        a: &Authed,
        email: &str,
        auth_pw: &str,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        let account = self.check_password(email, auth_pw, ip).await?;
        if account.uid != a.account.uid {
            return Err(AccountsError::InvalidToken);
        }
        let uid = account.uid.clone();
        let (gone, devices) = self
            .blocking(move |s| {
                let devices = s.devices(&uid)?;
                Ok((s.delete_account_by_uid(&uid, now_ms())?, devices))
            })
            .await?;
        self.push_account_destroyed(&devices, &account.uid);
        tracing::info!(uid = %account.uid, deleted = gone.is_some(), "account deleted by its owner");
        Ok(())
    }
}

#[derive(Deserialize)]
struct Destroy {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
}

/// `POST /account/destroy`: the account's own session and its password (both, as FxA
/// asks); its Sync data is deleted after it.
pub(super) async fn account_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let b: Destroy = r.json()?;
    st.accounts
        .destroy_account(&a, &b.email, &b.auth_pw, r.ip)
        .await?;
    ok(json!({}))
}
