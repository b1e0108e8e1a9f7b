//! Delivery against local receivers on 127.0.0.1: what a push service gets, the
//! outcomes of its answers (gone, retried, refused), the guard (a private address not
//! allowed is never connected to) and the bounds (in flight, queue).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::json;
use tokio::sync::mpsc;

use super::delivery::{self, Outcome, Tuning};
use super::*;

/// A push service on 127.0.0.1 answering with the statuses given (then 201).
struct Receiver {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    state: Arc<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    statuses: Mutex<VecDeque<u16>>,
    delay: Duration,
    now: AtomicUsize,
    most: AtomicUsize,
}

async fn receive(State(s): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.now.fetch_add(1, Ordering::SeqCst) + 1;
    s.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(s.delay).await;
    s.got.lock().unwrap().push((headers, body.to_vec()));
    let status = s.statuses.lock().unwrap().pop_front().unwrap_or(201);
    s.now.fetch_sub(1, Ordering::SeqCst);
    let mut res = StatusCode::from_u16(status).unwrap().into_response();
    if (300..400).contains(&status) {
        res.headers_mut()
            .insert(header::LOCATION, "/wpush/elsewhere".parse().unwrap());
    }
    if status == 429 {
        res.headers_mut()
            .insert(header::RETRY_AFTER, "0".parse().unwrap());
    }
    res
}

async fn receiver(statuses: &[u16], delay: Duration) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let state = Arc::new(ReceiverState {
        statuses: Mutex::new(statuses.iter().copied().collect()),
        delay,
        ..Default::default()
    });
    let app = Router::new()
        .route("/wpush/{id}", post(receive))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        addr,
        accepts,
        state,
    }
}

/// A device's push registration at `endpoint`, and its private keys.
fn device(endpoint: &str) -> (PushTarget, p256::SecretKey, web_push_native::Auth) {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let auth: [u8; 16] = rand::random();
    let target = PushTarget {
        uid: "ab".repeat(16),
        device_id: "cd".repeat(16),
        endpoint: endpoint.to_string(),
        public_key: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
        auth_key: URL_SAFE_NO_PAD.encode(auth),
    };
    (
        target,
        secret,
        web_push_native::Auth::clone_from_slice(&auth),
    )
}

struct Harness {
    pusher: Arc<Pusher>,
    vapid: VapidKey,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    gone: mpsc::UnboundedReceiver<PushTarget>,
}

fn pusher(allow_private: &[&str], queue: usize, in_flight: usize) -> Harness {
    let vapid = VapidKey::generate();
    let (otx, outcomes) = mpsc::unbounded_channel();
    let (gtx, gone) = mpsc::unbounded_channel();
    let config = PushConfig {
        enabled: true,
        allow_private: allow_private.iter().map(|n| n.parse().unwrap()).collect(),
        contact: "mailto:ops@example.com".into(),
        services: vec!["*".into()],
    };
    let tuning = Tuning {
        queue,
        in_flight,
        backoff: vec![Duration::from_millis(20), Duration::from_millis(50)],
        observe: Some(otx),
    };
    let on_gone = Box::new(move |t: PushTarget| {
        let _ = gtx.send(t);
    });
    Harness {
        pusher: Pusher::start_tuned(config, vapid.clone(), on_gone, tuning),
        vapid,
        outcomes,
        gone,
    }
}

impl Harness {
    /// The next outcome that ends a message (retries are collected on the way).
    async fn finished(&mut self, retried: &mut usize) -> Outcome {
        loop {
            let o = tokio::time::timeout(Duration::from_secs(20), self.outcomes.recv())
                .await
                .expect("an outcome in time")
                .unwrap();
            if o == Outcome::Retried {
                *retried += 1;
            } else {
                return o;
            }
        }
    }
}

fn payload() -> serde_json::Value {
    json!({"version": 1, "command": "fxaccounts:command_received",
           "data": {"command": "https://identity.mozilla.com/cmd/open-uri", "index": 3,
                    "sender": "ef".repeat(16), "url": "https://example.com/x"}})
}

#[tokio::test]
async fn delivers_encrypted_with_vapid() {
    let r = receiver(&[], Duration::ZERO).await;
    let mut h = pusher(&["127.0.0.1/32"], 8, 2);
    let endpoint = format!("http://{}/wpush/secret-capability", r.addr);
    let (target, secret, auth) = device(&endpoint);
    assert!(h.pusher.send(target, &payload(), 600));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Sent);
    assert_eq!(retried, 0);
    let got = r.state.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(headers["content-encoding"], "aes128gcm");
    assert_eq!(headers["content-type"], "application/octet-stream");
    let ttl: u64 = headers["ttl"].to_str().unwrap().parse().unwrap();
    assert!((599..=600).contains(&ttl));
    let plain = web_push_native::decrypt(body.clone(), &secret, &auth).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&plain).unwrap(),
        payload()
    );
    // VAPID: the JWT verifies with the key sent along, for this origin.
    let authorization = headers["authorization"].to_str().unwrap();
    let (jwt, k) = authorization
        .strip_prefix("vapid t=")
        .unwrap()
        .split_once(", k=")
        .unwrap();
    assert_eq!(k, h.vapid.public_key_b64());
    let point = URL_SAFE_NO_PAD.decode(k).unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[format!("http://{}", r.addr)]);
    let claims: serde_json::Value = jsonwebtoken::decode(jwt, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "mailto:ops@example.com");
    assert!(h.gone.try_recv().is_err());
    // The target's Debug shows neither the capability nor the keys.
    let (target, _, _) = device(&endpoint);
    let shown = format!("{target:?}");
    assert!(shown.contains("127.0.0.1") && !shown.contains("secret-capability"));
    assert!(!shown.contains(&target.auth_key));
}

#[tokio::test]
async fn gone_is_reported_once() {
    let r = receiver(&[410], Duration::ZERO).await;
    let mut h = pusher(&["127.0.0.1/32"], 8, 2);
    let (target, _, _) = device(&format!("http://{}/wpush/a", r.addr));
    assert!(h.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Gone);
    let gone = tokio::time::timeout(Duration::from_secs(5), h.gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.device_id, "cd".repeat(16));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.gone.try_recv().is_err(), "reported once");
    assert_eq!(retried, 0);
    assert_eq!(r.state.got.lock().unwrap().len(), 1, "not retried");
}

#[tokio::test]
async fn retried_after_a_server_error_with_the_same_body() {
    let r = receiver(&[500, 429], Duration::ZERO).await;
    let mut h = pusher(&["127.0.0.1/32"], 8, 2);
    let (target, secret, auth) = device(&format!("http://{}/wpush/a", r.addr));
    assert!(h.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Sent);
    assert_eq!(retried, 2);
    let got = r.state.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    // Encrypted once: every attempt sends the same body.
    assert!(got.iter().all(|(_, b)| *b == got[0].1));
    assert!(web_push_native::decrypt(got[2].1.clone(), &secret, &auth).is_ok());

    // Three failures in a row: given up after the third attempt.
    let r = receiver(&[503, 503, 503, 503], Duration::ZERO).await;
    let (target, _, _) = device(&format!("http://{}/wpush/a", r.addr));
    assert!(h.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Failed);
    assert_eq!(retried, 2);
    assert_eq!(r.state.got.lock().unwrap().len(), 3);

    // Another 4xx, or a redirect (never followed): dropped at once.
    for status in [400, 413, 307] {
        let r = receiver(&[status], Duration::ZERO).await;
        let (target, _, _) = device(&format!("http://{}/wpush/a", r.addr));
        assert!(h.pusher.send(target, &payload(), 60));
        let mut retried = 0;
        assert_eq!(h.finished(&mut retried).await, Outcome::Failed, "{status}");
        assert_eq!(retried, 0);
        assert_eq!(r.state.got.lock().unwrap().len(), 1);
    }

    // A network error (nothing listening) is retried too.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (target, _, _) = device(&format!("http://{addr}/wpush/a"));
    assert!(h.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Failed);
    assert_eq!(retried, 2);
    assert!(h.gone.try_recv().is_err());
}

#[tokio::test]
async fn a_private_address_not_allowed_is_never_connected_to() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut h = pusher(&[], 8, 2);
    // Literal addresses are refused before anything is queued.
    for endpoint in [
        format!("https://127.0.0.1:{port}/wpush/a"),
        format!("http://127.0.0.1:{port}/wpush/a"),
        format!("https://[::ffff:127.0.0.1]:{port}/wpush/a"),
        format!("https://0x7f000001:{port}/wpush/a"),
        format!("https://user@push.example:{port}/wpush/a"),
    ] {
        let (target, _, _) = device(&endpoint);
        assert!(!h.pusher.send(target, &payload(), 60), "{endpoint}");
        assert_eq!(h.outcomes.recv().await, Some(Outcome::Refused));
    }
    // A name is refused by the resolver, before any connection.
    let (target, _, _) = device(&format!("https://localhost:{port}/wpush/a"));
    assert!(h.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Refused);
    assert_eq!(retried, 0);
    // The same receiver allowed, as a control: it is reachable.
    let mut allowed = pusher(&["127.0.0.1/32"], 8, 2);
    let (target, _, _) = device(&format!("http://127.0.0.1:{port}/wpush/a"));
    assert!(allowed.pusher.send(target, &payload(), 60));
    let mut retried = 0;
    assert_eq!(allowed.finished(&mut retried).await, Outcome::Failed);
    assert!(accepts.load(Ordering::SeqCst) > 0);
    accepts.store(0, Ordering::SeqCst);
    // Again without allow_private: still nothing.
    let (target, _, _) = device(&format!("https://localhost:{port}/wpush/a"));
    assert!(h.pusher.send(target, &payload(), 60));
    assert_eq!(h.finished(&mut retried).await, Outcome::Refused);
    assert_eq!(accepts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_burst_keeps_to_the_in_flight_bound() {
    let r = receiver(&[], Duration::from_millis(50)).await;
    let mut h = pusher(&["127.0.0.1/32"], 1024, 16);
    for i in 0..100 {
        // Of 100 accounts (one account holds at most its share).
        let (mut target, _, _) = device(&format!("http://{}/wpush/{i}", r.addr));
        target.uid = format!("{i:032x}");
        assert!(h.pusher.send(target, &payload(), 60));
    }
    let mut retried = 0;
    for _ in 0..100 {
        assert_eq!(h.finished(&mut retried).await, Outcome::Sent);
    }
    assert_eq!(retried, 0);
    assert_eq!(r.state.got.lock().unwrap().len(), 100);
    let most = r.state.most.load(Ordering::SeqCst);
    assert!(most <= 16, "{most} requests at once");
    let accepts = r.accepts.load(Ordering::SeqCst);
    assert!(accepts <= 32, "{accepts} connections for 100 messages");
}

#[tokio::test]
async fn a_full_queue_refuses() {
    let r = receiver(&[], Duration::from_millis(500)).await;
    let mut h = pusher(&["127.0.0.1/32"], 2, 1);
    let endpoint = format!("http://{}/wpush/a", r.addr);
    assert!(h.pusher.send(device(&endpoint).0, &payload(), 60));
    assert!(h.pusher.send(device(&endpoint).0, &payload(), 60));
    assert!(!h.pusher.send(device(&endpoint).0, &payload(), 60));
    assert_eq!(h.outcomes.recv().await, Some(Outcome::Dropped));
    let mut retried = 0;
    assert_eq!(h.finished(&mut retried).await, Outcome::Sent);
    // A slot is free again.
    assert!(h.pusher.send(device(&endpoint).0, &payload(), 60));
}

#[tokio::test]
async fn nothing_is_sent_when_off_or_without_keys() {
    let r = receiver(&[], Duration::ZERO).await;
    let endpoint = format!("http://{}/wpush/a", r.addr);
    let off = Pusher::start(
        PushConfig {
            enabled: false,
            allow_private: vec!["127.0.0.1/32".parse().unwrap()],
            contact: String::new(),
            services: vec!["*".into()],
        },
        VapidKey::generate(),
        Box::new(|_| {}),
    );
    assert!(!off.send(device(&endpoint).0, &payload(), 60));
    let mut h = pusher(&["127.0.0.1/32"], 8, 2);
    let (good, _, _) = device(&endpoint);
    let mut no_endpoint = good.clone();
    no_endpoint.endpoint.clear();
    let mut no_key = good.clone();
    no_key.public_key.clear();
    assert!(!h.pusher.send(no_endpoint, &payload(), 60));
    assert!(!h.pusher.send(no_key, &payload(), 60));
    let mut bad_key = good.clone();
    bad_key.public_key = "AAAA".into();
    let mut bad_auth = good.clone();
    bad_auth.auth_key = "AAAA".into();
    for t in [bad_key, bad_auth] {
        assert!(!h.pusher.send(t, &payload(), 60));
        assert_eq!(h.outcomes.recv().await, Some(Outcome::Refused));
    }
    let big = json!({"data": "x".repeat(MAX_PAYLOAD)});
    assert!(!h.pusher.send(good, &big, 60));
    assert_eq!(h.outcomes.recv().await, Some(Outcome::Refused));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.accepts.load(Ordering::SeqCst), 0);
}

#[test]
fn only_the_listed_push_services_are_pushed_to() {
    let mozilla = vec!["push.services.mozilla.com".to_string()];
    let allow: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
    let ok = |u: &str, services: &[String]| {
        service_allowed(&reqwest::Url::parse(u).unwrap(), services, &allow)
    };
    assert!(ok(
        "https://updates.push.services.mozilla.com/wpush/v2/x",
        &mozilla
    ));
    assert!(ok("https://push.services.mozilla.com/x", &mozilla));
    assert!(ok("https://UPDATES.Push.Services.Mozilla.com./x", &mozilla));
    assert!(!ok(
        "https://evilpush.services.mozilla.com.example.org/x",
        &mozilla
    ));
    assert!(!ok("https://notpush.services.mozilla.com/x", &mozilla));
    assert!(!ok("https://example.org/x", &mozilla));
    assert!(!ok("https://example.org/x", &[]));
    assert!(ok("https://example.org/x", &["*".to_string()]));
    // A literal address allowed as private is a local push service.
    assert!(ok("http://127.0.0.1:8080/push", &mozilla));
    assert!(!ok("https://93.184.216.34/push", &mozilla));
}

#[tokio::test]
async fn one_account_cannot_take_the_queue_from_the_others() {
    // A receiver that answers only after a while: the attacker's messages stay held.
    let r = receiver(&[], Duration::from_secs(2)).await;
    let h = pusher(&["127.0.0.1/32"], 1024, 16);
    let endpoint = format!("http://{}/wpush/a", r.addr);
    let sent = (0..200)
        .filter(|_| h.pusher.send(device(&endpoint).0, &payload(), 60))
        .count();
    assert_eq!(sent, delivery::PER_ACCOUNT, "one account's share");
    // Another account still gets its messages queued.
    let mut other = device(&endpoint).0;
    other.uid = "ef".repeat(16);
    assert!(h.pusher.send(other, &payload(), 60));
}
