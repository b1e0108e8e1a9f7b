//! Settings: defaults < TOML file < `SYNCSTORE_*` environment < command-line flags.
//!
//! Every key of the TOML file can also be set from the environment as
//! `SYNCSTORE_<KEY>` (upper case), e.g. `SYNCSTORE_MAX_POST_RECORDS=50`;
//! `SYNCSTORE_SECRETS` takes a comma-separated list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file or an environment value is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The generated secret could not be stored.
    #[error("cannot store the generated secret in {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secret file exists but cannot be read; it is left as it is.
    #[error(
        "cannot read the secret file {path}: {source} (fix or restore it; it is never \
         overwritten, since tokens and user ids depend on it)"
    )]
    SecretUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// All settings of a syncstore process. Field names are the TOML keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// What this process serves: `all` (storage node and tokenserver), `storage`, or
    /// `tokenserver`.
    pub role: String,
    /// Address to listen on.
    pub listen: String,
    /// Directory for user files, the generated secret and other state.
    pub data_dir: PathBuf,
    /// Master secrets shared with the tokenserver; the first signs, all verify.
    pub secrets: Vec<String>,
    /// The URL clients use to reach this node (for Hawk host/port and token `node`);
    /// empty: taken from the request's Host header.
    pub public_url: String,
    /// Take host, port and scheme from X-Forwarded-* headers (only behind a trusted proxy).
    pub trust_forwarded_headers: bool,
    /// Allowed difference between a client's clock and ours, seconds.
    pub hawk_skew_secs: i64,
    /// The most (token, ts, nonce) triples the replay cache remembers (one user at most
    /// a tenth of them); requests past it get 503, never evict a remembered nonce.
    pub nonce_cache_size: usize,
    /// Lifetime of tokens minted by `syncstore token`, seconds.
    pub token_duration_secs: u64,
    /// How many users' files may be open at once.
    pub max_open_users: usize,
    /// How many users' collection timestamps are kept in memory (0: none).
    pub summary_cache_users: usize,
    /// SQLite connections per open user.
    pub connections_per_user: u32,
    /// How long a write waits for the user's lock before answering 503, milliseconds.
    pub lock_timeout_ms: u64,
    /// `normal` (default; a power loss may lose the last writes) or `full`.
    pub synchronous: String,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most records in one POST.
    pub max_post_records: usize,
    /// Most payload bytes in one POST.
    pub max_post_bytes: usize,
    /// Largest payload of one record, bytes.
    pub max_record_payload_bytes: usize,
    /// Most records in one batch.
    pub max_total_records: usize,
    /// Most payload bytes in one batch.
    pub max_total_bytes: usize,
    /// Per-user quota in bytes; 0 turns quotas off.
    pub quota_bytes: u64,
    /// Lifetime of an uncommitted batch, seconds.
    pub batch_ttl_secs: u64,
    /// Seconds between background upkeep ticks (purge, checkpoint, close idle files).
    pub upkeep_interval_secs: u64,
    /// Most user files upkeep visits per tick.
    pub upkeep_users_per_tick: usize,
    /// Close a user's file after this many idle seconds.
    pub idle_user_secs: u64,
    /// With an assignment database: delete the file of a user who left this node
    /// (replaced uid, or placed on another node) this many seconds after it left.
    pub orphan_grace_secs: u64,
    /// On shutdown, how long to wait for requests in flight, seconds.
    pub shutdown_grace_secs: u64,
    /// Most client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// A client must send its request headers within this many seconds.
    pub header_read_timeout_secs: u64,
    /// A client must send its whole request body within this many seconds.
    pub body_read_timeout_secs: u64,
    /// A new connection that sends nothing within this many seconds is closed.
    pub first_byte_timeout_secs: u64,
    /// A connection with no request in flight for this many seconds is closed (HTTP/1
    /// keep-alive and HTTP/2 alike).
    pub idle_timeout_secs: u64,
    /// An HTTP/2 connection silent this many seconds is pinged, and closed when the
    /// answer takes as long again.
    pub http2_keep_alive_secs: u64,
    /// Most connections open at once from one client address (IPv6: one /64); 0: no cap.
    pub max_connections_per_address: usize,
    /// Addresses or networks (`10.0.0.1`, `10.0.0.0/8`) of reverse proxies, exempt from
    /// `max_connections_per_address` (every client behind a proxy shares its address).
    pub trusted_proxies: Vec<String>,
    /// Most threads for blocking work (SQLite); the async workers are one per core.
    pub max_blocking_threads: usize,
    /// Log format: `text` (human) or `json` (one object a line).
    pub log_format: String,
    /// Serve `/__metrics__` on this address (e.g. a private `127.0.0.1:9100`); empty:
    /// no metrics listener.
    pub metrics_listen: String,
    /// Bearer token `/__metrics__` requires; when set, the main listener serves
    /// `/__metrics__` too (with the token), otherwise only `metrics_listen` does.
    pub metrics_token: String,
    /// Serve the operator console (`/admin/`) on this address, e.g. a private
    /// `127.0.0.1:8090` reached over an SSH tunnel; empty: no console.
    pub admin_listen: String,
    /// The file holding the console's admin token; empty: `<data_dir>/admin-token`
    /// (generated, owner-only, when missing).
    pub admin_token_file: String,
    /// Networks (CIDRs or addresses) whose console logins count in a budget of their
    /// own, outside the cap in all that a flood from elsewhere can exhaust; default
    /// loopback (an SSH tunnel).
    pub admin_operator_networks: Vec<String>,
    /// FxA's JWK set for verifying OAuth JWTs: a file path, or the JSON inline.
    pub fxa_jwks: String,
    /// Required issuer (`iss`) of OAuth JWTs; empty: not checked.
    pub fxa_issuer: String,
    /// FxA's token verification endpoint (POST `{"token": …}`) for tokens not decided
    /// locally; `auto` (default): Mozilla's unless `fxa_jwks` is set; empty: none.
    pub fxa_verify_url: String,
    /// How long a remote verification result is reused, seconds.
    pub fxa_verify_cache_secs: u64,
    /// Our OAuth client id at FxA: the audience of its account-event webhook (`POST
    /// /1.0/webhooks/fxa/events`, SETs checked with `fxa_jwks`); empty: webhook off.
    pub fxa_events_client_id: String,
    /// Users' emails are `<fxa uid>@<this domain>` (allow- and deny-lists may use them).
    pub fxa_email_domain: String,
    /// `postgres://…` to share assignments and accounts between processes; empty: SQLite in data_dir.
    pub tokenserver_database_url: String,
    /// This storage node's URL in the assignment database; empty: public_url, else
    /// `http://<listen address>`.
    pub node_url: String,
    /// Capacity this process registers itself with when the node list is empty.
    pub node_capacity: i64,
    /// How long a storage node trusts a looked-up assignment, seconds.
    pub assignment_check_secs: u64,
    /// Address of the listener for node-to-node requests (live moves), never served on
    /// `listen`: empty: `127.0.0.1:0` (a free port) when this process is a storage node
    /// of a cluster (`tokenserver_database_url` set), else none; `off`: none; or an
    /// address, e.g. a private `10.0.0.5:8001` when nodes run on several machines.
    pub internal_listen: String,
    /// The URL other nodes reach the internal listener at, written to the assignment
    /// database at start; empty: `http://<the bound internal address>`.
    pub internal_url: String,
    /// Largest user file a node accepts in a move (the body is spooled to a file in
    /// the data dir as it arrives, never held in memory), bytes. Default 4 GiB.
    pub max_moved_file_bytes: u64,
    /// How often a storage node with an assignment database writes its health row
    /// there (its last minute of storage requests, 5xx, p50/p99, open and stored user
    /// files, free disk), and how often a tokenserver's canary guard judges the nodes,
    /// seconds; 0: neither.
    pub node_report_secs: u64,
    /// The canary guard (in tokenservers): a node in rollout whose last minute looks
    /// worse than the other nodes' for `canary_window_secs` takes no new users until
    /// `syncstore rollout resume`.
    pub canary_guard: bool,
    /// How long a node must look worse without a break before the guard pauses it,
    /// seconds.
    pub canary_window_secs: u64,
    /// A node's 5xx rate (0–1) must be above this, and above `canary_error_factor`
    /// times the other nodes' combined rate, to count against it.
    pub canary_error_rate: f64,
    /// See `canary_error_rate`.
    pub canary_error_factor: f64,
    /// A node's p99 must be above this many times the other nodes' median p99, and
    /// above `canary_p99_floor_ms`, to count against it.
    pub canary_p99_factor: f64,
    /// See `canary_p99_factor`, milliseconds.
    pub canary_p99_floor_ms: u64,
    /// A node with fewer storage requests in its last minute is not judged (nor are
    /// the others taken as its baseline when they have fewer together).
    pub canary_min_requests: u64,
    /// A node in rollout with at least `canary_min_requests` requests and a 5xx rate
    /// (0–1) above this is suspect whatever the other nodes do (stale, quiet or
    /// failing too).
    pub canary_error_ceiling: f64,
    /// Origins that get CORS headers (the request's origin is echoed back); empty:
    /// any origin.
    pub cors_allowed_origins: Vec<String>,
    /// Limits that differ for named collections (`[collection_limits.<name>]` in TOML;
    /// `SYNCSTORE_COLLECTION_LIMITS="bookmarks.max_post_bytes=10000000,…"`).
    /// info/configuration keeps publishing the defaults.
    pub collection_limits: BTreeMap<String, CollectionLimits>,
    /// Serve the built-in Firefox Accounts-compatible service (with the tokenserver,
    /// on the public origin); its tokens are trusted by this tokenserver.
    pub accounts: bool,
    /// Who may create accounts over the API: `closed` (only `syncstore account add`),
    /// `invite` (holders of a code from `syncstore account invite`) or `open`.
    pub accounts_signups: String,
    /// SMTP server for verification mail (lettre's URL form: `smtp://user:pass@host:587`
    /// with STARTTLS, `smtps://host:465`, `smtp://host:25?tls=none`); empty: no mail
    /// (under `open`, new accounts are then verified without proof of the address).
    pub accounts_smtp_url: String,
    /// The verification mail's From (`Sync <sync@example.org>`); required with SMTP.
    pub accounts_mail_from: String,
    /// Most password hardenings (scrypt, 64 MiB and a core each) at once; 0: half the
    /// cores, at least one.
    pub accounts_hardening_concurrency: usize,
    /// Password hardenings per second on average, fractions allowed (a burst of 3 or
    /// this, whichever is more, then paced; over it 429; one client address at most
    /// a quarter of it); 0: one per two cores (at
    /// least one), about a sixteenth of the machine at ~0.12 s per hardening.
    pub accounts_hardening_per_sec: f64,
    /// The nice value (0–19) of the threads that run password hardening: 0, the
    /// storage API's own; higher makes them yield the cores to the storage API whenever
    /// it has work, and sign-ins wait for idle time on a busy machine.
    pub accounts_hardening_nice: u8,
    /// Send Web Push notices to the account's devices (a tab sent to a device, a
    /// device connected or gone, a password changed, an account deleted, and the
    /// devices' own `devices/notify`) through the push service each device registered
    /// (for Firefox: Mozilla's). false: nothing leaves the machine; devices still get
    /// their commands at their next fetch (at least daily).
    pub accounts_push: bool,
    /// Networks (CIDRs or addresses) a device's push endpoint may be on although they
    /// are not public, e.g. `127.0.0.1` for a local push service; an endpoint on any
    /// other private, loopback or link-local address is refused.
    pub accounts_push_allow_private: Vec<String>,
    /// The push services the server pushes to: host names, each with its subdomains
    /// (default Mozilla's, which every Firefox uses); `*`: any public host. A device
    /// whose endpoint is elsewhere gets no push (it fetches at its next sync).
    pub accounts_push_services: Vec<String>,
    /// Continuous backup: where the running server writes a backup generation every
    /// `backup_interval_secs` (the same as `syncstore backup`): `file:///path` (a
    /// directory) or `s3://bucket/prefix` (S3-compatible object storage); empty: off.
    pub backup_to: String,
    /// Seconds between continuous backups (each copies only what changed).
    pub backup_interval_secs: u64,
    /// Backup generations kept (older ones are removed after a run).
    pub backup_keep: usize,
    /// The S3 endpoint URL for another provider than AWS (MinIO, Garage, a local
    /// server: `http://127.0.0.1:9000`); empty: AWS (or `AWS_ENDPOINT_URL`).
    pub backup_s3_endpoint: String,
    /// The S3 region; empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub backup_s3_region: String,
    /// The S3 access key id; empty: `AWS_ACCESS_KEY_ID`.
    pub backup_s3_access_key_id: String,
    /// The S3 secret access key; empty: `AWS_SECRET_ACCESS_KEY`.
    pub backup_s3_secret_access_key: String,
    /// Allow a plain-HTTP `backup_s3_endpoint` (a server on this machine or a private
    /// network); otherwise only HTTPS is used.
    pub backup_s3_allow_http: bool,
}

/// A collection's own write limits; a limit left out is the server-wide one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionLimits {
    /// Largest request body for this collection, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
    /// Most payload bytes in one POST to this collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_post_bytes: Option<usize>,
    /// Largest payload of one record in this collection, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_record_payload_bytes: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            role: "all".into(),
            listen: "127.0.0.1:8000".into(),
            data_dir: PathBuf::from("./data"),
            secrets: vec![],
            public_url: String::new(),
            trust_forwarded_headers: false,
            hawk_skew_secs: 60,
            // Requests a window (60 s) holds at ~66k req/s: more than a node serves.
            nonce_cache_size: 4_000_000,
            token_duration_secs: 3600,
            max_open_users: 400,
            summary_cache_users: 50_000,
            connections_per_user: 4,
            lock_timeout_ms: 5000,
            synchronous: "normal".into(),
            max_request_bytes: 2_625_536,
            max_post_records: 100,
            max_post_bytes: 2_621_440,
            max_record_payload_bytes: 2_621_440,
            max_total_records: 10_000,
            max_total_bytes: 262_144_000,
            quota_bytes: 0,
            batch_ttl_secs: 7200,
            upkeep_interval_secs: 60,
            upkeep_users_per_tick: 500,
            idle_user_secs: 300,
            orphan_grace_secs: 7 * 24 * 3600,
            shutdown_grace_secs: 10,
            max_connections: 4096,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 60,
            first_byte_timeout_secs: 5,
            idle_timeout_secs: 30,
            http2_keep_alive_secs: 20,
            max_connections_per_address: 256,
            trusted_proxies: vec![],
            max_blocking_threads: 6,
            log_format: "text".into(),
            metrics_listen: String::new(),
            metrics_token: String::new(),
            admin_listen: String::new(),
            admin_token_file: String::new(),
            admin_operator_networks: vec!["127.0.0.0/8".into(), "::1".into()],
            fxa_jwks: String::new(),
            fxa_issuer: "https://accounts.firefox.com".into(),
            fxa_verify_url: "auto".into(),
            fxa_verify_cache_secs: 60,
            fxa_events_client_id: String::new(),
            fxa_email_domain: "api.accounts.firefox.com".into(),
            tokenserver_database_url: String::new(),
            node_url: String::new(),
            node_capacity: 100_000,
            assignment_check_secs: 5,
            internal_listen: String::new(),
            internal_url: String::new(),
            max_moved_file_bytes: 4 << 30,
            node_report_secs: 5,
            canary_guard: true,
            canary_window_secs: 300,
            canary_error_rate: 0.01,
            canary_error_factor: 3.0,
            canary_p99_factor: 3.0,
            canary_p99_floor_ms: 100,
            canary_min_requests: 100,
            canary_error_ceiling: 0.5,
            cors_allowed_origins: vec![],
            collection_limits: BTreeMap::new(),
            accounts: true,
            accounts_signups: "closed".into(),
            accounts_smtp_url: String::new(),
            accounts_mail_from: String::new(),
            accounts_hardening_concurrency: 0,
            accounts_hardening_per_sec: 0.0,
            accounts_hardening_nice: 0,
            accounts_push: true,
            accounts_push_allow_private: vec![],
            accounts_push_services: vec!["push.services.mozilla.com".into()],
            backup_to: String::new(),
            backup_interval_secs: 86_400,
            backup_keep: 7,
            backup_s3_endpoint: String::new(),
            backup_s3_region: String::new(),
            backup_s3_access_key_id: String::new(),
            backup_s3_secret_access_key: String::new(),
            backup_s3_allow_http: false,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.clone();
        shown.secrets = shown.secrets.iter().map(|_| "<redacted>".into()).collect();
        if !shown.metrics_token.is_empty() {
            shown.metrics_token = "<redacted>".into();
        }
        if let Some((scheme, rest)) = shown.tokenserver_database_url.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            shown.tokenserver_database_url = format!("{scheme}://<redacted>@{host}");
        }
        if let Some((scheme, rest)) = shown.accounts_smtp_url.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            shown.accounts_smtp_url = format!("{scheme}://<redacted>@{host}");
        }
        if !shown.backup_s3_secret_access_key.is_empty() {
            shown.backup_s3_secret_access_key = "<redacted>".into();
        }
        let text = toml::to_string(&shown).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

/// The limits published in `info/configuration` and enforced on writes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most records in one POST.
    pub max_post_records: usize,
    /// Most payload bytes in one POST.
    pub max_post_bytes: usize,
    /// Largest payload of one record, bytes.
    pub max_record_payload_bytes: usize,
    /// Most records in one batch.
    pub max_total_records: usize,
    /// Most payload bytes in one batch.
    pub max_total_bytes: usize,
}

impl Settings {
    /// Loads settings from defaults, an optional TOML file and the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like `load`, with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let known = toml::Table::try_from(Settings::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, value) in env {
            let Some(key) = name.strip_prefix("SYNCSTORE_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let Some(default) = known.get(&key) else {
                continue;
            };
            table.insert(key.clone(), env_value(&key, &value, default)?);
        }
        let settings: Settings = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !matches!(self.role.as_str(), "all" | "storage" | "tokenserver") {
            return bad("role must be \"all\", \"storage\" or \"tokenserver\"");
        }
        if !matches!(self.synchronous.as_str(), "normal" | "full") {
            return bad("synchronous must be \"normal\" or \"full\"");
        }
        if self.secrets.iter().any(|s| s.is_empty()) {
            return bad("secrets must not be empty strings");
        }
        if self.upkeep_interval_secs == 0 || self.upkeep_users_per_tick == 0 {
            return bad("upkeep_interval_secs and upkeep_users_per_tick must be at least 1");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be \"text\" or \"json\"");
        }
        if self.max_connections == 0 || self.max_blocking_threads == 0 {
            return bad("max_connections and max_blocking_threads must be at least 1");
        }
        if self.header_read_timeout_secs == 0
            || self.body_read_timeout_secs == 0
            || self.first_byte_timeout_secs == 0
            || self.idle_timeout_secs == 0
            || self.http2_keep_alive_secs == 0
        {
            return bad("connection timeouts must be at least 1 second");
        }
        self.trusted_proxy_nets()?;
        self.admin_operator_nets()?;
        if self.max_open_users == 0 || self.connections_per_user == 0 {
            return bad("max_open_users and connections_per_user must be at least 1");
        }
        let rate = self.accounts_hardening_per_sec;
        if !(rate == 0.0 || (0.01..=1e6).contains(&rate)) {
            return bad("accounts_hardening_per_sec must be 0 (automatic) or 0.01 to 1000000");
        }
        if self.accounts_hardening_nice > 19 {
            return bad("accounts_hardening_nice must be 0 to 19");
        }
        if !matches!(self.accounts_signups.as_str(), "closed" | "invite" | "open") {
            return bad("accounts_signups must be \"closed\", \"invite\" or \"open\"");
        }
        if !self.accounts_smtp_url.is_empty() && self.accounts_mail_from.is_empty() {
            return bad("accounts_smtp_url needs accounts_mail_from");
        }
        self.push_allow_private_nets()?;
        if !(0.0..=1.0).contains(&self.canary_error_rate) {
            return bad("canary_error_rate must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.canary_error_ceiling) {
            return bad("canary_error_ceiling must be between 0 and 1");
        }
        if !(1.0..=1e6).contains(&self.canary_error_factor)
            || !(1.0..=1e6).contains(&self.canary_p99_factor)
        {
            return bad("canary_error_factor and canary_p99_factor must be 1 to 1000000");
        }
        if self.canary_window_secs > 86_400 * 7 || self.node_report_secs > 3600 {
            return bad("canary_window_secs must be at most a week, node_report_secs an hour");
        }
        if self.backup_interval_secs == 0 || self.backup_keep == 0 {
            return bad("backup_interval_secs and backup_keep must be at least 1");
        }
        if !self.backup_to.is_empty() {
            crate::admin::backup::BackupTarget::parse(&self.backup_to)
                .map_err(|e| ConfigError::Invalid(format!("backup_to: {e}")))?;
        }
        let endpoint = &self.backup_s3_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("https://")
            || endpoint.starts_with("http://"))
        {
            return bad("backup_s3_endpoint must be an http:// or https:// URL");
        }
        if !self.public_url.is_empty() && self.public_url.parse::<axum::http::Uri>().is_err() {
            return bad("public_url is not a valid URL");
        }
        Ok(())
    }

    /// `trusted_proxies` parsed: a bare address is a network of one.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        parse_nets("trusted_proxies", &self.trusted_proxies)
    }

    /// `admin_operator_networks` parsed: a bare address is a network of one.
    pub fn admin_operator_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        parse_nets("admin_operator_networks", &self.admin_operator_networks)
    }

    /// `accounts_push_allow_private` parsed: a bare address is a network of one.
    pub fn push_allow_private_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        parse_nets(
            "accounts_push_allow_private",
            &self.accounts_push_allow_private,
        )
    }

    /// Whether this process serves the storage API.
    pub fn serves_storage(&self) -> bool {
        self.role != "tokenserver"
    }

    /// The address of the internal (node-to-node) listener, if this process has one
    /// (see `internal_listen`).
    pub fn internal_listen_addr(&self) -> Option<String> {
        match self.internal_listen.as_str() {
            "off" => None,
            "" if self.serves_storage() && !self.tokenserver_database_url.is_empty() => {
                Some("127.0.0.1:0".into())
            }
            "" => None,
            addr => Some(addr.to_string()),
        }
    }

    /// Whether this process serves the accounts service (with the tokenserver).
    pub fn serves_accounts(&self) -> bool {
        self.accounts && self.serves_tokens()
    }

    /// Whether this process serves the tokenserver API.
    pub fn serves_tokens(&self) -> bool {
        self.role != "storage"
    }

    /// The server-wide limits, as published in info/configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes,
            max_post_records: self.max_post_records,
            max_post_bytes: self.max_post_bytes,
            max_record_payload_bytes: self.max_record_payload_bytes,
            max_total_records: self.max_total_records,
            max_total_bytes: self.max_total_bytes,
        }
    }

    /// The limits enforced on writes to `collection`: the server-wide ones with the
    /// collection's own overrides applied.
    pub fn limits_for(&self, collection: &str) -> Limits {
        let mut limits = self.limits();
        if let Some(own) = self.collection_limits.get(collection) {
            let pick = |own: Option<usize>, default: usize| own.unwrap_or(default);
            limits.max_request_bytes = pick(own.max_request_bytes, limits.max_request_bytes);
            limits.max_post_bytes = pick(own.max_post_bytes, limits.max_post_bytes);
            limits.max_record_payload_bytes = pick(
                own.max_record_payload_bytes,
                limits.max_record_payload_bytes,
            );
        }
        limits
    }

    /// Makes sure there is a signing secret: when none is configured, reads the one
    /// stored in the data dir, or generates and stores one (mode 0600). Returns the
    /// path of a newly generated secret file.
    pub fn ensure_secret(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if !self.secrets.is_empty() {
            return Ok(None);
        }
        let path = self.data_dir.join("secret");
        let err = |source| ConfigError::Secret {
            path: path.clone(),
            source,
        };
        // Only a missing (or empty) file gets a new secret: one that is there but
        // unreadable (a directory, bad permissions, not UTF-8) is an error, never
        // overwritten, or every token and uid minted with it would silently change.
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::SecretUnreadable {
                    path: path.clone(),
                    source,
                });
            }
        };
        if let Some(text) = &existing {
            let secret = text.trim().to_string();
            if !secret.is_empty() {
                self.secrets = vec![secret];
                return Ok(None);
            }
        }
        crate::private::create_dir(&self.data_dir).map_err(err)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        match existing {
            // An empty file held no secret: nothing was ever signed with it.
            Some(_) => options.truncate(true),
            None => options.create_new(true),
        };
        let mut f = options.open(&path).map_err(err)?;
        f.write_all(format!("{secret}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        self.secrets = vec![secret];
        Ok(Some(path))
    }
}

/// A list of networks (CIDRs, or bare addresses: networks of one) of setting `key`.
fn parse_nets(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid(format!("{key}: bad address {p:?}")))
        })
        .collect()
}

/// Converts an environment value to the TOML type of the key's default.
fn env_value(key: &str, value: &str, default: &toml::Value) -> Result<toml::Value, ConfigError> {
    let invalid = || ConfigError::Invalid(format!("SYNCSTORE_{}: bad value", key.to_uppercase()));
    Ok(match default {
        toml::Value::Integer(_) => {
            toml::Value::Integer(value.trim().parse().map_err(|_| invalid())?)
        }
        toml::Value::Float(_) => toml::Value::Float(value.trim().parse().map_err(|_| invalid())?),
        toml::Value::Boolean(_) => match value.trim() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" | "" => toml::Value::Boolean(false),
            _ => return Err(invalid()),
        },
        // `collection_limits`: `name.key=value` pairs, comma-separated.
        toml::Value::Table(_) => {
            let mut table = toml::Table::new();
            for pair in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (path, n) = pair.split_once('=').ok_or_else(invalid)?;
                let (name, limit) = path.trim().rsplit_once('.').ok_or_else(invalid)?;
                let n: i64 = n.trim().parse().map_err(|_| invalid())?;
                let entry = table
                    .entry(name.trim().to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = entry {
                    t.insert(limit.trim().to_string(), toml::Value::Integer(n));
                }
            }
            toml::Value::Table(table)
        }
        toml::Value::Array(_) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(value.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "max_post_records = 7\nmax_post_bytes = 9\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("SYNCSTORE_MAX_POST_BYTES", "11"),
                ("SYNCSTORE_SECRETS", "a, b"),
                ("SYNCSTORE_UNRELATED", "x"),
                ("HOME", "/"),
            ]),
        )
        .unwrap();
        assert_eq!(s.max_post_records, 7);
        assert_eq!(s.max_post_bytes, 9 + 2);
        assert_eq!(s.secrets, vec!["a", "b"]);
        assert_eq!(s.max_request_bytes, 2_625_536);
        assert!(!format!("{s:?}").contains("\"a\""));
    }

    #[test]
    fn the_example_config_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/syncstore.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let listed: toml::Table = toml::from_str(&text).unwrap();
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        let keys: Vec<&String> = defaults.as_object().unwrap().keys().collect();
        let missing: Vec<_> = keys.iter().filter(|k| !listed.contains_key(**k)).collect();
        assert!(
            missing.is_empty(),
            "keys missing from the example: {missing:?}"
        );
        let loaded = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(serde_json::to_value(loaded).unwrap(), defaults);
    }

    #[test]
    fn collection_limits_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "max_post_bytes = 1000\n[collection_limits.bookmarks]\nmax_post_bytes = 5000\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(s.limits_for("bookmarks").max_post_bytes, 5000);
        assert_eq!(s.limits_for("history").max_post_bytes, 1000);
        assert_eq!(s.limits().max_post_bytes, 1000);
        let s = Settings::load_from(
            Some(&file),
            env(&[(
                "SYNCSTORE_COLLECTION_LIMITS",
                "history.max_record_payload_bytes=77, history.max_request_bytes=99",
            )]),
        )
        .unwrap();
        let h = s.limits_for("history");
        assert_eq!((h.max_record_payload_bytes, h.max_request_bytes), (77, 99));
        assert_eq!(s.limits_for("bookmarks").max_post_bytes, 1000);
        for bad in ["history=5", "history.max_post_bytes=lots", "history.nope=1"] {
            let e = env(&[("SYNCSTORE_COLLECTION_LIMITS", bad)]);
            assert!(Settings::load_from(None, e).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Settings::load_from(None, env(&[("SYNCSTORE_MAX_POST_BYTES", "lots")])).is_err());
        assert!(Settings::load_from(None, env(&[("SYNCSTORE_SYNCHRONOUS", "off")])).is_err());
        let rate = |v: &str| {
            Settings::load_from(None, env(&[("SYNCSTORE_ACCOUNTS_HARDENING_PER_SEC", v)]))
                .map(|s| s.accounts_hardening_per_sec)
        };
        assert_eq!(rate("0.5").unwrap(), 0.5);
        assert_eq!(rate("100").unwrap(), 100.0);
        assert!(rate("-1").is_err() && rate("0.001").is_err() && rate("NaN").is_err());
        let nice = |v: &str| {
            Settings::load_from(None, env(&[("SYNCSTORE_ACCOUNTS_HARDENING_NICE", v)]))
                .map(|s| s.accounts_hardening_nice)
        };
        assert_eq!(nice("19").unwrap(), 19);
        assert!(nice("20").is_err() && nice("-1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        assert!(Settings::load_from(Some(&file), env(&[])).is_err());
    }

    #[test]
    fn a_generated_secret_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings {
            data_dir: dir.path().join("d"),
            ..Settings::default()
        };
        let path = s.ensure_secret().unwrap().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = s.secrets.clone();
        let mut again = Settings {
            data_dir: dir.path().join("d"),
            ..Settings::default()
        };
        assert!(again.ensure_secret().unwrap().is_none());
        assert_eq!(again.secrets, first);
    }
}
