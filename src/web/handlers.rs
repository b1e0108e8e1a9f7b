//! Handlers of the storage API, one per route: parse → one storage call → response.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, WeaveCode};
use super::extract::{
    BodyFormat, HawkUser, Params, Pre, SyncBody, collection_name, list_query, media_type,
};
use crate::storage::model::{self, BsoError, BsoInput, Timestamp};
use crate::storage::{BatchPost, BatchRef, InfoKind, PostResult, Written};

/// `{collection}` of a collection URL.
#[derive(Deserialize)]
pub struct CollectionPath {
    collection: String,
}

/// `{collection}/{bso}` of a record URL.
#[derive(Deserialize)]
pub struct ItemPath {
    collection: String,
    bso: String,
}

/// A JSON response with `X-Last-Modified` (and, for writes, `X-Weave-Timestamp`).
fn reply<T: Serialize>(body: &T, last_modified: Timestamp, write: bool) -> Response {
    let mut r = axum::Json(body).into_response();
    let ts = HeaderValue::from_str(&last_modified.to_string()).expect("digits and a dot");
    if write {
        r.headers_mut().insert("x-weave-timestamp", ts.clone());
    }
    r.headers_mut().insert("x-last-modified", ts);
    r
}

/// The body of a successful `DELETE` of one record: `{"modified": ts}`.
#[derive(Serialize)]
struct Modified {
    modified: Timestamp,
}

/// Adds `X-Weave-Quota-Remaining` (KB, two decimals) once a user has used 80% of
/// their quota; quotas off: nothing.
fn quota_header(mut r: Response, s: &AppState, usage_bytes: i64) -> Response {
    let quota = s.settings.quota_bytes as i64;
    if quota > 0 && usage_bytes * 5 >= quota * 4 {
        let remaining = (quota - usage_bytes).max(0) as f64 / 1024.0;
        if let Ok(v) = HeaderValue::from_str(&format!("{remaining:.2}")) {
            r.headers_mut().insert("x-weave-quota-remaining", v);
        }
    }
    r
}

/// A write answered with the bare timestamp as its body (PUT, DELETE of a collection
/// or of everything). Firefox keeps the body of its `PUT meta/global` as that record's
/// modified time and sends it back as `X-If-Unmodified-Since`: an object here made its
/// next meta/global upload fail, and a second device then wiped the account.
fn written(s: &AppState, w: Written<Timestamp>) -> Response {
    quota_header(reply(&w.value, w.value, true), s, w.usage_bytes)
}

async fn info(state: &AppState, uid: u64, kind: InfoKind, pre: Pre) -> Result<Response, ApiError> {
    let info = state.storage.info(uid, kind, pre.0).await?;
    Ok(reply(&info.collections, info.modified, false))
}

/// `GET info/collections`.
pub async fn info_collections(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    pre: Pre,
) -> Result<Response, ApiError> {
    info(&s, user.uid, InfoKind::Timestamps, pre).await
}

/// `GET info/collection_counts`.
pub async fn info_counts(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    pre: Pre,
) -> Result<Response, ApiError> {
    info(&s, user.uid, InfoKind::Counts, pre).await
}

/// `GET info/collection_usage`.
pub async fn info_usage(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    pre: Pre,
) -> Result<Response, ApiError> {
    info(&s, user.uid, InfoKind::Usage, pre).await
}

/// `GET info/quota`: `[used_kb, quota_kb or null]`.
pub async fn info_quota(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
) -> Result<Response, ApiError> {
    let info = s.storage.info(user.uid, InfoKind::Usage, pre).await?;
    let quota = s.settings.quota_bytes;
    let quota_kb = (quota > 0).then(|| quota as f64 / 1024.0);
    let used_kb = info.total_bytes as f64 / 1024.0;
    Ok(reply(&json!([used_kb, quota_kb]), info.modified, false))
}

/// `GET info/configuration`: the server's limits.
pub async fn info_configuration(
    State(s): State<AppState>,
    HawkUser(_): HawkUser,
) -> Result<Response, ApiError> {
    Ok(axum::Json(s.settings.limits()).into_response())
}

/// The response formats a listing can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Newlines,
}

/// Picks the first format of the Accept header we can produce (JSON by default).
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    for range in accept.split(',') {
        match media_type(range).as_str() {
            "application/json" | "application/*" | "*/*" | "" => return Ok(Format::Json),
            "application/newlines" => return Ok(Format::Newlines),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable)
}

/// `GET storage/{collection}`.
pub async fn get_collection(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<CollectionPath>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    let format = negotiate(&headers)?;
    let query = list_query(&params)?;
    let full = query.full;
    let listing = s.storage.list(user.uid, collection, query, pre).await?;
    let count = listing.items.len();
    let (body, content_type) = match format {
        Format::Json => (listing_json(&listing.items, full), "application/json"),
        Format::Newlines => (
            listing_newlines(&listing.items, full),
            "application/newlines",
        ),
    };
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(
        "x-last-modified",
        HeaderValue::from_str(&listing.modified.to_string()).expect("timestamp"),
    );
    h.insert("x-weave-records", HeaderValue::from(count));
    if let Some(next) = listing.next_offset {
        h.insert(
            "x-weave-next-offset",
            HeaderValue::from_str(&next).expect("url-safe base64"),
        );
    }
    Ok(r)
}

/// Appends one listed record to `out`: the whole record as JSON when `full`, else its
/// id as a JSON string. The same text `serde_json` makes of a [`model::Bso`] (tested),
/// written straight into the answer: no string per record, and the timestamp without
/// the parse `serde_json::RawValue` does of it.
fn write_listed(out: &mut Vec<u8>, b: &model::Bso, full: bool) {
    use std::io::Write as _;
    let string = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    };
    if !full {
        return string(out, &b.id);
    }
    out.extend_from_slice(b"{\"id\":");
    string(out, &b.id);
    let _ = write!(out, ",\"modified\":{},\"payload\":", b.modified);
    string(out, &b.payload);
    if let Some(i) = b.sortindex {
        let _ = write!(out, ",\"sortindex\":{i}");
    }
    out.push(b'}');
}

/// Room for a listing's answer: its payloads and ~100 bytes of the rest per record.
fn listing_capacity(items: &[model::Bso], full: bool) -> usize {
    let payloads: usize = if full {
        items.iter().map(|b| b.payload.len()).sum()
    } else {
        0
    };
    payloads + 100 * items.len() + 2
}

/// A listing as a JSON array.
fn listing_json(items: &[model::Bso], full: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(listing_capacity(items, full));
    out.push(b'[');
    for (i, b) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_listed(&mut out, b, full);
    }
    out.push(b']');
    out
}

/// A listing as `application/newlines`: one JSON value a line.
fn listing_newlines(items: &[model::Bso], full: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(listing_capacity(items, full));
    for b in items {
        write_listed(&mut out, b, full);
        out.push(b'\n');
    }
    out
}

/// `GET storage/{collection}/{bso}`.
pub async fn get_item(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<ItemPath>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    if !model::valid_bso_id(&p.bso) {
        return Err(ApiError::NotFound);
    }
    let bso = s.storage.get(user.uid, collection, p.bso, pre).await?;
    Ok(reply(&bso, bso.modified, false))
}

/// A PUT's invalid BSO: 400 with Sync's size-limit code for a payload over the limit
/// (as Mozilla's nodes answer; 413 is for bodies over `max_request_bytes`), else 400
/// "invalid BSO".
fn bso_error(e: BsoError) -> ApiError {
    match e {
        BsoError::PayloadTooLarge => ApiError::bad(WeaveCode::SizeLimitExceeded, e.to_string()),
        e => ApiError::bad(WeaveCode::InvalidBso, e.to_string()),
    }
}

/// Refuses key records known to be broken: in `crypto` only, a payload whose `IV` is
/// all zeros. Broken clients uploaded such keys and other devices then replaced their
/// data with what they could not decrypt; Mozilla's nodes refuse them, so do we.
fn refuse_known_bad_keys(collection: &str, bso: &BsoInput) -> Result<(), ApiError> {
    if collection == "crypto" && bso.payload_str().is_some_and(model::has_zero_iv) {
        return Err(ApiError::bad(
            WeaveCode::InvalidBso,
            "crypto record with an all-zero IV",
        ));
    }
    Ok(())
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(WeaveCode::InvalidJson, e.to_string()))
}

/// `PUT storage/{collection}/{bso}`.
pub async fn put_item(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<ItemPath>,
    body: SyncBody,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    if !model::valid_bso_id(&p.bso) {
        return Err(ApiError::NotFound);
    }
    let value = parse_json(&body.bytes)?;
    let max_payload = s.settings.limits_for(&collection).max_record_payload_bytes;
    let bso = model::parse_bso(&value, Some(&p.bso), max_payload).map_err(bso_error)?;
    refuse_known_bad_keys(&collection, &bso)?;
    let w = s.storage.put(user.uid, collection, bso, pre).await?;
    Ok(written(&s, w))
}

/// Splits a POST body into BSO values: a JSON list, or one JSON value per line.
fn post_values(body: &SyncBody) -> Result<Vec<Value>, ApiError> {
    let values = match body.format {
        BodyFormat::Json => match parse_json(&body.bytes)? {
            Value::Array(items) => items,
            _ => return Err(ApiError::bad(WeaveCode::InvalidBso, "body is not a list")),
        },
        // One BSO a line; the newline after the last one is optional, but an empty
        // line is not a BSO (so a body of just "\n" is refused, an empty body is not).
        BodyFormat::Newlines => {
            if body.bytes.is_empty() {
                Vec::new()
            } else {
                let bytes = body.bytes.strip_suffix(b"\n").unwrap_or(&body.bytes);
                bytes
                    .split(|b| *b == b'\n')
                    .map(parse_json)
                    .collect::<Result<_, _>>()?
            }
        }
    };
    // As Mozilla's nodes: a list item that is not an object, or has no string id,
    // refuses the whole request (other invalid BSOs are reported in `failed`).
    if values.iter().any(|v| !v.is_object()) {
        return Err(ApiError::bad(
            WeaveCode::InvalidBso,
            "list item is not an object",
        ));
    }
    if values
        .iter()
        .any(|v| !v.get("id").is_some_and(Value::is_string))
    {
        return Err(ApiError::bad(WeaveCode::InvalidBso, "a BSO has no id"));
    }
    Ok(values)
}

/// Validates each posted BSO and applies the per-POST limits: records past
/// `max_post_records` or past `max_post_bytes` of payload go to `failed`, with
/// Mozilla's short reasons `"retry bso"` / `"retry bytes"` as the whole value.
/// A known-bad key record refuses the whole request.
fn sort_posted(
    values: Vec<Value>,
    collection: &str,
    s: &AppState,
) -> Result<(Vec<BsoInput>, BTreeMap<String, String>), ApiError> {
    let limits = s.settings.limits_for(collection);
    let mut valid = Vec::with_capacity(values.len());
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut bytes = 0usize;
    for v in values {
        let id = v.get("id").and_then(Value::as_str).unwrap_or("");
        let reason = match model::parse_bso(&v, None, limits.max_record_payload_bytes) {
            Err(e) => e.to_string(),
            Ok(bso) => {
                refuse_known_bad_keys(collection, &bso)?;
                if valid.len() >= limits.max_post_records {
                    "retry bso".to_string()
                } else if bytes + bso.payload_len() > limits.max_post_bytes {
                    "retry bytes".to_string()
                } else {
                    bytes += bso.payload_len();
                    valid.push(bso);
                    continue;
                }
            }
        };
        failed.entry(id.to_string()).or_insert(reason);
    }
    Ok((valid, failed))
}

/// Refuses a POST whose announced batch size (`X-Weave-Total-Records` /
/// `X-Weave-Total-Bytes`) passes the server's limits.
fn check_announced_totals(headers: &HeaderMap, s: &AppState) -> Result<(), ApiError> {
    let limits = s.settings.limits();
    for (name, max) in [
        ("x-weave-total-records", limits.max_total_records),
        ("x-weave-total-bytes", limits.max_total_bytes),
    ] {
        if let Some(v) = headers.get(name) {
            let n: u64 = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad(WeaveCode::IllegalMethod, format!("bad {name}")))?;
            if n > max as u64 {
                return Err(ApiError::bad(
                    WeaveCode::SizeLimitExceeded,
                    format!("{name} over the limit"),
                ));
            }
        }
    }
    Ok(())
}

/// Reads `batch` / `commit`: `None` for a plain POST, else which batch and whether
/// to commit it.
fn batch_params(p: &Params) -> Result<Option<(BatchRef, bool)>, ApiError> {
    let bad = |m: &str| ApiError::bad(WeaveCode::IllegalMethod, m.to_string());
    let commit = match p.get("commit") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(_) => return Err(bad("commit must be \"true\"")),
    };
    match p.get("batch") {
        None if commit => Err(bad("commit without batch")),
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some((BatchRef::Start, commit))),
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(Some((BatchRef::Existing(v.to_string()), commit)))
        }
        Some(_) => Err(bad("invalid batch id")),
    }
}

/// `POST storage/{collection}`: a plain write, or a step of a batch upload.
pub async fn post_collection(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<CollectionPath>,
    params: Params,
    headers: HeaderMap,
    body: SyncBody,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    let batch = batch_params(&params)?;
    check_announced_totals(&headers, &s)?;
    let (valid, failed) = sort_posted(post_values(&body)?, &collection, &s)?;
    let Some((batch, commit)) = batch else {
        let w = s.storage.post(user.uid, collection, valid, pre).await?;
        let mut result = w.value;
        result.failed = failed;
        let r = reply(&result, result.modified, true);
        return Ok(quota_header(r, &s, w.usage_bytes));
    };
    let post = BatchPost {
        collection,
        batch,
        commit,
        bsos: valid,
        max_records: s.settings.max_total_records,
        max_bytes: s.settings.max_total_bytes,
        batch_ttl_secs: s.settings.batch_ttl_secs as i64,
    };
    let w = s.storage.batch_post(user.uid, post, pre).await?;
    let b = w.value;
    let r = match b.batch {
        Some(id) => {
            let body = json!({"batch": id, "success": b.success, "failed": failed});
            let mut r = reply(&body, b.modified, false);
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        None => {
            let body = PostResult {
                modified: b.modified,
                success: b.success,
                failed,
            };
            reply(&body, b.modified, true)
        }
    };
    Ok(quota_header(r, &s, w.usage_bytes))
}

/// `DELETE storage/{collection}[?ids=…]`.
pub async fn delete_collection(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<CollectionPath>,
    params: Params,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    let ids = params
        .get("ids")
        .map(super::extract::parse_ids)
        .transpose()?;
    let w = s
        .storage
        .delete_collection(user.uid, collection, ids, pre)
        .await?;
    Ok(written(&s, w))
}

/// `DELETE storage/{collection}/{bso}`.
pub async fn delete_item(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
    Path(p): Path<ItemPath>,
) -> Result<Response, ApiError> {
    let collection = collection_name(&p.collection)?;
    if !model::valid_bso_id(&p.bso) {
        return Err(ApiError::NotFound);
    }
    let w = s.storage.delete(user.uid, collection, p.bso, pre).await?;
    let body = Modified { modified: w.value };
    Ok(quota_header(reply(&body, w.value, true), &s, w.usage_bytes))
}

/// `DELETE storage` and `DELETE /1.5/{uid}`.
pub async fn delete_all(
    State(s): State<AppState>,
    HawkUser(user): HawkUser,
    Pre(pre): Pre,
) -> Result<Response, ApiError> {
    let w = s.storage.delete_all(user.uid, pre).await?;
    Ok(written(&s, w))
}

/// `GET /__heartbeat__`: checks that the data dir is writable and SQLite works there,
/// and that the assignment database answers when this process uses one. With
/// continuous backup on, its state is in `backup` (a warning there keeps the 200).
pub async fn heartbeat(State(s): State<AppState>) -> Response {
    let storage = match s.storage.dbs().health_check().await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "heartbeat: data dir unusable");
            false
        }
    };
    let assignments = s
        .tokenserver
        .as_ref()
        .map(|t| t.db().clone())
        .or_else(|| s.assignments.as_ref().map(|a| a.db().clone()));
    let tokenserver_db = match assignments {
        None => None,
        Some(db) => Some(match tokio::task::spawn_blocking(move || db.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "heartbeat: assignment database unreachable");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "heartbeat: check failed");
                false
            }
        }),
    };
    let word = |ok: bool| if ok { "Ok" } else { "Err" };
    let healthy = storage && tokenserver_db.unwrap_or(true);
    let mut body = json!({"status": word(healthy), "database": word(storage)});
    if let Some(ok) = tokenserver_db {
        body["tokenserver_database"] = json!(word(ok));
    }
    // Continuous backup: a warning when overdue or failing, never a failure.
    if let Some(b) = crate::server::backup_status() {
        body["backup"] = b.heartbeat(crate::admin::backup::now_ms());
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /__lbheartbeat__`: the process is up.
pub async fn lbheartbeat() -> Response {
    axum::Json(json!({})).into_response()
}

/// `GET /__version__`: name, version and commit of this build.
pub async fn version() -> Response {
    axum::Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("SYNCSTORE_COMMIT"),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_written_as_serde_json_writes_records() {
        let bso = |id: &str, payload: &str, sortindex| model::Bso {
            id: id.into(),
            modified: Timestamp(170000000010),
            payload: payload.into(),
            sortindex,
        };
        let items = [
            bso("a", "p", None),
            bso("we\"ird\\id", "{\"ciphertext\":\"\u{1}é\n\"}", Some(-7)),
            bso("z", "", Some(999_999_999)),
        ];
        for full in [true, false] {
            let each: Vec<String> = items
                .iter()
                .map(|b| {
                    if full {
                        serde_json::to_string(b).unwrap()
                    } else {
                        serde_json::to_string(&b.id).unwrap()
                    }
                })
                .collect();
            let json = String::from_utf8(listing_json(&items, full)).unwrap();
            assert_eq!(json, format!("[{}]", each.join(",")));
            let lines = String::from_utf8(listing_newlines(&items, full)).unwrap();
            assert_eq!(
                lines,
                each.iter().map(|e| format!("{e}\n")).collect::<String>()
            );
        }
        assert_eq!(listing_json(&[], true), b"[]");
        assert!(listing_newlines(&[], false).is_empty());
    }
}
