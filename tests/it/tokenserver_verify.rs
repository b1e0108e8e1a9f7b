//! Black-box tests of local JWT decisions (issue 21, item 9): with a JWK set, a JWT
//! under a known key is decided by the server alone, refusals included; only other
//! tokens go to the remote verifier, and only when one is configured.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{self, Resp, Server, now};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

const ISSUER: &str = common::TEST_ISSUER;
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

/// Signs `claims` with the test key, naming key id `kid`.
fn signed(claims: &Value, kid: &str) -> String {
    common::sign_test_jwt(claims, kid, "at+jwt")
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "scope": OLDSYNC, "iss": ISSUER, "iat": now(), "exp": now() + 3600})
}

/// The four ways a JWT under a known key is wrong.
fn bad_jwts() -> Vec<(&'static str, String)> {
    let good = signed(&claims("fxa-bad"), "test-key-1");
    let (head_payload, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[0] ^= 1;
    let forged = format!("{head_payload}.{}", URL_SAFE_NO_PAD.encode(sig));
    let mut expired = claims("fxa-bad");
    expired["exp"] = json!(now() - 3600);
    let mut foreign = claims("fxa-bad");
    foreign["iss"] = json!("https://evil.test");
    let mut no_scope = claims("fxa-bad");
    no_scope["scope"] = json!("profile");
    vec![
        ("bad signature", forged),
        ("expired", signed(&expired, "test-key-1")),
        ("wrong issuer", signed(&foreign, "test-key-1")),
        ("no oldsync scope", signed(&no_scope, "test-key-1")),
    ]
}

async fn token_request(s: &Server, bearer: &str) -> Resp {
    let auth = format!("Bearer {bearer}");
    s.client(0)
        .raw(
            "GET",
            "/1.0/sync/1.5",
            &[("authorization", &auth), ("x-keyid", "1-qg")],
            None,
            false,
        )
        .await
}

/// The sum of `syncstore_fxa_remote_verifications_total` over its labels.
async fn remote_verifications(s: &Server) -> f64 {
    let r = reqwest::get(format!("{}/__metrics__", s.metrics_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "metrics must be readable");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("syncstore_fxa_remote_verifications_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A stand-in for FxA's `/v1/verify` on 127.0.0.1 that counts its calls; tokens
/// `good-<uid>` are valid.
async fn counting_verifier() -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v1/verify",
        post(move |axum::Json(body): axum::Json<Value>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match body["token"].as_str().unwrap_or("").strip_prefix("good-") {
                    Some(user) => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"user": user, "scope": [OLDSYNC]})),
                    ),
                    None => (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1/verify"), hits)
}

fn assert_invalid_credentials(what: &str, r: &Resp) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    assert_eq!(r.json()["status"], "invalid-credentials", "{what}");
}

// With a JWK set and no verify URL configured (`auto`), the server is offline: every
// decision is local and fast, and nothing is sent anywhere.
#[tokio::test]
async fn an_offline_server_with_a_jwk_set_refuses_bad_jwts_at_once() {
    let jwks = common::test_jwks_path();
    let s = Server::start(&[
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
        ("SYNCSTORE_FXA_ISSUER", ISSUER),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    for (what, bearer) in bad_jwts() {
        let started = Instant::now();
        let r = token_request(&s, &bearer).await;
        assert_invalid_credentials(what, &r);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    // Neither an opaque token nor a JWT under an unknown key id goes anywhere.
    let unknown_kid = signed(&claims("fxa-other"), "some-other-key");
    for (what, bearer) in [("opaque", "good-opaque".to_string()), ("kid", unknown_kid)] {
        let r = token_request(&s, &bearer).await;
        assert_invalid_credentials(what, &r);
    }
    assert_eq!(remote_verifications(&s).await, 0.0);
    // A good JWT is accepted.
    let ok = token_request(&s, &signed(&claims("fxa-good"), "test-key-1")).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

// With a verify URL configured too, bad JWTs under a known key still never reach it;
// opaque tokens and unknown key ids do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_the_jwk_set_cannot_decide_go_to_the_verifier() {
    let (url, hits) = counting_verifier().await;
    let jwks = common::test_jwks_path();
    let s = Server::start(&[
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
        ("SYNCSTORE_FXA_ISSUER", ISSUER),
        ("SYNCSTORE_FXA_VERIFY_URL", url.as_str()),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    for (what, bearer) in bad_jwts() {
        assert_invalid_credentials(what, &token_request(&s, &bearer).await);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no remote call for bad JWTs"
    );
    assert_eq!(remote_verifications(&s).await, 0.0);
    let unknown_kid = signed(&claims("fxa-other"), "some-other-key");
    assert_invalid_credentials("unknown kid", &token_request(&s, &unknown_kid).await);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let r = token_request(&s, "good-opaque").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(remote_verifications(&s).await, 2.0);
}

// A verifier that cannot be reached is a 503 with Retry-After whose body names no
// token; a verify URL of "" turns remote verification off (401).
#[tokio::test]
async fn an_unreachable_verifier_is_503_and_no_verifier_is_401() {
    let down = Server::start(&[("SYNCSTORE_FXA_VERIFY_URL", "http://127.0.0.1:9/v1/verify")]);
    let token = "good-secret-token-value";
    let r = token_request(&down, token).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["status"], "server-error");
    assert!(!r.text.contains(token), "{}", r.text);
    let log = down.log_text();
    assert!(
        log.contains("127.0.0.1:9/v1/verify"),
        "the log names the verifier: {log}"
    );
    assert!(!log.contains(token), "the log names no token");

    let off = Server::start(&[("SYNCSTORE_FXA_VERIFY_URL", "")]);
    assert_invalid_credentials("verify url off", &token_request(&off, token).await);
}
