//! Mock-API level: two whole operators (all three controllers, leader election) against one
//! in-memory API server, with in-memory Kafka.

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
