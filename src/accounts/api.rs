//! What the accounts service's HTTP routes share, shaped as Firefox Accounts answers
//! them (paths and bodies as Firefox's FxAccountsClient and PyPI's PyFxA expect): the
//! routes' state, the request extractor (the token proof, Hawk or Bearer; the client's
//! address; the body) and the route table, which names each file's handlers: the auth
//! API under `/v1`, the OAuth routes (also at the OAuth server's own paths `/v1/token`,
//! `/v1/destroy`, `/v1/verify`), the profile (`/v1/profile`, `/profile/v1/profile`),
//! the discovery documents, and the sign-in page (`/`, with its script and style).
//! Handlers parse, make one service call, answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Accounts, AccountsError, Authed, TokenAuth, attached, authorization, codes, commands, deletion,
    devices, discovery, grants, keys, pages, password, profile, sessions, signin, signup,
};
use crate::auth::hawk;
use crate::web::client_addr::ClientAddr;

/// What the routes need.
#[derive(Clone)]
pub struct ApiState {
    /// The service.
    pub accounts: Arc<Accounts>,
    /// The configured public URL (empty: from the request's Host).
    pub public_url: String,
    /// Whether X-Forwarded-Host and -Proto are believed (X-Forwarded-For: see
    /// `web::client_addr`).
    pub trust_forwarded: bool,
}

pub(super) type ApiResult = Result<Response, AccountsError>;

/// A request as the accounts routes see it: who signed it, from where, and the body.
pub struct AuthRequest {
    /// The token proof, when an `Authorization` header is present.
    pub auth: Option<TokenAuth>,
    /// The client's address (see `web::client_addr`: the peer, or from a trusted
    /// proxy's X-Forwarded-For).
    pub ip: Option<IpAddr>,
    /// The User-Agent.
    pub user_agent: String,
    /// The raw body.
    pub body: Bytes,
}

impl AuthRequest {
    /// The body as JSON of type `T` (an empty body reads as `{}`).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, AccountsError> {
        let body: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body).map_err(|e| {
            let m = e.to_string();
            if m.contains("missing field") {
                AccountsError::MissingParameter(m)
            } else {
                AccountsError::InvalidParameter(m)
            }
        })
    }

    /// The token proof, or 401 errno 110.
    pub fn auth(&self) -> Result<&TokenAuth, AccountsError> {
        self.auth.as_ref().ok_or(AccountsError::InvalidToken)
    }
}

/// The host and port the client signed (the public URL's, else the Host header's).
fn signed_host(headers: &HeaderMap, st: &ApiState) -> (String, u16) {
    if let Ok(u) = st.public_url.parse::<axum::http::Uri>()
        && let Some(host) = u.host()
    {
        let port = u.port_u16().unwrap_or(match u.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        return (host.to_string(), port);
    }
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let forwarded_https = st.trust_forwarded
        && get("x-forwarded-proto").is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let host = st
        .trust_forwarded
        .then(|| get("x-forwarded-host"))
        .flatten()
        .or_else(|| get("host"))
        .unwrap_or("")
        .trim();
    let default_port = if forwarded_https { 443 } else { 80 };
    match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h.to_string(), p.parse().unwrap_or(default_port)),
        _ => (host.to_string(), default_port),
    }
}

/// The public origin of this service: the public URL, else from the request.
pub(super) fn origin(headers: &HeaderMap, st: &ApiState) -> String {
    if !st.public_url.is_empty() {
        return st.public_url.trim_end_matches('/').to_string();
    }
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let scheme = match st
        .trust_forwarded
        .then(|| get("x-forwarded-proto"))
        .flatten()
    {
        Some(p) if p.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = st
        .trust_forwarded
        .then(|| get("x-forwarded-host"))
        .flatten()
        .or_else(|| get("host"))
        .unwrap_or("localhost");
    format!("{scheme}://{}", host.trim())
}

/// The largest body the accounts routes read (their largest, a device registration
/// within FxA's field limits, is a few KB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl FromRequest<ApiState> for AuthRequest {
    type Rejection = Response;

    async fn from_request(req: Request, st: &ApiState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let too_large = || AccountsError::InvalidParameter("body too large".into()).into_response();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| too_large())?;
        let headers = &parts.headers;
        // Decided once per request by the listener (web::client_addr); a router served
        // some other way falls back to the TCP peer.
        let ip = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip().to_canonical())
            });
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let authz = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let auth = if let Some(bearer) = authz.strip_prefix("Bearer ") {
            let bearer = bearer.trim();
            let (prefix, id) = match bearer.split_once('_') {
                Some((p, id)) if matches!(p, "fxs" | "fxk" | "fxar" | "fxpf" | "fxpc") => (p, id),
                _ => ("", bearer),
            };
            Some(TokenAuth::Bearer {
                prefix: prefix.to_string(),
                id: id.to_string(),
            })
        } else if authz.len() > 5 && authz[..5].eq_ignore_ascii_case("hawk ") {
            let h = hawk::parse_header(authz)
                .ok_or_else(|| AccountsError::InvalidSignature.into_response())?;
            let (host, port) = signed_host(headers, st);
            let mime = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            // Computed when signed, and whenever there is a body (which must be signed).
            let body_hash =
                (h.hash.is_some() || !body.is_empty()).then(|| hawk::payload_hash(&mime, &body));
            Some(TokenAuth::Hawk {
                header: Box::new(h),
                method: parts.method.as_str().to_string(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                host,
                port,
                body_hash,
            })
        } else {
            None
        };
        Ok(AuthRequest {
            auth,
            ip,
            user_agent,
            body,
        })
    }
}

/// The accounts routes, ready to merge into the main router (any state).
pub fn router<S: Clone + Send + Sync + 'static>(st: ApiState) -> Router<S> {
    Router::new()
        .route(
            "/.well-known/fxa-client-configuration",
            get(discovery::client_configuration),
        )
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/v1/account/create", post(signup::create))
        .route("/v1/account/login", post(signin::login))
        .route("/v1/account/destroy", post(deletion::account_destroy))
        .route(
            "/v1/account/status",
            get(signin::status_by_uid).post(signin::status_by_email),
        )
        .route(
            "/v1/account/credentials/status",
            post(signin::credentials_status),
        )
        .route("/v1/account/keys", get(keys::keys))
        .route("/v1/account/profile", get(profile::account_profile))
        .route("/v1/session/status", get(sessions::session_status))
        .route("/v1/session/destroy", post(sessions::session_destroy))
        .route("/v1/session/verify_code", post(codes::verify_code))
        .route("/v1/session/resend_code", post(codes::resend_code))
        .route("/v1/recovery_email/status", get(codes::email_status))
        .route("/v1/account/scoped-key-data", post(keys::scoped_key_data))
        .route("/v1/oauth/token", post(grants::token))
        .route("/v1/token", post(grants::token))
        .route(
            "/v1/oauth/authorization",
            post(authorization::authorization),
        )
        .route("/v1/oauth/destroy", post(grants::destroy))
        .route("/v1/destroy", post(grants::destroy))
        .route("/v1/verify", post(grants::verify))
        .route("/v1/jwks", get(grants::jwks))
        .route("/v1/account/device", post(devices::device))
        .route("/v1/account/devices", get(devices::devices))
        .route("/v1/account/device/destroy", post(devices::device_destroy))
        .route("/v1/account/device/commands", get(commands::commands))
        .route(
            "/v1/account/devices/invoke_command",
            post(commands::invoke_command),
        )
        .route("/v1/account/devices/notify", post(devices::devices_notify))
        .route(
            "/v1/account/attached_clients",
            get(attached::attached_clients),
        )
        .route(
            "/v1/account/attached_client/destroy",
            post(attached::attached_client_destroy),
        )
        .route(
            "/v1/password/change/start",
            post(password::password_change_start),
        )
        .route(
            "/v1/password/change/finish",
            post(password::password_change_finish),
        )
        .route("/v1/profile", get(profile::profile))
        .route("/profile/v1/profile", get(profile::profile))
        .route("/", get(pages::signin_page))
        .route("/settings", get(pages::settings_page))
        .route("/accounts/pages/common.js", get(pages::common_js))
        .route("/accounts/pages/settings.js", get(pages::settings_js))
        .route("/accounts/pages/signin.js", get(pages::signin_js))
        .route("/accounts/pages/signin.css", get(pages::signin_css))
        .with_state(st)
}

pub(super) fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

pub(super) async fn session(st: &ApiState, r: &AuthRequest) -> Result<Authed, AccountsError> {
    st.accounts.authenticate(r.auth()?, "sessionToken").await
}

#[derive(Deserialize, Default)]
pub(super) struct KeysQuery {
    #[serde(default)]
    pub(super) keys: Option<String>,
}
