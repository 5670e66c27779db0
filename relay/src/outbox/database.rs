//! Connecting to the outbox's database: once for a command, per worker, and patiently at start-up.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::warn;

use crate::backoff::ExponentialBackoff;

/// Why there is no connection; the text names the cause, never the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the database URL is invalid: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    #[error("cannot connect to the database: {}", with_causes(.0))]
    Unreachable(#[source] tokio_postgres::Error),
}

pub fn parse_database_url(url: &str) -> Result<tokio_postgres::Config, ConnectError> {
    url.parse().map_err(ConnectError::InvalidUrl)
}

/// Connects, driving the connection in the background.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, ConnectError> {
    let (client, connection) = config.connect(NoTls).await.map_err(ConnectError::Unreachable)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// Connects, retrying with capped backoff: the database may come up after the relay (a sidecar
/// starts with its application), and exiting would restart-loop the application's pod.
pub async fn connect_when_reachable(config: &tokio_postgres::Config) -> Client {
    let mut backoff = ExponentialBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match connect(config).await {
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

/// A [`Connector`] for a PostgreSQL URL, without TLS.
pub fn connector(url: String) -> Connector {
    use futures::FutureExt;
    Arc::new(move || {
        let url = url.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection.map(drop));
            Ok(client)
        }
        .boxed()
    })
}
