//! Pending sign-ups, re-enabling and password change finish (security review of the
//! issue-27 fixes, findings F2, F3, F5 and F6), black-box against the real server:
//! several unverified sign-ups of one address wait side by side and the first one
//! verified takes it; disabling an account kills its earlier access tokens for good;
//! one password change token finishes one change, also under concurrency. Plus the
//! migration of an older accounts file whose emails were unique over every account.

use std::time::{Duration, Instant};

use crate::common::fxa::{
    OLDSYNC, at_once_within, bearer_get, code_in, create, errno, grant, hex32, kb, keys_changed_at,
    login, next_mail, open_server_with_mail, server_with_account, sync_token, token_bearer,
    verify_code,
};
use crate::common::{self, Server};
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const OWNER_PASSWORD: &str = "the owner's own passphrase";
const ATTACKER_PASSWORD: &str = "the attacker's passphrase";

/// `Authorization: Bearer fxs_<id>` of a session token (hex).
fn session_bearer(v: &Value) -> String {
    token_bearer("fxs", &hex32(v), "sessionToken")
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

/// The next mail within `secs` seconds, if any.
async fn mail_within(
    mails: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    secs: u64,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(secs), mails.recv())
        .await
        .ok()
        .flatten()
}

/// F2: while the owner's sign-up waits for its code, an attacker signs up the same
/// address (with another password). Both wait side by side: a sign-in by email finds
/// the owner's pending account by its password, the owner's code still verifies it,
/// and verifying it deletes the attacker's pending account (with its session and
/// code). Then the address is held: a new sign-up gets 101.
#[test]
fn an_attackers_sign_up_leaves_the_owners_pending_sign_up_alone() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = open_server_with_mail(&rt, "Sync <sync@example.org>", &[]);
    rt.block_on(async {
        let email = "owner@example.org";
        let (status, owner) = create(&s, email, OWNER_PASSWORD, None).await;
        assert_eq!(status, 200, "{owner}");
        let owner_session = session_bearer(&owner["sessionToken"]);
        let mut owner_code = code_in(&next_mail(&mut mails).await);

        let (status, attacker) = create(&s, email, ATTACKER_PASSWORD, None).await;
        assert_eq!(status, 200, "the attacker's sign-up: {attacker}");
        assert_ne!(attacker["uid"], owner["uid"]);
        let attacker_session = session_bearer(&attacker["sessionToken"]);
        let attacker_code = code_in(&next_mail(&mut mails).await);

        // The owner's pending account, session and code are still there.
        let (status, st) = bearer_get(&s, "/v1/session/status", &owner_session).await;
        assert_eq!(
            (status, st["state"].as_str()),
            (200, Some("unverified")),
            "{st}"
        );
        let c = db(&s);
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM accounts WHERE normalized_email = 'owner@example.org' \
                 AND email_verified = 0"
            ),
            2,
            "two pending sign-ups side by side"
        );

        // A sign-in by email with the owner's password finds the owner's pending
        // account (not the newer attacker's); it may mail a fresh code for it.
        let (status, signed_in) = login(&s, email, OWNER_PASSWORD, false).await;
        assert_eq!(status, 200, "{signed_in}");
        assert_eq!(signed_in["uid"], owner["uid"], "{signed_in}");
        if let Some(mail) = mail_within(&mut mails, 2).await {
            owner_code = code_in(&mail);
        }
        let (status, err) = login(&s, email, "neither password", false).await;
        assert_eq!((status, errno(&err)), (400, Some(103)), "{err}");

        // The attacker's code does not verify the owner's account (unless it is the
        // same 6 digits, one chance in a million).
        if attacker_code != owner_code {
            let (status, err) = verify_code(&s, &owner_session, &attacker_code).await;
            assert_eq!(status, 400, "{err}");
        }
        let (status, ok) = verify_code(&s, &owner_session, &owner_code).await;
        assert_eq!(status, 200, "the owner's code: {ok}");
        let (status, st) = bearer_get(&s, "/v1/session/status", &owner_session).await;
        assert_eq!(
            (status, st["state"].as_str()),
            (200, Some("verified")),
            "{st}"
        );

        // The attacker's pending account is gone, with its session and code.
        let (status, err) = bearer_get(&s, "/v1/session/status", &attacker_session).await;
        assert_eq!((status, errno(&err)), (401, Some(110)), "{err}");
        let (status, err) = verify_code(&s, &attacker_session, &attacker_code).await;
        assert_eq!((status, errno(&err)), (401, Some(110)), "{err}");
        let attacker_uid = attacker["uid"].as_str().unwrap();
        for table in ["accounts", "tokens", "email_codes"] {
            let n: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE uid = ?1"),
                    [attacker_uid],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "{table} still holds the attacker's pending account");
        }
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM accounts WHERE normalized_email = 'owner@example.org'"
            ),
            1
        );

        // The owner signs in as before; the attacker's password is no sign-in.
        // (A new sign-up of the held address gets 101: accounts_state.rs; here the
        // mails to this recipient are spent.)
        let (status, err) = login(&s, email, ATTACKER_PASSWORD, false).await;
        assert_eq!((status, errno(&err)), (400, Some(103)), "{err}");
        let (status, again) = login(&s, email, OWNER_PASSWORD, false).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["uid"], owner["uid"]);
    });
}

/// F6: the verification is conditional: a pending account whose address another
/// account has verified in the meantime cannot be verified, even with its right code
/// (the store, on SQLite; the PostgreSQL conformance test runs the same store cases).
#[test]
fn a_pending_account_cannot_be_verified_once_another_holds_the_address() {
    use syncstore::accounts::store::{Account, CodeCheck, Inserted, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "").unwrap();
    let now = 1_700_000_000_000;
    let pending = |uid: char, email: &str, at: i64| Account {
        uid: uid.to_string().repeat(32),
        email: email.into(),
        auth_salt: [1; 32],
        verify_hash: [2; 32],
        wrap_wrap_kb: [3; 32],
        ka: [4; 32],
        verifier_set_at: at,
        keys_changed_at: at,
        created_at: at,
        disabled: false,
        display_name: None,
        email_verified: false,
    };
    let (a, b) = (
        pending('a', "Pat@example.org", now),
        pending('b', "pat@example.org", now + 1),
    );
    assert_eq!(store.insert_account(&a, None).unwrap(), Inserted::Created);
    assert_eq!(store.insert_account(&b, None).unwrap(), Inserted::Created);
    store.set_email_code(&a.uid, &[7; 32], now + 100).unwrap();
    store.set_email_code(&b.uid, &[8; 32], now + 100).unwrap();
    // The newest pending account is the one an operator command by email means.
    assert_eq!(
        store
            .account_by_email("PAT@example.org")
            .unwrap()
            .unwrap()
            .uid,
        b.uid
    );
    assert_eq!(
        store.accounts_by_email("pat@example.org", 3).unwrap().len(),
        2
    );
    // A verified account appears meanwhile (bypassing the delete of the pending ones,
    // as a racing process would): b's right code no longer verifies it.
    let c = rusqlite::Connection::open(dir.path().join("accounts.sqlite")).unwrap();
    c.execute(
        "UPDATE accounts SET email_verified = 1 WHERE uid = ?1",
        [&a.uid],
    )
    .unwrap();
    assert_eq!(
        store.verify_email_code(&b.uid, &[8; 32], now).unwrap(),
        CodeCheck::Taken
    );
    assert!(!store.account(&b.uid).unwrap().unwrap().email_verified);
    // A second verified account of the address is refused by the database itself.
    assert!(
        c.execute(
            "UPDATE accounts SET email_verified = 1 WHERE uid = ?1",
            [&b.uid],
        )
        .is_err(),
        "two verified accounts of one address"
    );
    assert_eq!(
        store.accounts_by_email("pat@example.org", 3).unwrap().len(),
        1,
        "the verified account alone"
    );
}

/// An accounts file of an older release (`normalized_email` UNIQUE over every account)
/// is rebuilt when opened: its accounts and what refers to them stay, and pending
/// sign-ups of one address can then wait side by side.
#[test]
fn an_older_accounts_file_is_migrated_keeping_its_rows() {
    use syncstore::accounts::store::{Account, Inserted, Store};
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("accounts.sqlite")).unwrap();
        c.execute_batch(
            "CREATE TABLE accounts (
                uid TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                normalized_email TEXT NOT NULL UNIQUE,
                auth_salt BLOB NOT NULL,
                verify_hash BLOB NOT NULL,
                wrap_wrap_kb BLOB NOT NULL,
                ka BLOB NOT NULL,
                verifier_set_at INTEGER NOT NULL,
                keys_changed_at INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0,
                display_name TEXT
            );
            CREATE TABLE tokens (
                id_hash BLOB PRIMARY KEY,
                kind TEXT NOT NULL,
                uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
                auth_key BLOB NOT NULL,
                data BLOB,
                created_at INTEGER NOT NULL,
                last_used_at INTEGER NOT NULL,
                user_agent TEXT NOT NULL DEFAULT ''
            );",
        )
        .unwrap();
        c.execute(
            "INSERT INTO accounts VALUES (?1, 'old@example.org', 'old@example.org', \
             zeroblob(32), zeroblob(32), zeroblob(32), zeroblob(32), 1, 1, 1, 0, 'Old')",
            ["d".repeat(32)],
        )
        .unwrap();
        c.execute(
            "INSERT INTO tokens VALUES (zeroblob(32), 'sessionToken', ?1, zeroblob(32), \
             NULL, 1, 1, 'ua')",
            ["d".repeat(32)],
        )
        .unwrap();
    }
    let store = Store::open(dir.path(), "").unwrap();
    let old = store.account(&"d".repeat(32)).unwrap().expect("kept");
    assert_eq!(
        (
            old.email.as_str(),
            old.display_name.as_deref(),
            old.email_verified
        ),
        ("old@example.org", Some("Old"), true)
    );
    assert!(
        store.token(&[0; 32], "sessionToken").unwrap().is_some(),
        "the old account's session was kept"
    );
    let c = rusqlite::Connection::open(dir.path().join("accounts.sqlite")).unwrap();
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'accounts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!sql.contains("UNIQUE"), "{sql}");
    drop(c);
    let pending = |uid: char| Account {
        uid: uid.to_string().repeat(32),
        email: "new@example.org".into(),
        auth_salt: [1; 32],
        verify_hash: [2; 32],
        wrap_wrap_kb: [3; 32],
        ka: [4; 32],
        verifier_set_at: 5,
        keys_changed_at: 5,
        created_at: 5,
        disabled: false,
        display_name: None,
        email_verified: false,
    };
    for uid in ['1', '2'] {
        assert_eq!(
            store.insert_account(&pending(uid), None).unwrap(),
            Inserted::Created
        );
    }
    let taken = Account {
        uid: "e".repeat(32),
        email: "OLD@example.org".into(),
        email_verified: false,
        ..pending('e')
    };
    assert_eq!(
        store.insert_account(&taken, None).unwrap(),
        Inserted::EmailTaken
    );
    // Reopening does not rebuild again.
    drop(store);
    let store = Store::open(dir.path(), "").unwrap();
    assert!(store.token(&[0; 32], "sessionToken").unwrap().is_some());
    assert_eq!(
        store.accounts_by_email("new@example.org", 5).unwrap().len(),
        2
    );
}

/// A signed-in session with keys: the session's Bearer, the X-KeyID of its kB, and an
/// access token (oldsync and profile) from it.
async fn sign_in_for_sync(s: &Server, email: &str, password: &str) -> (String, String, String) {
    let (status, session) = login(s, email, password, true).await;
    assert_eq!(status, 200, "{session}");
    let bearer = session_bearer(&session["sessionToken"]);
    let kb = kb(s, email, password, &hex32(&session["keyFetchToken"])).await;
    let kca = keys_changed_at(s, &bearer).await;
    let kid = common::key_id(kca, &crypto::client_state(&kb));
    let (status, g) = grant(s, &bearer, &format!("{OLDSYNC} profile"), None).await;
    assert_eq!(status, 200, "{g}");
    (bearer, kid, g["access_token"].as_str().unwrap().to_string())
}

/// F3: an account disabled and enabled again does not bring back the access tokens
/// issued before the disabling (tokenserver, /v1/profile, /v1/verify); its sessions
/// stay revoked; a new sign-in gets working tokens and the same storage uid.
#[test]
fn enabling_an_account_again_does_not_revive_its_earlier_access_tokens() {
    let email = "dora@example.org";
    let s = server_with_account(email, OWNER_PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (session, kid, access) = sign_in_for_sync(&s, email, OWNER_PASSWORD).await;
        let (status, sync) = sync_token(&s, &access, &kid).await;
        assert_eq!(status, 200, "{sync}");
        let uid = sync["uid"].as_u64().unwrap();
        let (status, body) = bearer_get(&s, "/v1/profile", &access).await;
        assert_eq!(status, 200, "{body}");

        common::account_cli(s.data.path(), &["disable", email], &[], "");
        common::account_cli(s.data.path(), &["enable", email], &[], "");

        let (status, body) = sync_token(&s, &access, &kid).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (401, Some("invalid-generation")),
            "{body}"
        );
        let (status, body) = bearer_get(&s, "/v1/profile", &access).await;
        assert_eq!((status, errno(&body)), (401, Some(110)), "{body}");
        let (status, body) =
            common::fxa_post(&s, "/v1/verify", &json!({"token": access}), None).await;
        assert_eq!((status, errno(&body)), (401, Some(110)), "{body}");
        let (status, body) = bearer_get(&s, "/v1/session/status", &session).await;
        assert_eq!((status, errno(&body)), (401, Some(110)), "{body}");

        // The owner signs in again: new tokens work (once the tokenserver has applied
        // the enabling, within its drain of a few seconds), with the same storage uid.
        let (_, kid, access) = sign_in_for_sync(&s, email, OWNER_PASSWORD).await;
        let started = Instant::now();
        loop {
            let (status, sync) = sync_token(&s, &access, &kid).await;
            if status == 200 {
                assert_eq!(sync["uid"].as_u64(), Some(uid), "{sync}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the new access token is refused after 10 s: {status} {sync}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, body) = bearer_get(&s, "/v1/profile", &access).await;
        assert_eq!(status, 200, "{body}");
    });
}

/// F5: one password change token, 20 finishes at once: the token is taken before the
/// hardening, so exactly one finishes (200) and the others get 401 without hardening;
/// the new password is the one that finished.
#[test]
fn a_password_change_token_finishes_one_change_under_concurrency() {
    let email = "erin@example.org";
    let new_password = "erin's new and longer passphrase";
    let s = server_with_account(email, OWNER_PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pct = rt.block_on(async {
        let body =
            json!({"email": email, "oldAuthPW": common::fxa::auth_pw_hex(email, OWNER_PASSWORD)});
        let (status, started) =
            common::fxa_post(&s, "/v1/password/change/start", &body, None).await;
        assert_eq!(status, 200, "{started}");
        hex32(&started["passwordChangeToken"])
    });
    let body = json!({
        "authPW": common::fxa::auth_pw_hex(email, new_password),
        "wrapKb": hex::encode([5u8; 32]),
    })
    .to_string();
    let request = format!(
        "POST /v1/password/change/finish HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.addr,
        token_bearer("fxpc", &pct, "passwordChangeToken"),
        body.len()
    );
    let statuses = at_once_within(&s.addr, &request, 20, Duration::from_secs(60));
    assert_eq!(
        statuses.iter().filter(|&&c| c == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&c| c == 200 || c == 401),
        "{statuses:?}"
    );
    rt.block_on(async {
        let (status, err) = login(&s, email, OWNER_PASSWORD, false).await;
        assert_eq!((status, errno(&err)), (400, Some(103)), "{err}");
        let (status, ok) = login(&s, email, new_password, false).await;
        assert_eq!(status, 200, "{ok}");
    });
}

/// The same on PostgreSQL: an accounts table of an older release (its
/// `normalized_email` UNIQUE constraint) loses the constraint when the store opens it,
/// keeping its rows; then pending sign-ups of one address wait side by side.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_postgres_accounts_table_is_migrated_keeping_its_rows() {
    use syncstore::accounts::store::{Account, Inserted, Store};
    if std::env::var("SYNCSTORE_TEST_POSTGRES_URL").is_err() {
        eprintln!("SYNCSTORE_TEST_POSTGRES_URL is not set: not run on PostgreSQL");
        return;
    }
    let url = common::fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(
            "CREATE TABLE accounts (
                uid TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                normalized_email TEXT NOT NULL UNIQUE,
                auth_salt BYTEA NOT NULL,
                verify_hash BYTEA NOT NULL,
                wrap_wrap_kb BYTEA NOT NULL,
                ka BYTEA NOT NULL,
                verifier_set_at BIGINT NOT NULL,
                keys_changed_at BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                disabled BIGINT NOT NULL DEFAULT 0,
                display_name TEXT,
                email_verified BIGINT NOT NULL DEFAULT 1
            );
            INSERT INTO accounts VALUES ('dddddddddddddddddddddddddddddddd',
                'old@example.org', 'old@example.org', decode(repeat('00', 32), 'hex'),
                decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'),
                decode(repeat('00', 32), 'hex'), 1, 1, 1, 0, 'Old', 1);",
        )
        .unwrap();
        drop(c);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &url).unwrap();
        let old = store.account(&"d".repeat(32)).unwrap().expect("kept");
        assert_eq!(old.display_name.as_deref(), Some("Old"));
        let pending = |uid: char, email: &str| Account {
            uid: uid.to_string().repeat(32),
            email: email.into(),
            auth_salt: [1; 32],
            verify_hash: [2; 32],
            wrap_wrap_kb: [3; 32],
            ka: [4; 32],
            verifier_set_at: 5,
            keys_changed_at: 5,
            created_at: 5,
            disabled: false,
            display_name: None,
            email_verified: false,
        };
        for uid in ['1', '2'] {
            assert_eq!(
                store
                    .insert_account(&pending(uid, "new@example.org"), None)
                    .unwrap(),
                Inserted::Created
            );
        }
        assert_eq!(
            store
                .insert_account(&pending('3', "Old@example.org"), None)
                .unwrap(),
            Inserted::EmailTaken
        );
        assert_eq!(
            store.accounts_by_email("new@example.org", 5).unwrap().len(),
            2
        );
    })
    .await
    .unwrap();
}
