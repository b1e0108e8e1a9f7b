//! A bounded replay cache: remembers (token id, ts, nonce) triples for the skew window.

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
    /// Digest of the triple → the server time it was first seen.
    by_key: HashMap<[u8; 32], i64>,
    /// Keys in the order they were seen, for expiry and eviction.
    order: VecDeque<([u8; 32], i64)>,
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
        let key: [u8; 32] = h.finalize().into();
        let Ok(mut seen) = self.inner.lock() else {
            return false;
        };
        while let Some(&(k, at)) = seen.order.front() {
            if at + 2 * self.window >= now && seen.order.len() < self.capacity {
                break;
            }
            seen.order.pop_front();
            if seen.by_key.get(&k) == Some(&at) {
                seen.by_key.remove(&k);
            }
        }
        if seen.by_key.contains_key(&key) {
            return false;
        }
        seen.by_key.insert(key, now);
        seen.order.push_back((key, now));
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
        // After the window, old entries are dropped.
        assert!(c.check_and_insert("x", 1, "y", 1000));
        assert_eq!(c.len(), 1);
    }
}
