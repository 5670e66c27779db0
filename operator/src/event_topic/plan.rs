//! The difference between a desired topic and the topic Kafka has (pure).

use std::collections::BTreeMap;
use std::fmt;

use super::desired::DesiredTopic;
use crate::kafka::TopicState;

/// A config value to set, with what Kafka had (for `--dry-run` output and events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub from: Option<String>,
    pub to: String,
}

/// A change the spec asks for that Kafka cannot make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    PartitionDecrease { actual: i32, desired: i32 },
    ReplicationFactorChange { actual: i32, desired: i32 },
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::PartitionDecrease { actual, desired } => {
                write!(f, "has {actual} partitions and Kafka cannot reduce them to {desired}")
            }
            Blocker::ReplicationFactorChange { actual, desired } => {
                write!(
                    f,
                    "has replication factor {actual}; changing it to {desired} needs a partition reassignment, which Tributary does not do"
                )
            }
        }
    }
}

/// What to do to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPlan {
    pub create: bool,
    /// Raise the partition count from `.0` to `.1`.
    pub add_partitions: Option<(i32, i32)>,
    pub config_changes: BTreeMap<String, ConfigChange>,
    pub blockers: Vec<Blocker>,
}

impl TopicPlan {
    /// Whether Kafka needs any change.
    pub fn changes_anything(&self) -> bool {
        self.create || self.add_partitions.is_some() || !self.config_changes.is_empty()
    }
}

/// Plans one topic: create it when missing; otherwise grow partitions and correct drift of the
/// configs the spec manages. Keys outside the spec, and ignored keys, are never touched.
pub fn plan_topic(desired: &DesiredTopic, actual: Option<&TopicState>) -> TopicPlan {
    let Some(actual) = actual else {
        return TopicPlan { create: true, ..TopicPlan::default() };
    };
    let spec = &desired.spec;
    let mut plan = TopicPlan::default();
    if spec.partitions > actual.partitions {
        plan.add_partitions = Some((actual.partitions, spec.partitions));
    } else if spec.partitions < actual.partitions {
        plan.blockers.push(Blocker::PartitionDecrease { actual: actual.partitions, desired: spec.partitions });
    }
    if let Some(desired_rf) = spec.replication_factor {
        if desired_rf != actual.replication_factor {
            plan.blockers.push(Blocker::ReplicationFactorChange { actual: actual.replication_factor, desired: desired_rf });
        }
    }
    plan.config_changes = spec
        .configs
        .iter()
        .filter(|(key, _)| !desired.ignored_keys.contains(key))
        .filter(|(key, value)| !same_config_value(key, actual.configs.get(*key).map(String::as_str), value))
        .map(|(key, value)| (key.clone(), ConfigChange { from: actual.configs.get(key).cloned(), to: value.clone() }))
        .collect();
    plan
}

/// Compares config values as Kafka means them: list-valued keys ignore order and spacing.
fn same_config_value(key: &str, actual: Option<&str>, desired: &str) -> bool {
    let Some(actual) = actual else { return false };
    if key == "cleanup.policy" {
        let normalize = |value: &str| {
            let mut parts: Vec<String> = value.split(',').map(|part| part.trim().to_owned()).collect();
            parts.sort();
            parts
        };
        normalize(actual) == normalize(desired)
    } else {
        actual == desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::desired::TopicRole;
    use crate::kafka::TopicSpec;

    fn desired(partitions: i32, configs: &[(&str, &str)], ignored: &[&str]) -> DesiredTopic {
        DesiredTopic {
            role: TopicRole::Main,
            spec: TopicSpec {
                name: "orders".into(),
                partitions,
                replication_factor: None,
                configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            ignored_keys: ignored.iter().map(|k| k.to_string()).collect(),
            inherited: Default::default(),
        }
    }

    fn actual(partitions: i32, configs: &[(&str, &str)]) -> TopicState {
        TopicState {
            name: "orders".into(),
            partitions,
            replication_factor: 1,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn missing_topic_is_created() {
        let plan = plan_topic(&desired(3, &[], &[]), None);
        assert!(plan.create && plan.changes_anything());
    }

    #[test]
    fn matching_topic_is_adopted_without_changes() {
        let plan =
            plan_topic(&desired(3, &[("retention.ms", "1000")], &[]), Some(&actual(3, &[("retention.ms", "1000"), ("segment.ms", "5")])));
        assert_eq!(plan, TopicPlan::default());
    }

    #[test]
    fn drift_of_managed_keys_is_corrected_and_other_keys_left_alone() {
        let plan =
            plan_topic(&desired(3, &[("retention.ms", "1000")], &[]), Some(&actual(3, &[("retention.ms", "5000"), ("segment.ms", "5")])));
        assert_eq!(
            plan.config_changes,
            BTreeMap::from([("retention.ms".to_owned(), ConfigChange { from: Some("5000".into()), to: "1000".into() })])
        );
    }

    #[test]
    fn ignored_keys_are_never_reverted() {
        let plan = plan_topic(&desired(3, &[("retention.ms", "1000")], &["retention.ms"]), Some(&actual(3, &[("retention.ms", "9")])));
        assert!(plan.config_changes.is_empty());
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        assert_eq!(plan_topic(&desired(6, &[], &[]), Some(&actual(3, &[]))).add_partitions, Some((3, 6)));
        let shrink = plan_topic(&desired(2, &[], &[]), Some(&actual(3, &[])));
        assert_eq!(shrink.add_partitions, None);
        assert_eq!(shrink.blockers, vec![Blocker::PartitionDecrease { actual: 3, desired: 2 }]);
    }

    #[test]
    fn replication_factor_changes_are_reported_not_attempted() {
        let mut wanted = desired(3, &[], &[]);
        wanted.spec.replication_factor = Some(3);
        let plan = plan_topic(&wanted, Some(&actual(3, &[])));
        assert_eq!(plan.blockers, vec![Blocker::ReplicationFactorChange { actual: 1, desired: 3 }]);
        assert!(!plan.changes_anything());
    }

    #[test]
    fn cleanup_policy_lists_compare_as_sets() {
        let plan = plan_topic(
            &desired(1, &[("cleanup.policy", "compact,delete")], &[]),
            Some(&actual(1, &[("cleanup.policy", "delete, compact")])),
        );
        assert!(plan.config_changes.is_empty());
    }
}
