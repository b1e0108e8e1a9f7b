//! Micro-benchmarks of the request hot paths: Hawk verify, token verify, BSO
//! validation, one PUT, one incremental GET, and opening a user file that is not open.
//!
//!     cargo bench --bench hot_paths
//!
//! The storage benchmarks use a temporary data dir with the server's default settings.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use syncstore::auth::Authenticator;
use syncstore::auth::hawk::{self, SignedRequest};
use syncstore::auth::token::{self, TokenPayload};
use syncstore::storage::model::{Timestamp, parse_bso};
use syncstore::storage::queries::ListQuery;
use syncstore::storage::{InfoKind, Precondition, Storage, UserDbs, UserDbsConfig};

const SECRET: &str = "bench-secret";
const PATH: &str = "/1.5/42/storage/history?newer=1700000000.00&full=1";

fn token_id() -> (String, String) {
    let payload = TokenPayload {
        uid: 42,
        node: "http://127.0.0.1:8000".into(),
        expires: 4_000_000_000.0,
        salt: token::new_salt(),
        fxa_uid: Some("0123456789abcdef0123456789abcdef".into()),
        fxa_kid: Some("1700000000000-AAAAAAAAAAAAAAAAAAAAAA".into()),
        hashed_fxa_uid: None,
        hashed_device_id: None,
    };
    token::make_token(SECRET, &payload)
}

fn signed_header(id: &str, key: &str, nonce: u64, now: i64) -> String {
    let req = SignedRequest {
        method: "GET",
        path_and_query: PATH,
        host: "127.0.0.1",
        port: 8000,
    };
    let mut h = hawk::HawkHeader {
        id: id.to_string(),
        ts: now,
        ts_raw: now.to_string(),
        nonce: format!("n{nonce}"),
        ..Default::default()
    };
    h.mac = hawk::compute_mac(key.as_bytes(), &h, &req);
    format!(
        r#"Hawk id="{}", ts="{}", nonce="{}", mac="{}""#,
        h.id, h.ts_raw, h.nonce, h.mac
    )
}

fn auth(c: &mut Criterion) {
    let (id, key) = token_id();
    c.bench_function("token verify", |b| {
        b.iter(|| token::verify_token(&[SECRET.to_string()], black_box(&id)).unwrap())
    });
    // Room for every iteration's nonce: a full replay cache refuses rather than evicts.
    let authn = Authenticator::new(vec![SECRET.into()], 60, 100_000_000);
    let req = SignedRequest {
        method: "GET",
        path_and_query: PATH,
        host: "127.0.0.1",
        port: 8000,
    };
    let mut nonce = 0u64;
    c.bench_function("hawk verify (token + MAC + replay cache)", |b| {
        b.iter_batched(
            || {
                nonce += 1;
                let now = Timestamp::now().0 / 100;
                (signed_header(&id, &key, nonce, now), now as f64)
            },
            |(header, now)| authn.verify(Some(&header), &req, 42, false, now).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

fn bso_validation(c: &mut Criterion) {
    let body = json!({"id": "abcdefghijkl", "sortindex": 100, "ttl": 3600,
                      "payload": "x".repeat(500)});
    c.bench_function("BSO validation (500-byte payload)", |b| {
        b.iter(|| parse_bso(black_box(&body), None, 2 * 1024 * 1024).unwrap())
    });
}

fn storage(
    max_open_users: usize,
    summary_cache_users: usize,
) -> (tempfile::TempDir, Storage, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let dbs = UserDbs::new(UserDbsConfig {
        data_dir: dir.path().to_path_buf(),
        max_open_users,
        connections_per_user: 4,
        lock_timeout: Duration::from_secs(10),
        synchronous_full: false,
        quota_bytes: 0,
        summary_cache_users,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    (dir, Storage::new(dbs), rt)
}

fn record(i: u64) -> syncstore::storage::model::BsoInput {
    let v = json!({"id": format!("rec{i:09}"), "payload": "x".repeat(500)});
    parse_bso(&v, None, 1 << 20).unwrap()
}

fn storage_ops(c: &mut Criterion) {
    let (_dir, st, rt) = storage(1000, 100_000);
    let mut i = 0u64;
    c.bench_function("PUT one record (warm user)", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(st.put(1, "history".into(), record(i % 500), Precondition::None))
                .unwrap()
        })
    });
    // A user with 1,000 records; the GET asks for what changed in the last 10 writes.
    let since = Timestamp::now();
    for n in 0..1000 {
        rt.block_on(st.put(2, "history".into(), record(n), Precondition::None))
            .unwrap();
    }
    let query = ListQuery {
        newer_than: Some(since.0),
        full: true,
        limit: Some(10),
        sort: syncstore::storage::queries::Sort::Newest,
        ..Default::default()
    };
    c.bench_function("incremental GET (10 of 1,000 records, full)", |b| {
        b.iter(|| {
            rt.block_on(st.list(2, "history".into(), query.clone(), Precondition::None))
                .unwrap()
        })
    });
}

fn cold_open(c: &mut Criterion) {
    const USERS: u64 = 200;
    let prefill = |st: &Storage, rt: &tokio::runtime::Runtime| {
        for uid in 0..USERS {
            rt.block_on(st.put(uid, "clients".into(), record(uid), Precondition::None))
                .unwrap();
        }
    };
    // No summaries: info/collections reads the file. The files are closed between
    // rounds, untimed (and waited for: closing runs on a background thread), so each
    // timed read opens its user's file: open + first query.
    let (_dir, st, rt) = storage(1000, 0);
    prefill(&st, &rt);
    let close_all = || {
        st.dbs().close_idle(0);
        st.dbs().settle();
    };
    close_all();
    c.bench_function("cold open + first query (closing not timed)", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for i in 0..iters {
                let uid = i % USERS;
                if uid == 0 {
                    close_all();
                }
                let start = std::time::Instant::now();
                rt.block_on(st.info(uid, InfoKind::Timestamps, Precondition::None))
                    .unwrap();
                timed += start.elapsed();
            }
            close_all();
            timed
        })
    });
    // An LRU of one: every read of another user evicts the last one and opens its own
    // file. The evicted file is closed on the background thread, as in the server
    // (on a second core when there is one).
    let (_dir, st, rt) = storage(1, 0);
    prefill(&st, &rt);
    let mut uid = 0u64;
    c.bench_function("LRU miss: evict + open + first query", |b| {
        b.iter(|| {
            uid = (uid + 1) % USERS;
            rt.block_on(st.info(uid, InfoKind::Timestamps, Precondition::None))
                .unwrap()
        })
    });
    // With summaries (the default): a user whose file is not open, but whose
    // collection timestamps are in memory, gets info/collections without an open.
    let (_dir, st, rt) = storage(1, 100_000);
    prefill(&st, &rt);
    c.bench_function("info/collections from the summary (file not open)", |b| {
        b.iter(|| {
            uid = (uid + 1) % USERS;
            rt.block_on(st.info(uid, InfoKind::Timestamps, Precondition::None))
                .unwrap()
        })
    });
}

criterion_group!(benches, auth, bso_validation, storage_ops, cold_open);
criterion_main!(benches);
