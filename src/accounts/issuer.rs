//! This service's access tokens as the in-process tokenserver sees them
//! (`LocalTokens`, a `LocalIssuer`): valid by signature and claims, and only while the
//! account exists and is enabled.

use std::sync::Arc;

use super::Accounts;
use super::oauth::Signer;
use super::store::Store;
use crate::tokenserver::fxa::{FxaError, IssuerRecord, LocalDecision, LocalIssuer, OAuthUser};

impl Accounts {
    /// What the tokenserver trusts in-process: this service's access tokens, while
    /// their account exists and is enabled.
    pub fn local_issuer(&self) -> Arc<LocalTokens> {
        Arc::new(LocalTokens {
            signer: self.signer.clone(),
            store: self.store.clone(),
        })
    }
}

/// This service's access tokens as the tokenserver sees them: valid by signature and
/// claims, and only while the account exists and is enabled (an access token outlives
/// neither the account's deletion nor its disabling).
pub struct LocalTokens {
    signer: Arc<Signer>,
    store: Store,
}

impl LocalIssuer for LocalTokens {
    fn verify_local<'a>(&'a self, token: &'a str) -> LocalDecision<'a> {
        Box::pin(async move {
            let (user, claims) = match self.signer.decide(token)? {
                Ok(decided) => decided,
                Err(e) => return Some(Err(e)),
            };
            let (store, uid) = (self.store.clone(), user.fxa_uid.clone());
            let found = tokio::task::spawn_blocking(move || store.account(&uid)).await;
            Some(match found {
                // The tokenserver holds the token's generation and X-KeyID to these.
                Ok(Ok(Some(a))) if !a.disabled => Ok(OAuthUser {
                    account: Some(IssuerRecord {
                        generation: a.verifier_set_at,
                        keys_changed_at: a.keys_changed_at,
                        auth_at: claims.auth_at,
                    }),
                    ..user
                }),
                Ok(Ok(_)) => Err(FxaError::Invalid(
                    "the account is deleted or disabled".into(),
                )),
                Ok(Err(e)) => Err(FxaError::Unavailable(e.to_string())),
                Err(e) => Err(FxaError::Unavailable(e.to_string())),
            })
        })
    }

    fn name(&self) -> String {
        self.signer.issuer().to_string()
    }
}
