//! The Subscription controller: resolve (EventTopics, consumer group, Deployment, KEDA) → validate
//! (pure) → Kafka (dead-letter topic, lag, a replay's reset) → replicas (pure) → server-side apply
//! of the children → conditions (pure) → status patch when it changed.
//!
//! The children (Deployment, ConfigMap, ScaledObject) carry owner references and go with the
//! Subscription. The dead-letter topic it may create is Kafka data and stays: dead letters are the
//! record of what failed, and a named one may be shared. So no finalizer is needed.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, instrument};
use tributary_api::subscription::{ReplayPhase, ReplayStatus, ScalingEngine};
use tributary_api::{EventTopic, Subscription, SubscriptionStatus};

use super::desired::{self, SUBSCRIPTION_LABEL};
use super::replay::{self, Consumers, Step};
use super::resolve::{self, DeadLetter, Workload};
use super::scaler::{self, Decision, Policy};
use super::status::{build_status, needs_patch, paused_status, reason, LagWrites, Outcome, Reconciled, Scaler};
use crate::conditions::Clock;
use crate::controller_support::{self, is_paused, object_name, publish, reconcile_guarded, InvalidObjectReport, Lifecycle, Reporting};
use crate::error::{Error, Result};
use crate::event_topic::sync::SyncMode;
use crate::kafka::{ConsumerGroups, GroupLag, KafkaError, TopicAdmin, TopicSpec};
use crate::metrics::Metrics;
use crate::workload::{kafka_secret_problem, WorkloadSettings};
use crate::FIELD_MANAGER;

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            scale_interval: Duration::from_secs(15),
            resync_interval: Duration::from_secs(300),
            conflict_retry: Duration::from_secs(30),
            error_retry: Duration::from_secs(15),
            keda_check_interval: Duration::from_secs(300),
            concurrency: controller_support::DEFAULT_CONCURRENCY,
        }
    }
}

/// What the controller is given to run with.
pub struct Dependencies {
    pub client: Client,
    pub admin: Arc<dyn TopicAdmin>,
    pub groups: Arc<dyn ConsumerGroups>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub workload: WorkloadSettings,
}

/// What every reconcile needs.
pub struct Context {
    pub deps: Dependencies,
    /// Every Subscription in the cluster, to find other users of a consumer group.
    pub store: Store<DeserializeGuard<Subscription>>,
    /// Whether KEDA's CRD was installed when last looked, and when that was.
    keda: Mutex<Option<(Timestamp, bool)>>,
}

impl Context {
    pub fn new(deps: Dependencies, store: Store<DeserializeGuard<Subscription>>) -> Self {
        Context { deps, store, keda: Mutex::new(None) }
    }

    /// Whether KEDA's ScaledObject CRD is installed, looked up at most once per
    /// `keda_check_interval`.
    async fn keda_installed(&self) -> Result<bool> {
        let now = self.deps.clock.now();
        let fresh = SignedDuration::try_from(self.deps.settings.keda_check_interval).unwrap_or(SignedDuration::MAX);
        let cached = *self.keda.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, installed)) = cached.filter(|(checked, _)| now.duration_since(*checked) < fresh) {
            return Ok(installed);
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.deps.client.clone());
        let installed = crds
            .get_opt(KEDA_CRD)
            .await
            .map_err(|source| Error::Kube { operation: "get", object: format!("CustomResourceDefinition {KEDA_CRD}"), source })?
            .is_some();
        *self.keda.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((now, installed));
        Ok(installed)
    }
}

/// Runs the controller until shutdown is signalled.
pub async fn run(
    deps: Dependencies,
    lifecycle: Lifecycle<impl FnOnce() + Send + 'static, impl std::future::Future<Output = ()> + Send + Sync + 'static>,
) {
    let client = deps.client.clone();
    let subscriptions: Api<DeserializeGuard<Subscription>> = Api::all(client.clone());
    let controller = Controller::new(subscriptions, watcher::Config::default().any_semantic())
        .with_config(controller_support::controller_config(deps.settings.concurrency));
    let store = controller.store();
    controller_support::signal_when_synced(store.clone(), lifecycle.synced);
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
    let context = Arc::new(Context::new(deps, store));
    let results = controller.graceful_shutdown_on(lifecycle.shutdown).run(reconcile, error_policy, context);
    controller_support::log_failures(results, "Subscription").await;
}

/// The Subscriptions that read an EventTopic: those in its namespace that name it. A change of the
/// EventTopic (it became Ready, or stopped being) wakes them.
pub fn subscriptions_reading(
    subscriptions: &[Arc<DeserializeGuard<Subscription>>],
    topic: &DeserializeGuard<EventTopic>,
) -> Vec<ObjectRef<DeserializeGuard<Subscription>>> {
    let (namespace, name) = (topic.meta().namespace.as_deref(), topic.meta().name.as_deref().unwrap_or_default());
    subscriptions
        .iter()
        .filter(|guard| {
            guard.0.as_ref().is_ok_and(|subscription| {
                subscription.metadata.namespace.as_deref() == namespace && subscription.spec.topics.iter().any(|topic| topic.name == name)
            })
        })
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}

/// Reconciles one Subscription, or reports one the API server holds but that does not parse.
pub async fn reconcile(guard: Arc<DeserializeGuard<Subscription>>, context: Arc<Context>) -> Result<Action> {
    let deps = &context.deps;
    let reporting = Reporting { client: &deps.client, recorder: &deps.recorder, metrics: &deps.metrics, clock: deps.clock.as_ref() };
    let invalid = InvalidObjectReport {
        reason: reason::INVALID_SPEC,
        status: |observed_generation, conditions| SubscriptionStatus { observed_generation, conditions, ..SubscriptionStatus::default() },
    };
    reconcile_guarded(&guard, CONTROLLER, reporting, async |subscription| reconcile_subscription(subscription, &context).await, invalid)
        .await
}

/// Failed reconciles are retried after a pause; the failure is counted by reason.
pub fn error_policy(_guard: Arc<DeserializeGuard<Subscription>>, error: &Error, context: Arc<Context>) -> Action {
    controller_support::retry_after_failure(&context.deps.metrics, CONTROLLER, error, context.deps.settings.error_retry)
}

type SubscriptionApi = Api<DeserializeGuard<Subscription>>;

async fn reconcile_subscription(subscription: &Subscription, context: &Context) -> Result<Action> {
    let deps = &context.deps;
    let namespace = subscription.namespace().ok_or_else(|| Error::MissingNamespace { object: object_name(subscription) })?;
    let api: SubscriptionApi = Api::namespaced(deps.client.clone(), &namespace);
    let reference = subscription.object_ref(&());
    if subscription.metadata.deletion_timestamp.is_some() {
        // The children follow through their owner references; the dead-letter topic stays.
        return Ok(Action::await_change());
    }
    if is_paused(subscription) {
        patch_status_if_changed(&api, subscription, paused_status(subscription, deps.clock.now()), context).await?;
        return Ok(Action::await_change());
    }
    let group = subscription.consumer_group();
    let report = |outcome: Outcome| report(&api, subscription, &group, outcome, context);

    // Resolve.
    let fetched = resolve::fetch_topics(&deps.client, subscription).await.map_err(|source| Error::Kube {
        operation: "get EventTopics for",
        object: object_name(subscription),
        source,
    })?;
    let topics = match resolve::resolve_topics(&fetched) {
        Ok(topics) => topics,
        Err(problem) => {
            report(Outcome::TopicsNotReady(problem)).await?;
            // The EventTopic watch wakes this Subscription when they change.
            return Ok(Action::await_change());
        }
    };
    let others = context.store.state();
    if let Some(owner) = resolve::find_group_conflict(subscription, others.iter().filter_map(|guard| guard.0.as_ref().ok())) {
        report(Outcome::GroupConflict { owner, group: group.clone() }).await?;
        return Ok(Action::requeue(deps.settings.conflict_retry));
    }
    let workload = match resolve::workload(subscription, topics) {
        Ok(workload) => workload,
        Err(invalid) => {
            let message = invalid.to_string();
            report(Outcome::InvalidSpec(message.clone())).await?;
            publish(&deps.recorder, &reference, EventType::Warning, reason::INVALID_SPEC, "Validate", message).await;
            return Ok(Action::await_change());
        }
    };
    if let Some(problem) = kafka_secret_problem(&deps.workload, &deps.client, &namespace, &object_name(subscription)).await? {
        report(Outcome::KafkaSecretMissing(problem)).await?;
        // Secrets are not watched (that would take the right to list them all): look again.
        return Ok(Action::requeue(deps.settings.conflict_retry));
    }
    let deployments: Api<Deployment> = Api::namespaced(deps.client.clone(), &namespace);
    let existing = deployments.get_opt(&workload.name).await.map_err(|source| Error::Kube {
        operation: "get",
        object: format!("Deployment {namespace}/{}", workload.name),
        source,
    })?;
    if let Some(problem) = foreign_deployment(existing.as_ref(), subscription) {
        report(Outcome::DeploymentConflict(problem)).await?;
        return Ok(Action::requeue(deps.settings.conflict_retry));
    }
    let engine = match subscription.spec.scaling.engine {
        ScalingEngine::Builtin => ScalingEngine::Builtin,
        requested => match (requested, context.keda_installed().await?) {
            (_, true) => ScalingEngine::Keda,
            (ScalingEngine::Keda, false) => {
                report(Outcome::KedaNotInstalled).await?;
                return Ok(Action::requeue(deps.settings.resync_interval));
            }
            (_, false) => ScalingEngine::Builtin,
        },
    };

    // Kafka, then the pure decisions.
    let run = Run::decide(subscription, &workload, existing.as_ref(), engine, context).await;

    // Apply.
    apply_children(&workload, &run, &namespace, context).await?;

    // Status.
    let previous = subscription.status.clone().unwrap_or_default();
    let kafka_error = run.kafka_errors.first().cloned();
    let outcome = Outcome::Reconciled(Box::new(run.reconciled));
    let new_status = report(outcome).await?;
    announce(context, &reference, &previous, &new_status).await;
    if let Some(source) = kafka_error {
        return Err(Error::Kafka { object: object_name(subscription), source });
    }
    Ok(Action::requeue(match engine {
        ScalingEngine::Keda => deps.settings.resync_interval,
        _ => deps.settings.scale_interval,
    }))
}

/// What one reconcile decided, from Kafka and the Deployment it found.
struct Run {
    reconciled: Reconciled,
    /// Replicas the Deployment apply sets; `None` with KEDA.
    replicas: Option<i32>,
    /// The consumers stay at zero (a replay is under way).
    hold_at_zero: bool,
    previous_engine: Option<ScalingEngine>,
    kafka_errors: Vec<KafkaError>,
}

impl Run {
    async fn decide(
        subscription: &Subscription,
        workload: &Workload<'_>,
        existing: Option<&Deployment>,
        engine: ScalingEngine,
        context: &Context,
    ) -> Run {
        let deps = &context.deps;
        let now = deps.clock.now();
        let previous = subscription.status.clone().unwrap_or_default();
        let mut kafka_errors = Vec::new();
        let mut problems = Vec::new();
        if let Err(error) = ensure_dead_letter_topic(deps.admin.as_ref(), &workload.dead_letter, SyncMode::Apply).await {
            problems.push(format!("cannot create the dead-letter topic {:?}: {error}", workload.dead_letter.topic));
            kafka_errors.push(error);
        }
        let topics = workload.kafka_topics();
        let read_lag = || deps.groups.group_lag(&workload.group, &topics, workload.start_from);
        let mut lag = read_lag().await;

        let deployment_spec = existing.and_then(|deployment| deployment.spec.as_ref());
        let deployment_status = existing.and_then(|deployment| deployment.status.as_ref());
        let current = deployment_spec.and_then(|spec| spec.replicas);
        let ready = deployment_status.and_then(|status| status.ready_replicas).unwrap_or(0);
        let running = deployment_status.and_then(|status| status.replicas).unwrap_or(0);
        let policy = Policy::new(&subscription.spec.scaling, workload.cooldown);
        let reading = |lag: &Result<GroupLag, KafkaError>| {
            lag.as_ref().ok().map(|lag| scaler::Lag { total: lag.total(), partitions: lag.partition_count() })
        };
        let lag_reading = reading(&lag);

        let wanted = lag_reading.map(|lag| policy.target(lag.total, lag.partitions)).unwrap_or_else(|| policy.initial());
        let (replay_status, reset) = advance_replay(subscription, workload, ready, running, wanted, context).await;
        match reset {
            // The consumers come back sized for what is to be read again.
            Some(Ok(())) => lag = read_lag().await,
            Some(Err(error)) => {
                problems.push(format!("cannot move the offsets of consumer group {:?}: {error}", workload.group));
                kafka_errors.push(error);
            }
            None => {}
        }
        let hold_at_zero =
            replay_status.as_ref().is_some_and(|replay| matches!(replay.phase, ReplayPhase::ScalingDown | ReplayPhase::ResettingOffsets));

        if let Err(error) = &lag {
            kafka_errors.push(error.clone());
        }
        let (scaler, replicas, desired_replicas) = match engine {
            ScalingEngine::Keda => (Scaler::Keda, None, current),
            _ => {
                let low_lag_since = previous.low_lag_since.map(|time| time.0);
                let observation = scaler::Observation { lag: reading(&lag), current, low_lag_since, now };
                let mut decision = scaler::decide(&policy, &observation);
                if hold_at_zero {
                    decision = Decision { replicas: 0, low_lag_since: None, ..decision };
                }
                (Scaler::Builtin(decision), Some(decision.replicas), Some(decision.replicas))
            }
        };
        let reconciled = Reconciled {
            scaler,
            lag: lag.map_err(|error| error.to_string()),
            desired_replicas,
            ready_replicas: ready,
            lag_threshold: policy.lag_threshold,
            replay: replay_status,
            dead_letter_topic: workload.dead_letter.topic.clone(),
            kafka_problem: (!problems.is_empty()).then(|| problems.join("; ")),
        };
        Run { reconciled, replicas, hold_at_zero, previous_engine: previous.engine, kafka_errors }
    }
}

/// The replay status after this reconcile, and the outcome of the offset reset if it made one.
async fn advance_replay(
    subscription: &Subscription,
    workload: &Workload<'_>,
    ready: i32,
    running: i32,
    wanted: i32,
    context: &Context,
) -> (Option<ReplayStatus>, Option<Result<(), KafkaError>>) {
    let groups = context.deps.groups.as_ref();
    let now = context.deps.clock.now();
    let previous = subscription.status.as_ref().and_then(|status| status.replay.as_ref());
    let requested = subscription.spec.replay.as_ref().map(|replay| &replay.to_timestamp);
    let waiting_for_consumers = previous.is_some_and(|replay| {
        requested.is_some_and(|requested| replay::is_for(replay, requested))
            && matches!(replay.phase, ReplayPhase::ScalingDown | ReplayPhase::ResettingOffsets)
    });
    // Unknown members (a broker that cannot tell, or an error) leave the check to the broker,
    // which refuses to reset a group with members.
    let members = if waiting_for_consumers { groups.group_members(&workload.group).await.ok().flatten() } else { None };
    let (status, step) = replay::advance(requested, previous, &Consumers { ready, running, members, wanted }, now);
    let (Step::ResetOffsets(to), Some(resetting)) = (step, &status) else {
        return (status, None);
    };
    match groups.reset_offsets(&workload.group, &workload.kafka_topics(), to).await {
        Ok(()) => {
            info!(group = %workload.group, "moved the consumer group's offsets for the replay");
            (Some(replay::offsets_reset(resetting, now)), Some(Ok(())))
        }
        Err(error) => (status, Some(Err(error))),
    }
}

/// Creates the dead-letter topic when the Subscription owns it and it is missing; returns whether
/// it was (or, in a dry run, would be) created. One partition: dead letters are few, and kept in
/// the order they failed.
pub async fn ensure_dead_letter_topic(admin: &dyn TopicAdmin, dead_letter: &DeadLetter, mode: SyncMode) -> Result<bool, KafkaError> {
    if !dead_letter.owned || admin.topic_layout(&dead_letter.topic).await?.is_some() {
        return Ok(false);
    }
    if mode == SyncMode::DryRun {
        return Ok(true);
    }
    let spec = TopicSpec { name: dead_letter.topic.clone(), partitions: 1, replication_factor: None, configs: Default::default() };
    admin.create_topic(&spec).await?;
    Ok(true)
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

async fn apply_children(workload: &Workload<'_>, run: &Run, namespace: &str, context: &Context) -> Result<()> {
    let deps = &context.deps;
    let client = &deps.client;
    let config_map = desired::config_map(workload, &deps.workload);
    apply(&Api::<ConfigMap>::namespaced(client.clone(), namespace), "ConfigMap", &config_map).await?;
    let deployment = desired::deployment(workload, &deps.workload, run.replicas);
    apply(&Api::<Deployment>::namespaced(client.clone(), namespace), "Deployment", &deployment).await?;
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &desired::scaled_object_resource());
    match run.reconciled.scaler {
        Scaler::Keda => apply(&scaled_objects, "ScaledObject", &desired::scaled_object(workload, &deps.workload, run.hold_at_zero)).await?,
        // Switched away from KEDA: its HPA would fight the built-in scaler.
        Scaler::Builtin(_) if run.previous_engine == Some(ScalingEngine::Keda) => {
            match scaled_objects.delete(&workload.name, &DeleteParams::default()).await {
                Ok(_) => info!("deleted the KEDA ScaledObject: the built-in scaler takes over"),
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(source) => {
                    return Err(Error::Kube { operation: "delete", object: format!("ScaledObject {namespace}/{}", workload.name), source })
                }
            }
        }
        Scaler::Builtin(_) => {}
    }
    Ok(())
}

/// Server-side apply under the operator's field manager, taking over fields others set.
async fn apply<K>(api: &Api<K>, kind: &str, object: &K) -> Result<()>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await.map(drop).map_err(|source| Error::Kube {
        operation: "server-side apply",
        object: format!("{kind} {}/{name}", object.meta().namespace.as_deref().unwrap_or_default()),
        source,
    })
}

/// Builds the status for an outcome and writes it when it changed; returns it.
async fn report(
    api: &SubscriptionApi,
    subscription: &Subscription,
    group: &str,
    outcome: Outcome,
    context: &Context,
) -> Result<SubscriptionStatus> {
    let status = build_status(subscription, group, &outcome, context.deps.clock.now());
    patch_status_if_changed(api, subscription, status.clone(), context).await?;
    Ok(status)
}

#[instrument(skip_all)]
async fn patch_status_if_changed(
    api: &SubscriptionApi,
    subscription: &Subscription,
    status: SubscriptionStatus,
    context: &Context,
) -> Result<()> {
    let settings = &context.deps.settings;
    let intervals = LagWrites { changed: settings.scale_interval, unchanged: settings.resync_interval };
    if !needs_patch(subscription.status.as_ref(), &status, intervals) {
        return Ok(());
    }
    controller_support::patch_status(api, subscription, &status).await
}

/// Events for what changed: the replica count, and each replay phase. Each kind of change has
/// its own reason: the event recorder folds events of one reason into a series.
async fn announce(context: &Context, reference: &ObjectReference, before: &SubscriptionStatus, after: &SubscriptionStatus) {
    if let (Some(from), Some(to)) = (before.desired_replicas, after.desired_replicas) {
        if from != to && after.engine == Some(ScalingEngine::Builtin) {
            context.deps.metrics.scaled(from, to);
            let lag = after.total_lag.map(|lag| format!("lag {lag}")).unwrap_or_else(|| "lag unknown".into());
            let note = format!("scaled the consumers from {from} to {to} replicas ({lag})");
            info!(%note);
            let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
            publish(&context.deps.recorder, reference, EventType::Normal, reason, "Scale", note).await;
        }
    }
    let phase = |status: &SubscriptionStatus| status.replay.as_ref().map(|replay| (replay.to_timestamp.clone(), replay.phase));
    if let Some((to, phase_now)) = phase(after).filter(|current| phase(before).as_ref() != Some(current)) {
        let (reason, what) = match phase_now {
            ReplayPhase::ScalingDown => ("ReplayScalingDown", "stopping the consumers"),
            ReplayPhase::ResettingOffsets => ("ReplayResettingOffsets", "the consumers stopped; moving the group's offsets"),
            ReplayPhase::ScalingUp => ("ReplayScalingUp", "offsets moved; starting the consumers"),
            ReplayPhase::Completed => ("ReplayCompleted", "the consumers are back"),
        };
        let note = format!("replay to {}: {what}", to.0);
        info!(%note);
        publish(&context.deps.recorder, reference, EventType::Normal, reason, "Replay", note).await;
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
