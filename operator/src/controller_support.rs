//! What every controller shares: the reconcile run around a watched object (span, metrics, a
//! warning Event on failure, objects that do not parse), the pause annotation, finalizers and
//! status by server-side apply, and Events.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{warn, Instrument};

use crate::conditions::{merge_conditions, Clock, DesiredCondition, Status};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::FIELD_MANAGER;

/// A namespaced resource a controller watches, through a `DeserializeGuard`.
pub trait Watched: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug {}

impl<K> Watched for K where K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug {}

/// The condition in which an object that does not match the schema is reported.
const READY: &str = "Ready";

/// Reconciles one controller runs at once unless told otherwise: enough to keep Kafka and the API
/// server busy, few enough that thousands of objects at start-up do not become thousands of
/// Kafka requests (each holding a blocking thread) and API calls in flight at once.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// The runtime configuration every controller runs with.
pub fn controller_config(concurrency: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(concurrency)
}

/// What the runtime gives each controller: whom to tell once its watch has synced, and when to
/// stop (reconciles in flight finish first).
pub struct Lifecycle<R, S> {
    pub synced: R,
    pub shutdown: S,
}

/// How often a waiter looks again whether a store has synced.
const SYNC_POLL: Duration = Duration::from_millis(100);

/// Calls `ready` once the controller's store has synced with the API server.
///
/// kube's readiness signal is a oneshot channel, which keeps the waker of only the last task that
/// polled it, and the controller's own runner waits on the same signal: a second waiter is never
/// woken. So this one polls again on a timer instead of relying on being woken.
pub fn signal_when_synced<K>(store: Store<K>, ready: impl FnOnce() + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(SYNC_POLL, store.wait_until_ready()).await {
                Ok(Ok(())) => return ready(),
                // The writer is gone: the controller stopped before it synced.
                Ok(Err(_)) => return,
                Err(_elapsed) => continue,
            }
        }
    });
}

/// Drives a controller's stream of reconcile results until it ends, logging the failures.
pub async fn log_failures<T, E: std::fmt::Display>(results: impl Stream<Item = Result<T, E>>, kind: &'static str) {
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "{kind} reconcile failed");
            }
        })
        .await;
}

/// Where a reconcile run reports to.
#[derive(Clone, Copy)]
pub struct Reporting<'a> {
    pub client: &'a kube::Client,
    pub recorder: &'a Recorder,
    pub metrics: &'a Metrics,
    pub clock: &'a dyn Clock,
}

/// How a controller reports an object that does not parse: the reason of its Event and Ready
/// condition (the controller's own reason for an invalid spec), and its status, made from the
/// generation and conditions.
pub struct InvalidObjectReport<F> {
    pub reason: &'static str,
    pub status: F,
}

/// One reconcile of a watched object: `reconcile` for an object that parsed, in a span naming
/// it, with a `ReconcileFailed` warning Event when it fails. An object that did not parse is
/// reported as `invalid` says (see [`report_invalid_object`]). Either way the run is counted.
pub async fn reconcile_guarded<K, S>(
    guard: &DeserializeGuard<K>,
    controller: &'static str,
    reporting: Reporting<'_>,
    reconcile: impl AsyncFnOnce(&K) -> Result<Action>,
    invalid: InvalidObjectReport<impl FnOnce(Option<i64>, Vec<Condition>) -> S>,
) -> Result<Action>
where
    K: Watched,
    S: Serialize,
{
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(object) => {
            let span =
                tracing::info_span!("reconcile", controller, namespace = object.namespace().unwrap_or_default(), name = object.name_any());
            let result = reconcile(object).instrument(span).await;
            if let Err(error) = &result {
                let reference = object.object_ref(&());
                publish(reporting.recorder, &reference, EventType::Warning, "ReconcileFailed", "Reconcile", error.to_string()).await;
            }
            result
        }
        Err(object) => report_invalid_object::<K, S>(object, reporting, invalid).await,
    };
    reporting.metrics.reconciled(controller, started.elapsed());
    result
}

/// What a controller's `error_policy` does: counts the failure by reason and retries after `retry`.
pub fn retry_after_failure(metrics: &Metrics, controller: &'static str, error: &Error, retry: std::time::Duration) -> Action {
    metrics.failed(controller, error.metric_label());
    Action::requeue(retry)
}

/// Reports an object whose spec does not match the schema this operator knows (for example one
/// written before a CRD upgrade), without stalling the watch for everything else: a warning
/// Event, and a status that says so.
async fn report_invalid_object<K, S>(
    invalid: &InvalidObject,
    reporting: Reporting<'_>,
    report: InvalidObjectReport<impl FnOnce(Option<i64>, Vec<Condition>) -> S>,
) -> Result<Action>
where
    K: Watched,
    S: Serialize,
{
    let kind = K::kind(&());
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    let message = format!("cannot read {kind} {namespace}/{name}: {}", invalid.error);
    warn!(%namespace, %name, error = %invalid.error, "{kind} does not match the schema");
    let reference = ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(kind.clone().into_owned()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid: invalid.metadata.uid.clone(),
        resource_version: invalid.metadata.resource_version.clone(),
        ..ObjectReference::default()
    };
    publish(reporting.recorder, &reference, EventType::Warning, report.reason, "Validate", message.clone()).await;
    let ready = DesiredCondition::new(READY, Status::False, report.reason, message);
    let generation = invalid.metadata.generation;
    let status = (report.status)(generation, merge_conditions(&[], &[ready], generation, reporting.clock.now()));
    let api: Api<DeserializeGuard<K>> = Api::namespaced(reporting.client.clone(), &namespace);
    apply_status(&api, &name, &status).await.map_err(|source| Error::Kube {
        operation: "status patch",
        object: format!("{kind} {namespace}/{name}"),
        source,
    })?;
    Ok(Action::await_change())
}

/// Whether the object carries the pause annotation set to `"true"`.
pub fn is_paused(object: &impl Resource) -> bool {
    object.annotations().get(tributary_api::PAUSED_ANNOTATION).is_some_and(|value| value == "true")
}

/// Whether the object holds `finalizer`.
pub fn has_finalizer(object: &impl Resource, finalizer: &str) -> bool {
    object.finalizers().iter().any(|held| held == finalizer)
}

/// Adds or removes `finalizer` by server-side apply: applying the list with or without it
/// changes only the entry this field manager owns, never finalizers of others.
pub async fn set_finalizer<K>(api: &Api<DeserializeGuard<K>>, object: &K, finalizer: &str, present: bool) -> Result<()>
where
    K: Watched,
{
    let finalizers: Vec<&str> = if present { vec![finalizer] } else { Vec::new() };
    let name = object.name_any();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "finalizers": finalizers },
    });
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map_err(|source| Error::Kube {
        operation: "finalizer patch",
        object: object_name(object),
        source,
    })?;
    Ok(())
}

/// Server-side applies the whole status of `object`, named for errors.
pub async fn patch_status<K>(api: &Api<DeserializeGuard<K>>, object: &K, status: &impl Serialize) -> Result<()>
where
    K: Watched,
{
    apply_status(api, &object.name_any(), status).await.map_err(|source| Error::Kube {
        operation: "status patch",
        object: object_name(object),
        source,
    })
}

/// `Kind namespace/name`, as errors and messages name an object.
pub fn object_name<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{} {}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// Server-side applies the whole status of an object.
async fn apply_status<K>(api: &Api<DeserializeGuard<K>>, name: &str, status: &impl Serialize) -> Result<(), kube::Error>
where
    K: Watched,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map(drop)
}

/// Publishes an Event; a failure to do so is logged, never fails the reconcile.
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(error) = recorder.publish(&event, reference).await {
        warn!(%error, reason, "could not publish Kubernetes Event");
    }
}
