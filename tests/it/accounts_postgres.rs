//! The accounts service on the shared PostgreSQL database (`tokenserver_database_url`)
//! next to its default SQLite file: the same store cases on both backends, the shared
//! OAuth signing keys, and two server processes serving one set of accounts (a fresh
//! database per test; PostgreSQL started by `scripts/test` or `scripts/postgres.sh`).

use std::process::Command;
use std::sync::Arc;

use crate::common::{self, Server, fresh_database};
use serde_json::{Value, json};
use syncstore::accounts::crypto;
use syncstore::accounts::oauth::{Signer, rotate};
use syncstore::accounts::store::{
    Account, Code, CodeCheck, Device, Inserted, MAX_CODES, MAX_QUEUED_PER_DEVICE,
    MAX_TOKENS_PER_KIND, NewCommand, Queued, Refresh, Retention, Store, TokenRow,
};

fn account(uid: &str, email: &str, now: i64) -> Account {
    Account {
        uid: uid.into(),
        email: email.into(),
        auth_salt: [1; 32],
        verify_hash: [2; 32],
        wrap_wrap_kb: [3; 32],
        ka: [4; 32],
        verifier_set_at: now,
        keys_changed_at: now,
        created_at: now,
        disabled: false,
        display_name: None,
        email_verified: false,
    }
}

fn token(id: u8, uid: &str, kind: &str, now: i64) -> TokenRow {
    TokenRow {
        id_hash: [id; 32],
        kind: kind.into(),
        uid: uid.into(),
        auth_key: [id ^ 0xff; 32],
        data: (kind == "keyFetchToken").then(|| vec![id; 64]),
        created_at: now,
        last_used_at: now,
        user_agent: "ua".into(),
    }
}

/// The store's contract, run on each backend.
fn conformance(store: &Store) {
    let now = 1_700_000_000_000;
    let uid = "a".repeat(32);
    // Accounts: emails are unique in any case; an invite is spent with the account only.
    assert_eq!(
        store
            .insert_account(&account(&uid, "Ann@Example.org", now), None)
            .unwrap(),
        Inserted::Created
    );
    let a = store.account_by_email("ann@example.ORG").unwrap().unwrap();
    assert_eq!(
        (a.uid.as_str(), a.email.as_str()),
        (uid.as_str(), "Ann@Example.org")
    );
    assert_eq!(
        (a.auth_salt, a.ka, a.disabled, a.email_verified),
        ([1; 32], [4; 32], false, false)
    );
    assert_eq!(a.display_name, None);
    // A verified account holds its address; unverified ones (pending sign-ups) wait
    // side by side, each with its own code: the first verified takes the address and
    // the others go with everything of theirs; a verified insert takes it at once.
    let zed = Account {
        email_verified: true,
        ..account(&"f".repeat(32), "zed@example.org", now)
    };
    assert_eq!(store.insert_account(&zed, None).unwrap(), Inserted::Created);
    let yan = account(&"e".repeat(32), "yan@example.org", now);
    assert_eq!(store.insert_account(&yan, None).unwrap(), Inserted::Created);
    store
        .insert_token(&token(20, &yan.uid, "sessionToken", now))
        .unwrap();
    store.set_email_code(&yan.uid, &[20; 32], now + 10).unwrap();
    let yan2 = account(&"9".repeat(32), "Yan@example.org", now + 1);
    assert_eq!(
        store.insert_account(&yan2, None).unwrap(),
        Inserted::Created
    );
    store
        .set_email_code(&yan2.uid, &[21; 32], now + 10)
        .unwrap();
    assert_eq!(
        store
            .account_by_email("YAN@example.org")
            .unwrap()
            .unwrap()
            .uid,
        yan2.uid,
        "the newest pending account"
    );
    assert_eq!(
        store.accounts_by_email("yan@example.org", 5).unwrap().len(),
        2
    );
    assert_eq!(
        store.verify_email_code(&yan.uid, &[21; 32], now).unwrap(),
        CodeCheck::Wrong,
        "another pending account's code"
    );
    assert_eq!(
        store.verify_email_code(&yan.uid, &[20; 32], now).unwrap(),
        CodeCheck::Verified
    );
    assert!(store.account(&yan2.uid).unwrap().is_none());
    assert!(store.token(&[20; 32], "sessionToken").unwrap().is_some());
    assert_eq!(
        store.verify_email_code(&yan2.uid, &[21; 32], now).unwrap(),
        CodeCheck::NoCode
    );
    let yan3 = account(&"8".repeat(32), "yan@example.org", now);
    assert_eq!(
        store.insert_account(&yan3, None).unwrap(),
        Inserted::EmailTaken
    );
    let vic = account(&"7".repeat(32), "vic@example.org", now);
    assert_eq!(store.insert_account(&vic, None).unwrap(), Inserted::Created);
    let vic_verified = Account {
        email_verified: true,
        ..account(&"6".repeat(32), "vic@example.org", now)
    };
    assert_eq!(
        store.insert_account(&vic_verified, None).unwrap(),
        Inserted::ReplacedUnverified
    );
    assert!(store.account(&vic.uid).unwrap().is_none());
    assert_eq!(
        store.delete_account("vic@example.org", now).unwrap(),
        Some(vic_verified.uid.clone())
    );
    store.finish_deletion(&vic_verified.uid).unwrap();
    let taken = account(&"b".repeat(32), "zed@example.org", now);
    store.insert_invite(&[9; 32], now, now + 1000).unwrap();
    assert_eq!(
        store.insert_account(&taken, Some(&[9; 32])).unwrap(),
        Inserted::EmailTaken
    );
    assert_eq!(
        store.invites().unwrap()[0].used_at,
        None,
        "a taken email spends no invite"
    );
    let bob = account(&"b".repeat(32), "bob@example.org", now);
    assert_eq!(
        store.insert_account(&bob, Some(&[8; 32])).unwrap(),
        Inserted::BadInvite
    );
    assert!(
        store.account(&bob.uid).unwrap().is_none(),
        "a refused invite makes no account"
    );
    assert_eq!(
        store.insert_account(&bob, Some(&[9; 32])).unwrap(),
        Inserted::Created
    );
    let inv = &store.invites().unwrap()[0];
    assert_eq!(
        (inv.used_at, inv.used_by.as_deref()),
        (Some(now), Some("bob@example.org"))
    );
    let carl = account(&"c".repeat(32), "carl@example.org", now);
    assert_eq!(
        store.insert_account(&carl, Some(&[9; 32])).unwrap(),
        Inserted::BadInvite
    );
    store
        .insert_invite(&[7; 32], now - 2000, now - 1000)
        .unwrap();
    assert_eq!(
        store.insert_account(&carl, Some(&[7; 32])).unwrap(),
        Inserted::BadInvite
    );
    let emails: Vec<_> = store
        .accounts()
        .unwrap()
        .into_iter()
        .map(|a| a.email)
        .collect();
    assert_eq!(
        emails,
        [
            "Ann@Example.org",
            "bob@example.org",
            "yan@example.org",
            "zed@example.org"
        ]
    );
    store.set_display_name(&uid, Some("Ann")).unwrap();
    assert_eq!(
        store
            .account(&uid)
            .unwrap()
            .unwrap()
            .display_name
            .as_deref(),
        Some("Ann")
    );

    // Tokens, devices, codes, refresh tokens.
    store
        .insert_token(&token(1, &uid, "sessionToken", now))
        .unwrap();
    store
        .insert_token(&token(2, &uid, "keyFetchToken", now))
        .unwrap();
    store
        .insert_token(&token(3, &bob.uid, "sessionToken", now))
        .unwrap();
    let t = store.token(&[2; 32], "keyFetchToken").unwrap().unwrap();
    assert_eq!(
        (t.data, t.auth_key, t.user_agent.as_str()),
        (Some(vec![2; 64]), [0xfd; 32], "ua")
    );
    assert!(store.token(&[2; 32], "sessionToken").unwrap().is_none());
    store.touch_token(&[1; 32], now + 5).unwrap();
    let sessions = store.sessions(&uid).unwrap();
    assert_eq!((sessions.len(), sessions[0].last_used_at), (1, now + 5));
    let device = Device {
        id: "d".repeat(32),
        uid: uid.clone(),
        session_id_hash: Some(vec![1; 32]),
        name: "laptop".into(),
        kind: "desktop".into(),
        push_callback: Some("https://push.example/x".into()),
        available_commands: "{}".into(),
        created_at: now,
        last_access_at: now,
        ..Device::default()
    };
    store.upsert_device(&device).unwrap();
    store
        .upsert_device(&Device {
            name: "renamed".into(),
            ..device.clone()
        })
        .unwrap();
    let devices = store.devices(&uid).unwrap();
    assert_eq!((devices.len(), devices[0].name.as_str()), (1, "renamed"));
    assert_eq!(
        devices[0].push_callback.as_deref(),
        Some("https://push.example/x")
    );
    assert_eq!(devices[0].push_auth_key, None);
    // A push endpoint its push service called gone is marked, unless it changed since.
    store
        .expire_push_endpoint(&uid, &device.id, "https://push.example/old")
        .unwrap();
    assert!(!store.devices(&uid).unwrap()[0].push_endpoint_expired);
    store
        .expire_push_endpoint(&uid, &device.id, "https://push.example/x")
        .unwrap();
    assert!(store.devices(&uid).unwrap()[0].push_endpoint_expired);
    command_queue(store, &uid, &device.id, now);
    assert!(store.delete_device(&uid, &device.id).unwrap());
    let (left, _) = store.device_commands(&device.id, 0, 100, now).unwrap();
    assert!(left.is_empty(), "the queue went with its device");
    assert!(
        store.token(&[1; 32], "sessionToken").unwrap().is_none(),
        "its session went too"
    );
    assert!(!store.delete_device(&uid, &device.id).unwrap());
    store
        .insert_token(&token(1, &uid, "sessionToken", now))
        .unwrap();
    assert!(store.delete_token(&[1; 32]).unwrap());
    assert!(!store.delete_token(&[1; 32]).unwrap());

    let code = Code {
        uid: uid.clone(),
        client_id: "c0ffee".into(),
        scope: "profile".into(),
        code_challenge: Some("ch".into()),
        keys_jwe: None,
        offline: true,
        auth_at: now / 1000,
        expires_at: now + 60_000,
    };
    store.insert_code(&[5; 32], &code, now).unwrap();
    // Single-use under concurrency: of eight takers exactly one gets it.
    let taken: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| store.take_code(&[5; 32]).unwrap().is_some()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(taken.iter().filter(|t| **t).count(), 1, "{taken:?}");
    store.insert_code(&[6; 32], &code, now).unwrap();
    let c = store.take_code(&[6; 32]).unwrap().unwrap();
    assert_eq!(
        (c.offline, c.code_challenge.as_deref(), c.keys_jwe),
        (true, Some("ch"), None)
    );
    let refresh = Refresh {
        token_hash: [4; 32],
        uid: uid.clone(),
        client_id: "c0ffee".into(),
        scope: "profile".into(),
        created_at: now,
        last_used_at: now,
        auth_at: now - 5,
    };
    store.insert_refresh(&refresh).unwrap();
    let used = store.use_refresh(&[4; 32], now + 9).unwrap().unwrap();
    assert_eq!(used.auth_at, now - 5);
    assert_eq!(
        (used.uid.as_str(), used.last_used_at),
        (uid.as_str(), now + 9)
    );
    assert!(store.use_refresh(&[3; 32], now).unwrap().is_none());
    assert_eq!(store.refresh_tokens(&uid).unwrap().len(), 1);

    // A password change revokes everything of the account, and only of it.
    store
        .insert_token(&token(1, &uid, "sessionToken", now))
        .unwrap();
    store.insert_code(&[6; 32], &code, now).unwrap();
    store
        .set_password(&uid, &[11; 32], &[12; 32], &[13; 32], now + 100, false)
        .unwrap();
    let a = store.account(&uid).unwrap().unwrap();
    assert_eq!(
        (a.verify_hash, a.verifier_set_at, a.keys_changed_at),
        ([12; 32], now + 100, now)
    );
    assert!(store.sessions(&uid).unwrap().is_empty());
    assert!(store.token(&[2; 32], "keyFetchToken").unwrap().is_none());
    assert!(store.refresh_tokens(&uid).unwrap().is_empty());
    assert!(store.take_code(&[6; 32]).unwrap().is_none());
    assert_eq!(
        store.sessions(&bob.uid).unwrap().len(),
        1,
        "other accounts keep theirs"
    );
    store
        .set_password(&uid, &[11; 32], &[12; 32], &[13; 32], now + 200, true)
        .unwrap();
    assert_eq!(
        store.account(&uid).unwrap().unwrap().keys_changed_at,
        now + 200
    );

    // Email codes.
    assert_eq!(
        store.verify_email_code(&uid, &[1; 32], now).unwrap(),
        CodeCheck::NoCode
    );
    store.set_email_code(&uid, &[1; 32], now + 10).unwrap();
    store.set_email_code(&uid, &[2; 32], now + 10).unwrap();
    assert_eq!(
        store.verify_email_code(&uid, &[1; 32], now).unwrap(),
        CodeCheck::Wrong
    );
    assert_eq!(
        store.verify_email_code(&uid, &[2; 32], now + 10).unwrap(),
        CodeCheck::Expired
    );
    assert!(!store.account(&uid).unwrap().unwrap().email_verified);
    assert_eq!(
        store.verify_email_code(&uid, &[2; 32], now).unwrap(),
        CodeCheck::Verified
    );
    assert!(store.account(&uid).unwrap().unwrap().email_verified);
    assert_eq!(
        store.verify_email_code(&uid, &[2; 32], now).unwrap(),
        CodeCheck::NoCode
    );

    // Disabling revokes; deleting queues the Sync data's deletion.
    assert!(store.set_disabled("BOB@example.org", true).unwrap());
    assert!(store.account(&bob.uid).unwrap().unwrap().disabled);
    assert!(store.sessions(&bob.uid).unwrap().is_empty());
    assert!(!store.set_disabled("nobody@example.org", true).unwrap());
    assert_eq!(
        store.delete_account("bob@example.org", now + 1).unwrap(),
        Some(bob.uid.clone())
    );
    assert_eq!(
        store.delete_account("bob@example.org", now + 1).unwrap(),
        None
    );
    store
        .insert_token(&token(2, &uid, "keyFetchToken", now - 10_000))
        .unwrap();
    let long = 1_000 * 24 * 3600 * 1000;
    let retention = Retention {
        short_token_ms: 5_000,
        idle_session_ms: long,
        idle_device_session_ms: long,
        idle_refresh_ms: long,
        unverified_account_ms: long,
    };
    store.purge(now, &retention).unwrap();
    assert!(store.token(&[2; 32], "keyFetchToken").unwrap().is_none());
    let pending = store.pending_deletions(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].uid.as_str(), pending[0].email.as_str()),
        (bob.uid.as_str(), "bob@example.org")
    );
    assert_eq!(pending[0].deleted_at, now + 1);
    assert_eq!(
        store.invites().unwrap()[1].used_by,
        None,
        "the account is gone"
    );
    store.finish_deletion(&bob.uid).unwrap();
    assert!(store.pending_deletions(10).unwrap().is_empty());

    // One invite, eight sign-ups at once: one account.
    store.insert_invite(&[10; 32], now, now + 1000).unwrap();
    let results: Vec<Inserted> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                s.spawn(move || {
                    let a = account(&format!("{i:032}"), &format!("u{i}@example.org"), now);
                    store.insert_account(&a, Some(&[10; 32])).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = results.iter().filter(|r| **r == Inserted::Created).count();
    assert_eq!(created, 1, "{results:?}");
    assert_eq!(
        store.accounts().unwrap().len(),
        4,
        "no account without the invite"
    );

    // Per-account caps: the least recently used sessions go (with their devices), the
    // oldest codes; another account keeps its own.
    let ann = uid.clone();
    for i in 0..(MAX_TOKENS_PER_KIND as i64 + 5) {
        let mut t = token(0, &ann, "sessionToken", now + i);
        t.id_hash = crypto::sha256(&i.to_be_bytes());
        store.insert_token(&t).unwrap();
        if i == 0 {
            store
                .upsert_device(&Device {
                    id: "0".repeat(32),
                    uid: ann.clone(),
                    session_id_hash: Some(t.id_hash.to_vec()),
                    created_at: now,
                    last_access_at: now,
                    ..Device::default()
                })
                .unwrap();
        }
    }
    let sessions = store.sessions(&ann).unwrap();
    assert_eq!(sessions.len(), MAX_TOKENS_PER_KIND);
    assert_eq!(sessions[0].created_at, now + 5, "the oldest five went");
    assert!(store.devices(&ann).unwrap().is_empty(), "with their device");
    for i in 0..(MAX_CODES as u8 + 3) {
        store
            .insert_code(
                &[100 + i; 32],
                &Code {
                    uid: ann.clone(),
                    expires_at: now + 60_000 + i64::from(i),
                    ..code.clone()
                },
                now,
            )
            .unwrap();
    }
    assert!(
        store.take_code(&[100; 32]).unwrap().is_none(),
        "the oldest went"
    );
    assert!(
        store
            .take_code(&[100 + MAX_CODES as u8 + 2; 32])
            .unwrap()
            .is_some()
    );
    // The upkeep: idle sessions and old unverified accounts go.
    let retention = Retention {
        idle_session_ms: 1,
        unverified_account_ms: 1,
        ..retention
    };
    let gone = store.purge(now + 1_000, &retention).unwrap();
    assert!(gone >= MAX_TOKENS_PER_KIND as u64, "{gone}");
    assert!(store.sessions(&ann).unwrap().is_empty());
    assert!(
        store.account(&bob.uid).unwrap().is_none(),
        "unverified, old"
    );
    assert!(store.account(&zed.uid).unwrap().is_some(), "verified");
    assert!(store.account(&yan.uid).unwrap().is_some(), "verified");
    assert_eq!(
        store.accounts().unwrap().len(),
        3,
        "Ann, Yan and Zed, verified"
    );
}

/// The device command queue: indices grow, pages are inclusive of `from`, expired
/// commands are neither fetched nor counted, the bound per device holds, and a device
/// of another account is unknown.
fn command_queue(store: &Store, uid: &str, device: &str, now: i64) {
    let command = |payload: &'static str, expires_at: i64| NewCommand {
        uid,
        target: device,
        command: "https://identity.mozilla.com/cmd/open-uri",
        payload,
        sender: Some("s"),
        expires_at,
    };
    let at = |q: Queued| match q {
        Queued::At(i) => i,
        other => panic!("not queued: {other:?}"),
    };
    let first = at(store
        .queue_command(&command("{\"n\":1}", now + 1_000), now)
        .unwrap());
    let second = at(store
        .queue_command(&command("{\"n\":2}", now + 10), now)
        .unwrap());
    assert!(second > first);
    let (page, more) = store.device_commands(device, first, 1, now).unwrap();
    assert_eq!((page.len(), page[0].index, more), (1, first, true));
    assert_eq!(page[0].payload, "{\"n\":1}");
    assert_eq!(page[0].sender.as_deref(), Some("s"));
    let (page, more) = store.device_commands(device, second, 100, now).unwrap();
    assert_eq!((page.len(), more), (1, false));
    // Fetching from `second` acknowledged the first: it is gone.
    let (page, _) = store.device_commands(device, 0, 100, now).unwrap();
    assert_eq!(page.iter().map(|c| c.index).collect::<Vec<_>>(), [second]);
    // The second expires at now + 10: no longer fetched, and its slot is free again.
    let (page, _) = store.device_commands(device, 0, 100, now + 10).unwrap();
    assert!(page.is_empty());
    let later = now + 20;
    let mut last = 0;
    for _ in 0..MAX_QUEUED_PER_DEVICE {
        last = at(store
            .queue_command(&command("{}", later + 1_000), later)
            .unwrap());
    }
    assert_eq!(
        store
            .queue_command(&command("{}", later + 1_000), later)
            .unwrap(),
        Queued::Full
    );
    // A fetch from the last one on acknowledges the others and frees their room.
    let (page, _) = store.device_commands(device, last, 1, later).unwrap();
    assert_eq!(page.len(), 1);
    let third = at(store
        .queue_command(&command("{}", later + 5_000), later)
        .unwrap());
    assert!(third > last, "indices never go back");
    let elsewhere = NewCommand {
        uid: "someone-else",
        ..command("{}", later + 1_000)
    };
    assert_eq!(
        store.queue_command(&elsewhere, later).unwrap(),
        Queued::UnknownDevice
    );
}

fn pg_store(db: &str) -> Store {
    Store::open(tempfile::tempdir().unwrap().path(), db).unwrap()
}

#[test]
fn the_store_behaves_the_same_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "").unwrap();
    assert!(!store.is_shared());
    conformance(&store);
    assert!(dir.path().join("accounts.sqlite").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_behaves_the_same_on_postgres() {
    let db = fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &db).unwrap();
        assert!(store.is_shared());
        conformance(&store);
        assert!(
            !dir.path().join("accounts.sqlite").exists(),
            "nothing in the data dir"
        );
        // Opening again (a second process) keeps the data.
        assert_eq!(pg_store(&db).accounts().unwrap().len(), 3);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_on_postgres_share_one_signing_key() {
    let db = fresh_database().await;
    tokio::task::spawn_blocking(move || {
        // Processes starting at once generate one key between them.
        let signers: Vec<Signer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let db = db.clone();
                    s.spawn(move || {
                        let dir = tempfile::tempdir().unwrap();
                        Signer::load(dir.path(), &pg_store(&db), "http://sync.example").unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let jwks = signers[0].jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
        for s in &signers {
            assert_eq!(s.jwks(), jwks);
            // One VAPID key for every process too (pushes are signed alike).
            assert_eq!(
                s.vapid().public_key_b64(),
                signers[0].vapid().public_key_b64()
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !dir.path()
                .join(syncstore::accounts::oauth::KEYS_FILE)
                .exists()
        );
        // A rotation is seen by every process loading the keys afterwards.
        let store = pg_store(&db);
        let kid = rotate(dir.path(), &store).unwrap();
        let after = Signer::load(dir.path(), &pg_store(&db), "http://sync.example").unwrap();
        let keys = after.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], kid.as_str());
        assert_eq!(keys[1]["kid"], jwks["keys"][0]["kid"]);
    })
    .await
    .unwrap();
}

const EMAIL: &str = "Ann@example.org";
const PASSWORD: &str = "correct horse battery";
const PUBLIC: &str = "http://sync.example.test";
const CLIENT: &str = "5882386c6d801776";
const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

fn auth_pw(password: &str) -> String {
    hex::encode(crypto::auth_pw(&crypto::quick_stretch(EMAIL, password)))
}

/// A request Hawk-signed with a token of `kind` (as for the public URL's host).
async fn hawk(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    kind: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let t: [u8; 32] = hex::decode(token).unwrap().try_into().unwrap();
    let k = crypto::token_keys(&t, kind);
    let nonce = hex::encode(rand::random::<[u8; 6]>());
    // A body is signed (its payload hash), as Firefox and PyFxA sign it.
    let body = body.map(|b| b.to_string());
    let hash = body
        .as_ref()
        .map(|b| syncstore::auth::hawk::payload_hash("application/json", b.as_bytes()));
    let h = syncstore::auth::hawk::HawkHeader {
        id: hex::encode(k.id),
        ts: common::now(),
        ts_raw: common::now().to_string(),
        nonce: nonce.clone(),
        mac: String::new(),
        hash: hash.clone(),
        ext: None,
    };
    let mac = syncstore::auth::hawk::compute_mac(
        &k.auth_key,
        &h,
        &syncstore::auth::hawk::SignedRequest {
            method,
            path_and_query: path,
            host: "sync.example.test",
            port: 80,
        },
    );
    let hash = hash.map(|h| format!(", hash=\"{h}\"")).unwrap_or_default();
    let authz = format!(
        "Hawk id=\"{}\", ts=\"{}\", nonce=\"{nonce}\", mac=\"{mac}\"{hash}",
        h.id, h.ts_raw
    );
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", s.url()))
        .header("authorization", authz);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_serve_one_set_of_accounts_on_postgres() {
    let db = fresh_database().await;
    // The operator's command, with the same database setting as the servers.
    add_account(&db, EMAIL, PASSWORD);
    // Two processes behind one public URL (as behind a load balancer).
    let env = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_PUBLIC_URL", PUBLIC),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ];
    let s1 = Arc::new(Server::start(&env));
    let s2 = Arc::new(Server::start(&env));

    let (status, session) = post(
        &s1,
        "/v1/account/login?keys=true",
        json!({"email": EMAIL, "authPW": auth_pw(PASSWORD)}),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let st = session["sessionToken"].as_str().unwrap();
    let (status, body) = hawk(&s2, "GET", "/v1/session/status", st, "sessionToken", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uid"], session["uid"]);

    // An access token from server 2, and from server 1; each tokenserver takes the
    // other's (one shared signing key).
    let grant = json!({"grant_type": "fxa-credentials", "client_id": CLIENT, "scope": OLDSYNC});
    let (status, t2) = hawk(
        &s2,
        "POST",
        "/v1/oauth/token",
        st,
        "sessionToken",
        Some(grant.clone()),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    let (status, t1) = hawk(
        &s1,
        "POST",
        "/v1/oauth/token",
        st,
        "sessionToken",
        Some(grant),
    )
    .await;
    assert_eq!(status, 200, "{t1}");
    let jwks = |s: Arc<Server>| async move {
        reqwest::get(format!("{}/v1/jwks", s.url()))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let published = jwks(s1.clone()).await;
    assert_eq!(
        published["keys"].as_array().map(Vec::len),
        Some(1),
        "{published}"
    );
    assert_eq!(published, jwks(s2.clone()).await);
    let scoped = json!({"client_id": CLIENT, "scope": OLDSYNC});
    let (status, kd) = hawk(
        &s2,
        "POST",
        "/v1/account/scoped-key-data",
        st,
        "sessionToken",
        Some(scoped),
    )
    .await;
    assert_eq!(status, 200, "{kd}");
    let keys = format!("{}-qg", kd[OLDSYNC]["keyRotationTimestamp"]);
    for (server, token) in [(&s2, &t1), (&s1, &t2)] {
        let r = reqwest::Client::new()
            .get(format!("{}/1.0/sync/1.5", server.url()))
            .bearer_auth(token["access_token"].as_str().unwrap())
            .header("x-keyid", &keys)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["id"].is_string() && body["key"].is_string(), "{body}");
    }

    // A password change through server 1 signs the session out on server 2.
    let (status, start) = post(
        &s1,
        "/v1/password/change/start",
        json!({"email": EMAIL, "oldAuthPW": auth_pw(PASSWORD)}),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let pct = start["passwordChangeToken"].as_str().unwrap();
    let change =
        json!({"authPW": auth_pw("another long password"), "wrapKb": hex::encode([7u8; 32])});
    let (status, body) = hawk(
        &s1,
        "POST",
        "/v1/password/change/finish",
        pct,
        "passwordChangeToken",
        Some(change),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = hawk(&s2, "GET", "/v1/session/status", st, "sessionToken", None).await;
    assert_eq!((status, body["errno"].as_i64()), (401, Some(110)), "{body}");
    let (status, _) = post(
        &s2,
        "/v1/account/login",
        json!({"email": EMAIL, "authPW": auth_pw("another long password")}),
    )
    .await;
    assert_eq!(status, 200);
}

/// `syncstore account add` on the database of `db`, the password on stdin.
fn add_account(db: &str, email: &str, password: &str) {
    let env = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db),
        ("SYNCSTORE_SECRETS", "0123456789abcdef0123456789abcdef"),
    ];
    let dir = tempfile::tempdir().unwrap();
    common::account_cli(
        dir.path(),
        &["add", email, "--password-stdin"],
        &env,
        password,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pyfxa_signs_up_signs_in_and_syncs_on_postgres() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import fxa.core, hawkauthlib, requests"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import PyFxA/hawkauthlib: run the tests with scripts/test"
    );
    let db = fresh_database().await;
    add_account(&db, "bob@example.org", PASSWORD);
    let s = Server::start(&[
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
    ]);
    assert!(
        !s.data.path().join("accounts.sqlite").exists(),
        "the accounts are in PostgreSQL"
    );
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/accounts_pyfxa.py"
        ))
        .args([&s.url(), "bob@example.org", PASSWORD])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
