//! Integration tests against a real Kafka-protocol broker (Tansu in the test rig), named by
//! `TRIBUTARY_BOOTSTRAP_SERVERS`. Without it they skip, unless `TRIBUTARY_TEST_STRICT=1` (as
//! `scripts/test.sh` sets), where a missing broker fails them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tributary_api::event_topic::Origin;
use tributary_api::EventTopic;

use super::controller::{reconcile_kafka, Context, Settings, FINALIZER};
use super::ownership::Records;
use super::status::{build_status, reason, Outcome, READY};
use super::test_support::event_topic;
use crate::fixtures::{condition, echo, stored, test_bootstrap_servers, unique_name as unique, ApiServerVerifier, Harness, NOW};
use crate::kafka::{KafkaConnection, RdKafkaTopicAdmin, SyncMode, TopicAdmin, TopicSpec};
use crate::naming::NamingPolicy;

fn broker() -> Option<RdKafkaTopicAdmin> {
    test_bootstrap_servers().map(|servers| RdKafkaTopicAdmin::connect(&KafkaConnection::new(servers)).expect("admin client"))
}

fn topic_with(name: &str, spec: &str) -> EventTopic {
    event_topic("it", &format!("topicName: {name}\n{spec}"))
}

/// One reconcile of the Kafka side, as the controller does it; the status it builds comes back
/// on `topic`, as the watch brings it.
async fn sync(admin: &dyn TopicAdmin, topic: &mut EventTopic) -> Outcome {
    let reconciled = reconcile_kafka(admin, topic, None, &NamingPolicy::default(), Records::Status, SyncMode::Apply).await;
    topic.status = Some(build_status(topic, &reconciled, Timestamp::now()));
    reconciled.outcome
}

fn ready_reason(topic: &EventTopic) -> (String, String, String) {
    let status = topic.status.as_ref().expect("a status");
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
    let mut topic = topic_with(
        &name,
        "partitions: 3\nretention: 1d\ncleanupPolicy: compact\nconfig: { segment.bytes: '104857600' }\ndeadLetter: { retention: 14d }",
    );
    sync(&admin, &mut topic).await;
    let status = topic.status.clone().expect("a status");
    assert_eq!(ready_reason(&topic).1, reason::CREATED, "{status:?}");
    assert_eq!(status.partitions, Some(3));
    assert_eq!((status.origin, status.dead_letter_origin), (Some(Origin::Created), Some(Origin::Created)));

    let created = admin.describe_topic(&name).await.expect("describe").expect("created");
    assert_eq!(created.partitions, 3);
    assert_eq!(created.configs.get("retention.ms").map(String::as_str), Some("86400000"));
    assert_eq!(created.configs.get("cleanup.policy").map(String::as_str), Some("compact"));
    assert_eq!(created.configs.get("segment.bytes").map(String::as_str), Some("104857600"));
    let dead_letter = admin.describe_topic(&format!("{name}.dlq")).await.expect("describe").expect("DLQ created");
    assert_eq!(dead_letter.partitions, 3);
    assert_eq!(dead_letter.configs.get("retention.ms").map(String::as_str), Some("1209600000"));

    // A second reconcile finds nothing to do and keeps the Ready reason.
    let outcome = sync(&admin, &mut topic).await;
    let Outcome::Synced(reports) = outcome else { panic!("synced") };
    assert!(reports.iter().all(|report| !report.plan.changes_anything()), "{reports:?}");
}

#[tokio::test]
async fn drift_made_out_of_band_is_corrected_but_ignored_keys_are_not() {
    let Some(admin) = broker() else { return };
    let name = unique("drift");
    let mut topic = topic_with(&name, "retention: 1d\nconfig: { segment.ms: '3600000' }\nignoredConfigKeys: [segment.ms]");
    sync(&admin, &mut topic).await;

    // Another tool changes both keys with IncrementalAlterConfigs, on its own connection.
    let other_tool = broker().expect("broker");
    let changes = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned()), ("segment.ms".to_owned(), "7200000".to_owned())]);
    other_tool.set_configs(&name, &changes).await.expect("out-of-band change");
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("1000"));

    sync(&admin, &mut topic).await;
    assert_eq!(ready_reason(&topic).1, reason::UPDATED);
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("86400000"), "managed key reverted");
    assert_eq!(config(&admin, &name, "segment.ms").await.as_deref(), Some("7200000"), "ignored key left alone");
}

/// A topic another tool made, with `configs`.
async fn foreign_topic(admin: &dyn TopicAdmin, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let configs = configs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    admin
        .create_topic(&TopicSpec { name: name.to_owned(), partitions, replication_factor: None, configs })
        .await
        .expect("pre-existing topic");
}

#[tokio::test]
async fn existing_topic_with_matching_settings_is_adopted_untouched() {
    let Some(admin) = broker() else { return };
    let name = unique("adopt");
    foreign_topic(&admin, &name, 2, &[("retention.ms", "3600000")]).await;
    let mut topic = topic_with(&name, "adopt: true\npartitions: 2\nretention: 1h");
    let outcome = sync(&admin, &mut topic).await;
    assert_eq!(ready_reason(&topic).1, reason::IN_SYNC);
    assert_eq!(topic.status.as_ref().and_then(|status| status.origin), Some(Origin::Adopted));
    let Outcome::Synced(reports) = outcome else { panic!("synced") };
    assert!(!reports[0].plan.changes_anything());
}

#[tokio::test]
async fn an_existing_topic_is_not_touched_without_adopt() {
    let Some(admin) = broker() else { return };
    let name = unique("foreign");
    foreign_topic(&admin, &name, 1, &[("retention.ms", "3600000")]).await;
    let mut topic = topic_with(&name, "retention: 1ms\ndeletionPolicy: Delete");
    let outcome = sync(&admin, &mut topic).await;
    assert!(matches!(outcome, Outcome::AdoptionRequired(_)), "{outcome:?}");
    let (ready, reason_text, message) = ready_reason(&topic);
    assert_eq!((ready.as_str(), reason_text.as_str()), ("False", reason::ADOPTION_REQUIRED));
    assert!(message.contains(&format!("topic {name:?} exists in Kafka")) && message.contains("spec.adopt: true"), "{message}");
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("3600000"), "its retention is left alone");
    let status = topic.status.clone().expect("a status");
    assert_eq!((status.origin, status.partitions), (None, None), "not this EventTopic's");

    // Deleting the EventTopic leaves the topic too, although the policy is Delete.
    let (harness, api) = harness_with_broker(broker().expect("broker"), NamingPolicy::default());
    let scenario = tokio::spawn(async move {
        let mut api = api;
        let patch = api.expect(Method::PATCH, "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics/it", json!({})).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&being_deleted(topic, true)).await.expect("finalized");
    scenario.await.expect("scenario ran");
    assert!(admin.describe_topic(&name).await.expect("describe").is_some(), "a topic it did not create is not deleted");
}

#[tokio::test]
async fn an_adopted_topic_keeps_every_setting_the_spec_does_not_name() {
    let Some(admin) = broker() else { return };
    let name = unique("adopted");
    let dead_letter = format!("{name}.dlq");
    foreign_topic(&admin, &name, 2, &[("retention.ms", "3600000"), ("segment.ms", "600000")]).await;
    foreign_topic(&admin, &dead_letter, 1, &[("retention.ms", "432000000")]).await;
    // Created dead-letter topics take the topic's retention and partitions; adopted ones do not.
    let mut topic = topic_with(&name, "adopt: true\npartitions: 2\nretention: 2h\ndeadLetter: {}");
    sync(&admin, &mut topic).await;
    assert_eq!(ready_reason(&topic).0, "True", "{:?}", ready_reason(&topic));
    let status = topic.status.clone().expect("a status");
    assert_eq!((status.origin, status.dead_letter_origin), (Some(Origin::Adopted), Some(Origin::Adopted)));
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("7200000"), "the spec names retention");
    assert_eq!(config(&admin, &name, "segment.ms").await.as_deref(), Some("600000"), "it does not name segment.ms");
    assert_eq!(config(&admin, &dead_letter, "retention.ms").await.as_deref(), Some("432000000"), "not the topic's retention");
    assert_eq!(admin.describe_topic(&dead_letter).await.expect("describe").expect("exists").partitions, 1);
}

#[tokio::test]
async fn adopted_topics_are_deleted_only_under_delete_including_adopted() {
    let Some(admin) = broker() else { return };
    for (policy, deleted) in [("Delete", false), ("DeleteIncludingAdopted", true)] {
        let name = unique("adopted-delete");
        foreign_topic(&admin, &name, 1, &[]).await;
        let mut topic = topic_with(&name, &format!("adopt: true\ndeletionPolicy: {policy}"));
        sync(&admin, &mut topic).await;

        let (harness, api) = harness_with_broker(broker().expect("broker"), NamingPolicy::default());
        let scenario = tokio::spawn(async move {
            let mut api = api;
            if !deleted {
                let kept = api.expect_event("default").await;
                assert_eq!(kept["reason"].as_str(), Some("KafkaTopicKept"));
                assert!(kept["note"].as_str().is_some_and(|note| note.contains("was adopted")), "{kept}");
            }
            api.expect(Method::PATCH, "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics/it", json!({})).await;
        });
        harness.reconcile(&being_deleted(topic, true)).await.expect("finalized");
        scenario.await.expect("scenario ran");
        assert_eq!(admin.describe_topic(&name).await.expect("describe").is_none(), deleted, "{policy}");
    }
}

#[tokio::test]
async fn partition_growth_the_broker_cannot_do_is_reported_and_shrink_refused() {
    let Some(admin) = broker() else { return };
    let name = unique("partitions");
    let mut topic = topic_with(&name, "partitions: 2\nretention: 1h");
    sync(&admin, &mut topic).await;

    topic.spec = topic_with(&name, "partitions: 4\nretention: 2h").spec;
    sync(&admin, &mut topic).await;
    let after = admin.describe_topic(&name).await.expect("describe").expect("exists");
    let (ready, reason_text, message) = ready_reason(&topic);
    if after.partitions == 4 {
        // A broker with CreatePartitions (Apache Kafka) simply grows the topic.
        assert_eq!((ready.as_str(), reason_text.as_str()), ("True", reason::UPDATED));
    } else {
        // Tansu has no CreatePartitions: say so, and still correct the config.
        assert_eq!((ready.as_str(), reason_text.as_str()), ("False", reason::NOT_SUPPORTED), "{message}");
        assert!(message.contains("CreatePartitions"), "{message}");
        assert_eq!(topic.status.as_ref().and_then(|status| status.partitions), Some(2));
    }
    assert_eq!(config(&admin, &name, "retention.ms").await.as_deref(), Some("7200000"));

    topic.spec = topic_with(&name, "partitions: 1\nretention: 2h").spec;
    sync(&admin, &mut topic).await;
    assert_eq!(ready_reason(&topic).1, reason::PARTITION_DECREASE_NOT_SUPPORTED);
    assert_eq!(admin.describe_topic(&name).await.expect("describe").expect("exists").partitions, after.partitions);
}

#[tokio::test]
async fn invalid_config_key_is_reported_and_nothing_is_created() {
    let Some(admin) = broker() else { return };
    let name = unique("badkey");
    let mut topic = topic_with(&name, "config: { retention.msec: '5' }");
    sync(&admin, &mut topic).await;
    let (ready, reason_text, message) = ready_reason(&topic);
    assert_eq!((ready.as_str(), reason_text.as_str()), ("False", reason::INVALID_CONFIG));
    assert!(message.contains("retention.msec"), "{message}");
    assert_eq!(admin.describe_topic(&name).await.expect("describe"), None, "nothing half-applied");
}

/// The controller's context with a mock API server but the real broker.
fn harness_with_broker(admin: RdKafkaTopicAdmin, naming: NamingPolicy) -> (Harness<Context>, ApiServerVerifier) {
    Harness::new(|shared, store| (Context::new(shared, Arc::new(admin), store, Settings { naming, ..Settings::default() }), ()))
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
    let mut topic = topic_with(&name, "deletionPolicy: Delete\ndeadLetter: {}");
    sync(&admin, &mut topic).await;
    assert!(admin.describe_topic(&format!("{name}.dlq")).await.expect("describe").is_some());

    let (harness, mut api) = harness_with_broker(broker().expect("broker"), NamingPolicy::default());
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
    let mut topic = topic_with(&name, "deletionPolicy: Retain");
    sync(&admin, &mut topic).await;

    let (harness, api) = harness_with_broker(broker().expect("broker"), NamingPolicy::default());
    harness.reconcile(&being_deleted(topic, false)).await.expect("nothing to finalize");
    api.expect_no_more_requests().await;
    assert!(admin.describe_topic(&name).await.expect("describe").is_some(), "Retain keeps the topic");
}

/// Two teams' `orders` EventTopics (`spec`), reconciled by the controller under `naming` with
/// both in its store, the older first; returns the status each wrote last.
async fn two_teams_reconcile_orders(naming: NamingPolicy, spec: &str) -> [Value; 2] {
    let admin = broker().expect("broker");
    let (mut harness, mut api) = harness_with_broker(admin, naming);
    let teams = [unique("team-a"), unique("team-b")];
    let topics = [0, 1].map(|index| {
        let mut topic = stored(event_topic("orders", spec), NOW - 20 + index);
        topic.metadata.namespace = Some(teams[index as usize].clone());
        topic
    });
    for topic in &topics {
        harness.seen(topic);
    }
    let mut statuses = Vec::new();
    for topic in &topics {
        let namespace = topic.metadata.namespace.clone().expect("a namespace");
        let path = format!("/apis/tributary.dev/v1alpha1/namespaces/{namespace}/eventtopics/orders/status");
        let response = echo(topic);
        let scenario = tokio::spawn(async move {
            let mut status = api.expect(Method::PATCH, &path, response.clone()).await.body;
            if status["status"]["conditions"].is_null() {
                // The record written before creating: the topics are this EventTopic's.
                assert_eq!(status["status"]["origin"], "Created", "{status}");
                status = api.expect(Method::PATCH, &path, response).await.body;
                api.expect_event(&namespace).await;
            }
            (api, status)
        });
        harness.reconcile(topic).await.expect("reconciles");
        let (returned, status) = scenario.await.expect("scenario ran");
        api = returned;
        statuses.push(status);
    }
    api.expect_no_more_requests().await;
    [statuses.remove(0), statuses.remove(0)]
}

#[tokio::test]
async fn two_namespaces_both_have_an_orders_topic_under_namespace_prefixed_naming() {
    let Some(admin) = broker() else { return };
    let statuses = two_teams_reconcile_orders(NamingPolicy::namespace_prefixed([]), "deadLetter: {}").await;
    let mut kafka_topics = Vec::new();
    for status in &statuses {
        assert_eq!(condition(status, "Ready"), ("True", "Created"), "{status}");
        let kafka_topic = status["status"]["topicName"].as_str().expect("topicName").to_owned();
        assert!(kafka_topic.starts_with("it-team-") && kafka_topic.ends_with(".orders"), "{kafka_topic}");
        assert_eq!(status["status"]["deadLetterTopic"].as_str(), Some(format!("{kafka_topic}.dlq").as_str()));
        assert!(admin.describe_topic(&kafka_topic).await.expect("describe").is_some(), "{kafka_topic} exists in Kafka");
        kafka_topics.push(kafka_topic);
    }
    assert_ne!(kafka_topics[0], kafka_topics[1]);
}

#[tokio::test]
async fn under_free_naming_the_second_namespace_gets_a_conflict() {
    let Some(admin) = broker() else { return };
    let shared = unique("orders");
    let statuses = two_teams_reconcile_orders(NamingPolicy::default(), &format!("topicName: {shared}")).await;
    assert_eq!(condition(&statuses[0], "Ready"), ("True", "Created"));
    assert_eq!(condition(&statuses[1], "Ready"), ("False", "ResourceConflict"));
    assert_eq!(statuses[1]["status"]["topicName"].as_str(), Some(shared.as_str()));
    assert!(admin.describe_topic(&shared).await.expect("describe").is_some());
}
