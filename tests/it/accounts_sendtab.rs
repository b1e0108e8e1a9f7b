//! Send Tab and Web Push on the built-in accounts service, seen by independent clients
//! (scripts/accounts_pyfxa_sendtab.py): PyPI's PyFxA devices register push endpoints on
//! a receiver the script runs on 127.0.0.1, which checks each push's VAPID header and
//! decrypts its body with the device's own keys (PyPI's `http_ece`); a command reaches
//! its target's endpoint and is fetched from the URL the push names; device and account
//! events and `devices/notify` reach the right devices; a 410 marks the endpoint
//! expired; endpoints on private addresses are refused or never connected to, and
//! endpoints outside the listed push services never pushed to; with push off nothing
//! is sent and the command is still fetched. The queue's own rules are in
//! `accounts_commands`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fxa::server_with_account;

const EMAIL: &str = "sendtab@example.org";
const PASSWORD: &str = "correct horse battery";
/// The longest one run of the script may take (its own waits are bounded well below).
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

/// Starts a server with `env` and an account, runs the script in `mode` against it and
/// asserts that it printed `ok`.
fn sendtab(mode: &str, env: &[(&str, &str)]) {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import fxa.core, http_ece, jwt, cryptography"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import PyFxA/http_ece/PyJWT: run the tests with scripts/test \
         (it installs scripts/requirements.txt into a virtualenv)"
    );
    let s = server_with_account(EMAIL, PASSWORD, env);
    let mut child = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/accounts_pyfxa_sendtab.py"
        ))
        .args([mode, &s.url(), EMAIL, PASSWORD])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run accounts_pyfxa_sendtab.py");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let log = s.log.lock().unwrap().join("\n");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.trim_end().ends_with("ok"),
        "{mode}: {status:?}\n{stdout}\n{stderr}\nserver log:\n{log}"
    );
}

/// A tab sent from A reaches B's push endpoint encrypted to B and VAPID-signed, and B
/// fetches it from the pushed URL; connected, disconnected, `devices/notify`, an
/// expired endpoint and its renewal, a password change, the account's deletion.
#[test]
fn pyfxa_devices_receive_commands_and_events_by_web_push() {
    sendtab(
        "push",
        &[("SYNCSTORE_ACCOUNTS_PUSH_ALLOW_PRIVATE", "127.0.0.1")],
    );
}

/// Without the allow setting, a push endpoint on a private address is refused at
/// registration, and a name that resolves to one is never connected to, even where
/// any push service is allowed (`accounts_push_services = ["*"]`).
#[test]
fn push_endpoints_on_private_addresses_are_refused_or_never_reached() {
    sendtab("ssrf", &[("SYNCSTORE_ACCOUNTS_PUSH_SERVICES", "*")]);
}

/// With the default push services, an endpoint at another host is never pushed to,
/// although its address (127.0.0.1) is allowed; a literal allowed address is.
#[test]
fn only_the_listed_push_services_are_pushed_to() {
    sendtab(
        "services",
        &[("SYNCSTORE_ACCOUNTS_PUSH_ALLOW_PRIVATE", "127.0.0.1")],
    );
}

/// `accounts_push = false`: nothing leaves the server, and the command still waits for
/// its target's fetch.
#[test]
fn with_push_off_nothing_is_posted_and_the_command_is_fetched() {
    sendtab(
        "off",
        &[
            ("SYNCSTORE_ACCOUNTS_PUSH", "false"),
            ("SYNCSTORE_ACCOUNTS_PUSH_ALLOW_PRIVATE", "127.0.0.1"),
        ],
    );
}
