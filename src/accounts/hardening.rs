//! The gates and budget in front of password hardening ([`Hardening`]), and the
//! threads it runs on.
//!
//! scrypt takes 64 MiB and a core for a tenth of a second or so. Before it runs, a
//! request passes, in order: one gate per client address (one hardening in flight per
//! address; others from it wait), the address's own token bucket (a quarter of the budget's
//! rate), one gate per account (two in flight), a global rate budget (a token bucket:
//! over it, a first-come first-served wait of at most 10 s, else 429 with
//! `retryAfter`), and the global slots (at most `concurrency` at once). One address
//! therefore never holds more than one slot, nor (past a burst of 3) more than a quarter
//! of the budget's rate. The budget
//! keeps scrypt to a share of the machine. scrypt runs on threads of its own, started at
//! the first hardening, keeping its 64 MiB between hardenings (`server::large_blocks`),
//! at the CPU priority `accounts_hardening_nice` gives them (0, the default: the same as
//! the storage API's; up to 19, the lowest, to have them yield the cores whenever the
//! storage API has work, at the cost of sign-ins that wait for idle time on a busy
//! machine: docs/PERFORMANCE.md, "The storage API under a login flood").

use std::collections::HashMap;
use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AccountsError;
use super::limits::client_unit;
use crate::server::large_blocks;

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

/// A token bucket's rule (GCRA): `per_sec` on average, `burst` at once, and a request
/// that would wait longer than `max_wait` for its turn is refused.
struct Pace {
    interval_us: u64,
    tolerance_us: u64,
    max_wait_us: u64,
}

impl Pace {
    fn new(per_sec: f64, burst: u32, max_wait: Duration) -> Pace {
        // At least 1 µs apart; a rate below one a second spaces them further.
        let interval_us = (1e6 / per_sec.max(1e-6)).clamp(1.0, 1e12) as u64;
        Pace {
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
            max_wait_us: max_wait.as_micros() as u64,
        }
    }

    /// For a bucket whose next request was due at `tat` (µs), a request at `now`: the
    /// bucket's new `tat` and this request's wait, or the refusal (`retryAfter` s).
    fn step(&self, tat: u64, now: u64) -> Result<(u64, Duration), AccountsError> {
        let t = tat.max(now);
        let wait = (t.saturating_sub(self.tolerance_us)).saturating_sub(now);
        if wait > self.max_wait_us {
            let secs = (wait - self.max_wait_us).div_ceil(1_000_000).max(1);
            return Err(AccountsError::TooManyRequests(secs));
        }
        Ok((t + self.interval_us, Duration::from_micros(wait)))
    }

    /// How long a bucket's `tat` can matter after it was set.
    fn horizon_us(&self) -> u64 {
        self.interval_us + self.tolerance_us + self.max_wait_us
    }
}

/// The global budget of hardenings: one bucket.
struct Budget {
    start: Instant,
    pace: Pace,
    /// The theoretical arrival time of the next request, µs since start.
    tat: Mutex<u64>,
}

impl Budget {
    fn new(pace: Pace) -> Budget {
        Budget {
            start: Instant::now(),
            pace,
            tat: Mutex::new(0),
        }
    }

    /// The wait before this request's turn, or the refusal (`retryAfter` seconds).
    fn take(&self) -> Result<Duration, AccountsError> {
        let now = self.start.elapsed().as_micros() as u64;
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let (next, wait) = self.pace.step(*tat, now)?;
        *tat = next;
        Ok(wait)
    }
}

/// Buckets by client address (keys: random-keyed hashes). Two generations of maps, each
/// at least a bucket's horizon long: a key is looked up in the current one, then the
/// previous one, and a map two generations old is dropped whole, so nothing sweeps. A
/// current map takes at most `limits::MAX_KEYS` new keys; a new key beyond is not paced
/// (the global budget still holds), rather than anyone's bucket forgotten.
struct AddressPaces {
    start: Instant,
    pace: Pace,
    generation_us: u64,
    maps: Mutex<PaceMaps>,
}

#[derive(Default)]
struct PaceMaps {
    generation: u64,
    current: HashMap<u64, u64>,
    previous: HashMap<u64, u64>,
}

impl AddressPaces {
    fn new(pace: Pace) -> AddressPaces {
        AddressPaces {
            start: Instant::now(),
            generation_us: pace.horizon_us().max(60_000_000),
            pace,
            maps: Mutex::new(PaceMaps::default()),
        }
    }

    /// The wait before this address's turn, or the refusal.
    fn take(&self, key: u64) -> Result<Duration, AccountsError> {
        self.take_at(key, self.start.elapsed().as_micros() as u64)
    }

    fn take_at(&self, key: u64, now: u64) -> Result<Duration, AccountsError> {
        let generation = now / self.generation_us;
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let mut expired = HashMap::new();
        if generation > maps.generation {
            let current = std::mem::take(&mut maps.current);
            expired = if generation == maps.generation + 1 {
                std::mem::replace(&mut maps.previous, current)
            } else {
                maps.previous.clear();
                current
            };
            maps.generation = generation;
        }
        let tat = maps
            .current
            .get(&key)
            .or_else(|| maps.previous.get(&key))
            .copied()
            .unwrap_or(0);
        let (next, wait) = self.pace.step(tat, now)?;
        // A full map takes no new address (it goes unpaced: the global budget still
        // holds), but keeps pacing those it knows, from this generation or the last
        // (at most twice the cap in all).
        if maps.current.len() < super::limits::MAX_KEYS
            || maps.current.contains_key(&key)
            || maps.previous.contains_key(&key)
        {
            maps.current.insert(key, next);
        }
        drop(maps);
        drop(expired);
        Ok(wait)
    }
}

/// Longest wait for a turn in the hardening budget before 429: long enough that a
/// legitimate request queued behind a few other addresses (each holds at most one
/// place, see the address gate) waits its turn in order rather than being refused.
const BUDGET_MAX_WAIT: Duration = Duration::from_secs(10);

/// Longest wait for an address's or an account's turn at hardening; beyond, 429.
const GATE_MAX_WAIT: Duration = Duration::from_secs(30);
/// Hardenings allowed at once above the budget's rate: a few sign-ins together pass
/// without waiting, while a flood's first seconds cost little more than its rate (with
/// 10, a flood took 10 hardenings' CPU from the storage API in its first second or two).
const BUDGET_BURST: u32 = 3;
/// Hardenings in flight per account.
const PER_ACCOUNT: usize = 2;
/// One client address gets at most this share of the budget's rate (with a burst of
/// `BUDGET_BURST` of its own): a flood from one address leaves the rest to everyone
/// else, so their sign-ins find a turn at once, and costs the storage API a quarter of
/// what the budget allows (by default one hardening every 4 s on 2 cores).
const ADDRESS_SHARE: f64 = 0.25;

/// The gates, budget and slots in front of scrypt.
pub struct Hardening {
    addresses: Gates,
    address_paces: AddressPaces,
    accounts: Gates,
    budget: Budget,
    slots: Arc<Semaphore>,
    hasher: RandomState,
    /// The hardening threads: as many as the slots, at this nice value.
    workers: (usize, u8),
    threads: std::sync::OnceLock<Workers>,
}

/// A unit of hardening work for the low-priority threads.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that run hardening, as many as its slots, at a nice value of their own:
/// the budget bounds how much scrypt runs on average, and the priority decides who
/// yields when the storage API wants the same cores. The threads end when the
/// `Hardening` that owns them is dropped.
struct Workers {
    queue: Arc<JobQueue>,
}

/// The jobs waiting for a hardening thread, and whether the threads are to end. Every
/// idle thread waits on the condition variable with its own timeout (a channel's
/// receiver behind a mutex would let only one of them time out and give its memory back).
#[derive(Default)]
struct JobQueue {
    state: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Job>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One thread's loop: run jobs; give scrypt's memory back after `KEEP_IDLE`
    /// without one; end once closed.
    fn serve(&self) {
        // scrypt's 64 MiB stays with the thread between hardenings (no mapping, page
        // faults and unmapping each time: large_blocks) until it has been idle a while.
        let _release = KeepLargeBlocks::start();
        let mut state = self.lock();
        loop {
            if let Some(job) = state.0.pop_front() {
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            if state.1 {
                return;
            }
            let (next, waited) = self
                .ready
                .wait_timeout(state, KEEP_IDLE)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if waited.timed_out() && state.0.is_empty() {
                drop(state);
                KeepLargeBlocks::release();
                state = self.lock();
            }
        }
    }
}

impl Workers {
    fn new(threads: usize, nice: u8) -> Workers {
        let queue = Arc::new(JobQueue::default());
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("harden-{i}"))
                .spawn(move || {
                    if nice > 0 {
                        lower_this_threads_priority(nice);
                    }
                    queue.serve();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "hardening thread not started");
            }
        }
        Workers { queue }
    }

    fn submit(&self, job: Job) {
        self.queue.lock().0.push_back(job);
        self.queue.ready.notify_one();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.queue.lock().1 = true;
        self.queue.ready.notify_all();
    }
}

/// How long a hardening thread keeps scrypt's memory without work.
const KEEP_IDLE: Duration = Duration::from_secs(5);

/// The hardening thread's large-block keeping: on from `start` until dropped.
struct KeepLargeBlocks;

impl KeepLargeBlocks {
    fn start() -> KeepLargeBlocks {
        large_blocks::keep_on_this_thread(true);
        KeepLargeBlocks
    }

    /// Frees the block kept, and keeps the next one.
    fn release() {
        large_blocks::keep_on_this_thread(false);
        large_blocks::keep_on_this_thread(true);
    }
}

impl Drop for KeepLargeBlocks {
    fn drop(&mut self) {
        large_blocks::keep_on_this_thread(false);
    }
}

/// A nice value (1–19) for the calling thread (Linux: a thread's id names it for
/// setpriority; elsewhere the threads keep the process's priority).
fn lower_this_threads_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            i32::from(nice.min(19)),
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
    /// scrypt's memory traffic with it), on threads at nice `nice` (0–19).
    pub fn new(concurrency: usize, per_sec: f64, nice: u8) -> Hardening {
        let concurrency = match concurrency {
            0 => (cores() / 2).max(1),
            n => n,
        };
        let per_sec = if per_sec > 0.0 {
            per_sec
        } else {
            (cores() as f64 / 2.0).max(1.0)
        };
        let burst = |rate: f64| BUDGET_BURST.max(rate.ceil().min(f64::from(u32::MAX)) as u32);
        let per_address = per_sec * ADDRESS_SHARE;
        Hardening {
            addresses: Gates::new(1),
            address_paces: AddressPaces::new(Pace::new(
                per_address,
                burst(per_address),
                BUDGET_MAX_WAIT,
            )),
            accounts: Gates::new(PER_ACCOUNT),
            budget: Budget::new(Pace::new(per_sec, burst(per_sec), BUDGET_MAX_WAIT)),
            slots: Arc::new(Semaphore::new(concurrency)),
            hasher: RandomState::new(),
            workers: (concurrency, nice),
            threads: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` (the hardening, with what must happen on the same thread) on the
    /// hardening threads (started by the first call); call it holding a [`Turn`].
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountsError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(out);
        });
        let (threads, nice) = self.workers;
        self.threads
            .get_or_init(|| Workers::new(threads, nice))
            .submit(job);
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
            Some(ip) => {
                let key = self.hasher.hash_one(client_unit(ip));
                let pass = tokio::time::timeout(GATE_MAX_WAIT, self.addresses.enter(key))
                    .await
                    .map_err(|_| busy())?;
                // The address's own share of the budget, waited for holding its gate
                // (its only place) and nothing shared.
                let wait = self.address_paces.take(key)?;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Some(pass)
            }
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
        let b = Budget::new(Pace::new(2.0, 3, Duration::from_secs(1)));
        for _ in 0..3 {
            assert!(b.take().unwrap() < Duration::from_millis(100));
        }
        let w = b.take().unwrap();
        assert!(w > Duration::from_millis(300), "{w:?}");
        let _ = b.take().unwrap();
        assert!(matches!(b.take(), Err(AccountsError::TooManyRequests(_))));
    }

    #[test]
    fn each_address_paces_at_its_own_share_and_is_forgotten_after_two_generations() {
        let p = AddressPaces::new(Pace::new(1.0, 2, Duration::from_secs(5)));
        let ms = |n: u64| Duration::from_millis(n);
        // Two at once, then a second apart; another address is not held back.
        assert_eq!(p.take_at(1, 0).unwrap(), ms(0));
        assert_eq!(p.take_at(1, 0).unwrap(), ms(0));
        assert_eq!(p.take_at(1, 0).unwrap(), ms(1000));
        assert_eq!(p.take_at(2, 0).unwrap(), ms(0));
        // Far enough ahead, the address is refused, and its bucket is left as it was.
        while p.take_at(1, 0).is_ok() {}
        assert!(matches!(
            p.take_at(1, 0),
            Err(AccountsError::TooManyRequests(_))
        ));
        // A generation later the bucket is still known; two later, dropped whole.
        let g = p.generation_us;
        assert!(p.take_at(1, g).is_ok());
        assert!(p.maps.lock().unwrap().previous.contains_key(&1));
        p.take_at(3, 3 * g).unwrap();
        let maps = p.maps.lock().unwrap();
        assert!(!maps.previous.contains_key(&1) && !maps.current.contains_key(&1));
        assert_eq!(maps.current.len() + maps.previous.len(), 1);
    }

    #[test]
    fn a_full_map_leaves_new_addresses_unpaced_and_keeps_the_known_ones() {
        let p = AddressPaces::new(Pace::new(1.0, 1, Duration::from_secs(5)));
        for key in 0..crate::accounts::limits::MAX_KEYS as u64 {
            p.take_at(key, 0).unwrap();
        }
        // A known address is still paced; a new one passes and is not stored.
        assert_eq!(p.take_at(0, 0).unwrap(), Duration::from_secs(1));
        let new = u64::MAX;
        assert_eq!(p.take_at(new, 0).unwrap(), Duration::ZERO);
        assert_eq!(p.take_at(new, 0).unwrap(), Duration::ZERO);
        assert_eq!(
            p.maps.lock().unwrap().current.len(),
            crate::accounts::limits::MAX_KEYS
        );
        // A generation later, with the map full of new addresses, one known from the
        // last generation is still paced.
        let g = p.generation_us;
        let max = crate::accounts::limits::MAX_KEYS as u64;
        for key in max..2 * max {
            p.take_at(key, g).unwrap();
        }
        assert_eq!(p.take_at(0, g).unwrap(), Duration::ZERO);
        assert_eq!(p.take_at(0, g).unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn every_worker_thread_takes_jobs_and_all_end_when_dropped() {
        let workers = Workers::new(2, 0);
        // Two jobs that can only finish together: two threads serve at once.
        let both = Arc::new(std::sync::Barrier::new(2));
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (both, done) = (both.clone(), done.clone());
            workers.submit(Box::new(move || {
                both.wait();
                let _ = done.send(());
            }));
        }
        for _ in 0..2 {
            finished.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let queue = workers.queue.clone();
        drop(workers);
        // The threads let go of the queue once they see it closed.
        let until = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&queue) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&queue), 1, "the threads ended");
    }
}
