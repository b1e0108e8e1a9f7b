//! Black-box tests of FxA's account-event webhook (issue 21, item 10): Security Event
//! Tokens signed with the test FxA key are POSTed to `/1.0/webhooks/fxa/events` of the
//! real server, and their effects observed as a client would.

use crate::common::{self, Client, Resp, Server, now};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

const ISSUER: &str = common::TEST_ISSUER;
const CLIENT_ID: &str = "5882386c6d801776";
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";
const EVENT: &str = "https://schemas.accounts.firefox.com/event/";
const WEBHOOK: &str = "/1.0/webhooks/fxa/events";

fn sign(claims: &Value, typ: &str) -> String {
    common::sign_test_jwt(claims, "test-key-1", typ)
}

/// An FxA access token of `sub` with FxA generation `generation`.
fn access_token(sub: &str, generation: i64) -> String {
    sign(
        &json!({
            "sub": sub, "scope": OLDSYNC, "iss": ISSUER, "iat": now(), "exp": now() + 3600,
            "fxa-generation": generation,
        }),
        "at+jwt",
    )
}

/// The claims of a Security Event Token about `sub` carrying `events`.
fn set_claims(sub: &str, events: Value) -> Value {
    json!({
        "iss": format!("{ISSUER}/"), "aud": CLIENT_ID, "sub": sub, "iat": now(),
        "jti": hex::encode(rand::random::<[u8; 16]>()), "events": events,
    })
}

fn set(sub: &str, event: &str, payload: Value) -> String {
    sign(
        &set_claims(sub, json!({ format!("{EVENT}{event}"): payload })),
        "secevent+jwt",
    )
}

fn events_server(extra: &[(&str, &str)]) -> Server {
    let jwks = common::test_jwks_path();
    let mut env = vec![
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
        ("SYNCSTORE_FXA_ISSUER", ISSUER),
        ("SYNCSTORE_FXA_EVENTS_CLIENT_ID", CLIENT_ID),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

async fn deliver(s: &Server, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    s.client(0)
        .raw("POST", WEBHOOK, &[("authorization", &auth)], None, false)
        .await
}

async fn sign_in(s: &Server, sub: &str, generation: i64) -> Resp {
    let auth = format!("Bearer {}", access_token(sub, generation));
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

fn storage_client(s: &Server, answer: &Value) -> Client {
    Client::with_token(
        s,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    )
}

/// Every file under `dir` whose name starts with `<uid>.`.
fn user_files(dir: &std::path::Path, uid: u64) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{uid}."))
            {
                found.push(p);
            }
        }
    }
    found
}

async fn metric_lines(s: &Server, name: &str) -> Vec<String> {
    let r = reqwest::get(format!("{}/__metrics__", s.metrics_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "metrics must be readable");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_webhook_is_off_unless_a_client_id_is_configured() {
    let jwks = common::test_jwks_path();
    let s = Server::start(&[
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
        ("SYNCSTORE_FXA_ISSUER", ISSUER),
    ]);
    let r = deliver(&s, &set("fxa-a", "delete-user", json!({}))).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn bad_or_foreign_event_tokens_are_401_and_change_nothing() {
    let s = events_server(&[]);
    let first = sign_in(&s, "fxa-victim", 1).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let delete = json!({ format!("{EVENT}delete-user"): {} });
    let good = sign(&set_claims("fxa-victim", delete.clone()), "secevent+jwt");
    let (head_payload, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[3] ^= 0x40;
    let forged = format!("{head_payload}.{}", URL_SAFE_NO_PAD.encode(sig));
    let mut wrong_aud = set_claims("fxa-victim", delete.clone());
    wrong_aud["aud"] = json!("another-client");
    let mut wrong_iss = set_claims("fxa-victim", delete.clone());
    wrong_iss["iss"] = json!("https://evil.test/");
    let mut stale = set_claims("fxa-victim", delete.clone());
    stale["iat"] = json!(now() - 30 * 24 * 3600);
    let mut no_jti = set_claims("fxa-victim", delete);
    no_jti.as_object_mut().unwrap().remove("jti");
    let cases = [
        ("bad signature", forged),
        ("wrong audience", sign(&wrong_aud, "secevent+jwt")),
        ("wrong issuer", sign(&wrong_iss, "secevent+jwt")),
        ("a month old", sign(&stale, "secevent+jwt")),
        ("no jti", sign(&no_jti, "secevent+jwt")),
        ("not a jwt", "garbage".to_string()),
    ];
    for (what, token) in cases {
        let r = deliver(&s, &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.json()["status"], "invalid-credentials", "{what}");
    }
    let r = s.client(0).raw("POST", WEBHOOK, &[], None, false).await;
    assert_eq!(r.status, 401, "no token: {}", r.text);
    // The user was not retired: the same uid again.
    let again = sign_in(&s, "fxa-victim", 1).await;
    assert_eq!(again.json()["uid"], first.json()["uid"]);
    let refused = metric_lines(&s, "syncstore_fxa_events_total").await;
    assert!(
        refused
            .iter()
            .any(|l| l.contains("outcome=\"refused\"") && l.ends_with(" 7")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn unknown_and_informational_events_are_acknowledged() {
    let s = events_server(&[]);
    for (event, payload) in [
        ("no-such-event", json!({"x": 1})),
        ("profile-change", json!({"email": "a@example.test"})),
        (
            "subscription-state-change",
            json!({"capabilities": [], "isActive": false, "changeTime": now() * 1000}),
        ),
    ] {
        let r = deliver(&s, &set("fxa-info", event, payload)).await;
        assert_eq!(r.status, 200, "{event}: {}", r.text);
        assert_eq!(r.json(), json!({"status": "ok"}));
    }
    let lines = metric_lines(&s, "syncstore_fxa_events_total").await;
    for kind in ["unknown", "profile-change", "subscription-state-change"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("type=\"{kind}\"")) && l.contains("ignored")),
            "{kind}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn delete_user_retires_the_user_and_deletes_their_data() {
    let s = events_server(&[]);
    let first = sign_in(&s, "fxa-leaving", 1).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let answer = first.json();
    let old_uid = answer["uid"].as_u64().unwrap();
    let c = storage_client(&s, &answer);
    let put = c
        .put("/storage/bookmarks/b1", &json!({"payload": "secret"}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert!(!user_files(s.data.path(), old_uid).is_empty());

    let r = deliver(&s, &set("fxa-leaving", "delete-user", json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The old uid's data is gone from the node, and its token no longer works.
    assert!(
        user_files(s.data.path(), old_uid).is_empty(),
        "{:?}",
        user_files(s.data.path(), old_uid)
    );
    let old = c.get("/storage/bookmarks/b1").await;
    assert_eq!(old.status, 401, "{}", old.text);
    // The next sign-in (same keys) gets a fresh uid with nothing in it.
    let next = sign_in(&s, "fxa-leaving", 1).await;
    assert_eq!(next.status, 200, "{}", next.text);
    let new_uid = next.json()["uid"].as_u64().unwrap();
    assert_ne!(new_uid, old_uid);
    let fresh = storage_client(&s, &next.json());
    let got = fresh.get("/storage/bookmarks/b1").await;
    assert_eq!(got.status, 404, "{}", got.text);
    // A redelivery of an older deletion does not touch the new account's data.
    let put = fresh
        .put("/storage/bookmarks/b2", &json!({"payload": "new"}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let mut old_claims = set_claims("fxa-leaving", json!({ format!("{EVENT}delete-user"): {} }));
    old_claims["iat"] = json!(now() - 3600);
    let r = deliver(&s, &sign(&old_claims, "secevent+jwt")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(fresh.get("/storage/bookmarks/b2").await.status, 200);
    let lines = metric_lines(&s, "syncstore_fxa_events_total").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("type=\"delete-user\"") && l.contains("processed")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn password_change_refuses_tokens_of_an_older_generation() {
    let s = events_server(&[]);
    let t0 = now() * 1000 - 60_000;
    let first = sign_in(&s, "fxa-pw", t0).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let uid = first.json()["uid"].clone();
    let changed = t0 + 30_000;
    let r = deliver(
        &s,
        &set("fxa-pw", "password-change", json!({"changeTime": changed})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let old = sign_in(&s, "fxa-pw", t0).await;
    assert_eq!(old.status, 401, "{}", old.text);
    assert_eq!(old.json()["status"], "invalid-generation");
    let new = sign_in(&s, "fxa-pw", changed).await;
    assert_eq!(new.status, 200, "{}", new.text);
    assert_eq!(new.json()["uid"], uid, "same keys, same uid");
    let newer = sign_in(&s, "fxa-pw", changed + 1).await;
    assert_eq!(newer.status, 200, "{}", newer.text);
}
