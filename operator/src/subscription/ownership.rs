//! Which Kafka resources a Subscription may use (pure): its consumer group and its dead-letter
//! topic. Its status records which it holds (`consumerGroupOrigin`, `deadLetterOrigin`, each for
//! the name next to it), written before the operator or its consumers commit an offset or create
//! the topic, so that a Subscription never meets its own group or topic as a stranger's. A group
//! someone has consumed with, or a topic that exists, is taken only with consent.

use std::collections::BTreeSet;

use kube::ResourceExt;
use tributary_api::event_topic::Origin;
use tributary_api::{Subscription, SubscriptionStatus};

use super::resolve::{DeadLetter, Workload};

/// What Kafka says about the things a Subscription has not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unrecorded {
    /// The consumer group, when it is not recorded: who has used it.
    pub group: Option<GroupActivity>,
    /// The dead-letter topic, when the Subscription would own it and has not recorded it: whether
    /// it exists.
    pub dead_letter_exists: Option<bool>,
}

/// Signs that a consumer group is someone's: offsets committed on some topics, consumers in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupActivity {
    pub committed_topics: BTreeSet<String>,
    /// `None` when the broker cannot tell.
    pub members: Option<usize>,
}

impl GroupActivity {
    fn in_use(&self) -> bool {
        !self.committed_topics.is_empty() || self.members.is_some_and(|members| members > 0)
    }

    fn describe(&self) -> String {
        let mut signs = Vec::new();
        if !self.committed_topics.is_empty() {
            let topics: Vec<&str> = self.committed_topics.iter().map(String::as_str).collect();
            signs.push(format!("committed offsets on {}", topics.join(", ")));
        }
        if let Some(members) = self.members.filter(|members| *members > 0) {
            signs.push(format!("{members} member(s)"));
        }
        signs.join(" and ")
    }
}

/// The group the status records as the Subscription's, and how it got it. A status written
/// before Tributary recorded origins, by a version that took any group it was given, counts as
/// having created the group it names once it ran (it then shows a dead-letter topic).
pub fn recorded_group(status: Option<&SubscriptionStatus>) -> Option<(&str, Origin)> {
    let status = status?;
    let origin = status.consumer_group_origin.or_else(|| written_before_origins(status).then_some(Origin::Created))?;
    Some((status.consumer_group.as_deref()?, origin))
}

/// The dead-letter topic the status records as the Subscription's own, and how it got it; from
/// before origins, the one it used, unless an EventTopic it read manages that (`managed`).
fn recorded_dead_letter<'a>(status: Option<&'a SubscriptionStatus>, managed: &[String]) -> Option<(&'a str, Origin)> {
    let status = status?;
    let topic = status.dead_letter_topic.as_deref()?;
    let legacy = || (written_before_origins(status) && !managed.iter().any(|name| name == topic)).then_some(Origin::Created);
    Some((topic, status.dead_letter_origin.or_else(legacy)?))
}

fn written_before_origins(status: &SubscriptionStatus) -> bool {
    status.consumer_group_origin.is_none() && status.consumer_group.is_some() && status.dead_letter_topic.is_some()
}

/// What Kafka must be asked before the Subscription may use its group and dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Questions {
    pub group: bool,
    pub dead_letter: bool,
}

impl Questions {
    pub fn any(self) -> bool {
        self.group || self.dead_letter
    }
}

/// The questions for `workload`: only what its status does not record already.
pub fn questions(subscription: &Subscription, workload: &Workload<'_>) -> Questions {
    let status = subscription.status.as_ref();
    let group_recorded = recorded_group(status).is_some_and(|(group, _)| group == workload.group);
    let dead_letter = &workload.dead_letter;
    let dead_letter_recorded =
        recorded_dead_letter(status, &workload.managed_dead_letters()).is_some_and(|(topic, _)| topic == dead_letter.topic);
    Questions { group: !group_recorded, dead_letter: dead_letter.owned && !dead_letter_recorded }
}

/// How the Subscription holds its group and dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub group_origin: Origin,
    /// `None` for a topic an EventTopic manages.
    pub dead_letter_origin: Option<Origin>,
}

/// Why the Subscription may not use its group or dead-letter topic; nothing is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The consumer group was used before and this Subscription did not start it.
    Group { group: String, explicit: bool, activity: GroupActivity },
    /// The dead-letter topic exists, and neither this Subscription nor an EventTopic it reads owns
    /// it.
    DeadLetter { topic: String, explicit: bool },
}

impl Refused {
    /// The Ready message: what, and what to set.
    pub fn message(&self) -> String {
        match self {
            Refused::Group { group, explicit, activity } => {
                let subject = if *explicit {
                    format!("spec.consumerGroup {group:?}")
                } else {
                    format!("consumer group {group:?} (the default, <namespace>.<name>)")
                };
                format!(
                    "{subject} has {} and this Subscription did not start it, so it is left untouched: no consumer joins it and no offset is committed. Set spec.adoptConsumerGroup: true to take it over (the consumers go on from its committed offsets), or choose another spec.consumerGroup",
                    activity.describe()
                )
            }
            Refused::DeadLetter { topic, explicit: true } => format!(
                "spec.delivery.deadLetter.topicName {topic:?} is an existing Kafka topic that neither this Subscription nor an EventTopic it reads owns, so no dead letter is written to it. Name the dead-letter topic of an EventTopic it reads, or a topic that does not exist yet (the operator creates it)"
            ),
            Refused::DeadLetter { topic, explicit: false } => format!(
                "the default dead-letter topic {topic:?} exists in Kafka and this Subscription did not create it, so no dead letter is written to it. Set spec.adoptConsumerGroup: true if it is this Subscription's from before (with its group), or set spec.delivery.deadLetter.topicName"
            ),
        }
    }
}

/// How `subscription` holds what `workload` uses, given what Kafka said of what is not recorded
/// (`unrecorded`) and the other Subscriptions (a dead-letter topic one of them in the same
/// namespace created may be shared).
pub fn hold<'a>(
    subscription: &Subscription,
    workload: &Workload<'_>,
    unrecorded: &Unrecorded,
    others: impl IntoIterator<Item = &'a Subscription>,
) -> Result<Held, Refused> {
    let status = subscription.status.as_ref();
    let adopt = subscription.spec.adopt_consumer_group;
    let explicit_group = subscription.spec.consumer_group.is_some();
    let group_origin = match (recorded_group(status).filter(|(group, _)| *group == workload.group), &unrecorded.group) {
        (Some((_, origin)), _) => origin,
        (None, Some(activity)) if activity.in_use() && !adopt => {
            return Err(Refused::Group { group: workload.group.clone(), explicit: explicit_group, activity: activity.clone() })
        }
        (None, Some(activity)) if activity.in_use() => Origin::Adopted,
        (None, _) => Origin::Created,
    };
    let dead_letter = &workload.dead_letter;
    let managed = workload.managed_dead_letters();
    let dead_letter_origin =
        match (recorded_dead_letter(status, &managed).filter(|(topic, _)| *topic == dead_letter.topic), unrecorded.dead_letter_exists) {
            _ if !dead_letter.owned => None,
            (Some((_, origin)), _) => Some(origin),
            (None, Some(false) | None) => Some(Origin::Created),
            // The default name follows the group: adopting the group takes its dead-letter topic too.
            (None, Some(true)) if !dead_letter.explicit && adopt => Some(Origin::Adopted),
            // Shared within the namespace; recorded, so that it stays usable when the other goes.
            (None, Some(true)) if created_by_neighbour(subscription, dead_letter, others) => Some(Origin::Adopted),
            (None, Some(true)) => return Err(Refused::DeadLetter { topic: dead_letter.topic.clone(), explicit: dead_letter.explicit }),
        };
    Ok(Held { group_origin, dead_letter_origin })
}

/// Whether another Subscription of the same namespace created (or adopted) `dead_letter`: a team
/// may share one dead-letter topic between its Subscriptions.
fn created_by_neighbour<'a>(me: &Subscription, dead_letter: &DeadLetter, others: impl IntoIterator<Item = &'a Subscription>) -> bool {
    others.into_iter().any(|other| {
        other.namespace() == me.namespace()
            && other.name_any() != me.name_any()
            && other.status.as_ref().is_some_and(|status| {
                status.dead_letter_topic.as_deref() == Some(dead_letter.topic.as_str()) && status.dead_letter_origin.is_some()
            })
    })
}

/// The status with the records of `held` for `workload`, when it records something new: written
/// before Kafka is touched.
pub fn with_records(subscription: &Subscription, workload: &Workload<'_>, held: &Held) -> Option<SubscriptionStatus> {
    let previous = subscription.status.clone().unwrap_or_default();
    let status = recorded(previous.clone(), &workload.group, &workload.dead_letter.topic, held);
    (status != previous).then_some(status)
}

/// `status` recording that the Subscription holds `group` and `dead_letter_topic` as `held` says.
pub fn recorded(status: SubscriptionStatus, group: &str, dead_letter_topic: &str, held: &Held) -> SubscriptionStatus {
    SubscriptionStatus {
        consumer_group: Some(group.to_owned()),
        consumer_group_origin: Some(held.group_origin),
        dead_letter_topic: Some(dead_letter_topic.to_owned()),
        dead_letter_origin: held.dead_letter_origin,
        ..status
    }
}
