//! The Kafka side: a group consumer polled on a thread of its own, which turns messages into
//! [`Record`]s (filtering on the way), pauses its partitions while the dispatcher's buffer is full,
//! and reports assignments and revocations in order with the records.
//!
//! Offsets: the engine stores the position of each partition (everything below it delivered,
//! dead-lettered or filtered) with `store_offsets`; librdkafka commits stored offsets every second,
//! and this thread commits them synchronously before giving partitions up and when it stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::filter::{accepts_all, Filter};
use super::metrics::DispatchMetrics;
use super::record::{Record, RecordHeader};
use super::scheduler::PartitionId;

/// Messages handed to the engine at once (fewer when no more are waiting).
const MAX_BATCH: usize = 1024;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Broker requests made inside a rebalance (committed offsets, offsets for a time).
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a group starts reading partitions it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

impl StartFrom {
    /// `earliest`, `latest` or an RFC 3339 timestamp with offset (`2026-01-02T03:04:05Z`).
    pub fn parse(text: &str) -> Result<StartFrom, String> {
        match text {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => text
                .parse::<jiff::Timestamp>()
                .map(|timestamp| StartFrom::Timestamp(timestamp.as_millisecond()))
                .map_err(|error| format!("start {text:?} is not earliest, latest or an RFC 3339 timestamp: {error}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub bootstrap_servers: String,
    pub group: String,
    pub topics: Vec<String>,
    /// librdkafka properties (SASL/TLS, tuning); the dispatcher's own settings win over them.
    pub properties_file: Option<PathBuf>,
    pub start_from: StartFrom,
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
    Filtered { partition: PartitionId, offset: i64 },
}

#[derive(Debug)]
pub enum ConsumerEvent {
    Assigned(Vec<AssignedPartition>),
    /// Everything of these partitions still held is to be dropped; they will be read again by
    /// whoever gets them.
    Revoked(Vec<PartitionId>),
    Records(Vec<Incoming>),
}

/// Records (and their weight in bytes) between the consumer and the end of their delivery; the
/// consumer pauses while either is at its limit and resumes below half of both.
#[derive(Debug)]
pub struct Budget {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
}

impl Budget {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Budget { records: AtomicUsize::new(0), bytes: AtomicUsize::new(0), max_records, max_bytes }
    }

    pub fn take(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn release(&self, bytes: usize) {
        self.records.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn records(&self) -> usize {
        self.records.load(Ordering::Acquire)
    }

    fn is_full(&self) -> bool {
        self.records() >= self.max_records || self.bytes.load(Ordering::Acquire) >= self.max_bytes
    }

    fn has_room_to_resume(&self) -> bool {
        self.records() <= self.max_records / 2 && self.bytes.load(Ordering::Acquire) <= self.max_bytes / 2
    }
}

/// What the engine tells the consumer thread.
#[derive(Debug, Default)]
pub struct ConsumerControl {
    /// Stop fetching (shutdown is under way); keep serving the group.
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
    /// The assignment changed since the pause state was last applied.
    changed: bool,
}

impl Assignment {
    fn add(&mut self, topic: &str, partition: i32) -> AssignedPartition {
        self.next_id += 1;
        let id = PartitionId(self.next_id);
        self.ids.entry(topic.to_owned()).or_default().insert(partition, id);
        self.changed = true;
        AssignedPartition { id, topic: Arc::from(topic), partition }
    }

    fn get(&self, topic: &str, partition: i32) -> Option<PartitionId> {
        self.ids.get(topic)?.get(&partition).copied()
    }

    fn clear(&mut self) -> Vec<PartitionId> {
        self.changed = true;
        std::mem::take(&mut self.ids).into_values().flat_map(HashMap::into_values).collect()
    }
}

/// Rebalances, statistics (lag, broker state) and errors of the consumer.
pub struct DispatchContext {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    metrics: Arc<DispatchMetrics>,
    start_from: StartFrom,
    assignment: Mutex<Assignment>,
}

impl DispatchContext {
    fn assignment(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, event: ConsumerEvent) {
        // The engine is gone only while shutting down, when nothing more is needed.
        let _ = self.events.send(event);
    }

    /// Partitions the group has no committed offset for start at the first record at or after
    /// `time` (or at the end when there is none); on failure they start from the beginning, which
    /// delivers too much rather than too little.
    fn start_at_time(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList, time: i64) -> Result<(), KafkaError> {
        let committed = consumer.committed_offsets(partitions.clone(), REBALANCE_REQUEST_TIMEOUT)?;
        let mut fresh = TopicPartitionList::new();
        for element in committed.elements() {
            if matches!(element.offset(), Offset::Invalid) {
                fresh.add_partition_offset(element.topic(), element.partition(), Offset::Offset(time))?;
            }
        }
        if fresh.count() == 0 {
            return Ok(());
        }
        for element in consumer.offsets_for_times(fresh, REBALANCE_REQUEST_TIMEOUT)?.elements() {
            let start = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::End,
            };
            partitions.set_partition_offset(element.topic(), element.partition(), start)?;
        }
        Ok(())
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        if let StartFrom::Timestamp(time) = self.start_from {
            if let Err(error) = self.start_at_time(consumer, partitions, time) {
                warn!(%error, "cannot look up offsets for --start-from; new partitions start from the beginning");
                for element in partitions.clone().elements() {
                    if matches!(element.offset(), Offset::Invalid) {
                        let _ = partitions.set_partition_offset(element.topic(), element.partition(), Offset::Beginning);
                    }
                }
            }
        }
        if let Err(error) = consumer.assign(partitions) {
            error!(%error, "cannot take the assigned partitions");
        }
        let assigned: Vec<AssignedPartition> = {
            let mut assignment = self.assignment();
            partitions.elements().iter().map(|element| assignment.add(element.topic(), element.partition())).collect()
        };
        let names: Vec<String> = assigned.iter().map(|p| format!("{}/{}", p.topic, p.partition)).collect();
        info!(partitions = ?names, "partitions assigned");
        self.send(ConsumerEvent::Assigned(assigned));
        self.metrics.set_assigned(true);
        self.metrics.set_broker_up(true);
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>) {
        let revoked = self.assignment().clear();
        info!(partitions = revoked.len(), "partitions revoked");
        self.send(ConsumerEvent::Revoked(revoked));
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
    Properties(#[from] tributary_api::kafka_properties::PropertiesError),
    #[error("cannot create the Kafka consumer for {bootstrap_servers}: {source}")]
    Create {
        bootstrap_servers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// Creates the consumer and subscribes; records and rebalances arrive on the returned channel
/// once [`run`] polls it.
pub fn create(
    settings: &ConsumerSettings,
    metrics: Arc<DispatchMetrics>,
) -> Result<(Arc<DispatchConsumer>, mpsc::UnboundedReceiver<ConsumerEvent>), ConsumerError> {
    let mut config = ClientConfig::new();
    // Tuning the properties file may override.
    config
        .set("auto.commit.interval.ms", "1000")
        .set("statistics.interval.ms", "5000")
        // The dispatcher buffers records itself: keep librdkafka's read-ahead modest.
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "100");
    if let Some(path) = &settings.properties_file {
        for (key, value) in tributary_api::kafka_properties::read(path)? {
            config.set(key, value);
        }
    }
    let reset = match settings.start_from {
        StartFrom::Latest => "latest",
        // A timestamp is applied on assignment; should that fail, start early rather than late.
        StartFrom::Earliest | StartFrom::Timestamp(_) => "earliest",
    };
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", &settings.group)
        // At-least-once: only offsets the engine stored (everything below done) are committed.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", reset)
        .set("enable.partition.eof", "false");
    let (events, receiver) = mpsc::unbounded_channel();
    let context = DispatchContext { events, metrics, start_from: settings.start_from, assignment: Mutex::default() };
    let consumer: DispatchConsumer = config
        .create_with_context(context)
        .map_err(|source| ConsumerError::Create { bootstrap_servers: settings.bootstrap_servers.clone(), source })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| ConsumerError::Subscribe { topics: settings.topics.clone(), source })?;
    Ok((Arc::new(consumer), receiver))
}

/// Polls until stopped (see the module documentation); run it on a thread of its own.
pub fn run(consumer: Arc<DispatchConsumer>, filters: Arc<[Filter]>, budget: Arc<Budget>, control: Arc<ConsumerControl>) {
    let mut paused = false;
    while !control.stopped.load(Ordering::Acquire) {
        let changed = std::mem::take(&mut consumer.context().assignment().changed);
        let pause = control.draining.load(Ordering::Acquire) || if paused { !budget.has_room_to_resume() } else { budget.is_full() };
        if pause != paused || (changed && pause) {
            debug!(paused = pause, records = budget.records(), "pausing or resuming the partitions");
            set_paused(&consumer, pause);
            paused = pause;
        }
        let Some(first) = consumer.poll(POLL_TIMEOUT) else { continue };
        let mut batch = Vec::with_capacity(MAX_BATCH.min(64));
        let (mut records, mut bytes) = (0, 0);
        let mut next = Some(first);
        while let Some(polled) = next {
            match polled {
                Ok(message) => {
                    if let Some(incoming) = to_incoming(&consumer, &message, &filters) {
                        if let Incoming::Deliver(record) = &incoming {
                            records += 1;
                            bytes += record.weight();
                        }
                        batch.push(incoming);
                    }
                }
                Err(error) => warn!(%error, "Kafka consumer error"),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if !batch.is_empty() {
            budget.take(records, bytes);
            consumer.context().send(ConsumerEvent::Records(batch));
        }
    }
    commit_stored(&consumer);
}

fn set_paused(consumer: &DispatchConsumer, paused: bool) {
    let partitions = match consumer.assignment() {
        Ok(partitions) => partitions,
        Err(error) => return warn!(%error, "cannot read the assignment to pause or resume it"),
    };
    let result = if paused { consumer.pause(&partitions) } else { consumer.resume(&partitions) };
    if let Err(error) = result {
        warn!(%error, paused, "cannot pause or resume the partitions");
    }
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
    let headers = headers
        .map(|headers| {
            headers.iter().map(|header| RecordHeader { name: header.key.to_owned(), value: header.value.map(Bytes::copy_from_slice) }).collect()
        })
        .unwrap_or_default();
    Some(Incoming::Deliver(Record {
        partition,
        offset,
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice),
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_from_is_earliest_latest_or_an_rfc3339_time() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        assert_eq!(StartFrom::parse("2026-01-02T03:04:05Z"), Ok(StartFrom::Timestamp(1_767_323_045_000)));
        assert_eq!(StartFrom::parse("2026-01-02T03:04:05.5+02:00"), Ok(StartFrom::Timestamp(1_767_315_845_500)));
        for bad in ["", "Earliest", "2026-01-02", "2026-01-02T03:04:05", "yesterday"] {
            assert!(StartFrom::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_budget_pauses_at_the_limit_and_resumes_below_half() {
        let budget = Budget::new(10, 1000);
        budget.take(9, 100);
        assert!(!budget.is_full());
        budget.take(1, 10);
        assert!(budget.is_full());
        for _ in 0..4 {
            budget.release(11);
        }
        assert!(!budget.is_full() && !budget.has_room_to_resume(), "6 records: below the limit, above half");
        budget.release(11);
        assert!(budget.has_room_to_resume());
        budget.take(1, 995);
        assert!(budget.is_full(), "bytes count too");
    }

    #[test]
    fn partition_ids_are_never_reused() {
        let mut assignment = Assignment::default();
        let first = assignment.add("orders", 0);
        assert_eq!(assignment.get("orders", 0), Some(first.id));
        assert_eq!(assignment.get("orders", 1), None);
        assert_eq!(assignment.clear(), [first.id]);
        assert_eq!(assignment.get("orders", 0), None);
        let again = assignment.add("orders", 0);
        assert_ne!(again.id, first.id);
    }
}
