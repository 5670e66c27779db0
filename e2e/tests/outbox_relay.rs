//! OutboxRelay end to end: the apiserver validates with the CRD; a sidecar relay is added to the
//! application's Deployment by server-side apply under the relay's own field manager, with the
//! database URL by Secret reference only, and removed again, alone, when the OutboxRelay goes.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use tributary_api::outbox_relay::SIDECAR_OPT_IN_ANNOTATION;
use tributary_api::{EventTopic, OutboxRelay};
use tributary_e2e::{cluster, condition, eventually, manifest, namespace, unique_name, wait_event_topic};

const RELAY_CONTAINER: &str = "tributary-relay";

/// The application's Deployment, opting in to the sidecar of the OutboxRelay `relay`.
fn application(name: &str, relay: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": namespace(), "annotations": { SIDECAR_OPT_IN_ANNOTATION: relay } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }] },
            },
        },
    }))
    .expect("valid Deployment")
}

fn container_names(deployment: &Deployment) -> Vec<String> {
    deployment.spec.iter().flat_map(|spec| spec.template.spec.iter()).flat_map(|pod| &pod.containers).map(|c| c.name.clone()).collect()
}

#[tokio::test]
async fn sidecar_relay_is_added_by_its_own_field_manager_and_removed_alone() {
    let Some(client) = cluster().await else { return };
    let ns = namespace();
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns);
    let relays: Api<OutboxRelay> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let topic = unique_name("e2e-relay-orders");
    topics.create(&PostParams::default(), &manifest("EventTopic", &topic, json!({}))).await.expect("EventTopic created");
    wait_event_topic(&topics, &topic, "True").await;
    let app = unique_name("e2e-shop");
    let name = unique_name("e2e-shop-outbox");
    deployments.create(&PostParams::default(), &application(&app, &name)).await.expect("application created");
    let secret_name = unique_name("e2e-shop-db");
    let database_url = "postgres://shop:secret@shop-db:5432/shop";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": secret_name, "namespace": ns },
        "stringData": { "url": database_url },
    }))
    .expect("valid Secret");
    secrets.create(&PostParams::default(), &secret).await.expect("Secret created");

    let relay: OutboxRelay = manifest(
        "OutboxRelay",
        &name,
        json!({
            "database": { "urlSecretRef": { "name": secret_name } },
            "routing": { "routes": [{ "aggregateType": "Order", "eventTopic": topic }] },
            "placement": { "sidecar": { "targetRef": { "name": app } } },
        }),
    );
    relays.create(&PostParams::default(), &relay).await.expect("OutboxRelay created");

    let with_relay = eventually(&format!("{RELAY_CONTAINER} in Deployment {app}"), Duration::from_secs(60), || async {
        let deployment = deployments.get(&app).await.map_err(|error| error.to_string())?;
        let names = container_names(&deployment);
        if names.iter().any(|name| name == RELAY_CONTAINER) {
            Ok(deployment)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let manager = format!("tributary-operator/outbox-relay/{name}");
    let managers: Vec<String> = with_relay.metadata.managed_fields.iter().flatten().filter_map(|entry| entry.manager.clone()).collect();
    assert!(managers.contains(&manager), "field managers {managers:?}");
    let pod = with_relay.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).expect("pod template");
    let sidecar = pod.containers.iter().find(|container| container.name == RELAY_CONTAINER).expect("relay container");
    let url = sidecar.env.iter().flatten().find(|var| var.name == "TRIBUTARY_DATABASE_URL").expect("database URL variable");
    assert_eq!(url.value, None, "the URL is never copied into the Deployment");
    let reference = url.value_from.as_ref().and_then(|source| source.secret_key_ref.as_ref()).expect("secretKeyRef");
    assert_eq!((reference.name.as_str(), reference.key.as_str()), (secret_name.as_str(), "url"));
    assert!(!serde_json::to_string(&with_relay).expect("serializes").contains(database_url));

    eventually(&format!("OutboxRelay {name} TargetFound"), Duration::from_secs(60), || async {
        let status = relays.get(&name).await.map_err(|error| error.to_string())?.status.unwrap_or_default();
        match condition(&status.conditions, "TargetFound") {
            Some(("True", _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    relays.delete(&name, &DeleteParams::default()).await.expect("OutboxRelay deleted");
    let names = eventually(&format!("{RELAY_CONTAINER} removed from Deployment {app}"), Duration::from_secs(60), || async {
        let names = container_names(&deployments.get(&app).await.map_err(|error| error.to_string())?);
        if names.iter().any(|name| name == RELAY_CONTAINER) {
            Err(format!("{names:?}"))
        } else {
            Ok(names)
        }
    })
    .await;
    assert_eq!(names, vec!["app".to_owned()], "only the relay's container goes");
    eventually(&format!("OutboxRelay {name} finalized"), Duration::from_secs(60), || async {
        match relays.get_opt(&name).await.map_err(|error| error.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    for cleanup in [
        deployments.delete(&app, &DeleteParams::default()).await.map(drop),
        secrets.delete(&secret_name, &DeleteParams::default()).await.map(drop),
    ] {
        cleanup.expect("cleanup");
    }
    topics.delete(&topic, &DeleteParams::default()).await.expect("EventTopic deleted");
}

#[tokio::test]
async fn apiserver_rejects_a_relay_with_both_placements() {
    let Some(client) = cluster().await else { return };
    let relays: Api<OutboxRelay> = Api::namespaced(client, &namespace());
    let relay: OutboxRelay = manifest(
        "OutboxRelay",
        &unique_name("e2e-invalid-relay"),
        json!({
            "database": { "urlSecretRef": { "name": "db" } },
            "routing": { "topicPrefix": "shop." },
            "placement": { "sidecar": { "targetRef": { "name": "app" } }, "standalone": {} },
        }),
    );
    let error = relays.create(&PostParams::default(), &relay).await.expect_err("rejected");
    assert!(error.to_string().contains("exactly one of sidecar and standalone"), "{error}");
}
