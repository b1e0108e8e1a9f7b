//! Interop: PyPI's `tokenlib` + `hawkauthlib` (the reference client libraries) drive
//! the real server through `scripts/interop.py`. `scripts/test` installs them into a
//! virtualenv and points SYNCSTORE_PYTHON at it.

mod common;

use std::process::Command;

use common::{SECRET, Server};

#[test]
fn reference_client_libraries_interoperate() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import tokenlib, hawkauthlib, requests"])
        .status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "{python} cannot import tokenlib/hawkauthlib/requests: run the tests with scripts/test \
         (it installs scripts/requirements.txt into a virtualenv)"
    );
    let s = Server::start(&[]);
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop.py"))
        .args([&s.url(), SECRET, env!("CARGO_BIN_EXE_syncstore")])
        .arg(s.data.path())
        .output()
        .expect("run interop.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "interop failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}
