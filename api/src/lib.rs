//! The `tributary.dev/v1alpha1` API: the custom resources teams `kubectl apply` to describe their
//! event topology, and the pieces of it that both the operator and the relay need.
//!
//! Field doc comments become `kubectl explain` text, so they are written for users.

// kube-derive repeats `type_ = …` across printcolumn(…) entries, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

// First: its macro gives the enums of the modules below their flag spelling.
#[macro_use]
pub mod relay_contract;

pub mod duration;
pub mod event_topic;
pub mod outbox_relay;
pub mod patterns;
pub mod pod_security;
pub mod subscription;
pub mod validation;

pub use event_topic::{EventTopic, EventTopicSpec, EventTopicStatus};
pub use outbox_relay::{OutboxRelay, OutboxRelaySpec, OutboxRelayStatus};
pub use subscription::{Subscription, SubscriptionSpec, SubscriptionStatus};

/// API group of every Tributary resource.
pub const GROUP: &str = "tributary.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get tributary` lists every Tributary resource.
pub const CATEGORY: &str = "tributary";

/// Setting this annotation to `"true"` stops the operator from reconciling the object; the Ready
/// condition says so. Anything else (or its absence) resumes reconciling.
pub const PAUSED_ANNOTATION: &str = "tributary.dev/paused";

/// A `conditions` list as Kubernetes API conventions want it: a list-map keyed by `type`, so
/// server-side apply merges conditions one by one.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Every CRD Tributary installs, in the order `crds/` lists them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![EventTopic::crd(), Subscription::crd(), OutboxRelay::crd()]
}
