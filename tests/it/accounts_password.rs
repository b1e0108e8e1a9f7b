//! A password change on the built-in accounts service, decided by PyPI's PyFxA
//! (scripts/accounts_pyfxa_password.py): kB and the Sync key's rotation time survive,
//! other sessions are revoked, the old password stops working.

use std::process::Command;

use crate::common;

#[test]
fn pyfxa_changes_the_password_keeping_kb_and_revoking_other_sessions() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let data = tempfile::tempdir().unwrap();
    let email = "dave@example.org";
    common::account_cli(
        data.path(),
        &["add", email, "--password-stdin"],
        &[],
        "old password here",
    );
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
