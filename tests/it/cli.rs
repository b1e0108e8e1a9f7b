//! Tests of the command line: help, version, `token`, and the zero-configuration secret.

use std::process::Command;

use crate::common::{Client, SECRET, Server};

fn syncstore(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncstore"));
    cmd.args(args).env_remove("SYNCSTORE_SECRETS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run syncstore");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_explain_themselves() {
    let (ok, out, _) = syncstore(&["--help"], &[]);
    assert!(ok);
    assert!(out.contains("serve") && out.contains("token"));
    let (ok, out, _) = syncstore(&["serve", "--help"], &[]);
    assert!(ok);
    assert!(out.contains("--listen") && out.contains("--data-dir") && out.contains("--config"));
    let (ok, out, _) = syncstore(&["--version"], &[]);
    assert!(ok);
    assert!(out.starts_with("syncstore ") && out.contains("commit"));
    let (ok, _, err) = syncstore(&["token"], &[]);
    assert!(!ok);
    assert!(err.contains("--uid"));
}

#[tokio::test]
async fn minted_tokens_work_against_the_server() {
    let s = Server::start(&[]);
    let data = s.data.path().to_str().unwrap().to_string();
    let (ok, out, err) = syncstore(
        &[
            "token",
            "--uid",
            "77",
            "--node",
            &s.url(),
            "--duration",
            "120",
            "--data-dir",
            &data,
        ],
        &[("SYNCSTORE_SECRETS", SECRET)],
    );
    assert!(ok, "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["uid"], 77);
    assert_eq!(t["duration"], 120);
    assert_eq!(t["hashalg"], "sha256");
    assert_eq!(t["api_endpoint"], format!("{}/1.5/77", s.url()));
    let v =
        syncstore::auth::token::verify_token(&[SECRET.into()], t["id"].as_str().unwrap()).unwrap();
    assert_eq!(v.key, t["key"].as_str().unwrap());
    let c = Client::with_token(
        &s,
        77,
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    assert_eq!(c.get("/info/collections").await.status, 200);
}

#[tokio::test]
async fn zero_configuration_generates_a_private_secret() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start(&[("SYNCSTORE_SECRETS", "")]);
    let secret_file = s.data.path().join("secret");
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(secret.len() >= 32);
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("generated a new master secret"), "{log}");
    assert!(!log.contains(&secret), "the secret must never be logged");
    // `token` with the same data dir signs with the stored secret.
    let data = s.data.path().to_str().unwrap().to_string();
    // Tokens name the node they are for (a node refuses tokens minted for another).
    let node = s.url();
    let (ok, out, err) = syncstore(
        &["token", "--uid", "3", "--data-dir", &data, "--node", &node],
        &[],
    );
    assert!(ok, "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = Client::with_token(
        &s,
        3,
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    assert_eq!(c.get("/info/collections").await.status, 200);
    // User files and folders are private too.
    c.put("/storage/col/a", &serde_json::json!({"payload": "x"}))
        .await;
    let users = std::fs::metadata(s.data.path().join("users"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(users & 0o077, 0);
}

#[test]
fn bad_configuration_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "max_post_records = \"many\"\n").unwrap();
    let (ok, _, err) = syncstore(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("invalid configuration"), "{err}");
    let (ok, _, err) = syncstore(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SYNCSTORE_MAX_POST_RECORDS", "x")],
    );
    assert!(!ok);
    assert!(err.contains("SYNCSTORE_MAX_POST_RECORDS"), "{err}");
}

#[test]
fn health_asks_a_running_server() {
    let server = Server::start(&[]);
    let url = server.url();
    let (ok, out, err) = syncstore(&["health", "--url", &url], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("\"status\":\"Ok\""), "{out}");
    std::fs::remove_dir_all(server.data.path()).unwrap();
    // The server reuses a check's result for a second: ask until it has looked again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (ok, out, err) = loop {
        let answer = syncstore(&["health", "--url", &url], &[]);
        if !answer.0 || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(!ok, "{out}");
    assert!(err.contains("503"), "{err}");
    drop(server);
    let (ok, _, err) = syncstore(&["health", "--url", &url], &[]);
    assert!(!ok && err.contains("__heartbeat__"), "{err}");
}
