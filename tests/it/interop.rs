//! Interop: PyPI's `tokenlib` + `hawkauthlib` (the reference client libraries) drive
//! the real server through `scripts/interop.py`. `scripts/test` installs them into a
//! virtualenv and points SYNCSTORE_PYTHON at it.

use std::process::Command;

use crate::common::{self, SECRET, Server};

#[test]
fn reference_client_libraries_interoperate() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import tokenlib, hawkauthlib, requests"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import tokenlib/hawkauthlib/requests: run the tests with scripts/test \
         (it installs scripts/requirements.txt into a virtualenv)"
    );
    let s = Server::start(&[]);
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop.py"))
        .args([&s.url(), SECRET, env!("CARGO_BIN_EXE_syncstore")])
        .arg(s.data.path())
        .output()
        .expect("run interop.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "interop failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

/// A token issued by syncstore's tokenserver is a valid tokenlib token: Mozilla's
/// `tokenlib` parses it and derives the same Hawk key, and `hawkauthlib` can use it.
#[test]
fn tokenserver_tokens_are_tokenlib_tokens() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fxa-test-jwks.json"
    );
    let s = Server::start(&[
        ("SYNCSTORE_FXA_JWKS", jwks),
        ("SYNCSTORE_FXA_VERIFY_URL", ""),
        ("SYNCSTORE_FXA_ISSUER", ""),
    ]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let claims = serde_json::json!({
        "sub": "interop-user", "scope": "https://identity.mozilla.com/apps/oldsync",
        "exp": common::now() + 600,
    });
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../fixtures/fxa-test-key.pem"))
            .unwrap();
    let bearer = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let answer = rt.block_on(async {
        s.client(0)
            .raw(
                "GET",
                "/1.0/sync/1.5",
                &[
                    ("authorization", &format!("Bearer {bearer}")),
                    ("x-keyid", "1-qg"),
                ],
                None,
                false,
            )
            .await
    });
    assert_eq!(answer.status, 200, "{}", answer.text);
    let script = r#"
import json, sys, requests, tokenlib, hawkauthlib
answer, secret = json.loads(sys.argv[1]), sys.argv[2]
manager = tokenlib.TokenManager(secret=secret)
data = manager.parse_token(answer["id"])
assert data["uid"] == answer["uid"], data
assert data["fxa_uid"] == "interop-user", data
assert manager.get_derived_secret(answer["id"]) == answer["key"]
req = requests.Request("GET", answer["api_endpoint"] + "/info/collections").prepare()
hawkauthlib.sign_request(req, answer["id"], answer["key"])
resp = requests.Session().send(req, timeout=30)
assert resp.status_code == 200, resp.status_code
print("ok")
"#;
    let out = Command::new(&python)
        .args(["-c", script, &answer.text, SECRET])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
