//! OutboxRelay → a `tributary-relay` container, in the application's Deployment (sidecar) or in
//! a Deployment of its own (standalone), moving a PostgreSQL outbox table to Kafka.

pub mod controller;
pub mod desired;
#[cfg(test)]
mod mock_api_tests;
pub mod plan;
pub mod probe;
pub mod resolve;
pub mod status;

pub use controller::{Context, Settings, CONTROLLER, FINALIZER};

#[cfg(test)]
pub(crate) mod test_support {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;
    use tributary_api::{OutboxRelay, OutboxRelaySpec};

    use super::desired::PORT_NAME;
    use crate::relay_container::CONTAINER_NAME;
    use crate::workload::WorkloadSettings;

    /// An OutboxRelay in namespace `default` with the given spec (YAML, defaults applied by serde).
    pub fn outbox_relay(name: &str, spec_yaml: &str) -> OutboxRelay {
        let spec: OutboxRelaySpec = serde_yaml::from_str(spec_yaml).expect("test spec parses");
        let mut relay = OutboxRelay::new(name, spec);
        relay.metadata.namespace = Some("default".into());
        relay
    }

    pub fn settings() -> WorkloadSettings {
        WorkloadSettings { bootstrap_servers: "kafka:9092".into(), relay_image: "relay:test".into(), kafka_properties_secret: None }
    }

    /// A pod with an application container and a relay container (ready or not), with the
    /// relay's port named in its spec when `port` is given.
    pub fn relay_pod(name: &str, ip: &str, relay_ready: bool, port: Option<i32>) -> Pod {
        let ports = port.map(|port| json!([{"name": PORT_NAME, "containerPort": port}]));
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app"}, {"name": CONTAINER_NAME, "ports": ports}]},
            "status": {"podIP": ip, "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "image": "app", "imageID": ""},
                {"name": CONTAINER_NAME, "ready": relay_ready, "restartCount": 0, "image": "relay", "imageID": ""},
            ]},
        }))
        .expect("a pod")
    }
}
