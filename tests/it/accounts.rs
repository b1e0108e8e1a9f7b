//! The built-in accounts service, black-box: PyPI's PyFxA (the independent client)
//! signs up, signs in, fetches keys and OAuth tokens and uses them at the tokenserver
//! and the storage node (scripts/accounts_pyfxa.py); the attempt limits; what the
//! server's database holds.

use std::process::Command;

use crate::common::fxa::{self, add_account, auth_pw};
use crate::common::{self, Server};
use serde_json::json;

const EMAIL: &str = "Alice@example.org";
const PASSWORD: &str = "correct horse battery";

#[test]
fn pyfxa_signs_up_signs_in_fetches_keys_and_syncs() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import fxa.core, hawkauthlib, requests"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import PyFxA/hawkauthlib: run the tests with scripts/test \
         (it installs scripts/requirements.txt into a virtualenv)"
    );
    let data = tempfile::tempdir().unwrap();
    let added = add_account(data.path(), "bob@example.org", PASSWORD);
    assert!(added.contains("bob@example.org"), "{added}");
    let s = Server::start_in(data, &[("SYNCSTORE_ACCOUNTS_SIGNUPS", "open")]);
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/accounts_pyfxa.py"
        ))
        .args([&s.url(), "bob@example.org", PASSWORD])
        .output()
        .expect("run accounts_pyfxa.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "PyFxA failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn wrong_passwords_are_refused_and_the_eleventh_in_a_minute_is_rate_limited() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Sign-ups are closed by default.
        let body = json!({"email": "eve@example.org", "authPW": hex::encode([1u8; 32])});
        let (status, err) = common::fxa_post(&s, "/v1/account/create", &body, None).await;
        assert_eq!((status, err["errno"].as_i64()), (400, Some(125)), "{err}");
        // Another case of the email: errno 120 names the right one. It counts as a
        // failed attempt (it tells that the account exists), so nine wrong passwords
        // make ten failures.
        let (status, err) = fxa::login(&s, "alice@example.org", PASSWORD, true).await;
        assert_eq!((status, err["errno"].as_i64()), (400, Some(120)), "{err}");
        assert_eq!(err["email"], EMAIL);
        for i in 0..9 {
            let (status, err) = fxa::login(&s, EMAIL, "wrong password", true).await;
            assert_eq!(status, 400, "attempt {i}: {err}");
            assert_eq!(err["errno"], 103, "{err}");
            assert_eq!(err["code"], 400);
        }
        let (status, err) = fxa::login(&s, EMAIL, "wrong password", true).await;
        assert_eq!(status, 429, "{err}");
        assert_eq!(err["errno"], 114);
        assert_eq!(err["error"], "Too Many Requests");
        // The limits slide: the failures of the last minute still weigh in the next
        // one in proportion, so the wait can be a little over a minute.
        let retry = err["retryAfter"].as_u64().unwrap();
        assert!((1..=120).contains(&retry), "{err}");
        // Even the right password waits now.
        let (status, _) = fxa::login(&s, EMAIL, PASSWORD, true).await;
        assert_eq!(status, 429);
    });
}

#[test]
fn the_database_never_holds_the_password_auth_pw_or_kb() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kb = rt.block_on(async {
        let (status, session) = fxa::login(&s, EMAIL, PASSWORD, true).await;
        assert_eq!(status, 200, "{session}");
        assert_eq!(session["verified"], true);
        let kft = fxa::hex32(&session["keyFetchToken"]);
        fxa::kb(&s, EMAIL, PASSWORD, &kft).await
    });
    let dir = s.stop();
    let mut bytes = Vec::new();
    for name in ["accounts.sqlite", "accounts.sqlite-wal"] {
        bytes.extend(std::fs::read(dir.path().join(name)).unwrap_or_default());
    }
    assert!(bytes.len() > 4096, "the database was found");
    let apw = auth_pw(EMAIL, PASSWORD);
    for (what, needle) in [
        ("kB", &kb[..]),
        ("authPW", &apw[..]),
        ("authPW hex", hex::encode(apw).as_bytes()),
        ("kB hex", hex::encode(kb).as_bytes()),
        ("password", PASSWORD.as_bytes()),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the database holds {what}"
        );
    }
    // The positive control: the account itself is there.
    assert!(bytes.windows(EMAIL.len()).any(|w| w == EMAIL.as_bytes()));
}

/// Firefox signs auth-server requests with Hawk, keyed by the token's derived key: a
/// good signature is accepted, a bad one is 401 errno 109, a replay 401 errno 115.
#[test]
fn hawk_signed_session_requests_are_verified() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_, session) = fxa::login(&s, EMAIL, PASSWORD, true).await;
        let token = fxa::hex32(&session["sessionToken"]);
        let k = syncstore::accounts::crypto::token_keys(&token, "sessionToken");
        let path = "/v1/session/status";
        let ts = common::now();
        let s = &s;
        let header =
            |nonce: &str, key: &[u8]| fxa::hawk(s, &k.id, key, "GET", path, ts, nonce, None);
        let get = move |authz: String| async move {
            fxa::send(s, reqwest::Method::GET, path, &authz, None).await
        };
        let (status, body) = get(header("n1", &k.auth_key)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["uid"], session["uid"]);
        let (status, body) = get(header("n1", &k.auth_key)).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(115)), "{body}");
        let (status, body) = get(header("n2", &k.bundle_key)).await;
        assert_eq!((status, body["errno"].as_i64()), (401, Some(109)), "{body}");
    });
}
