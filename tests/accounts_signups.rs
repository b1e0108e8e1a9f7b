//! The accounts service's sign-up policies, black-box: invite codes made by
//! `syncstore account invite` (single use, expiry, the attempt limits, `closed`), the
//! sign-in page learning the policy, and (with an SMTP sink written here) the email
//! verification of `open` sign-ups.

mod common;

use common::Server;
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const PASSWORD: &str = "correct horse battery";

fn auth_pw(email: &str) -> String {
    hex::encode(crypto::auth_pw(&crypto::quick_stretch(email, PASSWORD)))
}

async fn create(s: &Server, email: &str, invite: Option<&str>) -> (u16, Value) {
    let mut body = json!({"email": email, "authPW": auth_pw(email)});
    if let Some(code) = invite {
        body["inviteCode"] = json!(code);
    }
    common::fxa_post(s, "/v1/account/create?keys=true", &body, None).await
}

fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
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
        let body =
            json!({"email": "Invited@example.org", "authPW": auth_pw("Invited@example.org")});
        let (status, ok) = common::fxa_post(&s, "/v1/account/login", &body, None).await;
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

/// A tiny SMTP sink on 127.0.0.1: answers the dialogue and sends each message's DATA
/// down the channel.
async fn smtp_sink() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            w.write_all(b"354 go on\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            let _ = tx.send(data);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

/// The 6-digit code in a mail.
fn code_in(mail: &str) -> String {
    let body = mail.split("\n\n").skip(1).collect::<Vec<_>>().join("\n");
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("no code in {mail}"))
        .to_string()
}

async fn get(s: &Server, path: &str, bearer: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.url()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The Bearer forms of a token (`fxs_<id>` for sessions, `fxk_<id>` for key fetch).
fn bearer(prefix: &str, token_hex: &str, kind: &str) -> String {
    let token: [u8; 32] = hex::decode(token_hex).unwrap().try_into().unwrap();
    format!(
        "{prefix}_{}",
        hex::encode(crypto::token_keys(&token, kind).id)
    )
}

#[test]
fn open_sign_ups_with_smtp_verify_the_address_with_a_mailed_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, mut mails) = rt.block_on(smtp_sink());
    let smtp = format!("smtp://127.0.0.1:{port}?tls=none");
    let s = Server::start(&[
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
        ("SYNCSTORE_ACCOUNTS_SMTP_URL", &smtp),
        ("SYNCSTORE_ACCOUNTS_MAIL_FROM", "Sync <sync@example.org>"),
    ]);
    rt.block_on(async {
        let email = "new@example.org";
        let (status, made) = create(&s, email, None).await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["verified"], false, "{made}");
        assert_eq!(made["verificationMethod"], "email-otp", "{made}");
        let session = bearer(
            "fxs",
            made["sessionToken"].as_str().unwrap(),
            "sessionToken",
        );
        let kft = bearer(
            "fxk",
            made["keyFetchToken"].as_str().unwrap(),
            "keyFetchToken",
        );
        let mail = tokio::time::timeout(std::time::Duration::from_secs(10), mails.recv())
            .await
            .expect("a mail within 10 s")
            .unwrap();
        assert!(mail.contains("To: new@example.org"), "{mail}");
        assert!(mail.contains("sync@example.org"), "{mail}");
        let code = code_in(&mail);

        // Until verified: status says so; keys and OAuth are refused with errno 104.
        let (status, st) = get(&s, "/v1/session/status", &session).await;
        assert_eq!(
            (status, st["state"].as_str()),
            (200, Some("unverified")),
            "{st}"
        );
        let (_, st) = get(&s, "/v1/recovery_email/status", &session).await;
        assert_eq!(st["verified"], false, "{st}");
        let (status, err) = get(&s, "/v1/account/keys", &kft).await;
        assert_eq!((status, errno(&err)), (400, Some(104)), "{err}");
        let client_id = "5882386c6d801776";
        let scope = "https://identity.mozilla.com/apps/oldsync";
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
        let (status, err) = common::fxa_post(
            &s,
            "/v1/session/verify_code",
            &json!({"code": wrong}),
            Some(&session),
        )
        .await;
        assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
        let (status, ok) = common::fxa_post(
            &s,
            "/v1/session/verify_code",
            &json!({"code": code}),
            Some(&session),
        )
        .await;
        assert_eq!(status, 200, "{ok}");
        let (_, st) = get(&s, "/v1/session/status", &session).await;
        assert_eq!(st["state"], "verified", "{st}");
        let (_, st) = get(&s, "/v1/recovery_email/status", &session).await;
        assert_eq!(st["verified"], true, "{st}");
        let (status, keys) = get(&s, "/v1/account/keys", &kft).await;
        assert_eq!(status, 200, "{keys}");
        assert!(keys["bundle"].is_string(), "{keys}");
        let body = json!({"client_id": client_id, "scope": scope, "grant_type": "fxa-credentials"});
        let (status, grant) = common::fxa_post(&s, "/v1/oauth/token", &body, Some(&session)).await;
        assert_eq!(status, 200, "{grant}");
        // The code is spent (and the session verified, so it answers OK again).
        let (status, _) = common::fxa_post(
            &s,
            "/v1/session/verify_code",
            &json!({"code": code}),
            Some(&session),
        )
        .await;
        assert_eq!(status, 200);
    });
    let log = s.log_text();
    assert!(log.contains("verification code mailed"), "{log}");
    assert!(log.contains("email verified"), "{log}");
}

#[test]
fn wrong_verification_codes_and_mailing_sign_ups_hit_the_attempt_limits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, mut mails) = rt.block_on(smtp_sink());
    let smtp = format!("smtp://127.0.0.1:{port}?tls=none");
    let s = Server::start(&[
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
        ("SYNCSTORE_ACCOUNTS_SMTP_URL", &smtp),
        ("SYNCSTORE_ACCOUNTS_MAIL_FROM", "sync@example.org"),
    ]);
    rt.block_on(async {
        let (status, made) = create(&s, "guess@example.org", None).await;
        assert_eq!(status, 200, "{made}");
        let session = bearer(
            "fxs",
            made["sessionToken"].as_str().unwrap(),
            "sessionToken",
        );
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
            let (status, err) = common::fxa_post(
                &s,
                "/v1/session/verify_code",
                &json!({"code": guess}),
                Some(&session),
            )
            .await;
            assert_eq!((status, errno(&err)), (400, Some(183)), "{err}");
            tried += 1;
        }
        // The eleventh attempt waits, even with the right code.
        let (status, err) = common::fxa_post(
            &s,
            "/v1/session/verify_code",
            &json!({"code": second}),
            Some(&session),
        )
        .await;
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
    let smtp = format!("smtp://127.0.0.1:{port}?tls=none");
    let s = Server::start(&[
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
        ("SYNCSTORE_ACCOUNTS_SMTP_URL", &smtp),
        ("SYNCSTORE_ACCOUNTS_MAIL_FROM", "sync@example.org"),
    ]);
    rt.block_on(async {
        let (status, err) = create(&s, "unlucky@example.org", None).await;
        assert_eq!((status, errno(&err)), (503, Some(151)), "{err}");
        // The account exists: signing in gives an unverified session.
        let body =
            json!({"email": "unlucky@example.org", "authPW": auth_pw("unlucky@example.org")});
        let (status, ok) = common::fxa_post(&s, "/v1/account/login", &body, None).await;
        assert_eq!(status, 200, "{ok}");
        assert_eq!(ok["verified"], false, "{ok}");
    });
    assert!(s.log_text().contains("verification mail not sent"));
}
