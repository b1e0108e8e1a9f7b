//! A password change on the built-in accounts service, decided by PyPI's PyFxA
//! (scripts/accounts_pyfxa_password.py): kB and the Sync key's rotation time survive,
//! other sessions are revoked, the old password stops working.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

#[test]
fn pyfxa_changes_the_password_keeping_kb_and_revoking_other_sessions() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let data = tempfile::tempdir().unwrap();
    let email = "dave@example.org";
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(["account", "add", email, "--password-stdin", "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "old password here").unwrap();
    assert!(child.wait().unwrap().success());
    let s = common::Server::start_in(data, &[]);
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/accounts_pyfxa_password.py"
        ))
        .args([&s.url(), email, "old password here", "a new password here"])
        .output()
        .expect("run python (scripts/test installs PyFxA into a virtualenv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
