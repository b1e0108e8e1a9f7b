//! The accounts service's sign-up policies, black-box: invite codes made by
//! `syncstore account invite` (single use, expiry, the attempt limits, `closed`), the
//! sign-in page learning the policy, and (with an SMTP sink written here) the email
//! verification of `open` sign-ups.

use crate::common::fxa::{self, code_in, errno};
use crate::common::{self, Server};
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const PASSWORD: &str = "correct horse battery";

async fn create(s: &Server, email: &str, invite: Option<&str>) -> (u16, Value) {
    fxa::create(s, email, PASSWORD, invite).await
}

#[test]
fn an_invite_code_from_the_cli_makes_one_account_and_is_then_spent() {
    let data = tempfile::tempdir().unwrap();
    let out = common::account_cli(data.path(), &["invite", "--valid-for", "2h"], &[], "");
    let code = out.lines().next().unwrap().trim().to_string();
    assert!(
        code.len() >= 32
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{out}"
    );
    let second = common::account_cli(data.path(), &["invite"], &[], "");
    assert_ne!(second.lines().next().unwrap().trim(), code);
    // An invite that expired already.
    let expired = "expired-invite-code-0123456789abcdef";
    let store = syncstore::accounts::store::Store::open(data.path(), "").unwrap();
    let now = syncstore::accounts::now_ms();
    store
        .insert_invite(&crypto::sha256(expired.as_bytes()), now - 10_000, now - 1)
        .unwrap();
    drop(store);
    let listed = common::account_cli(data.path(), &["invites"], &[], "");
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
        let (status, ok) = fxa::login(&s, "Invited@example.org", PASSWORD, false).await;
        assert_eq!(status, 200, "{ok}");
        // The same email again with the unused code: the email is taken, the code kept.
        let code2 = second.lines().next().unwrap().trim();
        let (status, err) = create(&s, "Invited@example.org", Some(code2)).await;
        assert_eq!((status, errno(&err)), (400, Some(101)), "{err}");
    });
    let listed = common::account_cli(s.data.path(), &["invites"], &[], "");
    assert!(listed.contains("Invited@example.org"), "{listed}");
    assert!(listed.contains("unused"), "{listed}");
}

#[test]
fn wrong_invite_codes_count_in_the_attempt_limits_per_address() {
    let data = tempfile::tempdir().unwrap();
    let code = common::account_cli(data.path(), &["invite"], &[], "");
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
    let code = common::account_cli(data.path(), &["invite"], &[], "");
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

#[test]
fn open_sign_ups_with_smtp_verify_the_address_with_a_mailed_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = fxa::open_server_with_mail(&rt, "Sync <sync@example.org>", &[]);
    rt.block_on(async {
        let email = "new@example.org";
        let (status, made) = create(&s, email, None).await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["verified"], false, "{made}");
        assert_eq!(made["verificationMethod"], "email-otp", "{made}");
        let session = fxa::session_bearer(made["sessionToken"].as_str().unwrap());
        let kft = fxa::bearer(
            "fxk",
            made["keyFetchToken"].as_str().unwrap(),
            "keyFetchToken",
        );
        let mail = fxa::next_mail(&mut mails).await;
        assert!(mail.contains("To: new@example.org"), "{mail}");
        assert!(mail.contains("sync@example.org"), "{mail}");
        let code = code_in(&mail);

        // Until verified: status says so; keys and OAuth are refused with errno 104.
        let (status, st) = fxa::bearer_get(&s, "/v1/session/status", &session).await;
        assert_eq!(
            (status, st["state"].as_str()),
            (200, Some("unverified")),
            "{st}"
        );
        let (_, st) = fxa::bearer_get(&s, "/v1/recovery_email/status", &session).await;
        assert_eq!(st["verified"], false, "{st}");
        let (status, err) = fxa::bearer_get(&s, "/v1/account/keys", &kft).await;
        assert_eq!((status, errno(&err)), (400, Some(104)), "{err}");
        let (client_id, scope) = (fxa::FIREFOX, fxa::OLDSYNC);
        let body = json!({"client_id": client_id, "scope": scope});
        let (status, err) =
            common::fxa_post(&s, "/v1/account/scoped-key-data", &body, Some(&session)).await;
        assert_eq!((status, errno(&err)), (400, Some(104)), "{err}");
        let body = json!({"client_id": client_id, "scope": scope, "grant_type": "fxa-credentials"});
        let (status, err) = common::fxa_post(&s, "/v1/oauth/token", &body, Some(&session)).await;
        assert_eq!((status, errno(&err)), (400, Some(104)), "{err}");
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let body = json!({"client_id": client_id, "scope": scope, "state": "x",
            "response_type": "code", "code_challenge": challenge,
            "code_challenge_method": "S256", "access_type": "offline"});
        let (status, err) =
            common::fxa_post(&s, "/v1/oauth/authorization", &body, Some(&session)).await;
        assert_eq!((status, errno(&err)), (400, Some(104)), "{err}");

        // A wrong code is refused; the right one verifies.
        let wrong = if code == "000000" { "000001" } else { "000000" };
        let (status, err) = fxa::verify_code(&s, &session, wrong).await;
        assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
        let (status, ok) = fxa::verify_code(&s, &session, &code).await;
        assert_eq!(status, 200, "{ok}");
        let (_, st) = fxa::bearer_get(&s, "/v1/session/status", &session).await;
        assert_eq!(st["state"], "verified", "{st}");
        let (_, st) = fxa::bearer_get(&s, "/v1/recovery_email/status", &session).await;
        assert_eq!(st["verified"], true, "{st}");
        let (status, keys) = fxa::bearer_get(&s, "/v1/account/keys", &kft).await;
        assert_eq!(status, 200, "{keys}");
        assert!(keys["bundle"].is_string(), "{keys}");
        let body = json!({"client_id": client_id, "scope": scope, "grant_type": "fxa-credentials"});
        let (status, grant) = common::fxa_post(&s, "/v1/oauth/token", &body, Some(&session)).await;
        assert_eq!(status, 200, "{grant}");
        // The code is spent (and the session verified, so it answers OK again).
        let (status, _) = fxa::verify_code(&s, &session, &code).await;
        assert_eq!(status, 200);
    });
    let log = s.log_text();
    assert!(log.contains("verification code mailed"), "{log}");
    assert!(log.contains("email verified"), "{log}");
}

#[test]
fn wrong_verification_codes_and_mailing_sign_ups_hit_the_attempt_limits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = fxa::open_server_with_mail(&rt, "sync@example.org", &[]);
    rt.block_on(async {
        let (status, made) = create(&s, "guess@example.org", None).await;
        assert_eq!(status, 200, "{made}");
        let session = fxa::session_bearer(made["sessionToken"].as_str().unwrap());
        let first = code_in(&mails.recv().await.unwrap());
        let (status, _) =
            common::fxa_post(&s, "/v1/session/resend_code", &json!({}), Some(&session)).await;
        assert_eq!(status, 200);
        let second = code_in(&mails.recv().await.unwrap());
        let mut tried = 0;
        for guess in [
            "111111", "222222", "333333", "444444", "555555", "666666", "777777", "888888",
            "999999", "123456", "654321", "012345",
        ] {
            if guess == first || guess == second || tried == 10 {
                continue;
            }
            let (status, err) = fxa::verify_code(&s, &session, guess).await;
            assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
            tried += 1;
        }
        // The eleventh attempt waits, even with the right code.
        let (status, err) = fxa::verify_code(&s, &session, &second).await;
        assert_eq!((status, errno(&err)), (429, Some(114)), "{err}");
        // Mails caused from one address, sign-ups included: at most ten a minute (two so
        // far: the first sign-up's and the resend's).
        for i in 0..8 {
            let (status, made) = create(&s, &format!("m{i}@example.org"), None).await;
            assert_eq!(status, 200, "sign-up {i}: {made}");
        }
        let (status, err) = create(&s, "m8@example.org", None).await;
        assert_eq!((status, errno(&err)), (429, Some(114)), "{err}");
    });
}

#[test]
fn open_without_smtp_verifies_at_once_and_warns_and_mail_failures_are_503() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Server::start(&[("SYNCSTORE_ACCOUNTS_SIGNUPS", "open")]);
    rt.block_on(async {
        let (status, made) = create(&s, "plain@example.org", None).await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["verified"], true, "{made}");
    });
    assert!(s.log_text().contains("not proven"), "{}", s.log_text());
    drop(s);
    // An SMTP server that is not there: create answers 503 errno 151, no panic.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = fxa::open_mail_env(port, "sync@example.org");
    let s = Server::start(&fxa::env_refs(&env));
    rt.block_on(async {
        let (status, err) = create(&s, "unlucky@example.org", None).await;
        assert_eq!((status, errno(&err)), (503, Some(151)), "{err}");
        // The account exists: signing in gives an unverified session.
        let (status, ok) = fxa::login(&s, "unlucky@example.org", PASSWORD, false).await;
        assert_eq!(status, 200, "{ok}");
        assert_eq!(ok["verified"], false, "{ok}");
    });
    assert!(s.log_text().contains("verification mail not sent"));
}
