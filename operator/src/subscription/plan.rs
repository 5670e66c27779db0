//! The stages of a Subscription that the controller and the offline `apply` share: the pure
//! resolve-and-validate step from fetched EventTopics to a runnable [`Workload`], and the
//! children built from it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use tributary_api::Subscription;

use super::desired;
use super::resolve::{self, Fetched, SpecError, TopicsProblem, Workload};
use crate::naming::NamingPolicy;
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

/// The Subscription resolved against its EventTopics (`fetched`, in spec order), checked against
/// every other Subscription (`others`) and the operator's naming policy.
pub fn workload<'a, 'o>(
    subscription: &'a Subscription,
    fetched: &[Fetched],
    others: impl IntoIterator<Item = &'o Subscription>,
    naming: &NamingPolicy,
) -> Result<Workload<'a>, Blocked> {
    let namespace = subscription.metadata.namespace.as_deref().unwrap_or_default();
    let topics = resolve::resolve_topics(namespace, fetched).map_err(Blocked::Topics)?;
    if let Some(owner) = resolve::find_group_conflict(subscription, others) {
        return Err(Blocked::GroupTaken { owner });
    }
    let workload = resolve::workload(subscription, topics).map_err(Blocked::Invalid)?;
    resolve::check_naming(&workload, naming).map_err(Blocked::Invalid)?;
    Ok(workload)
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

/// The field manager that holds the consumer Deployment's replicas between the built-in scaler
/// and KEDA's HPA.
pub const REPLICAS_HANDOFF_MANAGER: &str = "tributary-operator-replicas-handoff";

/// The replicas to hand over before the operator's apply stops setting them: when KEDA takes over
/// a Deployment whose replicas the operator's apply owns. Server-side apply resets a field that
/// its only owner drops (to 1 replica here) until the HPA acts; applied first at the current
/// count under [`REPLICAS_HANDOFF_MANAGER`], the field stays as it is, and the HPA takes it over
/// when it scales.
pub fn replicas_handoff(existing: Option<&Deployment>, replicas: Replicas) -> Option<i32> {
    let existing = existing?;
    if !matches!(replicas, Replicas::Keda { .. }) {
        return None;
    }
    let owns_replicas = existing.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(crate::FIELD_MANAGER)
            && entry.fields_v1.as_ref().is_some_and(|fields| fields.0.pointer("/f:spec/f:replicas").is_some())
    });
    owns_replicas.then(|| existing.spec.as_ref().and_then(|spec| spec.replicas)).flatten()
}

/// The apply body that holds `replicas` under [`REPLICAS_HANDOFF_MANAGER`].
pub fn replicas_handoff_body(name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": name }, "spec": { "replicas": replicas } })
}
