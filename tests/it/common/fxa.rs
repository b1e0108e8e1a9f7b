//! Helpers of the tests of the built-in accounts service (the FxA-compatible API under
//! `/v1`): the stretched password, sign-up and sign-in, the Bearer and Hawk forms of
//! its tokens, Bearer GETs, kB and OAuth grants, the tokenserver and the storage node
//! with the service's tokens, an SMTP sink for the mailed codes, clients bound to other
//! loopback addresses and requests sent on raw sockets together.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{Value, json};
use syncstore::accounts::crypto;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Client, Server};

/// Firefox's OAuth client id.
pub const FIREFOX: &str = "5882386c6d801776";
/// The Sync scope.
pub const OLDSYNC: &str = "https://identity.mozilla.com/apps/oldsync";

// ---- accounts, passwords, sign-up and sign-in ----

/// `syncstore account add EMAIL --password-stdin` on a data dir; its stdout.
pub fn add_account(data: &std::path::Path, email: &str, password: &str) -> String {
    super::account_cli(data, &["add", email, "--password-stdin"], &[], password)
}

/// A server (started with `env`) whose accounts database holds `email` (made by
/// `syncstore account add`).
pub fn server_with_account(email: &str, password: &str, env: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap();
    add_account(data.path(), email, password);
    Server::start_in(data, env)
}

/// authPW, as a client derives it from the email and password (quick stretch).
pub fn auth_pw(email: &str, password: &str) -> [u8; 32] {
    crypto::auth_pw(&crypto::quick_stretch(email, password))
}

/// [`auth_pw`], hex-encoded as the API takes it.
pub fn auth_pw_hex(email: &str, password: &str) -> String {
    hex::encode(auth_pw(email, password))
}

/// The body of a sign-up (with an invite code when given) or a sign-in.
pub fn credentials(email: &str, password: &str, invite: Option<&str>) -> Value {
    let mut body = json!({"email": email, "authPW": auth_pw_hex(email, password)});
    if let Some(code) = invite {
        body["inviteCode"] = json!(code);
    }
    body
}

/// `POST /v1/account/create?keys=true`: the status and body.
pub async fn create(s: &Server, email: &str, password: &str, invite: Option<&str>) -> (u16, Value) {
    let body = credentials(email, password, invite);
    super::fxa_post(s, "/v1/account/create?keys=true", &body, None).await
}

/// The sign-in path, asking for a key fetch token when `keys`.
fn login_path(keys: bool) -> &'static str {
    if keys {
        "/v1/account/login?keys=true"
    } else {
        "/v1/account/login"
    }
}

/// `POST /v1/account/login` (`?keys=true` when `keys`): the status and body.
pub async fn login(s: &Server, email: &str, password: &str, keys: bool) -> (u16, Value) {
    let body = credentials(email, password, None);
    super::fxa_post(s, login_path(keys), &body, None).await
}

/// [`login`] with `client` (e.g. one from [`client_from`]).
pub async fn login_with(
    client: &reqwest::Client,
    s: &Server,
    email: &str,
    password: &str,
    keys: bool,
) -> (u16, Value) {
    let body = credentials(email, password, None);
    post_with(client, s, login_path(keys), &body, None).await
}

/// Signs in (without keys) and returns the session's Bearer token (`fxs_<id>`).
pub async fn signed_in(s: &Server, email: &str, password: &str) -> String {
    let (status, session) = login(s, email, password, false).await;
    assert_eq!(status, 200, "{session}");
    token_bearer("fxs", &hex32(&session["sessionToken"]), "sessionToken")
}

/// `POST /v1/session/verify_code` of `code` with `client` and the session Bearer token
/// `session`: the status and body.
pub async fn verify_code_with(
    client: &reqwest::Client,
    s: &Server,
    session: &str,
    code: &str,
) -> (u16, Value) {
    let body = json!({"code": code});
    post_with(client, s, "/v1/session/verify_code", &body, Some(session)).await
}

/// [`verify_code_with`] a new client.
pub async fn verify_code(s: &Server, session: &str, code: &str) -> (u16, Value) {
    verify_code_with(&reqwest::Client::new(), s, session, code).await
}

/// The `errno` of an error body.
pub fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
}

// ---- requests ----

/// POSTs JSON with `client` (with `Authorization: Bearer …` when given): the status and
/// the JSON body (null when there is none).
pub async fn post_with(
    client: &reqwest::Client,
    s: &Server,
    path: &str,
    body: &Value,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = client.post(format!("{}{path}", s.url())).json(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.expect("POST to the accounts API");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET path` with a Bearer token: the status and the JSON body (null when none).
pub async fn bearer_get(s: &Server, path: &str, bearer: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.url()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A request with the given `Authorization` header (e.g. from [`hawk`]) and a JSON body
/// when given: the status and the JSON body (null when none).
pub async fn send(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    authz: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", s.url()))
        .header("authorization", authz);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A client whose connections come from `ip` (a loopback address), with a `timeout`
/// on each request.
pub fn client_from(ip: &str, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Sends `request` on `n` connections at once (all but its last byte written first,
/// then the last byte on every connection after a barrier); the status of each answer
/// (0 when there is none in 30 s).
pub fn at_once(addr: &str, request: &str, n: usize) -> Vec<u16> {
    at_once_within(addr, request, n, Duration::from_secs(30))
}

/// [`at_once`], waiting up to `wait` for each answer.
pub fn at_once_within(addr: &str, request: &str, n: usize, wait: Duration) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, addr, request) = (barrier.clone(), addr.to_string(), request.to_string());
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(&addr).unwrap();
                conn.set_read_timeout(Some(wait)).unwrap();
                let (head, last) = request.as_bytes().split_at(request.len() - 1);
                conn.write_all(head).unwrap();
                barrier.wait();
                conn.write_all(last).unwrap();
                let mut answer = Vec::new();
                let _ = conn.read_to_end(&mut answer);
                let text = String::from_utf8_lossy(&answer);
                text.split(' ')
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .unwrap_or(0)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Runs `n` requests made by `make(i)` at once: tasks that wait on one barrier, so all
/// are in flight together. Their answers, in order (each within 120 s).
pub async fn together<F, Fut>(n: usize, make: F) -> Vec<(u16, Value)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let barrier = barrier.clone();
        let fut = make(i);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("answered within 120 s")
                .unwrap(),
        );
    }
    out
}

// ---- tokens: Bearer and Hawk forms ----

/// 32 bytes from a hex string.
pub fn decode32(token_hex: &str) -> [u8; 32] {
    hex::decode(token_hex).unwrap().try_into().unwrap()
}

/// 32 bytes from a JSON hex string (a token in an answer).
pub fn hex32(v: &Value) -> [u8; 32] {
    decode32(v.as_str().expect("a hex string"))
}

/// The Bearer form of a token of `kind` (`<prefix>_<id>`: `fxs` for `sessionToken`,
/// `fxk` for `keyFetchToken`, `fxpc` for `passwordChangeToken`).
pub fn token_bearer(prefix: &str, token: &[u8; 32], kind: &str) -> String {
    format!(
        "{prefix}_{}",
        hex::encode(crypto::token_keys(token, kind).id)
    )
}

/// [`token_bearer`] of a hex token.
pub fn bearer(prefix: &str, token_hex: &str, kind: &str) -> String {
    token_bearer(prefix, &decode32(token_hex), kind)
}

/// The Bearer form of a hex session token (`fxs_<id>`).
pub fn session_bearer(token_hex: &str) -> String {
    bearer("fxs", token_hex, "sessionToken")
}

/// A Hawk `Authorization` header for an accounts request to `s`: token id `id`, signed
/// with `key` at `ts` (payload hash given or not).
#[allow(clippy::too_many_arguments)]
pub fn hawk(
    s: &Server,
    id: &[u8; 32],
    key: &[u8],
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
    hash: Option<&str>,
) -> String {
    let (host, port) = s.addr.split_once(':').unwrap();
    let port = port.parse().unwrap();
    let id = hex::encode(id);
    super::hawk_header(&id, key, method, path, host, port, ts, nonce, hash)
}

/// A Hawk `Authorization` header for a session request, signed now with the session's
/// key (payload hash given or not).
pub fn session_hawk(
    s: &Server,
    token_hex: &str,
    method: &str,
    path: &str,
    nonce: &str,
    hash: Option<&str>,
) -> String {
    let k = crypto::token_keys(&decode32(token_hex), "sessionToken");
    hawk(
        s,
        &k.id,
        &k.auth_key,
        method,
        path,
        super::now(),
        nonce,
        hash,
    )
}

// ---- keys, OAuth, the tokenserver and the storage node ----

/// `GET /v1/account/keys` with the key fetch token as a Bearer token: status and body.
pub async fn fetch_keys(s: &Server, key_fetch: &[u8; 32]) -> (u16, Value) {
    let bearer = token_bearer("fxk", key_fetch, "keyFetchToken");
    bearer_get(s, "/v1/account/keys", &bearer).await
}

/// kB, as a client derives it: the bundle unwrapped with the key fetch token, `wrapKb`
/// unwrapped with the password.
pub async fn kb(s: &Server, email: &str, password: &str, key_fetch: &[u8; 32]) -> [u8; 32] {
    let (status, body) = fetch_keys(s, key_fetch).await;
    assert_eq!(status, 200, "{body}");
    let data = hex::decode(body["bundle"].as_str().unwrap()).unwrap();
    let keys = crypto::token_keys(key_fetch, "keyFetchToken");
    let plain = crypto::unbundle(&keys.bundle_key, "account/keys", &data).expect("a valid bundle");
    let wrap_kb: [u8; 32] = plain[32..64].try_into().unwrap();
    crypto::xor32(
        &wrap_kb,
        &crypto::unwrap_b_key(&crypto::quick_stretch(email, password)),
    )
}

/// The account's keys_changed_at, as Firefox learns it (scoped-key-data), with the
/// session Bearer token `session`.
pub async fn keys_changed_at(s: &Server, session: &str) -> i64 {
    let body = json!({"client_id": FIREFOX, "scope": OLDSYNC});
    let (status, data) =
        super::fxa_post(s, "/v1/account/scoped-key-data", &body, Some(session)).await;
    assert_eq!(status, 200, "{data}");
    data[OLDSYNC]["keyRotationTimestamp"].as_i64().unwrap()
}

/// An OAuth grant for Firefox from the session Bearer token `session`
/// (`fxa-credentials`), with the lifetime asked for: status and body.
pub async fn grant(s: &Server, session: &str, scope: &str, ttl: Option<i64>) -> (u16, Value) {
    let mut body = json!({"grant_type": "fxa-credentials", "client_id": FIREFOX, "scope": scope});
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    super::fxa_post(s, "/v1/oauth/token", &body, Some(session)).await
}

/// The tokenserver's answer to an access token and X-KeyID: status and body.
pub async fn sync_token(s: &Server, access: &str, key_id: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/1.0/sync/1.5", s.url()))
        .bearer_auth(access)
        .header("X-KeyID", key_id)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Asserts a tokenserver refusal: 401 with Mozilla's `status`.
pub fn assert_refused(answer: &(u16, Value), status: &str) {
    assert_eq!(answer.0, 401, "{}", answer.1);
    assert_eq!(answer.1["status"], status, "{}", answer.1);
}

/// A storage client with the token of a tokenserver answer (`uid`, `id`, `key`).
pub fn storage_client(s: &Server, sync: &Value) -> Client {
    Client::with_token(
        s,
        sync["uid"].as_u64().unwrap(),
        sync["id"].as_str().unwrap().into(),
        sync["key"].as_str().unwrap().into(),
    )
}

// ---- mail ----

/// A tiny SMTP sink on 127.0.0.1: answers the dialogue and sends each message's DATA
/// down the channel; its port.
pub async fn smtp_sink() -> (u16, UnboundedReceiver<String>) {
    smtp_sink_rejecting(None).await
}

/// [`smtp_sink`], answering 550 to the recipients at `@domain` when given (their
/// messages never come down the channel).
pub async fn smtp_sink_rejecting(domain: Option<&'static str>) -> (u16, UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "RCPT"
                            if domain.is_some_and(|d| {
                                line.to_ascii_lowercase().contains(&format!("@{d}"))
                            }) =>
                        {
                            b"550 no such user\r\n"
                        }
                        "DATA" => {
                            let _ = w.write_all(b"354 go on\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            let _ = tx.send(data);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// The 6-digit code in a mail.
pub fn code_in(mail: &str) -> String {
    let body = mail.split("\n\n").skip(1).collect::<Vec<_>>().join("\n");
    body.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("no code in {mail}"))
        .to_string()
}

/// The next mail, within 10 s.
pub async fn next_mail(mails: &mut UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), mails.recv())
        .await
        .expect("a mail within 10 s")
        .unwrap()
}

/// The mails that arrive until none has for `quiet`.
pub async fn drain(mails: &mut UnboundedReceiver<String>, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, mails.recv()).await {
        got.push(m);
        assert!(got.len() < 1000, "mail flood");
    }
    got
}

/// The settings of open sign-ups mailing (as `from`) through the SMTP server on
/// 127.0.0.1:`port`.
pub fn open_mail_env(port: u16, from: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open".to_string()),
        (
            "SYNCSTORE_ACCOUNTS_SMTP_URL",
            format!("smtp://127.0.0.1:{port}?tls=none"),
        ),
        ("SYNCSTORE_ACCOUNTS_MAIL_FROM", from.to_string()),
    ]
}

/// Settings as `Server::start` takes them.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A server with open sign-ups mailing (as `from`) to a fresh SMTP sink, plus `extra`
/// settings; the sink's mails.
pub fn open_server_with_mail(
    rt: &tokio::runtime::Runtime,
    from: &str,
    extra: &[(&str, &str)],
) -> (Server, UnboundedReceiver<String>) {
    let (port, mails) = rt.block_on(smtp_sink());
    let env = open_mail_env(port, from);
    let mut env = env_refs(&env);
    env.extend_from_slice(extra);
    (Server::start(&env), mails)
}
