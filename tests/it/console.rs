//! The operator console (`admin_listen`), over real HTTP against the real binary: off
//! by default, only `/admin/` on its own listener, the admin token (file, refusals,
//! attempt limits under 100 requests at once), the session cookie's flags, CSRF and
//! origin checks on every change, the security headers, and changes written to the
//! audit log with the console's client address.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::common::Server;
use crate::common::fxa::{client_from, together};

/// The console's base URL (`http://ADDR`), read from the server's log.
fn console_url(s: &Server) -> String {
    let log = s.log.lock().unwrap();
    let addr = log
        .iter()
        .find_map(|l| l.split("admin console on http://").nth(1))
        .unwrap_or_else(|| panic!("no console listener: {log:?}"));
    let addr: String = addr
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    format!("http://{addr}")
}

/// The admin token the server generated in its data dir.
fn admin_token(s: &Server) -> String {
    std::fs::read_to_string(s.data.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// A server with the console on a free port.
fn with_console(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("SYNCSTORE_ADMIN_LISTEN", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    Server::start(&env)
}

/// An answer: status, headers, JSON body (null when none).
struct Answer {
    status: u16,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request to the console");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let json = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

/// Signs in with `token`: the answer, and the `Cookie` header value of the session.
async fn login(client: &reqwest::Client, base: &str, token: &str) -> (Answer, String) {
    let a = send(
        client,
        "POST",
        &format!("{base}/admin/api/login"),
        &[],
        Some(&json!({ "token": token })),
    )
    .await;
    let cookie = a
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    (a, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_by_default_and_serves_only_admin_on_its_own_listener() {
    let bare = Server::start(&[]);
    assert!(!bare.log_text().contains("admin console on"));
    assert!(!bare.data.path().join("admin-token").exists());
    let public = reqwest::get(format!("{}/admin/", bare.url()))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);

    let s = with_console(&[]);
    let base = console_url(&s);
    // The token file: generated, owner-only; the log names the file, never the token.
    use std::os::unix::fs::PermissionsExt;
    let path = s.data.path().join("admin-token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = admin_token(&s);
    assert_eq!(token.len(), 43, "32 random bytes, base64url");
    let log = s.log_text();
    assert!(log.contains("admin-token"), "{log}");
    assert!(!log.contains(&token), "the token is never logged");

    let c = reqwest::Client::new();
    let page = c.get(format!("{base}/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cross-origin-resource-policy"], "same-origin");
    assert_eq!(h["cross-origin-opener-policy"], "same-origin");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/console.js") && !html.contains("<script>"));
    for asset in ["console.js", "console.css", "icon.svg"] {
        let r = c.get(format!("{base}/admin/{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
    }
    // Nothing but /admin/ on the console's listener; no /admin/ on the public one.
    for path in [
        "/",
        "/__heartbeat__",
        "/__lbheartbeat__",
        "/1.0/sync/1.5",
        "/1.5/1/info/collections",
        "/v1/account/status",
        "/admin/nope",
        "/adminx",
    ] {
        let a = send(&c, "GET", &format!("{base}{path}"), &[], None).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.json["error"], "not found", "{path}");
        assert!(!a.header("content-security-policy").is_empty());
    }
    let public = reqwest::get(format!("{}/admin/", s.url())).await.unwrap();
    assert_eq!(public.status(), 404);
    // A host the console does not answer to (DNS rebinding) is refused.
    let a = send(
        &c,
        "GET",
        &format!("{base}/admin/"),
        &[("host", "evil.example:8090")],
        None,
    )
    .await;
    assert_eq!(a.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_the_token_and_every_change_its_csrf_token_and_origin() {
    let s = with_console(&[]);
    let base = console_url(&s);
    let token = admin_token(&s);
    let c = reqwest::Client::new();
    let api = |p: &str| format!("{base}/admin/api/{p}");

    // No session: the API answers 401, with the security headers.
    for (method, path) in [
        ("GET", "session"),
        ("GET", "overview"),
        ("POST", "signups"),
        ("POST", "logout"),
    ] {
        let a = send(&c, method, &api(path), &[], Some(&json!({"open": false}))).await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.json["error"], "sign in first");
        assert_eq!(a.header("cache-control"), "no-store");
        assert_eq!(a.header("x-content-type-options"), "nosniff");
    }
    // A wrong token: 403, no cookie.
    let (wrong, cookie) = login(&c, &base, "not-the-admin-token").await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json["error"], "wrong admin token");
    assert!(cookie.is_empty());
    // A login from another origin is refused before the token is looked at.
    let a = send(
        &c,
        "POST",
        &api("login"),
        &[("origin", "http://evil.example")],
        Some(&json!({"token": token})),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(a.header("set-cookie").is_empty());

    // The right token: a session cookie with its flags, and the CSRF token.
    let (ok, cookie) = login(&c, &base, &token).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let set = ok.header("set-cookie");
    assert!(cookie.starts_with("syncstore_admin="), "{set}");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin/",
        "Max-Age=43200",
    ] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "http public URL: no Secure flag: {set}"
    );
    let csrf = ok.json["csrf"].as_str().unwrap().to_string();
    assert_eq!(csrf.len(), 43);

    let session = send(&c, "GET", &api("session"), &[("cookie", &cookie)], None).await;
    assert_eq!(session.status, 200);
    assert_eq!(session.json["csrf"], csrf.as_str());
    let overview = send(&c, "GET", &api("overview"), &[("cookie", &cookie)], None).await;
    assert_eq!(overview.status, 200, "{}", overview.json);
    assert_eq!(overview.header("cache-control"), "no-store");
    assert!(overview.json["nodes"].is_array(), "{}", overview.json);
    // The cookie from another address is no session.
    let elsewhere = client_from("127.0.0.2", Duration::from_secs(10));
    let a = send(
        &elsewhere,
        "GET",
        &api("session"),
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(a.status, 401);

    // A change: without the CSRF token, with a wrong one, from another origin or site:
    // 403, and nothing changes.
    let close = json!({"open": false});
    let cases: [&[(&str, &str)]; 5] = [
        &[("cookie", &cookie)],
        &[("cookie", &cookie), ("x-csrf-token", "wrong")],
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "http://evil.example"),
        ],
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("sec-fetch-site", "cross-site"),
        ],
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "null"),
        ],
    ];
    for headers in cases {
        let a = send(&c, "POST", &api("signups"), headers, Some(&close)).await;
        assert_eq!(a.status, 403, "{headers:?}: {}", a.json);
    }
    let o = send(&c, "GET", &api("overview"), &[("cookie", &cookie)], None).await;
    assert_eq!(o.json["signups"], "open");

    // With the token, from the console's own origin: done.
    let origin = base.clone();
    let good: &[(&str, &str)] = &[
        ("cookie", &cookie),
        ("x-csrf-token", &csrf),
        ("origin", &origin),
        ("sec-fetch-site", "same-origin"),
    ];
    let a = send(&c, "POST", &api("signups"), good, Some(&close)).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let o = send(&c, "GET", &api("overview"), &[("cookie", &cookie)], None).await;
    assert_eq!(o.json["signups"], "closed");

    // Bad input: 400 with a JSON error; an oversized body: 413.
    let node = o.json["nodes"][0]["node"].as_str().unwrap().to_string();
    for (path, body, want) in [
        (
            "rollout",
            json!({"node": node, "percent": "150"}),
            "percent",
        ),
        (
            "rollout",
            json!({"node": node, "percent": "lots"}),
            "percentage",
        ),
        ("rollout", json!({"node": node}), "percent"),
        ("node", json!({"node": node, "action": "explode"}), "action"),
        (
            "list",
            json!({"node": node, "list": "allow", "who": []}),
            "who",
        ),
        ("invite", json!({"valid_for": "forever"}), "valid_for"),
    ] {
        let a = send(&c, "POST", &api(path), good, Some(&body)).await;
        assert_eq!(a.status, 400, "{path} {body}: {}", a.json);
        let e = a.json["error"].as_str().unwrap_or("");
        assert!(e.contains(want), "{path}: {e}");
    }
    let a = send(
        &c,
        "POST",
        &api("rollout"),
        good,
        Some(&json!({"node": "http://no-such-node:1", "percent": 5})),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.json);
    let big = json!({"node": "x".repeat(20_000), "percent": 5});
    let a = send(&c, "POST", &api("rollout"), good, Some(&big)).await;
    assert_eq!(a.status, 413);

    // Logout ends the session.
    let a = send(&c, "POST", &api("logout"), good, Some(&json!({}))).await;
    assert_eq!(a.status, 200);
    assert!(a.header("set-cookie").contains("Max-Age=0"));
    let a = send(&c, "GET", &api("session"), &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, 401);
}

/// `syncstore serve` with `env` that must fail to start: its stderr.
fn refused_start(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SYNCSTORE_SECRETS", crate::common::SECRET)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_of_the_operators_choice_and_a_secure_cookie_with_an_https_public_url() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console-token");
    let mine = "my-own-admin-token-of-enough-length";
    std::fs::write(&file, format!("{mine}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = file.to_str().unwrap();
    let s = with_console(&[
        ("SYNCSTORE_PUBLIC_URL", "https://sync.example.org"),
        ("SYNCSTORE_ADMIN_TOKEN_FILE", path),
    ]);
    assert!(!s.data.path().join("admin-token").exists());
    let base = console_url(&s);
    let c = reqwest::Client::new();
    let (ok, _) = login(&c, &base, mine).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let set = ok.header("set-cookie");
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    // The public URL's host is answered too.
    let a = send(
        &c,
        "GET",
        &format!("{base}/admin/"),
        &[("host", "sync.example.org")],
        None,
    )
    .await;
    assert_eq!(a.status, 200);

    // A token too short to be one, and a process without the assignment database,
    // refuse to start, saying why.
    std::fs::write(&file, "short\n").unwrap();
    let err = refused_start(&[
        ("SYNCSTORE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("SYNCSTORE_ADMIN_TOKEN_FILE", path),
    ]);
    assert!(err.contains("at least 16 characters"), "{err}");
    let err = refused_start(&[
        ("SYNCSTORE_ADMIN_LISTEN", "127.0.0.1:0"),
        ("SYNCSTORE_ROLE", "storage"),
    ]);
    assert!(
        err.contains("admin_listen needs the assignment database"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_wrong_tokens_at_once_get_exactly_five_comparisons() {
    // On a busy 2-core machine a connection of the 100 may get its first byte in late;
    // the connection timeouts are not what this test is about.
    let s = with_console(&[
        ("SYNCSTORE_FIRST_BYTE_TIMEOUT_SECS", "60"),
        ("SYNCSTORE_HEADER_READ_TIMEOUT_SECS", "60"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let base = console_url(&s);
    let token = admin_token(&s);
    let url = format!("{base}/admin/api/login");
    let attempt = |ip: &'static str, token: String| {
        let url = url.clone();
        async move {
            let c = client_from(ip, Duration::from_secs(30));
            let r = match c.post(&url).json(&json!({ "token": token })).send().await {
                Ok(r) => r,
                Err(e) => return (0, json!({ "error": e.to_string() })),
            };
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, json!({ "retry": retry }))
        }
    };
    let answers = together(100, |i| attempt("127.0.0.1", format!("wrong-token-{i:04}"))).await;
    if answers.iter().any(|(s, _)| *s == 0) {
        let metrics = reqwest::get(format!("{}/__metrics__", s.metrics_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("syncstore_connections_dropped_total"))
            .collect();
        panic!("requests without an answer: {answers:?}\ndropped: {dropped:?}");
    }
    let compared = answers.iter().filter(|(s, _)| *s == 403).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(compared, 5, "{answers:?}");
    assert_eq!(limited.len(), 95, "{answers:?}");
    for (_, v) in &limited {
        let secs: u64 = v["retry"].as_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs), "{v}");
    }
    // Counted before comparing: even the right token waits at that address now...
    assert_eq!(attempt("127.0.0.1", token.clone()).await.0, 429);
    // ...but not at another, where it opens a session (and does not count).
    assert_eq!(attempt("127.0.0.2", token.clone()).await.0, 200);
    // The cap in all: 30 failures a minute from any number of addresses (here of the
    // operator's networks, loopback by default, which have a pool of their own).
    const OTHERS: [&str; 6] = [
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "127.0.0.8",
    ];
    let mut statuses = Vec::new();
    for ip in OTHERS {
        for i in 0..5 {
            statuses.push(attempt(ip, format!("wrong-{i}")).await.0);
        }
    }
    let compared = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!(compared, 25, "5 + 25 = 30 in all: {statuses:?}");
    assert_eq!(attempt("127.0.0.9", token).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_the_console_are_audited_with_its_address_and_shown() {
    let s = with_console(&[("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite")]);
    let base = console_url(&s);
    let api = |p: &str| format!("{base}/admin/api/{p}");
    // From 127.0.0.3: the audit log names that address.
    let c = client_from("127.0.0.3", Duration::from_secs(30));
    let (ok, cookie) = login(&c, &base, &admin_token(&s)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json["accounts"], true);
    let csrf = ok.json["csrf"].as_str().unwrap().to_string();
    let good: &[(&str, &str)] = &[("cookie", &cookie), ("x-csrf-token", &csrf)];
    let node = s.url();

    let a = send(
        &c,
        "POST",
        &api("rollout"),
        good,
        Some(&json!({"node": node, "percent": "12.5"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(
        &c,
        "POST",
        &api("list"),
        good,
        Some(&json!({"node": node, "list": "deny", "who": ["0123456789abcdef0123456789abcdef"]})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(
        &c,
        "POST",
        &api("resume"),
        good,
        Some(&json!({"node": node})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(
        &c,
        "POST",
        &api("invite"),
        good,
        Some(&json!({"valid_for": "2d"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let code = a.json["code"].as_str().unwrap().to_string();
    assert!(code.len() >= 10, "{code}");

    // The overview shows the changes, the invite (not its code) and the audit rows.
    let o = send(&c, "GET", &api("overview"), &[("cookie", &cookie)], None).await;
    assert_eq!(o.status, 200);
    let n = &o.json["nodes"][0];
    assert_eq!(
        (n["node"].as_str(), n["percent_bp"].as_i64()),
        (Some(node.as_str()), Some(1250))
    );
    assert_eq!(n["state"], "rollout");
    assert_eq!(o.json["lists"][0]["kind"], "deny");
    assert_eq!(o.json["accounts"]["signups"], "invite");
    assert_eq!(o.json["accounts"]["count"], 0, "no account made yet");
    assert_eq!(o.json["accounts"]["invites"].as_array().unwrap().len(), 1);
    assert!(
        !o.json.to_string().contains(&code),
        "the code is shown once only"
    );
    let audit = o.json["audit"].as_array().unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.invite",
            "rollout.resume",
            "rollout.deny",
            "rollout.set"
        ],
        "{audit:?}"
    );
    for row in audit {
        assert_eq!(
            (row["via"].as_str(), row["who"].as_str()),
            (Some("console"), Some("127.0.0.3")),
            "{row}"
        );
    }
    // `syncstore audit` prints the same rows.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["audit", "--json", "--data-dir"])
        .arg(s.data.path())
        .env("SYNCSTORE_SECRETS", crate::common::SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (row, shown) in rows.iter().zip(audit) {
        assert_eq!(row, shown);
    }
}

/// A login with `token` from `ip` with extra `headers`: the status and `Retry-After`.
async fn login_from(base: &str, ip: &str, token: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let c = client_from(ip, Duration::from_secs(30));
    let a = send(
        &c,
        "POST",
        &format!("{base}/admin/api/login"),
        headers,
        Some(&json!({ "token": token })),
    )
    .await;
    (a.status, a.header("retry-after"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_elsewhere_does_not_lock_out_the_operators_own_address() {
    // Only 127.0.0.1 is the operator's here (by default all of loopback is), so that
    // 127.0.0.2… can stand for the rest of the world.
    let s = with_console(&[("SYNCSTORE_ADMIN_OPERATOR_NETWORKS", "127.0.0.1")]);
    let base = console_url(&s);
    let token = admin_token(&s);
    // Six other addresses use up the cap in all (30 a minute)...
    let mut statuses = Vec::new();
    for n in 2..=7 {
        let ip = format!("127.0.0.{n}");
        for i in 0..5 {
            statuses.push(login_from(&base, &ip, &format!("wrong-{i}"), &[]).await.0);
        }
    }
    assert_eq!(statuses, vec![403; 30]);
    // ...so the right token from a seventh is refused, with Retry-After...
    let (status, retry) = login_from(&base, "127.0.0.8", &token, &[]).await;
    assert_eq!(status, 429);
    let secs: u64 = retry.parse().unwrap();
    assert!((1..=60).contains(&secs), "{retry}");
    // ...but the operator's own address (an SSH tunnel) signs in.
    assert_eq!(login_from(&base, "127.0.0.1", &token, &[]).await.0, 200);
    // Its budget is still limited per address: 5 failures, then even the right token
    // waits.
    for i in 0..5 {
        let (status, _) = login_from(&base, "127.0.0.1", &format!("wrong-{i}"), &[]).await;
        assert_eq!(status, 403);
    }
    assert_eq!(login_from(&base, "127.0.0.1", &token, &[]).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookies_tossed_in_front_of_the_real_one_do_not_lock_the_operator_out() {
    let s = with_console(&[]);
    let base = console_url(&s);
    let c = reqwest::Client::new();
    let api = |p: &str| format!("{base}/admin/api/{p}");
    let (ok, cookie) = login(&c, &base, &admin_token(&s)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let csrf = ok.json["csrf"].as_str().unwrap().to_string();
    // A page on another port of the same host set cookies of the same name with a
    // longer path: the browser sends them first.
    let unknown = format!("syncstore_admin={}", "A".repeat(43));
    let junk_first = format!("syncstore_admin=junk; {unknown}; {cookie}");
    let a = send(&c, "GET", &api("session"), &[("cookie", &junk_first)], None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["csrf"], csrf.as_str());
    // Split over two Cookie headers (as HTTP/2 may send them).
    let two: &[(&str, &str)] = &[("cookie", "syncstore_admin=junk"), ("cookie", &cookie)];
    let a = send(&c, "GET", &api("overview"), two, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    // A change too.
    let headers: &[(&str, &str)] = &[("cookie", &junk_first), ("x-csrf-token", &csrf)];
    let a = send(
        &c,
        "POST",
        &api("signups"),
        headers,
        Some(&json!({"open": false})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    // The search is bounded: past 8 values of the cookie, the real one is not looked at.
    let many = format!("{}; {cookie}", ["syncstore_admin=junk"; 8].join("; "));
    let a = send(&c, "GET", &api("session"), &[("cookie", &many)], None).await;
    assert_eq!(a.status, 401);
    // Sign-out ends the real session even behind junk.
    let a = send(&c, "POST", &api("logout"), headers, Some(&json!({}))).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(&c, "GET", &api("session"), &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_believes_the_tcp_peer_never_forwarded_headers() {
    // The public listener trusts proxies on this machine (all of loopback); the console
    // must not.
    let s = with_console(&[
        ("SYNCSTORE_TRUSTED_PROXIES", "127.0.0.0/8, ::1"),
        ("SYNCSTORE_TRUST_FORWARDED_HEADERS", "true"),
        ("SYNCSTORE_MAX_CONNECTIONS_PER_ADDRESS", "3"),
    ]);
    let base = console_url(&s);
    let token = admin_token(&s);
    // Failures from 127.0.0.1 claiming five other addresses are 127.0.0.1's five.
    for n in 1..=5 {
        let xff = format!("198.51.100.{n}");
        let (status, _) =
            login_from(&base, "127.0.0.1", "wrong", &[("x-forwarded-for", &xff)]).await;
        assert_eq!(status, 403);
    }
    let xff: &[(&str, &str)] = &[("x-forwarded-for", "198.51.100.99")];
    assert_eq!(login_from(&base, "127.0.0.1", &token, xff).await.0, 429);

    // A session opened from 127.0.0.4 claiming 198.51.100.7: audited as 127.0.0.4,
    // and bound to it, not to the claimed address.
    let xff: &[(&str, &str)] = &[("x-forwarded-for", "198.51.100.7")];
    let c = client_from("127.0.0.4", Duration::from_secs(30));
    let a = send(
        &c,
        "POST",
        &format!("{base}/admin/api/login"),
        xff,
        Some(&json!({ "token": token })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let cookie = a
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = a.json["csrf"].as_str().unwrap().to_string();
    let headers: &[(&str, &str)] = &[
        ("cookie", &cookie),
        ("x-csrf-token", &csrf),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let api = |p: &str| format!("{base}/admin/api/{p}");
    let a = send(
        &c,
        "POST",
        &api("signups"),
        headers,
        Some(&json!({"open": false})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let elsewhere = client_from("127.0.0.5", Duration::from_secs(30));
    let a = send(&elsewhere, "GET", &api("session"), headers, None).await;
    assert_eq!(
        a.status, 401,
        "the claimed address does not carry the session"
    );
    let o = send(&c, "GET", &api("overview"), headers, None).await;
    let row = &o.json["audit"][0];
    assert_eq!(
        (row["action"].as_str(), row["detail"].as_str()),
        (Some("signups"), Some("closed")),
        "{row}"
    );
    assert_eq!(
        (row["via"].as_str(), row["who"].as_str()),
        (Some("console"), Some("127.0.0.4")),
        "{row}"
    );
    let log = s.log_text();
    assert!(
        log.contains("127.0.0.4") && !log.contains("198.51.100"),
        "{log}"
    );

    // Loopback is no proxy here: the per-address connection cap holds for it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let to: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let connect = || async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.6:0".parse().unwrap()).unwrap();
        sock.connect(to).await.unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect().await;
    let _ = fourth
        .write_all(b"GET /admin/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), fourth.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "the fourth connection was kept open");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The three within the cap are served.
    let first = &mut held[0];
    first
        .write_all(b"GET /admin/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

// ---- a real browser ----------------------------------------------------------------------

/// Debian's chromium, or `SYNCSTORE_CHROMIUM`.
fn chromium() -> String {
    std::env::var("SYNCSTORE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Whether the browser test runs: where chromium is installed; where it is not, the
/// test is skipped, except under CI (`CI` set), where it fails (scripts/test installs
/// chromium and Playwright).
fn browser_wanted() -> bool {
    if std::path::Path::new(&chromium()).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is not installed: scripts/test installs it (apt-get install chromium)",
        chromium()
    );
    eprintln!(
        "skipped: {} is not installed (apt-get install chromium; under CI this fails)",
        chromium()
    );
    false
}

/// scripts/console_browser.py: a headless chromium driven by Playwright, one JSON
/// command a line; see the script.
struct Browser {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    answers: std::sync::mpsc::Receiver<String>,
    /// Where the screenshots go.
    shots: std::path::PathBuf,
}

impl Browser {
    fn start(shots: &std::path::Path) -> Browser {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
        let _ = std::fs::remove_dir_all(shots);
        let mut child = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/console_browser.py"
            ))
            .arg("--out")
            .arg(shots)
            .args(["--chromium", &chromium()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} scripts/console_browser.py: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            answers,
            shots: shots.to_path_buf(),
        };
        let ready = b.answer(Duration::from_secs(60));
        assert_eq!(
            ready["result"], "ready",
            "the browser did not start (pip install playwright into $SYNCSTORE_PYTHON; \
             apt-get install chromium): {ready}"
        );
        b
    }

    fn answer(&mut self, wait: Duration) -> Value {
        let line = self.answers.recv_timeout(wait).unwrap_or_else(|_| {
            panic!(
                "scripts/console_browser.py ended or did not answer in {wait:?} (its \
                     stderr is above; Playwright must be installed in $SYNCSTORE_PYTHON: \
                     pip install -r scripts/requirements.txt)"
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    /// Sends a command; its result, or a panic with the browser's error.
    fn try_call(&mut self, cmd: Value) -> Result<Value, String> {
        use std::io::Write;
        let wait = cmd["timeout"].as_u64().unwrap_or(10_000) + 30_000;
        writeln!(self.stdin, "{cmd}").expect("write to the browser");
        self.stdin.flush().unwrap();
        let a = tokio::task::block_in_place(|| self.answer(Duration::from_millis(wait)));
        if a["ok"] == true {
            Ok(a["result"].clone())
        } else {
            Err(format!("{cmd}: {}", a["error"]))
        }
    }

    fn call(&mut self, cmd: Value) -> Value {
        self.try_call(cmd)
            .unwrap_or_else(|e| panic!("browser: {e}"))
    }

    /// Screenshots at laptop and phone size; asserts that the page does not scroll
    /// sideways and nothing sticks out on the right at either.
    fn shots(&mut self, name: &str) {
        let found = self.call(json!({"cmd": "shots", "name": name}));
        for size in ["laptop", "phone"] {
            let f = &found[size];
            assert!(
                f["scrollWidth"].as_u64() <= f["clientWidth"].as_u64()
                    && f["wide"].as_array().is_some_and(|w| w.is_empty()),
                "{name} at {size} size is wider than the screen: {f} (see {})",
                self.shots.display()
            );
        }
    }

    /// Waits until `js` (a function of no arguments, or of `arg`) returns something
    /// truthy; returns it.
    fn wait_js(&mut self, js: &str, arg: Value, timeout_ms: u64) -> Value {
        self.call(json!({"cmd": "wait_js", "js": js, "arg": arg, "timeout": timeout_ms}))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts the good user files back.
fn repair_user_files(data: &std::path::Path) {
    std::fs::remove_dir_all(data.join("users")).unwrap();
    std::fs::rename(data.join("users.good"), data.join("users")).unwrap();
}

/// A user signed in through the tokenserver: its client and the node it landed on.
async fn signed_in(ts: &Server, nodes: &[&Server], user: &str) -> (crate::common::Client, String) {
    let t = crate::common::sign_in(ts, user).await;
    let endpoint = t["api_endpoint"].as_str().unwrap();
    let base = endpoint.rsplit_once("/1.5/").unwrap().0.to_string();
    let server = nodes
        .iter()
        .find(|s| s.url() == base)
        .unwrap_or_else(|| panic!("unknown node {base}"));
    let c = crate::common::Client::with_token(
        server,
        t["uid"].as_u64().unwrap(),
        t["id"].as_str().unwrap().into(),
        t["key"].as_str().unwrap().into(),
    );
    (c, base)
}

/// The selector of a node's card, or of something in it.
fn card(url: &str, inner: &str) -> String {
    format!("article[data-node=\"{url}\"] {inner}")
        .trim()
        .to_string()
}

/// JS: the state of the card of the node `arg`.
const CARD_STATE: &str = "(url) => { const c = document.querySelector(`article[data-node=\"${url}\"]`); \
    return c ? c.dataset.state : null; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_real_browser_an_operator_signs_in_rolls_out_drains_and_sees_the_guard() {
    use crate::common::{cli, fake_verifier, fresh_database};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use syncstore::tokenserver::rollout::bucket;

    if !browser_wanted() {
        return;
    }
    // Three storage nodes and a tokenserver (with the console) on PostgreSQL; reports
    // every second, a guard window of 3 s (as tests/it/canary.rs).
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let env: Vec<(&str, String)> = vec![
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.clone()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0".into()),
        ("SYNCSTORE_NODE_REPORT_SECS", "1".into()),
        ("SYNCSTORE_CANARY_WINDOW_SECS", "3".into()),
        ("SYNCSTORE_CANARY_MIN_REQUESTS", "20".into()),
        ("SYNCSTORE_CANARY_P99_FLOOR_MS", "5000".into()),
        ("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite".into()),
    ];
    let start = |role: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.push(("SYNCSTORE_ROLE", role));
        e.extend_from_slice(extra);
        Server::start(&e)
    };
    let a = start("storage", &[]);
    let b = start("storage", &[]);
    let c = start("storage", &[]);
    for n in [&a, &b, &c] {
        cli(&db, &["node", "add", &n.url(), "--capacity", "1000"]);
    }
    // C is new: it takes no new users yet.
    cli(&db, &["rollout", "set", &c.url(), "0"]);
    let ts = start("tokenserver", &[("SYNCSTORE_ADMIN_LISTEN", "127.0.0.1:0")]);
    let console = format!("{}/admin/", console_url(&ts));
    let token = std::fs::read_to_string(ts.data.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let (a_url, b_url, c_url) = (a.url(), b.url(), c.url());

    // Ten users before the rollout: none lands on C.
    let mut users = Vec::new();
    for i in 0..10 {
        let (client, base) = signed_in(&ts, &[&a, &b, &c], &format!("early{i}")).await;
        assert_ne!(base, c_url);
        let r = client
            .put("/storage/tabs/mine", &json!({"payload": "x"}))
            .await;
        assert_eq!(r.status, 200);
        users.push((client, base));
    }

    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-shots");
    let mut web = Browser::start(&shots);
    web.call(json!({"cmd": "open", "url": console}));
    web.call(json!({"cmd": "wait_js", "js": "() => !document.getElementById('login').hidden"}));
    web.shots("01-sign-in");

    // A wrong token is refused, on the page.
    web.call(json!({"cmd": "fill", "sel": "#token", "value": "not-the-admin-token"}));
    web.call(json!({"cmd": "click", "sel": "#login-button"}));
    let said = web.call(json!({"cmd": "wait_text", "sel": "#login-error", "text": "refused"}));
    assert!(
        said.as_str().unwrap().contains("Wrong admin token"),
        "{said}"
    );
    assert_eq!(
        web.call(json!({"cmd": "visible", "sel": "#console"})),
        false
    );
    web.shots("02-wrong-token");

    // The right one: three nodes, each reporting.
    web.call(json!({"cmd": "fill", "sel": "#token", "value": token}));
    web.call(json!({"cmd": "click", "sel": "#login-button"}));
    web.wait_js(
        "() => { const cards = document.querySelectorAll('article.node'); \
         return cards.length === 3 && [...cards].every((c) => c.dataset.state !== 'stale') \
         && [...cards].every((c) => c.querySelector('svg rect')); }",
        Value::Null,
        30_000,
    );
    assert_eq!(web.wait_js(CARD_STATE, json!(c_url), 5_000), "rollout");
    assert_eq!(web.wait_js(CARD_STATE, json!(a_url), 5_000), "serving");
    web.shots("03-three-nodes");

    // Raise C's share to 50% on the page; new sign-ins follow it: exactly the users
    // whose bucket is under 5000 land on C.
    web.call(json!({"cmd": "fill", "sel": card(&c_url, "input.share"), "value": "50"}));
    web.call(json!({"cmd": "click", "sel": card(&c_url, "button.set-share")}));
    let asked = web.call(json!({"cmd": "confirm", "shot": "04-confirm-share"}));
    assert!(
        asked.as_str().unwrap().contains("Send 50% of new users"),
        "{asked}"
    );
    web.call(json!({"cmd": "wait_text", "sel": card(&c_url, ".figures"), "text": "50.00%"}));
    let mut on_c = 0;
    for i in 0..40 {
        let user = format!("later{i}");
        let (client, base) = signed_in(&ts, &[&a, &b, &c], &user).await;
        let want_c = bucket(&user) < 5000;
        assert_eq!(
            base == c_url,
            want_c,
            "{user} (bucket {}) landed on {base}",
            bucket(&user)
        );
        for k in 0..5 {
            let r = client
                .put(
                    &format!("/storage/history/r{k}"),
                    &json!({"payload": "y".repeat(200)}),
                )
                .await;
            assert_eq!(r.status, 200);
        }
        on_c += usize::from(want_c);
        users.push((client, base));
    }
    assert!((10..=30).contains(&on_c), "{on_c} of 40 on C");
    web.call(json!({"cmd": "wait_text", "sel": card(&c_url, ".figures"), "text": &format!("{on_c} / 1,000")}));
    web.shots("05-share-raised");

    // Drain C live from the page and watch its bar finish.
    web.call(json!({"cmd": "click", "sel": card(&c_url, "button.drain-live")}));
    let asked = web.call(json!({"cmd": "confirm", "shot": "06-confirm-drain"}));
    assert!(
        asked
            .as_str()
            .unwrap()
            .contains(&format!("Move all {on_c} users")),
        "{asked}"
    );
    let sel = format!(".drain[data-node=\"{c_url}\"]");
    web.call(json!({"cmd": "wait_js", "js": "(sel) => document.querySelector(sel)", "arg": sel, "timeout": 20_000}));
    let _ = web.try_call(json!({"cmd": "shots", "name": "07-drain-running"}));
    let finished = web.wait_js(
        "(sel) => { const d = document.querySelector(sel); const bar = d && d.querySelector('[role=progressbar]'); \
         return d && d.dataset.status === 'done' && bar.getAttribute('aria-valuenow') === bar.getAttribute('aria-valuemax') \
         && bar.getAttribute('aria-valuenow'); }",
        json!(sel),
        120_000,
    );
    assert_eq!(finished, json!(on_c.to_string()));
    web.call(json!({"cmd": "wait_text", "sel": card(&c_url, ".figures"), "text": "0 / 1,000"}));
    assert_eq!(web.wait_js(CARD_STATE, json!(c_url), 10_000), "draining");
    web.shots("08-drain-done");
    // C's users went with their data: signed in again, each finds its records elsewhere.
    for (i, (_, base)) in users
        .iter()
        .enumerate()
        .filter(|(_, (_, b))| *b == c_url)
        .take(3)
    {
        let (client, now) = signed_in(&ts, &[&a, &b, &c], &format!("later{}", i - 10)).await;
        assert_ne!(now, c_url);
        assert_ne!(&now, base);
        let r = client.get("/storage/history?full=1").await;
        assert_eq!(r.json().as_array().unwrap().len(), 5, "{}", r.text);
    }

    // B rolls out (60%) and fails: the guard pauses it, the page says why.
    web.call(json!({"cmd": "fill", "sel": card(&b_url, "input.share"), "value": "60"}));
    web.call(json!({"cmd": "click", "sel": card(&b_url, "button.set-share")}));
    web.call(json!({"cmd": "confirm"}));
    assert_eq!(web.wait_js("(url) => { const s = document.querySelector(`article[data-node=\"${url}\"]`).dataset.state; return s === 'rollout' && s; }", json!(b_url), 10_000), "rollout");
    let (b_addr, b_data) = (b.addr.clone(), b.stop());
    assert!(crate::common::damage_user_files(b_data.path()) >= 3);
    let e: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("SYNCSTORE_ROLE", "storage")])
        .collect();
    let b = Server::start_at(b_data, &b_addr, &e);
    // The same load on A and B: each of their users reads every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (client, _) in users.iter().filter(|(_, base)| *base != c_url) {
        let (client, stop) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let path = format!("/1.5/{}/info/collections", client.uid);
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let _ = client.try_raw("GET", &path, &[], None, true).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let paused = web.wait_js(
        "(url) => { const c = document.querySelector(`article[data-node=\"${url}\"]`); \
         return c.dataset.state === 'paused' && c.querySelector('.reason').textContent; }",
        json!(b_url),
        60_000,
    );
    let reason = paused.as_str().unwrap();
    assert!(
        reason.contains("Paused by the canary guard") && reason.contains("5xx"),
        "{reason}"
    );
    assert_eq!(
        web.wait_js(CARD_STATE, json!(a_url), 5_000),
        "serving",
        "A is not paused"
    );
    web.shots("09-guard-paused");
    // New sign-ins avoid it.
    for i in 0..10 {
        let (_, base) = signed_in(&ts, &[&a, &b, &c], &format!("paused{i}")).await;
        assert_ne!(base, b_url);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    // Repaired, B is resumed on the page.
    let b_data = b.stop();
    repair_user_files(b_data.path());
    let _b = Server::start_at(b_data, &b_addr, &e);
    web.call(json!({"cmd": "click", "sel": card(&b_url, "button.resume")}));
    let asked = web.call(json!({"cmd": "confirm"}));
    assert!(asked.as_str().unwrap().contains("5xx"), "{asked}");
    assert_eq!(web.wait_js("(url) => { const s = document.querySelector(`article[data-node=\"${url}\"]`).dataset.state; return s !== 'paused' && s; }", json!(b_url), 15_000), "rollout");

    // An invite, shown once; the audit log names the console and its address.
    web.call(json!({"cmd": "click", "sel": "#invite-form button[type=submit]"}));
    web.call(json!({"cmd": "confirm"}));
    let code = web.wait_js(
        "() => { const c = document.getElementById('invite-code'); return !document.getElementById('invite-result').hidden && c.textContent; }",
        Value::Null,
        10_000,
    );
    assert!(code.as_str().unwrap().len() >= 10, "{code}");
    web.wait_js(
        "() => [...document.querySelectorAll('#audit tbody tr')].some((r) => r.textContent.includes('account.invite'))",
        Value::Null,
        40_000,
    );
    web.shots("10-resumed-invite-audit");
    let audit: Vec<Value> = serde_json::from_str(&cli(&db, &["audit", "--json"])).unwrap();
    let by_console: Vec<&str> = audit
        .iter()
        .filter(|r| r["via"] == "console" && r["who"] == "127.0.0.1")
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in ["rollout.set", "rollout.resume", "account.invite"] {
        assert!(by_console.contains(&action), "{action} in {audit:?}");
    }
    assert!(
        audit
            .iter()
            .any(|r| r["via"] == "guard" && r["target"] == b_url.as_str()),
        "{audit:?}"
    );

    // The other controls: an allow-list entry added and taken off, a node marked down
    // and up, sign-ups closed and opened; each shows on the page.
    web.call(
        json!({"cmd": "fill", "sel": "#list-who", "value": "0123456789abcdef0123456789abcdef"}),
    );
    web.call(json!({"cmd": "click", "sel": "#list-form button[type=submit]"}));
    let asked = web.call(json!({"cmd": "confirm"}));
    assert!(
        asked
            .as_str()
            .unwrap()
            .starts_with("Always send 0123456789abcdef"),
        "{asked}"
    );
    web.call(json!({"cmd": "wait_text", "sel": "#lists tbody", "text": "0123456789abcdef0123456789abcdef"}));
    web.call(json!({"cmd": "click", "sel": "#lists tbody button"}));
    web.call(json!({"cmd": "confirm"}));
    web.call(json!({"cmd": "wait_text", "sel": "#lists tbody", "text": "No lists."}));
    web.call(json!({"cmd": "click", "sel": card(&a_url, "button.down")}));
    web.call(json!({"cmd": "confirm"}));
    assert_eq!(web.wait_js("(url) => { const s = document.querySelector(`article[data-node=\"${url}\"]`).dataset.state; return s === 'down' && s; }", json!(a_url), 10_000), "down");
    web.shots("11-node-down");
    web.call(json!({"cmd": "click", "sel": card(&a_url, "button.down")}));
    web.call(json!({"cmd": "confirm"}));
    assert_eq!(web.wait_js("(url) => { const s = document.querySelector(`article[data-node=\"${url}\"]`).dataset.state; return s === 'serving' && s; }", json!(a_url), 10_000), "serving");
    web.call(json!({"cmd": "click", "sel": "#signups-toggle"}));
    web.call(json!({"cmd": "confirm"}));
    web.call(json!({"cmd": "wait_text", "sel": "#signups-state", "text": "closed"}));
    let closed = reqwest::Client::new()
        .get(format!("{}/1.0/sync/1.5", ts.url()))
        .bearer_auth("good-while-closed")
        .header("x-keyid", "1-qg")
        .send()
        .await
        .unwrap();
    assert_eq!(
        closed.status(),
        401,
        "sign-ups closed: a new user is refused"
    );
    let body = closed.text().await.unwrap();
    assert!(body.contains("new-users-disabled"), "{body}");
    web.call(json!({"cmd": "click", "sel": "#signups-toggle"}));
    web.call(json!({"cmd": "confirm"}));
    web.call(json!({"cmd": "wait_text", "sel": "#signups-state", "text": "open"}));

    // Sign out; nothing went wrong in the page (a failed request's status aside: the
    // browser logs the 401 of the first session check and the 403 of the wrong token).
    web.call(json!({"cmd": "click", "sel": "#logout"}));
    web.call(json!({"cmd": "wait_js", "js": "() => !document.getElementById('login').hidden"}));
    let errors = web.call(json!({"cmd": "errors"}));
    let real: Vec<&Value> = errors
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e.as_str().unwrap().contains("Failed to load resource"))
        .collect();
    assert!(real.is_empty(), "errors in the page: {real:?}");
}
