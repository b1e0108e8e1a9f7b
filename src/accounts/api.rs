//! The accounts service's HTTP routes, shaped as Firefox Accounts answers them (paths
//! and bodies as Firefox's FxAccountsClient and PyPI's PyFxA expect): the auth API
//! under `/v1`, the OAuth routes (also at the OAuth server's own paths `/v1/token`,
//! `/v1/destroy`, `/v1/verify`), the profile (`/v1/profile`, `/profile/v1/profile`),
//! the discovery documents, and the sign-in page (`/`, with its script and style).
//! Handlers parse, make one service call, answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Accounts, AccountsError, Authed, DeviceUpdate, Grant, NewSession, TokenAuth, now_ms};
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

impl IntoResponse for AccountsError {
    fn into_response(self) -> Response {
        use AccountsError::*;
        let (code, errno) = match &self {
            AccountExists => (400, 101),
            UnknownAccount => (400, 102),
            IncorrectPassword => (400, 103),
            Unverified => (400, 104),
            InvalidCode => (400, 183),
            MailFailed(_) => (503, 151),
            InvalidParameter(_) => (400, 107),
            MissingParameter(_) => (400, 108),
            InvalidSignature => (401, 109),
            InvalidToken => (401, 110),
            InvalidTimestamp => (401, 111),
            InvalidNonce => (401, 115),
            TooManyRequests(_) => (429, 114),
            IncorrectEmailCase(_) => (400, 120),
            Blocked(_) => (400, 125),
            InvalidGrant(_) => (400, 162),
            InvalidScopes => (400, 163),
            NotEnabled(_) => (503, 202),
            Internal(_) => (500, 999),
        };
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &self {
            Internal(cause) => {
                tracing::error!(error = %cause, "accounts service failure");
                "Unspecified error".to_string()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "code": code,
            "errno": errno,
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": message,
            "info": "https://mozilla.github.io/ecosystem-platform/api#section/Response-format",
        });
        match &self {
            TooManyRequests(secs) => {
                body["retryAfter"] = json!(secs);
                body["retryAfterLocalized"] = json!(format!("in {secs} seconds"));
            }
            InvalidTimestamp => body["serverTime"] = json!(now_ms() / 1000),
            IncorrectEmailCase(email) => body["email"] = json!(email),
            _ => {}
        }
        let mut res = (status, axum::Json(body)).into_response();
        if let TooManyRequests(secs) = &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

type ApiResult = Result<Response, AccountsError>;

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
fn origin(headers: &HeaderMap, st: &ApiState) -> String {
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
            get(client_configuration),
        )
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/v1/account/create", post(create))
        .route("/v1/account/login", post(login))
        .route("/v1/account/destroy", post(account_destroy))
        .route(
            "/v1/account/status",
            get(status_by_uid).post(status_by_email),
        )
        .route("/v1/account/credentials/status", post(credentials_status))
        .route("/v1/account/keys", get(keys))
        .route("/v1/account/profile", get(account_profile))
        .route("/v1/session/status", get(session_status))
        .route("/v1/session/destroy", post(session_destroy))
        .route("/v1/session/verify_code", post(verify_code))
        .route("/v1/session/resend_code", post(resend_code))
        .route("/v1/recovery_email/status", get(email_status))
        .route("/v1/account/scoped-key-data", post(scoped_key_data))
        .route("/v1/oauth/token", post(token))
        .route("/v1/token", post(token))
        .route("/v1/oauth/authorization", post(authorization))
        .route("/v1/oauth/destroy", post(destroy))
        .route("/v1/destroy", post(destroy))
        .route("/v1/verify", post(verify))
        .route("/v1/jwks", get(jwks))
        .route("/v1/account/device", post(device))
        .route("/v1/account/devices", get(devices))
        .route("/v1/account/device/destroy", post(device_destroy))
        .route("/v1/account/device/commands", get(commands))
        .route("/v1/account/devices/invoke_command", post(not_enabled))
        .route("/v1/account/devices/notify", post(devices_notify))
        .route("/v1/account/attached_clients", get(attached_clients))
        .route(
            "/v1/account/attached_client/destroy",
            post(attached_client_destroy),
        )
        .route("/v1/password/change/start", post(password_change_start))
        .route("/v1/password/change/finish", post(password_change_finish))
        .route("/v1/profile", get(profile))
        .route("/profile/v1/profile", get(profile))
        .route("/", get(signin_page))
        .route("/settings", get(settings_page))
        .route("/accounts/pages/common.js", get(common_js))
        .route("/accounts/pages/settings.js", get(settings_js))
        .route("/accounts/pages/signin.js", get(signin_js))
        .route("/accounts/pages/signin.css", get(signin_css))
        .with_state(st)
}

/// The sign-in pages' policy: their own script and style only, no framing, no forms
/// posted anywhere, fetches to this origin only.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
    base-uri 'none'";

/// One of the sign-in pages' assets, with the page headers.
fn page(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The page Firefox opens to sign in (the content server root, with Firefox's OAuth
/// request in the query: `context=oauth_webchannel_v1`, `keys_jwk`, `state`, PKCE).
/// The sign-up policy is rendered into `<main data-signups>` (the CSP allows no
/// inline script), so the page offers sign-up, with an invite code or not at all.
async fn signin_page(State(st): State<ApiState>) -> Response {
    let html = include_str!("pages/signin.html").replace(
        "data-signups=\"closed\"",
        &format!("data-signups=\"{}\"", st.accounts.signups().as_str()),
    );
    page("text/html; charset=utf-8", html)
}

/// The account settings page Firefox's "Manage account" opens (`/settings?entrypoint=
/// …&uid=…&email=…`): a password change.
async fn settings_page() -> Response {
    page(
        "text/html; charset=utf-8",
        include_str!("pages/settings.html"),
    )
}

/// What the pages' scripts share (onepw, the accounts API, Firefox's WebChannel).
async fn common_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/common.js"),
    )
}

/// The settings page's script.
async fn settings_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/settings.js"),
    )
}

/// The page's script (see the page's own header comment).
async fn signin_js() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("pages/signin.js"),
    )
}

/// The page's style.
async fn signin_css() -> Response {
    page("text/css; charset=utf-8", include_str!("pages/signin.css"))
}

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

async fn client_configuration(State(st): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let o = origin(&headers, &st);
    ok(json!({
        "auth_server_base_url": format!("{o}/v1"),
        "oauth_server_base_url": o,
        "profile_server_base_url": format!("{o}/profile"),
        "sync_tokenserver_base_url": o,
        "pairing_server_base_uri": o,
    }))
}

async fn openid_configuration(State(st): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let o = origin(&headers, &st);
    ok(json!({
        "issuer": st.accounts.signer().issuer(),
        "authorization_endpoint": format!("{o}/authorization"),
        "token_endpoint": format!("{o}/v1/oauth/token"),
        "revocation_endpoint": format!("{o}/v1/oauth/destroy"),
        "userinfo_endpoint": format!("{o}/profile/v1/profile"),
        "jwks_uri": format!("{o}/v1/jwks"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "fxa-credentials"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["profile", super::SYNC_SCOPE],
        "subject_types_supported": ["public"],
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
}

/// `account/create`'s body: the credentials and, under the `invite` policy, the code.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewAccount {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
    #[serde(default)]
    invite_code: Option<String>,
}

#[derive(Deserialize, Default)]
struct KeysQuery {
    #[serde(default)]
    keys: Option<String>,
}

fn session_body(s: NewSession) -> ApiResult {
    let verified = s.account.email_verified;
    let mut body = json!({
        "uid": s.account.uid,
        "sessionToken": s.session_token,
        "authAt": s.auth_at,
        "verified": verified,
        "emailVerified": verified,
        "sessionVerified": verified,
        "verificationMethod": if verified { Value::Null } else { json!("email-otp") },
        "verificationReason": if verified { Value::Null } else { json!("signup") },
    });
    if let Some(k) = s.key_fetch_token {
        body["keyFetchToken"] = json!(k);
    }
    ok(body)
}

async fn create(
    State(st): State<ApiState>,
    Query(q): Query<KeysQuery>,
    r: AuthRequest,
) -> ApiResult {
    let c: NewAccount = r.json()?;
    let keys = q.keys.as_deref() == Some("true");
    session_body(
        st.accounts
            .create(
                &c.email,
                &c.auth_pw,
                c.invite_code.as_deref(),
                keys,
                r.ip,
                &r.user_agent,
            )
            .await?,
    )
}

async fn login(
    State(st): State<ApiState>,
    Query(q): Query<KeysQuery>,
    r: AuthRequest,
) -> ApiResult {
    let c: Credentials = r.json()?;
    let keys = q.keys.as_deref() == Some("true");
    session_body(
        st.accounts
            .login(&c.email, &c.auth_pw, keys, r.ip, &r.user_agent)
            .await?,
    )
}

#[derive(Deserialize)]
struct UidQuery {
    uid: Option<String>,
}

async fn status_by_uid(State(st): State<ApiState>, Query(q): Query<UidQuery>) -> ApiResult {
    let uid = q.uid.ok_or(AccountsError::MissingParameter("uid".into()))?;
    ok(json!({ "exists": st.accounts.exists(Some(uid), None, None).await? }))
}

#[derive(Deserialize)]
struct EmailBody {
    email: String,
}

async fn status_by_email(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: EmailBody = r.json()?;
    ok(json!({ "exists": st.accounts.exists(None, Some(b.email), r.ip).await? }))
}

async fn credentials_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: EmailBody = r.json()?;
    if !st.accounts.exists(None, Some(b.email), r.ip).await? {
        return Err(AccountsError::UnknownAccount);
    }
    // Only onepw's first stretching version is offered.
    ok(json!({ "currentVersion": "v1", "upgradeNeeded": false }))
}

async fn keys(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    ok(json!({ "bundle": st.accounts.keys_bundle(r.auth()?).await? }))
}

async fn session(st: &ApiState, r: &AuthRequest) -> Result<Authed, AccountsError> {
    st.accounts.authenticate(r.auth()?, "sessionToken").await
}

async fn account_profile(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    ok(json!({
        "email": a.account.email,
        "locale": null,
        "authenticationMethods": ["pwd"],
        "authenticatorAssuranceLevel": 1,
    }))
}

async fn session_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let state = if a.account.email_verified {
        "verified"
    } else {
        "unverified"
    };
    ok(json!({ "state": state, "uid": a.account.uid }))
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

async fn verify_code(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: CodeBody = r.json()?;
    let a = session(&st, &r).await?;
    st.accounts.verify_email(&a, &b.code, r.ip).await?;
    ok(json!({}))
}

async fn resend_code(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    st.accounts.resend_email_code(&a, r.ip).await?;
    ok(json!({}))
}

async fn session_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    st.accounts.destroy_session(&a).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct Destroy {
    email: String,
    #[serde(rename = "authPW")]
    auth_pw: String,
}

/// `POST /account/destroy`: the account's own session and its password (both, as FxA
/// asks); its Sync data is deleted after it.
async fn account_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let b: Destroy = r.json()?;
    st.accounts
        .destroy_account(&a, &b.email, &b.auth_pw, r.ip)
        .await?;
    ok(json!({}))
}

async fn email_status(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    let verified = a.account.email_verified;
    ok(json!({
        "email": a.account.email,
        "verified": verified,
        "sessionVerified": verified,
        "emailVerified": verified,
    }))
}

#[derive(Deserialize)]
struct ScopedKeyBody {
    client_id: String,
    scope: String,
}

async fn scoped_key_data(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: ScopedKeyBody = r.json()?;
    let a = session(&st, &r).await?;
    ok(st
        .accounts
        .scoped_key_data(&a.account, &b.client_id, &b.scope)?)
}

#[derive(Deserialize)]
struct TokenBody {
    grant_type: Option<String>,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn grant_body(g: Grant, user: Option<&str>) -> ApiResult {
    let mut body = json!({
        "access_token": g.access_token,
        "token_type": "bearer",
        "scope": g.scope,
        "expires_in": g.expires_in,
        "auth_at": g.auth_at,
    });
    if let Some(r) = g.refresh_token {
        body["refresh_token"] = json!(r);
    }
    if let Some(k) = g.keys_jwe {
        body["keys_jwe"] = json!(k);
    }
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    ok(body)
}

async fn token(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: TokenBody = r.json()?;
    let ttl = b.ttl.unwrap_or(0);
    let need = |v: Option<String>, n: &str| v.ok_or(AccountsError::MissingParameter(n.into()));
    let grant = match b.grant_type.as_deref().unwrap_or("authorization_code") {
        "fxa-credentials" => {
            let a = session(&st, &r).await?;
            let offline = b.access_type.as_deref() == Some("offline");
            let scope = need(b.scope, "scope")?;
            st.accounts
                .token_from_session(&a, &b.client_id, &scope, ttl, offline)
                .await?
        }
        "authorization_code" => {
            let code = need(b.code, "code")?;
            st.accounts
                .token_from_code(&b.client_id, &code, b.code_verifier.as_deref())
                .await?
        }
        "refresh_token" => {
            let refresh = need(b.refresh_token, "refresh_token")?;
            st.accounts
                .token_from_refresh(&b.client_id, &refresh, b.scope.as_deref(), ttl)
                .await?
        }
        _ => return Err(AccountsError::InvalidParameter("grant_type".into())),
    };
    grant_body(grant, None)
}

#[derive(Deserialize)]
struct AuthorizationBody {
    client_id: String,
    state: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    access_type: Option<String>,
    #[serde(default)]
    code_challenge: Option<String>,
    #[serde(default)]
    code_challenge_method: Option<String>,
    #[serde(default)]
    keys_jwe: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

async fn authorization(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: AuthorizationBody = r.json()?;
    if b.code_challenge.is_some() && b.code_challenge_method.as_deref().unwrap_or("S256") != "S256"
    {
        return Err(AccountsError::InvalidParameter(
            "code_challenge_method".into(),
        ));
    }
    let a = session(&st, &r).await?;
    let scope = b.scope.unwrap_or_else(|| super::PROFILE_SCOPE.into());
    let code = st
        .accounts
        .authorize(
            &a,
            &b.client_id,
            &scope,
            b.code_challenge,
            b.keys_jwe,
            b.access_type.as_deref() == Some("offline"),
        )
        .await?;
    let base = b
        .redirect_uri
        .unwrap_or_else(|| "urn:ietf:wg:oauth:2.0:oob:oauth-redirect-webchannel".into());
    let query = serde_urlencoded::to_string([("code", code.as_str()), ("state", b.state.as_str())])
        .map_err(|e| AccountsError::Internal(e.to_string()))?;
    let sep = if base.contains('?') { '&' } else { '?' };
    ok(json!({ "code": code, "state": b.state, "redirect": format!("{base}{sep}{query}") }))
}

#[derive(Deserialize)]
struct DestroyBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

async fn destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: DestroyBody = r.json()?;
    let t = b
        .token
        .or(b.refresh_token)
        .or(b.access_token)
        .ok_or(AccountsError::MissingParameter("token".into()))?;
    st.accounts.destroy_token(&t).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct VerifyBody {
    token: String,
}

async fn verify(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: VerifyBody = r.json()?;
    let (c, _) = st.accounts.verify_access(&b.token).await?;
    ok(json!({
        "user": c.sub,
        "client_id": c.client_id,
        "scope": c.scope.split(' ').collect::<Vec<_>>(),
        "generation": c.generation,
    }))
}

async fn jwks(State(st): State<ApiState>) -> ApiResult {
    ok(st.accounts.signer().jwks())
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
        "pushEndpointExpired": false,
        "availableCommands": commands,
        "lastAccessTime": d.last_access_at,
        "createdAt": d.created_at,
        "location": {},
    })
}

async fn device(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let u: DeviceUpdate = r.json()?;
    let a = session(&st, &r).await?;
    let d = st.accounts.put_device(&a, u).await?;
    ok(device_json(&d, true))
}

async fn devices(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
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

async fn device_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let b: IdBody = r.json()?;
    let a = session(&st, &r).await?;
    st.accounts.destroy_device(&a.account.uid, &b.id).await?;
    ok(json!({}))
}

async fn commands(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    session(&st, &r).await?;
    // Device commands (send tab) are not relayed by this server: nothing is queued.
    ok(json!({ "index": 0, "last": true, "messages": [] }))
}

/// The largest `/account/devices/notify` body read (Firefox's are a few hundred bytes).
const MAX_NOTIFY_BODY: usize = 16 * 1024;
/// Most device ids one notification may name (in `to`, and in `excluded`).
const MAX_NOTIFY_DEVICES: usize = 256;

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
    _ttl: Option<u64>,
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
    fn check(&self) -> Result<(), AccountsError> {
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
                    .is_some_and(|c| !c.is_empty() && c.len() <= 128);
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

/// Push notifications to the account's other devices: checked as FxA checks them and
/// answered `{}` as FxA does, but not delivered (this server has no push service;
/// devices learn of changes at their next scheduled sync).
async fn devices_notify(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    let a = session(&st, &r).await?;
    Accounts::require_verified(&a.account)?;
    if r.body.len() > MAX_NOTIFY_BODY {
        return Err(AccountsError::InvalidParameter("body too large".into()));
    }
    let b: NotifyBody = r.json()?;
    b.check()?;
    ok(json!({}))
}

async fn not_enabled() -> ApiResult {
    Err(AccountsError::NotEnabled(
        "device commands and push notifications are not offered by this server",
    ))
}

async fn attached_clients(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
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

async fn attached_client_destroy(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeStart {
    email: String,
    #[serde(rename = "oldAuthPW")]
    old_auth_pw: String,
}

async fn password_change_start(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
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

async fn password_change_finish(
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

async fn profile(State(st): State<ApiState>, r: AuthRequest) -> ApiResult {
    // An OAuth access token with a profile scope (as Firefox's profile client sends),
    // or a session token.
    let uid = match &r.auth {
        Some(TokenAuth::Bearer { .. }) | None => {
            let bearer = r
                .auth
                .as_ref()
                .and_then(|a| match a {
                    TokenAuth::Bearer { prefix, id } if prefix.is_empty() => Some(id.clone()),
                    TokenAuth::Bearer { prefix, id } => Some(format!("{prefix}_{id}")),
                    _ => None,
                })
                .ok_or(AccountsError::InvalidToken)?;
            // A JWT is decided as an access token (its account must still exist, be
            // enabled and have the token's password generation); anything else is a
            // session token.
            if bearer.split('.').count() == 3 {
                let (c, account) = st.accounts.verify_access(&bearer).await?;
                if !c
                    .scope
                    .split(' ')
                    .any(|s| s == super::PROFILE_SCOPE || s.starts_with("profile:"))
                {
                    return Err(AccountsError::InvalidToken);
                }
                account.uid
            } else {
                session(&st, &r).await?.account.uid
            }
        }
        Some(TokenAuth::Hawk { .. }) => session(&st, &r).await?.account.uid,
    };
    let account = st
        .accounts
        .account(&uid)
        .await?
        .ok_or(AccountsError::InvalidToken)?;
    ok(json!({
        "uid": account.uid,
        "email": account.email,
        "displayName": account.display_name,
        "locale": null,
        "avatar": null,
        "avatarDefault": true,
        "amrValues": ["pwd"],
        "twoFactorAuthentication": false,
    }))
}
