//! EventTopic → a Kafka topic and its dead-letter topic.

#[cfg(test)]
mod broker_tests;
pub mod conflict;
pub mod controller;
pub mod desired;
#[cfg(test)]
mod mock_api_tests;
pub mod names;
pub mod ownership;
pub mod plan;
pub mod status;
pub mod sync;

pub use controller::{Context, Settings, CONTROLLER, FINALIZER};

#[cfg(test)]
pub(crate) mod test_support {
    use tributary_api::{EventTopic, EventTopicSpec};

    /// An EventTopic in namespace `default` with the given spec (YAML, defaults applied by serde).
    pub fn event_topic(name: &str, spec_yaml: &str) -> EventTopic {
        let spec: EventTopicSpec =
            serde_yaml::from_str(if spec_yaml.trim().is_empty() { "{}" } else { spec_yaml }).expect("test spec parses");
        let mut topic = EventTopic::new(name, spec);
        topic.metadata.namespace = Some("default".into());
        topic
    }
}
