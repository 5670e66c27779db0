//! Subscription end to end: the apiserver validates with the CRD; the operator waits for the
//! EventTopic, then runs the consumer Deployment (owned by the Subscription) with the built-in
//! scaler and reports lag and readiness; a Subscription of a missing EventTopic says why.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use tributary_api::subscription::ScalingEngine;
use tributary_api::{EventTopic, Subscription, SubscriptionStatus};
use tributary_e2e::{cluster, condition, eventually, manifest, namespace, unique_name, wait_event_topic};

/// A container that starts and stays up: the e2e tests check what the operator builds, not a
/// consumer's own work.
const IDLE_IMAGE: &str = "registry.k8s.io/pause:3.10";

fn subscription(name: &str, topic: &str) -> Subscription {
    manifest(
        "Subscription",
        name,
        json!({
            "topics": [{ "name": topic }],
            "template": { "image": IDLE_IMAGE },
            "startFrom": "earliest",
            "scaling": { "engine": "Builtin", "minReplicas": 1, "maxReplicas": 2, "cooldown": "30s" },
        }),
    )
}

async fn status_of(api: &Api<Subscription>, name: &str) -> Result<SubscriptionStatus, String> {
    api.get(name).await.map_err(|error| error.to_string())?.status.ok_or_else(|| "no status yet".to_owned())
}

#[tokio::test]
async fn subscription_runs_its_consumers_and_reports_lag() {
    let Some(client) = cluster().await else { return };
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &namespace());
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), &namespace());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace());
    let topic = unique_name("e2e-sub-orders");
    topics.create(&PostParams::default(), &manifest("EventTopic", &topic, json!({ "partitions": 2 }))).await.expect("EventTopic created");
    wait_event_topic(&topics, &topic, "True").await;
    let name = unique_name("e2e-billing");
    let created = subscriptions.create(&PostParams::default(), &subscription(&name, &topic)).await.expect("Subscription created");

    let deployment = eventually(&format!("Deployment {name}"), Duration::from_secs(60), || async {
        deployments.get_opt(&name).await.map_err(|error| error.to_string())?.ok_or_else(|| "not there".to_owned())
    })
    .await;
    let owner = deployment.metadata.owner_references.unwrap_or_default();
    assert!(owner.iter().any(|owner| owner.kind == "Subscription" && Some(&owner.uid) == created.metadata.uid.as_ref()), "{owner:?}");
    let pod = deployment.spec.and_then(|spec| spec.template.spec).expect("pod template");
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let value = |name: &str| env.iter().find(|var| var.name == name).and_then(|var| var.value.clone());
    assert_eq!(value("TRIBUTARY_TOPICS").as_deref(), Some(topic.as_str()));
    assert_eq!(value("TRIBUTARY_GROUP"), Some(format!("{}.{name}", namespace())));

    let status = eventually(&format!("Subscription {name} Ready with lag"), Duration::from_secs(120), || async {
        let status = status_of(&subscriptions, &name).await?;
        match (condition(&status.conditions, "Ready"), status.total_lag) {
            (Some(("True", _)), Some(_)) => Ok(status),
            other => Err(format!("{other:?} {:?}", status.conditions)),
        }
    })
    .await;
    assert_eq!(condition(&status.conditions, "TopicsReady").map(|(status, _)| status), Some("True"));
    assert_eq!(status.engine, Some(ScalingEngine::Builtin));
    assert_eq!(status.total_lag, Some(0), "nothing was produced");
    assert_eq!(status.ready_replicas, Some(1));

    subscriptions.delete(&name, &DeleteParams::default()).await.expect("Subscription deleted");
    eventually(&format!("Deployment {name} garbage-collected"), Duration::from_secs(60), || async {
        match deployments.get_opt(&name).await.map_err(|error| error.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    topics.delete(&topic, &DeleteParams::default()).await.expect("EventTopic deleted");
}

#[tokio::test]
async fn subscription_of_a_missing_topic_waits_and_says_why() {
    let Some(client) = cluster().await else { return };
    let subscriptions: Api<Subscription> = Api::namespaced(client, &namespace());
    let name = unique_name("e2e-waiting");
    subscriptions.create(&PostParams::default(), &subscription(&name, "e2e-no-such-topic")).await.expect("created");
    eventually(&format!("Subscription {name} TopicsReady=False"), Duration::from_secs(60), || async {
        let status = status_of(&subscriptions, &name).await?;
        match condition(&status.conditions, "TopicsReady") {
            Some(("False", "TopicNotFound")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    subscriptions.delete(&name, &DeleteParams::default()).await.expect("deleted");
}

#[tokio::test]
async fn apiserver_rejects_invalid_subscriptions_naming_the_field() {
    let Some(client) = cluster().await else { return };
    let subscriptions: Api<Subscription> = Api::namespaced(client, &namespace());
    let mut invalid = subscription(&unique_name("e2e-invalid"), "orders");
    invalid.spec.delivery.retry.max_attempts = 0;
    let error = subscriptions.create(&PostParams::default(), &invalid).await.expect_err("rejected");
    assert!(error.to_string().contains("maxAttempts"), "{error}");
}
