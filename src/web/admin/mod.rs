//! The operator console: one page at `/admin/` and its JSON API under `/admin/api/`,
//! served on a listener of its own (`admin_listen`, off by default) and nowhere else.
//!
//! * `access` — the admin token, the login's attempt limits, sessions, CSRF tokens;
//! * `api` — the JSON routes: login, logout, the session, the overview, and the
//!   controls, each calling the same `admin` function as the CLI does;
//! * `page` — the page, its script and style (files of `page/` embedded in the binary).
//!
//! Every answer carries a strict content security policy (the page's own script and
//! style only), `nosniff`, `no-referrer`, `no-store`, and same-origin resource and
//! opener policies. Every request must name a host
//! the console answers to (an IP address, `localhost`, or the host of `public_url`:
//! no DNS rebinding), and every change (any method but GET and HEAD) must come from the
//! console's own origin (`Origin`, `Sec-Fetch-Site`) with a body of at most
//! [`MAX_BODY`] bytes; changes other than the login also need the session's CSRF token
//! in `X-Csrf-Token` (see `api::Operator`).

mod access;
mod api;
mod page;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use super::{AppState, ConnectionLimits, serve_router};
use crate::accounts::Accounts;
use crate::admin::AdminError;
use crate::tokenserver::db::{AssignmentDb, DbError};

/// Largest request body the console reads, bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// The console's policy: its own script, style and images, fetches to itself, forms
/// posted to itself, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Errors of the console, each with its answer (`{"error": "…"}`).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The admin token file cannot be read or written, or holds no usable token.
    #[error("admin token: {0}")]
    Token(String),
    /// The console cannot run in this process.
    #[error("admin console: {0}")]
    Setup(String),
    /// The listener could not be bound.
    #[error("admin_listen {0}")]
    Bind(String),
    /// The request is not valid (bad JSON, a bad value).
    #[error("{0}")]
    BadRequest(String),
    /// No session (or an ended one).
    #[error("sign in first")]
    NoSession,
    /// The admin token given at login is wrong.
    #[error("wrong admin token")]
    WrongToken,
    /// Refused: a cross-origin change, a missing or wrong CSRF token, an unknown host.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Too many failed logins; try again after this long.
    #[error("too many attempts; try again in {} s", .0.as_secs().max(1))]
    TooManyAttempts(Duration),
    /// No such route or node.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with one in progress.
    #[error("{0}")]
    Conflict(String),
    /// The database or another service failed (logged; the answer says only that).
    #[error("internal error")]
    Internal(String),
}

impl From<AdminError> for ConsoleError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NoSuchNode(n) => ConsoleError::NotFound(format!("no node {n}")),
            AdminError::Invalid(m) => ConsoleError::BadRequest(m),
            other => ConsoleError::Internal(other.to_string()),
        }
    }
}

impl From<DbError> for ConsoleError {
    fn from(e: DbError) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NoSession => StatusCode::UNAUTHORIZED,
            ConsoleError::WrongToken | ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Token(_)
            | ConsoleError::Setup(_)
            | ConsoleError::Bind(_)
            | ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let ConsoleError::Internal(cause) = &self {
            tracing::error!(error = %cause, "admin console");
        }
        let body = axum::Json(serde_json::json!({ "error": self.to_string() }));
        let mut res = (status, body).into_response();
        if let ConsoleError::TooManyAttempts(wait) = &self {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// What the console's handlers share.
pub struct Console {
    /// The assignment database (nodes, rollout, health, audit log).
    db: AssignmentDb,
    /// The deployment's signing secret (live drains sign their node-to-node requests).
    secret: String,
    /// The accounts service, when this process serves it.
    accounts: Option<Arc<Accounts>>,
    /// The admin token.
    token: access::AdminToken,
    /// Login attempt limits.
    limiter: access::LoginLimiter,
    /// Open sessions.
    sessions: access::Sessions,
    /// Whether the session cookie is `Secure` (`public_url` is https).
    secure_cookie: bool,
    /// The host of `public_url`, which the console answers to besides IP addresses and
    /// `localhost`.
    public_host: Option<String>,
    /// Nodes this process is draining live now.
    drains: Mutex<HashSet<String>>,
    /// The accounts block of the overview and when it was read (it lists every account
    /// to count them: read at most every [`ACCOUNTS_EVERY`]).
    accounts_cache: Mutex<Option<(Instant, serde_json::Value)>>,
}

/// How long the accounts block of the overview is reused.
const ACCOUNTS_EVERY: Duration = Duration::from_secs(30);

/// Binds `admin_listen`, reads or generates the admin token and serves the console
/// until the process ends. Needs the assignment database (role `all` or
/// `tokenserver`, or `tokenserver_database_url`).
pub async fn start(
    state: &AppState,
    limits: ConnectionLimits,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, ConsoleError> {
    let settings = &state.settings;
    let db = match (&state.tokenserver, &state.assignments) {
        (Some(t), _) => t.db().clone(),
        (None, Some(a)) => a.db().clone(),
        (None, None) => {
            return Err(ConsoleError::Setup(
                "admin_listen needs the assignment database: role all or tokenserver, or \
                 tokenserver_database_url"
                    .into(),
            ));
        }
    };
    let path = access::token_path(settings);
    let (token, generated) = access::load_or_create_token(&path)?;
    if generated {
        tracing::info!(path = %path.display(), "generated the admin token (mode 0600)");
    }
    let operator_nets = settings
        .admin_operator_nets()
        .map_err(|e| ConsoleError::Setup(e.to_string()))?;
    let addr = settings.admin_listen.as_str();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ConsoleError::Bind(format!("{addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ConsoleError::Bind(format!("{addr}: {e}")))?;
    let public = settings.public_url.parse::<axum::http::Uri>().ok();
    let console = Console {
        db,
        secret: state.auth.signing_secret().to_string(),
        accounts: state.accounts.as_ref().map(|a| a.accounts.clone()),
        token,
        limiter: access::LoginLimiter::new(
            access::LOGINS_PER_ADDRESS,
            access::LOGINS_IN_ALL,
            access::LOGIN_WINDOW,
            operator_nets,
        ),
        sessions: access::Sessions::new(
            access::MAX_SESSIONS,
            access::SESSION_IDLE,
            access::SESSION_MAX,
        ),
        secure_cookie: public.as_ref().and_then(|u| u.scheme_str()) == Some("https"),
        public_host: public
            .as_ref()
            .and_then(|u| u.host())
            .map(|h| h.to_ascii_lowercase()),
        drains: Mutex::new(HashSet::new()),
        accounts_cache: Mutex::new(None),
    };
    tracing::info!(
        token = %path.display(),
        "admin console on http://{bound}/admin/ (sign in with the token in the file)"
    );
    if let Some(warning) = exposure_warning(bound) {
        tracing::warn!("{warning}");
    }
    let app = router(Arc::new(console));
    Ok(tokio::spawn(serve_router(
        listener,
        app,
        peer_only(limits),
        std::future::pending(),
    )))
}

/// The warning for a console bound off loopback (a wildcard address included): it has
/// no TLS.
fn exposure_warning(bound: std::net::SocketAddr) -> Option<String> {
    (!bound.ip().to_canonical().is_loopback()).then(|| {
        format!(
            "admin_listen {bound} is not a loopback address: the console has no TLS, so the \
             admin token and the session cookie cross the network in clear; bind it to \
             127.0.0.1 and open it over an SSH tunnel"
        )
    })
}

/// The public listener's limits for the console's: the client is always the TCP peer
/// (no `X-Forwarded-For`, no proxy exempt from the per-address connection cap). A
/// console behind a reverse proxy is not a supported setup.
fn peer_only(limits: ConnectionLimits) -> ConnectionLimits {
    ConnectionLimits {
        trusted_proxies: Arc::from([]),
        trust_forwarded_for: false,
        ..limits
    }
}

/// The console's routes; everything outside `/admin/` is 404.
fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/admin",
            get(|| async { axum::response::Redirect::permanent("/admin/") }),
        )
        .route("/admin/", get(page::index))
        .route("/admin/console.js", get(page::script))
        .route("/admin/console.css", get(page::style))
        .route("/admin/icon.svg", get(page::icon))
        .route("/admin/api/login", post(api::login))
        .route("/admin/api/logout", post(api::logout))
        .route("/admin/api/session", get(api::session))
        .route("/admin/api/overview", get(api::overview))
        .route("/admin/api/rollout", post(api::rollout))
        .route("/admin/api/list", post(api::list))
        .route("/admin/api/node", post(api::node))
        .route("/admin/api/resume", post(api::resume))
        .route("/admin/api/drain", post(api::drain))
        .route("/admin/api/signups", post(api::signups))
        .route("/admin/api/invite", post(api::invite))
        .fallback(|| async { ConsoleError::NotFound("not found".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": "method not allowed"})),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Adds the console's security headers to every answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    res
}

/// Refuses requests for a host the console does not answer to, and changes that do not
/// come from the console's own origin; a declared body over [`MAX_BODY`] is refused
/// before it is read.
async fn guard(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let host = request_host(&req);
    if let Some(host) = &host
        && !host_allowed(host, console.public_host.as_deref())
    {
        return ConsoleError::Forbidden(
            "unknown host: open the console by IP address or localhost",
        )
        .into_response();
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if !same_origin(req.headers(), host.as_deref()) {
            return ConsoleError::Forbidden("cross-origin request refused").into_response();
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"error": "request body too large"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The host (with port) a request names: `Host`, else the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Whether the console answers to `host` (`name[:port]`, `[v6][:port]`): an IP
/// address, `localhost`, or the host of `public_url`. A bracketed host must be exactly
/// an IPv6 address in brackets, optionally followed by `:port`.
fn host_allowed(host: &str, public_host: Option<&str>) -> bool {
    let is_port = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok && inner.parse::<Ipv6Addr>().is_ok();
    }
    let name = match host.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.parse::<Ipv4Addr>().is_ok() || public_host == Some(name.as_str())
}

/// Whether a change comes from the console's own page: `Sec-Fetch-Site`, when sent,
/// must be `same-origin`, and `Origin`, when sent, must name the request's host.
/// Browsers send at least one of them with every POST; other clients (curl) send
/// neither and have no cookie to abuse.
fn same_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("");
            let authority = origin.split_once("://").map(|(_, a)| a);
            match (authority, host) {
                (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_localhost_and_the_public_host_are_answered() {
        let p = Some("sync.example.org");
        for ok in [
            "127.0.0.1:8090",
            "localhost:8090",
            "LOCALHOST",
            "[::1]:8090",
            "10.0.0.5",
            "sync.example.org",
            "Sync.Example.org:443",
        ] {
            assert!(host_allowed(ok, p), "{ok}");
        }
        for bad in [
            "evil.example:8090",
            "127.0.0.1.evil.example",
            "example.org",
            "[::1].evil.example",
            "[::1]evil.example:8090",
            "[::1]:8090.evil.example",
            "[::1]:80:80",
            "[::1",
            "[evil.example]",
            "[127.0.0.1]",
            "::1",
            "127.0.0.1:8090:1",
            "127.0.0.1:http",
            "localhost:123456",
        ] {
            assert!(!host_allowed(bad, p), "{bad}");
        }
        assert!(!host_allowed("sync.example.org", None));
    }

    #[test]
    fn a_listener_off_loopback_is_warned_about() {
        for quiet in [
            "127.0.0.1:8090",
            "127.1.2.3:1",
            "[::1]:8090",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(
                exposure_warning(quiet.parse().unwrap()).is_none(),
                "{quiet}"
            );
        }
        for loud in [
            "0.0.0.0:8090",
            "10.0.0.5:8090",
            "[::]:8090",
            "[2001:db8::1]:1",
        ] {
            let w = exposure_warning(loud.parse().unwrap()).unwrap_or_default();
            assert!(w.contains("no TLS") && w.contains(loud), "{loud}: {w}");
        }
    }

    #[test]
    fn changes_must_come_from_the_same_origin() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let host = Some("127.0.0.1:8090");
        assert!(same_origin(&h(&[]), host));
        assert!(same_origin(
            &h(&[
                ("origin", "http://127.0.0.1:8090"),
                ("sec-fetch-site", "same-origin")
            ]),
            host
        ));
        assert!(!same_origin(&h(&[("origin", "http://evil.example")]), host));
        assert!(!same_origin(&h(&[("origin", "null")]), host));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), host));
        assert!(!same_origin(&h(&[("sec-fetch-site", "same-site")]), host));
        assert!(!same_origin(
            &h(&[("origin", "http://127.0.0.1:8090")]),
            None
        ));
    }
}
