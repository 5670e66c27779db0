//! Controller tests against a mock API server and in-memory Kafka: each scenario scripts the exact
//! requests the reconciles must make.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use tributary_api::event_topic::Origin;
use tributary_api::{Subscription, SubscriptionStatus};

use super::controller::{Context, Settings};
use super::test_support::{ready, subscription};
use crate::event_topic::test_support::event_topic;
use crate::fixtures::{self, assert_malformed_object_reported, condition, ApiServerVerifier, Harness, RecordedRequest, NOW};
use crate::kafka::{FakeConsumerGroups, FakeTopicAdmin, TopicState};
use crate::workload::WorkloadSettings;

const SUBSCRIPTIONS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/subscriptions";
const TOPICS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/billing";
const CONFIG_MAP: &str = "/api/v1/namespaces/default/configmaps/billing-consumer";
const SCALED_OBJECT: &str = "/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects/billing";
const KEDA_CRD: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaledobjects.keda.sh";
const STATUS: &str = "/apis/tributary.dev/v1alpha1/namespaces/default/subscriptions/billing/status";
const GROUP: &str = "default.billing";
const DEAD_LETTER_TOPIC: &str = "default.billing.dlq";

/// The in-memory Kafka the context was built with.
struct Kafka {
    topics: Arc<FakeTopicAdmin>,
    groups: Arc<FakeConsumerGroups>,
}

impl Kafka {
    /// The Kafka topic `orders` with `partitions` partitions holding `records` records each.
    fn orders_topic(&self, partitions: usize, records: usize) {
        self.groups.add_topic("orders", partitions);
        for partition in 0..partitions {
            self.groups.produce("orders", partition, records, 1_000);
        }
    }
}

fn harness() -> (Harness<Context, Kafka>, ApiServerVerifier) {
    harness_with(None)
}

/// With `kafka_properties_secret` as the operator's workload Kafka Secret.
fn harness_with(kafka_properties_secret: Option<&str>) -> (Harness<Context, Kafka>, ApiServerVerifier) {
    Harness::new(|shared, store| {
        let kafka = Kafka { topics: Arc::new(FakeTopicAdmin::new()), groups: Arc::new(FakeConsumerGroups::new()) };
        let workload = WorkloadSettings {
            bootstrap_servers: "kafka:9092".into(),
            relay_image: "ghcr.io/tributary-dev/tributary-relay:0.1.0".into(),
            kafka_properties_secret: kafka_properties_secret.map(str::to_owned),
        };
        (Context::new(shared, kafka.topics.clone(), kafka.groups.clone(), store, Settings::new(workload)), kafka)
    })
}

/// `subscription` as the API server stores it, created 100 s ago.
fn stored(subscription: Subscription) -> Subscription {
    fixtures::stored(subscription, NOW - 100)
}

/// The Subscription as the watch brings it back after the status patch `request`.
fn with_status(subscription: &Subscription, request: &RecordedRequest) -> Subscription {
    let status: SubscriptionStatus = serde_json::from_value(request.body["status"].clone()).expect("status parses");
    Subscription { status: Some(status), ..subscription.clone() }
}

fn ready_orders() -> Value {
    serde_json::to_value(ready(event_topic("orders", ""))).expect("serializes")
}

/// A Deployment the controller made earlier, with its current scale.
fn our_deployment(replicas: i32, ready_replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "billing", "namespace": "default",
            "ownerReferences": [{"apiVersion": "tributary.dev/v1alpha1", "kind": "Subscription", "name": "billing", "uid": "uid-billing", "controller": true}],
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"tributary.dev/subscription": "billing"}}, "template": {}},
        "status": {"replicas": ready_replicas, "readyReplicas": ready_replicas},
    })
}

fn applied(kind: &str, api_version: &str, name: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "default"}})
}

fn assert_server_side_apply(request: &RecordedRequest) {
    assert!(request.uri.contains("fieldManager=tributary-operator") && request.uri.contains("force=true"), "{}", request.uri);
}

fn containers(deployment_patch: &Value) -> &Vec<Value> {
    deployment_patch["spec"]["template"]["spec"]["containers"].as_array().expect("containers")
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|var| var["name"] == name)?["value"].as_str()
}

/// What an earlier run recorded: the group and the dead-letter topic as the Subscription's own.
fn records() -> SubscriptionStatus {
    SubscriptionStatus {
        consumer_group: Some(GROUP.into()),
        consumer_group_origin: Some(Origin::Created),
        dead_letter_topic: Some(DEAD_LETTER_TOPIC.into()),
        dead_letter_origin: Some(Origin::Created),
        ..SubscriptionStatus::default()
    }
}

/// The Subscription as an earlier run left it.
fn ran_before(subscription: Subscription) -> Subscription {
    Subscription { status: Some(records()), ..subscription }
}

/// Whether the reconcile records the group and dead-letter topic first (a first run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    First,
    Again,
}

/// Serves a reconcile up to and including the Deployment apply: the EventTopic, the Deployment
/// found (`None`: there is none), KEDA's CRD (`None`: already known from an earlier reconcile),
/// on a first run the status recording the group and dead-letter topic, then the ConfigMap and
/// Deployment applies. Returns the Deployment apply.
async fn serve_until_applied(api: &mut ApiServerVerifier, found: Option<Value>, keda_installed: Option<bool>, run: Run) -> RecordedRequest {
    api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
    match found {
        Some(deployment) => api.expect(Method::GET, DEPLOYMENT, deployment).await,
        None => api.expect_not_found(Method::GET, DEPLOYMENT).await,
    };
    match keda_installed {
        Some(true) => {
            api.expect(Method::GET, KEDA_CRD, json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "scaledobjects.keda.sh"}})).await;
        }
        Some(false) => {
            api.expect_not_found(Method::GET, KEDA_CRD).await;
        }
        None => {}
    }
    if run == Run::First {
        let recorded = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(recorded.body["status"]["consumerGroupOrigin"], "Created", "recorded before anything is committed");
    }
    let config_map = api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
    assert_server_side_apply(&config_map);
    let deployment = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
    assert_server_side_apply(&deployment);
    deployment
}

#[tokio::test]
async fn pull_mode_without_keda_gets_a_deployment_the_builtin_scaler_sizes() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(4, 60);
    let subscription = stored(subscription("billing", "startFrom: earliest"));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let recorded = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(
            (&recorded.body["status"]["consumerGroupOrigin"], &recorded.body["status"]["deadLetterOrigin"]),
            (&json!("Created"), &json!("Created")),
            "the group and the dead-letter topic are recorded before either is touched"
        );
        let config_map = api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        assert_server_side_apply(&config_map);
        assert_eq!(config_map.body["metadata"]["ownerReferences"][0]["uid"], "uid-billing");
        let properties = config_map.body["data"]["consumer.properties"].as_str().expect("properties");
        assert!(properties.contains("group.id=default.billing\n") && properties.contains("auto.offset.reset=earliest\n"), "{properties}");

        let deployment = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        assert_server_side_apply(&deployment);
        let body = &deployment.body;
        assert_eq!((body["apiVersion"].as_str(), body["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(body["spec"]["replicas"], 3, "240 records of lag at 100 per replica");
        assert_eq!(body["spec"]["selector"]["matchLabels"], json!({"tributary.dev/subscription": "billing"}));
        let containers = containers(body);
        assert_eq!(containers.len(), 1, "no sidecar in Pull mode");
        assert_eq!(env(&containers[0], "TRIBUTARY_TOPICS"), Some("orders"));
        assert_eq!(env(&containers[0], "TRIBUTARY_GROUP"), Some(GROUP));
        assert_eq!(env(&containers[0], "TRIBUTARY_DEAD_LETTER_TOPIC"), Some("default.billing.dlq"));

        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_server_side_apply(&status);
        let reported = &status.body["status"];
        assert_eq!(
            (
                reported["engine"].as_str(),
                reported["totalLag"].as_i64(),
                reported["desiredReplicas"].as_i64(),
                reported["readyReplicas"].as_i64()
            ),
            (Some("Builtin"), Some(240), Some(3), Some(0))
        );
        assert_eq!(reported["lag"], json!([{"topic": "orders", "lag": 240}]));
        assert_eq!((reported["consumerGroup"].as_str(), reported["deadLetterTopic"].as_str()), (Some(GROUP), Some("default.billing.dlq")));
        assert_eq!(reported["observedGeneration"], 1);
        assert_eq!(condition(&status.body, "Ready"), ("False", "ConsumersNotReady"));
        assert_eq!(condition(&status.body, "TopicsReady"), ("True", "TopicsReady"));
        assert_eq!(condition(&status.body, "Scaled"), ("True", "AtTarget"));
        assert_eq!(condition(&status.body, "ReplayInProgress"), ("False", "NoReplay"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.scale_interval));
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.topics.topic_names(), vec!["default.billing.dlq"], "the Subscription's own dead-letter topic");
}

#[tokio::test]
async fn push_mode_with_keda_gets_a_scaled_object_and_leaves_replicas_to_its_hpa() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(2, 0);
    let spec =
        "delivery: { mode: Push, sink: { port: 8080, path: /events } }\nscaling: { minReplicas: 1, maxReplicas: 4, lagThreshold: 50 }";
    let subscription = ran_before(stored(subscription("billing", spec)));
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(2, 2)), Some(true), Run::Again).await;
        assert!(deployment.body["spec"].get("replicas").is_none(), "the HPA owns replicas: {}", deployment.body["spec"]);
        let containers = containers(&deployment.body);
        assert_eq!(
            containers.iter().map(|c| c["name"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
            vec!["consumer", "tributary-relay"]
        );
        let relay = &containers[1];
        assert_eq!(relay["image"], "ghcr.io/tributary-dev/tributary-relay:0.1.0");
        assert_eq!(relay["args"], json!(["dispatch"]));
        assert_eq!(env(relay, "TRIBUTARY_SINK"), Some("http://127.0.0.1:8080/events"));
        assert_eq!(env(relay, "TRIBUTARY_LISTEN_ADDRESS"), Some("0.0.0.0:8082"));
        assert_eq!(relay["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "tributary-http"}));
        assert_eq!(relay["securityContext"]["runAsNonRoot"], true);

        let scaled_object = api.expect(Method::PATCH, SCALED_OBJECT, applied("ScaledObject", "keda.sh/v1alpha1", "billing")).await;
        assert_server_side_apply(&scaled_object);
        assert_eq!(scaled_object.body["metadata"]["ownerReferences"][0]["uid"], "uid-billing");
        let spec = &scaled_object.body["spec"];
        assert_eq!(spec["scaleTargetRef"]["name"], "billing");
        assert_eq!((spec["minReplicaCount"].as_i64(), spec["maxReplicaCount"].as_i64()), (Some(1), Some(4)));
        assert_eq!(spec["triggers"][0]["metadata"]["topic"], "orders");
        assert_eq!(spec["triggers"][0]["metadata"]["lagThreshold"], "50");

        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        let reported = &status.body["status"];
        assert_eq!((reported["engine"].as_str(), reported["desiredReplicas"].as_i64()), (Some("Keda"), Some(2)));
        assert_eq!(condition(&status.body, "Scaled"), ("True", "KedaScaledObject"));
        assert_eq!(condition(&status.body, "Ready"), ("True", "Running"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.resync_interval));
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_missing_event_topic_is_waited_for_and_its_arrival_runs_the_subscription() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 0);
    let subscription = stored(subscription("billing", ""));
    let scenario = tokio::spawn(async move {
        api.expect_not_found(Method::GET, &format!("{TOPICS}/orders")).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "TopicsReady"), ("False", "TopicNotFound"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "TopicsNotReady"));
        assert_eq!(condition(&status.body, "Scaled"), ("Unknown", "NotReconciled"));
        assert!(status.body["status"]["conditions"][0]["message"].as_str().is_some_and(|m| m.contains("\"orders\" does not exist")));
        api
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::await_change(), "woken by the EventTopic watch");
    let mut api = scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty(), "nothing is created while waiting");

    // The EventTopic became Ready: the watch maps it to this Subscription, which now runs.
    let woken = super::controller::subscriptions_reading(
        &[Arc::new(DeserializeGuard(Ok(subscription.clone())))],
        &DeserializeGuard(Ok(ready(event_topic("orders", "")))),
    );
    assert_eq!(woken.len(), 1);
    let scenario = tokio::spawn(async move {
        serve_until_applied(&mut api, None, Some(false), Run::First).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "TopicsReady"), ("True", "TopicsReady"));
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn keda_engine_without_keda_is_reported_and_nothing_is_applied() {
    let (harness, mut api) = harness();
    let subscription = stored(subscription("billing", "scaling: { engine: Keda }"));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Scaled"), ("False", "KedaNotInstalled"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "KedaNotInstalled"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.resync_interval));
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn an_unreachable_broker_keeps_the_replicas_and_reports_unknown_lag() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(4, 0);
    harness.fakes.groups.set_unavailable(true);
    harness.fakes.topics.set_unavailable(true);
    let subscription = ran_before(stored(subscription("billing", "scaling: { engine: Builtin, scaleToZero: true }")));
    let scenario = tokio::spawn(async move {
        // Builtin is asked for explicitly: no KEDA lookup.
        let deployment = serve_until_applied(&mut api, Some(our_deployment(4, 4)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 4, "no scale-down on an unknown lag");
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        let reported = &status.body["status"];
        assert!(reported.get("totalLag").is_none() && reported.get("lag").is_none(), "unknown, not zero: {reported}");
        assert_eq!(condition(&status.body, "Scaled"), ("False", "LagUnknown"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "KafkaUnavailable"));
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ReconcileFailed")));
        api.expect_no_more_requests().await;
    });
    let error = harness.reconcile(&subscription).await.expect_err("retried");
    assert_eq!(error.metric_label(), "kafka_unavailable");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn the_builtin_scaler_cools_down_before_scaling_to_zero_and_says_so() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(4, 10);
    for partition in 0..4 {
        harness.fakes.groups.commit(GROUP, "orders", partition, 10);
    }
    let subscription = ran_before(stored(subscription("billing", "scaling: { engine: Builtin, scaleToZero: true, cooldown: 2m }")));
    let (round_one, api_back) = {
        let scenario = tokio::spawn(async move {
            let deployment = serve_until_applied(&mut api, Some(our_deployment(3, 3)), None, Run::Again).await;
            assert_eq!(deployment.body["spec"]["replicas"], 3, "cooling down");
            let status = api.expect(Method::PATCH, STATUS, json!({})).await;
            assert_eq!(condition(&status.body, "Scaled"), ("True", "CoolingDown"));
            assert_eq!(status.body["status"]["lowLagSince"], "2027-01-15T08:00:00Z");
            (status, api)
        });
        harness.reconcile(&subscription).await.expect("reconciles");
        scenario.await.expect("scenario ran")
    };
    let mut api = api_back;
    let subscription = with_status(&subscription, &round_one);
    harness.clock.advance(Duration::from_secs(120));
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(3, 3)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 0, "idle for the whole cooldown");
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "ScaledToZero"));
        assert_eq!(status.body["status"]["lastScaleTime"], "2027-01-15T08:02:00Z");
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["reason"].as_str(), event["note"].as_str()),
            (Some("ScaledDown"), Some("scaled the consumers from 3 to 0 replicas (lag 0)"))
        );
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 50);
    let subscription = ran_before(stored(subscription("billing", "scaling: { engine: Builtin }\nstartFrom: earliest")));
    let scenario = tokio::spawn(async move {
        serve_until_applied(&mut api, Some(our_deployment(1, 1)), None, Run::Again).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    let subscription = with_status(&subscription, &status);
    harness.clock.advance(Duration::from_secs(15));
    let scenario = tokio::spawn(async move {
        serve_until_applied(&mut api, Some(our_deployment(1, 1)), None, Run::Again).await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn replay_scales_down_resets_offsets_scales_up_and_completes() {
    let (harness, mut api) = harness();
    // 100 old records, then 50 from t = 2s; the group has read them all.
    harness.fakes.groups.add_topic("orders", 1);
    harness.fakes.groups.produce("orders", 0, 100, 1_000);
    harness.fakes.groups.produce("orders", 0, 50, 2_000);
    harness.fakes.groups.commit(GROUP, "orders", 0, 150);
    let mut subscription =
        stored(subscription("billing", "scaling: { engine: Builtin }\nreplay: { toTimestamp: '1970-01-01T00:00:01.500Z' }"));
    subscription.status = Some(SubscriptionStatus { desired_replicas: Some(2), ..records() });

    // 1: ScalingDown: the consumers go to zero.
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(2, 2)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 0);
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["replay"]["phase"], "ScalingDown");
        assert_eq!(condition(&status.body, "ReplayInProgress"), ("True", "ScalingDown"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "Replaying"));
        assert_eq!(condition(&status.body, "Scaled"), ("False", "HeldForReplay"));
        assert_eq!(api.expect_event("default").await["reason"], "ScaledDown");
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["reason"].as_str(), event["note"].as_str()),
            (Some("ReplayScalingDown"), Some("replay to 1970-01-01T00:00:01.5Z: stopping the consumers"))
        );
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    subscription = with_status(&subscription, &status);

    // 2: the pods are gone and the group is empty: ResettingOffsets is recorded first.
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(0, 0)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 0);
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["replay"]["phase"], "ResettingOffsets");
        assert_eq!(api.expect_event("default").await["reason"], "ReplayResettingOffsets");
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    subscription = with_status(&subscription, &status);
    assert!(harness.fakes.groups.resets().is_empty(), "not before the phase is recorded");

    // 3: the offsets move to the first record at or after 1.5s; the consumers come back.
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(0, 0)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 1, "50 records to read again");
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["replay"]["phase"], "ScalingUp");
        assert_eq!(status.body["status"]["totalLag"], 50, "read again after the reset");
        assert_eq!(api.expect_event("default").await["reason"], "ScaledUp");
        assert_eq!(api.expect_event("default").await["reason"], "ReplayScalingUp");
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    subscription = with_status(&subscription, &status);
    assert_eq!(harness.fakes.groups.resets(), vec![GROUP.to_owned()]);
    assert_eq!(harness.fakes.groups.committed(GROUP, "orders", 0), Some(100));

    // 4: a consumer is ready again: Completed, and the timestamp is remembered.
    let scenario = tokio::spawn(async move {
        serve_until_applied(&mut api, Some(our_deployment(1, 1)), None, Run::Again).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(
            status.body["status"]["replay"],
            json!({"toTimestamp": "1970-01-01T00:00:01Z", "phase": "Completed", "lastTransitionTime": "2027-01-15T08:00:00Z"})
        );
        assert_eq!(condition(&status.body, "ReplayInProgress"), ("False", "ReplayCompleted"));
        assert_eq!(condition(&status.body, "Ready"), ("True", "Running"));
        assert_eq!(api.expect_event("default").await["reason"], "ReplayCompleted");
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    subscription = with_status(&subscription, &status);

    // 5: the same request again does nothing more.
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(1, 1)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 1);
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.groups.resets().len(), 1, "applied once");
}

#[tokio::test]
async fn a_consumer_group_taken_by_an_older_subscription_is_reported() {
    let (mut harness, mut api) = harness();
    let mut owner = stored(subscription("payments", "consumerGroup: shared"));
    owner.metadata.namespace = Some("team-a".into());
    owner.metadata.creation_timestamp = Some(Time(Timestamp::from_second(NOW - 1_000).expect("timestamp")));
    let claimant = stored(subscription("billing", "consumerGroup: shared"));
    harness.seen(&owner);
    harness.seen(&claimant);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "ConsumerGroupConflict"));
        let message = status.body["status"]["conditions"][0]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("team-a/payments"), "{message}");
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&claimant).await.expect("reconciles"), Action::requeue(harness.context.settings.conflict_retry));
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty());
}

#[tokio::test]
async fn someone_elses_deployment_of_the_same_name_is_left_alone() {
    let (harness, mut api) = harness();
    let subscription = stored(subscription("billing", ""));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect(Method::GET, DEPLOYMENT, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "billing"}})).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "DeploymentConflict"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.conflict_retry));
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_missing_workload_kafka_secret_is_reported_and_nothing_is_applied() {
    let (harness, mut api) = harness_with(Some("kafka-auth"));
    let subscription = stored(subscription("billing", ""));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, "/api/v1/namespaces/default/secrets/kafka-auth").await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "KafkaSecretNotFound"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.conflict_retry));
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty(), "no dead-letter topic before the consumers can run");
}

#[tokio::test]
async fn a_dead_letter_topic_that_is_a_source_topic_is_an_invalid_spec() {
    let (harness, mut api) = harness();
    let subscription = stored(subscription("billing", "delivery: { deadLetter: { topicName: orders } }"));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "InvalidSpec"));
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn switching_from_keda_to_builtin_deletes_the_scaled_object() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(2, 0);
    let mut subscription = stored(subscription("billing", "scaling: { engine: Builtin }"));
    subscription.status = Some(SubscriptionStatus { engine: Some(tributary_api::subscription::ScalingEngine::Keda), ..records() });
    let scenario = tokio::spawn(async move {
        let deployment = serve_until_applied(&mut api, Some(our_deployment(2, 2)), None, Run::Again).await;
        assert_eq!(deployment.body["spec"]["replicas"], 2, "the built-in scaler sets replicas again, cooling down from the HPA's 2");
        api.expect(Method::DELETE, SCALED_OBJECT, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["engine"], "Builtin");
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn switching_from_builtin_to_keda_hands_the_replicas_over_without_dropping_them() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(2, 0);
    let mut subscription = stored(subscription("billing", "scaling: { engine: Keda, minReplicas: 1, maxReplicas: 8 }"));
    subscription.status = Some(SubscriptionStatus { engine: Some(tributary_api::subscription::ScalingEngine::Builtin), ..records() });
    // The built-in scaler set 5 replicas, so the operator's apply owns spec.replicas.
    let mut found = our_deployment(5, 5);
    found["metadata"]["managedFields"] = json!([{
        "manager": "tributary-operator", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
    }]);
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect(Method::GET, DEPLOYMENT, found).await;
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "scaledobjects.keda.sh"}});
        api.expect(Method::GET, KEDA_CRD, crd).await;
        api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        // Dropping replicas from the operator's apply alone would reset them to 1 until the HPA acts:
        // another manager takes them over first, at their current value.
        let handoff = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        assert!(handoff.uri.contains("fieldManager=tributary-operator-replicas-handoff"), "{}", handoff.uri);
        assert_eq!(handoff.body["spec"], json!({"replicas": 5}));
        let deployment = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        assert_server_side_apply(&deployment);
        assert!(deployment.body["spec"].get("replicas").is_none(), "the HPA owns replicas: {}", deployment.body["spec"]);
        api.expect(Method::PATCH, SCALED_OBJECT, applied("ScaledObject", "keda.sh/v1alpha1", "billing")).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["engine"], "Keda");
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_paused_subscription_only_says_so() {
    let (harness, mut api) = harness();
    let mut subscription = stored(subscription("billing", ""));
    subscription.metadata.annotations = Some([(tributary_api::PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
    let scenario = tokio::spawn(async move {
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "ReconciliationPaused"), ("True", "Paused"));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty() && harness.fakes.groups.resets().is_empty());
}

#[tokio::test]
async fn a_malformed_subscription_is_reported_without_failing() {
    let (harness, api) = harness();
    let manifest = json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "billing", "namespace": "default", "generation": 3},
        "spec": {"topics": "orders"},
    });
    assert_malformed_object_reported(&harness, api, manifest, &format!("{SUBSCRIPTIONS}/billing/status"), "InvalidSpec").await;
}

/// A Kafka topic that exists already, made by someone else.
fn existing_topic(kafka: &Kafka, name: &str) {
    let state = TopicState { name: name.into(), partitions: 1, replication_factor: 1, configs: Default::default() };
    kafka.topics.insert_topic(state);
}

#[tokio::test]
async fn a_consumer_group_with_commits_and_no_subscription_is_not_taken_over_without_consent() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 5);
    // Someone consumed `payments` with the group this Subscription would use by default.
    harness.fakes.groups.add_topic("payments", 1);
    harness.fakes.groups.commit(GROUP, "payments", 0, 7);
    let subscription = stored(subscription("billing", ""));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "AdoptionRequired"));
        let message = crate::fixtures::find_condition(&status.body, "Ready")["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.starts_with("consumer group \"default.billing\" (the default, <namespace>.<name>) has committed offsets on payments"),
            "{message}"
        );
        assert!(message.contains("spec.adoptConsumerGroup: true"), "{message}");
        assert!(status.body["status"].get("consumerGroup").is_none(), "not recorded: {}", status.body["status"]);
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("AdoptionRequired")));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.conflict_retry));
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty(), "no dead-letter topic");
    assert_eq!(harness.fakes.groups.committed(GROUP, "orders", 0), None, "no start position committed in someone else's group");
}

#[tokio::test]
async fn a_consumer_group_used_before_is_adopted_with_consent_and_recorded_before_anything_is_committed() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 5);
    harness.fakes.groups.add_topic("payments", 1);
    harness.fakes.groups.commit(GROUP, "payments", 0, 7);
    let adopting = stored(subscription("billing", "adoptConsumerGroup: true"));
    let groups = harness.fakes.groups.clone();
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let recorded = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(recorded.body["status"]["consumerGroupOrigin"], "Adopted");
        assert_eq!(groups.committed(GROUP, "orders", 0), None, "recorded before the start position is committed");
        api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(status.body["status"]["consumerGroupOrigin"], "Adopted");
    });
    harness.reconcile(&adopting).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn the_group_it_recorded_stays_its_own_after_its_own_commits() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(2, 3);
    let subscription = stored(subscription("billing", ""));
    let scenario = tokio::spawn(async move {
        serve_until_applied(&mut api, None, Some(false), Run::First).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");
    // While idle the operator committed the group's starting position (startFrom latest).
    assert_eq!(harness.fakes.groups.committed(GROUP, "orders", 0), Some(3));

    // The next reconcile finds a group with commits, and knows them for its own.
    let subscription = with_status(&subscription, &status);
    let scenario = tokio::spawn(async move {
        // No AdoptionRequired: it applies as before, and its status stays as it was.
        serve_until_applied(&mut api, Some(our_deployment(0, 0)), None, Run::Again).await;
        api.expect_no_more_requests().await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn a_status_from_before_origins_keeps_its_group_and_dead_letter_topic() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 3);
    harness.fakes.groups.commit(GROUP, "orders", 0, 1);
    existing_topic(&harness.fakes, DEAD_LETTER_TOPIC);
    // As the previous operator wrote it: the group and the dead-letter topic, no origins.
    let mut upgraded = stored(subscription("billing", "scaling: { engine: Builtin }"));
    upgraded.status = Some(SubscriptionStatus {
        consumer_group: Some(GROUP.into()),
        dead_letter_topic: Some(DEAD_LETTER_TOPIC.into()),
        ..SubscriptionStatus::default()
    });
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect(Method::GET, DEPLOYMENT, our_deployment(1, 1)).await;
        // The origins the previous version implied are written out before anything else.
        let recorded = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(
            (&recorded.body["status"]["consumerGroupOrigin"], &recorded.body["status"]["deadLetterOrigin"]),
            (&json!("Created"), &json!("Created"))
        );
        api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("True", "Running"));
    });
    harness.reconcile(&upgraded).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

#[tokio::test]
async fn an_existing_topic_it_does_not_own_is_refused_as_its_dead_letter_topic() {
    let (harness, mut api) = harness();
    harness.fakes.orders_topic(1, 0);
    // Another team's topic.
    existing_topic(&harness.fakes, "payments-audit");
    let subscription = stored(subscription("billing", "delivery: { deadLetter: { topicName: payments-audit } }"));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "DeadLetterTopicNotOwned"));
        let message = crate::fixtures::find_condition(&status.body, "Ready")["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.starts_with("spec.delivery.deadLetter.topicName \"payments-audit\" is an existing Kafka topic that neither this Subscription nor an EventTopic it reads owns"),
            "{message}"
        );
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], "DeadLetterTopicNotOwned");
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::requeue(harness.context.settings.conflict_retry));
    scenario.await.expect("scenario ran");
    assert_eq!(harness.fakes.groups.committed(GROUP, "orders", 0), None, "nothing committed");
}

#[tokio::test]
async fn a_dead_letter_topic_another_subscription_of_the_namespace_created_is_shared() {
    let (mut harness, mut api) = harness();
    harness.fakes.orders_topic(1, 0);
    existing_topic(&harness.fakes, "default.dead");
    let mut neighbour = stored(subscription("audit", "delivery: { deadLetter: { topicName: default.dead } }"));
    neighbour.status = Some(SubscriptionStatus {
        dead_letter_topic: Some("default.dead".into()),
        dead_letter_origin: Some(Origin::Created),
        ..SubscriptionStatus::default()
    });
    harness.seen(&neighbour);
    let subscription = stored(subscription("billing", "delivery: { deadLetter: { topicName: default.dead } }"));
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, &format!("{TOPICS}/orders"), ready_orders()).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        let recorded = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(recorded.body["status"]["deadLetterTopic"], "default.dead");
        assert_eq!(recorded.body["status"]["deadLetterOrigin"], "Adopted", "the neighbour's, and now shared");
        api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        let deployment = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        assert_eq!(env(&containers(&deployment.body)[0], "TRIBUTARY_DEAD_LETTER_TOPIC"), Some("default.dead"));
        api.expect(Method::PATCH, STATUS, json!({})).await;
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    scenario.await.expect("scenario ran");
}

const BILLING_INVOICES: &str = "/apis/tributary.dev/v1alpha1/namespaces/billing/eventtopics/invoices";

/// The EventTopic `billing/invoices`, Ready, with `spec`.
fn billing_invoices(spec: &str) -> tributary_api::EventTopic {
    let mut topic = event_topic("invoices", spec);
    topic.metadata.namespace = Some("billing".into());
    ready(topic)
}

fn reads_billing_invoices() -> Subscription {
    stored(subscription("billing", "topics: [{ name: invoices, namespace: billing }]"))
}

#[tokio::test]
async fn an_event_topic_of_another_namespace_without_a_grant_is_access_denied_and_nothing_is_created() {
    let (harness, mut api) = harness();
    harness.fakes.groups.add_topic("invoices", 1);
    let subscription = reads_billing_invoices();
    let topic = serde_json::to_value(billing_invoices("access: { subscribers: [{ namespace: shop }] }")).expect("serializes");
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, BILLING_INVOICES, topic).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "TopicsReady"), ("False", "AccessDenied"));
        assert_eq!(condition(&status.body, "Ready"), ("False", "AccessDenied"));
        let message = crate::fixtures::find_condition(&status.body, "TopicsReady")["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            message,
            "EventTopic billing/invoices does not grant namespace default access (its spec.access.subscribers), or does not exist"
        );
        let event = api.expect_event("default").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("AccessDenied")));
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::await_change(), "woken by the EventTopic watch");
    scenario.await.expect("scenario ran");
    assert!(harness.fakes.topics.calls().is_empty());
    assert_eq!(harness.fakes.groups.committed(GROUP, "invoices", 0), None);
}

#[tokio::test]
async fn a_granted_event_topic_of_another_namespace_is_read_until_the_grant_is_revoked() {
    let (harness, mut api) = harness();
    harness.fakes.groups.add_topic("invoices", 1);
    let subscription = reads_billing_invoices();
    let granted = billing_invoices("access: { subscribers: [{ namespace: default }] }");
    // The watch on EventTopics wakes Subscriptions of other namespaces that read it.
    let woken = super::controller::subscriptions_reading(
        &[Arc::new(DeserializeGuard(Ok(subscription.clone())))],
        &DeserializeGuard(Ok(granted.clone())),
    );
    assert_eq!(woken.len(), 1);
    let granted = serde_json::to_value(granted).expect("serializes");
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, BILLING_INVOICES, granted).await;
        api.expect_not_found(Method::GET, DEPLOYMENT).await;
        api.expect_not_found(Method::GET, KEDA_CRD).await;
        api.expect(Method::PATCH, STATUS, json!({})).await;
        api.expect(Method::PATCH, CONFIG_MAP, applied("ConfigMap", "v1", "billing-consumer")).await;
        let deployment = api.expect(Method::PATCH, DEPLOYMENT, applied("Deployment", "apps/v1", "billing")).await;
        assert_eq!(env(&containers(&deployment.body)[0], "TRIBUTARY_TOPICS"), Some("invoices"));
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "TopicsReady"), ("True", "TopicsReady"));
        (status, api)
    });
    harness.reconcile(&subscription).await.expect("reconciles");
    let (status, mut api) = scenario.await.expect("scenario ran");

    // billing withdraws the grant: no more reconciles of the consumers, and it is reported.
    let subscription = with_status(&subscription, &status);
    let revoked = serde_json::to_value(billing_invoices("")).expect("serializes");
    let scenario = tokio::spawn(async move {
        api.expect(Method::GET, BILLING_INVOICES, revoked).await;
        let status = api.expect(Method::PATCH, STATUS, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", "AccessDenied"));
        assert_eq!(condition(&status.body, "TopicsReady"), ("False", "AccessDenied"));
        assert_eq!(api.expect_event("default").await["reason"], "AccessDenied");
        api.expect_no_more_requests().await;
    });
    assert_eq!(harness.reconcile(&subscription).await.expect("reconciles"), Action::await_change());
    scenario.await.expect("scenario ran");
}
