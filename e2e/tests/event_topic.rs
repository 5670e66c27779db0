//! EventTopic end to end: the apiserver validates with the CRD, the operator creates the topic
//! and reports Ready, pausing and deletion behave.

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use tributary_api::EventTopic;
use tributary_e2e::{cluster, namespace, unique_name, wait_event_topic};

fn manifest(name: &str, spec: serde_json::Value) -> EventTopic {
    tributary_e2e::manifest("EventTopic", name, spec)
}

#[tokio::test]
async fn topic_becomes_ready_and_is_deleted() {
    let Some(client) = cluster().await else { return };
    let api: Api<EventTopic> = Api::namespaced(client, &namespace());
    let name = unique_name("e2e-orders");
    api.create(
        &PostParams::default(),
        &manifest(&name, json!({"partitions": 1, "retention": "1h", "deadLetter": {}, "deletionPolicy": "Delete"})),
    )
    .await
    .expect("created");
    let topic = wait_event_topic(&api, &name, "True").await;
    let status = topic.status.expect("status");
    assert_eq!(status.topic_name.as_deref(), Some(name.as_str()));
    assert_eq!(status.dead_letter_topic, Some(format!("{name}.dlq")));
    assert!(topic.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "tributary.dev/delete-kafka-topics"));

    api.delete(&name, &DeleteParams::default()).await.expect("deleted");
    for _ in 0..60 {
        if api.get_opt(&name).await.expect("get").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("EventTopic {name} was not finalized within 30s");
}

#[tokio::test]
async fn apiserver_rejects_invalid_specs_naming_the_field() {
    let Some(client) = cluster().await else { return };
    let api: Api<EventTopic> = Api::namespaced(client, &namespace());
    let name = unique_name("e2e-invalid");
    let error = api.create(&PostParams::default(), &manifest(&name, json!({"partitions": 0}))).await.expect_err("rejected");
    assert!(error.to_string().contains("spec.partitions"), "{error}");

    api.create(&PostParams::default(), &manifest(&name, json!({"partitions": 2}))).await.expect("created");
    let shrink =
        api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"partitions": 1}}))).await.expect_err("shrink rejected");
    assert!(shrink.to_string().contains("cannot decrease"), "{shrink}");
    api.delete(&name, &DeleteParams::default()).await.expect("deleted");
}

#[tokio::test]
async fn paused_topic_says_so() {
    let Some(client) = cluster().await else { return };
    let api: Api<EventTopic> = Api::namespaced(client, &namespace());
    let name = unique_name("e2e-paused");
    let mut topic = manifest(&name, json!({}));
    topic.metadata.annotations = Some([("tributary.dev/paused".to_owned(), "true".to_owned())].into());
    api.create(&PostParams::default(), &topic).await.expect("created");
    for _ in 0..60 {
        let current = api.get(&name).await.expect("get");
        if current.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "ReconciliationPaused" && c.status == "True") {
            api.delete(&name, &DeleteParams::default()).await.expect("deleted");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("EventTopic {name} never reported ReconciliationPaused");
}
