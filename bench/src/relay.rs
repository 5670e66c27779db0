//! `tributary-bench relay`: measures the relay against a real PostgreSQL and a real broker, and the
//! two ceilings it cannot beat, in one run on one machine. Prints `name=value` lines.
//!
//! Phases (each on a fresh outbox table made by the relay's own `migrate`, dropped afterwards):
//! - `broker`: the N records the relay would send (read from a pre-filled table through the relay's
//!   claim query and `to_record`), produced with the relay's producer, all pipelined: no database.
//! - `postgres`: N pre-filled rows drained by batched `DELETE … SKIP LOCKED … RETURNING *` on as
//!   many connections as the relay has workers: no Kafka.
//! - `relay`: N pre-filled rows drained by the relay's real workers (`WorkerPool`, so claim →
//!   produce → delete per transaction) with the real `RdKafkaProducer`.
//! - `latency`: writer tasks insert at a fixed offered rate while the relay runs with LISTEN/NOTIFY;
//!   per row, the time from the writer's commit to Kafka's acknowledgement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use async_trait::async_trait;
use clap::ValueEnum;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tracing::info;
use tributary_common::server::Readiness;

use tributary_relay::metrics::RelayMetrics;
use tributary_relay::outbox::record::{to_record, RecordSettings, Routing};
use tributary_relay::outbox::schema::{Columns, Ident, PayloadFormat, Statements, Table, FAILED_AT, PUBLISHED_AT, SEQ};
use tributary_relay::outbox::tls::TlsFiles;
use tributary_relay::outbox::{self, Cleanup, FailurePolicy, OutboxSettings};
use tributary_relay::producer::{EventProducer, OutgoingRecord, Partitioner, ProduceError, ProducerSettings, RdKafkaProducer};

use crate::figures::{figure, load_average, per_second, percentile, process_cpu, processes_named};

/// The aggregate type of every benchmark row; routed to the benchmark topic.
const AGGREGATE_TYPE: &str = "BenchOrder";
/// Longest wait for the relay to catch up once the inserts have stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL; the benchmark creates and drops its own tables there.
    #[arg(long, env = "TRIBUTARY_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Kafka bootstrap servers; the benchmark creates and deletes its own topic there.
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// Rows pre-filled for the drain figures (relay and both baselines).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    pub rows: i64,
    /// Distinct aggregate ids the rows are spread over (round robin).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub aggregates: i64,
    /// Filler characters in each row's JSON payload.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(i32).range(0..=1_000_000))]
    pub payload_padding: i32,
    /// Partitions of the benchmark topic. One by default: Tansu's cost per partition and request
    /// (several milliseconds for six) would otherwise dominate what is measured.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,
    /// Relay workers (and connections of the PostgreSQL baseline).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Rows per relay batch (and per DELETE of the PostgreSQL baseline).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10000))]
    pub batch_size: i64,
    /// Offered load of the latency phase, in rows per second over all writers.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub offered_rate: u32,
    /// How long the writers of the latency phase insert.
    #[arg(long, default_value = "10s", value_parser = tributary_api::duration::parse)]
    pub duration: Duration,
    /// Concurrent writer connections of the latency phase.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub writers: u16,
    /// Rows per writer transaction (one multi-row INSERT, autocommitted).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub rows_per_transaction: u16,
    /// Phases to run (comma-separated); `ratio` needs broker, postgres and relay.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Phase::Broker, Phase::Postgres, Phase::Relay, Phase::Latency])]
    pub phases: Vec<Phase>,
    /// Commit each relay batch synchronously (the relay's `--synchronous-cleanup`); the
    /// PostgreSQL baseline's DELETEs commit the same way.
    #[arg(long)]
    pub synchronous_cleanup: bool,
    /// Process id of the broker, to report its CPU time per phase (e.g. `$(cat .run/broker.pid)`).
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Broker,
    Postgres,
    Relay,
    Latency,
}

/// Runs the phases asked for, prints their figures, and removes every table and topic it made.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Short: the NOTIFY channel, `tributary_outbox_<schema>_<table>`, must stay within 63 bytes.
    let run_id =
        format!("{}_{:x}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 0xff_ffff);
    let mut bench = Bench::new(args, &run_id).await?;
    let outcome = bench.run_phases().await;
    let cleanup = bench.clean_up().await;
    outcome.and(cleanup)
}

/// Drain throughputs, for the ratio.
#[derive(Debug, Default)]
struct DrainFigures {
    broker: Option<f64>,
    postgres: Option<f64>,
    relay: Option<f64>,
}

struct Bench {
    args: Args,
    run_id: String,
    topic: String,
    admin: AdminClient<DefaultClientContext>,
    /// Setup, prefill and checks; never used by a measured path.
    control: Client,
    /// Tables made so far, dropped by `clean_up`.
    tables: Vec<Statements>,
    topic_created: bool,
}

impl Bench {
    async fn new(args: Args, run_id: &str) -> anyhow::Result<Self> {
        let control = connect(&args.database_url).await?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &args.bootstrap_servers)
            .create()
            .context("cannot create the Kafka admin client")?;
        Ok(Bench {
            topic: format!("tributary-bench-{run_id}"),
            run_id: run_id.to_owned(),
            args,
            admin,
            control,
            tables: Vec::new(),
            topic_created: false,
        })
    }

    async fn run_phases(&mut self) -> anyhow::Result<()> {
        let args = &self.args;
        println!(
            "# tributary-bench relay: rows={} aggregates={} payload_padding={} partitions={} workers={} batch_size={} writers={} rows_per_transaction={}",
            args.rows, args.aggregates, args.payload_padding, args.partitions, args.workers, args.batch_size, args.writers, args.rows_per_transaction
        );
        println!("# load average at start: {}", load_average());
        let settings = self
            .control
            .query_one("SELECT current_setting('autovacuum'), current_setting('synchronous_commit'), current_setting('fsync')", &[])
            .await?;
        println!(
            "# postgres: autovacuum={} synchronous_commit={} fsync={}; relay and pg_drain batches commit {}",
            settings.try_get::<_, String>(0)?,
            settings.try_get::<_, String>(1)?,
            settings.try_get::<_, String>(2)?,
            if self.args.synchronous_cleanup { "synchronously" } else { "asynchronously (synchronous_commit=off)" }
        );
        self.create_topic().await?;
        let mut drains = DrainFigures::default();
        let phases = self.args.phases.clone();
        for phase in phases {
            match phase {
                Phase::Broker => drains.broker = Some(self.broker_baseline().await.context("broker baseline")?),
                Phase::Postgres => drains.postgres = Some(self.postgres_baseline().await.context("PostgreSQL baseline")?),
                Phase::Relay => drains.relay = Some(self.relay_drain().await.context("relay drain")?),
                Phase::Latency => self.latency().await.context("latency at offered load")?,
            }
        }
        if let (Some(relay), Some(broker), Some(postgres)) = (drains.relay, drains.broker, drains.postgres) {
            figure("ratio", format!("{:.3}", relay / broker.min(postgres)));
            // The relay does the database's work and Kafka's on the same cores: done one after the
            // other at the baselines' speeds, N rows take N/pg + N/broker.
            let serial = serial_ceiling(postgres, broker);
            figure("serial_ceiling_rows_per_s", format!("{serial:.0}"));
            figure("ratio_to_serial_ceiling", format!("{:.3}", relay / serial));
        }
        println!("# load average at end: {}", load_average());
        Ok(())
    }

    async fn create_topic(&mut self) -> anyhow::Result<()> {
        let topic = NewTopic::new(&self.topic, self.args.partitions, TopicReplication::Fixed(-1));
        let results = self.admin.create_topics([&topic], &AdminOptions::new()).await.context("CreateTopics")?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("cannot create topic {name}: {code}"),
            }
        }
        self.topic_created = true;
        Ok(())
    }

    /// Drops every table and the topic made; reports the first failure after trying them all.
    async fn clean_up(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for statements in std::mem::take(&mut self.tables) {
            if let Err(error) = self.control.batch_execute(&drop_sql(&statements)).await {
                first_error.get_or_insert(anyhow::Error::new(error).context(format!("cannot drop {}", statements.table)));
            }
        }
        if self.topic_created {
            if let Err(error) = self.admin.delete_topics(&[&self.topic], &AdminOptions::new()).await {
                first_error.get_or_insert(anyhow::Error::new(error).context(format!("cannot delete topic {}", self.topic)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A fresh outbox table named after the run and `purpose`, made by the relay's `migrate`.
    async fn create_table(&mut self, purpose: &str) -> anyhow::Result<Statements> {
        let statements = bench_statements(&format!("bench_{}_{purpose}", self.run_id))?;
        self.tables.push(statements.clone());
        outbox::migrate(&mut self.control, &statements).await?;
        Ok(statements)
    }

    async fn drop_table(&mut self, statements: &Statements) -> anyhow::Result<()> {
        self.control.batch_execute(&drop_sql(statements)).await.with_context(|| format!("cannot drop {}", statements.table))?;
        self.tables.retain(|table| table.table != statements.table);
        Ok(())
    }

    /// Inserts `--rows` rows in one statement, then ANALYZEs (what autovacuum would do for a table
    /// this size; the claim plan depends on it).
    async fn prefill(&self, statements: &Statements) -> anyhow::Result<()> {
        let insert =
            format!("{} FROM generate_series(1::int8, {}) AS r(n)", self.insert_prefix(statements, "gen_random_uuid()"), self.args.rows);
        self.control.batch_execute(&insert).await.context("prefill")?;
        self.control.batch_execute(&format!("ANALYZE {}", statements.table)).await.context("analyze")?;
        Ok(())
    }

    /// `INSERT … SELECT <row n>`: every benchmark row, prefilled or written, has this shape.
    fn insert_prefix(&self, statements: &Statements, id: &str) -> String {
        format!(
            "INSERT INTO {table} (id, aggregatetype, aggregateid, type, payload, headers) \
             SELECT {id}, '{AGGREGATE_TYPE}', 'order-' || (r.n % {aggregates}), 'bench.order.created', \
                    jsonb_build_object('order', r.n % {aggregates}, 'sequence', r.n, 'total_cents', (r.n * 7919) % 100000, \
                                       'padding', repeat('x', {padding})), \
                    jsonb_build_object('correlation_id', 'c-' || r.n)",
            table = statements.table,
            aggregates = self.args.aggregates,
            padding = self.args.payload_padding,
        )
    }

    fn outbox_settings(&self, statements: Statements) -> OutboxSettings {
        OutboxSettings {
            record: RecordSettings {
                routing: Routing { routes: [(AGGREGATE_TYPE.to_owned(), self.topic.clone())].into_iter().collect(), topic_prefix: None },
                format: statements.format,
                source: "/tributary/bench".into(),
                max_record_bytes: 1_000_000,
            },
            statements,
            batch_size: self.args.batch_size,
            // The relay's defaults.
            poll_interval: Duration::from_secs(1),
            cleanup: Cleanup::Delete,
            failure_policy: FailurePolicy::Block,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            synchronous_cleanup: self.args.synchronous_cleanup,
            delivery_timeout: Duration::from_secs(30),
        }
    }

    /// The relay's producer with the relay's default settings, its metadata fetched.
    async fn producer(&self) -> anyhow::Result<RdKafkaProducer> {
        let producer = RdKafkaProducer::new(&ProducerSettings {
            bootstrap_servers: self.args.bootstrap_servers.clone(),
            properties_file: None,
            delivery_timeout: Duration::from_secs(30),
            max_record_bytes: 1_000_000,
            partitioner: Partitioner::default(),
        })?;
        let warm_up = OutgoingRecord { topic: self.topic.clone(), key: b"warm-up".to_vec(), payload: None, headers: Vec::new() };
        for result in producer.send_all(vec![warm_up]).await {
            result.context("warm-up record not acknowledged")?;
        }
        Ok(producer)
    }

    async fn broker_baseline(&mut self) -> anyhow::Result<f64> {
        let statements = self.create_table("records").await?;
        self.prefill(&statements).await?;
        let settings = self.outbox_settings(statements.clone());
        let records = read_records(&mut self.control, &settings, self.args.rows).await?;
        self.drop_table(&statements).await?;
        let count = records.len();
        let bytes: usize = records.iter().map(OutgoingRecord::approximate_size).sum();
        let producer = self.producer().await?;

        info!(phase = "broker", "measuring");
        let cpu = CpuSnapshot::take(self.args.broker_pid);
        let started = Instant::now();
        let results = producer.send_all(records).await;
        let elapsed = started.elapsed();
        let cpu = cpu.usage_until_now();
        info!("measured");

        let failed = results.iter().filter(|result| result.is_err()).count();
        ensure!(failed == 0, "{failed} of {count} records were not acknowledged: {:?}", results.iter().find_map(|r| r.clone().err()));
        let rate = per_second(count, elapsed);
        figure("broker_produce_per_s", format!("{rate:.0}"));
        figure("broker_record_bytes_avg", format!("{:.0}", bytes as f64 / count.max(1) as f64));
        cpu.print("broker");
        Ok(rate)
    }

    async fn postgres_baseline(&mut self) -> anyhow::Result<f64> {
        let statements = self.create_table("pg").await?;
        self.prefill(&statements).await?;
        let drain = format!(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE {PUBLISHED_AT} IS NULL AND {FAILED_AT} IS NULL \
             ORDER BY {SEQ} LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING *",
            t = statements.table
        );
        // Connected as relay workers are, so both commit the same way.
        let settings = self.outbox_settings(statements.clone());
        let connector = outbox::connector(outbox::Database::new(&self.args.database_url, TlsFiles::default())?);
        let mut connections = Vec::new();
        for _ in 0..self.args.workers {
            connections.push(outbox::connect_worker(&connector, &settings).await?);
        }
        let batch_size = self.args.batch_size;

        info!(phase = "pg_drain", "measuring");
        let cpu = CpuSnapshot::take(self.args.broker_pid);
        let started = Instant::now();
        let drainers = connections.into_iter().map(|client| {
            let drain = drain.clone();
            tokio::spawn(async move {
                let statement = client.prepare(&drain).await?;
                let mut deleted = 0usize;
                loop {
                    let rows = client.query(&statement, &[&batch_size]).await?;
                    if rows.is_empty() {
                        return Ok::<_, tokio_postgres::Error>(deleted);
                    }
                    deleted += rows.len();
                }
            })
        });
        let mut deleted = 0;
        for drainer in futures::future::join_all(drainers).await {
            deleted += drainer??;
        }
        let elapsed = started.elapsed();
        let cpu = cpu.usage_until_now();
        info!("measured");

        ensure!(i64::try_from(deleted)? == self.args.rows, "deleted {deleted} rows, expected {}", self.args.rows);
        self.drop_table(&statements).await?;
        let rate = per_second(deleted, elapsed);
        figure("pg_drain_rows_per_s", format!("{rate:.0}"));
        cpu.print("pg_drain");
        Ok(rate)
    }

    async fn relay_drain(&mut self) -> anyhow::Result<f64> {
        let statements = self.create_table("relay").await?;
        self.prefill(&statements).await?;
        let settings = Arc::new(self.outbox_settings(statements.clone()));
        let recorder = Arc::new(AckRecorder::new(Arc::new(self.producer().await?), false));
        let rows = usize::try_from(self.args.rows)?;
        let empty_check = format!("SELECT EXISTS (SELECT 1 FROM {})", statements.table);

        info!(phase = "relay", "measuring");
        let cpu = CpuSnapshot::take(self.args.broker_pid);
        let started = Instant::now();
        let relay = RunningRelay::start(&self.args.database_url, settings, recorder.clone(), self.args.workers).await?;
        // Acknowledged first (cheap to watch), then deleted: the table is empty once the last
        // batch committed.
        while recorder.acked() < rows {
            ensure!(
                started.elapsed() < CATCH_UP_TIMEOUT,
                "only {} of {rows} rows acknowledged after {CATCH_UP_TIMEOUT:?}",
                recorder.acked()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while self.control.query_one(&empty_check, &[]).await?.try_get::<_, bool>(0)? {
            ensure!(started.elapsed() < CATCH_UP_TIMEOUT, "outbox not empty after {CATCH_UP_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        let cpu = cpu.usage_until_now();
        info!("measured");
        relay.stop().await;

        self.drop_table(&statements).await?;
        let rate = per_second(rows, elapsed);
        let batches = recorder.batches();
        figure("relay_rows_per_s", format!("{rate:.0}"));
        figure("relay_drain_s", format!("{:.3}", elapsed.as_secs_f64()));
        figure("relay_batches", batches);
        figure("relay_rows_per_batch", format!("{:.1}", recorder.acked() as f64 / batches.max(1) as f64));
        figure("relay_duplicates", recorder.acked().saturating_sub(rows));
        // Share of the workers' time spent waiting for Kafka (the rest: database and CPU).
        let worker_time = elapsed.as_secs_f64() * f64::from(self.args.workers);
        figure("relay_kafka_wait_share", format!("{:.3}", recorder.kafka_wait().as_secs_f64() / worker_time));
        cpu.print("relay");
        Ok(rate)
    }

    async fn latency(&mut self) -> anyhow::Result<()> {
        let statements = self.create_table("latency").await?;
        let settings = Arc::new(self.outbox_settings(statements.clone()));
        let recorder = Arc::new(AckRecorder::new(Arc::new(self.producer().await?), true));
        let relay = RunningRelay::start(&self.args.database_url, settings, recorder.clone(), self.args.workers).await?;
        let insert = format!("{} FROM unnest($1::text[], $2::int8[]) AS r(id, n)", self.insert_prefix(&statements, "r.id::uuid"));
        let writers = self.args.writers;
        let plan = WriterPlan {
            writers,
            rows_per_transaction: self.args.rows_per_transaction,
            period: Duration::from_secs_f64(
                f64::from(self.args.rows_per_transaction) * f64::from(writers) / f64::from(self.args.offered_rate),
            ),
            duration: self.args.duration,
        };
        let mut clients = Vec::new();
        for _ in 0..writers {
            let client = connect(&self.args.database_url).await?;
            let statement = client.prepare(&insert).await?;
            clients.push((client, statement));
        }

        info!(phase = "latency", "measuring");
        let cpu = CpuSnapshot::take(self.args.broker_pid);
        let started = tokio::time::Instant::now() + Duration::from_millis(20);
        let tasks: Vec<_> = clients
            .into_iter()
            .zip(0u16..)
            .map(|((client, statement), writer)| tokio::spawn(run_writer(client, statement, writer, plan, started)))
            .collect();
        let mut commits: Vec<(String, Instant)> = Vec::new();
        for task in futures::future::join_all(tasks).await {
            commits.extend(task??);
        }
        let writing = started.elapsed();
        let caught_up = Instant::now();
        while recorder.acked() < commits.len() && caught_up.elapsed() < CATCH_UP_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let catch_up = caught_up.elapsed();
        let cpu = cpu.usage_until_now();
        info!("measured");
        relay.stop().await;
        self.drop_table(&statements).await?;

        let acks = recorder.take_ack_times();
        let mut latencies_ms: Vec<f64> = commits
            .iter()
            .filter_map(|(id, committed)| acks.get(id).map(|acked| acked.saturating_duration_since(*committed).as_secs_f64() * 1000.0))
            .collect();
        let unacknowledged = commits.len() - latencies_ms.len();
        latencies_ms.sort_by(f64::total_cmp);
        println!(
            "# latency measured per row: Kafka acknowledgement (when the relay's send_all returned, recorded by an EventProducer \
             decorator keyed by ce_id) minus the instant the writer's autocommitted INSERT returned (its commit)"
        );
        figure("offered_rows_per_s", self.args.offered_rate);
        figure("offered_rows_per_s_achieved", format!("{:.0}", per_second(commits.len(), writing)));
        figure("latency_rows", commits.len());
        figure("latency_rows_unacknowledged", unacknowledged);
        for (name, quantile) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("max", 100.0)] {
            let value = percentile(&latencies_ms, quantile).map_or_else(|| "none".to_owned(), |ms| format!("{ms:.2}"));
            figure(&format!("{name}_commit_to_ack_ms"), value);
        }
        figure("latency_catch_up_s", format!("{:.3}", catch_up.as_secs_f64()));
        figure("latency_batches", recorder.batches());
        figure("latency_longest_kafka_wait_ms", format!("{:.2}", recorder.longest_kafka_wait().as_secs_f64() * 1000.0));
        cpu.print("latency");
        Ok(())
    }
}

/// Rows per second when every row costs one row's work at each of two rates, one after the other.
fn serial_ceiling(first_per_s: f64, second_per_s: f64) -> f64 {
    1.0 / (1.0 / first_per_s + 1.0 / second_per_s)
}

/// The statements of a benchmark table: Debezium's columns plus headers and created_at, JSON payloads.
fn bench_statements(name: &str) -> anyhow::Result<Statements> {
    let column = |name: &str| Ident::new("column", name);
    let columns = Columns {
        id: column("id")?,
        aggregate_type: column("aggregatetype")?,
        aggregate_id: column("aggregateid")?,
        event_type: column("type")?,
        payload: column("payload")?,
        headers: Some(column("headers")?),
        topic: None,
        created_at: Some(column("created_at")?),
    };
    Ok(Statements::new(Table::parse(name)?, columns, PayloadFormat::Json)?)
}

/// Drops what `migrate` made for a table: the table, its failed-rows table and the trigger function.
fn drop_sql(statements: &Statements) -> String {
    let table = &statements.table;
    format!(
        "DROP TABLE IF EXISTS {table}, {failed}; DROP FUNCTION IF EXISTS {schema}.\"{name}_notify\"();",
        failed = statements.failed_table,
        schema = table.schema,
        name = table.name.name()
    )
}

/// Connects, driving the connection in the background.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.context("cannot connect to the database")?;
    tokio::spawn(connection.map(drop));
    Ok(client)
}

/// The records the relay would send for the first `rows` rows: the relay's claim query (in a
/// transaction rolled back, so nothing changes) and `to_record`.
async fn read_records(client: &mut Client, settings: &OutboxSettings, rows: i64) -> anyhow::Result<Vec<OutgoingRecord>> {
    let transaction = client.transaction().await?;
    let claimed = transaction.query(&settings.statements.claim, &outbox::Shard::WHOLE.claim_parameters(&rows)).await?;
    let records = claimed
        .iter()
        .map(|row| Ok(to_record(&outbox::decode_row(row, settings.record.format)?, &settings.record)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    transaction.rollback().await?;
    ensure!(i64::try_from(records.len())? == rows, "the claim returned {} of {rows} rows", records.len());
    Ok(records)
}

/// An [`EventProducer`] decorator counting acknowledged records, batches and time spent waiting
/// for Kafka, and (when asked) when each `ce_id` was first acknowledged.
struct AckRecorder {
    inner: Arc<dyn EventProducer>,
    acked: AtomicU64,
    batches: AtomicU64,
    kafka_wait_nanos: AtomicU64,
    /// The longest single wait for Kafka: tells a broker stall from a database one.
    longest_kafka_wait_nanos: AtomicU64,
    ack_times: Option<Mutex<HashMap<String, Instant>>>,
}

impl AckRecorder {
    fn new(inner: Arc<dyn EventProducer>, record_ack_times: bool) -> Self {
        AckRecorder {
            inner,
            acked: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            kafka_wait_nanos: AtomicU64::new(0),
            longest_kafka_wait_nanos: AtomicU64::new(0),
            ack_times: record_ack_times.then(|| Mutex::new(HashMap::new())),
        }
    }

    fn acked(&self) -> usize {
        usize::try_from(self.acked.load(Ordering::Acquire)).unwrap_or(usize::MAX)
    }

    fn batches(&self) -> u64 {
        self.batches.load(Ordering::Acquire)
    }

    fn longest_kafka_wait(&self) -> Duration {
        Duration::from_nanos(self.longest_kafka_wait_nanos.load(Ordering::Acquire))
    }

    fn kafka_wait(&self) -> Duration {
        Duration::from_nanos(self.kafka_wait_nanos.load(Ordering::Acquire))
    }

    fn take_ack_times(&self) -> HashMap<String, Instant> {
        self.ack_times
            .as_ref()
            .map(|times| std::mem::take(&mut *times.lock().unwrap_or_else(|poisoned| poisoned.into_inner())))
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventProducer for AckRecorder {
    async fn send_all(&self, records: Vec<OutgoingRecord>) -> Vec<Result<(), ProduceError>> {
        let ids: Option<Vec<Option<String>>> = self.ack_times.as_ref().map(|_| records.iter().map(ce_id).collect());
        let started = Instant::now();
        let results = self.inner.send_all(records).await;
        let acked_at = Instant::now();
        let wait = u64::try_from(acked_at.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        self.kafka_wait_nanos.fetch_add(wait, Ordering::AcqRel);
        self.longest_kafka_wait_nanos.fetch_max(wait, Ordering::AcqRel);
        self.batches.fetch_add(1, Ordering::AcqRel);
        let acked = results.iter().filter(|result| result.is_ok()).count();
        if let (Some(times), Some(ids)) = (&self.ack_times, ids) {
            let mut times = times.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (id, result) in ids.into_iter().zip(&results) {
                if let (Some(id), Ok(())) = (id, result) {
                    times.entry(id).or_insert(acked_at);
                }
            }
        }
        // After the times: whoever sees the count sees the times too.
        self.acked.fetch_add(acked as u64, Ordering::AcqRel);
        results
    }

    async fn reachable(&self) -> bool {
        self.inner.reachable().await
    }
}

fn ce_id(record: &OutgoingRecord) -> Option<String> {
    record.headers.iter().find(|(name, _)| name == "ce_id").and_then(|(_, value)| String::from_utf8(value.clone()).ok())
}

/// The relay's workers, woken by a LISTEN on the table's channel like `tributary-relay outbox`,
/// without the rest of its housekeeping (a pending-rows count every few seconds, Kafka probes).
struct RunningRelay {
    pool: outbox::WorkerPool,
    listener: JoinHandle<()>,
    _listen_client: Client,
}

impl RunningRelay {
    async fn start(url: &str, settings: Arc<OutboxSettings>, producer: Arc<dyn EventProducer>, workers: u16) -> anyhow::Result<Self> {
        let metrics = Arc::new(RelayMetrics::register(&mut Registry::default(), Readiness::default()));
        let channel = settings.statements.channel.clone();
        let database = outbox::Database::new(url, TlsFiles::default())?;
        let pool = outbox::WorkerPool::start(workers, outbox::connector(database), settings, producer, metrics);
        let (listen_client, connection) = tokio_postgres::connect(url, NoTls).await.context("LISTEN connection")?;
        let listener = outbox::wake_workers_on_notify(connection, pool.wakers());
        listen_client.batch_execute(&format!("LISTEN \"{channel}\"")).await.context("LISTEN")?;
        Ok(RunningRelay { pool, listener, _listen_client: listen_client })
    }

    async fn stop(self) {
        self.pool.stop().await;
        self.listener.abort();
    }
}

/// One writer's share of the offered load.
#[derive(Debug, Clone, Copy)]
struct WriterPlan {
    writers: u16,
    rows_per_transaction: u16,
    /// Between two transactions of one writer.
    period: Duration,
    duration: Duration,
}

/// Inserts `rows_per_transaction` rows every `period` (writers staggered evenly) until `duration`
/// after `start`; returns each row's id and the instant its INSERT committed.
async fn run_writer(
    client: Client,
    insert: tokio_postgres::Statement,
    writer: u16,
    plan: WriterPlan,
    start: tokio::time::Instant,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let offset = plan.period.mul_f64(f64::from(writer) / f64::from(plan.writers));
    let mut ticker = tokio::time::interval_at(start + offset, plan.period);
    let end = start + plan.duration;
    let mut commits = Vec::new();
    let mut sequence: i64 = 0;
    loop {
        if ticker.tick().await >= end {
            return Ok(commits);
        }
        let mut ids = Vec::with_capacity(usize::from(plan.rows_per_transaction));
        let mut numbers = Vec::with_capacity(usize::from(plan.rows_per_transaction));
        for _ in 0..plan.rows_per_transaction {
            ids.push(row_id(writer, sequence));
            numbers.push(sequence * i64::from(plan.writers) + i64::from(writer));
            sequence += 1;
        }
        client.execute(&insert, &[&ids, &numbers]).await.context("writer INSERT")?;
        let committed = Instant::now();
        commits.extend(ids.into_iter().map(|id| (id, committed)));
    }
}

/// A UUID, in PostgreSQL's text form, unique per writer and sequence number.
pub(crate) fn row_id(writer: u16, sequence: i64) -> String {
    format!("{writer:08x}-0000-4000-8000-{:012x}", sequence & 0xffff_ffff_ffff)
}

/// CPU time of this process, of every PostgreSQL process, and of the broker, at one instant.
struct CpuSnapshot {
    bench: Duration,
    postgres: HashMap<u32, Duration>,
    broker_pid: Option<u32>,
    broker: Option<Duration>,
}

/// CPU time used between a snapshot and now.
struct CpuUsage {
    bench: Option<Duration>,
    postgres: Duration,
    broker: Option<Duration>,
}

impl CpuSnapshot {
    fn take(broker_pid: Option<u32>) -> Self {
        let postgres = processes_named("postgres");
        CpuSnapshot {
            bench: process_cpu("self").unwrap_or_default(),
            postgres,
            broker_pid,
            broker: broker_pid.and_then(|pid| process_cpu(&pid.to_string())),
        }
    }

    fn usage_until_now(&self) -> CpuUsage {
        let now = CpuSnapshot::take(self.broker_pid);
        // Backends that started since count from zero; those that ended are lost (none do here).
        let postgres = now.postgres.iter().map(|(pid, cpu)| cpu.saturating_sub(self.postgres.get(pid).copied().unwrap_or_default())).sum();
        CpuUsage {
            bench: Some(now.bench.saturating_sub(self.bench)),
            postgres,
            broker: now.broker.zip(self.broker).map(|(after, before)| after.saturating_sub(before)),
        }
    }
}

impl CpuUsage {
    /// `<phase>_cpu_s_<process>` figures: where the CPU went (2 cores shared by everything).
    fn print(&self, phase: &str) {
        let seconds = |cpu: Option<Duration>| cpu.map_or_else(|| "unknown".to_owned(), |cpu| format!("{:.2}", cpu.as_secs_f64()));
        figure(&format!("{phase}_cpu_s_bench_process"), seconds(self.bench));
        figure(&format!("{phase}_cpu_s_postgres"), seconds(Some(self.postgres)));
        if self.broker.is_some() {
            figure(&format!("{phase}_cpu_s_broker"), seconds(self.broker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_ceiling_adds_the_time_per_row() {
        assert!((serial_ceiling(100.0, 100.0) - 50.0).abs() < 1e-9);
        assert!((serial_ceiling(200_000.0, 300_000.0) - 120_000.0).abs() < 1e-6);
    }

    #[test]
    fn row_ids_are_distinct_uuids_in_postgres_text_form() {
        let id = row_id(3, 0x2a);
        assert_eq!(id, "00000003-0000-4000-8000-00000000002a");
        assert_eq!(id.len(), 36);
        assert_ne!(row_id(3, 1), row_id(4, 1));
        assert_ne!(row_id(3, 1), row_id(3, 2));
    }

    #[test]
    fn ack_recorder_counts_and_times_acknowledged_records() {
        let fake = Arc::new(tributary_relay::producer::FakeProducer::default());
        fake.reject_topic("refused");
        let recorder = AckRecorder::new(fake, true);
        let record = |topic: &str, id: &str| OutgoingRecord {
            topic: topic.into(),
            key: b"k".to_vec(),
            payload: None,
            headers: vec![("ce_id".into(), id.as_bytes().to_vec())],
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let results = runtime.block_on(recorder.send_all(vec![record("t", "a"), record("refused", "b"), record("t", "c")]));
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
        assert_eq!((recorder.acked(), recorder.batches()), (2, 1));
        let times = recorder.take_ack_times();
        assert!(times.contains_key("a") && times.contains_key("c") && !times.contains_key("b"), "{times:?}");
    }

    #[test]
    fn bench_tables_are_dropped_with_what_migrate_made() {
        let statements = bench_statements("tributary_bench_1_relay").expect("valid");
        assert_eq!(
            drop_sql(&statements),
            "DROP TABLE IF EXISTS \"public\".\"tributary_bench_1_relay\", \"public\".\"tributary_bench_1_relay_failed\"; \
             DROP FUNCTION IF EXISTS \"public\".\"tributary_bench_1_relay_notify\"();"
        );
    }
}
