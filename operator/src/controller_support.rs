//! The one shape of every controller: a [`Shared`] context (client, Event recorder, metrics,
//! clock) embedded in each controller's own, a [`Reconciler`] implemented by that context, and
//! one guarded opening ([`reconcile`]) before its stages: an object that does not parse is
//! reported, a missing namespace is an error, a deleted object is finalized, a paused one only
//! shows that it is paused. Writes to Kubernetes go through [`Shared`]'s helpers, which apply
//! under [`FIELD_MANAGER`] and name the object in every error.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{warn, Instrument};
use tributary_api::{EventTopic, EventTopicStatus, OutboxRelay, OutboxRelayStatus, Subscription, SubscriptionStatus};

use crate::clock::Clock;
use crate::conditions::{merge_conditions, DesiredCondition, Status};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::FIELD_MANAGER;

/// A namespaced resource a controller watches, through a `DeserializeGuard`.
pub trait Watched:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// The condition in which an object that does not match the schema is reported.
const READY: &str = "Ready";

/// Reconciles one controller runs at once unless told otherwise: enough to keep Kafka and the API
/// server busy, few enough that thousands of objects at start-up do not become thousands of
/// Kafka requests (each holding a blocking thread) and API calls in flight at once.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// What the runtime gives each controller: whom to tell once its watch has synced, and when to
/// stop (reconciles in flight finish first).
pub struct Lifecycle<R, S> {
    pub synced: R,
    pub shutdown: S,
}

/// What every controller's context holds.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// A Tributary resource as the controllers write its status: every kind's status has
/// `observedGeneration` and `conditions`.
pub trait HasStatus {
    type Status: Serialize + PartialEq + Debug + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    /// A status of only a generation and conditions (for an object that does not parse).
    fn conditions_only(observed_generation: Option<i64>, conditions: Vec<Condition>) -> Self::Status;
}

macro_rules! has_status {
    ($($kind:ident => $status:ident),*) => {$(
        impl HasStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn conditions_only(observed_generation: Option<i64>, conditions: Vec<Condition>) -> $status {
                $status { observed_generation, conditions, ..$status::default() }
            }
        }
    )*};
}

has_status!(EventTopic => EventTopicStatus, Subscription => SubscriptionStatus, OutboxRelay => OutboxRelayStatus);

/// The status of an object of kind `R::Object`.
pub type StatusOf<R> = <<R as Reconciler>::Object as HasStatus>::Status;

/// A controller's context: its stages after the guarded opening, and what the opening needs to
/// know about its kind.
pub trait Reconciler: Send + Sync + Sized + 'static {
    type Object: Watched + HasStatus;
    /// Names the controller in metrics and logs.
    const CONTROLLER: &'static str;
    /// The Ready reason of an object that does not match the schema.
    const INVALID_REASON: &'static str;

    fn shared(&self) -> &Shared;
    /// Delay before a failed reconcile runs again.
    fn error_retry(&self) -> Duration;
    fn paused_status(object: &Self::Object, now: Timestamp) -> StatusOf<Self>;
    /// Whether `new` is to be written over the object's `current` status: when it differs, unless
    /// the controller holds back writes that only refresh a timestamp.
    fn status_due(&self, current: Option<&StatusOf<Self>>, new: &StatusOf<Self>) -> bool {
        current != Some(new)
    }
    /// An object being deleted (its finalizer, if any, is released here).
    fn finalize(&self, object: &Self::Object, namespace: &str) -> impl Future<Output = Result<Action>> + Send;
    /// The stages of a live, unpaused object.
    fn apply(&self, object: &Self::Object, namespace: &str) -> impl Future<Output = Result<Action>> + Send;
}

/// The controller over `R`'s objects, with the runtime configuration every controller shares;
/// `synced` is called once its store has synced.
pub fn controller<R: Reconciler>(
    client: &Client,
    concurrency: u16,
    synced: impl FnOnce() + Send + 'static,
) -> Controller<DeserializeGuard<R::Object>> {
    let api: Api<DeserializeGuard<R::Object>> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    signal_when_synced(controller.store(), synced);
    controller
}

/// Runs `controller` with `context` until `shutdown` (reconciles in flight finish first),
/// logging failed reconciles.
pub async fn run<R: Reconciler>(
    controller: Controller<DeserializeGuard<R::Object>>,
    context: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let kind = R::Object::kind(&());
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, context)
        .for_each(|result| {
            if let Err(error) = result {
                warn!(%error, "{kind} reconcile failed");
            }
            futures::future::ready(())
        })
        .await;
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

/// One reconcile, the same for every controller: an object that did not parse is reported (a
/// warning Event and a Ready=False status, see [`report_invalid_object`]); otherwise, in a span
/// naming the object, a deleted object is finalized, a paused one shows that it is paused, and a
/// live one goes through the controller's stages. A failure publishes a `ReconcileFailed`
/// warning Event. Every run is counted.
pub async fn reconcile<R: Reconciler>(guard: Arc<DeserializeGuard<R::Object>>, context: Arc<R>) -> Result<Action> {
    let started = Instant::now();
    let shared = context.shared();
    let result = match &guard.0 {
        Ok(object) => {
            let span = tracing::info_span!(
                "reconcile",
                controller = R::CONTROLLER,
                namespace = object.namespace().unwrap_or_default(),
                name = object.name_any()
            );
            let result = open(object, context.as_ref()).instrument(span).await;
            if let Err(error) = &result {
                shared.publish(&object.object_ref(&()), EventType::Warning, "ReconcileFailed", "Reconcile", error.to_string()).await;
            }
            result
        }
        Err(invalid) => report_invalid_object::<R>(invalid, shared).await,
    };
    shared.metrics.reconciled(R::CONTROLLER, started.elapsed());
    result
}

async fn open<R: Reconciler>(object: &R::Object, context: &R) -> Result<Action> {
    let namespace = object.namespace().ok_or_else(|| Error::MissingNamespace { object: object_name(object) })?;
    if object.meta().deletion_timestamp.is_some() {
        return context.finalize(object, &namespace).await;
    }
    if is_paused(object) {
        write_status(context, object, &R::paused_status(object, context.shared().clock.now())).await?;
        return Ok(Action::await_change());
    }
    context.apply(object, &namespace).await
}

/// What every controller does with a failed reconcile: counts the failure by reason and retries
/// after the controller's `error_retry`.
pub fn error_policy<R: Reconciler>(_guard: Arc<DeserializeGuard<R::Object>>, error: &Error, context: Arc<R>) -> Action {
    context.shared().metrics.failed(R::CONTROLLER, error.metric_label());
    Action::requeue(context.error_retry())
}

/// Writes `status` when the controller finds it due (see [`Reconciler::status_due`]); returns
/// whether it did.
pub async fn write_status<R: Reconciler>(context: &R, object: &R::Object, status: &StatusOf<R>) -> Result<bool> {
    if !context.status_due(object.status(), status) {
        return Ok(false);
    }
    let namespace = object.namespace().unwrap_or_default();
    context.shared().patch_status::<R::Object>(&namespace, &object.name_any(), status).await?;
    Ok(true)
}

/// Reports an object whose spec does not match the schema this operator knows (for example one
/// written before a CRD upgrade), without stalling the watch for everything else: a warning
/// Event, and a status that says so.
async fn report_invalid_object<R: Reconciler>(invalid: &InvalidObject, shared: &Shared) -> Result<Action> {
    let kind = R::Object::kind(&());
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    let message = format!("cannot read {kind} {namespace}/{name}: {}", invalid.error);
    warn!(%namespace, %name, error = %invalid.error, "{kind} does not match the schema");
    let reference = ObjectReference {
        api_version: Some(R::Object::api_version(&()).into_owned()),
        kind: Some(kind.into_owned()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid: invalid.metadata.uid.clone(),
        resource_version: invalid.metadata.resource_version.clone(),
        ..ObjectReference::default()
    };
    shared.publish(&reference, EventType::Warning, R::INVALID_REASON, "Validate", message.clone()).await;
    let ready = DesiredCondition::new(READY, Status::False, R::INVALID_REASON, message);
    let generation = invalid.metadata.generation;
    let status = R::Object::conditions_only(generation, merge_conditions(&[], &[ready], generation, shared.clock.now()));
    shared.patch_status::<R::Object>(&namespace, &name, &status).await?;
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

/// `Kind namespace/name`, as errors and messages name an object.
pub fn object_name<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{} {}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// `kube::Error` with the operation and the object it was about.
fn kube_error(operation: &'static str, kind: &str, namespace: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let object = if namespace.is_empty() { format!("{kind} {name}") } else { format!("{kind} {namespace}/{name}") };
    move |source| Error::Kube { operation, object, source }
}

impl Shared {
    pub fn new(client: Client, reporter: Reporter, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Shared { client, recorder, metrics, clock }
    }

    /// Publishes an Event; a failure to do so is logged, never fails the reconcile.
    pub async fn publish(&self, reference: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            warn!(%error, reason, "could not publish Kubernetes Event");
        }
    }

    /// The object `namespace/name`, if it exists.
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(kube_error("get", &K::kind(&()), namespace, name))
    }

    /// The cluster-scoped object `name`, if it exists.
    pub async fn get_cluster_scoped<K>(&self, name: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        api.get_opt(name).await.map_err(kube_error("get", &K::kind(&()), "", name))
    }

    /// The objects in `namespace` that `params` selects.
    pub async fn list<K>(&self, namespace: &str, params: &ListParams) -> Result<Vec<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let kind = K::kind(&());
        let selector = params.label_selector.as_deref().unwrap_or_default();
        Ok(api.list(params).await.map_err(kube_error("list", &format!("{kind}s"), namespace, selector))?.items)
    }

    /// Server-side applies a whole child object under [`FIELD_MANAGER`], taking over fields
    /// others set.
    pub async fn apply<K>(&self, child: &K) -> Result<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let (namespace, name) = (child.meta().namespace.clone().unwrap_or_default(), child.name_any());
        self.apply_fields(&namespace, &name, FIELD_MANAGER, child).await
    }

    /// [`Shared::apply`] for a kind known only at run time, as `resource` describes it.
    pub async fn apply_dynamic(&self, child: &DynamicObject, resource: &ApiResource) -> Result<DynamicObject> {
        let (namespace, name) = (child.metadata.namespace.clone().unwrap_or_default(), child.name_any());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, resource);
        let failed = kube_error("server-side apply", &resource.kind, &namespace, &name);
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(child)).await.map_err(failed)
    }

    /// Server-side applies `fields` of the object `namespace/name` under `manager`: the fields
    /// that manager owns become exactly these.
    pub async fn apply_fields<K>(&self, namespace: &str, name: &str, manager: &str, fields: &(impl Serialize + Debug)) -> Result<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let failed = kube_error("server-side apply", &K::kind(&()), namespace, name);
        api.patch(name, &PatchParams::apply(manager).force(), &Patch::Apply(fields)).await.map_err(failed)
    }

    /// Server-side applies the whole status of `namespace/name` under [`FIELD_MANAGER`].
    /// Written through the guard type, so a response this operator cannot parse still counts.
    pub async fn patch_status<K: Watched>(&self, namespace: &str, name: &str, status: &impl Serialize) -> Result<()> {
        let api: Api<DeserializeGuard<K>> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        let failed = kube_error("status patch", &K::kind(&()), namespace, name);
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map(drop).map_err(failed)
    }

    /// Adds or removes `finalizer` by server-side apply: applying the list with or without it
    /// changes only the entry this field manager owns, never finalizers of others.
    pub async fn set_finalizer<K: Watched>(&self, object: &K, finalizer: &str, present: bool) -> Result<()> {
        let finalizers: Vec<&str> = if present { vec![finalizer] } else { Vec::new() };
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let patch =
            json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": { "name": name, "finalizers": finalizers } });
        self.apply_fields::<DeserializeGuard<K>>(&namespace, &name, FIELD_MANAGER, &patch).await.map(drop)
    }

    /// Deletes `namespace/name`; `false` when it was not there.
    pub async fn delete<K>(&self, namespace: &str, name: &str, params: &DeleteParams) -> Result<bool>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        deleted(Api::<K>::namespaced(self.client.clone(), namespace).delete(name, params).await, &K::kind(&()), namespace, name)
    }

    /// [`Shared::delete`] for a kind known only at run time, as `resource` describes it.
    pub async fn delete_dynamic(&self, namespace: &str, name: &str, resource: &ApiResource, params: &DeleteParams) -> Result<bool> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, resource);
        deleted(api.delete(name, params).await, &resource.kind, namespace, name)
    }
}

/// The outcome of a delete: a 404 means there was nothing to delete.
fn deleted<T>(result: Result<T, kube::Error>, kind: &str, namespace: &str, name: &str) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(source) => Err(kube_error("delete", kind, namespace, name)(source)),
    }
}
