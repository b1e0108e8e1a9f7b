//! Test support: start the real `syncstore` binary on a random port and talk to it
//! over HTTP with Hawk-signed requests, as a Sync client would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use syncstore::auth::hawk::{HawkHeader, SignedRequest, compute_mac};
use syncstore::auth::token::{TokenPayload, make_token, new_salt};

pub mod fxa;

/// The master secret the test servers are started with.
pub const SECRET: &str = "test-master-secret";

/// A running server process, killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The server's data directory (removed on drop).
    pub data: tempfile::TempDir,
    /// Everything the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with default settings plus `env`.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        Self::start_in(data, env)
    }

    /// Starts a server on an existing data dir.
    pub fn start_in(data: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        Self::start_at(data, "127.0.0.1:0", env)
    }

    /// Starts a server on an existing data dir and a given address (a restart keeps
    /// its URL).
    pub fn start_at(data: tempfile::TempDir, listen: &str, env: &[(&str, &str)]) -> Server {
        Self::start_with(data, listen, env, |_| {})
    }

    /// Starts a server as [`Server::start_at`] does, after `prepare` has had the
    /// command: a test that needs the server started in a different process state
    /// (a resource limit, …) sets it there for the child alone, as the tests share
    /// one process.
    pub fn start_with(
        data: tempfile::TempDir,
        listen: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command),
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncstore"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data.path())
            .env("SYNCSTORE_SECRETS", SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        prepare(&mut cmd);
        let mut child = cmd.spawn().expect("spawn syncstore");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr = addr
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        Server {
            child,
            addr,
            data,
            log,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The metrics listener's base URL, for a server started with
    /// `SYNCSTORE_METRICS_LISTEN` (e.g. `127.0.0.1:0`): read from its log.
    pub fn metrics_url(&self) -> String {
        let log = self.log.lock().unwrap();
        let addr = log
            .iter()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .unwrap_or_else(|| panic!("no metrics listener: {log:?}"));
        let addr: String = addr
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        format!("http://{addr}")
    }

    /// The value of one series (`name{labels}` as exposed) on the metrics listener
    /// (see [`Server::metrics_url`]); 0 when it is not exposed yet.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/__metrics__", self.metrics_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// A client for `uid` with a fresh token.
    pub fn client(&self, uid: u64) -> Client {
        Client::new(self, uid, 3600.0)
    }

    /// Stops the server and returns its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mints a token for `uid` on `node`, expiring `ttl` seconds from now.
pub fn token(secret: &str, uid: u64, node: &str, ttl: f64) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    make_token(
        secret,
        &TokenPayload {
            uid,
            node: node.into(),
            expires: now + ttl,
            salt: new_salt(),
            fxa_uid: Some(format!("fxa{uid}")),
            fxa_kid: None,
            hashed_fxa_uid: None,
            hashed_device_id: None,
        },
    )
}

/// A Sync client of one user.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL of the server.
    pub base: String,
    /// The user.
    pub uid: u64,
    /// The token id.
    pub id: String,
    /// The derived Hawk key.
    pub key: String,
    port: u16,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body text.
    pub text: String,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// A timestamp header as 10 ms units (exact).
    pub fn ts(&self, name: &str) -> i64 {
        let v = self.header(name).unwrap_or_else(|| panic!("no {name}"));
        parse_ts(&v)
    }
}

/// Parses a two-decimal timestamp string into 10 ms units, insisting on the format.
pub fn parse_ts(v: &str) -> i64 {
    let (s, c) = v
        .split_once('.')
        .unwrap_or_else(|| panic!("no decimals: {v}"));
    assert_eq!(c.len(), 2, "two decimals: {v}");
    s.parse::<i64>().unwrap() * 100 + c.parse::<i64>().unwrap()
}

impl Client {
    /// A client with a token valid for `ttl` seconds.
    pub fn new(server: &Server, uid: u64, ttl: f64) -> Client {
        let (id, key) = token(SECRET, uid, &server.url(), ttl);
        Client::with_token(server, uid, id, key)
    }

    /// A client using the given token.
    pub fn with_token(server: &Server, uid: u64, id: String, key: String) -> Client {
        let port = server.addr.rsplit(':').next().unwrap().parse().unwrap();
        Client {
            http: reqwest::Client::new(),
            base: server.url(),
            uid,
            id,
            key,
            port,
        }
    }

    /// The Authorization header for a request.
    pub fn authorization(&self, method: &str, path_and_query: &str, ts: i64) -> String {
        let h = HawkHeader {
            id: self.id.clone(),
            ts,
            ts_raw: ts.to_string(),
            nonce: hex::encode(rand::random::<[u8; 8]>()),
            mac: String::new(),
            hash: None,
            ext: None,
        };
        let mac = compute_mac(
            self.key.as_bytes(),
            &h,
            &SignedRequest {
                method,
                path_and_query,
                host: "127.0.0.1",
                port: self.port,
            },
        );
        format!(
            "Hawk id=\"{}\", ts=\"{}\", nonce=\"{}\", mac=\"{}\"",
            h.id, h.ts_raw, h.nonce, mac
        )
    }

    /// Sends a signed request to `/1.5/{uid}{path}` (path starts with `/` or is empty).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        let full = format!("/1.5/{}{}", self.uid, path);
        self.raw(method, &full, headers, body, true).await
    }

    /// Sends a request to an absolute path, signed or not.
    pub async fn raw(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
        sign: bool,
    ) -> Resp {
        self.try_raw(method, path_and_query, headers, body, sign)
            .await
            .expect("request")
    }

    /// Sends a signed JSON request to `/1.5/{uid}{path}`; a connection failure is an
    /// `Err` (for tests that kill the server mid-request).
    pub async fn try_json(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Resp, reqwest::Error> {
        let full = format!("/1.5/{}{}", self.uid, path);
        self.try_raw(method, &full, &[], Some(("application/json", body)), true)
            .await
    }

    /// Like `raw`, but a connection failure is an `Err` instead of a panic.
    pub async fn try_raw(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
        sign: bool,
    ) -> Result<Resp, reqwest::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{}", self.base, path_and_query));
        if sign {
            req = req.header(
                "authorization",
                self.authorization(method, path_and_query, now),
            );
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let r = req.send().await?;
        Ok(Resp {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await?,
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None).await
    }

    /// GET with extra headers.
    pub async fn get_h(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", path, headers, None).await
    }

    /// PUT a JSON value.
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.put_h(path, body, &[]).await
    }

    /// PUT a JSON value with extra headers.
    pub async fn put_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send("PUT", path, headers, Some(("application/json", bytes)))
            .await
    }

    /// POST a JSON value.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.post_h(path, body, &[]).await
    }

    /// POST a JSON value with extra headers.
    pub async fn post_h(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send("POST", path, headers, Some(("application/json", bytes)))
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], None).await
    }

    /// DELETE with extra headers.
    pub async fn delete_h(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("DELETE", path, headers, None).await
    }
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sends raw bytes over HTTP/1.1 and returns the whole response text.
pub async fn raw_http(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON timestamp (seconds, two decimals) as 10 ms units.
pub fn ts_value(v: &Value) -> i64 {
    (v.as_f64().expect("a number") * 100.0).round() as i64
}

/// Builds a Hawk Authorization header from its parts (for forging tests).
#[allow(clippy::too_many_arguments)]
pub fn hawk_header(
    id: &str,
    key: impl AsRef<[u8]>,
    method: &str,
    path_and_query: &str,
    host: &str,
    port: u16,
    ts: i64,
    nonce: &str,
    hash: Option<&str>,
) -> String {
    let h = HawkHeader {
        id: id.into(),
        ts,
        ts_raw: ts.to_string(),
        nonce: nonce.into(),
        mac: String::new(),
        hash: hash.map(str::to_string),
        ext: None,
    };
    let mac = compute_mac(
        key.as_ref(),
        &h,
        &SignedRequest {
            method,
            path_and_query,
            host,
            port,
        },
    );
    let hash = hash.map(|h| format!(", hash=\"{h}\"")).unwrap_or_default();
    format!("Hawk id=\"{id}\", ts=\"{ts}\", nonce=\"{nonce}\", mac=\"{mac}\"{hash}")
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (up to `secs`) for the process to exit; returns
    /// whether it exited successfully.
    pub fn terminate(&mut self, secs: u64) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// A fresh database on the test PostgreSQL server; returns its URL.
pub async fn fresh_database() -> String {
    let admin = std::env::var("SYNCSTORE_TEST_POSTGRES_URL").expect(
        "SYNCSTORE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
    );
    let name = format!("t{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = admin.clone();
    let db = name.clone();
    tokio::task::spawn_blocking(move || {
        let mut client =
            postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
    })
    .await
    .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

/// A stand-in for FxA's `/v1/verify`: tokens `good-<uid>` are valid.
pub async fn fake_verifier() -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/verify",
        post(|axum::Json(body): axum::Json<Value>| async move {
            let token = body["token"].as_str().unwrap_or("").to_string();
            match token.strip_prefix("good-") {
                Some(user) => (
                    axum::http::StatusCode::OK,
                    axum::Json(serde_json::json!({"user": user, "scope": [OLDSYNC]})),
                ),
                None => (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({})),
                ),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1/verify")
}

pub fn cli(db_url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env("SYNCSTORE_TOKENSERVER_DATABASE_URL", db_url)
        .env("SYNCSTORE_SECRETS", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub async fn sign_in(tokenserver: &Server, user: &str) -> Value {
    let r = tokenserver
        .client(0)
        .raw(
            "GET",
            "/1.0/sync/1.5",
            &[
                ("authorization", &format!("Bearer good-{user}")),
                ("x-keyid", "1-qg"),
            ],
            None,
            false,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// The issuer the test FxA key (`tests/fixtures/fxa-test-key.pem`) signs for.
pub const TEST_ISSUER: &str = "https://accounts.test";

/// The test FxA key's JWK set (its public half), as a path for `SYNCSTORE_FXA_JWKS`.
pub fn test_jwks_path() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fxa-test-jwks.json"
    )
    .to_string()
}

/// Signs `claims` RS256 with the test FxA key, naming key id `kid` and type `typ`
/// (`at+jwt` for access tokens, `secevent+jwt` for account events).
pub fn sign_test_jwt(claims: &Value, kid: &str, typ: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    header.typ = Some(typ.into());
    let pem = include_bytes!("../../fixtures/fxa-test-key.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// An `X-KeyID` value: keys-changed-at and the client state, as Firefox sends them.
pub fn key_id(kca: i64, client_state: &[u8]) -> String {
    use base64::Engine;
    let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_state);
    format!("{kca}-{state}")
}

/// A server verifying JWTs with the test key set and issuer, and no remote verifier.
pub fn jwt_server(extra: &[(&str, &str)]) -> Server {
    let jwks = test_jwks_path();
    let mut env = vec![
        ("SYNCSTORE_FXA_JWKS", jwks.as_str()),
        ("SYNCSTORE_FXA_ISSUER", TEST_ISSUER),
        ("SYNCSTORE_FXA_VERIFY_URL", ""),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

/// `syncstore account ARGS… --data-dir DIR` with `env` set and `stdin` on its standard
/// input (a password for `--password-stdin`); its stdout. Panics when it fails.
pub fn account_cli(
    data: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .arg("account")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncstore account");
    writeln!(child.stdin.take().expect("stdin"), "{stdin}").expect("write stdin");
    let out = child.wait_with_output().expect("syncstore account");
    assert!(
        out.status.success(),
        "account {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// POSTs JSON to the accounts API (with `Authorization: Bearer …` when given): the
/// status and the JSON body (null when there is none).
pub async fn fxa_post(s: &Server, path: &str, body: &Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.url()))
        .json(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.expect("POST to the accounts API");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Replaces every user file under `data/users` by garbage, keeping the good ones in
/// `data/users.good`: every storage request of those users then fails (503).
pub fn damage_user_files(data: &std::path::Path) -> usize {
    let (users, good) = (data.join("users"), data.join("users.good"));
    std::fs::rename(&users, &good).unwrap();
    let mut n = 0;
    for shard in std::fs::read_dir(&good).unwrap().flatten() {
        let dir = users.join(shard.file_name());
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sqlite") {
                std::fs::write(dir.join(&name), b"not a database ".repeat(1000)).unwrap();
                n += 1;
            }
        }
    }
    n
}
