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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_when_the_public_url_is_https() {
    let s = with_console(&[("SYNCSTORE_PUBLIC_URL", "https://sync.example.org")]);
    let base = console_url(&s);
    let (ok, _) = login(&reqwest::Client::new(), &base, &admin_token(&s)).await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.header("set-cookie").contains("; Secure"),
        "{}",
        ok.header("set-cookie")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_wrong_tokens_at_once_get_exactly_five_comparisons() {
    let s = with_console(&[]);
    let base = console_url(&s);
    let token = admin_token(&s);
    let url = format!("{base}/admin/api/login");
    let attempt = |ip: &'static str, token: String| {
        let url = url.clone();
        async move {
            let c = client_from(ip, Duration::from_secs(30));
            let r = c
                .post(&url)
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, json!({ "retry": retry }))
        }
    };
    let answers = together(100, |i| attempt("127.0.0.1", format!("wrong-token-{i:04}"))).await;
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
    // The cap in all: 30 failures a minute from any number of addresses.
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
