//! Which Kafka topics an EventTopic may touch (pure): those it created, and those that existed
//! and that it adopted with `spec.adopt`. Its status records which is which (`origin`,
//! `deadLetterOrigin`, each for the name next to it), so that the consent is durable: a topic it
//! created stays its own, deletion removes only what the record allows, and a topic it neither
//! created nor may adopt is left untouched.

use tributary_api::event_topic::{DeletionPolicy, Origin};
use tributary_api::{EventTopic, EventTopicStatus};

use super::desired::TopicRole;
use crate::naming;

/// What `status` records of the topic in `role`: its Kafka name and how the EventTopic got it.
pub fn recorded(status: Option<&EventTopicStatus>, role: TopicRole) -> Option<(&str, Origin)> {
    let status = status?;
    let (name, origin) = match role {
        TopicRole::Main => (&status.topic_name, status.origin),
        TopicRole::DeadLetter => (&status.dead_letter_topic, status.dead_letter_origin),
    };
    let origin = origin.or_else(|| written_before_origins(status).then_some(Origin::Created))?;
    Some((name.as_deref()?, origin))
}

/// A status written before Tributary recorded origins, by a version that created (or silently
/// took over) every topic it synced: it counts as having created the topics it names. Such a
/// status shows partitions once its topic was synced, and not while another EventTopic owns it;
/// this version shows partitions only for a topic with a recorded origin.
fn written_before_origins(status: &EventTopicStatus) -> bool {
    status.origin.is_none() && status.dead_letter_origin.is_none() && status.partitions.is_some()
}

/// Where an EventTopic's record of the topics it created is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// In its status: the controller records a topic before it creates it, so a status write
    /// lost afterwards cannot make the EventTopic a stranger to its own topic.
    Status,
    /// Nowhere: the offline `apply` keeps nothing between runs, so an existing topic counts as
    /// one an earlier run made (adopted, with `spec.adopt`). It acts with the Kafka credentials of
    /// whoever runs it, so there is no one else's consent to ask for.
    Offline,
}

/// How an EventTopic holds one of its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// It does not exist yet: the EventTopic creates it.
    Create,
    /// It exists and is the EventTopic's to manage.
    Manage(Origin),
}

/// An existing topic the EventTopic may not touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionRequired {
    pub role: TopicRole,
    pub name: String,
    /// It was adopted, and spec.adopt has since been turned off.
    pub withdrawn: bool,
}

impl AdoptionRequired {
    /// The Ready message: which topic, and what to set.
    pub fn message(&self) -> String {
        let subject = format!("{} {:?}", self.role.describe(), self.name);
        if self.withdrawn {
            return format!(
                "{subject} was adopted by this EventTopic and spec.adopt is no longer true, so it is left untouched; set spec.adopt: true to manage it again"
            );
        }
        let rename = match self.role {
            TopicRole::Main => "spec.topicName",
            TopicRole::DeadLetter => "spec.deadLetter.topicName",
        };
        format!(
            "{subject} exists in Kafka and this EventTopic did not create it, so it is left untouched; set spec.adopt: true to manage it (settings this spec does not name are kept, and it is deleted only under deletionPolicy DeleteIncludingAdopted), or choose another {rename}"
        )
    }
}

/// How `topic` holds its topic in `role`, named `name`, which exists in Kafka or not.
pub fn holding(topic: &EventTopic, role: TopicRole, name: &str, exists: bool, records: Records) -> Result<Holding, AdoptionRequired> {
    if !exists {
        return Ok(Holding::Create);
    }
    let adopt = topic.spec.adopt;
    let origin = match records {
        Records::Status => recorded(topic.status.as_ref(), role).filter(|(recorded, _)| *recorded == name).map(|(_, origin)| origin),
        Records::Offline => Some(if adopt { Origin::Adopted } else { Origin::Created }),
    };
    match (origin, adopt) {
        (Some(Origin::Created), _) => Ok(Holding::Manage(Origin::Created)),
        (Some(Origin::Adopted) | None, true) => Ok(Holding::Manage(Origin::Adopted)),
        (Some(Origin::Adopted), false) => Err(AdoptionRequired { role, name: name.to_owned(), withdrawn: true }),
        (None, false) => Err(AdoptionRequired { role, name: name.to_owned(), withdrawn: false }),
    }
}

/// What deleting an EventTopic does to the topics its status records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deletion {
    pub delete: Vec<String>,
    /// Why recorded topics stay although the policy deletes: adopted ones under `Delete`, and
    /// Kafka's internal topics, which versions before the check could be pointed at.
    pub kept: Vec<String>,
}

/// The topics `topic`'s deletion removes: only recorded ones (a topic it never recorded is not
/// its own), under its deletion policy.
pub fn deletion(topic: &EventTopic) -> Deletion {
    let mut deletion = Deletion::default();
    let policy = topic.spec.deletion_policy;
    if policy == DeletionPolicy::Retain {
        return deletion;
    }
    for role in [TopicRole::Main, TopicRole::DeadLetter] {
        let Some((name, origin)) = recorded(topic.status.as_ref(), role) else { continue };
        let subject = format!("{} {name:?}", role.describe());
        if naming::is_internal(name) {
            deletion.kept.push(format!("{subject} is one of Kafka's internal topics and is never deleted"));
        } else if origin == Origin::Adopted && policy == DeletionPolicy::Delete {
            deletion
                .kept
                .push(format!("{subject} was adopted, so deletionPolicy Delete keeps it (DeleteIncludingAdopted would delete it)"));
        } else {
            deletion.delete.push(name.to_owned());
        }
    }
    deletion
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;

    fn with_status(mut topic: EventTopic, status: EventTopicStatus) -> EventTopic {
        topic.status = Some(status);
        topic
    }

    fn created(name: &str) -> EventTopicStatus {
        EventTopicStatus { topic_name: Some(name.into()), origin: Some(Origin::Created), ..EventTopicStatus::default() }
    }

    #[test]
    fn a_missing_topic_is_created() {
        assert_eq!(holding(&event_topic("orders", ""), TopicRole::Main, "orders", false, Records::Status), Ok(Holding::Create));
    }

    #[test]
    fn an_existing_topic_not_recorded_as_created_needs_consent() {
        let stranger = event_topic("orders", "");
        let refused = holding(&stranger, TopicRole::Main, "orders", true, Records::Status).expect_err("needs adopt");
        assert_eq!(refused, AdoptionRequired { role: TopicRole::Main, name: "orders".into(), withdrawn: false });
        assert!(
            refused.message().starts_with("topic \"orders\" exists in Kafka and this EventTopic did not create it"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains("set spec.adopt: true"), "{}", refused.message());

        let consenting = event_topic("orders", "adopt: true");
        assert_eq!(holding(&consenting, TopicRole::Main, "orders", true, Records::Status), Ok(Holding::Manage(Origin::Adopted)));
    }

    #[test]
    fn a_topic_recorded_as_created_under_that_name_is_its_own() {
        let owner = with_status(event_topic("orders", ""), created("orders"));
        assert_eq!(holding(&owner, TopicRole::Main, "orders", true, Records::Status), Ok(Holding::Manage(Origin::Created)));
        // The record is for another name: this one is a stranger.
        assert!(holding(&owner, TopicRole::Main, "shop.orders", true, Records::Status).is_err());
        // The dead-letter topic has a record of its own.
        assert!(holding(&owner, TopicRole::DeadLetter, "orders", true, Records::Status).is_err());
    }

    #[test]
    fn withdrawing_adopt_leaves_an_adopted_topic_alone() {
        let status = EventTopicStatus { origin: Some(Origin::Adopted), ..created("orders") };
        let withdrawn = with_status(event_topic("orders", ""), status);
        let refused = holding(&withdrawn, TopicRole::Main, "orders", true, Records::Status).expect_err("withdrawn");
        assert!(refused.withdrawn && refused.message().contains("spec.adopt is no longer true"), "{}", refused.message());
    }

    #[test]
    fn a_status_from_before_origins_counts_as_created_once_it_synced() {
        let legacy = EventTopicStatus {
            topic_name: Some("orders".into()),
            dead_letter_topic: Some("orders.dlq".into()),
            partitions: Some(3),
            ..EventTopicStatus::default()
        };
        let topic = with_status(event_topic("orders", "deadLetter: {}"), legacy.clone());
        assert_eq!(holding(&topic, TopicRole::Main, "orders", true, Records::Status), Ok(Holding::Manage(Origin::Created)));
        assert_eq!(holding(&topic, TopicRole::DeadLetter, "orders.dlq", true, Records::Status), Ok(Holding::Manage(Origin::Created)));
        // Never synced (or lost to an older claim, which cleared partitions): nothing recorded.
        let never_synced = with_status(event_topic("orders", ""), EventTopicStatus { partitions: None, ..legacy });
        assert!(holding(&never_synced, TopicRole::Main, "orders", true, Records::Status).is_err());
    }

    #[test]
    fn offline_an_existing_topic_counts_as_made_by_an_earlier_run() {
        let plain = event_topic("orders", "");
        assert_eq!(holding(&plain, TopicRole::Main, "orders", true, Records::Offline), Ok(Holding::Manage(Origin::Created)));
        let adopting = event_topic("orders", "adopt: true");
        assert_eq!(holding(&adopting, TopicRole::Main, "orders", true, Records::Offline), Ok(Holding::Manage(Origin::Adopted)));
    }

    #[test]
    fn deletion_removes_created_topics_and_adopted_ones_only_with_their_own_consent() {
        let status = EventTopicStatus {
            topic_name: Some("orders".into()),
            origin: Some(Origin::Created),
            dead_letter_topic: Some("orders.dlq".into()),
            dead_letter_origin: Some(Origin::Adopted),
            ..EventTopicStatus::default()
        };
        let deleting = |spec: &str| deletion(&with_status(event_topic("orders", spec), status.clone()));
        assert_eq!(deleting("deletionPolicy: Retain"), Deletion::default());
        let delete = deleting("adopt: true\ndeletionPolicy: Delete\ndeadLetter: {}");
        assert_eq!(delete.delete, ["orders"]);
        assert_eq!(
            delete.kept,
            ["dead-letter topic \"orders.dlq\" was adopted, so deletionPolicy Delete keeps it (DeleteIncludingAdopted would delete it)"]
        );
        assert_eq!(deleting("adopt: true\ndeletionPolicy: DeleteIncludingAdopted\ndeadLetter: {}").delete, ["orders", "orders.dlq"]);
        // Nothing recorded (never created, or refused without adopt): nothing deleted.
        assert_eq!(deletion(&event_topic("orders", "deletionPolicy: Delete")), Deletion::default());
    }

    #[test]
    fn internal_topics_are_never_deleted() {
        // An EventTopic from before the check, pointed at an internal topic.
        let status = EventTopicStatus { topic_name: Some("_schemas".into()), partitions: Some(1), ..EventTopicStatus::default() };
        let legacy = with_status(event_topic("schemas", "topicName: _schemas\ndeletionPolicy: Delete"), status);
        let deletion = deletion(&legacy);
        assert!(deletion.delete.is_empty());
        assert_eq!(deletion.kept, ["topic \"_schemas\" is one of Kafka's internal topics and is never deleted"]);
    }
}
