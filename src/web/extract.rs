//! Extractors: one per concern (identity, preconditions, listing query, body).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};

use super::AppState;
use super::error::{ApiError, WeaveCode};
use crate::auth::Identity;
use crate::auth::hawk::{self, SignedRequest};
use crate::config::Settings;
use crate::storage::Precondition;
use crate::storage::model::{self, ClientTime, MAX_IDS};
use crate::storage::queries::{ListQuery, Sort};

/// The authenticated user of a `/1.5/{uid}/…` request.
pub struct HawkUser(pub Identity);

/// The payload hash a verified Hawk header carried, left in the request's extensions by
/// `HawkUser` for `SyncBody` to check against the body.
#[derive(Clone)]
struct SignedPayloadHash(String);

/// Parses the `{uid}` segment: 1 to 19 digits that fit an i64.
fn path_uid(path: &str) -> Option<u64> {
    let seg = path.strip_prefix("/1.5/")?.split('/').next()?;
    if seg.is_empty() || seg.len() > 19 || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seg.parse::<i64>().ok().map(|v| v as u64)
}

/// The host and port the client signed: the configured public URL, trusted
/// X-Forwarded-* headers, or the Host header (port from scheme when absent).
fn signed_host(headers: &HeaderMap, state: &AppState) -> (String, u16) {
    if let Some((host, port)) = &state.public_host {
        return (host.clone(), *port);
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trusted = state.settings.trust_forwarded_headers;
    let scheme_port = match trusted.then(|| get("x-forwarded-proto")).flatten() {
        Some(p) if p.trim().eq_ignore_ascii_case("https") => 443,
        _ => 80,
    };
    let host = trusted
        .then(|| get("x-forwarded-host"))
        .flatten()
        .and_then(|h| h.split(',').next())
        .or_else(|| get("host"))
        .unwrap_or("")
        .trim();
    let forwarded_port = trusted
        .then(|| get("x-forwarded-port"))
        .flatten()
        .and_then(|p| p.trim().parse().ok());
    match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => match p.parse() {
            Ok(port) => (h.to_string(), forwarded_port.unwrap_or(port)),
            Err(_) => (host.to_string(), forwarded_port.unwrap_or(scheme_port)),
        },
        _ => (host.to_string(), forwarded_port.unwrap_or(scheme_port)),
    }
}

/// Whether `path` is exactly `/1.5/{uid}/info/collections`.
fn is_info_collections(path: &str) -> bool {
    path.strip_prefix("/1.5/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, route)| route == "info/collections")
}

/// A URL's scheme, host (both lower-cased), port (explicit, else the scheme's) and
/// path without trailing slashes: what makes two node URLs the same node.
fn url_parts(url: &str) -> Option<(String, String, u16, String)> {
    let uri: axum::http::Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/').to_string();
    Some((scheme, host, port, path))
}

/// Whether a token minted for `node` may be used here, so a request captured on one
/// node cannot be replayed at another: `node` must be this node's URL — `node_url`,
/// else `public_url`, else the URL this process registered in the assignment database
/// (`registered`: `http://<bound address>`). With none of these (a storage-only node
/// without an assignment database), its host and port must be those the request was
/// addressed to (`host`, `port`: what the client signed; a replay that forges the Host
/// header passes that, so such nodes should set `public_url`). A token without a node,
/// or with one that is not a URL, names no node and is refused.
fn token_names_this_node(
    node: &str,
    settings: &Settings,
    registered: Option<&str>,
    host: &str,
    port: u16,
) -> bool {
    let Some(token_node) = url_parts(node) else {
        return false;
    };
    let this_node = [settings.node_url.as_str(), settings.public_url.as_str()]
        .into_iter()
        .chain(registered)
        .find(|url| !url.is_empty());
    match this_node {
        Some(url) => url_parts(url).is_some_and(|this| this == token_node),
        None => token_node.1 == host.to_ascii_lowercase() && token_node.2 == port,
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl FromRequestParts<AppState> for HawkUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let path = parts.uri.path();
        let uid = path_uid(path).ok_or(ApiError::NotFound)?;
        let (host, port) = signed_host(&parts.headers, state);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(path);
        let req = SignedRequest {
            method: parts.method.as_str(),
            path_and_query,
            host: &host,
            port,
        };
        // Clients may read their state with a recently expired token, as Mozilla's nodes
        // allow: `GET /1.5/{uid}/info/collections` only (not a record that happens to
        // end in that path), for `auth::EXPIRED_TOKEN_GRACE_SECS` after expiry.
        let allow_expired = parts.method == Method::GET && is_info_collections(path);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let identity = state
            .auth
            .verify(header, &req, uid, allow_expired, unix_now())?;
        let registered = state.assignments.as_ref().map(|a| a.node_url());
        if !token_names_this_node(
            &identity.token.node,
            &state.settings,
            registered,
            &host,
            port,
        ) {
            return Err(crate::auth::AuthError::WrongNode.into());
        }
        if let Some(check) = &state.assignments
            && !check
                .allows(uid)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
        {
            return Err(crate::auth::AuthError::Reassigned.into());
        }
        if let Some(hash) = &identity.payload_hash {
            parts.extensions.insert(SignedPayloadHash(hash.clone()));
        }
        super::observe::mark_authenticated(uid);
        Ok(HawkUser(identity))
    }
}

/// The request's `X-If-Modified-Since` / `X-If-Unmodified-Since` condition.
pub struct Pre(pub Precondition);

impl<S: Send + Sync> FromRequestParts<S> for Pre {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let parse = |name: &str| -> Result<Option<ClientTime>, ApiError> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| ClientTime::parse(s.trim()))
                    .map(Some)
                    .ok_or_else(|| ApiError::bad(WeaveCode::IllegalMethod, format!("bad {name}"))),
            }
        };
        let ims = parse("x-if-modified-since")?;
        let ius = parse("x-if-unmodified-since")?;
        Ok(Pre(match (ims, ius) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    WeaveCode::IllegalMethod,
                    "both X-If-Modified-Since and X-If-Unmodified-Since",
                ));
            }
            // X-If-Modified-Since only means something on reads.
            (Some(t), None) if parts.method == Method::GET => Precondition::IfModifiedSince(t),
            (_, Some(t)) => Precondition::IfUnmodifiedSince(t),
            _ => Precondition::None,
        }))
    }
}

/// The query parameters of a request, in order (later duplicates win).
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The last value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(Params)
            .map_err(|_| ApiError::bad(WeaveCode::IllegalMethod, "malformed query string"))
    }
}

/// Parses `ids=a,b,c` (at most 100).
pub fn parse_ids(value: &str) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad(WeaveCode::IllegalMethod, "too many ids"));
    }
    Ok(ids)
}

/// Builds a validated listing query from `ids`, `newer`, `older`, `full`, `limit`,
/// `offset` and `sort`.
pub fn list_query(p: &Params) -> Result<ListQuery, ApiError> {
    let bad = |what: &str| ApiError::bad(WeaveCode::IllegalMethod, format!("invalid {what}"));
    let time = |name: &str| -> Result<Option<ClientTime>, ApiError> {
        p.get(name)
            .map(|v| ClientTime::parse(v.trim()).ok_or_else(|| bad(name)))
            .transpose()
    };
    let limit = match p.get("limit") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("limit"))?,
        ),
    };
    let sort = match p.get("sort") {
        None => Sort::None,
        Some("newest") => Sort::Newest,
        Some("oldest") => Sort::Oldest,
        Some("index") => Sort::Index,
        Some(_) => return Err(bad("sort")),
    };
    let after = match p.get("offset") {
        None => None,
        Some(v) => Some(crate::storage::decode_offset(v).map_err(|_| bad("offset"))?),
    };
    Ok(ListQuery {
        ids: p.get("ids").map(parse_ids).transpose()?,
        newer_than: time("newer")?.map(|t| t.floor()),
        older_than: time("older")?.map(|t| t.exclusive_upper()),
        full: p.get("full").is_some(),
        limit,
        after,
        sort,
    })
}

/// Checks a collection name from the URL.
pub fn collection_name(name: &str) -> Result<String, ApiError> {
    if model::valid_collection(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad(
            WeaveCode::InvalidCollection,
            "invalid collection name",
        ))
    }
}

/// The kinds of request body the storage API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (also `text/plain`, or no content type).
    Json,
    /// `application/newlines`: one JSON value per line.
    Newlines,
}

/// A request body, read with the size limit enforced before it is buffered whole,
/// and checked against the Hawk payload hash when the client signed one.
pub struct SyncBody {
    /// The body's format, from Content-Type.
    pub format: BodyFormat,
    /// The raw bytes.
    pub bytes: axum::body::Bytes,
}

impl FromRequest<AppState> for SyncBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body): (Parts, Body) = req.into_parts();
        // `/1.5/{uid}/storage/{collection}…`: the collection's own limit, if it has one.
        let limit = match parts.uri.path().split('/').nth(4) {
            Some(collection) => state.settings.limits_for(collection).max_request_bytes,
            None => state.settings.max_request_bytes,
        };
        let mime = media_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        let format = match mime.as_str() {
            "" | "application/json" | "text/plain" => BodyFormat::Json,
            "application/newlines" if parts.method == Method::POST => BodyFormat::Newlines,
            _ => return Err(ApiError::UnsupportedMediaType),
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let receiving = std::time::Instant::now();
        let received = axum::body::to_bytes(body, limit).await;
        super::observe::mark_body_wait(receiving.elapsed());
        let bytes = received.map_err(|e| {
            let cause = e.into_inner();
            if cause.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge
            } else {
                ApiError::RequestTimeout
            }
        })?;
        // The Hawk MAC (checked by `HawkUser`) covers the `hash` parameter; here the
        // body must match it.
        if let Some(SignedPayloadHash(expected)) = parts.extensions.get::<SignedPayloadHash>()
            && !hawk::macs_equal(&hawk::payload_hash(&mime, &bytes), expected)
        {
            return Err(crate::auth::AuthError::PayloadHash.into());
        }
        Ok(SyncBody { format, bytes })
    }
}

/// The media type of a Content-Type or Accept entry: no parameters, lower-cased.
pub fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_come_from_the_path() {
        assert_eq!(path_uid("/1.5/42/info/collections"), Some(42));
        assert_eq!(path_uid("/1.5/42"), Some(42));
        assert_eq!(path_uid("/1.5/abc/info"), None);
        assert_eq!(path_uid("/1.5//info"), None);
        assert_eq!(path_uid("/1.5/99999999999999999999/info"), None);
        assert_eq!(path_uid("/1.5/9223372036854775808/info"), None);
    }

    #[test]
    fn only_the_info_collections_route_is_info_collections() {
        assert!(is_info_collections("/1.5/42/info/collections"));
        for other in [
            "/1.5/42/storage/info/collections",
            "/1.5/42/info/collections/",
            "/1.5/42/info/collection_counts",
            "/1.5/info/collections",
            "/info/collections",
        ] {
            assert!(!is_info_collections(other), "{other}");
        }
    }

    #[test]
    fn node_urls_compare_by_scheme_host_port_and_path() {
        let mut settings = Settings::default();
        let here =
            |node: &str, s: &Settings| token_names_this_node(node, s, None, "127.0.0.1", 8000);
        assert!(here("http://127.0.0.1:8000", &settings));
        assert!(here("http://127.0.0.1:8000/", &settings));
        assert!(!here("http://127.0.0.1:8001", &settings));
        assert!(!here("http://10.0.0.1:8000", &settings));
        assert!(!here("", &settings));
        assert!(!here("not a url", &settings));
        // The URL this process registered wins over the request's host.
        let registered = |node: &str| {
            token_names_this_node(
                node,
                &Settings::default(),
                Some("http://127.0.0.1:9000"),
                "127.0.0.1",
                8000,
            )
        };
        assert!(registered("http://127.0.0.1:9000"));
        assert!(!registered("http://127.0.0.1:8000"));
        settings.public_url = "https://Sync.Example.com/".into();
        assert!(here("https://sync.example.com", &settings));
        assert!(here("https://sync.example.com:443", &settings));
        assert!(!here("http://sync.example.com", &settings));
        assert!(!here("http://127.0.0.1:8000", &settings));
        settings.node_url = "https://node1.example.com".into();
        assert!(here("https://node1.example.com", &settings));
        assert!(!here("https://sync.example.com", &settings));
    }
}
