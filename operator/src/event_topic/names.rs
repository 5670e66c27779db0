//! The real Kafka names of an EventTopic's topics (pure): the names its spec asks for, mapped by
//! the operator's naming policy, except that a topic its status records as its own keeps its
//! name when the policy changes, so switching from `Free` to `NamespacePrefixed` never moves a
//! running EventTopic to a new, empty topic.

use kube::ResourceExt;
use tributary_api::EventTopic;

use super::desired::{SpecError, TopicRole};
use super::ownership::recorded;
use crate::naming::{self, NamingPolicy, MAX_TOPIC_NAME};

/// The Kafka topics of an EventTopic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaNames {
    pub topic: String,
    /// When the dead-letter topic is enabled.
    pub dead_letter: Option<String>,
}

impl KafkaNames {
    /// The names of `topic`'s Kafka topics under `policy`, or why the spec cannot have them.
    pub fn of(topic: &EventTopic, policy: &NamingPolicy) -> Result<Self, SpecError> {
        let namespace = topic.namespace().unwrap_or_default();
        let field = if topic.spec.topic_name.is_some() { "spec.topicName" } else { "metadata.name" };
        let requested = topic.requested_topic_name();
        let name = |field: &'static str, role: TopicRole, requested: &str| -> Result<String, SpecError> {
            if naming::is_internal(requested) {
                return Err(SpecError::InternalTopicName { field, name: requested.to_owned() });
            }
            let kept = recorded(topic.status.as_ref(), role)
                .map(|(name, _)| name)
                .filter(|name| naming::names_under_any_policy(&namespace, requested).iter().any(|candidate| candidate == name));
            let name = kept.map_or_else(|| policy.kafka_name(&namespace, requested), str::to_owned);
            check_length(field, name, policy, &namespace)
        };
        let main = name(field, TopicRole::Main, requested)?;
        let dead_letter = match topic.spec.dead_letter.as_ref().filter(|dead_letter| dead_letter.enabled) {
            None => None,
            Some(dead_letter) => Some(match &dead_letter.topic_name {
                Some(requested) => name(DEAD_LETTER_FIELD, TopicRole::DeadLetter, requested)?,
                // After the real name of the topic, so it follows wherever the topic is.
                None => check_length(DEAD_LETTER_FIELD, format!("{main}.dlq"), policy, &namespace)?,
            }),
        };
        Ok(KafkaNames { topic: main, dead_letter })
    }

    /// The name of the topic in `role`, if the EventTopic has one.
    pub fn of_role(&self, role: TopicRole) -> Option<&str> {
        match role {
            TopicRole::Main => Some(&self.topic),
            TopicRole::DeadLetter => self.dead_letter.as_deref(),
        }
    }

    /// Every Kafka topic the EventTopic names: its topic, then its dead-letter topic.
    pub fn all(&self) -> Vec<String> {
        let mut names = vec![self.topic.clone()];
        names.extend(self.dead_letter.clone());
        names
    }
}

const DEAD_LETTER_FIELD: &str = "spec.deadLetter.topicName";

fn check_length(field: &'static str, name: String, policy: &NamingPolicy, namespace: &str) -> Result<String, SpecError> {
    if name.len() <= MAX_TOPIC_NAME {
        return Ok(name);
    }
    let prefix = policy.prefix(namespace).filter(|prefix| name.starts_with(prefix.as_str()));
    let origin = prefix.map(|prefix| format!(", with the prefix {prefix:?} of {}", policy.describe())).unwrap_or_default();
    Err(SpecError::NameTooLong { field, length: name.len(), name, origin })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use tributary_api::event_topic::Origin;
    use tributary_api::EventTopicStatus;

    fn prefixed() -> NamingPolicy {
        NamingPolicy::namespace_prefixed(["platform".to_owned()])
    }

    fn in_namespace(mut topic: EventTopic, namespace: &str) -> EventTopic {
        topic.metadata.namespace = Some(namespace.into());
        topic
    }

    #[test]
    fn free_names_are_the_names_asked_for() {
        let topic = event_topic("orders", "deadLetter: {}");
        assert_eq!(
            KafkaNames::of(&topic, &NamingPolicy::default()),
            Ok(KafkaNames { topic: "orders".into(), dead_letter: Some("orders.dlq".into()) })
        );
    }

    #[test]
    fn namespace_prefixed_names_put_the_namespace_in_front_of_both_topics() {
        let topic = in_namespace(event_topic("orders", "deadLetter: {}"), "shop");
        assert_eq!(
            KafkaNames::of(&topic, &prefixed()),
            Ok(KafkaNames { topic: "shop.orders".into(), dead_letter: Some("shop.orders.dlq".into()) })
        );
        let named = in_namespace(event_topic("orders", "topicName: orders-v2\ndeadLetter: { topicName: orders-dead }"), "shop");
        assert_eq!(
            KafkaNames::of(&named, &prefixed()),
            Ok(KafkaNames { topic: "shop.orders-v2".into(), dead_letter: Some("shop.orders-dead".into()) })
        );
        let platform = in_namespace(event_topic("audit", ""), "platform");
        assert_eq!(KafkaNames::of(&platform, &prefixed()).map(|names| names.topic), Ok("audit".into()));
    }

    #[test]
    fn a_topic_recorded_in_status_keeps_its_name_when_the_policy_changes() {
        // Created under Free (by the previous version: no origin recorded, but synced).
        let mut topic = in_namespace(event_topic("orders", "deadLetter: { topicName: orders-dead }"), "shop");
        topic.status = Some(EventTopicStatus {
            topic_name: Some("orders".into()),
            dead_letter_topic: Some("orders-dead".into()),
            partitions: Some(1),
            ..EventTopicStatus::default()
        });
        assert_eq!(KafkaNames::of(&topic, &prefixed()), Ok(KafkaNames { topic: "orders".into(), dead_letter: Some("orders-dead".into()) }));
        // Created under NamespacePrefixed, then the operator goes back to Free.
        topic.status =
            Some(EventTopicStatus { topic_name: Some("shop.orders".into()), origin: Some(Origin::Created), ..EventTopicStatus::default() });
        assert_eq!(KafkaNames::of(&topic, &NamingPolicy::default()).map(|names| names.topic), Ok("shop.orders".into()));
        // A name recorded without an origin (never created, e.g. AdoptionRequired) is not kept.
        topic.status = Some(EventTopicStatus { topic_name: Some("orders".into()), ..EventTopicStatus::default() });
        assert_eq!(KafkaNames::of(&topic, &prefixed()).map(|names| names.topic), Ok("shop.orders".into()));
    }

    #[test]
    fn internal_names_are_refused_naming_the_field() {
        let internal = event_topic("offsets", "topicName: __consumer_offsets");
        assert_eq!(
            KafkaNames::of(&internal, &NamingPolicy::default()).map_err(|error| error.to_string()),
            Err("spec.topicName \"__consumer_offsets\" begins with '_': such names are Kafka's internal topics (such as __consumer_offsets and _schemas); choose another name".into())
        );
        let dead_letter = event_topic("orders", "deadLetter: { topicName: _schemas }");
        for policy in [NamingPolicy::default(), prefixed()] {
            let error = KafkaNames::of(&dead_letter, &policy).expect_err("refused").to_string();
            assert!(error.starts_with("spec.deadLetter.topicName \"_schemas\" begins with '_'"), "{error}");
        }
    }

    #[test]
    fn a_prefixed_name_longer_than_kafka_allows_is_refused_naming_the_field() {
        let long = in_namespace(event_topic("orders", &format!("topicName: {}", "o".repeat(246))), "shop");
        assert!(KafkaNames::of(&long, &NamingPolicy::default()).is_ok(), "246 characters fit without the prefix");
        let error = KafkaNames::of(&long, &prefixed()).expect_err("too long").to_string();
        assert!(error.starts_with("spec.topicName: the Kafka topic name \"shop.ooo"), "{error}");
        assert!(
            error.contains(
                "has 251 characters, with the prefix \"shop.\" of the operator's NamespacePrefixed naming policy; Kafka allows 249"
            ),
            "{error}"
        );

        let default_dead_letter = in_namespace(event_topic("orders", &format!("topicName: {}\ndeadLetter: {{}}", "o".repeat(241))), "shop");
        let error = KafkaNames::of(&default_dead_letter, &NamingPolicy::namespace_prefixed([])).expect_err("too long").to_string();
        assert!(error.starts_with("spec.deadLetter.topicName: the Kafka topic name"), "{error}");
        let from_metadata = in_namespace(event_topic(&"m".repeat(249), ""), "shop");
        let error = KafkaNames::of(&from_metadata, &prefixed()).expect_err("too long").to_string();
        assert!(error.starts_with("metadata.name: "), "{error}");
    }
}
