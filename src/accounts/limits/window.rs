//! One rule's counts: two fixed windows, the current and the previous one, whose
//! weighted sum estimates the sliding window (see `limits`). O(1) per operation:
//! nothing sweeps; expired maps are handed back to be dropped outside the lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The keys are already random-keyed hashes: the tables use them as they are.
#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type Counts = HashMap<u64, u32, BuildHasherDefault<Identity>>;

/// One rule's two windows.
pub(super) struct Table {
    pub(super) max: u32,
    pub(super) window_ms: u64,
    /// Number of the current window (time since start / window).
    pub(super) epoch: u64,
    pub(super) current: Counts,
    pub(super) previous: Counts,
    /// The window in which a full table was last reported (logged once per window).
    pub(super) warned: Option<u64>,
}

impl Table {
    /// Moves to the window of `now`; the maps that expire go to `garbage` (dropped by
    /// the caller after unlocking).
    pub(super) fn advance(&mut self, now: u64, garbage: &mut Vec<Counts>) {
        let epoch = now / self.window_ms;
        if epoch <= self.epoch {
            return;
        }
        let current = std::mem::take(&mut self.current);
        garbage.push(std::mem::take(&mut self.previous));
        if epoch == self.epoch + 1 {
            self.previous = current;
        } else {
            garbage.push(current);
        }
        self.epoch = epoch;
    }

    /// Whether `key` has any count in the current or previous window.
    /// Events of `key` in the current and the previous window.
    pub(super) fn events(&self, key: u64) -> u32 {
        let c = self.current.get(&key).copied().unwrap_or(0);
        let p = self.previous.get(&key).copied().unwrap_or(0);
        c.saturating_add(p)
    }

    /// None when one more event of `key` is allowed; else the wait in ms. A new key
    /// of a full table is allowed (and left uncounted by the caller).
    pub(super) fn refusal(&self, key: u64, now: u64) -> Option<u64> {
        let w = self.window_ms;
        let into = now % w;
        let left = w - into;
        let (c, p) = (
            u64::from(self.current.get(&key).copied().unwrap_or(0)),
            u64::from(self.previous.get(&key).copied().unwrap_or(0)),
        );
        let max = u64::from(self.max);
        // Allowed when (c + 1) + p × left / w ≤ max.
        if (c + 1) * w + p * left <= max * w {
            return None;
        }
        Some(if c >= max {
            // After this window ends its count weighs as the previous one's.
            let spare = (max.saturating_sub(1) * w) / c.max(1);
            left + (w - spare.min(w))
        } else {
            // Wait until the previous window's share has faded enough.
            let spare = ((max - c - 1) * w) / p.max(1);
            (w - spare.min(w)).saturating_sub(into)
        })
    }
}
