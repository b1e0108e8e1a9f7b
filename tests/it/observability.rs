//! Operations, seen from outside: the per-request log line (text and JSON), the
//! Prometheus metrics, and the heartbeat.

use crate::common::Server;
use serde_json::{Value, json};

/// The lines of the server's log that are per-request lines.
fn request_lines(server: &Server) -> Vec<String> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("syncstore::access"))
        .cloned()
        .collect()
}

/// Waits until the log has at least `n` request lines (they are written after the
/// response is sent).
async fn wait_for_lines(server: &Server, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let lines = request_lines(server);
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} request lines: {}", server.log_text());
}

#[tokio::test]
async fn each_request_logs_one_line_with_route_template_status_and_uid() {
    let server = Server::start(&[]);
    let client = server.client(7);
    let secret_payload = "secret-payload-text";
    let r = client
        .put(
            "/storage/bookmarks/record-id-1",
            &json!({"payload": secret_payload}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = client.get("/storage/nosuch/thing").await;
    assert_eq!(r.status, 404);
    let r = reqwest::get(format!("{}/no/such/route", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let lines = wait_for_lines(&server, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let put = &lines[0];
    assert!(put.contains("method=PUT"), "{put}");
    assert!(
        put.contains("route=/1.5/{uid}/storage/{collection}/{bso}"),
        "{put}"
    );
    assert!(put.contains("status=200") && put.contains("uid=7"), "{put}");
    assert!(put.contains("duration_ms="), "{put}");
    assert!(lines[1].contains("status=404") && lines[1].contains("uid=7"));
    assert!(lines[2].contains("route=unmatched") && lines[2].contains("status=404"));
    // Never the raw path, the record id, the payload or the token.
    let log = server.log_text();
    for leak in [secret_payload, "record-id-1", "Hawk ", client.id.as_str()] {
        assert!(!log.contains(leak), "log leaks {leak:?}: {log}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let server = Server::start(&[("SYNCSTORE_LOG_FORMAT", "json")]);
    let client = server.client(8);
    assert_eq!(client.get("/info/collections").await.status, 200);
    let lines = wait_for_lines(&server, 1).await;
    let line: Value = serde_json::from_str(&lines[0]).expect("a JSON object");
    assert_eq!(line["route"], "/1.5/{uid}/info/collections");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["uid"], 8);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    for l in server.log.lock().unwrap().iter() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

/// The value of one metric line (`name{labels} value`), or 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(format!("{url}/__metrics__")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_files_batches_and_bytes() {
    let server = Server::start(&[
        ("SYNCSTORE_MAX_OPEN_USERS", "1"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let (a, b) = (server.client(21), server.client(22));
    assert_eq!(
        a.put("/storage/tabs/t1", &json!({"payload": "12345"}))
            .await
            .status,
        200
    );
    let r = a
        .post(
            "/storage/history?batch=true",
            &json!([{"id": "h1", "payload": "abc"}]),
        )
        .await;
    assert_eq!(r.status, 202);
    let batch = r.json()["batch"].as_str().unwrap().to_string();
    let r = a
        .post(
            &format!("/storage/history?batch={batch}&commit=true"),
            &json!([{"id": "h2", "payload": "de"}]),
        )
        .await;
    assert_eq!(r.status, 200);
    // Another user evicts the first from an LRU of one; then the first comes back:
    // its info/collections from memory (its last write left its summary there), a
    // record from its file.
    assert_eq!(b.get("/info/collections").await.status, 200);
    assert_eq!(a.get("/info/collections").await.status, 200);
    assert_eq!(a.get("/storage/tabs/t1").await.status, 200);
    // Wait until the last request's line (and so its metrics) is recorded.
    wait_for_lines(&server, 6).await;

    let text = scrape(&server.metrics_url()).await;
    let put = r#"syncstore_http_requests_total{method="PUT",route="/1.5/{uid}/storage/{collection}/{bso}",status="200"}"#;
    assert_eq!(metric(&text, put), 1.0, "{text}");
    let info = r#"syncstore_http_requests_total{method="GET",route="/1.5/{uid}/info/collections",status="200"}"#;
    assert_eq!(metric(&text, info), 2.0, "{text}");
    for (outcome, want) in [("hit", 1.0), ("miss", 1.0)] {
        let series = format!(r#"syncstore_summary_lookups_total{{outcome="{outcome}"}}"#);
        assert_eq!(metric(&text, &series), want, "{series}: {text}");
    }
    assert!(
        text.contains(
            r#"syncstore_http_request_duration_seconds_bucket{method="PUT",route="/1.5/{uid}/storage/{collection}/{bso}",le="+Inf"} 1"#
        ),
        "{text}"
    );
    assert_eq!(metric(&text, "syncstore_open_users"), 1.0, "{text}");
    // Opens: a (first), b, a again; everything else found a open.
    assert_eq!(metric(&text, "syncstore_lru_misses_total"), 3.0, "{text}");
    assert_eq!(metric(&text, "syncstore_lru_hits_total"), 2.0, "{text}");
    // a's second open kept the WAL index its first open had set up; nothing was reset
    // in place (both files were new to this process and to the disk).
    assert_eq!(
        metric(&text, "syncstore_wal_index_kept_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "syncstore_wal_index_zeroed_total"),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "syncstore_lru_evictions_total"),
        2.0,
        "{text}"
    );
    for op in ["create", "append", "commit"] {
        let want = if op == "append" { 2.0 } else { 1.0 };
        let series = format!(r#"syncstore_batches_total{{op="{op}"}}"#);
        assert_eq!(metric(&text, &series), want, "{series}: {text}");
    }
    assert_eq!(metric(&text, "syncstore_records_written_total"), 3.0);
    assert_eq!(metric(&text, "syncstore_payload_bytes_written_total"), 10.0);
    assert!(
        text.contains("syncstore_write_lock_wait_seconds_count 3"),
        "{text}"
    );
}

/// `/__metrics__` is not on the public listener unless a token is set, and then only
/// with that token; the metrics listener serves it.
#[tokio::test]
async fn metrics_are_on_their_own_listener_or_behind_a_token() {
    let server = Server::start(&[("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0")]);
    assert_eq!(server.client(3).get("/info/collections").await.status, 200);
    let public = reqwest::get(format!("{}/__metrics__", server.url()))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let text = scrape(&server.metrics_url()).await;
    assert!(text.contains("syncstore_http_requests_total"), "{text}");

    // No metrics listener: nowhere, by default.
    let bare = Server::start(&[]);
    let public = reqwest::get(format!("{}/__metrics__", bare.url()))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    assert!(!bare.log_text().contains("metrics on"));

    // With a token, the public listener serves it to that token alone.
    let token = "metrics-token-1234";
    let guarded = Server::start(&[("SYNCSTORE_METRICS_TOKEN", token)]);
    let get = |auth: Option<String>| {
        let url = format!("{}/__metrics__", guarded.url());
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            req.send().await.unwrap()
        }
    };
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
    ] {
        let r = get(auth.clone()).await;
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert!(!r.text().await.unwrap().contains("syncstore_"));
    }
    let r = get(Some(format!("Bearer {token}"))).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE"));
    assert!(
        !guarded.log_text().contains(token),
        "the token is never logged"
    );
}

#[tokio::test]
async fn heartbeat_checks_the_data_dir_and_the_assignment_database() {
    let server = Server::start(&[]);
    let r = reqwest::get(format!("{}/__heartbeat__", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "Ok", "database": "Ok", "tokenserver_database": "Ok"})
    );
    // The data dir goes away: the heartbeat fails (the process itself is still up)
    // once the last check's result (reused for a second) is stale.
    std::fs::remove_dir_all(server.data.path()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = reqwest::get(format!("{}/__heartbeat__", server.url()))
            .await
            .unwrap();
        if r.status() != 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "Err");
    assert_eq!(body["database"], "Err");
    let r = reqwest::get(format!("{}/__lbheartbeat__", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
