//! Integration tests against a real Kafka-protocol broker (Tansu in the test rig), named by
//! `TRIBUTARY_BOOTSTRAP_SERVERS`: consumer-group lag, partition counts and offset resets as the
//! Subscription controller reads and makes them, and the built-in scaler fed by those readings.
//! Without a broker they skip, unless `TRIBUTARY_TEST_STRICT=1`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use tributary_api::event_topic::Origin;
use tributary_api::Subscription;

use super::kafka::{self, Ask};
use super::ownership;
use super::resolve::{self, ResolvedTopic, Workload};
use super::scaler::{decide, Lag, Observation, Policy, Reason};
use super::test_support::subscription;
use crate::fixtures::{test_bootstrap_servers, unique_name};
use crate::kafka::{ConsumerGroups, GroupLag, KafkaConnection, KafkaError, RdKafkaTopicAdmin, StartFrom, TopicAdmin, TopicSpec};

/// Record timestamps: two batches an hour apart.
const EARLY: i64 = 1_700_000_000_000;
const LATE: i64 = EARLY + 3_600_000;

struct Broker {
    servers: String,
    admin: RdKafkaTopicAdmin,
}

fn broker() -> Option<Broker> {
    let servers = test_bootstrap_servers()?;
    let admin = RdKafkaTopicAdmin::connect(&KafkaConnection::new(servers.clone())).expect("admin client");
    Some(Broker { servers, admin })
}

impl Broker {
    /// A fresh two-partition topic: partition 0 gets `early` records stamped EARLY, partition 1
    /// gets `late` records stamped LATE.
    async fn topic_with_records(&self, name: &str, early: usize, late: usize) -> String {
        let topic = unique_name(name);
        let spec = TopicSpec { name: topic.clone(), partitions: 2, replication_factor: None, configs: Default::default() };
        self.admin.create_topic(&spec).await.expect("create topic");
        self.produce_at(&topic, 0, early, EARLY).await;
        self.produce_at(&topic, 1, late, LATE).await;
        topic
    }

    /// `count` records into `partition`, stamped now.
    async fn produce(&self, topic: &str, partition: i32, count: usize) {
        self.produce_at(topic, partition, count, Timestamp::now().as_millisecond()).await;
    }

    async fn produce_at(&self, topic: &str, partition: i32, count: usize, timestamp: i64) {
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &self.servers).create().expect("producer");
        for index in 0..count {
            let payload = format!("record {index}");
            let record = FutureRecord::<(), _>::to(topic).partition(partition).payload(&payload).timestamp(timestamp);
            producer.send(record, Duration::from_secs(10)).await.expect("produced");
        }
    }

    /// Commits offsets for the group the way a consumer does, without joining it.
    fn commit(&self, group: &str, offsets: &[(&str, i32, i64)]) {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.servers).set("group.id", group).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("offset");
        }
        consumer.commit(&list, CommitMode::Sync).expect("commit");
    }
}

impl Broker {
    /// Whether the broker answers ListOffsets by timestamp. Tansu 0.6 answers offset 0 for every
    /// time (fixed upstream in Tansu#105); Apache Kafka answers the first record at or after it.
    async fn finds_offsets_by_time(&self, topic: &str) -> bool {
        let far_future = StartFrom::Timestamp(LATE + 365 * 86_400_000);
        let lag = self.admin.group_lag(&unique_name("probe"), &[topic.to_owned()], far_future).await.expect("lag");
        lag.total() == 0
    }

    /// A consumer that has joined `group` and been assigned partitions of `topic`.
    fn member_of(&self, group: &str, topic: &str) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while consumer.assignment().map(|assigned| assigned.count()).unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "the consumer got no partitions within 20s");
            consumer.poll(Duration::from_millis(100));
        }
        consumer
    }
}

#[tokio::test]
async fn lag_of_a_group_without_commits_follows_start_from() {
    let Some(broker) = broker() else { return };
    let topic = broker.topic_with_records("lag-nocommit", 5, 3).await;
    let topics = [topic.clone()];
    let group = unique_name("group");
    assert_eq!(broker.admin.partition_counts(&topics).await.expect("counts"), [(topic.clone(), 2)].into());

    let earliest = broker.admin.group_lag(&group, &topics, StartFrom::Earliest).await.expect("lag");
    assert_eq!((earliest.total(), earliest.partition_count()), (8, 2), "{earliest:?}");
    assert!(earliest.partitions.iter().all(|p| p.committed.is_none()), "{earliest:?}");
    assert_eq!(earliest.by_topic(), vec![(topic.clone(), 8)]);

    let latest = broker.admin.group_lag(&group, &topics, StartFrom::Latest).await.expect("lag");
    assert_eq!(latest.total(), 0, "latest starts at the end: {latest:?}");

    let since_late = broker.admin.group_lag(&group, &topics, StartFrom::Timestamp(LATE - 1)).await.expect("lag");
    let per_partition: Vec<i64> = since_late.partitions.iter().map(|p| p.lag()).collect();
    if broker.finds_offsets_by_time(&topic).await {
        // Only partition 1 has records at or after the late timestamp.
        assert_eq!(per_partition, vec![0, 3], "{since_late:?}");
    } else {
        println!("the broker answers offset 0 for any time (Tansu 0.6); lag by time reads as from the earliest");
        assert_eq!(per_partition, vec![5, 3], "{since_late:?}");
    }
}

#[tokio::test]
async fn lag_counts_from_committed_offsets_and_reset_moves_them_to_a_time() {
    let Some(broker) = broker() else { return };
    let topic = broker.topic_with_records("lag-commit", 5, 3).await;
    let topics = [topic.clone()];
    let group = unique_name("group");
    broker.commit(&group, &[(&topic, 0, 2)]);

    let lag = broker.admin.group_lag(&group, &topics, StartFrom::Latest).await.expect("lag");
    assert_eq!(lag.partitions.iter().map(|p| p.committed).collect::<Vec<_>>(), vec![Some(2), None], "{lag:?}");
    assert_eq!(lag.total(), 3, "5 - 2 on partition 0; latest on the uncommitted partition: {lag:?}");
    let from_earliest = broker.admin.group_lag(&group, &topics, StartFrom::Earliest).await.expect("lag");
    assert_eq!(from_earliest.total(), 6, "3 on partition 0, all 3 of the uncommitted partition: {from_earliest:?}");

    broker.admin.reset_offsets(&group, &topics, LATE - 1).await.expect("reset");
    let after = broker.admin.group_lag(&group, &topics, StartFrom::Latest).await.expect("lag");
    let committed: Vec<Option<i64>> = after.partitions.iter().map(|p| p.committed).collect();
    if broker.finds_offsets_by_time(&topic).await {
        // Partition 0 has nothing that late (log end), partition 1 starts there.
        assert_eq!(committed, vec![Some(5), Some(0)], "{after:?}");
    } else {
        assert_eq!(committed, vec![Some(0), Some(0)], "Tansu 0.6 answers offset 0 for any time: {after:?}");
    }

    // Forward again: after the last record every partition is at its end.
    broker.commit(&group, &[(&topic, 0, 5), (&topic, 1, 3)]);
    assert_eq!(broker.admin.group_lag(&group, &topics, StartFrom::Earliest).await.expect("lag").total(), 0);
    broker.admin.reset_offsets(&group, &topics, EARLY).await.expect("reset");
    let rewound = broker.admin.group_lag(&group, &topics, StartFrom::Latest).await.expect("lag");
    assert_eq!(rewound.total(), 8, "every record is at or after the early timestamp: {rewound:?}");
}

#[tokio::test]
async fn reset_is_refused_while_the_group_has_a_member() {
    let Some(broker) = broker() else { return };
    let topic = broker.topic_with_records("reset-busy", 2, 2).await;
    let group = unique_name("group");
    let member = broker.member_of(&group, &topic);
    // Tansu reports no members in DescribeConsumerGroups; Kafka reports the one.
    let members = broker.admin.group_members(&group).await.expect("describe group");
    assert!(matches!(members, Some(0) | Some(1)), "{members:?}");
    let refused = broker.admin.reset_offsets(&group, std::slice::from_ref(&topic), EARLY).await;
    assert!(matches!(refused, Err(KafkaError::Rejected { .. })), "{refused:?}");
    drop(member);
    broker.admin.reset_offsets(&group, &[topic], EARLY).await.expect("reset once the member left");
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error_not_zero_lag() {
    if test_bootstrap_servers().is_none() {
        return;
    }
    // Nothing listens on port 1.
    let connection = KafkaConnection { request_timeout: Duration::from_secs(2), ..KafkaConnection::new("127.0.0.1:1") };
    let admin = RdKafkaTopicAdmin::connect(&connection).expect("client");
    let lag = admin.group_lag("any", &["orders".to_owned()], StartFrom::Earliest).await;
    assert!(matches!(lag, Err(KafkaError::Unavailable(_))), "{lag:?}");
    let reset = admin.reset_offsets("any", &["orders".to_owned()], EARLY).await;
    assert!(matches!(reset, Err(KafkaError::Unavailable(_))), "{reset:?}");
}

#[tokio::test]
async fn the_builtin_scaler_follows_real_lag_readings() {
    let Some(broker) = broker() else { return };
    let topic = broker.topic_with_records("scaler", 5, 3).await;
    let topics = [topic.clone()];
    let group = unique_name("group");
    let policy = Policy {
        min_replicas: 1,
        max_replicas: 10,
        lag_threshold: 3,
        activation_lag_threshold: 0,
        scale_to_zero: true,
        cooldown: Duration::from_secs(60),
    };
    let start = Timestamp::now();
    let observe = |lag: &GroupLag, current: i32, low_lag_since: Option<Timestamp>, seconds: i64| Observation {
        lag: Some(Lag { total: lag.total(), partitions: lag.partition_count() }),
        current: Some(current),
        low_lag_since,
        now: start + SignedDuration::from_secs(seconds),
    };

    // 8 records behind, 3 per replica: 3 wanted, but the topic has only 2 partitions.
    let behind = broker.admin.group_lag(&group, &topics, StartFrom::Earliest).await.expect("lag");
    let up = decide(&policy, &observe(&behind, 0, None, 0));
    assert_eq!((up.replicas, up.reason), (2, Reason::AtTarget));

    // Caught up: zero is wanted, after the cooldown.
    broker.commit(&group, &[(&topic, 0, 5), (&topic, 1, 3)]);
    let caught_up = broker.admin.group_lag(&group, &topics, StartFrom::Earliest).await.expect("lag");
    let cooling = decide(&policy, &observe(&caught_up, 2, None, 10));
    assert_eq!(cooling.replicas, 2);
    let idle = decide(&policy, &observe(&caught_up, 2, cooling.low_lag_since, 70));
    assert_eq!(idle.replicas, 0);

    // Unreachable: no reading, no scale-down.
    let connection = KafkaConnection { request_timeout: Duration::from_secs(2), ..KafkaConnection::new("127.0.0.1:1") };
    let unreachable = RdKafkaTopicAdmin::connect(&connection).expect("client");
    let unknown = unreachable.group_lag(&group, &topics, StartFrom::Earliest).await.ok();
    let kept = decide(
        &policy,
        &Observation {
            lag: unknown.map(|lag| Lag { total: lag.total(), partitions: lag.partition_count() }),
            current: Some(2),
            low_lag_since: None,
            now: start,
        },
    );
    assert_eq!((kept.replicas, kept.reason), (2, Reason::LagUnknown));
}

/// The Subscription's Kafka stage as a reconcile runs it, with no consumer running.
async fn idle_reconcile(broker: &Broker, workload: &Workload<'_>) -> GroupLag {
    let ask = Ask { members: false, idle: true };
    kafka::read(&broker.admin, &broker.admin, workload, ask).await.lag.expect("lag")
}

#[tokio::test]
async fn a_group_scaled_to_zero_that_never_committed_wakes_up_when_records_arrive() {
    let Some(broker) = broker() else { return };
    // startFrom: latest (the default), and the records already there are not to be read.
    let topic = broker.topic_with_records("wake", 5, 3).await;
    let subscription = subscription("wake", "scaling: { minReplicas: 1, scaleToZero: true, activationLagThreshold: 0 }");
    let resolved = ResolvedTopic { name: "orders".into(), kafka_topic: topic.clone(), dead_letter_topic: None, max_message_bytes: None };
    let mut workload = resolve::workload(&subscription, vec![resolved]).expect("a valid Subscription");
    workload.group = unique_name("group");
    workload.dead_letter.topic = unique_name("wake-dlq");
    let policy = Policy::new(&subscription.spec.scaling, workload.cooldown);

    let before = idle_reconcile(&broker, &workload).await;
    assert_eq!(before.total(), 0, "latest: what was there before is not lag: {before:?}");
    let asleep = decide(&policy, &Observation { lag: Some(lag(&before)), current: Some(0), low_lag_since: None, now: Timestamp::now() });
    assert_eq!(asleep.replicas, 0);

    broker.produce(&topic, 1, 4).await;
    let after = idle_reconcile(&broker, &workload).await;
    assert_eq!(after.total(), 4, "records that arrived while nobody consumed are lag: {after:?}");
    let woken = decide(&policy, &Observation { lag: Some(lag(&after)), current: Some(0), low_lag_since: None, now: Timestamp::now() });
    assert!(woken.replicas >= 1, "a consumer is wanted at the next scale interval: {woken:?}");
}

fn lag(reading: &GroupLag) -> Lag {
    Lag { total: reading.total(), partitions: reading.partition_count() }
}

#[tokio::test]
async fn committed_topics_name_every_topic_a_group_committed_on() {
    let Some(broker) = broker() else { return };
    let (first, second) = (broker.topic_with_records("committed-a", 2, 0).await, broker.topic_with_records("committed-b", 0, 2).await);
    let group = unique_name("group");
    assert!(broker.admin.committed_topics(&group).await.expect("asked").is_empty(), "a group nobody used");
    broker.commit(&group, &[(&first, 0, 1), (&second, 1, 2)]);
    assert_eq!(broker.admin.committed_topics(&group).await.expect("asked"), [first, second].into());
}

/// A Subscription reading `topic`, with group `group`, resolved as the controller does.
fn workload_reading<'a>(subscription: &'a Subscription, topic: &str, group: &str) -> Workload<'a> {
    let resolved = ResolvedTopic { name: "orders".into(), kafka_topic: topic.to_owned(), dead_letter_topic: None, max_message_bytes: None };
    let mut workload = resolve::workload(subscription, vec![resolved]).expect("a valid Subscription");
    workload.group = group.to_owned();
    workload.dead_letter.topic = format!("{group}.dlq");
    workload
}

#[tokio::test]
async fn a_group_someone_committed_with_is_refused_until_adopted_and_its_own_commits_keep_it() {
    let Some(broker) = broker() else { return };
    let theirs = broker.topic_with_records("their-topic", 2, 0).await;
    let ours = broker.topic_with_records("our-topic", 1, 1).await;
    let group = unique_name("their-group");
    // Another team consumed `theirs` with this group; nobody consumes now.
    broker.commit(&group, &[(&theirs, 0, 2)]);

    let plain = subscription("billing", "");
    let workload = workload_reading(&plain, &ours, &group);
    let questions = ownership::questions(&plain, &workload);
    assert_eq!(questions, ownership::Questions { group: true, dead_letter: true });
    let unrecorded = kafka::ask_unrecorded(&broker.admin, &broker.admin, &workload, questions).await.expect("asked");
    let refused = ownership::hold(&plain, &workload, &unrecorded, []).expect_err("not without consent");
    assert!(refused.message().contains(&format!("has committed offsets on {theirs}")), "{}", refused.message());

    let adopting = subscription("billing", "adoptConsumerGroup: true");
    let workload = workload_reading(&adopting, &ours, &group);
    let held = ownership::hold(&adopting, &workload, &unrecorded, []).expect("adopted");
    assert_eq!(held.group_origin, Origin::Adopted);

    // A group nobody used becomes the Subscription's; recorded, its own commits do not lock it out.
    let fresh_group = unique_name("fresh-group");
    let workload = workload_reading(&plain, &ours, &fresh_group);
    let unrecorded =
        kafka::ask_unrecorded(&broker.admin, &broker.admin, &workload, ownership::questions(&plain, &workload)).await.expect("asked");
    let held = ownership::hold(&plain, &workload, &unrecorded, []).expect("free");
    assert_eq!(held, ownership::Held { group_origin: Origin::Created, dead_letter_origin: Some(Origin::Created) });
    let recorded = Subscription { status: ownership::with_records(&plain, &workload, &held), ..plain.clone() };
    idle_reconcile(&broker, &workload).await;
    assert_eq!(
        broker.admin.committed_topics(&fresh_group).await.expect("asked"),
        [ours.clone()].into(),
        "the start position was committed"
    );
    let workload = workload_reading(&recorded, &ours, &fresh_group);
    assert_eq!(ownership::questions(&recorded, &workload), ownership::Questions { group: false, dead_letter: false });
    assert_eq!(ownership::hold(&recorded, &workload, &ownership::Unrecorded::default(), []), Ok(held));
}
