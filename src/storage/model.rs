//! The protocol's data model: timestamps, names, BSOs and their validation rules.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::Serializer;
use serde_json::{Map, Value};

/// Largest accepted `sortindex` magnitude (nine digits, as the protocol says).
pub const MAX_SORTINDEX: i64 = 999_999_999;
/// Largest accepted `ttl` in seconds (nine digits).
pub const MAX_TTL: i64 = 999_999_999;
/// Largest number of ids accepted in an `ids=` list.
pub const MAX_IDS: usize = 100;
/// Expiry of a record that never expires.
pub const NEVER: i64 = i64::MAX;

/// A server timestamp in integer units of 10 ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time, truncated to 10 ms.
    pub fn now() -> Timestamp {
        Millis::now().timestamp()
    }
}

/// A wall-clock time in milliseconds since the Unix epoch. Record and batch expiry are
/// kept in these units (schema version 5 on), so a `ttl` counts to the millisecond from
/// the write's wall-clock time, however far the user's timestamps have run ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// The current wall-clock time.
    pub fn now() -> Millis {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Millis(d.as_millis() as i64)
    }

    /// The expiry `secs` seconds after this time (saturating, so never [`NEVER`]
    /// by accident for any accepted ttl).
    pub fn plus_secs(self, secs: i64) -> i64 {
        self.0.saturating_add(secs.saturating_mul(1000))
    }

    /// This time as a wire timestamp, truncated to 10 ms.
    pub fn timestamp(self) -> Timestamp {
        Timestamp(self.0.div_euclid(10))
    }
}

/// Formats as seconds with exactly two decimals, e.g. `1700000000.05`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Serializes as a JSON number with exactly two decimals (never `1.1` for `1.10`).
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// A decimal timestamp sent by a client (`newer`, `older`, `X-If-*-Since`), kept exactly.
///
/// Clients may send more than two decimals; comparisons against stored 10 ms units
/// must then be exact, so the value is kept as a floor plus "had a remainder".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTime {
    /// The value rounded down to 10 ms units.
    floor: i64,
    /// Whether digits beyond the second decimal were non-zero.
    fractional: bool,
}

impl ClientTime {
    /// Parses a non-negative decimal such as `1700000000`, `1700000000.1` or `17.123`.
    pub fn parse(s: &str) -> Option<ClientTime> {
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
            return None;
        }
        let secs: i64 = int.parse().ok()?;
        let mut cents = 0i64;
        for (i, b) in frac.bytes().take(2).enumerate() {
            cents += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        let fractional = frac.bytes().skip(2).any(|b| b != b'0');
        let floor = secs.checked_mul(100)?.checked_add(cents)?;
        Some(ClientTime { floor, fractional })
    }

    /// True when a stored time `t` is strictly after this client time.
    pub fn is_before(&self, t: Timestamp) -> bool {
        t.0 > self.floor
    }

    /// The largest stored time that is strictly before this client time, as a bound
    /// for `modified < bound` queries.
    pub fn exclusive_upper(&self) -> i64 {
        if self.fractional {
            self.floor + 1
        } else {
            self.floor
        }
    }

    /// The stored-units value below which (or at which) records are "not newer".
    pub fn floor(&self) -> i64 {
        self.floor
    }
}

/// Checks a collection name: `[a-zA-Z0-9._-]{1,32}`, but never `.` or `..`.
pub fn valid_collection(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && name != "."
        && name != ".."
}

/// Checks a BSO id: 1 to 64 printable ASCII characters.
pub fn valid_bso_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// A field a client may set on a BSO: absent, explicitly `null` (reset to default), or a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<T> {
    /// Not sent: keep the stored value (or the default for a new record).
    #[default]
    Absent,
    /// Sent as `null`: reset to the default.
    Null,
    /// Sent with a value.
    Set(T),
}

impl<T> Field<T> {
    /// Whether the client sent this field at all.
    pub fn is_sent(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

/// One BSO as written by a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BsoInput {
    /// The record id.
    pub id: String,
    /// The record's opaque payload.
    pub payload: Field<String>,
    /// The record's sort weight.
    pub sortindex: Field<i64>,
    /// Seconds to live from the write.
    pub ttl: Field<i64>,
}

impl BsoInput {
    /// Whether this write changes the record's data (and so its `modified` time);
    /// a write of `ttl` alone to an existing record does not.
    pub fn changes_data(&self) -> bool {
        self.payload.is_sent() || self.sortindex.is_sent()
    }

    /// The payload this write sets, if it sets one.
    pub fn payload_str(&self) -> Option<&str> {
        match &self.payload {
            Field::Set(p) => Some(p),
            _ => None,
        }
    }

    /// Bytes of payload this write stores (0 when the payload is not sent).
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            Field::Set(p) => p.len(),
            _ => 0,
        }
    }
}

/// Whether an (encrypted) record payload carries an all-zero IV: `"IV":` then any
/// whitespace, then `"AAAAAAAAAAAAAAAAAAAAAA=="`, the base64 of 16 zero bytes.
pub fn has_zero_iv(payload: &str) -> bool {
    const KEY: &str = "\"IV\":";
    const ZERO: &str = "\"AAAAAAAAAAAAAAAAAAAAAA==\"";
    payload.match_indices(KEY).any(|(at, _)| {
        payload[at + KEY.len()..]
            .trim_start_matches(|c: char| c.is_ascii_whitespace())
            .starts_with(ZERO)
    })
}

/// Why a BSO sent by a client is refused; the text goes into POST's `failed` map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsoError {
    /// The BSO is not a JSON object.
    #[error("invalid bso: not an object")]
    NotAnObject,
    /// `id` is missing, not a string, or not 1–64 printable ASCII characters.
    #[error("invalid id")]
    Id,
    /// The id in the body differs from the id in the URL.
    #[error("invalid id: does not match the url")]
    IdMismatch,
    /// `payload` is not a string.
    #[error("invalid payload")]
    Payload,
    /// `payload` is longer than the server's limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// `sortindex` is not an integer of at most nine digits.
    #[error("invalid sortindex")]
    Sortindex,
    /// `ttl` is not a non-negative integer of at most nine digits.
    #[error("invalid ttl")]
    Ttl,
    /// The object carries a key the protocol does not define.
    #[error("invalid bso: unknown field {0}")]
    UnknownField(String),
}

fn int_field(v: &Value, min: i64, max: i64) -> Option<i64> {
    let n = v.as_i64()?;
    (min..=max).contains(&n).then_some(n)
}

/// Validates one BSO JSON value. `path_id` is the id from the URL (PUT), if any;
/// `max_payload` is the largest payload accepted, in bytes.
pub fn parse_bso(
    value: &Value,
    path_id: Option<&str>,
    max_payload: usize,
) -> Result<BsoInput, BsoError> {
    let obj: &Map<String, Value> = value.as_object().ok_or(BsoError::NotAnObject)?;
    let id = match (obj.get("id"), path_id) {
        (Some(Value::String(id)), Some(p)) if id != p => return Err(BsoError::IdMismatch),
        (Some(Value::String(id)), _) => id.clone(),
        (Some(_), _) => return Err(BsoError::Id),
        (None, Some(p)) => p.to_string(),
        (None, None) => return Err(BsoError::Id),
    };
    if !valid_bso_id(&id) {
        return Err(BsoError::Id);
    }
    let mut bso = BsoInput {
        id,
        payload: Field::Absent,
        sortindex: Field::Absent,
        ttl: Field::Absent,
    };
    for (key, v) in obj {
        match key.as_str() {
            "id" | "modified" => {}
            "payload" => {
                bso.payload = match v {
                    Value::Null => Field::Null,
                    Value::String(s) if s.len() > max_payload => {
                        return Err(BsoError::PayloadTooLarge);
                    }
                    Value::String(s) => Field::Set(s.clone()),
                    _ => return Err(BsoError::Payload),
                }
            }
            "sortindex" => {
                bso.sortindex = match v {
                    Value::Null => Field::Null,
                    v => Field::Set(
                        int_field(v, -MAX_SORTINDEX, MAX_SORTINDEX).ok_or(BsoError::Sortindex)?,
                    ),
                }
            }
            "ttl" => {
                bso.ttl = match v {
                    Value::Null => Field::Null,
                    v => Field::Set(int_field(v, 0, MAX_TTL).ok_or(BsoError::Ttl)?),
                }
            }
            other => return Err(BsoError::UnknownField(other.chars().take(64).collect())),
        }
    }
    Ok(bso)
}

/// A stored BSO as returned to clients: never `ttl` or internal fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bso {
    /// The record id.
    pub id: String,
    /// When the record's data last changed.
    pub modified: Timestamp,
    /// The opaque payload.
    pub payload: String,
    /// The sort weight, when one was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_iv_is_found_with_any_whitespace_after_the_colon() {
        let zero = "AAAAAAAAAAAAAAAAAAAAAA==";
        for sep in ["", " ", "\t", "\n  "] {
            let p = format!("{{\"ciphertext\":\"x\",\"IV\":{sep}\"{zero}\",\"hmac\":\"y\"}}");
            assert!(super::has_zero_iv(&p), "{p}");
        }
        assert!(!super::has_zero_iv("{\"IV\":\"AAAAAAAAAAAAAAAAAAAAAQ==\"}"));
        assert!(!super::has_zero_iv("{\"iv\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}"));
        assert!(!super::has_zero_iv("{\"IV\":"));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_print_two_decimals() {
        assert_eq!(Timestamp(170000000010).to_string(), "1700000000.10");
        assert_eq!(Timestamp(5).to_string(), "0.05");
        let bso = Bso {
            id: "a".into(),
            modified: Timestamp(170000000010),
            payload: "p".into(),
            sortindex: None,
        };
        assert_eq!(
            serde_json::to_string(&bso).unwrap(),
            r#"{"id":"a","modified":1700000000.10,"payload":"p"}"#
        );
    }

    #[test]
    fn client_times_parse_exactly() {
        let t = ClientTime::parse("12.345").unwrap();
        assert!(t.is_before(Timestamp(1235)));
        assert!(!t.is_before(Timestamp(1234)));
        assert_eq!(t.exclusive_upper(), 1235);
        let t = ClientTime::parse("12.34").unwrap();
        assert!(!t.is_before(Timestamp(1234)));
        assert_eq!(t.exclusive_upper(), 1234);
        assert_eq!(ClientTime::parse("7").unwrap().floor(), 700);
        for bad in [
            "",
            "-1",
            "1e5",
            "abc",
            "1.",
            ".5",
            "1.2.3",
            " 1",
            "99999999999999999999",
        ] {
            assert!(ClientTime::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_collection("bookmarks"));
        assert!(valid_collection("a.b-c_D9"));
        assert!(!valid_collection("."));
        assert!(!valid_collection(".."));
        assert!(!valid_collection(&"x".repeat(33)));
        assert!(!valid_collection("a/b"));
        assert!(valid_bso_id("{abc} ~"));
        assert!(!valid_bso_id("a\nb"));
        assert!(!valid_bso_id(""));
        assert!(!valid_bso_id(&"x".repeat(65)));
    }

    #[test]
    fn bsos_are_validated() {
        let ok = parse_bso(
            &json!({"id": "a", "payload": "x", "ttl": 5, "modified": 3}),
            None,
            10,
        )
        .unwrap();
        assert_eq!(ok.ttl, Field::Set(5));
        assert!(ok.changes_data());
        let ttl_only = parse_bso(&json!({"ttl": 5}), Some("a"), 10).unwrap();
        assert!(!ttl_only.changes_data());
        let cases = [
            (json!("x"), BsoError::NotAnObject),
            (json!({"payload": "x"}), BsoError::Id),
            (json!({"id": 1}), BsoError::Id),
            (json!({"id": "a", "payload": 4}), BsoError::Payload),
            (
                json!({"id": "a", "payload": "x".repeat(11)}),
                BsoError::PayloadTooLarge,
            ),
            (json!({"id": "a", "sortindex": "1"}), BsoError::Sortindex),
            (json!({"id": "a", "sortindex": 2.5}), BsoError::Sortindex),
            (
                json!({"id": "a", "sortindex": 1_000_000_000}),
                BsoError::Sortindex,
            ),
            (json!({"id": "a", "ttl": -1}), BsoError::Ttl),
            (
                json!({"id": "a", "what": 1}),
                BsoError::UnknownField("what".into()),
            ),
        ];
        for (v, e) in cases {
            assert_eq!(parse_bso(&v, None, 10), Err(e), "{v}");
        }
        assert_eq!(
            parse_bso(&json!({"id": "b"}), Some("a"), 10),
            Err(BsoError::IdMismatch)
        );
    }
}
