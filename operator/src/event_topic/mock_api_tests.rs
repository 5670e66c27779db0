//! Controller tests against a mock API server and the in-memory Kafka: each scenario scripts the
//! exact requests one reconcile must make.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::json;

use super::controller::{Context, Settings, FINALIZER};
use super::test_support::event_topic;
use crate::fixtures::{assert_malformed_object_reported, echo, find_condition, stored, ApiServerVerifier, Harness, NOW};
use crate::kafka::{FakeTopicAdmin, TopicState};

const TOPICS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics";

fn harness() -> (Harness<Context, Arc<FakeTopicAdmin>>, ApiServerVerifier) {
    Harness::new(|shared, store| {
        let kafka = Arc::new(FakeTopicAdmin::new());
        (Context::new(shared, kafka.clone(), store, Settings::default()), kafka)
    })
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
                    "partitions": 3,
                    "replicationFactor": 1,
                    "deadLetterTopic": "orders.dlq",
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

#[tokio::test]
async fn deletion_with_delete_policy_removes_topics_then_the_finalizer() {
    let (harness, mut api) = harness();
    harness.fakes.insert_topic(TopicState { name: "orders".into(), partitions: 1, replication_factor: 1, configs: Default::default() });
    let mut topic = stored(event_topic("orders", "deletionPolicy: Delete"), NOW - 100);
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
