//! Tokens of the built-in accounts service at the tokenserver, the profile and
//! `/v1/verify` (security review, issue 27, items 1, 8, 12 and 13): each test starts the
//! real server on 127.0.0.1, signs in over HTTP as a client does (the password
//! stretched here, kB unwrapped from the key bundle) and plays the attack.

use std::time::{Duration, Instant};

use crate::common::fxa::{self, OLDSYNC, assert_refused, at_once, hex32, sync_token};
use crate::common::{self, Server};
use serde_json::{Value, json};
use syncstore::accounts::{crypto, now_ms};
use syncstore::tokenserver::db::AssignmentDb;
use syncstore::tokenserver::store as ts_store;

const EMAIL: &str = "dora@example.org";
const PASSWORD: &str = "dora's long passphrase";
const NEW_PASSWORD: &str = "dora's new and longer passphrase";

/// A server whose accounts database holds `EMAIL` (made by `syncstore account add`).
fn server_with_account(env: &[(&str, &str)]) -> Server {
    fxa::server_with_account(EMAIL, PASSWORD, env)
}

/// A signed-in session: its token and, when keys were asked for, its key fetch token.
struct Session {
    token: [u8; 32],
    key_fetch: Option<[u8; 32]>,
}

impl Session {
    /// `Authorization: Bearer fxs_<id>`, as current FxA clients send the session.
    fn bearer(&self) -> String {
        fxa::token_bearer("fxs", &self.token, "sessionToken")
    }
}

/// Signs in with `password` (keys too when `keys`).
async fn login(s: &Server, password: &str, keys: bool) -> Session {
    let (status, session) = fxa::login(s, EMAIL, password, keys).await;
    assert_eq!(status, 200, "{session}");
    Session {
        token: hex32(&session["sessionToken"]),
        key_fetch: keys.then(|| hex32(&session["keyFetchToken"])),
    }
}

/// kB, as a client derives it: the bundle unwrapped with the key fetch token, `wrapKb`
/// unwrapped with the password.
async fn kb(s: &Server, session: &Session, password: &str) -> [u8; 32] {
    let kft = session.key_fetch.expect("signed in with keys");
    fxa::kb(s, EMAIL, password, &kft).await
}

/// The account's keys_changed_at, as Firefox learns it (scoped-key-data).
async fn keys_changed_at(s: &Server, session: &Session) -> i64 {
    fxa::keys_changed_at(s, &session.bearer()).await
}

/// The owner signed in with keys, as Firefox does before it syncs: the session, kB,
/// the account's keys_changed_at and the X-KeyID of kB there.
async fn owner_keys(s: &Server) -> (Session, [u8; 32], i64, String) {
    let owner = login(s, PASSWORD, true).await;
    let kb = kb(s, &owner, PASSWORD).await;
    let kca = keys_changed_at(s, &owner).await;
    let kid = owner_key_id(kca, &kb);
    (owner, kb, kca, kid)
}

/// An OAuth grant from the session (`fxa-credentials`), with the lifetime asked for.
async fn grant(s: &Server, session: &Session, scope: &str, ttl: Option<i64>) -> (u16, Value) {
    fxa::grant(s, &session.bearer(), scope, ttl).await
}

/// An access token with the oldsync and profile scopes.
async fn access_token(s: &Server, session: &Session) -> String {
    let (status, g) = grant(s, session, &format!("{OLDSYNC} profile"), None).await;
    assert_eq!(status, 200, "{g}");
    g["access_token"].as_str().unwrap().to_string()
}

/// The X-KeyID of kB at `kca`, as Firefox sends it.
fn owner_key_id(kca: i64, kb: &[u8; 32]) -> String {
    common::key_id(kca, &crypto::client_state(kb))
}

/// `GET /v1/profile` with a Bearer token: status and body.
async fn profile(s: &Server, bearer: &str) -> (u16, Value) {
    fxa::bearer_get(s, "/v1/profile", bearer).await
}

/// `POST /v1/verify` of an access token: status and body.
async fn verify(s: &Server, access: &str) -> (u16, Value) {
    common::fxa_post(s, "/v1/verify", &json!({"token": access}), None).await
}

/// Changes the password over the API as a client does, keeping kB (`wrapKb` under
/// the new password); the new session.
async fn change_password(s: &Server, kb: &[u8; 32]) -> Session {
    let body = json!({"email": EMAIL, "oldAuthPW": fxa::auth_pw_hex(EMAIL, PASSWORD)});
    let (status, started) = common::fxa_post(s, "/v1/password/change/start", &body, None).await;
    assert_eq!(status, 200, "{started}");
    let pct = hex32(&started["passwordChangeToken"]);
    let stretched = crypto::quick_stretch(EMAIL, NEW_PASSWORD);
    let wrap_kb = crypto::xor32(kb, &crypto::unwrap_b_key(&stretched));
    let body = json!({
        "authPW": hex::encode(crypto::auth_pw(&stretched)),
        "wrapKb": hex::encode(wrap_kb),
    });
    let bearer = fxa::token_bearer("fxpc", &pct, "passwordChangeToken");
    let (status, finished) =
        common::fxa_post(s, "/v1/password/change/finish", &body, Some(&bearer)).await;
    assert_eq!(status, 200, "{finished}");
    Session {
        token: hex32(&finished["sessionToken"]),
        key_fetch: None,
    }
}

// Item 1: a thief holding the owner's session tries to register other keys.
#[test]
fn a_stolen_session_cannot_change_the_owners_sync_keys() {
    let s = server_with_account(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (owner, kb, kca, owner_kid) = owner_keys(&s).await;
        let access = access_token(&s, &owner).await;
        let first = sync_token(&s, &access, &owner_kid).await;
        assert_eq!(first.0, 200, "{}", first.1);
        let uid = first.1["uid"].as_u64().unwrap();

        // The thief uses the same session: its own access token, then any keys.
        let stolen = access_token(&s, &owner).await;
        let other_state = [0x5a; 16];
        // (Another state at the account's keys_changed_at, from a sign-in no newer
        // than the owner's: invalid-client-state.)
        for (kid, status) in [
            (
                common::key_id(now_ms(), &other_state),
                "invalid-keysChangedAt",
            ),
            (
                common::key_id(now_ms(), &crypto::client_state(&kb)),
                "invalid-keysChangedAt",
            ),
            (
                common::key_id(kca + 1, &other_state),
                "invalid-keysChangedAt",
            ),
            (
                common::key_id(kca - 1, &other_state),
                "invalid-keysChangedAt",
            ),
            (common::key_id(kca, &other_state), "invalid-client-state"),
        ] {
            let refused = sync_token(&s, &stolen, &kid).await;
            assert_refused(&refused, status);
        }

        // Nothing changed: the owner's keys still get the same uid, from a new session
        // as well.
        let again = sync_token(&s, &access, &owner_kid).await;
        assert_eq!(again.0, 200, "{}", again.1);
        assert_eq!(again.1["uid"].as_u64(), Some(uid), "{}", again.1);
        let other_session = login(&s, PASSWORD, false).await;
        let fresh = access_token(&s, &other_session).await;
        let again = sync_token(&s, &fresh, &owner_kid).await;
        assert_eq!(again.1["uid"].as_u64(), Some(uid), "{}", again.1);
    });
}

// Item 1 (the squat) and item 12 (generation): the thief registers a wrong client state
// before the owner ever synced; the owner changes the password and takes Sync back with
// the same kB; the thief's access token from before the change is refused everywhere.
#[test]
fn the_owner_takes_back_a_squatted_client_state_by_changing_the_password() {
    let s = server_with_account(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (owner, kb, kca, owner_kid) = owner_keys(&s).await;

        // The thief, with the owner's session, is first; the server cannot tell a wrong
        // client state from a right one at the account's keys_changed_at.
        let stolen = access_token(&s, &owner).await;
        let squat = sync_token(&s, &stolen, &common::key_id(kca, &[0x5a; 16])).await;
        assert_eq!(squat.0, 200, "{}", squat.1);
        let squat_uid = squat.1["uid"].as_u64().unwrap();
        // The owner's own keys are refused from this session (tests/it/accounts_client_state.rs:
        // a new sign-in takes them back)…
        let access = access_token(&s, &owner).await;
        let refused = sync_token(&s, &access, &owner_kid).await;
        assert_refused(&refused, "invalid-client-state");

        // …until the password changes (kB kept, every other session revoked).
        let renewed = change_password(&s, &kb).await;
        let (status, body) = grant(&s, &owner, OLDSYNC, None).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
        let access = access_token(&s, &renewed).await;
        let back = sync_token(&s, &access, &owner_kid).await;
        assert_eq!(back.0, 200, "{}", back.1);
        let uid = back.1["uid"].as_u64().unwrap();
        assert_ne!(uid, squat_uid, "{}", back.1);
        // The same kB from a new sign-in with the new password.
        let again = login(&s, NEW_PASSWORD, true).await;
        assert_eq!(self::kb(&s, &again, NEW_PASSWORD).await, kb);

        // Item 12: the thief's access token from before the change is refused by the
        // tokenserver (whatever keys it names), the profile and /v1/verify.
        let old = sync_token(&s, &stolen, &owner_kid).await;
        assert_refused(&old, "invalid-generation");
        let old = sync_token(&s, &stolen, &common::key_id(kca, &[0x5b; 16])).await;
        assert_refused(&old, "invalid-generation");
        let (status, body) = profile(&s, &stolen).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
        let (status, body) = verify(&s, &stolen).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
        // The owner's new token is answered by both, and keeps its uid.
        assert_eq!(profile(&s, &access).await.0, 200);
        let (status, body) = verify(&s, &access).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["generation"].as_i64().map(|g| g > kca), Some(true));
        let still = sync_token(&s, &access, &owner_kid).await;
        assert_eq!(still.1["uid"].as_u64(), Some(uid), "{}", still.1);
    });
}

// Item 12: disabling an account stops its access tokens at the tokenserver, the profile
// and /v1/verify, and its storage token at the storage node within seconds; enabling it
// makes the storage token work again (the data was kept; the storage token lives an hour
// at most), but not the access tokens issued before the disabling.
#[test]
fn a_disabled_accounts_tokens_stop_working_everywhere_until_it_is_enabled() {
    let s = server_with_account(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (owner, _, _, kid) = owner_keys(&s).await;
        let access = access_token(&s, &owner).await;
        let (status, sync) = sync_token(&s, &access, &kid).await;
        assert_eq!(status, 200, "{sync}");
        let uid = sync["uid"].as_u64().unwrap();
        let storage = fxa::storage_client(&s, &sync);
        let r = storage
            .put("/storage/bookmarks/b1", &json!({"payload": "kept"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);

        common::account_cli(s.data.path(), &["disable", EMAIL], &[], "");
        assert_refused(&sync_token(&s, &access, &kid).await, "invalid-credentials");
        let (status, body) = profile(&s, &access).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
        let (status, body) = verify(&s, &access).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
        let started = Instant::now();
        loop {
            let r = storage.get("/storage/bookmarks/b1").await;
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the disabled account's storage token still works after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        common::account_cli(s.data.path(), &["enable", EMAIL], &[], "");
        let started = Instant::now();
        loop {
            let r = storage.get("/storage/bookmarks/b1").await;
            if r.status == 200 {
                assert_eq!(r.json()["payload"], "kept");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the enabled account's storage token is still refused after 10 s: {} {}",
                r.status,
                r.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The access token from before the disabling stays dead (F3 of the review:
        // disabling moves the token generation); a new sign-in gets the same uid.
        assert_refused(&sync_token(&s, &access, &kid).await, "invalid-generation");
        let owner = login(&s, PASSWORD, false).await;
        let access = access_token(&s, &owner).await;
        let again = sync_token(&s, &access, &kid).await;
        assert_eq!(again.1["uid"].as_u64(), Some(uid), "{}", again.1);
    });
}

// Item 12: access tokens are short-lived, whatever the client asks for.
#[test]
fn access_tokens_live_an_hour_unless_asked_and_six_hours_at_most() {
    let s = server_with_account(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let owner = login(&s, PASSWORD, false).await;
        for (asked, given) in [(None, 3600), (Some(600), 600), (Some(86_400), 6 * 3600)] {
            let (status, g) = grant(&s, &owner, OLDSYNC, asked).await;
            assert_eq!(status, 200, "{g}");
            assert_eq!(
                g["expires_in"].as_i64(),
                Some(given),
                "asked {asked:?}: {g}"
            );
            let (_, v) = verify(&s, g["access_token"].as_str().unwrap()).await;
            assert!(v["user"].is_string(), "{v}");
        }
    });
}

// Item 13: one key fetch token, 20 requests at once: one bundle.
#[test]
fn a_key_fetch_token_gives_its_bundle_once_under_concurrency() {
    let s = server_with_account(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..3 {
        let session = rt.block_on(login(&s, PASSWORD, true));
        let bearer = fxa::token_bearer("fxk", &session.key_fetch.unwrap(), "keyFetchToken");
        let request = format!(
            "GET /v1/account/keys HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\n\
             Connection: close\r\n\r\n",
            s.addr,
        );
        let statuses = at_once(&s.addr, &request, 20);
        let ok = statuses.iter().filter(|&&c| c == 200).count();
        assert_eq!(ok, 1, "round {round}: {statuses:?}");
        assert!(
            statuses.iter().all(|&c| c == 200 || c == 401),
            "round {round}: {statuses:?}"
        );
    }
}

// Item 8: with the accounts service on and `fxa_verify_url = "auto"` (the default),
// only the service's own tokens are trusted; Mozilla's (here a JWT of the test FxA key)
// only when the operator configures `fxa_jwks` or `fxa_verify_url`, and then both.
#[test]
fn with_accounts_on_auto_trusts_only_the_services_own_tokens() {
    let foreign = common::sign_test_jwt(
        &json!({
            "sub": "0123456789abcdef0123456789abcdef", "scope": OLDSYNC,
            "iss": common::TEST_ISSUER, "iat": common::now(), "exp": common::now() + 3600,
        }),
        "test-key-1",
        "at+jwt",
    );
    let foreign_kid = common::key_id(1_700_000_000_000, &[1; 16]);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let s = server_with_account(&[("SYNCSTORE_FXA_ISSUER", common::TEST_ISSUER)]);
    rt.block_on(async {
        assert_refused(
            &sync_token(&s, &foreign, &foreign_kid).await,
            "invalid-credentials",
        );
        let (owner, _, _, kid) = owner_keys(&s).await;
        let access = access_token(&s, &owner).await;
        assert_eq!(sync_token(&s, &access, &kid).await.0, 200);
    });
    let log = s.log_text();
    let said = log
        .lines()
        .find(|l| l.contains("the tokenserver trusts"))
        .unwrap_or_else(|| panic!("no log line of the trusted issuers: {log}"));
    assert!(said.contains("accounts service"), "{said}");
    assert!(
        !said.contains("oauth.accounts.firefox.com") && !said.contains("fxa_jwks"),
        "{said}"
    );
    drop(s);

    // Configured explicitly: Mozilla's tokens and the service's own.
    let jwks = common::test_jwks_path();
    let s = server_with_account(&[
        ("SYNCSTORE_FXA_ISSUER", common::TEST_ISSUER),
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
    ]);
    rt.block_on(async {
        let (status, body) = sync_token(&s, &foreign, &foreign_kid).await;
        assert_eq!(status, 200, "{body}");
        let (owner, _, _, kid) = owner_keys(&s).await;
        let access = access_token(&s, &owner).await;
        let (status, body) = sync_token(&s, &access, &kid).await;
        assert_eq!(status, 200, "{body}");
    });
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("the tokenserver trusts") && l.contains("fxa_jwks")),
        "{log}"
    );
    drop(s);

    // A verify URL set explicitly is trusted beside the service too.
    rt.block_on(async {
        let verifier = common::fake_verifier().await;
        let s = server_with_account(&[("SYNCSTORE_FXA_VERIFY_URL", verifier.as_str())]);
        let (status, body) = sync_token(&s, "good-someone", &foreign_kid).await;
        assert_eq!(status, 200, "{body}");
        let (owner, _, _, kid) = owner_keys(&s).await;
        let access = access_token(&s, &owner).await;
        assert_eq!(sync_token(&s, &access, &kid).await.0, 200);
    });
}

/// The store queries of these fixes, run on each backend: a key fetch token is taken
/// once (and only as its own kind); disablings and enablings are queued and forgotten
/// only as applied; the assignment database marks and unmarks a disabled user.
fn store_conformance(store: &syncstore::accounts::store::Store, db: &AssignmentDb) {
    use syncstore::accounts::store::TokenRow;
    let account =
        syncstore::accounts::insert_new_account(store, EMAIL, &[7; 32], None, true).unwrap();
    let now = now_ms();
    let row = |id: u8, kind: &str| TokenRow {
        id_hash: [id; 32],
        kind: kind.into(),
        uid: account.uid.clone(),
        auth_key: [id; 32],
        data: (kind == "keyFetchToken").then(|| vec![id; 64]),
        created_at: now,
        last_used_at: now,
        user_agent: String::new(),
    };
    store.insert_token(&row(1, "keyFetchToken")).unwrap();
    store.insert_token(&row(2, "sessionToken")).unwrap();
    assert_eq!(
        store.take_token(&[2; 32], "keyFetchToken").unwrap(),
        None,
        "another kind"
    );
    assert_eq!(
        store.take_token(&[1; 32], "keyFetchToken").unwrap(),
        Some(Some(vec![1; 64]))
    );
    assert_eq!(store.take_token(&[1; 32], "keyFetchToken").unwrap(), None);
    assert!(store.token(&[2; 32], "sessionToken").unwrap().is_some());

    assert!(store.pending_state_changes(10).unwrap().is_empty());
    assert!(store.set_disabled(EMAIL, true).unwrap());
    let disabled = store.pending_state_changes(10).unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(
        (disabled[0].uid.as_str(), disabled[0].disabled),
        (account.uid.as_str(), true)
    );
    std::thread::sleep(Duration::from_millis(2));
    assert!(store.set_disabled(EMAIL, false).unwrap());
    // Applying the disabling late does not forget the enabling that followed.
    store.finish_state_change(&disabled[0]).unwrap();
    let enabled = store.pending_state_changes(10).unwrap();
    assert_eq!(enabled.len(), 1);
    assert!(!enabled[0].disabled);
    store.finish_state_change(&enabled[0]).unwrap();
    assert!(store.pending_state_changes(10).unwrap().is_empty());
    assert!(!store.set_disabled("nobody@example.org", true).unwrap());

    let fxa_uid = account.uid.clone();
    let (uid, other) = db
        .transaction(|tx| {
            ts_store::add_node(tx, "http://node.test", 10)?;
            let node = ts_store::node_by_url(tx, "http://node.test")?.unwrap();
            let mut user = ts_store::NewUser {
                fxa_uid: &fxa_uid,
                email: "x@example.org",
                generation: 1,
                keys_changed_at: Some(1),
                client_state: "aa",
                node_id: node.id,
                now,
            };
            let uid = ts_store::insert_user(tx, &user)?;
            user.fxa_uid = "someone-else";
            let other = ts_store::insert_user(tx, &user)?;
            Ok::<_, syncstore::tokenserver::db::DbError>((uid, other))
        })
        .unwrap();
    let marked = db
        .transaction(|tx| ts_store::set_user_disabled(tx, &fxa_uid, true, now))
        .unwrap();
    assert_eq!(marked, vec![uid]);
    // Twice is harmless.
    db.transaction(|tx| ts_store::set_user_disabled(tx, &fxa_uid, true, now))
        .unwrap();
    let disabled = |uid: i64| {
        db.transaction(|tx| ts_store::uid_disabled(tx, uid))
            .unwrap()
    };
    assert!(disabled(uid));
    assert!(!disabled(other));
    db.transaction(|tx| ts_store::set_user_disabled(tx, &fxa_uid, false, now))
        .unwrap();
    assert!(!disabled(uid));
}

#[test]
fn the_store_queries_of_these_fixes_work_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = syncstore::accounts::store::Store::open(dir.path(), "").unwrap();
    let db = AssignmentDb::open("", dir.path()).unwrap();
    store_conformance(&store, &db);
}

/// The same on PostgreSQL, when there is one to test on (`scripts/test` starts it and
/// sets `SYNCSTORE_TEST_POSTGRES_URL`).
#[tokio::test(flavor = "multi_thread")]
async fn the_store_queries_of_these_fixes_work_on_postgres() {
    if std::env::var("SYNCSTORE_TEST_POSTGRES_URL").is_err() {
        eprintln!("SYNCSTORE_TEST_POSTGRES_URL is not set: not run on PostgreSQL");
        return;
    }
    let url = common::fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let store = syncstore::accounts::store::Store::open(dir.path(), &url).unwrap();
        assert!(store.is_shared());
        let db = AssignmentDb::open(&url, dir.path()).unwrap();
        store_conformance(&store, &db);
    })
    .await
    .unwrap();
}
