//! The relay's workers: each runs batches back to back while rows keep coming, then waits for a
//! NOTIFY or the poll interval; together with housekeeping they are `tributary-relay outbox`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::batch::{process_batch, Session, Shard};
use super::database::{connector, Connector};
use super::{housekeeping, Database, OutboxSettings};
use crate::backoff::ExponentialBackoff;
use crate::metrics::RelayMetrics;
use crate::producer::EventProducer;

/// Relays until `shutdown` completes, with `workers` workers and the housekeeping task; then lets
/// the batches in flight finish. The table must have passed [`check_schema`](super::check_schema).
pub async fn relay(
    database: Database,
    settings: Arc<OutboxSettings>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<RelayMetrics>,
    workers: u16,
    shutdown: impl Future<Output = ()>,
) {
    let pool = WorkerPool::start(workers, connector(database.clone()), settings.clone(), producer.clone(), metrics.clone());
    let housekeeping = tokio::spawn(housekeeping::run(database, settings.clone(), producer, metrics, pool.wakers(), pool.stopping()));
    info!(table = %settings.statements.table, workers, "relaying outbox");
    shutdown.await;
    info!("shutting down: finishing in-flight batches");
    pool.stop().await;
    housekeeping.abort();
}

/// Workers, one per shard of the aggregates, and what wakes them from an idle wait.
pub struct WorkerPool {
    wakers: Vec<Arc<Notify>>,
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl WorkerPool {
    /// Starts `count` workers.
    pub fn start(
        count: u16,
        connect: Connector,
        settings: Arc<OutboxSettings>,
        producer: Arc<dyn EventProducer>,
        metrics: Arc<RelayMetrics>,
    ) -> Self {
        let (stop, stopping) = watch::channel(false);
        let wakers: Vec<Arc<Notify>> = (0..count).map(|_| Arc::new(Notify::new())).collect();
        let workers = wakers
            .iter()
            .enumerate()
            .map(|(index, wake)| {
                tokio::spawn(run_worker(
                    Shard::of_worker(index, wakers.len()),
                    connect.clone(),
                    settings.clone(),
                    producer.clone(),
                    metrics.clone(),
                    wake.clone(),
                    stopping.clone(),
                ))
            })
            .collect();
        WorkerPool { wakers, workers, stop }
    }

    /// One per worker: notifying all of them ends their idle waits (an insert was NOTIFYed).
    pub fn wakers(&self) -> Vec<Arc<Notify>> {
        self.wakers.clone()
    }

    /// Turns true once the pool is stopping.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Lets every worker finish the batch it has in flight, then returns.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for worker in self.workers {
            // A worker that panicked has nothing left to finish.
            let _ = worker.await;
        }
    }
}

/// Runs one worker until shutdown: batches back to back while rows keep coming, then waits for a
/// NOTIFY or the poll interval. Reconnects and backs off on failure.
async fn run_worker(
    shard: Shard,
    connect: Connector,
    settings: Arc<OutboxSettings>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<RelayMetrics>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker = shard.index;
    let mut client: Option<Session> = None;
    let mut backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(30));
    while !*shutdown.borrow() {
        let connection = match client.as_mut() {
            Some(connection) if !connection.is_closed() => connection,
            _ => match open_session(&connect, &settings).await {
                Ok(connection) => {
                    metrics.set_database_ready(true);
                    metrics.set_schema_problem(None);
                    client.insert(connection)
                }
                Err(error) => {
                    metrics.set_database_ready(false);
                    match schema_problem(&error, &settings) {
                        Some(problem) => {
                            warn!(worker, %problem, "cannot relay the outbox table; checking again");
                            metrics.set_schema_problem(Some(problem));
                        }
                        None => warn!(worker, %error, "cannot connect to the database; retrying"),
                    }
                    sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
                    continue;
                }
            },
        };
        match process_batch(connection, &settings, shard, producer.as_ref(), &metrics).await {
            Ok(outcome) if outcome.kafka_unavailable => {
                metrics.set_kafka_ready(false);
                sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
            }
            // Records the producer gave up on for another's sake: nothing is wrong with Kafka
            // (it answered), the rows go again after a short pause.
            Ok(outcome) if outcome.aborted => {
                metrics.set_database_ready(true);
                sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
            }
            Ok(outcome) => {
                // An empty batch says nothing about Kafka; housekeeping probes it when idle.
                if outcome.claimed > 0 {
                    metrics.set_kafka_ready(true);
                }
                metrics.set_database_ready(true);
                backoff.reset();
                if outcome.claimed < usize::try_from(settings.batch_size).unwrap_or(usize::MAX) {
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(settings.poll_interval) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            Err(error) => {
                metrics.set_database_ready(false);
                warn!(worker, %error, "outbox batch failed; reconnecting");
                client = None;
                sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await;
            }
        }
    }
    info!(worker, "worker stopped");
}

/// A worker's connection. Its prepared statements are planned for each execution: a plan cached
/// while the outbox was empty (sequential scans are cheapest then) would stay when a backlog
/// builds up. Without synchronous cleanup its commits return once written, not flushed. A
/// transaction it leaves idle too long ends its session (see
/// [`OutboxSettings::transaction_idle_timeout`]).
pub async fn connect_worker(connect: &Connector, settings: &OutboxSettings) -> Result<Client, tokio_postgres::Error> {
    let client = connect().await?;
    let idle_timeout = settings.transaction_idle_timeout().as_millis();
    client
        .batch_execute(&format!("SET plan_cache_mode = force_custom_plan; SET idle_in_transaction_session_timeout = {idle_timeout}"))
        .await?;
    if !settings.synchronous_cleanup {
        client.batch_execute("SET synchronous_commit = off").await?;
    }
    Ok(client)
}

/// What `/status` says when the table changed under the relay (renamed, a column dropped), as
/// the start-up check would.
fn schema_problem(error: &tokio_postgres::Error, settings: &OutboxSettings) -> Option<String> {
    use tokio_postgres::error::SqlState;
    let error = error.as_db_error().filter(|error| [SqlState::UNDEFINED_TABLE, SqlState::UNDEFINED_COLUMN].contains(error.code()))?;
    Some(format!(
        "outbox table {}: {} (check the column flags, or run `tributary-relay migrate`)",
        settings.statements.table,
        error.message()
    ))
}

async fn open_session(connect: &Connector, settings: &OutboxSettings) -> Result<Session, tokio_postgres::Error> {
    Session::prepare(connect_worker(connect, settings).await?, settings).await
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}
