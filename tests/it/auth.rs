//! Black-box tests of authentication: tokens, Hawk signatures, expiry, skew, replay.

use crate::common::{self, Client, SECRET, Server, hawk_header, now, token};
use serde_json::json;

fn port(s: &Server) -> u16 {
    s.addr.rsplit(':').next().unwrap().parse().unwrap()
}

async fn get_with(c: &Client, path: &str, auth: &str) -> common::Resp {
    c.raw("GET", path, &[("authorization", auth)], None, false)
        .await
}

#[tokio::test]
async fn missing_or_forged_credentials_are_refused() {
    let s = Server::start(&[]);
    let c = s.client(1);
    let path = "/1.5/1/info/collections";
    let r = c.raw("GET", path, &[], None, false).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Hawk"));
    assert_eq!(r.json()["status"], "invalid-credentials");

    // Signed with a wrong key.
    let auth = hawk_header(
        &c.id,
        "not-the-key",
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "n1",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 401);
    // A token made with another master secret.
    let (id, key) = token("another-secret", 1, &s.url(), 600.0);
    let auth = hawk_header(
        &id,
        &key,
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "n2",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 401);
    // A signature for another path, method, host or port.
    for (m, p, h, po) in [
        ("GET", "/1.5/1/info/quota", "127.0.0.1", port(&s)),
        ("PUT", path, "127.0.0.1", port(&s)),
        ("GET", path, "evil.example", port(&s)),
        ("GET", path, "127.0.0.1", 1),
    ] {
        let auth = hawk_header(&c.id, &c.key, m, p, h, po, now(), "n3", None);
        assert_eq!(
            get_with(&c, path, &auth).await.status,
            401,
            "{m} {p} {h} {po}"
        );
    }
    // Garbage headers.
    for auth in [
        "Hawk",
        "Hawk id=\"x\"",
        "Bearer abc",
        "Hawk id=\"!!\", ts=\"1\", nonce=\"n\", mac=\"m\"",
    ] {
        assert_eq!(get_with(&c, path, auth).await.status, 401, "{auth}");
    }
    // The correct signature works.
    let auth = hawk_header(
        &c.id,
        &c.key,
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "n4",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 200);
}

#[tokio::test]
async fn tokens_are_bound_to_their_user() {
    let s = Server::start(&[]);
    let c = s.client(1);
    s.client(2)
        .put("/storage/col/a", &json!({"payload": "x"}))
        .await;
    for (method, path) in [
        ("GET", "/1.5/2/info/collections"),
        ("GET", "/1.5/2/storage/col"),
        ("DELETE", "/1.5/2"),
    ] {
        let auth = hawk_header(
            &c.id,
            &c.key,
            method,
            path,
            "127.0.0.1",
            port(&s),
            now(),
            &format!("n{path}"),
            None,
        );
        let r = c
            .raw(method, path, &[("authorization", &auth)], None, false)
            .await;
        assert_eq!(r.status, 401, "{path}");
    }
    assert_eq!(s.client(2).get("/storage/col").await.json(), json!(["a"]));
}

#[tokio::test]
async fn expired_tokens_only_read_info_collections() {
    let s = Server::start(&[]);
    let good = s.client(3);
    good.put("/storage/col/a", &json!({"payload": "x"})).await;
    let expired = Client::new(&s, 3, -60.0);
    assert_eq!(expired.get("/storage/col").await.status, 401);
    assert_eq!(
        expired
            .put("/storage/col/a", &json!({"payload": "y"}))
            .await
            .status,
        401
    );
    assert_eq!(expired.get("/info/quota").await.status, 401);
    let r = expired.get("/info/collections").await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("col").is_some());
}

#[tokio::test]
async fn skewed_timestamps_and_replayed_nonces_are_refused() {
    let s = Server::start(&[("SYNCSTORE_HAWK_SKEW_SECS", "30")]);
    let c = s.client(4);
    let path = "/1.5/4/info/collections";
    for (ts, expect) in [(now() - 120, 401), (now() + 120, 401), (now() - 10, 200)] {
        let auth = hawk_header(
            &c.id,
            &c.key,
            "GET",
            path,
            "127.0.0.1",
            port(&s),
            ts,
            &format!("skew{ts}"),
            None,
        );
        assert_eq!(
            get_with(&c, path, &auth).await.status,
            expect,
            "ts offset {}",
            ts - now()
        );
    }
    let auth = hawk_header(
        &c.id,
        &c.key,
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "once",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 200);
    let replay = get_with(&c, path, &auth).await;
    assert_eq!(replay.status, 401);
}

#[tokio::test]
async fn secrets_rotate_old_ones_still_verify() {
    let s = Server::start(&[("SYNCSTORE_SECRETS", "new-secret,old-secret")]);
    for secret in ["new-secret", "old-secret"] {
        let (id, key) = token(secret, 5, &s.url(), 600.0);
        let c = Client::with_token(&s, 5, id, key);
        assert_eq!(c.get("/info/collections").await.status, 200, "{secret}");
    }
    let (id, key) = token(SECRET, 5, &s.url(), 600.0);
    assert_eq!(
        Client::with_token(&s, 5, id, key)
            .get("/info/collections")
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn signed_payload_hashes_must_match_the_body() {
    let s = Server::start(&[]);
    let c = s.client(6);
    let path = "/1.5/6/storage/col/a";
    let body = br#"{"payload":"x"}"#.to_vec();
    let hash = syncstore::auth::hawk::payload_hash("application/json", &body);
    let auth = hawk_header(
        &c.id,
        &c.key,
        "PUT",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "h1",
        Some(&hash),
    );
    let r = c
        .raw(
            "PUT",
            path,
            &[("authorization", &auth)],
            Some(("application/json", body)),
            false,
        )
        .await;
    assert_eq!(r.status, 200);
    let auth = hawk_header(
        &c.id,
        &c.key,
        "PUT",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "h2",
        Some(&hash),
    );
    let r = c
        .raw(
            "PUT",
            path,
            &[("authorization", &auth)],
            Some(("application/json", br#"{"payload":"evil"}"#.to_vec())),
            false,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(c.get("/storage/col/a").await.json()["payload"], "x");
}

#[tokio::test]
async fn public_url_and_forwarded_headers_set_the_signed_host() {
    let s = Server::start(&[("SYNCSTORE_PUBLIC_URL", "https://sync.example.com")]);
    // Tokens name the node by its public URL (a token for another node is refused).
    let (id, key) = token(SECRET, 7, "https://sync.example.com", 600.0);
    let c = Client::with_token(&s, 7, id, key);
    let path = "/1.5/7/info/collections";
    let auth = hawk_header(
        &c.id,
        &c.key,
        "GET",
        path,
        "sync.example.com",
        443,
        now(),
        "p1",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 200);
    let auth = hawk_header(
        &c.id,
        &c.key,
        "GET",
        path,
        "127.0.0.1",
        port(&s),
        now(),
        "p2",
        None,
    );
    assert_eq!(get_with(&c, path, &auth).await.status, 401);

    // Forwarded headers name the signed host only when trusted.
    for (trust, expected) in [("true", 200), ("false", 401)] {
        let s = Server::start(&[("SYNCSTORE_TRUST_FORWARDED_HEADERS", trust)]);
        let c = s.client(7);
        let nonce = format!("f-{trust}");
        let auth = hawk_header(
            &c.id,
            &c.key,
            "GET",
            path,
            "proxy.example",
            443,
            now(),
            &nonce,
            None,
        );
        let headers = [
            ("authorization", auth.as_str()),
            ("x-forwarded-host", "proxy.example"),
            ("x-forwarded-proto", "https"),
        ];
        let r = c.raw("GET", path, &headers, None, false).await;
        assert_eq!(r.status, expected, "trust_forwarded_headers={trust}");
    }
}
