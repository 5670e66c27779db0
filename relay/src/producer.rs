//! Publishing records to Kafka: a trait the relay loop calls, an rdkafka implementation
//! (idempotent, acks=all, gapless, pipelined) and an in-memory one for tests (only in test builds
//! and with the `testing` feature, which only dev-dependencies enable).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tributary_common::kafka_properties::client_config;

/// How the producer picks a record's partition from its key.
pub use tributary_api::outbox_relay::Partitioner;

#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeProducer;

/// A record ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutgoingRecord {
    /// Size as the broker counts it, near enough to refuse oversized records before sending.
    pub fn approximate_size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(name, value)| name.len() + value.len() + 8).sum();
        self.key.len() + self.payload.as_ref().map_or(0, Vec::len) + headers + 64
    }
}

/// Why a record was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The broker is unreachable or slow: send again later, the record is fine.
    #[error("Kafka unavailable: {0}")]
    Unavailable(String),
    /// The broker (or the producer, before sending) refused this record for good: too large,
    /// an invalid or unknown topic, not authorized… Sending it again fails the same way until
    /// someone changes the record, the topic or the rights.
    #[error("Kafka rejected the record: {0}")]
    Rejected(String),
    /// Not sent, or given up on, because of another record: an earlier record of its key was
    /// refused before it was sent, or Kafka refused a record of its partition and the producer,
    /// which keeps partitions without gaps, started afresh. Nothing is wrong with the record or
    /// with Kafka: send it again.
    #[error("record not sent: {0}")]
    Aborted(String),
}

/// Sends records and reports, in input order, whether each was acknowledged.
#[async_trait]
pub trait EventProducer: Send + Sync {
    /// Queues every record at once (one pipelined batch), then waits for all acknowledgements.
    ///
    /// Order per key: records are queued in input order, so records of one key that go to one
    /// topic reach their partition in that order; once one of them fails, none queued after it
    /// in its partition is acknowledged (later ones fail as [`ProduceError::Aborted`]). Records
    /// of one key that go to different topics are different partitions, which nothing keeps in
    /// order: send the later ones only once the earlier ones were acknowledged.
    async fn send_all(&self, records: Vec<OutgoingRecord>) -> Vec<Result<(), ProduceError>>;

    /// Whether a broker answers at all (a metadata request): what readiness rests on while
    /// there is nothing to send.
    async fn reachable(&self) -> bool;
}

/// How to reach Kafka.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub bootstrap_servers: String,
    pub properties_file: Option<PathBuf>,
    /// Give up on a record (and retry the batch later) after this long.
    pub delivery_timeout: Duration,
    pub max_record_bytes: usize,
    pub partitioner: Partitioner,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Properties(#[from] tributary_common::kafka_properties::PropertiesError),
    #[error("cannot create the Kafka producer for {bootstrap_servers}: {source}")]
    Create {
        bootstrap_servers: String,
        #[source]
        source: KafkaError,
    },
}

/// librdkafka's producer, with the relay's context.
type KafkaProducer = FutureProducer<QuietGapless>;

/// librdkafka's log as rdkafka writes it, without the warning that `enable.gapless.guarantee`
/// is experimental, which every producer start (and replacement) would print: the relay sets it
/// knowingly (see [`RdKafkaProducer::new`]).
struct QuietGapless;

impl ClientContext for QuietGapless {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "CONFWARN" && message.contains("enable.gapless.guarantee") {
            return;
        }
        DefaultClientContext.log(level, facility, message);
    }
}

/// The production [`EventProducer`].
pub struct RdKafkaProducer {
    config: ClientConfig,
    /// Replaced when it can no longer deliver (see `replace`).
    producer: std::sync::RwLock<KafkaProducer>,
}

impl RdKafkaProducer {
    pub fn new(settings: &ProducerSettings) -> Result<Self, ProducerError> {
        let mut config = client_config(&settings.bootstrap_servers, settings.properties_file.as_deref(), &[])?;
        config
            // Nothing is lost or reordered: every replica acknowledges, retries keep order.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
            .set("message.max.bytes", settings.max_record_bytes.to_string())
            // A record Kafka refuses for good leaves a gap in its partition's sequence; without
            // this the producer would renumber and send the records queued after it, which then
            // overtake it. With it, the producer fails them too (a fatal error: it is replaced).
            .set("enable.gapless.guarantee", "true")
            .set("partitioner", settings.partitioner.as_str())
            // Small linger: batches form under load without adding latency when idle.
            .set("linger.ms", "1")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.type", "lz4");
        let producer = config
            .create_with_context(QuietGapless)
            .map_err(|source| ProducerError::Create { bootstrap_servers: settings.bootstrap_servers.clone(), source })?;
        Ok(RdKafkaProducer { config, producer: std::sync::RwLock::new(producer) })
    }

    fn current(&self) -> KafkaProducer {
        self.producer.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Starts a new producer after a batch failed in a way the idempotent producer does not
    /// recover from by itself: a fatal error (e.g. UNKNOWN_PRODUCER_ID with retries in flight), or
    /// producer-state errors and timeouts after the broker lost its producer state (librdkafka
    /// then bumps the epoch locally and a broker that never saw the producer id keeps refusing
    /// it). The new producer asks the broker for a producer id again. Rows of the failed batch
    /// are still in the table and are sent again, in order.
    fn replace(&self, used: &KafkaProducer, why: &str) {
        let mut current = self.producer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !same_producer(&current, used) {
            return; // another worker replaced it already
        }
        match self.config.create_with_context::<_, KafkaProducer>(QuietGapless) {
            Ok(fresh) => {
                tracing::warn!(reason = why, "replacing the Kafka producer");
                let old = std::mem::replace(&mut *current, fresh);
                // Dropping purges and flushes (up to 500 ms): not on the async workers.
                std::thread::spawn(move || drop(old));
            }
            Err(error) => tracing::warn!(%error, "cannot replace the Kafka producer; retrying later"),
        }
    }
}

#[async_trait]
impl EventProducer for RdKafkaProducer {
    async fn send_all(&self, records: Vec<OutgoingRecord>) -> Vec<Result<(), ProduceError>> {
        let producer = self.current();
        let mut sent = Vec::with_capacity(records.len());
        // Keys of which a record could not be queued: later ones must not overtake it.
        let mut stopped: HashSet<&[u8]> = HashSet::new();
        for record in &records {
            if stopped.contains(record.key.as_slice()) {
                sent.push(Sent::KeyStopped);
                continue;
            }
            match enqueue(&producer, record).await {
                Ok(delivery) => sent.push(Sent::Queued(delivery)),
                Err(error) => {
                    stopped.insert(record.key.as_slice());
                    sent.push(Sent::Failed(error));
                }
            }
        }
        // Queued all at once: the whole batch is in flight; acknowledgements are awaited here.
        let mut stuck = None;
        let mut outcomes = Vec::with_capacity(records.len());
        for record in sent {
            outcomes.push(match record {
                Sent::Queued(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => {
                        if stuck.is_none() && needs_new_producer(&error) {
                            stuck = Some(error.to_string());
                        }
                        Err(Sent::Failed(error))
                    }
                    // Dropped without a report: the producer went away.
                    Err(_) => Err(Sent::Failed(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue))),
                },
                not_queued => Err(not_queued),
            });
        }
        // Only Kafka's refusal of a record makes a gapless producer give up this way.
        let after_a_refusal = {
            use rdkafka::producer::Producer;
            let fatal = producer.client().fatal_error();
            if let Some((_, reason)) = &fatal {
                stuck = Some(format!("fatal error: {reason}"));
            }
            matches!(fatal, Some((RDKafkaErrorCode::GaplessGuarantee, _)))
        };
        if let Some(why) = stuck {
            self.replace(&producer, &why);
        }
        outcomes
            .into_iter()
            .zip(&records)
            .map(|(outcome, record)| {
                outcome.map_err(|failure| match failure {
                    Sent::Failed(error) => classify(&error, &record.topic, after_a_refusal),
                    _ => ProduceError::Aborted("an earlier record of its key was not sent".into()),
                })
            })
            .collect()
    }

    async fn reachable(&self) -> bool {
        use rdkafka::producer::Producer;
        let producer = self.current();
        // A blocking librdkafka call: off the async workers.
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, REACHABILITY_TIMEOUT).is_ok()).await.unwrap_or(false)
    }
}

/// One record of a batch: queued, or why it was not (or, once awaited, why it failed).
enum Sent {
    Queued(rdkafka::producer::DeliveryFuture),
    Failed(KafkaError),
    /// Not queued: an earlier record of its key could not be.
    KeyStopped,
}

/// How long a record may wait for room in librdkafka's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Queues one record. A full local queue is waited for here, so that no later record (of any
/// key) is queued before this one.
async fn enqueue(producer: &KafkaProducer, record: &OutgoingRecord) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header { key: name, value: Some(value) });
        }
        let mut future_record = FutureRecord::to(&record.topic).key(&record.key).headers(headers);
        if let Some(payload) = &record.payload {
            future_record = future_record.payload(payload);
        }
        match producer.send_result(future_record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// How long a reachability probe waits for a broker's metadata answer.
const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(5);

fn same_producer(a: &KafkaProducer, b: &KafkaProducer) -> bool {
    use rdkafka::producer::Producer;
    std::ptr::eq(a.client().native_ptr(), b.client().native_ptr())
}

fn needs_new_producer(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::Fatal
                | Code::MessageTimedOut
                | Code::UnknownProducerId
                | Code::OutOfOrderSequenceNumber
                | Code::InvalidProducerEpoch
                | Code::InvalidProducerIdMapping
                | Code::ProducerFenced
        )
    )
}

/// What a failed record means. librdkafka retries whatever may pass later (a broker or leader
/// away, a request that timed out) until the delivery timeout; every other error it reports is
/// Kafka's (or its own) final word on the record, except the idempotent producer's own troubles:
/// after Kafka refused a record (`after_a_refusal`: the gapless producer gave up for its sake)
/// the records it took with it, otherwise a broker that lost the producer's state (a restart).
fn classify(error: &KafkaError, topic: &str, after_a_refusal: bool) -> ProduceError {
    let message = format!("{error} (topic {topic:?})");
    match error.rdkafka_error_code() {
        Some(code) if producer_trouble(code) && after_a_refusal => ProduceError::Aborted(message),
        Some(code) if outage(code) || producer_trouble(code) => ProduceError::Unavailable(message),
        Some(_) => ProduceError::Rejected(message),
        // Not librdkafka's word on the record (the client's own failure).
        None => ProduceError::Unavailable(message),
    }
}

/// Kafka is out of reach, or the relay's own access to it is refused: nothing to do with the
/// record, and the next one fares no better.
fn outage(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::MessageTimedOut
            | Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::Resolve
            | Code::OperationTimedOut
            | Code::TimedOutQueue
            | Code::QueueFull
            | Code::RequestTimedOut
            | Code::NetworkException
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::NotEnoughReplicas
            | Code::NotEnoughReplicasAfterAppend
            | Code::KafkaStorageError
            | Code::ThrottlingQuotaExceeded
            | Code::SSL
            | Code::Authentication
            | Code::SaslAuthenticationFailed
            | Code::ClusterAuthorizationFailed
            | Code::BrokerDestroy
            | Code::DestroyBroker
    )
}

/// The idempotent producer gave up on the record, and is replaced (see `needs_new_producer`).
fn producer_trouble(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::Fatal
            | Code::GaplessGuarantee
            | Code::PurgeQueue
            | Code::PurgeInflight
            | Code::Retry
            | Code::OutOfOrderSequenceNumber
            | Code::DuplicateSequenceNumber
            | Code::UnknownProducerId
            | Code::InvalidProducerEpoch
            | Code::InvalidProducerIdMapping
            | Code::ProducerFenced
            | Code::Fenced
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: RDKafkaErrorCode) -> ProduceError {
        classify(&KafkaError::MessageProduction(code), "shop.orders", false)
    }

    /// What Kafka refuses for the record's own sake counts against the row; only a broker that
    /// cannot be reached (or does not answer in time) is an outage.
    #[test]
    fn refusals_of_a_record_are_row_failures_and_only_transport_failures_are_outages() {
        use RDKafkaErrorCode as Code;
        for code in [
            Code::InvalidTopic,
            Code::TopicAuthorizationFailed,
            Code::MessageSizeTooLarge,
            Code::MessageBatchTooLarge,
            Code::InvalidRecord,
            Code::PolicyViolation,
            Code::UnknownTopicOrPartition,
            Code::UnknownTopic,
            Code::UnknownPartition,
            Code::InvalidTimestamp,
            Code::InvalidMessage,
            Code::BadMessage,
        ] {
            assert!(matches!(class(code), ProduceError::Rejected(_)), "{code:?} is the record's: {:?}", class(code));
        }
        for code in
            [Code::MessageTimedOut, Code::BrokerTransportFailure, Code::AllBrokersDown, Code::RequestTimedOut, Code::NetworkException]
        {
            assert!(matches!(class(code), ProduceError::Unavailable(_)), "{code:?} is an outage: {:?}", class(code));
        }
        // The idempotent producer's troubles: an outage (a broker that lost its state), unless
        // the producer gave up after Kafka refused a record for good.
        for code in [Code::Fatal, Code::PurgeQueue, Code::PurgeInflight, Code::OutOfOrderSequenceNumber, Code::UnknownProducerId] {
            assert!(matches!(class(code), ProduceError::Unavailable(_)), "{code:?} alone is an outage: {:?}", class(code));
            let after_a_refusal = classify(&KafkaError::MessageProduction(code), "shop.orders", true);
            assert!(matches!(after_a_refusal, ProduceError::Aborted(_)), "{code:?} after a refusal: {after_a_refusal:?}");
        }
        let refused = classify(&KafkaError::MessageProduction(Code::MessageSizeTooLarge), "shop.orders", true);
        assert!(matches!(refused, ProduceError::Rejected(_)), "the refused record itself: {refused:?}");
        assert!(class(Code::InvalidTopic).to_string().contains("\"shop.orders\""), "the error names the topic");
    }
}
