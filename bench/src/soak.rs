//! `tributary-bench soak`: the data plane end to end under faults, with the release binaries as
//! users run them. PostgreSQL outbox table → `tributary-relay outbox` → Kafka topic (Tansu) →
//! `tributary-relay dispatch --ordering per-key` → an HTTP sink in this process that logs every
//! delivered CloudEvent. Writers insert rows (several aggregates, a per-aggregate sequence number
//! in the payload) at a steady rate for the whole run, while, one after the other:
//! 1. the relay is SIGKILLed `--kills` times (restarted after a random pause each time),
//! 2. the dispatcher likewise,
//! 3. the broker is stopped for `--outage-s` (SIGSTOP, then SIGCONT),
//! 4. PostgreSQL is restarted (an immediate shutdown: a crash),
//! 5. the sink stops listening for `--outage-s` (connections refused).
//!
//! Then the writers stop, everything drains, and it prints `lost`, `skipped`, `order_violations`,
//! `duplicates` and `dead_lettered` (see `tally`) with the run's figures; it fails unless all
//! but duplicates are 0.
//!
//! Tansu keeps topics, records and group offsets in memory only: a broker restart loses them,
//! which no Kafka cluster does (a restart then reads as lost records that the broker, not the
//! relay or the dispatcher, dropped). So the broker is stopped the way a hung or partitioned
//! broker is: its process is suspended (SIGSTOP) for the outage, answers nothing, and resumes
//! (SIGCONT) with its state, while the writers keep writing.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tracing::{info, warn};
use tributary_testkit::http::free_address;

use crate::dispatch::create_topics;
use crate::figures::{figure, load_average};
use crate::relay::{connect, row_id};
use processes::{Broker, Postgres, Relay};
use tally::{tally, Delivery};

mod processes;
mod tally;

const TABLE: &str = "soak_outbox";
const AGGREGATE_TYPE: &str = "SoakOrder";
const TOPIC: &str = "soak.orders";
const DEAD_LETTER_TOPIC: &str = "soak.orders.dlq";
const GROUP: &str = "soak";
/// How long a restarted process may take to become ready before it is killed anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SIGKILLs of the relay, then as many of the dispatcher.
    #[arg(long, default_value_t = 100)]
    pub kills: u32,
    /// Seconds the broker is stopped, and again the sink.
    #[arg(long, default_value_t = 60)]
    pub outage_s: u64,
    /// Rows inserted per second, over all writers, for the whole run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Aggregates (record keys) the rows are spread over; each has its own sequence.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..))]
    pub aggregates: u16,
    /// Writer connections; each owns a share of the aggregates.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub writers: u16,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,
    /// Longest random pause before a killed process is started again, and longest random time
    /// it runs after becoming ready before the next kill, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub max_pause_ms: u64,
    /// Longest wait for everything to be delivered at the end (and before the broker outage).
    #[arg(long, default_value_t = 600)]
    pub drain_timeout_s: u64,
    /// The relay binary; default: `tributary-relay` beside this one (build both:
    /// `cargo build --release -p tributary-relay -p tributary-bench`).
    #[arg(long)]
    pub relay: Option<PathBuf>,
    /// scripts/broker.sh of the checkout (starts the soak's own Tansu broker).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/broker.sh"))]
    pub broker_ctl: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let relay = match &args.relay {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tributary-relay"),
    };
    anyhow::ensure!(relay.is_file(), "no relay binary at {} (cargo build --release -p tributary-relay)", relay.display());
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let dir = std::env::temp_dir().join(format!("tributary-soak-{}-{millis}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("# tributary-bench soak: {args:?}");
    println!("# load average at start: {}; logs in {}", load_average(), dir.display());
    let postgres = Postgres::create(&dir, free_address().port()).await?;
    let broker = match Broker::start(&args.broker_ctl, dir.join("broker")).await {
        Ok(broker) => broker,
        Err(error) => {
            let _ = postgres.stop(false).await;
            return Err(error);
        }
    };
    let outcome = Soak::new(args, relay, &dir, &postgres, &broker).await;
    let outcome = match outcome {
        Ok(mut soak) => {
            let outcome = soak.run().await;
            soak.stop_processes().await;
            outcome
        }
        Err(error) => Err(error),
    };
    if let Err(error) = broker.stop().await {
        warn!(error = format!("{error:#}"), "cannot stop the soak's broker");
    }
    if let Err(error) = postgres.stop(false).await {
        warn!(error = format!("{error:#}"), "cannot stop the soak's PostgreSQL");
    }
    if outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    outcome
}

struct Soak<'a> {
    args: Args,
    postgres: &'a Postgres,
    broker: &'a Broker,
    bootstrap: String,
    relay: Relay,
    dispatcher: Relay,
    sink: Sink,
    writers: Writers,
}

impl<'a> Soak<'a> {
    async fn new(args: Args, binary: PathBuf, dir: &Path, postgres: &'a Postgres, broker: &'a Broker) -> anyhow::Result<Soak<'a>> {
        let bootstrap = format!("127.0.0.1:{}", broker.port()?);
        create_soak_topics(&bootstrap, args.partitions).await?;
        let database_url = postgres.url();
        let migrate = tokio::process::Command::new(&binary)
            .args(["migrate", "--database-url", &database_url, "--table", TABLE])
            .output()
            .await
            .context("running tributary-relay migrate")?;
        anyhow::ensure!(migrate.status.success(), "migrate failed: {}", String::from_utf8_lossy(&migrate.stderr));

        let words = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let relay = Relay::new(
            "relay",
            &binary,
            words(&[
                "outbox",
                "--database-url",
                &database_url,
                "--table",
                TABLE,
                "--bootstrap-servers",
                &bootstrap,
                "--route",
                &format!("{AGGREGATE_TYPE}={TOPIC}"),
            ]),
            free_address(),
            dir.join("relay.log"),
        );
        // Quick group joins: Tansu completes a join after about half the session timeout, and a
        // SIGKILLed member stays in the group until its session times out.
        let properties = dir.join("dispatch.properties");
        std::fs::write(&properties, "session.timeout.ms=6000\nheartbeat.interval.ms=500\n")?;
        let sink = Sink::start(free_address()).await?;
        let mut dispatcher_arguments = words(&[
            "dispatch",
            "--bootstrap-servers",
            &bootstrap,
            "--topics",
            TOPIC,
            "--group",
            GROUP,
            "--sink",
            &format!("http://{}/events", sink.address),
            "--dead-letter-topic",
            DEAD_LETTER_TOPIC,
            "--ordering",
            "per-key",
            "--start-from",
            "earliest",
            "--kafka-properties-file",
        ]);
        dispatcher_arguments.push(properties.into_os_string());
        let dispatcher = Relay::new("dispatcher", &binary, dispatcher_arguments, free_address(), dir.join("dispatch.log"));
        let writers = Writers::start(&database_url, args.aggregates, args.writers, args.rate).await?;
        Ok(Soak { args, postgres, broker, bootstrap, relay, dispatcher, sink, writers })
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.relay.start()?;
        self.dispatcher.start()?;
        let max_pause = Duration::from_millis(self.args.max_pause_ms);
        let kills = self.args.kills;
        let outage = Duration::from_secs(self.args.outage_s);

        let phase = Instant::now();
        let relay_kills = kill_repeatedly(&mut self.relay, kills, max_pause).await?;
        info!(kills = relay_kills, elapsed = ?phase.elapsed(), "relay kills done");
        let phase = Instant::now();
        let dispatcher_kills = kill_repeatedly(&mut self.dispatcher, kills, max_pause).await?;
        info!(kills = dispatcher_kills, elapsed = ?phase.elapsed(), "dispatcher kills done");

        // Tansu loses everything on a restart (module docs): the outage suspends it instead.
        self.broker.suspend(true)?;
        info!(?outage, "broker stopped (SIGSTOP)");
        tokio::time::sleep(outage).await;
        self.broker.suspend(false)?;
        info!("broker resumed (SIGCONT)");

        self.postgres.stop(true).await?;
        self.postgres.start().await?;
        info!("PostgreSQL restarted");

        self.sink.down().await;
        info!(?outage, "sink down");
        tokio::time::sleep(outage).await;
        self.sink.up().await?;
        info!("sink up again");

        self.writers.stop().await?;
        let run_duration = started.elapsed();
        let drained = self.wait_drained().await;
        let dead_lettered = count_dead_letters(&self.bootstrap).await?;

        let inserted = self.writers.inserted();
        let deliveries = self.sink.deliveries();
        let tally = tally(&inserted, &deliveries);
        figure("rows", inserted.iter().sum::<u64>());
        figure("aggregates", self.args.aggregates);
        figure("deliveries", deliveries.len());
        figure("delivered", tally.delivered);
        figure("lost", tally.lost);
        figure("skipped", tally.skipped);
        figure("order_violations", tally.order_violations);
        figure("duplicates", tally.duplicates);
        figure("dead_lettered", dead_lettered);
        figure("unexpected", tally.unexpected);
        figure("relay_kills", relay_kills);
        figure("dispatcher_kills", dispatcher_kills);
        figure("broker_outage_s", self.args.outage_s);
        figure("postgres_restarts", 1);
        figure("sink_outage_s", self.args.outage_s);
        figure("run_s", format!("{:.0}", run_duration.as_secs_f64()));
        figure("drain_s", format!("{:.0}", started.elapsed().saturating_sub(run_duration).as_secs_f64()));
        println!("# load average at end: {}", load_average());
        if let Err(error) = drained {
            warn!(error = format!("{error:#}"), "not everything was delivered");
        }
        if tally.lost + tally.skipped + tally.order_violations + dead_lettered + tally.unexpected > 0 {
            bail!("the soak found lost, skipped, reordered, dead-lettered or unexpected records");
        }
        Ok(())
    }

    /// Waits until every row inserted so far was delivered and the outbox table is empty.
    async fn wait_drained(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.args.drain_timeout_s);
        let client = connect(&self.postgres.url()).await?;
        loop {
            let inserted = self.writers.inserted();
            let missing = tally(&inserted, &self.sink.deliveries()).lost;
            let pending: i64 = match client.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await {
                Ok(row) => row.try_get(0)?,
                Err(_) => -1,
            };
            if missing == 0 && pending == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{missing} rows undelivered and {pending} in the outbox after {}s", self.args.drain_timeout_s);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn stop_processes(&mut self) {
        for process in [&mut self.relay, &mut self.dispatcher] {
            if let Err(error) = process.terminate().await {
                warn!(process = process.name, error = format!("{error:#}"), "cannot stop");
            }
        }
        self.writers.abort();
        self.sink.down().await;
    }
}

/// SIGKILLs `process` `kills` times: each time once it is ready (or after `READY_TIMEOUT`) and a
/// random part of `max_pause` later; restarted after another random pause. Returns the kills done.
async fn kill_repeatedly(process: &mut Relay, kills: u32, max_pause: Duration) -> anyhow::Result<u32> {
    let random_pause = || max_pause.mul_f64(fastrand::f64());
    for kill in 0..kills {
        if !process.ready_within(READY_TIMEOUT).await {
            warn!(process = process.name, kill, "not ready within the timeout; killing it anyway");
        }
        tokio::time::sleep(random_pause()).await;
        process.kill().await?;
        tokio::time::sleep(random_pause()).await;
        process.start()?;
    }
    Ok(kills)
}

async fn create_soak_topics(bootstrap: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().context("cannot create the Kafka admin client")?;
    create_topics(&admin, &[TOPIC, DEAD_LETTER_TOPIC], partitions).await
}

/// Records in the dead-letter topic, read from the beginning by a consumer of its own.
async fn count_dead_letters(bootstrap: &str) -> anyhow::Result<u64> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "soak-dead-letter-count")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .context("cannot create the dead-letter consumer")?;
        let metadata = consumer.fetch_metadata(Some(DEAD_LETTER_TOPIC), Duration::from_secs(30))?;
        let partitions = metadata.topics().first().map_or(0, |topic| topic.partitions().len());
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(DEAD_LETTER_TOPIC, i32::try_from(partition)?, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let (mut count, mut at_end) = (0_u64, HashSet::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while at_end.len() < partitions {
            anyhow::ensure!(Instant::now() < deadline, "the dead-letter topic was not read to its end within 60 s");
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(_)) => count += 1,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))) => return Ok(0),
                Some(Err(error)) => bail!("reading the dead-letter topic: {error}"),
                None => {}
            }
        }
        Ok(count)
    })
    .await?
}

/// Rows inserted at a steady rate by writer tasks, each owning the aggregates `a` with
/// `a % writers == writer`; `inserted[a]` is the last sequence number of `a` committed.
struct Writers {
    inserted: Arc<Vec<AtomicU64>>,
    paused: watch::Sender<bool>,
    stopping: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Writers {
    async fn start(database_url: &str, aggregates: u16, writers: u16, rate: u32) -> anyhow::Result<Self> {
        let inserted: Arc<Vec<AtomicU64>> = Arc::new((0..aggregates).map(|_| AtomicU64::new(0)).collect());
        let (paused, _) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(f64::from(writers) / f64::from(rate));
        let mut tasks = Vec::new();
        for writer in 0..writers.min(aggregates) {
            let owned: Vec<u16> = (0..aggregates).filter(|aggregate| aggregate % writers == writer).collect();
            let writer = Writer {
                url: database_url.to_owned(),
                client: None,
                owned,
                inserted: inserted.clone(),
                paused: paused.subscribe(),
                stopping: stopping.clone(),
                period,
            };
            tasks.push(tokio::spawn(writer.run()));
        }
        Ok(Writers { inserted, paused, stopping, tasks })
    }

    fn inserted(&self) -> Vec<u64> {
        self.inserted.iter().map(|last| last.load(Ordering::Acquire)).collect()
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.stopping.store(true, Ordering::Release);
        self.pause(false);
        for task in self.tasks.drain(..) {
            task.await??;
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.tasks.drain(..).for_each(|task| task.abort());
    }
}

struct Writer {
    url: String,
    client: Option<tokio_postgres::Client>,
    owned: Vec<u16>,
    inserted: Arc<Vec<AtomicU64>>,
    paused: watch::Receiver<bool>,
    stopping: Arc<AtomicBool>,
    period: Duration,
}

impl Writer {
    /// One row per period, round robin over its aggregates, each row retried until it is in.
    async fn run(mut self) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for aggregate in self.owned.clone().into_iter().cycle() {
            ticker.tick().await;
            self.paused.wait_for(|paused| !paused).await?;
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            let inserted = self.inserted.clone();
            let slot = &inserted[usize::from(aggregate)];
            let sequence = slot.load(Ordering::Acquire) + 1;
            self.insert(aggregate, sequence).await;
            slot.store(sequence, Ordering::Release);
        }
        Ok(())
    }

    /// Inserts the row until it is in. An error may come after the commit (e.g. PostgreSQL went
    /// down meanwhile): the same row (same id) is inserted again, and "already there" means in;
    /// if the relay had already published and deleted it, the sink sees a duplicate, no loss.
    async fn insert(&mut self, aggregate: u16, sequence: u64) {
        let id = row_id(aggregate, i64::try_from(sequence).unwrap_or(i64::MAX));
        let aggregate_id = format!("order-{aggregate}");
        let payload = serde_json::json!({ "aggregate": aggregate, "sequence": sequence }).to_string();
        let statement = format!(
            "INSERT INTO {TABLE} (id, aggregatetype, aggregateid, type, payload) \
             VALUES ($1::text::uuid, '{AGGREGATE_TYPE}', $2, 'soak.order.created', $3::text::jsonb)"
        );
        loop {
            if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                self.client = connect(&self.url).await.ok();
            }
            if let Some(client) = &self.client {
                match client.execute(&statement, &[&id, &aggregate_id, &payload]).await {
                    Ok(_) => return,
                    Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => return,
                    Err(error) => info!(error = %error, aggregate, sequence, "insert failed; trying again"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The HTTP sink: answers 200 to every POST and logs its delivery; `down` closes the listener and
/// every connection (callers get "connection refused"), `up` listens on the same address again.
struct Sink {
    address: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Sink {
    async fn start(address: SocketAddr) -> anyhow::Result<Self> {
        let mut sink = Sink { address, deliveries: Arc::default(), server: None };
        sink.up().await?;
        Ok(sink)
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let listener =
            tokio::net::TcpListener::bind(self.address).await.with_context(|| format!("binding the sink to {}", self.address))?;
        let app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state(self.deliveries.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, server));
        Ok(())
    }

    async fn down(&mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            // Graceful: requests in progress are answered, idle connections closed at once.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), server).await.is_err() {
                abort.abort();
            }
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

async fn receive(State(deliveries): State<Arc<Mutex<Vec<Delivery>>>>, body: Bytes) -> StatusCode {
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let aggregate = payload["aggregate"].as_u64().and_then(|aggregate| u16::try_from(aggregate).ok());
    match (aggregate, payload["sequence"].as_u64()) {
        (Some(aggregate), Some(sequence)) => {
            deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Delivery { aggregate, sequence });
            StatusCode::OK
        }
        // Dead-lettered at once (not retried), so it shows in `dead_lettered`.
        _ => StatusCode::BAD_REQUEST,
    }
}
