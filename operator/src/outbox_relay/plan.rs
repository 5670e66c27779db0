//! The step from what a reconcile observed to the relay it applies, shared by the controller and
//! the offline `apply`.

use k8s_openapi::api::core::v1::PodSecurityContext;
use tributary_api::OutboxRelay;

use super::desired::{relay_workload, RelayWorkload};
use super::status::Observation;
use crate::workload::WorkloadSettings;

/// The relay to apply, or `None` while something it needs is missing (the status says what):
/// whatever relay runs then keeps running as it is. A sidecar adapts to the securityContext of
/// the pods it joins, `target_pod` (`None` when unknown, as offline).
pub fn desired_workload(
    relay: &OutboxRelay,
    observation: &Observation,
    settings: &WorkloadSettings,
    target_pod: Option<&PodSecurityContext>,
) -> Option<RelayWorkload> {
    observation.routes_to_apply().map(|routes| relay_workload(relay, routes, settings, target_pod))
}
