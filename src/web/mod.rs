//! The HTTP layer: router, shared state, response headers common to every route.
//!
//! `handlers` holds one function per storage route, `tokens` the tokenserver route,
//! `extract` the extractors (Hawk identity,
//! preconditions, query, body), `error` the mapping of every error to a response.

pub mod admin;
pub mod client_addr;
pub mod error;
pub mod events;
pub mod extract;
pub mod handlers;
pub mod internal;
pub mod listen;
pub mod observe;
pub mod tokens;
pub mod window;

pub use listen::{ConnectionLimits, serve_router};

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::storage::Storage;
use crate::storage::model::Timestamp;
use crate::tokenserver::{AssignmentCheck, Tokenserver};
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The protocol's operations over user files.
    pub storage: Storage,
    /// Token and Hawk verification.
    pub auth: Arc<Authenticator>,
    /// The process's settings.
    pub settings: Arc<Settings>,
    /// Host and port of the configured public URL, when there is one.
    pub public_host: Option<(String, u16)>,
    /// The tokenserver, when this process serves tokens.
    pub tokenserver: Option<Arc<Tokenserver>>,
    /// Refuses users moved to other nodes, when an assignment database is shared.
    pub assignments: Option<Arc<AssignmentCheck>>,
    /// The accounts service's routes, when this process serves it.
    pub accounts: Option<crate::accounts::api::ApiState>,
}

impl AppState {
    /// Builds the state; the public URL's host and port are parsed once here.
    pub fn new(
        storage: Storage,
        auth: Arc<Authenticator>,
        settings: Arc<Settings>,
        tokenserver: Option<Arc<Tokenserver>>,
        assignments: Option<Arc<AssignmentCheck>>,
    ) -> AppState {
        let public_host = settings
            .public_url
            .parse::<axum::http::Uri>()
            .ok()
            .and_then(|u| {
                let host = u.host()?.to_string();
                let port = u.port_u16().unwrap_or(match u.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                Some((host, port))
            });
        AppState {
            storage,
            auth,
            settings,
            public_host,
            tokenserver,
            assignments,
            accounts: None,
        }
    }
}

impl AppState {
    /// What the cluster's moves need of this node.
    pub fn this_node(&self) -> crate::cluster::ThisNode<'_> {
        crate::cluster::ThisNode {
            dbs: self.storage.dbs(),
            assignments: self.assignments.as_deref(),
            secret: self.auth.signing_secret(),
            stores_users: self.settings.serves_storage(),
        }
    }
}

/// Adds `X-Weave-Timestamp` (the server's time) to responses that lack one.
async fn weave_timestamp(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if !res.headers().contains_key("x-weave-timestamp") {
        let now = HeaderValue::from_str(&Timestamp::now().to_string()).expect("digits");
        res.headers_mut().insert("x-weave-timestamp", now);
    }
    res
}

/// CORS as Mozilla's nodes answer it: a request's `Origin` is echoed back (with
/// `Vary: Origin`), never `*`; with `cors_allowed_origins` set, only those origins get
/// CORS headers at all.
fn cors(settings: &Settings) -> CorsLayer {
    let h = HeaderName::from_static;
    let origins = if settings.cors_allowed_origins.is_empty() {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            settings
                .cors_allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            h("x-if-modified-since"),
            h("x-if-unmodified-since"),
            h("x-weave-total-records"),
            h("x-weave-total-bytes"),
        ])
        .expose_headers([
            h("x-weave-timestamp"),
            h("x-last-modified"),
            h("x-weave-records"),
            h("x-weave-next-offset"),
            h("x-weave-quota-remaining"),
            h("x-weave-backoff"),
            h("x-weave-alert"),
            header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// The routes this process serves: the storage API and/or the tokenserver, and the
/// health endpoints.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    let mut api = Router::new()
        .route("/__heartbeat__", get(heartbeat))
        .route("/__lbheartbeat__", get(lbheartbeat))
        .route("/__version__", get(version));
    if !state.settings.metrics_token.is_empty() {
        api = api.merge(observe::metrics_router(&state.settings.metrics_token));
    }
    if state.tokenserver.is_some() {
        api = api.route("/1.0/sync/1.5", get(tokens::token));
        if !state.settings.fxa_events_client_id.is_empty() {
            api = api.route("/1.0/webhooks/fxa/events", post(events::fxa_events));
        }
    }
    if let Some(accounts) = &state.accounts {
        api = api.merge(crate::accounts::api::router(accounts.clone()));
    }
    if state.settings.serves_storage() {
        // Node-to-node routes are served on the internal listener only (internal::router).
        api = api.merge(storage_routes());
    }
    api.route_layer(middleware::from_fn(observe::tag_route))
        .fallback(|| async { ApiError::NotFound.into_response() })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .layer(middleware::from_fn(weave_timestamp))
        .layer(cors(&state.settings))
        .layer(middleware::from_fn(observe::log_request))
        .with_state(state)
}

fn storage_routes() -> Router<AppState> {
    use handlers::*;
    Router::new()
        .route("/1.5/{uid}", delete(delete_all))
        // Mozilla's Python client deletes everything with a trailing slash.
        .route("/1.5/{uid}/", delete(delete_all))
        .route("/1.5/{uid}/info/collections", get(info_collections))
        .route("/1.5/{uid}/info/collection_counts", get(info_counts))
        .route("/1.5/{uid}/info/collection_usage", get(info_usage))
        .route("/1.5/{uid}/info/quota", get(info_quota))
        .route("/1.5/{uid}/info/configuration", get(info_configuration))
        .route("/1.5/{uid}/storage", delete(delete_all))
        .route(
            "/1.5/{uid}/storage/{collection}",
            get(get_collection)
                .post(post_collection)
                .delete(handlers::delete_collection),
        )
        .route(
            "/1.5/{uid}/storage/{collection}/{bso}",
            get(get_item).put(put_item).delete(delete_item),
        )
}

/// Serves the router on `listener` until `shutdown` completes, then stops accepting and
/// waits for the connections in flight to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), limits, shutdown).await
}
