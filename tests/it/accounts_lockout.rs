//! What attackers without the password cannot do to an account's owner, black-box:
//! failures from other addresses (even past the account's ceiling) and wrong sign-ins
//! still in flight never refuse the owner's correct password from an address that has
//! not been failing; sign-up floods (existing or invalid emails) take no turns of the
//! hardening budget and are counted per address; a stranger cannot spend the owner's
//! sign-up mails; a sign-up whose mail fails still counts; and a client behind a
//! trusted proxy cannot make itself count as the proxy. Clients bind to loopback
//! addresses (127.0.x.y) to play distinct client addresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Server;
use crate::common::fxa::{self, drain, errno, together};
use serde_json::{Value, json};

const EMAIL: &str = "owner@example.org";
const PASSWORD: &str = "correct horse battery";

/// `syncstore account add EMAIL --password-stdin` (a verified account).
fn add_account(data: &std::path::Path, email: &str) {
    fxa::add_account(data, email, PASSWORD);
}

/// A client whose connections come from `ip` (a loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    fxa::client_from(ip, Duration::from_secs(60))
}

/// POSTs JSON with `client` and extra headers: status and JSON body.
async fn post(
    client: &reqwest::Client,
    s: &Server,
    path: &str,
    body: &Value,
    headers: &[(&str, &[u8])],
) -> (u16, Value) {
    let mut req = client.post(format!("{}{path}", s.url())).json(body);
    for (name, value) in headers {
        req = req.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let r = req.send().await.expect("POST to the accounts API");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Signs in to `email` with `password` (the stretch salted by `email` as given).
async fn login(client: &reqwest::Client, s: &Server, email: &str, password: &str) -> (u16, Value) {
    fxa::login_with(client, s, email, password, true).await
}

fn sign_up_body(email: &str) -> Value {
    fxa::credentials(email, "some password", None)
}

/// A 429 errno 114 with a usable `retryAfter`.
fn assert_too_many(status: u16, body: &Value) {
    assert_eq!((status, errno(body)), (429, Some(114)), "{body}");
    let retry = body["retryAfter"].as_u64().unwrap_or(0);
    assert!((1..=2 * 86_400).contains(&retry), "{body}");
}

/// A server with open sign-ups mailing to a fresh SMTP sink (refusing the recipients
/// at `reject.example`).
fn open_server_with_mail(
    rt: &tokio::runtime::Runtime,
    extra: &[(&str, &str)],
) -> (Server, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (port, mails) = rt.block_on(fxa::smtp_sink_rejecting(Some("reject.example")));
    let env = fxa::open_mail_env(port, "sync@example.org");
    let mut env = fxa::env_refs(&env);
    env.extend_from_slice(extra);
    (Server::start(&env), mails)
}

// A1: the account's failure ceiling never refuses the owner.

#[test]
fn a_hundred_failures_from_ten_addresses_do_not_refuse_the_owner_at_a_fresh_address() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    let s = Arc::new(Server::start_in(data, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 110 sign-ins with another case of the email (refused before any hashing, but
        // failures of the account), 11 from each of 10 addresses, all at once.
        let variant = EMAIL.to_uppercase();
        let answers = together(110, |i| {
            let (client, s) = (client_from(&format!("127.0.2.{}", i % 10 + 1)), s.clone());
            let variant = variant.clone();
            async move { login(&client, &s, &variant, "wrong password").await }
        })
        .await;
        let failed = answers
            .iter()
            .filter(|(st, b)| (*st, errno(b)) == (400, Some(120)))
            .count();
        for (status, body) in answers.iter().filter(|(st, _)| *st != 400) {
            assert_too_many(*status, body);
        }
        // Ten per address: the account has its 100 failures of the hour.
        assert_eq!(failed, 100);
        // An address that failed for this account is refused, even the right password.
        let failing = client_from("127.0.2.3");
        let (status, body) = login(&failing, &s, EMAIL, PASSWORD).await;
        assert_too_many(status, &body);
        // The owner at an address that has not been failing signs in.
        let owner = client_from("127.0.2.200");
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["sessionToken"].is_string(), "{body}");
        // Another fresh address gets its few guesses checked (a typo or two of the
        // owner's must not lock the owner's own address out), then no more this hour.
        let guesser = client_from("127.0.2.201");
        for _ in 0..syncstore::accounts::limits::TYPOS_OVER_CEILING {
            let (status, body) = login(&guesser, &s, EMAIL, "wrong password").await;
            assert_eq!((status, errno(&body)), (400, Some(103)), "{body}");
        }
        let (status, body) = login(&guesser, &s, EMAIL, PASSWORD).await;
        assert_too_many(status, &body);
        // The owner again, from its address: still fine.
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
    });
}

// A8: wrong sign-ins still being checked do not hold the account's sign-in budget.

#[test]
fn wrong_logins_in_flight_do_not_hold_the_owners_sign_in_budget() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    // A budget large enough that every wrong password is hardened (none refused).
    let s = Arc::new(Server::start_in(
        data,
        &[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "100")],
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 30 wrong passwords from 3 addresses (as many as the account's 30 sign-ins a
        // minute) and, once they are all in flight, the owner's correct one.
        let answers = together(31, |i| {
            let s = s.clone();
            async move {
                if i == 30 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let owner = client_from("127.0.4.200");
                    login(&owner, &s, EMAIL, PASSWORD).await
                } else {
                    let client = client_from(&format!("127.0.4.{}", i % 3 + 1));
                    login(&client, &s, EMAIL, "wrong password").await
                }
            }
        })
        .await;
        for (status, body) in &answers[..30] {
            assert_eq!((*status, errno(body)), (400, Some(103)), "{body}");
        }
        let (status, body) = &answers[30];
        assert_eq!(*status, 200, "{body}");
        assert!(body["sessionToken"].is_string(), "{body}");
    });
}

// A3/A6: sign-ups check the cheap things first and are counted per address.

#[test]
fn sign_up_floods_from_two_addresses_do_not_fail_a_login_from_a_third() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    // One hardening a second (a burst of 3): a flood that took turns would exhaust it.
    let s = Arc::new(Server::start_in(
        data,
        &[
            ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
            ("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "1"),
        ],
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two addresses, three connections each, each sending sign-ups for the existing
        // (verified) account or an invalid email, one after the other, until the
        // owner is done (at most 300 each and 30 s).
        let mut flood = Vec::new();
        for a in 0..2 {
            for c in 0..3 {
                let (s, stop) = (s.clone(), stop.clone());
                flood.push(tokio::spawn(async move {
                    let client = client_from(&format!("127.0.5.{}", a + 1));
                    let mut answers = Vec::new();
                    for n in 0..300 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(30)
                        {
                            break;
                        }
                        let email = if (n + c) % 2 == 0 {
                            EMAIL.to_string()
                        } else {
                            format!("x{n}@localhost")
                        };
                        let body = sign_up_body(&email);
                        answers.push(post(&client, &s, "/v1/account/create", &body, &[]).await);
                    }
                    (a, answers)
                }));
            }
        }
        // Meanwhile, once any burst of the budget is gone, the owner signs in from a
        // third address, five times.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let owner = client_from("127.0.5.200");
        let mut logins = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
            logins.push((status, body, t.elapsed()));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for (i, (status, body, took)) in logins.iter().enumerate() {
            assert_eq!(*status, 200, "login {i} during the flood: {body}");
            assert!(*took < Duration::from_secs(10), "login {i}: {took:?}");
        }
        let mut per_address = [0usize; 2];
        let mut exists = 0;
        for task in flood {
            let (a, answers) = task.await.unwrap();
            for (status, body) in answers {
                match (status, errno(&body)) {
                    (400, Some(101)) => exists += 1,
                    (400, Some(107)) => {}
                    (429, _) => {
                        assert_too_many(status, &body);
                        continue;
                    }
                    other => panic!("{other:?} {body}"),
                }
                per_address[a] += 1;
            }
        }
        // Every attempt counted per address: at most 30 answered a minute from each.
        assert!(exists > 0, "no sign-up was told the account exists");
        for (a, n) in per_address.iter().enumerate() {
            assert!(*n <= 30, "address {a}: {n} sign-ups answered");
        }
    });
}

// A4: the mail limit per recipient is kept per requesting address.

#[test]
fn a_stranger_cannot_spend_the_owners_sign_up_mails() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = open_server_with_mail(&rt, &[]);
    rt.block_on(async {
        let stranger = client_from("127.0.6.2");
        for i in 0..3 {
            let (status, body) = post(
                &stranger,
                &s,
                "/v1/account/create",
                &sign_up_body(EMAIL),
                &[],
            )
            .await;
            assert_eq!(status, 200, "sign-up {i}: {body}");
        }
        // The stranger's own share is spent …
        let (status, body) = post(
            &stranger,
            &s,
            "/v1/account/create",
            &sign_up_body(EMAIL),
            &[],
        )
        .await;
        assert_too_many(status, &body);
        assert_eq!(drain(&mut mails, Duration::from_millis(500)).await.len(), 3);
        // … the owner's is not: the owner's sign-up from its address is mailed.
        let owner = client_from("127.0.6.99");
        let (status, body) = post(
            &owner,
            &s,
            "/v1/account/create",
            &sign_up_body(" Owner@Example.org"),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(drain(&mut mails, Duration::from_millis(500)).await.len(), 1);
    });
}

#[test]
fn mails_to_one_recipient_stop_at_twenty_a_day_from_all_addresses() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) =
        open_server_with_mail(&rt, &[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "100")]);
    rt.block_on(async {
        // Seven addresses, three sign-ups each for one recipient: 20 are mailed.
        let mut answers = Vec::new();
        for i in 0..21 {
            let client = client_from(&format!("127.0.8.{}", i / 3 + 1));
            answers.push(post(&client, &s, "/v1/account/create", &sign_up_body(EMAIL), &[]).await);
        }
        for (i, (status, body)) in answers[..20].iter().enumerate() {
            assert_eq!(*status, 200, "sign-up {i}: {body}");
        }
        let (status, body) = &answers[20];
        assert_too_many(*status, body);
        assert_eq!(
            drain(&mut mails, Duration::from_millis(500)).await.len(),
            20
        );
    });
}

// A5: a sign-up whose mail fails keeps its counts.

#[test]
fn sign_ups_whose_mail_fails_still_count_per_address() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, _mails) = open_server_with_mail(&rt, &[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "50")]);
    rt.block_on(async {
        let client = client_from("127.0.7.2");
        for i in 0..10 {
            let email = format!("u{i}@reject.example");
            let (status, body) = post(
                &client,
                &s,
                "/v1/account/create",
                &sign_up_body(&email),
                &[],
            )
            .await;
            assert_eq!((status, errno(&body)), (503, Some(151)), "{i}: {body}");
        }
        // The address has used its 10 mails of the minute.
        let (status, body) = post(
            &client,
            &s,
            "/v1/account/create",
            &sign_up_body("someone@example.org"),
            &[],
        )
        .await;
        assert_too_many(status, &body);
    });
}

// A7: only trusted hops and the rightmost untrusted entry of X-Forwarded-For count.

#[test]
fn a_client_behind_the_proxy_cannot_make_itself_count_as_the_proxy() {
    let s = Server::start(&[
        ("SYNCSTORE_TRUST_FORWARDED_HEADERS", "true"),
        ("SYNCSTORE_TRUSTED_PROXIES", "127.0.0.2"),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let proxy = client_from("127.0.0.2");
        let unknown = |n: usize| json!({"email": format!("nobody-{n}@example.org"), "authPW": "ab".repeat(32)});
        // 40 client-written entries left of the address the proxy appended, or a
        // non-ASCII one: the appended address is the client, and it is counted.
        let long = format!("{}, 203.0.113.7", vec!["198.51.100.1"; 40].join(", "));
        let headers: [Vec<u8>; 2] = [long.into_bytes(), b"1.2.3.4\xe9, 203.0.113.8".to_vec()];
        let mut n = 0;
        for xff in &headers {
            for i in 0..11 {
                n += 1;
                let (status, body) = post(
                    &proxy,
                    &s,
                    "/v1/account/login",
                    &unknown(n),
                    &[("x-forwarded-for", xff)],
                )
                .await;
                if i < 10 {
                    assert_eq!((status, errno(&body)), (400, Some(102)), "{i}: {body}");
                } else {
                    assert_too_many(status, &body);
                }
            }
        }
        // The proxy's own unit was not charged: a request without the header is fine.
        n += 1;
        let (status, body) = post(&proxy, &s, "/v1/account/login", &unknown(n), &[]).await;
        assert_eq!((status, errno(&body)), (400, Some(102)), "{body}");
    });
}
