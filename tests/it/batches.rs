//! Black-box tests of atomic batch uploads.

use std::time::Duration;

use crate::common::{self, Server, ts_value};
use serde_json::{Value, json};

fn records(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("{prefix}{i}"), "payload": format!("{prefix}-payload-{i}")}))
            .collect(),
    )
}

fn batch_id(r: &common::Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.text);
    r.json()["batch"].as_str().expect("batch id").to_string()
}

#[tokio::test]
async fn a_batch_is_invisible_until_committed_then_applied_with_one_timestamp() {
    let s = Server::start(&[]);
    let c = s.client(1);
    c.post("/storage/col", &json!([{"id": "old", "payload": "keep"}]))
        .await;
    let r = c.post("/storage/col?batch=true", &records("a", 3)).await;
    let id = batch_id(&r);
    assert_eq!(r.json()["success"].as_array().unwrap().len(), 3);
    assert!(
        id.len() >= 22,
        "batch ids carry at least 128 random bits: {id}"
    );
    for step in 0..4 {
        let r = c
            .post(
                &format!("/storage/col?batch={id}"),
                &records(&format!("s{step}-"), 25),
            )
            .await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["batch"], id.as_str());
    }
    // Nothing of the batch is visible yet.
    assert_eq!(c.get("/storage/col").await.json(), json!(["old"]));
    assert_eq!(
        c.get("/info/collection_counts").await.json(),
        json!({"col": 1})
    );

    let r = c
        .post(
            &format!("/storage/col?batch={id}&commit=true"),
            &records("z", 2),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let modified = ts_value(&body["modified"]);
    assert_eq!(r.ts("x-last-modified"), modified);
    assert_eq!(r.ts("x-weave-timestamp"), modified);
    assert_eq!(body["success"], json!(["z0", "z1"]));
    assert!(body.get("batch").is_none());

    let all = c.get("/storage/col?full=1").await.json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1 + 3 + 4 * 25 + 2);
    for b in all.iter().filter(|b| b["id"] != "old") {
        assert_eq!(
            ts_value(&b["modified"]),
            modified,
            "one timestamp for the whole batch"
        );
        let id = b["id"].as_str().unwrap();
        assert!(
            b["payload"]
                .as_str()
                .unwrap()
                .ends_with(&id[id.len() - 1..])
        );
    }
    let info = c.get("/info/collections").await.json();
    assert_eq!(ts_value(&info["col"]), modified);
    // A committed batch is gone.
    let r = c
        .post(&format!("/storage/col?batch={id}"), &records("late", 1))
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .post(&format!("/storage/col?batch={id}&commit=true"), &json!([]))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn one_shot_and_empty_batches() {
    let s = Server::start(&[]);
    let c = s.client(2);
    let r = c
        .post("/storage/col?batch=true&commit=true", &records("x", 4))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        c.get("/storage/col").await.json().as_array().unwrap().len(),
        4
    );
    let id = batch_id(&c.post("/storage/empty?batch=true", &json!([])).await);
    let r = c
        .post(
            &format!("/storage/empty?batch={id}&commit=true"),
            &json!([]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        c.get("/info/collections")
            .await
            .json()
            .get("empty")
            .is_none()
    );
}

#[tokio::test]
async fn bad_batch_ids_and_parameters_are_refused() {
    let s = Server::start(&[]);
    let a = s.client(3);
    let b = s.client(4);
    let id = batch_id(&a.post("/storage/col?batch=true", &records("a", 1)).await);
    for q in [
        "batch=sammich&commit=true",
        "batch=nope",
        "commit=true",
        "batch=true&commit=maybe",
        "batch=a%20b",
    ] {
        let r = a.post(&format!("/storage/col?{q}"), &records("q", 1)).await;
        assert_eq!(r.status, 400, "{q}");
    }
    // Bound to its collection and its user.
    assert_eq!(
        a.post(&format!("/storage/other?batch={id}"), &records("o", 1))
            .await
            .status,
        400
    );
    let r = b
        .post(
            &format!("/storage/col?batch={id}&commit=true"),
            &records("evil", 1),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(b.get("/storage/col").await.json(), json!([]));
    // The owner can still commit it, untouched by the others' attempts.
    let r = a
        .post(&format!("/storage/col?batch={id}&commit=true"), &json!([]))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.get("/storage/col").await.json(), json!(["a0"]));
}

#[tokio::test]
async fn batches_expire() {
    let s = Server::start(&[("SYNCSTORE_BATCH_TTL_SECS", "1")]);
    let c = s.client(5);
    let id = batch_id(&c.post("/storage/col?batch=true", &records("a", 2)).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = c
        .post(&format!("/storage/col?batch={id}&commit=true"), &json!([]))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/storage/col").await.json(), json!([]));
}

#[tokio::test]
async fn if_unmodified_since_is_checked_on_every_step() {
    let s = Server::start(&[]);
    let c = s.client(6);
    let ts = c
        .post("/storage/col", &records("base", 1))
        .await
        .header("x-last-modified")
        .unwrap();
    let iu = [("x-if-unmodified-since", ts.as_str())];
    let id = batch_id(
        &c.post_h("/storage/col?batch=true", &records("a", 1), &iu)
            .await,
    );
    assert_eq!(
        c.post_h(&format!("/storage/col?batch={id}"), &records("b", 1), &iu)
            .await
            .status,
        202
    );
    // Another device writes to the collection meanwhile.
    c.put("/storage/col/intruder", &json!({"payload": "x"}))
        .await;
    assert_eq!(
        c.post_h(&format!("/storage/col?batch={id}"), &records("c", 1), &iu)
            .await
            .status,
        412
    );
    let r = c
        .post_h(
            &format!("/storage/col?batch={id}&commit=true"),
            &json!([]),
            &iu,
        )
        .await;
    assert_eq!(r.status, 412);
    let mut ids: Vec<String> = serde_json::from_value(c.get("/storage/col").await.json()).unwrap();
    ids.sort();
    assert_eq!(
        ids,
        ["base0", "intruder"],
        "nothing of the batch was applied"
    );
    let old = [("x-if-unmodified-since", ts.as_str())];
    assert_eq!(
        c.post_h("/storage/col?batch=true", &records("n", 1), &old)
            .await
            .status,
        412
    );
}

#[tokio::test]
async fn ttls_count_from_the_commit() {
    let s = Server::start(&[]);
    let c = s.client(7);
    let body = json!([{"id": "t", "payload": "x", "ttl": 1}]);
    let id = batch_id(&c.post("/storage/col?batch=true", &body).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        c.post(&format!("/storage/col?batch={id}&commit=true"), &json!([]))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/storage/col").await.json(),
        json!(["t"]),
        "alive right after commit"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.get("/storage/col").await.json(), json!([]));
}

#[tokio::test]
async fn batch_and_post_limits() {
    let s = Server::start(&[
        ("SYNCSTORE_MAX_TOTAL_RECORDS", "5"),
        ("SYNCSTORE_MAX_TOTAL_BYTES", "2000"),
        ("SYNCSTORE_MAX_POST_RECORDS", "3"),
    ]);
    let c = s.client(8);
    let r = c.post("/storage/col?batch=true", &records("a", 4)).await;
    let id = batch_id(&r);
    assert_eq!(r.json()["success"].as_array().unwrap().len(), 3);
    assert_eq!(r.json()["failed"].as_object().unwrap().len(), 1);
    let r = c
        .post(&format!("/storage/col?batch={id}"), &records("b", 3))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (400, json!(17)),
        "6 records > max_total_records"
    );
    let r = c
        .post(
            &format!("/storage/col?batch={id}"),
            &json!([{"id": "big", "payload": "x".repeat(2100)}]),
        )
        .await;
    assert_eq!(r.status, 400, "bytes over max_total_bytes");
    // Announced totals.
    let r = c
        .post_h(
            "/storage/col?batch=true",
            &records("h", 1),
            &[("x-weave-total-records", "6")],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .post_h(
            "/storage/col?batch=true",
            &records("h", 1),
            &[("x-weave-total-bytes", "2001")],
        )
        .await;
    assert_eq!(r.status, 400);
    // The batch still holds what was accepted, and commits.
    let r = c
        .post(&format!("/storage/col?batch={id}&commit=true"), &json!([]))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get("/storage/col").await.json().as_array().unwrap().len(),
        3
    );
}

#[tokio::test]
async fn two_megabyte_records_survive_a_batch_intact() {
    let s = Server::start(&[]);
    let c = s.client(9);
    let big: String = (0..2 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let id = batch_id(
        &c.post(
            "/storage/col?batch=true",
            &json!([{"id": "big1", "payload": big}]),
        )
        .await,
    );
    let other = format!("{}Z", &big[1..]);
    let r = c
        .post(
            &format!("/storage/col?batch={id}&commit=true"),
            &json!([{"id": "big2", "payload": other}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        c.get("/storage/col/big1").await.json()["payload"]
            .as_str()
            .unwrap(),
        big
    );
    assert_eq!(
        c.get("/storage/col/big2").await.json()["payload"]
            .as_str()
            .unwrap(),
        other
    );
    let usage = c.get("/info/collection_usage").await.json();
    assert!((usage["col"].as_f64().unwrap() - 4096.0).abs() < 1e-9);
}

#[tokio::test]
async fn concurrent_batches_of_one_user_stay_apart() {
    let s = Server::start(&[]);
    let c = s.client(10);
    let a = batch_id(&c.post("/storage/col?batch=true", &records("a", 2)).await);
    let b = batch_id(&c.post("/storage/col?batch=true", &records("b", 2)).await);
    let t = batch_id(&c.post("/storage/tabs?batch=true", &records("t", 2)).await);
    assert!(a != b && b != t);
    // Interleaved appends from two devices, some in parallel.
    let (url_a, url_b) = (
        format!("/storage/col?batch={a}"),
        format!("/storage/col?batch={b}"),
    );
    let (more_a, more_b) = (records("a-more", 3), records("b-more", 3));
    let (r1, r2) = tokio::join!(c.post(&url_a, &more_a), c.post(&url_b, &more_b));
    assert_eq!((r1.status.as_u16(), r2.status.as_u16()), (202, 202));
    // The same id twice in one batch merges field by field.
    c.post(
        &format!("/storage/col?batch={a}"),
        &json!([{"id": "a0", "sortindex": 5}]),
    )
    .await;
    assert_eq!(
        c.post(&format!("/storage/col?batch={b}&commit=true"), &json!([]))
            .await
            .status,
        200
    );
    let mut got: Vec<String> = serde_json::from_value(c.get("/storage/col").await.json()).unwrap();
    got.sort();
    assert_eq!(got, ["b-more0", "b-more1", "b-more2", "b0", "b1"]);
    assert_eq!(
        c.post(&format!("/storage/col?batch={a}&commit=true"), &json!([]))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/storage/col").await.json().as_array().unwrap().len(),
        10
    );
    let a0 = c.get("/storage/col/a0").await.json();
    assert_eq!(
        (
            a0["payload"].as_str().unwrap(),
            a0["sortindex"].as_i64().unwrap()
        ),
        ("a-payload-0", 5)
    );
    assert_eq!(
        c.post(&format!("/storage/tabs?batch={t}&commit=true"), &json!([]))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/storage/tabs")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
