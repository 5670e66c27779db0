//! The Kafka side: a group consumer polled on a thread of its own, which turns messages into
//! [`Record`]s (filtering on the way) and reports assignments and revocations in order with the
//! records.
//!
//! Flow control: every assigned partition gets a queue of its own (`split_partition_queue`), and
//! the thread reads them only while the dispatcher's buffer has room. librdkafka stops fetching
//! a partition whose queue holds `queued.max.messages.kbytes`, so memory stays bounded without
//! pausing partitions (a resume left librdkafka idle for up to a second). That limit applies to
//! each partition queue and is fixed when the consumer is created, so it is a total divided over
//! every partition of the consumed topics ([`ReadAhead`]): the sum stays within the total whatever
//! this member is assigned. The consumer's own queue, with rebalances and errors, is served all
//! the time.
//!
//! Start positions: a partition the group has no committed offset for starts at `--start-from`
//! resolved to an offset when it is assigned, and that offset is committed at once, so whoever
//! owns it next starts there too (see [`DispatchContext::pin_start_positions`]).
//!
//! Offsets: the engine stores the position of each partition (everything below it delivered,
//! dead-lettered or filtered) with `store_offsets`; librdkafka commits stored offsets every second,
//! and this thread commits them synchronously before giving partitions up and when it stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use tributary_common::kafka_properties::client_config;

use super::filter::{accepts_all, Filter};
use super::metrics::DispatchMetrics;
use super::record::Record;
use super::scheduler::PartitionId;

/// Messages handed to the engine at once (fewer when no more are waiting); also how far the
/// buffer may overshoot its limit.
const MAX_BATCH: usize = 256;
/// Longest sleep of the consumer thread without a wake-up (serving the consumer's queue).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Broker requests made inside a rebalance (committed offsets, offsets for a time).
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the engine to finish the deliveries of revoked partitions (it gives up on
/// them earlier, after the request timeout; this only guards against it being gone).
const REVOKE_WAIT_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait at shutdown for a rebalance under way to end before leaving the group (with the
/// engine's 25 s for deliveries in flight, inside Kubernetes' default 30 s grace).
const REJOIN_WAIT_LIMIT: Duration = Duration::from_secs(4);
/// Longest wait for the partitions of the consumed topics at start.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub use tributary_api::subscription::StartFrom;

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub bootstrap_servers: String,
    pub group: String,
    pub topics: Vec<String>,
    /// librdkafka properties (SASL/TLS, tuning); the dispatcher's own settings win over them.
    pub properties_file: Option<PathBuf>,
    pub start_from: StartFrom,
}

/// How much librdkafka fetches ahead of the dispatcher, per partition: a total divided over every
/// partition of the consumed topics (counted when the dispatcher starts), between 16 KiB and
/// 4 MiB a partition. A fetch response may overshoot a partition's share by the response's size
/// (`fetch.max.bytes`, which librdkafka keeps at the share or 1 MB, whichever is larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    kib_per_partition: usize,
    /// Partitions the total was divided over.
    partitions: usize,
}

impl ReadAhead {
    const MAX_KIB_PER_PARTITION: usize = 4096;
    const MIN_KIB_PER_PARTITION: usize = 16;

    pub fn divided(total_bytes: usize, partitions: usize) -> ReadAhead {
        let partitions = partitions.max(1);
        let kib_per_partition = (total_bytes / 1024 / partitions).clamp(Self::MIN_KIB_PER_PARTITION, Self::MAX_KIB_PER_PARTITION);
        ReadAhead { kib_per_partition, partitions }
    }

    pub fn kib_per_partition(&self) -> usize {
        self.kib_per_partition
    }
}

/// A partition newly assigned to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPartition {
    pub id: PartitionId,
    pub topic: Arc<str>,
    pub partition: i32,
}

/// A consumed message, as the engine takes it.
#[derive(Debug)]
pub enum Incoming {
    Deliver(Record),
    /// Did not pass the filters: done without delivery.
    Filtered {
        partition: PartitionId,
        offset: i64,
    },
}

#[derive(Debug)]
pub enum ConsumerEvent {
    Assigned(Vec<AssignedPartition>),
    /// Records of these partitions still held are dropped (whoever gets the partitions reads them
    /// again); deliveries in flight finish first, then the engine stores the positions and
    /// answers on `done`, and only then are the partitions committed and given up: no record
    /// of a key is delivered by the next owner while an earlier one is still in flight here.
    Revoked {
        partitions: Vec<PartitionId>,
        done: std::sync::mpsc::SyncSender<()>,
    },
    Records(Vec<Incoming>),
}

/// Wakes the consumer thread: librdkafka calls it when a queue turns non-empty, the engine when
/// the buffer has room again.
#[derive(Debug, Default)]
pub struct Wake {
    woken: Mutex<bool>,
    signal: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        self.signal.notify_one();
    }

    /// Sleeps until notified (a notification since the last wait counts) or `timeout`.
    fn wait(&self, timeout: Duration) {
        let mut woken = self.woken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*woken {
            woken = self.signal.wait_timeout(woken, timeout).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        *woken = false;
    }
}

/// Records (and their weight in bytes) between the consumer and the end of their delivery; the
/// consumer reads no more while either is at its limit.
#[derive(Debug)]
pub struct Budget {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
    wake: Arc<Wake>,
}

impl Budget {
    pub fn new(max_records: usize, max_bytes: usize, wake: Arc<Wake>) -> Self {
        Budget { records: AtomicUsize::new(0), bytes: AtomicUsize::new(0), max_records, max_bytes, wake }
    }

    pub fn take(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn release(&self, bytes: usize) {
        let records = self.records.fetch_sub(1, Ordering::AcqRel);
        let before = self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        // Crossing back below a limit: the consumer may be waiting for room.
        if records == self.max_records || (before >= self.max_bytes && before - bytes < self.max_bytes) {
            self.wake.notify();
        }
    }

    pub fn records(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }

    fn is_full(&self) -> bool {
        self.records() >= self.max_records || self.bytes.load(Ordering::Acquire) >= self.max_bytes
    }
}

/// What the engine tells the consumer thread.
#[derive(Debug, Default)]
pub struct ConsumerControl {
    /// Stop reading records (shutdown is under way); keep serving the group.
    draining: AtomicBool,
    /// Commit stored offsets, leave the group and end.
    stopped: AtomicBool,
}

impl ConsumerControl {
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

/// Partition ids of the current assignment, by topic and partition.
#[derive(Debug, Default)]
struct Assignment {
    ids: HashMap<String, HashMap<i32, PartitionId>>,
    next_id: u64,
    /// Assigned since the consumer thread last looked: their queues are to be split off.
    added: Vec<AssignedPartition>,
    /// Revoked since the consumer thread last looked: their queues are to be dropped.
    revoked: bool,
    /// Between a revocation and the assignment that ends the rebalance.
    rebalancing: bool,
}

impl Assignment {
    fn add(&mut self, topic: &str, partition: i32) -> AssignedPartition {
        self.next_id += 1;
        let id = PartitionId(self.next_id);
        self.ids.entry(topic.to_owned()).or_default().insert(partition, id);
        let assigned = AssignedPartition { id, topic: Arc::from(topic), partition };
        self.added.push(assigned.clone());
        assigned
    }

    fn get(&self, topic: &str, partition: i32) -> Option<PartitionId> {
        self.ids.get(topic)?.get(&partition).copied()
    }

    fn clear(&mut self) -> Vec<PartitionId> {
        self.added.clear();
        self.revoked = true;
        self.rebalancing = true;
        std::mem::take(&mut self.ids).into_values().flat_map(HashMap::into_values).collect()
    }
}

/// Rebalances, statistics (lag, broker state) and errors of the consumer.
pub struct DispatchContext {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    metrics: Arc<DispatchMetrics>,
    start_from: StartFrom,
    assignment: Mutex<Assignment>,
    /// Partitions the read-ahead was divided over.
    read_ahead: ReadAhead,
}

impl DispatchContext {
    fn assignment(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, event: ConsumerEvent) {
        // The engine is gone only while shutting down, when nothing more is needed.
        let _ = self.events.send(event);
    }

    /// Resolves where the partitions the group has no committed offset for start (`--start-from`:
    /// the end, the beginning, or the first record at or after a time, else the end), sets those
    /// offsets in `partitions` and returns them, to be committed once assigned. Committed, the
    /// start holds for whoever owns the partition next: without it a partition this member never
    /// took a record from (its buffer full, or the partition idle) would start at `latest` again
    /// after a rebalance or restart, past every record that arrived meanwhile.
    fn pin_start_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &mut TopicPartitionList,
    ) -> Result<TopicPartitionList, KafkaError> {
        let committed = consumer.committed_offsets(partitions.clone(), REBALANCE_REQUEST_TIMEOUT)?;
        let lookup = match self.start_from {
            StartFrom::Latest => Offset::End,
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Timestamp(time) => Offset::Offset(time),
        };
        let mut fresh = TopicPartitionList::new();
        for element in committed.elements() {
            if matches!(element.offset(), Offset::Invalid) {
                fresh.add_partition_offset(element.topic(), element.partition(), lookup)?;
            }
        }
        let mut starts = TopicPartitionList::new();
        let mut at_end = TopicPartitionList::new();
        if fresh.count() > 0 {
            for element in consumer.offsets_for_times(fresh, REBALANCE_REQUEST_TIMEOUT)?.elements() {
                match element.offset() {
                    Offset::Offset(offset) => starts.add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset))?,
                    // No record at or after the time.
                    _ => at_end.add_partition_offset(element.topic(), element.partition(), Offset::End)?,
                }
            }
        }
        if at_end.count() > 0 {
            for element in consumer.offsets_for_times(at_end, REBALANCE_REQUEST_TIMEOUT)?.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    starts.add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset))?;
                }
            }
        }
        for element in starts.elements() {
            partitions.set_partition_offset(element.topic(), element.partition(), element.offset())?;
        }
        Ok(starts)
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        let starts = self.pin_start_positions(consumer, partitions).unwrap_or_else(|error| {
            // The committed offsets apply, and auto.offset.reset for partitions without one.
            warn!(%error, "cannot resolve where partitions without a committed offset start; librdkafka resolves --start-from itself");
            TopicPartitionList::new()
        });
        if let Err(error) = consumer.assign(partitions) {
            error!(%error, "cannot take the assigned partitions");
        }
        if starts.count() > 0 {
            match consumer.commit(&starts, CommitMode::Sync) {
                Ok(()) => info!(partitions = ?names(&starts), "committed the start of partitions the group had no offset for"),
                Err(error) => warn!(%error, "cannot commit the start of partitions the group had no offset for"),
            }
        }
        if partitions.count() > self.read_ahead.partitions {
            warn!(
                assigned = partitions.count(),
                divided_over = self.read_ahead.partitions,
                "more partitions than the topics had at start: librdkafka's read-ahead may exceed its total until the dispatcher restarts"
            );
        }
        let assigned: Vec<AssignedPartition> = {
            let mut assignment = self.assignment();
            assignment.rebalancing = false;
            partitions.elements().iter().map(|element| assignment.add(element.topic(), element.partition())).collect()
        };
        info!(partitions = ?names(partitions), "partitions assigned");
        self.send(ConsumerEvent::Assigned(assigned));
        self.metrics.set_assigned(true);
        self.metrics.set_broker_up(true);
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>) {
        let revoked = self.assignment().clear();
        info!(partitions = revoked.len(), "partitions revoked: finishing their deliveries in flight");
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        self.send(ConsumerEvent::Revoked { partitions: revoked, done });
        // Answered, or dropped with the engine.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(REVOKE_WAIT_LIMIT) {
            warn!(limit = ?REVOKE_WAIT_LIMIT, "giving up revoked partitions without waiting for their deliveries");
        }
        // What is done is committed before the partitions go to another member.
        commit_stored(consumer);
        if let Err(error) = consumer.unassign() {
            error!(%error, "cannot give up the revoked partitions");
        }
        self.metrics.set_assigned(false);
    }
}

impl ClientContext for DispatchContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            _ => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag_stored > 0)
            .map(|partition| partition.consumer_lag_stored)
            .sum();
        self.metrics.set_lag(lag);
        self.metrics.set_broker_up(statistics.brokers.values().any(|broker| broker.state == "UP"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.metrics.set_broker_up(false);
        }
        warn!(%error, reason, "Kafka client error");
    }
}

impl ConsumerContext for DispatchContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(partitions = offsets.count(), "offsets committed"),
            // Nothing stored since the last commit.
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(error) => warn!(%error, "cannot commit offsets"),
        }
    }

    /// Eager rebalancing, with the start position applied to new partitions and stored offsets
    /// committed before revoked ones are released.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer),
            other => {
                error!(error = ?other, "rebalance failed; giving up the assignment");
                self.revoke(consumer);
            }
        }
    }
}

/// `topic/partition` of each element, for logs.
fn names(partitions: &TopicPartitionList) -> Vec<String> {
    partitions.elements().iter().map(|element| format!("{}/{}", element.topic(), element.partition())).collect()
}

fn commit_stored(consumer: &BaseConsumer<DispatchContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Err(error) => warn!(%error, "cannot commit offsets"),
    }
}

pub type DispatchConsumer = BaseConsumer<DispatchContext>;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Properties(#[from] tributary_common::kafka_properties::PropertiesError),
    #[error("cannot create the Kafka consumer for {bootstrap_servers}: {source}")]
    Create {
        bootstrap_servers: String,
        #[source]
        source: KafkaError,
    },
    #[error("partition.assignment.strategy {0:?}: the dispatcher needs an eager strategy (range, roundrobin)")]
    Cooperative(String),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// The consumer's configuration (properties file, tuning, the settings correctness relies on).
fn config(settings: &ConsumerSettings, read_ahead: ReadAhead) -> Result<ClientConfig, ConsumerError> {
    let read_ahead_kib = read_ahead.kib_per_partition.to_string();
    let tuning = [
        ("auto.commit.interval.ms", "1000"),
        ("statistics.interval.ms", "5000"),
        // Read-ahead per partition (each has its queue).
        ("queued.max.messages.kbytes", read_ahead_kib.as_str()),
        ("fetch.queue.backoff.ms", "50"),
        ("fetch.wait.max.ms", "100"),
    ];
    let mut config = client_config(&settings.bootstrap_servers, settings.properties_file.as_deref(), &tuning)?;
    // The rebalance handling assigns and revokes whole assignments.
    if let Some(strategy) = config.get("partition.assignment.strategy").filter(|strategy| strategy.contains("cooperative")) {
        return Err(ConsumerError::Cooperative(strategy.to_owned()));
    }
    let reset = match settings.start_from {
        StartFrom::Latest => "latest",
        // A timestamp is applied on assignment; should that fail, start early rather than late.
        StartFrom::Earliest | StartFrom::Timestamp(_) => "earliest",
    };
    config
        .set("group.id", &settings.group)
        // At-least-once: only offsets the engine stored (everything below done) are committed.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", reset)
        .set("enable.partition.eof", "false");
    Ok(config)
}

/// The consumer's configuration, accepted by librdkafka (a client made from it, which answers
/// metadata requests), before the dispatcher consumes anything.
pub struct Prepared {
    settings: ConsumerSettings,
    client: BaseConsumer,
}

/// Checks the consumer's configuration: errors are the configuration's (bad properties, unknown
/// settings, a cooperative assignment strategy).
pub fn prepare(settings: &ConsumerSettings) -> Result<Prepared, ConsumerError> {
    let client = config(settings, ReadAhead::divided(0, 1))?
        .create()
        .map_err(|source| ConsumerError::Create { bootstrap_servers: settings.bootstrap_servers.clone(), source })?;
    Ok(Prepared { settings: settings.clone(), client })
}

impl Prepared {
    /// Partitions of the consumed topics per the broker (a topic it does not know counts as one).
    /// Blocking.
    pub fn count_partitions(&self) -> Result<usize, KafkaError> {
        let mut total = 0;
        for topic in &self.settings.topics {
            let metadata = self.client.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
            total += metadata.topics().iter().map(|topic| topic.partitions().len()).sum::<usize>().max(1);
        }
        Ok(total)
    }

    /// Creates the consumer and subscribes; records and rebalances arrive on the returned channel
    /// once [`run`] polls it. `wake` is notified when the consumer's queue has something.
    pub fn subscribe(
        self,
        read_ahead: ReadAhead,
        metrics: Arc<DispatchMetrics>,
        wake: Arc<Wake>,
    ) -> Result<(Arc<DispatchConsumer>, mpsc::UnboundedReceiver<ConsumerEvent>), ConsumerError> {
        let settings = &self.settings;
        let (events, receiver) = mpsc::unbounded_channel();
        let context = DispatchContext { events, metrics, start_from: settings.start_from, assignment: Mutex::default(), read_ahead };
        let mut consumer: DispatchConsumer = config(settings, read_ahead)?
            .create_with_context(context)
            .map_err(|source| ConsumerError::Create { bootstrap_servers: settings.bootstrap_servers.clone(), source })?;
        consumer.set_nonempty_callback(move || wake.notify());
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| ConsumerError::Subscribe { topics: settings.topics.clone(), source })?;
        Ok((Arc::new(consumer), receiver))
    }
}

/// Messages read in one round, ready for the engine.
#[derive(Default)]
struct Batch {
    items: Vec<Incoming>,
    records: usize,
    bytes: usize,
}

impl Batch {
    fn add(&mut self, consumer: &DispatchConsumer, polled: KafkaResult<BorrowedMessage<'_>>, filters: &[Filter]) {
        match polled {
            Ok(message) => {
                if let Some(incoming) = to_incoming(consumer, &message, filters) {
                    if let Incoming::Deliver(record) = &incoming {
                        self.records += 1;
                        self.bytes += record.weight();
                    }
                    self.items.push(incoming);
                }
            }
            Err(error) => warn!(%error, "Kafka consumer error"),
        }
    }
}

/// Serves the consumer's own queue (rebalances run here) until it is empty; messages of
/// partitions whose queue was not split off yet come this way too.
fn serve_events(consumer: &DispatchConsumer, filters: &[Filter], batch: &mut Batch) {
    while let Some(polled) = consumer.poll(Duration::ZERO) {
        batch.add(consumer, polled, filters);
    }
}

type Queues = Vec<(PartitionId, PartitionQueue<DispatchContext>)>;

/// Splits off the queues of newly assigned partitions and drops those of revoked ones.
fn update_queues(consumer: &Arc<DispatchConsumer>, queues: &mut Queues, wake: &Arc<Wake>) -> bool {
    let (added, revoked) = {
        let mut assignment = consumer.context().assignment();
        (std::mem::take(&mut assignment.added), std::mem::take(&mut assignment.revoked))
    };
    if revoked {
        queues.clear();
    }
    for partition in &added {
        match consumer.split_partition_queue(&partition.topic, partition.partition) {
            Some(mut queue) => {
                let wake = wake.clone();
                queue.set_nonempty_callback(move || wake.notify());
                queues.push((partition.id, queue));
            }
            None => error!(topic = %partition.topic, partition = partition.partition, "cannot read the partition"),
        }
    }
    revoked || !added.is_empty()
}

/// Polls until stopped (see the module documentation); run it on a thread of its own.
pub fn run(consumer: Arc<DispatchConsumer>, filters: Arc<[Filter]>, budget: Arc<Budget>, control: Arc<ConsumerControl>, wake: Arc<Wake>) {
    let mut queues: Queues = Vec::new();
    let mut next = 0usize;
    while !control.stopped.load(Ordering::Acquire) {
        let mut batch = Batch::default();
        serve_events(&consumer, &filters, &mut batch);
        if update_queues(&consumer, &mut queues, &wake) {
            // What reached the consumer's queue before the split comes before the partition queue's.
            serve_events(&consumer, &filters, &mut batch);
        }
        if !control.draining.load(Ordering::Acquire) && !budget.is_full() && !queues.is_empty() {
            // One message per partition in turn, so no partition starves the others.
            let mut empty = 0;
            while batch.items.len() < MAX_BATCH && empty < queues.len() {
                next = (next + 1) % queues.len();
                match queues[next].1.poll(Duration::ZERO) {
                    Some(polled) => {
                        empty = 0;
                        batch.add(&consumer, polled, &filters);
                    }
                    None => empty += 1,
                }
            }
        }
        if batch.items.is_empty() {
            wake.wait(IDLE_WAIT);
            continue;
        }
        budget.take(batch.records, batch.bytes);
        consumer.context().send(ConsumerEvent::Records(batch.items));
    }
    // Leaving between a revocation and the assignment that ends the rebalance can strand the
    // other members in it (Tansu 0.6 never completes a rebalance whose members left before it
    // synced): the rebalance ends first, then this member leaves in a rebalance of its own.
    let deadline = std::time::Instant::now() + REJOIN_WAIT_LIMIT;
    while consumer.context().assignment().rebalancing && std::time::Instant::now() < deadline {
        serve_events(&consumer, &filters, &mut Batch::default());
        wake.wait(IDLE_WAIT);
    }
    commit_stored(&consumer);
}

fn to_incoming(consumer: &DispatchConsumer, message: &BorrowedMessage<'_>, filters: &[Filter]) -> Option<Incoming> {
    let (topic, partition_number, offset) = (message.topic(), message.partition(), message.offset());
    let Some(partition) = consumer.context().assignment().get(topic, partition_number) else {
        // Fetched before a revocation and returned after it: whoever owns it now reads it again.
        debug!(topic, partition = partition_number, offset, "dropping a message of a partition no longer assigned");
        return None;
    };
    let headers = message.headers();
    let header = |name: &str| headers.and_then(|headers| headers.iter().find(|header| header.key == name).and_then(|header| header.value));
    if !accepts_all(filters, header) {
        return Some(Incoming::Filtered { partition, offset });
    }
    let count = headers.map_or(0, Headers::count);
    let header_list = (0..count).filter_map(move |index| headers?.try_get(index)).map(|header| (header.key, header.value));
    Some(Incoming::Deliver(Record::copy_from(partition, offset, message.key(), message.payload(), header_list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_full_at_either_limit_and_wakes_the_consumer_below_it() {
        let wake = Arc::new(Wake::default());
        let budget = Budget::new(10, 1000, wake.clone());
        budget.take(9, 100);
        assert!(!budget.is_full());
        budget.take(1, 10);
        assert!(budget.is_full());
        assert!(!*wake.woken.lock().expect("lock"));
        budget.release(11);
        assert!(!budget.is_full());
        assert!(*wake.woken.lock().expect("lock"), "room again: the consumer is woken");
        wake.wait(Duration::ZERO);
        budget.release(11);
        assert!(!*wake.woken.lock().expect("lock"), "only when crossing the limit");
        budget.take(1, 995);
        assert!(budget.is_full(), "bytes count too");
        budget.release(995);
        assert!(*wake.woken.lock().expect("lock"));
    }

    #[test]
    fn the_read_ahead_total_is_divided_over_the_partitions() {
        let total = 32 << 20;
        assert_eq!(ReadAhead::divided(total, 1).kib_per_partition(), 4096, "at most 4 MiB a partition");
        assert_eq!(ReadAhead::divided(total, 64).kib_per_partition(), 512);
        assert_eq!(ReadAhead::divided(total, 0).kib_per_partition(), 4096, "an unknown count is one");
        assert_eq!(ReadAhead::divided(total, 5000).kib_per_partition(), 16, "at least 16 KiB a partition");
        let config = config(
            &ConsumerSettings {
                bootstrap_servers: "kafka:9092".into(),
                group: "g".into(),
                topics: vec!["t".into()],
                properties_file: None,
                start_from: StartFrom::Latest,
            },
            ReadAhead::divided(total, 64),
        )
        .expect("config");
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("512"));
    }

    #[test]
    fn partition_ids_are_never_reused() {
        let mut assignment = Assignment::default();
        let first = assignment.add("orders", 0);
        assert_eq!(assignment.get("orders", 0), Some(first.id));
        assert_eq!(assignment.get("orders", 1), None);
        assert_eq!(assignment.added, std::slice::from_ref(&first));
        assert_eq!(assignment.clear(), [first.id]);
        assert!(assignment.added.is_empty() && assignment.revoked);
        assert_eq!(assignment.get("orders", 0), None);
        let again = assignment.add("orders", 0);
        assert_ne!(again.id, first.id);
    }
}
