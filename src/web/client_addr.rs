//! Who a request comes from: the one place the client address of a request is decided
//! (the accounts service's attempt limits and anything else keyed by client read the
//! [`ClientAddr`] the listener attaches to every request).
//!
//! The client is the TCP peer, unless the peer is a reverse proxy listed in
//! `trusted_proxies` *and* `trust_forwarded_headers` is on: then `X-Forwarded-For` is
//! walked from the right (each proxy appends the address it received the request
//! from), addresses of trusted proxies are skipped, and the first one that is not a
//! trusted proxy is the client. Everything left of it was written by the client itself
//! and is never read, so it can never change the result: the walk is over raw bytes
//! (non-ASCII or garbage further left does not matter), and only trusted hops count
//! toward the bound of 32. When the entry where the walk stops is not an address, the
//! client is at that position but unknown: the nearest trusted hop to its right (the
//! proxy that received the request from it; the peer when there is none) stands for it.
//! A request without the header, or with more than 32 trusted hops, gives the peer.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address of a request, as decided by [`ClientAddrPolicy::resolve`]; put
/// in every request's extensions by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Most trusted hops walked in `X-Forwarded-For`; a longer chain of trusted proxies
/// is not believed (the peer is the client). Real chains are a few hops.
const MAX_HOPS: usize = 32;

/// How the client address is derived from the TCP peer and the request's headers.
#[derive(Debug, Clone, Default)]
pub struct ClientAddrPolicy {
    /// `trust_forwarded_headers`: whether `X-Forwarded-For` may be read at all.
    forwarded_for: bool,
    /// `trusted_proxies`: the peers (and hops) whose `X-Forwarded-For` is believed.
    proxies: Arc<[IpNet]>,
}

impl ClientAddrPolicy {
    /// A policy believing `X-Forwarded-For` from `proxies` when `forwarded_for` is on.
    pub fn new(forwarded_for: bool, proxies: Arc<[IpNet]>) -> ClientAddrPolicy {
        ClientAddrPolicy {
            forwarded_for,
            proxies,
        }
    }

    /// Whether `X-Forwarded-For` is ever read (on, and at least one proxy listed).
    pub fn reads_forwarded_for(&self) -> bool {
        self.forwarded_for && !self.proxies.is_empty()
    }

    /// Whether `ip` is a trusted reverse proxy.
    pub fn is_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that came from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.forwarded_for || !self.is_proxy(peer) {
            return peer;
        }
        // Several X-Forwarded-For fields are one list, in order (RFC 9110 5.3): walk
        // the last field first, each from its end.
        let fields: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        // The nearest trusted hop right of the entry being read.
        let mut nearest = peer;
        let mut hops = 0;
        for field in fields.iter().rev() {
            for entry in field.rsplit(|&b| b == b',') {
                let Some(ip) = parse_entry(entry) else {
                    // The client's position, unreadable: the proxy that received it.
                    return nearest;
                };
                if !self.is_proxy(ip) {
                    return ip;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return peer;
                }
                nearest = ip;
            }
        }
        // Every hop is a trusted proxy: the request began on one of them.
        nearest
    }
}

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a port
/// (`192.0.2.1:5000`, `[2001:db8::1]:5000`, `[2001:db8::1]`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    if !entry.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|v6| IpAddr::V6(v6).to_canonical())
}

/// The unit a client is counted by: its IPv4 address, or its IPv6 /64 (one host
/// usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn policy(on: bool, proxies: &[&str]) -> ClientAddrPolicy {
        let net = |p: &&str| {
            p.parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(p.parse::<IpAddr>().unwrap()))
        };
        ClientAddrPolicy::new(on, proxies.iter().map(net).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_read_only_from_a_trusted_proxy_with_the_setting_on() {
        let h = xff(&["198.51.100.7"]);
        let proxy = ip("10.0.0.1");
        // From a peer that is not a proxy: the peer, whatever the header says.
        let p = policy(true, &["10.0.0.0/8"]);
        assert_eq!(p.resolve(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        assert_eq!(p.resolve(proxy, &h), ip("198.51.100.7"));
        // Setting off, or no proxy listed: never read.
        assert_eq!(policy(false, &["10.0.0.0/8"]).resolve(proxy, &h), proxy);
        assert_eq!(policy(true, &[]).resolve(proxy, &h), proxy);
        assert!(!policy(true, &[]).reads_forwarded_for());
        assert!(p.reads_forwarded_for());
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = policy(true, &["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        // What the client wrote (left) is not believed.
        let h = xff(&["203.0.113.66, 198.51.100.7"]);
        assert_eq!(p.resolve(peer, &h), ip("198.51.100.7"));
        // Trusted hops are skipped, across several fields too.
        let h = xff(&["203.0.113.66, 198.51.100.7", "10.1.1.1 , 10.2.2.2"]);
        assert_eq!(p.resolve(peer, &h), ip("198.51.100.7"));
        // All hops trusted: the leftmost.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(p.resolve(peer, &h), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(p.resolve(peer, &HeaderMap::new()), peer);
        // Ports and brackets are understood; mapped IPv4 is IPv4.
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(p.resolve(peer, &h), ip("2001:db8::1"));
        let h = xff(&["198.51.100.7:5000"]);
        assert_eq!(p.resolve(peer, &h), ip("198.51.100.7"));
        let h = xff(&["::ffff:198.51.100.7"]);
        assert_eq!(p.resolve(peer, &h), ip("198.51.100.7"));
        assert_eq!(
            p.resolve(ip("::ffff:127.0.0.1"), &xff(&["192.0.2.1"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn a_malformed_header_gives_the_peer() {
        let p = policy(true, &["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        for bad in [
            "198.51.100.7, garbage",
            "unknown",
            "",
            "1.2.3.4.5",
            "198.51.100.7,",
        ] {
            assert_eq!(p.resolve(peer, &xff(&[bad])), peer, "{bad:?}");
        }
        // A bad entry left of the client does not matter: it is never reached.
        assert_eq!(
            p.resolve(peer, &xff(&["garbage, 198.51.100.7"])),
            ip("198.51.100.7")
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.\xff").unwrap(),
        );
        assert_eq!(p.resolve(peer, &h), peer);
    }

    #[test]
    fn nothing_the_client_writes_left_of_its_address_changes_the_result() {
        let p = policy(true, &["127.0.0.2", "10.0.0.0/8"]);
        let peer = ip("127.0.0.2");
        let client = ip("203.0.113.7");
        // Many client-written entries (trusted-looking ones too): only trusted hops
        // walked count toward the bound, and the walk stops at the client.
        let many = format!("{}, 203.0.113.7", vec!["198.51.100.1"; 100].join(","));
        assert_eq!(p.resolve(peer, &xff(&[&many])), client);
        let trusted_left = format!("{}, 203.0.113.7", vec!["10.0.0.1"; 100].join(","));
        assert_eq!(p.resolve(peer, &xff(&[&trusted_left])), client);
        // Non-ASCII or garbage further left, in the same field or an earlier one.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xe9, 203.0.113.7").unwrap(),
        );
        assert_eq!(p.resolve(peer, &h), client);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe garbage").unwrap(),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        assert_eq!(p.resolve(peer, &h), client);
        // Through two proxies: the client is still the rightmost untrusted entry.
        let h = xff(&["junk, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(p.resolve(peer, &h), client);
    }

    #[test]
    fn a_malformed_client_entry_is_stood_for_by_the_proxy_that_received_it() {
        let p = policy(true, &["127.0.0.2", "10.0.0.0/8"]);
        let peer = ip("127.0.0.2");
        // The entry where the walk stops is not an address: the nearest trusted hop
        // right of it (the proxy it reached) stands for the client, else the peer.
        assert_eq!(p.resolve(peer, &xff(&["203.0.113.7, junk"])), peer);
        assert_eq!(
            p.resolve(peer, &xff(&["203.0.113.7, junk, 10.1.1.1"])),
            ip("10.1.1.1")
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7, 1.2.3.4\xe9, 10.2.2.2, 10.1.1.1").unwrap(),
        );
        assert_eq!(p.resolve(peer, &h), ip("10.2.2.2"));
        // More trusted hops than the bound: not believed.
        let long = vec!["10.0.0.1"; MAX_HOPS + 1].join(",");
        assert_eq!(p.resolve(peer, &xff(&[&long])), peer);
        let ok = format!("203.0.113.7,{}", vec!["10.0.0.1"; MAX_HOPS].join(","));
        assert_eq!(p.resolve(peer, &xff(&[&ok])), ip("203.0.113.7"));
    }

    #[test]
    fn an_ipv6_client_is_keyed_by_its_slash_64() {
        assert_eq!(client_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
