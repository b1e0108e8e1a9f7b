//! Many clients at once: one user's devices writing together, and many users in
//! parallel. Every acknowledged write must be stored; no 5xx but 503.

use std::collections::BTreeSet;

use crate::common::{Server, ts_value};
use serde_json::json;

type Acked = Vec<(u64, String)>;

/// 16 devices × 50 PUTs on user 1, while 200 other users post 2 × 5 records each.
async fn hammer(s: &Server) -> (Acked, usize) {
    let mut tasks = Vec::new();
    for device in 0..16 {
        let c = s.client(1);
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut busy) = (Vec::new(), 0);
            for i in 0..50 {
                let id = format!("d{device}-{i}");
                let r = c
                    .put(&format!("/storage/history/{id}"), &json!({"payload": id}))
                    .await;
                match r.status.as_u16() {
                    200 => acked.push((1u64, id)),
                    503 => {
                        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                        busy += 1;
                    }
                    other => panic!("{other}: {}", r.text),
                }
            }
            (acked, busy)
        }));
    }
    for uid in 100..300u64 {
        let c = s.client(uid);
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut busy) = (Vec::new(), 0);
            for round in 0..2 {
                let body: Vec<_> = (0..5)
                    .map(|i| json!({"id": format!("r{round}-{i}"), "payload": "x"}))
                    .collect();
                let r = c
                    .post("/storage/tabs", &serde_json::Value::Array(body))
                    .await;
                match r.status.as_u16() {
                    200 => acked.extend(
                        r.json()["success"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|id| (uid, id.as_str().unwrap().to_string())),
                    ),
                    503 => busy += 1,
                    other => panic!("{other}: {}", r.text),
                }
            }
            (acked, busy)
        }));
    }
    let (mut acked, mut busy) = (Vec::new(), 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        acked.extend(a);
        busy += b;
    }
    (acked, busy)
}

async fn stored(s: &Server) -> BTreeSet<(u64, String)> {
    let mut out = BTreeSet::new();
    for uid in std::iter::once(1).chain(100..300) {
        let coll = if uid == 1 { "history" } else { "tabs" };
        let r = s.client(uid).get(&format!("/storage/{coll}")).await;
        assert_eq!(r.status, 200);
        out.extend(
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|id| (uid, id.as_str().unwrap().to_string())),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let s = Server::start(&[("SYNCSTORE_MAX_OPEN_USERS", "64")]);
    let (acked, busy) = hammer(&s).await;
    let acked_set: BTreeSet<_> = acked.iter().cloned().collect();
    assert_eq!(acked_set.len(), acked.len());
    // With the default lock timeout nothing should even have to wait that long.
    assert_eq!(busy, 0);
    assert_eq!(acked.len(), 16 * 50 + 200 * 10);
    assert_eq!(
        stored(&s).await,
        acked_set,
        "stored records = acknowledged records"
    );
    // Every write of the shared user got its own, strictly increasing timestamp.
    let full = s.client(1).get("/storage/history?full=1").await.json();
    let times: BTreeSet<i64> = full
        .as_array()
        .unwrap()
        .iter()
        .map(|b| ts_value(&b["modified"]))
        .collect();
    assert_eq!(times.len(), 16 * 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_cannot_get_the_lock_in_time_gets_503_and_changes_nothing() {
    let s = Server::start(&[("SYNCSTORE_LOCK_TIMEOUT_MS", "0")]);
    let (acked, busy) = hammer(&s).await;
    assert!(
        busy > 0,
        "a zero lock timeout under contention must produce 503s"
    );
    let acked_set: BTreeSet<_> = acked.into_iter().collect();
    assert_eq!(
        stored(&s).await,
        acked_set,
        "exactly the acknowledged writes are stored"
    );
}
