//! The shared-PostgreSQL deployment: several tokenserver processes and a storage node
//! using one real PostgreSQL database (started by `scripts/test`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Client, Server, cli, fake_verifier, fresh_database, sign_in};
use serde_json::json;

struct Cluster {
    storage: Server,
    tokenservers: Vec<Arc<Server>>,
    db: String,
}

async fn cluster() -> Cluster {
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let shared = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ];
    let with_role = |role: &'static str| {
        let mut env = shared.to_vec();
        env.push(("SYNCSTORE_ROLE", role));
        env
    };
    let storage = Server::start(&with_role("storage"));
    cli(&db, &["node", "add", &storage.url(), "--capacity", "1000"]);
    let tokenservers = (0..2)
        .map(|_| Arc::new(Server::start(&with_role("tokenserver"))))
        .collect();
    Cluster {
        storage,
        tokenservers,
        db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokenservers_share_assignments_in_postgres() {
    let c = cluster().await;
    // 60 users sign in through either tokenserver, concurrently.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let ts = c.tokenservers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            (i, sign_in(&ts, &format!("pg-user{i}")).await)
        }));
    }
    let mut uids = HashSet::new();
    for t in tasks {
        let (i, answer) = t.await.unwrap();
        assert!(
            answer["api_endpoint"]
                .as_str()
                .unwrap()
                .starts_with(&c.storage.url())
        );
        uids.insert(answer["uid"].as_u64().unwrap());
        // The other tokenserver knows the same assignment.
        let again = sign_in(&c.tokenservers[(i + 1) % 2], &format!("pg-user{i}")).await;
        assert_eq!(again["uid"], answer["uid"]);
    }
    assert_eq!(uids.len(), 60);
    // Tokens from either tokenserver work on the storage node.
    let answer = sign_in(&c.tokenservers[1], "pg-user7").await;
    let client = Client::with_token(
        &c.storage,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    );
    assert_eq!(
        client
            .put("/storage/tabs/t", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    let list = cli(&c.db, &["node", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&c.storage.url()))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("60"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_sign_ins_across_tokenservers_make_one_uid() {
    let c = cluster().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let ts = c.tokenservers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            sign_in(&ts, "racer").await["uid"].as_u64().unwrap()
        }));
    }
    let mut uids = HashSet::new();
    for t in tasks {
        uids.insert(t.await.unwrap());
    }
    assert_eq!(uids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_and_moves_work_through_postgres() {
    let c = cluster().await;
    let other = "http://other-node.test";
    cli(&c.db, &["node", "add", other, "--capacity", "1000"]);
    cli(&c.db, &["rollout", "set", other, "30"]);
    let mut on_other = 0;
    for i in 0..300 {
        let a = sign_in(&c.tokenservers[i % 2], &format!("roll{i}")).await;
        let expected = syncstore::tokenserver::rollout::bucket(&format!("roll{i}")) < 3000;
        assert_eq!(
            a["api_endpoint"].as_str().unwrap().starts_with(other),
            expected
        );
        on_other += expected as usize;
    }
    assert!((60..=120).contains(&on_other), "30% of 300: {on_other}");

    // A user on the storage node is moved when it drains; the node then refuses the
    // old token (it reads the shared database).
    let before = (0..300)
        .map(|i| format!("roll{i}"))
        .find(|u| syncstore::tokenserver::rollout::bucket(u) >= 3000)
        .unwrap();
    let answer = sign_in(&c.tokenservers[0], &before).await;
    let old = Client::with_token(
        &c.storage,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    );
    assert_eq!(old.get("/info/collections").await.status, 200);
    cli(&c.db, &["rollout", "set", other, "100"]);
    cli(&c.db, &["node", "drain", &c.storage.url()]);
    let moved = sign_in(&c.tokenservers[1], &before).await;
    assert!(moved["api_endpoint"].as_str().unwrap().starts_with(other));
    assert_eq!(old.get("/info/collections").await.status, 401);
}
