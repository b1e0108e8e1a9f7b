//! Device commands (Send Tab) on the built-in accounts service, seen from outside:
//! invoke_command to a device of the same account that offers the command, the
//! target's queue with `index`/`limit` paging, FxA's errors (unknown device, command
//! not offered, a body beyond the limits), a device of another account never reached,
//! the per-device bound under concurrent senders, and commands gone with their device.

use serde_json::{Value, json};

use crate::common::fxa::{self, bearer_get, errno, signed_in};
use crate::common::{self, Server};

const OPEN_URI: &str = "https://identity.mozilla.com/cmd/open-uri";

/// A signed-in session of `email` with a registered device offering Send Tab: the
/// session's Bearer form and the device id.
async fn device(s: &Server, email: &str, name: &str) -> (String, String) {
    let session = signed_in(s, email, "correct horse").await;
    let (status, d) = common::fxa_post(
        s,
        "/v1/account/device",
        &json!({"name": name, "type": "desktop", "availableCommands": {OPEN_URI: "keys-bundle"}}),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    (session, d["id"].as_str().unwrap().to_string())
}

async fn invoke(s: &Server, session: &str, body: &Value) -> (u16, Value) {
    common::fxa_post(s, "/v1/account/devices/invoke_command", body, Some(session)).await
}

fn tab(target: &str, n: usize) -> Value {
    json!({"target": target, "command": OPEN_URI, "payload": {"encrypted": format!("tab-{n}")}})
}

#[tokio::test]
async fn a_tab_sent_to_another_device_is_fetched_in_order_and_paged() {
    let s = fxa::server_with_account("a@example.org", "correct horse", &[]);
    let (sender, sender_id) = device(&s, "a@example.org", "laptop").await;
    let (target, target_id) = device(&s, "a@example.org", "desktop").await;

    // Nothing queued yet: FxA's empty answer.
    let (status, empty) = bearer_get(&s, "/v1/account/device/commands", &target).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty, json!({"index": 0, "last": true, "messages": []}));

    for n in 0..3 {
        let (status, r) = invoke(&s, &sender, &tab(&target_id, n)).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["enqueued"], json!(true), "{r}");
        assert!(r["notified"].is_boolean(), "{r}");
        // The target registered no push endpoint: FxA says so.
        assert_eq!(r["notifyError"], json!("noCallback"), "{r}");
    }
    let (status, all) = bearer_get(&s, "/v1/account/device/commands?index=0", &target).await;
    assert_eq!(status, 200, "{all}");
    let messages = all["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{all}");
    let indices: Vec<i64> = messages
        .iter()
        .map(|m| m["index"].as_i64().unwrap())
        .collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    assert_eq!(all["index"].as_i64(), Some(indices[2]));
    assert_eq!(all["last"], json!(true));
    assert_eq!(
        messages[0]["data"],
        json!({"command": OPEN_URI, "payload": {"encrypted": "tab-0"}, "sender": sender_id})
    );

    // Paging: `index` is inclusive, `limit` bounds the page, `last` says whether more follow.
    let page = format!("/v1/account/device/commands?index={}&limit=1", indices[1]);
    let (_, one) = bearer_get(&s, &page, &target).await;
    assert_eq!(one["messages"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["messages"][0]["index"].as_i64(), Some(indices[1]));
    assert_eq!(one["index"].as_i64(), Some(indices[1]));
    assert_eq!(one["last"], json!(false), "{one}");
    let after = format!("/v1/account/device/commands?index={}", indices[2] + 1);
    let (_, none) = bearer_get(&s, &after, &target).await;
    assert_eq!(none["messages"], json!([]), "{none}");

    // The sender's own queue is empty: a command goes to its target only.
    let (_, mine) = bearer_get(&s, "/v1/account/device/commands", &sender).await;
    assert_eq!(mine["messages"], json!([]), "{mine}");

    // Bad paging parameters are FxA errors.
    for q in ["index=-1", "limit=101", "index=x", "what=1"] {
        let (status, e) =
            bearer_get(&s, &format!("/v1/account/device/commands?{q}"), &target).await;
        assert_eq!((status, errno(&e)), (400, Some(107)), "{q}: {e}");
    }
}

#[tokio::test]
async fn other_accounts_devices_unoffered_commands_and_oversized_payloads_are_refused() {
    let data = tempfile::tempdir().unwrap();
    fxa::add_account(data.path(), "a@example.org", "correct horse");
    fxa::add_account(data.path(), "b@example.org", "correct horse");
    let s = Server::start_in(data, &[]);
    let (a, _) = device(&s, "a@example.org", "a's laptop").await;
    let (a2, a2_id) = device(&s, "a@example.org", "a's desktop").await;
    let (b, b_id) = device(&s, "b@example.org", "b's laptop").await;

    // Another account's device is unknown to this one, and nothing reaches it.
    let (status, e) = invoke(&s, &a, &tab(&b_id, 0)).await;
    assert_eq!((status, errno(&e)), (400, Some(123)), "{e}");
    let (_, queued) = bearer_get(&s, "/v1/account/device/commands", &b).await;
    assert_eq!(queued["messages"], json!([]), "{queued}");

    // A command the target does not offer.
    let mut other = tab(&a2_id, 0);
    other["command"] = json!("https://identity.mozilla.com/cmd/close-uri/v1");
    let (status, e) = invoke(&s, &a, &other).await;
    assert_eq!((status, errno(&e)), (400, Some(157)), "{e}");

    // Over the payload limit (16 KiB of JSON), a malformed target, an unknown field.
    let mut big = tab(&a2_id, 0);
    big["payload"] = json!({"encrypted": "x".repeat(17 * 1024)});
    let (status, e) = invoke(&s, &a, &big).await;
    assert_eq!((status, errno(&e)), (400, Some(107)), "{e}");
    let (status, e) = invoke(&s, &a, &tab("not-a-device", 0)).await;
    assert_eq!((status, errno(&e)), (400, Some(107)), "{e}");
    let mut extra = tab(&a2_id, 0);
    extra["bcc"] = json!("someone");
    let (status, e) = invoke(&s, &a, &extra).await;
    assert_eq!((status, errno(&e)), (400, Some(107)), "{e}");
    let (_, queued) = bearer_get(&s, "/v1/account/device/commands", &a2).await;
    assert_eq!(
        queued["messages"],
        json!([]),
        "nothing refused was queued: {queued}"
    );

    // Without a token, nothing.
    let (status, e) = common::fxa_post(
        &s,
        "/v1/account/devices/invoke_command",
        &tab(&a2_id, 0),
        None,
    )
    .await;
    assert_eq!((status, errno(&e)), (401, Some(110)), "{e}");

    // A session without a device has no queue to fetch.
    let bare = signed_in(&s, "a@example.org", "correct horse").await;
    let (status, e) = bearer_get(&s, "/v1/account/device/commands", &bare).await;
    assert_eq!((status, errno(&e)), (400, Some(123)), "{e}");
}

#[tokio::test]
async fn a_device_queue_is_bounded_under_concurrent_senders_and_goes_with_the_device() {
    let s = fxa::server_with_account("a@example.org", "correct horse", &[]);
    let (target, target_id) = device(&s, "a@example.org", "desktop").await;
    // Three senders (each within its own per-session rate), 150 commands at once.
    let mut senders = Vec::new();
    for n in 0..3 {
        senders.push(device(&s, "a@example.org", &format!("sender {n}")).await.0);
    }
    let url = format!("{}/v1/account/devices/invoke_command", s.url());
    let results = fxa::together(150, |i| {
        let (url, session, body) = (url.clone(), senders[i % 3].clone(), tab(&target_id, i));
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(session)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }
    })
    .await;
    let queued = results.iter().filter(|(st, _)| *st == 200).count();
    let refused: Vec<_> = results.iter().filter(|(st, _)| *st != 200).collect();
    assert_eq!(queued, 100, "the per-device bound");
    assert!(
        refused
            .iter()
            .all(|(st, e)| *st == 429 && errno(e) == Some(114)),
        "{refused:?}"
    );
    let mut fetched = 0;
    let mut index = 0;
    for _ in 0..5 {
        let path = format!("/v1/account/device/commands?index={index}&limit=40");
        let (status, page) = bearer_get(&s, &path, &target).await;
        assert_eq!(status, 200, "{page}");
        fetched += page["messages"].as_array().unwrap().len();
        index = page["index"].as_i64().unwrap() + 1;
        if page["last"] == json!(true) {
            break;
        }
    }
    assert_eq!(fetched, 100);

    // The target signs out (its device goes): its queue goes with it.
    let (status, _) = common::fxa_post(&s, "/v1/session/destroy", &json!({}), Some(&target)).await;
    assert_eq!(status, 200);
    let (status, e) = invoke(&s, &senders[0], &tab(&target_id, 0)).await;
    assert_eq!((status, errno(&e)), (400, Some(123)), "{e}");
}

#[tokio::test]
async fn fetching_acknowledges_what_came_before_and_frees_the_device_bound() {
    let s = fxa::server_with_account("a@example.org", "correct horse", &[]);
    let (target, target_id) = device(&s, "a@example.org", "phone").await;
    let mut senders = Vec::new();
    for n in 0..2 {
        senders.push(device(&s, "a@example.org", &format!("sender {n}")).await.0);
    }
    // A device that received 100 tabs and handled them all is not full: its next fetch,
    // from the index after the last one it handled (as Firefox asks), acknowledges them.
    let mut last = 0;
    for n in 0..100 {
        let (status, r) = invoke(&s, &senders[n % 2], &tab(&target_id, n)).await;
        assert_eq!(status, 200, "{n}: {r}");
    }
    let (status, e) = invoke(&s, &senders[0], &tab(&target_id, 100)).await;
    assert_eq!(
        (status, errno(&e)),
        (429, Some(114)),
        "full before the fetch: {e}"
    );
    for _ in 0..3 {
        let path = format!("/v1/account/device/commands?index={last}");
        let (_, page) = bearer_get(&s, &path, &target).await;
        if let Some(i) = page["messages"].as_array().unwrap().last() {
            last = i["index"].as_i64().unwrap() + 1;
        }
    }
    let path = format!("/v1/account/device/commands?index={last}");
    let (_, page) = bearer_get(&s, &path, &target).await;
    assert_eq!(page["messages"], json!([]));
    let (status, r) = invoke(&s, &senders[1], &tab(&target_id, 101)).await;
    assert_eq!(status, 200, "room again after the fetch: {r}");

    // The bytes one device holds are bounded too (256 KiB): 15 KiB payloads fill it
    // long before 100 commands.
    let mut big = tab(&target_id, 0);
    big["payload"] = json!({"encrypted": "x".repeat(15 * 1024)});
    let mut accepted = 0;
    for n in 0..30 {
        let (status, _) = invoke(&s, &senders[n % 2], &big).await;
        if status == 200 {
            accepted += 1;
        } else {
            assert_eq!(status, 429);
        }
    }
    assert_eq!(
        accepted, 17,
        "256 KiB / 15 KiB, beside the one small command"
    );
}

#[tokio::test]
async fn a_device_is_changed_only_by_its_own_session_and_server_notices_are_not_relayed() {
    let s = fxa::server_with_account("a@example.org", "correct horse", &[]);
    let (a, _) = device(&s, "a@example.org", "a").await;
    let (_, b_id) = device(&s, "a@example.org", "b").await;
    // Another session of the account cannot rewrite b (its keys, its commands).
    let (status, e) = common::fxa_post(
        &s,
        "/v1/account/device",
        &json!({"id": b_id, "availableCommands": {OPEN_URI: "attacker's keys"}}),
        Some(&a),
    )
    .await;
    assert_eq!((status, errno(&e)), (400, Some(123)), "{e}");
    let (_, list) = bearer_get(&s, "/v1/account/devices", &a).await;
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == json!(b_id))
        .unwrap();
    assert_eq!(
        b["availableCommands"][OPEN_URI],
        json!("keys-bundle"),
        "{b}"
    );

    // A device may ask to relay what devices tell each other, not the server's notices.
    let notify = |command: &str| {
        json!({"to": "all", "payload": {"version": 1, "command": command,
            "data": {"id": b_id, "collections": ["clients"]}}})
    };
    let (status, r) = common::fxa_post(
        &s,
        "/v1/account/devices/notify",
        &notify("sync:collection_changed"),
        Some(&a),
    )
    .await;
    assert_eq!((status, r), (200, json!({})));
    for command in [
        "fxaccounts:device_disconnected",
        "fxaccounts:account_destroyed",
        "fxaccounts:password_changed",
        "fxaccounts:command_received",
    ] {
        let (status, e) =
            common::fxa_post(&s, "/v1/account/devices/notify", &notify(command), Some(&a)).await;
        assert_eq!((status, errno(&e)), (400, Some(107)), "{command}: {e}");
    }
}

#[tokio::test]
async fn per_session_rates_hold_for_requests_sent_together() {
    let s = fxa::server_with_account("a@example.org", "correct horse", &[]);
    let (sender, _) = device(&s, "a@example.org", "sender").await;
    let (_, target_id) = device(&s, "a@example.org", "target").await;
    let post_together = |path: &str, body: Value| {
        let url = format!("{}{path}", s.url());
        let sender = sender.clone();
        fxa::together(100, move |_| {
            let (url, session, body) = (url.clone(), sender.clone(), body.clone());
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(session)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
            }
        })
    };
    // 100 commands from one session at once: 60 a minute pass, the rest 429 errno 114.
    let results = post_together("/v1/account/devices/invoke_command", tab(&target_id, 0)).await;
    let passed = results.iter().filter(|(st, _)| *st == 200).count();
    assert_eq!(passed, 60);
    assert!(
        results
            .iter()
            .all(|(st, e)| *st == 200 || (*st == 429 && errno(e) == Some(114))),
        "{results:?}"
    );
    // Likewise 100 notices at once.
    let notice = json!({"to": "all", "payload": {"version": 1,
        "command": "sync:collection_changed", "data": {"collections": ["clients"]}}});
    let results = post_together("/v1/account/devices/notify", notice).await;
    let passed = results.iter().filter(|(st, _)| *st == 200).count();
    assert_eq!(passed, 60);
    assert!(
        results
            .iter()
            .all(|(st, e)| *st == 200 || (*st == 429 && errno(e) == Some(114))),
        "{results:?}"
    );
}
