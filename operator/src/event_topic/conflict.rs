//! Two EventTopics naming the same Kafka topic (pure). The oldest claim wins, in any namespace;
//! the others are told so and leave Kafka alone, so one team cannot change or delete another
//! team's topic by naming it.

use tributary_api::EventTopic;

/// A Kafka topic this EventTopic claims that an older EventTopic claims too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/name` of the EventTopic that owns the topic.
    pub owner: String,
    pub topic: String,
}

/// Kafka topics an EventTopic claims: its topic and, when enabled, its dead-letter topic.
fn claims(topic: &EventTopic) -> Vec<String> {
    let mut names = vec![topic.kafka_topic_name().to_owned()];
    names.extend(topic.dead_letter_topic_name());
    names
}

fn same_object(a: &EventTopic, b: &EventTopic) -> bool {
    match (&a.metadata.uid, &b.metadata.uid) {
        (Some(a), Some(b)) => a == b,
        _ => a.metadata.namespace == b.metadata.namespace && a.metadata.name == b.metadata.name,
    }
}

fn qualified_name(topic: &EventTopic) -> String {
    format!("{}/{}", topic.metadata.namespace.as_deref().unwrap_or_default(), topic.metadata.name.as_deref().unwrap_or_default())
}

/// The first older claimant of any topic `me` names, if there is one. `all` holds every known
/// EventTopic (`me` may be among them) in the order they were seen; it decides between objects
/// with equal (or without) creation timestamps, as in a file given to the offline `apply`.
///
/// One pass over `all`: the controller runs this on every reconcile with every EventTopic in the
/// cluster, so nothing here may cost more than a comparison per object.
pub fn find_conflict<'a>(me: &EventTopic, all: impl IntoIterator<Item = &'a EventTopic>) -> Option<Conflict> {
    let my_claims = claims(me);
    let mut my_position = None;
    let mut claimants = Vec::new();
    for (position, other) in all.into_iter().enumerate() {
        if same_object(other, me) {
            my_position.get_or_insert(position);
        } else if let Some(overlap) = claims(other).into_iter().find(|name| my_claims.contains(name)) {
            claimants.push((seniority(other, position), other, overlap));
        }
    }
    let mine = seniority(me, my_position.unwrap_or(usize::MAX));
    claimants
        .into_iter()
        .filter(|(theirs, _, _)| *theirs < mine)
        .min_by(|(a, _, _), (b, _, _)| a.cmp(b))
        .map(|(_, owner, topic)| Conflict { owner: qualified_name(owner), topic })
}

/// Older first; no creation timestamp (not yet stored by the apiserver) sorts last; then the
/// order seen.
fn seniority(topic: &EventTopic, position: usize) -> (bool, Option<k8s_openapi::jiff::Timestamp>, usize) {
    let created = topic.metadata.creation_timestamp.as_ref().map(|time| time.0);
    (created.is_none(), created, position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn created_at(mut topic: EventTopic, namespace: &str, seconds: i64) -> EventTopic {
        topic.metadata.namespace = Some(namespace.into());
        topic.metadata.creation_timestamp = Some(Time(Timestamp::from_second(seconds).expect("timestamp")));
        topic
    }

    #[test]
    fn the_older_claim_wins_across_namespaces() {
        let older = created_at(event_topic("orders", "topicName: shared.orders"), "team-a", 100);
        let newer = created_at(event_topic("orders", "topicName: shared.orders"), "team-b", 200);
        let all = [older.clone(), newer.clone()];
        assert_eq!(find_conflict(&older, &all), None);
        assert_eq!(find_conflict(&newer, &all), Some(Conflict { owner: "team-a/orders".into(), topic: "shared.orders".into() }));
    }

    #[test]
    fn dead_letter_topics_count_as_claims() {
        let older = created_at(event_topic("orders", "deadLetter: { enabled: true }"), "a", 1);
        let newer = created_at(event_topic("audit", "topicName: orders.dlq"), "b", 2);
        let conflict = find_conflict(&newer, &[older, newer.clone()]).expect("conflict");
        assert_eq!(conflict.topic, "orders.dlq");
    }

    #[test]
    fn without_timestamps_the_first_seen_wins() {
        let first = event_topic("first", "topicName: same");
        let second = event_topic("second", "topicName: same");
        let all = [first.clone(), second.clone()];
        assert_eq!(find_conflict(&first, &all), None);
        assert_eq!(find_conflict(&second, &all).map(|c| c.owner), Some("default/first".into()));
    }

    #[test]
    fn distinct_topics_do_not_conflict() {
        let a = created_at(event_topic("a", ""), "x", 1);
        let b = created_at(event_topic("b", ""), "x", 2);
        assert_eq!(find_conflict(&b, &[a, b.clone()]), None);
    }
}
