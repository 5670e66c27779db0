//! The command line: `migrate`, `outbox`, `outbox-release` and `dispatch`. It parses and wires;
//! the modules do the work. Every flag has an environment variable, which is how the operator
//! configures a relay container.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio_postgres::Client;
use tracing::info;
use tributary_api::outbox_relay::{CleanupMode, FailurePolicy, Partitioner, PayloadFormat};
use tributary_api::relay_contract::{env, DISPATCH_COMMAND, DISPATCH_PORT, OUTBOX_COMMAND, OUTBOX_PORT};
use tributary_api::subscription::{Backoff, Ordering};
use tributary_common::logging::{self, LoggingArgs};
use tributary_common::server::{self, Readiness};
use tributary_common::shutdown::Shutdown;

use crate::metrics::RelayMetrics;
use crate::outbox::record::{RecordSettings, Routing};
use crate::outbox::schema::{Columns, Ident, IdentError, Statements, Table};
use crate::outbox::tls::TlsFiles;
use crate::outbox::{self, Cleanup, OnSchemaProblem, OutboxSettings, SchemaProblem};
use crate::producer::{EventProducer, ProducerSettings, RdKafkaProducer};

#[derive(Debug, Parser)]
#[command(name = "tributary-relay", version, about = "Tributary's data plane: the transactional-outbox relay and the push dispatcher")]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the outbox table, its indexes, the failed-rows table and the NOTIFY trigger, or add
    /// the relay's columns and the optional ones the flags name to an existing table (idempotent;
    /// never drops, converts or rewrites data).
    Migrate(Box<MigrateArgs>),
    /// Relay outbox rows to Kafka until SIGTERM.
    #[command(name = OUTBOX_COMMAND)]
    Outbox(Box<OutboxArgs>),
    /// Release rows held by `--failure-policy block` (failed for good, holding back their
    /// aggregate): they are pending again with fresh attempts, and a running relay publishes them.
    /// Prints how many rows were released.
    OutboxRelease(Box<ReleaseArgs>),
    /// Push dispatcher: consume topics as a group and POST every record to an HTTP sink until SIGTERM.
    #[command(name = DISPATCH_COMMAND)]
    Dispatch(Box<DispatchArgs>),
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db?sslmode=verify-full. Its sslmode
    /// (disable, prefer (the default), require, verify-ca, verify-full), sslrootcert, sslcert and
    /// sslkey mean what they mean to libpq.
    #[arg(long, env = env::DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// PEM file of the CA certificate(s) the database server's certificate must chain to, as the
    /// URL's sslrootcert (which it replaces); sslmode says whether it is checked.
    #[arg(long, env = env::DATABASE_CA_FILE)]
    pub database_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate shown to the database, as the URL's sslcert (which it
    /// replaces); needs --database-key-file.
    #[arg(long, env = env::DATABASE_CERT_FILE)]
    pub database_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key, as the URL's sslkey (which it replaces).
    #[arg(long, env = env::DATABASE_KEY_FILE)]
    pub database_key_file: Option<PathBuf>,
    /// Outbox table, optionally schema-qualified.
    #[arg(long, env = env::OUTBOX_TABLE, default_value = "outbox")]
    pub table: String,
    /// Column of the event id (published as CloudEvents `id`).
    #[arg(long, env = env::COLUMN_ID, default_value = "id")]
    pub column_id: String,
    /// Column of the aggregate type, which --route maps to a topic.
    #[arg(long, env = env::COLUMN_AGGREGATE_TYPE, default_value = "aggregatetype")]
    pub column_aggregate_type: String,
    /// Column of the aggregate id: the record key, and the unit of ordering.
    #[arg(long, env = env::COLUMN_AGGREGATE_ID, default_value = "aggregateid")]
    pub column_aggregate_id: String,
    /// Column of the event type (published as CloudEvents `type`).
    #[arg(long, env = env::COLUMN_TYPE, default_value = "type")]
    pub column_type: String,
    /// Column of the payload, the record value (see --payload-format).
    #[arg(long, env = env::COLUMN_PAYLOAD, default_value = "payload")]
    pub column_payload: String,
    /// Optional jsonb column of extra record headers (a JSON object of strings); migrate adds it.
    #[arg(long, env = env::COLUMN_HEADERS)]
    pub column_headers: Option<String>,
    /// Optional text column naming each row's topic (wins over --route); migrate adds it.
    #[arg(long, env = env::COLUMN_TOPIC)]
    pub column_topic: Option<String>,
    /// Optional timestamptz commit-time column (CloudEvents `time`, commit→ack latency); migrate
    /// adds it, existing rows getting the time of the migration.
    #[arg(long, env = env::COLUMN_CREATED_AT)]
    pub column_created_at: Option<String>,
    /// json (json/jsonb column) or binary (bytea column).
    #[arg(long, env = env::PAYLOAD_FORMAT, value_enum, default_value_t = PayloadFormat::Json)]
    pub payload_format: PayloadFormat,
}

impl TableArgs {
    fn database(&self) -> Result<outbox::Database, outbox::ConnectError> {
        let files = TlsFiles {
            root_cert: self.database_ca_file.clone(),
            client_cert: self.database_cert_file.clone(),
            client_key: self.database_key_file.clone(),
        };
        outbox::Database::new(&self.database_url, files)
    }

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
        Statements::new(Table::parse(&self.table)?, columns, self.payload_format)
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("rows").required(true).args(["aggregate", "all"])))]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Release the held rows of this aggregate (a value of the aggregate id column).
    #[arg(long)]
    pub aggregate: Option<String>,
    /// Release the held rows of every aggregate.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = env::BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
    /// librdkafka properties file with SASL/TLS settings.
    #[arg(long, env = env::KAFKA_PROPERTIES_FILE)]
    pub kafka_properties_file: Option<PathBuf>,
    /// Route an aggregate type to a topic: `Order=shop.orders` (repeatable; env: comma-separated).
    #[arg(long = "route", env = env::ROUTES, value_delimiter = ',', value_parser = parse_route)]
    pub routes: Vec<(String, String)>,
    /// Topic for aggregate types without a route: `<prefix><aggregatetype>`.
    #[arg(long, env = env::TOPIC_PREFIX)]
    pub topic_prefix: Option<String>,
    /// CloudEvents `source` of the published events.
    #[arg(long, env = env::CLOUDEVENTS_SOURCE, default_value = "/tributary/outbox")]
    pub source: String,
    /// Rows per batch.
    #[arg(long, env = env::BATCH_SIZE, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10000))]
    pub batch_size: i64,
    /// Poll interval when no NOTIFY arrives.
    #[arg(long, env = env::POLL_INTERVAL, default_value = "1s", value_parser = tributary_api::duration::parse)]
    pub poll_interval: Duration,
    /// Concurrent claim→publish→delete transactions (pipelining).
    #[arg(long, env = "TRIBUTARY_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// delete (default) or mark published rows.
    #[arg(long, env = env::CLEANUP, value_enum, default_value_t = CleanupMode::Delete)]
    pub cleanup: CleanupMode,
    /// With --cleanup mark: how long published rows are kept.
    #[arg(long, env = env::CLEANUP_RETENTION, default_value = "7d", value_parser = tributary_api::duration::parse)]
    pub cleanup_retention: Duration,
    /// block (keep order: the aggregate waits) or skip (move the row aside).
    #[arg(long, env = env::FAILURE_POLICY, value_enum, default_value_t = FailurePolicy::Block)]
    pub failure_policy: FailurePolicy,
    /// Attempts before a row counts as failed.
    #[arg(long, env = env::MAX_ATTEMPTS, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub max_attempts: i32,
    /// First retry delay of a failing row; doubles per attempt.
    #[arg(long, env = "TRIBUTARY_RETRY_INITIAL_DELAY", default_value = "1s", value_parser = tributary_api::duration::parse)]
    pub retry_initial_delay: Duration,
    /// Longest retry delay of a failing row.
    #[arg(long, env = "TRIBUTARY_RETRY_MAX_DELAY", default_value = "5m", value_parser = tributary_api::duration::parse)]
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
    #[arg(long, env = "TRIBUTARY_DELIVERY_TIMEOUT", default_value = "30s", value_parser = tributary_api::duration::parse)]
    pub delivery_timeout: Duration,
    /// How a record's partition follows from its key (the aggregate id): murmur2_random as Kafka's
    /// Java producer (Debezium, Kafka Connect), consistent_random as librdkafka's default, or
    /// fnv1a_random as Sarama.
    #[arg(long, env = env::PARTITIONER, value_enum, default_value_t = Partitioner::Murmur2Random)]
    pub partitioner: Partitioner,
    /// When the table cannot be relayed (missing, a column missing or of a type the relay cannot
    /// read): keep running, report it on /status and check again until it can, instead of exiting
    /// with code 2. The operator sets it.
    #[arg(long, env = env::WAIT_FOR_SCHEMA)]
    pub wait_for_schema: bool,
    /// Address serving /metrics, /healthz, /readyz and /status.
    #[arg(long, env = env::LISTEN_ADDRESS, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, OUTBOX_PORT)))]
    pub listen_address: SocketAddr,
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
        Command::Migrate(args) => run_migrate(&args.table).await,
        Command::Outbox(args) => run_outbox(*args).await,
        Command::OutboxRelease(args) => run_release(&args).await,
        Command::Dispatch(args) => run_dispatch(*args).await,
    }
}

/// The statements of a one-off command's table and a connection to its database, or the exit
/// code of what is wrong: an unreachable database is an error there, not something to wait for.
async fn statements_and_client(table: &TableArgs) -> Result<(Statements, Client), ExitCode> {
    let statements = table.statements().map_err(usage_error)?;
    let database = table.database().map_err(usage_error)?;
    let client = database.connect().await.map_err(usage_error)?;
    Ok((statements, client))
}

async fn run_migrate(table: &TableArgs) -> anyhow::Result<ExitCode> {
    let (statements, mut client) = match statements_and_client(table).await {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    match outbox::migrate(&mut client, &statements).await {
        Ok(added) if added.is_empty() => info!(table = %statements.table, "outbox table migrated"),
        Ok(added) => info!(table = %statements.table, added = %added.join(", "), "outbox table migrated; optional column(s) added"),
        Err(SchemaProblem::Relay(error)) => return Err(error.into()),
        Err(problem) => return Ok(usage_error(problem)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_release(args: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    let (statements, mut client) = match statements_and_client(&args.table).await {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    match outbox::check_schema(&client, &statements).await {
        Ok(_nullable) => {}
        Err(SchemaProblem::Relay(error)) => return Err(error.into()),
        Err(problem) => return Ok(usage_error(problem)),
    }
    let released = outbox::release_held(&mut client, &statements, args.aggregate.as_deref()).await?;
    match &args.aggregate {
        Some(aggregate) => println!("released {released} held row(s) of aggregate {aggregate:?} in {}", statements.table),
        None => println!("released {released} held row(s) in {}", statements.table),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a configuration error once (the log would repeat it) and gives exit code 2.
fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

async fn run_outbox(args: OutboxArgs) -> anyhow::Result<ExitCode> {
    // Listening from the start: a SIGTERM while the relay waits for its database is not missed.
    let shutdown = Shutdown::on_signals().context("cannot listen for SIGTERM")?;
    let statements = match args.table.statements() {
        Ok(statements) => statements,
        Err(error) => return Ok(usage_error(error)),
    };
    if let Err(error) = check_bootstrap_servers(&args.bootstrap_servers) {
        return Ok(usage_error(error));
    }
    let database = match args.table.database() {
        Ok(database) => database,
        Err(error) => return Ok(usage_error(error)),
    };
    // Before any work (librdkafka connects as soon as the producer exists).
    let listener = server::bind(args.listen_address).await?;
    let producer = RdKafkaProducer::new(&ProducerSettings {
        bootstrap_servers: args.bootstrap_servers.clone(),
        properties_file: args.kafka_properties_file.clone(),
        delivery_timeout: args.delivery_timeout,
        max_record_bytes: args.max_record_bytes,
        partitioner: args.partitioner,
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
            CleanupMode::Delete => Cleanup::Delete,
            CleanupMode::Mark => Cleanup::Mark { retention: args.cleanup_retention },
        },
        failure_policy: args.failure_policy,
        max_attempts: args.max_attempts,
        retry_initial: args.retry_initial_delay,
        retry_max: args.retry_max_delay,
        synchronous_cleanup: args.synchronous_cleanup,
        delivery_timeout: args.delivery_timeout,
    });

    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Arc::new(RelayMetrics::register(&mut registry, readiness.clone()));
    let status = crate::metrics::status_routes(metrics.clone());
    // Bound, it serves until the process ends (axum retries failed accepts).
    tokio::spawn(listener.serve_with(Arc::new(registry), readiness, status));

    // Not ready until it is connected; /healthz answers meanwhile.
    let on_problem = if args.wait_for_schema { OnSchemaProblem::Wait } else { OnSchemaProblem::Exit };
    let checked = tokio::select! {
        checked = outbox::check_schema_until_ready(&database, &settings.statements, &metrics, on_problem) => checked,
        () = shutdown.requested() => return Ok(ExitCode::SUCCESS),
    };
    if let Err(problem) = checked {
        return Ok(usage_error(problem));
    }
    outbox::relay(database, settings, producer, metrics, args.workers, shutdown.requested()).await;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// dispatch

#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = env::BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
    /// Topics to consume (comma-separated).
    #[arg(long, env = env::TOPICS, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// Consumer group id.
    #[arg(long, env = env::GROUP)]
    pub group: String,
    /// URL every record is POSTed to (http://host:port/path).
    #[arg(long, env = env::SINK)]
    pub sink: String,
    /// per-key: records of one key one at a time, in order; unordered: up to --concurrency at once.
    #[arg(long, env = env::ORDERING, value_enum, default_value_t = Ordering::PerKey)]
    pub ordering: Ordering,
    /// Deliveries in flight at once with --ordering unordered; per-key runs one per key (so only 1 is accepted there).
    #[arg(long, env = env::CONCURRENCY, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// With --ordering per-key: keys delivered at once (one connection to the sink each).
    #[arg(long, env = "TRIBUTARY_MAX_KEYS_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_keys_in_flight: u16,
    /// Delivery attempts before a record is dead-lettered, the first one included.
    #[arg(long, env = env::MAX_ATTEMPTS, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// How the delay between attempts grows.
    #[arg(long, env = env::BACKOFF, value_enum, default_value_t = Backoff::Exponential)]
    pub backoff: Backoff,
    /// Delay before the first retry.
    #[arg(long, env = env::INITIAL_DELAY, default_value = "100ms", value_parser = tributary_api::duration::parse)]
    pub initial_delay: Duration,
    /// Longest delay between attempts; a Retry-After from the sink is honoured up to it.
    #[arg(long, env = env::MAX_DELAY, default_value = "30s", value_parser = tributary_api::duration::parse)]
    pub max_delay: Duration,
    /// Topic records go to after their last failed attempt (or a response that is not retried).
    #[arg(long, env = env::DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,
    /// Deliver only records whose CloudEvents attribute matches: `type=prefix:orders.` (exact, prefix,
    /// suffix); repeatable, all must match (env: one per line).
    #[arg(long = "filter", env = env::FILTERS, value_delimiter = '\n')]
    pub filters: Vec<String>,
    /// Where to start in partitions the group has no committed offset for: earliest, latest or an
    /// RFC 3339 timestamp.
    #[arg(long, env = env::START_FROM, default_value = "latest", value_parser = crate::dispatch::StartFrom::parse)]
    pub start_from: crate::dispatch::StartFrom,
    /// librdkafka properties file with SASL/TLS settings.
    #[arg(long, env = env::KAFKA_PROPERTIES_FILE)]
    pub kafka_properties_file: Option<PathBuf>,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = env::LISTEN_ADDRESS, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, DISPATCH_PORT)))]
    pub listen_address: SocketAddr,
    /// Longest time one delivery attempt may take, connecting included.
    #[arg(long, env = "TRIBUTARY_REQUEST_TIMEOUT", default_value = "30s", value_parser = tributary_api::duration::parse)]
    pub request_timeout: Duration,
    /// Records held in memory (read and not yet done) before the dispatcher stops reading more.
    #[arg(long, env = "TRIBUTARY_MAX_BUFFERED_RECORDS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_buffered_records: u32,
    /// Bytes of records held in memory before the dispatcher stops reading more.
    #[arg(long, env = "TRIBUTARY_MAX_BUFFERED_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_buffered_bytes: u64,
    /// Largest dead letter sent (the original plus failure headers); a larger one, like one the
    /// broker refuses (beyond the dead-letter topic's max.message.bytes), is written truncated.
    #[arg(long, env = "TRIBUTARY_MAX_DEAD_LETTER_BYTES", default_value_t = 10 << 20, value_parser = clap::value_parser!(u64).range(1000..=1_000_000_000))]
    pub max_dead_letter_bytes: u64,
}

impl DispatchArgs {
    /// The dispatcher's settings, or what is wrong with the flags.
    pub fn settings(&self) -> Result<crate::dispatch::DispatchSettings, String> {
        use crate::dispatch::{ConsumerSettings, DispatchSettings, Filter, RetryPolicy, Sink};
        check_bootstrap_servers(&self.bootstrap_servers)?;
        let topics: Vec<String> =
            self.topics.iter().map(|topic| topic.trim()).filter(|topic| !topic.is_empty()).map(str::to_owned).collect();
        if topics.is_empty() {
            return Err("no topics to consume (--topics a,b)".into());
        }
        if self.group.trim().is_empty() {
            return Err("the consumer group (--group) is empty".into());
        }
        let dead_letter_topic = self.dead_letter_topic.trim();
        if dead_letter_topic.is_empty() {
            return Err("the dead-letter topic (--dead-letter-topic) is empty".into());
        }
        if topics.iter().any(|topic| topic == dead_letter_topic) {
            return Err(format!("the dead-letter topic {dead_letter_topic:?} is also consumed: failures would come back forever"));
        }
        if self.ordering == Ordering::PerKey && self.concurrency > 1 {
            return Err(format!(
                "--concurrency {} needs --ordering unordered; per-key runs one delivery per key (see --max-keys-in-flight)",
                self.concurrency
            ));
        }
        if self.initial_delay > self.max_delay {
            return Err(format!("--initial-delay {:?} exceeds --max-delay {:?}", self.initial_delay, self.max_delay));
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout must be above zero".into());
        }
        let filters = self
            .filters
            .iter()
            .map(|filter| filter.trim())
            .filter(|filter| !filter.is_empty())
            .map(Filter::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        Ok(DispatchSettings {
            consumer: ConsumerSettings {
                bootstrap_servers: self.bootstrap_servers.clone(),
                group: self.group.clone(),
                topics,
                properties_file: self.kafka_properties_file.clone(),
                start_from: self.start_from,
            },
            sink: Arc::new(Sink::parse(&self.sink).map_err(|error| error.to_string())?),
            lanes: usize::from(match self.ordering {
                Ordering::PerKey => self.max_keys_in_flight,
                Ordering::Unordered => self.concurrency,
            }),
            ordering: self.ordering,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                initial_delay: self.initial_delay,
                max_delay: self.max_delay,
            },
            dead_letter_topic: dead_letter_topic.to_owned(),
            filters,
            request_timeout: self.request_timeout,
            max_buffered_records: usize::try_from(self.max_buffered_records).unwrap_or(usize::MAX),
            max_buffered_bytes: usize::try_from(self.max_buffered_bytes).unwrap_or(usize::MAX),
        })
    }
}

async fn run_dispatch(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    use crate::dispatch::metrics::DispatchMetrics;
    use crate::dispatch::Dispatcher;
    let shutdown = Shutdown::on_signals().context("cannot listen for SIGTERM")?;
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(problem) => return Ok(usage_error(problem)),
    };
    // Before any work (librdkafka connects as soon as the producer exists).
    let listener = server::bind(args.listen_address).await?;
    let producer = RdKafkaProducer::new(&ProducerSettings {
        bootstrap_servers: args.bootstrap_servers.clone(),
        properties_file: args.kafka_properties_file.clone(),
        delivery_timeout: Duration::from_secs(30),
        max_record_bytes: usize::try_from(args.max_dead_letter_bytes).unwrap_or(usize::MAX),
        partitioner: Partitioner::default(),
    });
    let producer: Arc<dyn EventProducer> = match producer {
        Ok(producer) => Arc::new(producer),
        Err(error) => return Ok(usage_error(error)),
    };
    let readiness = Readiness::default();
    let mut registry = Registry::default();
    let metrics = Arc::new(DispatchMetrics::register(&mut registry, readiness.clone()));
    let dispatcher = match Dispatcher::new(settings, producer, metrics) {
        Ok(dispatcher) => dispatcher,
        Err(error) => return Ok(usage_error(error)),
    };
    tokio::spawn(listener.serve(Arc::new(registry), readiness));
    dispatcher.run(shutdown.watch()).await?;
    Ok(ExitCode::SUCCESS)
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
    fn every_flag_of_the_table_commands_has_help_text() {
        use clap::CommandFactory;
        let command = Cli::command();
        let mut undocumented = Vec::new();
        for name in ["migrate", "outbox", "outbox-release", "dispatch"] {
            let subcommand = command.find_subcommand(name).unwrap_or_else(|| panic!("subcommand {name}"));
            for arg in subcommand.get_arguments() {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                if help.trim().is_empty() {
                    undocumented.push(format!("{name} --{}", arg.get_long().unwrap_or(arg.get_id().as_str())));
                }
            }
        }
        assert_eq!(undocumented, Vec::<String>::new(), "flags without help text");
    }

    #[test]
    fn outbox_release_takes_one_aggregate_or_all() {
        let parse = |extra: &[&str]| {
            let words = ["tributary-relay", "outbox-release", "--database-url", "postgres://x@db/app"].iter().chain(extra);
            Cli::try_parse_from(words).map(|cli| match cli.command {
                Command::OutboxRelease(args) => (args.aggregate, args.all),
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(parse(&["--aggregate", "o-1"]).expect("parses"), (Some("o-1".to_owned()), false));
        assert_eq!(parse(&["--all"]).expect("parses"), (None, true));
        assert!(parse(&[]).is_err(), "which rows must be said");
        assert!(parse(&["--all", "--aggregate", "o-1"]).is_err(), "one or the other");
    }

    #[test]
    fn routes_parse_as_aggregate_type_and_topic() {
        assert_eq!(parse_route("Order=shop.orders"), Ok(("Order".into(), "shop.orders".into())));
        assert!(parse_route("Order").is_err() && parse_route("=x").is_err());
    }

    /// Parses `dispatch` with the required flags, `extra` (flag, value pairs) replacing or adding to them.
    fn dispatch_args(extra: &[&str]) -> Result<DispatchArgs, clap::Error> {
        let mut flags: Vec<(&str, &str)> = vec![
            ("--bootstrap-servers", "kafka:9092"),
            ("--topics", "shop.orders,shop.payments"),
            ("--group", "billing"),
            ("--sink", "http://127.0.0.1:8080/events"),
            ("--dead-letter-topic", "billing.dlq"),
        ];
        for pair in extra.chunks(2) {
            let (flag, value) = (pair[0], pair[1]);
            // --filter repeats; every other flag given twice would be a parse error.
            match flags.iter_mut().find(|(known, _)| *known == flag && flag != "--filter") {
                Some(known) => known.1 = value,
                None => flags.push((flag, value)),
            }
        }
        let words = ["tributary-relay", "dispatch"].into_iter().chain(flags.iter().flat_map(|(flag, value)| [*flag, *value]));
        match Cli::try_parse_from(words)?.command {
            Command::Dispatch(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn every_dispatch_flag_has_its_environment_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let dispatch = command.find_subcommand("dispatch").expect("dispatch subcommand");
        let mirrored: Vec<(String, String)> =
            dispatch.get_arguments().filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.get_env()?.to_str()?.to_owned()))).collect();
        let expected = [
            ("bootstrap-servers", "TRIBUTARY_BOOTSTRAP_SERVERS"),
            ("topics", "TRIBUTARY_TOPICS"),
            ("group", "TRIBUTARY_GROUP"),
            ("sink", "TRIBUTARY_SINK"),
            ("ordering", "TRIBUTARY_ORDERING"),
            ("concurrency", "TRIBUTARY_CONCURRENCY"),
            ("max-keys-in-flight", "TRIBUTARY_MAX_KEYS_IN_FLIGHT"),
            ("max-attempts", "TRIBUTARY_MAX_ATTEMPTS"),
            ("backoff", "TRIBUTARY_BACKOFF"),
            ("initial-delay", "TRIBUTARY_INITIAL_DELAY"),
            ("max-delay", "TRIBUTARY_MAX_DELAY"),
            ("dead-letter-topic", "TRIBUTARY_DEAD_LETTER_TOPIC"),
            ("filter", "TRIBUTARY_FILTERS"),
            ("start-from", "TRIBUTARY_START_FROM"),
            ("kafka-properties-file", "TRIBUTARY_KAFKA_PROPERTIES_FILE"),
            ("listen-address", "TRIBUTARY_LISTEN_ADDRESS"),
            ("request-timeout", "TRIBUTARY_REQUEST_TIMEOUT"),
            ("max-buffered-records", "TRIBUTARY_MAX_BUFFERED_RECORDS"),
            ("max-buffered-bytes", "TRIBUTARY_MAX_BUFFERED_BYTES"),
            ("max-dead-letter-bytes", "TRIBUTARY_MAX_DEAD_LETTER_BYTES"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(flag, env)| ((*flag).to_owned(), (*env).to_owned())).collect();
        assert_eq!(mirrored, expected);
        let unmirrored: Vec<&str> = dispatch
            .get_arguments()
            .filter(|arg| arg.get_long().is_some() && arg.get_env().is_none())
            .filter_map(|arg| arg.get_long())
            .collect();
        assert_eq!(unmirrored, Vec::<&str>::new());
    }

    #[test]
    fn dispatch_defaults_and_settings() {
        let settings = dispatch_args(&[]).expect("parses").settings().expect("valid");
        assert_eq!(settings.consumer.topics, ["shop.orders", "shop.payments"]);
        assert_eq!(settings.consumer.start_from, crate::dispatch::StartFrom::Latest);
        assert_eq!(settings.ordering, crate::dispatch::Ordering::PerKey);
        assert_eq!(settings.lanes, 64, "per-key: keys in flight");
        assert_eq!(
            settings.retry,
            crate::dispatch::RetryPolicy {
                max_attempts: 5,
                backoff: crate::dispatch::Backoff::Exponential,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(30)
            }
        );
        assert_eq!(settings.request_timeout, Duration::from_secs(30));
        assert!(settings.filters.is_empty());
        assert_eq!(dispatch_args(&[]).expect("parses").listen_address, "0.0.0.0:8082".parse().expect("address"));

        let args = dispatch_args(&[
            "--ordering",
            "unordered",
            "--concurrency",
            "32",
            "--backoff",
            "linear",
            "--initial-delay",
            "250ms",
            "--max-delay",
            "1m",
            "--filter",
            "type=prefix:orders.",
            "--filter",
            "subject=exact:o-1",
            "--start-from",
            "2026-01-02T03:04:05Z",
        ])
        .expect("parses");
        let settings = args.settings().expect("valid");
        assert_eq!((settings.ordering, settings.lanes), (crate::dispatch::Ordering::Unordered, 32));
        assert_eq!(settings.retry.backoff, crate::dispatch::Backoff::Linear);
        assert_eq!((settings.retry.initial_delay, settings.retry.max_delay), (Duration::from_millis(250), Duration::from_secs(60)));
        let filters: Vec<String> = settings.filters.iter().map(ToString::to_string).collect();
        assert_eq!(filters, ["type=prefix:orders.", "subject=exact:o-1"]);
        assert_eq!(settings.consumer.start_from, crate::dispatch::StartFrom::Timestamp(1_767_323_045_000));
    }

    #[test]
    fn bad_dispatch_configuration_names_the_cause() {
        let problem = |extra: &[&str]| dispatch_args(extra).expect("parses").settings().expect_err("invalid");
        assert!(problem(&["--concurrency", "4"]).contains("needs --ordering unordered"));
        assert!(problem(&["--initial-delay", "1m", "--max-delay", "1s"]).contains("exceeds --max-delay"));
        assert!(problem(&["--filter", "type=orders"]).contains("type=orders"));
        assert!(problem(&["--sink", "https://x/"]).contains("only http://"));
        assert!(problem(&["--dead-letter-topic", "shop.orders"]).contains("also consumed"));
        assert!(problem(&["--bootstrap-servers", "kafka"]).contains("not host:port"));
        assert!(problem(&["--request-timeout", "0s"]).contains("above zero"));
        // Refused by the parser itself (exit code 2 as well).
        assert!(dispatch_args(&["--ordering", "random"]).is_err());
        assert!(dispatch_args(&["--max-attempts", "0"]).is_err());
        assert!(dispatch_args(&["--start-from", "yesterday"]).is_err());
        assert!(dispatch_args(&["--max-delay", "soon"]).is_err());
    }

    #[test]
    fn filter_lists_from_the_environment_are_one_per_line_and_skip_blank_lines() {
        let mut args = dispatch_args(&[]).expect("parses");
        // What clap makes of TRIBUTARY_FILTERS="type=prefix:orders.\n\nsource=exact:/shop\n".
        args.filters = "type=prefix:orders.\n\nsource=exact:/shop\n".split('\n').map(str::to_owned).collect();
        assert_eq!(args.settings().expect("valid").filters.len(), 2);
        args.topics = vec!["a".into(), String::new(), " b ".into()];
        assert_eq!(args.settings().expect("valid").consumer.topics, ["a", "b"]);
    }
}
