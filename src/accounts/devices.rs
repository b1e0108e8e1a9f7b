//! Devices: registration and update of the session's device (`POST /account/device`,
//! within FxA's field limits, its push endpoint checked), the list
//! (`GET /account/devices`), removal (the other devices are told by push), and
//! `POST /account/devices/notify`, checked as FxA checks it and relayed by push.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::limits::Rule;
use super::store::{Device, Store};
use super::{Accounts, AccountsError, Authed, Result, now_ms, push};

/// Longest device name (FxA's limit), in characters.
const MAX_DEVICE_NAME: usize = 255;
/// Longest device type (FxA's limit).
const MAX_DEVICE_TYPE: usize = 16;
/// Longest push callback URL (FxA's limit).
const MAX_PUSH_CALLBACK: usize = 255;
/// Longest push key (base64url; FxA's limit for the public key).
const MAX_PUSH_KEY: usize = 88;
/// Most device commands, the longest command name, and the longest command data.
const MAX_COMMANDS: usize = 16;
const MAX_COMMAND_NAME: usize = 255;
const MAX_COMMAND_DATA: usize = 8 * 1024;

/// Fields of a device registration or update.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceUpdate {
    /// The device id (update) or none (register).
    #[serde(default)]
    pub id: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// desktop, mobile, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// WebPush endpoint.
    #[serde(default)]
    pub push_callback: Option<String>,
    /// WebPush public key.
    #[serde(default)]
    pub push_public_key: Option<String>,
    /// WebPush auth secret.
    #[serde(default)]
    pub push_auth_key: Option<String>,
    /// Command name → data.
    #[serde(default)]
    pub available_commands: Option<serde_json::Value>,
}

impl DeviceUpdate {
    /// Refuses fields beyond FxA's limits (400 errno 107), so that what an account
    /// stores per device stays small.
    fn check(&self, allow_private: &[ipnet::IpNet]) -> Result<()> {
        let bad = |name: &str| Err(AccountsError::InvalidParameter(name.into()));
        let b64url = |v: &str| {
            v.trim_end_matches('=')
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some(id) = &self.id
            && (id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("id");
        }
        if let Some(n) = &self.name
            && (n.chars().count() > MAX_DEVICE_NAME || n.chars().any(char::is_control))
        {
            return bad("name");
        }
        if let Some(t) = &self.kind
            && (t.is_empty()
                || t.len() > MAX_DEVICE_TYPE
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return bad("type");
        }
        if let Some(u) = &self.push_callback
            && !u.is_empty()
            && (u.len() > MAX_PUSH_CALLBACK || push::check_endpoint(u, allow_private).is_err())
        {
            return bad("pushCallback");
        }
        // FxA takes the push registration whole (each part may be empty, to clear it).
        let parts = [
            &self.push_callback,
            &self.push_public_key,
            &self.push_auth_key,
        ];
        if parts.iter().any(|p| p.is_some()) && !parts.iter().all(|p| p.is_some()) {
            return bad("pushCallback, pushPublicKey and pushAuthKey go together");
        }
        for (name, v) in [
            ("pushPublicKey", &self.push_public_key),
            ("pushAuthKey", &self.push_auth_key),
        ] {
            if let Some(k) = v
                && (k.len() > MAX_PUSH_KEY || !b64url(k))
            {
                return bad(name);
            }
        }
        if let Some(c) = &self.available_commands {
            let Some(map) = c.as_object() else {
                return bad("availableCommands");
            };
            let fits = map.len() <= MAX_COMMANDS
                && map.iter().all(|(k, v)| {
                    !k.is_empty()
                        && k.len() <= MAX_COMMAND_NAME
                        && v.as_str().is_some_and(|v| v.len() <= MAX_COMMAND_DATA)
                });
            if !fits {
                return bad("availableCommands");
            }
        }
        Ok(())
    }
}

impl Accounts {
    /// Registers (no id) or updates the session's device.
    /// A new device is announced to the others (`fxaccounts:device_connected`) once the
    /// account is verified.
    pub async fn put_device(&self, a: &Authed, update: DeviceUpdate) -> Result<Device> {
        update.check(&self.push_allow)?;
        let uid = a.account.uid.clone();
        let session = a.token.id_hash.to_vec();
        let (d, created, all) = self
            .blocking(move |s| {
                // Two registrations of one session at once may both find none and both
                // insert: the second loses on the session's uniqueness, and its retry
                // updates the device the first made.
                match register(&s, &uid, &session, &update) {
                    Err(AccountsError::Internal(_)) => register(&s, &uid, &session, &update),
                    done => done,
                }
            })
            .await?;
        if created && a.account.email_verified {
            self.push_device_connected(&all, &d);
        }
        Ok(d)
    }

    /// The account's devices.
    pub async fn devices(&self, uid: &str) -> Result<Vec<Device>> {
        let uid = uid.to_string();
        self.blocking(move |s| Ok(s.devices(&uid)?)).await
    }

    /// Deletes a device and its session; the account's devices are told.
    pub async fn destroy_device(&self, uid: &str, id: &str) -> Result<()> {
        let (owner, id) = (uid.to_string(), id.to_string());
        self.removing_devices(uid, move |s| {
            Ok(s.delete_device(&owner, &id).map(|_| ())?)
        })
        .await
    }

    /// Relays a notice a device asked for (`devices/notify`) to the account's devices
    /// named by `to` (`"all"` or ids) but `excluded`.
    async fn relay_notice(&self, a: &Authed, b: &NotifyBody) -> Result<()> {
        let _counted = self
            .limiter
            .reserve(&[self.limiter.key(Rule::NotifySession, a.token.id_hash)])?;
        let Some(payload) = &b.payload else {
            // `_endpointAction` alone: FxA sends an empty push, which Firefox ignores.
            return Ok(());
        };
        let devices = self.devices(&a.account.uid).await?;
        let excluded = b.excluded.as_deref().unwrap_or_default();
        let named = |d: &&Device| match &b.to {
            Value::Array(ids) => ids.iter().any(|i| i.as_str() == Some(&d.id)),
            _ => true,
        };
        let ttl = b.ttl.unwrap_or(0).min(MAX_NOTIFY_TTL_SECS) as u32;
        let payload = Value::Object(payload.clone());
        self.push_to_all(
            devices
                .iter()
                .filter(named)
                .filter(|d| !excluded.contains(&d.id)),
            &payload,
            ttl,
        );
        Ok(())
    }
}

/// Registers or updates the device of `session` (an account `uid`): the device made or
/// updated, whether it is new, and the account's devices before.
fn register(
    s: &Store,
    uid: &str,
    session: &[u8],
    update: &DeviceUpdate,
) -> Result<(Device, bool, Vec<Device>)> {
    let now = now_ms();
    let all = s.devices(uid)?;
    let mine = |d: &&Device| d.session_id_hash.as_deref() == Some(session);
    let existing = match &update.id {
        // A device is updated only by its own session; another id is unknown to it
        // (FxA's errno 123, on which Firefox registers anew).
        Some(id) => Some(
            all.iter()
                .filter(mine)
                .find(|d| &d.id == id)
                .cloned()
                .ok_or(AccountsError::UnknownDevice)?,
        ),
        None => all.iter().find(mine).cloned(),
    };
    let created = existing.is_none();
    let mut d = existing.unwrap_or_else(|| Device {
        id: hex::encode(rand::random::<[u8; 16]>()),
        uid: uid.to_string(),
        session_id_hash: Some(session.to_vec()),
        kind: "desktop".into(),
        available_commands: "{}".into(),
        created_at: now,
        ..Default::default()
    });
    if let Some(v) = &update.name {
        d.name = v.clone();
    }
    if let Some(v) = &update.kind {
        d.kind = v.clone();
    }
    if let Some(v) = &update.push_callback {
        // A new registration is live until its push service says otherwise.
        d.push_endpoint_expired = false;
        d.push_callback = Some(v.clone());
    }
    if let Some(v) = &update.push_public_key {
        d.push_public_key = Some(v.clone());
    }
    if let Some(v) = &update.push_auth_key {
        d.push_auth_key = Some(v.clone());
    }
    if let Some(v) = &update.available_commands {
        d.available_commands = v.to_string();
    }
    // Clearing a push registration (FxA takes empty strings for that).
    for field in [
        &mut d.push_callback,
        &mut d.push_public_key,
        &mut d.push_auth_key,
    ] {
        if field.as_deref() == Some("") {
            *field = None;
        }
    }
    d.last_access_at = now;
    s.upsert_device(&d)?;
    Ok((d, created, all))
}

fn device_json(d: &super::store::Device, current: bool) -> Value {
    let commands: Value = serde_json::from_str(&d.available_commands).unwrap_or(json!({}));
    json!({
        "id": d.id,
        "isCurrentDevice": current,
        "name": d.name,
        "type": d.kind,
        "pushCallback": d.push_callback,
        "pushPublicKey": d.push_public_key,
        "pushAuthKey": d.push_auth_key,
        "pushEndpointExpired": d.push_endpoint_expired,
        "availableCommands": commands,
        "lastAccessTime": d.last_access_at,
        "createdAt": d.created_at,
        "location": {},
    })
}

pub(super) async fn device(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let u: DeviceUpdate = r.json()?;
    let a = session(&st, &r).await?;
    let d = st.accounts.put_device(&a, u).await?;
    ok(device_json(&d, true))
}

pub(super) async fn devices(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let list = st.accounts.devices(&a.account.uid).await?;
    let mine = a.token.id_hash.to_vec();
    ok(Value::Array(
        list.iter()
            .map(|d| device_json(d, d.session_id_hash.as_deref() == Some(&mine[..])))
            .collect(),
    ))
}

#[derive(Deserialize)]
struct IdBody {
    id: String,
}

pub(super) async fn device_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: IdBody = r.json()?;
    let a = session(&st, &r).await?;
    st.accounts.destroy_device(&a.account.uid, &b.id).await?;
    ok(json!({}))
}

/// The largest `/account/devices/notify` body read (Firefox's are a few hundred bytes).
const MAX_NOTIFY_BODY: usize = 16 * 1024;
/// Most device ids one notification may name (in `to`, and in `excluded`).
const MAX_NOTIFY_DEVICES: usize = 256;
/// The longest a relayed notice waits at the push service, seconds (a day).
const MAX_NOTIFY_TTL_SECS: u64 = 24 * 3600;
/// The notices a device may ask to relay: what devices tell each other (Firefox sends
/// `sync:collection_changed`). The account's own notices (a device gone, the password
/// changed, the account deleted, a command queued) come from the server only: relayed,
/// they would sign a device out or send it fetching on a device's word.
const RELAYED_COMMANDS: &[&str] = &["sync:collection_changed", "fxaccounts:profile_updated"];

/// `POST /v1/account/devices/notify`, as FxA takes it: `to` is `"all"` or a list of
/// device ids, `excluded` a list of device ids, `payload` a push message (an object
/// with `version` and `command`; optional only with `_endpointAction`), `TTL` seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    to: Value,
    #[serde(default)]
    excluded: Option<Vec<String>>,
    #[serde(default)]
    payload: Option<serde_json::Map<String, Value>>,
    #[serde(default, rename = "TTL")]
    ttl: Option<u64>,
    #[serde(default, rename = "_endpointAction")]
    endpoint_action: Option<String>,
}

/// Whether `id` looks like a device id: hex, whole bytes, at most 64 digits.
fn is_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.len().is_multiple_of(2)
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl NotifyBody {
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(AccountsError::InvalidParameter(what.to_string()));
        let ids_ok = |ids: &[Value]| {
            ids.len() <= MAX_NOTIFY_DEVICES
                && ids.iter().all(|i| i.as_str().is_some_and(is_device_id))
        };
        match &self.to {
            Value::String(s) if s == "all" => {}
            Value::Array(ids) if ids_ok(ids) => {}
            _ => return bad("to"),
        }
        if let Some(ex) = &self.excluded
            && (ex.len() > MAX_NOTIFY_DEVICES || !ex.iter().all(|i| is_device_id(i)))
        {
            return bad("excluded");
        }
        match self.endpoint_action.as_deref() {
            None | Some("accountVerify") => {}
            Some(_) => return bad("_endpointAction"),
        }
        match &self.payload {
            Some(p) => {
                let command_ok = p
                    .get("command")
                    .and_then(Value::as_str)
                    .is_some_and(|c| RELAYED_COMMANDS.contains(&c));
                if !p.get("version").is_some_and(Value::is_u64) || !command_ok {
                    return bad("payload");
                }
            }
            None if self.endpoint_action.is_some() => {}
            None => return Err(AccountsError::MissingParameter("payload".into())),
        }
        Ok(())
    }
}

/// Push notifications to the account's devices: checked as FxA checks them, relayed by
/// push to those with a live push registration, answered `{}` as FxA does.
pub(super) async fn devices_notify(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    Accounts::require_verified(&a.account)?;
    if r.body.len() > MAX_NOTIFY_BODY {
        return Err(AccountsError::InvalidParameter("body too large".into()));
    }
    let b: NotifyBody = r.json()?;
    b.check()?;
    st.accounts.relay_notice(&a, &b).await?;
    ok(json!({}))
}
