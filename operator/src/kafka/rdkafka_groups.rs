//! [`ConsumerGroups`] over librdkafka's admin API, on the operator's one admin client: committed
//! offsets (ListConsumerGroupOffsets), log bounds and offsets by time (ListOffsets), members
//! (DescribeConsumerGroups) and rewinds (AlterConsumerGroupOffsets). None of them joins the group,
//! so reading lag never triggers a rebalance of the consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer_groups::{resolve_start, ConsumerGroups, GroupLag, PartitionOffsets, StartFrom};
use super::rdkafka_admin::{c_string, classify_code, run_admin_request};
use super::{KafkaError, RdKafkaTopicAdmin, TopicAdmin};

type Partition = (String, i32);

/// ListOffsets answers this offset for "no record at or after the timestamp".
const NO_OFFSET_FOR_TIME: i64 = -1;

#[async_trait]
impl ConsumerGroups for RdKafkaTopicAdmin {
    async fn partition_counts(&self, topics: &[String]) -> Result<BTreeMap<String, i32>, KafkaError> {
        let mut counts = BTreeMap::new();
        for topic in topics {
            let layout = self.topic_layout(topic).await?.ok_or_else(|| KafkaError::Rejected {
                operation: "DescribeTopics",
                topic: topic.clone(),
                message: "the topic does not exist".into(),
            })?;
            counts.insert(topic.clone(), layout.partitions);
        }
        Ok(counts)
    }

    async fn group_lag(&self, group: &str, topics: &[String], start_from: StartFrom) -> Result<GroupLag, KafkaError> {
        let partitions = self.all_partitions(topics).await?;
        let group = group.to_owned();
        self.blocking(move |client, timeout| {
            let committed = committed_offsets(client, &group, Some(&partitions), timeout)?;
            let log_start = list_offsets(client, &partitions, rdsys::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_EARLIEST as i64, timeout)?;
            let log_end = list_offsets(client, &partitions, rdsys::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST as i64, timeout)?;
            let uncommitted: Vec<Partition> =
                partitions.iter().filter(|p| committed.get(*p).copied().flatten().is_none()).cloned().collect();
            let at_time = match start_from {
                StartFrom::Timestamp(millis) if !uncommitted.is_empty() => list_offsets(client, &uncommitted, millis, timeout)?,
                _ => BTreeMap::new(),
            };
            let offsets = partitions
                .into_iter()
                .map(|key| {
                    let log_start = log_start.get(&key).copied().unwrap_or_default();
                    let log_end = log_end.get(&key).copied().unwrap_or_default();
                    let found = at_time.get(&key).copied().filter(|offset| *offset != NO_OFFSET_FOR_TIME);
                    PartitionOffsets {
                        committed: committed.get(&key).copied().flatten(),
                        log_start,
                        log_end,
                        start_from: resolve_start(start_from, log_start, log_end, found),
                        topic: key.0,
                        partition: key.1,
                    }
                })
                .collect();
            Ok(GroupLag { partitions: offsets })
        })
        .await?
    }

    async fn group_members(&self, group: &str) -> Result<Option<usize>, KafkaError> {
        let group = group.to_owned();
        self.blocking(move |client, timeout| describe_group_members(client, &group, timeout)).await?
    }

    async fn committed_topics(&self, group: &str) -> Result<BTreeSet<String>, KafkaError> {
        let group = group.to_owned();
        self.blocking(move |client, timeout| {
            let committed = committed_offsets(client, &group, None, timeout)?;
            Ok(committed.into_iter().filter(|(_, offset)| offset.is_some()).map(|((topic, _), _)| topic).collect())
        })
        .await?
    }

    async fn reset_offsets(&self, group: &str, topics: &[String], timestamp_ms: i64) -> Result<(), KafkaError> {
        let partitions = self.all_partitions(topics).await?;
        let group = group.to_owned();
        self.blocking(move |client, timeout| {
            let at_time = list_offsets(client, &partitions, timestamp_ms, timeout)?;
            let log_end = list_offsets(client, &partitions, rdsys::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST as i64, timeout)?;
            let targets: BTreeMap<Partition, i64> = partitions
                .into_iter()
                .map(|key| {
                    let found = at_time.get(&key).copied().filter(|offset| *offset != NO_OFFSET_FOR_TIME);
                    let offset = found.or_else(|| log_end.get(&key).copied()).unwrap_or_default();
                    (key, offset)
                })
                .collect();
            alter_group_offsets(client, &group, &targets, timeout)
        })
        .await?
    }

    async fn commit_offsets(&self, group: &str, offsets: &BTreeMap<(String, i32), i64>) -> Result<(), KafkaError> {
        let (group, offsets) = (group.to_owned(), offsets.clone());
        self.blocking(move |client, timeout| alter_group_offsets(client, &group, &offsets, timeout)).await?
    }
}

impl RdKafkaTopicAdmin {
    /// Every partition of `topics`, in topic then partition order.
    async fn all_partitions(&self, topics: &[String]) -> Result<Vec<Partition>, KafkaError> {
        let counts = self.partition_counts(topics).await?;
        Ok(topics.iter().flat_map(|topic| (0..counts.get(topic).copied().unwrap_or_default()).map(|p| (topic.clone(), p))).collect())
    }
}

/// A partition list for a request; `offset` gives each partition's offset (or query).
fn partition_list(partitions: &[Partition], offset: impl Fn(&Partition) -> i64) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::with_capacity(partitions.len());
    for key in partitions {
        list.add_partition_offset(&key.0, key.1, Offset::from_raw(offset(key))).map_err(|error| KafkaError::Rejected {
            operation: "ListOffsets",
            topic: key.0.clone(),
            message: error.to_string(),
        })?;
    }
    Ok(list)
}

/// One entry of a partition list librdkafka owns.
struct PartitionEntry {
    key: Partition,
    offset: i64,
    error: RDKafkaErrorCode,
}

impl PartitionEntry {
    /// The offset, or the partition's error sorted like any other Kafka error.
    fn offset(&self, operation: &'static str) -> Result<i64, KafkaError> {
        if self.error == RDKafkaErrorCode::NoError {
            Ok(self.offset)
        } else {
            Err(classify_code(self.error, operation, &self.key.0, format!("partition {}: {}", self.key.1, self.error)))
        }
    }
}

/// # Safety
/// `entry` must point to a valid partition whose topic is a NUL-terminated string.
unsafe fn partition_entry(entry: *const rdsys::rd_kafka_topic_partition_t) -> PartitionEntry {
    let entry = &*entry;
    PartitionEntry { key: (c_string(entry.topic), entry.partition), offset: entry.offset, error: entry.err.into() }
}

/// # Safety
/// `list` must be null or a valid partition list that outlives the call.
unsafe fn partition_entries(list: *const rdsys::rd_kafka_topic_partition_list_t) -> Vec<PartitionEntry> {
    if list.is_null() {
        return Vec::new();
    }
    let count = usize::try_from((*list).cnt).unwrap_or(0);
    (0..count).map(|index| partition_entry((*list).elems.add(index))).collect()
}

/// The partitions and offsets of per-group results, or the first error among them (of a group or
/// of a partition), sorted like any other Kafka error.
///
/// # Safety
/// `results` must point to `count` valid group results.
unsafe fn group_result_offsets(
    results: *mut *const rdsys::rd_kafka_group_result_t,
    count: usize,
    operation: &'static str,
    group: &str,
) -> Result<Vec<(Partition, i64)>, KafkaError> {
    let mut offsets = Vec::new();
    for index in 0..count {
        let result = *results.add(index);
        let error = rdsys::rd_kafka_group_result_error(result);
        if !error.is_null() {
            let code: RDKafkaErrorCode = rdsys::rd_kafka_error_code(error).into();
            let message = format!("consumer group {group:?}: {}", c_string(rdsys::rd_kafka_error_string(error)));
            return Err(classify_code(code, operation, group, message));
        }
        for entry in partition_entries(rdsys::rd_kafka_group_result_partitions(result)) {
            offsets.push((entry.key.clone(), entry.offset(operation)?));
        }
    }
    Ok(offsets)
}

fn c_group(group: &str, operation: &'static str) -> Result<CString, KafkaError> {
    CString::new(group).map_err(|_| KafkaError::Rejected { operation, topic: String::new(), message: "group id contains NUL".into() })
}

/// ListOffsets (KIP-396) for every partition: `query` is an `rd_kafka_OffsetSpec_t` (earliest,
/// latest) or a timestamp in milliseconds.
fn list_offsets(
    client: &AdminClient<DefaultClientContext>,
    partitions: &[Partition],
    query: i64,
    timeout: Duration,
) -> Result<BTreeMap<Partition, i64>, KafkaError> {
    const OPERATION: &str = "ListOffsets";
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let list = partition_list(partitions, |_| query)?;
    let subject = partitions[0].0.clone();
    // SAFETY: librdkafka copies `list`, which lives until the end of the function; result
    // pointers belong to `event`, alive until the block ends.
    unsafe {
        let event = run_admin_request(
            client,
            OPERATION,
            &subject,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTOFFSETS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_ListOffsets(rk, list.ptr(), options, queue),
        )?;
        let result = rdsys::rd_kafka_event_ListOffsets_result(event.0);
        let mut count = 0usize;
        let infos = rdsys::rd_kafka_ListOffsets_result_infos(result, &mut count);
        let mut offsets = BTreeMap::new();
        for index in 0..count {
            let entry = partition_entry(rdsys::rd_kafka_ListOffsetsResultInfo_topic_partition(*infos.add(index)));
            offsets.insert(entry.key.clone(), entry.offset(OPERATION)?);
        }
        Ok(offsets)
    }
}

/// The group's committed offset on each of `partitions` (`None` where it has none), or, without
/// partitions, on every partition it committed on.
fn committed_offsets(
    client: &AdminClient<DefaultClientContext>,
    group: &str,
    partitions: Option<&[Partition]>,
    timeout: Duration,
) -> Result<BTreeMap<Partition, Option<i64>>, KafkaError> {
    const OPERATION: &str = "ListConsumerGroupOffsets";
    let c_group = c_group(group, OPERATION)?;
    let list = partitions.map(|partitions| partition_list(partitions, |_| rdsys::RD_KAFKA_OFFSET_INVALID as i64)).transpose()?;
    // SAFETY: the request copies the group id and the list (a null list asks for every topic) and
    // is destroyed once, after it was issued; result pointers belong to `event`, alive until the
    // block ends.
    unsafe {
        let list_ptr = list.as_ref().map_or(std::ptr::null(), |list| list.ptr().cast_const());
        let mut request = [rdsys::rd_kafka_ListConsumerGroupOffsets_new(c_group.as_ptr(), list_ptr)];
        let event = run_admin_request(
            client,
            OPERATION,
            group,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_ListConsumerGroupOffsets(rk, request.as_mut_ptr(), 1, options, queue),
        );
        rdsys::rd_kafka_ListConsumerGroupOffsets_destroy(request[0]);
        let event = event?;
        let result = rdsys::rd_kafka_event_ListConsumerGroupOffsets_result(event.0);
        let mut count = 0usize;
        let groups = rdsys::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count);
        let offsets = group_result_offsets(groups, count, OPERATION, group)?;
        Ok(offsets.into_iter().map(|(key, offset)| (key, (offset >= 0).then_some(offset))).collect())
    }
}

/// Commits `offsets` for the group (AlterConsumerGroupOffsets).
fn alter_group_offsets(
    client: &AdminClient<DefaultClientContext>,
    group: &str,
    offsets: &BTreeMap<Partition, i64>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    const OPERATION: &str = "AlterConsumerGroupOffsets";
    let c_group = c_group(group, OPERATION)?;
    let partitions: Vec<Partition> = offsets.keys().cloned().collect();
    let list = partition_list(&partitions, |key| offsets.get(key).copied().unwrap_or_default())?;
    // SAFETY: as in `committed_offsets`.
    unsafe {
        let mut request = [rdsys::rd_kafka_AlterConsumerGroupOffsets_new(c_group.as_ptr(), list.ptr())];
        let event = run_admin_request(
            client,
            OPERATION,
            group,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERCONSUMERGROUPOFFSETS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_AlterConsumerGroupOffsets(rk, request.as_mut_ptr(), 1, options, queue),
        );
        rdsys::rd_kafka_AlterConsumerGroupOffsets_destroy(request[0]);
        let event = event?;
        let result = rdsys::rd_kafka_event_AlterConsumerGroupOffsets_result(event.0);
        let mut count = 0usize;
        let groups = rdsys::rd_kafka_AlterConsumerGroupOffsets_result_groups(result, &mut count);
        group_result_offsets(groups, count, OPERATION, group).map(drop)
    }
}

/// Members of the group, by DescribeConsumerGroups; `None` when the broker does not implement it.
fn describe_group_members(client: &AdminClient<DefaultClientContext>, group: &str, timeout: Duration) -> Result<Option<usize>, KafkaError> {
    const OPERATION: &str = "DescribeConsumerGroups";
    let c_group = c_group(group, OPERATION)?;
    let mut groups = [c_group.as_ptr()];
    // SAFETY: librdkafka copies the group ids; result pointers belong to `event`, alive until the
    // block ends.
    unsafe {
        let event = match run_admin_request(
            client,
            OPERATION,
            group,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_DescribeConsumerGroups(rk, groups.as_mut_ptr(), groups.len(), options, queue),
        ) {
            Ok(event) => event,
            Err(KafkaError::Unsupported { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let result = rdsys::rd_kafka_event_DescribeConsumerGroups_result(event.0);
        let mut count = 0usize;
        let descriptions = rdsys::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        if count == 0 {
            return Ok(None);
        }
        let description = *descriptions;
        let error = rdsys::rd_kafka_ConsumerGroupDescription_error(description);
        if !error.is_null() {
            let code: RDKafkaErrorCode = rdsys::rd_kafka_error_code(error).into();
            return match classify_code(code, OPERATION, group, c_string(rdsys::rd_kafka_error_string(error))) {
                KafkaError::Unsupported { .. } => Ok(None),
                error => Err(error),
            };
        }
        Ok(Some(rdsys::rd_kafka_ConsumerGroupDescription_member_count(description)))
    }
}
