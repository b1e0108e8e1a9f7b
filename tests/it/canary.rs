//! Node health reports and the canary guard, against real processes on a real
//! PostgreSQL (started by `scripts/test`): three storage nodes report their last minute;
//! one of them is made to fail for real (stopped, its users' files replaced by garbage,
//! started again: every storage request of its users answers 503) and the guard of two
//! tokenservers pauses it within its window while the two healthy nodes under the same
//! load are not paused; new sign-ins avoid it; `rollout resume` restores it; a stopped
//! node's report goes stale. Also: two guards racing make one pause and one audit row,
//! and an assignment file made before the guard gains its columns on open. The node's
//! figures count only authenticated requests (an anonymous flood of 404s, 405s and 401s
//! leaves them unchanged, and does not dilute a failing node's) and time what the
//! server does (slow uploads do not raise its p99).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use syncstore::admin::{self, Actor, Via};
use syncstore::tokenserver::db::AssignmentDb;
use syncstore::tokenserver::guard::{self, CanaryConfig};
use syncstore::tokenserver::store::{self, Health};

use crate::common::{Client, Server, cli, fake_verifier, fresh_database, sign_in};

/// The settings every process of the test cluster shares: reports every second, a
/// window of 3 s, 20 requests a minute enough to be judged. The p99 floor is high so
/// that a slow moment of a debug build on a shared machine never counts: this test is
/// about 5xx (latency judgement is unit-tested in `guard`).
fn cluster_env(db: &str, verify: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.to_string()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify.to_string()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "60".into()),
        ("SYNCSTORE_NODE_REPORT_SECS", "1".into()),
        ("SYNCSTORE_CANARY_WINDOW_SECS", "3".into()),
        ("SYNCSTORE_CANARY_MIN_REQUESTS", "20".into()),
        ("SYNCSTORE_CANARY_P99_FLOOR_MS", "5000".into()),
    ]
}

fn with_role<'a>(env: &'a [(&'static str, String)], role: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    e.push(("SYNCSTORE_ROLE", role));
    e
}

/// The assignment database, opened by this test process (the temp dir is unused: the
/// URL is PostgreSQL's).
fn open_db(url: &str) -> (tempfile::TempDir, AssignmentDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = AssignmentDb::open(url, dir.path()).unwrap();
    (dir, db)
}

/// The console's overview, as JSON (read on the blocking pool: the PostgreSQL client
/// is blocking).
async fn overview(db: &AssignmentDb) -> Value {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        serde_json::to_value(admin::overview(&db, admin::now_ms()).unwrap()).unwrap()
    })
    .await
    .unwrap()
}

fn node_of<'a>(o: &'a Value, url: &str) -> &'a Value {
    o["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == url)
        .unwrap_or_else(|| panic!("no node {url} in {o}"))
}

/// Polls `check` every 200 ms until it holds or `secs` pass; returns whether it held.
async fn eventually(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check().await
}

/// Puts the good user files back.
fn repair_user_files(data: &Path) {
    std::fs::remove_dir_all(data.join("users")).unwrap();
    std::fs::rename(data.join("users.good"), data.join("users")).unwrap();
}

/// Signs `user` in; returns its client and the node URL it landed on.
async fn signed_in(ts: &Server, nodes: &[&Server], user: &str) -> (Client, String) {
    let t = sign_in(ts, user).await;
    let endpoint = t["api_endpoint"].as_str().unwrap();
    let base = endpoint.rsplit_once("/1.5/").unwrap().0.to_string();
    let server = nodes
        .iter()
        .find(|s| s.url() == base)
        .unwrap_or_else(|| panic!("unknown node {base}"));
    let c = Client::with_token(
        server,
        t["uid"].as_u64().unwrap(),
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    (c, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guard_pauses_a_failing_node_and_resume_restores_it() {
    let db_url = fresh_database().await;
    let verify = fake_verifier().await;
    let env = cluster_env(&db_url, &verify);
    let a = Server::start(&with_role(&env, "storage"));
    let b = Server::start(&with_role(&env, "storage"));
    let c = Server::start(&with_role(&env, "storage"));
    for n in [&a, &b, &c] {
        cli(&db_url, &["node", "add", &n.url(), "--capacity", "1000"]);
    }
    // All three in rollout (so all three are judged): B and C take half of the new
    // users each, A the rest and an allow-listed user nobody signs in as.
    cli(&db_url, &["rollout", "set", &b.url(), "50"]);
    cli(&db_url, &["rollout", "set", &c.url(), "50"]);
    cli(
        &db_url,
        &["rollout", "allow", &a.url(), "nobody-signs-in-as-this"],
    );
    let ts1 = Server::start(&with_role(&env, "tokenserver"));
    let ts2 = Server::start(&with_role(&env, "tokenserver"));
    let url = db_url.clone();
    let (_dir, db) = tokio::task::spawn_blocking(move || open_db(&url))
        .await
        .unwrap();

    // 30 users, each with a record on its node.
    let mut clients = Vec::new();
    {
        let nodes = [&a, &b, &c];
        for i in 0..30 {
            let (client, base) = signed_in(&ts1, &nodes, &format!("canary-user{i}")).await;
            let r = client
                .put("/storage/tabs/mine", &serde_json::json!({"payload": "x"}))
                .await;
            assert_eq!(r.status, 200);
            clients.push((client, base));
        }
    }
    let count = |url: &str| clients.iter().filter(|(_, b)| b == url).count();
    for n in [&a, &b, &c] {
        assert!(
            count(&n.url()) >= 3,
            "every node has users: {}",
            count(&n.url())
        );
    }

    // Every node reports: fresh rows with its version.
    let reported = eventually(15, async || {
        let o = overview(&db).await;
        [&a, &b, &c]
            .iter()
            .all(|n| node_of(&o, &n.url())["stale"] == false)
    })
    .await;
    assert!(reported, "no fresh reports: {}", overview(&db).await);
    let o = overview(&db).await;
    let hc = &node_of(&o, &c.url())["health"];
    assert!(
        hc["version"]
            .as_str()
            .unwrap()
            .starts_with(env!("CARGO_PKG_VERSION")),
        "{hc}"
    );
    assert!(hc["disk_free"].as_i64().unwrap() > 0, "{hc}");
    assert!(hc["interval_ms"] == 1000, "{hc}");
    for n in [&a, &b, &c] {
        let v = node_of(&o, &n.url());
        assert_eq!(v["in_rollout"], true, "{v}");
        assert!(!v["minutes"].as_array().unwrap().is_empty(), "{v}");
    }

    // C fails for real: stopped, its users' files replaced by garbage, started again.
    let (c_url, c_addr) = (c.url(), c.addr.clone());
    let c_data = c.stop();
    assert!(crate::common::damage_user_files(c_data.path()) >= 3);
    let c = Server::start_at(c_data, &c_addr, &with_role(&env, "storage"));

    // The same load on every node: each user reads its collections every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<(String, u16), u64>::new()));
    let mut load = Vec::new();
    for (client, base) in clients.clone() {
        let (stop, statuses) = (stop.clone(), statuses.clone());
        load.push(tokio::spawn(async move {
            let path = format!("/1.5/{}/info/collections", client.uid);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let s = client
                    .try_raw("GET", &path, &[], None, true)
                    .await
                    .map_or(0, |r| r.status.as_u16());
                *statuses
                    .lock()
                    .unwrap()
                    .entry((base.clone(), s))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Meanwhile clients without credentials flood the failing node with unknown routes
    // (404), wrong methods (405) and unsigned requests (401): none of it counts, so the
    // node's 5xx rate stays 100% (the reason below says so).
    let mut flood = Vec::new();
    for t in 0..2u64 {
        let (stop, base) = (stop.clone(), c_url.clone());
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (m, path) = match (sent + t) % 3 {
                    0 => (reqwest::Method::GET, format!("/1.5/{sent}/x")),
                    1 => (reqwest::Method::POST, "/1.5/1/info/collections".into()),
                    _ => (reqwest::Method::GET, "/1.5/1/info/collections".into()),
                };
                let _ = http.request(m, format!("{base}{path}")).send().await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        }));
    }
    let started = Instant::now();
    let paused = eventually(60, async || {
        node_of(&overview(&db).await, &c_url)["paused_at"].is_i64()
    })
    .await;
    let took = started.elapsed();
    let o = overview(&db).await;
    // C counted its user files when it started again (they are counted at start, then
    // every few minutes).
    let vc = node_of(&o, &c_url);
    assert_eq!(vc["health"]["users"], count(&c_url) as i64, "{vc}");
    assert!(
        paused,
        "C was not paused: {o}\n{:?}",
        statuses.lock().unwrap()
    );
    eprintln!("C paused {:.1} s after the load began", took.as_secs_f64());
    let vc = node_of(&o, &c_url);
    assert_eq!(vc["state"], "paused", "{vc}");
    assert_eq!(vc["share"], 0.0, "{vc}");
    let reason = vc["pause_reason"].as_str().unwrap();
    assert!(reason.contains("5xx rate 100.0%"), "{reason}");
    // The healthy nodes, under the same load and judged as well, are not paused.
    for n in [&a, &b] {
        let v = node_of(&o, &n.url());
        assert!(v["paused_at"].is_null(), "{v}");
        assert!(v["health"]["requests"].as_i64().unwrap() >= 20, "{v}");
        assert_eq!(v["health"]["errors"], 0, "{v}");
    }
    {
        let seen = statuses.lock().unwrap();
        assert!(
            seen.get(&(c_url.clone(), 503)).copied().unwrap_or(0) > 20,
            "{seen:?}"
        );
        assert!(
            seen.keys().all(|(node, s)| *node == c_url || *s == 200),
            "{seen:?}"
        );
    }
    // One pause and one audit row, although two tokenservers judge; one warning.
    let audit: Vec<Value> = serde_json::from_str(&cli(&db_url, &["audit", "--json"])).unwrap();
    let pauses: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "rollout.pause")
        .collect();
    assert_eq!(pauses.len(), 1, "{audit:?}");
    assert_eq!(pauses[0]["via"], "guard");
    assert_eq!(pauses[0]["target"], c_url.as_str());
    let warned = || {
        [&ts1, &ts2]
            .iter()
            .filter(|t| {
                t.log_text()
                    .contains("canary guard: paused the node's rollout")
            })
            .count()
    };
    assert!(eventually(5, async || warned() > 0).await);
    assert_eq!(warned(), 1);
    let list = cli(&db_url, &["node", "list"]);
    let line = list.lines().find(|l| l.starts_with(&c_url)).unwrap();
    assert!(line.contains("paused: "), "{list}");

    // New sign-ins avoid the paused node (its existing users stay on it).
    let nodes = [&a, &b, &c];
    for i in 0..30 {
        let (_, base) = signed_in(&ts2, &nodes, &format!("after-pause{i}")).await;
        assert_ne!(base, c_url, "after-pause{i} landed on the paused node");
    }
    let (again, base) = signed_in(&ts1, &nodes, "canary-user0").await;
    assert_eq!(base, clients[0].1, "an existing user stays where it is");
    drop(again);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let flooded: u64 = futures_sum(flood).await;
    assert!(flooded > 100, "the flood ran: {flooded}");

    // Repaired, then resumed: new users land on it again, and the guard leaves it be.
    let c_data = c.stop();
    repair_user_files(c_data.path());
    let c = Server::start_at(c_data, &c_addr, &with_role(&env, "storage"));
    let out = cli(&db_url, &["rollout", "resume", &c_url]);
    assert!(out.contains("resumed"), "{out}");
    let nodes = [&a, &b, &c];
    let mut landed = 0;
    for i in 0..30 {
        if signed_in(&ts1, &nodes, &format!("after-resume{i}")).await.1 == c_url {
            landed += 1;
        }
    }
    assert!(landed > 0, "no new user landed on the resumed node");
    let table = cli(&db_url, &["audit"]);
    eprintln!("{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("WHEN"), "{table}");
    let resume = rows.iter().find(|l| l.contains("rollout.resume")).unwrap();
    assert!(resume.contains(" cli ") && resume.contains('@') && resume.contains(&c_url));
    assert!(resume.contains("was paused: "), "{resume}");
    let pause = rows.iter().find(|l| l.contains("rollout.pause")).unwrap();
    assert!(
        pause.contains(" guard ") && pause.contains(&c_url),
        "{pause}"
    );
    for action in ["rollout.set", "rollout.allow", "node.add"] {
        assert!(table.contains(action), "{action}: {table}");
    }
    // The newest first.
    assert!(
        table.find("rollout.resume").unwrap() < table.find("rollout.pause").unwrap(),
        "{table}"
    );
    let o = overview(&db).await;
    assert!(node_of(&o, &c_url)["paused_at"].is_null());
    assert!(node_of(&o, &c_url)["suspect_since"].is_null());

    // A live drain records its progress for anyone to see, and is audited.
    let out = cli(&db_url, &["node", "drain", &c_url, "--live"]);
    assert!(out.contains("moved "), "{out}");
    let o = overview(&db).await;
    let d = o["drains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["node"] == c_url.as_str())
        .unwrap_or_else(|| panic!("no drain: {o}"));
    assert_eq!(d["status"], "done", "{d}");
    assert!(
        d["total"].as_i64().unwrap() > 0 && d["moved"] == d["total"],
        "{d}"
    );
    assert_eq!(
        (&d["via"], &d["failed"]),
        (&Value::from("cli"), &Value::from(0)),
        "{d}"
    );
    assert_eq!(node_of(&o, &c_url)["state"], "draining");
    let table = cli(&db_url, &["audit", "--limit", "2"]);
    assert!(
        table.contains("drain.end") && table.contains("drain.start"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "a header and 2 rows: {table}");

    // A node that stops reporting shows as stale, in `node list` and the overview.
    let a_url = a.url();
    drop(a);
    let stale = eventually(15, async || {
        let list = cli(&db_url, &["node", "list"]);
        list.lines()
            .find(|l| l.starts_with(&a_url))
            .is_some_and(|l| l.contains("stale (last report"))
    })
    .await;
    assert!(stale, "{}", cli(&db_url, &["node", "list"]));
    assert_eq!(node_of(&overview(&db).await, &a_url)["stale"], true);
    drop((b, c, ts1, ts2));
}

/// The sum of what the tasks returned.
async fn futures_sum(tasks: Vec<tokio::task::JoinHandle<u64>>) -> u64 {
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n
}

/// Sends a Hawk-signed `PUT /1.5/{uid}{path}` whose body trickles in `chunks` pieces
/// `gap` apart (a slow client); returns the status line and how long it took.
async fn slow_put(
    client: &Client,
    addr: &str,
    path: &str,
    chunks: usize,
    gap: Duration,
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let full = format!("/1.5/{}{path}", client.uid);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = serde_json::to_vec(&serde_json::json!({"payload": "p".repeat(600)})).unwrap();
    let head = format!(
        "PUT {full} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        client.authorization("PUT", &full, now),
        body.len()
    );
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(body.len().div_ceil(chunks)) {
        tokio::time::sleep(gap).await;
        s.write_all(piece).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    (
        text.lines().next().unwrap_or("").to_string(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nodes_figures_count_authenticated_requests_and_the_servers_time_only() {
    let db_url = fresh_database().await;
    let verify = fake_verifier().await;
    let env = cluster_env(&db_url, &verify);
    let node = Server::start(&with_role(&env, "storage"));
    cli(&db_url, &["node", "add", &node.url(), "--capacity", "100"]);
    let ts = Server::start(&with_role(&env, "tokenserver"));
    let url = db_url.clone();
    let (_dir, db) = tokio::task::spawn_blocking(move || open_db(&url))
        .await
        .unwrap();
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(
            signed_in(&ts, &[&node], &format!("figures-user{i}"))
                .await
                .0,
        );
    }
    // Each user: one write and four reads, 30 authenticated requests in all.
    for u in &users {
        let r = u
            .put("/storage/tabs/mine", &serde_json::json!({"payload": "x"}))
            .await;
        assert_eq!(r.status, 200);
        for _ in 0..4 {
            assert_eq!(u.get("/info/collections").await.status, 200);
        }
    }
    let requests = async || {
        let o = overview(&db).await;
        node_of(&o, &node.url())["health"]["requests"].as_i64()
    };
    assert!(
        eventually(10, async || requests().await == Some(30)).await,
        "{:?}",
        requests().await
    );

    // Thousands of requests without credentials, 20 at a time: unknown routes (404),
    // wrong methods (405), unsigned or badly signed requests (401).
    let uid = users[0].uid;
    let mut tasks = Vec::new();
    for t in 0..20u64 {
        let base = node.url();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = BTreeMap::<u16, u64>::new();
            for i in 0..150u64 {
                let (m, path, auth) = match (i + t) % 4 {
                    0 => (reqwest::Method::GET, format!("/1.5/{i}/x"), None),
                    1 => (
                        reqwest::Method::PATCH,
                        format!("/1.5/{uid}/storage/tabs"),
                        None,
                    ),
                    2 => (
                        reqwest::Method::GET,
                        format!("/1.5/{uid}/info/collections"),
                        None,
                    ),
                    _ => (
                        reqwest::Method::GET,
                        format!("/1.5/{uid}/info/collections"),
                        Some("Hawk id=\"x\", ts=\"1\", nonce=\"n\", mac=\"m\""),
                    ),
                };
                let mut req = http.request(m, format!("{base}{path}"));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let s = req.send().await.unwrap().status().as_u16();
                *statuses.entry(s).or_default() += 1;
            }
            statuses
        }));
    }
    let mut statuses = BTreeMap::<u16, u64>::new();
    for t in tasks {
        for (s, n) in t.await.unwrap() {
            *statuses.entry(s).or_default() += n;
        }
    }
    assert_eq!(statuses.values().sum::<u64>(), 3000);
    for s in [401, 404, 405] {
        assert!(
            statuses.get(&s).copied().unwrap_or(0) >= 700,
            "{statuses:?}"
        );
    }
    // Two more reports: still the 30 authenticated requests.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(requests().await, Some(30), "{statuses:?}");

    // Three users upload slowly (each body trickles in over 1.6 s), the others read:
    // without the upload's wait the p99 is what the server did, not 1.6 s.
    let mut slow = Vec::new();
    for u in &users[..3] {
        let (u, addr) = (u.clone(), node.addr.clone());
        slow.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..2 {
                let path = format!("/storage/tabs/slow{k}");
                out.push(slow_put(&u, &addr, &path, 8, Duration::from_millis(200)).await);
            }
            out
        }));
    }
    for _ in 0..5 {
        for u in &users[3..] {
            assert_eq!(u.get("/info/collections").await.status, 200);
        }
    }
    for t in slow {
        for (status, took) in t.await.unwrap() {
            assert!(status.contains(" 200 "), "{status}");
            assert!(took >= Duration::from_millis(1600), "{took:?}");
        }
    }
    // 30 + 6 slow uploads + 15 reads.
    assert!(
        eventually(10, async || requests().await == Some(51)).await,
        "{:?}",
        requests().await
    );
    let o = overview(&db).await;
    let h = &node_of(&o, &node.url())["health"];
    let p99 = h["p99_us"].as_i64().unwrap();
    assert!(p99 > 0 && p99 < 800_000, "p99 of the server's time: {h}");
    assert_eq!(h["errors"], 0, "{h}");
    drop((node, ts));
}

fn health(node: &str, now: i64, requests: i64, errors: i64) -> Health {
    Health {
        node: node.into(),
        reported_at: now,
        interval_ms: 1000,
        started_at: now - 60_000,
        version: "test".into(),
        requests,
        errors,
        p50_us: 1000,
        p99_us: 5000,
        open_users: 1,
        users: 10,
        disk_free: 1 << 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_guards_pausing_at_once_make_one_pause_and_one_audit_row() {
    let url = fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let (_dir, db) = open_db(&url);
        let cli = Actor::cli();
        let (a, b) = ("http://a.test", "http://b.test");
        admin::node_add(&db, &cli, a, 100).unwrap();
        admin::node_add(&db, &cli, b, 100).unwrap();
        admin::rollout_set(&db, &cli, b, 1000).unwrap();
        let now = admin::now_ms();
        let id_b = db
            .transaction(|tx| store::node_by_url(tx, b))
            .unwrap()
            .unwrap()
            .id;
        db.transaction(|tx| {
            store::put_health(tx, &health(a, now, 1000, 0))?;
            store::put_health(tx, &health(b, now, 1000, 500))?;
            // Suspect for ten minutes already: the next round pauses.
            store::set_suspect(tx, id_b, now - 600_000, "earlier")
        })
        .unwrap();
        let config = CanaryConfig {
            interval: Duration::from_secs(1),
            window_ms: 300_000,
            error_rate: 0.01,
            error_factor: 3.0,
            p99_factor: 3.0,
            p99_floor_us: 100_000,
            min_requests: 100,
            error_ceiling: 0.5,
        };
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (db, config, barrier) = (db.clone(), config.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let actor = Actor {
                        via: Via::Guard,
                        who: format!("guard{i}"),
                    };
                    barrier.wait();
                    db.transaction(|tx| guard::round(tx, &config, &actor, now))
                        .unwrap()
                })
            })
            .collect();
        let rounds: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let pausing: usize = rounds.iter().map(|r| r.paused.len()).sum();
        assert_eq!(pausing, 1, "{rounds:?}");
        assert!(rounds.iter().all(|r| r.paused_now == 1), "{rounds:?}");
        let audit = admin::audit_log(&db, 100).unwrap();
        let pauses: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "rollout.pause")
            .collect();
        assert_eq!(pauses.len(), 1, "{audit:?}");
        assert_eq!(pauses[0].target, b);
        assert!(
            pauses[0].detail.contains("5xx rate 50.0%"),
            "{:?}",
            pauses[0]
        );
        let node = db
            .transaction(|tx| store::node_by_url(tx, b))
            .unwrap()
            .unwrap();
        assert!(node.paused_at == Some(now), "{node:?}");
        // A is not in rollout (100%, no allow-list): never judged, never paused.
        assert_eq!(
            rounds.iter().map(|r| r.judged).sum::<usize>(),
            1,
            "{rounds:?}"
        );
        let node_a = db
            .transaction(|tx| store::node_by_url(tx, a))
            .unwrap()
            .unwrap();
        assert_eq!(node_a.paused_at, None);
        // Resume clears pause and suspicion, and is audited.
        admin::rollout_resume(&db, &Actor::console("127.0.0.1"), b).unwrap();
        let node = db
            .transaction(|tx| store::node_by_url(tx, b))
            .unwrap()
            .unwrap();
        assert_eq!((node.paused_at, node.suspect_since), (None, None));
        let last = &admin::audit_log(&db, 1).unwrap()[0];
        assert_eq!(
            (last.action.as_str(), last.via.as_str(), last.who.as_str()),
            ("rollout.resume", "console", "127.0.0.1")
        );
    })
    .await
    .unwrap();
}

#[test]
fn an_assignment_file_made_before_the_guard_gains_its_columns_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("tokenserver.sqlite")).unwrap();
        c.execute_batch(include_str!(
            "../fixtures/tokenserver_sqlite_before_canary.sql"
        ))
        .unwrap();
        c.execute_batch(
            "INSERT INTO nodes (node, capacity, available, percent_bp)
             VALUES ('http://old.test', 10, 10, 2500);",
        )
        .unwrap();
    }
    let db = AssignmentDb::open("", dir.path()).unwrap();
    let o = admin::overview(&db, admin::now_ms()).unwrap();
    assert_eq!(o.nodes.len(), 1);
    assert_eq!(o.nodes[0].node.paused_at, None);
    assert_eq!(o.nodes[0].node.percent_bp, 2500);
    let now = admin::now_ms();
    db.transaction(|tx| {
        store::put_health(tx, &health("http://old.test", now, 10, 0))?;
        let id = store::node_by_url(tx, "http://old.test")?.unwrap().id;
        assert!(store::pause_node(tx, id, now, "test")?);
        assert!(!store::pause_node(tx, id, now, "again")?);
        Ok::<_, syncstore::tokenserver::db::DbError>(())
    })
    .unwrap();
    let list = admin::node_list(&db).unwrap();
    assert!(list.contains("paused: test"), "{list}");
    // Opening it again (the columns are there now) changes nothing.
    drop(db);
    let db = AssignmentDb::open("", dir.path()).unwrap();
    let o = admin::overview(&db, now).unwrap();
    assert_eq!(o.nodes[0].node.paused_at, Some(now));
    assert_eq!(o.nodes[0].health.as_ref().map(|h| h.requests), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_made_before_the_guard_gains_its_columns_on_open() {
    let url = fresh_database().await;
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(include_str!(
            "../fixtures/tokenserver_postgres_before_canary.sql"
        ))
        .unwrap();
        c.batch_execute(
            "INSERT INTO nodes (node, capacity, available, percent_bp)
             VALUES ('http://old.test', 10, 10, 2500);",
        )
        .unwrap();
        drop(c);
        let (_dir, db) = open_db(&url);
        let o = admin::overview(&db, admin::now_ms()).unwrap();
        assert_eq!(o.nodes.len(), 1);
        assert_eq!(o.nodes[0].node.percent_bp, 2500);
        assert_eq!(o.nodes[0].node.paused_at, None);
        admin::rollout_resume(&db, &Actor::cli(), "http://old.test").unwrap();
        assert_eq!(admin::audit_log(&db, 10).unwrap().len(), 1);
        // A second process opening it (the columns are there now) changes nothing.
        let (_dir2, again) = open_db(&url);
        assert_eq!(
            admin::overview(&again, admin::now_ms())
                .unwrap()
                .nodes
                .len(),
            1
        );
    })
    .await
    .unwrap();
}
