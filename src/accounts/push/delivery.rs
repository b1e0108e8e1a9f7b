//! The sender of pushes ([`Pusher`]): `send` checks the target, encrypts the message
//! once and puts it on a bounded queue without waiting; one worker drains the queue
//! with a bounded number of requests in flight. A 2xx is delivered; 404 or 410 means
//! the device's push subscription is gone (the caller is told, to mark it expired);
//! 429, 5xx, a network error or a timeout are tried again after a backoff (or the
//! push service's `Retry-After`, up to a minute), up to three attempts in all, without
//! holding a slot of the in-flight bound while waiting, and never past the message's
//! TTL; any other status drops the message. Every message counts in the queue's bound
//! until its last attempt is over, so retries cannot pile up beyond it.
//!
//! Logs name the endpoint's host only: the rest of a push URL is a capability.
//! Outcomes are counted in `syncstore_accounts_push_total{outcome}`: `sent`, `gone`,
//! `retried` (an attempt to be made again), `failed` (given up, or refused by the push
//! service), `refused` (the endpoint, its address or the target's keys are not
//! acceptable), `dropped` (the queue was full).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::guard;
use super::webpush::{self, VapidSigner};
use super::{PushConfig, PushTarget, VapidKey};

/// Most messages queued, in flight or waiting for a retry at once.
pub const QUEUE: usize = 1024;
/// Most messages of one account queued, in flight or waiting for a retry at once: one
/// account (a slow or hostile push endpoint, a flood of notices) cannot take the queue
/// from the others.
pub const PER_ACCOUNT: usize = 64;
/// Most push requests in flight at once.
pub const IN_FLIGHT: usize = 16;
/// The waits before the second and third attempts.
pub const BACKOFF: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];
/// Longest wait a push service's `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of a response body read (the rest is not: the connection is dropped).
const MAX_RESPONSE_BODY: usize = 4096;
/// How often a full queue is logged at most.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// What became of a message (the `outcome` label of the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Sent,
    Gone,
    Retried,
    Failed,
    Refused,
    Dropped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Gone => "gone",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Dropped => "dropped",
        }
    }
}

/// The sender's bounds (tests shorten them).
pub(crate) struct Tuning {
    pub queue: usize,
    pub in_flight: usize,
    /// The waits before each attempt after the first (attempts: one more than these).
    pub backoff: Vec<Duration>,
    /// Where outcomes are reported besides the metric (tests).
    pub observe: Option<mpsc::UnboundedSender<Outcome>>,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            queue: QUEUE,
            in_flight: IN_FLIGHT,
            backoff: BACKOFF.to_vec(),
            observe: None,
        }
    }
}

/// The endpoint's host, for logs (empty when it is not a URL).
pub(crate) fn host_of(endpoint: &str) -> String {
    Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// Sends push messages (see the module's documentation).
pub struct Pusher {
    running: Option<Running>,
}

struct Running {
    tx: mpsc::UnboundedSender<Job>,
    /// One permit per message queued, in flight or waiting for a retry.
    slots: Arc<Semaphore>,
    /// Messages held per account (uid → count; an account with none has no entry).
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    shared: Arc<Shared>,
    last_full_warning: Mutex<Option<Instant>>,
    allow_private: Vec<IpNet>,
    services: Vec<String>,
}

/// What the worker and the deliveries share.
struct Shared {
    client: reqwest::Client,
    vapid: VapidSigner,
    on_gone: Box<dyn Fn(PushTarget) + Send + Sync>,
    in_flight: Arc<Semaphore>,
    backoff: Vec<Duration>,
    observe: Option<mpsc::UnboundedSender<Outcome>>,
}

impl Shared {
    fn count(&self, outcome: Outcome) {
        metrics::counter!("syncstore_accounts_push_total", "outcome" => outcome.label())
            .increment(1);
        if let Some(o) = &self.observe {
            let _ = o.send(outcome);
        }
    }
}

/// One message.
struct Job {
    target: PushTarget,
    url: Url,
    host: String,
    /// The push service's origin: the JWT's `aud`.
    audience: String,
    /// Encrypted once, sent as is by every attempt.
    body: Vec<u8>,
    ttl_secs: u32,
    queued_at: Instant,
    _slot: OwnedSemaphorePermit,
    _share: AccountShare,
}

/// One message's place in its account's share of the queue, given back when dropped.
struct AccountShare {
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    uid: String,
}

impl AccountShare {
    /// Takes a place for `uid`, unless it already holds [`PER_ACCOUNT`].
    fn take(accounts: &Arc<Mutex<HashMap<String, usize>>>, uid: &str) -> Option<AccountShare> {
        let mut map = accounts.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.entry(uid.to_string()).or_insert(0);
        if *held >= PER_ACCOUNT {
            return None;
        }
        *held += 1;
        Some(AccountShare {
            accounts: accounts.clone(),
            uid: uid.to_string(),
        })
    }
}

impl Drop for AccountShare {
    fn drop(&mut self) {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get_mut(&self.uid) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// The result of one attempt.
enum Attempt {
    Sent,
    Gone(u16),
    /// Not to be sent (the guard refused the address).
    Refused(String),
    /// Refused by the push service for good.
    Rejected(u16),
    /// To be tried again: why, and after how long the push service asked for.
    Again(String, Option<Duration>),
}

impl Pusher {
    /// Starts the sender (spawns its worker on the current tokio runtime).
    /// `on_gone` is called (from a worker) when the push service answers 404 or 410 for
    /// a target's endpoint: the lead marks that device's endpoint expired.
    ///
    /// `on_gone` runs on tokio's blocking pool, so it may use the database.
    pub fn start(
        config: PushConfig,
        vapid: VapidKey,
        on_gone: Box<dyn Fn(PushTarget) + Send + Sync>,
    ) -> Arc<Pusher> {
        Pusher::start_tuned(config, vapid, on_gone, Tuning::default())
    }

    pub(crate) fn start_tuned(
        config: PushConfig,
        vapid: VapidKey,
        on_gone: Box<dyn Fn(PushTarget) + Send + Sync>,
        tuning: Tuning,
    ) -> Arc<Pusher> {
        if !config.enabled {
            return Arc::new(Pusher { running: None });
        }
        let client = match guard::client(&config.allow_private) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client for push messages: push is off");
                return Arc::new(Pusher { running: None });
            }
        };
        let shared = Arc::new(Shared {
            client,
            vapid: VapidSigner::new(vapid, &config.contact),
            on_gone,
            in_flight: Arc::new(Semaphore::new(tuning.in_flight.max(1))),
            backoff: tuning.backoff,
            observe: tuning.observe,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(work(shared.clone(), rx));
        Arc::new(Pusher {
            running: Some(Running {
                tx,
                slots: Arc::new(Semaphore::new(tuning.queue.max(1))),
                accounts: Arc::new(Mutex::new(HashMap::new())),
                shared,
                last_full_warning: Mutex::new(None),
                allow_private: config.allow_private,
                services: config.services,
            }),
        })
    }

    /// Queues one message (`payload` is FxA's JSON push payload, e.g.
    /// {"version":1,"command":"fxaccounts:command_received","data":{...}}), TTL in s.
    /// Never blocks and never fails loudly: false when not queued (push disabled, target
    /// without endpoint/keys, keys malformed, or the queue full).
    pub fn send(&self, target: PushTarget, payload: &serde_json::Value, ttl_secs: u32) -> bool {
        let Some(run) = &self.running else {
            return false;
        };
        if target.endpoint.is_empty() || target.public_key.is_empty() || target.auth_key.is_empty()
        {
            return false;
        }
        let host = host_of(&target.endpoint);
        let checked = guard::parse_endpoint(&target.endpoint, &run.allow_private).and_then(|url| {
            if guard::service_allowed(&url, &run.services, &run.allow_private) {
                Ok(url)
            } else {
                Err("not one of the push services (accounts_push_services)".into())
            }
        });
        let url = match checked {
            Ok(url) => url,
            Err(reason) => {
                tracing::info!(uid = %target.uid, device = %target.device_id, host = %host,
                    reason = %reason, "push endpoint refused");
                run.shared.count(Outcome::Refused);
                return false;
            }
        };
        let Some(share) = AccountShare::take(&run.accounts, &target.uid) else {
            tracing::debug!(uid = %target.uid, "push dropped: the account's share is full");
            run.shared.count(Outcome::Dropped);
            return false;
        };
        let Ok(slot) = run.slots.clone().try_acquire_owned() else {
            run.shared.count(Outcome::Dropped);
            let mut last = run
                .last_full_warning
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(
                    "push queue full: messages dropped (the devices fetch their commands at \
                     their next sync)"
                );
            }
            return false;
        };
        let plain = serde_json::to_vec(payload).unwrap_or_default();
        let body = match webpush::encrypt(&plain, &target.public_key, &target.auth_key) {
            Ok(body) => body,
            Err(reason) => {
                tracing::info!(uid = %target.uid, device = %target.device_id, host = %host,
                    reason = %reason, "push message not sent");
                run.shared.count(Outcome::Refused);
                return false;
            }
        };
        let audience = url.origin().ascii_serialization();
        let job = Job {
            target,
            url,
            host,
            audience,
            body,
            ttl_secs,
            queued_at: Instant::now(),
            _slot: slot,
            _share: share,
        };
        run.tx.send(job).is_ok()
    }
}

/// The worker: takes each message when a slot of the in-flight bound is free.
async fn work(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(deliver(shared.clone(), job, permit));
    }
}

/// Sends one message, retrying as the module's documentation says.
async fn deliver(shared: Arc<Shared>, job: Job, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let attempts = shared.backoff.len() + 1;
    for attempt in 1..=attempts {
        let held = match permit.take() {
            Some(p) => p,
            None => match shared.in_flight.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let result = try_once(&shared, &job).await;
        drop(held);
        let (uid, device, host) = (&job.target.uid, &job.target.device_id, &job.host);
        match result {
            Attempt::Sent => {
                tracing::debug!(uid = %uid, device = %device, host = %host, "push sent");
                shared.count(Outcome::Sent);
                return;
            }
            Attempt::Gone(status) => {
                tracing::info!(uid = %uid, device = %device, host = %host, status,
                    "push subscription gone");
                shared.count(Outcome::Gone);
                let (shared, target) = (shared.clone(), job.target.clone());
                let _ = tokio::task::spawn_blocking(move || (shared.on_gone)(target)).await;
                return;
            }
            Attempt::Refused(reason) => {
                tracing::warn!(uid = %uid, device = %device, host = %host, reason = %reason,
                    "push refused");
                shared.count(Outcome::Refused);
                return;
            }
            Attempt::Rejected(status) => {
                tracing::warn!(uid = %uid, device = %device, host = %host, status,
                    "push rejected by the push service");
                shared.count(Outcome::Failed);
                return;
            }
            Attempt::Again(reason, asked) => {
                let wait = wait_before(&shared.backoff, attempt, asked);
                // A message with TTL 0 is for now or never: no second attempt.
                let expired = |wait: Duration| {
                    job.queued_at.elapsed() + wait >= Duration::from_secs(job.ttl_secs.into())
                };
                match wait {
                    Some(wait) if !expired(wait) => {
                        tracing::debug!(uid = %uid, device = %device, host = %host,
                            reason = %reason, attempt, "push to be tried again");
                        shared.count(Outcome::Retried);
                        tokio::time::sleep(wait).await;
                    }
                    _ => {
                        tracing::warn!(uid = %uid, device = %device, host = %host,
                            reason = %reason, attempt, "push given up");
                        shared.count(Outcome::Failed);
                        return;
                    }
                }
            }
        }
    }
}

/// The wait before the attempt after attempt `attempt` (1, 2, ...): the push service's
/// `Retry-After` (at most a minute), else the backoff; None after the last attempt.
fn wait_before(backoff: &[Duration], attempt: usize, asked: Option<Duration>) -> Option<Duration> {
    let planned = *backoff.get(attempt.checked_sub(1)?)?;
    Some(asked.map_or(planned, |a| a.min(MAX_RETRY_AFTER)))
}

/// The TTL left to a message, s.
fn ttl_left(job: &Job) -> u64 {
    u64::from(job.ttl_secs).saturating_sub(job.queued_at.elapsed().as_secs())
}

/// Why a request failed, without its URL (whose path is a capability).
fn reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut causes = vec![kind.to_string()];
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    causes.dedup();
    causes.join(": ")
}

/// One attempt: the request and its response's status (the body read up to a few KB).
async fn try_once(shared: &Shared, job: &Job) -> Attempt {
    let authorization = match shared.vapid.authorization(&job.audience) {
        Ok(a) => a,
        Err(e) => return Attempt::Refused(e),
    };
    let sent = shared
        .client
        .post(job.url.clone())
        .header(CONTENT_ENCODING, "aes128gcm")
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("TTL", ttl_left(job).to_string())
        .header("Urgency", "normal")
        .header(AUTHORIZATION, authorization)
        .body(job.body.clone())
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) if guard::is_refusal(&e) => {
            return Attempt::Refused(format!("{} resolves to an address not allowed", job.host));
        }
        Err(e) => return Attempt::Again(reason(&e), None),
    };
    let status = response.status().as_u16();
    let asked = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut read = 0;
    while read <= MAX_RESPONSE_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    match status {
        200..=299 => Attempt::Sent,
        404 | 410 => Attempt::Gone(status),
        429 | 500..=599 => Attempt::Again(format!("status {status}"), asked),
        _ => Attempt::Rejected(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_between_attempts() {
        let s = Duration::from_secs;
        assert_eq!(wait_before(&BACKOFF, 1, None), Some(s(2)));
        assert_eq!(wait_before(&BACKOFF, 2, None), Some(s(10)));
        assert_eq!(
            wait_before(&BACKOFF, 3, None),
            None,
            "three attempts in all"
        );
        assert_eq!(wait_before(&BACKOFF, 1, Some(s(30))), Some(s(30)));
        assert_eq!(
            wait_before(&BACKOFF, 2, Some(s(3600))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(wait_before(&BACKOFF, 3, Some(s(1))), None);
    }

    #[tokio::test]
    async fn a_failure_is_described_without_its_url() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let allow = ["127.0.0.1/32".parse().unwrap()];
        let client = guard::client(&allow).unwrap();
        let e = client
            .post(format!("http://{addr}/wpush/capability"))
            .send()
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("capability"),
            "reqwest's own text has it"
        );
        let why = reason(&e);
        assert!(why.starts_with("connect"), "{why}");
        assert!(!why.contains("capability"), "{why}");
    }
}
