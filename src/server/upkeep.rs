//! The storage upkeep loop: every `upkeep_interval_secs`, one tick of
//! [`UserDbs::upkeep_tick`] on the blocking pool, logged when it did something.

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::UserDbs;
use crate::storage::userdbs::upkeep::UpkeepCursor;

/// Runs background upkeep every `interval` until `stop` turns true.
pub(super) async fn upkeep_loop(
    dbs: UserDbs,
    interval: Duration,
    users_per_tick: usize,
    idle_secs: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = UpkeepCursor::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick fires at once; start one interval in
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let tick_dbs = dbs.clone();
        let mut c = cursor.clone();
        let done = tokio::task::spawn_blocking(move || {
            let report = tick_dbs.upkeep_tick(&mut c, users_per_tick, idle_secs);
            (report, c)
        })
        .await;
        match done {
            Ok((report, c)) => {
                cursor = c;
                tracing::debug!(?report, "upkeep tick");
                if report.records_purged + report.batches_purged + report.orphans_deleted > 0
                    || report.closed + report.emptied > 0
                {
                    tracing::info!(
                        users = report.users,
                        records_purged = report.records_purged,
                        batches_purged = report.batches_purged,
                        pages_reclaimed = report.pages_reclaimed,
                        idle_closed = report.closed,
                        idle_emptied = report.emptied,
                        orphans_deleted = report.orphans_deleted,
                        "upkeep"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "upkeep tick failed"),
        }
    }
}
