//! Failed sign-in limits: per account (email) and per client address, `max` failures
//! in a sliding `window`; further attempts are refused with FxA's `retryAfter` before
//! any password is checked. Kept in memory (a restart forgets them), bounded in size.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AccountsError;

/// Most keys remembered; beyond it the oldest-failing keys are forgotten first.
const MAX_KEYS: usize = 100_000;

/// Counts failures per account and per address.
pub struct Limiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

impl Limiter {
    /// At most `max` failures per `window`.
    pub fn new(max: usize, window: Duration) -> Limiter {
        Limiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses with `TooManyRequests(seconds)` when the account or the address has
    /// used up its failures.
    pub fn check(&self, account: &str, ip: Option<IpAddr>) -> Result<(), AccountsError> {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        let keys = [Some(format!("acct:{account}")), ip.map(ip_key)];
        let mut wait = Duration::ZERO;
        for key in keys.into_iter().flatten() {
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= self.max
                    && let Some(oldest) = q.front()
                {
                    wait = wait.max(self.window - now.duration_since(*oldest));
                }
            }
        }
        if wait > Duration::ZERO {
            return Err(AccountsError::TooManyRequests(wait.as_secs().max(1)));
        }
        Ok(())
    }

    /// Records a failure.
    pub fn fail(&self, account: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for key in [Some(format!("acct:{account}")), ip.map(ip_key)]
            .into_iter()
            .flatten()
        {
            let q = map.entry(key).or_default();
            q.push_back(now);
            while q.len() > self.max {
                q.pop_front();
            }
        }
    }

    /// Forgets an account's failures after a correct password.
    pub fn succeed(&self, account: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&format!("acct:{account}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_window_is_refused_per_account_and_per_address() {
        let l = Limiter::new(10, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            l.check("a@x", Some(ip)).unwrap();
            l.fail("a@x", Some(ip));
        }
        assert!(matches!(
            l.check("a@x", None),
            Err(AccountsError::TooManyRequests(s)) if (1..=60).contains(&s)
        ));
        // Another account from the same address is refused too; another address for
        // another account is not.
        assert!(l.check("b@x", Some(ip)).is_err());
        l.check("b@x", Some("192.0.2.2".parse().unwrap())).unwrap();
    }
}
