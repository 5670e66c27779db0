//! Mock-API level: two whole operators (all three controllers, leader election) against one
//! in-memory API server, with in-memory Kafka.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::json;
use tributary_testkit::{FakeApiServer, ResourceKey};

use super::*;
use crate::clock::SystemClock;
use crate::kafka::{FakeConsumerGroups, FakeTopicAdmin};
use crate::outbox_relay::probe::HttpRelayStatus;
use crate::workload::WorkloadSettings;

const NAMESPACE: &str = "tributary-system";

fn event_topics() -> ResourceKey {
    ResourceKey::new("tributary.dev", "v1alpha1", "eventtopics")
}

/// One operator instance: its own registry, Kafka fakes shared with the other instance.
struct Instance {
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    fn start(server: &FakeApiServer, identity: &str, admin: &Arc<FakeTopicAdmin>) -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let workload =
            WorkloadSettings { bootstrap_servers: "kafka:9092".into(), relay_image: "relay:test".into(), kafka_properties_secret: None };
        let operator = Operator {
            client: server.client(),
            admin: admin.clone(),
            groups: Arc::new(FakeConsumerGroups::new()),
            relay_status: Arc::new(HttpRelayStatus { timeout: Duration::from_millis(100) }),
            clock: Arc::new(SystemClock),
            metrics,
            reporter: Reporter { controller: crate::FIELD_MANAGER.into(), instance: Some(identity.into()) },
            event_topics: event_topic::Settings::default(),
            subscriptions: subscription::Settings::new(workload.clone()),
            outbox_relays: outbox_relay::Settings::new(workload),
        };
        let lease = LeaseSettings {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
            ..LeaseSettings::new(NAMESPACE, identity)
        };
        let readiness = Readiness::default();
        let shutdown = Shutdown::never();
        let task = tokio::spawn(run(operator, Some(lease), readiness.clone(), shutdown.clone()));
        Instance { registry: Arc::new(registry), readiness, shutdown, task }
    }

    /// EventTopic reconciles this instance has run.
    fn reconciles(&self) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics render");
        text.lines()
            .find_map(|line| line.strip_prefix("tributary_reconciles_total{controller=\"eventtopic\"} "))
            .map_or(0, |count| count.parse().expect("a count"))
    }
}

fn ready_topics(server: &FakeApiServer) -> usize {
    server.count(&event_topics(), |topic| {
        topic["status"]["conditions"]
            .as_array()
            .is_some_and(|conditions| conditions.iter().any(|condition| condition["type"] == "Ready" && condition["status"] == "True"))
    })
}

async fn wait_until(condition: impl Fn() -> bool, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn of_two_operators_only_the_leader_reconciles_and_the_standby_takes_over_when_it_dies() {
    let server = FakeApiServer::start().await.expect("fake API server");
    for name in ["orders", "payments", "refunds"] {
        server.put(
            &event_topics(),
            json!({
                "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
                "metadata": { "name": name, "namespace": "shop" },
                "spec": { "partitions": 3 },
            }),
        );
    }
    let admin = Arc::new(FakeTopicAdmin::new());
    let first = Instance::start(&server, "operator-a", &admin);
    wait_until(|| ready_topics(&server) == 3, Duration::from_secs(10), "the leader made every EventTopic Ready").await;
    wait_until(|| first.readiness.is_ready(), Duration::from_secs(5), "the leader turned ready once synced").await;

    let second = Instance::start(&server, "operator-b", &admin);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(second.readiness.is_ready(), "a standby serves its probes as ready");
    assert_eq!(second.reconciles(), 0, "the standby reconciled while the leader held the lease");
    assert!(first.reconciles() >= 3);

    first.task.abort();
    let killed = tokio::time::Instant::now();
    // A new EventTopic shows who reconciles now.
    server.put(
        &event_topics(),
        json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
            "metadata": { "name": "shipments", "namespace": "shop" },
            "spec": { "partitions": 1 },
        }),
    );
    wait_until(|| ready_topics(&server) == 4, Duration::from_secs(10), "the new leader reconciled").await;
    assert!(killed.elapsed() < Duration::from_secs(4), "takeover took {:?} with a 2 s lease", killed.elapsed());
    assert!(second.reconciles() >= 1);
    assert!(admin.topic("shipments").is_some(), "the new leader created the Kafka topic");

    // Shut down, the leader stops its controllers and hands the lease back.
    second.shutdown.request();
    tokio::time::timeout(Duration::from_secs(5), second.task).await.expect("stopped on request").expect("without panicking");
    let lease = server.get(&ResourceKey::new("coordination.k8s.io", "v1", "leases"), NAMESPACE, "tributary-operator").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], serde_json::Value::Null, "released: {lease}");
}

fn key(group: &str, plural: &str) -> ResourceKey {
    let version = match group {
        "" | "apps" | "coordination.k8s.io" | "apiextensions.k8s.io" => "v1",
        _ => "v1alpha1",
    };
    ResourceKey::new(group, version, plural)
}

/// `namespace/name` of `resource` as the server has it now, with `edit` applied to it.
fn edit(server: &FakeApiServer, resource: &ResourceKey, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut object = server.get(resource, "shop", name).expect("the object exists");
    edit(&mut object);
    server.put(resource, object);
}

/// A whole operator, through every kind of work it does, uses every right rbac.rs (and so the
/// chart) grants and no other: a right nobody uses fails here, one the code needs but the chart
/// lacks fails the mock-API tests and here.
#[tokio::test]
async fn a_whole_operator_uses_every_right_its_roles_grant_and_no_other() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let tributary = |plural: &str| key(tributary_api::GROUP, plural);
    // KEDA is installed.
    server.put(
        &key("apiextensions.k8s.io", "customresourcedefinitions"),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "scaledobjects.keda.sh"}}),
    );
    // An EventTopic with a finalizer, and one whose topic is someone else's (a warning Event that recurs).
    for (name, spec) in [("orders", json!({"deletionPolicy": "Delete"})), ("taken", json!({}))] {
        server.put(
            &tributary("eventtopics"),
            json!({"apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        );
    }
    let admin = Arc::new(FakeTopicAdmin::new());
    admin.insert_topic(crate::kafka::TopicState {
        name: "taken".into(),
        partitions: 1,
        replication_factor: 1,
        configs: Default::default(),
    });
    let groups = Arc::new(FakeConsumerGroups::new());
    groups.add_topic("orders", 1);
    // A Subscription scaled by KEDA, and an OutboxRelay standing alone.
    server.put(
        &tributary("subscriptions"),
        json!({"apiVersion": "tributary.dev/v1alpha1", "kind": "Subscription", "metadata": {"name": "billing", "namespace": "shop"},
               "spec": {"topics": [{"name": "orders"}], "template": {"image": "billing:1"}, "scaling": {"engine": "Keda"}}}),
    );
    server.put(
        &key("", "secrets"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-db", "namespace": "shop"}, "data": {"url": "cG9zdGdyZXM6Ly9kYg=="}}),
    );
    server.put(
        &tributary("outboxrelays"),
        json!({"apiVersion": "tributary.dev/v1alpha1", "kind": "OutboxRelay", "metadata": {"name": "shop-outbox", "namespace": "shop"},
               "spec": {"database": {"urlSecretRef": {"name": "shop-db"}}, "routing": {"routes": [{"aggregateType": "Order", "eventTopic": "orders"}]},
                        "placement": {"standalone": {}}}}),
    );
    server.put(
        &key("apps", "deployments"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "shop-api", "namespace": "shop", "annotations": {"tributary.dev/outbox-relay": "shop-outbox"}},
               "spec": {"selector": {"matchLabels": {"app": "shop-api"}}, "template": {"metadata": {"labels": {"app": "shop-api"}}, "spec": {"containers": [{"name": "app", "image": "shop:1"}]}}}}),
    );

    let workload =
        WorkloadSettings { bootstrap_servers: "kafka:9092".into(), relay_image: "relay:test".into(), kafka_properties_secret: None };
    let fast = Duration::from_millis(300);
    let operator = Operator {
        client: server.client(),
        admin,
        groups,
        relay_status: Arc::new(HttpRelayStatus { timeout: Duration::from_millis(100) }),
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::register(&mut Registry::default())),
        reporter: Reporter { controller: crate::FIELD_MANAGER.into(), instance: Some("operator-a".into()) },
        event_topics: event_topic::Settings { resync_interval: fast, ..event_topic::Settings::default() },
        subscriptions: subscription::Settings {
            scale_interval: fast,
            resync_interval: fast,
            ..subscription::Settings::new(workload.clone())
        },
        outbox_relays: outbox_relay::Settings { status_interval: fast, ..outbox_relay::Settings::new(workload) },
    };
    let lease = LeaseSettings { retry_period: Duration::from_millis(200), ..LeaseSettings::new(NAMESPACE, "operator-a") };
    let shutdown = Shutdown::never();
    let task = tokio::spawn(run(operator, Some(lease), Readiness::default(), shutdown.clone()));

    // Once KEDA scales the Subscription and the relay runs alone, they change course: the
    // ScaledObject and the standalone Deployment are deleted.
    let exists = |resource: &ResourceKey, name: &str| server.get(resource, "shop", name).is_some();
    let scaled_object = key("keda.sh", "scaledobjects");
    wait_until(|| exists(&scaled_object, "billing"), Duration::from_secs(10), "the ScaledObject was applied").await;
    wait_until(
        || server.get(&tributary("subscriptions"), "shop", "billing").is_some_and(|s| s["status"]["engine"] == "Keda"),
        Duration::from_secs(10),
        "the Subscription recorded KEDA",
    )
    .await;
    edit(&server, &tributary("subscriptions"), "billing", |subscription| subscription["spec"]["scaling"]["engine"] = json!("Builtin"));
    wait_until(|| exists(&key("apps", "deployments"), "shop-outbox-relay"), Duration::from_secs(10), "the standalone relay was applied")
        .await;
    edit(&server, &tributary("outboxrelays"), "shop-outbox", |relay| {
        relay["spec"]["placement"] = json!({"sidecar": {"targetRef": {"name": "shop-api"}}});
    });

    let used = || -> BTreeSet<crate::rbac::Permission> {
        server.accesses().into_iter().map(|access| (access.group, access.resource, access.verb)).collect()
    };
    let granted = crate::rbac::granted();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !granted.is_subset(&used()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.request();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stopped on request").expect("without panicking");
    let used = used();
    let unused: Vec<_> = granted.difference(&used).collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(unused.is_empty() && ungranted.is_empty(), "granted but never used: {unused:?}\nused but not granted: {ungranted:?}");
}
