//! `EventTopic`: one Kafka topic, its dead-letter topic, and how long both live.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::patterns;

/// Topic settings the typed fields own; setting them in `config` as well would be ambiguous.
pub const TYPED_CONFIG_KEYS: [&str; 5] = ["retention.ms", "cleanup.policy", "min.insync.replicas", "compression.type", "max.message.bytes"];

/// A Kafka topic managed by Tributary, with an optional dead-letter topic.
///
/// The operator creates the topic, grows its partitions, corrects drift of the settings this
/// spec names, and deletes it only when `deletionPolicy` says so. A topic that already exists is
/// taken over only with `adopt: true`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "EventTopic",
    namespaced,
    status = "EventTopicStatus",
    shortname = "et",
    shortname = "topic",
    category = "tributary",
    derive = "PartialEq",
    doc = "A Kafka topic managed by Tributary, with an optional dead-letter topic.",
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topicName", description = "Kafka topic name"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".status.partitions", description = "Partitions the topic has in Kafka"),
    printcolumn(name = "DLQ", type_ = "string", json_path = ".status.deadLetterTopic", description = "Dead-letter topic"),
    printcolumn(name = "Origin", type_ = "string", json_path = ".status.origin", description = "Whether this EventTopic created the Kafka topic or adopted it", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Reason", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].reason"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name) == (has(oldSelf.spec.topicName) ? oldSelf.spec.topicName : oldSelf.metadata.name)"
    ).message("spec.topicName is immutable: the Kafka topic of an EventTopic cannot be renamed").field_path(".spec.topicName"),
    validation = Rule::new(
        "!has(self.spec.topicName) ? self.metadata.name.matches('^[a-zA-Z0-9._-]{1,249}$') : true"
    ).message("metadata.name is used as the Kafka topic name, so it must be a valid topic name; set spec.topicName otherwise"),
    validation = Rule::new(
        "!has(self.spec.deadLetter) || !has(self.spec.deadLetter.topicName) || self.spec.deadLetter.topicName != (has(self.spec.topicName) ? self.spec.topicName : self.metadata.name)"
    ).message("spec.deadLetter.topicName must differ from the topic itself").field_path(".spec.deadLetter.topicName"),
    validation = Rule::new(
        "!has(self.spec.deadLetter) || !self.spec.deadLetter.enabled || has(self.spec.deadLetter.topicName) || size(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name) <= 245"
    ).message("the default dead-letter topic name <topic>.dlq would exceed Kafka's 249 characters; set spec.deadLetter.topicName").field_path(".spec.deadLetter.topicName"),
    validation = Rule::new("!has(self.spec.deletionPolicy) || self.spec.deletionPolicy != 'DeleteIncludingAdopted' || (has(self.spec.adopt) && self.spec.adopt)")
        .message("spec.deletionPolicy DeleteIncludingAdopted deletes adopted topics, so it needs spec.adopt: true").field_path(".spec.deletionPolicy"),
)]
#[x_kube(
    validation = Rule::new("!has(self.minInSyncReplicas) || !has(self.replicationFactor) || self.minInSyncReplicas <= self.replicationFactor")
        .message("spec.minInSyncReplicas cannot exceed spec.replicationFactor").field_path(".minInSyncReplicas"),
    validation = Rule::new("has(self.replicationFactor) == has(oldSelf.replicationFactor)")
        .message("spec.replicationFactor cannot be set or removed after creation").field_path(".replicationFactor"),
    validation = Rule::new("!has(self.ignoredConfigKeys) || !has(self.config) || !self.ignoredConfigKeys.exists(k, k in self.config)")
        .message("a key cannot be both in spec.config and in spec.ignoredConfigKeys").field_path(".ignoredConfigKeys"),
)]
#[serde(rename_all = "camelCase")]
pub struct EventTopicSpec {
    /// Name of the Kafka topic. Defaults to metadata.name. Immutable. Under the operator's
    /// `NamespacePrefixed` naming policy the Kafka topic is `<namespace>.<topicName>`;
    /// status.topicName shows the real name. Names beginning with `_` are Kafka's own.
    #[schemars(regex(pattern = patterns::KAFKA_TOPIC_NAME.regex), length(min = 1, max = 249))]
    #[x_kube(
        validation = Rule::new("self != '.' && self != '..'").message("'.' and '..' are not valid Kafka topic names"),
        validation = patterns::not_internal_topic(),
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,

    /// Number of partitions. May grow, never shrink (Kafka cannot remove partitions).
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 100000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("spec.partitions cannot decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,

    /// Replicas of each partition. Leave unset for the broker's default. Cannot change after
    /// creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32767))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.replicationFactor cannot change after creation"))]
    pub replication_factor: Option<i32>,

    /// How long records are kept, as a duration (`7d`, `12h`, `30m`) or `infinite`. Sets
    /// Kafka's `retention.ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::RETENTION.regex))]
    pub retention: Option<String>,

    /// What Kafka does with old records: delete them, keep the latest per key (compact), or both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<CleanupPolicy>,

    /// Minimum replicas that must acknowledge a write made with acks=all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32767))]
    pub min_in_sync_replicas: Option<i32>,

    /// Compression the broker stores records with; `producer` keeps what producers sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,

    /// Largest record batch the topic accepts, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<i32>,

    /// Any other Kafka topic config (for example `segment.bytes`), as strings. Keys the typed
    /// fields above own are rejected here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[a-z][a-z0-9]*([.-][a-z0-9]+)*$'))")
            .message("spec.config keys must be Kafka config names such as segment.bytes"),
        validation = Rule::new("!['retention.ms', 'cleanup.policy', 'min.insync.replicas', 'compression.type', 'max.message.bytes'].exists(k, k in self)")
            .message("spec.config must not set retention.ms, cleanup.policy, min.insync.replicas, compression.type or max.message.bytes: use the typed fields"),
    )]
    pub config: BTreeMap<String, String>,

    /// Config keys other tools own: never set and never reverted by Tributary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub ignored_config_keys: Vec<String>,

    /// The dead-letter topic that consumers send undeliverable events to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterTopic>,

    /// Whether this EventTopic may take over Kafka topics (the topic or its dead-letter topic)
    /// that already exist and that it did not create. Without it such a topic is left untouched
    /// and Ready is False with reason `AdoptionRequired`. An adopted topic keeps every setting
    /// this spec does not name (an adopted dead-letter topic takes no retention, record size,
    /// partitions or replication factor from the topic, only its own deadLetter settings), and is
    /// deleted with the EventTopic only under `deletionPolicy: DeleteIncludingAdopted`.
    /// status.origin and status.deadLetterOrigin say which topics were created and which adopted.
    /// Setting it back to false leaves adopted topics alone again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,

    /// What happens to the Kafka topics when this EventTopic is deleted: `Retain` (default)
    /// leaves them; `Delete` removes the topic and the dead-letter topic if this EventTopic
    /// created them (adopted ones are left); `DeleteIncludingAdopted` removes adopted ones too
    /// (needs `adopt: true`).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Who besides this namespace may read the topic. Subscriptions in this EventTopic's own
    /// namespace always may; a Subscription in another namespace may name it in its spec.topics
    /// (with `namespace`) only when that namespace is listed here. Removing a namespace withdraws
    /// the grant: the operator stops reconciling its Subscriptions of this topic and reports
    /// `AccessDenied` on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// Who may read an EventTopic from other namespaces.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq, Default)]
pub struct Access {
    /// Namespaces whose Subscriptions may read this topic (and send their dead letters to its
    /// dead-letter topic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into()]))]
    pub subscribers: Vec<SubscriberGrant>,
}

/// A namespace granted to read an EventTopic.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct SubscriberGrant {
    /// The namespace, by name. Grants name namespaces rather than select them by label: whoever
    /// may label a namespace could otherwise grant it access to other teams' topics.
    #[schemars(regex(pattern = patterns::NAMESPACE.regex))]
    pub namespace: String,
}

fn default_partitions() -> i32 {
    1
}

/// Kafka `cleanup.policy`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compact")]
    Compact,
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

/// Kafka `compression.type`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_kafka(self) -> &'static str {
        match self {
            Compression::Producer => "producer",
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Whether deleting the EventTopic deletes the Kafka topics too. Adopting a topic and deleting
/// it are separate consents: `Delete` only removes what the EventTopic created.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep the Kafka topics (and their data) when the EventTopic is deleted.
    #[default]
    Retain,
    /// Delete the Kafka topics this EventTopic created with it; adopted ones are kept.
    Delete,
    /// Delete the Kafka topics with the EventTopic, adopted ones included.
    DeleteIncludingAdopted,
}

/// How a Tributary object came to hold a Kafka resource: the operator `Created` it for the object
/// (a topic it made, a consumer group that had no committed offsets), or it existed and the object
/// `Adopted` it with its spec's consent (an EventTopic's `adopt`, a Subscription's
/// `adoptConsumerGroup`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Adopted,
}

/// The dead-letter topic of an EventTopic.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterTopic {
    /// Whether the dead-letter topic exists.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Kafka name of the dead-letter topic. Defaults to `<topic>.dlq` (after the Kafka topic's
    /// name). Under the operator's `NamespacePrefixed` naming policy a name given here becomes
    /// `<namespace>.<topicName>`. Names beginning with `_` are Kafka's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::KAFKA_TOPIC_NAME.regex))]
    #[x_kube(
        validation = Rule::new("self != '.' && self != '..'").message("'.' and '..' are not valid Kafka topic names"),
        validation = patterns::not_internal_topic(),
    )]
    pub topic_name: Option<String>,

    /// Partitions of the dead-letter topic. Defaults to those of the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: Option<i32>,

    /// How long dead letters are kept (`14d`, `infinite`). Defaults to the topic's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::RETENTION.regex))]
    pub retention: Option<String>,
}

fn default_true() -> bool {
    true
}

/// What the operator last saw of the topic in Kafka.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventTopicStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready says whether the Kafka topic matches the spec, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Name of the Kafka topic, as the operator's naming policy makes it (`<namespace>.<name>`
    /// under `NamespacePrefixed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,

    /// Whether this EventTopic `Created` the Kafka topic named in topicName or `Adopted` it.
    /// Kept as long as the topic is this EventTopic's; it decides what deletion may remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,

    /// Partitions the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,

    /// Replication factor the topic has in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,

    /// Name of the dead-letter topic, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,

    /// Whether this EventTopic `Created` the dead-letter topic or `Adopted` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_origin: Option<Origin>,

    /// When the operator last compared the topic in Kafka with the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

impl EventTopic {
    /// The topic name this EventTopic asks for: spec.topicName, else metadata.name. It is the
    /// Kafka name under the operator's default (`Free`) naming policy; status.topicName is the
    /// real one.
    pub fn requested_topic_name(&self) -> &str {
        self.spec.topic_name.as_deref().unwrap_or_else(|| self.metadata.name.as_deref().unwrap_or_default())
    }

    /// Whether Subscriptions in `namespace` may read this topic: its own namespace always may,
    /// others when spec.access.subscribers lists them.
    pub fn grants_subscribers_in(&self, namespace: &str) -> bool {
        self.metadata.namespace.as_deref() == Some(namespace)
            || self.spec.access.iter().flat_map(|access| &access.subscribers).any(|grant| grant.namespace == namespace)
    }

    /// The dead-letter topic name this EventTopic asks for, when it is enabled: its own, else
    /// `<requested topic name>.dlq`. Status.deadLetterTopic is the real one.
    pub fn requested_dead_letter_name(&self) -> Option<String> {
        let dead_letter = self.spec.dead_letter.as_ref().filter(|dl| dl.enabled)?;
        Some(dead_letter.topic_name.clone().unwrap_or_else(|| format!("{}.dlq", self.requested_topic_name())))
    }
}
