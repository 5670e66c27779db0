//! The references a Subscription makes (EventTopics, a consumer group, a dead-letter topic),
//! resolved and checked: fetching the EventTopics is the only I/O, everything else is pure.

use std::time::Duration;

use kube::core::error_boundary::DeserializeGuard;
use kube::ResourceExt;
use tributary_api::subscription::DeliveryMode;
use tributary_api::{EventTopic, Subscription};

use crate::event_topic::desired::max_message_bytes;
use crate::kafka::StartFrom;
use crate::naming::{self, NamingPolicy, MAX_TOPIC_NAME};
use crate::seniority::older_claimant;

/// A referenced EventTopic, as far as the consumers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTopic {
    /// The EventTopic as the spec names it: `name`, or `namespace/name` in another namespace.
    pub name: String,
    /// The Kafka topic the EventTopic manages.
    pub kafka_topic: String,
    pub dead_letter_topic: Option<String>,
    /// The largest record the topic accepts, when its EventTopic sets it.
    pub max_message_bytes: Option<u64>,
}

/// Why the Subscription cannot run yet: referenced EventTopics that it may not read, that are
/// missing or that are not Ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicsProblem {
    /// EventTopics of other namespaces (`namespace/name`) that do not grant this namespace access,
    /// or do not exist: the two look the same, so that no namespace learns what another has.
    pub denied: Vec<String>,
    pub missing: Vec<String>,
    /// EventTopic name and why it is not Ready.
    pub not_ready: Vec<(String, String)>,
    /// The Subscription's namespace, for the messages.
    pub namespace: String,
}

impl std::fmt::Display for TopicsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let namespace = &self.namespace;
        let denied = self.denied.iter().map(|name| {
            format!("EventTopic {name} does not grant namespace {namespace} access (its spec.access.subscribers), or does not exist")
        });
        let missing = self.missing.iter().map(|name| format!("EventTopic {name:?} does not exist in this namespace"));
        let not_ready = self.not_ready.iter().map(|(name, why)| format!("EventTopic {name:?} is not Ready ({why})"));
        f.write_str(&denied.chain(missing).chain(not_ready).collect::<Vec<_>>().join("; "))
    }
}

/// An EventTopic a Subscription references, as fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub namespace: String,
    pub name: String,
    /// `None`: it does not exist.
    pub topic: Option<DeserializeGuard<EventTopic>>,
}

/// The namespace and name of every EventTopic the Subscription references, in spec order.
pub fn references(subscription: &Subscription) -> impl Iterator<Item = (&str, &str)> {
    let own = subscription.metadata.namespace.as_deref().unwrap_or_default();
    subscription.spec.topics.iter().map(move |reference| (reference.namespace_or(own), reference.name.as_str()))
}

/// The Kafka topics behind the references of a Subscription in `namespace`, or what keeps them
/// from being usable: an EventTopic must grant the namespace access (its own always does), exist
/// and be Ready (its Kafka topic exists and matches its spec).
pub fn resolve_topics(namespace: &str, fetched: &[Fetched]) -> Result<Vec<ResolvedTopic>, TopicsProblem> {
    let mut problem = TopicsProblem { namespace: namespace.to_owned(), ..TopicsProblem::default() };
    let mut resolved = Vec::with_capacity(fetched.len());
    for reference in fetched {
        let foreign = reference.namespace != namespace;
        let name = if foreign { format!("{}/{}", reference.namespace, reference.name) } else { reference.name.clone() };
        let topic = reference.topic.as_ref().map(|guard| &guard.0);
        match topic {
            _ if foreign && !topic.is_some_and(|topic| topic.as_ref().is_ok_and(|topic| topic.grants_subscribers_in(namespace))) => {
                problem.denied.push(name)
            }
            None => problem.missing.push(name),
            Some(Err(invalid)) => problem.not_ready.push((name, format!("it does not match the schema: {}", invalid.error))),
            // The real Kafka names (after the naming policy) are the ones its status gives.
            Some(Ok(topic)) => match (not_ready_reason(topic), crate::event_topic::status::ready_names(topic.status.as_ref())) {
                (None, Some(kafka)) => resolved.push(ResolvedTopic {
                    name,
                    kafka_topic: kafka.topic,
                    dead_letter_topic: kafka.dead_letter,
                    max_message_bytes: max_message_bytes(&topic.spec),
                }),
                (why, _) => problem.not_ready.push((name, why.unwrap_or_else(|| "its status names no Kafka topic".into()))),
            },
        }
    }
    if problem.denied.is_empty() && problem.missing.is_empty() && problem.not_ready.is_empty() {
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
    /// Named by spec.delivery.deadLetter.topicName (rather than a default).
    pub explicit: bool,
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
        "spec.{field} {name:?} must begin with {prefix:?} under {policy}: this namespace's Kafka names are <namespace>.<name>, so that no team uses another's"
    )]
    OutsideNamespacePrefix { field: &'static str, name: String, prefix: String, policy: String },
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

    /// The dead-letter topics the EventTopics it reads manage.
    pub fn managed_dead_letters(&self) -> Vec<String> {
        self.topics.iter().filter_map(|topic| topic.dead_letter_topic.clone()).collect()
    }

    pub fn mode(&self) -> DeliveryMode {
        self.subscription.spec.delivery.mode
    }
}

/// Checks what the schema cannot (durations, line breaks, internal topics) and resolves the
/// dead-letter topic.
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
    if dead_letter.owned && naming::is_internal(&dead_letter.topic) {
        let named_by = if dead_letter.explicit { DEAD_LETTER_FIELD } else { "consumerGroup" };
        let message =
            format!("the dead-letter topic {:?} would be one of Kafka's internal topics (names beginning with '_')", dead_letter.topic);
        return Err(field(named_by, message));
    }
    let namespace = subscription.namespace().unwrap_or_default();
    Ok(Workload { subscription, name: subscription.name_any(), namespace, group, topics, dead_letter, start_from, cooldown })
}

/// Checks the Kafka names the Subscription chooses itself against the operator's naming policy:
/// under `NamespacePrefixed` an explicit consumer group and a dead-letter topic of its own begin
/// with `<namespace>.` (the defaults always do; an EventTopic's dead-letter topic is that
/// EventTopic's).
pub fn check_naming(workload: &Workload<'_>, naming: &NamingPolicy) -> Result<(), SpecError> {
    let Some(prefix) = naming.prefix(&workload.namespace) else { return Ok(()) };
    let outside_prefix = |field, name: &str| {
        let outside = !name.starts_with(prefix.as_str());
        outside.then(|| SpecError::OutsideNamespacePrefix {
            field,
            name: name.to_owned(),
            prefix: prefix.clone(),
            policy: naming.describe(),
        })
    };
    let explicit_group = workload.subscription.spec.consumer_group.as_deref();
    if let Some(invalid) = explicit_group.and_then(|group| outside_prefix("consumerGroup", group)) {
        return Err(invalid);
    }
    let dead_letter = &workload.dead_letter;
    match outside_prefix(DEAD_LETTER_FIELD, &dead_letter.topic) {
        Some(invalid) if dead_letter.owned && dead_letter.explicit => Err(invalid),
        _ => Ok(()),
    }
}

/// The field naming a Subscription's own dead-letter topic.
const DEAD_LETTER_FIELD: &str = "delivery.deadLetter.topicName";

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
    let explicit = subscription.spec.delivery.dead_letter.as_ref().is_some_and(|dead_letter| dead_letter.topic_name.is_some());
    Ok(DeadLetter { topic, owned: !managed, explicit, max_message_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use crate::subscription::test_support::{ready, subscription};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn found(topic: EventTopic) -> Fetched {
        Fetched { namespace: topic.namespace().unwrap_or_default(), name: topic.name_any(), topic: Some(DeserializeGuard(Ok(topic))) }
    }

    fn missing(namespace: &str, name: &str) -> Fetched {
        Fetched { namespace: namespace.into(), name: name.into(), topic: None }
    }

    /// The EventTopic `name` of namespace `billing`, Ready, with `spec`.
    fn billings(name: &str, spec: &str) -> EventTopic {
        let mut topic = event_topic(name, spec);
        topic.metadata.namespace = Some("billing".into());
        ready(topic)
    }

    fn prefixed() -> NamingPolicy {
        NamingPolicy::namespace_prefixed(["platform".to_owned()])
    }

    /// The workload, checked against `naming` as well.
    fn named<'a>(subscription: &'a Subscription, topics: Vec<ResolvedTopic>, naming: &NamingPolicy) -> Result<Workload<'a>, SpecError> {
        let workload = workload(subscription, topics)?;
        check_naming(&workload, naming).map(|()| workload)
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
        let topics = resolve_topics("default", &[found(big), found(plain)]).expect("resolved");
        assert_eq!(topics.iter().map(|topic| topic.max_message_bytes).collect::<Vec<_>>(), vec![Some(4_194_304), None]);
        let subscription = subscription("billing", "topics: [{ name: orders }, { name: payments }]");
        let dead_letter = workload(&subscription, topics).expect("valid").dead_letter;
        assert_eq!((dead_letter.owned, dead_letter.max_message_bytes), (true, Some(4_194_304)));
    }

    #[test]
    fn ready_event_topics_resolve_to_their_kafka_names() {
        let orders = ready(event_topic("orders", "topicName: shop.orders\ndeadLetter: {}"));
        let resolved = resolve_topics("default", &[found(orders)]).expect("resolved");
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
        let problem = resolve_topics("default", &[missing("default", "orders"), found(unready), found(ready(event_topic("ok", "")))])
            .expect_err("waits");
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
            Ok(DeadLetter { topic: "shop.orders.dlq".into(), owned: false, explicit: false, max_message_bytes: None })
        );
        assert_eq!(
            workload_for(&one, vec![resolved("orders", Some("a.dlq")), resolved("payments", None)]),
            Ok(DeadLetter { topic: "default.billing.dlq".into(), owned: true, explicit: false, max_message_bytes: None })
        );
        let explicit = subscription("billing", "delivery: { deadLetter: { topicName: billing-dead } }");
        assert_eq!(
            workload_for(&explicit, vec![resolved("orders", None)]),
            Ok(DeadLetter { topic: "billing-dead".into(), owned: true, explicit: true, max_message_bytes: None })
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

    #[test]
    fn an_event_topic_of_another_namespace_is_read_only_with_its_grant() {
        let reads_billing = "topics: [{ name: orders }, { name: invoices, namespace: billing }]";
        let sub = subscription("audit", reads_billing);
        let orders = found(ready(event_topic("orders", "")));
        let closed = found(billings("invoices", ""));
        let problem = resolve_topics("default", &[orders.clone(), closed]).expect_err("no grant");
        assert_eq!(problem.denied, ["billing/invoices"]);
        assert_eq!(
            problem.to_string(),
            "EventTopic billing/invoices does not grant namespace default access (its spec.access.subscribers), or does not exist"
        );
        // A missing one looks the same: no namespace learns what another has.
        let absent = resolve_topics("default", &[orders.clone(), missing("billing", "invoices")]).expect_err("missing");
        assert_eq!((absent.denied, absent.missing), (vec!["billing/invoices".to_owned()], vec![]));
        // Granted to another namespace only: still denied.
        let elsewhere = found(billings("invoices", "access: { subscribers: [{ namespace: shop }] }"));
        assert!(resolve_topics("default", &[orders.clone(), elsewhere]).is_err());

        let granted = found(billings("invoices", "deadLetter: {}\naccess: { subscribers: [{ namespace: shop }, { namespace: default }] }"));
        let topics = resolve_topics("default", &[orders, granted]).expect("granted");
        assert_eq!(
            topics.iter().map(|topic| (topic.name.as_str(), topic.kafka_topic.as_str())).collect::<Vec<_>>(),
            [("orders", "orders"), ("billing/invoices", "invoices")]
        );
        assert_eq!(references(&sub).collect::<Vec<_>>(), [("default", "orders"), ("billing", "invoices")]);
    }

    #[test]
    fn under_namespace_prefixed_naming_an_explicit_group_must_begin_with_the_namespace() {
        let foreign = subscription("billing", "consumerGroup: payments-service");
        let refused = named(&foreign, vec![resolved("orders", None)], &prefixed()).expect_err("outside the prefix");
        assert_eq!(
            refused.to_string(),
            "spec.consumerGroup \"payments-service\" must begin with \"default.\" under the operator's NamespacePrefixed naming policy: this namespace's Kafka names are <namespace>.<name>, so that no team uses another's"
        );
        let own = subscription("billing", "consumerGroup: default.billing-v2");
        assert_eq!(named(&own, vec![resolved("orders", None)], &prefixed()).expect("inside").group, "default.billing-v2");
        assert!(named(&foreign, vec![resolved("orders", None)], &NamingPolicy::default()).is_ok(), "Free names freely");
        let mut platform = foreign.clone();
        platform.metadata.namespace = Some("platform".into());
        assert!(named(&platform, vec![resolved("orders", None)], &prefixed()).is_ok(), "a free namespace");
        // The default <namespace>.<name> always fits.
        assert!(named(&subscription("billing", ""), vec![resolved("orders", None)], &prefixed()).is_ok());
    }

    #[test]
    fn under_namespace_prefixed_naming_an_own_dead_letter_topic_must_begin_with_the_namespace() {
        let foreign = subscription("billing", "delivery: { deadLetter: { topicName: payments.dead } }");
        let refused = named(&foreign, vec![resolved("orders", None)], &prefixed()).expect_err("outside the prefix");
        assert!(
            refused.to_string().starts_with("spec.delivery.deadLetter.topicName \"payments.dead\" must begin with \"default.\""),
            "{refused}"
        );
        // The dead-letter topic of an EventTopic it reads is that EventTopic's, whatever its name.
        let managed = subscription("billing", "delivery: { deadLetter: { topicName: shop.orders.dlq } }");
        assert!(named(&managed, vec![resolved("orders", Some("shop.orders.dlq"))], &prefixed()).is_ok());
    }

    #[test]
    fn a_prefixed_group_too_long_for_its_dead_letter_topic_names_the_field() {
        let long = subscription("billing", &format!("consumerGroup: default.{}", "g".repeat(242)));
        let refused = named(&long, vec![resolved("orders", None)], &prefixed()).expect_err("too long");
        assert!(matches!(&refused, SpecError::DeadLetterNameTooLong(name) if name.len() == 254), "{refused}");
        assert!(refused.to_string().contains("set spec.delivery.deadLetter.topicName"), "{refused}");
    }

    #[test]
    fn internal_dead_letter_topics_are_refused_at_runtime() {
        let internal = subscription("billing", "delivery: { deadLetter: { topicName: __consumer_offsets } }");
        let refused = workload(&internal, vec![resolved("orders", None)]).expect_err("internal");
        assert!(
            refused.to_string().starts_with("spec.delivery.deadLetter.topicName: the dead-letter topic \"__consumer_offsets\""),
            "{refused}"
        );
    }
}
