//! Device commands (Send Tab): a device invokes a command another device of the same
//! account offers (`POST /account/devices/invoke_command`), the command waits in the
//! target's queue (`store::commands`) until its TTL ends, and the target fetches it
//! (`GET /account/device/commands`) when woken by a push, when it refreshes its device
//! list, or in its daily scheduled fetch. Checked and answered as FxA does: 400 errno
//! 123 for a target that is not the account's, 157 for a command it does not offer, 429
//! errno 114 over the per-session rate or a full queue.

use axum::extract::{RawQuery, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::api::{ApiResult, ApiState, AuthRequest, ok, session};
use super::limits::Rule;
use super::notices::NotPushed;
use super::store::{NewCommand, Queued, QueuedCommand};
use super::{Accounts, AccountsError, Authed, Result, now_ms};

/// The largest command payload (its JSON): a Send Tab payload is under 1 KB, and
/// Firefox caps its own commands at 16 KB.
pub const MAX_COMMAND_PAYLOAD: usize = 16 * 1024;
/// The longest a command waits, seconds (FxA's: 28 days), and what one without a
/// `ttl` gets.
pub const MAX_COMMAND_TTL_SECS: u64 = 28 * 24 * 3600;
/// Most commands one page of `device/commands` holds (FxA's), and the default.
const MAX_PAGE: i64 = 100;
/// How long a full queue makes the sender wait before it tries again, seconds.
const FULL_QUEUE_RETRY_SECS: u64 = 3600;

/// `POST /v1/account/devices/invoke_command`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    target: String,
    command: String,
    payload: Map<String, Value>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// What an invocation did: queued (always, when it answers), and whether the target
/// was sent a push (else why not, in FxA's words).
pub struct Invoked {
    /// Whether a push to the target was queued.
    pub notified: bool,
    /// Why not: `noCallback` (no push registration), `expiredCallback`, `disabled`.
    pub notify_error: Option<&'static str>,
}

fn is_device_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A command name as FxA takes one (the keys of `availableCommands`).
fn is_command_name(c: &str) -> bool {
    (1..=100).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-:".contains(&b))
}

impl Accounts {
    /// Queues `command` with `payload` (JSON text) for the account's device `target`,
    /// which must offer it, from the session of `a` (its device is the sender), and
    /// pushes the target a notice.
    async fn invoke_command(
        &self,
        a: &Authed,
        target: String,
        command: String,
        payload: String,
        ttl_secs: u64,
    ) -> Result<Invoked> {
        Accounts::require_verified(&a.account)?;
        let _counted = self
            .limiter
            .reserve(&[self.limiter.key(Rule::CommandSession, a.token.id_hash)])?;
        let uid = a.account.uid.clone();
        let session = a.token.id_hash.to_vec();
        let now = now_ms();
        let expires_at = now + (ttl_secs.min(MAX_COMMAND_TTL_SECS) as i64) * 1000;
        let name = command.clone();
        let (index, device, sender) = self
            .blocking(move |s| {
                let devices = s.devices(&uid)?;
                let Some(device) = devices.iter().find(|d| d.id == target).cloned() else {
                    return Err(AccountsError::UnknownDevice);
                };
                let offered =
                    serde_json::from_str::<Map<String, Value>>(&device.available_commands)
                        .is_ok_and(|m| m.contains_key(&command));
                if !offered {
                    return Err(AccountsError::UnavailableCommand);
                }
                let sender = devices
                    .iter()
                    .find(|d| d.session_id_hash.as_deref() == Some(&session[..]))
                    .map(|d| d.id.clone());
                let new = NewCommand {
                    uid: &uid,
                    target: &target,
                    command: &command,
                    payload: &payload,
                    sender: sender.as_deref(),
                    expires_at,
                };
                match s.queue_command(&new, now)? {
                    Queued::At(index) => Ok((index, device, sender)),
                    Queued::UnknownDevice => Err(AccountsError::UnknownDevice),
                    Queued::Full => Err(AccountsError::TooManyRequests(FULL_QUEUE_RETRY_SECS)),
                }
            })
            .await?;
        let ttl = ttl_secs.min(MAX_COMMAND_TTL_SECS) as u32;
        // A command with TTL 0 is expired already: nothing to wake the target for.
        let pushed = if ttl == 0 {
            Err(NotPushed::Unavailable)
        } else {
            self.push_command(&device, &name, index, sender.as_deref(), ttl)
        };
        Ok(Invoked {
            notified: pushed.is_ok(),
            notify_error: pushed.err().map(|e| e.as_str()),
        })
    }

    /// Up to `limit` unexpired commands queued for the session's device from `index`
    /// on, and whether more follow.
    async fn queued_commands(
        &self,
        a: &Authed,
        index: i64,
        limit: i64,
    ) -> Result<(Vec<QueuedCommand>, bool)> {
        let uid = a.account.uid.clone();
        let session = a.token.id_hash.to_vec();
        let now = now_ms();
        self.blocking(move |s| {
            let device = s
                .devices(&uid)?
                .into_iter()
                .find(|d| d.session_id_hash.as_deref() == Some(&session[..]))
                .ok_or(AccountsError::UnknownDevice)?;
            Ok(s.device_commands(&device.id, index, limit, now)?)
        })
        .await
    }
}

pub(super) async fn invoke_command(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let b: InvokeBody = r.json()?;
    if !is_device_id(&b.target) {
        return Err(AccountsError::InvalidParameter("target".into()));
    }
    if !is_command_name(&b.command) {
        return Err(AccountsError::InvalidParameter("command".into()));
    }
    let payload = Value::Object(b.payload).to_string();
    if payload.len() > MAX_COMMAND_PAYLOAD {
        return Err(AccountsError::InvalidParameter(format!(
            "payload: larger than {MAX_COMMAND_PAYLOAD} bytes"
        )));
    }
    if b.ttl.is_some_and(|t| t > 10_000_000) {
        return Err(AccountsError::InvalidParameter("ttl".into()));
    }
    let ttl = b.ttl.unwrap_or(MAX_COMMAND_TTL_SECS);
    let done = st
        .accounts
        .invoke_command(&a, b.target, b.command, payload, ttl)
        .await?;
    let mut body = json!({ "enqueued": true, "notified": done.notified });
    if let Some(why) = done.notify_error {
        body["notifyError"] = json!(why);
    }
    ok(body)
}

/// The query of `GET /v1/account/device/commands`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsQuery {
    #[serde(default)]
    index: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

pub(super) async fn commands(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
    r: AuthRequest,
) -> ApiResult {
    let q: CommandsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| AccountsError::InvalidParameter(format!("query: {e}")))?;
    let index = q.index.unwrap_or(0);
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if index < 0 {
        return Err(AccountsError::InvalidParameter("index".into()));
    }
    if !(0..=MAX_PAGE).contains(&limit) {
        return Err(AccountsError::InvalidParameter("limit".into()));
    }
    let a = session(&st, &r).await?;
    let (list, more) = st.accounts.queued_commands(&a, index, limit).await?;
    let last_index = list.last().map_or(0, |c| c.index);
    let messages: Vec<Value> = list
        .into_iter()
        .map(|c| {
            let payload: Value = serde_json::from_str(&c.payload).unwrap_or(json!({}));
            let mut data = json!({ "command": c.command, "payload": payload });
            if let Some(sender) = c.sender {
                data["sender"] = json!(sender);
            }
            json!({ "index": c.index, "data": data })
        })
        .collect();
    ok(json!({ "index": last_index, "last": !more, "messages": messages }))
}
