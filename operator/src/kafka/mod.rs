//! The operator's view of Kafka: small admin traits the reconcilers call (topics, consumer
//! groups), rdkafka implementations for production, and in-memory ones for unit and controller
//! tests (only in test builds and with the `testing` feature, which only dev-dependencies enable).

use std::collections::BTreeMap;

use async_trait::async_trait;

mod consumer_groups;
#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
mod fake_groups;
mod rdkafka_admin;
mod rdkafka_groups;

pub use consumer_groups::{ConsumerGroups, GroupLag, PartitionOffsets, StartFrom};
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeTopicAdmin;
#[cfg(any(test, feature = "testing"))]
pub use fake_groups::FakeConsumerGroups;
pub use rdkafka_admin::{KafkaConnection, RdKafkaTopicAdmin};

/// Whether a Kafka step changes Kafka or only reports what it would change (offline `apply
/// --dry-run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Apply,
    DryRun,
}

/// A topic as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// `None`: the broker's default.
    pub replication_factor: Option<i32>,
    /// Topic configs the spec manages, in Kafka's own string form.
    pub configs: BTreeMap<String, String>,
}

/// A topic as Kafka has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Every topic config the broker reported, defaults included.
    pub configs: BTreeMap<String, String>,
}

/// How a topic is laid out over the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    pub partitions: i32,
    pub replication_factor: i32,
}

/// Why a Kafka admin call failed, sorted by what the reconciler does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    /// The broker could not be reached or did not answer in time: retry later.
    #[error("Kafka is unavailable: {0}")]
    Unavailable(String),
    /// The broker does not implement the request (e.g. CreatePartitions on Tansu).
    #[error("the broker does not support {operation}: {message}")]
    Unsupported { operation: &'static str, message: String },
    /// The broker rejected a topic config key or value.
    #[error("the broker rejected the config of topic {topic:?}: {message}")]
    InvalidConfig { topic: String, message: String },
    /// The broker rejected the request for another reason.
    #[error("the broker rejected {operation} on topic {topic:?}: {message}")]
    Rejected { operation: &'static str, topic: String, message: String },
}

impl KafkaError {
    /// Label for the failures-by-reason metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            KafkaError::Unavailable(_) => "kafka_unavailable",
            KafkaError::Unsupported { .. } => "kafka_unsupported",
            KafkaError::InvalidConfig { .. } => "kafka_invalid_config",
            KafkaError::Rejected { .. } => "kafka_rejected",
        }
    }
}

/// The Kafka admin operations the operator uses. Implementations treat "already exists" on
/// create and "does not exist" on delete as success, so every call is safe to repeat.
#[async_trait]
pub trait TopicAdmin: Send + Sync {
    /// The topic's partitions, replication and configs, or `None` when it does not exist.
    async fn describe_topic(&self, name: &str) -> Result<Option<TopicState>, KafkaError>;
    /// Only the partition count and replication factor: the cheaper read-back after a create.
    async fn topic_layout(&self, name: &str) -> Result<Option<TopicLayout>, KafkaError>;
    /// Creates the topic; an existing topic of that name is success.
    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), KafkaError>;
    /// Raises the topic's partition count to `total`.
    async fn create_partitions(&self, name: &str, total: i32) -> Result<(), KafkaError>;
    /// Sets these configs (IncrementalAlterConfigs SET), leaving all others as they are.
    async fn set_configs(&self, name: &str, configs: &BTreeMap<String, String>) -> Result<(), KafkaError>;
    /// Deletes the topic; a topic that does not exist is success.
    async fn delete_topic(&self, name: &str) -> Result<(), KafkaError>;
}
