//! Unauthenticated denial of service on the public listener, seen from outside: idle
//! and silent connections, one address taking every connection slot, client strings
//! growing metrics and logs, concurrent health checks. Every test talks to the real
//! server binary over 127.0.0.0/8 only, with bounded counts and times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The client preface every HTTP/2 connection starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Raises this process's soft limit on open descriptors to the hard one (the tests
/// here hold thousands of sockets; a common soft default is 1,024).
fn raise_descriptor_limit(wanted: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= wanted as libc::rlim_t,
        "this test needs {wanted} descriptors; the hard limit is {}",
        lim.rlim_cur
    );
}

/// A TCP connection to `server` from the local address `from` (any of 127.0.0.0/8).
async fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(server))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Reads (and discards) until the server closes the connection; false if it is still
/// open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends one HTTP/1.1 request for `/__lbheartbeat__` on `stream` (kept alive) and
/// tells whether a 200 came back within 5 s.
async fn lbheartbeat_on(stream: &mut TcpStream) -> bool {
    let request = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

fn addr(server: &Server) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// 4,096 silent connections (the default `max_connections`) from 127.0.0.2 used to
/// take every connection slot and hold it: `/__lbheartbeat__` from another address
/// went unanswered. Now one address holds at most `max_connections_per_address`, the
/// rest are closed at once, and silent ones are closed after the first-byte timeout.
///
/// Each check may take up to 5 s: while the flood fills the kernel's listen backlog a
/// connect waits out a SYN retransmission (1 s, then 3 s), which is the kernel's doing
/// and no slot held by the server. A server that let the flood hold its slots would
/// keep the heartbeat waiting for the whole first-byte timeout, set here to 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_one_address_leave_the_heartbeat_answering() {
    const SOCKETS: usize = 4096;
    const FIRST_BYTE_TIMEOUT: u64 = 15;
    raise_descriptor_limit(SOCKETS as u64 + 512);
    let server = Server::start(&[(
        "SYNCSTORE_FIRST_BYTE_TIMEOUT_SECS",
        &FIRST_BYTE_TIMEOUT.to_string(),
    )]);
    let target = addr(&server);
    let opener = tokio::spawn(async move {
        let mut held = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            // A connect the server's backlog dropped is no failure of the server.
            if let Ok(s) = connect_from("127.0.0.2", target).await {
                held.push(s);
            }
        }
        held
    });
    // Fresh connections (no pooling), so each check goes through accept.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{}/__lbheartbeat__", server.url());
    let started = Instant::now();
    let mut checks = 0;
    while !opener.is_finished() || started.elapsed() < Duration::from_secs(4) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "opening the sockets took too long"
        );
        let r = http.get(&url).send().await;
        let status = r.as_ref().map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(200)),
            "check {checks}: /__lbheartbeat__ did not answer within 5 s: {r:?}"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = opener.await.unwrap();
    assert!(held.len() > SOCKETS / 2, "only {} connected", held.len());
    // Every silent socket is closed by the server: at once when over the per-address
    // cap, else after the first-byte timeout.
    let deadline = Instant::now() + Duration::from_secs(FIRST_BYTE_TIMEOUT + 10);
    let mut open = 0;
    for s in &mut held {
        if !closed_by(s, deadline).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "silent sockets still open after the timeout");
    assert!(checks >= 10, "{checks}");
}

/// Connections that send nothing, only (part of) the HTTP/2 preface, or that stay
/// idle after a request, are closed by the server within its timeouts.
#[tokio::test]
async fn silent_preface_only_and_idle_connections_are_closed() {
    let server = Server::start(&[
        ("SYNCSTORE_FIRST_BYTE_TIMEOUT_SECS", "1"),
        ("SYNCSTORE_IDLE_TIMEOUT_SECS", "2"),
        ("SYNCSTORE_HTTP2_KEEP_ALIVE_SECS", "1"),
    ]);
    let target = addr(&server);
    let settings_frame: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("silent", vec![]),
        ("part of the HTTP/2 preface", H2_PREFACE[..10].to_vec()),
        ("the HTTP/2 preface", H2_PREFACE.to_vec()),
        (
            "the HTTP/2 preface and SETTINGS",
            [H2_PREFACE, settings_frame].concat(),
        ),
        (
            "an HTTP/1.1 request, then nothing",
            b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
    ];
    let mut tasks = Vec::new();
    for (name, bytes) in cases {
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from("127.0.0.1", target).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let closed = closed_by(&mut s, Instant::now() + Duration::from_secs(10)).await;
            (name, closed)
        }));
    }
    for t in tasks {
        let (name, closed) = t.await.unwrap();
        assert!(closed, "{name}: still open after 10 s");
    }
    // A client that keeps using its connection keeps it.
    let mut s = connect_from("127.0.0.1", target).await.unwrap();
    for _ in 0..3 {
        assert!(lbheartbeat_on(&mut s).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One address holds at most `max_connections_per_address` connections; a trusted
/// proxy's address is not capped.
#[tokio::test]
async fn one_address_is_capped_but_a_trusted_proxy_is_not() {
    let server = Server::start(&[
        ("SYNCSTORE_MAX_CONNECTIONS_PER_ADDRESS", "4"),
        ("SYNCSTORE_TRUSTED_PROXIES", "127.0.0.3, 10.0.0.0/8"),
    ]);
    let target = addr(&server);
    for (from, want) in [("127.0.0.2", 4), ("127.0.0.3", 8)] {
        let mut held = Vec::new();
        let mut answered = 0;
        for _ in 0..8 {
            let mut s = connect_from(from, target).await.unwrap();
            if lbheartbeat_on(&mut s).await {
                answered += 1;
            }
            held.push(s);
        }
        assert_eq!(answered, want, "from {from}");
    }
    // The capped address's slots came back when its connections ended (the server
    // sees the close within moments).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from("127.0.0.2", target).await.unwrap();
        if lbheartbeat_on(&mut s).await {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.2 stays refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invented long methods and long paths used to become metric labels and log text:
/// the exposition grew with every new method, each log line carried the method whole.
#[tokio::test]
async fn invented_methods_and_long_paths_stay_out_of_metrics_and_log() {
    const REQUESTS: usize = 300;
    let server = Server::start(&[("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0")]);
    let http = reqwest::Client::new();
    for i in 0..REQUESTS {
        let method = format!("X{i:04}{}", "Y".repeat(1000));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let path = match i % 3 {
            0 => format!("/{}{i}", "p".repeat(4000)),
            1 => format!("/1.5/{i}/storage/{}", "c".repeat(4000)),
            _ => "/__lbheartbeat__".to_string(),
        };
        let r = http
            .request(method, format!("{}{path}", server.url()))
            .header("user-agent", "U".repeat(4000))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // Request lines are written after the responses: wait for the last.
    let deadline = Instant::now() + Duration::from_secs(10);
    let request_lines = || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("syncstore::access"))
            .count()
    };
    while request_lines() < REQUESTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(request_lines(), REQUESTS);
    let text = reqwest::get(format!("{}/__metrics__", server.metrics_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        text.len() < 64 * 1024,
        "metrics grew to {} bytes",
        text.len()
    );
    let log = server.log.lock().unwrap();
    let longest = log.iter().map(String::len).max().unwrap_or(0);
    assert!(longest <= 1024, "a log line of {longest} bytes");
}

/// Concurrent `/__heartbeat__`s used to collide on their probe file (503s and
/// "readonly database" errors on a healthy node); now all answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_health_checks_all_succeed() {
    const CHECKERS: usize = 32;
    let server = Server::start(&[]);
    let http = reqwest::Client::new();
    let url = format!("{}/__heartbeat__", server.url());
    let until = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..CHECKERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < until {
                let r = http.get(&url).send().await.unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let bad: Vec<_> = all.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} checks failed: {:?}",
        bad.len(),
        all.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(all.len() >= CHECKERS, "{}", all.len());
    let errors: Vec<String> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("heartbeat:"))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
