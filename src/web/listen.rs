//! Serving a router on a TCP listener, with limits against clients that hold
//! connections without using them: a cap on connections in all and per client
//! address, a first-byte timeout, hyper's header-read timeout, HTTP/2 keep-alive pings,
//! and an idle timeout for both protocols. Every listener of the process (public,
//! metrics, …) is served by [`serve_router`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::client_addr::{ClientAddr, ClientAddrPolicy, client_key};
use crate::config::{ConfigError, Settings};

/// Limits on client connections, against slow, idle or greedy clients.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64), so that
    /// one client cannot take every slot; 0: no cap.
    pub max_connections_per_address: usize,
    /// Reverse proxies, exempt from the per-address cap: every client behind one
    /// shares its address. With `trust_forwarded_for`, their X-Forwarded-For names
    /// the client (see [`super::client_addr`]).
    pub trusted_proxies: Arc<[IpNet]>,
    /// `trust_forwarded_headers`: X-Forwarded-For from a trusted proxy is believed.
    pub trust_forwarded_for: bool,
    /// Time a new connection has to send its first byte.
    pub first_byte_timeout: Duration,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// An HTTP/2 connection silent this long is pinged; no answer as long again closes it.
    pub http2_keep_alive: Duration,
}

impl ConnectionLimits {
    /// The limits the settings ask for.
    pub fn from_settings(s: &Settings) -> Result<ConnectionLimits, ConfigError> {
        Ok(ConnectionLimits {
            max_connections: s.max_connections,
            max_connections_per_address: s.max_connections_per_address,
            trusted_proxies: s.trusted_proxy_nets()?.into(),
            trust_forwarded_for: s.trust_forwarded_headers,
            first_byte_timeout: Duration::from_secs(s.first_byte_timeout_secs),
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(s.body_read_timeout_secs),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            http2_keep_alive: Duration::from_secs(s.http2_keep_alive_secs),
        })
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then stops
/// accepting and waits for the connections in flight to finish (the caller bounds
/// that wait).
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioTimer;

    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    // A semaphore's permits are counted in u32 when taken many at once (below).
    let total = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(total));
    let clients = ClientAddrPolicy::new(limits.trust_forwarded_for, limits.trusted_proxies.clone());
    let per_address = Arc::new(PerAddress {
        max: limits.max_connections_per_address,
        clients: clients.clone(),
        open: Mutex::new(HashMap::new()),
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keep_alive))
        .keep_alive_timeout(limits.http2_keep_alive);
    let builder = Arc::new(builder);
    let timeouts = Timeouts {
        first_byte: limits.first_byte_timeout,
        idle: limits.idle_timeout,
        // A request that raced the idle close gets as long as a client has to send
        // its headers.
        closing: limits.header_read_timeout,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = per_address.admit(peer.ip()) else {
            // Closed at once (dropped here); counted, not logged: a flood of these
            // must not become a flood of log lines.
            dropped("per_address");
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            (app.clone(), clients.clone()),
            builder.clone(),
            timeouts,
            stop_rx.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends: all slots back means all ended.
    let _ = slots.acquire_many(total as u32).await;
    Ok(())
}

/// The timeouts one connection task applies.
#[derive(Clone, Copy)]
struct Timeouts {
    first_byte: Duration,
    idle: Duration,
    closing: Duration,
}

/// Counts a connection the server closed, by why.
fn dropped(reason: &'static str) {
    metrics::counter!("syncstore_connections_dropped_total", "reason" => reason).increment(1);
}

/// Serves one connection: waits for its first byte, then hands it to hyper, and
/// closes it once it has had no request in flight for the idle timeout, or when the
/// server stops. Every request gets the peer and its client address (decided by
/// `clients`) in its extensions. `held` (its slots) is released when it ends.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    (app, clients): (Router, ClientAddrPolicy),
    builder: Arc<Builder<TokioExecutor>>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    held: impl Send,
) {
    use axum::extract::Request;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tower::ServiceExt;

    let _held = held;
    let mut first = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(timeouts.first_byte, stream.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return, // closed by the client, or failed
            Err(_) => {
                dropped("first_byte");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    }
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let request = tracked.begin();
        // The peer, and the client address decided once for every layer (the
        // accounts service's attempt limits).
        let client = ClientAddr(clients.resolve(peer.ip(), req.headers()));
        let ext = req.extensions_mut();
        ext.insert(axum::extract::ConnectInfo(peer));
        ext.insert(client);
        let response = app.clone().oneshot(req);
        async move {
            let res = response.await;
            drop(request);
            res
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = tokio::select! {
        _ = conn.as_mut() => return,
        () = activity.idle(timeouts.idle) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    conn.as_mut().graceful_shutdown();
    if idle {
        dropped("idle");
        let _ = tokio::time::timeout(timeouts.closing, conn).await;
    } else {
        // Server shutdown: the caller bounds the whole wait.
        let _ = conn.await;
    }
}

/// Requests in flight on one connection, and when the last one began or ended.
struct Activity {
    /// The origin of `last_ms`.
    started: Instant,
    /// Requests whose response is not produced yet.
    in_flight: AtomicUsize,
    /// When a request last began or ended, ms after `started`.
    last_ms: AtomicU64,
}

/// One request in flight on a connection; ends when dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::SeqCst);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// Completes once the connection has had no request in flight for `timeout`
    /// (counted from the first byte, or from the end of the last request).
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::SeqCst) > 0 {
                timeout
            } else {
                let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
                let idle_for = self.started.elapsed().saturating_sub(last);
                if idle_for >= timeout {
                    return;
                }
                timeout - idle_for
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Open connections by client address, against one address taking every slot.
struct PerAddress {
    /// The cap; 0: none.
    max: usize,
    /// Exempt addresses (reverse proxies).
    clients: ClientAddrPolicy,
    /// Open connections by client key (see [`client_key`]); absent means none.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection counted against its client address; uncounted when dropped.
struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl PerAddress {
    /// Counts a new connection from `ip`, or `None` when that address is at its cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        if self.max == 0 || self.clients.is_proxy(ip) {
            return Some(AddressSlot(None));
        }
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((owner, key)) = &self.0 {
            let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_address(max: usize, trusted: &[&str]) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max,
            clients: ClientAddrPolicy::new(
                false,
                trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ),
            open: Mutex::new(HashMap::new()),
        })
    }

    #[test]
    fn one_address_is_capped_and_freed_slots_come_back() {
        let p = per_address(2, &["10.0.0.0/8"]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = p.admit(ip).unwrap();
        let _b = p.admit(ip).unwrap();
        assert!(p.admit(ip).is_none());
        // The same address written as IPv4-mapped IPv6 is the same client.
        assert!(p.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        assert!(p.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(p.admit(ip).is_some());
        // A trusted proxy is never capped.
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| p.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let p = per_address(1, &[]);
        let _a = p.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(p.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(p.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
    }
}
