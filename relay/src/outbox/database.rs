//! Connecting to the outbox's database: once for a command, per worker, and patiently at start-up,
//! with TLS as the URL's `sslmode` says (see [`super::tls`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::{Client, Connection, Socket};
use tracing::warn;

use super::tls::{MakeTls, SslMode, TlsError, TlsFiles, TlsSettings, TlsStream};
use crate::backoff::ExponentialBackoff;

/// Why there is no connection; the text names the cause, never the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the database URL is invalid: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    #[error("the database URL is invalid: parameter {parameter} is not percent-encoded UTF-8")]
    InvalidParameter { parameter: &'static str },
    #[error("database TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to the database (sslmode={mode}): {}{}", with_causes(.source), hint.as_ref().map(|hint| format!(" ({hint})")).unwrap_or_default())]
    Unreachable {
        mode: SslMode,
        /// What to do about it, when the cause says.
        hint: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A connection as tokio-postgres hands it over, before anything drives it (to LISTEN on it).
pub type DatabaseConnection = Connection<Socket, TlsStream>;

/// The outbox's database: where it is, and how connections to it are secured.
#[derive(Debug, Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: MakeTls,
    mode: SslMode,
}

impl Database {
    /// Reads a PostgreSQL URL, with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
    /// its query; `files` that are set (the relay's flags) replace the URL's.
    pub fn new(url: &str, files: TlsFiles) -> Result<Self, ConnectError> {
        let (url, from_url) = take_tls_parameters(url)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(ConnectError::InvalidUrl)?;
        // tokio-postgres reads the first three modes itself (also from `key=value` strings).
        let mode = from_url.mode.unwrap_or_else(|| SslMode::of_negotiation(config.get_ssl_mode()));
        config.ssl_mode(mode.negotiation());
        let settings = TlsSettings::new(mode, from_url.files.overridden_by(files))?;
        Ok(Database { config, tls: MakeTls::new(settings), mode })
    }

    /// Connects, driving the connection in the background.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                warn!(%error, "database connection closed");
            }
        });
        Ok(client)
    }

    /// Connects, leaving the connection to the caller to drive.
    pub async fn open(&self) -> Result<(Client, DatabaseConnection), ConnectError> {
        self.open_session().await.map_err(|source| ConnectError::Unreachable { mode: self.mode, hint: self.tls.hint(&source), source })
    }

    /// As [`open`](Self::open), with tokio-postgres's error.
    async fn open_session(&self) -> Result<(Client, DatabaseConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// libpq's TLS parameters, which tokio-postgres does not know (or knows only in part).
#[derive(Debug, Default, PartialEq)]
struct TlsParameters {
    mode: Option<SslMode>,
    files: TlsFiles,
}

/// Takes libpq's TLS parameters out of a `postgres://` URL's query: the URL without them, and
/// them. Other URLs (`key=value` strings) are left to tokio-postgres.
fn take_tls_parameters(url: &str) -> Result<(Cow<'_, str>, TlsParameters), ConnectError> {
    let mut parameters = TlsParameters::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else { return Ok((Cow::Borrowed(url), parameters)) };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = |parameter: &'static str| {
            percent_decode_str(value).decode_utf8().map(Cow::into_owned).map_err(|_| ConnectError::InvalidParameter { parameter })
        };
        match key {
            "sslmode" => parameters.mode = Some(decoded("sslmode")?.parse()?),
            "sslrootcert" => parameters.files.root_cert = Some(decoded("sslrootcert")?.into()),
            "sslcert" => parameters.files.client_cert = Some(decoded("sslcert")?.into()),
            "sslkey" => parameters.files.client_key = Some(decoded("sslkey")?.into()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((Cow::Owned(url), parameters))
}

/// Connects, retrying with capped backoff: the database may come up after the relay (a sidecar
/// starts with its application), and exiting would restart-loop the application's pod.
pub async fn connect_when_reachable(database: &Database) -> Client {
    let mut backoff = ExponentialBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match database.connect().await {
            Ok(client) => return client,
            Err(error) => {
                let retry_in = backoff.next_delay();
                warn!(%error, retry_in = ?retry_in, "waiting for the database");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// An error and its causes, `a: b: c` (tokio-postgres keeps the useful part in the causes).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Opens a new database connection for a worker (driving it in the background).
pub type Connector = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<Client, tokio_postgres::Error>> + Send + Sync>;

/// A [`Connector`] for `database`.
pub fn connector(database: Database) -> Connector {
    use futures::FutureExt;
    Arc::new(move || {
        let database = database.clone();
        async move {
            let (client, connection) = database.open_session().await?;
            tokio::spawn(connection.map(drop));
            Ok(client)
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (url, parameters) = take_tls_parameters(
            "postgres://app:pw@db.example:5432/shop?sslmode=verify-full&application_name=relay&sslrootcert=%2Fetc%2Fca%20dir%2Fca.crt&sslcert=/c.crt&sslkey=/c.key",
        )
        .expect("valid");
        assert_eq!(url, "postgres://app:pw@db.example:5432/shop?application_name=relay");
        assert_eq!(
            parameters,
            TlsParameters {
                mode: Some(SslMode::VerifyFull),
                files: TlsFiles {
                    root_cert: Some(PathBuf::from("/etc/ca dir/ca.crt")),
                    client_cert: Some("/c.crt".into()),
                    client_key: Some("/c.key".into())
                },
            }
        );
        let (url, parameters) = take_tls_parameters("postgresql://db/shop?sslmode=require").expect("valid");
        assert_eq!((url.as_ref(), parameters.mode), ("postgresql://db/shop", Some(SslMode::Require)));
        let plain = "host=db user=app sslmode=require";
        assert_eq!(take_tls_parameters(plain).expect("valid"), (Cow::Borrowed(plain), TlsParameters::default()));
    }

    #[test]
    fn the_mode_is_the_urls_and_libpqs_default_otherwise() {
        let mode = |url: &str| Database::new(url, TlsFiles::default()).expect("valid").mode;
        assert_eq!(mode("postgres://db/shop"), SslMode::Prefer);
        assert_eq!(mode("postgres://db/shop?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("host=db sslmode=require"), SslMode::Require);
        let database = Database::new("postgres://db/shop?sslmode=require&connect_timeout=5", TlsFiles::default()).expect("valid");
        assert_eq!(database.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(database.config.get_connect_timeout(), Some(&Duration::from_secs(5)));
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let error = |url: &str| Database::new(url, TlsFiles::default()).expect_err("invalid").to_string();
        assert_eq!(
            error("postgres://db/shop?sslmode=allow"),
            r#"database TLS: sslmode "allow" is not one of disable, prefer, require, verify-ca, verify-full"#
        );
        assert!(error("postgres://db/shop?sslmode=verify-full").contains("needs the CA certificate(s)"));
        assert_eq!(
            error("postgres://db/shop?sslrootcert=%FF"),
            "the database URL is invalid: parameter sslrootcert is not percent-encoded UTF-8"
        );
        // A CA given by flag satisfies a checking mode of the URL (and is read at once).
        let flag = TlsFiles { root_cert: Some("/nonexistent/ca.crt".into()), ..TlsFiles::default() };
        let error = Database::new("postgres://db/shop?sslmode=verify-ca", flag).expect_err("no such file").to_string();
        assert!(error.starts_with("database TLS: cannot read the CA certificate file /nonexistent/ca.crt: "), "{error}");
    }
}
