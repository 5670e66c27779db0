//! TLS to the outbox's database, as libpq's `sslmode` asks for it, with rustls (and the `ring`
//! provider the workspace already uses). The CA and client files are read for every new
//! connection, so a rotated certificate (a Secret the kubelet updated) is used from the next
//! connection on, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values the relay takes (`allow` is not one: it would try plain text first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, plain text when it does not (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked unless a CA is given (libpq checks
    /// the chain then, as with `verify-ca`).
    Require,
    /// TLS, and the server's certificate must chain to the CA.
    VerifyCa,
    /// As `verify-ca`, and the certificate must also name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 5] = [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates: with `Require` it never sends anything but the TLS request
    /// in plain text, and gives up when the server answers that it has no TLS.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The mode tokio-postgres parsed from a URL it understood on its own (one of the first three).
    pub fn of_negotiation(mode: tokio_postgres::config::SslMode) -> Self {
        match mode {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = TlsError;

    fn from_str(text: &str) -> Result<Self, TlsError> {
        SslMode::ALL.into_iter().find(|mode| mode.as_str() == text).ok_or_else(|| TlsError::UnknownMode(text.to_owned()))
    }
}

/// The files of libpq's `sslrootcert`, `sslcert` and `sslkey`, all PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// Client certificate (chain) presented to the server, which may ask for one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// These files, each replaced by `other`'s where `other` names one.
    pub fn overridden_by(self, other: TlsFiles) -> TlsFiles {
        TlsFiles {
            root_cert: other.root_cert.or(self.root_cert),
            client_cert: other.client_cert.or(self.client_cert),
            client_key: other.client_key.or(self.client_key),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error(
        "sslmode={0} checks the server's certificate, which needs the CA certificate(s) it is signed with: sslrootcert in the URL or --database-ca-file"
    )]
    NoRootCert(SslMode),
    #[error(
        "a client certificate and its key go together: give sslcert and sslkey (or --database-cert-file and --database-key-file) both"
    )]
    HalfClientIdentity,
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} {} holds no PEM {expected}", path.display())]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("the CA certificate file {} holds no usable CA certificate: {source}", path.display())]
    BadRootCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate or key cannot be used: {0}")]
    BadClientIdentity(#[source] rustls::Error),
    #[error("cannot check certificates: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// How connections to one database are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub files: TlsFiles,
}

impl TlsSettings {
    /// The settings, if they can work: checking modes need a CA, and a client certificate needs
    /// its key. The files are read once here, so that a missing or broken one is reported at
    /// start rather than at every connection attempt.
    pub fn new(mode: SslMode, files: TlsFiles) -> Result<Self, TlsError> {
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && files.root_cert.is_none() {
            return Err(TlsError::NoRootCert(mode));
        }
        if files.client_cert.is_some() != files.client_key.is_some() {
            return Err(TlsError::HalfClientIdentity);
        }
        let settings = TlsSettings { mode, files };
        settings.client_config()?;
        Ok(settings)
    }

    /// A rustls configuration from the files as they are now.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(TlsError::Config)?;
        // Without TLS no file is read (tokio-postgres wants a configuration all the same).
        let unused = TlsFiles::default();
        let files = if self.mode == SslMode::Disable { &unused } else { &self.files };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, files.root_cert.as_deref()) {
            (SslMode::VerifyFull, Some(path)) => {
                WebPkiServerVerifier::builder_with_provider(Arc::new(read_roots(path)?), provider).build().map_err(TlsError::Verifier)?
            }
            (_, root_cert) => Arc::new(HostAgnostic {
                roots: root_cert.map(read_roots).transpose()?,
                algorithms: provider.signature_verification_algorithms,
            }),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        match (&files.client_cert, &files.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates(cert, "client certificate file")?, read_key(key)?)
                .map_err(TlsError::BadClientIdentity),
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_owned(), source };
    let certificates = CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<Vec<_>, _>>().map_err(read)?;
    if certificates.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_owned(), expected: "certificate" });
    }
    Ok(certificates)
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, "CA certificate file")? {
        roots.add(certificate).map_err(|source| TlsError::BadRootCert { path: path.to_owned(), source })?;
    }
    Ok(roots)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "client key file";
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty { what: WHAT, path: path.to_owned(), expected: "private key" },
        source => TlsError::Read { what: WHAT, path: path.to_owned(), source },
    })
}

/// Every mode but `verify-full`, which rustls's own verifier serves. With `roots` (`verify-ca`,
/// and `prefer`/`require` given a CA, as libpq) the certificate must chain to them, whatever host
/// it names. Without (`prefer`, `require`) any certificate is taken: encrypted, but to whichever
/// server answers, libpq's meaning of these modes. Either way the handshake's signatures are
/// checked, so the session is with the holder of that certificate's key.
#[derive(Debug)]
struct HostAgnostic {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for HostAgnostic {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let certificate = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&certificate, roots, intermediates, now, self.algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS for one database: each connection reads the files again (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct MakeTls {
    settings: Arc<TlsSettings>,
}

impl MakeTls {
    pub fn new(settings: TlsSettings) -> Self {
        MakeTls { settings: Arc::new(settings) }
    }

    /// What to do about a certificate rustls refused in `error`, if that is what ended it
    /// (rustls's own words name the check that failed, not the file or the setting behind it).
    pub fn hint(&self, error: &tokio_postgres::Error) -> Option<String> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext, UnknownIssuer};
        // tokio-postgres keeps tokio-rustls's I/O error, which wraps rustls's.
        let io = std::error::Error::source(error)?.downcast_ref::<std::io::Error>()?;
        let rustls::Error::InvalidCertificate(refused) = io.get_ref()?.downcast_ref::<rustls::Error>()? else { return None };
        match refused {
            UnknownIssuer => self
                .settings
                .files
                .root_cert
                .as_ref()
                .map(|path| format!("the server's certificate is not signed by the CA certificate(s) in {}", path.display())),
            NotValidForName | NotValidForNameContext { .. } => Some(
                "sslmode=verify-full wants the host connected to among the certificate's names: connect by one of them, or use verify-ca"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// The stream of a connection made with [`MakeTls`], TLS or not.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = TlsStream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, TlsError> {
        let mut rustls = MakeRustlsConnect::new(self.settings.client_config()?);
        let Ok(connect) = <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut rustls, hostname);
        Ok(connect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_spellings_are_libpqs() {
        let spelled: Vec<String> = SslMode::ALL.iter().map(|mode| mode.as_str().parse::<SslMode>().expect("parses").to_string()).collect();
        assert_eq!(spelled, ["disable", "prefer", "require", "verify-ca", "verify-full"]);
        let error = "allow".parse::<SslMode>().expect_err("not taken");
        assert_eq!(error.to_string(), r#"sslmode "allow" is not one of disable, prefer, require, verify-ca, verify-full"#);
        assert_eq!(SslMode::default(), SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn modes_that_ask_for_tls_never_fall_back_to_plain_text() {
        use tokio_postgres::config::SslMode as Negotiation;
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(mode.negotiation(), Negotiation::Require, "{mode}");
        }
        assert_eq!(SslMode::Prefer.negotiation(), Negotiation::Prefer);
        assert_eq!(SslMode::Disable.negotiation(), Negotiation::Disable);
    }

    #[test]
    fn checking_modes_need_a_ca_and_a_client_certificate_needs_its_key() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let error = TlsSettings::new(mode, TlsFiles::default()).expect_err("no CA");
            assert!(error.to_string().contains("sslrootcert in the URL or --database-ca-file"), "{error}");
        }
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert!(TlsSettings::new(mode, TlsFiles::default()).is_ok(), "{mode}");
        }
        let unread = TlsFiles { root_cert: Some("/nonexistent/ca.crt".into()), ..TlsFiles::default() };
        assert!(TlsSettings::new(SslMode::Disable, unread).is_ok(), "without TLS no file is read");
        let half = TlsFiles { client_cert: Some("client.crt".into()), ..TlsFiles::default() };
        assert!(matches!(TlsSettings::new(SslMode::Require, half), Err(TlsError::HalfClientIdentity)));
    }

    #[test]
    fn unreadable_or_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.crt");
        let files = TlsFiles { root_cert: Some(missing.clone()), ..TlsFiles::default() };
        let error = TlsSettings::new(SslMode::VerifyFull, files).expect_err("no such file");
        assert!(error.to_string().starts_with(&format!("cannot read the CA certificate file {}: ", missing.display())), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM\n").expect("write");
        let files = TlsFiles { root_cert: Some(empty.clone()), ..TlsFiles::default() };
        let error = TlsSettings::new(SslMode::VerifyCa, files).expect_err("no certificate");
        assert_eq!(error.to_string(), format!("the CA certificate file {} holds no PEM certificate", empty.display()));
    }

    #[test]
    fn files_given_by_flag_replace_the_urls() {
        let url = TlsFiles { root_cert: Some("url-ca".into()), client_cert: Some("url-cert".into()), client_key: None };
        let flags = TlsFiles { root_cert: Some("flag-ca".into()), ..TlsFiles::default() };
        assert_eq!(
            url.overridden_by(flags),
            TlsFiles { root_cert: Some("flag-ca".into()), client_cert: Some("url-cert".into()), client_key: None }
        );
    }
}
