//! `tributary-bench dispatch`: the dispatcher against a real broker and an in-process HTTP
//! sink, beside the ceiling it cannot beat (consuming the same records without HTTP), in one run.
//! Prints `name=value` lines.
//!
//! Phases, on a fresh topic filled with `--records` CloudEvents records (6 headers, `--value-bytes`
//! of JSON, keys spread round robin over `--keys`):
//! - `broker_consume_per_s`: a plain consumer reads them all (poll, touch the payload).
//! - `dispatch_msgs_per_s_unordered` / `_per_key`: the dispatcher's engine (a fresh group from the
//!   earliest offset) delivers them all to the sink; rate from the sink's first to its last
//!   request, so the group join is not counted.
//! - latency: the dispatcher runs on a second, empty topic while records are produced at
//!   `--offered-rate`; `*_delivery_ms`: per record, from its arrival in the dispatcher to the
//!   sink's answer (the dispatcher's own histogram, read with 5 % wide buckets: each figure is an
//!   upper bound at most 5 % above the true quantile); `*_end_to_end_ms`: the sink's receipt minus
//!   the instant the record was handed to the producer (producer, broker and fetch included).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::info;
use tributary_common::server::Readiness;

use tributary_relay::dispatch::metrics::DispatchMetrics;
use tributary_relay::dispatch::{
    Backoff, ConsumerSettings, DispatchError, DispatchSettings, Dispatcher, Ordering, RetryPolicy, Sink, StartFrom,
};
use tributary_relay::producer::{EventProducer, OutgoingRecord, Partitioner, ProducerSettings, RdKafkaProducer};

use crate::figures::{figure, load_average, per_second, percentile, process_cpu};

/// Longest wait for a phase to see every record.
const PHASE_TIMEOUT: Duration = Duration::from_secs(180);
/// Records per producer call while filling the topic.
const FILL_CHUNK: usize = 20_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers; the benchmark creates and deletes its own topics there.
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// Records produced for the throughput phases.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(2..=100_000_000))]
    pub records: u32,
    /// Distinct keys the records are spread over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub keys: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,
    /// Deliveries in flight in the unordered phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Keys in flight in the per-key phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub keys_in_flight: u16,
    /// Offered load of the latency phase, records per second.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub offered_rate: u32,
    /// How long the latency phase produces.
    #[arg(long, default_value = "10s", value_parser = tributary_api::duration::parse)]
    pub duration: Duration,
    /// Records the dispatcher buffers before pausing consumption.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_buffered_records: u32,
    /// librdkafka consumer property for the dispatcher, `key=value` (repeatable). The default
    /// shortens the fetch wait: Tansu holds a fetch for most of its wait even while records
    /// arrive (a Kafka broker answers as soon as there are records).
    #[arg(long = "consumer-property", default_values_t = ["fetch.wait.max.ms=5".to_owned()])]
    pub consumer_properties: Vec<String>,
    /// Ordering of the dispatcher in the latency phase.
    #[arg(long, value_enum, default_value_t = Ordering::PerKey)]
    pub latency_ordering: Ordering,
}

/// Runs the phases, prints their figures and deletes the topics it made.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let run_id = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    let properties = std::env::temp_dir().join(format!("tributary-bench-dispatch-{run_id}.properties"));
    // Quick group joins (Tansu waits about half the session timeout before completing a join).
    let mut lines = vec!["session.timeout.ms=6000".to_owned(), "heartbeat.interval.ms=500".to_owned()];
    lines.extend(args.consumer_properties.iter().cloned());
    std::fs::write(&properties, lines.join("\n")).context("writing the consumer properties")?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &args.bootstrap_servers).create().context("cannot create the Kafka admin client")?;
    let bench = Bench { topic: format!("tributary-bench-dispatch-{run_id}"), run_id, properties, args };
    let topics = [bench.topic.clone(), bench.latency_topic()];
    let outcome = bench.run(&admin).await;
    let _ = std::fs::remove_file(&bench.properties);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let cleanup = admin.delete_topics(&names, &AdminOptions::new()).await.context("cannot delete the benchmark topics");
    outcome?;
    cleanup?;
    Ok(())
}

struct Bench {
    args: Args,
    run_id: String,
    topic: String,
    properties: PathBuf,
}

impl Bench {
    fn latency_topic(&self) -> String {
        format!("{}-latency", self.topic)
    }

    async fn run(&self, admin: &AdminClient<DefaultClientContext>) -> anyhow::Result<()> {
        let args = &self.args;
        println!(
            "# tributary-bench dispatch: records={} keys={} value_bytes={} partitions={} concurrency={} keys_in_flight={} offered_rate={} duration={:?} consumer_properties={:?}",
            args.records, args.keys, args.value_bytes, args.partitions, args.concurrency, args.keys_in_flight, args.offered_rate, args.duration, args.consumer_properties
        );
        println!("# load average at start: {}", load_average());
        create_topics(admin, &[&self.topic, &self.latency_topic()], args.partitions).await?;
        let producer = Arc::new(self.producer()?);
        let fill = Instant::now();
        let records = usize::try_from(args.records)?;
        for start in (0..records).step_by(FILL_CHUNK) {
            let chunk = (start..records.min(start + FILL_CHUNK)).map(|index| self.record(&self.topic, index)).collect();
            for result in producer.send_all(chunk).await {
                result.context("a benchmark record was not acknowledged")?;
            }
        }
        info!(records, elapsed = ?fill.elapsed(), "topic filled");

        let consume = tokio::task::spawn_blocking({
            let (bootstrap, topic, partitions) = (args.bootstrap_servers.clone(), self.topic.clone(), args.partitions);
            move || consume_baseline(&bootstrap, &topic, partitions, records)
        })
        .await??;
        figure("broker_consume_per_s", format!("{consume:.0}"));

        for (name, ordering, lanes) in
            [("unordered", Ordering::Unordered, args.concurrency), ("per_key", Ordering::PerKey, args.keys_in_flight)]
        {
            let sink = BenchSink::start(0).await?;
            let running = self.start_dispatcher(&self.topic, &format!("drain-{name}"), ordering, lanes, &sink)?;
            let started = Instant::now();
            let mut cpu_at_first = None;
            while sink.state.count.load(AtomicOrdering::Acquire) < records {
                ensure!(
                    started.elapsed() < PHASE_TIMEOUT,
                    "{name}: {} of {records} delivered",
                    sink.state.count.load(AtomicOrdering::Acquire)
                );
                if cpu_at_first.is_none() && sink.state.count.load(AtomicOrdering::Acquire) > 0 {
                    cpu_at_first = process_cpu("self");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let cpu = process_cpu("self").zip(cpu_at_first).map(|(end, start)| end.saturating_sub(start));
            running.stop().await?;
            let span = sink.state.span();
            figure(&format!("dispatch_msgs_per_s_{name}"), format!("{:.0}", per_second(records - 1, span)));
            figure(&format!("dispatch_drain_s_{name}"), format!("{:.3}", span.as_secs_f64()));
            figure(&format!("dispatch_requests_{name}"), sink.state.count.load(AtomicOrdering::Acquire));
            // CPU of this process (dispatcher and sink together) while draining; 2 cores at most.
            let cpu = cpu.map_or_else(|| "unknown".to_owned(), |cpu| format!("{:.2}", cpu.as_secs_f64()));
            figure(&format!("dispatch_cpu_s_{name}"), cpu);
        }

        self.latency(&producer).await?;
        println!("# load average at end: {}", load_average());
        Ok(())
    }

    fn producer(&self) -> anyhow::Result<RdKafkaProducer> {
        Ok(RdKafkaProducer::new(&ProducerSettings {
            bootstrap_servers: self.args.bootstrap_servers.clone(),
            properties_file: None,
            delivery_timeout: Duration::from_secs(30),
            max_record_bytes: 1_000_000,
            partitioner: Partitioner::default(),
        })?)
    }

    /// Benchmark record `index`: CloudEvents binary-mode headers, `ce_id` = index.
    fn record(&self, topic: &str, index: usize) -> OutgoingRecord {
        let key = format!("key-{}", index % usize::try_from(self.args.keys).unwrap_or(1));
        let mut value = format!(r#"{{"key":"{key}","seq":{index},"padding":""#).into_bytes();
        value.resize(self.args.value_bytes.saturating_sub(2).max(value.len()), b'x');
        value.extend_from_slice(b"\"}");
        let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
        OutgoingRecord {
            topic: topic.to_owned(),
            key: key.into_bytes(),
            payload: Some(value),
            headers: vec![
                header("ce_specversion", "1.0"),
                header("ce_id", &index.to_string()),
                header("ce_type", "bench.order.created"),
                header("ce_source", "/tributary/bench"),
                header("ce_time", "2026-01-01T00:00:00.000000Z"),
                header("content-type", "application/json"),
            ],
        }
    }

    fn start_dispatcher(&self, topic: &str, purpose: &str, ordering: Ordering, lanes: u16, sink: &BenchSink) -> anyhow::Result<Running> {
        let settings = DispatchSettings {
            consumer: ConsumerSettings {
                bootstrap_servers: self.args.bootstrap_servers.clone(),
                group: format!("tributary-bench-{}-{purpose}", self.run_id),
                topics: vec![topic.to_owned()],
                properties_file: Some(self.properties.clone()),
                start_from: StartFrom::Earliest,
            },
            sink: Arc::new(Sink::parse(&format!("http://{}/events", sink.address))?),
            ordering,
            lanes: usize::from(lanes),
            retry: RetryPolicy {
                max_attempts: 5,
                backoff: Backoff::Exponential,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(30),
            },
            dead_letter_topic: format!("{topic}.dlq"),
            filters: Vec::new(),
            request_timeout: Duration::from_secs(30),
            max_buffered_records: usize::try_from(self.args.max_buffered_records)?,
            max_buffered_bytes: 64 << 20,
        };
        let mut registry = Registry::default();
        // 5 % wide latency buckets from 0.1 ms (up to about 20 s): quantiles read to within 5 %.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.0001, 1.05, 250);
        let metrics = Arc::new(DispatchMetrics::register_with_latency_buckets(&mut registry, Readiness::default(), buckets));
        let dispatcher = Dispatcher::new(settings, Arc::new(self.producer()?), metrics.clone())?;
        let (stop, stopped) = watch::channel(false);
        Ok(Running { stop, task: tokio::spawn(dispatcher.run(stopped)), metrics, registry })
    }

    async fn latency(&self, producer: &Arc<RdKafkaProducer>) -> anyhow::Result<()> {
        let args = &self.args;
        let topic = self.latency_topic();
        let total = usize::try_from((f64::from(args.offered_rate) * args.duration.as_secs_f64()).ceil() as u64)?;
        let sink = BenchSink::start(total).await?;
        let ordering = args.latency_ordering;
        let lanes = if ordering == Ordering::PerKey { args.keys_in_flight } else { args.concurrency };
        let running = self.start_dispatcher(&topic, "latency", ordering, lanes, &sink)?;
        let joined = Instant::now();
        while !running.metrics.is_ready() {
            ensure!(joined.elapsed() < PHASE_TIMEOUT, "the latency dispatcher never joined its group");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the consumer fetch its (empty) partitions' start offsets before records arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Records go out every millisecond, as many as the offered rate asks for by then.
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0usize;
        let mut sends = Vec::new();
        while next < total {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * f64::from(args.offered_rate)) as usize).min(total);
            if due == next {
                continue;
            }
            let batch: Vec<OutgoingRecord> = (next..due).map(|index| self.record(&topic, index)).collect();
            let now = sink.state.nanos_since_base();
            (next..due).for_each(|index| sent[index].store(now, AtomicOrdering::Release));
            next = due;
            let (producer, state) = (producer.clone(), sink.state.clone());
            sends.push(tokio::spawn(async move {
                let results = producer.send_all(batch).await;
                (results, state.nanos_since_base().saturating_sub(now))
            }));
        }
        let producing = started.elapsed();
        let mut acks_ms = Vec::new();
        for send in futures::future::join_all(sends).await {
            let (results, ack_nanos) = send?;
            for result in results {
                result.context("a latency record was not acknowledged")?;
                acks_ms.push(ack_nanos as f64 / 1e6);
            }
        }
        acks_ms.sort_by(f64::total_cmp);
        let caught_up = Instant::now();
        while sink.state.count.load(AtomicOrdering::Acquire) < total && caught_up.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut exposition = String::new();
        prometheus_client::encoding::text::encode(&mut exposition, &running.registry)?;
        running.stop().await?;

        let mut latencies_ms: Vec<f64> = sink
            .state
            .times
            .iter()
            .zip(sent.iter())
            .filter_map(|(received, sent)| {
                let (received, sent) = (received.load(AtomicOrdering::Acquire), sent.load(AtomicOrdering::Acquire));
                (received != 0).then(|| received.saturating_sub(sent) as f64 / 1e6)
            })
            .collect();
        latencies_ms.sort_by(f64::total_cmp);
        figure("offered_msgs_per_s", args.offered_rate);
        figure("offered_msgs_per_s_achieved", format!("{:.0}", per_second(total, producing)));
        figure("latency_records", total);
        figure("latency_records_undelivered", total - latencies_ms.len());
        println!(
            "# delivery: a record's arrival in the dispatcher to the sink's answer (its histogram, 5 % wide buckets: upper bounds); \
             ordering {:?}",
            args.latency_ordering
        );
        for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            let value = histogram_quantile_bound(&exposition, "tributary_dispatch_delivery_latency_seconds", quantile)
                .map_or_else(|| "none".to_owned(), |seconds| format!("{:.2}", seconds * 1000.0));
            figure(&format!("{name}_delivery_ms"), value);
        }
        println!(
            "# end to end: the sink's receipt minus the instant the record was handed to the producer (producer linger, broker, fetch)"
        );
        for (name, quantile) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("max", 100.0)] {
            let value = percentile(&latencies_ms, quantile).map_or_else(|| "none".to_owned(), |ms| format!("{ms:.2}"));
            figure(&format!("{name}_end_to_end_ms"), value);
        }
        for (name, quantile) in [("p50", 50.0), ("p99", 99.0)] {
            let value = percentile(&acks_ms, quantile).map_or_else(|| "none".to_owned(), |ms| format!("{ms:.2}"));
            figure(&format!("{name}_produce_ack_ms"), value);
        }
        Ok(())
    }
}

/// A dispatcher running in this process.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), DispatchError>>,
    metrics: Arc<DispatchMetrics>,
    registry: Registry,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        Ok(self.task.await??)
    }
}

/// The upper bound of the histogram bucket holding the `quantile` (0..1) of the observations, from
/// an OpenMetrics text exposition; None without observations.
fn histogram_quantile_bound(exposition: &str, histogram: &str, quantile: f64) -> Option<f64> {
    let prefix = format!("{histogram}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let (bound, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, count)| *count >= quantile * total).map(|(bound, _)| *bound)
}

pub(crate) async fn create_topics(admin: &AdminClient<DefaultClientContext>, names: &[&str], partitions: i32) -> anyhow::Result<()> {
    let topics: Vec<NewTopic> = names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(-1))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await.context("CreateTopics")? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Reads every record of the topic from the beginning without HTTP: the dispatcher's ceiling.
fn consume_baseline(bootstrap: &str, topic: &str, partitions: i32, expected: usize) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("tributary-bench-baseline-{topic}"))
        .set("enable.auto.commit", "false")
        // The dispatcher's consumer tuning.
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("cannot create the baseline consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut first = None;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while count < expected {
        ensure!(Instant::now() < deadline, "baseline: {count} of {expected} records read");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                count += 1;
                bytes += message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
            }
            Some(Err(error)) => bail!("baseline consumer: {error}"),
            None => {}
        }
    }
    let span = first.map_or(Duration::ZERO, |first| first.elapsed());
    info!(bytes, "baseline read");
    Ok(per_second(count - 1, span))
}

/// What the sink saw: request count, first and last receipt, and per `ce-id` (when tracked) the
/// receipt time; times are nanoseconds since `base` plus one (zero: not yet).
struct SinkState {
    base: Instant,
    count: AtomicUsize,
    first: AtomicU64,
    last: AtomicU64,
    times: Vec<AtomicU64>,
}

impl SinkState {
    fn nanos_since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn span(&self) -> Duration {
        Duration::from_nanos(self.last.load(AtomicOrdering::Acquire).saturating_sub(self.first.load(AtomicOrdering::Acquire)))
    }
}

/// An in-process HTTP sink answering 200 to every POST.
struct BenchSink {
    address: SocketAddr,
    state: Arc<SinkState>,
    server: tokio::task::JoinHandle<()>,
}

impl BenchSink {
    /// `tracked`: how many `ce-id`s (0…tracked-1) get their receipt time recorded.
    async fn start(tracked: usize) -> anyhow::Result<BenchSink> {
        let state = Arc::new(SinkState {
            base: Instant::now(),
            count: AtomicUsize::new(0),
            first: AtomicU64::new(0),
            last: AtomicU64::new(0),
            times: (0..tracked).map(|_| AtomicU64::new(0)).collect(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BenchSink { address, state, server })
    }
}

impl Drop for BenchSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(state): State<Arc<SinkState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = state.nanos_since_base();
    let id = headers.get("ce-id").and_then(|id| id.to_str().ok()?.parse::<usize>().ok());
    if let Some(slot) = id.and_then(|id| state.times.get(id)) {
        let _ = slot.compare_exchange(0, now, AtomicOrdering::AcqRel, AtomicOrdering::Acquire);
    }
    let _ = state.first.compare_exchange(0, now, AtomicOrdering::AcqRel, AtomicOrdering::Acquire);
    state.last.fetch_max(now, AtomicOrdering::AcqRel);
    state.count.fetch_add(1, AtomicOrdering::AcqRel);
    drop(body);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bounded_by_their_bucket() {
        let exposition = "# TYPE x histogram\n\
            x_sum 1.0\n\
            x_count 100\n\
            x_bucket{le=\"0.001\"} 40\n\
            x_bucket{le=\"0.002\"} 90\n\
            x_bucket{le=\"0.004\"} 99\n\
            x_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile_bound(exposition, "x", 0.5), Some(0.002));
        assert_eq!(histogram_quantile_bound(exposition, "x", 0.99), Some(0.004));
        assert_eq!(histogram_quantile_bound(exposition, "x", 1.0), Some(f64::INFINITY));
        assert_eq!(histogram_quantile_bound("x_bucket{le=\"+Inf\"} 0\n", "x", 0.5), None);
        assert_eq!(histogram_quantile_bound("", "x", 0.5), None);
    }
}
