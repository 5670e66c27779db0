//! The Kafka stage of a Subscription's reconcile, and the only Kafka I/O in it: the dead-letter
//! topic it owns, the consumer group's lag and members, and a replay's offset reset. What to do
//! with the answers is decided in pure code (`replay`, `scaler`, the controller's `decide`).

use tracing::info;

use super::resolve::{DeadLetter, Workload};
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

/// Reads what a reconcile needs from Kafka, after creating the dead-letter topic if it is
/// missing.
pub async fn read(admin: &dyn TopicAdmin, groups: &dyn ConsumerGroups, workload: &Workload<'_>, ask_members: bool) -> KafkaReading {
    let dead_letter = ensure_dead_letter_topic(admin, &workload.dead_letter, SyncMode::Apply).await;
    let lag = read_lag(groups, workload).await;
    let members = if ask_members { groups.group_members(&workload.group).await.ok().flatten() } else { None };
    KafkaReading { dead_letter, lag, members }
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
/// the order they failed.
pub async fn ensure_dead_letter_topic(admin: &dyn TopicAdmin, dead_letter: &DeadLetter, mode: SyncMode) -> Result<bool, KafkaError> {
    if !dead_letter.owned || admin.topic_layout(&dead_letter.topic).await?.is_some() {
        return Ok(false);
    }
    if mode == SyncMode::DryRun {
        return Ok(true);
    }
    let spec = TopicSpec { name: dead_letter.topic.clone(), partitions: 1, replication_factor: None, configs: Default::default() };
    admin.create_topic(&spec).await?;
    Ok(true)
}
