//! PostgreSQL connections: libpq-style URLs with `sslmode` and `sslrootcert` honoured
//! through rustls (no OpenSSL). Shared by the assignment database and the import from
//! Mozilla's servers, below both.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A PostgreSQL URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL's TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error("postgres TLS settings: {0}")]
    Tls(String),
    /// The URL itself is not valid.
    #[error("postgres: {}", message(.0))]
    Url(#[from] postgres::Error),
}

/// A PostgreSQL error with its causes (the crate's own text is only "db error" or
/// "error performing TLS handshake"; the why is in its sources).
pub fn message(e: &postgres::Error) -> String {
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
pub fn connector(url: &str) -> Result<(postgres::Config, MakeRustlsConnect), PgError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = PgTlsMode::Prefer;
    let mut root_file: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || -> Result<String, PgError> {
            let v: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={value}"))
                .map_err(|e| PgError::Tls(format!("{key}: {e}")))?;
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
                        return Err(PgError::Tls(format!(
                            "unknown sslmode {other:?}: use disable, prefer, require, \
                             verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => root_file = Some(decoded()?),
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" => {
                return Err(PgError::Tls(format!(
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
fn tls_config(mode: PgTlsMode, root_file: Option<String>) -> Result<rustls::ClientConfig, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?;
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
                        return Err(PgError::Tls(format!(
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
                        .map_err(|e| PgError::Tls(format!("sslrootcert {path}: {e}")))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(PgError::Tls(format!(
                            "sslrootcert {path}: no usable certificate in it"
                        )));
                    }
                }
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| PgError::Tls(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use postgres::config::SslMode;
    use std::time::Duration;

    fn mode(url: &str) -> Result<SslMode, String> {
        connector(url)
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
        let (config, _) = connector(&format!(
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
