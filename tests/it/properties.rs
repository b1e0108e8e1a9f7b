//! Property-based tests, bounded in cases so they run in CI: hostile input to every
//! parser (no panic), random requests to the server (no 5xx), and random sequences of
//! writes checked against a simple in-memory model of the protocol.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::common::{Client, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use syncstore::storage::model::{ClientTime, Timestamp, parse_bso};
use syncstore::web::extract::{Params, list_query};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("payload".to_string()),
                    Just("sortindex".to_string()),
                    Just("ttl".to_string()),
                    Just("modified".to_string()),
                    ".{0,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn bso_validation_never_panics(v in json_value(), path_id in proptest::option::of("[ -~]{0,70}")) {
        if let Ok(bso) = parse_bso(&v, path_id.as_deref(), 1000) {
            prop_assert!(syncstore::storage::model::valid_bso_id(&bso.id));
            prop_assert!(bso.payload_len() <= 1000);
        }
    }

    #[test]
    fn client_times_parse_exactly_or_not_at_all(s in ".{0,30}", units in 0i64..10_000_000_000_000) {
        let _ = ClientTime::parse(&s);
        let t = ClientTime::parse(&Timestamp(units).to_string()).unwrap();
        prop_assert_eq!(t.floor(), units);
        prop_assert!(!t.is_before(Timestamp(units)) && t.is_before(Timestamp(units + 1)));
    }

    #[test]
    fn hawk_headers_and_tokens_never_panic(s in ".{0,200}", b in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = syncstore::auth::hawk::parse_header(&s);
        let _ = syncstore::auth::hawk::parse_header(&format!("Hawk {s}"));
        let _ = syncstore::auth::token::verify_token(&["secret".into()], &s);
        use base64::Engine;
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(&b);
        prop_assert!(syncstore::auth::token::verify_token(&["secret".into()], &encoded).is_err());
        let _ = syncstore::tokenserver::parse_key_id(&s);
        let _ = syncstore::storage::decode_offset(&s);
    }

    #[test]
    fn hawk_headers_round_trip(id in "[A-Za-z0-9_=-]{1,40}", ts in 0i64..4_000_000_000, nonce in "[A-Za-z0-9+/]{1,12}",
                               mac in "[A-Za-z0-9+/=]{1,44}", ext in proptest::option::of("[ -~]{0,20}")) {
        let escaped = ext.as_ref().map(|e| e.replace('\\', "\\\\").replace('"', "\\\""));
        let header = format!("Hawk id=\"{id}\", ts=\"{ts}\", nonce=\"{nonce}\", mac=\"{mac}\"{}",
            escaped.map(|e| format!(", ext=\"{e}\"")).unwrap_or_default());
        let h = syncstore::auth::hawk::parse_header(&header).unwrap();
        prop_assert_eq!((h.id, h.ts, h.nonce, h.mac, h.ext), (id, ts, nonce, mac, ext));
    }

    #[test]
    fn query_parameters_never_panic(pairs in prop::collection::vec(
        (prop_oneof![Just("ids"), Just("newer"), Just("older"), Just("full"), Just("limit"), Just("offset"), Just("sort"), Just("x")],
         ".{0,30}"), 0..6)) {
        let params = Params(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        if let Ok(q) = list_query(&params) {
            prop_assert!(q.limit.is_none_or(|l| l > 0));
            prop_assert!(q.ids.as_ref().is_none_or(|ids| ids.len() <= 100));
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// One server shared by the property tests. Statics are never dropped, so the process
/// is killed when the test binary exits.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    extern "C" fn kill_server() {
        let pid = PID.load(std::sync::atomic::Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory effects; the pid is our own child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    SERVER.get_or_init(|| {
        let server = Server::start(&[
            ("SYNCSTORE_MAX_POST_RECORDS", "4"),
            ("SYNCSTORE_MAX_TOTAL_RECORDS", "8"),
        ]);
        PID.store(server.pid() as i32, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: registers a plain function to run at process exit.
        unsafe { libc::atexit(kill_server) };
        server
    })
}

fn next_uid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static UID: AtomicU64 = AtomicU64::new(1000);
    UID.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn random_requests_never_get_a_5xx() {
    let methods = prop_oneof![
        Just("GET"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("PATCH")
    ];
    let paths = prop_oneof![
        Just(String::new()),
        Just("/info/collections".to_string()),
        Just("/info/quota".to_string()),
        Just("/storage".to_string()),
        "/storage/[a-z.%-]{0,8}",
        "/storage/[a-z]{1,4}/[ -~&&[^/?#]]{0,10}",
        "/[ -~&&[^?#]]{0,20}",
    ];
    let queries = prop::collection::vec(
        (
            prop_oneof![
                Just("ids"),
                Just("newer"),
                Just("limit"),
                Just("offset"),
                Just("sort"),
                Just("batch"),
                Just("commit"),
                Just("full")
            ],
            "[ -~&&[^&#]]{0,12}",
        ),
        0..4,
    );
    let bodies = prop_oneof![
        Just(None),
        json_value().prop_map(|v| Some(v.to_string())),
        ".{0,40}".prop_map(Some)
    ];
    let types = prop_oneof![
        Just("application/json"),
        Just("application/newlines"),
        Just("text/plain"),
        Just("x/y")
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    runner
        .run(
            &(methods, paths, queries, bodies, types),
            |(method, path, query, body, ctype)| {
                let c = server().client(next_uid());
                let q: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", percent_encode(v, b"-_.,")))
                    .collect();
                let full = format!(
                    "/1.5/{}{}{}{}",
                    c.uid,
                    percent_encode(&path, b"-_./%"),
                    if q.is_empty() { "" } else { "?" },
                    q.join("&")
                );
                let r = runtime().block_on(c.try_raw(
                    method,
                    &full,
                    &[],
                    body.map(|b| (ctype, b.into_bytes())),
                    true,
                ));
                let r = r.map_err(|e| TestCaseError::fail(format!("{method} {full}: {e}")))?;
                prop_assert!(
                    r.status.as_u16() < 500,
                    "{} {} -> {} {}",
                    method,
                    full,
                    r.status,
                    r.text
                );
                Ok(())
            },
        )
        .unwrap();
}

/// Percent-encodes every byte but ASCII alphanumerics and those in `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || keep.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One step of a client's life.
#[derive(Debug, Clone)]
enum Op {
    Put {
        coll: &'static str,
        id: &'static str,
        payload: Option<String>,
        sortindex: Option<i64>,
    },
    Post {
        coll: &'static str,
        items: Vec<(&'static str, String)>,
    },
    DeleteItem {
        coll: &'static str,
        id: &'static str,
    },
    DeleteIds {
        coll: &'static str,
        ids: Vec<&'static str>,
    },
    DeleteCollection {
        coll: &'static str,
    },
    DeleteAll,
    Batch {
        coll: &'static str,
        steps: Vec<Vec<(&'static str, String)>>,
        commit: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let coll = prop_oneof![Just("a"), Just("b")];
    let id = prop_oneof![Just("w"), Just("x"), Just("y"), Just("z")];
    let item = (id.clone(), "[a-z]{0,6}");
    prop_oneof![
        4 => (coll.clone(), id.clone(), proptest::option::of("[a-z]{0,6}"), proptest::option::of(-5i64..5))
            .prop_map(|(coll, id, payload, sortindex)| Op::Put { coll, id, payload, sortindex }),
        3 => (coll.clone(), prop::collection::vec(item.clone(), 0..6)).prop_map(|(coll, items)| Op::Post { coll, items }),
        2 => (coll.clone(), id.clone()).prop_map(|(coll, id)| Op::DeleteItem { coll, id }),
        1 => (coll.clone(), prop::collection::vec(id, 0..3)).prop_map(|(coll, ids)| Op::DeleteIds { coll, ids }),
        1 => coll.clone().prop_map(|coll| Op::DeleteCollection { coll }),
        1 => Just(Op::DeleteAll),
        2 => (coll, prop::collection::vec(prop::collection::vec(item, 0..5), 1..4), any::<bool>())
            .prop_map(|(coll, steps, commit)| Op::Batch { coll, steps, commit }),
    ]
}

/// The protocol as a few maps: collection → id → (payload, sortindex).
type Model = BTreeMap<&'static str, BTreeMap<&'static str, (String, Option<i64>)>>;

const MAX_POST: usize = 4;
const MAX_BATCH: usize = 8;

/// Applies a write the way the protocol says (limits as configured for the server).
fn apply(model: &mut Model, op: &Op) -> u16 {
    let post = |model: &mut Model, coll: &'static str, items: &[(&'static str, String)]| {
        for (id, p) in items.iter().take(MAX_POST) {
            let e = model
                .entry(coll)
                .or_default()
                .entry(id)
                .or_insert((String::new(), None));
            e.0 = p.clone();
        }
    };
    match op {
        Op::Put {
            coll,
            id,
            payload,
            sortindex,
        } => {
            let e = model
                .entry(coll)
                .or_default()
                .entry(id)
                .or_insert((String::new(), None));
            if let Some(p) = payload {
                e.0 = p.clone();
            }
            if let Some(s) = sortindex {
                e.1 = Some(*s);
            }
            200
        }
        Op::Post { coll, items } => {
            post(model, coll, items);
            200
        }
        Op::DeleteItem { coll, id } => match model.get_mut(coll).and_then(|c| c.remove(id)) {
            Some(_) => 200,
            None => 404,
        },
        Op::DeleteIds { coll, ids } => {
            if let Some(c) = model.get_mut(coll) {
                for id in ids {
                    c.remove(id);
                }
            }
            200
        }
        Op::DeleteCollection { coll } => {
            model.remove(coll);
            200
        }
        Op::DeleteAll => {
            model.clear();
            200
        }
        Op::Batch {
            coll,
            steps,
            commit,
        } => {
            let accepted: Vec<_> = steps
                .iter()
                .flat_map(|s| s.iter().take(MAX_POST).cloned())
                .collect();
            let distinct: std::collections::BTreeSet<_> =
                accepted.iter().map(|(id, _)| *id).collect();
            if distinct.len() > MAX_BATCH {
                return 400;
            }
            if *commit {
                for (id, p) in &accepted {
                    model
                        .entry(coll)
                        .or_default()
                        .entry(id)
                        .or_insert((String::new(), None))
                        .0 = p.clone();
                }
            }
            200
        }
    }
}

async fn run_op(c: &Client, op: &Op) -> u16 {
    let items = |items: &[(&str, String)]| {
        Value::Array(
            items
                .iter()
                .map(|(id, p)| json!({"id": id, "payload": p}))
                .collect(),
        )
    };
    match op {
        Op::Put {
            coll,
            id,
            payload,
            sortindex,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(p) = payload {
                body.insert("payload".into(), json!(p));
            }
            if let Some(s) = sortindex {
                body.insert("sortindex".into(), json!(s));
            }
            c.put(&format!("/storage/{coll}/{id}"), &Value::Object(body))
                .await
                .status
                .as_u16()
        }
        Op::Post { coll, items: list } => c
            .post(&format!("/storage/{coll}"), &items(list))
            .await
            .status
            .as_u16(),
        Op::DeleteItem { coll, id } => c
            .delete(&format!("/storage/{coll}/{id}"))
            .await
            .status
            .as_u16(),
        Op::DeleteIds { coll, ids } => c
            .delete(&format!("/storage/{coll}?ids={}", ids.join(",")))
            .await
            .status
            .as_u16(),
        Op::DeleteCollection { coll } => {
            c.delete(&format!("/storage/{coll}")).await.status.as_u16()
        }
        Op::DeleteAll => c.delete("/storage").await.status.as_u16(),
        Op::Batch {
            coll,
            steps,
            commit,
        } => {
            let r = c
                .post(&format!("/storage/{coll}?batch=true"), &items(&steps[0]))
                .await;
            if r.status != 202 {
                return r.status.as_u16();
            }
            let id = r.json()["batch"].as_str().unwrap().to_string();
            for step in &steps[1..] {
                let r = c
                    .post(&format!("/storage/{coll}?batch={id}"), &items(step))
                    .await;
                if r.status != 202 {
                    return r.status.as_u16();
                }
            }
            if *commit {
                c.post(
                    &format!("/storage/{coll}?batch={id}&commit=true"),
                    &json!([]),
                )
                .await
                .status
                .as_u16()
            } else {
                200
            }
        }
    }
}

/// Everything a client can read back, as the model would show it.
async fn observe(c: &Client) -> Model {
    let mut out = Model::new();
    for coll in ["a", "b"] {
        let r = c.get(&format!("/storage/{coll}?full=1&sort=index")).await;
        for b in r.json().as_array().unwrap() {
            let id: &'static str = ["w", "x", "y", "z"]
                .into_iter()
                .find(|i| b["id"] == *i)
                .unwrap();
            out.entry(coll).or_default().insert(
                id,
                (
                    b["payload"].as_str().unwrap().to_string(),
                    b["sortindex"].as_i64(),
                ),
            );
        }
    }
    out
}

#[test]
fn random_operation_sequences_agree_with_the_model() {
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..20), |ops| {
            let c = server().client(next_uid());
            let mut model = Model::new();
            for (i, op) in ops.iter().enumerate() {
                let expected = apply(&mut model, op);
                let got = runtime().block_on(run_op(&c, op));
                prop_assert_eq!(got, expected, "step {}: {:?}", i, op);
                let seen = runtime().block_on(observe(&c));
                let want: Model = model
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                prop_assert_eq!(&seen, &want, "after step {}: {:?}", i, op);
                let counts = runtime().block_on(c.get("/info/collection_counts")).json();
                let want_counts: BTreeMap<String, usize> =
                    want.iter().map(|(k, v)| (k.to_string(), v.len())).collect();
                prop_assert_eq!(
                    serde_json::from_value::<BTreeMap<String, usize>>(counts).unwrap(),
                    want_counts
                );
                // The stored-bytes figure behind quotas is exact after every write.
                let quota = runtime().block_on(c.get("/info/quota")).json();
                let want_bytes: usize = want.values().flatten().map(|(_, (p, _))| p.len()).sum();
                prop_assert_eq!(
                    (quota[0].as_f64().unwrap() * 1024.0).round() as usize,
                    want_bytes,
                    "stored bytes after step {}: {:?}",
                    i,
                    op
                );
            }
            Ok(())
        })
        .unwrap();
}
