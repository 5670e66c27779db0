//! The operator's view of Kafka consumer groups: how far behind a group is, how many partitions it
//! can spread over, and rewinding it for a replay.
//!
//! Lag is computed here, once, from the offsets an implementation reads, so the rdkafka client and
//! the in-memory fake cannot disagree about what "lag" means.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::KafkaError;

pub use tributary_api::subscription::StartFrom;

/// The offsets of one partition that decide a group's lag on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None` when it has committed none on this partition.
    pub committed: Option<i64>,
    /// The first offset still in the log.
    pub log_start: i64,
    /// The offset the next record will get (the high watermark).
    pub log_end: i64,
    /// Where the group would start without a commit: `startFrom` resolved on this partition.
    pub start_from: i64,
}

impl PartitionOffsets {
    /// Records the group has yet to read here. A position outside the log counts from its nearest
    /// end: records below the log start are gone, and a commit past the end reads nothing.
    pub fn lag(&self) -> i64 {
        let position = self.committed.unwrap_or(self.start_from).clamp(self.log_start, self.log_end);
        self.log_end - position
    }
}

/// A group's offsets over the partitions of its topics, in topic then partition order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupLag {
    pub partitions: Vec<PartitionOffsets>,
}

impl GroupLag {
    /// Lag summed over all partitions.
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(PartitionOffsets::lag).sum()
    }

    /// Lag per topic, in the order the topics first appear.
    pub fn by_topic(&self) -> Vec<(String, i64)> {
        let mut topics: Vec<(String, i64)> = Vec::new();
        for partition in &self.partitions {
            match topics.iter_mut().find(|(topic, _)| *topic == partition.topic) {
                Some((_, lag)) => *lag += partition.lag(),
                None => topics.push((partition.topic.clone(), partition.lag())),
            }
        }
        topics
    }

    /// Where the group starts on each partition it has no commit on, when it starts from the log
    /// end: committing these makes every later record count as lag. Without a commit a group
    /// reading from `latest` has lag 0 however many records arrive, so a Subscription scaled to
    /// zero would never wake up, and a consumer that starts later would skip what arrived.
    pub fn uncommitted_latest(&self, start_from: StartFrom) -> BTreeMap<(String, i32), i64> {
        if start_from != StartFrom::Latest {
            return BTreeMap::new();
        }
        self.partitions
            .iter()
            .filter(|partition| partition.committed.is_none())
            .map(|partition| ((partition.topic.clone(), partition.partition), partition.start_from))
            .collect()
    }

    /// Records `offsets` as committed.
    pub fn record_committed(&mut self, offsets: &BTreeMap<(String, i32), i64>) {
        for partition in &mut self.partitions {
            if let Some(offset) = offsets.get(&(partition.topic.clone(), partition.partition)) {
                partition.committed = Some(*offset);
            }
        }
    }

    /// Partitions the group reads: the most consumers that can share the work.
    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }
}

/// Offset where a group without a commit starts, given the log bounds and (for a timestamp) the
/// broker's answer for the first record at or after it (`None`: there is no such record yet).
pub fn resolve_start(start_from: StartFrom, log_start: i64, log_end: i64, at_time: Option<i64>) -> i64 {
    match start_from {
        StartFrom::Earliest => log_start,
        StartFrom::Latest => log_end,
        StartFrom::Timestamp(_) => at_time.unwrap_or(log_end),
    }
}

/// The consumer-group operations the Subscription controller uses.
#[async_trait]
pub trait ConsumerGroups: Send + Sync {
    /// Partition count of each topic. A topic that does not exist is an error.
    async fn partition_counts(&self, topics: &[String]) -> Result<BTreeMap<String, i32>, KafkaError>;

    /// The group's offsets over every partition of `topics`. Fails (never reads as zero lag) when
    /// Kafka cannot be asked.
    async fn group_lag(&self, group: &str, topics: &[String], start_from: StartFrom) -> Result<GroupLag, KafkaError>;

    /// Members the group has now; `None` when the broker cannot tell.
    async fn group_members(&self, group: &str) -> Result<Option<usize>, KafkaError>;

    /// The topics on which the group has committed an offset, on any partition: whether someone
    /// has consumed with it before.
    async fn committed_topics(&self, group: &str) -> Result<BTreeSet<String>, KafkaError>;

    /// Commits, for the group, on every partition of `topics`, the offset of the first record at
    /// or after `timestamp_ms` (the log end where there is none). The broker refuses while the
    /// group has members.
    async fn reset_offsets(&self, group: &str, topics: &[String], timestamp_ms: i64) -> Result<(), KafkaError>;

    /// Commits, for the group, these offsets by (topic, partition). The broker refuses while the
    /// group has members.
    async fn commit_offsets(&self, group: &str, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), KafkaError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(committed: Option<i64>, log_start: i64, log_end: i64, start_from: i64) -> PartitionOffsets {
        PartitionOffsets { topic: "orders".into(), partition: 0, committed, log_start, log_end, start_from }
    }

    #[test]
    fn lag_counts_from_the_commit_or_else_from_where_start_from_points() {
        assert_eq!(offsets(Some(40), 0, 100, 100).lag(), 60);
        assert_eq!(offsets(None, 0, 100, 0).lag(), 100, "no commit, earliest");
        assert_eq!(offsets(None, 0, 100, 100).lag(), 0, "no commit, latest");
        assert_eq!(offsets(Some(5), 30, 100, 100).lag(), 70, "records below the log start are gone");
        assert_eq!(offsets(Some(150), 0, 100, 100).lag(), 0, "a commit past the end");
    }

    #[test]
    fn group_lag_sums_per_topic_in_order_and_counts_partitions() {
        let lag = GroupLag {
            partitions: vec![
                PartitionOffsets { topic: "b".into(), ..offsets(Some(0), 0, 10, 10) },
                PartitionOffsets { topic: "a".into(), ..offsets(Some(0), 0, 3, 3) },
                PartitionOffsets { topic: "b".into(), partition: 1, ..offsets(Some(8), 0, 10, 10) },
            ],
        };
        assert_eq!(lag.by_topic(), vec![("b".to_owned(), 12), ("a".to_owned(), 3)]);
        assert_eq!((lag.total(), lag.partition_count()), (15, 3));
    }

    #[test]
    fn only_partitions_without_a_commit_are_pinned_and_only_when_starting_from_latest() {
        let lag = GroupLag { partitions: vec![offsets(None, 0, 10, 10), PartitionOffsets { partition: 1, ..offsets(Some(3), 0, 10, 10) }] };
        let pinned = lag.uncommitted_latest(StartFrom::Latest);
        assert_eq!(pinned, BTreeMap::from([(("orders".to_owned(), 0), 10)]));
        assert!(lag.uncommitted_latest(StartFrom::Earliest).is_empty());
        let mut lag = lag;
        lag.record_committed(&pinned);
        let committed: Vec<Option<i64>> = lag.partitions.iter().map(|p| p.committed).collect();
        assert_eq!(committed, vec![Some(10), Some(3)]);
    }

    #[test]
    fn start_offset_follows_start_from() {
        assert_eq!(resolve_start(StartFrom::Earliest, 5, 50, None), 5);
        assert_eq!(resolve_start(StartFrom::Latest, 5, 50, None), 50);
        assert_eq!(resolve_start(StartFrom::Timestamp(1), 5, 50, Some(20)), 20);
        assert_eq!(resolve_start(StartFrom::Timestamp(1), 5, 50, None), 50, "nothing since then: start at the end");
    }
}
