//! FxA's delete-user event in a cluster (issue 21, item 10): a tokenserver process and
//! two storage nodes sharing a real PostgreSQL (started by `scripts/test`). The
//! tokenserver retires the user and has the node holding the data delete it, over the
//! signed internal request.

use crate::common::{self, Client, Server, cli, fresh_database, now};
use serde_json::{Value, json};

const ISSUER: &str = common::TEST_ISSUER;
const CLIENT_ID: &str = "5882386c6d801776";
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

fn sign(claims: &Value, typ: &str) -> String {
    common::sign_test_jwt(claims, "test-key-1", typ)
}

async fn sign_in(ts: &Server, sub: &str) -> Value {
    let bearer = sign(
        &json!({"sub": sub, "scope": OLDSYNC, "iss": ISSUER, "iat": now(), "exp": now() + 3600}),
        "at+jwt",
    );
    let auth = format!("Bearer {bearer}");
    let r = ts
        .client(0)
        .raw(
            "GET",
            "/1.0/sync/1.5",
            &[("authorization", &auth), ("x-keyid", "1-qg")],
            None,
            false,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn has_files(dir: &std::path::Path, uid: u64) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{uid}."))
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_user_deletes_the_data_on_the_node_that_holds_it() {
    let db = fresh_database().await;
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fxa-test-jwks.json"
    );
    let base = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ];
    let nodes: Vec<Server> = (0..2)
        .map(|_| {
            let mut e = base.to_vec();
            e.push(("SYNCSTORE_ROLE", "storage"));
            Server::start(&e)
        })
        .collect();
    for node in &nodes {
        cli(&db, &["node", "add", &node.url(), "--capacity", "100"]);
    }
    let mut e = base.to_vec();
    e.extend([
        ("SYNCSTORE_ROLE", "tokenserver"),
        ("SYNCSTORE_FXA_JWKS", jwks),
        ("SYNCSTORE_FXA_ISSUER", ISSUER),
        ("SYNCSTORE_FXA_EVENTS_CLIENT_ID", CLIENT_ID),
    ]);
    let ts = Server::start(&e);

    let t = sign_in(&ts, "fxa-cluster-leaving").await;
    let endpoint = t["api_endpoint"].as_str().unwrap();
    let node = nodes
        .iter()
        .find(|n| endpoint.starts_with(&n.url()))
        .expect("a known node");
    let uid = t["uid"].as_u64().unwrap();
    let c = Client::with_token(
        node,
        uid,
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    let put = c
        .put("/storage/bookmarks/b1", &json!({"payload": "secret"}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert!(has_files(node.data.path(), uid));

    let set = sign(
        &json!({
            "iss": ISSUER, "aud": CLIENT_ID, "sub": "fxa-cluster-leaving", "iat": now(),
            "jti": "cluster-delete-1",
            "events": {"https://schemas.accounts.firefox.com/event/delete-user": {}},
        }),
        "secevent+jwt",
    );
    let auth = format!("Bearer {set}");
    let r = ts
        .client(0)
        .raw(
            "POST",
            "/1.0/webhooks/fxa/events",
            &[("authorization", &auth)],
            None,
            false,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!has_files(node.data.path(), uid), "the data is gone");
    assert_eq!(c.get("/storage/bookmarks/b1").await.status, 401);
    let next = sign_in(&ts, "fxa-cluster-leaving").await;
    assert_ne!(next["uid"].as_u64().unwrap(), uid);
}
