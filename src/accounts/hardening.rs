//! The gates and budget in front of password hardening ([`Hardening`]), and the
//! threads it runs on.
//!
//! scrypt takes 64 MiB and a core for a tenth of a second or so. Before it runs, a
//! request passes, in order: one gate per client address (one hardening in flight per
//! address; others from it wait), one per account (two in flight), a global rate budget
//! (a token bucket: over it, a first-come first-served wait of at most 10 s, else 429
//! with `retryAfter`), and the global slots (at most `concurrency` at once). One
//! address therefore never holds more than one slot. The budget keeps scrypt to a share
//! of the machine. scrypt runs on threads of its own, started at the first hardening,
//! at the CPU priority `accounts_hardening_nice` gives them (0, the default: the same as
//! the storage API's; up to 19, the lowest, to have them yield the cores whenever the
//! storage API has work, at the cost of sign-ins that wait for idle time on a busy
//! machine: docs/PERFORMANCE.md, "The storage API under a login flood").

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AccountsError;
use super::limits::client_unit;

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
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Workers {
    fn new(threads: usize, nice: u8) -> Workers {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("harden-{i}"))
                .spawn(move || {
                    if nice > 0 {
                        lower_this_threads_priority(nice);
                    }
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
        Workers { jobs }
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
