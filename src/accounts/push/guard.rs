//! The guard against server-side request forgery through a device's `pushCallback`:
//! which URLs a push may go to, which addresses it may connect to, and the HTTP client
//! that enforces both.
//!
//! A push endpoint is an `https` URL without credentials (any port: the connection
//! always starts with a TLS handshake, so a service that is not HTTPS sees only a
//! ClientHello). `http` is accepted only for a host that is a literal address inside
//! `allow_private` (a local receiver in tests). Every address a push connects to must
//! be public ([`is_public`]) unless it is inside `allow_private`: a literal address is
//! checked before the request, a host name in the client's resolver
//! ([`GuardedResolver`]), so the address checked is the address connected to (no DNS
//! rebinding window between a check and the connection). A name with any refused
//! address is refused as a whole. The client uses no proxy, follows no redirect and
//! bounds the time of a connection and of a whole request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long a connection (resolution, TCP, TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (connection, request, response) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// IPv4 ranges that are not public (IANA's special-purpose registry: what is not
/// globally reachable, plus multicast and the reserved 240/4 with the broadcast).
const REFUSED_V4: [Ipv4Net; 15] = [
    v4(0, 0, 0, 0, 8),       // "this network", the unspecified address
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // shared address space (CGNAT)
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local (cloud metadata services: 169.254.169.254)
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments
    v4(192, 0, 2, 0, 24),    // documentation (TEST-NET-1)
    v4(192, 88, 99, 0, 24),  // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // documentation (TEST-NET-2)
    v4(203, 0, 113, 0, 24),  // documentation (TEST-NET-3)
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, and the broadcast 255.255.255.255
];

/// IPv6 global unicast: outside it (and the forms below that embed an IPv4 address)
/// nothing is public: the unspecified and loopback addresses, IPv4-compatible
/// addresses, discard-only 100::/64, the local-use NAT64 64:ff9b:1::/48, unique local
/// fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, SRv6 SIDs
/// 5f00::/16, ...
const GLOBAL_V6: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);
/// Not public although inside global unicast.
const REFUSED_V6: [Ipv6Net; 3] = [
    // IETF protocol assignments (Teredo 2001::/32, which tunnels to any IPv4 address,
    // benchmarking 2001:2::/48, ORCHID, ...).
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
];
/// NAT64's well-known prefix: the IPv4 address in the last 32 bits decides.
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// 6to4: the IPv4 address in bits 16–47 decides.
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// Whether an address is public: globally reachable unicast, not an IPv6 form of a
/// refused IPv4 address (IPv4-mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => v4_public(a),
        IpAddr::V6(a) => v6_public(a),
    }
}

fn v4_public(a: Ipv4Addr) -> bool {
    !REFUSED_V4.iter().any(|n| n.contains(&a))
}

fn v6_public(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_public(v4);
    }
    let bits = a.to_bits();
    if NAT64.contains(&a) {
        return v4_public(Ipv4Addr::from_bits(bits as u32));
    }
    if SIX_TO_FOUR.contains(&a) {
        return v4_public(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    GLOBAL_V6.contains(&a) && !REFUSED_V6.iter().any(|n| n.contains(&a))
}

/// Whether `ip` is inside one of the `allow_private` networks (an IPv4-mapped address
/// also by its IPv4 form).
fn allowed_private(ip: IpAddr, allow_private: &[IpNet]) -> bool {
    let canonical = ip.to_canonical();
    allow_private
        .iter()
        .any(|n| n.contains(&ip) || n.contains(&canonical))
}

/// Whether a push may connect to `ip`.
pub fn address_allowed(ip: IpAddr, allow_private: &[IpNet]) -> bool {
    is_public(ip) || allowed_private(ip, allow_private)
}

/// Registration-time check of a pushCallback URL (called by the device routes): https
/// with a host; http only when the host is a literal address inside `allow_private`
/// (a local receiver in tests). Err(reason) otherwise.
///
/// A literal address must be public or inside `allow_private`; a host name is checked
/// when a push resolves it. No credentials (userinfo) in the URL; any port.
pub fn check_endpoint(url: &str, allow_private: &[IpNet]) -> Result<(), String> {
    parse_endpoint(url, allow_private).map(|_| ())
}

/// [`check_endpoint`], returning the parsed URL.
pub(crate) fn parse_endpoint(url: &str, allow_private: &[IpNet]) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|_| "not a URL".to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL".into());
    }
    let literal = literal_host(&parsed)?;
    match parsed.scheme() {
        "https" => {}
        "http" if literal.is_some_and(|ip| allowed_private(ip, allow_private)) => {}
        "http" => return Err("http is only for an allowed private address".into()),
        _ => return Err("not an https URL".into()),
    }
    if let Some(ip) = literal
        && !address_allowed(ip, allow_private)
    {
        return Err("not a public address".into());
    }
    Ok(parsed)
}

/// The URL's host when it is an address (the URL parser spells every IPv4 form as a
/// dotted quad and IPv6 in brackets); None for a name; Err when there is no host.
fn literal_host(url: &Url) -> Result<Option<IpAddr>, String> {
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(|a| Some(IpAddr::V6(a)))
            .map_err(|_| "no host".into());
    }
    Ok(host.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
}

/// Whether `url`'s host is one of the push `services` (a name there, or a subdomain of
/// one; `*`: any), or a literal address inside `allow_private`.
pub fn service_allowed(url: &Url, services: &[String], allow_private: &[IpNet]) -> bool {
    if let Ok(Some(ip)) = literal_host(url)
        && allowed_private(ip, allow_private)
    {
        return true;
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    services.iter().any(|s| {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        s == "*"
            || (!s.is_empty()
                && (host == s || host.strip_suffix(&s).is_some_and(|p| p.ends_with('.'))))
    })
}

/// A host name resolved to an address a push may not connect to.
#[derive(Debug)]
pub(crate) struct Refused {
    host: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to an address that is not public", self.host)
    }
}

impl std::error::Error for Refused {}

/// Whether a client error came from the guard (the resolver refused the host).
pub(crate) fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<Refused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The client's resolver: the system's, whose answer is refused as a whole when any
/// of its addresses is not allowed.
pub(crate) struct GuardedResolver {
    allow_private: Arc<[IpNet]>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| !address_allowed(a.ip(), &allow)) {
                return Err(Box::new(Refused { host }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client of pushes: guarded resolver, no proxy, no redirect, bounded times.
pub(crate) fn client(allow_private: &[IpNet]) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: allow_private.into(),
        }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("syncstore/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_table() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8", // IPv4-compatible: deprecated, never public
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "5f00::1",
        ];
        for a in refused {
            assert!(!is_public(ip(a)), "{a} must be refused");
            assert!(!address_allowed(ip(a), &[]), "{a} must be refused");
        }
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "34.117.59.81",
            "2a00:1450:4001:80b::200e",
            "2606:4700::6810:85e5",
            "2620:fe::fe",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in public {
            assert!(is_public(ip(a)), "{a} must be public");
        }
        let allow: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert!(address_allowed(ip("127.0.0.1"), &allow));
        assert!(address_allowed(ip("::ffff:127.0.0.1"), &allow));
        assert!(address_allowed(ip("fd00::5"), &allow));
        assert!(address_allowed(ip("8.8.8.8"), &allow));
        assert!(!address_allowed(ip("127.0.0.2"), &allow));
        assert!(!address_allowed(ip("::1"), &allow));
        assert!(!address_allowed(ip("169.254.169.254"), &allow));
    }

    #[test]
    fn endpoints() {
        let allow: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let ok = [
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAA",
            "https://push.example:8443/x",
            "https://8.8.8.8/x",
            "https://[2a00:1450:4001:80b::200e]/x",
        ];
        for u in ok {
            assert_eq!(check_endpoint(u, &[]), Ok(()), "{u}");
            assert_eq!(check_endpoint(u, &allow), Ok(()), "{u}");
        }
        assert_eq!(check_endpoint("http://127.0.0.1:8000/x", &allow), Ok(()));
        assert_eq!(check_endpoint("https://127.0.0.1:8000/x", &allow), Ok(()));
        let refused_without_allow = [
            "http://127.0.0.1:8000/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://0x7f.1/x", // 127.0.0.1 spelled otherwise
            "https://2130706433/x",
            "https://10.0.0.1/x",
        ];
        for u in refused_without_allow {
            assert!(check_endpoint(u, &[]).is_err(), "{u}");
        }
        let refused = [
            "http://push.example/x",
            "http://8.8.8.8/x",
            "http://localhost:8000/x",
            "https://user:pass@push.example/x",
            "https://user@push.example/x",
            "https://:pass@push.example/x",
            "http://user@127.0.0.1:8000/x",
            "ftp://push.example/x",
            "file:///etc/passwd",
            "data:text/plain,x",
            "https://",
            "push.example/x",
            "",
            "not a url",
            "https://[::1/x",
            "http://127.0.0.2:8000/x",
        ];
        for u in refused {
            assert!(check_endpoint(u, &allow).is_err(), "{u}");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_a_name_of_a_private_address() {
        let resolver = GuardedResolver {
            allow_private: Arc::from(Vec::new()),
        };
        let name: Name = "localhost".parse().unwrap();
        let Err(e) = resolver.resolve(name).await else {
            panic!("localhost resolved");
        };
        assert!(is_refusal(e.as_ref()));
    }
}
