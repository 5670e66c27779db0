//! The OutboxRelay controller: release a workload the relay no longer occupies → resolve the
//! Secret, EventTopics and Deployment (reads) → validate and build the relay (pure) → server-side
//! apply → read the relay's figures → conditions (pure) → status patch when it changed.
//!
//! A sidecar lives in a Deployment the application owns, so a finalizer takes the container out
//! again when the OutboxRelay goes; the status records the Deployment before every apply, so a
//! change of target or placement cleans up the old one. A standalone Deployment is an owned child
//! and goes with its owner.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info};
use tributary_api::outbox_relay::RelayReport;
use tributary_api::{EventTopic, OutboxRelay, OutboxRelayStatus};

use super::desired::{
    managed_deployments_selector, relay_port, sidecar_field_manager, sidecar_removal_body, standalone_name, PlacementKind, RelayWorkload,
};
use super::plan::desired_workload;
use super::probe::{ready_relays, ProbeSchedule, RelayStatusSource};
use super::resolve::{check_secret, database_tls_problem, lookup_topics, refused_target, target_holder, validate, SidecarOptIn};
use super::status::{build_status, paused_status, ready_reason, reason, recorded_target, Observation, Workload, READY};
use crate::controller_support::{self, has_finalizer, write_status, Lifecycle, Reconciler, Shared};
use crate::error::Result;
use crate::naming::NamingPolicy;
use crate::workload::{kafka_secret_problem, WorkloadSettings};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "outboxrelay";

/// Held while the relay container may be in a Deployment the OutboxRelay does not own.
pub const FINALIZER: &str = "tributary.dev/remove-relay-sidecar";

/// What the OutboxRelay controller needs besides the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What the relays get from the operator's own configuration.
    pub workload: WorkloadSettings,
    /// How Kafka names of each namespace must look: rows routed by prefix stay in the namespace's.
    pub naming: NamingPolicy,
    /// Whether a sidecar target must opt in with its annotation.
    pub sidecar_opt_in: SidecarOptIn,
    /// How often each relay's figures and pods are read again when nothing changed.
    pub status_interval: Duration,
    /// Delay before retrying after the API server failed.
    pub error_retry: Duration,
    /// Reconciles in flight at once.
    pub concurrency: u16,
}

impl Settings {
    pub fn new(workload: WorkloadSettings) -> Self {
        Settings {
            workload,
            naming: NamingPolicy::default(),
            sidecar_opt_in: SidecarOptIn::default(),
            status_interval: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
            concurrency: controller_support::DEFAULT_CONCURRENCY,
        }
    }
}

/// What every reconcile needs.
pub struct Context {
    pub shared: Shared,
    pub relay_status: Arc<dyn RelayStatusSource>,
    pub probe_schedule: ProbeSchedule,
    /// Every OutboxRelay, to find the one holding a sidecar target.
    pub store: Store<DeserializeGuard<OutboxRelay>>,
    pub settings: Settings,
}

impl Context {
    pub fn new(
        shared: Shared,
        relay_status: Arc<dyn RelayStatusSource>,
        store: Store<DeserializeGuard<OutboxRelay>>,
        settings: Settings,
    ) -> Self {
        Context { shared, relay_status, probe_schedule: ProbeSchedule::default(), store, settings }
    }
}

/// Runs the controller until shutdown is signalled. Besides OutboxRelays it watches the
/// standalone Deployments it owns, every Deployment (mapped to the relays naming it as their
/// sidecar target, so a target that appears later gets its relay at once) and EventTopics (mapped
/// to the relays routing to them). Secrets are not watched, which would need the right to list
/// every Secret: a missing one is looked for again every `status_interval`.
pub async fn run(
    shared: Shared,
    relay_status: Arc<dyn RelayStatusSource>,
    settings: Settings,
    lifecycle: Lifecycle<impl FnOnce() + Send + 'static, impl std::future::Future<Output = ()> + Send + Sync + 'static>,
) {
    let client = shared.client.clone();
    let controller = controller_support::controller::<Context>(&client, settings.concurrency, lifecycle.synced);
    let store = controller.store();
    let (by_target, by_topic) = (store.clone(), store.clone());
    let owned = watcher::Config::default().labels(&managed_deployments_selector()).any_semantic();
    let controller = controller
        .owns(Api::<Deployment>::all(client.clone()), owned)
        .watches(Api::<Deployment>::all(client.clone()), watcher::Config::default().any_semantic(), move |deployment| {
            relays_targeting(&by_target.state(), deployment.namespace().as_deref(), &deployment.name_any())
        })
        .watches(Api::<DeserializeGuard<EventTopic>>::all(client), watcher::Config::default().any_semantic(), move |topic| {
            relays_routing_to(&by_topic.state(), topic.namespace().as_deref(), &topic.name_any())
        });
    let context = Arc::new(Context::new(shared, relay_status, store, settings));
    controller_support::run(controller, context, lifecycle.shutdown).await;
}

type RelayRef = ObjectRef<DeserializeGuard<OutboxRelay>>;

fn matching_relays(
    relays: &[Arc<DeserializeGuard<OutboxRelay>>],
    namespace: Option<&str>,
    matches: impl Fn(&OutboxRelay) -> bool,
) -> Vec<RelayRef> {
    relays
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|relay| relay.namespace().as_deref() == namespace && matches(relay))
        .map(|relay| ObjectRef::new(&relay.name_any()).within(namespace.unwrap_or_default()))
        .collect()
}

/// The relays whose sidecar target is the Deployment `namespace/name`.
pub fn relays_targeting(relays: &[Arc<DeserializeGuard<OutboxRelay>>], namespace: Option<&str>, name: &str) -> Vec<RelayRef> {
    matching_relays(relays, namespace, |relay| relay.spec.placement.sidecar.as_ref().is_some_and(|sidecar| sidecar.target_ref.name == name))
}

/// The relays with a route to the EventTopic `namespace/name`.
pub fn relays_routing_to(relays: &[Arc<DeserializeGuard<OutboxRelay>>], namespace: Option<&str>, name: &str) -> Vec<RelayRef> {
    matching_relays(relays, namespace, |relay| relay.spec.routing.routes.iter().any(|route| route.event_topic == name))
}

impl Reconciler for Context {
    type Object = OutboxRelay;
    const CONTROLLER: &'static str = CONTROLLER;
    const INVALID_REASON: &'static str = reason::INVALID_CONFIG;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn error_retry(&self) -> Duration {
        self.settings.error_retry
    }

    fn paused_status(relay: &OutboxRelay, now: Timestamp) -> OutboxRelayStatus {
        paused_status(relay, now)
    }

    /// Even when paused: the sidecar lives in someone else's Deployment, and nothing else would
    /// ever remove it.
    async fn finalize(&self, relay: &OutboxRelay, namespace: &str) -> Result<Action> {
        finalize(relay, namespace, self).await
    }

    async fn apply(&self, relay: &OutboxRelay, namespace: &str) -> Result<Action> {
        reconcile_relay(relay, namespace, self).await
    }
}

async fn reconcile_relay(relay: &OutboxRelay, namespace: &str, context: &Context) -> Result<Action> {
    let shared = &context.shared;
    let relays = context.store.state();
    let holder = target_holder(relay, relays.iter().filter_map(|guard| guard.0.as_ref().ok()));
    // The Deployment whose pods this relay may join now: its target, unless an older relay has it.
    let occupied = relay.spec.placement.sidecar.as_ref().filter(|_| holder.is_none()).map(|sidecar| sidecar.target_ref.name.as_str());
    release_previous_workload(relay, occupied, namespace, context).await?;
    if occupied.is_some() != has_finalizer(relay, FINALIZER) {
        shared.set_finalizer(relay, FINALIZER, occupied.is_some()).await?;
    }

    let secret = check_secret(shared, relay, namespace).await?;
    let database_tls = database_tls_problem(shared, relay, namespace).await?;
    let kafka_secret_problem = kafka_secret_problem(&context.settings.workload, shared, namespace).await?;
    let routes = lookup_topics(shared, relay, namespace).await?;
    let (workload, live) = match (&relay.spec.placement.sidecar, holder) {
        (Some(_), Some(holder)) => (Workload::TargetHeldBy(holder), None),
        (Some(sidecar), None) => match shared.get::<Deployment>(namespace, &sidecar.target_ref.name).await? {
            Some(deployment) => match refused_target(&deployment, relay, context.settings.sidecar_opt_in) {
                // Not the relay's to change: nothing is applied, and whatever runs there stays.
                Some(refused) => (refused, None),
                None => (Workload::Target, Some(deployment)),
            },
            None => (Workload::TargetNotFound, None),
        },
        (None, _) => match shared.get::<Deployment>(namespace, &standalone_name(relay)).await? {
            Some(deployment) if is_controlled_by(&deployment, relay) => (Workload::Own, Some(deployment)),
            Some(_) => (Workload::NameTaken, None),
            None => (Workload::Own, None),
        },
    };
    let invalid = validate(relay, &context.settings.naming).err();
    let mut observation =
        Observation { workload, routes, secret, database_tls, kafka_secret_problem, invalid, ready_relays: None, report: None };

    // For a sidecar, `live` is the target Deployment, whose pods the relay joins.
    let target_pod = live.as_ref().and_then(|deployment| deployment.spec.as_ref()).and_then(|spec| spec.template.spec.as_ref());
    let desired =
        desired_workload(relay, &observation, &context.settings.workload, target_pod.and_then(|pod| pod.security_context.as_ref()));
    let live = match desired {
        Some(workload) => Some(apply_relay(relay, &workload, live.as_ref(), namespace, context).await?),
        None => live,
    };
    if let Some(live) = &live {
        let (ready, report) = observe_relay(relay, live, namespace, context).await?;
        observation.ready_relays = Some(ready);
        observation.report = report;
    }

    let status = build_status(relay, &observation, shared.clock.now());
    let ready = crate::conditions::find(&status.conditions, READY).cloned();
    write_status(context, relay, &status).await?;
    // A warning when the relay stops for a new reason; waiting for pods to start is no warning.
    let warn = |ready: &Condition| {
        ready.status == "False"
            && ready.reason != reason::RELAY_NOT_RUNNING
            && ready_reason(relay.status.as_ref()) != Some(ready.reason.as_str())
    };
    if let Some(ready) = ready.filter(warn) {
        shared.publish(&relay.object_ref(&()), EventType::Warning, &ready.reason, "Reconcile", ready.message).await;
    }
    Ok(if observation.invalid.is_some() { Action::await_change() } else { Action::requeue(context.settings.status_interval) })
}

/// Server-side applies the relay: the container into the target (under the relay's own field
/// manager) or the standalone Deployment (under the operator's). Records the workload in the
/// status first when it is new.
async fn apply_relay(
    relay: &OutboxRelay,
    workload: &RelayWorkload,
    before: Option<&Deployment>,
    namespace: &str,
    context: &Context,
) -> Result<Deployment> {
    let shared = &context.shared;
    let recorded = recorded_target(relay);
    if relay.status.as_ref().map(|status| (&status.placement, &status.target)) != Some((&recorded.placement, &recorded.target)) {
        shared.patch_status::<OutboxRelay>(namespace, &relay.name_any(), &recorded).await?;
    }
    let name = workload.deployment_name();
    let (applied, change) = match workload {
        RelayWorkload::Sidecar { body, .. } => (
            shared.apply_fields::<Deployment>(namespace, &name, &workload.field_manager(), body).await?,
            format!("put the relay container into Deployment {name}"),
        ),
        RelayWorkload::Standalone(deployment) => (shared.apply(deployment.as_ref()).await?, format!("applied Deployment {name}")),
    };
    if before.and_then(|deployment| deployment.metadata.resource_version.as_ref()) != applied.metadata.resource_version.as_ref() {
        info!(%change, "relay applied");
        shared.publish(&relay.object_ref(&()), EventType::Normal, "RelayApplied", "Apply", change).await;
    }
    Ok(applied)
}

/// How many of the workload's pods run a ready relay, and the figures one of them reports (at
/// most every half `status_interval`). A relay that does not answer leaves the figures as they
/// were (logged at debug level).
async fn observe_relay(relay: &OutboxRelay, live: &Deployment, namespace: &str, context: &Context) -> Result<(usize, Option<RelayReport>)> {
    let Some(selector) = live.spec.as_ref().and_then(|spec| Selector::try_from(spec.selector.clone()).ok()) else {
        return Ok((0, None));
    };
    let pods = context.shared.list::<Pod>(namespace, &ListParams::default().labels_from(&selector)).await?;
    let (ready, address) = ready_relays(&pods, relay_port(&relay.spec.placement));
    let Some(address) = address else { return Ok((ready, None)) };
    let key = format!("{namespace}/{}", relay.name_any());
    if !context.probe_schedule.due(&key, context.shared.clock.now(), context.settings.status_interval / 2) {
        return Ok((ready, None));
    }
    match context.relay_status.fetch(address).await {
        Ok(report) => Ok((ready, Some(report))),
        Err(error) => {
            debug!(%error, "the relay did not report its status; keeping the last figures");
            Ok((ready, None))
        }
    }
}

/// Takes the relay out of the workload the status recorded when it no longer runs there: a
/// sidecar target that changed, was given up to an older relay or was left for standalone; or
/// the standalone Deployment when the relay became a sidecar.
async fn release_previous_workload(relay: &OutboxRelay, occupied: Option<&str>, namespace: &str, context: &Context) -> Result<()> {
    let Some(status) = &relay.status else { return Ok(()) };
    let Some(previous) = status.target.as_deref() else { return Ok(()) };
    match status.placement.as_deref() {
        Some(placement) if placement == PlacementKind::Sidecar.as_str() && occupied != Some(previous) => {
            remove_sidecar(relay, namespace, previous, context).await.map(drop)
        }
        Some(placement) if placement == PlacementKind::Standalone.as_str() && PlacementKind::of(relay) == PlacementKind::Sidecar => {
            delete_standalone(relay, namespace, previous, context).await
        }
        _ => Ok(()),
    }
}

/// Removes this relay's container from `target` if its field manager still owns fields there.
/// Reads first, so that it never applies to a Deployment that is gone (an apply would try to
/// create it) and writes nothing when there is nothing of this relay's left.
async fn remove_sidecar(relay: &OutboxRelay, namespace: &str, target: &str, context: &Context) -> Result<bool> {
    let shared = &context.shared;
    let manager = sidecar_field_manager(relay);
    let Some(deployment) = shared.get::<Deployment>(namespace, target).await? else { return Ok(false) };
    let owns_fields = deployment.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager.as_str()) && entry.fields_v1.as_ref().is_some_and(|fields| fields.0 != json!({}))
    });
    if !owns_fields {
        return Ok(false);
    }
    shared.apply_fields::<Deployment>(namespace, target, &manager, &sidecar_removal_body(namespace, target)).await?;
    let note = format!("removed the relay container from Deployment {target}");
    info!(%note, "sidecar removed");
    shared.publish(&relay.object_ref(&()), EventType::Normal, "SidecarRemoved", "Remove", note).await;
    Ok(true)
}

async fn delete_standalone(relay: &OutboxRelay, namespace: &str, name: &str, context: &Context) -> Result<()> {
    let shared = &context.shared;
    if let Some(deployment) = shared.get::<Deployment>(namespace, name).await? {
        if is_controlled_by(&deployment, relay) {
            shared.delete::<Deployment>(namespace, name, &DeleteParams::background()).await?;
            info!(deployment = name, "deleted the standalone relay Deployment");
        }
    }
    Ok(())
}

/// Takes the container out of every Deployment it may be in (the spec's target and the recorded
/// one), then releases the finalizer. Safe to repeat, and when nothing was ever applied.
async fn finalize(relay: &OutboxRelay, namespace: &str, context: &Context) -> Result<Action> {
    if !has_finalizer(relay, FINALIZER) {
        return Ok(Action::await_change());
    }
    let mut targets = BTreeSet::new();
    targets.extend(relay.spec.placement.sidecar.as_ref().map(|sidecar| sidecar.target_ref.name.clone()));
    if let Some(status) = relay.status.as_ref().filter(|status| status.placement.as_deref() == Some(PlacementKind::Sidecar.as_str())) {
        targets.extend(status.target.clone());
    }
    for target in &targets {
        remove_sidecar(relay, namespace, target, context).await?;
    }
    context.shared.set_finalizer(relay, FINALIZER, false).await?;
    Ok(Action::await_change())
}

fn is_controlled_by(deployment: &Deployment, relay: &OutboxRelay) -> bool {
    let uid = relay.metadata.uid.as_deref();
    deployment.owner_references().iter().any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
}
