//! The EventTopic controller: resolve (conflicts) → validate and build desired topics (pure) →
//! sync Kafka → conditions (pure) → status patch when it changed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};
use tributary_api::event_topic::DeletionPolicy;
use tributary_api::{EventTopic, EventTopicStatus};

use super::conflict::{ClaimIndex, Conflict};
use super::desired::desired_topics;
use super::status::{build_status, needs_patch, paused_status, reason, Outcome};
use super::sync::{sync_topics, SyncMode};
use crate::conditions::{Clock, Status};
use crate::controller_support::{
    self, has_finalizer, is_paused, object_name, publish, reconcile_guarded, set_finalizer, InvalidObjectReport, Lifecycle, Reporting,
};
use crate::error::{Error, Result};
use crate::kafka::{KafkaError, TopicAdmin};
use crate::metrics::Metrics;

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
    /// Reconciles in flight at once.
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync_interval: Duration::from_secs(300),
            deletion_timeout: Duration::from_secs(300),
            conflict_retry: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
            concurrency: controller_support::DEFAULT_CONCURRENCY,
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
    /// Which EventTopic claims which Kafka topic, built from `store` at the first reconcile.
    pub claims: Mutex<Option<ClaimIndex>>,
    pub settings: Settings,
}

impl Context {
    /// An older EventTopic's claim on one of `topic`'s Kafka topics, if any; records `topic`'s own.
    fn older_claim(&self, topic: &EventTopic) -> Option<Conflict> {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        let index = claims.get_or_insert_with(|| {
            let all = self.store.state();
            ClaimIndex::of(all.iter().filter_map(|guard| guard.0.as_ref().ok()))
        });
        index.older_claim(topic, |(namespace, name)| {
            self.store.get(&ObjectRef::new(name).within(namespace)).and_then(|guard| guard.0.as_ref().ok().cloned())
        })
    }
}

/// Runs the controller until shutdown is signalled.
pub async fn run(
    client: Client,
    admin: Arc<dyn TopicAdmin>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    settings: Settings,
    lifecycle: Lifecycle<impl FnOnce() + Send + 'static, impl std::future::Future<Output = ()> + Send + Sync + 'static>,
) {
    let api: Api<DeserializeGuard<EventTopic>> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(controller_support::controller_config(settings.concurrency));
    let store = controller.store();
    controller_support::signal_when_synced(store.clone(), lifecycle.synced);
    let context = Arc::new(Context { client, admin, recorder, metrics, clock, store, claims: Mutex::default(), settings });
    let results = controller.graceful_shutdown_on(lifecycle.shutdown).run(reconcile, error_policy, context);
    controller_support::log_failures(results, "EventTopic").await;
}

/// Reconciles one EventTopic, or reports one the API server holds but that does not parse.
pub async fn reconcile(guard: Arc<DeserializeGuard<EventTopic>>, context: Arc<Context>) -> Result<Action> {
    let reporting =
        Reporting { client: &context.client, recorder: &context.recorder, metrics: &context.metrics, clock: context.clock.as_ref() };
    let invalid = InvalidObjectReport {
        reason: reason::INVALID_CONFIG,
        status: |observed_generation, conditions| EventTopicStatus { observed_generation, conditions, ..EventTopicStatus::default() },
    };
    reconcile_guarded(&guard, CONTROLLER, reporting, async |topic| reconcile_topic(topic, &context).await, invalid).await
}

/// Failed reconciles are retried after a pause; the failure is counted by reason.
pub fn error_policy(_guard: Arc<DeserializeGuard<EventTopic>>, error: &Error, context: Arc<Context>) -> Action {
    controller_support::retry_after_failure(&context.metrics, CONTROLLER, error, context.settings.error_retry)
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
    if wants_finalizer != has_finalizer(topic, FINALIZER) {
        set_finalizer(&api, topic, FINALIZER, wants_finalizer).await?;
    }

    let outcome = reconcile_kafka(context.admin.as_ref(), topic, context.older_claim(topic), SyncMode::Apply).await;
    patch_status_if_changed(&api, topic, build_status(topic, &outcome, now), context).await?;

    let reference = topic.object_ref(&());
    match outcome {
        Outcome::Synced(reports) => {
            let ready = super::status::ready_condition(&Outcome::Synced(reports.clone()), None);
            if reports.iter().any(|report| report.plan.changes_anything()) {
                info!(message = %ready.message, "Kafka topic changed");
                publish(&context.recorder, &reference, EventType::Normal, ready.reason, "SyncKafka", ready.message.clone()).await;
            }
            if ready.status == Status::False {
                publish(&context.recorder, &reference, EventType::Warning, ready.reason, "SyncKafka", ready.message).await;
            }
            Ok(Action::requeue(context.settings.resync_interval))
        }
        Outcome::InvalidSpec(message) => {
            publish(&context.recorder, &reference, EventType::Warning, reason::INVALID_CONFIG, "Validate", message).await;
            Ok(Action::await_change())
        }
        Outcome::Conflict { .. } => Ok(Action::requeue(context.settings.conflict_retry)),
        Outcome::KafkaUnavailable(message) => Err(Error::Kafka { object, source: KafkaError::Unavailable(message) }),
    }
}

/// The Kafka stage of a reconcile, which the offline `apply` runs too: an older EventTopic's claim
/// on one of the Kafka topics (`older_claim`) wins; otherwise the spec is turned into topics and
/// Kafka synced.
pub async fn reconcile_kafka(admin: &dyn TopicAdmin, topic: &EventTopic, older_claim: Option<Conflict>, mode: SyncMode) -> Outcome {
    if let Some(conflict) = older_claim {
        return Outcome::Conflict { owner: conflict.owner, topic: conflict.topic };
    }
    match desired_topics(topic) {
        Err(invalid) => Outcome::InvalidSpec(invalid.to_string()),
        Ok(desired) => match sync_topics(admin, &desired, mode).await {
            Ok(reports) => Outcome::Synced(reports),
            Err(error) => Outcome::KafkaUnavailable(error.to_string()),
        },
    }
}

/// Deletes the Kafka topics (when this EventTopic holds the finalizer and owns them), then
/// releases the finalizer. Safe to repeat, and safe when the topics were never created.
async fn finalize(topic: &EventTopic, api: &TopicApi, context: &Context) -> Result<Action> {
    if !has_finalizer(topic, FINALIZER) {
        return Ok(Action::await_change());
    }
    let reference = topic.object_ref(&());
    if let Some(conflict) = context.older_claim(topic) {
        let note = format!("Kafka topic {:?} belongs to EventTopic {}; it is not deleted", conflict.topic, conflict.owner);
        publish(&context.recorder, &reference, EventType::Normal, "FinalizerReleased", "Delete", note).await;
    } else if is_paused(topic) {
        let note = format!("reconciliation is paused ({}); the Kafka topics are left in place", tributary_api::PAUSED_ANNOTATION);
        publish(&context.recorder, &reference, EventType::Warning, "FinalizerReleased", "Delete", note).await;
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
        publish(&context.recorder, &reference, EventType::Warning, "KafkaTopicDeletionAbandoned", "Delete", note).await;
    } else {
        info!(topics = ?kafka_topic_names(topic), "deleted Kafka topics");
    }
    set_finalizer(api, topic, FINALIZER, false).await?;
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

#[instrument(skip_all)]
async fn patch_status_if_changed(api: &TopicApi, topic: &EventTopic, status: EventTopicStatus, context: &Context) -> Result<()> {
    // Patch at most every half resync when only lastSyncTime moved, so that a resync still
    // shows up as a fresh lastSyncTime but our own patch does not trigger another one.
    if !needs_patch(topic.status.as_ref(), &status, context.settings.resync_interval / 2) {
        return Ok(());
    }
    controller_support::patch_status(api, topic, &status).await
}
