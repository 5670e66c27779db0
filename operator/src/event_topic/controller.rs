//! The EventTopic controller: resolve (conflicts) → validate and build desired topics (pure) →
//! sync Kafka → conditions (pure) → status patch when it changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn, Instrument};
use tributary_api::event_topic::DeletionPolicy;
use tributary_api::{EventTopic, EventTopicStatus};

use super::conflict::find_conflict;
use super::desired::desired_topics;
use super::status::{build_status, needs_patch, paused_status, reason, Outcome};
use super::sync::{sync_topics, SyncMode};
use crate::conditions::{Clock, DesiredCondition, Status};
use crate::error::{Error, Result};
use crate::kafka::{KafkaError, TopicAdmin};
use crate::metrics::Metrics;
use crate::FIELD_MANAGER;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "eventtopic";

/// Held while the Kafka topics of an EventTopic with `deletionPolicy: Delete` still exist.
pub const FINALIZER: &str = "tributary.dev/delete-kafka-topics";

/// Timing of the EventTopic controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often each topic is compared with Kafka even when nothing changed (drift correction).
    pub resync_interval: Duration,
    /// How long deletion waits for an unreachable Kafka before releasing the finalizer anyway.
    pub deletion_timeout: Duration,
    /// How soon an EventTopic that lost a conflict looks again (the owner may have gone).
    pub conflict_retry: Duration,
    /// Delay before retrying after Kafka or the API server failed.
    pub error_retry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync_interval: Duration::from_secs(300),
            deletion_timeout: Duration::from_secs(300),
            conflict_retry: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
        }
    }
}

/// Writes go through the guard type as well, so a response holding an object this operator cannot
/// parse still counts as a successful write.
type TopicApi = Api<DeserializeGuard<EventTopic>>;

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub admin: Arc<dyn TopicAdmin>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Every EventTopic in the cluster, to find other claims on the same Kafka topic.
    pub store: Store<DeserializeGuard<EventTopic>>,
    pub settings: Settings,
}

/// Runs the controller until shutdown is signalled.
pub async fn run(
    client: Client,
    admin: Arc<dyn TopicAdmin>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    settings: Settings,
    ready: impl FnOnce() + Send + 'static,
) {
    let api: Api<DeserializeGuard<EventTopic>> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    let readiness_store = store.clone();
    tokio::spawn(async move {
        if readiness_store.wait_until_ready().await.is_ok() {
            ready();
        }
    });
    let context = Arc::new(Context { client, admin, recorder, metrics, clock, store, settings });
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "EventTopic reconcile failed");
            }
        })
        .await;
}

/// Reconciles one EventTopic, or reports one the API server holds but that does not parse.
pub async fn reconcile(guard: Arc<DeserializeGuard<EventTopic>>, context: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(topic) => {
            let span = tracing::info_span!(
                "reconcile",
                controller = CONTROLLER,
                namespace = topic.namespace().unwrap_or_default(),
                name = topic.name_any()
            );
            let result = reconcile_topic(topic, &context).instrument(span).await;
            if let Err(error) = &result {
                publish(&context, &topic.object_ref(&()), EventType::Warning, "ReconcileFailed", "Reconcile", error.to_string()).await;
            }
            result
        }
        Err(invalid) => report_invalid_object(invalid, &context).await,
    };
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

/// Failed reconciles are retried after a pause; the failure is counted by reason.
pub fn error_policy(_guard: Arc<DeserializeGuard<EventTopic>>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.failed(CONTROLLER, error.metric_label());
    Action::requeue(context.settings.error_retry)
}

async fn reconcile_topic(topic: &EventTopic, context: &Context) -> Result<Action> {
    let object = object_name(topic);
    let namespace = topic.namespace().ok_or_else(|| Error::MissingNamespace { object: object.clone() })?;
    let api: TopicApi = Api::namespaced(context.client.clone(), &namespace);
    let now = context.clock.now();

    if topic.metadata.deletion_timestamp.is_some() {
        return finalize(topic, &api, context).await;
    }
    if is_paused(topic) {
        patch_status_if_changed(&api, topic, paused_status(topic, now), context).await?;
        return Ok(Action::await_change());
    }
    let wants_finalizer = topic.spec.deletion_policy == DeletionPolicy::Delete;
    if wants_finalizer != has_finalizer(topic) {
        set_finalizer(&api, topic, wants_finalizer).await?;
    }

    let all_topics = context.store.state();
    let conflict = find_conflict(topic, all_topics.iter().filter_map(|guard| guard.0.as_ref().ok()));
    let outcome = match (conflict, desired_topics(topic)) {
        (Some(conflict), _) => Outcome::Conflict { owner: conflict.owner, topic: conflict.topic },
        (None, Err(invalid)) => Outcome::InvalidSpec(invalid.to_string()),
        (None, Ok(desired)) => match sync_topics(context.admin.as_ref(), &desired, SyncMode::Apply).await {
            Ok(reports) => Outcome::Synced(reports),
            Err(error) => Outcome::KafkaUnavailable(error.to_string()),
        },
    };
    patch_status_if_changed(&api, topic, build_status(topic, &outcome, now), context).await?;

    let reference = topic.object_ref(&());
    match outcome {
        Outcome::Synced(reports) => {
            let ready = super::status::ready_condition(&Outcome::Synced(reports.clone()), None);
            if reports.iter().any(|report| report.plan.changes_anything()) {
                info!(message = %ready.message, "Kafka topic changed");
                publish(context, &reference, EventType::Normal, ready.reason, "SyncKafka", ready.message.clone()).await;
            }
            if ready.status == Status::False {
                publish(context, &reference, EventType::Warning, ready.reason, "SyncKafka", ready.message).await;
            }
            Ok(Action::requeue(context.settings.resync_interval))
        }
        Outcome::InvalidSpec(message) => {
            publish(context, &reference, EventType::Warning, reason::INVALID_CONFIG, "Validate", message).await;
            Ok(Action::await_change())
        }
        Outcome::Conflict { .. } => Ok(Action::requeue(context.settings.conflict_retry)),
        Outcome::KafkaUnavailable(message) => Err(Error::Kafka { object, source: KafkaError::Unavailable(message) }),
    }
}

/// Deletes the Kafka topics (when this EventTopic holds the finalizer and owns them), then
/// releases the finalizer. Safe to repeat, and safe when the topics were never created.
async fn finalize(topic: &EventTopic, api: &TopicApi, context: &Context) -> Result<Action> {
    if !has_finalizer(topic) {
        return Ok(Action::await_change());
    }
    let reference = topic.object_ref(&());
    let all_topics = context.store.state();
    if let Some(conflict) = find_conflict(topic, all_topics.iter().filter_map(|guard| guard.0.as_ref().ok())) {
        let note = format!("Kafka topic {:?} belongs to EventTopic {}; it is not deleted", conflict.topic, conflict.owner);
        publish(context, &reference, EventType::Normal, "FinalizerReleased", "Delete", note).await;
    } else if is_paused(topic) {
        let note = format!("reconciliation is paused ({}); the Kafka topics are left in place", tributary_api::PAUSED_ANNOTATION);
        publish(context, &reference, EventType::Warning, "FinalizerReleased", "Delete", note).await;
    } else if let Err(error) = delete_kafka_topics(topic, context.admin.as_ref()).await {
        let waited = topic
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|since| context.clock.now().duration_since(since.0).unsigned_abs())
            .unwrap_or_default();
        if waited < context.settings.deletion_timeout {
            return Err(Error::Kafka { object: object_name(topic), source: error });
        }
        let note = format!(
            "could not delete the Kafka topics for {waited:?} ({error}); releasing the finalizer so the namespace can go. Delete {} by hand if they still exist",
            kafka_topic_names(topic).join(" and ")
        );
        warn!(%note, "releasing finalizer without deleting Kafka topics");
        publish(context, &reference, EventType::Warning, "KafkaTopicDeletionAbandoned", "Delete", note).await;
    } else {
        info!(topics = ?kafka_topic_names(topic), "deleted Kafka topics");
    }
    set_finalizer(api, topic, false).await?;
    Ok(Action::await_change())
}

async fn delete_kafka_topics(topic: &EventTopic, admin: &dyn TopicAdmin) -> Result<(), KafkaError> {
    for name in kafka_topic_names(topic) {
        admin.delete_topic(&name).await?;
    }
    Ok(())
}

fn kafka_topic_names(topic: &EventTopic) -> Vec<String> {
    let mut names = vec![topic.kafka_topic_name().to_owned()];
    names.extend(topic.dead_letter_topic_name());
    names
}

/// Reports an object whose spec does not match the schema this operator knows (for example one
/// written before a CRD upgrade), without stalling the watch for everything else.
async fn report_invalid_object(invalid: &InvalidObject, context: &Context) -> Result<Action> {
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    let message = format!("cannot read EventTopic {namespace}/{name}: {}", invalid.error);
    warn!(%namespace, %name, error = %invalid.error, "EventTopic does not match the schema");
    let reference = ObjectReference {
        api_version: Some(EventTopic::api_version(&()).into_owned()),
        kind: Some(EventTopic::kind(&()).into_owned()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid: invalid.metadata.uid.clone(),
        resource_version: invalid.metadata.resource_version.clone(),
        ..ObjectReference::default()
    };
    publish(context, &reference, EventType::Warning, reason::INVALID_CONFIG, "Validate", message.clone()).await;
    let ready = DesiredCondition::new(super::status::READY, Status::False, reason::INVALID_CONFIG, message);
    let status = EventTopicStatus {
        observed_generation: invalid.metadata.generation,
        conditions: crate::conditions::merge_conditions(&[], &[ready], invalid.metadata.generation, context.clock.now()),
        ..EventTopicStatus::default()
    };
    let api: TopicApi = Api::namespaced(context.client.clone(), &namespace);
    apply_status(&api, &name, &status).await.map_err(|source| Error::Kube {
        operation: "status patch",
        object: format!("EventTopic {namespace}/{name}"),
        source,
    })?;
    Ok(Action::await_change())
}

fn is_paused(topic: &EventTopic) -> bool {
    topic.annotations().get(tributary_api::PAUSED_ANNOTATION).is_some_and(|value| value == "true")
}

fn has_finalizer(topic: &EventTopic) -> bool {
    topic.finalizers().iter().any(|finalizer| finalizer == FINALIZER)
}

/// Adds or removes our finalizer by server-side apply: applying the list with or without it
/// changes only the entry this field manager owns, never finalizers of others.
async fn set_finalizer(api: &TopicApi, topic: &EventTopic, present: bool) -> Result<()> {
    let finalizers: Vec<&str> = if present { vec![FINALIZER] } else { Vec::new() };
    let patch = json!({
        "apiVersion": EventTopic::api_version(&()),
        "kind": EventTopic::kind(&()),
        "metadata": { "name": topic.name_any(), "finalizers": finalizers },
    });
    api.patch(&topic.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Kube { operation: "finalizer patch", object: object_name(topic), source })?;
    Ok(())
}

#[instrument(skip_all)]
async fn patch_status_if_changed(api: &TopicApi, topic: &EventTopic, status: EventTopicStatus, context: &Context) -> Result<()> {
    // Patch at most every half resync when only lastSyncTime moved, so that a resync still
    // shows up as a fresh lastSyncTime but our own patch does not trigger another one.
    if !needs_patch(topic.status.as_ref(), &status, context.settings.resync_interval / 2) {
        return Ok(());
    }
    apply_status(api, &topic.name_any(), &status).await.map_err(|source| Error::Kube {
        operation: "status patch",
        object: object_name(topic),
        source,
    })
}

async fn apply_status(api: &TopicApi, name: &str, status: &EventTopicStatus) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": EventTopic::api_version(&()),
        "kind": EventTopic::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map(drop)
}

/// Publishes an Event; a failure to do so is logged, never fails the reconcile.
async fn publish(context: &Context, reference: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(error) = context.recorder.publish(&event, reference).await {
        warn!(%error, reason, "could not publish Kubernetes Event");
    }
}

fn object_name(topic: &EventTopic) -> String {
    format!("EventTopic {}/{}", topic.namespace().unwrap_or_default(), topic.name_any())
}
