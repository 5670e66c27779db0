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
use tributary_api::event_topic::{DeletionPolicy, Origin};
use tributary_api::{EventTopic, EventTopicStatus};

use super::conflict::{ClaimIndex, Conflict};
use super::desired::desired_topics;
use super::names::KafkaNames;
use super::ownership::{self, holding, Holding, Records};
use super::status::{build_status, needs_patch, paused_status, reason, with_creations_recorded, Outcome};
use super::sync::{observe, sync_topics, Held};
use crate::conditions::Status;
use crate::controller_support::{self, has_finalizer, is_paused, object_name, write_status, Lifecycle, Reconciler, Shared};
use crate::error::{Error, Result};
use crate::kafka::{KafkaError, SyncMode, TopicAdmin};
use crate::naming::NamingPolicy;

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
    /// How EventTopics' names become Kafka topic names.
    pub naming: NamingPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync_interval: Duration::from_secs(300),
            deletion_timeout: Duration::from_secs(300),
            conflict_retry: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
            concurrency: controller_support::DEFAULT_CONCURRENCY,
            naming: NamingPolicy::default(),
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
            ClaimIndex::of(all.iter().filter_map(|guard| guard.0.as_ref().ok()), self.settings.naming.clone())
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
        let wants_finalizer = topic.spec.deletion_policy != DeletionPolicy::Retain;
        if wants_finalizer != has_finalizer(topic, FINALIZER) {
            shared.set_finalizer(topic, FINALIZER, wants_finalizer).await?;
        }

        let admin = self.admin.as_ref();
        let with_records;
        let (topic, reconciled) = match prepare(admin, topic, self.older_claim(topic), &self.settings.naming, Records::Status).await {
            Err(stopped) => (topic, stopped),
            Ok(prepared) => match with_creations_recorded(topic, &prepared) {
                // Recorded before Kafka is touched: the record must never lag behind a topic.
                Some(recorded) => {
                    write_status(self, topic, &recorded).await?;
                    with_records = EventTopic { status: Some(recorded), ..topic.clone() };
                    (&with_records, finish(admin, prepared, SyncMode::Apply).await)
                }
                None => (topic, finish(admin, prepared, SyncMode::Apply).await),
            },
        };
        write_status(self, topic, &build_status(topic, &reconciled, shared.clock.now())).await?;

        let reference = topic.object_ref(&());
        match reconciled.outcome {
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
            // The topic may go, or the spec change; until then it is looked at as often as any.
            Outcome::AdoptionRequired(refused) => {
                shared.publish(&reference, EventType::Warning, reason::ADOPTION_REQUIRED, "SyncKafka", refused.message()).await;
                Ok(Action::requeue(self.settings.resync_interval))
            }
            Outcome::KafkaUnavailable(message) => {
                Err(Error::Kafka { object: object_name(topic), source: KafkaError::Unavailable(message) })
            }
        }
    }
}

/// How the Kafka stage of a reconcile ended, and the Kafka names it worked with (`None` when the
/// spec cannot have any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub names: Option<KafkaNames>,
    pub outcome: Outcome,
}

/// The Kafka stage up to the first change to Kafka: every topic the EventTopic wants, what Kafka
/// has of it, and how the EventTopic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub names: KafkaNames,
    pub held: Vec<Held>,
}

/// The Kafka stage of a reconcile, which the offline `apply` runs too: [`prepare`], then
/// [`finish`].
pub async fn reconcile_kafka(
    admin: &dyn TopicAdmin,
    topic: &EventTopic,
    older_claim: Option<Conflict>,
    naming: &NamingPolicy,
    records: Records,
    mode: SyncMode,
) -> Reconciled {
    match prepare(admin, topic, older_claim, naming, records).await {
        Ok(prepared) => finish(admin, prepared, mode).await,
        Err(stopped) => stopped,
    }
}

/// Names the topics, then stops at the first reason not to touch Kafka: a spec without valid
/// names, an older EventTopic's claim on one of the topics (`older_claim`), a spec that cannot
/// be turned into topic settings, Kafka out of reach, or an existing topic this EventTopic may not
/// take over. Reads Kafka, changes nothing.
pub async fn prepare(
    admin: &dyn TopicAdmin,
    topic: &EventTopic,
    older_claim: Option<Conflict>,
    naming: &NamingPolicy,
    records: Records,
) -> Result<Prepared, Reconciled> {
    let names =
        KafkaNames::of(topic, naming).map_err(|invalid| Reconciled { names: None, outcome: Outcome::InvalidSpec(invalid.to_string()) })?;
    let stop = |outcome| Reconciled { names: Some(names.clone()), outcome };
    if let Some(conflict) = older_claim {
        return Err(stop(Outcome::Conflict { owner: conflict.owner, topic: conflict.topic }));
    }
    let desired = desired_topics(topic, &names).map_err(|invalid| stop(Outcome::InvalidSpec(invalid.to_string())))?;
    let observed = observe(admin, &desired).await.map_err(|error| stop(Outcome::KafkaUnavailable(error.to_string())))?;
    let mut held = Vec::with_capacity(desired.len());
    for (desired, actual) in desired.into_iter().zip(observed) {
        let holding = holding(topic, desired.role, &desired.spec.name, actual.is_some(), records)
            .map_err(|refused| stop(Outcome::AdoptionRequired(refused)))?;
        let desired = match (&actual, holding) {
            (Some(actual), Holding::Manage(Origin::Adopted)) => desired.adopted(actual),
            _ => desired,
        };
        held.push(Held { desired, actual, holding });
    }
    Ok(Prepared { names, held })
}

/// Brings Kafka in line with what [`prepare`] found (with [`SyncMode::DryRun`], only plans it).
pub async fn finish(admin: &dyn TopicAdmin, prepared: Prepared, mode: SyncMode) -> Reconciled {
    let outcome = match sync_topics(admin, &prepared.held, mode).await {
        Ok(reports) => Outcome::Synced(reports),
        Err(error) => Outcome::KafkaUnavailable(error.to_string()),
    };
    Reconciled { names: Some(prepared.names), outcome }
}

/// Deletes the Kafka topics its status records and its deletion policy allows (when this
/// EventTopic holds the finalizer and no older EventTopic claims them), then releases the
/// finalizer. Safe to repeat, and safe when the topics were never created.
async fn finalize(topic: &EventTopic, context: &Context) -> Result<Action> {
    if !has_finalizer(topic, FINALIZER) {
        return Ok(Action::await_change());
    }
    let shared = &context.shared;
    let reference = topic.object_ref(&());
    let deletion = ownership::deletion(topic);
    if let Some(conflict) = context.older_claim(topic) {
        let note = format!("Kafka topic {:?} belongs to EventTopic {}; it is not deleted", conflict.topic, conflict.owner);
        shared.publish(&reference, EventType::Normal, "FinalizerReleased", "Delete", note).await;
    } else if is_paused(topic) {
        let note = format!("reconciliation is paused ({}); the Kafka topics are left in place", tributary_api::PAUSED_ANNOTATION);
        shared.publish(&reference, EventType::Warning, "FinalizerReleased", "Delete", note).await;
    } else if let Err(error) = delete_kafka_topics(&deletion, context.admin.as_ref()).await {
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
            deletion.delete.join(" and ")
        );
        warn!(%note, "releasing finalizer without deleting Kafka topics");
        shared.publish(&reference, EventType::Warning, "KafkaTopicDeletionAbandoned", "Delete", note).await;
    } else {
        info!(topics = ?deletion.delete, "deleted Kafka topics");
        for note in &deletion.kept {
            shared.publish(&reference, EventType::Normal, "KafkaTopicKept", "Delete", note.clone()).await;
        }
    }
    shared.set_finalizer(topic, FINALIZER, false).await?;
    Ok(Action::await_change())
}

async fn delete_kafka_topics(deletion: &ownership::Deletion, admin: &dyn TopicAdmin) -> Result<(), KafkaError> {
    for name in &deletion.delete {
        admin.delete_topic(name).await?;
    }
    Ok(())
}
