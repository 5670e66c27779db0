//! Beside the workers: LISTEN for inserts (waking every worker), the pending-rows gauge, a Kafka
//! probe while there is nothing to send, and pruning of published rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::warn;

use super::{Cleanup, Database, OutboxSettings};
use crate::metrics::RelayMetrics;
use crate::producer::EventProducer;

/// LISTENs for inserts (waking every worker), and every few seconds refreshes the pending-rows
/// gauge, probes Kafka when there is nothing to send and, with `mark` cleanup, prunes old
/// published rows. Reconnects on failure.
pub(super) async fn run(
    database: Database,
    settings: Arc<OutboxSettings>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<RelayMetrics>,
    wakers: Vec<Arc<Notify>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let statements = &settings.statements;
    while !*shutdown.borrow() {
        let (client, connection) = match database.open().await {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let listener = wake_workers_on_notify(connection, wakers.clone());
        if let Err(error) = client.batch_execute(&format!("LISTEN \"{}\"", statements.channel)).await {
            warn!(%error, "LISTEN failed; polling only until reconnected");
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            match client.query_one(&statements.count_pending, &[]).await {
                Ok(row) => {
                    let pending = row.get::<_, i64>(0);
                    metrics.set_pending(pending);
                    // With rows pending, the workers' batches tell whether Kafka takes them.
                    if pending == 0 {
                        metrics.set_kafka_ready(producer.reachable().await);
                    }
                }
                Err(error) => {
                    warn!(%error, "housekeeping query failed; reconnecting");
                    break;
                }
            }
            if let Cleanup::Mark { retention } = settings.cleanup {
                if let Err(error) = client.execute(&statements.prune_published, &[&retention.as_secs_f64()]).await {
                    warn!(%error, "pruning published rows failed");
                }
            }
        }
        listener.abort();
    }
}

/// Drives `connection` (a session that will `LISTEN` on the outbox's channel) and wakes every
/// worker on each notification, until the connection ends.
pub fn wake_workers_on_notify<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wakers: Vec<Arc<Notify>>,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                wakers.iter().for_each(|waker| waker.notify_one());
            }
        }
    })
}
