//! Subscription → a consumer Deployment (with the push dispatcher sidecar), its dead-letter topic
//! and its autoscaler (a KEDA ScaledObject, or the built-in scaler).

#[cfg(test)]
mod broker_tests;
pub mod controller;
pub mod desired;
pub mod kafka;
#[cfg(test)]
mod mock_api_tests;
pub mod ownership;
pub mod plan;
pub mod replay;
pub mod resolve;
pub mod scaler;
pub mod status;

pub use controller::{Context, Settings, CONTROLLER};

#[cfg(test)]
pub(crate) mod test_support {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::Value;
    use tributary_api::{EventTopic, EventTopicStatus, Subscription, SubscriptionSpec};

    /// The spec every test Subscription starts from; `extra_yaml` replaces its top-level fields.
    const BASE: &str = "topics: [{ name: orders }]\ntemplate: { image: ghcr.io/shop/billing:1.0.0 }";

    /// A Subscription in namespace `default` with the base spec plus `extra_yaml` (serde defaults
    /// applied).
    pub fn subscription(name: &str, extra_yaml: &str) -> Subscription {
        let mut spec: Value = serde_yaml::from_str(BASE).expect("base spec parses");
        if !extra_yaml.trim().is_empty() {
            let extra: Value = serde_yaml::from_str(extra_yaml).expect("test spec parses");
            for (key, value) in extra.as_object().expect("a mapping").clone() {
                spec[key] = value;
            }
        }
        let spec: SubscriptionSpec = serde_json::from_value(spec).expect("a Subscription spec");
        let mut subscription = Subscription::new(name, spec);
        subscription.metadata.namespace = Some("default".into());
        subscription
    }

    /// The EventTopic, with a status that says its Kafka topic is Ready (named as under `Free`).
    pub fn ready(mut topic: EventTopic) -> EventTopic {
        let condition = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Created".into(),
            message: String::new(),
            observed_generation: topic.metadata.generation,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        };
        topic.status = Some(EventTopicStatus {
            conditions: vec![condition],
            topic_name: Some(topic.requested_topic_name().to_owned()),
            dead_letter_topic: topic.requested_dead_letter_name(),
            ..EventTopicStatus::default()
        });
        topic
    }
}
