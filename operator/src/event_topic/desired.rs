//! What Kafka should hold for an EventTopic (pure): the topic and its dead-letter topic, with the
//! configs the spec manages.

use std::collections::BTreeMap;

use tributary_api::duration::{self, DurationError};
use tributary_api::{EventTopic, EventTopicSpec};

use super::names::KafkaNames;
use crate::kafka::{TopicSpec, TopicState};

/// Whether a desired topic is the EventTopic's own topic or its dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    Main,
    DeadLetter,
}

impl TopicRole {
    pub fn describe(self) -> &'static str {
        match self {
            TopicRole::Main => "topic",
            TopicRole::DeadLetter => "dead-letter topic",
        }
    }
}

/// A Kafka topic the EventTopic wants, with the config keys Tributary must never touch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    pub role: TopicRole,
    pub spec: TopicSpec,
    pub ignored_keys: Vec<String>,
    pub inherited: Inherited,
}

/// What a dead-letter topic takes from its topic rather than from spec.deadLetter: settings the
/// spec does not name for it, so an adopted one is not held to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inherited {
    pub configs: Vec<String>,
    pub partitions: bool,
    pub replication_factor: bool,
}

impl DesiredTopic {
    /// What an adopted topic is held to: only the settings the spec names for it; Kafka keeps
    /// the rest as it has them.
    pub fn adopted(mut self, actual: &TopicState) -> DesiredTopic {
        let inherited = std::mem::take(&mut self.inherited);
        self.spec.configs.retain(|key, _| !inherited.configs.contains(key));
        if inherited.partitions {
            self.spec.partitions = actual.partitions;
        }
        if inherited.replication_factor {
            self.spec.replication_factor = None;
        }
        self
    }
}

/// A spec the apiserver accepted but that cannot be turned into Kafka settings. The CRD's
/// patterns make this rare (objects created before a schema change, or offline input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field}: {source}")]
    Duration { field: &'static str, source: DurationError },
    #[error("spec.config[{key:?}] is set by spec.{field}; remove it from spec.config")]
    DuplicateConfig { key: String, field: &'static str },
    #[error("spec.deadLetter.topicName {0:?} is the topic itself")]
    DeadLetterIsTopic(String),
    #[error(
        "{field} {name:?} begins with '_': such names are Kafka's internal topics (such as __consumer_offsets and _schemas); choose another name"
    )]
    InternalTopicName { field: &'static str, name: String },
    #[error("{field}: the Kafka topic name {name:?} has {length} characters{origin}; Kafka allows 249: choose a shorter name")]
    NameTooLong { field: &'static str, name: String, length: usize, origin: String },
    #[error(
        "spec.config[{0:?}] is not a Kafka topic config; check the spelling, or list it in spec.ignoredConfigKeys if another tool owns it"
    )]
    UnknownConfig(String),
}

/// Topic-level configs of Apache Kafka 3.x and 4.x. Brokers differ in whether they reject unknown
/// keys (Kafka does, Tansu stores them), so Tributary checks names itself, before touching Kafka.
const KAFKA_TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.downconversion.enable",
    "message.format.version",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// The largest record a topic accepts.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";

/// Prefixes of broker vendors' own topic configs, passed through unchecked.
const VENDOR_CONFIG_PREFIXES: &[&str] = &["confluent.", "redpanda.", "tansu."];

fn check_config_key(key: &str) -> Result<(), SpecError> {
    if KAFKA_TOPIC_CONFIGS.contains(&key) || VENDOR_CONFIG_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
        Ok(())
    } else {
        Err(SpecError::UnknownConfig(key.to_owned()))
    }
}

/// The largest record the spec lets the topic take (`maxMessageBytes` or the config key), if it
/// says; an ignored key does not count.
pub fn max_message_bytes(spec: &EventTopicSpec) -> Option<u64> {
    if spec.ignored_config_keys.iter().any(|key| key == MAX_MESSAGE_BYTES) {
        return None;
    }
    let typed = spec.max_message_bytes.and_then(|bytes| u64::try_from(bytes).ok());
    typed.or_else(|| spec.config.get(MAX_MESSAGE_BYTES).and_then(|value| value.parse().ok()))
}

/// The topics an EventTopic wants, named `names`: its own, then its dead-letter topic when
/// enabled.
pub fn desired_topics(topic: &EventTopic, names: &KafkaNames) -> Result<Vec<DesiredTopic>, SpecError> {
    let spec = &topic.spec;
    spec.config.keys().try_for_each(|key| check_config_key(key))?;
    let mut configs = spec.config.clone();
    let typed = [
        ("retention.ms", "retention", spec.retention.as_deref().map(|r| retention("retention", r)).transpose()?),
        ("cleanup.policy", "cleanupPolicy", spec.cleanup_policy.map(|p| p.as_kafka().to_owned())),
        ("min.insync.replicas", "minInSyncReplicas", spec.min_in_sync_replicas.map(|n| n.to_string())),
        ("compression.type", "compression", spec.compression.map(|c| c.as_kafka().to_owned())),
        (MAX_MESSAGE_BYTES, "maxMessageBytes", spec.max_message_bytes.map(|n| n.to_string())),
    ];
    for (key, field, value) in typed {
        if let Some(value) = value {
            if configs.insert(key.to_owned(), value).is_some() {
                return Err(SpecError::DuplicateConfig { key: key.to_owned(), field });
            }
        }
    }
    let ignored_keys = spec.ignored_config_keys.clone();
    configs.retain(|key, _| !ignored_keys.contains(key));

    let main = DesiredTopic {
        role: TopicRole::Main,
        spec: TopicSpec { name: names.topic.clone(), partitions: spec.partitions, replication_factor: spec.replication_factor, configs },
        ignored_keys: ignored_keys.clone(),
        inherited: Inherited::default(),
    };
    let Some(dead_letter_name) = names.dead_letter.clone() else {
        return Ok(vec![main]);
    };
    if dead_letter_name == main.spec.name {
        return Err(SpecError::DeadLetterIsTopic(dead_letter_name));
    }
    let dead_letter = spec.dead_letter.as_ref();
    let mut dead_letter_configs = BTreeMap::new();
    let mut inherited = Inherited { configs: Vec::new(), partitions: false, replication_factor: true };
    match dead_letter.and_then(|dl| dl.retention.as_deref()) {
        Some(value) => {
            dead_letter_configs.insert("retention.ms".to_owned(), retention("deadLetter.retention", value)?);
        }
        None => {
            if let Some(value) = main.spec.configs.get("retention.ms") {
                dead_letter_configs.insert("retention.ms".to_owned(), value.clone());
                inherited.configs.push("retention.ms".to_owned());
            }
        }
    }
    // A record the topic accepts must fit its dead-letter topic too, or it can never be
    // dead-lettered and holds up its partition.
    if let Some(value) = main.spec.configs.get(MAX_MESSAGE_BYTES) {
        dead_letter_configs.insert(MAX_MESSAGE_BYTES.to_owned(), value.clone());
        inherited.configs.push(MAX_MESSAGE_BYTES.to_owned());
    }
    dead_letter_configs.retain(|key, _| !ignored_keys.contains(key));
    let partitions = match dead_letter.and_then(|dl| dl.partitions) {
        Some(partitions) => partitions,
        None => {
            inherited.partitions = true;
            spec.partitions
        }
    };
    let dead_letter = DesiredTopic {
        role: TopicRole::DeadLetter,
        spec: TopicSpec { name: dead_letter_name, partitions, replication_factor: spec.replication_factor, configs: dead_letter_configs },
        ignored_keys,
        inherited,
    };
    Ok(vec![main, dead_letter])
}

fn retention(field: &'static str, value: &str) -> Result<String, SpecError> {
    duration::retention_ms(value).map(|ms| ms.to_string()).map_err(|source| SpecError::Duration { field, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use crate::naming::NamingPolicy;

    /// The desired topics under the default naming policy.
    fn desired(topic: &EventTopic) -> Result<Vec<DesiredTopic>, SpecError> {
        desired_topics(topic, &KafkaNames::of(topic, &NamingPolicy::default())?)
    }

    #[test]
    fn typed_fields_become_kafka_configs() {
        let topic = event_topic(
            "orders",
            r#"
            partitions: 6
            replicationFactor: 3
            retention: 7d
            cleanupPolicy: compact,delete
            minInSyncReplicas: 2
            compression: zstd
            maxMessageBytes: 1048576
            config: { segment.bytes: "536870912" }
            "#,
        );
        let desired = desired(&topic).expect("valid spec");
        assert_eq!(desired.len(), 1);
        let spec = &desired[0].spec;
        assert_eq!((spec.name.as_str(), spec.partitions, spec.replication_factor), ("orders", 6, Some(3)));
        let expected: BTreeMap<String, String> = [
            ("cleanup.policy", "compact,delete"),
            ("compression.type", "zstd"),
            ("max.message.bytes", "1048576"),
            ("min.insync.replicas", "2"),
            ("retention.ms", "604800000"),
            ("segment.bytes", "536870912"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(spec.configs, expected);
    }

    #[test]
    fn dead_letter_topic_defaults_to_dlq_suffix_and_inherits_retention_and_partitions() {
        let topic = event_topic("payments", "partitions: 4\nretention: 3d\ndeadLetter: { enabled: true }");
        let desired = desired(&topic).expect("valid spec");
        let dead_letter = &desired[1];
        assert_eq!(dead_letter.role, TopicRole::DeadLetter);
        assert_eq!(dead_letter.spec.name, "payments.dlq");
        assert_eq!(dead_letter.spec.partitions, 4);
        assert_eq!(dead_letter.spec.configs.get("retention.ms").map(String::as_str), Some("259200000"));
    }

    #[test]
    fn dead_letter_settings_override_the_topic() {
        let topic = event_topic(
            "payments",
            "partitions: 4\nretention: 3d\ndeadLetter: { topicName: payments-dead, partitions: 1, retention: infinite }",
        );
        let dead_letter = &desired(&topic).expect("valid spec")[1];
        assert_eq!((dead_letter.spec.name.as_str(), dead_letter.spec.partitions), ("payments-dead", 1));
        assert_eq!(dead_letter.spec.configs.get("retention.ms").map(String::as_str), Some("-1"));
    }

    #[test]
    fn dead_letter_topics_take_the_largest_record_size_of_their_topic() {
        for spec in ["maxMessageBytes: 2097152", "config: { max.message.bytes: '2097152' }"] {
            let topic = event_topic("payments", &format!("{spec}\ndeadLetter: {{ enabled: true }}"));
            let dead_letter = &desired(&topic).expect("valid spec")[1];
            assert_eq!(dead_letter.spec.configs.get(MAX_MESSAGE_BYTES).map(String::as_str), Some("2097152"), "{spec}");
        }
        let plain = event_topic("payments", "deadLetter: { enabled: true }");
        assert!(!desired(&plain).expect("valid spec")[1].spec.configs.contains_key(MAX_MESSAGE_BYTES), "the broker's default");
    }

    #[test]
    fn disabled_dead_letter_is_not_wanted() {
        let topic = event_topic("payments", "deadLetter: { enabled: false }");
        assert_eq!(desired(&topic).expect("valid spec").len(), 1);
    }

    #[test]
    fn ignored_keys_are_never_desired() {
        let topic = event_topic("orders", "retention: 1d\nignoredConfigKeys: [retention.ms]\nconfig: { segment.ms: '1000' }");
        let desired = desired(&topic).expect("valid spec");
        assert!(!desired[0].spec.configs.contains_key("retention.ms"));
        assert_eq!(desired[0].ignored_keys, vec!["retention.ms".to_owned()]);
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let duplicate = event_topic("orders", "retention: 1d\nconfig: { retention.ms: '5' }");
        assert_eq!(
            desired(&duplicate).unwrap_err().to_string(),
            "spec.config[\"retention.ms\"] is set by spec.retention; remove it from spec.config"
        );
        let bad_duration = event_topic("orders", "retention: 7days");
        assert!(desired(&bad_duration).unwrap_err().to_string().starts_with("spec.retention: "));
        let unknown = event_topic("orders", "config: { segment.byte: '1' }");
        assert_eq!(desired(&unknown), Err(SpecError::UnknownConfig("segment.byte".into())));
        let vendor = event_topic("orders", "config: { confluent.placement.constraints: '{}' }");
        assert!(desired(&vendor).is_ok());
        let same_name = event_topic("orders", "deadLetter: { topicName: orders }");
        assert_eq!(desired(&same_name), Err(SpecError::DeadLetterIsTopic("orders".into())));
    }

    #[test]
    fn an_adopted_dead_letter_topic_is_held_only_to_its_own_settings() {
        let actual = |partitions| TopicState { name: "payments.dlq".into(), partitions, replication_factor: 3, configs: BTreeMap::new() };
        let inheriting =
            event_topic("payments", "partitions: 4\nreplicationFactor: 1\nretention: 3d\nmaxMessageBytes: 2097152\ndeadLetter: {}");
        let dead_letter = desired(&inheriting).expect("valid spec").remove(1).adopted(&actual(12));
        assert!(dead_letter.spec.configs.is_empty(), "{:?}", dead_letter.spec.configs);
        assert_eq!((dead_letter.spec.partitions, dead_letter.spec.replication_factor), (12, None), "Kafka's, not the topic's");

        let own = event_topic("payments", "partitions: 4\nretention: 3d\ndeadLetter: { partitions: 16, retention: 14d }");
        let dead_letter = desired(&own).expect("valid spec").remove(1).adopted(&actual(12));
        assert_eq!(dead_letter.spec.configs.get("retention.ms").map(String::as_str), Some("1209600000"));
        assert_eq!(dead_letter.spec.partitions, 16);

        let main = desired(&own).expect("valid spec").remove(0);
        assert_eq!(main.clone().adopted(&actual(12)), main, "the topic's own settings are all named by the spec");
    }
}
