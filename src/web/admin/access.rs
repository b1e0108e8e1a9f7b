//! Who may use the console: the admin token (read from its file, or generated there),
//! the attempt limits of the login, the sessions it opens, and the checks every change
//! passes (CSRF token, same origin).
//!
//! * The token is kept only as its SHA-256; a candidate is hashed and the two digests
//!   compared in constant time, so neither the comparison nor the candidate's length
//!   tells anything about the token.
//! * A login attempt is counted *before* the comparison (per client address and in all),
//!   and given back only when it succeeds: 100 attempts sent together get exactly as
//!   many comparisons as the limit allows, the rest 429. Clients from the operator's
//!   networks (`admin_operator_networks`, loopback by default) count in a pool of their
//!   own, so a flood from elsewhere cannot keep the operator from signing in over SSH.
//! * The session cookie is looked for in every value the request sends (at most
//!   [`MAX_COOKIE_VALUES`]): a page on another port of the same host can set cookies of
//!   the same name that the browser sends first.
//! * A session is a random 32-byte id in an `HttpOnly; SameSite=Strict` cookie; only its
//!   SHA-256 is kept, with the client address it was opened from, its CSRF token and its
//!   times; at most [`MAX_SESSIONS`] exist (the oldest goes first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConsoleError;
use crate::config::Settings;
use crate::web::client_addr::client_key;

/// Failed logins allowed from one client address (IPv6: one /64) per window.
pub const LOGINS_PER_ADDRESS: u32 = 5;
/// Failed logins allowed from all addresses together per window.
pub const LOGINS_IN_ALL: u32 = 30;
/// The window of the login limits.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Most sessions open at once; a new one evicts the oldest.
pub const MAX_SESSIONS: usize = 32;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, used or not.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "syncstore_admin";
/// Shortest admin token accepted from a file the operator wrote.
const MIN_TOKEN_CHARS: usize = 16;

/// The admin token, as its SHA-256.
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Whether `candidate` is the token (constant time in the token, no early exit).
    pub fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.trim().as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }

    /// A token from its text (tests and the file reader).
    fn from_text(text: &str) -> AdminToken {
        AdminToken {
            digest: Sha256::digest(text.as_bytes()).into(),
        }
    }
}

/// Where the admin token lives: `admin_token_file`, else `<data_dir>/admin-token`.
pub fn token_path(settings: &Settings) -> PathBuf {
    match settings.admin_token_file.as_str() {
        "" => settings.data_dir.join("admin-token"),
        file => PathBuf::from(file),
    }
}

/// Reads the admin token from `path`, or generates one there (32 random bytes,
/// base64url, mode 0600) when the file is missing or empty; returns it and whether it
/// was generated. A file that exists but cannot be read, or holds fewer than 16
/// characters, is an error and left as it is.
pub fn load_or_create_token(path: &Path) -> Result<(AdminToken, bool), ConsoleError> {
    let fail = |e: std::io::Error| ConsoleError::Token(format!("{}: {e}", path.display()));
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e)),
    };
    if let Some(text) = &existing {
        let token = text.trim();
        if !token.is_empty() {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(ConsoleError::Token(format!(
                    "{}: the admin token must have at least {MIN_TOKEN_CHARS} characters",
                    path.display()
                )));
            }
            warn_if_shared(path);
            return Ok((AdminToken::from_text(token), false));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private::create_dir(dir).map_err(fail)?;
    }
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    match existing {
        Some(_) => options.truncate(true),
        None => options.create_new(true),
    };
    let mut f = options.open(path).map_err(fail)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(fail)?;
    Ok((AdminToken::from_text(&token), true))
}

/// Warns when the token file can be read by others than its owner.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the admin token file is readable by others than its owner: chmod 600 it"
        );
    }
}

/// Login attempts counted per client address and in all, in fixed windows, in two
/// pools: clients from the operator's networks (`admin_operator_networks`, loopback by
/// default: an SSH tunnel) and everyone else. Each pool has its own cap in all, so a
/// flood from elsewhere never closes the operator's way in.
pub struct LoginLimiter {
    per_address: u32,
    in_all: u32,
    window: Duration,
    start: Instant,
    /// The networks whose clients count in the operator's pool.
    operator_nets: Vec<IpNet>,
    /// The pools: [`OPERATOR`] and [`OTHERS`].
    pools: [Mutex<LoginCounts>; 2],
}

/// The pool of clients from the operator's networks.
const OPERATOR: usize = 0;
/// The pool of every other client.
const OTHERS: usize = 1;

/// The counts of one pool in the current window. At most `in_all` addresses get an
/// entry in a window (an attempt refused by the cap in all creates none), so the map is
/// bounded.
#[derive(Default)]
struct LoginCounts {
    epoch: u64,
    in_all: u32,
    by_address: HashMap<IpAddr, u32>,
}

/// One counted login attempt; [`Attempt::succeeded`] gives its count back.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    pool: usize,
    epoch: u64,
    key: IpAddr,
}

impl LoginLimiter {
    /// Limits of `per_address` and `in_all` attempts per `window` in each pool; clients
    /// in `operator_nets` count in a pool of their own.
    pub fn new(
        per_address: u32,
        in_all: u32,
        window: Duration,
        operator_nets: Vec<IpNet>,
    ) -> LoginLimiter {
        LoginLimiter {
            per_address,
            in_all,
            window,
            start: Instant::now(),
            operator_nets,
            pools: Default::default(),
        }
    }

    /// Counts an attempt from `ip`, or refuses it with the time until the window ends.
    pub fn reserve(&self, ip: IpAddr) -> Result<Attempt<'_>, Duration> {
        let elapsed = self.start.elapsed();
        let window_ms = self.window.as_millis().max(1) as u64;
        let now_ms = elapsed.as_millis() as u64;
        let epoch = now_ms / window_ms;
        let retry = Duration::from_millis((epoch + 1) * window_ms - now_ms);
        let ip = ip.to_canonical();
        let pool = if self.operator_nets.iter().any(|n| n.contains(&ip)) {
            OPERATOR
        } else {
            OTHERS
        };
        let key = client_key(ip);
        let mut c = self.pools[pool].lock().unwrap_or_else(|e| e.into_inner());
        if c.epoch != epoch {
            *c = LoginCounts {
                epoch,
                ..LoginCounts::default()
            };
        }
        let mine = c.by_address.get(&key).copied().unwrap_or(0);
        if c.in_all >= self.in_all || mine >= self.per_address {
            return Err(retry);
        }
        c.in_all += 1;
        c.by_address.insert(key, mine + 1);
        Ok(Attempt {
            limiter: self,
            pool,
            epoch,
            key,
        })
    }
}

impl Attempt<'_> {
    /// The attempt was the right token: it does not count.
    pub fn succeeded(self) {
        let mut c = self.limiter.pools[self.pool]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if c.epoch != self.epoch {
            return;
        }
        c.in_all = c.in_all.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What a valid session cookie stands for.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session's CSRF token (base64url), required on every change.
    pub csrf: String,
    /// Seconds until the session ends if left unused.
    pub idle_secs: u64,
    /// Seconds until the session ends in any case.
    pub max_secs: u64,
}

/// One open session (the map's key is the SHA-256 of its id).
struct Session {
    created: Instant,
    last_used: Instant,
    csrf: String,
    client: IpAddr,
}

/// The open sessions, bounded.
pub struct Sessions {
    max: usize,
    idle: Duration,
    lifetime: Duration,
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn id_digest(cookie: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(cookie.trim()).ok()?;
    (raw.len() == 32).then(|| Sha256::digest(&raw).into())
}

impl Sessions {
    /// At most `max` sessions, each ending after `idle` unused or `lifetime` in all.
    pub fn new(max: usize, idle: Duration, lifetime: Duration) -> Sessions {
        Sessions {
            max: max.max(1),
            idle,
            lifetime,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session for `client`: its cookie value and its CSRF token. Ended
    /// sessions are dropped first; when still full, the oldest goes.
    pub fn open(&self, client: IpAddr) -> (String, SessionInfo) {
        let id: [u8; 32] = rand::random();
        let csrf = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| self.alive(s, now));
        while open.len() >= self.max {
            let oldest = open.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        open.insert(
            Sha256::digest(id).into(),
            Session {
                created: now,
                last_used: now,
                csrf: csrf.clone(),
                client: client_key(client),
            },
        );
        let info = SessionInfo {
            csrf,
            idle_secs: self.idle.as_secs(),
            max_secs: self.lifetime.as_secs(),
        };
        (URL_SAFE_NO_PAD.encode(id), info)
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) < self.idle && now.duration_since(s.created) < self.lifetime
    }

    /// The session of `cookie`, if it is open and was opened from `client`; marks it
    /// used.
    pub fn check(&self, cookie: &str, client: IpAddr) -> Option<SessionInfo> {
        let key = id_digest(cookie)?;
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let s = open.get_mut(&key)?;
        if !self.alive(s, now) {
            open.remove(&key);
            return None;
        }
        if s.client != client_key(client) {
            return None;
        }
        s.last_used = now;
        let left = self.lifetime.saturating_sub(now.duration_since(s.created));
        Some(SessionInfo {
            csrf: s.csrf.clone(),
            idle_secs: self.idle.as_secs(),
            max_secs: left.as_secs(),
        })
    }

    /// Ends the session of `cookie`, if any.
    pub fn close(&self, cookie: &str) {
        if let Some(key) = id_digest(cookie) {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&key);
        }
    }

    /// How many sessions are held (ended ones included until the next login).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

/// Whether `sent` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &SessionInfo, sent: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(sent.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(session.csrf.as_bytes()).into();
    a.ct_eq(&b).into()
}

/// Most values of the session cookie a request's `Cookie` headers are searched for
/// (another page of the same host can set cookies of the same name that the browser
/// sends first: cookie tossing).
pub const MAX_COOKIE_VALUES: usize = 8;

/// The values of cookie `name` in a request's `Cookie` headers, in the order sent, at
/// most [`MAX_COOKIE_VALUES`].
pub fn cookie_values<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
        .take(MAX_COOKIE_VALUES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_only_itself() {
        let t = AdminToken::from_text("0123456789abcdefXYZ");
        assert!(t.matches("0123456789abcdefXYZ"));
        assert!(t.matches("0123456789abcdefXYZ\n"));
        assert!(!t.matches("0123456789abcdefXY"));
        assert!(!t.matches("0123456789abcdefXYZZ"));
        assert!(!t.matches(""));
    }

    #[test]
    fn a_generated_token_file_is_private_reused_and_a_short_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("admin-token");
        let (_, generated) = load_or_create_token(&path).unwrap();
        assert!(generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 43, "32 bytes in base64url");
        let (again, generated) = load_or_create_token(&path).unwrap();
        assert!(!generated);
        assert!(again.matches(text.trim()));
        std::fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_token(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        let unreadable = dir.path().join("adir");
        std::fs::create_dir(&unreadable).unwrap();
        assert!(load_or_create_token(&unreadable).is_err());
    }

    #[test]
    fn logins_are_counted_before_comparing_and_successes_given_back() {
        let l = LoginLimiter::new(3, 5, Duration::from_secs(60), vec![]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            let _ = l.reserve(a).unwrap();
        }
        let wait = l.reserve(a).err().unwrap();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::ZERO);
        // A success gives its count back, in both counts.
        l.reserve(b).unwrap().succeeded();
        let _ = l.reserve(b).unwrap();
        let _ = l.reserve(b).unwrap();
        // 5 counted in all now (3 + 2): the global cap refuses a fresh address.
        assert!(l.reserve("192.0.2.3".parse().unwrap()).is_err());
        // An IPv6 client is its /64.
        let l = LoginLimiter::new(1, 5, Duration::from_secs(60), vec![]);
        let _ = l.reserve("2001:db8::1".parse().unwrap()).unwrap();
        assert!(l.reserve("2001:db8::2".parse().unwrap()).is_err());
        assert!(l.reserve("2001:db8:0:1::2".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_operators_networks_have_a_budget_of_their_own() {
        let loopback = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let l = LoginLimiter::new(2, 4, Duration::from_secs(60), loopback);
        // Others exhaust their cap in all.
        for ip in ["192.0.2.1", "192.0.2.2"] {
            for _ in 0..2 {
                let _ = l.reserve(ip.parse().unwrap()).unwrap();
            }
        }
        assert!(l.reserve("198.51.100.1".parse().unwrap()).is_err());
        // The operator's networks are untouched, still per-address limited, and have
        // a cap in all of their own.
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        l.reserve(local).unwrap().succeeded();
        let _ = l.reserve(local).unwrap();
        let _ = l.reserve("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        assert!(l.reserve(local).is_err(), "per address");
        let _ = l.reserve("::1".parse().unwrap()).unwrap();
        let _ = l.reserve("127.0.0.2".parse().unwrap()).unwrap();
        assert!(l.reserve("127.0.0.3".parse().unwrap()).is_err(), "in all");
        assert!(l.reserve("198.51.100.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_window_turns() {
        let l = LoginLimiter::new(1, 1, Duration::from_millis(50), vec![]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let _ = l.reserve(a).unwrap();
        let wait = l.reserve(a).err().unwrap();
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(l.reserve(a).is_ok());
    }

    #[test]
    fn sessions_are_bound_to_their_address_bounded_and_expire() {
        let s = Sessions::new(2, Duration::from_secs(60), Duration::from_secs(600));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (first, info) = s.open(ip);
        let checked = s.check(&first, ip).unwrap();
        assert_eq!(checked.csrf, info.csrf);
        assert!(csrf_matches(&checked, &info.csrf));
        assert!(!csrf_matches(&checked, "nope"));
        assert!(s.check(&first, "127.0.0.2".parse().unwrap()).is_none());
        assert!(s.check("not-a-session", ip).is_none());
        let (second, _) = s.open(ip);
        let (third, _) = s.open(ip);
        assert_eq!(s.len(), 2);
        assert!(s.check(&first, ip).is_none(), "the oldest was evicted");
        assert!(s.check(&second, ip).is_some() && s.check(&third, ip).is_some());
        s.close(&second);
        assert!(s.check(&second, ip).is_none());

        let short = Sessions::new(4, Duration::from_millis(30), Duration::from_secs(600));
        let (c, _) = short.open(ip);
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.check(&c, ip).is_none(), "idle too long");
        let capped = Sessions::new(4, Duration::from_secs(60), Duration::from_millis(30));
        let (c, _) = capped.open(ip);
        std::thread::sleep(Duration::from_millis(40));
        assert!(capped.check(&c, ip).is_none(), "past its lifetime");
    }

    #[test]
    fn cookies_are_found_by_name_in_every_header_and_bounded() {
        let h = ["a=1; syncstore_admin=abc ; b=2", "syncstore_admin=def"];
        let found: Vec<&str> = cookie_values(h, COOKIE).collect();
        assert_eq!(found, ["abc", "def"]);
        assert_eq!(cookie_values(["x=1"], COOKIE).count(), 0);
        let many = vec!["syncstore_admin=junk"; 20].join("; ");
        assert_eq!(
            cookie_values([many.as_str()], COOKIE).count(),
            MAX_COOKIE_VALUES
        );
    }
}
