//! Fault isolation and resource bounds: one user's broken file or full disk hurts only
//! that user; files, threads and connections stay bounded; slow clients are cut off.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Server, raw_http};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn user_file(s: &Server, uid: u64) -> std::path::PathBuf {
    s.data
        .path()
        .join(format!("users/{:03}/{uid}.sqlite", uid % 1000))
}

#[tokio::test]
async fn a_corrupt_user_file_fails_only_that_user() {
    let s = Server::start(&[]);
    for uid in [1, 2] {
        s.client(uid)
            .put("/storage/col/a", &json!({"payload": "x"}))
            .await;
    }
    let data = s.stop();
    let path = data.path().join("users/001/1.sqlite");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let s = Server::start_in(data, &[]);
    let broken = s.client(1);
    let started = Instant::now();
    let r = broken.get("/storage/col").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast, not after a pool timeout"
    );
    assert_eq!(
        broken
            .put("/storage/col/b", &json!({"payload": "y"}))
            .await
            .status,
        503
    );
    // Everyone else is fine.
    assert_eq!(s.client(2).get("/storage/col").await.json(), json!(["a"]));
    assert_eq!(
        s.client(3)
            .put("/storage/col/a", &json!({"payload": "z"}))
            .await
            .status,
        200
    );
    let log = s.log_text();
    assert!(
        log.contains("uid=1") && log.contains("user file unavailable"),
        "{log}"
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_write_cleanly_and_recovers() {
    let s = Server::start(&[]);
    let (big, small) = (s.client(7), s.client(8));
    assert_eq!(
        big.put("/storage/col/early", &json!({"payload": "kept"}))
            .await
            .status,
        200
    );
    assert_eq!(
        small
            .put("/storage/col/a", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    // Limit every file the server writes to 400 KB (RLIMIT_FSIZE): a 1 MB record
    // cannot be written, as on a full disk.
    let pid = s.pid().to_string();
    let limit = |spec: &str| {
        let st = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={spec}")])
            .status()
            .unwrap();
        assert!(st.success());
    };
    limit("409600:unlimited");
    let huge = "x".repeat(1024 * 1024);
    let r = big
        .put("/storage/col/huge", &json!({ "payload": huge }))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    // Nothing half-written; earlier data readable; other users keep working.
    assert_eq!(big.get("/storage/col/huge").await.status, 404);
    assert_eq!(
        big.get("/storage/col/early").await.json()["payload"],
        "kept"
    );
    assert_eq!(
        small
            .put("/storage/col/b", &json!({"payload": "y"}))
            .await
            .status,
        200
    );
    assert!(
        s.log_text().contains("uid=7"),
        "the log names the user: {}",
        s.log_text()
    );
    // Space is back: the same write succeeds.
    limit("unlimited:unlimited");
    assert_eq!(
        big.put("/storage/col/huge", &json!({ "payload": huge }))
            .await
            .status,
        200
    );
    assert_eq!(
        big.get("/storage/col/huge").await.json()["payload"]
            .as_str()
            .unwrap()
            .len(),
        huge.len()
    );
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_threads_stay_bounded_with_20000_users() {
    const MAX_OPEN: usize = 100;
    const PER_USER: usize = 2;
    const BLOCKING: usize = 16;
    let s = Server::start(&[
        ("SYNCSTORE_MAX_OPEN_USERS", "100"),
        ("SYNCSTORE_CONNECTIONS_PER_USER", "2"),
        ("SYNCSTORE_MAX_BLOCKING_THREADS", "16"),
    ]);
    let fd_dir = format!("/proc/{}/fd", s.pid());
    let task_dir = format!("/proc/{}/task", s.pid());
    // Stated bound: each open user holds at most PER_USER connections of 3 descriptors
    // (database, WAL, shared memory), and so does each file the checkpoint thread is
    // closing (its queue, and the one in hand); 128 more for sockets, logs and the
    // tokenserver.
    const RETIRING: usize = syncstore::storage::RETIRING_MAX;
    let fd_bound = (MAX_OPEN + RETIRING) * PER_USER * 3 + 128;
    let thread_bound = BLOCKING + std::thread::available_parallelism().unwrap().get() + 8;
    let (mut max_fds, mut max_threads) = (0, 0);
    let started = Instant::now();
    let users: Vec<u64> = (1..=20_000).collect();
    for chunk in users.chunks(500) {
        let mut tasks = Vec::new();
        for part in chunk.chunks(63) {
            let clients: Vec<_> = part.iter().map(|u| s.client(*u)).collect();
            tasks.push(tokio::spawn(async move {
                for c in clients {
                    let r = c.put("/storage/tabs/t", &json!({"payload": "x"})).await;
                    assert_eq!(r.status, 200, "{}", r.text);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        max_fds = max_fds.max(count_dir(&fd_dir));
        max_threads = max_threads.max(count_dir(&task_dir));
    }
    assert!(max_fds <= fd_bound, "{max_fds} descriptors > {fd_bound}");
    assert!(
        max_threads <= thread_bound,
        "{max_threads} threads > {thread_bound}"
    );
    let files = (0..1000)
        .map(|shard| count_dir(&format!("{}/users/{shard:03}", s.data.path().display())))
        .sum::<usize>();
    assert!(files >= 20_000, "every user has a file ({files})");
    // Early users (long evicted) still have their data.
    assert_eq!(s.client(1).get("/storage/tabs").await.json(), json!(["t"]));
    eprintln!(
        "20,000 users in {:?}: at most {max_fds} descriptors (bound {fd_bound}), {max_threads} threads (bound {thread_bound})",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_and_greedy_clients_are_cut_off() {
    let s = Server::start(&[
        ("SYNCSTORE_HEADER_READ_TIMEOUT_SECS", "1"),
        ("SYNCSTORE_BODY_READ_TIMEOUT_SECS", "1"),
    ]);
    // Headers that never finish: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    slow.write_all(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the slow connection");
    // A body that never finishes: 408.
    let c = s.client(5);
    let path = "/1.5/5/storage/col/a";
    let auth = c.authorization("PUT", path, common::now());
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"payload\"",
        s.addr
    );
    let mut body_slow = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    body_slow.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), body_slow.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(c.get("/storage/col/a").await.status, 404);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_their_turn() {
    let s = Server::start(&[
        ("SYNCSTORE_MAX_CONNECTIONS", "3"),
        ("SYNCSTORE_HEADER_READ_TIMEOUT_SECS", "60"),
    ]);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&s.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = s.addr.clone();
    let waiting = tokio::spawn(async move {
        raw_http(
            &addr,
            "GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three are open"
    );
    drop(idle.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn files_and_folders_are_owner_only() {
    let s = Server::start(&[("SYNCSTORE_SECRETS", "")]);
    s.client(0)
        .raw("GET", "/__heartbeat__", &[], None, false)
        .await;
    let secret = std::fs::read_to_string(s.data.path().join("secret")).unwrap();
    let (id, key) = common::token(secret.trim(), 9, &s.url(), 60.0);
    let c = common::Client::with_token(&s, 9, id, key);
    assert_eq!(
        c.put("/storage/col/a", &json!({"payload": "x"}))
            .await
            .status,
        200
    );
    let file = user_file(&s, 9);
    let mut paths = vec![
        s.data.path().join("secret"),
        s.data.path().join("tokenserver.sqlite"),
        s.data.path().join("users"),
        file.parent().unwrap().to_path_buf(),
    ];
    for ext in ["", "-wal", "-shm"] {
        paths.push(std::path::PathBuf::from(format!("{}{ext}", file.display())));
    }
    for p in paths {
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", p.display(), mode & 0o777);
    }
}

/// A server started under a low soft limit on open descriptors (1,024 is a common
/// default, below what the default settings can hold open) raises it to the hard
/// limit for itself.
///
/// The low limit is set in the child alone, between fork and exec: the tests share
/// one process, and lowering this process's own limit, even briefly, would lower it
/// for every test running meanwhile (and for the servers they start), and could undo
/// another test's raise (security_net raises it to hold thousands of sockets).
#[test]
fn server_raises_its_soft_descriptor_limit() {
    use std::os::unix::process::CommandExt;

    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a local rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) },
        0
    );
    // The server inherits the lowered soft limit from the child it was spawned in.
    let low = ours.rlim_cur.min(ours.rlim_max / 2).max(64);
    let lowered = libc::rlimit {
        rlim_cur: low,
        rlim_max: ours.rlim_max,
    };
    let s = Server::start_with(tempfile::tempdir().unwrap(), "127.0.0.1:0", &[], |cmd| {
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setrlimit (async-signal-safe) with a copied local; lowering the soft limit
        // is allowed.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(
        low < ours.rlim_max,
        "no room to raise in this environment: {line}"
    );
    let hard = match ours.rlim_max {
        libc::RLIM_INFINITY => "unlimited".to_string(),
        n => n.to_string(),
    };
    assert_eq!(fields[3], hard, "soft limit: {line}");
    assert_eq!(fields[4], hard, "hard limit: {line}");
}
