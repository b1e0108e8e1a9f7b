//! Black-box tests of the storage API 1.5: a real server on a random port, real HTTP.

use crate::common::{self, Server, parse_ts, ts_value};
use serde_json::{Value, json};

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_str().expect("id").to_string())
        .collect();
    out.sort();
    out
}

fn bsos(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": i.to_string(), "payload": "xxx"}))
            .collect(),
    )
}

#[tokio::test]
async fn info_views_track_collections() {
    let s = Server::start(&[]);
    let c = s.client(1);
    let r = c.get("/info/collections").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({}));
    assert!(r.header("x-last-modified").is_some());
    parse_ts(&r.header("x-weave-timestamp").unwrap());

    let r1 = c.post("/storage/col1", &bsos(3)).await;
    let r2 = c.post("/storage/col2", &bsos(5)).await;
    assert_eq!(r1.status, 200);
    let ts2 = r2.ts("x-last-modified");
    let r = c.get("/info/collections").await;
    let info = r.json();
    assert_eq!(info.as_object().unwrap().len(), 2);
    assert_eq!(r.ts("x-last-modified"), ts2);
    // The value is the collection's timestamp, written with exactly two decimals.
    assert!(r.text.contains(&format!(
        "\"col2\":{}",
        r2.header("x-last-modified").unwrap()
    )));
    assert_eq!(
        c.get("/info/collection_counts").await.json(),
        json!({"col1": 3, "col2": 5})
    );
    let usage = c.get("/info/collection_usage").await.json();
    assert!((usage["col2"].as_f64().unwrap() - 15.0 / 1024.0).abs() < 1e-9);
    let quota = c.get("/info/quota").await.json();
    assert!((quota[0].as_f64().unwrap() - 24.0 / 1024.0).abs() < 1e-9);
    assert_eq!(quota[1], Value::Null);
}

#[tokio::test]
async fn info_collections_timestamps_keep_two_decimals() {
    let s = Server::start(&[]);
    let c = s.client(2);
    // Write until a timestamp's last digit is 0, where float formatting would drop it.
    for i in 0..200 {
        let r = c
            .put(&format!("/storage/col/{i}"), &json!({"payload": "x"}))
            .await;
        let ts = r.header("x-last-modified").unwrap();
        if ts.ends_with('0') {
            let info = c.get("/info/collections").await;
            assert!(
                info.text.contains(&format!("\"col\":{ts}")),
                "{} vs {ts}",
                info.text
            );
            let full = c.get("/storage/col?full=1&sort=newest&limit=1").await;
            assert!(
                full.text.contains(&format!("\"modified\":{ts}")),
                "{}",
                full.text
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    panic!("no timestamp ending in 0 in 200 writes");
}

#[tokio::test]
async fn info_configuration_publishes_configured_limits() {
    let s = Server::start(&[("SYNCSTORE_MAX_POST_RECORDS", "7")]);
    let r = s.client(1).get("/info/configuration").await;
    assert_eq!(r.status, 200);
    let cfg = r.json();
    assert_eq!(cfg["max_post_records"], 7);
    assert_eq!(cfg["max_request_bytes"], 2_625_536);
    assert_eq!(cfg["max_post_bytes"], 2_621_440);
    assert_eq!(cfg["max_record_payload_bytes"], 2_621_440);
    assert_eq!(cfg["max_total_records"], 10_000);
    assert_eq!(cfg["max_total_bytes"], 262_144_000);
}

#[tokio::test]
async fn listing_filters_and_formats() {
    let s = Server::start(&[]);
    let c = s.client(7);
    let r = c.get("/storage/nonexistent").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    c.post("/storage/col2", &bsos(5)).await;
    let r = c.get("/storage/col2").await;
    assert_eq!(ids(&r.json()), ["0", "1", "2", "3", "4"]);
    assert_eq!(r.header("x-weave-records").as_deref(), Some("5"));
    assert_eq!(
        ids(&c.get("/storage/col2?ids=1,3,17").await.json()),
        ["1", "3"]
    );
    assert_eq!(
        ids(&c.get("/storage/col2?ids=1%2C3").await.json()),
        ["1", "3"],
        "percent-encoded commas"
    );

    let full = c.get("/storage/col2?full=1").await.json();
    let mut keys: Vec<_> = full[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["id", "modified", "payload"]);

    // newer / older are strict bounds.
    c.delete("/storage/col2").await;
    let t1 = c
        .put("/storage/col2/a", &json!({"payload": "x"}))
        .await
        .header("x-last-modified")
        .unwrap();
    let t2 = c
        .put("/storage/col2/b", &json!({"payload": "x"}))
        .await
        .header("x-last-modified")
        .unwrap();
    assert!(parse_ts(&t1) < parse_ts(&t2));
    assert_eq!(
        ids(&c.get(&format!("/storage/col2?newer={t1}")).await.json()),
        ["b"]
    );
    assert_eq!(
        ids(&c.get(&format!("/storage/col2?newer={t2}")).await.json()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&c.get(&format!("/storage/col2?older={t2}")).await.json()),
        ["a"]
    );
    assert_eq!(
        ids(&c.get("/storage/col2?newer=0").await.json()),
        ["a", "b"]
    );
    // More than two decimals are compared exactly.
    let t1_plus = format!("{t1}1");
    assert_eq!(
        ids(&c
            .get(&format!("/storage/col2?newer={t1_plus}"))
            .await
            .json()),
        ["b"]
    );
    assert_eq!(
        ids(&c
            .get(&format!("/storage/col2?older={t1_plus}"))
            .await
            .json()),
        ["a"]
    );

    // application/newlines out; 406 for formats we cannot produce.
    let r = c
        .get_h(
            "/storage/col2?full=1",
            &[("accept", "application/newlines")],
        )
        .await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/newlines")
    );
    assert!(r.text.ends_with('\n'));
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["payload"], "x");
    let r = c
        .get_h("/storage/col2", &[("accept", "application/json")])
        .await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        c.get_h("/storage/col2", &[("accept", "x/yy")]).await.status,
        406
    );
}

#[tokio::test]
async fn sorting_orders_records() {
    let s = Server::start(&[]);
    let c = s.client(3);
    for (id, si) in [("0", -1), ("1", 34), ("2", 12)] {
        c.post(
            "/storage/col",
            &json!([{"id": id, "payload": "x", "sortindex": si}]),
        )
        .await;
    }
    c.post("/storage/col", &json!([{"id": "3", "payload": "x"}]))
        .await;
    let get = |q: &'static str| {
        let c = c.clone();
        async move { c.get(&format!("/storage/col?sort={q}")).await.json() }
    };
    assert_eq!(get("newest").await, json!(["3", "2", "1", "0"]));
    assert_eq!(get("oldest").await, json!(["0", "1", "2", "3"]));
    assert_eq!(get("index").await, json!(["1", "2", "0", "3"]));
    assert_eq!(c.get("/storage/col?sort=bogus").await.status, 400);
    let full = c.get("/storage/col?full=1&sort=index").await.json();
    assert_eq!(full[0]["sortindex"], 34);
    assert!(full[3].get("sortindex").is_none());
}

async fn page_all(c: &common::Client, query: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut url = format!("/storage/col?{query}&limit={limit}");
    loop {
        let r = c.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.json();
        assert!(page.as_array().unwrap().len() <= limit);
        out.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        match r.header("x-weave-next-offset") {
            Some(next) => {
                assert!(
                    next.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                );
                url = format!("/storage/col?{query}&limit={limit}&offset={next}");
            }
            None => break,
        }
    }
    out
}

#[tokio::test]
async fn paging_with_offsets_matches_the_unpaged_listing() {
    let s = Server::start(&[]);
    let c = s.client(4);
    for chunk in 0..3 {
        let body: Vec<Value> = (0..4)
            .map(|i| json!({"id": format!("r{}", chunk * 4 + i), "payload": "x", "sortindex": (i * 7) % 5}))
            .collect();
        c.post("/storage/col", &Value::Array(body)).await;
    }
    for sort in ["sort=newest", "sort=oldest", "sort=index", "unsorted=1"] {
        let all: Vec<String> = c
            .get(&format!("/storage/col?{sort}"))
            .await
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(all.len(), 12);
        for limit in [1, 2, 3, 5, 12, 100] {
            assert_eq!(page_all(&c, sort, limit).await, all, "{sort} limit={limit}");
        }
    }
    assert_eq!(
        c.get("/storage/col?limit=2&offset=garbage!").await.status,
        400
    );
    assert_eq!(c.get("/storage/col?limit=0").await.status, 400);
    assert_eq!(c.get("/storage/col?limit=-1").await.status, 400);
    assert_eq!(c.get("/storage/col?limit=abc").await.status, 400);
}

#[tokio::test]
async fn paging_survives_writes_between_pages() {
    let s = Server::start(&[]);
    let c = s.client(5);
    let body: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "x"}))
        .collect();
    let t0 = c
        .post("/storage/col", &Value::Array(body))
        .await
        .header("x-last-modified")
        .unwrap();
    for sort in ["oldest", "newest", "index"] {
        let mut seen = Vec::new();
        let mut url = format!("/storage/col?sort={sort}&limit=3");
        let mut extra = 0;
        loop {
            let r = c.get(&url).await;
            seen.extend(
                r.json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string()),
            );
            // Other clients write new records (and delete none) between pages.
            extra += 1;
            c.put(
                &format!("/storage/col/new-{sort}-{extra}"),
                &json!({"payload": "y"}),
            )
            .await;
            match r.header("x-weave-next-offset") {
                Some(n) => url = format!("/storage/col?sort={sort}&limit=3&offset={n}"),
                None => break,
            }
        }
        let originals: Vec<&String> = seen.iter().filter(|id| !id.starts_with("new")).collect();
        let mut unique = originals.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), originals.len(), "{sort}: a record came twice");
        assert_eq!(originals.len(), 20, "{sort}: a record was skipped");
    }
    // newer= with paging gives only what changed after t0.
    let changed = page_all(&c, &format!("newer={t0}&sort=oldest"), 2).await;
    assert!(changed.iter().all(|id| id.starts_with("new")));
}

#[tokio::test]
async fn items_are_created_read_updated_and_deleted() {
    let s = Server::start(&[]);
    let c = s.client(9);
    assert_eq!(c.get("/storage/col/x").await.status, 404);
    let r = c
        .put("/storage/col/x", &json!({"payload": "one", "sortindex": 5}))
        .await;
    assert_eq!(r.status, 200);
    let ts = r.ts("x-last-modified");
    assert_eq!(r.ts("x-weave-timestamp"), ts);
    assert_eq!(ts_value(&r.json()), ts);
    let r = c.get("/storage/col/x").await;
    assert_eq!(
        r.json(),
        json!({"id": "x", "modified": r.json()["modified"], "payload": "one", "sortindex": 5})
    );
    assert_eq!(r.ts("x-last-modified"), ts);
    assert!(r.text.contains(&format!(
        "\"modified\":{}",
        r.header("x-last-modified").unwrap()
    )));

    // Partial update: fields not sent are kept.
    c.put("/storage/col/x", &json!({"sortindex": 9})).await;
    let got = c.get("/storage/col/x").await.json();
    assert_eq!(got["payload"], "one");
    assert_eq!(got["sortindex"], 9);
    // A client-sent "modified" is ignored; explicit null resets to the default.
    let r = c
        .put(
            "/storage/col/x",
            &json!({"payload": "two", "modified": 12, "sortindex": null}),
        )
        .await;
    let got = c.get("/storage/col/x").await.json();
    assert_eq!(ts_value(&got["modified"]), r.ts("x-weave-timestamp"));
    assert!(got.get("sortindex").is_none());

    // A new record written with ttl only gets an empty payload.
    c.put("/storage/col/y", &json!({"ttl": 100})).await;
    assert_eq!(c.get("/storage/col/y").await.json()["payload"], "");

    let r = c.delete("/storage/col/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/storage/col/x").await.status, 404);
    assert_eq!(c.delete("/storage/col/x").await.status, 404);
    let info = c.get("/info/collections").await;
    assert_eq!(info.ts("x-last-modified"), r.ts("x-last-modified"));
}

#[tokio::test]
async fn ttl_hides_records_and_ttl_only_updates_keep_modified() {
    let s = Server::start(&[]);
    let c = s.client(11);
    c.put("/storage/col/gone", &json!({"payload": "x", "ttl": 0}))
        .await;
    assert_eq!(c.get("/storage/col/gone").await.status, 404);
    assert_eq!(c.get("/storage/col").await.json(), json!([]));
    // An expired record can be written again.
    assert_eq!(
        c.put("/storage/col/gone", &json!({"payload": "x", "ttl": 42}))
            .await
            .status,
        200
    );

    let r = c
        .post(
            "/storage/col",
            &json!([{"id": "a", "payload": "x", "ttl": 1}, {"id": "b", "payload": "x", "ttl": 1}]),
        )
        .await;
    let t1 = r.ts("x-last-modified");
    // Bump b's ttl without data: its modified time stays.
    let r = c
        .post("/storage/col", &json!([{"id": "b", "ttl": 100}]))
        .await;
    assert_eq!(r.json()["success"], json!(["b"]));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let items = c.get("/storage/col?full=1").await.json();
    let mut live: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    live.sort();
    assert_eq!(live, ["b", "gone"]);
    let b = items
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "b")
        .unwrap();
    assert_eq!(ts_value(&b["modified"]), t1);
    assert_eq!(b["payload"], "x");
    assert_eq!(
        c.get("/info/collection_counts").await.json(),
        json!({"col": 2})
    );
}

#[tokio::test]
async fn timestamps_strictly_increase() {
    let s = Server::start(&[]);
    let c = s.client(12);
    let mut last = 0;
    for i in 0..30 {
        let r = c
            .put(&format!("/storage/col/{i}"), &json!({"payload": "x"}))
            .await;
        let ts = r.ts("x-last-modified");
        assert!(ts > last, "write {i}: {ts} <= {last}");
        last = ts;
    }
}

#[tokio::test]
async fn conditional_headers() {
    let s = Server::start(&[]);
    let c = s.client(13);
    let r = c.put("/storage/col/a", &json!({"payload": "x"})).await;
    let ts = r.header("x-last-modified").unwrap();
    let before = format!("{}.00", parse_ts(&ts) / 100 - 1);

    // X-If-Modified-Since on reads.
    for path in [
        "/storage/col",
        "/storage/col/a",
        "/info/collections",
        "/info/quota",
        "/info/collection_counts",
        "/info/collection_usage",
    ] {
        let r = c.get_h(path, &[("x-if-modified-since", &ts)]).await;
        assert_eq!(r.status, 304, "{path}");
        assert!(r.header("x-last-modified").is_some());
        assert_eq!(
            c.get_h(path, &[("x-if-modified-since", &before)])
                .await
                .status,
            200,
            "{path}"
        );
    }

    // X-If-Unmodified-Since on reads and writes.
    let iu = [("x-if-unmodified-since", before.as_str())];
    let r = c
        .put_h("/storage/col/a", &json!({"payload": "y"}), &iu)
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.header("x-last-modified").as_deref(), Some(ts.as_str()));
    assert_eq!(
        c.post_h("/storage/col", &json!([{"id": "a", "payload": "y"}]), &iu)
            .await
            .status,
        412
    );
    assert_eq!(c.delete_h("/storage/col/a", &iu).await.status, 412);
    assert_eq!(c.delete_h("/storage/col?ids=a", &iu).await.status, 412);
    assert_eq!(c.delete_h("/storage/col", &iu).await.status, 412);
    assert_eq!(c.get_h("/storage/col", &iu).await.status, 412);
    assert_eq!(c.get_h("/storage/col/a", &iu).await.status, 412);
    assert_eq!(
        c.get("/storage/col/a").await.json()["payload"],
        "x",
        "nothing was written"
    );

    // Equal to the last-modified time is fine; a new record's time is 0.
    let ok = [("x-if-unmodified-since", ts.as_str())];
    assert_eq!(
        c.put_h("/storage/col/a", &json!({"payload": "z"}), &ok)
            .await
            .status,
        200
    );
    assert_eq!(
        c.put_h(
            "/storage/col/new",
            &json!({"payload": "z"}),
            &[("x-if-unmodified-since", "0")]
        )
        .await
        .status,
        200
    );

    // Both at once, malformed and negative values are refused.
    let both = [("x-if-modified-since", "1"), ("x-if-unmodified-since", "1")];
    assert_eq!(c.get_h("/storage/col", &both).await.status, 400);
    for bad in ["-3", "abc", "1e9", ""] {
        assert_eq!(
            c.get_h("/storage/col", &[("x-if-modified-since", bad)])
                .await
                .status,
            400,
            "{bad}"
        );
        assert_eq!(
            c.put_h(
                "/storage/col/a",
                &json!({"payload": "q"}),
                &[("x-if-unmodified-since", bad)]
            )
            .await
            .status,
            400,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn posts_report_each_record_and_accept_newlines() {
    let s = Server::start(&[]);
    let c = s.client(14);
    let r = c
        .post(
            "/storage/col",
            &json!([
                {"id": "good", "payload": "x"},
                {"id": "bad-sortindex", "payload": "x", "sortindex": "meh"},
                {"id": "bad-ttl", "payload": "x", "ttl": -1},
                {"id": "bad-field", "payload": "x", "nope": 1},
                {"id": "A\nB", "payload": "x"},
                {"id": "bad-payload", "payload": 42},
            ]),
        )
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["success"], json!(["good"]));
    let failed = body["failed"].as_object().unwrap();
    assert_eq!(failed.len(), 5);
    assert!(failed["bad-ttl"].as_str().unwrap().contains("ttl"));
    assert_eq!(ts_value(&body["modified"]), r.ts("x-last-modified"));

    // application/newlines, payloads with embedded newlines.
    let lines = [
        json!({"id": "n1", "payload": "hello\nworld"}),
        json!({"id": "n2", "payload": "\nmarco\n"}),
    ];
    let text = lines
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let r = c
        .send(
            "POST",
            "/storage/nl",
            &[],
            Some(("application/newlines", text.into_bytes())),
        )
        .await;
    assert_eq!(r.json()["success"], json!(["n1", "n2"]));
    assert_eq!(
        c.get("/storage/nl/n1").await.json()["payload"],
        "hello\nworld"
    );

    // text/plain is JSON; other types are 415 and change nothing.
    let body = serde_json::to_vec(&json!([{"id": "t", "payload": "x"}])).unwrap();
    assert_eq!(
        c.send(
            "POST",
            "/storage/tp",
            &[],
            Some(("text/plain", body.clone()))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        c.send(
            "POST",
            "/storage/oct",
            &[],
            Some(("application/octet-stream", body))
        )
        .await
        .status,
        415
    );
    let put = serde_json::to_vec(&json!({"payload": "x"})).unwrap();
    assert_eq!(
        c.send(
            "PUT",
            "/storage/oct/a",
            &[],
            Some(("application/newlines", put))
        )
        .await
        .status,
        415
    );
    assert!(c.get("/info/collections").await.json().get("oct").is_none());
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_sync_codes() {
    let s = Server::start(&[]);
    let c = s.client(15);
    for body in [
        json!("notabso"),
        json!(42),
        json!({"id": ["1"], "payload": {"3": "4"}}),
        json!({"payload": "x", "sortindex": 2.6}),
        json!({"payload": "x", "unexpected": 1}),
        json!({"id": "other", "payload": "x"}),
    ] {
        let r = c.put("/storage/col/item", &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json(), json!(8), "{body}");
    }
    for body in [
        json!("notalist"),
        json!(42),
        json!([{"id": "1", "payload": "x"}, "BAD"]),
    ] {
        let r = c.post("/storage/col", &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json(), json!(8));
    }
    let r = c
        .send(
            "PUT",
            "/storage/col/item",
            &[],
            Some(("application/json", b"{not json".to_vec())),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.json()), (400, json!(6)));
    let r = c
        .send(
            "POST",
            "/storage/col",
            &[],
            Some(("application/newlines", b"{\"id\":\"a\"}\n{oops".to_vec())),
        )
        .await;
    assert_eq!(r.status, 400);
    // An over-long id in the URL is not a record URL.
    assert_eq!(
        c.put(
            &format!("/storage/col/{}", "x".repeat(65)),
            &json!({"payload": "x"})
        )
        .await
        .status,
        404
    );
    // Negative sortindex is fine.
    assert_eq!(
        c.put(
            "/storage/col/neg",
            &json!({"payload": "x", "sortindex": -42})
        )
        .await
        .status,
        200
    );
    // Nothing above was stored.
    assert_eq!(c.get("/storage/col").await.json(), json!(["neg"]));
}

#[tokio::test]
async fn limits_are_enforced() {
    let s = Server::start(&[
        ("SYNCSTORE_MAX_POST_RECORDS", "5"),
        ("SYNCSTORE_MAX_POST_BYTES", "1000"),
        ("SYNCSTORE_MAX_RECORD_PAYLOAD_BYTES", "600"),
        ("SYNCSTORE_MAX_REQUEST_BYTES", "4000"),
        ("SYNCSTORE_MAX_TOTAL_RECORDS", "50"),
    ]);
    let c = s.client(16);
    let r = c.post("/storage/col", &bsos(8)).await.json();
    assert_eq!(r["success"].as_array().unwrap().len(), 5);
    assert_eq!(
        r["failed"],
        json!({"5": "retry bso", "6": "retry bso", "7": "retry bso"})
    );
    let big: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("b{i}"), "payload": "x".repeat(400)}))
        .collect();
    let r = c.post("/storage/col", &Value::Array(big)).await.json();
    assert_eq!(r["success"], json!(["b0", "b1"]));
    assert_eq!(r["failed"], json!({"b2": "retry bytes"}));
    // One record over the payload limit.
    let r = c
        .post(
            "/storage/col",
            &json!([{"id": "huge", "payload": "x".repeat(601)}]),
        )
        .await
        .json();
    assert!(r["failed"].get("huge").is_some());
    // A PUT of a record over the payload limit, in a body within max_request_bytes:
    // 400 with Sync's size-limit code, as Mozilla's nodes answer.
    let r = c
        .put("/storage/col/huge", &json!({"payload": "x".repeat(601)}))
        .await;
    assert_eq!((r.status.as_u16(), r.json()), (400, json!(17)));
    // A body over max_request_bytes is refused before it is stored.
    let r = c
        .put("/storage/col/huge", &json!({"payload": "x".repeat(5000)}))
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(c.get("/storage/col/huge").await.status, 404);
    // Announced batch totals.
    let r = c
        .post_h("/storage/col", &bsos(1), &[("x-weave-total-records", "51")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        c.post_h("/storage/col", &bsos(1), &[("x-weave-total-records", "50")])
            .await
            .status,
        200
    );
    assert_eq!(
        c.post_h("/storage/col", &bsos(1), &[("x-weave-total-bytes", "lots")])
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn deletes_of_collections_ids_and_everything() {
    let s = Server::start(&[]);
    let c = s.client(17);
    c.post("/storage/col", &bsos(4)).await;
    c.post("/storage/other", &bsos(2)).await;
    let r = c.delete("/storage/col?ids=0,2").await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&c.get("/storage/col").await.json()), ["1", "3"]);
    let info = c.get("/info/collections").await.json();
    assert_eq!(ts_value(&info["col"]), r.ts("x-last-modified"));
    let too_many = (0..101)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        c.delete(&format!("/storage/col?ids={too_many}"))
            .await
            .status,
        400
    );
    assert_eq!(
        c.get(&format!("/storage/col?ids={too_many}")).await.status,
        400
    );

    assert_eq!(c.delete("/storage/col").await.status, 200);
    assert_eq!(c.get("/storage/col").await.json(), json!([]));
    assert!(c.get("/info/collections").await.json().get("col").is_none());

    let r = c.delete("/storage").await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/info/collections").await.json(), json!({}));
    assert_eq!(c.delete("/storage/col").await.status, 200);
    c.post("/storage/col", &bsos(1)).await;
    let r = c.delete("").await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/info/collection_counts").await.json(), json!({}));
    // A user with nothing stored can be deleted too.
    assert_eq!(s.client(18).delete("").await.status, 200);
    // Mozilla's Python client sends DELETE /1.5/{uid}/ to delete everything.
    c.post("/storage/col", &bsos(2)).await;
    let r = c.delete("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, r.header("x-last-modified").unwrap());
    assert_eq!(c.get("/info/collection_counts").await.json(), json!({}));
    assert_eq!(c.get("/storage/col").await.json(), json!([]));
}

#[tokio::test]
async fn routes_methods_and_bad_names() {
    let s = Server::start(&[]);
    let c = s.client(19);
    let r = c.get("/nonexistent/url").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.json(), json!(0));
    assert!(r.header("x-weave-timestamp").is_some());
    assert_eq!(c.send("PUT", "/info/quota", &[], None).await.status, 405);
    assert_eq!(c.send("PUT", "/storage/col", &[], None).await.status, 405);
    assert_eq!(
        c.send("POST", "/storage/col/x", &[], None).await.status,
        405
    );
    // HTTP clients resolve dot segments before sending, so send these by hand.
    for dots in [".", ".."] {
        let path = format!("/1.5/19/storage/{dots}");
        let auth = c.authorization("GET", &path, common::now());
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            s.addr
        );
        assert!(
            common::raw_http(&s.addr, &req)
                .await
                .starts_with("HTTP/1.1 400"),
            "{dots}"
        );
    }
    for bad in [
        "/storage/a%2Fb",
        &format!("/storage/{}", "c".repeat(33)),
        "/storage/bad%20name",
    ] {
        assert_eq!(c.get(bad).await.status, 400, "{bad}");
    }
    assert_eq!(
        c.raw("GET", "/1.5/abc/info/collections", &[], None, false)
            .await
            .status,
        404
    );
    assert_eq!(
        c.raw(
            "GET",
            "/1.5/99999999999999999999/info/collections",
            &[],
            None,
            false
        )
        .await
        .status,
        404
    );
    // Ids with URL-encoded characters round-trip.
    let r = c
        .put("/storage/col/a%2Fb%3Fc%20d", &json!({"payload": "x"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.get("/storage/col").await.json(), json!(["a/b?c d"]));
    assert_eq!(
        c.get("/storage/col/a%2Fb%3Fc%20d").await.json()["id"],
        "a/b?c d"
    );
    // Unknown parameters are ignored; bad values of known ones are not.
    assert_eq!(c.get("/storage/col?blabla=1").await.status, 200);
    for q in [
        "newer=abc",
        "older=-1",
        "limit=x",
        "offset=%%%",
        "sort=random",
    ] {
        assert_eq!(c.get(&format!("/storage/col?{q}")).await.status, 400, "{q}");
    }
}

#[tokio::test]
async fn unauthenticated_endpoints_and_cors() {
    let s = Server::start(&[]);
    let c = s.client(20);
    for path in ["/__heartbeat__", "/__lbheartbeat__", "/__version__"] {
        let r = c.raw("GET", path, &[], None, false).await;
        assert_eq!(r.status, 200, "{path}");
        r.json();
    }
    assert_eq!(
        c.raw("GET", "/__version__", &[], None, false).await.json()["name"],
        "syncstore"
    );
    let r = c
        .raw(
            "OPTIONS",
            "/1.5/20/storage/col",
            &[
                ("origin", "https://example.com"),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "authorization,x-if-unmodified-since",
                ),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://example.com")
    );
    assert!(
        r.header("vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-if-unmodified-since"));
    let r = c
        .get_h("/info/collections", &[("origin", "https://example.com")])
        .await;
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-last-modified") && exposed.contains("x-weave-next-offset"));
}

#[tokio::test]
async fn users_are_isolated_in_their_own_files() {
    let s = Server::start(&[]);
    let a = s.client(1001);
    let b = s.client(2002);
    a.put("/storage/col/secret", &json!({"payload": "alice"}))
        .await;
    assert_eq!(b.get("/storage/col").await.json(), json!([]));
    assert_eq!(b.get("/storage/col/secret").await.status, 404);
    assert_eq!(b.get("/info/collections").await.json(), json!({}));
    b.delete("/storage").await;
    assert_eq!(
        a.get("/storage/col/secret").await.json()["payload"],
        "alice"
    );
    // A's token cannot be used on B's URLs.
    let r = a
        .raw("GET", "/1.5/2002/info/collections", &[], None, true)
        .await;
    assert_eq!(r.status, 401);
    assert!(s.data.path().join("users/001/1001.sqlite").exists());
    assert!(s.data.path().join("users/002/2002.sqlite").exists());
}

#[tokio::test]
async fn hostile_paths_queries_and_bodies_get_4xx_never_5xx() {
    let s = Server::start(&[]);
    let c = s.client(21);
    c.put("/storage/col/a", &json!({"payload": "x"})).await;
    for path in [
        "/storage/%FF",
        "/storage/col/%FF%FE",
        "/storage/col?ids=%FF",
        "/storage/col?newer=%",
        "/storage/col?limit=99999999999999999999",
        "/storage/col?newer=99999999999999999999",
        "/storage/col?offset=",
        "/storage//x",
        "/storage/col/%00",
        "/info/collections/extra",
    ] {
        let r = c.get(path).await;
        let ok_listing = path == "/storage/col?ids=%FF"; // an id that matches nothing
        assert!(
            r.status.is_client_error() || ok_listing,
            "{path}: {}",
            r.status
        );
        assert!(r.status.as_u16() < 500, "{path}: {}", r.status);
    }
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    for (ct, body) in [
        ("application/json", deep.clone().into_bytes()),
        ("application/json", vec![0xff, 0xfe, 0x00]),
        ("application/json", b"".to_vec()),
        ("application/newlines", b"\n\n".to_vec()),
        (
            "application/json",
            br#"[{"id": "\ud800", "payload": "x"}]"#.to_vec(),
        ),
    ] {
        let r = c.send("POST", "/storage/col", &[], Some((ct, body))).await;
        assert!(r.status.as_u16() < 500, "{ct}: {} {}", r.status, r.text);
    }
    let r = c
        .send(
            "PUT",
            "/storage/col/a",
            &[],
            Some(("application/json", deep.into_bytes())),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/storage/col/a").await.json()["payload"], "x");
}

/// Every write answers the body Mozilla's servers send, because Firefox reads it:
/// PUT, DELETE of a collection and DELETE of everything the bare timestamp, DELETE of
/// one record `{"modified": ts}`, POST `{"modified", "success", "failed"}`. The body
/// text equals `X-Last-Modified` exactly (two decimals), and Firefox's use of a PUT's
/// body as the next `X-If-Unmodified-Since` works.
#[tokio::test]
async fn write_bodies_have_the_json_types_firefox_reads() {
    let s = Server::start(&[]);
    let c = s.client(31);
    let bare = |r: &common::Resp, what: &str| {
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        assert!(r.json().is_f64() || r.json().is_u64(), "{what}: {}", r.text);
        assert_eq!(r.text, r.header("x-last-modified").unwrap(), "{what}");
        assert_eq!(r.text, r.header("x-weave-timestamp").unwrap(), "{what}");
    };

    // Firefox's meta/global dance: create with X-If-Unmodified-Since: 0, then send the
    // PUT's body back as X-If-Unmodified-Since when it adds its engines.
    let r = c
        .put_h(
            "/storage/meta/global",
            &json!({"payload": "{\"syncID\":\"a\"}"}),
            &[("x-if-unmodified-since", "0")],
        )
        .await;
    bare(&r, "PUT");
    let r = c
        .put_h(
            "/storage/meta/global",
            &json!({"payload": "{\"syncID\":\"a\",\"engines\":{}}"}),
            &[("x-if-unmodified-since", &r.text)],
        )
        .await;
    bare(&r, "PUT with the last PUT's body as X-If-Unmodified-Since");
    let got = c.get("/storage/meta/global").await.json();
    assert_eq!(got["payload"], json!("{\"syncID\":\"a\",\"engines\":{}}"));

    let r = c.post("/storage/tabs", &bsos(3)).await;
    assert_eq!(r.status, 200);
    let body = r.json();
    let keys: Vec<&String> = body.as_object().expect("POST: an object").keys().collect();
    assert_eq!(keys, ["failed", "modified", "success"]);
    assert!(body["modified"].is_number() && body["success"].is_array());
    assert!(body["failed"].is_object());

    let r = c.delete("/storage/tabs/0").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body.as_object().expect("record DELETE: an object").len(), 1);
    assert_eq!(ts_value(&body["modified"]), r.ts("x-last-modified"));

    bare(&c.delete("/storage/tabs?ids=1").await, "DELETE ids");
    bare(&c.delete("/storage/tabs").await, "DELETE collection");
    bare(&c.delete("/storage").await, "DELETE storage");
    bare(&c.delete("").await, "DELETE /1.5/{uid}");
}

/// In `crypto` only, a key record whose payload has an all-zero IV is refused with 400
/// (on PUT, POST and every batch step) and nothing is written; elsewhere it is data.
#[tokio::test]
async fn crypto_records_with_an_all_zero_iv_are_refused() {
    let s = Server::start(&[]);
    let c = s.client(32);
    let zero = |sep: &str| {
        json!({"payload": format!(
            "{{\"ciphertext\":\"abc\",\"IV\":{sep}\"AAAAAAAAAAAAAAAAAAAAAA==\",\"hmac\":\"00\"}}"
        )})
    };
    let good = json!({"payload": "{\"ciphertext\":\"abc\",\"IV\":\"AAAAAAAAAAAAAAAAAAAAAQ==\",\"hmac\":\"00\"}"});
    for sep in ["", " ", "  \t"] {
        let r = c.put("/storage/crypto/keys", &zero(sep)).await;
        assert_eq!(
            (r.status.as_u16(), r.json()),
            (400, json!(8)),
            "PUT, separator {sep:?}"
        );
    }
    let mut rec = zero(" ");
    rec["id"] = json!("keys");
    let batch = json!([rec]);
    for q in ["", "?batch=true", "?batch=true&commit=true"] {
        let r = c.post(&format!("/storage/crypto{q}"), &batch).await;
        assert_eq!((r.status.as_u16(), r.json()), (400, json!(8)), "POST {q}");
    }
    // A batch already open refuses it on append and on commit.
    let id = c
        .post(
            "/storage/crypto?batch=true",
            &json!([{"id": "other", "payload": "x"}]),
        )
        .await
        .json()["batch"]
        .as_str()
        .unwrap()
        .to_string();
    for q in [format!("?batch={id}"), format!("?batch={id}&commit=true")] {
        let r = c.post(&format!("/storage/crypto{q}"), &batch).await;
        assert_eq!(r.status, 400, "POST {q}");
    }
    assert_eq!(c.get("/storage/crypto").await.json(), json!([]));
    // A sound IV is accepted, and an all-zero IV elsewhere is just data.
    assert_eq!(c.put("/storage/crypto/keys", &good).await.status, 200);
    assert_eq!(c.put("/storage/bookmarks/x", &zero(" ")).await.status, 200);
    let r = c.post("/storage/forms", &batch).await;
    assert_eq!(
        (r.status.as_u16(), &r.json()["success"]),
        (200, &json!(["keys"]))
    );
}

/// Batch commit bodies are judged by their content type, as Mozilla's nodes do:
/// JSON takes `[]` and refuses an empty body and `{}`; newlines takes an empty body and
/// refuses a lone newline, `{}` and `[]`.
#[tokio::test]
async fn batch_commit_bodies_follow_their_content_type() {
    let s = Server::start(&[]);
    let c = s.client(33);
    let cases: [(&str, &str, u16); 7] = [
        ("application/json", "[]", 200),
        ("application/json", "", 400),
        ("application/json", "{}", 400),
        ("application/newlines", "", 200),
        ("application/newlines", "\n", 400),
        ("application/newlines", "{}", 400),
        ("application/newlines", "[]", 400),
    ];
    for (i, (ctype, body, want)) in cases.into_iter().enumerate() {
        let coll = format!("/storage/c{i}");
        let r = c
            .post(
                &format!("{coll}?batch=true"),
                &json!([{"id": "a", "payload": "x"}]),
            )
            .await;
        assert_eq!(r.status, 202);
        let id = r.json()["batch"].as_str().unwrap().to_string();
        let r = c
            .send(
                "POST",
                &format!("{coll}?batch={id}&commit=true"),
                &[],
                Some((ctype, body.as_bytes().to_vec())),
            )
            .await;
        assert_eq!(r.status, want, "{ctype} {body:?}: {}", r.text);
        if want == 200 {
            let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, ["failed", "modified", "success"]);
            assert_eq!(c.get(&coll).await.json(), json!(["a"]));
        } else {
            assert!(r.json().is_number(), "{}", r.text);
            assert_eq!(c.get(&coll).await.json(), json!([]));
        }
    }
}

/// An operator can raise or lower limits for named collections; info/configuration
/// keeps publishing the server-wide ones.
#[tokio::test]
async fn collections_can_have_their_own_limits() {
    let s = Server::start(&[
        ("SYNCSTORE_MAX_RECORD_PAYLOAD_BYTES", "600"),
        ("SYNCSTORE_MAX_REQUEST_BYTES", "2000"),
        (
            "SYNCSTORE_COLLECTION_LIMITS",
            "bookmarks.max_record_payload_bytes=3000,bookmarks.max_request_bytes=8000,\
             tabs.max_post_bytes=100",
        ),
    ]);
    let c = s.client(34);
    let config = c.get("/info/configuration").await.json();
    assert_eq!(config["max_record_payload_bytes"], json!(600));
    assert_eq!(config["max_request_bytes"], json!(2000));
    let big = json!({"payload": "x".repeat(2500)});
    // Raised for bookmarks: both the record and the request limit.
    assert_eq!(c.put("/storage/bookmarks/a", &big).await.status, 200);
    // Elsewhere the defaults hold: the body passes max_request_bytes (413).
    assert_eq!(c.put("/storage/history/a", &big).await.status, 413);
    let r = c
        .put("/storage/history/a", &json!({"payload": "x".repeat(700)}))
        .await;
    assert_eq!((r.status.as_u16(), r.json()), (400, json!(17)));
    // Lowered for tabs: the second 60-byte record passes max_post_bytes there.
    let two = json!([
        {"id": "t1", "payload": "y".repeat(60)},
        {"id": "t2", "payload": "y".repeat(60)}
    ]);
    let r = c.post("/storage/tabs", &two).await.json();
    assert_eq!(
        (r["success"].clone(), r["failed"].clone()),
        (json!(["t1"]), json!({"t2": "retry bytes"}))
    );
    let r = c.post("/storage/forms", &two).await.json();
    assert_eq!(r["success"], json!(["t1", "t2"]));
}

/// CORS echoes the request's origin (never `*`) on preflights and ordinary responses,
/// health checks included; with a configured list, other origins get no CORS headers.
#[tokio::test]
async fn cors_echoes_allowed_origins_only() {
    let s = Server::start(&[(
        "SYNCSTORE_CORS_ALLOWED_ORIGINS",
        "https://good.example, https://also.example",
    )]);
    let c = s.client(35);
    let preflight = |origin: &'static str| {
        let c = &c;
        async move {
            c.raw(
                "OPTIONS",
                "/1.5/35/storage/col",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                None,
                false,
            )
            .await
        }
    };
    let acao = |r: &common::Resp| r.header("access-control-allow-origin");
    let r = preflight("https://also.example").await;
    assert_eq!(acao(&r).as_deref(), Some("https://also.example"));
    assert!(
        r.header("vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")
    );
    assert_eq!(acao(&preflight("https://evil.example").await), None);
    for path in ["/__heartbeat__", "/__lbheartbeat__"] {
        let r = c
            .raw(
                "GET",
                path,
                &[("origin", "https://good.example")],
                None,
                false,
            )
            .await;
        assert_eq!(acao(&r).as_deref(), Some("https://good.example"), "{path}");
        let r = c
            .raw(
                "GET",
                path,
                &[("origin", "https://evil.example")],
                None,
                false,
            )
            .await;
        assert_eq!((r.status.as_u16(), acao(&r)), (200, None), "{path}");
    }
    let r = c
        .get_h("/info/collections", &[("origin", "https://good.example")])
        .await;
    assert_eq!(
        (r.status.as_u16(), acao(&r).as_deref()),
        (200, Some("https://good.example"))
    );
    // Without a list, any origin is echoed back.
    let open = Server::start(&[]);
    let r = open
        .client(36)
        .raw(
            "GET",
            "/__lbheartbeat__",
            &[("origin", "https://any.example")],
            None,
            false,
        )
        .await;
    assert_eq!(acao(&r).as_deref(), Some("https://any.example"));
}
