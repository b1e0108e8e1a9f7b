//! The console's JSON API: login and logout, the session (its CSRF token), the
//! overview the page draws, and the controls. Handlers are thin: each control calls the
//! `admin` function the CLI calls, off the reactor.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::access::{self, SessionInfo};
use super::{ACCOUNTS_EVERY, Console, ConsoleError};
use crate::admin::{self, Actor};
use crate::tokenserver::store::{self, ListKind, NodeChange};

type ApiResult = Result<Response, ConsoleError>;

/// Most users one list change names.
const MAX_WHO: usize = 50;
/// Longest user (FxA uid or email) in a list change.
const MAX_WHO_CHARS: usize = 200;

/// A signed-in operator: a request with a valid session cookie from the address the
/// session was opened from, and, for any method but GET and HEAD, the session's CSRF
/// token in `X-Csrf-Token`.
pub(super) struct Operator {
    /// The client's address: the TCP peer.
    pub client: IpAddr,
    /// The session.
    pub session: SessionInfo,
    /// The value of the session cookie that named the session.
    cookie: String,
}

/// The client: always the TCP peer. The console never reads `X-Forwarded-For`, whatever
/// the public listener's `trusted_proxies` say (a console behind a proxy is not a
/// supported setup).
fn client_of(parts: &Parts) -> Result<IpAddr, ConsoleError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
        .ok_or_else(|| ConsoleError::Internal("no peer address on the request".into()))
}

impl FromRequestParts<Arc<Console>> for Operator {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let client = client_of(parts)?;
        // Every value of the cookie (bounded), in the order sent: another page of the
        // same host may have set ones of the same name that the browser sends first.
        let headers = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let (cookie, session) = access::cookie_values(headers, access::COOKIE)
            .find_map(|value| {
                let session = console.sessions.check(value, client)?;
                Some((value.to_string(), session))
            })
            .ok_or(ConsoleError::NoSession)?;
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !access::csrf_matches(&session, sent) {
                return Err(ConsoleError::Forbidden("missing or wrong CSRF token"));
            }
        }
        Ok(Operator {
            client,
            session,
            cookie,
        })
    }
}

/// The client address of a request without a session (the login).
pub(super) struct Client(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        client_of(parts).map(Client)
    }
}

/// A JSON body, or 400 with what is wrong with it.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ConsoleError> {
    serde_json::from_slice(body).map_err(|e| ConsoleError::BadRequest(format!("bad request: {e}")))
}

/// The session cookie (`max_age` None: an expired one, to end it).
fn session_cookie(value: &str, secure: bool, max_age: Option<u64>) -> String {
    format!(
        "{}={value}; Path=/admin/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        access::COOKIE,
        max_age.unwrap_or(0),
        if secure { "; Secure" } else { "" }
    )
}

fn session_json(info: &SessionInfo, console: &Console) -> Value {
    json!({
        "csrf": info.csrf,
        "idle_secs": info.idle_secs,
        "max_secs": info.max_secs,
        "accounts": console.accounts.is_some(),
    })
}

/// Runs blocking work (the databases) off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
}

/// A change's answer: what the admin function said.
fn done(message: String) -> ApiResult {
    Ok(Json(json!({ "ok": true, "message": message })).into_response())
}

/// `POST /admin/api/login` `{"token": …}`: counted against the attempt limits before
/// the token is compared; the right token opens a session (cookie) and answers its CSRF
/// token.
pub(super) async fn login(
    State(c): State<Arc<Console>>,
    Client(client): Client,
    body: Bytes,
) -> ApiResult {
    #[derive(Deserialize)]
    struct Login {
        token: String,
    }
    let login: Login = parse(&body)?;
    let attempt = c
        .limiter
        .reserve(client)
        .map_err(ConsoleError::TooManyAttempts)?;
    if !c.token.matches(&login.token) {
        tracing::warn!(client = %client, "admin console: wrong admin token");
        return Err(ConsoleError::WrongToken);
    }
    attempt.succeeded();
    let (cookie, info) = c.sessions.open(client);
    tracing::info!(client = %client, "admin console: signed in");
    let set = session_cookie(
        &cookie,
        c.secure_cookie,
        Some(access::SESSION_MAX.as_secs()),
    );
    Ok(([(header::SET_COOKIE, set)], Json(session_json(&info, &c))).into_response())
}

/// `POST /admin/api/logout`: ends the session.
pub(super) async fn logout(State(c): State<Arc<Console>>, op: Operator) -> ApiResult {
    c.sessions.close(&op.cookie);
    tracing::info!(client = %op.client, "admin console: signed out");
    let set = session_cookie("", c.secure_cookie, None);
    Ok(([(header::SET_COOKIE, set)], Json(json!({"ok": true}))).into_response())
}

/// `GET /admin/api/session`: the session's CSRF token and times (401 without one).
pub(super) async fn session(State(c): State<Arc<Console>>, op: Operator) -> ApiResult {
    Ok(Json(session_json(&op.session, &c)).into_response())
}

/// `GET /admin/api/overview`: everything the page shows (`admin::overview`), with the
/// accounts service's block.
pub(super) async fn overview(State(c): State<Arc<Console>>, _op: Operator) -> ApiResult {
    let db = c.db.clone();
    let view = blocking(move || Ok(admin::overview(&db, admin::now_ms())?)).await?;
    let mut view = serde_json::to_value(view).map_err(|e| ConsoleError::Internal(e.to_string()))?;
    view["accounts"] = accounts_block(&c).await?;
    Ok(Json(view).into_response())
}

/// The accounts service's count, sign-up policy and latest invites (null when the
/// service is off), read at most every [`ACCOUNTS_EVERY`].
async fn accounts_block(c: &Arc<Console>) -> Result<Value, ConsoleError> {
    let Some(accounts) = c.accounts.clone() else {
        return Ok(Value::Null);
    };
    {
        let cache = c.accounts_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, v)) = &*cache
            && at.elapsed() < ACCOUNTS_EVERY
        {
            return Ok(v.clone());
        }
    }
    let signups = accounts.signups().as_str();
    let block = blocking(move || {
        let store = accounts.store();
        let err = |e: crate::accounts::store::StoreError| ConsoleError::Internal(e.to_string());
        let count = store.count_accounts().map_err(err)?;
        let invites = store.invites().map_err(err)?;
        // Newest first.
        let latest: Vec<Value> = invites
            .iter()
            .take(50)
            .map(|i| {
                json!({"created_at": i.created_at, "expires_at": i.expires_at,
                       "used_at": i.used_at, "used_by": i.used_by})
            })
            .collect();
        Ok(
            json!({"count": count, "signups": signups, "invites": latest,
                  "invites_total": invites.len()}),
        )
    })
    .await?;
    *c.accounts_cache.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((std::time::Instant::now(), block.clone()));
    Ok(block)
}

fn node_name(node: &str) -> Result<String, ConsoleError> {
    let node = node.trim().trim_end_matches('/');
    if node.is_empty() {
        return Err(ConsoleError::BadRequest("node: missing".into()));
    }
    Ok(node.to_string())
}

/// `POST /admin/api/rollout` `{"node", "percent"}`: the node's share of new users.
pub(super) async fn rollout(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Rollout {
        node: String,
        percent: Value,
    }
    let r: Rollout = parse(&body)?;
    let node = node_name(&r.node)?;
    let percent = match &r.percent {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => {
            return Err(ConsoleError::BadRequest(
                "percent: a number from 0 to 100".into(),
            ));
        }
    };
    let bp = admin::percent_to_bp(&percent)?;
    tracing::info!(client = %op.client, node = %node, bp, "admin console: rollout set");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    done(blocking(move || Ok(admin::rollout_set(&db, &actor, &node, bp)?)).await?)
}

/// `POST /admin/api/list` `{"node", "list": "allow"|"deny"|"unlist", "who": […]}`.
pub(super) async fn list(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct ListChange {
        node: String,
        list: String,
        who: Vec<String>,
    }
    let l: ListChange = parse(&body)?;
    let node = node_name(&l.node)?;
    let kind = match l.list.as_str() {
        "allow" => Some(ListKind::Allow),
        "deny" => Some(ListKind::Deny),
        "unlist" => None,
        _ => {
            return Err(ConsoleError::BadRequest(
                "list: \"allow\", \"deny\" or \"unlist\"".into(),
            ));
        }
    };
    let who: Vec<String> = l
        .who
        .iter()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    if who.is_empty() || who.len() > MAX_WHO {
        return Err(ConsoleError::BadRequest(format!(
            "who: 1 to {MAX_WHO} FxA uids or emails"
        )));
    }
    if let Some(w) = who
        .iter()
        .find(|w| w.chars().count() > MAX_WHO_CHARS || w.chars().any(char::is_control))
    {
        return Err(ConsoleError::BadRequest(format!(
            "who: not an FxA uid or email: {:?}",
            w.chars().take(40).collect::<String>()
        )));
    }
    tracing::info!(client = %op.client, node = %node, list = %l.list, "admin console: list change");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    done(blocking(move || Ok(admin::rollout_list(&db, &actor, &node, kind, &who)?)).await?)
}

/// `POST /admin/api/node` `{"node", "action": "down"|"up"|"drain"|"undrain"}`: the
/// node's flags (a drain here is the flag: users move on their next sign-in).
pub(super) async fn node(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct NodeAction {
        node: String,
        action: String,
    }
    let a: NodeAction = parse(&body)?;
    let node = node_name(&a.node)?;
    let change = match a.action.as_str() {
        "down" => NodeChange {
            downed: Some(true),
            ..Default::default()
        },
        "up" => NodeChange {
            downed: Some(false),
            ..Default::default()
        },
        "drain" => NodeChange {
            draining: Some(true),
            ..Default::default()
        },
        "undrain" => NodeChange {
            draining: Some(false),
            ..Default::default()
        },
        _ => {
            return Err(ConsoleError::BadRequest(
                "action: \"down\", \"up\", \"drain\" or \"undrain\"".into(),
            ));
        }
    };
    tracing::info!(client = %op.client, node = %node, action = %a.action, "admin console: node change");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    done(blocking(move || Ok(admin::node_set(&db, &actor, &node, &change)?)).await?)
}

/// `POST /admin/api/resume` `{"node"}`: lets a node the canary guard paused take new
/// users again (and clears its suspicion).
pub(super) async fn resume(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Resume {
        node: String,
    }
    let r: Resume = parse(&body)?;
    let node = node_name(&r.node)?;
    tracing::info!(client = %op.client, node = %node, "admin console: rollout resume");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    done(blocking(move || Ok(admin::rollout_resume(&db, &actor, &node)?)).await?)
}

/// `POST /admin/api/drain` `{"node", "to"?}`: moves every user of the node, live, in a
/// background task of this process; its progress shows in the overview.
pub(super) async fn drain(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Drain {
        node: String,
        #[serde(default)]
        to: Option<String>,
    }
    let d: Drain = parse(&body)?;
    let node = node_name(&d.node)?;
    let to = match d.to.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(node_name(t)?),
    };
    let db = c.db.clone();
    let (n, t) = (node.clone(), to.clone());
    let known = blocking(move || {
        db.transaction(|tx| {
            let mut ok = store::node_by_url(tx, &n)?.is_some();
            if let Some(t) = &t {
                ok &= store::node_by_url(tx, t)?.is_some();
            }
            Ok::<_, ConsoleError>(ok)
        })
    })
    .await?;
    if !known {
        return Err(ConsoleError::NotFound("no such node".into()));
    }
    if !c
        .drains
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.clone())
    {
        return Err(ConsoleError::Conflict(format!(
            "a live drain of {node} is already running"
        )));
    }
    tracing::info!(client = %op.client, node = %node, "admin console: live drain started");
    let slot = DrainSlot(c.clone(), node.clone());
    let actor = Actor::console(op.client);
    tokio::spawn(async move {
        let (c, n) = (&slot.0, &slot.1);
        // Progress goes to the drains table, which the overview shows.
        let quiet = |_: &admin::moves::DrainStep| {};
        match admin::moves::drain(&c.db, &actor, &c.secret, n, to.as_deref(), &quiet).await {
            Ok(summary) => tracing::info!(node = %n, "admin console: {summary}"),
            Err(e) => tracing::warn!(node = %n, error = %e, "admin console: live drain"),
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"ok": true, "message": format!("draining {node} live")})),
    )
        .into_response())
}

/// A node this console is draining live; freed when the drain's task ends, however it
/// ends.
struct DrainSlot(Arc<Console>, String);

impl Drop for DrainSlot {
    fn drop(&mut self) {
        let mut drains = self.0.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains.remove(&self.1);
    }
}

/// `POST /admin/api/signups` `{"open": bool}`: whether the tokenserver takes new users.
pub(super) async fn signups(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Signups {
        open: bool,
    }
    let s: Signups = parse(&body)?;
    tracing::info!(client = %op.client, open = s.open, "admin console: sign-ups");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    done(blocking(move || Ok(admin::signups(&db, &actor, s.open)?)).await?)
}

/// `POST /admin/api/invite` `{"valid_for": "7d"}`: a single-use invite code, answered
/// once (only its hash is stored).
pub(super) async fn invite(State(c): State<Arc<Console>>, op: Operator, body: Bytes) -> ApiResult {
    #[derive(Deserialize)]
    struct Invite {
        #[serde(default)]
        valid_for: Option<String>,
    }
    let i: Invite = parse(&body)?;
    let valid_for = i.valid_for.unwrap_or_else(|| "7d".into());
    let ms = admin::accounts::parse_valid_for(&valid_for).ok_or_else(|| {
        ConsoleError::BadRequest(
            "valid_for: a number with m, h or d (minutes, hours, days), at most a year".into(),
        )
    })?;
    let accounts = c
        .accounts
        .clone()
        .ok_or_else(|| ConsoleError::NotFound("the accounts service is off".into()))?;
    tracing::info!(client = %op.client, "admin console: invite created");
    let (db, actor) = (c.db.clone(), Actor::console(op.client));
    let invite = blocking(move || {
        admin::accounts::create_invite(accounts.store(), &db, &actor, ms)
            .map_err(|e| ConsoleError::Internal(e.to_string()))
    })
    .await?;
    *c.accounts_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    Ok(Json(json!({
        "ok": true,
        "code": invite.code,
        "expires_at": invite.expires_at,
        "message": format!("invite created, valid for {valid_for}"),
    }))
    .into_response())
}
