//! Many clients at once: one user's devices writing together, and many users in
//! parallel. Every acknowledged write must be stored; no 5xx but 503.

mod common;

use std::collections::BTreeSet;

use common::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let s = Server::start(&[("SYNCSTORE_MAX_OPEN_USERS", "50")]);
    let mut tasks = Vec::new();
    // 8 devices of one user, 25 writes each.
    for device in 0..8 {
        let c = s.client(1);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let id = format!("d{device}-{i}");
                let r = c
                    .put(&format!("/storage/history/{id}"), &json!({"payload": id}))
                    .await;
                assert!(
                    r.status == 200 || r.status == 503,
                    "{}: {}",
                    r.status,
                    r.text
                );
                if r.status == 200 {
                    acked.push((1u64, id));
                }
            }
            acked
        }));
    }
    // 120 other users, 3 posts of 5 records each (more users than the open-file LRU holds).
    for uid in 100..220u64 {
        let c = s.client(uid);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..3 {
                let body: Vec<_> = (0..5)
                    .map(|i| json!({"id": format!("r{round}-{i}"), "payload": "x"}))
                    .collect();
                let r = c
                    .post("/storage/tabs", &serde_json::Value::Array(body))
                    .await;
                assert!(
                    r.status == 200 || r.status == 503,
                    "{}: {}",
                    r.status,
                    r.text
                );
                if r.status == 200 {
                    for id in r.json()["success"].as_array().unwrap() {
                        acked.push((uid, id.as_str().unwrap().to_string()));
                    }
                }
            }
            acked
        }));
    }
    let mut acked: BTreeSet<(u64, String)> = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 1000,
        "most writes should succeed: {}",
        acked.len()
    );
    // Everything acknowledged is there, per user.
    let mut stored: BTreeSet<(u64, String)> = BTreeSet::new();
    for uid in std::iter::once(1).chain(100..220) {
        let c = s.client(uid);
        let coll = if uid == 1 { "history" } else { "tabs" };
        let r = c.get(&format!("/storage/{coll}")).await;
        assert_eq!(r.status, 200);
        for id in r.json().as_array().unwrap() {
            stored.insert((uid, id.as_str().unwrap().to_string()));
        }
    }
    assert!(acked.is_subset(&stored), "acknowledged writes missing");
    // Timestamps of the shared user are unique (one per write).
    let full = s.client(1).get("/storage/history?full=1").await.json();
    let times: BTreeSet<String> = full
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["modified"].to_string())
        .collect();
    assert_eq!(times.len(), full.as_array().unwrap().len());
}
