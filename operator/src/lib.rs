//! The Tributary operator: reconciles `tributary.dev` resources into Kafka and workloads.
//!
//! `main.rs` only parses the command line; everything it runs lives here so that tests reach it.

pub mod apply;
pub mod cli;
pub mod clock;
pub mod conditions;
pub mod controller_support;
pub mod crdgen;
pub mod error;
pub mod event_topic;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod outbox_relay;
pub mod pod_security;
pub mod rbac;
pub mod relay_container;
pub mod runtime;
pub mod seniority;
pub mod subscription;
pub mod workload;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tributary-operator";
