//! The command line: `migrate` and `outbox`. Every flag has an environment variable, which is how
//! the operator configures a relay container.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::{error, info, warn};
use tributary_common::logging::{self, LoggingArgs};
use tributary_common::server::{self, Readiness};

use crate::metrics::RelayMetrics;
use crate::outbox::record::{RecordSettings, Routing};
use crate::outbox::schema::{Columns, Ident, IdentError, PayloadFormat, Statements, Table};
use crate::outbox::{self, Cleanup, FailurePolicy, OutboxSettings};
use crate::producer::{EventProducer, ProducerSettings, RdKafkaProducer};

#[derive(Debug, Parser)]
#[command(name = "tributary-relay", version, about = "Tributary's data plane: the transactional-outbox relay")]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the outbox table, its indexes, the failed-rows table and the NOTIFY trigger (idempotent).
    Migrate(Box<MigrateArgs>),
    /// Relay outbox rows to Kafka until SIGTERM.
    Outbox(Box<OutboxArgs>),
    /// Benchmark: relay throughput and commit→ack latency against a real database and broker,
    /// beside PostgreSQL-only and Kafka-only baselines; prints name=value lines.
    Bench(Box<crate::bench::BenchArgs>),
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db.
    #[arg(long, env = "TRIBUTARY_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Outbox table, optionally schema-qualified.
    #[arg(long, env = "TRIBUTARY_OUTBOX_TABLE", default_value = "outbox")]
    pub table: String,
    #[arg(long, env = "TRIBUTARY_COLUMN_ID", default_value = "id")]
    pub column_id: String,
    #[arg(long, env = "TRIBUTARY_COLUMN_AGGREGATE_TYPE", default_value = "aggregatetype")]
    pub column_aggregate_type: String,
    #[arg(long, env = "TRIBUTARY_COLUMN_AGGREGATE_ID", default_value = "aggregateid")]
    pub column_aggregate_id: String,
    #[arg(long, env = "TRIBUTARY_COLUMN_TYPE", default_value = "type")]
    pub column_type: String,
    #[arg(long, env = "TRIBUTARY_COLUMN_PAYLOAD", default_value = "payload")]
    pub column_payload: String,
    /// Optional jsonb column of extra headers.
    #[arg(long, env = "TRIBUTARY_COLUMN_HEADERS")]
    pub column_headers: Option<String>,
    /// Optional column naming each row's topic.
    #[arg(long, env = "TRIBUTARY_COLUMN_TOPIC")]
    pub column_topic: Option<String>,
    /// Optional commit-time column (CloudEvents `time`, commit→ack latency).
    #[arg(long, env = "TRIBUTARY_COLUMN_CREATED_AT")]
    pub column_created_at: Option<String>,
    /// json (json/jsonb column) or binary (bytea column).
    #[arg(long, env = "TRIBUTARY_PAYLOAD_FORMAT", value_enum, default_value_t = PayloadFormatArg::Json)]
    pub payload_format: PayloadFormatArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PayloadFormatArg {
    Json,
    Binary,
}

impl TableArgs {
    fn statements(&self) -> Result<Statements, IdentError> {
        let optional = |name: &Option<String>| name.as_deref().map(|n| Ident::new("column", n)).transpose();
        let columns = Columns {
            id: Ident::new("column", &self.column_id)?,
            aggregate_type: Ident::new("column", &self.column_aggregate_type)?,
            aggregate_id: Ident::new("column", &self.column_aggregate_id)?,
            event_type: Ident::new("column", &self.column_type)?,
            payload: Ident::new("column", &self.column_payload)?,
            headers: optional(&self.column_headers)?,
            topic: optional(&self.column_topic)?,
            created_at: optional(&self.column_created_at)?,
        };
        let format = match self.payload_format {
            PayloadFormatArg::Json => PayloadFormat::Json,
            PayloadFormatArg::Binary => PayloadFormat::Binary,
        };
        Statements::new(Table::parse(&self.table)?, columns, format)
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// librdkafka properties file with SASL/TLS settings.
    #[arg(long, env = "TRIBUTARY_KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,
    /// Route an aggregate type to a topic: `Order=shop.orders` (repeatable; env: comma-separated).
    #[arg(long = "route", env = "TRIBUTARY_ROUTES", value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<(String, String)>,
    /// Topic for aggregate types without a route: `<prefix><aggregatetype>`.
    #[arg(long, env = "TRIBUTARY_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// CloudEvents `source` of the published events.
    #[arg(long, env = "TRIBUTARY_CLOUDEVENTS_SOURCE", default_value = "/tributary/outbox")]
    pub source: String,
    /// Rows per batch.
    #[arg(long, env = "TRIBUTARY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10000))]
    pub batch_size: i64,
    /// Poll interval when no NOTIFY arrives.
    #[arg(long, env = "TRIBUTARY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Concurrent claim→publish→delete transactions (pipelining).
    #[arg(long, env = "TRIBUTARY_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// delete (default) or mark published rows.
    #[arg(long, env = "TRIBUTARY_CLEANUP", value_enum, default_value_t = CleanupArg::Delete)]
    pub cleanup: CleanupArg,
    /// With --cleanup mark: how long published rows are kept.
    #[arg(long, env = "TRIBUTARY_CLEANUP_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub cleanup_retention: Duration,
    /// block (keep order: the aggregate waits) or skip (move the row aside).
    #[arg(long, env = "TRIBUTARY_FAILURE_POLICY", value_enum, default_value_t = FailurePolicyArg::Block)]
    pub failure_policy: FailurePolicyArg,
    /// Attempts before a row counts as failed.
    #[arg(long, env = "TRIBUTARY_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub max_attempts: i32,
    /// First retry delay of a failing row; doubles per attempt.
    #[arg(long, env = "TRIBUTARY_RETRY_INITIAL_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial_delay: Duration,
    /// Longest retry delay of a failing row.
    #[arg(long, env = "TRIBUTARY_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// Wait for PostgreSQL to flush each batch's cleanup (delete or mark) to disk before going on.
    /// Off by default: only a database crash can undo a cleanup, and undoing it re-sends rows
    /// Kafka already has (same ce_id) — nothing is lost — while the flush costs every batch an
    /// fsync. Rows' own inserts are the application's commits and keep its durability.
    #[arg(long, env = "TRIBUTARY_SYNCHRONOUS_CLEANUP")]
    pub synchronous_cleanup: bool,
    /// Largest record sent (librdkafka message.max.bytes); larger rows fail without being sent.
    #[arg(long, env = "TRIBUTARY_MAX_RECORD_BYTES", default_value_t = 1_000_000)]
    pub max_record_bytes: usize,
    /// How long Kafka may take to acknowledge before the batch is retried.
    #[arg(long, env = "TRIBUTARY_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// Address serving /metrics, /healthz, /readyz and /status.
    #[arg(long, env = "TRIBUTARY_LISTEN_ADDRESS", default_value = "0.0.0.0:8081")]
    pub listen_address: SocketAddr,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CleanupArg {
    Delete,
    Mark,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailurePolicyArg {
    Block,
    Skip,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    tributary_api::duration::parse(text).map_err(|error| error.to_string())
}

fn parse_route(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((aggregate_type, topic)) if !aggregate_type.is_empty() && !topic.is_empty() => {
            Ok((aggregate_type.to_owned(), topic.to_owned()))
        }
        _ => Err(format!("route {text:?} is not <aggregate type>=<topic>")),
    }
}

/// `host:port[,host:port…]` with numeric ports; anything else cannot work and is refused up front.
fn check_bootstrap_servers(servers: &str) -> Result<(), String> {
    for server in servers.split(',') {
        let valid = server.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            return Err(format!("bootstrap server {server:?} is not host:port"));
        }
    }
    Ok(())
}

/// Exit codes: 0 after a clean shutdown, 2 for configuration the relay cannot run with.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    logging::init(cli.logging.log_format);
    match cli.command {
        Command::Migrate(args) => {
            let statements = match args.table.statements() {
                Ok(statements) => statements,
                Err(error) => return Ok(usage_error(error)),
            };
            // A one-off command: an unreachable database is an error, not something to wait for.
            let connected = match parse_database_url(&args.table.database_url) {
                Ok(config) => connect(&config).await,
                Err(error) => Err(error),
            };
            let mut client = match connected {
                Ok(client) => client,
                Err(error) => return Ok(usage_error(error)),
            };
            outbox::migrate(&mut client, &statements).await?;
            info!(table = %statements.table, "outbox table migrated");
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox(args) => run_outbox(*args).await,
        Command::Bench(args) => crate::bench::run(*args).await,
    }
}

fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    error!("{error}");
    eprintln!("error: {error}");
    ExitCode::from(2)
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

/// Connects, driving the connection in the background; errors name the cause, never the password.
fn parse_database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    url.parse().map_err(|error| format!("the database URL is invalid: {error}"))
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, String> {
    let (client, connection) =
        config.connect(NoTls).await.map_err(|error| format!("cannot connect to the database: {}", with_causes(&error)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// Connects, retrying with capped backoff: the database may come up after the relay (a sidecar
/// starts with its application), and exiting would restart-loop the application's pod.
async fn connect_when_reachable(config: &tokio_postgres::Config) -> Client {
    let mut backoff = outbox::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match connect(config).await {
            Ok(client) => return client,
            Err(error) => {
                let retry_in = backoff.next();
                warn!(%error, retry_in = ?retry_in, "waiting for the database");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

async fn run_outbox(args: OutboxArgs) -> anyhow::Result<ExitCode> {
    let statements = match args.table.statements() {
        Ok(statements) => statements,
        Err(error) => return Ok(usage_error(error)),
    };
    if let Err(error) = check_bootstrap_servers(&args.bootstrap_servers) {
        return Ok(usage_error(error));
    }
    let database_url = args.table.database_url.clone();
    let database = match parse_database_url(&database_url) {
        Ok(config) => config,
        Err(error) => return Ok(usage_error(error)),
    };
    let producer = RdKafkaProducer::new(&ProducerSettings {
        bootstrap_servers: args.bootstrap_servers.clone(),
        properties_file: args.kafka_properties_file.clone(),
        delivery_timeout: args.delivery_timeout,
        max_record_bytes: args.max_record_bytes,
    });
    let producer: Arc<dyn EventProducer> = match producer {
        Ok(producer) => Arc::new(producer),
        Err(error) => return Ok(usage_error(error)),
    };
    let settings = Arc::new(OutboxSettings {
        record: RecordSettings {
            routing: Routing { routes: args.routes.iter().cloned().collect(), topic_prefix: args.topic_prefix.clone() },
            format: statements.format,
            source: args.source.clone(),
            max_record_bytes: args.max_record_bytes,
        },
        statements,
        batch_size: args.batch_size,
        poll_interval: args.poll_interval,
        cleanup: match args.cleanup {
            CleanupArg::Delete => Cleanup::Delete,
            CleanupArg::Mark => Cleanup::Mark { retention: args.cleanup_retention },
        },
        failure_policy: match args.failure_policy {
            FailurePolicyArg::Block => FailurePolicy::Block,
            FailurePolicyArg::Skip => FailurePolicy::Skip,
        },
        max_attempts: args.max_attempts,
        retry_initial: args.retry_initial_delay,
        retry_max: args.retry_max_delay,
        synchronous_cleanup: args.synchronous_cleanup,
    });

    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Arc::new(RelayMetrics::register(&mut registry, readiness.clone()));
    let listen_address = args.listen_address;
    let status = crate::metrics::status_routes(metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = server::serve_with(listen_address, Arc::new(registry), readiness, status).await {
            error!(%error, %listen_address, "the /metrics, /healthz, /readyz and /status server stopped");
        }
    });

    // Not ready until it is connected; /healthz answers meanwhile.
    let client = tokio::select! {
        client = connect_when_reachable(&database) => client,
        () = wait_for_shutdown_signal() => return Ok(ExitCode::SUCCESS),
    };
    if let Err(problem) = outbox::check_schema(&client, &settings.statements).await {
        return Ok(usage_error(problem));
    }
    drop(client);

    let (shutdown_tx, shutdown) = watch::channel(false);
    let wakers: Vec<Arc<Notify>> = (0..args.workers).map(|_| Arc::new(Notify::new())).collect();
    let connector = outbox::connector(database_url.clone());
    let mut workers = Vec::new();
    for (index, wake) in wakers.iter().enumerate() {
        workers.push(tokio::spawn(outbox::run_worker(
            outbox::Shard::of_worker(index, wakers.len()),
            connector.clone(),
            settings.clone(),
            producer.clone(),
            metrics.clone(),
            wake.clone(),
            shutdown.clone(),
        )));
    }
    let housekeeping =
        tokio::spawn(housekeeping(database_url, settings.clone(), producer.clone(), metrics.clone(), wakers, shutdown.clone()));
    info!(table = %settings.statements.table, workers = args.workers, "relaying outbox");

    wait_for_shutdown_signal().await;
    info!("shutting down: finishing in-flight batches");
    let _ = shutdown_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    housekeeping.abort();
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// LISTENs for inserts (waking every worker), and every few seconds refreshes the pending-rows
/// gauge, probes Kafka when there is nothing to send and, with `mark` cleanup, prunes old
/// published rows. Reconnects on failure.
async fn housekeeping(
    url: String,
    settings: Arc<OutboxSettings>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<RelayMetrics>,
    wakers: Vec<Arc<Notify>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let statements = &settings.statements;
    while !*shutdown.borrow() {
        let (client, mut connection) = match tokio_postgres::connect(&url, NoTls).await {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let wakers = wakers.clone();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let listener = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(_) = message {
                    wakers.iter().for_each(|waker| waker.notify_one());
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_must_be_host_port() {
        assert!(check_bootstrap_servers("127.0.0.1:9092,kafka-1.kafka:9093").is_ok());
        for bad in ["localhost", "kafka:port", ":9092", "a:9092,", "kafka:0"] {
            assert!(check_bootstrap_servers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_parse_as_aggregate_type_and_topic() {
        assert_eq!(parse_route("Order=shop.orders"), Ok(("Order".into(), "shop.orders".into())));
        assert!(parse_route("Order").is_err() && parse_route("=x").is_err());
    }
}
