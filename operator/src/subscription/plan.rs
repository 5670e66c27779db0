//! The stages of a Subscription that the controller and the offline `apply` share: the pure
//! resolve-and-validate step from fetched EventTopics to a runnable [`Workload`], and the
//! children built from it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use kube::core::error_boundary::DeserializeGuard;
use tributary_api::{EventTopic, Subscription};

use super::desired;
use super::resolve::{self, SpecError, TopicsProblem, Workload};
use crate::workload::WorkloadSettings;

/// Why a Subscription cannot run yet, found before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Referenced EventTopics are missing or not Ready.
    Topics(TopicsProblem),
    /// An older Subscription (`namespace/name`) uses the same consumer group.
    GroupTaken {
        owner: String,
    },
    Invalid(SpecError),
}

/// The Subscription resolved against its EventTopics (`fetched`, in spec order, `None` for a
/// missing one) and checked against every other Subscription (`others`).
pub fn workload<'a, 'o>(
    subscription: &'a Subscription,
    fetched: &[(String, Option<DeserializeGuard<EventTopic>>)],
    others: impl IntoIterator<Item = &'o Subscription>,
) -> Result<Workload<'a>, Blocked> {
    let topics = resolve::resolve_topics(fetched).map_err(Blocked::Topics)?;
    if let Some(owner) = resolve::find_group_conflict(subscription, others) {
        return Err(Blocked::GroupTaken { owner });
    }
    resolve::workload(subscription, topics).map_err(Blocked::Invalid)
}

/// Who sets the consumer Deployment's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// The built-in scaler: this count.
    Builtin(i32),
    /// KEDA's HPA; `hold_at_zero` pauses it at zero replicas (a replay).
    Keda { hold_at_zero: bool },
}

/// The Kubernetes objects a Subscription runs as.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    /// With KEDA only.
    pub scaled_object: Option<DynamicObject>,
}

pub fn children(workload: &Workload<'_>, settings: &WorkloadSettings, replicas: Replicas) -> Children {
    let (count, scaled_object) = match replicas {
        Replicas::Builtin(count) => (Some(count), None),
        Replicas::Keda { hold_at_zero } => (None, Some(desired::scaled_object(workload, settings, hold_at_zero))),
    };
    Children {
        config_map: desired::config_map(workload, settings),
        deployment: desired::deployment(workload, settings, count),
        scaled_object,
    }
}
