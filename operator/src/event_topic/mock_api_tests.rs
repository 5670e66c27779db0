//! Controller tests against a mock API server and the in-memory Kafka: each scenario scripts the
//! exact requests one reconcile must make.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use http::StatusCode;
use tributary_api::event_topic::Origin;
use tributary_api::{EventTopic, EventTopicStatus};

use super::controller::{Context, Settings, FINALIZER};
use super::test_support::event_topic;
use crate::fixtures::{assert_malformed_object_reported, condition, echo, find_condition, stored, ApiServerVerifier, Harness, NOW};
use crate::kafka::{FakeTopicAdmin, TopicState};
use crate::naming::NamingPolicy;

const TOPICS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics";

fn harness() -> (Harness<Context, Arc<FakeTopicAdmin>>, ApiServerVerifier) {
    harness_naming(NamingPolicy::default())
}

fn harness_naming(naming: NamingPolicy) -> (Harness<Context, Arc<FakeTopicAdmin>>, ApiServerVerifier) {
    Harness::new(|shared, store| {
        let kafka = Arc::new(FakeTopicAdmin::new());
        (Context::new(shared, kafka.clone(), store, Settings { naming, ..Settings::default() }), kafka)
    })
}

/// The EventTopic as the watch brings it back after the status patch `body`.
fn with_status(topic: &EventTopic, body: &serde_json::Value) -> EventTopic {
    EventTopic { status: Some(serde_json::from_value(body["status"].clone()).expect("status parses")), ..topic.clone() }
}

#[tokio::test]
async fn delete_policy_adds_finalizer_creates_topics_and_patches_status() {
    let (harness, mut api) = harness();
    let topic = stored(event_topic("orders", "partitions: 3\ndeletionPolicy: Delete\ndeadLetter: {}"), NOW - 10);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let finalizer = api.expect(Method::PATCH, &format!("{TOPICS}/orders"), response.clone()).await;
        assert!(finalizer.uri.contains("fieldManager=tributary-operator") && finalizer.uri.contains("force=true"), "{}", finalizer.uri);
        assert_eq!(
            finalizer.body,
            json!({"apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic", "metadata": {"name": "orders", "finalizers": [FINALIZER]}})
        );
        // Before Kafka is touched, the topics are recorded as this EventTopic's own.
        let recorded = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response.clone()).await;
        assert_eq!(
            recorded.body["status"],
            json!({"topicName": "orders", "origin": "Created", "deadLetterTopic": "orders.dlq", "deadLetterOrigin": "Created"})
        );
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        assert!(status.uri.contains("fieldManager=tributary-operator"), "{}", status.uri);
        assert_eq!(
            status.body,
            json!({
                "apiVersion": "tributary.dev/v1alpha1",
                "kind": "EventTopic",
                "status": {
                    "observedGeneration": 1,
                    "conditions": [{
                        "type": "Ready",
                        "status": "True",
                        "reason": "Created",
                        "message": "created topic \"orders\"; created dead-letter topic \"orders.dlq\"",
                        "observedGeneration": 1,
                        "lastTransitionTime": "2027-01-15T08:00:00Z",
                    }],
                    "topicName": "orders",
                    "origin": "Created",
                    "partitions": 3,
                    "replicationFactor": 1,
                    "deadLetterTopic": "orders.dlq",
                    "deadLetterOrigin": "Created",
                    "lastSyncTime": "2027-01-15T08:00:00Z",
                }
            })
        );
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Normal"), Some("Created")));
        api.expect_no_more_requests().await;
    });
    let action = harness.reconcile(&topic).await.expect("reconciles");
    assert_eq!(action, Action::requeue(Settings::default().resync_interval));
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topic_names(), vec!["orders", "orders.dlq"]);
}

#[tokio::test]
async fn retain_policy_removes_a_leftover_finalizer() {
    let (harness, mut api) = harness();
    let mut topic = stored(event_topic("orders", ""), NOW - 10);
    topic.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let patch = api.expect(Method::PATCH, &format!("{TOPICS}/orders"), response.clone()).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
        api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response.clone()).await;
        api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        api.expect_event("default").await;
    });
    harness.reconcile(&topic).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn unchanged_status_is_not_patched_again() {
    let (harness, mut api) = harness();
    let topic = stored(event_topic("orders", "partitions: 2"), NOW - 10);
    let response = echo(&topic);
    let first = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response.clone()).await;
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        api.expect_event("default").await;
        (api, status.body)
    });
    harness.reconcile(&topic).await.expect("first reconcile");
    let (api, status_patch) = first.await.expect("scenario ran");

    // The watch brings the object back with the status we wrote; a minute later nothing changed.
    let mut with_status = topic.clone();
    with_status.status = Some(serde_json::from_value(status_patch["status"].clone()).expect("status parses"));
    harness.clock.advance(Duration::from_secs(60));
    harness.reconcile(&with_status).await.expect("second reconcile");
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn paused_topic_only_reports_that_it_is_paused() {
    let (harness, mut api) = harness();
    let mut topic = stored(event_topic("orders", "partitions: 2"), NOW - 10);
    topic.metadata.annotations = Some([(tributary_api::PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        let conditions = status.body["status"]["conditions"].as_array().expect("conditions").clone();
        assert_eq!(conditions.len(), 1);
        assert_eq!((conditions[0]["type"].as_str(), conditions[0]["reason"].as_str()), (Some("ReconciliationPaused"), Some("Paused")));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&topic).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.calls().is_empty(), "a paused topic must not touch Kafka");
}

#[tokio::test]
async fn younger_claim_on_the_same_kafka_topic_gets_resource_conflict() {
    let (mut harness, mut api) = harness();
    let mut owner = stored(event_topic("payments", "topicName: shared.payments"), NOW - 100);
    owner.metadata.namespace = Some("team-a".into());
    let claimant = stored(event_topic("payments-copy", "topicName: shared.payments\npartitions: 12"), NOW - 10);
    harness.seen(&owner);
    harness.seen(&claimant);
    let response = echo(&claimant);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/payments-copy/status"), response).await;
        let ready = find_condition(&status.body, "Ready");
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ResourceConflict")));
        assert!(ready["message"].as_str().is_some_and(|m| m.contains("team-a/payments")), "{ready}");
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&claimant).await.expect("reconciles"), Action::requeue(Settings::default().conflict_retry));
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.calls().is_empty(), "the losing claim must not touch Kafka");
}

/// A topic Kafka has, made by another tool or an earlier reconcile.
fn existing(name: &str, configs: &[(&str, &str)]) -> TopicState {
    TopicState {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        configs: configs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
    }
}

/// What the controller recorded once it created `name` for the EventTopic.
fn created(name: &str) -> EventTopicStatus {
    EventTopicStatus { topic_name: Some(name.into()), origin: Some(Origin::Created), ..EventTopicStatus::default() }
}

#[tokio::test]
async fn deletion_with_delete_policy_removes_topics_then_the_finalizer() {
    let (harness, mut api) = harness();
    harness.fakes.insert_topic(existing("orders", &[]));
    let mut topic = stored(event_topic("orders", "deletionPolicy: Delete"), NOW - 100);
    topic.status = Some(created("orders"));
    topic.metadata.finalizers = Some(vec![FINALIZER.into()]);
    topic.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW - 1).expect("timestamp")));
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let patch = api.expect(Method::PATCH, &format!("{TOPICS}/orders"), response).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&topic).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topic_names().is_empty());
}

#[tokio::test]
async fn deletion_waits_for_kafka_then_releases_the_finalizer_after_the_timeout() {
    let (harness, mut api) = harness();
    harness.fakes.set_unavailable(true);
    let mut topic = stored(event_topic("orders", "deletionPolicy: Delete"), NOW - 100);
    topic.status = Some(created("orders"));
    topic.metadata.finalizers = Some(vec![FINALIZER.into()]);
    topic.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW - 1).expect("timestamp")));
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        // Within the timeout: the failure is reported as an Event and retried.
        let failed = api.expect_event("default").await;
        assert_eq!((failed["type"].as_str(), failed["reason"].as_str()), (Some("Warning"), Some("ReconcileFailed")));
        // Past the timeout: a warning Event, then the finalizer goes.
        let abandoned = api.expect_event("default").await;
        assert_eq!(abandoned["reason"].as_str(), Some("KafkaTopicDeletionAbandoned"));
        assert!(abandoned["note"].as_str().is_some_and(|note| note.contains("\"orders\"") || note.contains("orders")), "{abandoned}");
        let patch = api.expect(Method::PATCH, &format!("{TOPICS}/orders"), response).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
    });
    assert!(harness.reconcile(&topic).await.is_err(), "Kafka down within the timeout is a retryable error");
    harness.clock.advance(Settings::default().deletion_timeout);
    assert_eq!(harness.reconcile(&topic).await.expect("released"), Action::await_change());
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn deleting_a_topic_that_never_had_a_finalizer_does_nothing() {
    let (harness, api) = harness();
    let mut topic = stored(event_topic("orders", ""), NOW - 100);
    topic.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).expect("timestamp")));
    assert_eq!(harness.reconcile(&topic).await.expect("reconciles"), Action::await_change());
    api.expect_no_more_requests().await;
    assert!(harness.fakes.calls().is_empty());
}

#[tokio::test]
async fn kafka_outage_is_reported_in_status_and_retried() {
    let (harness, mut api) = harness();
    harness.fakes.set_unavailable(true);
    let topic = stored(event_topic("orders", ""), NOW - 10);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        assert_eq!(find_condition(&status.body, "Ready")["reason"].as_str(), Some("KafkaUnavailable"));
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"].as_str(), Some("ReconcileFailed"));
    });
    let error = harness.reconcile(&topic).await.expect_err("retryable");
    assert_eq!(error.metric_label(), "kafka_unavailable");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn malformed_object_is_reported_without_failing() {
    let (harness, api) = harness();
    let manifest = json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "EventTopic",
        "metadata": {"name": "broken", "namespace": "default", "generation": 4},
        "spec": {"partitions": "many"},
    });
    assert_malformed_object_reported(&harness, api, manifest, &format!("{TOPICS}/broken/status"), "InvalidConfig").await;
}

#[tokio::test]
async fn an_existing_topic_without_adopt_is_neither_changed_nor_deleted() {
    let (harness, mut api) = harness();
    harness.fakes.insert_topic(existing("payments", &[("retention.ms", "604800000")]));
    let topic = stored(event_topic("payments", "retention: 1ms\ndeletionPolicy: Delete"), NOW - 10);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{TOPICS}/payments"), response.clone()).await;
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/payments/status"), response).await;
        let ready = find_condition(&status.body, "Ready");
        assert_eq!(condition(&status.body, "Ready"), ("False", "AdoptionRequired"));
        let message = ready["message"].as_str().expect("a message");
        assert!(message.starts_with("topic \"payments\" exists in Kafka and this EventTopic did not create it"), "{message}");
        assert!(message.contains("set spec.adopt: true"), "{message}");
        assert!(status.body["status"].get("origin").is_none(), "{}", status.body);
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("AdoptionRequired")));
        (api, status.body)
    });
    assert_eq!(harness.reconcile(&topic).await.expect("reconciles"), Action::requeue(Settings::default().resync_interval));
    let (mut api, status) = scenario.await.expect("scenario ran");
    assert!(harness.fakes.calls().is_empty(), "only looked at: {:?}", harness.fakes.calls());

    // Deleted: the topic is not its own, so it stays.
    let mut deleted = with_status(&topic, &status);
    deleted.metadata.finalizers = Some(vec![FINALIZER.into()]);
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).expect("timestamp")));
    let response = echo(&deleted);
    let scenario = tokio::spawn(async move {
        let patch = api.expect(Method::PATCH, &format!("{TOPICS}/payments"), response).await;
        assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&deleted).await.expect("finalized");
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topic("payments").and_then(|t| t.configs.get("retention.ms").cloned()).as_deref(), Some("604800000"));
}

#[tokio::test]
async fn adopt_takes_an_existing_topic_over_and_records_it() {
    let (harness, mut api) = harness();
    harness.fakes.insert_topic(existing("payments", &[("retention.ms", "604800000")]));
    let topic = stored(event_topic("payments", "adopt: true\nretention: 1d"), NOW - 10);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        // Nothing is created, so nothing is recorded first.
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/payments/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "Updated"));
        assert_eq!(status.body["status"]["origin"], "Adopted");
        api.expect_event("default").await;
    });
    harness.reconcile(&topic).await.expect("reconciles");
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topic("payments").and_then(|t| t.configs.get("retention.ms").cloned()).as_deref(), Some("86400000"));
}

/// The write after creating the topics fails (API server down, operator stopped): the record
/// written before creating them keeps the EventTopic from meeting them as strangers.
#[tokio::test]
async fn a_status_write_lost_after_creating_does_not_lock_the_topic_out() {
    let (harness, mut api) = harness();
    let topic = stored(event_topic("orders", ""), NOW - 10);
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let recorded = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        api.expect_answer(Method::PATCH, &format!("{TOPICS}/orders/status"), StatusCode::INTERNAL_SERVER_ERROR, json!({})).await;
        api.expect_event("default").await;
        (api, recorded.body)
    });
    assert!(harness.reconcile(&topic).await.is_err(), "the lost write is retried");
    let (mut api, recorded) = scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topic_names(), ["orders"]);

    let retried = with_status(&topic, &recorded);
    let response = echo(&retried);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "InSync"));
        assert_eq!(status.body["status"]["origin"], "Created");
    });
    harness.reconcile(&retried).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

/// Upgrade path: the previous version recorded no origin, but created the topics its status
/// shows synced; they stay this EventTopic's without adopt.
#[tokio::test]
async fn a_status_from_before_origins_keeps_its_topics_without_adopt() {
    let (harness, mut api) = harness();
    harness.fakes.insert_topic(existing("orders", &[]));
    harness.fakes.insert_topic(existing("orders.dlq", &[]));
    let mut topic = stored(event_topic("orders", "deadLetter: {}\ndeletionPolicy: Delete"), NOW - 100);
    topic.metadata.finalizers = Some(vec![FINALIZER.into()]);
    topic.status = Some(serde_json::from_value(json!({
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Created", "message": "created topic \"orders\"", "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "topicName": "orders", "partitions": 1, "replicationFactor": 1, "deadLetterTopic": "orders.dlq", "lastSyncTime": "2026-01-01T00:00:00Z",
    })).expect("a status of the previous version"));
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "Created"));
        assert_eq!((&status.body["status"]["origin"], &status.body["status"]["deadLetterOrigin"]), (&json!("Created"), &json!("Created")));
        api.expect_no_more_requests().await;
        status.body
    });
    harness.reconcile(&topic).await.expect("reconciles");
    let status = scenario.await.expect("scenario ran");
    assert!(harness.fakes.calls().is_empty(), "in sync: {:?}", harness.fakes.calls());

    // And deleting it deletes them, as the previous version would have.
    let (harness, mut api) = self::harness();
    harness.fakes.insert_topic(existing("orders", &[]));
    harness.fakes.insert_topic(existing("orders.dlq", &[]));
    let mut deleted = with_status(&topic, &status);
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).expect("timestamp")));
    let response = echo(&deleted);
    let scenario = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{TOPICS}/orders"), response).await;
    });
    harness.reconcile(&deleted).await.expect("finalized");
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topic_names().is_empty());
}

/// Objects from before the CRD refused them (or written around it) are refused at runtime.
#[tokio::test]
async fn internal_and_overlong_names_are_invalid_config_naming_the_field() {
    let cases = [
        (NamingPolicy::default(), "topicName: __consumer_offsets", "spec.topicName \"__consumer_offsets\" begins with '_'"),
        (NamingPolicy::default(), "deadLetter: { topicName: _schemas }", "spec.deadLetter.topicName \"_schemas\" begins with '_'"),
        (
            NamingPolicy::namespace_prefixed([]),
            &*format!("topicName: {}", "o".repeat(245)),
            "spec.topicName: the Kafka topic name \"default.ooo",
        ),
    ];
    for (naming, spec, expected) in cases {
        let (harness, mut api) = harness_naming(naming);
        let topic = stored(event_topic("orders", spec), NOW - 10);
        let response = echo(&topic);
        let expected = expected.to_owned();
        let scenario = tokio::spawn(async move {
            let status = api.expect(Method::PATCH, &format!("{TOPICS}/orders/status"), response).await;
            assert_eq!(condition(&status.body, "Ready"), ("False", "InvalidConfig"));
            let message = find_condition(&status.body, "Ready")["message"].as_str().expect("a message").to_owned();
            assert!(message.starts_with(&expected), "{message}");
            let event = api.expect_event("default").await;
            assert_eq!(event["reason"].as_str(), Some("InvalidConfig"));
        });
        assert_eq!(harness.reconcile(&topic).await.expect("reconciles"), Action::await_change());
        scenario.await.expect("scenario ran");
        assert!(harness.fakes.calls().is_empty(), "{spec}: Kafka is not touched");
    }
}

#[tokio::test]
async fn namespace_prefixed_naming_names_the_kafka_topics_in_status() {
    let (harness, mut api) = harness_naming(NamingPolicy::namespace_prefixed(["platform".to_owned()]));
    let mut topic = stored(event_topic("orders", "deadLetter: {}"), NOW - 10);
    topic.metadata.namespace = Some("shop".into());
    let response = echo(&topic);
    let scenario = tokio::spawn(async move {
        let path = "/apis/tributary.dev/v1alpha1/namespaces/shop/eventtopics/orders/status";
        api.expect(Method::PATCH, path, response.clone()).await;
        let status = api.expect(Method::PATCH, path, response).await;
        assert_eq!(status.body["status"]["topicName"], "shop.orders");
        assert_eq!(status.body["status"]["deadLetterTopic"], "shop.orders.dlq");
        api.expect_event("shop").await;
    });
    harness.reconcile(&topic).await.expect("reconciles");
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topic_names(), ["shop.orders", "shop.orders.dlq"]);
}
