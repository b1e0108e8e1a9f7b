//! Hardening of node-to-node moves and of the process's own secrets, black-box: real
//! server processes on 127.0.0.1 (a shared PostgreSQL assignment database, started by
//! `scripts/test`, where a cluster is needed).

mod common;

use std::process::Command;
use std::time::Duration;

/// Runs `syncstore serve` on `data` without a configured secret; returns (exit ok, stderr).
fn serve_without_secret(data: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env_remove("SYNCSTORE_SECRETS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreadable_secret_file_stops_the_server_and_is_left_alone() {
    // Not UTF-8: reading it fails even as root.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    let bytes = b"\xff\xfe not a secret \xc3\x28\n".to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let (ok, err) = serve_without_secret(dir.path());
    assert!(!ok, "the server must not start: {err}");
    assert!(err.contains("cannot read the secret file"), "{err}");
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is unchanged"
    );

    // A directory where the file should be.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    let (ok, err) = serve_without_secret(dir.path());
    assert!(!ok, "the server must not start: {err}");
    assert!(err.contains("cannot read the secret file"), "{err}");
    assert!(path.is_dir() && path.join("keep").exists());
}
