//! The accounts service's attempt limits and password hardening, black-box: attempts
//! are counted before the work (so requests sent together cannot all pass), failures
//! from one address do not lock the owner out from another, a sign-in flood from one
//! address does not stall others, successful sign-ins, mails and account lookups are
//! limited too. Clients bind to other loopback addresses (127.0.0.2, 127.0.0.3) to
//! play other client addresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fxa::{
    self, code_in, drain, errno, post_with as post, session_bearer, together,
};
use crate::common::{self, Server};
use serde_json::{Value, json};
use syncstore::accounts::crypto;

const EMAIL: &str = "owner@example.org";
const PASSWORD: &str = "correct horse battery";

/// `syncstore account add EMAIL --password-stdin`.
fn add_account(data: &std::path::Path, email: &str) {
    fxa::add_account(data, email, PASSWORD);
}

/// A client whose connections come from `ip` (a loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    fxa::client_from(ip, Duration::from_secs(60))
}

async fn login(client: &reqwest::Client, s: &Server, email: &str, password: &str) -> (u16, Value) {
    fxa::login_with(client, s, email, password, true).await
}

/// A 429 errno 114 with a usable `retryAfter`.
fn assert_too_many(status: u16, body: &Value) {
    assert_eq!((status, errno(body)), (429, Some(114)), "{body}");
    let retry = body["retryAfter"].as_u64().unwrap_or(0);
    assert!((1..=3600).contains(&retry), "{body}");
}

/// Checks `answers`: each is refused (429, as [`assert_too_many`] wants) or passes
/// `check`; how many were not refused.
fn not_refused(answers: &[(u16, Value)], check: impl Fn(u16, &Value)) -> usize {
    let mut n = 0;
    for (status, body) in answers {
        if *status == 429 {
            assert_too_many(*status, body);
        } else {
            check(*status, body);
            n += 1;
        }
    }
    n
}

/// A server with open sign-ups mailing to a fresh SMTP sink.
fn open_server_with_mail(
    rt: &tokio::runtime::Runtime,
    extra: &[(&str, &str)],
) -> (Server, tokio::sync::mpsc::UnboundedReceiver<String>) {
    fxa::open_server_with_mail(rt, "sync@example.org", extra)
}

// Item 2: attempts are reserved before the work.

#[test]
fn sixty_concurrent_wrong_logins_from_one_address_get_at_most_ten_tries() {
    let s = Arc::new(fxa::server_with_account(EMAIL, PASSWORD, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_from("127.0.0.1");
        let answers = together(60, |_| {
            let (client, s) = (client.clone(), s.clone());
            async move { login(&client, &s, EMAIL, "wrong password").await }
        })
        .await;
        let tried = not_refused(&answers, |status, body| {
            assert_eq!((status, errno(body)), (400, Some(103)), "{body}")
        });
        assert!(
            (1..=10).contains(&tried),
            "{tried} wrong passwords were checked"
        );
    });
}

#[test]
fn simultaneous_verification_code_guesses_try_at_most_ten_codes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = open_server_with_mail(&rt, &[]);
    let s = Arc::new(s);
    rt.block_on(async {
        let client = client_from("127.0.0.1");
        let email = "guessed@example.org";
        let body = sign_up(email, None);
        let (status, made) = post(&client, &s, "/v1/account/create", &body, None).await;
        assert_eq!(status, 200, "{made}");
        let session = session_bearer(made["sessionToken"].as_str().unwrap());
        let real = code_in(&fxa::next_mail(&mut mails).await);
        let answers = together(250, |i| {
            let (client, s, session) = (client.clone(), s.clone(), session.clone());
            // 250 distinct wrong codes.
            let mut guess = format!("{:06}", 100_000 + i);
            if guess == real {
                guess = format!("{:06}", 900_000 + i);
            }
            async move { fxa::verify_code_with(&client, &s, &session, &guess).await }
        })
        .await;
        let tried = not_refused(&answers, |status, body| {
            assert_eq!((status, errno(body)), (400, Some(183)), "{body}")
        });
        assert!((1..=10).contains(&tried), "{tried} codes were tried");
        // Even the right code waits now.
        let (status, body) = fxa::verify_code_with(&client, &s, &session, &real).await;
        assert_too_many(status, &body);
    });
}

#[test]
fn forty_concurrent_mailing_sign_ups_from_one_address_make_at_most_ten_accounts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) = open_server_with_mail(&rt, &[]);
    let s = Arc::new(s);
    rt.block_on(async {
        let client = client_from("127.0.0.1");
        let answers = together(40, |i| {
            let (client, s) = (client.clone(), s.clone());
            let email = format!("stranger{i}@example.org");
            async move {
                let body = sign_up(&email, None);
                post(&client, &s, "/v1/account/create", &body, None).await
            }
        })
        .await;
        let made = not_refused(&answers, |status, body| assert_eq!(status, 200, "{body}"));
        assert!((1..=10).contains(&made), "{made} accounts made");
        let sent = drain(&mut mails, Duration::from_secs(2)).await;
        assert_eq!(sent.len(), made, "one mail per account made");
    });
    let accounts = common::account_cli(s.data.path(), &["list"], &[], "");
    assert!(accounts.matches("stranger").count() <= 10, "{accounts}");
}

// Item 4: failures from other addresses do not lock the owner out.

#[test]
fn wrong_logins_from_one_address_do_not_refuse_the_owner_at_another() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attacker = client_from("127.0.0.2");
        for i in 0..10 {
            let (status, body) = login(&attacker, &s, EMAIL, "wrong password").await;
            assert_eq!(
                (status, errno(&body)),
                (400, Some(103)),
                "attempt {i}: {body}"
            );
        }
        let (status, body) = login(&attacker, &s, EMAIL, "wrong password").await;
        assert_too_many(status, &body);
        // The failing address is refused even with the right password …
        let (status, body) = login(&attacker, &s, EMAIL, PASSWORD).await;
        assert_too_many(status, &body);
        // … the owner, elsewhere, is not.
        let owner = client_from("127.0.0.3");
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["sessionToken"].is_string(), "{body}");
    });
}

// Item 3: cheap checks first; hardening bounded per address; sign-ins limited.

#[test]
fn a_login_flood_from_one_address_leaves_another_address_signing_in_quickly() {
    let s = Arc::new(fxa::server_with_account(EMAIL, PASSWORD, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Warm up (the first sign-in opens the database and loads the keys), then time
        // one sign-in without the flood, on this machine as loaded as it is now.
        let owner = client_from("127.0.0.3");
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let started = Instant::now();
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let quiet = started.elapsed();
        let attacker = client_from("127.0.0.2");
        let flood = {
            let s = s.clone();
            tokio::spawn(async move {
                together(200, |_| {
                    let (client, s) = (attacker.clone(), s.clone());
                    async move { login(&client, &s, EMAIL, "wrong password").await }
                })
                .await
            })
        };
        // Sign in while the flood is in flight.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (status, body) = login(&owner, &s, EMAIL, PASSWORD).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        // Under 2 s (before: 30 s), or — on a machine so loaded that one sign-in alone
        // takes long — within a few sign-ins' time (the flood's one hardening in flight,
        // and this one's).
        let bound = Duration::from_secs(2).max(quiet * 5);
        assert!(
            took < bound,
            "the owner's sign-in took {took:?} (alone: {quiet:?})"
        );
        let answers = flood.await.unwrap();
        let checked = answers.iter().filter(|(st, _)| *st == 400).count();
        assert!(checked <= 10, "{checked} flood passwords checked");
        assert!(answers.iter().all(|(st, _)| *st == 400 || *st == 429));
    });
}

#[test]
fn successful_logins_are_limited_per_address_and_per_account() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    add_account(data.path(), "second@example.org");
    // A generous hardening budget: this test is about the sign-in limits.
    let s = Arc::new(Server::start_in(
        data,
        &[
            ("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "100"),
            ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    ));
    const HARDENINGS: &str = "syncstore_accounts_hardenings_total";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let one = client_from("127.0.0.2");
        for i in 0..30 {
            let (status, body) = login(&one, &s, EMAIL, PASSWORD).await;
            assert_eq!(status, 200, "sign-in {i}: {body}");
        }
        assert_eq!(s.metric(HARDENINGS).await, 30.0);
        // Twenty more at once: all refused, and none of them costs a hardening (each
        // is checked against the sign-in limits once its turn at hardening comes).
        let answers = together(20, |_| {
            let (one, s) = (one.clone(), s.clone());
            async move { login(&one, &s, EMAIL, PASSWORD).await }
        })
        .await;
        assert_eq!(not_refused(&answers, |_, body| panic!("{body}")), 0);
        // The address is used up for other accounts too, a wrong password included …
        let (status, body) = login(&one, &s, "second@example.org", PASSWORD).await;
        assert_too_many(status, &body);
        let (status, body) = login(&one, &s, "second@example.org", "wrong").await;
        assert_too_many(status, &body);
        // … and the account from other addresses.
        let other = client_from("127.0.0.3");
        let (status, body) = login(&other, &s, EMAIL, PASSWORD).await;
        assert_too_many(status, &body);
        // None of those refusals hardened a password.
        assert_eq!(s.metric(HARDENINGS).await, 30.0);
        let (status, body) = login(&other, &s, "second@example.org", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(s.metric(HARDENINGS).await, 31.0);
    });
}

#[test]
fn one_address_signing_in_at_once_gets_a_quarter_of_the_budget() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    add_account(data.path(), "second@example.org");
    // Four hardenings a second: one address gets one a second after a burst of 3.
    let s = Arc::new(Server::start_in(
        data,
        &[
            ("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "4"),
            ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    ));
    const HARDENINGS: &str = "syncstore_accounts_hardenings_total";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let other = client_from("127.0.0.3");
        let (status, body) = login(&other, &s, "second@example.org", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let started = Instant::now();
        let (status, body) = login(&other, &s, "second@example.org", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let quiet = started.elapsed();
        // Ten correct sign-ins from one address, sent together.
        let one = client_from("127.0.0.2");
        let started = Instant::now();
        let flood = {
            let (one, s) = (one.clone(), s.clone());
            tokio::spawn(async move {
                together(10, |_| {
                    let (one, s) = (one.clone(), s.clone());
                    async move { login(&one, &s, EMAIL, PASSWORD).await }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // 1.5 s in: the burst of 3 and at most one more (two, for a slow start).
        let early = s.metric(HARDENINGS).await - 2.0;
        assert!(early <= 5.0, "{early} hardenings for one address in 1.5 s");
        // Another address finds a turn at once meanwhile.
        let t = Instant::now();
        let (status, body) = login(&other, &s, "second@example.org", PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        let took = t.elapsed();
        let bound = Duration::from_secs(2).max(quiet * 5);
        assert!(
            took < bound,
            "another address waited {took:?} (alone: {quiet:?})"
        );
        // Every one of the ten gets through, in turn: the last no sooner than 7 s in.
        let answers = flood.await.unwrap();
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{body}");
        }
        assert!(
            started.elapsed() >= Duration::from_secs(6),
            "ten sign-ins from one address took only {:?}",
            started.elapsed()
        );
        assert_eq!(s.metric(HARDENINGS).await, 13.0);
    });
}

/// Stores `n` invite codes directly (as `syncstore account invite` would); the codes.
fn invites(data: &std::path::Path, n: usize) -> Vec<String> {
    let store = syncstore::accounts::store::Store::open(data, "").unwrap();
    let now = syncstore::accounts::now_ms();
    (0..n)
        .map(|i| {
            let code = format!(
                "test-invite-{i}-{}",
                hex::encode(rand::random::<[u8; 12]>())
            );
            store
                .insert_invite(&crypto::sha256(code.as_bytes()), now, now + 3_600_000)
                .unwrap();
            code
        })
        .collect()
}

fn sign_up(email: &str, invite: Option<&str>) -> Value {
    fxa::credentials(email, PASSWORD, invite)
}

#[test]
fn sign_ups_beyond_the_hardening_budget_get_429_with_retry_after() {
    // One hardening a second: a burst of 3, then at most 10 s of waiting for a turn.
    let s = Arc::new(Server::start(&[
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
        ("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "1"),
    ]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Twenty-five addresses, one sign-up each (no mail), all at once.
        let answers = together(25, |i| {
            let (client, s) = (client_from(&format!("127.0.1.{}", i + 1)), s.clone());
            async move {
                let email = format!("new{i}@example.org");
                post(
                    &client,
                    &s,
                    "/v1/account/create",
                    &sign_up(&email, None),
                    None,
                )
                .await
            }
        })
        .await;
        let ok = answers.iter().filter(|(st, _)| *st == 200).count();
        for (status, body) in answers.iter().filter(|(st, _)| *st != 200) {
            assert_too_many(*status, body);
        }
        // 3 at once and 10 after a wait in turn; a few more if the requests' arrivals
        // spread over a loaded machine's seconds.
        assert!((13..=18).contains(&ok), "{ok} sign-ups within the budget");
    });
}

#[test]
fn a_bogus_invite_code_is_refused_without_a_turn_of_the_hardening_budget() {
    let data = tempfile::tempdir().unwrap();
    let codes = invites(data.path(), 31);
    let s = Arc::new(Server::start_in(
        data,
        &[
            ("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite"),
            ("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "1"),
        ],
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Spend the budget: 30 invited sign-ups from 30 addresses at once (3 at once,
        // 10 more after a wait in turn, the rest refused for about a second). As soon as one of
        // them is refused, the budget is known to be spent.
        let (refused_tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
        let flood_codes = codes[..30].to_vec();
        let spend = {
            let s = s.clone();
            tokio::spawn(async move {
                together(30, |i| {
                    let (client, s) = (client_from(&format!("127.0.2.{}", i + 1)), s.clone());
                    let body = sign_up(&format!("flood{i}@example.org"), Some(&flood_codes[i]));
                    let refused_tx = refused_tx.clone();
                    async move {
                        let answer = post(&client, &s, "/v1/account/create", &body, None).await;
                        if answer.0 == 429 {
                            let _ = refused_tx.send(());
                        }
                        answer
                    }
                })
                .await
            })
        };
        tokio::time::timeout(Duration::from_secs(30), refused.recv())
            .await
            .expect("the flood spends the budget");
        let client = client_from("127.0.0.4");
        // A bogus code is refused as such (no turn needed: it is never hashed) …
        let bogus = sign_up("guess@example.org", Some("bogus-invite-code"));
        let (status, body) = post(&client, &s, "/v1/account/create", &bogus, None).await;
        assert_eq!((status, errno(&body)), (400, Some(125)), "{body}");
        // … while a valid one, after it, needs a turn that is not to be had.
        let valid = sign_up("invited@example.org", Some(&codes[30]));
        let (status, body) = post(&client, &s, "/v1/account/create", &valid, None).await;
        assert_too_many(status, &body);
        let answers = spend.await.unwrap();
        let admitted = answers.iter().filter(|(st, _)| *st == 200).count();
        assert!(
            (13..=20).contains(&admitted),
            "{admitted} sign-ups within the budget"
        );
        // The refused valid sign-up did not spend its code.
        let listed = common::account_cli(s.data.path(), &["invites"], &[], "");
        assert!(!listed.contains("invited@example.org"), "{listed}");
    });
}

// Item 5: mails per recipient and per address, sign-in mails included.

#[test]
fn thirty_logins_to_an_unverified_account_mail_at_most_three_codes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) =
        open_server_with_mail(&rt, &[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "100")]);
    rt.block_on(async {
        let email = "victim@example.org";
        let attacker = client_from("127.0.0.2");
        let body = sign_up(email, None);
        let (status, made) = post(&attacker, &s, "/v1/account/create", &body, None).await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["verified"], false, "{made}");
        // Sign-ins from two addresses, as a mail bomber would spread them.
        let other = client_from("127.0.0.3");
        for i in 0..30 {
            let client = if i % 2 == 0 { &attacker } else { &other };
            let (status, body) = login(client, &s, email, PASSWORD).await;
            assert_eq!(status, 200, "sign-in {i}: {body}");
            assert_eq!(body["verified"], false, "{body}");
        }
        // At most 3 per recipient and requesting address (the sign-up's mail included).
        let sent = drain(&mut mails, Duration::from_secs(2)).await;
        assert!(
            (2..=6).contains(&sent.len()),
            "{} mails to one recipient",
            sent.len()
        );
        assert!(sent.iter().all(|m| m.contains("To: victim@example.org")));
        // A resend is refused too, and the last code mailed still verifies.
        let session = session_bearer(made["sessionToken"].as_str().unwrap());
        let (status, body) = post(
            &attacker,
            &s,
            "/v1/session/resend_code",
            &json!({}),
            Some(&session),
        )
        .await;
        assert_too_many(status, &body);
        let code = code_in(sent.last().unwrap());
        let (status, body) = fxa::verify_code_with(&other, &s, &session, &code).await;
        assert_eq!(status, 200, "{body}");
    });
}

// Item 10: lookups and case variants count.

#[test]
fn account_status_by_email_is_limited_per_address() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 60 lookups sent at the same moment: the 30 a minute hold (each is counted
        // before it is answered), the rest are refused.
        let s = Arc::new(s);
        let answers = together(60, |i| {
            let (prober, s) = (client_from("127.0.0.2"), s.clone());
            async move {
                let email = format!("probe{i}@example.org");
                post(
                    &prober,
                    &s,
                    "/v1/account/status",
                    &json!({ "email": email }),
                    None,
                )
                .await
            }
        })
        .await;
        let answered = answers.iter().filter(|(st, _)| *st == 200).count();
        for (status, body) in &answers {
            if *status == 200 {
                assert_eq!(body["exists"], false, "{body}");
            } else {
                assert_too_many(*status, body);
            }
        }
        assert!(
            (1..=30).contains(&answered),
            "{answered} of 60 simultaneous lookups answered"
        );
        let prober = client_from("127.0.0.2");
        let (status, body) = post(
            &prober,
            &s,
            "/v1/account/status",
            &json!({ "email": EMAIL }),
            None,
        )
        .await;
        assert_too_many(status, &body);
        assert!(body.get("exists").is_none(), "{body}");
        // Another address is not affected.
        let other = client_from("127.0.0.3");
        let (status, body) = post(
            &other,
            &s,
            "/v1/account/status",
            &json!({ "email": EMAIL }),
            None,
        )
        .await;
        assert_eq!(
            (status, body["exists"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    });
}

#[test]
fn a_case_variant_login_counts_as_a_failed_attempt() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let prober = client_from("127.0.0.2");
        let variant = EMAIL.to_uppercase();
        for i in 0..10 {
            let (status, body) = login(&prober, &s, &variant, PASSWORD).await;
            assert_eq!(
                (status, errno(&body)),
                (400, Some(120)),
                "attempt {i}: {body}"
            );
            assert_eq!(body["email"], EMAIL);
        }
        let (status, body) = login(&prober, &s, &variant, PASSWORD).await;
        assert_too_many(status, &body);
        assert!(body.get("email").is_none(), "{body}");
    });
}

/// Correct sign-ins sent at the same moment from several addresses never get past the
/// account's 30 sign-ins a minute: the sign-in is counted atomically once the password
/// is verified (attempts still in flight hold only failure counts, 10 per address, so
/// some are refused before that), and a mail-bomber's simultaneous sign-ins to an
/// unverified account mail at most 3 codes per requesting address.
#[test]
fn simultaneous_sign_ins_never_pass_the_sign_in_or_mail_limits() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, mut mails) =
        open_server_with_mail(&rt, &[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", "100")]);
    let s = Arc::new(s);
    rt.block_on(async {
        let email = "victim@example.org";
        let (status, made) = post(
            &client_from("127.0.0.2"),
            &s,
            "/v1/account/create",
            &sign_up(email, None),
            None,
        )
        .await;
        assert_eq!(status, 200, "{made}");
        let answers = together(60, |i| {
            let client = client_from(&format!("127.0.5.{}", i % 6 + 1));
            let s = s.clone();
            async move { login(&client, &s, email, PASSWORD).await }
        })
        .await;
        let signed_in = answers.iter().filter(|(st, _)| *st == 200).count();
        for (status, body) in answers.iter().filter(|(st, _)| *st != 200) {
            assert_too_many(*status, body);
        }
        assert!(
            (1..=30).contains(&signed_in),
            "{signed_in} of 60 simultaneous sign-ins got in"
        );
        // The sign-up's mail, then at most 3 per requesting address (6 addresses).
        let sent = drain(&mut mails, Duration::from_secs(2)).await;
        assert!(
            (2..=1 + 3 * 6).contains(&sent.len()),
            "{} mails to one recipient",
            sent.len()
        );
    });
}

/// The threads of the server process named `harden-*`, with their nice values (field 19
/// of `/proc/PID/task/TID/stat`, after the parenthesised name).
fn hardening_threads(pid: u32) -> Vec<i64> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("harden-") {
            continue;
        }
        // After ") ": state(3) ppid(4) … priority(18) nice(19).
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        nices.push(fields[16].parse().unwrap());
    }
    nices
}

#[test]
fn hardening_threads_start_at_the_first_sign_in_at_the_configured_nice_value() {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    let s = Server::start_in(data, &[("SYNCSTORE_ACCOUNTS_HARDENING_NICE", "19")]);
    // No sign-in yet: no hardening thread (a storage-only workload never has them).
    assert_eq!(hardening_threads(s.pid()), Vec::<i64>::new());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (status, body) = login(&client_from("127.0.0.2"), &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
    });
    let nices = hardening_threads(s.pid());
    let slots = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
    assert_eq!(nices, vec![19; slots], "one thread per slot, at nice 19");
    // The default keeps the process's own priority.
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), EMAIL);
    let s = Server::start_in(data, &[]);
    rt.block_on(async {
        let (status, body) = login(&client_from("127.0.0.2"), &s, EMAIL, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
    });
    assert_eq!(hardening_threads(s.pid()), vec![0; slots]);
}
