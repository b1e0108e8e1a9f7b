//! Black-box tests of the token and Hawk hardening (security review, issue 20, items
//! 7-13): each test starts the real server on 127.0.0.1 and plays the attack.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{
    self, Client, Resp, SECRET, Server, hawk_header, jwt_server, key_id, now, token,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = common::TEST_ISSUER;
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

/// Signs `claims` with the test FxA key, as FxA signs access tokens.
fn signed_jwt(claims: &Value) -> String {
    common::sign_test_jwt(claims, "test-key-1", "at+jwt")
}

/// A valid access token of `sub`.
fn good_jwt(sub: &str) -> String {
    signed_jwt(&json!({
        "sub": sub, "scope": OLDSYNC, "iss": ISSUER, "iat": now(), "exp": now() + 3600,
    }))
}

async fn token_request(s: &Server, bearer: &str, key_id: &str) -> Resp {
    let auth = format!("Bearer {bearer}");
    s.client(0)
        .raw(
            "GET",
            "/1.0/sync/1.5",
            &[("authorization", &auth), ("x-keyid", key_id)],
            None,
            false,
        )
        .await
}

fn port(s: &Server) -> u16 {
    s.addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The body of a tokenserver error, checked to be exactly Mozilla's shape with a fixed
/// description; returns its `status`.
fn mozilla_error(r: &Resp) -> String {
    let body = r.json();
    let obj = body.as_object().expect("an object");
    assert_eq!(obj.len(), 2, "only status and errors: {body}");
    let errors = body["errors"].as_array().expect("errors is a list");
    assert_eq!(errors.len(), 1, "{body}");
    let e = errors[0].as_object().unwrap();
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["description", "location", "name"], "{body}");
    let description = e["description"].as_str().unwrap();
    assert!(
        [
            "Unauthorized",
            "Resource is not available",
            "Internal server error"
        ]
        .contains(&description),
        "a fixed description, not internal text: {body}"
    );
    body["status"].as_str().unwrap().to_string()
}

// Item 7: X-KeyID's keys_changed_at has an upper bound.
#[tokio::test]
async fn keys_changed_at_from_the_future_is_refused_and_changes_nothing() {
    let s = jwt_server(&[]);
    let bearer = good_jwt("fxa-kca");
    let now_ms = now() * 1000;
    let first = token_request(&s, &bearer, &key_id(now_ms - 1000, b"\x01")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let uid = first.json()["uid"].clone();
    for kca in [i64::MAX, now_ms + 3_600_000] {
        let r = token_request(&s, &bearer, &key_id(kca, b"\x02")).await;
        assert_eq!(r.status, 401, "{kca}: {}", r.text);
        assert_eq!(mozilla_error(&r), "invalid-keysChangedAt");
    }
    // The user's record is unchanged: the real values still sign in, to the same uid.
    let again = token_request(&s, &bearer, &key_id(now_ms - 1000, b"\x01")).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["uid"], uid);
    // A real key change (now) still gives a fresh uid.
    let changed = token_request(&s, &bearer, &key_id(now_ms, b"\x02")).await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_ne!(changed.json()["uid"], uid);
}

// Item 9: with an issuer configured, `iss` is required; `nbf` is honoured.
#[tokio::test]
async fn jwts_without_iss_or_not_yet_valid_are_refused() {
    let s = jwt_server(&[]);
    let kid = key_id(1, b"\x01");
    let no_iss = signed_jwt(&json!({
        "sub": "fxa-noiss", "scope": OLDSYNC, "iat": now(), "exp": now() + 3600,
    }));
    let future_nbf = signed_jwt(&json!({
        "sub": "fxa-nbf", "scope": OLDSYNC, "iss": ISSUER, "iat": now(),
        "nbf": now() + 3600, "exp": now() + 7200,
    }));
    for (what, bearer) in [("no iss", no_iss), ("future nbf", future_nbf)] {
        let r = token_request(&s, &bearer, &kid).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(mozilla_error(&r), "invalid-credentials", "{what}");
    }
    // A past nbf, or one a few seconds ahead (within the leeway), is fine.
    for (sub, nbf) in [("fxa-nbf-past", now() - 60), ("fxa-nbf-skew", now() + 5)] {
        let bearer = signed_jwt(&json!({
            "sub": sub, "scope": OLDSYNC, "iss": ISSUER, "iat": now(),
            "nbf": nbf, "exp": now() + 3600,
        }));
        let r = token_request(&s, &bearer, &kid).await;
        assert_eq!(r.status, 200, "{sub}: {}", r.text);
    }
    // Without an issuer configured, a token without `iss` is accepted.
    let open = jwt_server(&[("SYNCSTORE_FXA_ISSUER", "")]);
    let no_iss = signed_jwt(&json!({
        "sub": "fxa-noiss", "scope": OLDSYNC, "iat": now(), "exp": now() + 3600,
    }));
    assert_eq!(token_request(&open, &no_iss, &kid).await.status, 200);
}

// Item 13: error bodies carry Mozilla's status strings and fixed descriptions only.
#[tokio::test]
async fn token_error_bodies_carry_no_internal_text() {
    let s = jwt_server(&[]);
    let kid = key_id(1, b"\x01");
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "scope": OLDSYNC, "iss": ISSUER, "exp": now() + 60}),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let expired = signed_jwt(&json!({
        "sub": "u", "scope": OLDSYNC, "iss": ISSUER, "iat": now() - 7200, "exp": now() - 3600,
    }));
    for bearer in [
        "not.a.jwt",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        wrong_key.as_str(),
        expired.as_str(),
    ] {
        let r = token_request(&s, bearer, &kid).await;
        assert_eq!(r.status, 401, "{bearer}: {}", r.text);
        assert_eq!(mozilla_error(&r), "invalid-credentials", "{bearer}");
        assert_eq!(r.json()["errors"][0]["description"], "Unauthorized");
    }
    // A database failure: the assignment database loses its users table.
    let conn = rusqlite::Connection::open(s.data.path().join("tokenserver.sqlite")).unwrap();
    conn.execute_batch("ALTER TABLE users RENAME TO users_gone")
        .unwrap();
    drop(conn);
    let r = token_request(&s, &good_jwt("fxa-db"), &kid).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert_eq!(mozilla_error(&r), "server-error");
    let lower = r.text.to_lowercase();
    for leak in ["sqlite", "no such table", "users"] {
        assert!(!lower.contains(leak), "{leak} in {}", r.text);
    }
    // The cause is in the log, for the operator.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.log_text().contains("no such table") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(s.log_text().contains("no such table"));
}

// Item 8: the expired-token allowance is for GET info/collections only, and bounded.
#[tokio::test]
async fn expired_tokens_read_only_the_info_collections_route_and_only_for_a_while() {
    let s = Server::start(&[]);
    let good = s.client(8);
    // A record "collections" in a collection "info": its path ends in info/collections.
    let put = good
        .put("/storage/info/collections", &json!({"payload": "secret"}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let year_old = Client::new(&s, 8, -365.0 * 86400.0);
    let r = year_old.get("/storage/info/collections").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(!r.text.contains("secret"));
    assert_eq!(year_old.get("/info/collections").await.status, 401);
    // Past the allowance (two hours) even info/collections is refused.
    let old = Client::new(&s, 8, -3.0 * 3600.0);
    assert_eq!(old.get("/info/collections").await.status, 401);
    // A token that expired a minute ago still reads info/collections, nothing else.
    let recent = Client::new(&s, 8, -60.0);
    let r = recent.get("/info/collections").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json().get("info").is_some());
    assert_eq!(recent.get("/storage/info/collections").await.status, 401);
    assert_eq!(recent.get("/info/collection_counts").await.status, 401);
}

// Item 11: a token minted for one node is refused by another.
#[tokio::test]
async fn tokens_for_another_node_are_refused() {
    let a = Server::start(&[]);
    let b = Server::start(&[]);
    // A request captured on its way to node A, replayed at node B byte for byte (its
    // Host header still names A, so the Hawk signature checks out at B).
    let (id, key) = token(SECRET, 11, &a.url(), 600.0);
    let path = "/1.5/11/info/collections";
    let auth = hawk_header(
        &id,
        &key,
        "GET",
        path,
        "127.0.0.1",
        port(&a),
        now(),
        "n11",
        None,
    );
    let host = a.addr.clone();
    let headers = [("authorization", auth.as_str()), ("host", host.as_str())];
    let at_b = b.client(11).raw("GET", path, &headers, None, false).await;
    assert_eq!(at_b.status, 401, "{}", at_b.text);
    assert_eq!(at_b.json()["status"], "invalid-credentials");
    assert_eq!(at_b.header("www-authenticate").as_deref(), Some("Hawk"));
    // The same request reaches node A: it is good there.
    let at_a = a.client(11).raw("GET", path, &headers, None, false).await;
    assert_eq!(at_a.status, 200, "{}", at_a.text);
    // Signed afresh for B, A's token is still refused at B; B's own token works.
    let wrong = Client::with_token(&b, 11, id, key);
    assert_eq!(wrong.get("/info/collections").await.status, 401);
    assert_eq!(b.client(11).get("/info/collections").await.status, 200);

    // With a public URL, tokens must name it.
    let p = Server::start(&[("SYNCSTORE_PUBLIC_URL", "http://sync.example.com:8080")]);
    let path = "/1.5/12/info/collections";
    for (node, expected) in [
        ("http://sync.example.com:8080", 200),
        ("http://sync.example.com:8080/", 200),
        (p.url().as_str(), 401),
        ("https://sync.example.com:8080", 401),
        ("", 401),
    ] {
        let (id, key) = token(SECRET, 12, node, 600.0);
        let nonce = format!("p{node}");
        let auth = hawk_header(
            &id,
            &key,
            "GET",
            path,
            "sync.example.com",
            8080,
            now(),
            &nonce,
            None,
        );
        let r = p
            .client(12)
            .raw("GET", path, &[("authorization", &auth)], None, false)
            .await;
        assert_eq!(r.status, expected, "token for {node:?}: {}", r.text);
    }
}

/// A stand-in for FxA's `/v1/verify` on 127.0.0.1 that counts its calls and the most
/// in flight at once; tokens `good-<user>` are valid. While `hold` is true, calls wait
/// (at most 10 s) before answering.
struct CountingVerifier {
    url: String,
    calls: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    hold: tokio::sync::watch::Sender<bool>,
}

async fn counting_verifier(hold: bool) -> CountingVerifier {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(hold);
    let (c, f, m) = (calls.clone(), in_flight.clone(), max_in_flight.clone());
    let app = axum::Router::new().route(
        "/v1/verify",
        post(move |axum::Json(body): axum::Json<Value>| {
            let (c, f, m, mut hold) = (c.clone(), f.clone(), m.clone(), hold_rx.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let now_in = f.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now_in, Ordering::SeqCst);
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    hold.wait_for(|h| !*h),
                )
                .await;
                f.fetch_sub(1, Ordering::SeqCst);
                let token = body["token"].as_str().unwrap_or("").to_string();
                match token.strip_prefix("good-") {
                    Some(user) => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"user": user, "scope": [OLDSYNC]})),
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
    CountingVerifier {
        url: format!("http://{addr}/v1/verify"),
        calls,
        max_in_flight,
        hold: hold_tx,
    }
}

// Item 10: remote verification does not amplify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_garbage_tokens_make_a_handful_of_verify_calls() {
    let v = counting_verifier(false).await;
    let s = Arc::new(Server::start(&[(
        "SYNCSTORE_FXA_VERIFY_URL",
        v.url.as_str(),
    )]));
    let kid = key_id(1, b"\x01");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (s, kid) = (s.clone(), kid.clone());
        tasks.push(tokio::spawn(async move {
            token_request(&s, "garbage-token", &kid).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let calls = v.calls.load(Ordering::SeqCst);
    assert!(calls <= 3, "100 identical tokens made {calls} verify calls");
    for r in &answers {
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(mozilla_error(r), "invalid-credentials");
    }
    // The refusal is remembered: asking again right away makes no call.
    let r = token_request(&s, "garbage-token", &kid).await;
    assert_eq!(r.status, 401);
    assert_eq!(v.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_verifications_are_capped_and_the_excess_gets_503() {
    let v = counting_verifier(true).await;
    let s = Arc::new(Server::start(&[(
        "SYNCSTORE_FXA_VERIFY_URL",
        v.url.as_str(),
    )]));
    let kid = key_id(1, b"\x01");
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (s, kid) = (s.clone(), kid.clone());
        tasks.push(tokio::spawn(async move {
            token_request(&s, &format!("bad-{i}"), &kid).await
        }));
    }
    // Requests beyond the cap wait a bounded time for a slot, then get a 503 while the
    // capped ones are still held by the verifier (bounded: 10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !tasks.iter().any(|t| t.is_finished()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let max = v.max_in_flight.load(Ordering::SeqCst);
    let _ = v.hold.send(false);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let busy: Vec<&Resp> = results.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "some requests were over the cap");
    for r in &busy {
        assert!(r.header("retry-after").is_some());
        assert_eq!(mozilla_error(r), "server-error");
    }
    assert!(results.iter().all(|r| r.status == 503 || r.status == 401));
    assert!(max <= 32, "{max} verify calls in flight at once");
}

// Item 12: one user's flood cannot evict another user's nonce.
#[tokio::test]
async fn one_users_flood_cannot_reopen_another_users_replay_window() {
    // A small cache: 200 triples, so one user may hold 20.
    let s = Server::start(&[("SYNCSTORE_NONCE_CACHE_SIZE", "200")]);
    let victim = s.client(21);
    let path = "/1.5/21/info/collections";
    let captured = hawk_header(
        &victim.id,
        &victim.key,
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "victim-nonce",
        None,
    );
    let send = |auth: String| {
        let c = victim.clone();
        async move {
            c.raw("GET", path, &[("authorization", &auth)], None, false)
                .await
        }
    };
    assert_eq!(send(captured.clone()).await.status, 200);
    // The attacker floods with a valid token of their own: more requests than the
    // whole cache holds (bounded: 300). Past its share it is refused with a 503.
    let attacker = s.client(22);
    let mut busy = 0;
    for _ in 0..300 {
        let r = attacker.get("/info/collections").await;
        match r.status.as_u16() {
            200 => {}
            503 => {
                assert!(r.header("retry-after").is_some());
                busy += 1;
            }
            other => panic!("flood request answered {other}: {}", r.text),
        }
    }
    assert!(
        busy >= 250,
        "the attacker's share is bounded: {busy} refused"
    );
    let replay = send(captured.clone()).await;
    assert_eq!(
        replay.status, 401,
        "replayed after the flood: {}",
        replay.text
    );
    // Many users, each within their share, fill the cache: new requests are refused
    // (503) rather than anyone's nonce forgotten.
    let mut busy = 0;
    for u in 30..45 {
        let c = s.client(u);
        for _ in 0..20 {
            if c.get("/info/collections").await.status == 503 {
                busy += 1;
            }
        }
    }
    assert!(busy > 0, "a full cache refuses new requests");
    let replay = send(captured).await;
    assert_eq!(
        replay.status, 401,
        "replayed with a full cache: {}",
        replay.text
    );
}
