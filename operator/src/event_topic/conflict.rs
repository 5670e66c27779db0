//! Two EventTopics naming the same Kafka topic (pure). The oldest claim wins, in any namespace;
//! the others are told so and leave Kafka alone, so one team cannot change or delete another
//! team's topic by naming it. Claims are on real Kafka names, after the naming policy.

use std::collections::{BTreeSet, HashMap};

use tributary_api::EventTopic;

use super::names::KafkaNames;
use crate::naming::NamingPolicy;
use crate::seniority;

/// A Kafka topic this EventTopic claims that an older EventTopic claims too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/name` of the EventTopic that owns the topic.
    pub owner: String,
    pub topic: String,
}

/// Kafka topics an EventTopic claims: its topic and, when enabled, its dead-letter topic. One
/// whose spec has no valid names claims nothing.
fn claims(topic: &EventTopic, naming: &NamingPolicy) -> Vec<String> {
    KafkaNames::of(topic, naming).map(|names| names.all()).unwrap_or_default()
}

/// `namespace` and `name` of an EventTopic.
pub type ObjectKey = (String, String);

fn key_of(topic: &EventTopic) -> ObjectKey {
    (topic.metadata.namespace.clone().unwrap_or_default(), topic.metadata.name.clone().unwrap_or_default())
}

/// Ties broken by the order in which the index first saw the object (a file's order for the
/// offline `apply`).
type Seniority = seniority::Seniority<usize>;

#[derive(Debug)]
struct Entry {
    uid: Option<String>,
    seniority: Seniority,
    claims: Vec<String>,
}

/// Which EventTopics claim which Kafka topics, so that finding an older claim is a lookup per
/// claim instead of a scan of every EventTopic: the controller asks on every reconcile, with
/// thousands of EventTopics in the cluster.
#[derive(Debug, Default)]
pub struct ClaimIndex {
    naming: NamingPolicy,
    seen: usize,
    objects: HashMap<ObjectKey, Entry>,
    topics: HashMap<String, BTreeSet<(Seniority, ObjectKey)>>,
}

impl ClaimIndex {
    /// The index of `all`, in the order given, whose names `naming` maps to Kafka names.
    pub fn of<'a>(all: impl IntoIterator<Item = &'a EventTopic>, naming: NamingPolicy) -> Self {
        let mut index = ClaimIndex { naming, ..ClaimIndex::default() };
        for topic in all {
            index.record(topic);
        }
        index
    }

    /// Records what `topic` claims now. An object keeps the place it was first seen at; a new
    /// object under an old name (another uid) starts anew.
    pub fn record(&mut self, topic: &EventTopic) {
        let key = key_of(topic);
        let uid = topic.metadata.uid.clone();
        let position = match self.objects.get(&key) {
            Some(entry) if entry.uid == uid => *entry.seniority.tiebreak(),
            _ => {
                self.seen += 1;
                self.seen
            }
        };
        self.forget(&key);
        let seniority = Seniority::of(&topic.metadata, position);
        let claims = claims(topic, &self.naming);
        for claim in &claims {
            self.topics.entry(claim.clone()).or_default().insert((seniority, key.clone()));
        }
        self.objects.insert(key, Entry { uid, seniority, claims });
    }

    /// Drops an object that no longer exists.
    pub fn forget(&mut self, key: &ObjectKey) {
        let Some(entry) = self.objects.remove(key) else { return };
        for claim in entry.claims {
            if let Some(claimants) = self.topics.get_mut(&claim) {
                claimants.remove(&(entry.seniority, key.clone()));
                if claimants.is_empty() {
                    self.topics.remove(&claim);
                }
            }
        }
    }

    /// Records `me`, then returns the oldest claimant older than `me` of any topic `me` claims.
    /// `current` gives a claimant as it is now (`None`: gone), for an index that may hold stale
    /// entries; the offline `apply`, whose index is exact, passes one that answers from the index.
    pub fn older_claim(&mut self, me: &EventTopic, current: impl Fn(&ObjectKey) -> Option<EventTopic>) -> Option<Conflict> {
        self.record(me);
        let mine = key_of(me);
        let my_seniority = self.objects.get(&mine)?.seniority;
        loop {
            let candidate = claims(me, &self.naming)
                .into_iter()
                .filter_map(|claim| {
                    let claimants = self.topics.get(&claim)?;
                    let (seniority, key) = claimants.iter().find(|(_, key)| *key != mine)?;
                    (*seniority < my_seniority).then(|| (*seniority, key.clone(), claim))
                })
                .min_by(|(a, _, _), (b, _, _)| a.cmp(b));
            let (_, owner, topic) = candidate?;
            match current(&owner) {
                // Still there and still claiming it as recorded: the older claim wins.
                Some(object) if object.metadata.uid == self.objects.get(&owner)?.uid && claims(&object, &self.naming).contains(&topic) => {
                    return Some(Conflict { owner: format!("{}/{}", owner.0, owner.1), topic });
                }
                // Changed since it was recorded: record it as it is, and look again.
                Some(object) if object.metadata.uid == self.objects.get(&owner)?.uid => self.record(&object),
                _ => self.forget(&owner),
            }
        }
    }
}

/// For each of `all` (in the order seen), the older claim on one of its topics, as the offline
/// `apply` asks: every claim is known and current.
pub fn older_claims(all: &[EventTopic], naming: &NamingPolicy) -> Vec<Option<Conflict>> {
    let by_key: HashMap<ObjectKey, &EventTopic> = all.iter().map(|topic| (key_of(topic), topic)).collect();
    let mut index = ClaimIndex::of(all, naming.clone());
    all.iter().map(|me| index.older_claim(me, |key| by_key.get(key).map(|topic| (*topic).clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `older_claims` says of `me`, one of `all`.
    fn find_conflict(me: &EventTopic, all: &[EventTopic]) -> Option<Conflict> {
        let position = all.iter().position(|topic| key_of(topic) == key_of(me)).expect("me is among all");
        older_claims(all, &NamingPolicy::default()).swap_remove(position)
    }
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

    fn with_uid(mut topic: EventTopic, uid: &str) -> EventTopic {
        topic.metadata.uid = Some(uid.into());
        topic
    }

    /// The controller's index outlives the objects it recorded: each claimant is checked against
    /// the store before it wins.
    #[test]
    fn a_claimant_that_is_gone_or_changed_since_recorded_no_longer_wins() {
        let owner = with_uid(created_at(event_topic("orders", "deadLetter: { enabled: true }"), "a", 1), "u1");
        let other = with_uid(created_at(event_topic("audit", "topicName: orders.dlq"), "b", 2), "u2");
        let mut index = ClaimIndex::of([&owner, &other], NamingPolicy::default());
        let store = |present: Vec<EventTopic>| move |key: &ObjectKey| present.iter().find(|topic| key_of(topic) == *key).cloned();

        assert_eq!(index.older_claim(&other, store(vec![owner.clone(), other.clone()])).map(|c| c.topic), Some("orders.dlq".into()));
        // The owner turned its dead-letter topic off; the store has the new version.
        let without_dlq = with_uid(created_at(event_topic("orders", ""), "a", 1), "u1");
        assert_eq!(index.older_claim(&other, store(vec![without_dlq.clone(), other.clone()])), None);
        // It turns it on again: the change wakes its own reconcile, which records it.
        index.record(&owner);
        assert!(index.older_claim(&other, store(vec![owner.clone(), other.clone()])).is_some());
        // The owner is deleted.
        assert_eq!(index.older_claim(&other, store(vec![other.clone()])), None);
        // An object recreated under the owner's name is a new claimant, no longer the older one.
        let recreated = with_uid(created_at(event_topic("orders", "deadLetter: { enabled: true }"), "a", 3), "u3");
        index.record(&recreated);
        assert_eq!(index.older_claim(&other, store(vec![recreated.clone(), other.clone()])), None);
        assert_eq!(index.older_claim(&recreated, store(vec![recreated.clone(), other.clone()])).map(|c| c.owner), Some("b/audit".into()));
    }

    #[test]
    fn claims_are_on_real_kafka_names() {
        let team_a = created_at(event_topic("orders", "deadLetter: {}"), "team-a", 1);
        let team_b = created_at(event_topic("orders", "deadLetter: {}"), "team-b", 2);
        let all = [team_a, team_b.clone()];
        let prefixed = NamingPolicy::namespace_prefixed([]);
        assert_eq!(older_claims(&all, &prefixed), [None, None], "team-a.orders and team-b.orders");
        assert_eq!(find_conflict(&team_b, &all).map(|c| c.topic), Some("orders".into()), "one Kafka topic under Free");
        // A platform namespace with free names claims the plain name, as anyone under Free does.
        let platform = created_at(event_topic("audit", "topicName: team-a.orders"), "platform", 0);
        let with_platform = [platform, all[0].clone()];
        let mut claims = older_claims(&with_platform, &NamingPolicy::namespace_prefixed(["platform".to_owned()]));
        assert_eq!(claims.remove(1).map(|c| c.owner), Some("platform/audit".into()));
    }
}
