//! `loadgen`: a Sync load generator. It speaks tokenlib + Hawk like a real client (a
//! fresh nonce per request) and replays the Sync mix against a storage node (or, with
//! `--workload login-flood`, keeps signing in to accounts of the accounts service; with
//! `tokens`, asks the tokenserver for storage tokens with the accounts' OAuth tokens;
//! with `logins`, sends failing sign-ins for unknown emails from many addresses), then
//! reports throughput, latency percentiles per request kind, every non-2xx status, the
//! server's peak RSS and open descriptors (with `--pid`) and its own CPU time, as JSON,
//! a Markdown table and an SVG latency plot.
//!
//! Only 127.0.0.1 targets are accepted; every run is bounded by `--duration` and
//! `--sessions`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use syncstore::auth::hawk::{HawkHeader, SignedRequest, compute_mac};
use syncstore::auth::token::{TokenPayload, make_token, new_salt};

/// Replays the Sync mix (or one request kind) against a syncstore storage node.
#[derive(Parser, Clone)]
struct Args {
    /// Base URL of the node (must be on 127.0.0.1 / localhost).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The node's master secret (tokens are minted locally, as a tokenserver would).
    #[arg(long, env = "SYNCSTORE_SECRETS")]
    secret: String,
    /// Users to draw from (Zipf, s = 1): uids 1..=users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Stop after this many seconds (of measurement, after `--warmup`).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Run the workload this many seconds before measuring: requests started during
    /// the warm-up are not counted, and the elapsed time and the server's and this
    /// process's CPU count from its end (the server's peak RSS covers the whole run).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Stop after this many sessions (0: no limit besides the duration).
    #[arg(long, default_value_t = 0)]
    sessions: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Mix)]
    workload: Workload,
    /// The server's pid, to sample its RSS and open descriptors.
    #[arg(long)]
    pid: Option<u32>,
    /// Write `<name>.json`, `<name>.md` and `<name>.svg` here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of this run in the output files.
    #[arg(long, default_value = "run")]
    name: String,
    /// login-flood: the accounts' email; `{}` is replaced by the connection's account
    /// number (connection i signs in to account i mod `--accounts`).
    #[arg(long, default_value = "flood-{}@bench.example")]
    email: String,
    /// login-flood: the accounts' password (as given to `syncstore account add`).
    #[arg(long, default_value = "bench flood password")]
    password: String,
    /// login-flood: how many accounts the connections share.
    #[arg(long, default_value_t = 1)]
    accounts: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// The Sync mix: info/collections, three incremental GETs, a history POST, a
    /// client-record PUT, and every 20th session a 4 × 100 record batch upload.
    Mix,
    /// `GET info/collections` only.
    InfoCollections,
    /// One PUT per user, uids 1..=users in order (to create the users' files).
    Prefill,
    /// `POST /v1/account/login` with the correct authPW, over and over (the accounts
    /// service's password hardening under a flood of successful sign-ins).
    LoginFlood,
    /// `GET /1.0/sync/1.5` (the tokenserver) with an OAuth access token of one of
    /// `--accounts` accounts, each signed in once before the run, as Firefox gets one.
    Tokens,
    /// `POST /v1/account/login` for a new unknown email each time, each connection
    /// moving to a new client address in 127.0.0.0/8 every 10 sign-ins (the accounts
    /// service's attempt limits and their tables under load; no password hardening).
    Logins,
}

/// Cumulative distribution of Zipf(s = 1) over ranks 1..=n.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: u64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / k as f64;
            cdf.push(sum);
        }
        cdf.iter_mut().for_each(|c| *c /= sum);
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut StdRng) -> u64 {
        let u: f64 = rng.random();
        self.0.partition_point(|c| *c < u) as u64 + 1
    }
}

/// Latencies and statuses per request kind.
#[derive(Default)]
struct Stats {
    kinds: BTreeMap<&'static str, Histogram<u64>>,
    statuses: BTreeMap<(&'static str, u16), u64>,
    failures: u64,
    sessions: u64,
}

impl Stats {
    fn record(&mut self, kind: &'static str, micros: u64, status: u16) {
        self.kinds
            .entry(kind)
            .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))
            .saturating_record(micros.max(1));
        if !(200..300).contains(&status) {
            *self.statuses.entry((kind, status)).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Stats) {
        for (k, h) in other.kinds {
            match self.kinds.get_mut(k) {
                Some(mine) => mine.add(&h).expect("same bounds"),
                None => {
                    self.kinds.insert(k, h);
                }
            }
        }
        for (k, n) in other.statuses {
            *self.statuses.entry(k).or_default() += n;
        }
        self.failures += other.failures;
        self.sessions += other.sessions;
    }
}

/// mimalloc, as in the server: the generator shares the cores with the server it
/// measures, and glibc's malloc was a sixth of its CPU (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One simulated device of many users, on its own connection.
struct Worker {
    http: reqwest::Client,
    args: Args,
    host: String,
    port: u16,
    rng: StdRng,
    stats: Stats,
    /// Each user's last sync time per collection (for `newer=`), shared by all workers.
    last_sync: Arc<Mutex<BTreeMap<(u64, &'static str), String>>>,
    /// login-flood: the sign-in body (email and authPW) this connection sends.
    login: Option<Value>,
    /// tokens: the access token and X-KeyID this connection sends.
    oauth: Option<(String, String)>,
    /// logins: sign-ins sent so far, and the number of this connection.
    sent: u64,
    index: usize,
    /// When the warm-up ends: only requests started from then on are counted.
    measure_from: Instant,
}

impl Worker {
    fn auth(&mut self, token: &(String, String), method: &str, path: &str) -> String {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let h = HawkHeader {
            id: token.0.clone(),
            ts,
            ts_raw: ts.to_string(),
            nonce: hex::encode(self.rng.random::<[u8; 8]>()),
            mac: String::new(),
            hash: None,
            ext: None,
        };
        let mac = compute_mac(
            token.1.as_bytes(),
            &h,
            &SignedRequest {
                method,
                path_and_query: path,
                host: &self.host,
                port: self.port,
            },
        );
        format!(
            "Hawk id=\"{}\", ts=\"{}\", nonce=\"{}\", mac=\"{mac}\"",
            h.id, h.ts_raw, h.nonce
        )
    }

    fn token(&self, uid: u64) -> (String, String) {
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
            + 3600.0;
        make_token(
            &self.args.secret,
            &TokenPayload {
                uid,
                node: self.args.url.clone(),
                expires,
                salt: new_salt(),
                fxa_uid: Some(format!("loadgen-{uid}")),
                fxa_kid: None,
                hashed_fxa_uid: None,
                hashed_device_id: None,
            },
        )
    }

    /// Sends one request and reads the whole answer; returns the status, body and
    /// X-Last-Modified (or None if the connection failed). The body is left unparsed:
    /// only a batch's start needs anything from it.
    async fn call(
        &mut self,
        kind: &'static str,
        token: &(String, String),
        method: &str,
        path: String,
        body: Option<Value>,
    ) -> Option<(u16, bytes::Bytes, Option<String>)> {
        let auth = self.auth(token, method, &path);
        let url = format!("{}{}", self.args.url, path);
        let mut req = self
            .http
            .request(method.parse().expect("method"), url)
            .header("authorization", auth);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let started = Instant::now();
        let result = async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let last_modified = r
                .headers()
                .get("x-last-modified")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes, last_modified))
        }
        .await;
        let micros = started.elapsed().as_micros() as u64;
        let counted = started >= self.measure_from;
        match result {
            Ok((status, bytes, last_modified)) => {
                if counted {
                    self.stats.record(kind, micros, status);
                }
                Some((status, bytes, last_modified))
            }
            Err(_) => {
                if counted {
                    self.stats.failures += 1;
                }
                None
            }
        }
    }

    fn records(&mut self, prefix: &str, n: usize) -> Value {
        let payload: String = (0..500)
            .map(|_| self.rng.random_range(b'a'..=b'z') as char)
            .collect();
        Value::Array(
            (0..n)
                .map(|i| json!({"id": format!("{prefix}{:06}", self.rng.random_range(0..1_000_000) + i), "payload": payload, "sortindex": i}))
                .collect(),
        )
    }

    async fn session(&mut self, uid: u64, session: u64) {
        let counted = Instant::now() >= self.measure_from;
        let base = format!("/1.5/{uid}");
        match self.args.workload {
            Workload::InfoCollections => {
                let token = self.token(uid);
                self.call(
                    "info/collections",
                    &token,
                    "GET",
                    format!("{base}/info/collections"),
                    None,
                )
                .await;
            }
            Workload::Prefill => {
                let token = self.token(uid);
                let body = json!({"payload": "x".repeat(500)});
                self.call(
                    "prefill PUT",
                    &token,
                    "PUT",
                    format!("{base}/storage/clients/device"),
                    Some(body),
                )
                .await;
            }
            Workload::Mix => {
                let token = self.token(uid);
                self.mix(uid, session, &token, &base).await;
            }
            // The accounts service's and tokenserver's workloads need no storage token.
            Workload::LoginFlood => self.login().await,
            Workload::Tokens => self.sync_token().await,
            Workload::Logins => self.failing_login().await,
        }
        if counted {
            self.stats.sessions += 1;
        }
    }

    /// One sign-in with the connection's account; its answer read whole.
    async fn login(&mut self) {
        let body = self.login.clone().expect("login-flood has a sign-in body");
        let req = self
            .http
            .post(format!("{}/v1/account/login", self.args.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send_timed("POST login", req).await;
    }

    /// One tokenserver request with this connection's access token.
    async fn sync_token(&mut self) {
        let (access, key_id) = self.oauth.clone().expect("tokens has an access token");
        let req = self
            .http
            .get(format!("{}/1.0/sync/1.5", self.args.url))
            .bearer_auth(access)
            .header("x-keyid", key_id);
        self.send_timed("GET /1.0/sync/1.5", req).await;
    }

    /// One sign-in for an unknown email (400 errno 102, or 429 when an address's
    /// failures are spent), from the connection's current client address.
    async fn failing_login(&mut self) {
        if self.sent.is_multiple_of(10) {
            // 127.<1 + connection>.<hi>.<lo>: a new address every 10 sign-ins.
            let n = self.sent / 10;
            let ip = std::net::Ipv4Addr::new(
                127,
                1 + (self.index % 200) as u8,
                (n / 254 % 256) as u8,
                (n % 254 + 1) as u8,
            );
            self.http = reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(ip))
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client");
        }
        self.sent += 1;
        let email = format!("nobody-{}@bench.example", self.rng.random::<u64>());
        let body = json!({"email": email, "authPW": hex::encode(self.rng.random::<[u8; 32]>())});
        let req = self
            .http
            .post(format!("{}/v1/account/login", self.args.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send_timed("POST login (unknown)", req).await;
    }

    /// Sends `req`, reads its answer whole and records its status and time as `kind`.
    async fn send_timed(&mut self, kind: &'static str, req: reqwest::RequestBuilder) {
        let started = Instant::now();
        let result = async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            r.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        }
        .await;
        let micros = started.elapsed().as_micros() as u64;
        if started < self.measure_from {
            return;
        }
        match result {
            Ok(status) => self.stats.record(kind, micros, status),
            Err(_) => self.stats.failures += 1,
        }
    }

    async fn mix(&mut self, uid: u64, session: u64, token: &(String, String), base: &str) {
        let info = format!("{base}/info/collections");
        if self
            .call("GET info/collections", token, "GET", info, None)
            .await
            .is_none()
        {
            return;
        }
        // Like a real client, fetch what changed since each collection's last sync.
        for coll in ["bookmarks", "history", "tabs"] {
            let since = self
                .last_sync
                .lock()
                .expect("lock")
                .get(&(uid, coll))
                .cloned();
            let since = since.unwrap_or_else(|| "0".into());
            let path = format!("{base}/storage/{coll}?newer={since}&full=1");
            let answer = self
                .call("GET storage?newer", token, "GET", path, None)
                .await;
            if let Some((200, _, Some(modified))) = answer {
                self.last_sync
                    .lock()
                    .expect("lock")
                    .insert((uid, coll), modified);
            }
        }
        let n = self.rng.random_range(1..=20);
        let body = self.records("h", n);
        let history = format!("{base}/storage/history");
        self.call("POST history", token, "POST", history, Some(body))
            .await;
        let client =
            json!({"payload": format!("{{\"name\":\"device {uid}\",\"type\":\"desktop\"}}")});
        self.call(
            "PUT client",
            token,
            "PUT",
            format!("{base}/storage/clients/c{uid}"),
            Some(client),
        )
        .await;
        if session.is_multiple_of(20) {
            let body = self.records("b", 100);
            let started = self
                .call(
                    "batch",
                    token,
                    "POST",
                    format!("{base}/storage/bookmarks?batch=true"),
                    Some(body),
                )
                .await;
            let id = started
                .and_then(|(_, body, _)| serde_json::from_slice::<Value>(&body).ok())
                .and_then(|v| v["batch"].as_str().map(str::to_string));
            if let Some(id) = id {
                for _ in 0..2 {
                    let body = self.records("b", 100);
                    self.call(
                        "batch",
                        token,
                        "POST",
                        format!("{base}/storage/bookmarks?batch={id}"),
                        Some(body),
                    )
                    .await;
                }
                let body = self.records("b", 100);
                let path = format!("{base}/storage/bookmarks?batch={id}&commit=true");
                self.call("batch", token, "POST", path, Some(body)).await;
            }
        }
    }
}

/// What the server process used during a run.
#[derive(Debug, Clone, Copy)]
struct ServerUse {
    /// Peak resident set, KB.
    rss_kb: u64,
    /// Peak open descriptors.
    fds: usize,
    /// CPU seconds (user + system) used during the run.
    cpu_secs: f64,
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// Samples a process until `stop` (RSS every 100 ms, descriptors every 500 ms): peak
/// RSS and descriptors over the whole run, CPU used from `measure_from` on.
fn sample_process(
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    measure_from: Instant,
) -> ServerUse {
    let (mut rss, mut fds) = (0, 0);
    let mut cpu_before = None;
    for round in 0u64.. {
        if cpu_before.is_none() && Instant::now() >= measure_from {
            cpu_before = Some(process_cpu_secs(pid));
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:"))
        {
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            rss = rss.max(kb);
        }
        // Listing ~1,500 descriptors costs the server's descriptor-table lock too;
        // their count moves slowly (the open-user LRU bounds it).
        if round % 5 == 0 {
            fds = fds.max(
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0),
            );
        }
        // Wake at the end of the warm-up too, to read the CPU used before it.
        let until_measured = measure_from.saturating_duration_since(Instant::now());
        let nap = Duration::from_millis(100);
        std::thread::sleep(if until_measured.is_zero() {
            nap
        } else {
            until_measured.min(nap)
        });
    }
    let now = process_cpu_secs(pid);
    ServerUse {
        rss_kb: rss,
        fds,
        cpu_secs: now - cpu_before.unwrap_or(now),
    }
}

/// CPU seconds (user + system) this process has used.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn report(
    args: &Args,
    stats: &Stats,
    elapsed: f64,
    server: Option<ServerUse>,
    cpu: f64,
) -> (Value, String) {
    let total: u64 = stats.kinds.values().map(|h| h.len()).sum();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut kinds = serde_json::Map::new();
    let mut md = String::from(
        "| request | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for (k, h) in &stats.kinds {
        all.add(h).expect("same bounds");
        kinds.insert(k.to_string(), json!({"count": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99), "max_ms": h.max() as f64 / 1000.0}));
        let _ = writeln!(
            md,
            "| {k} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            h.len(),
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    if total > 0 {
        let _ = writeln!(
            md,
            "| **all** | {total} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(&all, 0.5),
            ms(&all, 0.9),
            ms(&all, 0.99),
            all.max() as f64 / 1000.0
        );
    }
    let errors: BTreeMap<String, u64> = stats
        .statuses
        .iter()
        .map(|((k, s), n)| (format!("{k} {s}"), *n))
        .collect();
    let rps = total as f64 / elapsed;
    let summary = json!({
        "name": args.name, "workload": format!("{:?}", args.workload), "users": args.users,
        "connections": args.connections, "seconds": elapsed, "requests": total, "requests_per_sec": rps,
        "sessions": stats.sessions, "sessions_per_sec": stats.sessions as f64 / elapsed,
        "p50_ms": if total > 0 { ms(&all, 0.5) } else { 0.0 }, "p99_ms": if total > 0 { ms(&all, 0.99) } else { 0.0 },
        "non_2xx": errors, "connection_failures": stats.failures,
        "server_peak_rss_mb": server.map(|s| s.rss_kb as f64 / 1024.0), "server_peak_fds": server.map(|s| s.fds),
        "server_cpu_secs": server.map(|s| s.cpu_secs),
        "server_cpu_us_per_request": server.map(|s| s.cpu_secs * 1e6 / total.max(1) as f64),
        "loadgen_cpu_secs": cpu, "kinds": kinds,
    });
    let mut head = format!(
        "**{}**: {} users, {} connections, {:.1} s — **{:.0} req/s**, {:.0} sessions/s, p99 {:.2} ms, {} non-2xx, {} connection failures",
        args.name,
        args.users,
        args.connections,
        elapsed,
        rps,
        stats.sessions as f64 / elapsed,
        summary["p99_ms"].as_f64().unwrap_or(0.0),
        stats.statuses.values().sum::<u64>(),
        stats.failures
    );
    if let Some(s) = server {
        let _ = write!(
            head,
            "; server peak RSS {:.1} MB, {} descriptors, CPU {:.1} s ({:.0} µs a request)",
            s.rss_kb as f64 / 1024.0,
            s.fds,
            s.cpu_secs,
            s.cpu_secs * 1e6 / total.max(1) as f64
        );
    }
    let _ = write!(head, "; loadgen CPU {cpu:.1} s\n\n");
    for ((k, s), n) in &stats.statuses {
        let _ = writeln!(head, "- {k}: {n} × {s}");
    }
    (summary, format!("{head}\n{md}"))
}

/// An SVG plot of latency by percentile (log scale), one line per request kind.
fn svg(stats: &Stats, title: &str) -> String {
    let (w, h, pad) = (720.0, 420.0, 60.0);
    let max_ms = stats
        .kinds
        .values()
        .map(|h| h.max() as f64 / 1000.0)
        .fold(1.0, f64::max);
    let nines = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999];
    let x = |q: f64| pad + (-(1.0 - q).max(1e-4).log10()) / 4.0 * (w - 2.0 * pad);
    let y = |ms: f64| h - pad - (ms / max_ms) * (h - 2.0 * pad);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    ];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}: latency by percentile</text>\n"
    );
    let _ = writeln!(
        out,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for q in nines {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">p{}</text>",
            x(q),
            h - pad + 16.0,
            q * 100.0
        );
    }
    for i in 0..=4 {
        let ms = max_ms * i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.1} ms</text>",
            pad - 4.0,
            y(ms) + 4.0
        );
    }
    for (i, (kind, hist)) in stats.kinds.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = (0..=200)
            .map(|j| {
                let q = 1.0 - 10f64.powf(-(j as f64) / 50.0);
                let q = q.min(0.9999);
                format!(
                    "{:.1},{:.1}",
                    x(q),
                    y(hist.value_at_quantile(q) as f64 / 1000.0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{kind}</text>",
            pad + 10.0,
            pad + 14.0 * i as f64
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Signs in with `login` (email and authPW), then gets what Firefox sends the
/// tokenserver: an OAuth access token for Sync (`fxa-credentials` grant with the session
/// as a Bearer token) and X-KeyID (`keyRotationTimestamp` from scoped-key-data and a
/// client state, here a hash of the email).
async fn access_token(url: &str, login: &Value) -> (String, String) {
    const FIREFOX: &str = "5882386c6d801776";
    const SYNC: &str = "https://identity.mozilla.com/apps/oldsync";
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: Value, bearer: Option<String>| {
        let mut req = http.post(format!("{url}{path}")).json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        async move {
            let r = req.send().await.expect("accounts service reachable");
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{path}: {status} {v}");
            v
        }
    };
    let signed_in = post("/v1/account/login", login.clone(), None).await;
    let session: [u8; 32] = hex::decode(signed_in["sessionToken"].as_str().expect("sessionToken"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let keys = syncstore::accounts::crypto::token_keys(&session, "sessionToken");
    let bearer = format!("fxs_{}", hex::encode(keys.id));
    let scoped = post(
        "/v1/account/scoped-key-data",
        json!({"client_id": FIREFOX, "scope": SYNC}),
        Some(bearer.clone()),
    )
    .await;
    let rotated = scoped[SYNC]["keyRotationTimestamp"]
        .as_i64()
        .expect("keyRotationTimestamp");
    let grant = post(
        "/v1/oauth/token",
        json!({"grant_type": "fxa-credentials", "client_id": FIREFOX, "scope": SYNC, "ttl": 86_400}),
        Some(bearer),
    )
    .await;
    let access = grant["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    use sha2::Digest as _;
    let state = sha2::Sha256::digest(login["email"].as_str().unwrap_or("").as_bytes());
    use base64::Engine as _;
    let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&state[..16]);
    (access, format!("{rotated}-{state}"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let uri: reqwest::Url = args.url.parse().expect("--url must be a URL");
    let host = uri.host_str().unwrap_or("").to_string();
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "loadgen only targets 127.0.0.1 or localhost, not {host}"
    );
    let port = uri.port_or_known_default().unwrap_or(80);
    let zipf = Arc::new(Zipf::new(args.users.max(1)));
    let last_sync = Arc::new(Mutex::new(BTreeMap::new()));
    let next_session = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The accounts' sign-in bodies: authPW as a client derives it from the password
    // (quickStretch, then HKDF), once per account.
    let logins: Vec<Value> = (0..args.accounts.max(1))
        .map(|i| {
            let email = args.email.replace("{}", &i.to_string());
            let stretched = syncstore::accounts::crypto::quick_stretch(&email, &args.password);
            let auth_pw = syncstore::accounts::crypto::auth_pw(&stretched);
            json!({"email": email, "authPW": hex::encode(auth_pw)})
        })
        .collect();
    // tokens: each account signed in once, with an access token and X-KeyID as Firefox
    // makes them (the run's own requests are only the tokenserver's).
    let mut oauth = Vec::new();
    if args.workload == Workload::Tokens {
        for body in &logins {
            oauth.push(access_token(&args.url, body).await);
        }
    }
    // The run's time starts after the sign-ins above, and is measured from the end of
    // the warm-up.
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let deadline = measure_from + Duration::from_secs(args.duration);
    let sampler = args.pid.map(|pid| {
        let stop = stop.clone();
        // Its own thread: reading /proc blocks, and the workers' threads are timing.
        std::thread::spawn(move || sample_process(pid, stop, measure_from))
    });
    let mut tasks = Vec::new();
    for w in 0..args.connections {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let mut worker = Worker {
            http,
            args: args.clone(),
            host: host.clone(),
            port,
            rng: StdRng::seed_from_u64(args.seed * 1_000_003 + w as u64),
            stats: Stats::default(),
            last_sync: last_sync.clone(),
            login: (args.workload == Workload::LoginFlood)
                .then(|| logins[w % logins.len()].clone()),
            oauth: (!oauth.is_empty()).then(|| oauth[w % oauth.len()].clone()),
            sent: 0,
            index: w,
            measure_from,
        };
        let (zipf, next_session) = (zipf.clone(), next_session.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let session = next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let limit_reached = match worker.args.workload {
                    Workload::Prefill => session >= worker.args.users,
                    _ => worker.args.sessions > 0 && session >= worker.args.sessions,
                };
                if limit_reached || Instant::now() >= deadline {
                    break;
                }
                let uid = match worker.args.workload {
                    Workload::Prefill => session + 1,
                    _ => zipf.sample(&mut worker.rng),
                };
                worker.session(uid, session).await;
            }
            worker.stats
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = own_cpu_secs();
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.expect("worker"));
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let server = sampler.map(|s| s.join().expect("sampler"));
    let (summary, md) = report(&args, &stats, elapsed, server, own_cpu_secs() - cpu_before);
    println!("{md}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).expect("output dir");
        let write = |ext: &str, text: String| {
            std::fs::write(dir.join(format!("{}.{ext}", args.name)), text).expect("write results")
        };
        write(
            "json",
            serde_json::to_string_pretty(&summary).expect("json"),
        );
        write("md", md);
        write("svg", svg(&stats, &args.name));
    }
}
