//! Who a request comes from, black-box: X-Forwarded-For is believed only from a peer in
//! `trusted_proxies` (with `trust_forwarded_headers` on), and then its rightmost
//! address that is not a trusted proxy is the client. Checked through the accounts
//! service's per-address limit on failed sign-ins (10 a minute from one address):
//! sign-ins for distinct unknown emails, so only the address is shared. Clients bind
//! to 127.0.0.2 (the proxy) or 127.0.0.3 (anyone else).
//!
//! Also `POST /v1/account/devices/notify`, which Firefox calls after every first sync.

use std::time::Duration;

use crate::common::fxa;
use crate::common::{self, Server};
use serde_json::{Value, json};

const PROXY: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.3";
/// Enough failed sign-ins to pass any per-address limit the service has (10 a minute).
const ATTEMPTS: usize = 40;

/// A client whose connections come from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    fxa::client_from(ip, Duration::from_secs(30))
}

/// A sign-in for an account that does not exist (`n` makes the email unique), with
/// `xff` as X-Forwarded-For: the status and errno.
async fn failed_login(s: &Server, c: &reqwest::Client, n: usize, xff: Option<&str>) -> (u16, i64) {
    let body = json!({"email": format!("nobody-{n}@example.org"), "authPW": "ab".repeat(32)});
    let mut req = c.post(format!("{}/v1/account/login", s.url())).json(&body);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let r = req.send().await.expect("POST /v1/account/login");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["errno"].as_i64().unwrap_or(-1))
}

/// Sends failed sign-ins (unique emails from `first` on, X-Forwarded-For from `xff`)
/// until one is refused 429 errno 114; the attempt it came at, if any. Every other
/// answer must be the unknown-account one (400 errno 102).
async fn attempts_until_limited(
    s: &Server,
    c: &reqwest::Client,
    first: usize,
    xff: impl Fn(usize) -> Option<String>,
) -> Option<usize> {
    for i in 0..ATTEMPTS {
        let (status, errno) = failed_login(s, c, first + i, xff(i).as_deref()).await;
        if status == 429 {
            assert_eq!(errno, 114, "429 with errno {errno}");
            return Some(i);
        }
        assert_eq!((status, errno), (400, 102), "attempt {i}");
    }
    None
}

fn behind_proxy() -> Server {
    Server::start(&[
        ("SYNCSTORE_TRUST_FORWARDED_HEADERS", "true"),
        ("SYNCSTORE_TRUSTED_PROXIES", "127.0.0.2, 10.0.0.0/8"),
    ])
}

#[test]
fn forwarded_for_from_a_peer_that_is_not_a_proxy_is_ignored() {
    let s = behind_proxy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client_from(OTHER);
        // Every attempt claims another client, some as if they came through the proxy
        // (which the peer is not): all are the peer's.
        let hit = attempts_until_limited(&s, &c, 0, |i| {
            Some(match i % 3 {
                0 => format!("198.51.100.{i}"),
                1 => format!("198.51.100.{i}, 127.0.0.2"),
                _ => format!("198.51.100.{i}, 10.0.0.{i}"),
            })
        })
        .await;
        assert!(
            hit.is_some(),
            "{ATTEMPTS} failures with spoofed XFF: never 429"
        );
        // The limited address is the peer: the proxy's clients are unaffected.
        let (status, errno) =
            failed_login(&s, &client_from(PROXY), 1000, Some("198.51.100.1")).await;
        assert_eq!((status, errno), (400, 102));
    });
}

#[test]
fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
    let s = behind_proxy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let proxy = client_from(PROXY);
        // The client wrote a different address each time; the proxy appended the one
        // it saw (203.0.113.5), and a second trusted proxy hop after it.
        let hit = attempts_until_limited(&s, &proxy, 0, |i| {
            Some(if i % 2 == 0 {
                format!("198.51.100.{i}, 203.0.113.5")
            } else {
                format!("198.51.100.{i}, 203.0.113.5, 10.1.2.3")
            })
        })
        .await;
        assert!(
            hit.is_some(),
            "{ATTEMPTS} failures from 203.0.113.5 behind the proxy: never 429"
        );
        // Another client behind the same proxy is not limited, even when it writes the
        // limited address on the left; nor is the proxy itself, nor another peer.
        for (n, (c, xff)) in [
            (&proxy, Some("203.0.113.6")),
            (&proxy, Some("203.0.113.5, 203.0.113.6")),
            (&proxy, None),
            (&client_from(OTHER), Some("203.0.113.5")),
        ]
        .into_iter()
        .enumerate()
        {
            let (status, errno) = failed_login(&s, c, 1000 + n, xff).await;
            assert_eq!((status, errno), (400, 102), "case {n}: {xff:?}");
        }
    });
}

#[test]
fn distinct_clients_behind_a_trusted_proxy_are_not_merged() {
    let s = behind_proxy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let proxy = client_from(PROXY);
        // 40 failures from the proxy, 4 from each of 10 clients (IPv4 and IPv6, each
        // IPv6 one in its own /64): none reaches a per-address limit.
        let hit = attempts_until_limited(&s, &proxy, 0, |i| {
            let client = i % 10;
            Some(if client % 2 == 0 {
                format!("203.0.113.{client}")
            } else {
                format!("[2001:db8:0:{client}::1]:5000, 10.0.0.7")
            })
        })
        .await;
        assert_eq!(
            hit, None,
            "distinct clients behind the proxy were counted as one"
        );
    });
}

#[test]
fn without_both_settings_forwarded_for_is_ignored_and_serve_says_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cases = [
        (
            [
                ("SYNCSTORE_TRUST_FORWARDED_HEADERS", "true"),
                ("SYNCSTORE_TRUSTED_PROXIES", ""),
            ],
            "trusted_proxies is empty",
        ),
        (
            [
                ("SYNCSTORE_TRUST_FORWARDED_HEADERS", "false"),
                ("SYNCSTORE_TRUSTED_PROXIES", "127.0.0.2"),
            ],
            "trust_forwarded_headers is off",
        ),
    ];
    for (env, warning) in cases {
        let s = Server::start(&env);
        let log = s.log.lock().unwrap().join("\n");
        assert!(
            log.contains("WARN") && log.contains(warning),
            "{env:?}: no warning {warning:?}:\n{log}"
        );
        let hit = rt.block_on(attempts_until_limited(&s, &client_from(PROXY), 0, |i| {
            Some(format!("198.51.100.{i}"))
        }));
        assert!(hit.is_some(), "{env:?}: XFF believed, never 429");
    }
    // Both set: no warning.
    let s = behind_proxy();
    let log = s.log.lock().unwrap().join("\n");
    assert!(!log.contains("trusted_proxies is"), "{log}");
    assert!(!log.contains("trust_forwarded_headers is"), "{log}");
}

// ---- POST /v1/account/devices/notify ----

const EMAIL: &str = "notify@example.org";
const PASSWORD: &str = "correct horse battery";

#[test]
fn devices_notify_answers_an_empty_object_to_a_signed_in_device() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = fxa::signed_in(&s, EMAIL, PASSWORD).await;
        let path = "/v1/account/devices/notify";
        // What Firefox's clients engine sends after its first sync, and to named devices.
        let first_sync = json!({
            "to": "all",
            "excluded": ["0123456789abcdef0123456789abcdef"],
            "payload": {"version": 1, "command": "sync:collection_changed",
                        "data": {"collections": ["clients"], "reason": "firstsync"}},
            "TTL": 0,
        });
        let named = json!({
            "to": ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"],
            "payload": {"version": 1, "command": "sync:collection_changed",
                        "data": {"collections": ["clients"]}},
            "TTL": 604800,
        });
        let account_verify = json!({"to": "all", "_endpointAction": "accountVerify"});
        for body in [&first_sync, &named, &account_verify] {
            let (status, v) = common::fxa_post(&s, path, body, Some(&session)).await;
            assert_eq!((status, &v), (200, &json!({})), "{body}");
        }
        // Without a session: 401 errno 110, whatever the body.
        let (status, v) = common::fxa_post(&s, path, &first_sync, None).await;
        assert_eq!((status, v["errno"].as_i64()), (401, Some(110)), "{v}");
        let (status, v) = common::fxa_post(&s, path, &first_sync, Some("fxs_00")).await;
        assert_eq!((status, v["errno"].as_i64()), (401, Some(110)), "{v}");
        // Bodies FxA refuses are refused: 400 errno 107 (108 for a missing field).
        let payload = json!({"version": 1, "command": "sync:collection_changed"});
        let bad = [
            (json!({"payload": payload}), 108),
            (json!({"to": "all"}), 108),
            (json!({"to": "some", "payload": payload}), 107),
            (json!({"to": ["not-hex"], "payload": payload}), 107),
            (json!({"to": [1], "payload": payload}), 107),
            (json!({"to": vec!["00"; 257], "payload": payload}), 107),
            (
                json!({"to": "all", "excluded": ["xyz"], "payload": payload}),
                107,
            ),
            (json!({"to": "all", "payload": "text"}), 107),
            (json!({"to": "all", "payload": {"command": "x"}}), 107),
            (json!({"to": "all", "payload": {"version": 1}}), 107),
            (json!({"to": "all", "payload": payload, "TTL": -1}), 107),
            (json!({"to": "all", "payload": payload, "TTL": 1.5}), 107),
            (json!({"to": "all", "payload": payload, "extra": 1}), 107),
            (json!({"to": "all", "_endpointAction": "other"}), 107),
            (
                json!({"to": "all", "payload": {"version": 1, "command": "x",
                       "data": "a".repeat(20_000)}}),
                107,
            ),
        ];
        for (body, errno) in &bad {
            let (status, v) = common::fxa_post(&s, path, body, Some(&session)).await;
            assert_eq!(
                (status, v["errno"].as_i64()),
                (400, Some(*errno)),
                "{}: {v}",
                common_clip(&body.to_string())
            );
        }
    });
}

/// The first 200 bytes of `text`, for assertion messages.
fn common_clip(text: &str) -> &str {
    &text[..text.len().min(200)]
}
