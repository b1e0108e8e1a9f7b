//! The canary guard: run by every tokenserver process, every `node_report_secs`, over
//! the health rows the storage nodes write (`node_health`). It judges each node **in
//! rollout** — serving (not down, not draining), not paused already, and either rolled
//! out to a share below 100% or named by an allow-list (`rollout::in_rollout`) —
//! against the other nodes that report:
//!
//! * a node whose report is stale (older than three of its intervals), or with fewer
//!   than `canary_min_requests` storage requests in its last minute, is not judged;
//! * **an absolute rule first**: a node whose 5xx rate is above
//!   `canary_error_ceiling` (default 0.5) is suspect whatever the others do, so the
//!   guard does not fail open when the other nodes are stale, quiet or failing too;
//! * the baseline is the other nodes with fresh reports that the guard has not paused
//!   (stale nodes are no baseline): their combined 5xx rate and the median of their
//!   p99s; with fewer than `canary_min_requests` requests among them there is no
//!   baseline and no judgement;
//! * the node is **suspect** when its 5xx rate is above `canary_error_rate` and above
//!   `canary_error_factor` × the baseline's, or its p99 is above `canary_p99_factor` ×
//!   the baseline's and above `canary_p99_floor_ms`;
//! * suspect without a break for `canary_window_secs` → **paused**: new users no longer
//!   land there (allow-listed ones neither; existing users stay), the time and reason
//!   go on the node's row, an audit row (via `guard`), a warning in the log, the
//!   `syncstore_canary_paused_nodes` gauge and `syncstore_canary_pauses_total`.
//!
//! Any round that does not find the node suspect (healthy, too few requests, stale)
//! clears the suspicion. The state lives in the assignment database, so several
//! tokenservers share it and a restart keeps it: each round is one transaction under
//! an advisory lock, and the pause is an update of a row not paused yet, so two
//! tokenservers pausing at once make one pause and one audit row.
//! `syncstore rollout resume NODE` clears the pause and the suspicion.

use std::time::Duration;

use tokio::sync::watch;

use super::db::{AssignmentDb, DbError, SqlTx};
use super::rollout;
use super::store::{self, Health, Node};
use crate::admin::{self, Actor, GuardInfo, overview::GUARD_SETTING};
use crate::config::Settings;

/// The guard's settings (see `canary_*` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// How often it judges.
    pub interval: Duration,
    /// Suspect this long without a break → paused, ms.
    pub window_ms: i64,
    /// 5xx rate a node must exceed (with the factor).
    pub error_rate: f64,
    /// Times the baseline's 5xx rate a node must exceed.
    pub error_factor: f64,
    /// Times the baseline's p99 a node must exceed (with the floor).
    pub p99_factor: f64,
    /// p99 a node must exceed (with the factor), µs.
    pub p99_floor_us: i64,
    /// Fewer requests in the minute: not judged (and no baseline).
    pub min_requests: i64,
    /// A 5xx rate above this is suspect whatever the baseline (or without one).
    pub error_ceiling: f64,
}

impl CanaryConfig {
    /// The guard's settings, or None when it is off (`canary_guard = false` or
    /// `node_report_secs = 0`).
    pub fn from_settings(s: &Settings) -> Option<CanaryConfig> {
        (s.canary_guard && s.node_report_secs > 0).then(|| CanaryConfig {
            interval: Duration::from_secs(s.node_report_secs),
            window_ms: (s.canary_window_secs as i64).saturating_mul(1000),
            error_rate: s.canary_error_rate,
            error_factor: s.canary_error_factor,
            p99_factor: s.canary_p99_factor,
            p99_floor_us: (s.canary_p99_floor_ms as i64).saturating_mul(1000),
            min_requests: s.canary_min_requests as i64,
            error_ceiling: s.canary_error_ceiling,
        })
    }
}

/// A node's (or the baseline's) last minute, as the guard compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Storage requests.
    pub requests: i64,
    /// Of which 5xx.
    pub errors: i64,
    /// 99th percentile latency, µs (the baseline's: the median of the others').
    pub p99_us: i64,
}

impl Figures {
    /// A health row's figures.
    pub fn of(h: &Health) -> Figures {
        Figures {
            requests: h.requests,
            errors: h.errors,
            p99_us: h.p99_us,
        }
    }

    fn error_rate(&self) -> f64 {
        if self.requests <= 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The baseline of the other nodes: their combined requests and 5xx and the median of
/// their p99s; None when they had fewer than `min_requests` requests together.
pub fn baseline(others: &[Figures], min_requests: i64) -> Option<Figures> {
    let requests: i64 = others.iter().map(|f| f.requests).sum();
    if others.is_empty() || requests < min_requests.max(1) {
        return None;
    }
    let mut p99s: Vec<i64> = others
        .iter()
        .filter(|f| f.requests > 0)
        .map(|f| f.p99_us)
        .collect();
    p99s.sort_unstable();
    let n = p99s.len();
    let median = match n {
        0 => 0,
        _ if n % 2 == 1 => p99s[n / 2],
        _ => (p99s[n / 2 - 1] + p99s[n / 2]) / 2,
    };
    Some(Figures {
        requests,
        errors: others.iter().map(|f| f.errors).sum(),
        p99_us: median,
    })
}

/// What the guard makes of a node's minute.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not judged, and why (too few requests, no baseline).
    NotJudged(&'static str),
    /// As good as the others (within the margins).
    Healthy,
    /// Worse than the others: how.
    Suspect(String),
}

/// Judges a node's last minute against the baseline (see the module docs).
pub fn judge(node: &Figures, base: Option<&Figures>, c: &CanaryConfig) -> Verdict {
    if node.requests < c.min_requests.max(1) {
        return Verdict::NotJudged("too few requests");
    }
    if node.error_rate() > c.error_ceiling {
        return Verdict::Suspect(format!(
            "5xx rate {:.1}% of {} requests in the last minute, above the {:.0}% ceiling",
            node.error_rate() * 100.0,
            node.requests,
            c.error_ceiling * 100.0
        ));
    }
    let Some(base) = base else {
        return Verdict::NotJudged("no baseline: too few requests on the other nodes");
    };
    let (rate, base_rate) = (node.error_rate(), base.error_rate());
    let mut why = Vec::new();
    if rate > c.error_rate && rate > c.error_factor * base_rate {
        why.push(format!(
            "5xx rate {:.1}% of {} requests in the last minute vs {:.2}% on the other nodes",
            rate * 100.0,
            node.requests,
            base_rate * 100.0
        ));
    }
    if node.p99_us > c.p99_floor_us && node.p99_us as f64 > c.p99_factor * base.p99_us as f64 {
        why.push(format!(
            "p99 {:.1} ms vs {:.1} ms on the other nodes",
            node.p99_us as f64 / 1000.0,
            base.p99_us as f64 / 1000.0
        ));
    }
    if why.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Suspect(why.join("; "))
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Nodes judged (in rollout, fresh report).
    pub judged: usize,
    /// Nodes found suspect.
    pub suspect: Vec<String>,
    /// Nodes this round paused (`(url, reason)`).
    pub paused: Vec<(String, String)>,
    /// Nodes paused now, this round's included.
    pub paused_now: usize,
}

/// One round of the guard at `now` (ms), in the caller's transaction (see the module
/// docs); `actor` is written to the audit log for a pause.
pub fn round(
    tx: &mut dyn SqlTx,
    c: &CanaryConfig,
    actor: &Actor,
    now: i64,
) -> Result<Round, DbError> {
    tx.lock_key("canary-guard")?;
    let nodes = store::nodes(tx)?;
    let health = store::health_rows(tx)?;
    let lists = store::lists(tx)?;
    let fresh = |n: &Node| health.iter().find(|h| h.node == n.node && !h.is_stale(now));
    let mut out = Round::default();
    for n in &nodes {
        let allow_listed = lists
            .iter()
            .any(|(node, kind, _)| *node == n.node && kind == "allow");
        if n.paused_at.is_some() {
            continue;
        }
        let verdict = match fresh(n) {
            _ if !rollout::in_rollout(n, allow_listed) => Verdict::NotJudged("not in rollout"),
            None => Verdict::NotJudged("no fresh report"),
            Some(h) => {
                let others: Vec<Figures> = nodes
                    .iter()
                    .filter(|o| o.id != n.id && o.paused_at.is_none())
                    .filter_map(|o| fresh(o).map(Figures::of))
                    .collect();
                out.judged += 1;
                judge(
                    &Figures::of(h),
                    baseline(&others, c.min_requests).as_ref(),
                    c,
                )
            }
        };
        let Verdict::Suspect(reason) = verdict else {
            if n.suspect_since.is_some() {
                store::clear_suspect(tx, n.id)?;
            }
            continue;
        };
        out.suspect.push(n.node.clone());
        store::set_suspect(tx, n.id, now, &reason)?;
        let since = n.suspect_since.unwrap_or(now);
        if now - since >= c.window_ms && store::pause_node(tx, n.id, now, &reason)? {
            let secs = (now - since) / 1000;
            let detail = format!("suspect for {secs} s: {reason}");
            admin::audit(tx, actor, "rollout.pause", &n.node, &detail)?;
            out.paused.push((n.node.clone(), detail));
        }
    }
    out.paused_now = nodes.iter().filter(|n| n.paused_at.is_some()).count() + out.paused.len();
    let info = GuardInfo {
        at: now,
        who: actor.who.clone(),
        window_secs: (c.window_ms / 1000) as u64,
        error_rate: c.error_rate,
        error_factor: c.error_factor,
        p99_factor: c.p99_factor,
        p99_floor_ms: (c.p99_floor_us / 1000) as u64,
        min_requests: c.min_requests as u64,
    };
    if let Ok(json) = serde_json::to_string(&info) {
        store::set_setting(tx, GUARD_SETTING, &json)?;
    }
    Ok(out)
}

/// Runs a round every `c.interval` until `stop` turns true; logs pauses, sets the
/// metrics. Blocking work runs on the blocking pool.
pub async fn run(db: AssignmentDb, c: CanaryConfig, mut stop: watch::Receiver<bool>) {
    let actor = Actor::guard();
    let mut ticker = tokio::time::interval(c.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (cfg, who) = (c.clone(), actor.clone());
        let done = db
            .run(move |tx| round(tx, &cfg, &who, admin::now_ms()))
            .await;
        match done {
            Ok(r) => {
                for (node, detail) in &r.paused {
                    tracing::warn!(
                        node = %node,
                        reason = %detail,
                        "canary guard: paused the node's rollout (no new users) until \
                         `syncstore rollout resume`"
                    );
                    metrics::counter!("syncstore_canary_pauses_total").increment(1);
                }
                metrics::gauge!("syncstore_canary_paused_nodes").set(r.paused_now as f64);
                tracing::debug!(?r, "canary guard round");
            }
            Err(e) => tracing::warn!(error = %e, "canary guard: round failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CanaryConfig {
        CanaryConfig {
            interval: Duration::from_secs(5),
            window_ms: 300_000,
            error_rate: 0.01,
            error_factor: 3.0,
            p99_factor: 3.0,
            p99_floor_us: 100_000,
            min_requests: 100,
            error_ceiling: 0.5,
        }
    }

    fn f(requests: i64, errors: i64, p99_ms: i64) -> Figures {
        Figures {
            requests,
            errors,
            p99_us: p99_ms * 1000,
        }
    }

    fn suspect(v: &Verdict) -> bool {
        matches!(v, Verdict::Suspect(_))
    }

    #[test]
    fn error_rates_must_pass_both_the_rate_and_the_factor() {
        let c = config();
        let base = baseline(&[f(1000, 0, 10), f(1000, 0, 12)], 100);
        // 2% with the others at 0%: suspect.
        let v = judge(&f(500, 10, 10), base.as_ref(), &c);
        assert!(suspect(&v), "{v:?}");
        assert!(format!("{v:?}").contains("5xx rate 2.0%"), "{v:?}");
        // 1% is not above the 1% rate.
        assert_eq!(judge(&f(500, 5, 10), base.as_ref(), &c), Verdict::Healthy);
        // 5% when the others have 2%: above the rate but not 3x theirs.
        let busy = baseline(&[f(1000, 20, 10)], 100);
        assert_eq!(judge(&f(1000, 50, 10), busy.as_ref(), &c), Verdict::Healthy);
        // 7% against their 2% is more than 3x.
        assert!(suspect(&judge(&f(1000, 70, 10), busy.as_ref(), &c)));
    }

    #[test]
    fn p99_must_pass_both_the_factor_and_the_floor() {
        let c = config();
        let base = baseline(&[f(1000, 0, 1), f(1000, 0, 3), f(1000, 0, 40)], 100).unwrap();
        assert_eq!(base.p99_us, 3000, "the median of the others' p99s");
        // 9 ms is 3x of 3 ms but under the 100 ms floor.
        assert_eq!(judge(&f(500, 0, 9), Some(&base), &c), Verdict::Healthy);
        // 150 ms is above the floor and 50x the others.
        let v = judge(&f(500, 0, 150), Some(&base), &c);
        assert!(format!("{v:?}").contains("p99 150.0 ms vs 3.0 ms"), "{v:?}");
        // Above the floor but not 3x the others': healthy.
        let slow = baseline(&[f(1000, 0, 100), f(1000, 0, 120)], 100).unwrap();
        assert_eq!(slow.p99_us, 110_000);
        assert_eq!(judge(&f(500, 0, 300), Some(&slow), &c), Verdict::Healthy);
        assert!(suspect(&judge(&f(500, 0, 400), Some(&slow), &c)));
    }

    #[test]
    fn too_few_requests_or_no_baseline_is_not_judged() {
        let c = config();
        let base = baseline(&[f(1000, 0, 10)], 100);
        assert_eq!(
            judge(&f(99, 99, 5000), base.as_ref(), &c),
            Verdict::NotJudged("too few requests")
        );
        assert!(matches!(
            judge(&f(1000, 100, 10), None, &c),
            Verdict::NotJudged(_)
        ));
        assert_eq!(baseline(&[], 100), None);
        assert_eq!(baseline(&[f(60, 0, 1), f(39, 0, 1)], 100), None);
        assert!(baseline(&[f(60, 0, 1), f(40, 0, 1)], 100).is_some());
        // Nodes without requests count towards no p99.
        assert_eq!(
            baseline(&[f(200, 2, 8), f(0, 0, 0)], 100),
            Some(f(200, 2, 8))
        );
    }

    #[test]
    fn above_the_error_ceiling_is_suspect_whatever_the_others_do() {
        let c = config();
        // No baseline (the others stale or quiet), or one failing as badly: suspect.
        for base in [None, baseline(&[f(1000, 1000, 10)], 100)] {
            let v = judge(&f(200, 200, 10), base.as_ref(), &c);
            assert!(
                format!("{v:?}").contains("5xx rate 100.0% of 200 requests")
                    && format!("{v:?}").contains("50% ceiling"),
                "{v:?}"
            );
        }
        // At the ceiling, without a baseline: not judged.
        assert!(matches!(
            judge(&f(200, 100, 10), None, &c),
            Verdict::NotJudged(_)
        ));
        // Too few requests: not judged, however many failed.
        assert_eq!(
            judge(&f(99, 99, 10), None, &c),
            Verdict::NotJudged("too few requests")
        );
        // A ceiling of 1 never fires: the relative rules alone.
        let off = CanaryConfig {
            error_ceiling: 1.0,
            ..config()
        };
        assert!(matches!(
            judge(&f(200, 200, 10), None, &off),
            Verdict::NotJudged(_)
        ));
    }
}
