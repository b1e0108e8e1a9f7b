//! Crash safety: the real binary is killed with SIGKILL at random moments while several
//! users write and commit batches; after each restart every acknowledged write is there
//! and intact, no batch is half-applied, timestamps keep increasing, and every file
//! passes SQLite's integrity check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Client, Server, ts_value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const ROUNDS: u64 = 20;
const USERS: [u64; 3] = [11, 22, 33];

/// What clients were told succeeded.
#[derive(Default, Clone)]
struct Acked {
    /// (uid, id) → payload of every acknowledged single write.
    records: BTreeMap<(u64, String), String>,
    /// (uid, batch tag) → records in the batch, for acknowledged commits.
    batches: BTreeMap<(u64, String), usize>,
    /// Every batch that was attempted: (uid, tag) → records it would apply.
    attempted: BTreeMap<(u64, String), usize>,
    /// The largest write timestamp acknowledged, per user.
    max_ts: BTreeMap<u64, i64>,
}

fn payload(tag: &str, len: usize) -> String {
    let mut p = tag.to_string();
    while p.len() < len {
        p.push_str(tag);
    }
    p.truncate(len);
    p
}

/// One client task: writes until told to stop (or the server dies).
async fn writer(c: Client, task: u64, round: u64, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut rng = StdRng::seed_from_u64(round * 1000 + task);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let tag = format!("r{round}t{task}n{n}");
        let kind = rng.random_range(0..10);
        if kind < 5 {
            let p = payload(&tag, rng.random_range(10..4_000));
            let body = serde_json::to_vec(&json!({"payload": p})).unwrap();
            let path = format!("/storage/single/{tag}");
            let Ok(r) = c.try_json("PUT", &path, body).await else {
                return;
            };
            if r.status == 200 {
                let mut a = acked.lock().unwrap();
                a.records.insert((c.uid, tag.clone()), p);
                let ts = a.max_ts.entry(c.uid).or_default();
                *ts = (*ts).max(r.ts("x-last-modified"));
            }
        } else if kind < 8 {
            let items: Vec<Value> = (0..5)
                .map(|k| json!({"id": format!("{tag}-{k}"), "payload": payload(&format!("{tag}-{k}"), 300)}))
                .collect();
            let body = serde_json::to_vec(&items).unwrap();
            let Ok(r) = c.try_json("POST", "/storage/posted", body).await else {
                return;
            };
            if r.status == 200 {
                let mut a = acked.lock().unwrap();
                for item in &items {
                    let id = item["id"].as_str().unwrap().to_string();
                    a.records
                        .insert((c.uid, id), item["payload"].as_str().unwrap().to_string());
                }
                let ts = a.max_ts.entry(c.uid).or_default();
                *ts = (*ts).max(r.ts("x-last-modified"));
            }
        } else {
            // A batch of 3 × 20 records, committed at the end.
            let rec = |step: usize| -> Vec<u8> {
                let items: Vec<Value> = (0..20)
                    .map(|k| json!({"id": format!("{tag}-{step}-{k}"), "payload": payload(&tag, 500)}))
                    .collect();
                serde_json::to_vec(&items).unwrap()
            };
            acked
                .lock()
                .unwrap()
                .attempted
                .insert((c.uid, tag.clone()), 60);
            let base = "/storage/batched";
            let Ok(r) = c
                .try_json("POST", &format!("{base}?batch=true"), rec(0))
                .await
            else {
                return;
            };
            if r.status != 202 {
                continue;
            }
            let id = r.json()["batch"].as_str().unwrap().to_string();
            let Ok(r) = c
                .try_json("POST", &format!("{base}?batch={id}"), rec(1))
                .await
            else {
                return;
            };
            if r.status != 202 {
                continue;
            }
            let commit = format!("{base}?batch={id}&commit=true");
            let Ok(r) = c.try_json("POST", &commit, rec(2)).await else {
                return;
            };
            if r.status == 200 {
                let mut a = acked.lock().unwrap();
                a.batches.insert((c.uid, tag.clone()), 60);
                let ts = a.max_ts.entry(c.uid).or_default();
                *ts = (*ts).max(ts_value(&r.json()["modified"]));
            }
        }
    }
}

/// Reads back everything of every user and checks it against what was acknowledged.
async fn verify(s: &Server, acked: &Acked) {
    for uid in USERS {
        let c = s.client(uid);
        let mut stored: BTreeMap<String, String> = BTreeMap::new();
        for coll in ["single", "posted", "batched"] {
            let r = c.get(&format!("/storage/{coll}?full=1")).await;
            assert_eq!(r.status, 200, "{}", r.text);
            for b in r.json().as_array().unwrap() {
                stored.insert(
                    b["id"].as_str().unwrap().to_string(),
                    b["payload"].as_str().unwrap().to_string(),
                );
            }
        }
        for ((u, id), p) in acked.records.iter().filter(|((u, _), _)| *u == uid) {
            let got = stored
                .get(id)
                .unwrap_or_else(|| panic!("user {u}: acknowledged {id} lost"));
            assert_eq!(got, p, "user {u}: {id} not intact");
        }
        // Batches are all or nothing; acknowledged ones are all.
        let mut per_batch: BTreeMap<String, usize> = BTreeMap::new();
        for id in stored.keys() {
            if let Some((tag, _)) = id.split_once('-')
                && acked.attempted.contains_key(&(uid, tag.to_string()))
            {
                *per_batch.entry(tag.to_string()).or_default() += 1;
            }
        }
        for ((u, tag), n) in acked.attempted.iter().filter(|((u, _), _)| *u == uid) {
            let present = per_batch.get(tag).copied().unwrap_or(0);
            assert!(
                present == 0 || present == *n,
                "user {u}: batch {tag} half-applied ({present}/{n})"
            );
            if acked.batches.contains_key(&(*u, tag.clone())) {
                assert_eq!(present, *n, "user {u}: acknowledged batch {tag} lost");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let mut data = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..ROUNDS {
        let s = Server::start_in(data, &[]);
        let snapshot = acked.lock().unwrap().clone();
        verify(&s, &snapshot).await;
        // Each user's timestamps keep increasing across the crash.
        for uid in USERS {
            let probe = s
                .client(uid)
                .put("/storage/probe/p", &json!({"payload": "p"}))
                .await;
            let max_ts = acked.lock().unwrap().max_ts.get(&uid).copied().unwrap_or(0);
            assert!(
                probe.ts("x-last-modified") > max_ts,
                "round {round}: user {uid}'s timestamp went back"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, uid) in USERS.iter().chain(USERS.iter()).enumerate() {
            let c = s.client(*uid);
            tasks.push(tokio::spawn(writer(
                c,
                i as u64,
                round,
                stop.clone(),
                acked.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        data = s.stop(); // SIGKILL, with requests in flight
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let s = Server::start_in(data, &[]);
    let a = acked.lock().unwrap().clone();
    verify(&s, &a).await;
    eprintln!(
        "crash harness: {ROUNDS} SIGKILL rounds, {} acknowledged records, {} acknowledged batches, {} attempted",
        a.records.len(),
        a.batches.len(),
        a.attempted.len()
    );
    assert!(
        a.records.len() > 200 && !a.batches.is_empty(),
        "the harness did write: {} records, {} batches",
        a.records.len(),
        a.batches.len()
    );
    let data = s.stop();
    // No file needs repair.
    let mut files = BTreeSet::new();
    for uid in USERS {
        let path = data
            .path()
            .join(format!("users/{:03}/{uid}.sqlite", uid % 1000));
        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{}", path.display());
        files.insert(path);
    }
    assert_eq!(files.len(), USERS.len());
}
