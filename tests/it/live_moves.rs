//! Live moves of users between storage nodes, against real processes sharing a real
//! PostgreSQL assignment database (started by `scripts/test`): a user moved while its
//! client keeps writing, a whole node drained, and moves cut short by killing a node.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, Client, SECRET, Server, cli, fake_verifier, fresh_database, sign_in};
use serde_json::{Value, json};

struct Nodes {
    a: Server,
    b: Server,
    tokenserver: Arc<Server>,
    db: String,
    env: Vec<(&'static str, String)>,
}

/// Two storage nodes (only A takes new users) and a tokenserver, on one database.
async fn nodes() -> Nodes {
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let env: Vec<(&'static str, String)> = vec![
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.clone()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0".into()),
        ("SYNCSTORE_LOCK_TIMEOUT_MS", "1000".into()),
    ];
    let start = |role: &'static str| {
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.push(("SYNCSTORE_ROLE", role));
        Server::start(&e)
    };
    let a = start("storage");
    let b = start("storage");
    cli(&db, &["node", "add", &a.url(), "--capacity", "1000"]);
    cli(&db, &["node", "add", &b.url(), "--capacity", "1000"]);
    cli(&db, &["node", "set", &b.url(), "--available", "0"]);
    let tokenserver = Arc::new(start("tokenserver"));
    Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    }
}

/// A client for an FxA user, with a token fetched from the tokenserver.
async fn signed_in(n: &Nodes, user: &str) -> (Client, String) {
    let t = sign_in(&n.tokenserver, user).await;
    let endpoint = t["api_endpoint"].as_str().unwrap().to_string();
    let base = endpoint.rsplit_once("/1.5/").unwrap().0.to_string();
    let server_for = if base == n.a.url() { &n.a } else { &n.b };
    let client = Client::with_token(
        server_for,
        t["uid"].as_u64().unwrap(),
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    (client, base)
}

fn syncstore(db: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env("SYNCSTORE_TOKENSERVER_DATABASE_URL", db)
        .env("SYNCSTORE_SECRETS", SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every record of a collection: id → modified.
async fn records(c: &Client, coll: &str) -> BTreeMap<String, i64> {
    let r = c.get(&format!("/storage/{coll}?full=1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                common::ts_value(&b["modified"]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_moves_while_its_client_keeps_writing_and_nothing_acknowledged_is_lost() {
    let n = nodes().await;
    let (client, base) = signed_in(&n, "mover").await;
    assert_eq!(base, n.a.url());
    let uid = client.uid;
    for i in 0..20 {
        let r = client
            .put(
                &format!("/storage/history/early{i}"),
                &json!({"payload": "x".repeat(300)}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let before = records(&client, "history").await;

    // The client keeps writing: on 503 it waits and retries, on 401 it signs in again.
    let n = Arc::new(n);
    let writer = {
        let n = n.clone();
        tokio::spawn(async move {
            let (mut client, mut base) = (client, String::new());
            let mut acked = Vec::new();
            let mut statuses = BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0;
            while acked.len() < 150 && Instant::now() < deadline {
                let id = format!("w{i}");
                let body = serde_json::to_vec(&json!({"payload": "y"})).unwrap();
                let r = client
                    .try_json("PUT", &format!("/storage/history/{id}"), body)
                    .await;
                let status = r.map(|r| r.status.as_u16()).unwrap_or(0);
                *statuses.entry(status).or_insert(0) += 1;
                match status {
                    200 => {
                        acked.push(id);
                        i += 1;
                    }
                    503 => tokio::time::sleep(Duration::from_millis(50)).await,
                    401 => (client, base) = signed_in(&n, "mover").await,
                    other => panic!("unexpected status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (client, base, acked, statuses)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (db, target) = (n.db.clone(), n.b.url());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        syncstore(&db, &["user", "move", &uid.to_string(), "--to", &target])
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("user {uid}: moved from")), "{out}");
    eprintln!("{}", out.trim());

    let (client, base, acked, statuses) = writer.await.unwrap();
    assert_eq!(
        base,
        n.b.url(),
        "the client ended on the target: {statuses:?}"
    );
    assert_eq!(client.uid, uid, "the same uid follows the user");
    assert!(statuses.contains_key(&401), "{statuses:?}");
    assert!(
        statuses.keys().all(|s| [200, 401, 503].contains(s)),
        "{statuses:?}"
    );
    // Everything acknowledged is on the target, the early records with their times.
    let after = records(&client, "history").await;
    for id in &acked {
        assert!(after.contains_key(id), "acknowledged write {id} lost");
    }
    for (id, ts) in &before {
        assert_eq!(after.get(id), Some(ts), "{id} changed in the move");
    }
    // The source refuses the user now, and holds no file for it any more.
    let old = common::token(SECRET, uid, &n.a.url(), 3600.0);
    let stale = Client::with_token(&n.a, uid, old.0, old.1);
    assert_eq!(stale.get("/info/collections").await.status, 401);
    let path =
        n.a.data
            .path()
            .join("users")
            .join(format!("{:03}", uid % 1000));
    assert!(!path.join(format!("{uid}.sqlite")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_moves_its_200_users_with_their_data() {
    let n = nodes().await;
    let n = Arc::new(n);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("drain-user{i}");
            let (c, base) = signed_in(&n, &user).await;
            assert_eq!(base, n.a.url());
            let r = c
                .put("/storage/tabs/mine", &json!({"payload": user.clone()}))
                .await;
            assert_eq!(r.status, 200);
            (user, c.uid, common::ts_value(&r.json()))
        }));
        if tasks.len() % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut users = Vec::new();
    for t in tasks {
        users.push(t.await.unwrap());
    }
    let db = n.db.clone();
    let a = n.a.url();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || syncstore(&db, &["node", "drain", &a, "--live"]))
            .await
            .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("moved 200 of 200 users"), "{out}");
    let list = cli(&n.db, &["node", "list"]);
    assert!(list.contains("draining"), "{list}");
    for (user, uid, modified) in users {
        let (c, base) = signed_in(&n, &user).await;
        assert_eq!(base, n.b.url());
        assert_eq!(c.uid, uid);
        let r = c.get("/storage/tabs/mine").await;
        assert_eq!(r.status, 200, "{user}");
        assert_eq!(r.json()["payload"], json!(user));
        assert_eq!(common::ts_value(&r.json()["modified"]), modified);
    }
    // Running it again has nothing left to do.
    let (db, a) = (n.db.clone(), n.a.url());
    let (ok, out, _) =
        tokio::task::spawn_blocking(move || syncstore(&db, &["node", "drain", &a, "--live"]))
            .await
            .unwrap();
    assert!(ok && out.contains("moved 0 of 0 users"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_short_by_a_dead_or_killed_node_leaves_the_user_wholly_on_one_node() {
    let n = nodes().await;
    let (client, _) = signed_in(&n, "interrupted").await;
    let uid = client.uid;
    let big: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("r{i}"), "payload": "z".repeat(10_000)}))
        .collect();
    for _ in 0..5 {
        assert_eq!(
            client.post("/storage/history", &json!(big)).await.status,
            200
        );
    }
    let before = records(&client, "history").await;

    // The target is dead: the move fails and the user stays on the source, untouched.
    let Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    } = n;
    let (b_url, b_addr) = (b.url(), b.addr.clone());
    let b_data = b.stop();
    let (db2, target) = (db.clone(), b_url.clone());
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        syncstore(&db2, &["user", "move", &uid.to_string(), "--to", &target])
    })
    .await
    .unwrap();
    assert!(!ok, "the move should fail");
    assert!(err.contains(&b_url), "{err}");
    let b = Server::start_at(b_data, &b_addr, &env_refs(&env));
    let n = Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    };
    let (client, base) = signed_in(&n, "interrupted").await;
    assert_eq!(base, n.a.url());
    assert_eq!(records(&client, "history").await, before);
    // Writes work again at once (the hold ended with the failed move).
    assert_eq!(
        client
            .put("/storage/history/after", &json!({"payload": "p"}))
            .await
            .status,
        200
    );

    // The source dies in the middle of a move: afterwards the user is wholly on
    // whichever node the assignment names, with all its data.
    let before = records(&client, "history").await;
    let (db2, target) = (n.db.clone(), n.b.url());
    let mover = tokio::task::spawn_blocking(move || {
        syncstore(&db2, &["user", "move", &uid.to_string(), "--to", &target])
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    } = n;
    let a_addr = a.addr.clone();
    let a_data = a.stop(); // SIGKILL
    let _ = mover.await.unwrap();
    let a = Server::start_at(a_data, &a_addr, &env_refs(&env));
    let n = Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    };
    let (client, base) = signed_in(&n, "interrupted").await;
    assert_eq!(client.uid, uid);
    assert_eq!(records(&client, "history").await, before, "on {base}");

    // The target dies in the middle of a move back the other way: the same holds.
    let to = if base == n.a.url() { &n.b } else { &n.a };
    let (db2, target) = (n.db.clone(), to.url());
    let mover = tokio::task::spawn_blocking(move || {
        syncstore(&db2, &["user", "move", &uid.to_string(), "--to", &target])
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let to_is_a = to.url() == n.a.url();
    let Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    } = n;
    let (a, b) = if to_is_a {
        let addr = a.addr.clone();
        let data = a.stop();
        let _ = mover.await.unwrap();
        (Server::start_at(data, &addr, &env_refs(&env)), b)
    } else {
        let addr = b.addr.clone();
        let data = b.stop();
        let _ = mover.await.unwrap();
        (a, Server::start_at(data, &addr, &env_refs(&env)))
    };
    let n = Nodes {
        a,
        b,
        tokenserver,
        db,
        env,
    };
    let (client, base) = signed_in(&n, "interrupted").await;
    assert_eq!(client.uid, uid);
    assert_eq!(records(&client, "history").await, before, "on {base}");
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    e.push(("SYNCSTORE_ROLE", "storage"));
    e
}
