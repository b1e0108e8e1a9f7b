//! The accounts service's sign-up policies, black-box: invite codes made by
//! `syncstore account invite` (single use, expiry, the attempt limits, `closed`), the
//! sign-in page learning the policy, and (with an SMTP sink written here) the email
//! verification of `open` sign-ups.

mod common;

use std::process::Command;

use common::Server;
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const PASSWORD: &str = "correct horse battery";

/// `syncstore account ARGS --data-dir DIR`: its stdout.
fn account_cli(data: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .arg("account")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn auth_pw(email: &str) -> String {
    hex::encode(crypto::auth_pw(&crypto::quick_stretch(email, PASSWORD)))
}

async fn post(s: &Server, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.url()))
        .json(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(s: &Server, email: &str, invite: Option<&str>) -> (u16, Value) {
    let mut body = json!({"email": email, "authPW": auth_pw(email)});
    if let Some(code) = invite {
        body["inviteCode"] = json!(code);
    }
    post(s, "/v1/account/create?keys=true", &body, None).await
}

fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
}

#[test]
fn an_invite_code_from_the_cli_makes_one_account_and_is_then_spent() {
    let data = tempfile::tempdir().unwrap();
    let out = account_cli(data.path(), &["invite", "--valid-for", "2h"]);
    let code = out.lines().next().unwrap().trim().to_string();
    assert!(
        code.len() >= 32
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{out}"
    );
    let second = account_cli(data.path(), &["invite"]);
    assert_ne!(second.lines().next().unwrap().trim(), code);
    // An invite that expired already.
    let expired = "expired-invite-code-0123456789abcdef";
    let store = syncstore::accounts::store::Store::open(data.path()).unwrap();
    let now = syncstore::accounts::now_ms();
    store
        .insert_invite(&crypto::sha256(expired.as_bytes()), now - 10_000, now - 1)
        .unwrap();
    drop(store);
    let listed = account_cli(data.path(), &["invites"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.contains("unused") && listed.contains("expired"),
        "{listed}"
    );
    assert!(
        !listed.contains(&code),
        "the code itself is not stored: {listed}"
    );

    let s = Server::start_in(data, &[("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, err) = create(&s, "eve@example.org", None).await;
        assert_eq!((status, errno(&err)), (400, Some(125)), "{err}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("invite code is needed"),
            "{err}"
        );
        let (status, err) = create(&s, "eve@example.org", Some("not-a-code")).await;
        assert_eq!((status, errno(&err)), (400, Some(125)), "{err}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("unknown, used or expired"),
            "{err}"
        );
        let (status, err) = create(&s, "eve@example.org", Some(expired)).await;
        assert_eq!((status, errno(&err)), (400, Some(125)), "{err}");

        let (status, ok) = create(&s, "Invited@example.org", Some(&code)).await;
        assert_eq!(status, 200, "{ok}");
        assert_eq!(ok["verified"], true, "{ok}");
        assert!(ok["sessionToken"].as_str().unwrap().len() == 64, "{ok}");
        assert!(ok["keyFetchToken"].is_string(), "{ok}");
        // Spent: another email cannot use it, and the invited account can sign in.
        let (status, err) = create(&s, "other@example.org", Some(&code)).await;
        assert_eq!((status, errno(&err)), (400, Some(125)), "{err}");
        let body =
            json!({"email": "Invited@example.org", "authPW": auth_pw("Invited@example.org")});
        let (status, ok) = post(&s, "/v1/account/login", &body, None).await;
        assert_eq!(status, 200, "{ok}");
        // The same email again with the unused code: the email is taken, the code kept.
        let code2 = second.lines().next().unwrap().trim();
        let (status, err) = create(&s, "Invited@example.org", Some(code2)).await;
        assert_eq!((status, errno(&err)), (400, Some(101)), "{err}");
    });
    let listed = account_cli(s.data.path(), &["invites"]);
    assert!(listed.contains("Invited@example.org"), "{listed}");
    assert!(listed.contains("unused"), "{listed}");
}

#[test]
fn wrong_invite_codes_count_in_the_attempt_limits_per_address() {
    let data = tempfile::tempdir().unwrap();
    let code = account_cli(data.path(), &["invite"]);
    let code = code.lines().next().unwrap().trim().to_string();
    let s = Server::start_in(data, &[("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Ten wrong guesses from one address, each for another email.
        for i in 0..10 {
            let (status, err) = create(&s, &format!("g{i}@example.org"), Some("guess")).await;
            assert_eq!((status, errno(&err)), (400, Some(125)), "guess {i}: {err}");
        }
        let (status, err) = create(&s, "g10@example.org", Some("guess")).await;
        assert_eq!((status, errno(&err)), (429, Some(114)), "{err}");
        assert!(err["retryAfter"].as_u64().is_some(), "{err}");
        // Even the right code waits now (from this address).
        let (status, err) = create(&s, "late@example.org", Some(&code)).await;
        assert_eq!((status, errno(&err)), (429, Some(114)), "{err}");
    });
}

#[test]
fn closed_refuses_even_a_valid_invite_and_the_page_learns_the_policy() {
    let data = tempfile::tempdir().unwrap();
    let code = account_cli(data.path(), &["invite"]);
    let code = code.lines().next().unwrap().trim().to_string();
    let s = Server::start_in(data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, err) = create(&s, "eve@example.org", Some(&code)).await;
        assert_eq!((status, errno(&err)), (400, Some(125)), "{err}");
        assert!(err["message"].as_str().unwrap().contains("closed"), "{err}");
        let page = reqwest::get(format!("{}/", s.url())).await.unwrap();
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(html.contains(r#"<main data-signups="closed">"#), "{html}");
    });
    drop(s);
    for policy in ["invite", "open"] {
        let s = Server::start(&[("SYNCSTORE_ACCOUNTS_SIGNUPS", policy)]);
        let html = rt.block_on(async {
            reqwest::get(format!("{}/", s.url()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        assert!(
            html.contains(&format!(r#"<main data-signups="{policy}">"#)),
            "{html}"
        );
        assert!(html.contains(r#"id="invite""#), "{html}");
    }
}
