//! Continuous backup (`backup_to`), black-box: the real server, given a directory or
//! an S3-compatible server (scripts/test starts one on 127.0.0.1 and names it in
//! SYNCSTORE_TEST_S3_URL), writes generations on its own under writes, reports them in
//! its metrics, warns in `/__heartbeat__` (still 200) when the destination is broken,
//! and `syncstore restore s3://…` into an empty data dir gives a server with the data.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, Server};

/// The S3 server scripts/test started: (endpoint, bucket, access key, secret key).
fn s3_server() -> Option<(String, String, String, String)> {
    let url = std::env::var("SYNCSTORE_TEST_S3_URL").ok()?;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    Some((
        url,
        var("SYNCSTORE_TEST_S3_BUCKET"),
        var("SYNCSTORE_TEST_S3_ACCESS_KEY_ID"),
        var("SYNCSTORE_TEST_S3_SECRET_ACCESS_KEY"),
    ))
}

/// A prefix of its own for each test run.
fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn scrape(s: &Server) -> String {
    let r = reqwest::get(format!("{}/__metrics__", s.metrics_url()))
        .await
        .unwrap();
    r.text().await.unwrap()
}

/// A metric's value in the exposition (the unlabelled series).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `cond` every 200 ms for up to `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn latest(dest: &Path) -> Option<String> {
    std::fs::read_to_string(dest.join("LATEST"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn manifest(dest: &Path, generation: &str) -> Value {
    let text = std::fs::read(dest.join(generation).join("manifest.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// Complete generations in a directory destination.
fn generations(dest: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with('Z') || n.contains("Z-"))
        .filter(|n| dest.join(n).join("manifest.json").is_file())
        .collect();
    v.sort();
    v
}

fn syncstore(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncstore"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SYNCSTORE_BACKUP_TO")
        .envs(env.iter().copied())
        .output()
        .expect("run syncstore");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn put(c: &Client, id: &str, payload: &str) {
    let r = c
        .put(
            &format!("/storage/col/{id}"),
            &json!({ "payload": payload }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn a_server_backs_up_to_a_directory_on_its_own_incrementally_and_reports_it() {
    let dest_root = tempfile::tempdir().unwrap();
    let dest = dest_root.path().join("backups");
    let to = format!("file://{}", dest.display());
    let s = Server::start(&[
        ("SYNCSTORE_BACKUP_TO", to.as_str()),
        ("SYNCSTORE_BACKUP_INTERVAL_SECS", "1"),
        ("SYNCSTORE_BACKUP_KEEP", "3"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (s.client(1), s.client(2));
    // Writes to two users while the server backs up on its own.
    rt.block_on(put(&a, "first", "a's only record"));
    let started = Instant::now();
    let mut n = 0;
    let mut seen = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(40) && seen.len() < 4 {
        n += 1;
        rt.block_on(put(&b, &format!("r{n}"), &format!("record {n}")));
        if let Some(g) = latest(&dest) {
            seen.insert(g);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.len() >= 4, "generations seen: {seen:?}");
    // Pruned to backup_keep (a run removes the oldest just after adding its own).
    wait_for(10, "pruning to backup_keep", || {
        generations(&dest).len() <= 3
    });
    // User 1 did not change since its first copy: later generations kept it (a link
    // to the same bytes), naming the generation that copied it.
    let last = latest(&dest).unwrap();
    let m = manifest(&dest, &last);
    let user = |uid: u64| {
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["uid"] == uid)
            .cloned()
            .unwrap_or_else(|| panic!("user {uid} missing: {m}"))
    };
    assert_ne!(user(1)["copied_in"], json!(last), "{m}");
    assert!(
        dest.join(&last)
            .join(user(1)["path"].as_str().unwrap())
            .is_file()
    );
    assert_eq!(m["failed"], json!([]));
    for kind in ["keys", "tokenserver", "accounts"] {
        assert!(
            m["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == kind),
            "{kind} missing: {m}"
        );
    }

    // Metrics: successes, nothing failed; the heartbeat says all is well.
    let text = rt.block_on(scrape(&s));
    let last_success = metric(&text, "syncstore_backup_last_success_timestamp_seconds").unwrap();
    let now = crate::common::now() as f64;
    assert!(
        last_success > now - 30.0 && last_success <= now + 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "syncstore_backup_failures_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "syncstore_backup_bytes_total").unwrap() > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "syncstore_backup_users_copied").is_some(),
        "{text}"
    );
    let (status, hb) = rt.block_on(get_json(&format!("{}/__heartbeat__", s.url())));
    assert_eq!(status, 200, "{hb}");
    assert_eq!(hb["backup"]["status"], "Ok", "{hb}");
    assert!(hb["backup"]["last_success"].is_string(), "{hb}");

    // Quiet: the next runs copy no user again. (The first generation after this may
    // still hold the last write; the gauges are set once a run is over, so when the
    // third appears, the second's, or a later one's, are shown.)
    let quiet_from = latest(&dest).unwrap();
    wait_for(30, "three more generations", || {
        generations(&dest)
            .iter()
            .filter(|g| g.as_str() > quiet_from.as_str())
            .count()
            >= 3
    });
    let text = rt.block_on(scrape(&s));
    assert_eq!(
        metric(&text, "syncstore_backup_users_copied"),
        Some(0.0),
        "{text}"
    );
    let log = s.log_text();
    assert!(log.contains("continuous backup on"), "{log}");

    // A restarted server counts the destination's latest generation as its last
    // backup: with an hour's interval, nothing is due and the heartbeat is content.
    let data = s.stop();
    let newest = latest(&dest).unwrap();
    let finished = manifest(&dest, &newest)["finished_ms"].as_i64().unwrap();
    let s = Server::start_in(
        data,
        &[
            ("SYNCSTORE_BACKUP_TO", to.as_str()),
            ("SYNCSTORE_BACKUP_INTERVAL_SECS", "3600"),
            ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let mut hb = Value::Null;
    wait_for(10, "the previous generation in the heartbeat", || {
        hb = rt
            .block_on(get_json(&format!("{}/__heartbeat__", s.url())))
            .1;
        hb["backup"]["last_success"].is_string()
    });
    assert_eq!(hb["backup"]["status"], "Ok", "{hb}");
    let text = rt.block_on(scrape(&s));
    let shown = metric(&text, "syncstore_backup_last_success_timestamp_seconds").unwrap();
    assert!(
        (shown - finished as f64 / 1000.0).abs() < 0.01,
        "{shown} {finished}\n{text}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        latest(&dest).unwrap(),
        newest,
        "no run before the interval is up"
    );
}

#[test]
fn a_broken_backup_destination_is_a_heartbeat_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the destination's parent directory should be: unwritable
    // for any user, root included.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let to = format!("file://{}/backups", file.display());
    let s = Server::start(&[
        ("SYNCSTORE_BACKUP_TO", to.as_str()),
        ("SYNCSTORE_BACKUP_INTERVAL_SECS", "1"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(put(&s.client(5), "a", "b"));
    let mut hb = Value::Null;
    wait_for(20, "a heartbeat warning", || {
        let (status, body) = rt.block_on(get_json(&format!("{}/__heartbeat__", s.url())));
        assert_eq!(status, 200, "{body}");
        hb = body;
        hb["backup"]["status"] == "Warn"
    });
    assert_eq!(hb["status"], "Ok", "{hb}");
    assert!(hb["backup"]["last_success"].is_null(), "{hb}");
    let warning = hb["backup"]["warning"].as_str().unwrap();
    assert!(warning.contains("no backup to"), "{hb}");
    assert!(hb["backup"]["last_error"].is_string(), "{hb}");
    let text = rt.block_on(scrape(&s));
    assert!(
        metric(&text, "syncstore_backup_failures_total").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "syncstore_backup_last_success_timestamp_seconds"),
        Some(0.0),
        "{text}"
    );
    // The storage API is unaffected.
    rt.block_on(put(&s.client(5), "c", "d"));
    assert!(s.log_text().contains("backup failed"));
}

#[test]
fn a_bad_backup_to_stops_the_server_at_start_with_a_clear_error() {
    for (value, expected) in [
        ("ftp://example.org/x", "neither file:///path"),
        ("file://relative/path", "absolute path"),
        ("s3://A_B/prefix", "bucket name"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let (ok, out, err) = syncstore(
            data.path(),
            &["serve", "--listen", "127.0.0.1:0"],
            &[("SYNCSTORE_BACKUP_TO", value)],
        );
        assert!(!ok, "{value}: {out}{err}");
        assert!(
            err.contains("backup_to") && err.contains(expected),
            "{value}: {err}"
        );
    }
}

#[test]
fn a_server_backs_up_to_s3_and_restore_from_s3_gives_a_working_server() {
    let Some((endpoint, bucket, key_id, secret_key)) = s3_server() else {
        eprintln!(
            "skipped: SYNCSTORE_TEST_S3_URL is not set (scripts/test starts an S3 server \
             and sets it)"
        );
        return;
    };
    let prefix = unique("server");
    let to = format!("s3://{bucket}/{prefix}");
    let s3_env = [
        ("SYNCSTORE_BACKUP_S3_ENDPOINT", endpoint.as_str()),
        ("SYNCSTORE_BACKUP_S3_ACCESS_KEY_ID", key_id.as_str()),
        ("SYNCSTORE_BACKUP_S3_SECRET_ACCESS_KEY", secret_key.as_str()),
        ("SYNCSTORE_BACKUP_S3_ALLOW_HTTP", "true"),
    ];
    let mut env = vec![
        ("SYNCSTORE_BACKUP_TO", to.as_str()),
        ("SYNCSTORE_BACKUP_INTERVAL_SECS", "1"),
        ("SYNCSTORE_BACKUP_KEEP", "2"),
        ("SYNCSTORE_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    env.extend(s3_env);
    let s = Server::start(&env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (s.client(11), s.client(12));
    rt.block_on(put(&a, "kept", "written once, before the first backup"));
    let text = || rt.block_on(scrape(&s));
    let runs = |t: &str| metric(t, "syncstore_backup_runs_total").unwrap_or(0.0);
    // User 12 changes all along; user 11 only before the first run, so its bytes stay
    // in the first generation, which is pruned (keep 2) but must keep them.
    let mut n = 0;
    let started = Instant::now();
    while runs(&text()) < 5.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not enough runs: {}\n{}",
            text(),
            s.log_text()
        );
        n += 1;
        rt.block_on(put(&b, &format!("r{n}"), &format!("record {n}")));
        std::thread::sleep(Duration::from_millis(150));
    }
    let t = text();
    assert_eq!(
        metric(&t, "syncstore_backup_failures_total"),
        Some(0.0),
        "{t}"
    );
    assert!(metric(&t, "syncstore_backup_last_success_timestamp_seconds").unwrap() > 0.0);
    let (status, hb) = rt.block_on(get_json(&format!("{}/__heartbeat__", s.url())));
    assert_eq!(status, 200);
    assert_eq!(hb["backup"]["status"], "Ok", "{hb}");

    // `syncstore backup s3://…` from the command line, keys from the AWS variables.
    let cli_to = format!("s3://{bucket}/{}", unique("cli"));
    let (ok, out, err) = syncstore(
        s.data.path(),
        &["backup", &cli_to],
        &[
            ("SYNCSTORE_BACKUP_S3_ENDPOINT", endpoint.as_str()),
            ("SYNCSTORE_BACKUP_S3_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains(&cli_to) && out.contains("copied"), "{out}");
    let (ok, out, err) = syncstore(
        s.data.path(),
        &["backup", &cli_to],
        &[
            ("SYNCSTORE_BACKUP_S3_ENDPOINT", endpoint.as_str()),
            ("SYNCSTORE_BACKUP_S3_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("(0 copied"),
        "a second run copies no unchanged user: {out}"
    );

    // Stop writing, let a run that started after the last write finish (the second
    // to end from now), and stop the server: its data dir is lost.
    let before = runs(&text());
    wait_for(30, "two more runs", || runs(&text()) >= before + 2.0);
    let written = n;
    let addr = s.addr.clone();
    drop(s);

    // Restore the latest generation from S3 into an empty data dir.
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = syncstore(data.path(), &["restore", &to], &s3_env);
    assert!(ok, "restore failed: {out}{err}");
    assert!(err.contains("downloaded generation"), "{err}");
    assert!(out.contains("0 bad"), "{out}");
    let generation = err
        .split("downloaded generation ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    // One named generation can be restored too.
    let other = tempfile::tempdir().unwrap();
    let one = format!("{to}/{generation}");
    let (ok, out, err) = syncstore(other.path(), &["restore", &one], &s3_env);
    assert!(ok, "restore of {one} failed: {out}{err}");
    assert!(
        err.contains(&format!("downloaded generation {generation} of {to}")),
        "{err}"
    );
    // At the same address: the restored assignment database names this node by it.
    let s = Server::start_at(data, &addr, &[("SYNCSTORE_INTERNAL_LISTEN", "127.0.0.1:0")]);
    rt.block_on(async {
        let r = s.client(11).get("/storage/col/kept").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["payload"], "written once, before the first backup");
        let r = s.client(12).get("/storage/col?full=1").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let got = r.json().as_array().unwrap().len();
        assert_eq!(got, written, "every record written before the last run");
        put(&s.client(11), "later", "not in the backup").await;
    });

    // One user restored from S3 into the running server.
    let mut env = s3_env.to_vec();
    env.push(("SYNCSTORE_SECRETS", crate::common::SECRET));
    let (ok, out, err) = syncstore(
        s.data.path(),
        &["restore", &to, "--user", "11", "--force", "--discard-newer"],
        &env,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("user 11: restored on"), "{out}");
    rt.block_on(async {
        let r = s.client(11).get("/storage/col/later").await;
        assert_eq!(r.status, 404, "{}", r.text);
        let r = s.client(11).get("/storage/col/kept").await;
        assert_eq!(r.status, 200, "{}", r.text);
    });
}
