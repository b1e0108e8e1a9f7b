//! Attached clients, as Firefox's account settings list them: the account's sessions
//! (with their devices) and refresh tokens (`GET /account/attached_clients`), and the
//! revocation of one (`POST /account/attached_client/destroy`).

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::store::{Device, Refresh, TokenRow};
use super::{Accounts, Result, hex32};

impl Accounts {
    /// Sessions, devices and refresh tokens of the account (attached clients).
    pub async fn attached(&self, uid: &str) -> Result<(Vec<TokenRow>, Vec<Device>, Vec<Refresh>)> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok((s.sessions(&uid)?, s.devices(&uid)?, s.refresh_tokens(&uid)?)))
            .await
    }

    /// Revokes an attached client: a session (by id hash hex) or a refresh token.
    pub async fn destroy_attached(
        &self,
        uid: &str,
        session: Option<String>,
        refresh: Option<String>,
        device: Option<String>,
    ) -> Result<()> {
        let owner = uid.to_string();
        self.removing_devices(uid, move |s| {
            let uid = owner;
            if let Some(d) = device {
                s.delete_device(&uid, &d)?;
            }
            if let Some(h) = session.and_then(|h| hex32("sessionTokenId", &h).ok())
                && s.sessions(&uid)?.iter().any(|t| t.id_hash == h)
            {
                s.delete_token(&h)?;
            }
            if let Some(h) = refresh.and_then(|h| hex32("refreshTokenId", &h).ok())
                && s.refresh_tokens(&uid)?.iter().any(|t| t.token_hash == h)
            {
                s.delete_refresh(&h)?;
            }
            Ok(())
        })
        .await
    }
}

pub(super) async fn attached_clients(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let (sessions, devices, refresh) = st.accounts.attached(&a.account.uid).await?;
    let mut out = Vec::new();
    for s in &sessions {
        let dev = devices
            .iter()
            .find(|d| d.session_id_hash.as_deref() == Some(&s.id_hash[..]));
        out.push(json!({
            "clientId": null,
            "deviceId": dev.map(|d| d.id.clone()),
            "sessionTokenId": hex::encode(s.id_hash),
            "refreshTokenId": null,
            "isCurrentSession": s.id_hash == a.token.id_hash,
            "deviceType": dev.map(|d| d.kind.clone()),
            "name": dev.map(|d| d.name.clone()),
            "scope": null,
            "lastAccessTime": s.last_used_at,
            "createdTime": s.created_at,
            "userAgent": s.user_agent,
            "os": null,
            "location": {},
        }));
    }
    for t in &refresh {
        out.push(json!({
            "clientId": t.client_id,
            "deviceId": null,
            "sessionTokenId": null,
            "refreshTokenId": hex::encode(t.token_hash),
            "isCurrentSession": false,
            "deviceType": null,
            "name": null,
            "scope": t.scope.split(' ').collect::<Vec<_>>(),
            "lastAccessTime": t.last_used_at,
            "createdTime": t.created_at,
            "userAgent": "",
            "os": null,
            "location": {},
        }));
    }
    ok(Value::Array(out))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachedDestroy {
    #[serde(default)]
    session_token_id: Option<String>,
    #[serde(default)]
    refresh_token_id: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

pub(super) async fn attached_client_destroy(
    State(st): State<ApiState>,
    r: AuthRequest,
) -> ApiResult {
    let b: AttachedDestroy = r.json()?;
    let a = session(&st, &r).await?;
    st.accounts
        .destroy_attached(
            &a.account.uid,
            b.session_token_id,
            b.refresh_token_id,
            b.device_id,
        )
        .await?;
    ok(json!({}))
}
