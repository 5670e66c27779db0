//! The Subscription controller: resolve (EventTopics, consumer group, Deployment, KEDA) → validate
//! (pure) → Kafka stage (`kafka`: dead-letter topic, lag, a replay's reset) → decide replicas and
//! replay (pure) → server-side apply of the children → conditions (pure) → status patch when it
//! changed.
//!
//! The children (Deployment, ConfigMap, ScaledObject) carry owner references and go with the
//! Subscription. The dead-letter topic it may create is Kafka data and stays: dead letters are the
//! record of what failed, and a named one may be shared. So no finalizer is needed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::info;
use tributary_api::subscription::{ReplayPhase, ReplayStatus, ScalingEngine};
use tributary_api::{EventTopic, Subscription, SubscriptionStatus};

use super::desired::{self, SUBSCRIPTION_LABEL};
use super::kafka::{self as kafka_stage, Ask, KafkaReading};
use super::ownership::{self, Held, Unrecorded};
use super::plan::{self, Blocked, Replicas};
use super::replay::{self, Consumers, Step};
use super::resolve::{self, Fetched, Workload};
use super::scaler::{self, Decision, Policy};
use super::status::{build_status, needs_patch, paused_status, reason, LagWrites, Outcome, Reconciled, Scaler, READY};
use crate::conditions;
use crate::controller_support::{self, object_name, write_status, Lifecycle, Reconciler, Shared};
use crate::error::{Error, Result};
use crate::kafka::{ConsumerGroups, GroupLag, KafkaError, TopicAdmin};
use crate::naming::NamingPolicy;
use crate::workload::{kafka_secret_problem, WorkloadSettings};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "subscription";

/// The CRD whose presence means KEDA is installed.
pub const KEDA_CRD: &str = "scaledobjects.keda.sh";

/// Timing of the Subscription controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the built-in scaler reads lag and decides replicas; also the most often a status
    /// is rewritten for changed lag alone.
    pub scale_interval: Duration,
    /// How often a Subscription scaled by KEDA is looked at when nothing changed (its lag in
    /// status), and the most often unchanged lag is rewritten.
    pub resync_interval: Duration,
    /// How soon a Subscription that lost a conflict (consumer group, Deployment) or waits for the
    /// workload Kafka Secret looks again.
    pub conflict_retry: Duration,
    /// Delay before retrying after Kafka or the API server failed.
    pub error_retry: Duration,
    /// How long the answer to "is KEDA installed?" is trusted.
    pub keda_check_interval: Duration,
    /// Reconciles in flight at once.
    pub concurrency: u16,
    /// What the consumers get from the operator's own configuration.
    pub workload: WorkloadSettings,
    /// How consumer groups and dead-letter topics of each namespace must be named.
    pub naming: NamingPolicy,
}

impl Settings {
    pub fn new(workload: WorkloadSettings) -> Self {
        Settings {
            workload,
            naming: NamingPolicy::default(),
            scale_interval: Duration::from_secs(15),
            resync_interval: Duration::from_secs(300),
            conflict_retry: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
            keda_check_interval: Duration::from_secs(300),
            concurrency: controller_support::DEFAULT_CONCURRENCY,
        }
    }
}

/// What every reconcile needs.
pub struct Context {
    pub shared: Shared,
    pub admin: Arc<dyn TopicAdmin>,
    pub groups: Arc<dyn ConsumerGroups>,
    /// Every Subscription in the cluster, to find other users of a consumer group.
    pub store: Store<DeserializeGuard<Subscription>>,
    pub settings: Settings,
    /// Whether KEDA's CRD was installed when last looked, and when that was.
    keda: Mutex<Option<(Timestamp, bool)>>,
}

impl Context {
    pub fn new(
        shared: Shared,
        admin: Arc<dyn TopicAdmin>,
        groups: Arc<dyn ConsumerGroups>,
        store: Store<DeserializeGuard<Subscription>>,
        settings: Settings,
    ) -> Self {
        Context { shared, admin, groups, store, settings, keda: Mutex::new(None) }
    }

    /// Whether KEDA's ScaledObject CRD is installed, looked up at most once per
    /// `keda_check_interval`.
    async fn keda_installed(&self) -> Result<bool> {
        let now = self.shared.clock.now();
        let fresh = SignedDuration::try_from(self.settings.keda_check_interval).unwrap_or(SignedDuration::MAX);
        let cached = *self.keda.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, installed)) = cached.filter(|(checked, _)| now.duration_since(*checked) < fresh) {
            return Ok(installed);
        }
        let installed = self.shared.get_cluster_scoped::<CustomResourceDefinition>(KEDA_CRD).await?.is_some();
        *self.keda.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, installed));
        Ok(installed)
    }
}

/// Runs the controller until shutdown is signalled.
pub async fn run(
    shared: Shared,
    admin: Arc<dyn TopicAdmin>,
    groups: Arc<dyn ConsumerGroups>,
    settings: Settings,
    lifecycle: Lifecycle<impl FnOnce() + Send + 'static, impl std::future::Future<Output = ()> + Send + Sync + 'static>,
) {
    let client = shared.client.clone();
    let controller = controller_support::controller::<Context>(&client, settings.concurrency, lifecycle.synced);
    let store = controller.store();
    let mapper_store = store.clone();
    // Only the operator's own children: they carry the Subscription label.
    let children = watcher::Config::default().labels(SUBSCRIPTION_LABEL);
    // The ScaledObject is not watched: KEDA's CRD may be missing, and nothing in it needs an answer.
    let controller = controller
        .owns(Api::<Deployment>::all(client.clone()), children.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), children)
        .watches(Api::<DeserializeGuard<EventTopic>>::all(client), watcher::Config::default().any_semantic(), move |topic| {
            subscriptions_reading(&mapper_store.state(), &topic)
        });
    let context = Arc::new(Context::new(shared, admin, groups, store, settings));
    controller_support::run(controller, context, lifecycle.shutdown).await;
}

/// The Subscriptions that read an EventTopic, in any namespace: a change of the EventTopic (it
/// became Ready or stopped being, it granted access or withdrew it) wakes them.
pub fn subscriptions_reading(
    subscriptions: &[Arc<DeserializeGuard<Subscription>>],
    topic: &DeserializeGuard<EventTopic>,
) -> Vec<ObjectRef<DeserializeGuard<Subscription>>> {
    let (namespace, name) = (topic.meta().namespace.as_deref().unwrap_or_default(), topic.meta().name.as_deref().unwrap_or_default());
    subscriptions
        .iter()
        .filter(|guard| {
            guard.0.as_ref().is_ok_and(|subscription| resolve::references(subscription).any(|reference| reference == (namespace, name)))
        })
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}

impl Reconciler for Context {
    type Object = Subscription;
    const CONTROLLER: &'static str = CONTROLLER;
    const INVALID_REASON: &'static str = reason::INVALID_SPEC;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn error_retry(&self) -> Duration {
        self.settings.error_retry
    }

    fn paused_status(subscription: &Subscription, now: Timestamp) -> SubscriptionStatus {
        paused_status(subscription, now)
    }

    /// Changed lag alone is written at most every scale interval, unchanged lag every resync.
    fn status_due(&self, current: Option<&SubscriptionStatus>, new: &SubscriptionStatus) -> bool {
        let intervals = LagWrites { changed: self.settings.scale_interval, unchanged: self.settings.resync_interval };
        needs_patch(current, new, intervals)
    }

    /// The children follow through their owner references; the dead-letter topic stays.
    async fn finalize(&self, _subscription: &Subscription, _namespace: &str) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn apply(&self, subscription: &Subscription, namespace: &str) -> Result<Action> {
        reconcile_subscription(subscription, namespace, self).await
    }
}

async fn reconcile_subscription(subscription: &Subscription, namespace: &str, context: &Context) -> Result<Action> {
    let (shared, settings) = (&context.shared, &context.settings);
    let reference = subscription.object_ref(&());
    let group = subscription.consumer_group();
    let report = |outcome: Outcome| report(subscription, &group, outcome, context);

    // Resolve, then validate (pure).
    let mut fetched = Vec::with_capacity(subscription.spec.topics.len());
    for (topic_namespace, name) in resolve::references(subscription) {
        let topic = shared.get::<DeserializeGuard<EventTopic>>(topic_namespace, name).await?;
        fetched.push(Fetched { namespace: topic_namespace.to_owned(), name: name.to_owned(), topic });
    }
    let all = context.store.state();
    let others = || all.iter().filter_map(|guard| guard.0.as_ref().ok());
    let workload = match plan::workload(subscription, &fetched, others(), &settings.naming) {
        Ok(workload) => workload,
        Err(Blocked::Topics(problem)) => {
            let status = report(Outcome::TopicsNotReady(problem)).await?;
            warn_when_refused(context, subscription, &status).await;
            // The EventTopic watch wakes this Subscription when they change (or their grants do).
            return Ok(Action::await_change());
        }
        Err(Blocked::GroupTaken { owner }) => {
            report(Outcome::GroupConflict { owner, group: group.clone() }).await?;
            return Ok(Action::requeue(settings.conflict_retry));
        }
        Err(Blocked::Invalid(invalid)) => {
            let message = invalid.to_string();
            report(Outcome::InvalidSpec(message.clone())).await?;
            shared.publish(&reference, EventType::Warning, reason::INVALID_SPEC, "Validate", message).await;
            return Ok(Action::await_change());
        }
    };
    if let Some(problem) = kafka_secret_problem(&settings.workload, shared, namespace).await? {
        report(Outcome::KafkaSecretMissing(problem)).await?;
        // Secrets are not watched (that would take the right to list them all): look again.
        return Ok(Action::requeue(settings.conflict_retry));
    }
    let existing = shared.get::<Deployment>(namespace, &workload.name).await?;
    if let Some(problem) = foreign_deployment(existing.as_ref(), subscription) {
        report(Outcome::DeploymentConflict(problem)).await?;
        return Ok(Action::requeue(settings.conflict_retry));
    }
    let engine = match subscription.spec.scaling.engine {
        ScalingEngine::Builtin => ScalingEngine::Builtin,
        requested => match (requested, context.keda_installed().await?) {
            (_, true) => ScalingEngine::Keda,
            (ScalingEngine::Keda, false) => {
                report(Outcome::KedaNotInstalled).await?;
                return Ok(Action::requeue(settings.resync_interval));
            }
            (_, false) => ScalingEngine::Builtin,
        },
    };

    // Ownership: what the status does not record yet is asked of Kafka, then recorded before the
    // operator or the consumers change anything there.
    let questions = ownership::questions(subscription, &workload);
    let unrecorded = match questions.any() {
        false => Unrecorded::default(),
        true => match kafka_stage::ask_unrecorded(context.admin.as_ref(), context.groups.as_ref(), &workload, questions).await {
            Ok(unrecorded) => unrecorded,
            Err(source) => {
                let message =
                    format!("cannot ask Kafka whether consumer group {:?} and its dead-letter topic are free: {source}", workload.group);
                report(Outcome::KafkaUnavailable(message)).await?;
                return Err(Error::Kafka { object: object_name(subscription), source });
            }
        },
    };
    let held = match ownership::hold(subscription, &workload, &unrecorded, others()) {
        Ok(held) => held,
        Err(refused) => {
            let status = report(Outcome::Refused(refused)).await?;
            warn_when_refused(context, subscription, &status).await;
            return Ok(Action::requeue(settings.conflict_retry));
        }
    };
    if let Some(recorded) = ownership::with_records(subscription, &workload, &held) {
        write_status(context, subscription, &recorded).await?;
    }

    // Kafka, with the replay's decision (pure) between reading and moving offsets.
    let now = shared.clock.now();
    let scale = DeploymentScale::of(existing.as_ref());
    let policy = Policy::new(&subscription.spec.scaling, workload.cooldown);
    let requested = subscription.spec.replay.as_ref().map(|replay| &replay.to_timestamp);
    let previous_replay = subscription.status.as_ref().and_then(|status| status.replay.as_ref());
    let ask = Ask { members: replay::waits_for_consumers(requested, previous_replay), idle: scale.running == 0 };
    let mut reading = kafka_stage::read(context.admin.as_ref(), context.groups.as_ref(), &workload, ask).await;
    let consumers =
        Consumers { ready: scale.ready, running: scale.running, members: reading.members, wanted: wanted(&policy, &reading.lag) };
    let (mut replay_status, step) = replay::advance(requested, previous_replay, &consumers, now);
    let mut reset = None;
    if let (Step::ResetOffsets(to), Some(resetting)) = (step, &replay_status) {
        let result = kafka_stage::reset_offsets(context.groups.as_ref(), &workload, to).await;
        if result.is_ok() {
            replay_status = Some(replay::offsets_reset(resetting, now));
            // The consumers come back sized for what is to be read again.
            reading.lag = kafka_stage::read_lag(context.groups.as_ref(), &workload).await;
        }
        reset = Some(result);
    }
    let observed = Observed { reading, replay: replay_status, reset, scale, held };
    let run = decide(subscription, &workload, observed, &policy, engine, now);

    // Apply.
    let handoff = plan::replicas_handoff(existing.as_ref(), run.replicas);
    apply_children(&workload, &run, handoff, namespace, context).await?;

    // Status.
    let previous = subscription.status.clone().unwrap_or_default();
    let kafka_error = run.kafka_errors.first().cloned();
    let new_status = report(Outcome::Reconciled(Box::new(run.reconciled))).await?;
    announce(context, &reference, &previous, &new_status).await;
    if let Some(source) = kafka_error {
        return Err(Error::Kafka { object: object_name(subscription), source });
    }
    Ok(Action::requeue(match engine {
        ScalingEngine::Keda => settings.resync_interval,
        _ => settings.scale_interval,
    }))
}

/// The consumer Deployment's replicas as found.
struct DeploymentScale {
    /// What its spec asks for; `None` without a Deployment.
    current: Option<i32>,
    ready: i32,
    /// Pods that have not terminated.
    running: i32,
}

impl DeploymentScale {
    fn of(deployment: Option<&Deployment>) -> Self {
        let status = deployment.and_then(|deployment| deployment.status.as_ref());
        DeploymentScale {
            current: deployment.and_then(|deployment| deployment.spec.as_ref()).and_then(|spec| spec.replicas),
            ready: status.and_then(|status| status.ready_replicas).unwrap_or(0),
            running: status.and_then(|status| status.replicas).unwrap_or(0),
        }
    }
}

fn lag_reading(lag: &Result<GroupLag, KafkaError>) -> Option<scaler::Lag> {
    lag.as_ref().ok().map(|lag| scaler::Lag { total: lag.total(), partitions: lag.partition_count() })
}

/// Replicas the scaler wants for `lag`, or its initial count when the lag is unknown.
fn wanted(policy: &Policy, lag: &Result<GroupLag, KafkaError>) -> i32 {
    lag_reading(lag).map(|lag| policy.target(lag.total, lag.partitions)).unwrap_or_else(|| policy.initial())
}

/// What one reconcile decided, from Kafka and the Deployment it found.
struct Run {
    reconciled: Reconciled,
    replicas: Replicas,
    previous_engine: Option<ScalingEngine>,
    kafka_errors: Vec<KafkaError>,
}

/// What the Kafka stage found and did, and the Deployment as found.
struct Observed {
    reading: KafkaReading,
    /// The replay status after this reconcile.
    replay: Option<ReplayStatus>,
    /// The outcome of the replay's offset reset, if it made one.
    reset: Option<Result<(), KafkaError>>,
    scale: DeploymentScale,
    held: Held,
}

/// What this reconcile does, decided from what it observed.
fn decide(
    subscription: &Subscription,
    workload: &Workload<'_>,
    observed: Observed,
    policy: &Policy,
    engine: ScalingEngine,
    now: Timestamp,
) -> Run {
    let Observed { reading, replay: replay_status, reset, scale, held } = observed;
    let previous = subscription.status.clone().unwrap_or_default();
    let mut kafka_errors = Vec::new();
    let mut problems = Vec::new();
    if let Err(error) = reading.dead_letter {
        problems.push(format!("cannot create the dead-letter topic {:?}: {error}", workload.dead_letter.topic));
        kafka_errors.push(error);
    }
    if let Some(Err(error)) = reset {
        problems.push(format!("cannot move the offsets of consumer group {:?}: {error}", workload.group));
        kafka_errors.push(error);
    }
    let hold_at_zero =
        replay_status.as_ref().is_some_and(|replay| matches!(replay.phase, ReplayPhase::ScalingDown | ReplayPhase::ResettingOffsets));
    let lag = reading.lag;
    if let Err(error) = &lag {
        kafka_errors.push(error.clone());
    }
    let (scaler, replicas, desired_replicas) = match engine {
        ScalingEngine::Keda => (Scaler::Keda, Replicas::Keda { hold_at_zero }, scale.current),
        _ => {
            let low_lag_since = previous.low_lag_since.map(|time| time.0);
            let observation = scaler::Observation { lag: lag_reading(&lag), current: scale.current, low_lag_since, now };
            let mut decision = scaler::decide(policy, &observation);
            if hold_at_zero {
                decision = Decision { replicas: 0, low_lag_since: None, ..decision };
            }
            (Scaler::Builtin(decision), Replicas::Builtin(decision.replicas), Some(decision.replicas))
        }
    };
    let reconciled = Reconciled {
        scaler,
        lag: lag.map_err(|error| error.to_string()),
        desired_replicas,
        ready_replicas: scale.ready,
        lag_threshold: policy.lag_threshold,
        replay: replay_status,
        dead_letter_topic: workload.dead_letter.topic.clone(),
        held,
        kafka_problem: (!problems.is_empty()).then(|| problems.join("; ")),
    };
    Run { reconciled, replicas, previous_engine: previous.engine, kafka_errors }
}

/// Why an existing Deployment of the Subscription's name is not ours to change, if it is not. One
/// without a controller that carries our label is adopted (for example one created from the
/// offline `apply` output).
pub fn foreign_deployment(existing: Option<&Deployment>, subscription: &Subscription) -> Option<String> {
    let existing = existing?;
    let name = existing.name_any();
    let controller = existing.owner_references().iter().find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if Some(&owner.uid) == subscription.metadata.uid.as_ref() => None,
        Some(owner) => Some(format!(
            "Deployment {name:?} is controlled by {} {:?}; Tributary leaves it alone. Rename the Subscription or remove that Deployment",
            owner.kind, owner.name
        )),
        None if existing.labels().get(SUBSCRIPTION_LABEL) == Some(&subscription.name_any()) => None,
        None => Some(format!(
            "Deployment {name:?} exists and was not made by Tributary; Tributary leaves it alone. Rename the Subscription or remove that Deployment"
        )),
    }
}

/// Applies the children; `handoff` holds the replicas at that count before the operator's apply
/// lets go of them (see [`plan::replicas_handoff`]).
async fn apply_children(workload: &Workload<'_>, run: &Run, handoff: Option<i32>, namespace: &str, context: &Context) -> Result<()> {
    let shared = &context.shared;
    let children = plan::children(workload, &context.settings.workload, run.replicas);
    shared.apply(&children.config_map).await?;
    if let Some(replicas) = handoff {
        let body = plan::replicas_handoff_body(&workload.name, replicas);
        shared.apply_fields::<Deployment>(namespace, &workload.name, plan::REPLICAS_HANDOFF_MANAGER, &body).await?;
        info!(replicas, "KEDA takes over the replicas; held at their current count until its HPA scales");
    }
    shared.apply(&children.deployment).await?;
    let scaled_objects = desired::scaled_object_resource();
    if let Some(scaled_object) = children.scaled_object {
        shared.apply_dynamic(&scaled_object, &scaled_objects).await?;
    } else if run.previous_engine == Some(ScalingEngine::Keda) {
        // Switched away from KEDA: its HPA would fight the built-in scaler.
        if shared.delete_dynamic(namespace, &workload.name, &scaled_objects, &DeleteParams::default()).await? {
            info!("deleted the KEDA ScaledObject: the built-in scaler takes over");
        }
    }
    Ok(())
}

/// Builds the status for an outcome and writes it when it is due; returns it.
async fn report(subscription: &Subscription, group: &str, outcome: Outcome, context: &Context) -> Result<SubscriptionStatus> {
    let status = build_status(subscription, group, &outcome, context.shared.clock.now());
    write_status(context, subscription, &status).await?;
    Ok(status)
}

/// A warning Event when the Subscription has just been refused something (an EventTopic of
/// another namespace, a consumer group, a dead-letter topic): the Ready reason says what.
async fn warn_when_refused(context: &Context, subscription: &Subscription, after: &SubscriptionStatus) {
    const REFUSALS: [&str; 3] = [reason::ACCESS_DENIED, reason::ADOPTION_REQUIRED, reason::DEAD_LETTER_TOPIC_NOT_OWNED];
    let ready = |status: Option<&SubscriptionStatus>| status.and_then(|status| conditions::find(&status.conditions, READY)).cloned();
    let Some(now) = ready(Some(after)).filter(|now| REFUSALS.contains(&now.reason.as_str())) else { return };
    if ready(subscription.status.as_ref()).is_some_and(|before| before.reason == now.reason) {
        return;
    }
    context.shared.publish(&subscription.object_ref(&()), EventType::Warning, &now.reason, "Reconcile", now.message).await;
}

/// Events for what changed: the replica count, and each replay phase. Each kind of change has
/// its own reason: the event recorder folds events of one reason into a series.
async fn announce(context: &Context, reference: &ObjectReference, before: &SubscriptionStatus, after: &SubscriptionStatus) {
    if let (Some(from), Some(to)) = (before.desired_replicas, after.desired_replicas) {
        if from != to && after.engine == Some(ScalingEngine::Builtin) {
            context.shared.metrics.scaled(from, to);
            let lag = after.total_lag.map(|lag| format!("lag {lag}")).unwrap_or_else(|| "lag unknown".into());
            let note = format!("scaled the consumers from {from} to {to} replicas ({lag})");
            info!(%note);
            let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
            context.shared.publish(reference, EventType::Normal, reason, "Scale", note).await;
        }
    }
    let phase = |status: &SubscriptionStatus| status.replay.as_ref().map(|replay| (replay.to_timestamp.clone(), replay.phase));
    if let Some((to, phase_now)) = phase(after).filter(|current| phase(before).as_ref() != Some(current)) {
        let (reason, what) = match phase_now {
            ReplayPhase::ScalingDown => ("ReplayScalingDown", "stopping the consumers"),
            ReplayPhase::ResettingOffsets => ("ReplayResettingOffsets", "the consumers stopped; moving the group's offsets"),
            ReplayPhase::ScalingUp => ("ReplayScalingUp", "offsets moved; starting the consumers"),
            ReplayPhase::Completed => ("ReplayCompleted", "the consumers are back"),
            ReplayPhase::Failed => ("ReplayFailed", "given up: the consumer group has members other than this Subscription's consumers"),
        };
        let note = format!("replay to {}: {what}", to.0);
        info!(%note);
        let type_ = if phase_now == ReplayPhase::Failed { EventType::Warning } else { EventType::Normal };
        context.shared.publish(reference, type_, reason, "Replay", note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_topic::test_support::event_topic;
    use crate::subscription::test_support::subscription;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn guard(subscription: Subscription) -> Arc<DeserializeGuard<Subscription>> {
        Arc::new(DeserializeGuard(Ok(subscription)))
    }

    #[test]
    fn an_event_topic_wakes_the_subscriptions_in_its_namespace_that_read_it() {
        let reads_orders = subscription("billing", "topics: [{ name: payments }, { name: orders }]");
        let reads_other = subscription("audit", "topics: [{ name: payments }]");
        let mut elsewhere = subscription("shipping", "");
        elsewhere.metadata.namespace = Some("other".into());
        let all = [guard(reads_orders), guard(reads_other), guard(elsewhere)];
        let woken = subscriptions_reading(&all, &DeserializeGuard(Ok(event_topic("orders", ""))));
        assert_eq!(woken, vec![ObjectRef::new("billing").within("default")]);
    }

    #[test]
    fn only_our_own_or_unowned_labelled_deployments_are_changed() {
        let mut ours = subscription("billing", "");
        ours.metadata.uid = Some("uid-billing".into());
        let owned_by = |uid: &str, kind: &str| Deployment {
            metadata: kube::api::ObjectMeta {
                name: Some("billing".into()),
                owner_references: Some(vec![OwnerReference {
                    uid: uid.into(),
                    kind: kind.into(),
                    name: "x".into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..Default::default()
            },
            ..Deployment::default()
        };
        assert_eq!(foreign_deployment(None, &ours), None);
        assert_eq!(foreign_deployment(Some(&owned_by("uid-billing", "Subscription")), &ours), None);
        let foreign = foreign_deployment(Some(&owned_by("uid-helm", "HelmRelease")), &ours).expect("conflict");
        assert!(foreign.contains("HelmRelease"), "{foreign}");
        let mut labelled = Deployment::default();
        labelled.metadata.labels = Some([(SUBSCRIPTION_LABEL.to_owned(), "billing".to_owned())].into());
        assert_eq!(foreign_deployment(Some(&labelled), &ours), None, "adopted");
        assert!(foreign_deployment(Some(&Deployment::default()), &ours).is_some(), "someone else's");
    }
}
