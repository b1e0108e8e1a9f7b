//! `syncstore backup DEST` and `syncstore restore SRC`, black-box: the real server
//! under write load is backed up by the real command, killed, its data dir deleted and
//! restored from the backup; every write acknowledged before the manifest's
//! consistency time is there, the account signs in with its password and gets the
//! same kB, and tokens minted before the backup still verify. A damaged backup and a
//! data dir in use are refused before anything is written; a second backup copies only
//! the users who changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use syncstore::accounts::crypto;

use crate::common::fxa::{self, FIREFOX, OLDSYNC, hex32, sync_token, token_bearer};
use crate::common::{self, Client, Server};

const EMAIL: &str = "backup@example.org";
const PASSWORD: &str = "a passphrase worth keeping";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `syncstore ARGS… --data-dir DATA` (with no secret in the environment: the data
/// dir's generated one); its status, stdout and stderr.
fn syncstore(data: &Path, args: &[&str]) -> (bool, String, String) {
    syncstore_with(data, args, &[])
}

/// [`syncstore`] with `env` set.
fn syncstore_with(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SYNCSTORE_SECRETS")
        .envs(env.iter().copied())
        .output()
        .expect("run syncstore");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server on `data` at `listen` using the data dir's generated secret.
fn serve(data: tempfile::TempDir, listen: &str) -> Server {
    Server::start_with(data, listen, &[], |cmd| {
        cmd.env_remove("SYNCSTORE_SECRETS");
    })
}

/// A storage client of `uid` with a token signed by the data dir's generated secret.
fn client(s: &Server, uid: u64) -> Client {
    let secret = std::fs::read_to_string(s.data.path().join("secret")).unwrap();
    let (id, key) = common::token(secret.trim(), uid, &s.url(), 3600.0);
    Client::with_token(s, uid, id, key)
}

fn manifest(dest: &Path) -> Value {
    let latest = std::fs::read_to_string(dest.join("LATEST")).unwrap();
    let text = std::fs::read(dest.join(latest.trim()).join("manifest.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// What writers were told succeeded: (uid, id) → (payload, when the answer came, ms).
type Acked = Arc<Mutex<BTreeMap<(u64, String), (String, i64)>>>;

async fn writer(c: Client, task: u64, stop: Arc<AtomicBool>, acked: Acked) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("t{task}n{n}");
        let payload = format!("{id}-{}", "x".repeat((n % 50) as usize * 20));
        let body = serde_json::to_vec(&json!({ "payload": payload })).unwrap();
        let Ok(r) = c
            .try_json("PUT", &format!("/storage/load/{id}"), body)
            .await
        else {
            return;
        };
        if r.status == 200 {
            acked
                .lock()
                .unwrap()
                .insert((c.uid, id), (payload, now_ms()));
        }
    }
}

/// A signed-in session: its Bearer, kB and X-KeyID.
async fn sign_in(s: &Server) -> (String, [u8; 32], String) {
    let (status, session) = fxa::login(s, EMAIL, PASSWORD, true).await;
    assert_eq!(status, 200, "{session}");
    let bearer = token_bearer("fxs", &hex32(&session["sessionToken"]), "sessionToken");
    let kb = fxa::kb(s, EMAIL, PASSWORD, &hex32(&session["keyFetchToken"])).await;
    let kca = fxa::keys_changed_at(s, &bearer).await;
    let kid = common::key_id(kca, &crypto::client_state(&kb));
    (bearer, kb, kid)
}

async fn access_token(s: &Server, bearer: &str) -> String {
    let body = json!({"grant_type": "fxa-credentials", "client_id": FIREFOX, "scope": OLDSYNC});
    let (status, g) = common::fxa_post(s, "/v1/oauth/token", &body, Some(bearer)).await;
    assert_eq!(status, 200, "{g}");
    g["access_token"].as_str().unwrap().to_string()
}

#[test]
fn a_server_backed_up_under_load_is_restored_with_every_acknowledged_write_its_accounts_and_tokens()
{
    let data = tempfile::tempdir().unwrap();
    fxa::add_account(data.path(), EMAIL, PASSWORD);
    let s = serve(data, "127.0.0.1:0");
    let addr = s.addr.clone();
    let dest = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Before: the account syncs a record with a token from the tokenserver.
    let (bearer, kb, kid) = rt.block_on(sign_in(&s));
    let access = rt.block_on(access_token(&s, &bearer));
    let (status, sync) = rt.block_on(sync_token(&s, &access, &kid));
    assert_eq!(status, 200, "{sync}");
    let owner = fxa::storage_client(&s, &sync);
    let r = rt.block_on(owner.put("/storage/bookmarks/root", &json!({"payload": "mine"})));
    assert_eq!(r.status, 200, "{}", r.text);

    // Writers on three users while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let c = client(&s, 101 + t % 3);
            rt.spawn(writer(c, t, stop.clone(), acked.clone()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let dest_arg = dest.path().to_str().unwrap();
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg]);
    assert!(ok, "backup failed: {out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let m = manifest(dest.path());
    let consistent_to = m["consistent_to_ms"].as_i64().unwrap();
    let acked = acked.lock().unwrap().clone();
    let before: Vec<_> = acked.iter().filter(|(_, v)| v.1 < consistent_to).collect();
    let after = acked.len() - before.len();
    assert!(
        before.len() > 10 && after > 10,
        "writes before ({}) and after ({after}) the backup's consistency time",
        before.len()
    );
    // The manifest describes every file: owner-only, with its checksum.
    let kinds: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for kind in ["secret", "keys", "tokenserver", "accounts", "user"] {
        assert!(kinds.contains(&kind), "{kind} missing: {m}");
    }
    assert_eq!(m["failed"], json!([]));
    assert!(out.contains("copied"), "{out}");
    let generation = dest.path().join(m["generation"].as_str().unwrap());
    for f in m["files"].as_array().unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(generation.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let dir_mode = std::fs::metadata(&generation).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(dir_mode.permissions().mode() & 0o777, 0o700);

    // The disk dies: the server is killed and its data dir is gone.
    let data = s.stop();
    std::fs::remove_dir_all(data.path()).unwrap();
    let (ok, out, err) = syncstore(data.path(), &["restore", dest_arg]);
    assert!(ok, "restore failed: {out}{err}");
    assert!(out.contains("checked 4 user files: 4 ok, 0 bad"), "{out}");
    assert!(out.contains("checked tokenserver.sqlite: ok"), "{out}");
    assert!(out.contains("checked accounts.sqlite: ok"), "{out}");
    let s = serve(data, &addr);

    rt.block_on(async {
        // Every write acknowledged before the consistency time is there.
        for ((uid, id), (payload, _)) in &before {
            let r = client(&s, *uid).get(&format!("/storage/load/{id}")).await;
            assert_eq!(r.status, 200, "user {uid} record {id}: {}", r.text);
            assert_eq!(r.json()["payload"], payload.as_str());
        }
        // The storage token minted before the backup still verifies, and the data is
        // there; the access token minted before still gets the same uid.
        let r = owner.get("/storage/bookmarks/root").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["payload"], "mine");
        let (status, again) = sync_token(&s, &access, &kid).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["uid"], sync["uid"]);
        // The account signs in with its password and gets the same kB.
        let (_, kb_after, kid_after) = sign_in(&s).await;
        assert_eq!(kb_after, kb);
        assert_eq!(kid_after, kid);
    });
}

/// A server with five users holding a record each; backed up once into `dest`.
fn five_users_backed_up(dest: &Path) -> (Server, tokio::runtime::Runtime) {
    let data = tempfile::tempdir().unwrap();
    let s = serve(data, "127.0.0.1:0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for uid in 1..=5 {
            let r = client(&s, uid)
                .put(
                    "/storage/tabs/a",
                    &json!({"payload": format!("user {uid}")}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let r = client(&s, uid)
                .put("/storage/forms/b", &json!({"payload": "f"}))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    });
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users (5 copied, 0 unchanged)"), "{out}");
    (s, rt)
}

/// The uids of a manifest's user files, by whether this generation copied them.
fn copied_and_kept(m: &Value) -> (Vec<u64>, Vec<u64>) {
    let gen_name = m["generation"].as_str().unwrap();
    let (mut copied, mut kept) = (Vec::new(), Vec::new());
    for f in m["files"].as_array().unwrap() {
        if f["kind"] != "user" {
            continue;
        }
        let uid = f["uid"].as_u64().unwrap();
        if f["copied_in"] == gen_name {
            copied.push(uid);
        } else {
            kept.push(uid);
        }
    }
    (copied, kept)
}

#[test]
fn a_second_backup_copies_only_the_users_who_changed() {
    let dest = tempfile::tempdir().unwrap();
    let (s, rt) = five_users_backed_up(dest.path());
    let first = manifest(dest.path());
    let dest_arg = dest.path().to_str().unwrap();

    // Nothing changed: nothing copied, every user linked.
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users (0 copied, 5 unchanged)"), "{out}");

    // User 2 writes, user 4 deletes a collection; the others stay idle.
    rt.block_on(async {
        let r = client(&s, 2)
            .put("/storage/tabs/a", &json!({"payload": "changed"}))
            .await;
        assert_eq!(r.status, 200);
        let r = client(&s, 4).delete("/storage/forms").await;
        assert_eq!(r.status, 200);
    });
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users (2 copied, 3 unchanged)"), "{out}");
    let third = manifest(dest.path());
    assert_eq!(copied_and_kept(&third), (vec![2, 4], vec![1, 3, 5]));
    // Kept users are the first generation's bytes, linked.
    let first_gen = first["generation"].as_str().unwrap();
    for f in third["files"].as_array().unwrap() {
        if f["kind"] == "user" && f["uid"] != 2 && f["uid"] != 4 {
            assert_eq!(f["copied_in"], first_gen);
        }
    }

    // --full copies everyone again.
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg, "--full"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users (5 copied, 0 unchanged)"), "{out}");

    // Only the newest generation kept, twice: the first generation, whose run copied
    // the idle users' bytes, goes, and they are still linked from the one before.
    for _ in 0..2 {
        let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg, "--keep", "1"]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("5 users (0 copied, 5 unchanged)"), "{out}");
    }
    let generations: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && n != "LATEST")
        .collect();
    assert_eq!(generations.len(), 1, "{generations:?}");

    // The latest generation restores the changes.
    let data = s.stop();
    let restored = tempfile::tempdir().unwrap();
    let (ok, out, err) = syncstore(restored.path(), &["restore", dest_arg]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users"), "{out}");
    std::fs::copy(data.path().join("secret"), restored.path().join("secret")).unwrap();
    let s = serve(restored, "127.0.0.1:0");
    rt.block_on(async {
        let r = client(&s, 2).get("/storage/tabs/a").await;
        assert_eq!(r.json()["payload"], "changed");
        let r = client(&s, 4).get("/storage/forms/b").await;
        assert_eq!(r.status, 404);
        let r = client(&s, 5).get("/storage/forms/b").await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn a_damaged_backup_or_a_data_dir_in_use_is_refused_before_anything_is_written() {
    let dest = tempfile::tempdir().unwrap();
    let (s, _rt) = five_users_backed_up(dest.path());
    let dest_arg = dest.path().to_str().unwrap();

    // A data dir that holds anything (here: the running server's) is refused.
    let (ok, out, err) = syncstore(s.data.path(), &["restore", dest_arg]);
    assert!(!ok, "{out}");
    assert!(err.contains("is not empty"), "{err}");

    // One byte of one user's copy flipped: refused, nothing written.
    let m = manifest(dest.path());
    let generation = dest.path().join(m["generation"].as_str().unwrap());
    let victim = generation.join("users/003/3.sqlite");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("data");
    let (ok, out, err) = syncstore(&into, &["restore", dest_arg]);
    assert!(!ok, "{out}");
    assert!(err.contains("users/003/3.sqlite: checksum"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!into.exists(), "the data dir was created");
}

#[test]
fn with_postgresql_the_shared_databases_are_named_as_left_out_and_the_rest_is_copied() {
    let data = tempfile::tempdir().unwrap();
    let export = json!({"format": "syncstore-user/1", "uid": 7, "modified": 1700000000.0,
        "collections": [{"name": "tabs", "modified": 1700000000.0,
            "records": [{"id": "a", "payload": "p", "modified": 1700000000.0}]}]});
    let file = data.path().join("7.json");
    std::fs::write(&file, export.to_string()).unwrap();
    let (ok, out, err) = syncstore(data.path(), &["user", "import", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    std::fs::remove_file(&file).unwrap();
    std::fs::write(data.path().join("secret"), "s3cret\n").unwrap();
    // A stale SQLite file beside a PostgreSQL URL is not the assignment database.
    std::fs::write(data.path().join("tokenserver.sqlite"), "").unwrap();
    let dest = tempfile::tempdir().unwrap();
    // Nothing connects to PostgreSQL: the URL alone says the databases live there.
    let env = [(
        "SYNCSTORE_TOKENSERVER_DATABASE_URL",
        "postgres://syncstore@127.0.0.1:1/syncstore",
    )];
    let (ok, out, err) = syncstore_with(
        data.path(),
        &["backup", dest.path().to_str().unwrap()],
        &env,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("not backed up: the assignment and accounts databases (with the accounts service's signing keys) are in PostgreSQL"),
        "{out}"
    );
    let m = manifest(dest.path());
    let kinds: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["secret", "user"], "{m}");
    assert_eq!(m["files"][1]["records"], 1);
    assert!(m["skipped"][0].as_str().unwrap().contains("pg_dump"), "{m}");
}

#[test]
fn a_file_that_cannot_be_copied_is_named_and_the_run_fails() {
    let dest = tempfile::tempdir().unwrap();
    let (s, _rt) = five_users_backed_up(dest.path());
    // User 9's file is not a database at all.
    let bad = s.data.path().join("users/009/9.sqlite");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, vec![b'x'; 8192]).unwrap();
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains("FAILED users/009/9.sqlite"), "{err}");
    assert!(err.contains("1 files could not be copied"), "{err}");
    // The generation holds everything else, and names what it lacks.
    let m = manifest(dest.path());
    assert_eq!(m["failed"][0]["path"], "users/009/9.sqlite", "{m}");
    let users = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "user")
        .count();
    assert_eq!(users, 5);
    let restored = tempfile::tempdir().unwrap();
    let (ok, out, err) = syncstore(restored.path(), &["restore", dest.path().to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("restored INCOMPLETE generation"), "{out}");
    assert!(out.contains("NOT RESTORED users/009/9.sqlite"), "{out}");
}

#[test]
fn one_user_is_restored_into_the_running_server_as_a_live_move_installs_it() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        data,
        "127.0.0.1:0",
        &[("SYNCSTORE_INTERNAL_LISTEN", "127.0.0.1:0")],
        |cmd| {
            cmd.env_remove("SYNCSTORE_SECRETS");
        },
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let dest_arg = dest.path().to_str().unwrap();
    for uid in 1..=3 {
        assign(s.data.path(), uid, false);
    }
    let put = |uid: u64, id: &str, payload: &str| {
        let r = rt.block_on(
            client(&s, uid).put(&format!("/storage/tabs/{id}"), &json!({"payload": payload})),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    };
    for uid in 1..=3 {
        put(uid, "a", &format!("before {uid}"));
    }
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg]);
    assert!(ok, "{out}{err}");
    put(2, "a", "after");
    put(2, "new", "new");
    put(3, "a", "after 3");

    // User 2 goes back to the backup while a client keeps writing to it: every answer
    // is a success or a 503 (writes held), never an error.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, stop) = (client(&s, 2), stop.clone());
        rt.spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = serde_json::to_vec(&json!({"payload": format!("w{n}")})).unwrap();
                let r = c.try_json("PUT", "/storage/forms/w", body).await.unwrap();
                statuses.push(r.status.as_u16());
            }
            statuses
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // The live user is newer than the backup: refused unless its writes since may go.
    let (ok, out, err) = syncstore(s.data.path(), &["restore", dest_arg, "--user", "2"]);
    assert!(!ok, "{out}");
    assert!(err.contains("are discarded"), "{err}");
    assert!(err.contains("--discard-newer"), "{err}");
    let (ok, out, err) = syncstore(
        s.data.path(),
        &["restore", dest_arg, "--user", "2", "--discard-newer"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user 2: restored on http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("are discarded; Firefox re-uploads"), "{out}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let statuses = rt.block_on(writer).unwrap();
    assert!(statuses.len() > 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );

    rt.block_on(async {
        let c = client(&s, 2);
        assert_eq!(c.get("/storage/tabs/a").await.json()["payload"], "before 2");
        assert_eq!(c.get("/storage/tabs/new").await.status, 404);
        // Writes after the swap land in the restored file (no stale handle).
        let r = c.put("/storage/tabs/a", &json!({"payload": "later"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(c.get("/storage/tabs/a").await.json()["payload"], "later");
        let info = c.get("/info/collections").await.json();
        assert!(info["tabs"].is_number(), "{info}");
        // The other users are left as they are.
        let c3 = client(&s, 3);
        assert_eq!(c3.get("/storage/tabs/a").await.json()["payload"], "after 3");
    });

    // A user the backup lacks: refused, nothing sent.
    let (ok, _, err) = syncstore(s.data.path(), &["restore", dest_arg, "--user", "99"]);
    assert!(!ok);
    assert!(err.contains("user 99 is not in generation"), "{err}");

    // A retired uid, and one the assignment database never issued: refused unless
    // --force (user 1 has not written since the backup: nothing is discarded).
    let c = rusqlite::Connection::open(s.data.path().join("tokenserver.sqlite")).unwrap();
    c.execute("UPDATE users SET replaced_at = 1 WHERE uid = 1", [])
        .unwrap();
    let (ok, out, err) = syncstore(s.data.path(), &["restore", dest_arg, "--user", "1"]);
    assert!(!ok, "{out}");
    assert!(err.contains("uid 1 was replaced by a newer uid"), "{err}");
    c.execute("DELETE FROM users WHERE uid = 1", []).unwrap();
    let (ok, out, err) = syncstore(s.data.path(), &["restore", dest_arg, "--user", "1"]);
    assert!(!ok, "{out}");
    assert!(err.contains("never issued uid 1"), "{err}");
    let (ok, out, err) = syncstore(
        s.data.path(),
        &["restore", dest_arg, "--user", "1", "--force"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("nothing is discarded"), "{out}");
}

#[test]
fn one_user_cannot_be_restored_into_a_server_without_an_internal_listener() {
    let dest = tempfile::tempdir().unwrap();
    let (s, _rt) = five_users_backed_up(dest.path());
    let dest_arg = dest.path().to_str().unwrap();
    let before = std::fs::read(s.data.path().join("users/001/1.sqlite")).unwrap();
    assign(s.data.path(), 1, false);
    let (ok, out, err) = syncstore(s.data.path(), &["restore", dest_arg, "--user", "1"]);
    assert!(!ok, "{out}");
    assert!(err.contains("has no internal address"), "{err}");
    assert_eq!(
        std::fs::read(s.data.path().join("users/001/1.sqlite")).unwrap(),
        before
    );
}

/// Makes the assignment database of the server on `data` list `uid` on its node (as
/// the tokenserver would have), retired when `replaced`.
fn assign(data: &Path, uid: u64, replaced: bool) {
    let c = rusqlite::Connection::open(data.join("tokenserver.sqlite")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute(
        "INSERT INTO users (uid, fxa_uid, email, generation, client_state, node_id, \
         created_at, replaced_at) SELECT ?1, ?2, ?2 || '@example.org', 0, '', id, 0, ?3 \
         FROM nodes LIMIT 1",
        rusqlite::params![
            uid as i64,
            format!("fxa{uid}"),
            replaced.then_some(now_ms())
        ],
    )
    .unwrap();
}

/// The internal listener's address, from the server's log.
fn internal_addr(s: &Server) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = s.log_text().split("internal routes on http://").nth(1) {
            return addr
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
        }
        assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_request_signed_before_the_server_started_is_refused_on_every_internal_route() {
    use sha2::Digest as _;
    use syncstore::auth::internal::{BODY_HASH_HEADER, RequestHead, SIGNATURE_HEADER, sign};
    // A signature made before the start, as one captured from the previous process
    // and replayed right after a restart would be (its nonce is forgotten).
    let before = common::now() - 1;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        data,
        "127.0.0.1:0",
        &[("SYNCSTORE_INTERNAL_LISTEN", "127.0.0.1:0")],
        |cmd| {
            cmd.env_remove("SYNCSTORE_SECRETS");
        },
    );
    let internal = internal_addr(&s);
    let secret = std::fs::read_to_string(s.data.path().join("secret")).unwrap();
    let node = s.url().trim_end_matches('/').to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, ts: i64| {
        let body = b"{\"to\":\"http://127.0.0.1:1\"}".to_vec();
        let digest = hex::encode(sha2::Sha256::digest(&body));
        let head = RequestHead {
            method: "POST",
            path,
            target: &node,
        };
        let (signature, hash) = sign(secret.trim(), &head, &digest, ts);
        let r = rt.block_on(
            http.post(format!("http://{internal}{path}"))
                .header(SIGNATURE_HEADER, signature)
                .header(BODY_HASH_HEADER, hash)
                .body(body)
                .send(),
        );
        let r = r.unwrap();
        let status = r.status().as_u16();
        (status, rt.block_on(r.text()).unwrap())
    };
    for route in ["restore", "receive", "move", "delete"] {
        let path = format!("/__internal__/{route}/1");
        let (status, text) = post(&path, before);
        assert_eq!(status, 401, "{route}: {text}");
        assert!(
            text.contains("signed before this node started"),
            "{route}: {text}"
        );
        // Signed now, the same request gets past the signature check.
        let (status, text) = post(&path, common::now());
        assert!(
            !text.contains("signed before") && !text.contains("unsigned"),
            "{route}: {status} {text}"
        );
    }
}

/// Rewrites the manifest of generation `g` with `edit`.
fn edit_manifest(g: &Path, edit: impl FnOnce(&mut Value)) {
    let path = g.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

/// Gives the manifest entry of `rel` in generation `g` the size and hash of its file.
fn rehash(g: &Path, rel: &str) {
    use sha2::Digest as _;
    let bytes = std::fs::read(g.join(rel)).unwrap();
    edit_manifest(g, |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == rel {
                f["size"] = json!(bytes.len());
                f["sha256"] = json!(hex::encode(sha2::Sha256::digest(&bytes)));
            }
        }
    });
}

#[test]
fn a_generation_someone_else_could_have_changed_is_refused_and_a_failed_restore_leaves_the_dir_empty()
 {
    use std::os::unix::fs::PermissionsExt;
    let dest = tempfile::tempdir().unwrap();
    let (s, _rt) = five_users_backed_up(dest.path());
    drop(s);
    let dest_arg = dest.path().to_str().unwrap();
    let m = manifest(dest.path());
    let g = dest.path().join(m["generation"].as_str().unwrap());
    let manifest_bytes = std::fs::read(g.join("manifest.json")).unwrap();
    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("data");
    let refused = |want: &str| {
        let (ok, out, err) = syncstore(&into, &["restore", dest_arg]);
        assert!(!ok, "{out}");
        assert!(err.contains(want), "{want}: {err}");
        let empty = !into.exists() || std::fs::read_dir(&into).unwrap().next().is_none();
        assert!(
            empty,
            "{want}: something was written into {}",
            into.display()
        );
        err
    };

    // A destination others may write (they could point LATEST elsewhere).
    std::fs::set_permissions(dest.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("writable by group or others");
    std::fs::set_permissions(dest.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // The secret replaced by a symbolic link to a file elsewhere with the same bytes.
    let secret = g.join("secret");
    let outside = target.path().join("outside");
    std::fs::rename(&secret, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &secret).unwrap();
    refused("secret: a symbolic link");
    std::fs::remove_file(&secret).unwrap();
    // Not a regular file: its size and hash are not shown.
    std::fs::create_dir(&secret).unwrap();
    let err = refused("secret: not a regular file");
    assert!(!err.contains("sha256"), "{err}");
    std::fs::remove_dir(&secret).unwrap();
    std::fs::rename(&outside, &secret).unwrap();

    // A user file others may write.
    let user3 = g.join("users/003/3.sqlite");
    std::fs::set_permissions(&user3, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused("users/003/3.sqlite: writable by group or others");
    std::fs::set_permissions(&user3, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A path listed twice.
    edit_manifest(&g, |m| {
        let files = m["files"].as_array_mut().unwrap();
        let last = files.last().unwrap().clone();
        files.push(last);
    });
    refused("listed more than once");
    std::fs::write(g.join("manifest.json"), &manifest_bytes).unwrap();

    // Many problems: 20 shown, the others counted.
    edit_manifest(&g, |m| {
        let files = m["files"].as_array_mut().unwrap();
        for uid in 1000..1030 {
            let mut f = files.last().unwrap().clone();
            f["uid"] = json!(uid);
            f["path"] = json!(format!("users/{:03}/{uid}.sqlite", uid % 1000));
            files.push(f);
        }
    });
    let err = refused("… and 10 more problems");
    assert_eq!(err.matches("No such file").count(), 20, "{err}");
    std::fs::write(g.join("manifest.json"), &manifest_bytes).unwrap();

    // A manifest too large to be one.
    // (A sparse file: refused by its size, never read.)
    let huge = std::fs::File::create(g.join("manifest.json")).unwrap();
    huge.set_len((1 << 30) + 1).unwrap();
    drop(huge);
    refused("larger than 1024 MiB");
    std::fs::write(g.join("manifest.json"), &manifest_bytes).unwrap();

    // An assignment database that is not SQLite: refused before anything is written.
    let ts = g.join("tokenserver.sqlite");
    let ts_bytes = std::fs::read(&ts).unwrap();
    std::fs::write(&ts, vec![b'x'; 8192]).unwrap();
    rehash(&g, "tokenserver.sqlite");
    refused("tokenserver.sqlite: not a SQLite database");

    // One with a table (and a trigger) its schema does not make: the data dir (made
    // 0777 beforehand) is left empty, and a retry of a sound backup restores into it.
    std::fs::write(&ts, &ts_bytes).unwrap();
    let c = rusqlite::Connection::open(&ts).unwrap();
    c.execute_batch(
        "CREATE TABLE evil (x); CREATE TRIGGER evil_t AFTER INSERT ON users \
         BEGIN INSERT INTO evil VALUES (1); END;",
    )
    .unwrap();
    drop(c);
    std::fs::write(g.join("manifest.json"), &manifest_bytes).unwrap();
    rehash(&g, "tokenserver.sqlite");
    std::fs::create_dir(&into).unwrap();
    std::fs::set_permissions(&into, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused("tokenserver.sqlite of the backup is refused");
    assert!(
        err.contains("table evil") && err.contains("trigger evil_t"),
        "{err}"
    );
    assert!(!err.contains("user files"), "{err}");
    std::fs::write(&ts, &ts_bytes).unwrap();
    std::fs::write(g.join("manifest.json"), &manifest_bytes).unwrap();
    let (ok, out, err) = syncstore(&into, &["restore", dest_arg]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("5 users"), "{out}");
    let mode = std::fs::metadata(&into).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let names: Vec<_> = std::fs::read_dir(&into)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('.')), "{names:?}");
}

#[test]
fn a_backup_directory_others_can_write_is_refused_and_planted_generations_are_not_counted() {
    use std::os::unix::fs::PermissionsExt;
    let dest = tempfile::tempdir().unwrap();
    let (s, _rt) = five_users_backed_up(dest.path());
    let dest_arg = dest.path().to_str().unwrap();
    let first = manifest(dest.path())["generation"]
        .as_str()
        .unwrap()
        .to_string();

    // Writable by others: refused, nothing written.
    std::fs::set_permissions(dest.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg]);
    assert!(!ok, "{out}");
    assert!(err.contains("is writable by group or others"), "{err}");
    std::fs::set_permissions(dest.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // Future-dated folders with a manifest that is not theirs are neither counted
    // nor removed: the real generations are pruned as if they were not there.
    for n in 1..=3 {
        let fake = dest.path().join(format!("29990101T000000Z-{n}"));
        std::fs::create_dir(&fake).unwrap();
        std::fs::write(fake.join("manifest.json"), "{}").unwrap();
    }
    let (ok, out, err) = syncstore(s.data.path(), &["backup", dest_arg, "--keep", "2"]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("removed older generations"), "{out}");
    assert!(dest.path().join(&first).join("manifest.json").is_file());
    for n in 1..=3 {
        assert!(dest.path().join(format!("29990101T000000Z-{n}")).is_dir());
    }

    // A new DEST is made owner-only.
    let fresh = dest.path().join("new");
    let (ok, out, err) = syncstore(s.data.path(), &["backup", fresh.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}
