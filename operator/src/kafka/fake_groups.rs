//! In-memory consumer groups for unit and controller tests: partitions with record timestamps,
//! committed offsets and members, plus a switch for an unreachable broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::consumer_groups::{resolve_start, ConsumerGroups, GroupLag, PartitionOffsets, StartFrom};
use super::KafkaError;

#[derive(Debug, Default, Clone)]
struct PartitionLog {
    log_start: i64,
    /// Timestamps (ms) of the records from `log_start` on; the log end follows the last one.
    timestamps: Vec<i64>,
}

impl PartitionLog {
    fn log_end(&self) -> i64 {
        self.log_start + i64::try_from(self.timestamps.len()).unwrap_or(i64::MAX)
    }

    fn first_at_or_after(&self, timestamp_ms: i64) -> Option<i64> {
        let index = self.timestamps.iter().position(|at| *at >= timestamp_ms)?;
        Some(self.log_start + i64::try_from(index).unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Default)]
struct FakeState {
    topics: BTreeMap<String, Vec<PartitionLog>>,
    /// (group, topic, partition) → committed offset.
    committed: BTreeMap<(String, String, i32), i64>,
    members: BTreeMap<String, usize>,
    unavailable: bool,
    /// Groups whose offsets were reset, in order.
    resets: Vec<String>,
}

/// An in-memory [`ConsumerGroups`].
#[derive(Debug, Default)]
pub struct FakeConsumerGroups {
    state: Mutex<FakeState>,
}

impl FakeConsumerGroups {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A topic with empty partitions.
    pub fn add_topic(&self, topic: &str, partitions: usize) {
        self.state().topics.insert(topic.to_owned(), vec![PartitionLog::default(); partitions]);
    }

    /// Appends `count` records stamped `timestamp_ms` to a partition.
    pub fn produce(&self, topic: &str, partition: usize, count: usize, timestamp_ms: i64) {
        if let Some(log) = self.state().topics.get_mut(topic).and_then(|partitions| partitions.get_mut(partition)) {
            log.timestamps.extend(std::iter::repeat_n(timestamp_ms, count));
        }
    }

    pub fn commit(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        self.state().committed.insert((group.to_owned(), topic.to_owned(), partition), offset);
    }

    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.state().committed.get(&(group.to_owned(), topic.to_owned(), partition)).copied()
    }

    pub fn set_members(&self, group: &str, members: usize) {
        self.state().members.insert(group.to_owned(), members);
    }

    /// Every call answers `Unavailable` while set.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Groups whose offsets were reset so far.
    pub fn resets(&self) -> Vec<String> {
        self.state().resets.clone()
    }

    /// As the broker does: offsets of a group with members are not moved from outside.
    fn check_empty(state: &FakeState, group: &str, topic: Option<&String>) -> Result<(), KafkaError> {
        if state.members.get(group).is_some_and(|members| *members > 0) {
            return Err(KafkaError::Rejected {
                operation: "AlterConsumerGroupOffsets",
                topic: topic.cloned().unwrap_or_default(),
                message: format!("consumer group {group:?} is not empty"),
            });
        }
        Ok(())
    }

    fn check(state: &FakeState, topics: &[String]) -> Result<(), KafkaError> {
        if state.unavailable {
            return Err(KafkaError::Unavailable("fake broker is down".into()));
        }
        match topics.iter().find(|topic| !state.topics.contains_key(*topic)) {
            Some(missing) => Err(KafkaError::Rejected {
                operation: "DescribeTopics",
                topic: missing.clone(),
                message: "the topic does not exist".into(),
            }),
            None => Ok(()),
        }
    }

    fn partitions<'a>(state: &'a FakeState, topics: &'a [String]) -> impl Iterator<Item = (&'a String, i32, &'a PartitionLog)> {
        topics.iter().flat_map(move |topic| {
            state
                .topics
                .get(topic)
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(p, log)| (topic, i32::try_from(p).unwrap_or(i32::MAX), log))
        })
    }
}

#[async_trait]
impl ConsumerGroups for FakeConsumerGroups {
    async fn partition_counts(&self, topics: &[String]) -> Result<BTreeMap<String, i32>, KafkaError> {
        let state = self.state();
        Self::check(&state, topics)?;
        Ok(topics
            .iter()
            .map(|topic| (topic.clone(), state.topics.get(topic).map(|p| i32::try_from(p.len()).unwrap_or(i32::MAX)).unwrap_or(0)))
            .collect())
    }

    async fn group_lag(&self, group: &str, topics: &[String], start_from: StartFrom) -> Result<GroupLag, KafkaError> {
        let state = self.state();
        Self::check(&state, topics)?;
        let partitions = Self::partitions(&state, topics)
            .map(|(topic, partition, log)| {
                let at_time = match start_from {
                    StartFrom::Timestamp(millis) => log.first_at_or_after(millis),
                    _ => None,
                };
                PartitionOffsets {
                    topic: topic.clone(),
                    partition,
                    committed: state.committed.get(&(group.to_owned(), topic.clone(), partition)).copied(),
                    log_start: log.log_start,
                    log_end: log.log_end(),
                    start_from: resolve_start(start_from, log.log_start, log.log_end(), at_time),
                }
            })
            .collect();
        Ok(GroupLag { partitions })
    }

    async fn group_members(&self, group: &str) -> Result<Option<usize>, KafkaError> {
        let state = self.state();
        Self::check(&state, &[])?;
        Ok(Some(state.members.get(group).copied().unwrap_or(0)))
    }

    async fn committed_topics(&self, group: &str) -> Result<BTreeSet<String>, KafkaError> {
        let state = self.state();
        Self::check(&state, &[])?;
        Ok(state.committed.keys().filter(|(committed_by, _, _)| committed_by == group).map(|(_, topic, _)| topic.clone()).collect())
    }

    async fn reset_offsets(&self, group: &str, topics: &[String], timestamp_ms: i64) -> Result<(), KafkaError> {
        let mut state = self.state();
        Self::check(&state, topics)?;
        Self::check_empty(&state, group, topics.first())?;
        let targets: Vec<((String, String, i32), i64)> = Self::partitions(&state, topics)
            .map(|(topic, partition, log)| {
                ((group.to_owned(), topic.clone(), partition), log.first_at_or_after(timestamp_ms).unwrap_or_else(|| log.log_end()))
            })
            .collect();
        state.committed.extend(targets);
        state.resets.push(group.to_owned());
        Ok(())
    }

    async fn commit_offsets(&self, group: &str, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), KafkaError> {
        let mut state = self.state();
        let topics: Vec<String> = offsets.keys().map(|(topic, _)| topic.clone()).collect();
        Self::check(&state, &topics)?;
        Self::check_empty(&state, group, topics.first())?;
        state.committed.extend(offsets.iter().map(|((topic, partition), offset)| ((group.to_owned(), topic.clone(), *partition), *offset)));
        Ok(())
    }
}
