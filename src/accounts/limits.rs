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
//! **Hardening** ([`Hardening`]): scrypt takes 64 MiB and a core for a tenth of a second
//! or so. Before it runs, a request passes, in order: one gate per client address (one
//! hardening in flight per address; others from it wait), one per account (two in
//! flight), a global rate budget (a token bucket: over it, a first-come first-served
//! wait of at most 10 s, else 429 with `retryAfter`), and the global slots (at most
//! `concurrency` at once). One address therefore never holds more than one slot. The
//! budget keeps scrypt to a share of the machine, and scrypt runs on threads of its own
//! at the lowest CPU priority, so the storage API keeps its cores whenever it has work.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AccountsError;

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
}

impl Rule {
    const ALL: [Rule; 12] = [
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
    ];

    /// The most events allowed in a window.
    pub fn max(self) -> u32 {
        match self {
            Rule::FailAccount | Rule::FailAccountAddressHour => 100,
            Rule::MailRecipientTotal => 20,
            Rule::LoginAddress | Rule::LoginAccount | Rule::LookupAddress => 30,
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

/// The keys are already random-keyed hashes: the tables use them as they are.
#[derive(Default)]
struct Identity(u64);

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

type Counts = HashMap<u64, u32, BuildHasherDefault<Identity>>;

/// One rule's two windows.
struct Table {
    max: u32,
    window_ms: u64,
    /// Number of the current window (time since start / window).
    epoch: u64,
    current: Counts,
    previous: Counts,
    /// The window in which a full table was last reported (logged once per window).
    warned: Option<u64>,
}

impl Table {
    /// Moves to the window of `now`; the maps that expire go to `garbage` (dropped by
    /// the caller after unlocking).
    fn advance(&mut self, now: u64, garbage: &mut Vec<Counts>) {
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
    fn events(&self, key: u64) -> u32 {
        let c = self.current.get(&key).copied().unwrap_or(0);
        let p = self.previous.get(&key).copied().unwrap_or(0);
        c.saturating_add(p)
    }

    /// None when one more event of `key` is allowed; else the wait in ms. A new key
    /// of a full table is allowed (and left uncounted by the caller).
    fn refusal(&self, key: u64, now: u64) -> Option<u64> {
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

/// At most `permits` holders at once per key; entries exist only while held or awaited.
struct Gates {
    permits: usize,
    map: Mutex<HashMap<u64, Arc<Semaphore>>>,
}

/// A place taken at a gate (or awaited): freed, and the entry removed when it was the
/// last, on drop.
struct GatePass<'a> {
    gates: &'a Gates,
    key: u64,
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Gates {
    fn new(permits: usize) -> Gates {
        Gates {
            permits,
            map: Mutex::new(HashMap::new()),
        }
    }

    async fn enter(&self, key: u64) -> GatePass<'_> {
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
                .clone()
        };
        // Held before awaiting, so a cancelled wait still removes the entry.
        let mut pass = GatePass {
            gates: self,
            key,
            sem: Some(sem.clone()),
            permit: None,
        };
        pass.permit = sem.acquire_owned().await.ok();
        pass
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let Some(sem) = self.sem.take() else { return };
        let mut map = self.gates.map.lock().unwrap_or_else(|p| p.into_inner());
        // Clones are made only under this lock: the map's and ours are the last two.
        if Arc::strong_count(&sem) == 2 {
            map.remove(&self.key);
        }
    }
}

/// A token bucket of hardenings (GCRA): `per_sec` on average, `burst` at once, and a
/// request that would wait longer than `max_wait` for its turn is refused.
struct Budget {
    start: Instant,
    interval_us: u64,
    tolerance_us: u64,
    max_wait_us: u64,
    /// The theoretical arrival time of the next request, µs since start.
    tat: Mutex<u64>,
}

impl Budget {
    fn new(per_sec: f64, burst: u32, max_wait: Duration) -> Budget {
        // At least 1 µs apart; a rate below one a second spaces them further.
        let interval_us = (1e6 / per_sec.max(1e-6)).clamp(1.0, 1e12) as u64;
        Budget {
            start: Instant::now(),
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
            max_wait_us: max_wait.as_micros() as u64,
            tat: Mutex::new(0),
        }
    }

    /// The wait before this request's turn, or the refusal (`retryAfter` seconds).
    fn take(&self) -> Result<Duration, AccountsError> {
        let now = self.start.elapsed().as_micros() as u64;
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let t = (*tat).max(now);
        let wait = (t.saturating_sub(self.tolerance_us)).saturating_sub(now);
        if wait > self.max_wait_us {
            let secs = (wait - self.max_wait_us).div_ceil(1_000_000).max(1);
            return Err(AccountsError::TooManyRequests(secs));
        }
        *tat = t + self.interval_us;
        Ok(Duration::from_micros(wait))
    }
}

/// Longest wait for a turn in the hardening budget before 429: long enough that a
/// legitimate request queued behind a few other addresses (each holds at most one
/// place, see the address gate) waits its turn in order rather than being refused.
const BUDGET_MAX_WAIT: Duration = Duration::from_secs(10);
/// Over an account's failure ceiling, failures an address may have had for that
/// account in the window (the previous one included) and still be heard: a typo or
/// two of the owner's does not lock the owner's own address out, while a botnet gets a
/// few guesses per address per hour.
pub const TYPOS_OVER_CEILING: u32 = 3;
/// Longest wait for an address's or an account's turn at hardening; beyond, 429.
const GATE_MAX_WAIT: Duration = Duration::from_secs(30);
/// Hardenings allowed at once above the budget's rate.
const BUDGET_BURST: u32 = 10;
/// Hardenings in flight per account.
const PER_ACCOUNT: usize = 2;

/// The gates, budget and slots in front of scrypt.
pub struct Hardening {
    addresses: Gates,
    accounts: Gates,
    budget: Budget,
    slots: Arc<Semaphore>,
    hasher: RandomState,
    threads: LowPriority,
}

/// A unit of hardening work for the low-priority threads.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that run hardening, at the lowest CPU priority (nice 19): the budget
/// bounds how much scrypt runs on average, and the priority makes what runs yield the
/// cores to the storage API whenever it has work, so a login flood costs the storage
/// API its idle time rather than its share (scripts/bench login-flood). Its threads
/// end when the `Hardening` that owns them is dropped.
struct LowPriority {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl LowPriority {
    fn new(threads: usize) -> LowPriority {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("harden-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "hardening thread not started");
            }
        }
        LowPriority { jobs }
    }
}

/// Nice 19 for the calling thread (Linux: a thread's id names it for setpriority).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// A turn to run one hardening; held while it runs.
pub struct Turn<'a> {
    _slot: OwnedSemaphorePermit,
    _account: Option<GatePass<'a>>,
    _address: Option<GatePass<'a>>,
}

/// The machine's cores (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Hardening {
    /// At most `concurrency` hardenings at once (0: half the cores, at least 1) and
    /// `per_sec` a second on average (0 or less: one per two cores and second, at least
    /// one: about a sixteenth of the machine's cores for scrypt at ~0.12 s each, and
    /// scrypt's memory traffic with it).
    pub fn new(concurrency: usize, per_sec: f64) -> Hardening {
        let concurrency = match concurrency {
            0 => (cores() / 2).max(1),
            n => n,
        };
        let per_sec = if per_sec > 0.0 {
            per_sec
        } else {
            (cores() as f64 / 2.0).max(1.0)
        };
        Hardening {
            addresses: Gates::new(1),
            accounts: Gates::new(PER_ACCOUNT),
            budget: Budget::new(
                per_sec,
                BUDGET_BURST.max(per_sec.ceil().min(f64::from(u32::MAX)) as u32),
                BUDGET_MAX_WAIT,
            ),
            slots: Arc::new(Semaphore::new(concurrency)),
            hasher: RandomState::new(),
            threads: LowPriority::new(concurrency),
        }
    }

    /// Runs `f` (the hardening, with what must happen on the same thread) on the
    /// low-priority threads; call it holding a [`Turn`].
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountsError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(out);
        });
        self.threads
            .jobs
            .send(job)
            .map_err(|_| AccountsError::Internal("no hardening thread".into()))?;
        match result.await {
            Ok(Ok(out)) => Ok(out),
            _ => Err(AccountsError::Internal("hardening failed".into())),
        }
    }

    /// Waits for a turn for a request from `ip` for `account` (an email or uid; none
    /// for operator commands); 429 when the budget is spent for longer than a short
    /// wait.
    pub async fn turn(
        &self,
        ip: Option<IpAddr>,
        account: Option<&str>,
    ) -> Result<Turn<'_>, AccountsError> {
        let busy = || AccountsError::TooManyRequests(GATE_MAX_WAIT.as_secs());
        let address = match ip {
            Some(ip) => Some(
                tokio::time::timeout(
                    GATE_MAX_WAIT,
                    self.addresses.enter(self.hasher.hash_one(client_unit(ip))),
                )
                .await
                .map_err(|_| busy())?,
            ),
            None => None,
        };
        let account = match account {
            Some(a) => Some(
                tokio::time::timeout(GATE_MAX_WAIT, self.accounts.enter(self.hasher.hash_one(a)))
                    .await
                    .map_err(|_| busy())?,
            ),
            None => None,
        };
        let wait = self.budget.take()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AccountsError::Internal(e.to_string()))?;
        Ok(Turn {
            _slot: slot,
            _account: account,
            _address: address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_many(r: Result<Reservation<'_>, AccountsError>) -> u64 {
        match r {
            Err(AccountsError::TooManyRequests(s)) => s,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("allowed"),
        }
    }

    #[test]
    fn the_eleventh_failure_in_a_window_is_refused_per_key() {
        let l = Limiter::new(100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let keys = [
            l.key(Rule::FailAccountAddress, ("a@x", client_unit(ip))),
            l.address(Rule::FailAddress, ip),
        ];
        for _ in 0..10 {
            l.reserve_at(&keys, 1_000).unwrap();
        }
        let s = too_many(l.reserve_at(&keys, 1_000));
        assert!((1..=120).contains(&s), "{s}");
        // The address is used up for every account; another address is not.
        assert!(
            l.reserve_at(&[l.address(Rule::FailAddress, ip)], 2_000)
                .is_err()
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        l.reserve_at(&[l.address(Rule::FailAddress, other)], 2_000)
            .unwrap();
        // Nothing was counted by the refused call: a refused key set counts on none.
        let a = [l.key(Rule::FailAccount, "a@x")];
        for _ in 0..100 {
            l.reserve_at(&a, 3_000).unwrap();
        }
        assert!(l.reserve_at(&a, 3_000).is_err());
    }

    #[test]
    fn given_back_counts_are_free_again_and_cleared_keys_start_over() {
        let l = Limiter::new(100);
        let k = [l.key(Rule::FailCode, "uid")];
        for _ in 0..10 {
            l.reserve_at(&k, 10).unwrap().give_back_all();
        }
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(l.reserve_at(&k, 10).unwrap());
        }
        assert!(l.reserve_at(&k, 10).is_err());
        held.pop().unwrap().clear(&[Rule::FailCode]);
        l.reserve_at(&k, 10).unwrap();
    }

    #[test]
    fn windows_slide_and_expire_without_a_sweep() {
        let l = Limiter::new(100);
        let k = [l.key(Rule::FailAddress, "x")];
        for _ in 0..10 {
            l.reserve_at(&k, 59_000).unwrap();
        }
        // Just after the window: the previous one still weighs almost fully.
        assert!(l.reserve_at(&k, 60_500).is_err());
        // Late in the next window it has faded enough for one more.
        l.reserve_at(&k, 115_000).unwrap();
        // Two windows later nothing is left.
        for _ in 0..10 {
            l.reserve_at(&k, 240_000).unwrap();
        }
        assert_eq!(l.keys_held(), 1);
    }

    #[test]
    fn two_hundred_thousand_keys_stay_bounded_and_a_full_table_admits_new_keys_uncounted() {
        let l = Limiter::new(MAX_KEYS);
        let early = l.address(Rule::FailAddress, "198.51.100.7".parse().unwrap());
        for _ in 0..10 {
            l.reserve_at(&[early], 1_000).unwrap();
        }
        let started = Instant::now();
        let mut refused = 0;
        for i in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
            if l.reserve_at(&[l.address(Rule::FailAddress, ip)], 2_000)
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(l.keys_held() <= MAX_KEYS, "{}", l.keys_held());
        // A full table locks nobody out: new keys are admitted, uncounted.
        assert_eq!(refused, 0);
        let late = l.address(Rule::FailAddress, "203.0.113.9".parse().unwrap());
        for _ in 0..20 {
            l.reserve_at(&[late], 2_500).unwrap().give_back_all();
        }
        // The early key's counter was not forgotten to make room: still refused.
        assert!(l.reserve_at(&[early], 3_000).is_err());
        // Another rule's table is unaffected and still counts.
        let a = l.key(Rule::FailCode, "uid");
        for _ in 0..10 {
            l.reserve_at(&[a], 3_000).unwrap();
        }
        assert!(l.reserve_at(&[a], 3_000).is_err());
        // 200,000 operations on a table at its cap: an O(n) sweep each would take
        // minutes; O(1) ones take well under a second even in a debug build.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        // A new window counts new keys again.
        let fresh = l.address(Rule::FailAddress, "203.0.113.1".parse().unwrap());
        for _ in 0..10 {
            l.reserve_at(&[fresh], 150_000).unwrap();
        }
        assert!(l.reserve_at(&[fresh], 150_000).is_err());
    }

    fn under_ceiling<'a>(
        l: &'a Limiter,
        account: &str,
        ip: &str,
        now: u64,
    ) -> Result<Reservation<'a>, AccountsError> {
        let here = l.key(Rule::FailAccountAddressHour, (account, ip));
        l.reserve_inner(
            &[here],
            Some((l.key(Rule::FailAccount, account), here)),
            now,
        )
    }

    #[test]
    fn over_the_account_ceiling_only_addresses_that_failed_are_refused() {
        let l = Limiter::new(1_000);
        // 100 failures from 10 addresses: the ceiling is reached.
        for i in 0..100 {
            under_ceiling(&l, "a", &format!("10.0.0.{}", i % 10), 1_000).unwrap();
        }
        // An address that failed for this account (10 times) is refused …
        assert!(under_ceiling(&l, "a", "10.0.0.3", 2_000).is_err());
        // … a fresh one gets TYPOS_OVER_CEILING attempts this window …
        let tries: Vec<_> = (0..TYPOS_OVER_CEILING)
            .map(|_| under_ceiling(&l, "a", "192.0.2.1", 2_000).unwrap())
            .collect();
        assert!(under_ceiling(&l, "a", "192.0.2.1", 2_000).is_err());
        drop(tries);
        // … and other accounts are not concerned.
        under_ceiling(&l, "b", "10.0.0.3", 2_000).unwrap();
        // Under the ceiling, the ceiling counts: a given-back attempt frees its place.
        let l = Limiter::new(1_000);
        for i in 0..99 {
            under_ceiling(&l, "a", &format!("10.0.1.{i}"), 0).unwrap();
        }
        under_ceiling(&l, "a", "10.0.2.1", 0)
            .unwrap()
            .give_back_all();
        under_ceiling(&l, "a", "10.0.2.2", 0).unwrap();
        // Now full: 10.0.2.1 gave its count back, so it is fresh again.
        for _ in 0..TYPOS_OVER_CEILING {
            under_ceiling(&l, "a", "10.0.2.1", 0).unwrap();
        }
        assert!(under_ceiling(&l, "a", "10.0.2.1", 0).is_err());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_unit(a), client_unit(b));
        assert_ne!(client_unit(a), client_unit(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_unit(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let l = Limiter::new(100);
        for _ in 0..10 {
            l.reserve_at(&[l.address(Rule::FailAddress, a)], 0).unwrap();
        }
        assert!(l.reserve_at(&[l.address(Rule::FailAddress, b)], 0).is_err());
        l.reserve_at(&[l.address(Rule::FailAddress, c)], 0).unwrap();
    }

    #[tokio::test]
    async fn gates_admit_one_per_key_and_forget_keys_when_free() {
        let g = Gates::new(1);
        let first = g.enter(1).await;
        let other = g.enter(2).await;
        assert_eq!(g.len(), 2);
        let waiting = tokio::time::timeout(Duration::from_millis(50), g.enter(1)).await;
        assert!(waiting.is_err(), "a second holder of key 1 waits");
        drop(first);
        let again = g.enter(1).await;
        drop(again);
        drop(other);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn the_budget_allows_a_burst_then_paces_then_refuses() {
        let b = Budget::new(2.0, 3, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(b.take().unwrap() < Duration::from_millis(100));
        }
        let w = b.take().unwrap();
        assert!(w > Duration::from_millis(300), "{w:?}");
        let _ = b.take().unwrap();
        assert!(matches!(b.take(), Err(AccountsError::TooManyRequests(_))));
    }
}
