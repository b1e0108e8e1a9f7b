//! What the accounts service stores, and what it takes in, black-box: an unverified
//! account yields its address to a new sign-up and is purged after a day; per-account
//! state (sessions, devices, refresh tokens, authorization codes, device fields, body
//! size) is bounded and idle state expires; only bare `local@domain` addresses are
//! taken; Hawk-signed bodies must carry their hash; email codes are stored under a
//! keyed hash; one account's nonce flood is refused for that account only.

use std::time::{Duration, Instant};

use crate::common::fxa::{self, code_in, env_refs, errno, next_mail, session_bearer};
use crate::common::{self, Server};
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const PASSWORD: &str = "correct horse battery";
const MAIL_FROM: &str = "Sync <sync@example.org>";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    common::now() * 1000
}

async fn create(s: &Server, email: &str) -> (u16, Value) {
    fxa::create(s, email, PASSWORD, None).await
}

async fn login(s: &Server, email: &str) -> (u16, Value) {
    fxa::login(s, email, PASSWORD, true).await
}

/// `syncstore account add EMAIL` (verified) on a data dir.
fn add_account(data: &std::path::Path, email: &str) {
    fxa::add_account(data, email, PASSWORD);
}

/// The server's accounts database, opened beside it (WAL: the server keeps running).
fn db(s: &Server) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(s.data.path().join("accounts.sqlite")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn count(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Item 6 (and F2 of its review): someone signs up with another person's address (and
/// cannot verify it); the owner's own sign-up waits beside that account instead of
/// getting 101 for ever, and verifying it deletes the squatter's pending account. Once
/// the owner has verified, the address is held: another sign-up gets 101.
#[test]
fn an_unverified_account_yields_its_address_to_a_new_sign_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = fxa::open_server_with_mail(&rt, MAIL_FROM, &[]);
    rt.block_on(async {
        let email = "owner@example.org";
        let (status, squat) = create(&s, email).await;
        assert_eq!(status, 200, "{squat}");
        let squat_session = session_bearer(squat["sessionToken"].as_str().unwrap());
        let squat_mail = next_mail(&mut mails).await;

        // The owner signs up with the same address: a new account, a new code.
        let (status, made) = create(&s, email).await;
        assert_eq!(status, 200, "the owner's sign-up: {made}");
        assert_ne!(made["uid"], squat["uid"], "{made}");
        let mail = next_mail(&mut mails).await;
        assert!(mail.contains("To: owner@example.org"), "{mail}");
        let session = session_bearer(made["sessionToken"].as_str().unwrap());
        let c = db(&s);
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM accounts WHERE normalized_email = 'owner@example.org'"
            ),
            2,
            "both sign-ups wait side by side"
        );
        let squat_uid = squat["uid"].as_str().unwrap();

        // The squatter's code does not verify the owner's account (unless it is the
        // same 6 digits, one chance in a million).
        let (old_code, code) = (code_in(&squat_mail), code_in(&mail));
        if old_code != code {
            let (status, err) = fxa::verify_code(&s, &session, &old_code).await;
            assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
        }
        let (status, ok) = fxa::verify_code(&s, &session, &code).await;
        assert_eq!(status, 200, "{ok}");

        // The squatter's account is gone with its session and its code.
        let (status, err) = fxa::bearer_get(&s, "/v1/session/status", &squat_session).await;
        assert_eq!((status, errno(&err)), (401, Some(110)), "{err}");
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM accounts WHERE normalized_email = 'owner@example.org'"
            ),
            1
        );
        for table in ["accounts", "tokens", "email_codes"] {
            let n: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE uid = ?1"),
                    [squat_uid],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "{table} still holds the replaced account");
        }

        // A verified account holds its address.
        let (status, err) = create(&s, email).await;
        assert_eq!((status, errno(&err)), (400, Some(101)), "{err}");
        let (status, st) = fxa::bearer_get(&s, "/v1/session/status", &session).await;
        assert_eq!((status, st["state"].as_str()), (200, Some("verified")));
    });
}

/// Items 6 and 9: the periodic upkeep (at start, then every minute) removes unverified
/// accounts older than a day, sessions without a device unused for 30 days, expired
/// authorization and email codes; a session with a device (a Firefox that was off for
/// a while) stays, and so does a verified account.
#[test]
fn upkeep_purges_old_unverified_accounts_idle_sessions_and_expired_codes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, mut mails) = rt.block_on(fxa::smtp_sink());
    let env = fxa::open_mail_env(port, MAIL_FROM);
    let s = Server::start(&env_refs(&env));
    let (squat_uid, owner_uid, idle, with_device, fresh) = rt.block_on(async {
        let (status, squat) = create(&s, "squatted@example.org").await;
        assert_eq!(status, 200, "{squat}");
        next_mail(&mut mails).await;
        let (status, owner) = create(&s, "owner@example.org").await;
        assert_eq!(status, 200, "{owner}");
        let code = code_in(&next_mail(&mut mails).await);
        let owner_session = session_bearer(owner["sessionToken"].as_str().unwrap());
        let (status, _) = fxa::verify_code(&s, &owner_session, &code).await;
        assert_eq!(status, 200);
        let mut sessions = Vec::new();
        for _ in 0..3 {
            let (status, l) = login(&s, "owner@example.org").await;
            assert_eq!(status, 200, "{l}");
            sessions.push(session_bearer(l["sessionToken"].as_str().unwrap()));
        }
        let (status, d) = common::fxa_post(
            &s,
            "/v1/account/device",
            &json!({"name": "Firefox on a laptop", "type": "desktop"}),
            Some(&sessions[1]),
        )
        .await;
        assert_eq!(status, 200, "{d}");
        let id_of = |b: &str| hex::decode(b.trim_start_matches("fxs_")).unwrap();
        (
            squat["uid"].as_str().unwrap().to_string(),
            owner["uid"].as_str().unwrap().to_string(),
            sessions[0].clone(),
            sessions[1].clone(),
            (sessions[2].clone(), id_of(&sessions[2])),
        )
    });
    let data = s.stop();
    {
        // Age the state as a month would.
        let c = rusqlite::Connection::open(data.path().join("accounts.sqlite")).unwrap();
        let now = now_ms();
        c.execute(
            "UPDATE accounts SET created_at = ?2 WHERE uid = ?1",
            rusqlite::params![squat_uid, now - 2 * DAY_MS],
        )
        .unwrap();
        c.execute(
            "UPDATE tokens SET last_used_at = ?1, created_at = ?1 \
             WHERE kind = 'sessionToken' AND id_hash != ?2",
            rusqlite::params![now - 31 * DAY_MS, crypto::sha256(&fresh.1).to_vec()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO oauth_codes (code_hash, uid, client_id, scope, offline, auth_at, \
             expires_at) VALUES (?1, ?2, '5882386c6d801776', 'profile', 0, 0, ?3)",
            rusqlite::params![vec![7u8; 32], owner_uid, now - 60_000],
        )
        .unwrap();
        c.execute(
            "INSERT INTO email_codes (uid, code_hash, expires_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![owner_uid, vec![8u8; 32], now - 60_000],
        )
        .unwrap();
    }
    let s = Server::start_in(data, &env_refs(&env));
    let c = db(&s);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&c, "SELECT count(*) FROM accounts WHERE email_verified = 0") > 0 {
        assert!(
            Instant::now() < deadline,
            "the unverified account is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(&c, "SELECT count(*) FROM accounts"), 1);
    assert_eq!(count(&c, "SELECT count(*) FROM oauth_codes"), 0);
    assert_eq!(count(&c, "SELECT count(*) FROM email_codes"), 0);
    rt.block_on(async {
        let (status, err) = fxa::bearer_get(&s, "/v1/session/status", &idle).await;
        assert_eq!(
            (status, errno(&err)),
            (401, Some(110)),
            "idle session: {err}"
        );
        let (status, st) = fxa::bearer_get(&s, "/v1/session/status", &with_device).await;
        assert_eq!(status, 200, "the session with a device: {st}");
        let (status, st) = fxa::bearer_get(&s, "/v1/session/status", &fresh.0).await;
        assert_eq!(status, 200, "the recent session: {st}");
    });
    // The first sign-up's session (unused for "31 days", no device) went too.
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM tokens WHERE kind = 'sessionToken'"
        ),
        2
    );
    assert!(s.log_text().contains("accounts upkeep"), "{}", s.log_text());
}

/// Item 9: device fields are bounded as FxA bounds them, and the accounts routes read
/// at most 64 KiB of body: a 1 MiB device name is refused (400 errno 107), and nothing
/// of it is stored.
#[test]
fn device_fields_and_bodies_are_bounded() {
    let s = fxa::server_with_account("dev@example.org", PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, l) = login(&s, "dev@example.org").await;
        assert_eq!(status, 200, "{l}");
        let session = session_bearer(l["sessionToken"].as_str().unwrap());
        let post = |body: Value| {
            let (s, session) = (&s, session.clone());
            async move { common::fxa_post(s, "/v1/account/device", &body, Some(&session)).await }
        };
        let refused = [
            json!({"name": "x".repeat(256)}),
            json!({"name": "x".repeat(60_000)}),
            json!({"name": "a\u{0}b"}),
            json!({"name": "ok", "type": "x".repeat(17)}),
            json!({"name": "ok", "pushCallback": "http://push.example.org/x"}),
            json!({"name": "ok", "pushCallback": format!("https://push.example.org/{}", "x".repeat(250))}),
            json!({"name": "ok", "pushPublicKey": "A".repeat(89)}),
            json!({"name": "ok", "pushAuthKey": "not base64!"}),
            json!({"name": "ok", "availableCommands": {"cmd": "x".repeat(9000)}}),
            json!({"name": "ok", "availableCommands": {"cmd": {"nested": 1}}}),
            json!({"name": "ok", "availableCommands": {"x".repeat(256): "v"}}),
            json!({"name": "ok", "availableCommands": "a string"}),
        ];
        for body in refused {
            let shown = body.to_string().chars().take(120).collect::<String>();
            let (status, err) = post(body).await;
            assert_eq!((status, errno(&err)), (400, Some(107)), "{shown}: {err}");
        }
        // 1 MiB: refused by the body limit (the server need not read it all).
        let body = json!({"name": "x".repeat(1 << 20)}).to_string();
        let r = reqwest::Client::new()
            .post(format!("{}/v1/account/device", s.url()))
            .bearer_auth(&session)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("an answer to a 1 MiB body");
        let status = r.status().as_u16();
        let err: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, errno(&err)), (400, Some(107)), "{err}");

        // What Firefox registers fits.
        let firefox = json!({
            "name": "Firefox on laptop",
            "type": "desktop",
            "pushCallback": "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
            "pushPublicKey": "BCp93zru09_hab2Bg37LpTNG__Pw6eMPEP2hrQpwuytoj3h4chXpGc-3qqdKyqjuvAiEupsnOd_RLyc7erJHWgA",
            "pushAuthKey": "w3b14Zjc-Afj2SDOLOyong",
            "availableCommands": {"https://identity.mozilla.com/cmd/open-uri": "x".repeat(1500)},
        });
        let (status, d) = post(firefox).await;
        assert_eq!(status, 200, "{d}");
        let (status, list) = fxa::bearer_get(&s, "/v1/account/devices", &session).await;
        assert_eq!(status, 200, "{list}");
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["name"], "Firefox on laptop");
    });
    // Nothing of the refused names reached the database.
    let size = std::fs::metadata(s.data.path().join("accounts.sqlite"))
        .unwrap()
        .len()
        + std::fs::metadata(s.data.path().join("accounts.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(size < 1 << 20, "accounts database grew to {size} bytes");
}

/// Item 9: an account keeps at most 100 sessions (the least recently used go, with
/// their devices), 100 devices, 100 refresh tokens and 20 authorization codes. The
/// older state is seeded straight into the database (logins are rate-limited); each
/// new one made over the API then pushes the excess out.
#[test]
fn sessions_devices_refresh_tokens_and_codes_per_account_are_capped() {
    let s = fxa::server_with_account("many@example.org", PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let uid = rt.block_on(async {
        let (status, l) = login(&s, "many@example.org").await;
        assert_eq!(status, 200, "{l}");
        l["uid"].as_str().unwrap().to_string()
    });
    {
        let c = db(&s);
        let now = now_ms();
        for i in 0..150i64 {
            let id = crypto::sha256(format!("seeded session {i}").as_bytes()).to_vec();
            let t = now - DAY_MS + i * 1000;
            c.execute(
                "INSERT INTO tokens (id_hash, kind, uid, auth_key, created_at, last_used_at) \
                 VALUES (?1, 'sessionToken', ?2, ?3, ?4, ?4)",
                rusqlite::params![id, uid, vec![0u8; 32], t],
            )
            .unwrap();
            if i < 120 {
                c.execute(
                    "INSERT INTO devices (id, uid, session_id_hash, name, created_at, \
                     last_access_at) VALUES (?1, ?2, ?3, 'seeded', ?4, ?4)",
                    rusqlite::params![format!("{i:032x}"), uid, id, t],
                )
                .unwrap();
            }
            c.execute(
                "INSERT INTO refresh_tokens (token_hash, uid, client_id, scope, created_at, \
                 last_used_at) VALUES (?1, ?2, '5882386c6d801776', 'profile', ?3, ?3)",
                rusqlite::params![
                    crypto::sha256(format!("seeded refresh {i}").as_bytes()).to_vec(),
                    uid,
                    t
                ],
            )
            .unwrap();
            if i < 40 {
                c.execute(
                    "INSERT INTO oauth_codes (code_hash, uid, client_id, scope, offline, \
                     auth_at, expires_at) VALUES (?1, ?2, '5882386c6d801776', 'profile', 0, \
                     0, ?3)",
                    rusqlite::params![
                        crypto::sha256(format!("seeded code {i}").as_bytes()).to_vec(),
                        uid,
                        now + 60_000 + i
                    ],
                )
                .unwrap();
            }
        }
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM tokens WHERE kind = 'sessionToken'"
            ),
            151
        );
    }
    rt.block_on(async {
        let (status, l) = login(&s, "many@example.org").await;
        assert_eq!(status, 200, "{l}");
        let session = session_bearer(l["sessionToken"].as_str().unwrap());
        let client_id = "5882386c6d801776";
        let (status, d) = common::fxa_post(
            &s,
            "/v1/account/device",
            &json!({"name": "the newest", "type": "mobile"}),
            Some(&session),
        )
        .await;
        assert_eq!(status, 200, "{d}");
        let body = json!({"client_id": client_id, "scope": "profile",
            "grant_type": "fxa-credentials", "access_type": "offline"});
        let (status, g) = common::fxa_post(&s, "/v1/oauth/token", &body, Some(&session)).await;
        assert_eq!(status, 200, "{g}");
        assert!(g["refresh_token"].is_string(), "{g}");
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let body = json!({"client_id": client_id, "scope": "profile", "state": "x",
            "response_type": "code", "code_challenge": challenge,
            "code_challenge_method": "S256"});
        let (status, a) =
            common::fxa_post(&s, "/v1/oauth/authorization", &body, Some(&session)).await;
        assert_eq!(status, 200, "{a}");

        let (status, clients) = fxa::bearer_get(&s, "/v1/account/attached_clients", &session).await;
        assert_eq!(status, 200, "{clients}");
        let clients = clients.as_array().unwrap();
        let sessions: Vec<&Value> = clients
            .iter()
            .filter(|c| c["sessionTokenId"].is_string())
            .collect();
        assert_eq!(sessions.len(), 100);
        assert!(
            sessions.iter().any(|c| c["isCurrentSession"] == true),
            "the new session was kept"
        );
        let refresh = clients
            .iter()
            .filter(|c| c["refreshTokenId"].is_string())
            .count();
        assert_eq!(refresh, 100);
        let (status, devices) = fxa::bearer_get(&s, "/v1/account/devices", &session).await;
        assert_eq!(status, 200);
        let devices = devices.as_array().unwrap();
        assert!(devices.len() <= 100, "{} devices", devices.len());
        assert!(
            devices
                .iter()
                .any(|d| d["name"] == "the newest" && d["isCurrentDevice"] == true)
        );
    });
    let c = db(&s);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM tokens WHERE kind = 'sessionToken'"
        ),
        100
    );
    assert_eq!(count(&c, "SELECT count(*) FROM refresh_tokens"), 100);
    assert_eq!(count(&c, "SELECT count(*) FROM oauth_codes"), 20);
    assert!(count(&c, "SELECT count(*) FROM devices") <= 100);
    // The oldest went: the first seeded sessions, and every device whose session went.
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM devices WHERE session_id_hash NOT IN (SELECT id_hash FROM tokens)"
        ),
        0
    );
    let oldest = crypto::sha256(b"seeded session 0").to_vec();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM tokens WHERE id_hash = ?1",
            [oldest],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "the least recently used session went first");
}

/// Item 11: only a bare `local@domain` is taken; a display name with another address,
/// a list of addresses and the like are refused with 400 errno 107 before anything is
/// stored or mailed.
#[test]
fn only_bare_addresses_are_taken_and_refusals_store_and_mail_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = fxa::open_server_with_mail(&rt, MAIL_FROM, &[]);
    rt.block_on(async {
        let bad = [
            "\"victim@example.com\" <attacker@evil.example>",
            "victim@example.com <attacker@evil.example>",
            "<attacker@evil.example>",
            "a@b.example,x@evil.example",
            "a@b.example;x@evil.example",
            "a@b.example x@evil.example",
            "a@b@evil.example",
            "\"a b\"@example.org",
            "a@example.org\r\nBcc: x@evil.example",
            "a@localhost",
            "a@-example.org",
            "a@example..org",
            "(comment)a@example.org",
            "",
        ];
        for email in bad {
            let (status, err) = create(&s, email).await;
            assert_eq!((status, errno(&err)), (400, Some(107)), "{email:?}: {err}");
        }
        let long = format!("{}@{}.example.org", "a".repeat(64), "b".repeat(200));
        let (status, err) = create(&s, &long).await;
        assert_eq!((status, errno(&err)), (400, Some(107)), "{err}");
        assert_eq!(count(&db(&s), "SELECT count(*) FROM accounts"), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(mails.try_recv().is_err(), "a refused sign-up sent mail");

        // A bare address is taken, stored and mailed as given.
        let email = "First.Last+sync@Mail.Example.org";
        let (status, made) = create(&s, email).await;
        assert_eq!(status, 200, "{made}");
        let mail = next_mail(&mut mails).await;
        assert!(mail.contains(&format!("To: {email}")), "{mail}");
        let stored: String = db(&s)
            .query_row("SELECT email FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, email);
    });
}

/// Item 15 (a): a Hawk-signed request with a body must sign the body (its payload hash):
/// a device renamed with an unsigned body, or with the hash of another body, is 401
/// errno 109 and nothing changes.
#[test]
fn hawk_signed_bodies_must_carry_their_payload_hash() {
    use syncstore::auth::hawk::payload_hash;
    let s = fxa::server_with_account("hawk@example.org", PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, l) = login(&s, "hawk@example.org").await;
        assert_eq!(status, 200, "{l}");
        let token = l["sessionToken"].as_str().unwrap();
        let path = "/v1/account/device";
        let body = json!({"name": "signed", "type": "desktop"}).to_string();
        let hash = payload_hash("application/json", body.as_bytes());
        let authz = fxa::session_hawk(&s, token, "POST", path, "n1", Some(&hash));
        let (status, d) = fxa::send(&s, reqwest::Method::POST, path, &authz, Some(&body)).await;
        assert_eq!(status, 200, "{d}");
        let id = d["id"].as_str().unwrap();

        // No hash: refused.
        let rename = json!({"id": id, "name": "renamed by someone else"}).to_string();
        let authz = fxa::session_hawk(&s, token, "POST", path, "n2", None);
        let (status, err) = fxa::send(&s, reqwest::Method::POST, path, &authz, Some(&rename)).await;
        assert_eq!((status, errno(&err)), (401, Some(109)), "{err}");
        // The hash of another body: refused.
        let authz = fxa::session_hawk(&s, token, "POST", path, "n3", Some(&hash));
        let (status, err) = fxa::send(&s, reqwest::Method::POST, path, &authz, Some(&rename)).await;
        assert_eq!((status, errno(&err)), (401, Some(109)), "{err}");

        let authz = fxa::session_hawk(&s, token, "GET", "/v1/account/devices", "n4", None);
        let (status, list) = fxa::send(
            &s,
            reqwest::Method::GET,
            "/v1/account/devices",
            &authz,
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list[0]["name"], "signed", "{list}");

        // Signed: accepted.
        let hash = payload_hash("application/json", rename.as_bytes());
        let authz = fxa::session_hawk(&s, token, "POST", path, "n5", Some(&hash));
        let (status, d) = fxa::send(&s, reqwest::Method::POST, path, &authz, Some(&rename)).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["name"], "renamed by someone else");
        // An empty body needs no hash (nothing to tamper with).
        let authz = fxa::session_hawk(&s, token, "POST", "/v1/session/destroy", "n6", None);
        let (status, d) = fxa::send(
            &s,
            reqwest::Method::POST,
            "/v1/session/destroy",
            &authz,
            None,
        )
        .await;
        assert_eq!(status, 200, "{d}");
    });
}

/// Item 15 (b): the stored email code is a keyed hash (HMAC under a key derived from
/// the deployment secret), not SHA-256(uid:code) that a stolen database reverses in a
/// million tries. The key is derived, not random: a restart (or another process) with
/// the same secret verifies the code; one with another secret does not.
#[test]
fn email_codes_are_stored_under_a_key_from_the_deployment_secret() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, mut mails) = rt.block_on(fxa::smtp_sink());
    let env = fxa::open_mail_env(port, MAIL_FROM);
    let s = Server::start(&env_refs(&env));
    let (uid, session, code) = rt.block_on(async {
        let (status, made) = create(&s, "keyed@example.org").await;
        assert_eq!(status, 200, "{made}");
        let code = code_in(&next_mail(&mut mails).await);
        (
            made["uid"].as_str().unwrap().to_string(),
            session_bearer(made["sessionToken"].as_str().unwrap()),
            code,
        )
    });
    let stored: Vec<u8> = db(&s)
        .query_row(
            "SELECT code_hash FROM email_codes WHERE uid = ?1",
            [&uid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored.len(), 32);
    for unkeyed in [
        crypto::sha256(format!("{uid}:{code}").as_bytes()),
        crypto::sha256(code.as_bytes()),
        crypto::sha256(format!("{code}:{uid}").as_bytes()),
    ] {
        assert_ne!(stored, unkeyed.to_vec(), "the code is stored unkeyed");
    }
    let verify = |s: &Server| rt.block_on(fxa::verify_code(s, &session, &code));
    let data = s.stop();
    let mut other = env_refs(&env);
    other.push(("SYNCSTORE_SECRETS", "another-deployment-secret"));
    let s = Server::start_in(data, &other);
    let (status, err) = verify(&s);
    assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
    let data = s.stop();
    let s = Server::start_in(data, &env_refs(&env));
    let (status, ok) = verify(&s);
    assert_eq!(status, 200, "{ok}");
}

/// Item 15 (c): the accounts Hawk nonce cache is bounded per account, not per token: an
/// account flooding signed requests over several sessions at once is refused (429
/// errno 114) after its share, while another account's signed request still passes.
#[test]
fn one_accounts_nonce_flood_is_refused_for_that_account_only() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), "flood@example.org");
    add_account(data.path(), "bystander@example.org");
    let s = std::sync::Arc::new(Server::start_in(data, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut tokens = Vec::new();
        for _ in 0..4 {
            let (status, l) = login(&s, "flood@example.org").await;
            assert_eq!(status, 200, "{l}");
            tokens.push(l["sessionToken"].as_str().unwrap().to_string());
        }
        let (status, l) = login(&s, "bystander@example.org").await;
        assert_eq!(status, 200, "{l}");
        let bystander = l["sessionToken"].as_str().unwrap().to_string();

        // Four sessions of one account, at once, each up to 400 signed requests (1,600
        // in all, above the per-account share of 1,000): stop at the first refusal.
        let started = Instant::now();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(tokens.len()));
        let mut tasks = Vec::new();
        for (t, token) in tokens.iter().enumerate() {
            let (s, token, barrier) = (s.clone(), token.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                barrier.wait().await;
                let (mut ok, mut refused) = (0, None);
                for i in 0..400 {
                    let authz = fxa::session_hawk(
                        &s,
                        &token,
                        "GET",
                        "/v1/session/status",
                        &format!("{t}-{i}"),
                        None,
                    );
                    let r = client
                        .get(format!("{}/v1/session/status", s.url()))
                        .header("authorization", authz)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    match status {
                        200 => ok += 1,
                        _ => {
                            refused = Some((status, body));
                            break;
                        }
                    }
                }
                (ok, refused)
            }));
        }
        let mut total_ok = 0;
        let mut refusals = Vec::new();
        for t in tasks {
            let (ok, refused) = t.await.unwrap();
            total_ok += ok;
            refusals.extend(refused);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{:?}",
            started.elapsed()
        );
        assert!(
            total_ok <= 1000,
            "{total_ok} nonces of one account were taken"
        );
        assert!(!refusals.is_empty(), "the flood was never refused");
        for (status, body) in &refusals {
            assert_eq!((*status, errno(body)), (429, Some(114)), "{body}");
        }
        // The other account is unaffected; the flooding one is still refused.
        let authz = fxa::session_hawk(&s, &bystander, "GET", "/v1/session/status", "b1", None);
        let (status, st) =
            fxa::send(&s, reqwest::Method::GET, "/v1/session/status", &authz, None).await;
        assert_eq!(status, 200, "{st}");
        let authz = fxa::session_hawk(&s, &tokens[0], "GET", "/v1/session/status", "again", None);
        let (status, err) =
            fxa::send(&s, reqwest::Method::GET, "/v1/session/status", &authz, None).await;
        assert_eq!((status, errno(&err)), (429, Some(114)), "{err}");
    });
}
