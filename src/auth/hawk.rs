//! Hawk request signatures (header scheme `Hawk`, SHA-256), as hawkauthlib makes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The parameters of an `Authorization: Hawk …` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HawkHeader {
    /// The token id.
    pub id: String,
    /// The client's Unix time, seconds.
    pub ts: i64,
    /// The raw `ts` text, signed as sent.
    pub ts_raw: String,
    /// A client-chosen unique string.
    pub nonce: String,
    /// The base64 MAC.
    pub mac: String,
    /// The optional base64 payload hash.
    pub hash: Option<String>,
    /// Optional application data.
    pub ext: Option<String>,
}

/// Parses `Hawk id="…", ts="…", nonce="…", mac="…"[, hash="…"][, ext="…"]`.
/// Returns `None` for any other scheme or a malformed header.
pub fn parse_header(value: &str) -> Option<HawkHeader> {
    let rest = value.trim_start();
    let (scheme, mut rest) = rest.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("hawk") {
        return None;
    }
    let mut h = HawkHeader::default();
    let (mut id, mut ts, mut nonce, mut mac) = (None, None, None, None);
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        rest = remaining;
        let slot = match key {
            "id" => &mut id,
            "ts" => &mut ts,
            "nonce" => &mut nonce,
            "mac" => &mut mac,
            "hash" => &mut h.hash,
            "ext" => &mut h.ext,
            _ => continue,
        };
        if slot.is_some() {
            return None; // a repeated parameter is ambiguous
        }
        *slot = Some(val);
    }
    h.id = id?;
    h.ts_raw = ts?;
    h.ts = h.ts_raw.parse().ok().filter(|t: &i64| *t >= 0)?;
    h.nonce = nonce?;
    h.mac = mac?;
    if h.id.is_empty() || h.nonce.is_empty() || h.mac.is_empty() {
        return None;
    }
    Some(h)
}

/// What the client signed besides the header parameters.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// Path and query exactly as sent.
    pub path_and_query: &'a str,
    /// Host as the client saw it (lower-cased when signing).
    pub host: &'a str,
    /// Port as the client saw it.
    pub port: u16,
}

/// The MAC of a request: base64(HMAC-SHA256(key, normalized string)).
pub fn compute_mac(key: &[u8], h: &HawkHeader, req: &SignedRequest<'_>) -> String {
    let normalized = format!(
        "hawk.1.header\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        h.ts_raw,
        h.nonce,
        req.method.to_ascii_uppercase(),
        req.path_and_query,
        req.host.to_ascii_lowercase(),
        req.port,
        h.hash.as_deref().unwrap_or(""),
        h.ext.as_deref().unwrap_or(""),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(normalized.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of two MAC strings.
pub fn macs_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The Hawk payload hash of a body: base64(SHA-256("hawk.1.payload\n{type}\n{body}\n")),
/// where `mime` is the media type without parameters, lower-cased.
pub fn payload_hash(mime: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"hawk.1.payload\n");
    h.update(mime.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.update(b"\n");
    STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_parameters_with_escapes() {
        let h = parse_header(
            r#"Hawk id="abc=", ts="1353832234", nonce="j4h\"3", mac="m/a+c=", ext="a, b""#,
        )
        .unwrap();
        assert_eq!(h.id, "abc=");
        assert_eq!(h.ts, 1353832234);
        assert_eq!(h.nonce, "j4h\"3");
        assert_eq!(h.mac, "m/a+c=");
        assert_eq!(h.ext.as_deref(), Some("a, b"));
        assert_eq!(h.hash, None);
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "Bearer abc",
            "Hawk",
            r#"Hawk id="a", ts="1", nonce="n""#,
            r#"Hawk id="a", ts="x", nonce="n", mac="m""#,
            r#"Hawk id="a", ts="-1", nonce="n", mac="m""#,
            r#"Hawk id="a", ts="1", nonce="n", mac="m", id="b""#,
            r#"Hawk id="a, ts="1", nonce="n", mac="m"#,
        ] {
            assert!(parse_header(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn mac_matches_the_hawk_reference_vector() {
        // The example of the Hawk specification (README of hueniverse/hawk, sha256).
        let h = HawkHeader {
            id: "dh37fgj492je".into(),
            ts: 1353832234,
            ts_raw: "1353832234".into(),
            nonce: "j4h3g2".into(),
            mac: String::new(),
            hash: None,
            ext: Some("some-app-ext-data".into()),
        };
        let req = SignedRequest {
            method: "GET",
            path_and_query: "/resource/1?b=1&a=2",
            host: "example.com",
            port: 8000,
        };
        assert_eq!(
            compute_mac(b"werxhqb98rpaxn39848xrunpaw3489ruxnpa98w4rxn", &h, &req),
            "6R4rV5iE+NPoym+WwjeHzjAGXUtLNIxmo1vpMofpLAE="
        );
    }
}
