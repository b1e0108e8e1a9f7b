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
