//! The assignment database: SQLite in the data dir by default, PostgreSQL when shared
//! by several tokenservers. Both speak through one small interface (`SqlTx`), so the
//! assignment logic and its SQL are written once; numbered placeholders (`?1`) are
//! rewritten for PostgreSQL (`$1`).
//!
//! PostgreSQL connections honour libpq's `sslmode` and `sslrootcert` URL parameters
//! (TLS through rustls; see [`postgres_connector`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::TransactionBehavior;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

const SQLITE_SCHEMA: &str = include_str!("../../schema/tokenserver_sqlite.sql");
const POSTGRES_SCHEMA: &str = include_str!("../../schema/tokenserver_postgres.sql");

/// Errors of the assignment database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// No connection could be had.
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A value of an unexpected type came back.
    #[error("unexpected column type in {0}")]
    Type(String),
    /// Creating the database's folder failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The URL's TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error("postgres TLS settings: {0}")]
    Tls(String),
}

/// A PostgreSQL error with its causes (the crate's own text is only "db error" or
/// "error performing TLS handshake"; the why is in its sources).
pub fn pg_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How a PostgreSQL connection is secured, from the URL's `sslmode` (libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTlsMode {
    /// `disable`: plain TCP.
    Disable,
    /// `prefer` (also `allow`, and the default as in libpq): TLS when the server offers
    /// it, plain otherwise; the certificate is not checked (checked against
    /// `sslrootcert` when given). Protects against passive eavesdroppers only.
    Prefer,
    /// `require`: TLS or no connection; the certificate is not checked unless
    /// `sslrootcert` is given (then as `verify-ca`, as libpq does).
    Require,
    /// `verify-ca`: TLS, the certificate chains to `sslrootcert` or the system roots.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

/// Parses a `postgres://` URL, taking out what the `postgres` crate does not know
/// (`sslmode=verify-ca|verify-full|allow`, `sslrootcert`): returns its config and the
/// TLS connector that applies the URL's `sslmode`.
pub fn postgres_connector(url: &str) -> Result<(postgres::Config, MakeRustlsConnect), DbError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = PgTlsMode::Prefer;
    let mut root_file: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || -> Result<String, DbError> {
            let v: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={value}"))
                .map_err(|e| DbError::Tls(format!("{key}: {e}")))?;
            Ok(v.into_iter().next().map(|(_, v)| v).unwrap_or_default())
        };
        match key {
            "sslmode" => {
                mode = match decoded()?.as_str() {
                    "disable" => PgTlsMode::Disable,
                    "allow" | "prefer" => PgTlsMode::Prefer,
                    "require" => PgTlsMode::Require,
                    "verify-ca" => PgTlsMode::VerifyCa,
                    "verify-full" => PgTlsMode::VerifyFull,
                    other => {
                        return Err(DbError::Tls(format!(
                            "unknown sslmode {other:?}: use disable, prefer, require, \
                             verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => root_file = Some(decoded()?),
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" => {
                return Err(DbError::Tls(format!(
                    "{key} is not supported (no client certificates or CRLs)"
                )));
            }
            _ => kept.push(pair),
        }
    }
    kept.push(match mode {
        PgTlsMode::Disable => "sslmode=disable",
        PgTlsMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let config: postgres::Config = format!("{base}?{}", kept.join("&")).parse()?;
    if root_file.is_some() && matches!(mode, PgTlsMode::Prefer | PgTlsMode::Require) {
        // As libpq: with a root file, a TLS connection's certificate is checked.
        mode = PgTlsMode::VerifyCa;
    }
    Ok((config, MakeRustlsConnect::new(tls_config(mode, root_file)?)))
}

/// rustls' settings for `mode`: certificates trusted from `root_file` (PEM; `system`
/// for the system's roots, also used when no file is named).
fn tls_config(mode: PgTlsMode, root_file: Option<String>) -> Result<rustls::ClientConfig, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        PgTlsMode::Disable | PgTlsMode::Prefer | PgTlsMode::Require => {
            Arc::new(AnyCertificate(provider))
        }
        PgTlsMode::VerifyCa | PgTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match root_file.as_deref() {
                None | Some("system") => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(DbError::Tls(format!(
                            "sslmode={}: no system root certificates found ({:?}); name a \
                             CA file with sslrootcert=",
                            if mode == PgTlsMode::VerifyCa {
                                "verify-ca"
                            } else {
                                "verify-full"
                            },
                            found.errors
                        )));
                    }
                }
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| DbError::Tls(format!("sslrootcert {path}: {e}")))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(DbError::Tls(format!(
                            "sslrootcert {path}: no usable certificate in it"
                        )));
                    }
                }
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| DbError::Tls(e.to_string()))?;
            if mode == PgTlsMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=prefer|require` without a root file: any certificate is accepted (as libpq
/// does), the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A SQL value as both backends exchange it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// NULL.
    Null,
    /// An integer (also used for booleans).
    Int(i64),
    /// Text.
    Text(String),
}

impl Val {
    /// The integer, or an error naming `what`.
    pub fn int(&self, what: &str) -> Result<i64, DbError> {
        match self {
            Val::Int(i) => Ok(*i),
            _ => Err(DbError::Type(what.into())),
        }
    }

    /// The integer or `None` for NULL.
    pub fn opt_int(&self, what: &str) -> Result<Option<i64>, DbError> {
        match self {
            Val::Null => Ok(None),
            v => v.int(what).map(Some),
        }
    }

    /// The text, or an error naming `what`.
    pub fn text(&self, what: &str) -> Result<String, DbError> {
        match self {
            Val::Text(s) => Ok(s.clone()),
            _ => Err(DbError::Type(what.into())),
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(v as i64)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Val {
        v.map_or(Val::Null, Val::Int)
    }
}

/// One open transaction of either backend.
pub trait SqlTx {
    /// Runs a query; every row comes back as values.
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError>;
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError>;
    /// Serializes sign-ins of one FxA user until the transaction ends (PostgreSQL takes
    /// an advisory lock; SQLite transactions are already exclusive).
    fn lock_key(&mut self, key: &str) -> Result<(), DbError>;
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl SqlTx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get::<_, rusqlite::types::Value>(i)? {
                    rusqlite::types::Value::Integer(v) => Val::Int(v),
                    rusqlite::types::Value::Text(t) => Val::Text(t),
                    rusqlite::types::Value::Real(f) => Val::Int(f as i64),
                    _ => Val::Null,
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        let params = rusqlite::params_from_iter(args.iter().map(to_sqlite));
        Ok(self.0.prepare_cached(sql)?.execute(params)? as u64)
    }

    fn lock_key(&mut self, _key: &str) -> Result<(), DbError> {
        Ok(())
    }
}

fn to_sqlite(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Null => rusqlite::types::Value::Null,
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

struct PgTx<'a>(postgres::Transaction<'a>);

/// Rewrites `?1` placeholders as PostgreSQL's `$1`.
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_args(args: &[Val]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Val::Null => Box::new(None::<i64>),
                Val::Int(i) => Box::new(*i),
                Val::Text(t) => Box::new(t.clone()),
            }
        })
        .collect()
}

impl SqlTx for PgTx<'_> {
    fn query(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.0.query(pg_sql(sql).as_str(), &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                row.push(if *ty == Type::INT8 {
                    r.get::<_, Option<i64>>(i).map_or(Val::Null, Val::Int)
                } else if *ty == Type::INT4 {
                    r.get::<_, Option<i32>>(i)
                        .map_or(Val::Null, |v| Val::Int(v.into()))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    r.get::<_, Option<String>>(i).map_or(Val::Null, Val::Text)
                } else if *ty == Type::NUMERIC || *ty == Type::FLOAT8 {
                    return Err(DbError::Type(format!("{} ({ty})", col.name())));
                } else {
                    Val::Null
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        let boxed = pg_args(args);
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        Ok(self.0.execute(pg_sql(sql).as_str(), &refs)?)
    }

    fn lock_key(&mut self, key: &str) -> Result<(), DbError> {
        self.0
            .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
        Ok(())
    }
}

type PgManager = PostgresConnectionManager<MakeRustlsConnect>;

/// The PostgreSQL pool. The `postgres` crate's blocking client runs its own small
/// runtime to close a connection, which panics ("Cannot start a runtime from within a
/// runtime") on a tokio worker thread; the last handle of the pool may well be dropped
/// there (when the server's state goes at shutdown), so the pool is closed on a thread
/// of its own then.
pub struct PgPool(Option<r2d2::Pool<PgManager>>);

impl PgPool {
    fn get(&self) -> Result<r2d2::PooledConnection<PgManager>, r2d2::Error> {
        self.0.as_ref().expect("pool present until dropped").get()
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            return drop(pool);
        }
        // Joined, so the connections are closed (the server told) before the process
        // goes on to exit.
        let closed = std::thread::Builder::new()
            .name("pg-pool-close".into())
            .spawn(move || drop(pool))
            .map(|t| t.join().is_ok());
        if !matches!(closed, Ok(true)) {
            tracing::warn!("closing the PostgreSQL pool failed");
        }
    }
}

/// A pool of connections to the assignment database. Cheap to clone. Blocking: use
/// from the blocking pool or the CLI. May be dropped anywhere, a tokio worker too.
#[derive(Clone)]
pub enum AssignmentDb {
    /// A SQLite file (one tokenserver process).
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    /// A PostgreSQL database (shared by several processes).
    Postgres(Arc<PgPool>),
}

impl std::fmt::Debug for AssignmentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AssignmentDb::Sqlite(_) => "AssignmentDb::Sqlite",
            AssignmentDb::Postgres(_) => "AssignmentDb::Postgres",
        })
    }
}

impl AssignmentDb {
    /// Opens (and creates the schema of) the database: `url` is a `postgres://` URL,
    /// or empty for `<data_dir>/tokenserver.sqlite`.
    pub fn open(url: &str, data_dir: &Path) -> Result<AssignmentDb, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (config, tls) = postgres_connector(url)?;
            // A first connection of its own, so that a wrong URL, password or
            // certificate is reported at once (the pool would retry for 10 s).
            let mut client = config.connect(tls.clone())?;
            let mut tx = client.transaction()?;
            // Several processes may start at once: create the schema under a lock.
            tx.execute("SELECT pg_advisory_xact_lock(727274)", &[])?;
            tx.batch_execute(POSTGRES_SCHEMA)?;
            tx.commit()?;
            drop(client);
            let manager = PostgresConnectionManager::new(config, tls);
            let pool = r2d2::Pool::builder()
                .max_size(8)
                .min_idle(Some(0))
                .connection_timeout(Duration::from_secs(10))
                .build(manager)?;
            return Ok(AssignmentDb::Postgres(Arc::new(PgPool(Some(pool)))));
        }
        crate::storage::userdbs::create_private_dir(data_dir)
            .map_err(|e| DbError::Io(std::io::Error::other(e.to_string())))?;
        let path = data_dir.join("tokenserver.sqlite");
        crate::storage::userdbs::create_private_file(&path)
            .map_err(|e| DbError::Io(std::io::Error::other(e.to_string())))?;
        let manager = SqliteConnectionManager::file(path).with_init(|c| {
            c.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
            )
        });
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(0))
            .build_unchecked(manager);
        pool.get()?.execute_batch(SQLITE_SCHEMA)?;
        Ok(AssignmentDb::Sqlite(pool))
    }

    /// Runs `f` in one transaction on the blocking pool (for async callers).
    pub async fn run<T, E>(
        &self,
        f: impl FnOnce(&mut dyn SqlTx) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.transaction(f))
            .await
            .map_err(|e| E::from(DbError::Type(e.to_string())))?
    }

    /// Checks that the database answers (for heartbeats). Blocking.
    pub fn ping(&self) -> Result<(), DbError> {
        self.transaction(|tx| tx.query("SELECT 1", &[]).map(drop))
    }

    /// Which backend this is, for logs and `node_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AssignmentDb::Sqlite(_) => "sqlite",
            AssignmentDb::Postgres(_) => "postgres",
        }
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds.
    pub fn transaction<T, E>(&self, f: impl FnOnce(&mut dyn SqlTx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match self {
            AssignmentDb::Sqlite(pool) => {
                let mut conn = pool.get().map_err(DbError::from)?;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let mut stx = SqliteTx(tx);
                let out = f(&mut stx)?;
                stx.0.commit().map_err(DbError::from)?;
                Ok(out)
            }
            AssignmentDb::Postgres(pool) => {
                let mut client = pool.get().map_err(DbError::from)?;
                let tx = client.transaction().map_err(DbError::from)?;
                let mut ptx = PgTx(tx);
                let out = f(&mut ptx)?;
                ptx.0.commit().map_err(DbError::from)?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres::config::SslMode;

    fn mode(url: &str) -> Result<SslMode, String> {
        postgres_connector(url)
            .map(|(c, _)| c.get_ssl_mode())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sslmode_maps_to_the_driver_and_keeps_other_parameters() {
        let base = "postgres://u:p@db.example:5433/sync";
        assert_eq!(mode(base), Ok(SslMode::Prefer));
        assert_eq!(
            mode(&format!("{base}?sslmode=disable")),
            Ok(SslMode::Disable)
        );
        assert_eq!(mode(&format!("{base}?sslmode=allow")), Ok(SslMode::Prefer));
        assert_eq!(
            mode(&format!("{base}?sslmode=require")),
            Ok(SslMode::Require)
        );
        let (config, _) = postgres_connector(&format!(
            "{base}?connect_timeout=7&sslmode=verify-ca&application_name=x"
        ))
        .unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_dbname(), Some("sync"));
    }

    #[test]
    fn bad_tls_settings_are_named() {
        let base = "postgres://u@db.example/sync";
        let err = mode(&format!("{base}?sslmode=always")).unwrap_err();
        assert!(err.contains("unknown sslmode \"always\""), "{err}");
        let err = mode(&format!("{base}?sslmode=require&sslcert=/c.pem")).unwrap_err();
        assert!(err.contains("sslcert is not supported"), "{err}");
        // The root file's name is percent-decoded, as libpq's URLs are.
        let err = mode(&format!(
            "{base}?sslmode=verify-full&sslrootcert=%2Fno%20such%2Fca.pem"
        ))
        .unwrap_err();
        assert!(err.contains("sslrootcert /no such/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = mode(&format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ))
        .unwrap_err();
        assert!(err.contains("no usable certificate"), "{err}");
    }
}
