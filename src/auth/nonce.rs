//! A bounded replay cache: remembers (token id, ts, nonce) triples while their `ts` is
//! still within the skew window (after that the timestamp check refuses them anyway).
//! Entries are 128-bit digests: at 4,000 requests a second the cache holds a few
//! hundred thousand of them, so their size is most of its memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Remembers recently seen nonces; refuses a triple seen before within the window.
pub struct NonceCache {
    /// How long a nonce is remembered, seconds (the clock-skew window).
    window: i64,
    /// The most triples remembered; the oldest are forgotten first beyond it.
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Digest of the triple → when it may be forgotten (its ts + the window).
    by_key: HashMap<[u8; 16], i64>,
    /// Keys in the order they were seen, with when they may be forgotten.
    order: VecDeque<([u8; 16], i64)>,
}

impl NonceCache {
    /// A cache remembering nonces for `window` seconds, at most `capacity` of them.
    pub fn new(window: i64, capacity: usize) -> NonceCache {
        NonceCache {
            window,
            capacity: capacity.max(1),
            inner: Mutex::new(Seen::default()),
        }
    }

    /// Records the triple; returns false if it was already seen (a replay).
    pub fn check_and_insert(&self, id: &str, ts: i64, nonce: &str, now: i64) -> bool {
        let mut h = Sha256::new();
        for part in [id.as_bytes(), ts.to_string().as_bytes(), nonce.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        // Past ts + window the timestamp check refuses the triple, so it need not be
        // remembered longer; a later ts than the arrival keeps it correspondingly longer.
        let forget_at = ts.max(now) + self.window;
        let Ok(mut seen) = self.inner.lock() else {
            return false;
        };
        // Entries are queued in arrival order; their forget times differ by at most
        // 2 × window, so an entry past its time may wait behind a younger one for a
        // while — bounded, and the capacity bounds memory in any case.
        while let Some(&(k, until)) = seen.order.front() {
            if until >= now && seen.order.len() < self.capacity {
                break;
            }
            seen.order.pop_front();
            if seen.by_key.get(&k) == Some(&until) {
                seen.by_key.remove(&k);
            }
        }
        if seen.by_key.contains_key(&key) {
            return false;
        }
        seen.by_key.insert(key, forget_at);
        seen.order.push_back((key, forget_at));
        true
    }

    /// How many triples are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.by_key.len()).unwrap_or(0)
    }

    /// Whether no triple is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_replays_and_stays_bounded() {
        let c = NonceCache::new(60, 3);
        assert!(c.check_and_insert("id", 1, "n", 100));
        assert!(!c.check_and_insert("id", 1, "n", 100));
        assert!(c.check_and_insert("id", 2, "n", 100));
        assert!(c.check_and_insert("other", 1, "n", 100));
        assert!(c.check_and_insert("id", 1, "m", 100));
        assert!(c.len() <= 3);
        // A triple is remembered until its ts leaves the window, however many others
        // arrive meanwhile (within capacity).
        let c = NonceCache::new(60, 1000);
        assert!(c.check_and_insert("id", 100, "n", 100));
        for i in 0..100 {
            assert!(c.check_and_insert("id", 150, &format!("m{i}"), 150));
        }
        assert!(!c.check_and_insert("id", 100, "n", 160));
        // A ts ahead of the server's clock is remembered until it, too, leaves the window.
        assert!(c.check_and_insert("id", 200, "f", 150));
        assert!(!c.check_and_insert("id", 200, "f", 259));
        let c = NonceCache::new(60, 3);
        assert!(c.check_and_insert("id", 1, "n", 100));
        // After the window, old entries are dropped.
        assert!(c.check_and_insert("x", 1, "y", 1000));
        assert_eq!(c.len(), 1);
    }
}
