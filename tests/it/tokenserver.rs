//! End-to-end tests of the tokenserver: FxA OAuth tokens in, storage tokens out, over
//! real HTTP, with node assignment, key-change rules and rollout.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{self, Client, Resp, Server, jwt_server, key_id};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use syncstore::tokenserver::rollout::bucket;

const ISSUER: &str = common::TEST_ISSUER;
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

fn now() -> i64 {
    common::now()
}

/// An FxA access token as FxA would issue it, signed with the test key.
fn jwt(sub: &str, generation: Option<i64>, scope: &str, exp_in: i64, iss: &str) -> String {
    let mut claims = json!({
        "sub": sub, "scope": scope, "iss": iss, "iat": now(), "exp": now() + exp_in,
        "client_id": "5882386c6d801776",
    });
    if let Some(g) = generation {
        claims["fxa-generation"] = json!(g);
    }
    common::sign_test_jwt(&claims, "test-key-1", "at+jwt")
}

fn good_jwt(sub: &str) -> String {
    jwt(sub, Some(1), &format!("profile {OLDSYNC}"), 3600, ISSUER)
}

async fn token_request(s: &Server, bearer: Option<&str>, key_id: Option<&str>) -> Resp {
    let c = s.client(0);
    let mut headers = Vec::new();
    let auth = bearer.map(|b| format!("Bearer {b}"));
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if let Some(k) = key_id {
        headers.push(("x-keyid", k));
    }
    c.raw("GET", "/1.0/sync/1.5", &headers, None, false).await
}

/// A storage client from a tokenserver answer (the node is this same server).
fn storage_client(s: &Server, answer: &Value) -> Client {
    Client::with_token(
        s,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    )
}

fn syncstore_cli(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncstore"));
    cmd.args(args).arg("--data-dir").arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn oauth_token_to_storage_end_to_end() {
    let s = jwt_server(&[]);
    let r = token_request(
        &s,
        Some(&good_jwt("fxa-alice")),
        Some(&key_id(1000, b"\x01\x02")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    assert_eq!(t["hashalg"], "sha256");
    assert_eq!(t["duration"], 3600);
    assert_eq!(t["node_type"], "sqlite");
    assert_eq!(t["hashed_fxa_uid"].as_str().unwrap().len(), 32);
    let uid = t["uid"].as_u64().unwrap();
    assert_eq!(t["api_endpoint"], format!("{}/1.5/{uid}", s.url()));
    assert!(r.header("x-timestamp").is_some());
    // The token carries what Mozilla's tokens carry.
    let v =
        syncstore::auth::token::verify_token(&[common::SECRET.into()], t["id"].as_str().unwrap())
            .unwrap();
    assert_eq!(v.payload.fxa_uid.as_deref(), Some("fxa-alice"));
    assert_eq!(v.payload.fxa_kid.as_deref(), Some("0000000001000-AQI"));
    assert_eq!(v.payload.node, s.url());
    // Hawk-signed storage requests on the assigned node work.
    let c = storage_client(&s, &t);
    assert_eq!(
        c.put("/storage/meta/global", &json!({"payload": "hello"}))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/storage/meta/global").await.json()["payload"],
        "hello"
    );
    // Sticky: the same user gets the same uid again.
    let again = token_request(
        &s,
        Some(&good_jwt("fxa-alice")),
        Some(&key_id(1000, b"\x01\x02")),
    )
    .await;
    assert_eq!(again.json()["uid"].as_u64(), Some(uid));
    // The self-registered node is listed by the CLI.
    let list = syncstore_cli(s.data.path(), &["node", "list"], &[]);
    assert!(list.contains(&s.url()), "{list}");
}

#[tokio::test]
async fn bad_oauth_tokens_and_key_ids_are_refused() {
    let s = jwt_server(&[]);
    let kid = key_id(1000, b"\x01");
    let cases: Vec<(Option<String>, Option<String>, &str)> = vec![
        (None, Some(kid.clone()), "invalid-credentials"),
        (
            Some("not-a-jwt".into()),
            Some(kid.clone()),
            "invalid-credentials",
        ),
        (
            Some(jwt("u", None, "profile", 3600, ISSUER)),
            Some(kid.clone()),
            "invalid-credentials",
        ),
        (
            Some(jwt("u", None, OLDSYNC, -3600, ISSUER)),
            Some(kid.clone()),
            "invalid-credentials",
        ),
        (
            Some(jwt("u", None, OLDSYNC, 3600, "https://evil.test")),
            Some(kid.clone()),
            "invalid-credentials",
        ),
        (Some(good_jwt("u")), None, "invalid-credentials"),
        (
            Some(good_jwt("u")),
            Some("garbage".into()),
            "invalid-credentials",
        ),
    ];
    for (bearer, kid, status) in cases {
        let r = token_request(&s, bearer.as_deref(), kid.as_deref()).await;
        assert_eq!(r.status, 401, "{bearer:?} {kid:?}: {}", r.text);
        assert_eq!(r.json()["status"], status);
        assert!(r.json()["errors"][0]["description"].is_string());
    }
    // A token signed by someone else's key (HS256 with a guessable secret) is refused.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "scope": OLDSYNC, "iss": ISSUER, "exp": now() + 60}),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_eq!(
        token_request(&s, Some(&forged), Some(&key_id(1, b"\x01")))
            .await
            .status,
        401
    );
    // Scopes may be separated by commas too.
    let comma = jwt("v", None, &format!("profile,{OLDSYNC}"), 3600, ISSUER);
    assert_eq!(
        token_request(&s, Some(&comma), Some(&key_id(1, b"\x01")))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn key_changes_and_stale_values() {
    let s = jwt_server(&[]);
    let sign_in = |generation: i64, kca: i64, state: &'static [u8]| {
        let bearer = jwt("fxa-bob", Some(generation), OLDSYNC, 3600, ISSUER);
        let s = &s;
        async move { token_request(s, Some(&bearer), Some(&key_id(kca, state))).await }
    };
    let first = sign_in(5, 1000, b"\xaa").await.json();
    let old = storage_client(&s, &first);
    assert_eq!(
        old.put("/storage/col/a", &json!({"payload": "x"}))
            .await
            .status,
        200
    );

    // A newer generation alone keeps the uid.
    assert_eq!(sign_in(6, 1000, b"\xaa").await.json()["uid"], first["uid"]);
    // Stale values are refused with Mozilla's status strings.
    let r = sign_in(5, 1000, b"\xaa").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (401, json!("invalid-generation"))
    );
    let r = sign_in(6, 999, b"\xaa").await;
    assert_eq!(r.json()["status"], "invalid-keysChangedAt");
    let r = sign_in(6, 1000, b"\xbb").await;
    assert_eq!(
        r.json()["status"],
        "invalid-keysChangedAt",
        "client state changed without keys_changed_at"
    );

    // Keys changed: a fresh uid; the old uid's token is refused by the node.
    let second = sign_in(6, 2000, b"\xbb").await;
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.json();
    assert_ne!(second["uid"], first["uid"]);
    assert_eq!(old.get("/info/collections").await.status, 401);
    let new = storage_client(&s, &second);
    assert_eq!(new.get("/info/collections").await.json(), json!({}));
    // Going back to an old client state is refused.
    let r = sign_in(6, 3000, b"\xaa").await;
    assert_eq!(r.json()["status"], "invalid-client-state");
}

#[tokio::test]
async fn concurrent_first_sign_ins_produce_one_assignment() {
    let s = Arc::new(jwt_server(&[]));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r =
                token_request(&s, Some(&good_jwt("fxa-carol")), Some(&key_id(7, b"\x07"))).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()["uid"].as_u64().unwrap()
        }));
    }
    let mut uids = HashSet::new();
    for t in tasks {
        uids.insert(t.await.unwrap());
    }
    assert_eq!(uids.len(), 1);
    let list = syncstore_cli(s.data.path(), &["node", "list"], &[]);
    let row = list.lines().nth(1).unwrap();
    assert_eq!(
        row.split_whitespace().nth(2),
        Some("1"),
        "load counts one user: {list}"
    );
}

#[tokio::test]
async fn sign_ups_can_be_closed() {
    let s = jwt_server(&[]);
    let kid = key_id(1, b"\x01");
    assert_eq!(
        token_request(&s, Some(&good_jwt("early")), Some(&kid))
            .await
            .status,
        200
    );
    syncstore_cli(s.data.path(), &["signups", "close"], &[]);
    let r = token_request(&s, Some(&good_jwt("late")), Some(&kid)).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (401, json!("new-users-disabled"))
    );
    assert_eq!(
        token_request(&s, Some(&good_jwt("early")), Some(&kid))
            .await
            .status,
        200
    );
    syncstore_cli(s.data.path(), &["signups", "open"], &[]);
    assert_eq!(
        token_request(&s, Some(&good_jwt("late")), Some(&kid))
            .await
            .status,
        200
    );
}

/// A stand-in for FxA's `/v1/verify` on 127.0.0.1: tokens `good-<uid>` are valid.
async fn fake_verifier() -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v1/verify",
        post(move |axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let token = body["token"].as_str().unwrap_or("");
                match token.strip_prefix("good-") {
                    Some(user) => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"user": user, "scope": [OLDSYNC], "generation": 1})),
                    ),
                    None => (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"code": 401, "errno": 108})),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1/verify"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_verification_is_used_and_cached() {
    let (url, hits) = fake_verifier().await;
    let s = Server::start(&[("SYNCSTORE_FXA_VERIFY_URL", url.as_str())]);
    let kid = key_id(1, b"\x01");
    let r = token_request(&s, Some("good-dave"), Some(&kid)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        token_request(&s, Some("good-dave"), Some(&kid))
            .await
            .json()["uid"],
        r.json()["uid"]
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second request used the cache"
    );
    let bad = token_request(&s, Some("bad-token"), Some(&kid)).await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["status"].clone()),
        (401, json!("invalid-credentials"))
    );
    // A verifier that cannot be reached is a 503, not a 401.
    let down = Server::start(&[("SYNCSTORE_FXA_VERIFY_URL", "http://127.0.0.1:9/v1/verify")]);
    let r = token_request(&down, Some("good-erin"), Some(&kid)).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_to_a_percentage_is_stable_and_sticky() {
    let (url, _) = fake_verifier().await;
    let s = Arc::new(Server::start(&[("SYNCSTORE_FXA_VERIFY_URL", url.as_str())]));
    let new_node = "http://new-node.test";
    syncstore_cli(
        s.data.path(),
        &["node", "add", new_node, "--capacity", "100000"],
        &[],
    );
    syncstore_cli(s.data.path(), &["rollout", "set", new_node, "10"], &[]);

    async fn sign_in_all(
        s: &Arc<Server>,
        users: std::ops::Range<usize>,
    ) -> BTreeMap<usize, String> {
        let users: Vec<usize> = users.collect();
        let mut out = BTreeMap::new();
        // At most 32 verifications are out at once (a sign-in that waits over 2 s for
        // one is a 503): send no more than that together, as a polite client would.
        for chunk in users.chunks(32) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let r = token_request(
                        &s,
                        Some(&format!("good-user{i}")),
                        Some(&key_id(1, b"\x01")),
                    )
                    .await;
                    assert_eq!(r.status, 200, "{}", r.text);
                    (i, r.json()["api_endpoint"].as_str().unwrap().to_string())
                }));
            }
            for t in tasks {
                let (i, endpoint) = t.await.unwrap();
                out.insert(i, endpoint);
            }
        }
        out
    }
    let on_new =
        |m: &BTreeMap<usize, String>| m.values().filter(|e| e.starts_with(new_node)).count();

    let first = sign_in_all(&s, 0..10_000).await;
    let share = on_new(&first);
    assert!(
        (850..=1150).contains(&share),
        "10% ± 1.5% of 10,000 users: {share}"
    );
    for (i, endpoint) in &first {
        let expected = bucket(&format!("user{i}")) < 1000;
        assert_eq!(endpoint.starts_with(new_node), expected, "user{i}");
    }
    // Sticky across repeated requests.
    let again = sign_in_all(&s, 0..500).await;
    assert!(again.iter().all(|(i, e)| first[i] == *e));
    // Raising 10% → 20% keeps everyone where they are; new users get the wider share.
    syncstore_cli(s.data.path(), &["rollout", "set", new_node, "20"], &[]);
    let after = sign_in_all(&s, 0..1000).await;
    assert!(
        after.iter().all(|(i, e)| first[i] == *e),
        "raising the share moved nobody"
    );
    let newcomers = sign_in_all(&s, 10_000..12_000).await;
    let share = on_new(&newcomers);
    assert!(
        (340..=460).contains(&share),
        "20% ± 3% of 2,000 new users: {share}"
    );

    // Allow-listed users always land on the node, denied ones never.
    let outsider = (20_000..)
        .find(|i| bucket(&format!("user{i}")) >= 2000)
        .unwrap();
    let insider = (20_000..)
        .find(|i| bucket(&format!("user{i}")) < 2000)
        .unwrap();
    syncstore_cli(
        s.data.path(),
        &["rollout", "allow", new_node, &format!("user{outsider}")],
        &[],
    );
    syncstore_cli(
        s.data.path(),
        &[
            "rollout",
            "deny",
            new_node,
            &format!("user{insider}@api.accounts.firefox.com"),
        ],
        &[],
    );
    let special = sign_in_all(&s, outsider..outsider + 1).await;
    assert!(special[&outsider].starts_with(new_node));
    let special = sign_in_all(&s, insider..insider + 1).await;
    assert!(!special[&insider].starts_with(new_node));
    let shown = syncstore_cli(s.data.path(), &["rollout", "show"], &[]);
    assert!(
        shown.contains("20.00%") && shown.contains("allow user"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_or_downing_a_node_moves_its_users() {
    let (url, _) = fake_verifier().await;
    let s = Server::start(&[
        ("SYNCSTORE_FXA_VERIFY_URL", url.as_str()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ]);
    let kid = key_id(1, b"\x01");
    let before = token_request(&s, Some("good-frank"), Some(&kid))
        .await
        .json();
    assert!(
        before["api_endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&s.url())
    );
    let old = storage_client(&s, &before);
    assert_eq!(
        old.put("/storage/col/a", &json!({"payload": "x"}))
            .await
            .status,
        200
    );

    let other = "http://other-node.test";
    syncstore_cli(s.data.path(), &["node", "add", other], &[]);
    syncstore_cli(s.data.path(), &["node", "drain", &s.url()], &[]);
    let after = token_request(&s, Some("good-frank"), Some(&kid))
        .await
        .json();
    assert!(
        after["api_endpoint"].as_str().unwrap().starts_with(other),
        "{after}"
    );
    assert_ne!(after["uid"], before["uid"]);
    // The old node refuses the moved user's old token, so the client asks again.
    let r = old.get("/info/collections").await;
    assert_eq!(r.status, 401);
    // New users avoid the draining node too; a downed node likewise.
    let newbie = token_request(&s, Some("good-gina"), Some(&kid))
        .await
        .json();
    assert!(newbie["api_endpoint"].as_str().unwrap().starts_with(other));
    syncstore_cli(s.data.path(), &["node", "down", other], &[]);
    let r = token_request(&s, Some("good-gina"), Some(&kid)).await;
    assert_eq!(r.status, 503, "no node left: {}", r.text);
    syncstore_cli(
        s.data.path(),
        &["node", "set", &s.url(), "--draining", "false"],
        &[],
    );
    let back = token_request(&s, Some("good-gina"), Some(&kid))
        .await
        .json();
    assert!(back["api_endpoint"].as_str().unwrap().starts_with(&s.url()));
    let list = syncstore_cli(s.data.path(), &["node", "list"], &[]);
    assert!(list.contains("down"), "{list}");
}

#[tokio::test]
async fn roles_serve_only_their_routes() {
    let s = Server::start(&[("SYNCSTORE_ROLE", "storage")]);
    let r = token_request(&s, Some("x"), Some("1-qg")).await;
    assert_eq!(r.status, 404);
    assert_eq!(s.client(3).get("/info/collections").await.status, 200);
    let t = jwt_server(&[("SYNCSTORE_ROLE", "tokenserver")]);
    assert_eq!(t.client(3).get("/info/collections").await.status, 404);
    let r = token_request(&t, Some(&good_jwt("h")), Some(&key_id(1, b"\x01"))).await;
    assert_eq!(
        r.status, 503,
        "a pure tokenserver with no nodes cannot place anyone"
    );
}
