//! `tributary-bench dispatch-memory`: the peak memory of `tributary-relay dispatch` (the binary,
//! as the sidecar runs it) while records arrive on many partitions and its sink does not answer
//! (a hung consumer; `--sink-delay` makes it merely slow): the dispatcher's buffer fills
//! (`--max-buffered-bytes`), then librdkafka fetches ahead on every partition until its limit.
//! Prints `peak_rss_mib` (VmHWM).
//!
//! The records are produced after the dispatcher joined, at a steady rate, so that every fetch
//! answers with what arrived since the one before: Tansu 0.6 answers a fetch with everything the
//! partition holds past the fetch offset, whatever size limits the request sets, so a backlog
//! that is already there when the dispatcher starts fills its memory whatever the client asks.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tributary_relay::producer::{EventProducer, OutgoingRecord, Partitioner, ProducerSettings, RdKafkaProducer};
use tributary_testkit::http::{free_address, get};

use crate::dispatch::{create_topics, BenchSink};
use crate::figures::{figure, load_average, rss_kib};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers; the benchmark creates and deletes its own topic there.
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// The relay binary; default: `tributary-relay` beside this one.
    #[arg(long)]
    pub relay: Option<PathBuf>,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,
    /// Records produced per partition, MiB of values (more than the read-ahead a partition may
    /// hold).
    #[arg(long, default_value_t = 8)]
    pub backlog_mib_per_partition: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 8192)]
    pub value_bytes: usize,
    /// How long producing the records takes.
    #[arg(long, default_value = "20s", value_parser = tributary_api::duration::parse)]
    pub fill: Duration,
    /// How long the dispatcher runs after the last record was produced.
    #[arg(long, default_value = "10s", value_parser = tributary_api::duration::parse)]
    pub hold: Duration,
    /// How long each answer of the sink takes (64 deliveries in flight); the default never
    /// answers within the run.
    #[arg(long, default_value = "1h", value_parser = tributary_api::duration::parse)]
    pub sink_delay: Duration,
    /// librdkafka consumer property for the dispatcher, `key=value` (repeatable). The default
    /// speeds up the group join (Tansu completes a join after about half the session timeout).
    #[arg(long = "consumer-property", default_values_t = ["session.timeout.ms=6000".to_owned(), "heartbeat.interval.ms=500".to_owned()])]
    pub consumer_properties: Vec<String>,
}

/// Longest wait for the dispatcher to join its group.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let relay = match &args.relay {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tributary-relay"),
    };
    ensure!(relay.is_file(), "no relay binary at {} (build it: cargo build --release -p tributary-relay)", relay.display());
    let topic = format!("tributary-bench-dispatch-memory-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &args.bootstrap_servers).create().context("cannot create the Kafka admin client")?;
    create_topics(&admin, &[&topic], args.partitions).await?;
    let outcome = measure(&args, &relay, &topic).await;
    let cleanup = admin.delete_topics(&[&topic], &AdminOptions::new()).await.context("cannot delete the benchmark topic");
    outcome?;
    cleanup?;
    Ok(())
}

async fn measure(args: &Args, relay: &std::path::Path, topic: &str) -> anyhow::Result<()> {
    println!(
        "# tributary-bench dispatch-memory: relay={} partitions={} backlog_mib_per_partition={} value_bytes={} fill={:?} hold={:?} sink_delay={:?}",
        relay.display(),
        args.partitions,
        args.backlog_mib_per_partition,
        args.value_bytes,
        args.fill,
        args.hold,
        args.sink_delay
    );
    println!("# load average at start: {}", load_average());
    let sink = BenchSink::answering_after(0, args.sink_delay).await?;
    let dir = tempfile::tempdir()?;
    let properties = dir.path().join("kafka.properties");
    std::fs::write(&properties, args.consumer_properties.join("\n"))?;
    let listen = free_address();
    let mut child = tokio::process::Command::new(relay)
        .args(["dispatch", "--bootstrap-servers", &args.bootstrap_servers, "--topics", topic])
        .args(["--group", &format!("{topic}-group"), "--dead-letter-topic", &format!("{topic}.dlq")])
        .args(["--sink", &format!("http://{}/events", sink.address), "--start-from", "earliest"])
        .args(["--ordering", "unordered", "--concurrency", "64", "--listen-address", &listen.to_string()])
        .arg("--kafka-properties-file")
        .arg(&properties)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", relay.display()))?;
    let pid = child.id().context("the dispatcher exited at once")?.to_string();
    let joining = Instant::now();
    while !matches!(get(listen, "/readyz").await, Ok((200, _))) {
        ensure!(joining.elapsed() < JOIN_TIMEOUT, "the dispatcher did not join its group within {JOIN_TIMEOUT:?}");
        ensure!(child.try_wait()?.is_none(), "the dispatcher exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let producing = tokio::spawn(produce(args.bootstrap_servers.clone(), topic.to_owned(), args.partitions, args.value_bytes, {
        let records = usize::try_from(args.partitions)? * (args.backlog_mib_per_partition << 20) / args.value_bytes.max(1);
        (records, args.fill)
    }));
    let started = Instant::now();
    let mut peak_kib = 0u64;
    while started.elapsed() < args.fill + args.hold {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ensure!(child.try_wait()?.is_none(), "the dispatcher exited");
        peak_kib = peak_kib.max(rss_kib(&pid, "VmHWM:").unwrap_or_default());
    }
    let rss_kib_at_end = rss_kib(&pid, "VmRSS:");
    child.kill().await?;
    let produced = producing.await??;
    ensure!(peak_kib > 0, "no memory figure for process {pid}");
    let mib = |kib: u64| kib as f64 / 1024.0;
    figure("produced_records", produced);
    figure("produced_mib", format!("{:.0}", (produced * args.value_bytes) as f64 / f64::from(1 << 20)));
    figure("delivered", sink.state.count.load(AtomicOrdering::Acquire));
    figure("peak_rss_mib", format!("{:.1}", mib(peak_kib)));
    figure("rss_at_end_mib", rss_kib_at_end.map_or_else(|| "unknown".into(), |kib| format!("{:.1}", mib(kib))));
    println!("# load average at end: {}", load_average());
    Ok(())
}

/// Produces `records` records of `value_bytes` over `fill`, one per partition at a time (distinct
/// keys spread them); returns how many were acknowledged.
async fn produce(
    bootstrap_servers: String,
    topic: String,
    partitions: i32,
    value_bytes: usize,
    plan: (usize, Duration),
) -> anyhow::Result<usize> {
    let (records, fill) = plan;
    let producer = RdKafkaProducer::new(&ProducerSettings {
        bootstrap_servers,
        properties_file: None,
        delivery_timeout: Duration::from_secs(60),
        max_record_bytes: 1_000_000,
        partitioner: Partitioner::default(),
    })?;
    let chunk = usize::try_from(partitions)?;
    let rounds = records.div_ceil(chunk).max(1);
    let mut ticker = tokio::time::interval(fill / u32::try_from(rounds)?);
    let value = vec![b'x'; value_bytes];
    let mut produced = 0;
    for round in 0..rounds {
        ticker.tick().await;
        let batch = (round * chunk..records.min((round + 1) * chunk))
            .map(|index| OutgoingRecord {
                topic: topic.clone(),
                key: format!("key-{index}").into_bytes(),
                payload: Some(value.clone()),
                headers: vec![("ce_id".to_owned(), index.to_string().into_bytes())],
            })
            .collect();
        for result in producer.send_all(batch).await {
            result.context("a record was not acknowledged")?;
            produced += 1;
        }
    }
    Ok(produced)
}
