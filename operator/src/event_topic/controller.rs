//! The EventTopic controller: resolve (conflicts) → validate and build desired topics (pure) →
//! sync Kafka → conditions (pure) → status patch when it changed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use tracing::{info, warn};
use tributary_api::event_topic::DeletionPolicy;
use tributary_api::{EventTopic, EventTopicStatus};

use super::conflict::{ClaimIndex, Conflict};
use super::desired::desired_topics;
use super::status::{build_status, needs_patch, paused_status, reason, Outcome};
use super::sync::sync_topics;
use crate::conditions::Status;
use crate::controller_support::{self, has_finalizer, is_paused, object_name, write_status, Lifecycle, Reconciler, Shared};
use crate::error::{Error, Result};
use crate::kafka::{KafkaError, SyncMode, TopicAdmin};

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

/// What every reconcile needs.
pub struct Context {
    pub shared: Shared,
    pub admin: Arc<dyn TopicAdmin>,
    /// Every EventTopic in the cluster, to find other claims on the same Kafka topic.
    pub store: Store<DeserializeGuard<EventTopic>>,
    /// Which EventTopic claims which Kafka topic, built from `store` at the first reconcile.
    pub claims: Mutex<Option<ClaimIndex>>,
    pub settings: Settings,
}

impl Context {
    pub fn new(shared: Shared, admin: Arc<dyn TopicAdmin>, store: Store<DeserializeGuard<EventTopic>>, settings: Settings) -> Self {
        Context { shared, admin, store, claims: Mutex::default(), settings }
    }

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
    shared: Shared,
    admin: Arc<dyn TopicAdmin>,
    settings: Settings,
    lifecycle: Lifecycle<impl FnOnce() + Send + 'static, impl std::future::Future<Output = ()> + Send + Sync + 'static>,
) {
    let controller = controller_support::controller::<Context>(&shared.client, settings.concurrency, lifecycle.synced);
    let context = Arc::new(Context::new(shared, admin, controller.store(), settings));
    controller_support::run(controller, context, lifecycle.shutdown).await;
}

impl Reconciler for Context {
    type Object = EventTopic;
    const CONTROLLER: &'static str = CONTROLLER;
    const INVALID_REASON: &'static str = reason::INVALID_CONFIG;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn error_retry(&self) -> Duration {
        self.settings.error_retry
    }

    fn paused_status(topic: &EventTopic, now: Timestamp) -> EventTopicStatus {
        paused_status(topic, now)
    }

    /// At most every half resync when only lastSyncTime moved, so that a resync still shows up as
    /// a fresh lastSyncTime but our own patch does not trigger another one.
    fn status_due(&self, current: Option<&EventTopicStatus>, new: &EventTopicStatus) -> bool {
        needs_patch(current, new, self.settings.resync_interval / 2)
    }

    async fn finalize(&self, topic: &EventTopic, _namespace: &str) -> Result<Action> {
        finalize(topic, self).await
    }

    async fn apply(&self, topic: &EventTopic, _namespace: &str) -> Result<Action> {
        let shared = &self.shared;
        let wants_finalizer = topic.spec.deletion_policy == DeletionPolicy::Delete;
        if wants_finalizer != has_finalizer(topic, FINALIZER) {
            shared.set_finalizer(topic, FINALIZER, wants_finalizer).await?;
        }

        let outcome = reconcile_kafka(self.admin.as_ref(), topic, self.older_claim(topic), SyncMode::Apply).await;
        write_status(self, topic, &build_status(topic, &outcome, shared.clock.now())).await?;

        let reference = topic.object_ref(&());
        match outcome {
            Outcome::Synced(reports) => {
                let ready = super::status::ready_condition(&Outcome::Synced(reports.clone()), None);
                if reports.iter().any(|report| report.plan.changes_anything()) {
                    info!(message = %ready.message, "Kafka topic changed");
                    shared.publish(&reference, EventType::Normal, ready.reason, "SyncKafka", ready.message.clone()).await;
                }
                if ready.status == Status::False {
                    shared.publish(&reference, EventType::Warning, ready.reason, "SyncKafka", ready.message).await;
                }
                Ok(Action::requeue(self.settings.resync_interval))
            }
            Outcome::InvalidSpec(message) => {
                shared.publish(&reference, EventType::Warning, reason::INVALID_CONFIG, "Validate", message).await;
                Ok(Action::await_change())
            }
            Outcome::Conflict { .. } => Ok(Action::requeue(self.settings.conflict_retry)),
            Outcome::KafkaUnavailable(message) => {
                Err(Error::Kafka { object: object_name(topic), source: KafkaError::Unavailable(message) })
            }
        }
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
async fn finalize(topic: &EventTopic, context: &Context) -> Result<Action> {
    if !has_finalizer(topic, FINALIZER) {
        return Ok(Action::await_change());
    }
    let shared = &context.shared;
    let reference = topic.object_ref(&());
    if let Some(conflict) = context.older_claim(topic) {
        let note = format!("Kafka topic {:?} belongs to EventTopic {}; it is not deleted", conflict.topic, conflict.owner);
        shared.publish(&reference, EventType::Normal, "FinalizerReleased", "Delete", note).await;
    } else if is_paused(topic) {
        let note = format!("reconciliation is paused ({}); the Kafka topics are left in place", tributary_api::PAUSED_ANNOTATION);
        shared.publish(&reference, EventType::Warning, "FinalizerReleased", "Delete", note).await;
    } else if let Err(error) = delete_kafka_topics(topic, context.admin.as_ref()).await {
        let waited = topic
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|since| shared.clock.now().duration_since(since.0).unsigned_abs())
            .unwrap_or_default();
        if waited < context.settings.deletion_timeout {
            return Err(Error::Kafka { object: object_name(topic), source: error });
        }
        let note = format!(
            "could not delete the Kafka topics for {waited:?} ({error}); releasing the finalizer so the namespace can go. Delete {} by hand if they still exist",
            kafka_topic_names(topic).join(" and ")
        );
        warn!(%note, "releasing finalizer without deleting Kafka topics");
        shared.publish(&reference, EventType::Warning, "KafkaTopicDeletionAbandoned", "Delete", note).await;
    } else {
        info!(topics = ?kafka_topic_names(topic), "deleted Kafka topics");
    }
    shared.set_finalizer(topic, FINALIZER, false).await?;
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
