//! Publishing records to Kafka: a trait the relay loop calls, an rdkafka implementation
//! (idempotent, acks=all, pipelined) and an in-memory one for tests (only in test builds and with
//! the `testing` feature, which only dev-dependencies enable).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tributary_common::kafka_properties::client_config;

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
    /// The broker refused this record (too large, unknown topic, not authorized…).
    #[error("Kafka rejected the record: {0}")]
    Rejected(String),
}

/// Sends records and reports, in input order, whether each was acknowledged.
#[async_trait]
pub trait EventProducer: Send + Sync {
    /// Queues every record at once (one pipelined batch), then waits for all acknowledgements.
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

/// The production [`EventProducer`].
pub struct RdKafkaProducer {
    config: ClientConfig,
    /// Replaced when it can no longer deliver (see `replace`).
    producer: std::sync::RwLock<FutureProducer>,
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
            // Small linger: batches form under load without adding latency when idle.
            .set("linger.ms", "1")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.type", "lz4");
        let producer =
            config.create().map_err(|source| ProducerError::Create { bootstrap_servers: settings.bootstrap_servers.clone(), source })?;
        Ok(RdKafkaProducer { config, producer: std::sync::RwLock::new(producer) })
    }

    fn current(&self) -> FutureProducer {
        self.producer.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Starts a new producer after a batch failed in a way the idempotent producer does not
    /// recover from by itself: a fatal error (e.g. UNKNOWN_PRODUCER_ID with retries in flight), or
    /// producer-state errors and timeouts after the broker lost its producer state (librdkafka
    /// then bumps the epoch locally and a broker that never saw the producer id keeps refusing
    /// it). The new producer asks the broker for a producer id again. Rows of the failed batch
    /// are still in the table and are sent again, in order.
    fn replace(&self, used: &FutureProducer, why: &str) {
        let mut current = self.producer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !same_producer(&current, used) {
            return; // another worker replaced it already
        }
        match self.config.create::<FutureProducer>() {
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
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header { key: name, value: Some(value) });
            }
            let mut future_record = FutureRecord::to(&record.topic).key(&record.key).headers(headers);
            if let Some(payload) = &record.payload {
                future_record = future_record.payload(payload);
            }
            // `send` waits only when librdkafka's local queue is full; delivery is awaited below,
            // so the whole batch is in flight at once.
            deliveries.push(producer.send(future_record, Duration::from_secs(5)));
        }
        let mut stuck = None;
        let results: Vec<_> = futures::future::join_all(deliveries)
            .await
            .into_iter()
            .map(|delivery| {
                delivery.map(drop).map_err(|(error, _)| {
                    if stuck.is_none() && needs_new_producer(&error) {
                        stuck = Some(error.to_string());
                    }
                    classify(&error)
                })
            })
            .collect();
        {
            use rdkafka::producer::Producer;
            if let Some((_, reason)) = producer.client().fatal_error() {
                stuck = Some(format!("fatal error: {reason}"));
            }
        }
        if let Some(why) = stuck {
            self.replace(&producer, &why);
        }
        results
    }

    async fn reachable(&self) -> bool {
        use rdkafka::producer::Producer;
        let producer = self.current();
        // A blocking librdkafka call: off the async workers.
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, REACHABILITY_TIMEOUT).is_ok()).await.unwrap_or(false)
    }
}

/// How long a reachability probe waits for a broker's metadata answer.
const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(5);

fn same_producer(a: &FutureProducer, b: &FutureProducer) -> bool {
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

fn classify(error: &KafkaError) -> ProduceError {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::InvalidRecord
            | Code::PolicyViolation,
        ) => ProduceError::Rejected(error.to_string()),
        _ => ProduceError::Unavailable(error.to_string()),
    }
}
