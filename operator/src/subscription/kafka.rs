//! The Kafka stage of a Subscription's reconcile, and the only Kafka I/O in it: the dead-letter
//! topic it owns, the consumer group's lag and members, and a replay's offset reset. What to do
//! with the answers is decided in pure code (`replay`, `scaler`, the controller's `decide`).

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::ownership::{GroupActivity, Questions, Unrecorded};
use super::resolve::{DeadLetter, Workload};
use crate::event_topic::desired::MAX_MESSAGE_BYTES;
use crate::kafka::{ConsumerGroups, GroupLag, KafkaError, SyncMode, TopicAdmin, TopicSpec};

/// What Kafka answered in one reconcile.
#[derive(Debug)]
pub struct KafkaReading {
    /// Whether the dead-letter topic was (or, in a dry run, would be) created.
    pub dead_letter: Result<bool, KafkaError>,
    pub lag: Result<GroupLag, KafkaError>,
    /// Members of the consumer group; asked only while a replay waits for the consumers to stop.
    /// `None` also when the broker cannot tell, or failed to: the broker refuses to reset a group
    /// with members, so the reset stays safe.
    pub members: Option<usize>,
}

/// What the reconcile knows before it asks Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Ask for the group's members: a replay waits for the consumers to stop.
    pub members: bool,
    /// No consumer runs (the Deployment has no pods).
    pub idle: bool,
}

/// Asks Kafka what `questions` leave open: who used the consumer group (committed offsets and
/// members), and whether the dead-letter topic exists. Nothing is changed.
pub async fn ask_unrecorded(
    admin: &dyn TopicAdmin,
    groups: &dyn ConsumerGroups,
    workload: &Workload<'_>,
    questions: Questions,
) -> Result<Unrecorded, KafkaError> {
    let group = if questions.group {
        let committed_topics = groups.committed_topics(&workload.group).await?;
        Some(GroupActivity { committed_topics, members: groups.group_members(&workload.group).await? })
    } else {
        None
    };
    let dead_letter_exists =
        if questions.dead_letter { Some(admin.topic_layout(&workload.dead_letter.topic).await?.is_some()) } else { None };
    Ok(Unrecorded { group, dead_letter_exists })
}

/// Reads what a reconcile needs from Kafka, after creating the dead-letter topic if it is
/// missing.
pub async fn read(admin: &dyn TopicAdmin, groups: &dyn ConsumerGroups, workload: &Workload<'_>, ask: Ask) -> KafkaReading {
    let dead_letter = ensure_dead_letter_topic(admin, &workload.dead_letter, SyncMode::Apply).await;
    let mut lag = read_lag(groups, workload).await;
    if let (true, Ok(reading)) = (ask.idle, lag.as_mut()) {
        let start = reading.uncommitted_latest(workload.start_from);
        if !start.is_empty() {
            pin_start(groups, workload, reading, &start).await;
        }
    }
    let members = if ask.members { groups.group_members(&workload.group).await.ok().flatten() } else { None };
    KafkaReading { dead_letter, lag, members }
}

/// Commits `start` (where the group starts on partitions it never committed on) while nobody
/// consumes, so that records arriving from now on count as lag. A broker that refuses (the group
/// got a member meanwhile, whose commits then count) leaves the reading as it was.
async fn pin_start(groups: &dyn ConsumerGroups, workload: &Workload<'_>, reading: &mut GroupLag, start: &BTreeMap<(String, i32), i64>) {
    match groups.commit_offsets(&workload.group, start).await {
        Ok(()) => {
            info!(group = %workload.group, partitions = start.len(), "committed the group's starting position while nobody consumes");
            reading.record_committed(start);
        }
        Err(error) => warn!(group = %workload.group, %error, "could not commit the group's starting position"),
    }
}

/// The consumer group's lag on the Subscription's topics.
pub async fn read_lag(groups: &dyn ConsumerGroups, workload: &Workload<'_>) -> Result<GroupLag, KafkaError> {
    groups.group_lag(&workload.group, &workload.kafka_topics(), workload.start_from).await
}

/// Moves the consumer group's offsets on every topic to the time `to` (ms since the epoch).
pub async fn reset_offsets(groups: &dyn ConsumerGroups, workload: &Workload<'_>, to: i64) -> Result<(), KafkaError> {
    groups.reset_offsets(&workload.group, &workload.kafka_topics(), to).await?;
    info!(group = %workload.group, "moved the consumer group's offsets for the replay");
    Ok(())
}

/// Creates the dead-letter topic when the Subscription owns it and it is missing; returns whether
/// it was (or, in a dry run, would be) created. One partition: dead letters are few, and kept in
/// the order they failed. It accepts records as large as its largest source does.
pub async fn ensure_dead_letter_topic(admin: &dyn TopicAdmin, dead_letter: &DeadLetter, mode: SyncMode) -> Result<bool, KafkaError> {
    if !dead_letter.owned || admin.topic_layout(&dead_letter.topic).await?.is_some() {
        return Ok(false);
    }
    if mode == SyncMode::DryRun {
        return Ok(true);
    }
    let configs = dead_letter.max_message_bytes.map(|bytes| (MAX_MESSAGE_BYTES.to_owned(), bytes.to_string())).into_iter().collect();
    let spec = TopicSpec { name: dead_letter.topic.clone(), partitions: 1, replication_factor: None, configs };
    admin.create_topic(&spec).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::FakeTopicAdmin;

    #[tokio::test]
    async fn an_owned_dead_letter_topic_is_made_to_take_its_largest_source_record() {
        let admin = FakeTopicAdmin::new();
        let dead_letter = DeadLetter { topic: "billing.dlq".into(), owned: true, explicit: false, max_message_bytes: Some(4_194_304) };
        assert!(ensure_dead_letter_topic(&admin, &dead_letter, SyncMode::Apply).await.expect("created"));
        let made = admin.describe_topic("billing.dlq").await.expect("described").expect("exists");
        assert_eq!((made.partitions, made.configs.get(MAX_MESSAGE_BYTES).map(String::as_str)), (1, Some("4194304")));
        assert!(!ensure_dead_letter_topic(&admin, &dead_letter, SyncMode::Apply).await.expect("exists"), "made once");

        let managed = DeadLetter { topic: "orders.dlq".into(), owned: false, explicit: false, max_message_bytes: None };
        assert!(!ensure_dead_letter_topic(&admin, &managed, SyncMode::Apply).await.expect("left alone"));
        assert_eq!(admin.describe_topic("orders.dlq").await.expect("described"), None, "its EventTopic makes it");
    }
}
