//! The shared-PostgreSQL deployment: several tokenserver processes and a storage node
//! using one real PostgreSQL database (started by `scripts/test`), over TLS too, and
//! each role's clean exit on SIGTERM.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Client, Server, cli, fake_verifier, fresh_database, sign_in};
use serde_json::json;

struct Cluster {
    storage: Server,
    tokenservers: Vec<Arc<Server>>,
    db: String,
}

async fn cluster() -> Cluster {
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let shared = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ];
    let with_role = |role: &'static str| {
        let mut env = shared.to_vec();
        env.push(("SYNCSTORE_ROLE", role));
        env
    };
    let storage = Server::start(&with_role("storage"));
    cli(&db, &["node", "add", &storage.url(), "--capacity", "1000"]);
    let tokenservers = (0..2)
        .map(|_| Arc::new(Server::start(&with_role("tokenserver"))))
        .collect();
    Cluster {
        storage,
        tokenservers,
        db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokenservers_share_assignments_in_postgres() {
    let c = cluster().await;
    // 60 users sign in through either tokenserver, concurrently.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let ts = c.tokenservers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            (i, sign_in(&ts, &format!("pg-user{i}")).await)
        }));
    }
    let mut uids = HashSet::new();
    for t in tasks {
        let (i, answer) = t.await.unwrap();
        assert!(
            answer["api_endpoint"]
                .as_str()
                .unwrap()
                .starts_with(&c.storage.url())
        );
        uids.insert(answer["uid"].as_u64().unwrap());
        // The other tokenserver knows the same assignment.
        let again = sign_in(&c.tokenservers[(i + 1) % 2], &format!("pg-user{i}")).await;
        assert_eq!(again["uid"], answer["uid"]);
    }
    assert_eq!(uids.len(), 60);
    // Tokens from either tokenserver work on the storage node.
    let answer = sign_in(&c.tokenservers[1], "pg-user7").await;
    let client = Client::with_token(
        &c.storage,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    );
    assert_eq!(
        client
            .put("/storage/tabs/t", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    let list = cli(&c.db, &["node", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&c.storage.url()))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("60"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_sign_ins_across_tokenservers_make_one_uid() {
    let c = cluster().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let ts = c.tokenservers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            sign_in(&ts, "racer").await["uid"].as_u64().unwrap()
        }));
    }
    let mut uids = HashSet::new();
    for t in tasks {
        uids.insert(t.await.unwrap());
    }
    assert_eq!(uids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_and_moves_work_through_postgres() {
    let c = cluster().await;
    let other = "http://other-node.test";
    cli(&c.db, &["node", "add", other, "--capacity", "1000"]);
    cli(&c.db, &["rollout", "set", other, "30"]);
    let mut on_other = 0;
    for i in 0..300 {
        let a = sign_in(&c.tokenservers[i % 2], &format!("roll{i}")).await;
        let expected = syncstore::tokenserver::rollout::bucket(&format!("roll{i}")) < 3000;
        assert_eq!(
            a["api_endpoint"].as_str().unwrap().starts_with(other),
            expected
        );
        on_other += expected as usize;
    }
    assert!((60..=120).contains(&on_other), "30% of 300: {on_other}");

    // A user on the storage node is moved when it drains; the node then refuses the
    // old token (it reads the shared database).
    let before = (0..300)
        .map(|i| format!("roll{i}"))
        .find(|u| syncstore::tokenserver::rollout::bucket(u) >= 3000)
        .unwrap();
    let answer = sign_in(&c.tokenservers[0], &before).await;
    let old = Client::with_token(
        &c.storage,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    );
    assert_eq!(old.get("/info/collections").await.status, 200);
    cli(&c.db, &["rollout", "set", other, "100"]);
    cli(&c.db, &["node", "drain", &c.storage.url()]);
    let moved = sign_in(&c.tokenservers[1], &before).await;
    assert!(moved["api_endpoint"].as_str().unwrap().starts_with(other));
    assert_eq!(old.get("/info/collections").await.status, 401);
}

/// Runs the CLI against `db_url`; returns whether it succeeded and its stderr.
fn try_cli(db_url: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env("SYNCSTORE_TOKENSERVER_DATABASE_URL", db_url)
        .env("SYNCSTORE_SECRETS", common::SECRET)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `db` (a fresh database's URL) as the role `syncstore_tls`, which the test server
/// (scripts/postgres.sh) lets in over TLS only, with `params` as the query.
fn as_tls_role(db: &str, params: &str) -> String {
    let url = db.replacen("://syncstore@", "://syncstore_tls@", 1);
    assert_ne!(url, db, "unexpected test database URL {db}");
    if params.is_empty() {
        url
    } else {
        format!("{url}?{params}")
    }
}

fn test_ca() -> String {
    std::env::var("SYNCSTORE_TEST_POSTGRES_TLS_CA").expect(
        "SYNCSTORE_TEST_POSTGRES_TLS_CA is not set: run the tests with scripts/test, which \
         starts PostgreSQL with TLS",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignments_database_over_tls() {
    let db = fresh_database().await;
    let ca = test_ca();
    let verify = fake_verifier().await;

    // The role is refused without TLS: what works below went over TLS.
    let (ok, err) = try_cli(&as_tls_role(&db, "sslmode=disable"), &["node", "list"]);
    assert!(!ok && err.contains("no encryption"), "{err}");

    let modes = [
        String::new(), // absent: libpq's default, prefer
        "sslmode=prefer".to_string(),
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
        // The certificate's other name, the connection still to 127.0.0.1.
        format!("sslmode=verify-full&sslrootcert={ca}&hostaddr=127.0.0.1",),
    ];
    for (i, params) in modes.iter().enumerate() {
        let mut url = as_tls_role(&fresh_database().await, params);
        if params.contains("hostaddr") {
            url = url.replacen("@127.0.0.1:", "@localhost:", 1);
        }
        let node = format!("http://node{i}.test");
        cli(&url, &["node", "add", &node, "--capacity", "1000"]);
        // A tokenserver on that URL assigns users and exits cleanly.
        let mut ts = Server::start(&[
            ("SYNCSTORE_ROLE", "tokenserver"),
            ("SYNCSTORE_TOKENSERVER_DATABASE_URL", url.as_str()),
            ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
        ]);
        let answer = sign_in(&ts, &format!("tls-user{i}")).await;
        assert!(
            answer["api_endpoint"].as_str().unwrap().starts_with(&node),
            "{params}: {answer}"
        );
        assert!(ts.terminate(30), "{params}: {}", ts.log_text());
    }

    // verify-full against a certificate for another name fails, and says why.
    let wrong_name = as_tls_role(
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}&hostaddr=127.0.0.1"),
    )
    .replacen("@127.0.0.1:", "@db.wrong-name.test:", 1);
    let (ok, err) = try_cli(&wrong_name, &["node", "list"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("certificate") && err.contains("not valid for name"),
        "{err}"
    );
    // verify-ca does not check the name.
    let (ok, err) = try_cli(
        &wrong_name.replace("verify-full", "verify-ca"),
        &["node", "list"],
    );
    assert!(ok, "{err}");
    // Without sslrootcert, verify-full trusts the system's roots only: not the test CA.
    let (ok, err) = try_cli(&as_tls_role(&db, "sslmode=verify-full"), &["node", "list"]);
    assert!(!ok && err.contains("certificate"), "{err}");
    // A missing root file is named.
    let (ok, err) = try_cli(
        &as_tls_role(&db, "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        &["node", "list"],
    );
    assert!(!ok && err.contains("/nonexistent/ca.pem"), "{err}");
    // An unknown sslmode is refused.
    let (ok, err) = try_cli(&as_tls_role(&db, "sslmode=sometimes"), &["node", "list"]);
    assert!(!ok && err.contains("sslmode"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_on_postgres_exits_cleanly_on_sigterm() {
    let c = cluster().await;
    let verify = fake_verifier().await;
    // A process with both roles on the same database.
    let both = Server::start(&[
        ("SYNCSTORE_ROLE", "all"),
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", c.db.as_str()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
    ]);
    // Every process has used its pool (so it holds open connections).
    let answer = sign_in(&c.tokenservers[0], "sigterm-user").await;
    sign_in(&c.tokenservers[1], "sigterm-user").await;
    let client = Client::with_token(
        &c.storage,
        answer["uid"].as_u64().unwrap(),
        answer["id"].as_str().unwrap().into(),
        answer["key"].as_str().unwrap().into(),
    );
    assert_eq!(
        client
            .put("/storage/tabs/t", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    sign_in(&both, "sigterm-user2").await;

    // A write in flight on the storage node (which checks each token's assignment in
    // PostgreSQL) when SIGTERM comes: it is finished, then the process exits.
    let uid = answer["uid"].as_u64().unwrap();
    let path = format!("/1.5/{uid}/storage/tabs/inflight");
    let body = r#"{"payload": "sent across the SIGTERM"}"#;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        c.storage.addr,
        client.authorization("PUT", &path, common::now()),
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&c.storage.addr)
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let status = Command::new("kill")
        .args(["-TERM", &c.storage.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rest = stream.write_all(&body.as_bytes()[10..]).await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(rest.is_ok(), "{rest:?} {response}");
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let Cluster {
        mut storage,
        tokenservers,
        ..
    } = c;
    let mut servers: Vec<(&str, Server)> = vec![("storage", std::mem::replace(&mut storage, both))];
    servers.push(("all", storage));
    for (i, ts) in tokenservers.into_iter().enumerate() {
        let ts = Arc::try_unwrap(ts).ok().expect("no other handle");
        servers.push((
            if i == 0 {
                "tokenserver"
            } else {
                "tokenserver 2"
            },
            ts,
        ));
    }
    for (role, mut server) in servers {
        let exited = server.terminate(30);
        let log = server.log_text();
        assert!(exited, "{role}: not a clean exit on SIGTERM: {log}");
        assert!(!log.contains("panicked"), "{role}: {log}");
    }
}
