//! The references a Subscription makes (EventTopics, a consumer group, a dead-letter topic),
//! resolved and checked: fetching the EventTopics is the only I/O, everything else is pure.

use std::time::Duration;

use kube::core::error_boundary::DeserializeGuard;
use kube::{Api, ResourceExt};
use tributary_api::subscription::DeliveryMode;
use tributary_api::{EventTopic, Subscription};

use crate::event_topic::desired::max_message_bytes;
use crate::kafka::StartFrom;
use crate::seniority::older_claimant;

/// Kafka's longest topic name.
const MAX_TOPIC_NAME: usize = 249;

/// A referenced EventTopic, as far as the consumers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTopic {
    /// metadata.name of the EventTopic.
    pub name: String,
    /// The Kafka topic the EventTopic manages.
    pub kafka_topic: String,
    pub dead_letter_topic: Option<String>,
    /// The largest record the topic accepts, when its EventTopic sets it.
    pub max_message_bytes: Option<u64>,
}

/// Why the Subscription cannot run yet: referenced EventTopics that are missing or not Ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicsProblem {
    pub missing: Vec<String>,
    /// EventTopic name and why it is not Ready.
    pub not_ready: Vec<(String, String)>,
}

impl std::fmt::Display for TopicsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let missing = self.missing.iter().map(|name| format!("EventTopic {name:?} does not exist in this namespace"));
        let not_ready = self.not_ready.iter().map(|(name, why)| format!("EventTopic {name:?} is not Ready ({why})"));
        f.write_str(&missing.chain(not_ready).collect::<Vec<_>>().join("; "))
    }
}

/// Reads every EventTopic the Subscription references, in spec order; `None` for a missing one.
pub async fn fetch_topics(
    client: &kube::Client,
    subscription: &Subscription,
) -> Result<Vec<(String, Option<DeserializeGuard<EventTopic>>)>, kube::Error> {
    let namespace = subscription.namespace().unwrap_or_default();
    let api: Api<DeserializeGuard<EventTopic>> = Api::namespaced(client.clone(), &namespace);
    let mut fetched = Vec::with_capacity(subscription.spec.topics.len());
    for reference in &subscription.spec.topics {
        fetched.push((reference.name.clone(), api.get_opt(&reference.name).await?));
    }
    Ok(fetched)
}

/// The Kafka topics behind the references, or what keeps them from being usable: an EventTopic
/// must exist and be Ready (its Kafka topic exists and matches its spec).
pub fn resolve_topics(fetched: &[(String, Option<DeserializeGuard<EventTopic>>)]) -> Result<Vec<ResolvedTopic>, TopicsProblem> {
    let mut problem = TopicsProblem::default();
    let mut resolved = Vec::with_capacity(fetched.len());
    for (name, topic) in fetched {
        match topic.as_ref().map(|guard| &guard.0) {
            None => problem.missing.push(name.clone()),
            Some(Err(invalid)) => problem.not_ready.push((name.clone(), format!("it does not match the schema: {}", invalid.error))),
            // The real Kafka names (after the naming policy) are the ones its status gives.
            Some(Ok(topic)) => match (not_ready_reason(topic), crate::event_topic::status::ready_names(topic.status.as_ref())) {
                (None, Some(kafka)) => resolved.push(ResolvedTopic {
                    name: name.clone(),
                    kafka_topic: kafka.topic,
                    dead_letter_topic: kafka.dead_letter,
                    max_message_bytes: max_message_bytes(&topic.spec),
                }),
                (why, _) => problem.not_ready.push((name.clone(), why.unwrap_or_else(|| "its status names no Kafka topic".into()))),
            },
        }
    }
    if problem == TopicsProblem::default() {
        Ok(resolved)
    } else {
        Err(problem)
    }
}

fn not_ready_reason(topic: &EventTopic) -> Option<String> {
    match crate::event_topic::status::ready(topic.status.as_ref()) {
        Some(ready) if ready.status == "True" => None,
        Some(ready) => Some(format!("{}: {}", ready.reason, ready.message)),
        None => Some("not reconciled yet".into()),
    }
}

/// The older Subscription (`namespace/name`), in any namespace, that uses the same consumer group:
/// two Deployments in one group would split its partitions between unrelated consumers.
pub fn find_group_conflict<'a>(me: &Subscription, all: impl IntoIterator<Item = &'a Subscription>) -> Option<String> {
    let group = me.consumer_group();
    older_claimant(me, all.into_iter().filter(|other| other.consumer_group() == group))
        .map(|owner| format!("{}/{}", owner.namespace().unwrap_or_default(), owner.name_any()))
}

/// Where dead letters go, and whether this Subscription creates that topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    /// True when no referenced EventTopic manages the topic, so the operator creates it.
    pub owned: bool,
    /// For an owned topic: the largest `max.message.bytes` of the source topics, so that every
    /// record a source accepts fits (`None`: the broker's default, as for the sources).
    pub max_message_bytes: Option<u64>,
}

/// A spec the schema accepted that still cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field}: {message}")]
    Field { field: &'static str, message: String },
    #[error(
        "spec.delivery.deadLetter.topicName {topic:?} is the topic of EventTopic {event_topic:?}: dead letters would be consumed again"
    )]
    DeadLetterIsSource { topic: String, event_topic: String },
    #[error("the default dead-letter topic {0:?} is longer than Kafka's 249 characters; set spec.delivery.deadLetter.topicName")]
    DeadLetterNameTooLong(String),
}

/// The Subscription, resolved and checked: everything the desired objects are built from.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    pub subscription: &'a Subscription,
    pub name: String,
    pub namespace: String,
    pub group: String,
    pub topics: Vec<ResolvedTopic>,
    pub dead_letter: DeadLetter,
    pub start_from: StartFrom,
    pub cooldown: Duration,
}

impl Workload<'_> {
    /// The Kafka topic names, in spec order.
    pub fn kafka_topics(&self) -> Vec<String> {
        self.topics.iter().map(|topic| topic.kafka_topic.clone()).collect()
    }

    pub fn mode(&self) -> DeliveryMode {
        self.subscription.spec.delivery.mode
    }
}

/// Checks what the schema cannot and resolves the dead-letter topic.
pub fn workload(subscription: &Subscription, topics: Vec<ResolvedTopic>) -> Result<Workload<'_>, SpecError> {
    let spec = &subscription.spec;
    let field = |field: &'static str, message: String| SpecError::Field { field, message };
    let cooldown = tributary_api::duration::parse(&spec.scaling.cooldown).map_err(|error| field("scaling.cooldown", error.to_string()))?;
    for (name, value) in
        [("delivery.retry.initialDelay", &spec.delivery.retry.initial_delay), ("delivery.retry.maxDelay", &spec.delivery.retry.max_delay)]
    {
        tributary_api::duration::parse(value).map_err(|error| field(name, error.to_string()))?;
    }
    let start_from = StartFrom::parse(&spec.start_from).map_err(|message| field("startFrom", message))?;
    // The dispatcher reads filters one per line.
    if spec.delivery.filters.iter().any(|filter| filter.value.contains(['\n', '\r'])) {
        return Err(field("delivery.filters", "a filter value cannot contain a line break".into()));
    }
    let group = subscription.consumer_group();
    let dead_letter = dead_letter(subscription, &topics)?;
    Ok(Workload {
        subscription,
        name: subscription.name_any(),
        namespace: subscription.namespace().unwrap_or_default(),
        group,
        topics,
        dead_letter,
        start_from,
        cooldown,
    })
}

/// The dead-letter topic, which the Subscription owns unless a referenced EventTopic manages it.
fn dead_letter(subscription: &Subscription, topics: &[ResolvedTopic]) -> Result<DeadLetter, SpecError> {
    let sources: Vec<Option<String>> = topics.iter().map(|source| source.dead_letter_topic.clone()).collect();
    let topic = subscription.dead_letter_topic_name(&sources);
    if let Some(source) = topics.iter().find(|source| source.kafka_topic == topic) {
        return Err(SpecError::DeadLetterIsSource { topic, event_topic: source.name.clone() });
    }
    if topic.len() > MAX_TOPIC_NAME {
        return Err(SpecError::DeadLetterNameTooLong(topic));
    }
    let managed = sources.iter().any(|source| source.as_deref() == Some(topic.as_str()));
    let max_message_bytes = topics.iter().filter_map(|source| source.max_message_bytes).max();
    Ok(DeadLetter { topic, owned: !managed, max_message_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use crate::subscription::test_support::{ready, subscription};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn found(topic: EventTopic) -> (String, Option<DeserializeGuard<EventTopic>>) {
        (topic.name_any(), Some(DeserializeGuard(Ok(topic))))
    }

    fn resolved(name: &str, dead_letter: Option<&str>) -> ResolvedTopic {
        ResolvedTopic {
            name: name.into(),
            kafka_topic: format!("shop.{name}"),
            dead_letter_topic: dead_letter.map(str::to_owned),
            max_message_bytes: None,
        }
    }

    #[test]
    fn an_owned_dead_letter_topic_takes_the_largest_record_size_of_its_sources() {
        let big = ready(event_topic("orders", "maxMessageBytes: 4194304"));
        let plain = ready(event_topic("payments", ""));
        let topics = resolve_topics(&[found(big), found(plain)]).expect("resolved");
        assert_eq!(topics.iter().map(|topic| topic.max_message_bytes).collect::<Vec<_>>(), vec![Some(4_194_304), None]);
        let subscription = subscription("billing", "topics: [{ name: orders }, { name: payments }]");
        let dead_letter = workload(&subscription, topics).expect("valid").dead_letter;
        assert_eq!((dead_letter.owned, dead_letter.max_message_bytes), (true, Some(4_194_304)));
    }

    #[test]
    fn ready_event_topics_resolve_to_their_kafka_names() {
        let orders = ready(event_topic("orders", "topicName: shop.orders\ndeadLetter: {}"));
        let resolved = resolve_topics(&[found(orders)]).expect("resolved");
        assert_eq!(
            resolved,
            vec![ResolvedTopic {
                name: "orders".into(),
                kafka_topic: "shop.orders".into(),
                dead_letter_topic: Some("shop.orders.dlq".into()),
                max_message_bytes: None,
            }]
        );
    }

    #[test]
    fn missing_and_unready_event_topics_are_named() {
        let unready = event_topic("payments", "");
        let problem = resolve_topics(&[("orders".into(), None), found(unready), found(ready(event_topic("ok", "")))]).expect_err("waits");
        assert_eq!(problem.missing, vec!["orders".to_owned()]);
        assert_eq!(problem.not_ready, vec![("payments".to_owned(), "not reconciled yet".to_owned())]);
        assert_eq!(
            problem.to_string(),
            "EventTopic \"orders\" does not exist in this namespace; EventTopic \"payments\" is not Ready (not reconciled yet)"
        );
    }

    #[test]
    fn consumer_group_defaults_to_namespace_and_name() {
        assert_eq!(subscription("billing", "").consumer_group(), "default.billing");
        assert_eq!(subscription("billing", "consumerGroup: billing-v2").consumer_group(), "billing-v2");
    }

    #[test]
    fn the_older_subscription_keeps_a_shared_consumer_group() {
        let created = |mut subscription: Subscription, namespace: &str, seconds: i64| {
            subscription.metadata.namespace = Some(namespace.into());
            subscription.metadata.creation_timestamp = Some(Time(Timestamp::from_second(seconds).expect("timestamp")));
            subscription
        };
        let older = created(subscription("billing", "consumerGroup: shared"), "team-a", 100);
        let newer = created(subscription("audit", "consumerGroup: shared"), "team-b", 200);
        let other = created(subscription("other", ""), "team-c", 50);
        let all = [older.clone(), newer.clone(), other];
        assert_eq!(find_group_conflict(&older, &all), None);
        assert_eq!(find_group_conflict(&newer, &all), Some("team-a/billing".into()));
    }

    #[test]
    fn dead_letters_go_to_the_single_event_topics_dlq_or_to_an_owned_group_dlq() {
        let one = subscription("billing", "");
        let workload_for = |subscription: &Subscription, topics: Vec<ResolvedTopic>| workload(subscription, topics).map(|w| w.dead_letter);
        assert_eq!(
            workload_for(&one, vec![resolved("orders", Some("shop.orders.dlq"))]),
            Ok(DeadLetter { topic: "shop.orders.dlq".into(), owned: false, max_message_bytes: None })
        );
        assert_eq!(
            workload_for(&one, vec![resolved("orders", Some("a.dlq")), resolved("payments", None)]),
            Ok(DeadLetter { topic: "default.billing.dlq".into(), owned: true, max_message_bytes: None })
        );
        let explicit = subscription("billing", "delivery: { deadLetter: { topicName: billing-dead } }");
        assert_eq!(
            workload_for(&explicit, vec![resolved("orders", None)]),
            Ok(DeadLetter { topic: "billing-dead".into(), owned: true, max_message_bytes: None })
        );
        let into_source = subscription("billing", "delivery: { deadLetter: { topicName: shop.orders } }");
        assert_eq!(
            workload_for(&into_source, vec![resolved("orders", None)]),
            Err(SpecError::DeadLetterIsSource { topic: "shop.orders".into(), event_topic: "orders".into() })
        );
        let long_group = subscription("billing", &format!("consumerGroup: {}", "g".repeat(247)));
        assert!(matches!(workload_for(&long_group, vec![resolved("orders", None)]), Err(SpecError::DeadLetterNameTooLong(_))));
    }

    #[test]
    fn unparsable_durations_and_start_points_name_the_field() {
        let bad_cooldown = subscription("billing", "scaling: { cooldown: 5x }");
        assert!(workload(&bad_cooldown, Vec::new()).unwrap_err().to_string().starts_with("spec.scaling.cooldown: "));
        let bad_start = subscription("billing", "startFrom: '2026-13-45T00:00:00Z'");
        assert!(workload(&bad_start, Vec::new()).unwrap_err().to_string().starts_with("spec.startFrom: "));
        let multi_line = subscription("billing", "delivery: { filters: [{ attribute: type, operator: Exact, value: \"a\\nb\" }] }");
        assert!(workload(&multi_line, Vec::new()).unwrap_err().to_string().starts_with("spec.delivery.filters: "));
        let fine = subscription("billing", "startFrom: earliest\nscaling: { cooldown: 1m30s }");
        let checked = workload(&fine, vec![resolved("orders", None)]).expect("valid");
        assert_eq!((checked.start_from, checked.cooldown), (StartFrom::Earliest, Duration::from_secs(90)));
        assert_eq!(checked.kafka_topics(), vec!["shop.orders".to_owned()]);
    }
}
