//! Deleting an account of the built-in accounts service (`syncstore account delete`,
//! run as its own process beside the server) deletes its Sync data on its node, and
//! its access tokens stop working at the tokenserver at once, as do a disabled
//! account's until it is enabled again.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::fxa::{self, OLDSYNC};
use crate::common::{self, Server};
use serde_json::{Value, json};

const EMAIL: &str = "carol@example.org";
const PASSWORD: &str = "a long and private passphrase";
/// `syncstore account ARGS… --data-dir DIR`, with `stdin` on standard input.
fn account(data: &std::path::Path, args: &[&str], stdin: &str) -> String {
    common::account_cli(data, args, &[], stdin)
}

/// Signs in and returns an access token with the oldsync scope, and an X-KeyID at the
/// account's keys_changed_at (the only one the tokenserver takes with the service's own
/// tokens; the client state is made up, the server cannot check it).
async fn access_token(s: &Server) -> (String, String) {
    let bearer = fxa::signed_in(s, EMAIL, PASSWORD).await;
    let (status, grant) = fxa::grant(s, &bearer, OLDSYNC, None).await;
    assert_eq!(status, 200, "{grant}");
    let kca = fxa::keys_changed_at(s, &bearer).await;
    (
        grant["access_token"].as_str().unwrap().to_string(),
        format!("{kca}-qqqqqqqqqqqqqqqqqqqqqg"),
    )
}

/// The tokenserver's answer to an access token (and its X-KeyID): status and body.
async fn sync_token(s: &Server, (access, key_id): &(String, String)) -> (u16, Value) {
    fxa::sync_token(s, access, key_id).await
}

fn user_files(s: &Server) -> usize {
    syncstore::storage::files::list_users(s.data.path())
        .unwrap()
        .len()
}

#[test]
fn deleting_an_account_deletes_its_sync_data_and_its_tokens_stop_working() {
    let s = fxa::server_with_account(EMAIL, PASSWORD, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let access = access_token(&s).await;
        let (status, sync) = sync_token(&s, &access).await;
        assert_eq!(status, 200, "{sync}");
        let client = fxa::storage_client(&s, &sync);
        let r = client
            .put("/storage/bookmarks/b1", &json!({"payload": "secret"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(user_files(&s), 1);

        // Disabled: the access token is refused, and stays refused once enabled (the
        // disable moved the account's token generation); a new sign-in syncs again.
        account(s.data.path(), &["disable", EMAIL], "");
        fxa::assert_refused(&sync_token(&s, &access).await, "invalid-credentials");
        account(s.data.path(), &["enable", EMAIL], "");
        fxa::assert_refused(&sync_token(&s, &access).await, "invalid-generation");
        let access = access_token(&s).await;
        let (status, again) = sync_token(&s, &access).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["uid"], sync["uid"], "the same Sync user: {again}");

        // Deleted by the operator from another process: the running server deletes
        // the account's Sync data on its node.
        let said = account(s.data.path(), &["delete", EMAIL], "");
        assert!(said.contains(EMAIL), "{said}");
        fxa::assert_refused(&sync_token(&s, &access).await, "invalid-credentials");
        let deadline = Instant::now() + Duration::from_secs(30);
        while user_files(&s) > 0 {
            assert!(
                Instant::now() < deadline,
                "the user's file is still there 30 s after the account's deletion"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = client.get("/storage/bookmarks/b1").await;
        assert!(
            r.status == 401 || r.status == 404,
            "{} {}",
            r.status,
            r.text
        );
        assert!(s.log_text().contains("account deleted: user retired"));

        // It can no longer sign in.
        let (status, body) = fxa::login(&s, EMAIL, PASSWORD, false).await;
        assert_eq!((status, body["errno"].as_i64()), (400, Some(102)), "{body}");
    });
}

#[test]
fn pyfxa_deletes_its_own_account_with_session_and_password() {
    let python = std::env::var("SYNCSTORE_PYTHON").unwrap_or_else(|_| "python3".into());
    let data = tempfile::tempdir().unwrap();
    account(data.path(), &["add", EMAIL, "--password-stdin"], PASSWORD);
    account(
        data.path(),
        &["add", "eve@example.org", "--password-stdin"],
        "eve's password",
    );
    let s = Server::start_in(data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A session of another account cannot delete this one, even with its password.
        let (_, eve) = fxa::login(&s, "eve@example.org", "eve's password", false).await;
        let eve_bearer = fxa::session_bearer(eve["sessionToken"].as_str().unwrap());
        let body = fxa::credentials(EMAIL, PASSWORD, None);
        let (status, refused) =
            common::fxa_post(&s, "/v1/account/destroy", &body, Some(&eve_bearer)).await;
        assert_eq!(
            (status, refused["errno"].as_i64()),
            (401, Some(110)),
            "{refused}"
        );
        // Without a session: refused.
        let (status, _) = common::fxa_post(&s, "/v1/account/destroy", &body, None).await;
        assert_eq!(status, 401);
    });
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, fxa.core, fxa.errors\n\
             c = fxa.core.Client(server_url=sys.argv[1] + '/v1')\n\
             try:\n    c.destroy_account(sys.argv[2], 'not the password')\n    sys.exit('a wrong password deleted the account')\n\
             except fxa.errors.ClientError as e:\n    assert e.details['errno'] == 103, e.details\n\
             c.destroy_account(sys.argv[2], sys.argv[3])\n\
             try:\n    c.login(sys.argv[2], sys.argv[3])\n    sys.exit('the deleted account still signs in')\n\
             except fxa.errors.ClientError as e:\n    assert e.details['errno'] == 102, e.details\n\
             print('ok')",
        ])
        .args([&s.url(), EMAIL, PASSWORD])
        .output()
        .expect("run python (scripts/test installs PyFxA into a virtualenv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Eve is untouched.
    let listed = account(s.data.path(), &["list"], "");
    assert!(
        listed.contains("eve@example.org") && !listed.contains(EMAIL),
        "{listed}"
    );
}
