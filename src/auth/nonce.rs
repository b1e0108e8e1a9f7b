//! A bounded replay cache: remembers (token id, ts, nonce) triples while their `ts` is
//! still within the skew window (after that the timestamp check refuses them anyway).
//!
//! Triples are kept in one bucket per Hawk `ts` second, so a whole second is forgotten
//! at once when it leaves the window, and a replay (same ts) is looked up in one bucket.
//! A remembered triple is never forgotten early: eviction would reopen its replay window,
//! and one user sending enough requests could evict the others' nonces. Instead the
//! cache refuses new triples when it is full (`NonceError::Full`, a 503), and no single
//! user may hold more than `1 / PER_USER_SHARE` of it, so one user's flood is refused
//! long before it can crowd the others out. Within a bucket a triple is a 64-bit digest:
//! a collision can only make a fresh request look replayed (a 401 the client retries),
//! never let a replay through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A user may hold at most `capacity / PER_USER_SHARE` of the cache's triples.
pub const PER_USER_SHARE: usize = 10;

/// Why a triple is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// The triple was seen before within the window: a replay.
    Replay,
    /// The cache, or this user's share of it, is full: try again later.
    Full,
}

/// Remembers recently seen nonces; refuses a triple seen before within the window.
pub struct NonceCache {
    /// How long a nonce is remembered past its ts, seconds (the clock-skew window).
    window: i64,
    /// The most triples remembered; more are refused, never evicted.
    capacity: usize,
    /// The most triples one user may have remembered.
    per_user: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Hawk ts → the triples seen with it.
    buckets: BTreeMap<i64, Bucket>,
    /// uid → how many of its triples are remembered.
    per_user: HashMap<u64, usize>,
    /// How many triples are remembered.
    total: usize,
}

#[derive(Default)]
struct Bucket {
    /// Digests of (token id, nonce) of the triples with this ts.
    digests: HashSet<u64>,
    /// uid → how many of this bucket's triples are its.
    users: HashMap<u64, usize>,
}

impl NonceCache {
    /// A cache remembering nonces for `window` seconds, at most `capacity` of them (and
    /// at most `capacity / PER_USER_SHARE` of one user).
    pub fn new(window: i64, capacity: usize) -> NonceCache {
        let capacity = capacity.max(1);
        NonceCache {
            window,
            capacity,
            per_user: (capacity / PER_USER_SHARE).max(1),
            inner: Mutex::new(Seen::default()),
        }
    }

    /// A cache remembering nonces for `window` seconds, at most `capacity` of them and
    /// at most `per_user` of one user.
    pub fn with_share(window: i64, capacity: usize, per_user: usize) -> NonceCache {
        let mut c = NonceCache::new(window, capacity);
        c.per_user = per_user.clamp(1, c.capacity);
        c
    }

    /// Records the triple of user `uid`; refuses it if it was already seen (a replay)
    /// or if there is no room for it.
    pub fn check_and_insert(
        &self,
        uid: u64,
        id: &str,
        ts: i64,
        nonce: &str,
        now: i64,
    ) -> Result<(), NonceError> {
        let mut h = Sha256::new();
        for part in [id.as_bytes(), nonce.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();
        let key = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let Ok(mut seen) = self.inner.lock() else {
            return Err(NonceError::Full);
        };
        seen.forget_before(now - self.window);
        if seen
            .buckets
            .get(&ts)
            .is_some_and(|b| b.digests.contains(&key))
        {
            return Err(NonceError::Replay);
        }
        let held = seen.per_user.get(&uid).copied().unwrap_or(0);
        if held >= self.per_user || seen.total >= self.capacity {
            return Err(NonceError::Full);
        }
        let bucket = seen.buckets.entry(ts).or_default();
        bucket.digests.insert(key);
        *bucket.users.entry(uid).or_default() += 1;
        *seen.per_user.entry(uid).or_default() += 1;
        seen.total += 1;
        Ok(())
    }

    /// How many triples are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|s| s.total).unwrap_or(0)
    }

    /// Whether no triple is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seen {
    /// Forgets every bucket of a ts before `oldest` (the timestamp check refuses them).
    fn forget_before(&mut self, oldest: i64) {
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            let bucket = entry.remove();
            self.total -= bucket.digests.len();
            for (uid, n) in bucket.users {
                if let Some(held) = self.per_user.get_mut(&uid) {
                    *held -= n;
                    if *held == 0 {
                        self.per_user.remove(&uid);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_replays_until_the_ts_leaves_the_window() {
        let c = NonceCache::new(60, 1000);
        assert_eq!(c.check_and_insert(1, "id", 100, "n", 100), Ok(()));
        assert_eq!(
            c.check_and_insert(1, "id", 100, "n", 100),
            Err(NonceError::Replay)
        );
        // Another ts, token or nonce is another triple.
        assert_eq!(c.check_and_insert(1, "id", 101, "n", 100), Ok(()));
        assert_eq!(c.check_and_insert(1, "other", 100, "n", 100), Ok(()));
        assert_eq!(c.check_and_insert(1, "id", 100, "m", 100), Ok(()));
        // Remembered however many others arrive, until ts + window has passed.
        for i in 0..50 {
            assert_eq!(
                c.check_and_insert(2, "x", 150, &format!("m{i}"), 150),
                Ok(())
            );
        }
        assert_eq!(
            c.check_and_insert(1, "id", 100, "n", 160),
            Err(NonceError::Replay)
        );
        // A ts ahead of the server's clock is remembered until it, too, leaves the window.
        assert_eq!(c.check_and_insert(1, "id", 200, "f", 150), Ok(()));
        assert_eq!(
            c.check_and_insert(1, "id", 200, "f", 259),
            Err(NonceError::Replay)
        );
        // After the window, old seconds are forgotten whole.
        assert_eq!(c.check_and_insert(3, "x", 1000, "y", 1000), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_set_share_bounds_each_user() {
        let c = NonceCache::with_share(60, 1000, 3);
        for i in 0..3 {
            assert_eq!(
                c.check_and_insert(1, "a", 100, &format!("{i}"), 100),
                Ok(())
            );
        }
        // Another token of the same user counts in the same share.
        assert_eq!(
            c.check_and_insert(1, "b", 100, "x", 100),
            Err(NonceError::Full)
        );
        assert_eq!(c.check_and_insert(2, "c", 100, "x", 100), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let c = NonceCache::new(60, 100);
        // One user gets a tenth of the cache, then is refused.
        for i in 0..10 {
            assert_eq!(
                c.check_and_insert(1, "a", 100, &format!("{i}"), 100),
                Ok(())
            );
        }
        assert_eq!(
            c.check_and_insert(1, "a", 100, "more", 100),
            Err(NonceError::Full)
        );
        // Others fill the rest; then everyone is refused, and nothing was forgotten.
        for u in 2..11 {
            for i in 0..10 {
                assert_eq!(
                    c.check_and_insert(u, "b", 100, &format!("{u}-{i}"), 100),
                    Ok(())
                );
            }
        }
        assert_eq!(c.len(), 100);
        assert_eq!(
            c.check_and_insert(99, "z", 100, "z", 100),
            Err(NonceError::Full)
        );
        for i in 0..10 {
            assert_eq!(
                c.check_and_insert(1, "a", 100, &format!("{i}"), 100),
                Err(NonceError::Replay)
            );
        }
        // Room comes back as seconds leave the window.
        assert_eq!(c.check_and_insert(1, "a", 200, "later", 200), Ok(()));
        assert_eq!(c.len(), 1);
    }
}
