//! Controller tests against a mock API server and a fake relay `/status`: each scenario scripts
//! the exact requests one reconcile must make, in order.

use std::sync::Arc;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use tributary_api::outbox_relay::RelayReport;
use tributary_api::OutboxRelay;

use super::controller::{relays_routing_to, relays_targeting, Context, Settings, FINALIZER};
use super::probe::fake::FakeRelayStatus;
use super::resolve::SidecarOptIn;
use super::test_support::{outbox_relay, relay_pod, settings};
use crate::fixtures::{assert_malformed_object_reported, condition, echo, stored, ApiServerVerifier, Harness, RecordedRequest, NOW};
use crate::workload::WorkloadSettings;

const RELAYS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/outboxrelays";
const TOPICS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const PODS: &str = "/api/v1/namespaces/default/pods";
const NOW_TEXT: &str = "2027-01-15T08:00:00Z";
const DATABASE_URL: &str = "postgres://shop:s3cret-password@db.shop:5432/shop";
const SIDECAR_MANAGER: &str = "fieldManager=tributary-operator%2Foutbox-relay%2Fshop-outbox";

const SIDECAR: &str = r#"
database: { urlSecretRef: { name: shop-db } }
routing: { routes: [{ aggregateType: Order, eventTopic: orders }] }
placement: { sidecar: { targetRef: { name: shop-api } } }
"#;

fn harness() -> (Harness<Context, Arc<FakeRelayStatus>>, ApiServerVerifier) {
    harness_with(settings())
}

fn harness_with(workload: WorkloadSettings) -> (Harness<Context, Arc<FakeRelayStatus>>, ApiServerVerifier) {
    Harness::new(|shared, store| {
        let relay_status = Arc::new(FakeRelayStatus::default());
        (Context::new(shared, relay_status.clone(), store, Settings::new(workload)), relay_status)
    })
}

fn secret(key: &str) -> Value {
    named_secret("shop-db", key)
}

fn named_secret(name: &str, key: &str) -> Value {
    let mut secret = Secret { data: Some([(key.to_owned(), ByteString(DATABASE_URL.into()))].into()), ..Secret::default() };
    secret.metadata.name = Some(name.into());
    serde_json::to_value(secret).expect("serializes")
}

fn event_topic(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"topicName": format!("shop.{name}")},
        "status": {"topicName": format!("shop.{name}"), "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "Created", "message": "", "lastTransitionTime": NOW_TEXT}]},
    })
}

/// The application's Deployment; `managers` are the field managers that own fields in it.
fn app_deployment(resource_version: &str, managers: &[&str]) -> Value {
    let managed: Vec<Value> = managers
        .iter()
        .map(|manager| json!({"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "shop-api", "namespace": "default", "resourceVersion": resource_version, "managedFields": managed,
            "annotations": {"tributary.dev/outbox-relay": "shop-outbox"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "shop-api"}},
            "template": {"metadata": {"labels": {"app": "shop-api"}}, "spec": {"containers": [{"name": "app", "image": "shop:1"}]}},
        },
    })
}

fn pods(items: &[k8s_openapi::api::core::v1::Pod]) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// The relay container the operator must add for the `SIDECAR` spec, spelled out.
fn expected_sidecar_container() -> Value {
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    json!({
        "name": "tributary-relay",
        "image": "relay:test",
        "args": ["outbox"],
        "env": [
            {"name": "TRIBUTARY_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "url"}}},
            env("TRIBUTARY_OUTBOX_TABLE", "outbox"),
            env("TRIBUTARY_COLUMN_ID", "id"),
            env("TRIBUTARY_COLUMN_AGGREGATE_TYPE", "aggregatetype"),
            env("TRIBUTARY_COLUMN_AGGREGATE_ID", "aggregateid"),
            env("TRIBUTARY_COLUMN_TYPE", "type"),
            env("TRIBUTARY_COLUMN_PAYLOAD", "payload"),
            env("TRIBUTARY_PAYLOAD_FORMAT", "json"),
            env("TRIBUTARY_BOOTSTRAP_SERVERS", "kafka:9092"),
            env("TRIBUTARY_CLOUDEVENTS_SOURCE", "/tributary/default/shop-outbox"),
            env("TRIBUTARY_BATCH_SIZE", "500"),
            env("TRIBUTARY_POLL_INTERVAL", "1s"),
            env("TRIBUTARY_CLEANUP", "delete"),
            env("TRIBUTARY_CLEANUP_RETENTION", "7d"),
            env("TRIBUTARY_FAILURE_POLICY", "block"),
            env("TRIBUTARY_PARTITIONER", "murmur2_random"),
            env("TRIBUTARY_LISTEN_ADDRESS", "0.0.0.0:8081"),
            env("TRIBUTARY_WAIT_FOR_SCHEMA", "true"),
            env("TRIBUTARY_ROUTES", "Order=shop.orders"),
        ],
        "ports": [{"name": "outbox-relay", "containerPort": 8081, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "outbox-relay"}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// Neither the database URL nor its base64 form may appear in anything the operator sends.
fn assert_no_database_url(requests: &[RecordedRequest]) {
    let encoded = serde_json::to_value(ByteString(DATABASE_URL.into())).expect("serializes");
    for request in requests {
        let body = request.body.to_string();
        assert!(!body.contains(DATABASE_URL) && !body.contains(encoded.as_str().unwrap_or("?")), "the URL leaked into {request:#?}");
    }
}

#[tokio::test]
async fn sidecar_is_applied_under_its_own_field_manager_with_only_the_container() {
    let (harness, mut api) = harness();
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let response = echo(&relay);
    harness.fakes.answer(
        "10.1.0.7:8081".parse().expect("address"),
        RelayReport {
            pending_rows: Some(42),
            last_published_time: Some(Time(Timestamp::from_second(NOW - 3).expect("timestamp"))),
            schema_problem: None,
        },
    );
    let scenario = tokio::spawn(async move {
        let mut sent = Vec::new();
        let finalizer = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
        assert!(finalizer.uri.contains("fieldManager=tributary-operator") && !finalizer.uri.contains("%2F"), "{}", finalizer.uri);
        assert_eq!(finalizer.body["metadata"]["finalizers"], json!([FINALIZER]));
        sent.push(finalizer);
        sent.push(api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await);
        sent.push(api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await);
        sent.push(api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &["kubectl"])).await);
        // Where the relay goes is recorded before it goes there.
        let recorded = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response.clone()).await;
        assert_eq!(recorded.body["status"], json!({"placement": "Sidecar", "target": "shop-api"}));
        sent.push(recorded);

        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &["kubectl", "x"])).await;
        assert!(apply.uri.contains(SIDECAR_MANAGER) && apply.uri.contains("force=true"), "{}", apply.uri);
        assert_eq!(
            apply.body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "shop-api", "namespace": "default"},
                "spec": {"template": {"spec": {"containers": [expected_sidecar_container()]}}},
            })
        );
        sent.push(apply);
        let applied = api.expect_event("default").await;
        assert_eq!((applied["type"].as_str(), applied["reason"].as_str()), (Some("Normal"), Some("RelayApplied")));

        let listed = api
            .expect(
                Method::GET,
                PODS,
                pods(&[relay_pod("shop-api-1", "10.1.0.9", false, Some(8081)), relay_pod("shop-api-0", "10.1.0.7", true, Some(8081))]),
            )
            .await;
        assert!(listed.uri.contains("labelSelector=app%3Dshop-api"), "{}", listed.uri);
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(
            status.body["status"],
            json!({
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Relaying", "message": "1 pod(s) of Deployment shop-api run a ready tributary-relay container", "observedGeneration": 1, "lastTransitionTime": NOW_TEXT},
                    {"type": "TargetFound", "status": "True", "reason": "TargetFound", "message": "Deployment shop-api exists", "observedGeneration": 1, "lastTransitionTime": NOW_TEXT},
                    {"type": "TopicsReady", "status": "True", "reason": "TopicsReady", "message": "Order → orders (\"shop.orders\")", "observedGeneration": 1, "lastTransitionTime": NOW_TEXT},
                ],
                "placement": "Sidecar",
                "target": "shop-api",
                "pendingRows": 42,
                "lastPublishedTime": "2027-01-15T07:59:57Z",
            })
        );
        sent.push(status);
        api.expect_no_more_requests().await;
        sent
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::requeue(Settings::new(settings()).status_interval));
    let sent = scenario.await.expect("scenario ran");
    assert_no_database_url(&sent);
    assert_eq!(harness.fakes.asked(), vec!["10.1.0.7:8081".parse().expect("address")], "only the ready relay is asked");
}

#[tokio::test]
async fn with_the_workload_kafka_secret_the_sidecar_apply_carries_its_volume() {
    let (harness, mut api) = harness_with(WorkloadSettings { kafka_properties_secret: Some("kafka-auth".into()), ..settings() });
    let relay = applied_sidecar(SIDECAR);
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{SECRETS}/kafka-auth"), named_secret("kafka-auth", "kafka.properties")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &["kubectl"])).await;
        let owners = ["kubectl", "tributary-operator/outbox-relay/shop-outbox"];
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &owners)).await;
        assert!(apply.uri.contains(SIDECAR_MANAGER) && apply.uri.contains("force=true"), "{}", apply.uri);
        // Volumes are a list-map keyed by name too: the relay's manager owns exactly its entry,
        // and the removal's empty apply (see the deletion tests) takes it out with the container.
        let mut container = expected_sidecar_container();
        container["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "TRIBUTARY_KAFKA_PROPERTIES_FILE", "value": "/etc/tributary/kafka/kafka.properties"}));
        container["volumeMounts"] = json!([{"name": "tributary-relay-kafka", "mountPath": "/etc/tributary/kafka", "readOnly": true}]);
        let volume = json!({"name": "tributary-relay-kafka", "secret": {"secretName": "kafka-auth"}});
        assert_eq!(apply.body["spec"], json!({"template": {"spec": {"containers": [container], "volumes": [volume]}}}));
        assert_eq!(apply.body["metadata"], json!({"name": "shop-api", "namespace": "default"}));
        let applied = api.expect_event("default").await;
        assert_eq!(applied["reason"].as_str(), Some("RelayApplied"));
        api.expect(Method::GET, PODS, pods(&[])).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "RelayNotRunning"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::requeue(Settings::new(settings()).status_interval));
    scenario.await.expect("scenario ran");
}

/// `SIDECAR` with the database TLS files of Secret `shop-db-tls`, a client certificate included.
fn sidecar_with_tls() -> String {
    SIDECAR.replace(
        "database: { urlSecretRef: { name: shop-db } }",
        "database: { urlSecretRef: { name: shop-db }, tls: { secretRef: { name: shop-db-tls }, certKey: tls.crt, keyKey: tls.key } }",
    )
}

/// A Secret `name` holding `keys` (with PEM-looking values).
fn tls_secret(name: &str, keys: &[&str]) -> Value {
    let data = keys.iter().map(|key| ((*key).to_owned(), ByteString(b"-----BEGIN CERTIFICATE-----".to_vec()))).collect();
    let mut secret = Secret { data: Some(data), ..Secret::default() };
    secret.metadata.name = Some(name.into());
    serde_json::to_value(secret).expect("serializes")
}

#[tokio::test]
async fn with_database_tls_the_sidecar_apply_mounts_its_secret_read_only() {
    let (harness, mut api) = harness();
    let relay = applied_sidecar(&sidecar_with_tls());
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{SECRETS}/shop-db-tls"), tls_secret("shop-db-tls", &["ca.crt", "tls.crt", "tls.key"])).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &["kubectl"])).await;
        let owners = ["kubectl", "tributary-operator/outbox-relay/shop-outbox"];
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &owners)).await;
        let mut container = expected_sidecar_container();
        let env = container["env"].as_array_mut().expect("env");
        for (name, file) in [
            ("TRIBUTARY_DATABASE_CA_FILE", "ca.crt"),
            ("TRIBUTARY_DATABASE_CERT_FILE", "tls.crt"),
            ("TRIBUTARY_DATABASE_KEY_FILE", "tls.key"),
        ] {
            env.push(json!({"name": name, "value": format!("/etc/tributary/database-tls/{file}")}));
        }
        container["volumeMounts"] =
            json!([{"name": "tributary-relay-database-tls", "mountPath": "/etc/tributary/database-tls", "readOnly": true}]);
        let items =
            json!([{"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]);
        let volume = json!({"name": "tributary-relay-database-tls", "secret": {"secretName": "shop-db-tls", "items": items}});
        assert_eq!(apply.body["spec"], json!({"template": {"spec": {"containers": [container], "volumes": [volume]}}}));
        api.expect_event("default").await;
        api.expect(Method::GET, PODS, pods(&[])).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "RelayNotRunning"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::requeue(Settings::new(settings()).status_interval));
    scenario.await.expect("scenario ran");
}

/// A pod whose Secret volume is missing (or lacks an item) does not start: nothing is applied to
/// the application's Deployment, and the status names the Secret, the key and the field.
#[tokio::test]
async fn a_missing_database_tls_secret_or_key_is_reported_and_nothing_is_applied() {
    for (tls_secret, ready_reason, message) in [
        (None, "SecretNotFound", "Secret shop-db-tls (spec.database.tls.secretRef) does not exist"),
        (
            Some(tls_secret("shop-db-tls", &["ca.crt", "tls.crt"])),
            "SecretKeyNotFound",
            "Secret shop-db-tls has no key \"tls.key\" (spec.database.tls.keyKey)",
        ),
    ] {
        let (harness, mut api) = harness();
        let relay = applied_sidecar(&sidecar_with_tls());
        let response = echo(&relay);
        let scenario = tokio::spawn(async move {
            api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
            match tls_secret {
                Some(found) => api.expect(Method::GET, &format!("{SECRETS}/shop-db-tls"), found).await,
                None => api.expect_not_found(Method::GET, &format!("{SECRETS}/shop-db-tls")).await,
            };
            api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
            api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &["kubectl"])).await;
            api.expect(Method::GET, PODS, pods(&[])).await;
            let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
            let ready = status.body["status"]["conditions"].as_array().and_then(|all| all.iter().find(|c| c["type"] == "Ready")).cloned();
            let ready = ready.expect("a Ready condition");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some(ready_reason)));
            assert_eq!(ready["message"].as_str(), Some(message));
            let warning = api.expect_event("default").await;
            assert_eq!(warning["reason"].as_str(), Some(ready_reason));
            api.expect_no_more_requests().await;
        });
        harness.reconcile(&relay).await.expect("reconciles");
        scenario.await.expect("scenario ran");
    }
}

#[tokio::test]
async fn a_reconcile_soon_after_its_own_status_patch_changes_nothing() {
    let (harness, mut api) = harness();
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let relay_address = "10.1.0.7:8081".parse().expect("address");
    harness.fakes.answer(relay_address, RelayReport { pending_rows: Some(3), ..RelayReport::default() });
    let response = echo(&relay);
    let ready_pod = pods(&[relay_pod("shop-api-0", "10.1.0.7", true, Some(8081))]);
    let ready_pod_again = ready_pod.clone();
    let first = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &[])).await;
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response.clone()).await;
        api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &[])).await;
        api.expect_event("default").await;
        api.expect(Method::GET, PODS, ready_pod).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        (api, status.body)
    });
    harness.reconcile(&relay).await.expect("first reconcile");
    let (mut api, status) = first.await.expect("scenario ran");

    // The status patch comes back through the watch; the relay now has more to report.
    harness.fakes.answer(relay_address, RelayReport { pending_rows: Some(900), ..RelayReport::default() });
    let mut with_status = relay.clone();
    with_status.metadata.finalizers = Some(vec![FINALIZER.into()]);
    with_status.status = Some(serde_json::from_value(status["status"].clone()).expect("status parses"));
    let second = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &[])).await;
        // The apply changes nothing (same resourceVersion): no Event.
        api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &[])).await;
        api.expect(Method::GET, PODS, ready_pod_again).await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&with_status).await.expect("second reconcile");
    second.await.expect("scenario ran");
    assert_eq!(harness.fakes.asked(), vec![relay_address], "asked once: the figures are not due again yet");
}

#[tokio::test]
async fn a_target_that_appears_later_gets_the_relay() {
    let (harness, mut api) = harness();
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let response = echo(&relay);
    let first = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect_not_found(Method::GET, &format!("{DEPLOYMENTS}/shop-api")).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "TargetFound"), ("False", "TargetNotFound"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "TargetNotFound"));
        assert_eq!(
            (status.body["status"]["placement"].as_str(), status.body["status"]["target"].as_str()),
            (Some("Sidecar"), Some("shop-api"))
        );
        let warning = api.expect_event("default").await;
        assert_eq!((warning["type"].as_str(), warning["reason"].as_str()), (Some("Warning"), Some("TargetNotFound")));
        (api, status.body)
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::requeue(Settings::new(settings()).status_interval));
    let (mut api, status) = first.await.expect("scenario ran");

    // The watch on Deployments maps the new Deployment to this relay.
    let mut with_status = relay.clone();
    with_status.metadata.finalizers = Some(vec![FINALIZER.into()]);
    with_status.status = Some(serde_json::from_value(status["status"].clone()).expect("status parses"));
    let mut harness = harness;
    harness.seen(&with_status);
    let triggered = relays_targeting(&harness.context.store.state(), Some("default"), "shop-api");
    assert_eq!(triggered.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["shop-outbox"]);
    assert!(relays_targeting(&harness.context.store.state(), Some("other"), "shop-api").is_empty());

    let response = echo(&with_status);
    let second = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("7", &["kubectl"])).await;
        // The target is already recorded: no second write before the apply.
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("8", &["kubectl"])).await;
        assert!(apply.uri.contains(SIDECAR_MANAGER), "{}", apply.uri);
        assert_eq!(apply.body["spec"]["template"]["spec"]["containers"], json!([expected_sidecar_container()]));
        api.expect_event("default").await;
        api.expect(Method::GET, PODS, pods(&[])).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "TargetFound"), ("True", "TargetFound"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "RelayNotRunning"));
        // Pods that have yet to start are no reason for a warning.
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&with_status).await.expect("reconciles");
    second.await.expect("scenario ran");
}

/// A relay that ran in `shop-api`, with its finalizer and a status recording the target.
fn applied_sidecar(spec: &str) -> OutboxRelay {
    let mut relay = stored(outbox_relay("shop-outbox", spec), NOW - 100);
    relay.metadata.finalizers = Some(vec![FINALIZER.into()]);
    relay.status = Some(serde_json::from_value(json!({"placement": "Sidecar", "target": "shop-api"})).expect("status"));
    relay
}

/// That relay, being deleted.
fn deleted_sidecar() -> OutboxRelay {
    let mut relay = applied_sidecar(SIDECAR);
    relay.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW - 1).expect("timestamp")));
    relay
}

/// Expects the finalizer to be released by server-side apply, and nothing after.
async fn expect_finalizer_released(mut api: ApiServerVerifier, response: Value) {
    let finalizer = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response).await;
    assert!(finalizer.uri.contains("fieldManager=tributary-operator") && finalizer.uri.contains("force=true"), "{}", finalizer.uri);
    assert_eq!(finalizer.body["metadata"]["finalizers"], json!([]));
    api.expect_no_more_requests().await;
}

#[tokio::test]
async fn deletion_removes_exactly_the_relay_container_then_the_finalizer() {
    let (harness, mut api) = harness();
    let relay = deleted_sidecar();
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(
            Method::GET,
            &format!("{DEPLOYMENTS}/shop-api"),
            app_deployment("5", &["argocd-controller", "tributary-operator/outbox-relay/shop-outbox"]),
        )
        .await;
        let removal = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("6", &["argocd-controller"])).await;
        assert!(removal.uri.contains(SIDECAR_MANAGER) && removal.uri.contains("force=true"), "{}", removal.uri);
        assert_eq!(
            removal.body,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop-api", "namespace": "default"}})
        );
        let removed = api.expect_event("default").await;
        assert_eq!(removed["reason"].as_str(), Some("SidecarRemoved"));
        expect_finalizer_released(api, response).await;
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn deleting_a_relay_whose_target_never_existed_only_releases_the_finalizer() {
    let (harness, mut api) = harness();
    let relay = deleted_sidecar();
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect_not_found(Method::GET, &format!("{DEPLOYMENTS}/shop-api")).await;
        expect_finalizer_released(api, response).await;
    });
    assert_eq!(harness.reconcile(&relay).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn changing_the_target_removes_the_container_from_the_old_one_first() {
    let (harness, mut api) = harness();
    let relay = applied_sidecar(&SIDECAR.replace("name: shop-api", "name: shop-worker"));
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("5", &["tributary-operator/outbox-relay/shop-outbox"]))
            .await;
        let removal = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("6", &[])).await;
        assert!(removal.uri.contains(SIDECAR_MANAGER), "{}", removal.uri);
        assert!(removal.body.get("spec").is_none(), "{}", removal.body);
        api.expect_event("default").await;
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-worker"), app_deployment("9", &[])).await;
        let recorded = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response.clone()).await;
        assert_eq!(recorded.body["status"]["target"], json!("shop-worker"));
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-worker"), app_deployment("10", &[])).await;
        assert_eq!(apply.body["metadata"]["name"], json!("shop-worker"));
        api.expect_event("default").await;
        api.expect(Method::GET, PODS, pods(&[])).await;
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&relay).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn standalone_relay_is_an_owned_deployment_under_the_operator_field_manager() {
    let (harness, mut api) = harness();
    let spec = "database: { urlSecretRef: { name: shop-db, key: dsn } }\nrouting: { topicPrefix: 'shop.' }\nplacement: { standalone: { replicas: 2 } }";
    let relay = stored(outbox_relay("billing", spec), NOW - 10);
    let response = echo(&relay);
    harness.fakes.answer("10.2.0.1:8081".parse().expect("address"), RelayReport { pending_rows: Some(0), ..RelayReport::default() });
    let scenario = tokio::spawn(async move {
        let mut sent = vec![api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("dsn")).await];
        sent.push(api.expect_not_found(Method::GET, &format!("{DEPLOYMENTS}/billing-relay")).await);
        sent.push(api.expect(Method::PATCH, &format!("{RELAYS}/billing/status"), response.clone()).await);
        let labels = billing_relay_labels();
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/billing-relay"), created_billing_relay()).await;
        assert!(
            apply.uri.contains("fieldManager=tributary-operator") && !apply.uri.contains("%2F") && apply.uri.contains("force=true"),
            "{}",
            apply.uri
        );
        let body = &apply.body;
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], json!("uid-billing"));
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], json!(true));
        assert_eq!(body["spec"]["replicas"], json!(2));
        assert_eq!(body["spec"]["selector"]["matchLabels"], labels);
        let container = &body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["env"][0],
            json!({"name": "TRIBUTARY_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "dsn"}}})
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], json!("/readyz"));
        sent.push(apply);
        api.expect_event("default").await;
        let listed = api.expect(Method::GET, PODS, pods(&[relay_pod("billing-relay-x", "10.2.0.1", true, Some(8081))])).await;
        assert!(listed.uri.contains("tributary.dev%2Foutbox-relay%3Dbilling"), "{}", listed.uri);
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/billing/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "Relaying"));
        assert_eq!(condition(&status.body, "TargetFound"), ("True", "Standalone"));
        assert_eq!(condition(&status.body, "TopicsReady"), ("True", "NoRoutes"));
        assert_eq!(
            (status.body["status"]["target"].as_str(), status.body["status"]["pendingRows"].as_i64()),
            (Some("billing-relay"), Some(0))
        );
        sent.push(status);
        api.expect_no_more_requests().await;
        sent
    });
    harness.reconcile(&relay).await.expect("reconciles");
    assert_no_database_url(&scenario.await.expect("scenario ran"));
}

#[tokio::test]
async fn a_deployment_of_the_same_name_that_is_not_ours_is_left_alone() {
    let (harness, mut api) = harness();
    let relay = stored(
        outbox_relay(
            "billing",
            "database: { urlSecretRef: { name: shop-db } }\nrouting: { topicPrefix: x }\nplacement: { standalone: {} }",
        ),
        NOW,
    );
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(
            Method::GET,
            &format!("{DEPLOYMENTS}/billing-relay"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "billing-relay"}}),
        )
        .await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/billing/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "DeploymentConflict"));
        api.expect_event("default").await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&relay).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_missing_secret_key_or_topic_is_reported_and_nothing_is_applied() {
    let two_routes = SIDECAR.replace("}] }", "}, { aggregateType: Refund, eventTopic: refunds }] }");
    for (secret_key, orders_ready, refunds, ready_reason, topics_reason) in [
        ("url", true, None, "TopicNotFound", "TopicNotFound"),
        ("url", false, Some(true), "TopicNotReady", "TopicNotReady"),
        ("dsn", true, Some(true), "SecretKeyNotFound", "TopicsReady"),
    ] {
        let (harness, mut api) = harness();
        let relay = stored(outbox_relay("shop-outbox", &two_routes), NOW - 10);
        let response = echo(&relay);
        let scenario = tokio::spawn(async move {
            api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
            api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret(secret_key)).await;
            api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", orders_ready)).await;
            match refunds {
                Some(ready) => api.expect(Method::GET, &format!("{TOPICS}/refunds"), event_topic("refunds", ready)).await,
                None => api.expect_not_found(Method::GET, &format!("{TOPICS}/refunds")).await,
            };
            api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("1", &[])).await;
            // Blocked: no apply; the pods are still looked at, for a relay that ran before.
            api.expect(Method::GET, PODS, pods(&[])).await;
            let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
            assert_eq!(condition(&status.body, "Ready"), ("False", ready_reason));
            assert_eq!(condition(&status.body, "TopicsReady").1, topics_reason);
            assert_eq!(condition(&status.body, "TargetFound"), ("True", "TargetFound"));
            let warning = api.expect_event("default").await;
            assert_eq!(warning["reason"].as_str(), Some(ready_reason));
            api.expect_no_more_requests().await;
        });
        let action = harness.reconcile(&relay).await.expect("reconciles");
        assert_eq!(action, Action::requeue(Settings::new(settings()).status_interval), "waits and looks again");
        scenario.await.expect("scenario ran");
    }
}

#[tokio::test]
async fn a_younger_relay_on_the_same_target_waits_without_touching_it() {
    let (mut harness, mut api) = harness();
    let older = stored(outbox_relay("first", SIDECAR), NOW - 100);
    let younger = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    harness.seen(&older);
    harness.seen(&younger);
    let response = echo(&younger);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "TargetInUse"));
        api.expect_event("default").await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&younger).await.expect("reconciles");
    scenario.await.expect("scenario ran");
    let routed = relays_routing_to(&harness.context.store.state(), Some("default"), "orders");
    assert_eq!(routed.len(), 2, "both relays route to orders and are woken by its changes");
}

#[tokio::test]
async fn a_missing_workload_kafka_secret_keeps_the_relay_out_of_the_applications_pods() {
    let (harness, mut api) = harness_with(WorkloadSettings { kafka_properties_secret: Some("kafka-auth".into()), ..settings() });
    let relay = applied_sidecar(SIDECAR);
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect_not_found(Method::GET, &format!("{SECRETS}/kafka-auth")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("100", &["kubectl"])).await;
        // No apply: a pod whose Secret volume is missing would not start.
        api.expect(Method::GET, PODS, pods(&[])).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "KafkaSecretNotFound"));
        api.expect_event("default").await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&relay).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_paused_relay_only_reports_that_it_is_paused() {
    let (harness, mut api) = harness();
    let mut relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    relay.metadata.annotations = Some([(tributary_api::PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response).await;
        assert_eq!(condition(&status.body, "ReconciliationPaused"), ("True", "Paused"));
        api.expect_no_more_requests().await;
    });
    let action = harness.reconcile(&relay).await.expect("reconciles");
    assert_eq!(action, Action::await_change());
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn malformed_object_is_reported_without_failing() {
    let (harness, api) = harness();
    let manifest = json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "OutboxRelay",
        "metadata": {"name": "broken", "namespace": "default", "generation": 2},
        "spec": {"database": "somewhere"},
    });
    assert_malformed_object_reported(&harness, api, manifest, &format!("{RELAYS}/broken/status"), "InvalidConfig").await;
}

/// The application's Deployment with its metadata changed by `edit`.
fn app_deployment_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut deployment = app_deployment("100", &["kubectl"]);
    edit(&mut deployment["metadata"]);
    deployment
}

/// Serves a sidecar reconcile up to the target lookup, answering it with `target`; a refused
/// target gets no apply, only the status. Returns the status patch.
async fn serve_refused_target(api: &mut ApiServerVerifier, response: &Value, target: Value) -> RecordedRequest {
    api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
    api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
    api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
    api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), target).await;
    api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response.clone()).await
}

fn condition_message(status_patch: &Value, type_: &str) -> String {
    crate::fixtures::find_condition(status_patch, type_)["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_target_that_did_not_opt_in_is_left_unchanged() {
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let response = echo(&relay);
    let cases = [
        (app_deployment_with(|metadata| metadata["annotations"] = json!({})), "it has no annotation tributary.dev/outbox-relay"),
        (
            app_deployment_with(|metadata| metadata["annotations"] = json!({"tributary.dev/outbox-relay": "billing-outbox"})),
            "its annotation tributary.dev/outbox-relay names \"billing-outbox\"",
        ),
    ];
    for (target, found) in cases {
        let (harness, mut api) = harness();
        let response = response.clone();
        let scenario = tokio::spawn(async move {
            let status = serve_refused_target(&mut api, &response, target).await;
            assert_eq!(condition(&status.body, "TargetFound"), ("False", "TargetNotOptedIn"));
            assert_eq!(condition(&status.body, "Ready"), ("False", "TargetNotOptedIn"));
            let message = condition_message(&status.body, "TargetFound");
            assert!(message.contains(found), "{message}");
            assert!(message.ends_with("adds the annotation tributary.dev/outbox-relay: shop-outbox"), "{message}");
            let event = api.expect_event("default").await;
            assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("TargetNotOptedIn")));
            api.expect_no_more_requests().await;
        });
        harness.reconcile(&relay).await.expect("reconciles");
        scenario.await.expect("scenario ran");
    }
}

#[tokio::test]
async fn without_required_opt_in_any_named_deployment_takes_the_sidecar() {
    let (harness, mut api) = Harness::new(|shared, store| {
        let relay_status = Arc::new(FakeRelayStatus::default());
        let settings = Settings { sidecar_opt_in: SidecarOptIn::NotRequired, ..Settings::new(settings()) };
        (Context::new(shared, relay_status.clone(), store, settings), relay_status)
    });
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let response = echo(&relay);
    let scenario = tokio::spawn(async move {
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox"), response.clone()).await;
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect(Method::GET, &format!("{TOPICS}/orders"), event_topic("orders", true)).await;
        let unannotated = app_deployment_with(|metadata| metadata["annotations"] = json!({}));
        api.expect(Method::GET, &format!("{DEPLOYMENTS}/shop-api"), unannotated).await;
        api.expect(Method::PATCH, &format!("{RELAYS}/shop-outbox/status"), response.clone()).await;
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/shop-api"), app_deployment("101", &["kubectl", "x"])).await;
        assert!(apply.uri.contains(SIDECAR_MANAGER), "{}", apply.uri);
    });
    harness.reconcile(&relay).await.ok();
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_subscriptions_consumer_deployment_is_never_a_target() {
    let (harness, mut api) = harness();
    let relay = stored(outbox_relay("shop-outbox", SIDECAR), NOW - 10);
    let response = echo(&relay);
    // Even opted in: its dispatcher is a tributary-relay container the Subscription controller owns.
    let consumers = app_deployment_with(|metadata| metadata["labels"] = json!({"tributary.dev/subscription": "billing"}));
    let scenario = tokio::spawn(async move {
        let status = serve_refused_target(&mut api, &response, consumers).await;
        assert_eq!(condition(&status.body, "TargetFound"), ("False", "TargetIsSubscription"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "TargetIsSubscription"));
        let message = condition_message(&status.body, "TargetFound");
        assert!(message.starts_with("Deployment shop-api runs the consumers of Subscription billing"), "{message}");
        assert_eq!(api.expect_event("default").await["reason"], "TargetIsSubscription");
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&relay).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

/// A relay that runs but cannot relay its table (not migrated yet, a column flag naming no column)
/// keeps running and says why on `/status`; not ready (a standalone relay's readiness probe
/// fails meanwhile), it is asked all the same, and `Ready` names the problem.
#[tokio::test]
async fn a_relay_reporting_a_schema_problem_is_not_ready_and_the_status_says_why() {
    let (harness, mut api) = harness();
    let spec = "database: { urlSecretRef: { name: shop-db } }\nrouting: { topicPrefix: 'shop.' }\nplacement: { standalone: {} }";
    let relay = stored(outbox_relay("billing", spec), NOW - 10);
    let response = echo(&relay);
    let address = "10.2.0.1:8081".parse().expect("address");
    let problem = "outbox table \"public\".\"outbox\" does not exist (run `tributary-relay migrate` first)";
    harness.fakes.answer(address, RelayReport { schema_problem: Some(problem.into()), ..RelayReport::default() });
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{SECRETS}/shop-db"), secret("url")).await;
        api.expect_not_found(Method::GET, &format!("{DEPLOYMENTS}/billing-relay")).await;
        api.expect(Method::PATCH, &format!("{RELAYS}/billing/status"), response.clone()).await;
        let apply = api.expect(Method::PATCH, &format!("{DEPLOYMENTS}/billing-relay"), created_billing_relay()).await;
        let env = &apply.body["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array().expect("env").contains(&json!({"name": "TRIBUTARY_WAIT_FOR_SCHEMA", "value": "true"})),
            "the relay is told to wait for its table: {env}"
        );
        api.expect_event("default").await;
        api.expect(Method::GET, PODS, pods(&[running_relay_pod("billing-relay-x", "10.2.0.1")])).await;
        let status = api.expect(Method::PATCH, &format!("{RELAYS}/billing/status"), response).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "SchemaProblem"));
        let ready = status.body["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Ready").cloned();
        assert_eq!(ready.expect("a Ready condition")["message"], json!(problem), "the relay's own words");
        let warning = api.expect_event("default").await;
        assert_eq!((warning["type"].as_str(), warning["reason"].as_str()), (Some("Warning"), Some("SchemaProblem")));
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&relay).await.expect("reconciles");
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.asked(), vec![address], "the running relay is asked though not ready");
}

/// The labels of the standalone relay `billing`'s pods.
fn billing_relay_labels() -> Value {
    json!({"app.kubernetes.io/name": "tributary-relay", "tributary.dev/outbox-relay": "billing"})
}

/// The standalone relay `billing`'s Deployment as the API server answers its first apply.
fn created_billing_relay() -> Value {
    let labels = billing_relay_labels();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "billing-relay", "resourceVersion": "1"},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {"containers": []}}},
    })
}

/// A pod whose relay container runs but is not ready.
fn running_relay_pod(name: &str, ip: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = relay_pod(name, ip, false, Some(8081));
    let statuses = pod.status.as_mut().and_then(|status| status.container_statuses.as_mut()).expect("statuses");
    for status in statuses {
        status.state = Some(serde_json::from_value(json!({"running": {"startedAt": NOW_TEXT}})).expect("a state"));
    }
    pod
}
