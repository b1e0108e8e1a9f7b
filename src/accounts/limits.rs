//! Attempt limits and the budget of password hardening.
//!
//! **Limits** ([`Limiter`]): each [`Rule`] counts events per key (an account, a client
//! address — IPv6 by its /64 —, or both) in a window. An attempt is *reserved* before
//! any work: one call, under one lock, checks every key the attempt touches and counts
//! it on all of them, or on none and answers `TooManyRequests(retry_after)`. The caller
//! then gives the count back where the attempt turned out not to count (a correct
//! password gives back its failure counts, a wrong one its success counts), so requests
//! sent together cannot all pass a check made before any of them was counted.
//!
//! Each rule keeps two fixed windows, the current and the previous one, and estimates
//! the count of the sliding window as `current + previous × (unexpired share of the
//! previous window)`. When a window ends the maps move over (current → previous) and
//! the old previous map is dropped after the lock is released: every operation is
//! O(1), nothing sweeps. A rule's current window holds at most `cap` keys; when it is
//! full a *new* key of that rule is admitted *uncounted* (fail open, a warning logged
//! once per window) rather than refused or any existing counter forgotten: an attacker
//! filling a table never locks out users who have no entry in it and never resets
//! anyone's counts; it only lets new keys of that one rule go uncounted until the
//! window turns, while every other rule (per address, per account) still holds.
//!
//! A per-account failure ceiling must never refuse the owner ([`Limiter::reserve_under_ceiling`]):
//! over it, only addresses that already failed for that account in the ceiling's window
//! are refused; any other address still gets its attempt checked (one guess per address
//! and window).
//!
//! The counts of one rule are in `window`; the budget of password hardening is in
//! `hardening`.

mod window;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AccountsError;
use window::{Counts, Table};

/// Most keys a rule's current window holds (about 2 MiB per full window).
pub const MAX_KEYS: usize = 65_536;

/// What is counted, and how much of it is allowed in which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Failed sign-ins (wrong password, unknown account, wrong email case) of one
    /// account from one address: 10 a minute.
    FailAccountAddress,
    /// Failures of any kind from one address (sign-ins, invite codes, email codes):
    /// 10 a minute.
    FailAddress,
    /// Failed sign-ins of one (existing) account from all addresses together: 100 an
    /// hour. Over it, only addresses with a failure for the account this hour
    /// ([`Rule::FailAccountAddressHour`]) are refused; the owner at another address is not.
    FailAccount,
    /// Failed sign-ins of one account from one address in the ceiling's window (an
    /// hour): the gate of [`Rule::FailAccount`] once the account is over it.
    FailAccountAddressHour,
    /// Successful sign-ins from one address: 30 a minute.
    LoginAddress,
    /// Successful sign-ins of one account: 30 a minute.
    LoginAccount,
    /// Wrong invite codes for one email: 10 a minute.
    FailInvite,
    /// Wrong email verification codes of one account: 10 a minute.
    FailCode,
    /// Mails sent because of requests from one address: 10 a minute.
    MailAddress,
    /// Mails to one recipient asked for from one address: 3 in 15 minutes (a stranger
    /// cannot spend the owner's own share).
    MailRecipient,
    /// Mails to one recipient from all addresses together: 20 a day.
    MailRecipientTotal,
    /// Account lookups by email (`/account/status`) from one address: 30 a minute.
    LookupAddress,
    /// Device commands invoked by one session: 60 a minute.
    CommandSession,
    /// Pushes to other devices (`/account/devices/notify`) asked for by one session:
    /// 60 a minute.
    NotifySession,
}

impl Rule {
    const ALL: [Rule; 14] = [
        Rule::FailAccountAddress,
        Rule::FailAddress,
        Rule::FailAccount,
        Rule::FailAccountAddressHour,
        Rule::LoginAddress,
        Rule::LoginAccount,
        Rule::FailInvite,
        Rule::FailCode,
        Rule::MailAddress,
        Rule::MailRecipient,
        Rule::MailRecipientTotal,
        Rule::LookupAddress,
        Rule::CommandSession,
        Rule::NotifySession,
    ];

    /// The most events allowed in a window.
    pub fn max(self) -> u32 {
        match self {
            Rule::FailAccount | Rule::FailAccountAddressHour => 100,
            Rule::MailRecipientTotal => 20,
            Rule::LoginAddress | Rule::LoginAccount | Rule::LookupAddress => 30,
            Rule::CommandSession | Rule::NotifySession => 60,
            Rule::MailRecipient => 3,
            _ => 10,
        }
    }

    /// The window.
    pub fn window(self) -> Duration {
        match self {
            Rule::FailAccount | Rule::FailAccountAddressHour => Duration::from_secs(3600),
            Rule::MailRecipient => Duration::from_secs(15 * 60),
            Rule::MailRecipientTotal => Duration::from_secs(24 * 3600),
            _ => Duration::from_secs(60),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The unit a client is counted by: its IPv4 address, or its IPv6 /64 (one host
/// usually holds a whole /64), as the connection cap counts it.
pub use crate::web::client_addr::client_key as client_unit;

/// A counted subject of one rule (its text is hashed with a per-process random key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    rule: Rule,
    hash: u64,
}

/// Event counts per rule and key, bounded and O(1) per operation.
pub struct Limiter {
    start: Instant,
    hasher: RandomState,
    cap: usize,
    tables: Mutex<Vec<Table>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(MAX_KEYS)
    }
}

impl Limiter {
    /// Empty counts, at most `cap` keys per rule and window.
    pub fn new(cap: usize) -> Limiter {
        let tables = Rule::ALL
            .iter()
            .map(|r| Table {
                max: r.max(),
                window_ms: r.window().as_millis() as u64,
                epoch: 0,
                current: Counts::default(),
                previous: Counts::default(),
                warned: None,
            })
            .collect();
        Limiter {
            start: Instant::now(),
            hasher: RandomState::new(),
            cap,
            tables: Mutex::new(tables),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The key of `subject` (an email, a uid, …) under `rule`.
    pub fn key(&self, rule: Rule, subject: impl Hash) -> Key {
        Key {
            rule,
            hash: self.hasher.hash_one((rule, subject)),
        }
    }

    /// The key of a client address (IPv6: its /64) under `rule`.
    pub fn address(&self, rule: Rule, ip: IpAddr) -> Key {
        self.key(rule, client_unit(ip))
    }

    /// Counts one event on each of `keys`, or — when any of them is used up — on none,
    /// refusing with the longest wait.
    pub fn reserve(&self, keys: &[Key]) -> Result<Reservation<'_>, AccountsError> {
        self.reserve_at(keys, self.now())
    }

    /// Whether one more event on each of `keys` would be allowed, counting nothing: for
    /// refusing before expensive work a request that could only end in a refusal.
    pub fn check(&self, keys: &[Key]) -> Result<(), AccountsError> {
        let now = self.now();
        let mut garbage = Vec::new();
        let wait = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            keys.iter()
                .filter_map(|k| {
                    let t = &mut tables[k.rule.index()];
                    t.advance(now, &mut garbage);
                    t.refusal(k.hash, now)
                })
                .max()
        };
        drop(garbage);
        match wait {
            Some(ms) => Err(AccountsError::TooManyRequests(ms.div_ceil(1000).max(1))),
            None => Ok(()),
        }
    }

    fn reserve_at(&self, keys: &[Key], now: u64) -> Result<Reservation<'_>, AccountsError> {
        self.reserve_inner(keys, None, now)
    }

    /// Like [`Limiter::reserve`], and also counts `ceiling` (a per-account rule) — unless
    /// it is used up: then the attempt is refused only when `failed_here` (the
    /// per-(account, address) key of the ceiling's window, which should be among `keys`)
    /// has a count already, and otherwise goes on without counting `ceiling`. So over
    /// the ceiling each address gets one attempt per window, and the owner's address,
    /// which has not been failing, is never refused by what others did.
    pub fn reserve_under_ceiling(
        &self,
        keys: &[Key],
        ceiling: Key,
        failed_here: Key,
    ) -> Result<Reservation<'_>, AccountsError> {
        self.reserve_inner(keys, Some((ceiling, failed_here)), self.now())
    }

    fn reserve_inner(
        &self,
        keys: &[Key],
        ceiling: Option<(Key, Key)>,
        now: u64,
    ) -> Result<Reservation<'_>, AccountsError> {
        let mut garbage = Vec::new();
        let mut full = Vec::new();
        let result = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            let mut wait = None::<u64>;
            let mut refuse = |ms: u64| wait = Some(wait.unwrap_or(0).max(ms));
            for k in keys {
                let t = &mut tables[k.rule.index()];
                t.advance(now, &mut garbage);
                if let Some(ms) = t.refusal(k.hash, now) {
                    refuse(ms);
                }
            }
            let mut counted: Vec<Key> = keys.to_vec();
            if let Some((ceiling, failed_here)) = ceiling {
                tables[failed_here.rule.index()].advance(now, &mut garbage);
                let t = &mut tables[ceiling.rule.index()];
                t.advance(now, &mut garbage);
                match t.refusal(ceiling.hash, now) {
                    None => counted.push(ceiling),
                    Some(ms) => {
                        if tables[failed_here.rule.index()].events(failed_here.hash)
                            >= TYPOS_OVER_CEILING
                        {
                            refuse(ms);
                        }
                    }
                }
            }
            match wait {
                Some(ms) => Err(AccountsError::TooManyRequests(ms.div_ceil(1000).max(1))),
                None => {
                    let mut taken = Vec::with_capacity(counted.len());
                    for k in counted {
                        let t = &mut tables[k.rule.index()];
                        if !t.current.contains_key(&k.hash) && t.current.len() >= self.cap {
                            // Full: admitted uncounted rather than refusing users
                            // who have no entry.
                            if t.warned != Some(t.epoch) {
                                t.warned = Some(t.epoch);
                                full.push(k.rule);
                            }
                            continue;
                        }
                        *t.current.entry(k.hash).or_insert(0) += 1;
                        taken.push((k, t.epoch));
                    }
                    Ok(Reservation {
                        limiter: self,
                        taken,
                    })
                }
            }
        };
        drop(garbage);
        for rule in full {
            tracing::warn!(
                ?rule,
                keys = self.cap,
                "attempt limit table full: new keys of this limit go uncounted until its window ends"
            );
        }
        result
    }

    /// Undoes or forgets counts of a reservation, under the lock.
    fn settle(&self, taken: &mut Vec<(Key, u64)>, rules: &[Rule], forget: bool, now: u64) {
        let mut garbage = Vec::new();
        {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            taken.retain(|(k, epoch)| {
                if !rules.contains(&k.rule) {
                    return true;
                }
                let t = &mut tables[k.rule.index()];
                t.advance(now, &mut garbage);
                if forget {
                    t.current.remove(&k.hash);
                    t.previous.remove(&k.hash);
                } else {
                    let counts = if *epoch == t.epoch {
                        Some(&mut t.current)
                    } else if *epoch + 1 == t.epoch {
                        Some(&mut t.previous)
                    } else {
                        None
                    };
                    if let Some(counts) = counts
                        && let Some(n) = counts.get_mut(&k.hash)
                    {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            counts.remove(&k.hash);
                        }
                    }
                }
                false
            });
        }
        drop(garbage);
    }

    #[cfg(test)]
    fn keys_held(&self) -> usize {
        let tables = self.tables.lock().unwrap();
        tables
            .iter()
            .map(|t| t.current.len() + t.previous.len())
            .sum()
    }
}

/// Events counted by [`Limiter::reserve`]. Dropping it keeps the counts (an abandoned
/// request still counted).
pub struct Reservation<'a> {
    limiter: &'a Limiter,
    taken: Vec<(Key, u64)>,
}

impl Reservation<'_> {
    /// Gives back the counts of the keys of `rules`: the attempt did not count there.
    pub fn give_back(&mut self, rules: &[Rule]) {
        let now = self.limiter.now();
        self.limiter.settle(&mut self.taken, rules, false, now);
    }

    /// Forgets every count of the keys of `rules` (a success clears them).
    pub fn clear(&mut self, rules: &[Rule]) {
        let now = self.limiter.now();
        self.limiter.settle(&mut self.taken, rules, true, now);
    }

    /// Gives back everything: the attempt did not happen.
    pub fn give_back_all(mut self) {
        let rules: Vec<Rule> = self.taken.iter().map(|(k, _)| k.rule).collect();
        self.give_back(&rules);
    }
}

/// Over an account's failure ceiling, failures an address may have had for that
/// account in the window (the previous one included) and still be heard: a typo or
/// two of the owner's does not lock the owner's own address out, while a botnet gets a
/// few guesses per address per hour.
pub const TYPOS_OVER_CEILING: u32 = 3;

#[cfg(test)]
mod tests;
