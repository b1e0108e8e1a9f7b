//! A real Firefox (headless, driven over Marionette) syncs with the real server:
//! `scripts/firefox/scenarios.py` starts profiles whose only account setting is
//! `identity.fxaccounts.autoconfig.uri` (pointing at the server under test); every
//! profile signs in by typing into syncstore's own sign-in page, to accounts made with
//! `syncstore account add --password-stdin` on the server's data dir (no stand-in
//! accounts server, no test JWK set): Firefox completes the OAuth flow itself and holds
//! a genuine syncstore session. The scenarios sync and check both Firefox and the
//! server (over HTTP with the access token Firefox holds, and the server's files):
//! syncing between profiles and accounts, node drains, Send Tab from one profile to
//! another (the server's device command queue, fetched by Firefox in a scheduled
//! sync), sign-out (the session revoked),
//! a password change on `/settings` (Firefox keeps syncing, the data stays), an account
//! deleted by the operator (refused on the page, its Sync data gone), and the sign-up
//! policies on the page: `invite` (a code from `syncstore account invite` typed into
//! the "Invite code" field makes one account; the spent code is refused) and `open`
//! with SMTP (the page asks for the mailed 6-digit code, caught by the stdlib SMTP sink
//! `scripts/firefox/smtpsink.py`; a wrong code is refused, the right one signs Firefox
//! in). A sync passes only if Firefox reports success, its log from sign-in on (what
//! Firefox logged by itself between the syncs included) shows no failed request and no
//! ERROR line, and Firefox wrote no `weave/logs/error-sync-*.txt` file
//! (`scripts/firefox/harness.py`). `scripts/test`
//! installs Firefox ESR and the Python packages; without them these tests fail. One
//! Firefox scenario runs at a time. Logs of each run are kept under
//! target/tmp/firefox/<scenario>/.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::common::{SECRET, Server, cli, fresh_database};

/// The account the sign-in page scenarios type in.
const PAGE_EMAIL: &str = "page-user@example.org";
/// Its password.
const PAGE_PASSWORD: &str = "correct horse battery staple";

/// One scenario at a time: the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Token lifetime in the node scenario, seconds.
const TOKEN_SECS: u64 = 20;

fn start(env: &[(&'static str, String)]) -> Server {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&e)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a scenario of scripts/firefox/scenarios.py; panics with its output and the
/// tail of every server's request log unless it prints `ok`.
/// The Python the scripts run with: $SYNCSTORE_PYTHON, else python3.
fn python() -> String {
    std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn scenario(name: &str, servers: &[&Server], extra: &[String]) {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import cryptography, hawkauthlib, requests"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import cryptography/hawkauthlib/requests: run the tests with \
         scripts/test (it installs scripts/requirements.txt into a virtualenv)"
    );
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("firefox")
        .join(name);
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/firefox/scenarios.py"
        ))
        .arg(name)
        .arg("--out")
        .arg(&out_dir)
        .arg("--accounts-dir")
        .arg(servers[0].data.path())
        .args(["--tokenserver", &servers[0].url()])
        .args(["--bin", env!("CARGO_BIN_EXE_syncstore"), "--secret", SECRET])
        .args(extra)
        .output()
        .expect("run scripts/firefox/scenarios.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut logs = String::new();
    for (i, s) in servers.iter().enumerate() {
        let log = s.log_text();
        let _ = std::fs::write(out_dir.join(format!("server-{i}.log")), &log);
        logs.push_str(&format!(
            "---- tail of server {i}'s log ({}) ----\n{}\n",
            s.url(),
            tail(&log, 40)
        ));
    }
    assert!(
        out.status.success() && stdout.lines().last() == Some("ok"),
        "Firefox scenario {name} failed (logs in {}):\n{stdout}\n{stderr}\n{logs}",
        out_dir.display()
    );
}

/// One zero-config server (accounts, tokenserver and storage).
fn single(name: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = start(&[]);
    scenario(name, &[&s], &[]);
}

#[test]
fn first_sync_of_a_new_account_writes_meta_global_keys_and_a_client() {
    single("first_sync");
}

#[test]
fn bookmarks_logins_history_and_tabs_made_on_one_profile_reach_another() {
    single("data_reaches_b");
}

#[test]
fn edits_and_deletions_on_the_second_profile_reach_the_first() {
    single("edits_reach_a");
}

#[test]
fn both_profiles_see_each_other_as_devices() {
    single("devices");
}

#[test]
fn two_hundred_bookmarks_in_one_sync_all_arrive() {
    single("many_bookmarks");
}

#[test]
fn a_second_account_on_the_same_server_sees_none_of_the_first() {
    single("second_account");
}

/// Firefox signs out as its preferences do: it reports no signed-in user, and the
/// server revoked the session token Firefox held (session/status 401 errno 110).
#[test]
fn signing_out_in_firefox_revokes_its_session_on_the_server() {
    single("sign_out");
}

/// `syncstore account delete` while the server runs: the sign-in page refuses the
/// email as an unknown account and the account's Sync data is gone from its node.
#[test]
fn an_account_deleted_by_the_operator_cannot_sign_in_and_its_sync_data_is_gone() {
    single("account_deleted");
}

/// Firefox's "Manage account" opens syncstore's `/settings`; the password changed there
/// (onepw change/start, keys, change/finish: same kB) keeps Firefox signed in and
/// syncing; a second profile signs in with the new password (the old one is refused)
/// and receives the first's bookmarks.
#[test]
fn a_password_changed_on_the_settings_page_keeps_firefox_syncing_and_the_data() {
    single("password_change");
}

/// The owner deletes the account on `/settings` (password asked again, a wrong one
/// refused): Firefox is told and signs out, the account cannot sign in, its Sync data
/// is gone from its node.
#[test]
fn an_account_deleted_on_the_settings_page_signs_firefox_out_and_its_data_is_gone() {
    single("deleted_on_settings_page");
}

/// Two storage nodes (only A takes new users) and a tokenserver on one PostgreSQL
/// assignment database (as tests/it/live_moves.rs); the scenario drains A live, then B
/// plainly.
#[test]
fn both_profiles_keep_syncing_through_live_and_plain_node_drains() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(fresh_database());
    let env: Vec<(&'static str, String)> = vec![
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.clone()),
        ("SYNCSTORE_ASSIGNMENT_CHECK_SECS", "0".into()),
        // Short tokens: after the plain drain Firefox asks for a new one soon.
        ("SYNCSTORE_TOKEN_DURATION_SECS", TOKEN_SECS.to_string()),
    ];
    let with_role = |role: &str| {
        let mut e = env.clone();
        e.push(("SYNCSTORE_ROLE", role.to_string()));
        start(&e)
    };
    let a = with_role("storage");
    let b = with_role("storage");
    cli(&db, &["node", "add", &a.url(), "--capacity", "1000"]);
    cli(&db, &["node", "add", &b.url(), "--capacity", "1000"]);
    cli(&db, &["node", "set", &b.url(), "--available", "0"]);
    let tokenserver = with_role("tokenserver");
    scenario(
        "node_drains",
        &[&tokenserver, &a, &b],
        &[
            "--db".into(),
            db,
            "--nodes".into(),
            format!("{},{}", a.url(), b.url()),
            "--token-secs".into(),
            TOKEN_SECS.to_string(),
        ],
    );
}

/// Send Tab between two profiles of one account, Firefox's own code on both sides: A
/// sends a tab to B with Firefox's Send Tab API (end-to-end encrypted to B's open-uri
/// keys, queued by `invoke_command`); B, without push here, fetches it in a scheduled
/// sync once `identity.fxaccounts.commands.missed.fetch_interval` has passed (not
/// before) and opens the URL in a tab. The server refuses another account's device as
/// the target and an oversized payload; B's queue holds A's one tab, unreadable.
#[test]
fn send_tab_between_two_profiles() {
    single("send_tab");
}

/// A server with the built-in accounts service and one account made by
/// `syncstore account add --password-stdin`, then a page scenario with its credentials
/// (and `extra` arguments).
fn page_scenario(name: &str, env: &[(&str, &str)], extra: &[String]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args([
            "account",
            "add",
            PAGE_EMAIL,
            "--password-stdin",
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PAGE_PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Server::start_in(data, env);
    let mut args: Vec<String> = vec![
        "--email".into(),
        PAGE_EMAIL.into(),
        "--password".into(),
        PAGE_PASSWORD.into(),
    ];
    args.extend_from_slice(extra);
    scenario(name, &[&s], &args);
}

/// scripts/firefox/smtpsink.py running on 127.0.0.1 (a free port it picked and
/// printed): every message it accepts is a file in `dir`. Killed when dropped.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/firefox/smtpsink.py"
            ))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run scripts/firefox/smtpsink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("smtpsink.py printed {line:?}, not its port")
            });
        SmtpSink { child, port, dir }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A profile whose only account setting is `identity.fxaccounts.autoconfig.uri` finds
/// syncstore's URLs, signs in by typing into syncstore's own page, and Firefox completes
/// the OAuth flow (WebChannel, PKCE, keys JWE) and syncs: meta/global is on the server.
#[test]
fn firefox_signs_in_on_syncstores_own_page_and_syncs() {
    page_scenario("page_sign_in", &[], &[]);
}

/// On the page a wrong password shows the error and signs nothing in; a second profile
/// signed in the same way receives a bookmark made on the first.
#[test]
fn a_wrong_password_on_the_page_signs_nothing_in_and_page_profiles_share_bookmarks() {
    page_scenario("page_two_profiles", &[], &[]);
}

/// With `accounts_signups = "open"`, "Create an account" on the page makes the account
/// (`/v1/account/create?keys=true`) and Firefox is signed in to it and syncs.
#[test]
fn with_open_sign_ups_firefox_creates_an_account_on_the_page_and_syncs() {
    page_scenario(
        "page_sign_up",
        &[("SYNCSTORE_ACCOUNTS_SIGNUPS", "open")],
        &[],
    );
}

/// With `accounts_signups = "invite"` the page shows the "Invite code" field; a code
/// from `syncstore account invite` typed there with a new email and password makes the
/// account ("Create an account"), Firefox is signed in to it and syncs, and the invite
/// is listed as used by it. The same code again (another email, a fresh profile) shows
/// the page's invite refusal, signs nothing in and makes no account.
#[test]
fn page_invite_sign_up_makes_one_account_per_cli_code_and_firefox_syncs() {
    page_scenario(
        "page_invite_sign_up",
        &[("SYNCSTORE_ACCOUNTS_SIGNUPS", "invite")],
        &[],
    );
}

/// With open sign-ups and SMTP (`smtp://127.0.0.1:PORT?tls=none`, a sink from
/// scripts/firefox/smtpsink.py), "Create an account" on the page makes an unverified
/// account and one mail with a 6-digit code goes to the new address; the page asks for
/// the code (Firefox still signed out), shows a wrong code's error, and with the
/// mailed code goes on: Firefox is signed in, verified, and syncs.
#[test]
fn page_email_code_sign_up_asks_for_the_mailed_code_and_firefox_syncs() {
    let sink = SmtpSink::start();
    let smtp = format!("smtp://127.0.0.1:{}?tls=none", sink.port);
    page_scenario(
        "page_email_code_sign_up",
        &[
            ("SYNCSTORE_ACCOUNTS_SIGNUPS", "open"),
            ("SYNCSTORE_ACCOUNTS_SMTP_URL", &smtp),
            ("SYNCSTORE_ACCOUNTS_MAIL_FROM", "Sync <sync@example.org>"),
        ],
        &["--mail-dir".into(), sink.dir.path().display().to_string()],
    );
}

/// The page shows an unknown account, closed sign-ups, a wrong password and the attempt
/// limit as the server refuses them, and Firefox stays signed out.
#[test]
fn the_sign_in_page_shows_each_refusal_and_signs_nothing_in() {
    page_scenario("page_errors", &[], &[]);
}

/// The sign-in page as any browser gets it (no Firefox needed): at `/`, with an email
/// and a password input and a submit button, its script and style as separate files
/// (no inline script), every asset under a Content-Security-Policy allowing only this
/// origin's script; without the accounts service `/` is not served.
#[test]
fn the_sign_in_page_is_served_with_a_strict_content_security_policy() {
    let s = start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| get_from(&rt, &s, path);
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
               img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";
    let (status, headers, html) = get("/?context=oauth_webchannel_v1&action=email&service=sync");
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], csp);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    for needle in [
        "<input type=\"email\"",
        "<input type=\"password\"",
        "<button type=\"submit\"",
        "<script src=\"/accounts/pages/common.js\"",
        "<script src=\"/accounts/pages/signin.js\"",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}: {html}");
    }
    assert_eq!(html.matches("<script").count(), 2, "inline script: {html}");
    // The settings page ("Manage account"): current and new password, its own script.
    let (status, headers, html) = get("/settings?entrypoint=preferences&uid=00&email=a%40b.c");
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], csp);
    assert_eq!(headers["x-frame-options"], "DENY");
    for needle in [
        "<input type=\"password\" id=\"current\"",
        "<input type=\"password\" id=\"new\"",
        "<button type=\"submit\"",
        "<script src=\"/accounts/pages/common.js\"",
        "<script src=\"/accounts/pages/settings.js\"",
    ] {
        assert!(
            html.contains(needle),
            "the settings page lacks {needle}: {html}"
        );
    }
    assert_eq!(html.matches("<script").count(), 2, "inline script: {html}");
    for (path, mime) in [
        (
            "/accounts/pages/common.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/accounts/pages/signin.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/accounts/pages/settings.js",
            "text/javascript; charset=utf-8",
        ),
        ("/accounts/pages/signin.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get(path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], mime, "{path}");
        assert_eq!(headers["content-security-policy"], csp, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    drop(s);
    let without = start(&[("SYNCSTORE_ACCOUNTS", "false".into())]);
    assert_eq!(
        get_from(&rt, &without, "/v1/jwks").0,
        404,
        "the accounts service is still on"
    );
    assert_eq!(get_from(&rt, &without, "/").0, 404);
    assert_eq!(get_from(&rt, &without, "/settings").0, 404);
}

/// GET `path` on a server: status, headers, body.
fn get_from(
    rt: &tokio::runtime::Runtime,
    s: &Server,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    rt.block_on(async {
        let r = reqwest::get(format!("{}{path}", s.url())).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    })
}

/// A restore Firefox does not notice, and the marking that makes it notice: the
/// scenario runs the server itself (the test's binary on `data`, a fixed port) so that
/// it can stop it, delete its data dir, `syncstore restore` it from a `syncstore backup`
/// taken while it ran, and start it again on the same address under live profiles.
/// Restored with `--no-resync`, the bookmarks synced after the backup stay missing on
/// the server through Firefox's next syncs; restored as by default (every user's
/// meta/global gets a new syncID), Firefox's next sync uploads them again, the other
/// profile keeps all, and a new profile gets every bookmark. Then one user alone is
/// restored into the running server (`restore --user`, over its internal listener),
/// marked as well, with the same outcome.
#[test]
fn a_restore_marks_users_so_firefox_uploads_again_what_the_server_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = "restore_resync";
    let data = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("firefox")
        .join(name);
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/firefox/scenarios.py"
        ))
        .arg(name)
        .arg("--out")
        .arg(&out_dir)
        .arg("--accounts-dir")
        .arg(data.path())
        .arg("--backups")
        .arg(backups.path())
        // The scenario's own server is the tokenserver; it sets the URL once started.
        .args([
            "--tokenserver",
            "",
            "--bin",
            env!("CARGO_BIN_EXE_syncstore"),
        ])
        .args(["--secret", SECRET])
        .output()
        .expect("run scripts/firefox/scenarios.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::write(out_dir.join("scenario-output.txt"), stdout.as_bytes());
    if !(out.status.success() && stdout.lines().last() == Some("ok")) {
        let mut logs = String::new();
        for run in 1..=3 {
            let path = out_dir.join(format!("server-{run}.log"));
            if let Ok(log) = std::fs::read_to_string(&path) {
                logs.push_str(&format!(
                    "---- tail of {} ----\n{}\n",
                    path.display(),
                    tail(&log, 40)
                ));
            }
        }
        panic!(
            "Firefox scenario {name} failed (logs in {}):\n{stdout}\n{}\n{logs}",
            out_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
