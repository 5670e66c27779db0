//! An in-memory Kafka for unit and controller tests: real bookkeeping of topics, partitions and
//! configs, plus switches for the failures the reconciler must handle.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{KafkaError, TopicAdmin, TopicLayout, TopicSpec, TopicState};

/// Replication factor the fake broker gives topics created without one.
const DEFAULT_REPLICATION_FACTOR: i32 = 1;

#[derive(Debug, Default)]
struct FakeCluster {
    topics: BTreeMap<String, TopicState>,
    unavailable: bool,
    create_partitions_unsupported: bool,
    /// Config keys the fake broker rejects as unknown.
    rejected_config_keys: Vec<String>,
    /// Every mutating call, in order, for assertions such as "nothing was touched".
    calls: Vec<String>,
}

/// An in-memory [`TopicAdmin`].
#[derive(Debug, Default)]
pub struct FakeTopicAdmin {
    cluster: Mutex<FakeCluster>,
}

impl FakeTopicAdmin {
    pub fn new() -> Self {
        Self::default()
    }

    fn cluster(&self) -> MutexGuard<'_, FakeCluster> {
        // A test that panicked while holding the lock has failed already; keep its data readable.
        self.cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call answers `Unavailable` while set.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.cluster().unavailable = unavailable;
    }

    /// CreatePartitions answers `Unsupported`, as on Tansu.
    pub fn set_create_partitions_unsupported(&self, unsupported: bool) {
        self.cluster().create_partitions_unsupported = unsupported;
    }

    /// Creating or altering a topic with this config key fails with `InvalidConfig`.
    pub fn reject_config_key(&self, key: &str) {
        self.cluster().rejected_config_keys.push(key.to_owned());
    }

    /// Puts a topic in place as if another tool had created it.
    pub fn insert_topic(&self, state: TopicState) {
        self.cluster().topics.insert(state.name.clone(), state);
    }

    /// Changes a config behind the operator's back.
    pub fn set_config_out_of_band(&self, topic: &str, key: &str, value: &str) {
        if let Some(state) = self.cluster().topics.get_mut(topic) {
            state.configs.insert(key.to_owned(), value.to_owned());
        }
    }

    pub fn topic(&self, name: &str) -> Option<TopicState> {
        self.cluster().topics.get(name).cloned()
    }

    pub fn topic_names(&self) -> Vec<String> {
        self.cluster().topics.keys().cloned().collect()
    }

    /// Mutating calls made so far, e.g. `create orders`, `set_configs orders retention.ms`.
    pub fn calls(&self) -> Vec<String> {
        self.cluster().calls.clone()
    }

    fn check_available(cluster: &FakeCluster) -> Result<(), KafkaError> {
        if cluster.unavailable {
            Err(KafkaError::Unavailable("fake broker is down".into()))
        } else {
            Ok(())
        }
    }

    fn check_config_keys<'a>(cluster: &FakeCluster, topic: &str, mut keys: impl Iterator<Item = &'a String>) -> Result<(), KafkaError> {
        match keys.find(|key| cluster.rejected_config_keys.contains(key)) {
            Some(key) => Err(KafkaError::InvalidConfig { topic: topic.to_owned(), message: format!("unknown config {key:?}") }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl TopicAdmin for FakeTopicAdmin {
    async fn describe_topic(&self, name: &str) -> Result<Option<TopicState>, KafkaError> {
        let cluster = self.cluster();
        Self::check_available(&cluster)?;
        Ok(cluster.topics.get(name).cloned())
    }

    async fn topic_layout(&self, name: &str) -> Result<Option<TopicLayout>, KafkaError> {
        Ok(self
            .describe_topic(name)
            .await?
            .map(|state| TopicLayout { partitions: state.partitions, replication_factor: state.replication_factor }))
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), KafkaError> {
        let mut cluster = self.cluster();
        Self::check_available(&cluster)?;
        Self::check_config_keys(&cluster, &spec.name, spec.configs.keys())?;
        cluster.calls.push(format!("create {}", spec.name));
        cluster.topics.entry(spec.name.clone()).or_insert_with(|| TopicState {
            name: spec.name.clone(),
            partitions: spec.partitions,
            replication_factor: spec.replication_factor.unwrap_or(DEFAULT_REPLICATION_FACTOR),
            configs: spec.configs.clone(),
        });
        Ok(())
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<(), KafkaError> {
        let mut cluster = self.cluster();
        Self::check_available(&cluster)?;
        if cluster.create_partitions_unsupported {
            return Err(KafkaError::Unsupported { operation: "CreatePartitions", message: "fake broker".into() });
        }
        cluster.calls.push(format!("create_partitions {name} {total}"));
        match cluster.topics.get_mut(name) {
            Some(state) if state.partitions < total => {
                state.partitions = total;
                Ok(())
            }
            Some(state) => Err(KafkaError::Rejected {
                operation: "CreatePartitions",
                topic: name.to_owned(),
                message: format!("topic already has {} partitions", state.partitions),
            }),
            None => Err(KafkaError::Rejected { operation: "CreatePartitions", topic: name.to_owned(), message: "unknown topic".into() }),
        }
    }

    async fn set_configs(&self, name: &str, configs: &std::collections::BTreeMap<String, String>) -> Result<(), KafkaError> {
        let mut cluster = self.cluster();
        Self::check_available(&cluster)?;
        Self::check_config_keys(&cluster, name, configs.keys())?;
        let keys: Vec<&str> = configs.keys().map(String::as_str).collect();
        cluster.calls.push(format!("set_configs {name} {}", keys.join(",")));
        let state = cluster.topics.get_mut(name).ok_or_else(|| KafkaError::Rejected {
            operation: "IncrementalAlterConfigs",
            topic: name.to_owned(),
            message: "unknown topic".into(),
        })?;
        state.configs.extend(configs.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }

    async fn delete_topic(&self, name: &str) -> Result<(), KafkaError> {
        let mut cluster = self.cluster();
        Self::check_available(&cluster)?;
        cluster.calls.push(format!("delete {name}"));
        cluster.topics.remove(name);
        Ok(())
    }
}
