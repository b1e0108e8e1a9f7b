//! Observability at the HTTP edge: one log line and two metrics per request (and, for
//! authenticated storage API requests, a count in the last minute's [`super::window`],
//! timed without the wait for the client's body: the extractors say both through a
//! task-local, see [`mark_authenticated`]), and the Prometheus exposition at
//! `/__metrics__`.
//!
//! The log line names the route template (`/1.5/{uid}/storage/{collection}`), never the
//! raw path, query, token or payload; the uid comes from the path. Metric labels take
//! their values from fixed sets (known methods, route templates, statuses), so clients
//! cannot grow the exposition; what a client sent is logged clipped ([`clip`]).
//! Metrics from the storage layer (LRU, locks, batches, errors, bytes) are recorded
//! where they happen through the `metrics` facade and rendered here.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The route template a request matched, carried on the response to the outer layer.
#[derive(Clone, Copy)]
struct RouteTemplate(&'static str);

/// A route template as a `'static` string (a metric label that needs no allocation):
/// each distinct template is leaked once. Templates are the router's own route
/// definitions, never text from a request, so there are only as many as routes.
fn interned_route(route: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(known) = routes.read().ok().and_then(|r| r.get(route).copied()) {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = routes.get(route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// A status code as a metric label: the codes this server answers with as `'static`
/// strings, any other formatted.
fn status_label(status: StatusCode) -> Cow<'static, str> {
    Cow::Borrowed(match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        412 => "412",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return Cow::Owned(other.to_string()),
    })
}

/// Inner layer (runs only for matched routes): records the route template.
pub async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| interned_route(p.as_str()));
    let mut res = next.run(req).await;
    if let Some(route) = route {
        res.extensions_mut().insert(RouteTemplate(route));
    }
    res
}

/// What the extractors tell [`log_request`] about the request it is serving: a
/// task-local value the size of a few words, set for the request's future (no
/// allocation, no lock; outside [`log_request`] the marks go nowhere).
#[derive(Default)]
struct Marks {
    /// The uid whose Hawk authentication succeeded.
    authenticated: Cell<Option<u64>>,
    /// Time spent waiting for the client to send the body.
    body_wait: Cell<Duration>,
}

tokio::task_local! {
    static MARKS: Marks;
}

/// Marks the request being served as authenticated for `uid` (by `HawkUser`).
pub fn mark_authenticated(uid: u64) {
    let _ = MARKS.try_with(|m| m.authenticated.set(Some(uid)));
}

/// Adds `waited` to the time the request being served spent receiving its body (by
/// `SyncBody`): the client's time, not the server's.
pub fn mark_body_wait(waited: Duration) {
    let _ = MARKS.try_with(|m| m.body_wait.set(m.body_wait.get() + waited));
}

/// Outer layer (runs for every request, 404s included): logs and counts it.
pub async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let label = method_label(req.method());
    // A standard method is its label; only another one is copied (clipped) for the log.
    let method: Cow<'static, str> = match label {
        "other" => Cow::Owned(clip(req.method().as_str(), MAX_LOGGED_BYTES).into_owned()),
        known => Cow::Borrowed(known),
    };
    let uid = path_uid(req.uri().path());
    let (res, authenticated, body_wait) = MARKS
        .scope(Marks::default(), async move {
            let res = next.run(req).await;
            let (a, w) = MARKS.with(|m| (m.authenticated.get(), m.body_wait.get()));
            (res, a, w)
        })
        .await;
    let ended = Instant::now();
    let elapsed = ended - started;
    let route = res
        .extensions()
        .get::<RouteTemplate>()
        .map_or("unmatched", |r| r.0);
    let status = res.status().as_u16();
    if let Some(user) = authenticated
        && status != 401
    {
        // The storage API's last minute, for the node's health report (see `window`):
        // authenticated requests only, timed without the wait for the client's body.
        super::window::REQUESTS.record(
            user,
            ended,
            elapsed.saturating_sub(body_wait),
            status >= 500,
        );
    }
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    match uid {
        Some(uid) => tracing::info!(
            target: "syncstore::access", method = %method, route = %route, status,
            duration_ms, uid, "request"
        ),
        None => tracing::info!(
            target: "syncstore::access", method = %method, route = %route, status,
            duration_ms, "request"
        ),
    }
    metrics::counter!("syncstore_http_requests_total",
        "method" => label, "route" => route, "status" => status_label(res.status()))
    .increment(1);
    metrics::histogram!("syncstore_http_request_duration_seconds",
        "method" => label, "route" => route)
    .record(elapsed.as_secs_f64());
    fold_samples_now_and_then();
    res
}

/// Requests between two foldings of the histograms' buffered samples.
///
/// The Prometheus recorder keeps each histogram sample in a buffer until it is folded
/// into the histogram's buckets, which only a render (a scrape of `/__metrics__`) or
/// the recorder's upkeep does. A node nobody scraped kept every request's sample for
/// ever: its memory grew ~23 bytes a request (issue 28: ~1 MB a second of
/// `info/collections`). Folding every `FOLD_EVERY` requests bounds the buffers to about
/// that many samples per histogram whatever the scrape interval; one folding is one pass
/// over the few histograms (route × method), under 1% of a request's cost at this spacing.
pub const FOLD_EVERY: u64 = 4096;

/// Requests counted towards the next folding (all listeners share the one recorder).
static SINCE_FOLD: AtomicU64 = AtomicU64::new(0);

/// Counts a request; every [`FOLD_EVERY`]th folds the histograms' buffered samples.
fn fold_samples_now_and_then() {
    if SINCE_FOLD.fetch_add(1, Ordering::Relaxed) % FOLD_EVERY == FOLD_EVERY - 1 {
        metrics_handle().run_upkeep();
    }
}

/// The most bytes of one client-sent string (method, path, header) a log line holds.
pub const MAX_LOGGED_BYTES: usize = 200;

/// `text` cut to at most `max` bytes (at a character boundary), marked with `…` when
/// cut: for logging what a client sent.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// A method as a metric label: a standard method's name, else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The uid of a storage path (`/1.5/<uid>/…`), if it is one.
fn path_uid(path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/1.5/")?;
    rest.split('/').next()?.parse().ok()
}

/// The process-wide Prometheus recorder, installed on first use (once per process:
/// tests may start several servers in one process).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (a test harness); then ours only renders zeros,
        // which is better than failing to start.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /__metrics__ is empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "syncstore_accounts_push_total",
        "Outbound Web Push messages by outcome: sent, gone, retried, failed, refused, dropped"
    );
    describe_counter!(
        "syncstore_http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "syncstore_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_counter!(
        "syncstore_connections_dropped_total",
        "Connections the server closed, by reason: per_address (over the per-address cap), \
         first_byte (sent nothing in time), idle (no request in time)"
    );
    describe_gauge!(
        "syncstore_open_users",
        "User files open now (the LRU's size)"
    );
    describe_counter!(
        "syncstore_lru_hits_total",
        "Requests whose user file was open"
    );
    describe_counter!(
        "syncstore_lru_misses_total",
        "Requests that had to open a user file"
    );
    describe_counter!(
        "syncstore_lru_evictions_total",
        "User files closed to make room"
    );
    describe_counter!(
        "syncstore_summary_lookups_total",
        "Looks for a user's collection timestamps in memory, by outcome: hit, miss"
    );
    describe_histogram!(
        "syncstore_write_lock_wait_seconds",
        Unit::Seconds,
        "Time writes waited for their user's write lock"
    );
    describe_counter!(
        "syncstore_write_lock_timeouts_total",
        "Writes that gave up waiting for the write lock (503)"
    );
    describe_counter!(
        "syncstore_batches_total",
        "Batch operations by op: create, append, commit"
    );
    describe_counter!(
        "syncstore_db_errors_total",
        "SQLite errors by kind: busy, unavailable, other"
    );
    describe_counter!(
        "syncstore_payload_bytes_written_total",
        "Payload bytes of records written (PUT, POST, batch commit)"
    );
    describe_counter!(
        "syncstore_records_written_total",
        "Records written (PUT, POST, batch commit)"
    );
    describe_counter!(
        "syncstore_wal_index_kept_total",
        "Cold opens that kept a WAL index (-shm) this process had reset before"
    );
    describe_counter!(
        "syncstore_wal_index_zeroed_total",
        "Cold opens that reset an existing WAL index in place (first open in this process)"
    );
    describe_gauge!(
        "syncstore_backup_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the last continuous backup that succeeded finished (Unix time; 0: none yet)"
    );
    describe_gauge!(
        "syncstore_backup_users_copied",
        "Users the last successful continuous backup copied (the others were unchanged)"
    );
    describe_gauge!(
        "syncstore_backup_users_kept",
        "Users the last successful continuous backup found unchanged (not copied again)"
    );
    describe_gauge!(
        "syncstore_backup_last_duration_seconds",
        Unit::Seconds,
        "How long the last successful continuous backup took"
    );
    describe_counter!(
        "syncstore_backup_bytes_total",
        Unit::Bytes,
        "Bytes the continuous backups copied (the last run's are the latest increase)"
    );
    describe_counter!(
        "syncstore_backup_runs_total",
        "Continuous backup runs that succeeded"
    );
    describe_gauge!(
        "syncstore_canary_paused_nodes",
        "Nodes the canary guard has paused (no new users until `rollout resume`), as this \
         tokenserver last saw"
    );
    describe_counter!(
        "syncstore_canary_pauses_total",
        "Nodes this tokenserver's canary guard paused"
    );
    describe_counter!(
        "syncstore_backup_failures_total",
        "Continuous backup runs that failed (the destination unusable, or files not copied)"
    );
}

/// `GET /__metrics__`: every metric in Prometheus' text format.
pub async fn metrics() -> Response {
    use crate::storage::sqlite;
    metrics::counter!("syncstore_wal_index_kept_total").absolute(sqlite::shm_indexes_kept());
    metrics::counter!("syncstore_wal_index_zeroed_total").absolute(sqlite::shm_resets_zeroed());
    let body = metrics_handle().render();
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// `/__metrics__` alone; with a non-empty `token`, only for requests that carry
/// `Authorization: Bearer <token>` (others get 401).
pub fn metrics_router<S: Clone + Send + Sync + 'static>(token: &str) -> Router<S> {
    let routes = Router::new().route("/__metrics__", axum::routing::get(metrics));
    if token.is_empty() {
        return routes;
    }
    let token: Arc<str> = token.into();
    routes.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        let allowed = bearer_matches(&req, &token);
        async move {
            if allowed {
                next.run(req).await
            } else {
                let mut res = StatusCode::UNAUTHORIZED.into_response();
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                res
            }
        }
    }))
}

/// Whether the request's `Authorization` is `Bearer <token>` (compared in constant time).
fn bearer_matches(req: &Request, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::{clip, method_label, path_uid};
    use axum::http::Method;

    #[test]
    fn labels_come_from_a_fixed_set_and_logged_text_is_clipped() {
        assert_eq!(method_label(&Method::PUT), "PUT");
        let invented = Method::from_bytes(&[b'X'; 1000]).unwrap();
        assert_eq!(method_label(&invented), "other");
        assert_eq!(clip("GET", 200), "GET");
        let long = "é".repeat(300);
        let cut = clip(&long, 201);
        assert!(
            cut.len() <= 201 + '…'.len_utf8() && cut.ends_with('…'),
            "{cut}"
        );
    }

    #[test]
    fn uid_comes_from_storage_paths_only() {
        assert_eq!(path_uid("/1.5/42/storage/tabs"), Some(42));
        assert_eq!(path_uid("/1.5/42"), Some(42));
        assert_eq!(path_uid("/1.5/abc/info/collections"), None);
        assert_eq!(path_uid("/1.0/sync/1.5"), None);
        assert_eq!(path_uid("/__heartbeat__"), None);
    }
}
