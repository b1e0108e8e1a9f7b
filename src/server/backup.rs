//! Continuous backup: with `backup_to` set, the running server writes a backup
//! generation every `backup_interval_secs`, exactly as `syncstore backup` does
//! ([`crate::admin::backup::backup`]: the incremental check, the manifest, pruning to
//! `backup_keep` generations), to a directory or S3-compatible object storage.
//!
//! It runs on a thread of its own, one run after the other (never two at once; a run
//! that takes longer than the interval delays the next), at the lowest CPU priority
//! (nice 19) and the idle I/O class, copying one user at a time: the storage API keeps
//! the cores and the disk whenever it has work.
//!
//! Its outcome is in [`status`]: the metrics `syncstore_backup_*` and a warning in
//! `/__heartbeat__`'s detail (the heartbeat's status stays 200) when no backup
//! succeeded for twice the interval, or the first run failed.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin::backup::{self, BackupOptions, BackupTarget, now_ms, rfc3339};
use crate::config::Settings;

/// The continuous backup's state, for the heartbeat and the metrics.
#[derive(Debug)]
pub struct BackupStatus {
    /// Where the backups go, for messages.
    target: String,
    /// The interval, ms.
    interval_ms: i64,
    /// When the server started the backups (Unix ms).
    started_ms: i64,
    /// The last successful run's end (Unix ms), 0: none yet.
    last_success_ms: AtomicI64,
    /// Whether a run has failed since the last success.
    failing: AtomicBool,
    /// The last failure's message.
    last_error: Mutex<Option<String>>,
}

static STATUS: OnceLock<Arc<BackupStatus>> = OnceLock::new();

/// The continuous backup's state, when this process runs one.
pub fn status() -> Option<&'static BackupStatus> {
    STATUS.get().map(|s| &**s)
}

impl BackupStatus {
    /// The heartbeat's detail: `{"status": "Ok" | "Warn", …}`, with a `warning` when no
    /// backup succeeded for twice the interval (or none yet, and the first run failed
    /// or is overdue).
    pub fn heartbeat(&self, now: i64) -> serde_json::Value {
        let last = self.last_success_ms.load(Ordering::Relaxed);
        let error = self.last_error.lock().map(|e| e.clone()).unwrap_or(None);
        let failing = self.failing.load(Ordering::Relaxed);
        let warning = if last == 0 {
            (failing || now - self.started_ms > 2 * self.interval_ms).then(|| {
                format!(
                    "no backup to {} has succeeded since the server started",
                    self.target
                )
            })
        } else {
            (now - last > 2 * self.interval_ms).then(|| {
                format!(
                    "the last backup to {} that succeeded finished at {}, more than twice \
                     backup_interval_secs ago",
                    self.target,
                    rfc3339(last)
                )
            })
        };
        let mut v = serde_json::json!({
            "status": if warning.is_some() { "Warn" } else { "Ok" },
            "last_success": (last > 0).then(|| rfc3339(last)),
        });
        if let Some(w) = warning {
            v["warning"] = w.into();
        }
        if failing && let Some(e) = error {
            v["last_error"] = e.into();
        }
        v
    }
}

/// Starts the continuous backup when `backup_to` is set: a thread that runs a backup
/// every `backup_interval_secs` (the first one an interval after the destination's
/// latest generation, see [`first_run`]) until `stop` turns true. A run in progress at shutdown is not waited for: its unfinished
/// generation is never named by `LATEST`, and the next run clears it.
pub(super) fn start(settings: &Arc<Settings>, stop: watch::Receiver<bool>) {
    if settings.backup_to.is_empty() {
        return;
    }
    let target = match BackupTarget::parse(&settings.backup_to) {
        Ok(t) => t,
        Err(e) => {
            // Validated at load: not reached.
            tracing::error!(error = %e, "backup_to: continuous backup off");
            return;
        }
    };
    let interval = Duration::from_secs(settings.backup_interval_secs);
    let status = Arc::new(BackupStatus {
        target: target.to_string(),
        interval_ms: interval.as_millis() as i64,
        started_ms: now_ms(),
        last_success_ms: AtomicI64::new(0),
        failing: AtomicBool::new(false),
        last_error: Mutex::new(None),
    });
    if STATUS.set(status.clone()).is_err() {
        tracing::error!("continuous backup already running in this process");
        return;
    }
    let _ = crate::web::observe::metrics_handle(); // the recorder, before the first values
    metrics::gauge!("syncstore_backup_last_success_timestamp_seconds").set(0.0);
    metrics::gauge!("syncstore_backup_users_copied").set(0.0);
    metrics::counter!("syncstore_backup_bytes_total").absolute(0);
    metrics::counter!("syncstore_backup_failures_total").absolute(0);
    metrics::counter!("syncstore_backup_runs_total").absolute(0);
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("backup".into())
        .spawn(move || {
            lower_priority();
            tracing::info!(
                to = %target, every_secs = interval.as_secs(), keep = settings.backup_keep,
                "continuous backup on"
            );
            let mut next = first_run(&settings, &target, &status, interval);
            loop {
                // Wait for the next run, looking at the stop flag twice a second.
                while Instant::now() < next {
                    if *stop.borrow() {
                        return;
                    }
                    let left = next.saturating_duration_since(Instant::now());
                    std::thread::sleep(left.min(Duration::from_millis(500)));
                }
                if *stop.borrow() {
                    return;
                }
                run_once(&settings, &target, &status);
                next = Instant::now() + interval;
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "continuous backup thread not started");
    }
}

/// When the first run is due: one interval after the destination's latest generation
/// finished (a server restarted more often than the interval still backs up), but not
/// before min(interval, 30 s) from now; at once after that when the destination has no
/// generation or cannot be read. The latest generation counts as the last success.
fn first_run(
    settings: &Settings,
    target: &BackupTarget,
    status: &BackupStatus,
    interval: Duration,
) -> Instant {
    let now = Instant::now();
    let floor = now + interval.min(Duration::from_secs(30));
    let previous = target.open(settings).and_then(|dest| dest.latest());
    let finished = match previous {
        Ok(Some(m)) => m.finished_ms,
        Ok(None) => return floor,
        Err(e) => {
            tracing::warn!(to = %target, error = %e, "backup destination not readable at start");
            return floor;
        }
    };
    status.last_success_ms.store(finished, Ordering::Relaxed);
    metrics::gauge!("syncstore_backup_last_success_timestamp_seconds")
        .set(finished as f64 / 1000.0);
    let since = Duration::from_millis(now_ms().saturating_sub(finished).max(0) as u64);
    (now + interval.saturating_sub(since)).max(floor)
}

/// One backup run, its outcome logged and recorded.
fn run_once(settings: &Settings, target: &BackupTarget, status: &BackupStatus) {
    let opts = BackupOptions {
        keep: settings.backup_keep,
        full: false,
        progress: false,
        threads: 1,
    };
    let done = target
        .open(settings)
        .and_then(|mut dest| backup::backup(settings, &mut *dest, &opts));
    match done {
        Ok(report) => {
            let end = now_ms();
            status.last_success_ms.store(end, Ordering::Relaxed);
            status.failing.store(false, Ordering::Relaxed);
            metrics::gauge!("syncstore_backup_last_success_timestamp_seconds")
                .set(end as f64 / 1000.0);
            metrics::gauge!("syncstore_backup_users_copied").set(report.copied as f64);
            metrics::gauge!("syncstore_backup_users_kept").set(report.kept as f64);
            metrics::gauge!("syncstore_backup_last_duration_seconds")
                .set(report.elapsed.as_secs_f64());
            metrics::counter!("syncstore_backup_bytes_total").increment(report.bytes_copied);
            metrics::counter!("syncstore_backup_runs_total").increment(1);
            tracing::info!(
                to = %target,
                generation = %report.manifest.generation,
                copied = report.copied,
                kept = report.kept,
                bytes = report.bytes_copied,
                pruned = report.pruned.len(),
                secs = report.elapsed.as_secs_f64(),
                "backup"
            );
        }
        Err(e) => {
            let text = e.to_string();
            status.failing.store(true, Ordering::Relaxed);
            if let Ok(mut last) = status.last_error.lock() {
                // The last line: a run with failed files puts its whole summary before it.
                *last = Some(text.lines().last().unwrap_or_default().to_string());
            }
            metrics::counter!("syncstore_backup_failures_total").increment(1);
            tracing::error!(to = %target, error = %text, "backup failed");
        }
    }
}

/// The calling thread (and the threads it starts) at nice 19 and, on Linux, in the
/// idle I/O scheduling class.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        // ioprio_set(IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_IDLE << 13).
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            IOPRIO_CLASS_IDLE << 13,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last: i64, failing: bool) -> BackupStatus {
        BackupStatus {
            target: "t".into(),
            interval_ms: 1000,
            started_ms: 10_000,
            last_success_ms: AtomicI64::new(last),
            failing: AtomicBool::new(failing),
            last_error: Mutex::new(Some("boom".into())),
        }
    }

    #[test]
    fn the_s3_secret_key_is_not_shown_with_the_settings() {
        let s = Settings {
            backup_to: "s3://bucket/p".into(),
            backup_s3_access_key_id: "AKIDEXAMPLE".into(),
            backup_s3_secret_access_key: "very-secret-key".into(),
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(shown.contains("backup_s3_secret_access_key = \"<redacted>\""));
    }

    #[test]
    fn the_heartbeat_warns_when_backups_are_overdue_or_failing_from_the_start() {
        // None yet: fine during the first intervals, a warning once overdue or failed.
        assert_eq!(status(0, false).heartbeat(11_500)["status"], "Ok");
        assert_eq!(status(0, false).heartbeat(12_001)["status"], "Warn");
        let failed = status(0, true).heartbeat(11_100);
        assert_eq!(failed["status"], "Warn");
        assert_eq!(failed["last_error"], "boom");
        // One succeeded: a failure since is reported, a warning only after 2 intervals.
        let s = status(20_000, true);
        assert_eq!(s.heartbeat(21_900)["status"], "Ok");
        assert_eq!(s.heartbeat(21_900)["last_error"], "boom");
        assert_eq!(s.heartbeat(22_001)["status"], "Warn");
    }
}
