//! Who may register the client state (the key hash in X-KeyID) of an account of the
//! built-in accounts service at the tokenserver (security review, issue 27, item 1, and
//! the follow-up finding that a thief who syncs first squats the owner's state): the
//! server never sees kB, so the first state registered is not final; at the same
//! keys_changed_at another state is taken only from a token whose session proved the
//! password later than the one that registered the current state (a new sign-in).
//! A stolen session, and every access token, authorization code or refresh token made
//! with it, keeps that session's sign-in time. Each test starts the real server on
//! 127.0.0.1 and plays the owner and the thief over HTTP.

use crate::common::fxa::{self, FIREFOX, OLDSYNC, hex32, sync_token, token_bearer};
use crate::common::{self, Server};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const EMAIL: &str = "erin@example.org";
const PASSWORD: &str = "erin's long passphrase";
/// A PKCE verifier (43 characters) and the thief's bogus client state.
const VERIFIER: &str = "the-thiefs-pkce-verifier-0123456789abcdefgh";
const BOGUS: [u8; 16] = [0x5a; 16];

/// A server whose accounts database holds `EMAIL` (made by `syncstore account add`).
fn server_with_account() -> Server {
    fxa::server_with_account(EMAIL, PASSWORD, &[])
}

/// A signed-in session (password proved now): its `fxs_` Bearer and key fetch token.
struct Session {
    bearer: String,
    key_fetch: [u8; 32],
}

async fn login(s: &Server) -> Session {
    let (status, session) = fxa::login(s, EMAIL, PASSWORD, true).await;
    assert_eq!(status, 200, "{session}");
    Session {
        bearer: token_bearer("fxs", &hex32(&session["sessionToken"]), "sessionToken"),
        key_fetch: hex32(&session["keyFetchToken"]),
    }
}

/// The owner's X-KeyID, as Firefox derives it: kB from the key bundle and the
/// password, keys_changed_at from scoped-key-data.
async fn owner_key_id(s: &Server, session: &Session) -> (String, i64) {
    let kb = fxa::kb(s, EMAIL, PASSWORD, &session.key_fetch).await;
    let kca = keys_changed_at(s, session).await;
    (common::key_id(kca, &crypto::client_state(&kb)), kca)
}

/// keyRotationTimestamp, which anyone holding the session can read.
async fn keys_changed_at(s: &Server, session: &Session) -> i64 {
    fxa::keys_changed_at(s, &session.bearer).await
}

/// `POST /v1/oauth/token` with `body`: status and answer.
async fn token(s: &Server, body: Value, bearer: Option<&str>) -> Value {
    let (status, g) = common::fxa_post(s, "/v1/oauth/token", &body, bearer).await;
    assert_eq!(status, 200, "{g}");
    g
}

/// An oldsync access token straight from the session (fxa-credentials, as Firefox).
async fn access(s: &Server, session: &Session) -> String {
    let body = json!({"grant_type": "fxa-credentials", "client_id": FIREFOX, "scope": OLDSYNC});
    let g = token(s, body, Some(&session.bearer)).await;
    g["access_token"].as_str().unwrap().to_string()
}

/// A refresh token made with the session (fxa-credentials, offline).
async fn refresh_token(s: &Server, session: &Session) -> String {
    let body = json!({"grant_type": "fxa-credentials", "client_id": FIREFOX,
        "scope": OLDSYNC, "access_type": "offline"});
    let g = token(s, body, Some(&session.bearer)).await;
    g["refresh_token"].as_str().unwrap().to_string()
}

/// An access token from a refresh token.
async fn access_from_refresh(s: &Server, refresh: &str) -> String {
    let body = json!({"grant_type": "refresh_token", "client_id": FIREFOX,
        "refresh_token": refresh});
    token(s, body, None).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An authorization code from the session (offline, PKCE S256).
async fn authorization_code(s: &Server, session: &Session) -> String {
    let challenge = URL_SAFE_NO_PAD.encode(crypto::sha256(VERIFIER.as_bytes()));
    let body = json!({"client_id": FIREFOX, "scope": OLDSYNC, "state": "x",
        "response_type": "code", "access_type": "offline",
        "code_challenge": challenge, "code_challenge_method": "S256"});
    let (status, a) =
        common::fxa_post(s, "/v1/oauth/authorization", &body, Some(&session.bearer)).await;
    assert_eq!(status, 200, "{a}");
    a["code"].as_str().unwrap().to_string()
}

/// The access and refresh tokens a code is traded for.
async fn trade_code(s: &Server, code: &str) -> (String, String) {
    let body = json!({"grant_type": "authorization_code", "client_id": FIREFOX,
        "code": code, "code_verifier": VERIFIER});
    let g = token(s, body, None).await;
    (
        g["access_token"].as_str().unwrap().to_string(),
        g["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// A 200 and its storage uid.
fn granted(answer: &(u16, Value)) -> u64 {
    assert_eq!(answer.0, 200, "{}", answer.1);
    answer.1["uid"].as_u64().expect("a uid")
}

/// 401 `invalid-client-state`.
fn assert_client_state_refused(answer: &(u16, Value), what: &str) {
    assert_eq!(answer.0, 401, "{what}: {}", answer.1);
    assert_eq!(
        answer.1["status"], "invalid-client-state",
        "{what}: {}",
        answer.1
    );
}

/// The sign-in time an access token carries (its `syncstore-auth-at` claim, ms).
fn auth_at(access: &str) -> i64 {
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["syncstore-auth-at"]
        .as_i64()
        .expect("the claim is there")
}

// The thief, holding the owner's session before the owner's first sync, registers a
// bogus client state; the owner's own tokens from that session are refused (Firefox
// then asks the user to sign in again); the owner's new sign-in takes Sync back (a
// fresh uid), and nothing the thief holds (old access tokens, the session, a refresh
// token made before) can take it again.
#[test]
fn a_new_sign_in_takes_back_a_squatted_client_state_and_the_thief_cannot_retake_it() {
    let s = server_with_account();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let first = login(&s).await;
        let (owner_kid, kca) = owner_key_id(&s, &first).await;
        // The thief's loot: the session itself, a refresh token and an access token.
        let stolen_refresh = refresh_token(&s, &first).await;
        let stolen = access(&s, &first).await;
        let bogus_kid = common::key_id(kca, &BOGUS);
        let squat_uid = granted(&sync_token(&s, &stolen, &bogus_kid).await);

        // The owner's own token, from the session the thief holds: refused, and the
        // squatted row stays as it is.
        let own = access(&s, &first).await;
        let refused = sync_token(&s, &own, &owner_kid).await;
        assert_client_state_refused(&refused, "the owner's stolen session");
        assert_eq!(
            granted(&sync_token(&s, &stolen, &bogus_kid).await),
            squat_uid
        );

        // The owner signs in again: their keys are taken, with a fresh uid.
        let again = login(&s).await;
        let fresh = access(&s, &again).await;
        assert!(auth_at(&fresh) > auth_at(&own), "a newer sign-in");
        let owner_uid = granted(&sync_token(&s, &fresh, &owner_kid).await);
        assert_ne!(owner_uid, squat_uid);

        // Everything the thief holds is older than that sign-in: refused, whatever
        // bogus state it names, and nothing changes.
        let from_session = access(&s, &first).await;
        let from_refresh = access_from_refresh(&s, &stolen_refresh).await;
        for (what, token) in [
            ("the old access token", &stolen),
            ("a new token from the stolen session", &from_session),
            ("a token from the stolen refresh token", &from_refresh),
        ] {
            for state in [BOGUS, [0x5b; 16]] {
                let refused = sync_token(&s, token, &common::key_id(kca, &state)).await;
                assert_client_state_refused(&refused, what);
            }
        }
        assert_eq!(
            granted(&sync_token(&s, &fresh, &owner_kid).await),
            owner_uid
        );
        // The owner's keys are the keys: the old session's token (the owner's other
        // devices) gets the same uid with them.
        assert_eq!(granted(&sync_token(&s, &own, &owner_kid).await), owner_uid);
    });
}

// What the thief makes with the stolen session after the owner's new sign-in (a
// refresh token, an authorization code and the refresh token it is traded for) carries
// the stolen session's sign-in time, not the time it was made, and is refused.
#[test]
fn tokens_made_from_a_stolen_session_after_the_owners_sign_in_keep_its_old_sign_in_time() {
    let s = server_with_account();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stolen_session = login(&s).await;
        let kca = keys_changed_at(&s, &stolen_session).await;
        let old = access(&s, &stolen_session).await;
        let squat_uid = granted(&sync_token(&s, &old, &common::key_id(kca, &BOGUS)).await);

        let again = login(&s).await;
        let (owner_kid, _) = owner_key_id(&s, &again).await;
        let fresh = access(&s, &again).await;
        let owner_uid = granted(&sync_token(&s, &fresh, &owner_kid).await);
        assert_ne!(owner_uid, squat_uid);

        // Made now, from the stolen session.
        let refresh = refresh_token(&s, &stolen_session).await;
        let from_refresh = access_from_refresh(&s, &refresh).await;
        let code = authorization_code(&s, &stolen_session).await;
        let (from_code, code_refresh) = trade_code(&s, &code).await;
        let from_code_refresh = access_from_refresh(&s, &code_refresh).await;
        for (what, token) in [
            ("a refresh token made now", &from_refresh),
            ("an authorization code made now", &from_code),
            ("the code's refresh token", &from_code_refresh),
        ] {
            assert_eq!(auth_at(token), auth_at(&old), "{what}: the old sign-in");
            assert!(auth_at(token) < auth_at(&fresh), "{what}");
            let refused = sync_token(&s, token, &common::key_id(kca, &BOGUS)).await;
            assert_client_state_refused(&refused, what);
        }
        assert_eq!(
            granted(&sync_token(&s, &fresh, &owner_kid).await),
            owner_uid
        );
    });
}

// The newest sign-in that presented the current state is what a change must beat: once
// the owner's newer session has synced, a thief holding an older session of the owner
// cannot replace the state, even though that older session registered it first.
#[test]
fn a_thief_must_beat_the_newest_sign_in_that_synced_the_owners_state() {
    let s = server_with_account();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let older = login(&s).await;
        let (owner_kid, kca) = owner_key_id(&s, &older).await;
        let uid = granted(&sync_token(&s, &access(&s, &older).await, &owner_kid).await);
        let newer = login(&s).await;
        let newer_access = access(&s, &newer).await;
        assert_eq!(
            granted(&sync_token(&s, &newer_access, &owner_kid).await),
            uid
        );

        let refused = sync_token(&s, &access(&s, &older).await, &common::key_id(kca, &BOGUS)).await;
        assert_client_state_refused(&refused, "an older session of the owner");
        let refused = sync_token(&s, &newer_access, &common::key_id(kca, &BOGUS)).await;
        assert_client_state_refused(&refused, "the session that synced last");
        assert_eq!(
            granted(&sync_token(&s, &newer_access, &owner_kid).await),
            uid
        );
    });
}

// An upgrade: refresh tokens made before their rows kept a sign-in time, and
// assignments made before the tokenserver recorded one. A refresh token without the
// time counts as signed in at 0 (it can never replace a state); an assignment without
// a record counts as registered when its row was made (a session older than that
// cannot replace it, a new sign-in can).
#[test]
fn refresh_tokens_and_assignments_from_before_the_record_count_as_old() {
    let s = server_with_account();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first, legacy_refresh, kca, squat_uid) = rt.block_on(async {
        let first = login(&s).await;
        let kca = keys_changed_at(&s, &first).await;
        let legacy_refresh = refresh_token(&s, &first).await;
        let stolen = access(&s, &first).await;
        let squat_uid = granted(&sync_token(&s, &stolen, &common::key_id(kca, &BOGUS)).await);
        (first, legacy_refresh, kca, squat_uid)
    });
    // Back to the old layout: no auth_at column, no record of the assignment.
    let data = s.stop();
    let accounts = rusqlite::Connection::open(data.path().join("accounts.sqlite")).unwrap();
    accounts
        .execute_batch("ALTER TABLE refresh_tokens DROP COLUMN auth_at")
        .unwrap();
    drop(accounts);
    let assignments = rusqlite::Connection::open(data.path().join("tokenserver.sqlite")).unwrap();
    let n = assignments
        .execute("DELETE FROM local_client_states", [])
        .unwrap();
    assert_eq!(n, 1, "the squat was recorded");
    drop(assignments);

    let s = Server::start_in(data, &[]);
    rt.block_on(async {
        let other = common::key_id(kca, &[0x5b; 16]);
        let from_legacy = access_from_refresh(&s, &legacy_refresh).await;
        assert_eq!(auth_at(&from_legacy), 0);
        let refused = sync_token(&s, &from_legacy, &other).await;
        assert_client_state_refused(&refused, "a refresh token from before");
        let refused = sync_token(&s, &access(&s, &first).await, &other).await;
        assert_client_state_refused(&refused, "a session older than the row");

        let again = login(&s).await;
        let (owner_kid, _) = owner_key_id(&s, &again).await;
        let fresh = access(&s, &again).await;
        let owner_uid = granted(&sync_token(&s, &fresh, &owner_kid).await);
        assert_ne!(owner_uid, squat_uid);
        let refused = sync_token(&s, &from_legacy, &other).await;
        assert_client_state_refused(&refused, "a refresh token from before, again");
    });
}

/// The assignment database's record of who registered a client state, on a backend:
/// set, replaced, read, forgotten with the account's key history.
fn client_state_record_conformance(db: &syncstore::tokenserver::db::AssignmentDb) {
    use syncstore::tokenserver::store as ts;
    type R = Result<Option<(String, i64)>, syncstore::tokenserver::db::DbError>;
    let read = |uid: &str| -> R { db.transaction(|tx| ts::local_client_state(tx, uid)) };
    assert_eq!(read("f1").unwrap(), None);
    db.transaction(|tx| ts::set_local_client_state(tx, "f1", "aa", 5))
        .unwrap();
    db.transaction(|tx| ts::set_local_client_state(tx, "f2", "cc", 1))
        .unwrap();
    assert_eq!(read("f1").unwrap(), Some(("aa".into(), 5)));
    db.transaction(|tx| ts::set_local_client_state(tx, "f1", "bb", 9))
        .unwrap();
    assert_eq!(read("f1").unwrap(), Some(("bb".into(), 9)));
    db.transaction(|tx| ts::forget_client_states(tx, "f1"))
        .unwrap();
    assert_eq!(read("f1").unwrap(), None);
    assert_eq!(read("f2").unwrap(), Some(("cc".into(), 1)));
}

#[test]
fn the_client_state_record_works_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = syncstore::tokenserver::db::AssignmentDb::open("", dir.path()).unwrap();
    client_state_record_conformance(&db);
}

/// The same on PostgreSQL, when there is one to test on (`scripts/test` starts it and
/// sets `SYNCSTORE_TEST_POSTGRES_URL`).
#[tokio::test(flavor = "multi_thread")]
async fn the_client_state_record_works_on_postgres() {
    if std::env::var("SYNCSTORE_TEST_POSTGRES_URL").is_err() {
        eprintln!("SYNCSTORE_TEST_POSTGRES_URL is not set: not run on PostgreSQL");
        return;
    }
    let url = common::fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let db = syncstore::tokenserver::db::AssignmentDb::open(&url, dir.path()).unwrap();
        client_state_record_conformance(&db);
    })
    .await
    .unwrap();
}
