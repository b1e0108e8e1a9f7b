//! The last minute of storage API requests, for the node's health report: a ring of
//! one-second slots, each with a request count, a 5xx count and a fixed log-spaced
//! latency histogram, all atomics (no lock, no allocation per request: a request
//! costs a few relaxed additions).
//!
//! A slot belongs to one second (its tag); the first request of a new second takes
//! the slot over (a compare-and-swap marks it busy, zeroes it and tags it), so the
//! ring always holds the last [`SLOTS`] seconds. A request that meets a slot being
//! taken over waits a few spins, then is left out (it can only happen at a second's
//! edge). Readers sum the slots of the last minute; counters read mid-update are at
//! most a request off.
//!
//! The process-wide [`REQUESTS`] is fed by `observe::log_request` for `/1.5/<uid>/…`
//! requests that were not answered 401 (a client without credentials must not be able
//! to dilute a failing node's error rate or latency with cheap refusals).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots in the ring, one a second: the last minute.
pub const SLOTS: usize = 60;

/// Latency buckets: four per power of two of microseconds (≤ 19% wide), up to 2^36 µs
/// (19 hours); longer requests land in the last.
pub const BUCKETS: usize = 4 * 36;

/// A slot's tag while one thread takes it over.
const BUSY: u64 = u64::MAX;

/// One second of requests.
struct Slot {
    /// The second (since the process's base instant) the counts are of.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; BUCKETS],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: [const { AtomicU32::new(0) }; BUCKETS],
        }
    }

    /// Makes the slot count for `second`; false when it cannot (a newer second holds
    /// it, or another thread is still taking it over).
    fn enter(&self, second: u64) -> bool {
        for _ in 0..64 {
            let tag = self.second.load(Ordering::Acquire);
            if tag == second {
                return true;
            }
            if tag == BUSY {
                std::hint::spin_loop();
                continue;
            }
            if tag > second {
                return false;
            }
            if self
                .second
                .compare_exchange(tag, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.requests.store(0, Ordering::Relaxed);
                self.errors.store(0, Ordering::Relaxed);
                for b in &self.latency {
                    b.store(0, Ordering::Relaxed);
                }
                self.second.store(second, Ordering::Release);
                return true;
            }
        }
        false
    }
}

/// The bucket of a latency of `micros` µs: four per power of two.
pub fn bucket(micros: u64) -> usize {
    let v = micros.max(1);
    let exp = 63 - v.leading_zeros() as usize;
    let sub = if exp >= 2 {
        (v >> (exp - 2)) & 3
    } else {
        (v << (2 - exp)) & 3
    } as usize;
    (4 * exp + sub).min(BUCKETS - 1)
}

/// The middle of a bucket's range, µs.
pub fn bucket_middle(index: usize) -> u64 {
    let (exp, sub) = (index / 4, (index % 4) as f64);
    let low = (4.0 + sub) * 2f64.powi(exp as i32) / 4.0;
    let high = (5.0 + sub) * 2f64.powi(exp as i32) / 4.0;
    ((low + high) / 2.0).round() as u64
}

/// A minute of requests, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Requests.
    pub requests: u64,
    /// Of which answered 5xx.
    pub errors: u64,
    /// Median latency, µs (0 without requests).
    pub p50_us: u64,
    /// 99th percentile latency, µs (0 without requests).
    pub p99_us: u64,
}

/// The ring (see the module docs).
pub struct Window {
    slots: [Slot; SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    /// An empty ring.
    pub const fn new() -> Window {
        Window {
            slots: [const { Slot::new() }; SLOTS],
        }
    }

    /// Counts a request of `second` that took `micros` µs, answered 5xx or not.
    pub fn record_at(&self, second: u64, micros: u64, error: bool) {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        if !slot.enter(second) {
            return;
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The requests of the last minute as of `second` (that second included).
    pub fn stats_at(&self, second: u64) -> WindowStats {
        let mut hist = [0u64; BUCKETS];
        let mut out = WindowStats::default();
        for slot in &self.slots {
            let tag = slot.second.load(Ordering::Acquire);
            if tag == BUSY || tag > second || tag + (SLOTS as u64) <= second {
                continue;
            }
            out.requests += slot.requests.load(Ordering::Relaxed);
            out.errors += slot.errors.load(Ordering::Relaxed);
            for (h, b) in hist.iter_mut().zip(&slot.latency) {
                *h += u64::from(b.load(Ordering::Relaxed));
            }
        }
        out.p50_us = percentile(&hist, 0.50);
        out.p99_us = percentile(&hist, 0.99);
        out
    }

    /// Counts a request that started at `started` and took `elapsed`.
    pub fn record(&self, started: Instant, elapsed: Duration, error: bool) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.record_at(second_of(started + elapsed), micros, error);
    }

    /// The requests of the last minute, now.
    pub fn stats(&self) -> WindowStats {
        self.stats_at(second_of(Instant::now()))
    }
}

/// The latency below which `q` of the requests in `hist` fall (a bucket's middle).
fn percentile(hist: &[u64; BUCKETS], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_middle(i);
        }
    }
    bucket_middle(BUCKETS - 1)
}

/// Seconds since the process's base instant (taken at first use).
fn second_of(t: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    t.saturating_duration_since(base).as_secs()
}

/// This process's storage API requests (see the module docs).
pub static REQUESTS: Window = Window::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced_and_ordered() {
        let mut last = 0;
        for us in [1, 2, 3, 4, 5, 7, 8, 100, 1000, 10_000, 1_000_000, u64::MAX] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // A bucket's middle is within its quarter-octave of the value.
        for us in [10u64, 150, 999, 4096, 33_000, 2_500_000] {
            let m = bucket_middle(bucket(us)) as f64;
            let err = (m - us as f64).abs() / us as f64;
            assert!(err < 0.2, "{us} -> {m}");
        }
    }

    #[test]
    fn percentiles_and_counts_of_a_known_minute() {
        let w = Window::new();
        // 1000 requests over 10 seconds: 980 at 1 ms, 20 at 200 ms, 5 of them 5xx.
        for i in 0..1000u64 {
            let us = if i % 50 == 0 { 200_000 } else { 1000 };
            w.record_at(100 + i % 10, us, i < 5);
        }
        let s = w.stats_at(109);
        assert_eq!((s.requests, s.errors), (1000, 5));
        assert!((900..=1100).contains(&s.p50_us), "{s:?}");
        assert!((180_000..=220_000).contains(&s.p99_us), "{s:?}");
        // With only 1% slow the 99th percentile is still the fast ones'.
        let w = Window::new();
        for i in 0..1000u64 {
            w.record_at(5, if i < 10 { 500_000 } else { 2000 }, false);
        }
        let s = w.stats_at(5);
        assert!((1800..=2200).contains(&s.p99_us), "{s:?}");
        assert_eq!(Window::new().stats_at(3), WindowStats::default());
    }

    #[test]
    fn slots_rotate_and_old_seconds_drop_out() {
        let w = Window::new();
        w.record_at(10, 1000, true);
        w.record_at(11, 1000, false);
        assert_eq!(w.stats_at(11).requests, 2);
        assert_eq!(w.stats_at(69).requests, 2, "second 10 is within the minute");
        assert_eq!(w.stats_at(70).requests, 1, "second 10 dropped out");
        assert_eq!(w.stats_at(71).requests, 0);
        // Second 70 reuses second 10's slot: the old counts are gone, not added.
        w.record_at(70, 1000, false);
        let s = w.stats_at(70);
        assert_eq!((s.requests, s.errors), (2, 0), "{s:?}");
        // A request of a second older than the slot's is left out, not mixed in.
        w.record_at(10, 1000, true);
        assert_eq!(w.stats_at(70).errors, 0);
        // Seconds in the future of the reader are not counted.
        assert_eq!(w.stats_at(69).requests, 1);
    }

    #[test]
    fn threads_recording_at_once_lose_nothing_within_a_second() {
        let w = std::sync::Arc::new(Window::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        w.record_at(1000 + i / 2500, 100 + i % 7, i % 100 == 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = w.stats_at(1003);
        // Only a request racing a slot's takeover (at most one per thread and second
        // edge, and only if the takeover outlasts 64 spins) may be left out.
        assert!(s.requests > 39_900 && s.requests <= 40_000, "{s:?}");
        assert!(s.errors > 390 && s.errors <= 400, "{s:?}");
    }
}
