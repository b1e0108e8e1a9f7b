//! The account's keys: `GET /account/keys` (the encrypted bundle of kA and `wrapKb`,
//! once per key fetch token) and `POST /account/scoped-key-data` (the metadata of the
//! key-bearing scopes a client may ask for).

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::grants::{check_client_id, parse_scopes};
use super::store::Account;
use super::{Accounts, AccountsError, Result, TokenAuth};
use crate::tokenserver::fxa::OLDSYNC_SCOPE;

impl Accounts {
    /// `GET /account/keys`: the encrypted key bundle (the key fetch token is used up).
    /// The bundle returned is the one the request took out of the database in one
    /// statement: of requests presenting one token at once, only one gets it.
    pub async fn keys_bundle(&self, auth: &TokenAuth) -> Result<String> {
        let a = self.authenticate(auth, "keyFetchToken").await?;
        Self::require_verified(&a.account)?;
        let h = a.token.id_hash;
        let taken = self
            .blocking(move |s| Ok(s.take_token(&h, "keyFetchToken")?))
            .await?;
        let Some(data) = taken else {
            // Another request used it first.
            return Err(AccountsError::InvalidToken);
        };
        data.map(hex::encode)
            .ok_or_else(|| AccountsError::Internal("key fetch token without keys".into()))
    }

    /// `POST /account/scoped-key-data`: key metadata of the requested key-bearing scopes.
    pub fn scoped_key_data(
        &self,
        account: &Account,
        client_id: &str,
        scope: &str,
    ) -> Result<serde_json::Value> {
        Self::require_verified(account)?;
        check_client_id(client_id)?;
        let scopes = parse_scopes(scope)?;
        let mut out = serde_json::Map::new();
        if scopes.split(' ').any(|s| s == OLDSYNC_SCOPE) {
            out.insert(
                OLDSYNC_SCOPE.into(),
                serde_json::json!({
                    "identifier": OLDSYNC_SCOPE,
                    "keyRotationSecret": "0".repeat(64),
                    "keyRotationTimestamp": account.keys_changed_at,
                }),
            );
        }
        Ok(serde_json::Value::Object(out))
    }
}

pub(super) async fn keys(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    ok(json!({ "bundle": st.accounts.keys_bundle(r.auth()?).await? }))
}

#[derive(Deserialize)]
struct ScopedKeyBody {
    client_id: String,
    scope: String,
}

pub(super) async fn scoped_key_data(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: ScopedKeyBody = r.json()?;
    let a = session(&st, &r).await?;
    ok(st
        .accounts
        .scoped_key_data(&a.account, &b.client_id, &b.scope)?)
}
