//! The built-in accounts service, black-box: PyPI's PyFxA (the independent client)
//! signs up, signs in, fetches keys and OAuth tokens and uses them at the tokenserver
//! and the storage node (scripts/accounts_pyfxa.py); the attempt limits; what the
//! server's database holds.

mod common;

use std::process::Command;

use common::Server;
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const EMAIL: &str = "Alice@example.org";
const PASSWORD: &str = "correct horse battery";

/// `syncstore account add EMAIL --password-stdin`.
fn add_account(data: &std::path::Path, email: &str, password: &str) -> String {
    common::account_cli(data, &["add", email, "--password-stdin"], &[], password)
}

fn auth_pw(email: &str, password: &str) -> [u8; 32] {
    crypto::auth_pw(&crypto::quick_stretch(email, password))
}

async fn login(s: &Server, email: &str, password: &str) -> (u16, Value) {
    let body = json!({"email": email, "authPW": hex::encode(auth_pw(email, password))});
    common::fxa_post(s, "/v1/account/login?keys=true", &body, None).await
}

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
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL, PASSWORD);
    let s = Server::start_in(data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Sign-ups are closed by default.
        let body = json!({"email": "eve@example.org", "authPW": hex::encode([1u8; 32])});
        let (status, err) = common::fxa_post(&s, "/v1/account/create", &body, None).await;
        assert_eq!((status, err["errno"].as_i64()), (400, Some(125)), "{err}");
        // Another case of the email: errno 120 names the right one. It counts as a
        // failed attempt (it tells that the account exists), so nine wrong passwords
        // make ten failures.
        let (status, err) = login(&s, "alice@example.org", PASSWORD).await;
        assert_eq!((status, err["errno"].as_i64()), (400, Some(120)), "{err}");
        assert_eq!(err["email"], EMAIL);
        for i in 0..9 {
            let (status, err) = login(&s, EMAIL, "wrong password").await;
            assert_eq!(status, 400, "attempt {i}: {err}");
            assert_eq!(err["errno"], 103, "{err}");
            assert_eq!(err["code"], 400);
        }
        let (status, err) = login(&s, EMAIL, "wrong password").await;
        assert_eq!(status, 429, "{err}");
        assert_eq!(err["errno"], 114);
        assert_eq!(err["error"], "Too Many Requests");
        // The limits slide: the failures of the last minute still weigh in the next
        // one in proportion, so the wait can be a little over a minute.
        let retry = err["retryAfter"].as_u64().unwrap();
        assert!((1..=120).contains(&retry), "{err}");
        // Even the right password waits now.
        let (status, _) = login(&s, EMAIL, PASSWORD).await;
        assert_eq!(status, 429);
    });
}

#[test]
fn the_database_never_holds_the_password_auth_pw_or_kb() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL, PASSWORD);
    let s = Server::start_in(data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kb = rt.block_on(async {
        let (status, session) = login(&s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{session}");
        assert_eq!(session["verified"], true);
        let kft: [u8; 32] = hex::decode(session["keyFetchToken"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let keys = crypto::token_keys(&kft, "keyFetchToken");
        let r = reqwest::Client::new()
            .get(format!("{}/v1/account/keys", s.url()))
            .bearer_auth(format!("fxk_{}", hex::encode(keys.id)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let bundle: Value = r.json().await.unwrap();
        let bundle = hex::decode(bundle["bundle"].as_str().unwrap()).unwrap();
        let plain = crypto::unbundle(&keys.bundle_key, "account/keys", &bundle).unwrap();
        let wrap_kb: [u8; 32] = plain[32..].try_into().unwrap();
        let stretched = crypto::quick_stretch(EMAIL, PASSWORD);
        crypto::xor32(&wrap_kb, &crypto::unwrap_b_key(&stretched))
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
    use syncstore::auth::hawk::{HawkHeader, SignedRequest, compute_mac};
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL, PASSWORD);
    let s = Server::start_in(data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_, session) = login(&s, EMAIL, PASSWORD).await;
        let token: [u8; 32] = hex::decode(session["sessionToken"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let k = crypto::token_keys(&token, "sessionToken");
        let (host, port) = s.addr.split_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        let ts = common::now();
        let header = |nonce: &str, key: &[u8]| {
            let h = HawkHeader {
                id: hex::encode(k.id),
                ts,
                ts_raw: ts.to_string(),
                nonce: nonce.into(),
                mac: String::new(),
                hash: None,
                ext: None,
            };
            let req = SignedRequest {
                method: "GET",
                path_and_query: "/v1/session/status",
                host,
                port,
            };
            let mac = compute_mac(key, &h, &req);
            format!(
                "Hawk id=\"{}\", ts=\"{ts}\", nonce=\"{nonce}\", mac=\"{mac}\"",
                h.id
            )
        };
        let get = |authz: String| {
            let url = format!("{}/v1/session/status", s.url());
            async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .header("authorization", authz)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
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
