//! Integration tests against a real Kafka-protocol broker (Tansu in the test rig), named by
//! `TRIBUTARY_BOOTSTRAP_SERVERS`. Without it they skip, unless `TRIBUTARY_TEST_STRICT=1` (as
//! `scripts/test.sh` sets), where a missing broker fails them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tributary_api::EventTopic;

use super::controller::{reconcile_kafka, Context, Settings, FINALIZER};
use super::status::{build_status, reason, Outcome, READY};
use super::test_support::event_topic;
use crate::fixtures::{test_bootstrap_servers, unique_name as unique, ApiServerVerifier, Harness, NOW};
use crate::kafka::{KafkaConnection, RdKafkaTopicAdmin, SyncMode, TopicAdmin, TopicSpec};

fn broker() -> Option<RdKafkaTopicAdmin> {
    test_bootstrap_servers().map(|servers| RdKafkaTopicAdmin::connect(&KafkaConnection::new(servers)).expect("admin client"))
}

fn topic_with(name: &str, spec: &str) -> EventTopic {
    event_topic("it", &format!("topicName: {name}\n{spec}"))
}

/// One reconcile of the Kafka side, as the controller and `apply` do it; returns the status.
async fn sync(admin: &dyn TopicAdmin, topic: &EventTopic) -> (Outcome, tributary_api::EventTopicStatus) {
    let outcome = reconcile_kafka(admin, topic, None, SyncMode::Apply).await;
    let status = build_status(topic, &outcome, Timestamp::now());
    (outcome, status)
}

fn ready_reason(status: &tributary_api::EventTopicStatus) -> (String, String, String) {
    let ready = status.conditions.iter().find(|c| c.type_ == READY).expect("Ready condition");
    (ready.status.clone(), ready.reason.clone(), ready.message.clone())
}

async fn config(admin: &dyn TopicAdmin, topic: &str, key: &str) -> Option<String> {
    admin.describe_topic(topic).await.expect("describe").expect("topic exists").configs.get(key).cloned()
}

#[tokio::test]
async fn creates_topic_with_configs_and_its_dead_letter_topic() {
    let Some(admin) = broker() else { return };
    let name = unique("create");
    let topic = topic_with(
        &name,
        "partitions: 3\nretention: 1d\ncleanupPolicy: compact\nconfig: { segment.bytes: '104857600' }\ndeadLetter: { retention: 14d }",
    );
    let (_, status) = sync(&admin, &topic).await;
    assert_eq!(ready_reason(&status).1, reason::CREATED, "{status:?}");
    assert_eq!(status.partitions, Some(3));

    let created = admin.describe_topic(&name).await.expect("describe").expect("created");
    assert_eq!(created.partitions, 3);
    assert_eq!(created.configs.get("retention.ms").map(String::as_str), Some("86400000"));
    assert_eq!(created.configs.get("cleanup.policy").map(String::as_str), Some("compact"));
    assert_eq!(created.configs.get("segment.bytes").map(String::as_str), Some("104857600"));
    let dead_letter = admin.describe_topic(&format!("{name}.dlq")).await.expect("describe").expect("DLQ created");
    assert_eq!(dead_letter.partitions, 3);
    assert_eq!(dead_letter.configs.get("retention.ms").map(String::as_str), Some("1209600000"));

    // A second reconcile finds nothing to do and keeps the Ready reason.
    let (outcome, _) = sync(&admin, &EventTopic { status: Some(status), ..topic }).await;
    let Outcome::Synced(reports) = outcome else { panic!("synced") };
    assert!(reports.iter().all(|report| !report.plan.changes_anything()), "{reports:?}");
}

#[tokio::test]
async fn drift_made_out_of_band_is_corrected_but_ignored_keys_are_not() {
    let Some(admin) = broker() else { return };
    let name = unique("drift");
    let topic = topic_with(&name, "retention: 1d\nconfig: { segment.ms: '3600000' }\nignoredConfigKeys: [segment.ms]");
    sync(&admin, &topic).await;

    // Another tool changes both keys with IncrementalAlterConfigs, on its own connection.
    let other_tool = broker().expect("broker");
    let changes = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned()), ("segment.ms".to_owned(), "7200000".to_owned())]);
    other_tool.set_configs(&name, &changes).await.expect("out-of-band change");
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("1000"));

    let (_, status) = sync(&admin, &topic).await;
    assert_eq!(ready_reason(&status).1, reason::UPDATED);
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("86400000"), "managed key reverted");
    assert_eq!(config(&admin, &name, "segment.ms").await.as_deref(), Some("7200000"), "ignored key left alone");
}

#[tokio::test]
async fn existing_topic_with_matching_settings_is_adopted_untouched() {
    let Some(admin) = broker() else { return };
    let name = unique("adopt");
    let configs = BTreeMap::from([("retention.ms".to_owned(), "3600000".to_owned())]);
    admin
        .create_topic(&TopicSpec { name: name.clone(), partitions: 2, replication_factor: None, configs })
        .await
        .expect("pre-existing topic");
    let (outcome, status) = sync(&admin, &topic_with(&name, "partitions: 2\nretention: 1h")).await;
    assert_eq!(ready_reason(&status).1, reason::IN_SYNC);
    let Outcome::Synced(reports) = outcome else { panic!("synced") };
    assert!(!reports[0].plan.changes_anything());
}

#[tokio::test]
async fn partition_growth_the_broker_cannot_do_is_reported_and_shrink_refused() {
    let Some(admin) = broker() else { return };
    let name = unique("partitions");
    sync(&admin, &topic_with(&name, "partitions: 2\nretention: 1h")).await;

    let (_, grown) = sync(&admin, &topic_with(&name, "partitions: 4\nretention: 2h")).await;
    let after = admin.describe_topic(&name).await.expect("describe").expect("exists");
    let (ready, reason_text, message) = ready_reason(&grown);
    if after.partitions == 4 {
        // A broker with CreatePartitions (Apache Kafka) simply grows the topic.
        assert_eq!((ready.as_str(), reason_text.as_str()), ("True", reason::UPDATED));
    } else {
        // Tansu has no CreatePartitions: say so, and still correct the config.
        assert_eq!((ready.as_str(), reason_text.as_str()), ("False", reason::NOT_SUPPORTED), "{message}");
        assert!(message.contains("CreatePartitions"), "{message}");
        assert_eq!(grown.partitions, Some(2));
    }
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("7200000"));

    let (_, shrunk) = sync(&admin, &topic_with(&name, "partitions: 1\nretention: 2h")).await;
    assert_eq!(ready_reason(&shrunk).1, reason::PARTITION_DECREASE_NOT_SUPPORTED);
    assert_eq!(admin.describe_topic(&name).await.expect("describe").expect("exists").partitions, after.partitions);
}

#[tokio::test]
async fn invalid_config_key_is_reported_and_nothing_is_created() {
    let Some(admin) = broker() else { return };
    let name = unique("badkey");
    let (_, status) = sync(&admin, &topic_with(&name, "config: { retention.msec: '5' }")).await;
    let (ready, reason_text, message) = ready_reason(&status);
    assert_eq!((ready.as_str(), reason_text.as_str()), ("False", reason::INVALID_CONFIG));
    assert!(message.contains("retention.msec"), "{message}");
    assert_eq!(admin.describe_topic(&name).await.expect("describe"), None, "nothing half-applied");
}

/// The controller's context with a mock API server but the real broker.
fn harness_with_broker(admin: RdKafkaTopicAdmin) -> (Harness<Context>, ApiServerVerifier) {
    Harness::new(|shared, store| (Context::new(shared, Arc::new(admin), store, Settings::default()), ()))
}

fn being_deleted(mut topic: EventTopic, with_finalizer: bool) -> EventTopic {
    topic.metadata.generation = Some(1);
    topic.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).expect("timestamp")));
    if with_finalizer {
        topic.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    topic
}

#[tokio::test]
async fn delete_policy_removes_the_kafka_topics_on_deletion() {
    let Some(admin) = broker() else { return };
    let name = unique("delete");
    let topic = topic_with(&name, "deletionPolicy: Delete\ndeadLetter: {}");
    sync(&admin, &topic).await;
    assert!(admin.describe_topic(&format!("{name}.dlq")).await.expect("describe").is_some());

    let (harness, mut api) = harness_with_broker(broker().expect("broker"));
    let deleted = being_deleted(topic, true);
    let response = serde_json::to_value(&deleted).expect("serializes");
    let scenario = tokio::spawn(async move {
        let patch = api.expect(Method::PATCH, "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics/it", response).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
    });
    harness.reconcile(&deleted).await.expect("finalized");
    scenario.await.expect("scenario ran");
    assert_eq!(admin.describe_topic(&name).await.expect("describe"), None);
    assert_eq!(admin.describe_topic(&format!("{name}.dlq")).await.expect("describe"), None);
}

#[tokio::test]
async fn retain_policy_leaves_the_kafka_topic_on_deletion() {
    let Some(admin) = broker() else { return };
    let name = unique("retain");
    let topic = topic_with(&name, "deletionPolicy: Retain");
    sync(&admin, &topic).await;

    let (harness, api) = harness_with_broker(broker().expect("broker"));
    harness.reconcile(&being_deleted(topic, false)).await.expect("nothing to finalize");
    api.expect_no_more_requests().await;
    assert!(admin.describe_topic(&name).await.expect("describe").is_some(), "Retain keeps the topic");
}
