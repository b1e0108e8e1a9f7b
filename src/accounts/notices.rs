//! Web Push notices to an account's devices, as FxA sends them and Firefox acts on
//! them (`{version: 1, command, data}`): a command queued for the device
//! (`fxaccounts:command_received`, so it fetches at once), a device connected or gone,
//! the password changed, the account deleted, and what a device asks to be relayed
//! (`/account/devices/notify`, e.g. `sync:collection_changed`). Sent through the push
//! sender (`push`), to devices with a live push registration; a device without one
//! learns the same at its next fetch or sync.

use serde_json::{Value, json};

use super::push::{PushConfig, PushTarget, Pusher};
use super::store::{Device, Store};
use super::{Accounts, Result};

/// How long the push service keeps a notice for a device that is offline, seconds
/// (FxA's: 5 hours for a device gone; the others as long as that too).
const NOTICE_TTL_SECS: u32 = 5 * 3600;

/// Why a device was not pushed to, in FxA's words (`notifyError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPushed {
    /// It registered no push endpoint.
    NoCallback,
    /// Its push service said the endpoint is gone.
    ExpiredCallback,
    /// Push is off here, or the sender's queue is full.
    Unavailable,
}

impl NotPushed {
    /// FxA's `notifyError` for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotPushed::NoCallback => "noCallback",
            NotPushed::ExpiredCallback => "expiredCallback",
            NotPushed::Unavailable => "unknown",
        }
    }
}

/// A device's push registration, if it has a live one.
fn target(d: &Device) -> std::result::Result<PushTarget, NotPushed> {
    match (&d.push_callback, &d.push_public_key, &d.push_auth_key) {
        _ if d.push_endpoint_expired => Err(NotPushed::ExpiredCallback),
        (Some(endpoint), Some(public_key), Some(auth_key)) => Ok(PushTarget {
            uid: d.uid.clone(),
            device_id: d.id.clone(),
            endpoint: endpoint.clone(),
            public_key: public_key.clone(),
            auth_key: auth_key.clone(),
        }),
        _ => Err(NotPushed::NoCallback),
    }
}

impl Accounts {
    /// Starts the push sender with `config` (on the current runtime), signing with the
    /// service's VAPID key; an endpoint its push service calls gone is marked expired.
    /// With push off, endpoints are still checked against `config.allow_private`.
    pub fn with_push(mut self, config: PushConfig) -> Accounts {
        self.push_allow = config.allow_private.clone();
        if !config.enabled {
            return self;
        }
        let store = self.store.clone();
        let on_gone = Box::new(move |t: PushTarget| {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.expire_push_endpoint(&t.uid, &t.device_id, &t.endpoint) {
                    tracing::warn!(error = %e, "could not mark a push endpoint expired");
                }
            });
        });
        self.pusher = Some(Pusher::start(config, self.signer.vapid(), on_gone));
        self
    }

    /// Pushes `payload` to `device`: queued for sending, or why not.
    pub(super) fn push_to(
        &self,
        device: &Device,
        payload: &Value,
        ttl_secs: u32,
    ) -> std::result::Result<(), NotPushed> {
        let target = target(device)?;
        match &self.pusher {
            Some(p) if p.send(target, payload, ttl_secs) => Ok(()),
            _ => Err(NotPushed::Unavailable),
        }
    }

    /// Pushes `payload` to each of `devices` that has a live push registration, once
    /// per endpoint (devices may share one).
    pub(super) fn push_to_all<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a Device>,
        payload: &Value,
        ttl_secs: u32,
    ) {
        let mut seen = std::collections::HashSet::new();
        for d in devices {
            if d.push_callback
                .as_ref()
                .is_some_and(|e| seen.insert(e.clone()))
            {
                let _ = self.push_to(d, payload, ttl_secs);
            }
        }
    }

    /// `fxaccounts:command_received`: a command waits for `device` at `index`.
    pub(super) fn push_command(
        &self,
        device: &Device,
        command: &str,
        index: i64,
        sender: Option<&str>,
        ttl_secs: u32,
    ) -> std::result::Result<(), NotPushed> {
        let url = format!(
            "{}/v1/account/device/commands?index={index}&limit=1",
            self.signer.issuer().trim_end_matches('/')
        );
        let mut data = json!({ "command": command, "index": index, "url": url });
        if let Some(s) = sender {
            data["sender"] = json!(s);
        }
        let payload = json!({
            "version": 1,
            "command": "fxaccounts:command_received",
            "data": data,
        });
        self.push_to(device, &payload, ttl_secs)
    }

    /// Runs `f` on the database, which may remove devices of `uid` (with their sessions),
    /// then pushes `fxaccounts:device_disconnected` for each device it removed to every
    /// device the account had before (the removed one too: a Firefox whose device was
    /// removed elsewhere signs out).
    pub(super) async fn removing_devices<T: Send + 'static>(
        &self,
        uid: &str,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let uid = uid.to_string();
        let (out, before, gone) = self
            .blocking(move |s| {
                let before = s.devices(&uid)?;
                let out = f(&s)?;
                let after = s.devices(&uid)?;
                let gone: Vec<String> = before
                    .iter()
                    .filter(|d| !after.iter().any(|a| a.id == d.id))
                    .map(|d| d.id.clone())
                    .collect();
                Ok((out, before, gone))
            })
            .await?;
        for id in gone {
            self.push_device_disconnected(&before, &id);
        }
        Ok(out)
    }

    /// `fxaccounts:device_connected` to the account's devices but `new`.
    pub(super) fn push_device_connected(&self, devices: &[Device], new: &Device) {
        let payload = json!({
            "version": 1,
            "command": "fxaccounts:device_connected",
            "data": { "deviceName": new.name },
        });
        self.push_to_all(
            devices.iter().filter(|d| d.id != new.id),
            &payload,
            NOTICE_TTL_SECS,
        );
    }

    /// `fxaccounts:device_disconnected` for `gone` to `devices` (those the account had).
    fn push_device_disconnected(&self, devices: &[Device], gone: &str) {
        let payload = json!({
            "version": 1,
            "command": "fxaccounts:device_disconnected",
            "data": { "id": gone },
        });
        self.push_to_all(devices, &payload, NOTICE_TTL_SECS);
    }

    /// `fxaccounts:password_changed` to the devices the account had before.
    pub(super) fn push_password_changed(&self, devices: &[Device]) {
        let payload = json!({ "version": 1, "command": "fxaccounts:password_changed" });
        self.push_to_all(devices, &payload, NOTICE_TTL_SECS);
    }

    /// `fxaccounts:account_destroyed` to the devices the account had.
    pub(super) fn push_account_destroyed(&self, devices: &[Device], uid: &str) {
        let payload = json!({
            "version": 1,
            "command": "fxaccounts:account_destroyed",
            "data": { "uid": uid },
        });
        self.push_to_all(devices, &payload, NOTICE_TTL_SECS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_registration_is_a_target() {
        let full = Device {
            id: "d".into(),
            uid: "u".into(),
            push_callback: Some("https://push.example/x".into()),
            push_public_key: Some("k".into()),
            push_auth_key: Some("a".into()),
            ..Default::default()
        };
        assert!(target(&full).is_ok());
        let expired = Device {
            push_endpoint_expired: true,
            ..full.clone()
        };
        assert_eq!(target(&expired).err(), Some(NotPushed::ExpiredCallback));
        let keyless = Device {
            push_auth_key: None,
            ..full.clone()
        };
        assert_eq!(target(&keyless).err(), Some(NotPushed::NoCallback));
        assert_eq!(
            target(&Device::default()).err(),
            Some(NotPushed::NoCallback)
        );
    }
}
