//! `tributary-operator apply -f`: the Kafka side of EventTopics and Subscriptions from files,
//! without a cluster, through the same desired-state, sync and status code the controllers use;
//! for Subscriptions also the Kubernetes objects the controller would apply, and for every
//! OutboxRelay the relay container (sidecar) or Deployment (standalone), printed as YAML and
//! built by the controllers' own builders.
//!
//! Every document is validated (CRD schema and CEL rules) before anything touches Kafka, so bad
//! input changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::DeserializeGuard;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tributary_api::subscription::ScalingEngine;
use tributary_api::validation::validate_manifest;
use tributary_api::{EventTopic, EventTopicStatus, OutboxRelay, Subscription};

use crate::event_topic::conflict::older_claims;
use crate::event_topic::controller::reconcile_kafka;
use crate::event_topic::ownership::Records;
use crate::event_topic::status::{build_status, Outcome};
use crate::event_topic::sync::TopicReport;
use crate::kafka::{KafkaError, SyncMode, TopicAdmin, TopicLayout, TopicSpec, TopicState};
use crate::naming::NamingPolicy;
use crate::outbox_relay::desired::{PlacementKind, RelayWorkload};
use crate::outbox_relay::plan::desired_workload;
use crate::outbox_relay::resolve::{resolve_routes, validate, SecretCheck, TopicLookup};
use crate::outbox_relay::status::{self as relay_status, Observation, Workload};
use crate::subscription::kafka::ensure_dead_letter_topic;
use crate::subscription::plan::{self, Blocked, Replicas};
use crate::subscription::resolve::{references, DeadLetter, Fetched};
use crate::subscription::scaler::Policy;
use crate::workload::WorkloadSettings;

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// `path` or `path#N` for the N-th document of a multi-document file.
    pub origin: String,
    pub value: Value,
}

/// A validated object from the input.
#[derive(Debug, Clone)]
pub enum Object {
    EventTopic(Box<EventTopic>),
    Subscription(Box<Subscription>),
    OutboxRelay(Box<OutboxRelay>),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid YAML: {source}")]
    Yaml {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("no YAML files found in {0}")]
    Empty(PathBuf),
}

/// Reads every `.yaml`/`.yml` file under the given files or directories (sorted, recursively),
/// splitting multi-document files. Empty documents are skipped.
pub fn load_documents(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut documents = Vec::new();
    for path in paths {
        let files = yaml_files(path)?;
        if files.is_empty() {
            return Err(LoadError::Empty(path.clone()));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read { path: file.clone(), source })?;
            for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let origin = format!("{}#{}", file.display(), index + 1);
                let value = Value::deserialize(document).map_err(|source| LoadError::Yaml { origin: origin.clone(), source })?;
                if !value.is_null() {
                    documents.push(Document { origin, value });
                }
            }
        }
    }
    Ok(documents)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let metadata = std::fs::metadata(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let mut children: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
    children.sort();
    for child in children {
        if child.is_dir() {
            files.extend(yaml_files(&child)?);
        } else if child.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            files.push(child);
        }
    }
    Ok(files)
}

/// Validates every document; returns the objects, or every problem found (each naming the
/// document, object and field).
pub fn validate_documents(documents: &[Document]) -> Result<Vec<Object>, Vec<String>> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for document in documents {
        match validate_document(document) {
            Ok(object) => {
                let key = identity(&object);
                if seen.insert(key.clone()) {
                    objects.push(object);
                } else {
                    problems.push(format!("{}: {} {}/{} appears more than once", document.origin, key.0, key.1, key.2));
                }
            }
            Err(errors) => problems.extend(errors),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

fn identity(object: &Object) -> (&'static str, String, String) {
    let (kind, meta) = match object {
        Object::EventTopic(o) => ("EventTopic", &o.metadata),
        Object::Subscription(o) => ("Subscription", &o.metadata),
        Object::OutboxRelay(o) => ("OutboxRelay", &o.metadata),
    };
    (kind, meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn validate_document(document: &Document) -> Result<Object, Vec<String>> {
    let value = &document.value;
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let expected_api_version = format!("{}/{}", tributary_api::GROUP, tributary_api::VERSION);
    let label = format!("{}: {kind} {name:?}", document.origin);
    if api_version != expected_api_version {
        return Err(vec![format!("{label}: apiVersion is {api_version:?}; this tool reads {expected_api_version} only")]);
    }
    if let Err(message) = check_metadata_name(name) {
        return Err(vec![format!("{label}: metadata.name: {message}")]);
    }
    match kind {
        "EventTopic" => typed::<EventTopic>(value, &label).map(|o| Object::EventTopic(Box::new(o))),
        "Subscription" => typed::<Subscription>(value, &label).map(|o| Object::Subscription(Box::new(o))),
        "OutboxRelay" => typed::<OutboxRelay>(value, &label).map(|o| Object::OutboxRelay(Box::new(o))),
        other => Err(vec![format!("{label}: unknown kind {other:?}; expected EventTopic, Subscription or OutboxRelay")]),
    }
}

/// Kubernetes object names: DNS subdomains (lowercase alphanumerics, '-' and '.', ≤ 253).
fn check_metadata_name(name: &str) -> Result<(), &'static str> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() {
        Err("is required")
    } else if name.len() > 253 || !name.split('.').all(valid_label) {
        Err("must be lowercase letters, digits, '-' and '.', start and end with a letter or digit, at most 253 characters")
    } else {
        Ok(())
    }
}

fn typed<K>(value: &Value, label: &str) -> Result<K, Vec<String>>
where
    K: kube::CustomResourceExt + kube::Resource + DeserializeOwned,
{
    validate_manifest::<K>(value, None).map_err(|errors| errors.iter().map(|error| format!("{label}: {error}")).collect::<Vec<_>>())?;
    let mut object: K = serde_json::from_value(value.clone()).map_err(|error| vec![format!("{label}: {error}")])?;
    if object.meta().namespace.is_none() {
        object.meta_mut().namespace = Some("default".into());
    }
    Ok(object)
}

/// The result of applying one EventTopic.
#[derive(Debug, Clone)]
pub struct TopicResult {
    pub topic: EventTopic,
    pub outcome: Outcome,
    pub status: EventTopicStatus,
}

impl TopicResult {
    pub fn is_ready(&self) -> bool {
        crate::event_topic::status::is_ready(Some(&self.status))
    }

    /// The EventTopic as a cluster would have it after this apply: with the status it got, which
    /// names its real Kafka topics.
    pub fn applied(&self) -> EventTopic {
        EventTopic { status: Some(self.status.clone()), ..self.topic.clone() }
    }
}

/// Applies (or, with [`SyncMode::DryRun`], plans) every EventTopic, in input order, naming their
/// Kafka topics by `naming` as the operator would.
pub async fn apply_event_topics(
    admin: &dyn TopicAdmin,
    topics: &[EventTopic],
    mode: SyncMode,
    now: Timestamp,
    naming: &NamingPolicy,
) -> Vec<TopicResult> {
    let mut results = Vec::with_capacity(topics.len());
    for (topic, older_claim) in topics.iter().zip(older_claims(topics, naming)) {
        let reconciled = reconcile_kafka(admin, topic, older_claim, naming, Records::Offline, mode).await;
        let status = build_status(topic, &reconciled, now);
        results.push(TopicResult { topic: topic.clone(), outcome: reconciled.outcome, status });
    }
    results
}

/// Per EventTopic, the planned or made changes and the resulting status, as `#` comment lines
/// (so the whole output of `apply` stays a YAML stream).
pub fn render_report(results: &[TopicResult], mode: SyncMode) -> String {
    let mut out = String::new();
    for result in results {
        let topic = &result.topic;
        let _ = writeln!(
            out,
            "# EventTopic {}/{} → Kafka topic {:?}",
            topic.namespace().unwrap_or_default(),
            topic.name_any(),
            result.status.topic_name.as_deref().unwrap_or_else(|| topic.requested_topic_name())
        );
        if let Outcome::Synced(reports) = &result.outcome {
            for report in reports {
                for line in describe_plan(report, mode) {
                    let _ = writeln!(out, "#   {line}");
                }
            }
        }
        if mode == SyncMode::Apply {
            let status = serde_yaml::to_string(&serde_json::json!({ "status": result.status })).unwrap_or_default();
            for line in status.lines() {
                let _ = writeln!(out, "#   {line}");
            }
        } else if !matches!(result.outcome, Outcome::Synced(_)) {
            let ready = crate::event_topic::status::ready_condition(&result.outcome, None);
            let _ = writeln!(out, "#   would not sync: {}: {}", ready.reason, ready.message);
        }
    }
    out
}

/// What the offline apply did for one Subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionResult {
    pub subscription: Subscription,
    pub group: String,
    pub outcome: SubscriptionOutcome,
}

#[derive(Debug, Clone)]
pub enum SubscriptionOutcome {
    /// Its EventTopics are missing or not Ready, its consumer group is taken, its spec cannot
    /// run, or Kafka could not be asked.
    NotApplied(String),
    Applied {
        engine: ScalingEngine,
        dead_letter: DeadLetter,
        /// The dead-letter topic was (or, in a dry run, would be) created.
        dead_letter_created: bool,
        /// The Kubernetes objects the controller would apply.
        objects: Vec<Value>,
    },
}

impl SubscriptionResult {
    pub fn is_applied(&self) -> bool {
        matches!(self.outcome, SubscriptionOutcome::Applied { .. })
    }
}

/// Brings each Subscription's Kafka side (its dead-letter topic) in line, in input order, and
/// builds its Kubernetes objects. Its EventTopics must be among `topics` (the results of applying
/// them) and Ready. Without a cluster there is no lag to read and no KEDA to find: the built-in
/// engine is assumed unless the spec asks for KEDA, and the Deployment starts at minReplicas.
pub async fn apply_subscriptions(
    admin: &dyn TopicAdmin,
    subscriptions: &[Subscription],
    topics: &[TopicResult],
    mode: SyncMode,
    settings: &WorkloadSettings,
    naming: &NamingPolicy,
) -> Vec<SubscriptionResult> {
    let applied: Vec<EventTopic> = topics.iter().map(TopicResult::applied).collect();
    let mut results = Vec::with_capacity(subscriptions.len());
    for subscription in subscriptions {
        let outcome = apply_subscription(admin, subscription, subscriptions, &applied, mode, settings, naming).await;
        results.push(SubscriptionResult { subscription: subscription.clone(), group: subscription.consumer_group(), outcome });
    }
    results
}

/// One Subscription of [`apply_subscriptions`]: its EventTopics are looked up among `topics` as
/// the controller looks them up in the cluster (grants to other namespaces included).
async fn apply_subscription(
    admin: &dyn TopicAdmin,
    subscription: &Subscription,
    all: &[Subscription],
    topics: &[EventTopic],
    mode: SyncMode,
    settings: &WorkloadSettings,
    naming: &NamingPolicy,
) -> SubscriptionOutcome {
    let not_applied = SubscriptionOutcome::NotApplied;
    let fetched: Vec<Fetched> = references(subscription)
        .map(|(namespace, name)| {
            let found = topics.iter().find(|topic| topic.metadata.namespace.as_deref() == Some(namespace) && topic.name_any() == name);
            Fetched {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                topic: found.map(|topic| DeserializeGuard(Ok(topic.clone()))),
            }
        })
        .collect();
    let workload = match plan::workload(subscription, &fetched, all, naming) {
        Ok(workload) => workload,
        Err(Blocked::Topics(problem)) => return not_applied(format!("its EventTopics must be in the input and Ready: {problem}")),
        Err(Blocked::GroupTaken { owner }) => {
            return not_applied(format!("consumer group {:?} belongs to Subscription {owner}", subscription.consumer_group()))
        }
        Err(Blocked::Invalid(invalid)) => return not_applied(invalid.to_string()),
    };
    let dead_letter_created = match ensure_dead_letter_topic(admin, &workload.dead_letter, mode).await {
        Ok(created) => created,
        Err(error) => return not_applied(format!("cannot create the dead-letter topic {:?}: {error}", workload.dead_letter.topic)),
    };
    let (engine, replicas) = match subscription.spec.scaling.engine {
        ScalingEngine::Keda => (ScalingEngine::Keda, Replicas::Keda { hold_at_zero: false }),
        _ => (ScalingEngine::Builtin, Replicas::Builtin(Policy::new(&subscription.spec.scaling, workload.cooldown).initial())),
    };
    let children = plan::children(&workload, settings, replicas);
    let objects = [serde_json::to_value(children.config_map), serde_json::to_value(children.deployment)]
        .into_iter()
        .chain(children.scaled_object.map(serde_json::to_value));
    match objects.collect::<Result<Vec<_>, _>>() {
        Ok(objects) => SubscriptionOutcome::Applied { engine, dead_letter: workload.dead_letter.clone(), dead_letter_created, objects },
        Err(error) => not_applied(format!("cannot render its objects: {error}")),
    }
}

/// Per Subscription, what happened as `#` comment lines, then its objects as YAML documents, so
/// that from the first `---` on the output is a YAML stream `kubectl apply -f -` accepts.
pub fn render_subscriptions(results: &[SubscriptionResult], mode: SyncMode) -> String {
    let mut out = String::new();
    for result in results {
        let subscription = &result.subscription;
        let _ = writeln!(
            out,
            "# Subscription {}/{} → consumer group {:?}",
            subscription.namespace().unwrap_or_default(),
            subscription.name_any(),
            result.group
        );
        let (engine, dead_letter, created, objects) = match &result.outcome {
            SubscriptionOutcome::NotApplied(message) => {
                let _ = writeln!(out, "#   not applied: {message}");
                continue;
            }
            SubscriptionOutcome::Applied { engine, dead_letter, dead_letter_created, objects } => {
                (engine, dead_letter, *dead_letter_created, objects)
            }
        };
        let topic_state = match (dead_letter.owned, created, mode) {
            (false, _, _) => "managed by its EventTopic",
            (true, true, SyncMode::DryRun) => "would be created",
            (true, true, SyncMode::Apply) => "created",
            (true, false, _) => "exists",
        };
        let scaler = match engine {
            ScalingEngine::Keda => "KEDA (a ScaledObject)",
            ScalingEngine::Builtin | ScalingEngine::Auto => "the operator's built-in scaler",
        };
        let _ = writeln!(out, "#   scaled by {scaler}; dead letters go to {:?} ({topic_state})", dead_letter.topic);
        if subscription.spec.replay.is_some() {
            let _ = writeln!(out, "#   spec.replay is carried out by the operator in a cluster, not here");
        }
        for object in objects {
            let _ = write!(out, "---\n{}", serde_yaml::to_string(object).unwrap_or_default());
        }
    }
    out
}

fn describe_plan(report: &TopicReport, mode: SyncMode) -> Vec<String> {
    let verb = |done: &str, planned: &str| if mode == SyncMode::DryRun { planned.to_owned() } else { done.to_owned() };
    let subject = format!("{} {:?}", report.role.describe(), report.name);
    let plan = &report.plan;
    let mut lines = Vec::new();
    if plan.create {
        let partitions = counted(usize::try_from(report.partitions.unwrap_or_default()).unwrap_or_default(), "partition");
        lines.push(format!("{} {subject} with {partitions}", verb("created", "would create")));
    }
    if let Some((from, to)) = plan.add_partitions {
        // A failed raise shows up among the problems below instead.
        if mode == SyncMode::DryRun || report.partitions == Some(to) {
            lines.push(format!("{} partitions of {subject}: {from} → {to}", verb("raised", "would raise")));
        }
    }
    for (key, change) in &plan.config_changes {
        let from = change.from.as_deref().unwrap_or("(unset)");
        lines.push(format!("{} {key} on {subject}: {from} → {}", verb("set", "would set"), change.to));
    }
    for problem in &report.problems {
        lines.push(format!("problem with {subject}: {problem}"));
    }
    if lines.is_empty() {
        lines.push(format!("{subject} is in sync"));
    }
    lines
}

/// `1 partition`, `3 partitions`.
pub fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// What the input holds, e.g. `1 EventTopic, 2 Subscriptions and 1 OutboxRelay`.
pub fn summary(objects: &[Object]) -> String {
    let count = |kind: &str| objects.iter().filter(|object| identity(object).0 == kind).count();
    let parts: Vec<String> = ["EventTopic", "Subscription", "OutboxRelay"]
        .into_iter()
        .map(|kind| (count(kind), kind))
        .filter(|(count, _)| *count > 0)
        .map(|(count, kind)| counted(count, kind))
        .collect();
    match parts.split_last() {
        None => "no objects".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// Stands in for Kafka when no broker was given: every topic reads as missing, so a dry run
/// against it plans what applying to a cluster without these topics would do. Writes fail.
pub struct NoBroker;

impl NoBroker {
    fn refuse() -> Result<(), KafkaError> {
        Err(KafkaError::Unavailable("no broker was given (--bootstrap-servers)".into()))
    }
}

#[async_trait::async_trait]
impl TopicAdmin for NoBroker {
    async fn describe_topic(&self, _name: &str) -> Result<Option<TopicState>, KafkaError> {
        Ok(None)
    }
    async fn topic_layout(&self, _name: &str) -> Result<Option<TopicLayout>, KafkaError> {
        Ok(None)
    }
    async fn create_topic(&self, _spec: &TopicSpec) -> Result<(), KafkaError> {
        Self::refuse()
    }
    async fn create_partitions(&self, _name: &str, _total: i32) -> Result<(), KafkaError> {
        Self::refuse()
    }
    async fn set_configs(&self, _name: &str, _configs: &BTreeMap<String, String>) -> Result<(), KafkaError> {
        Self::refuse()
    }
    async fn delete_topic(&self, _name: &str) -> Result<(), KafkaError> {
        Self::refuse()
    }
}

/// What the controller would apply for one OutboxRelay, or why it would wait.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    pub relay: OutboxRelay,
    /// The workload, or the Ready reason and message that keep it from running.
    pub workload: Result<RelayWorkload, (String, String)>,
}

/// Plans every OutboxRelay against the EventTopics of the same input (and what applying them
/// made of them). Offline there is no cluster: the database Secret and a sidecar's target
/// Deployment are taken to exist (and to opt in: whoever applies the output edits it).
pub fn plan_outbox_relays(
    relays: &[OutboxRelay],
    topics: &[TopicResult],
    settings: &WorkloadSettings,
    naming: &NamingPolicy,
    now: Timestamp,
) -> Vec<RelayPlan> {
    relays
        .iter()
        .map(|relay| {
            let lookup = |name: &str| {
                let found = topics.iter().find(|result| result.topic.namespace() == relay.namespace() && result.topic.name_any() == name);
                TopicLookup::of(found.map(|result| DeserializeGuard(Ok(result.applied()))).as_ref())
            };
            let observation = Observation {
                workload: match PlacementKind::of(relay) {
                    PlacementKind::Sidecar => Workload::Target,
                    PlacementKind::Standalone => Workload::Own,
                },
                routes: resolve_routes(relay, lookup),
                // Offline there are no Secrets to look at.
                secret: SecretCheck::Found,
                database_tls: None,
                kafka_secret_problem: None,
                invalid: validate(relay, naming).err(),
                ready_relays: None,
                report: None,
            };
            // Offline the target's pods are unknown: the sidecar as it joins a pod that sets no user.
            let workload = match desired_workload(relay, &observation, settings, None) {
                Some(workload) => Ok(workload),
                None => {
                    let status = relay_status::build_status(relay, &observation, now);
                    let ready = crate::conditions::find(&status.conditions, relay_status::READY);
                    Err(ready.map(|c| (c.reason.clone(), c.message.clone())).unwrap_or_default())
                }
            };
            RelayPlan { relay: relay.clone(), workload }
        })
        .collect()
}

/// Per OutboxRelay, the server-side apply it would make, or why it would wait, as `#` comment
/// lines, then the object as a YAML document, as [`render_subscriptions`] does.
pub fn render_relay_plans(plans: &[RelayPlan]) -> String {
    let mut out = String::new();
    for plan in plans {
        let relay = &plan.relay;
        let namespace = relay.namespace().unwrap_or_default();
        let _ = write!(out, "# OutboxRelay {namespace}/{}", relay.name_any());
        let yaml = match &plan.workload {
            Err((reason, message)) => {
                let _ = writeln!(out, ": would wait: {reason}: {message}");
                continue;
            }
            Ok(workload @ RelayWorkload::Sidecar { body, .. }) => {
                let _ = writeln!(
                    out,
                    " → container tributary-relay in Deployment {namespace}/{} (server-side apply, field manager {}):",
                    workload.deployment_name(),
                    workload.field_manager()
                );
                serde_yaml::to_string(body)
            }
            Ok(workload @ RelayWorkload::Standalone(deployment)) => {
                let _ = writeln!(
                    out,
                    " → Deployment {namespace}/{} (server-side apply, field manager {}):",
                    workload.deployment_name(),
                    workload.field_manager()
                );
                serde_yaml::to_string(deployment)
            }
        };
        match yaml {
            Ok(yaml) => {
                let _ = write!(out, "---\n{yaml}");
            }
            Err(error) => {
                let _ = writeln!(out, "#   cannot render: {error}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::FakeTopicAdmin;

    fn documents(yaml: &str) -> Vec<Document> {
        serde_yaml::Deserializer::from_str(yaml)
            .enumerate()
            .map(|(index, document)| Document {
                origin: format!("test.yaml#{}", index + 1),
                value: Value::deserialize(document).expect("yaml"),
            })
            .collect()
    }

    const TWO_TOPICS: &str = r#"
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: orders, namespace: shop }
spec: { partitions: 3, retention: 1d, deadLetter: { enabled: true } }
---
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: payments }
spec: { partitions: 2 }
"#;

    fn event_topics(objects: Vec<Object>) -> Vec<EventTopic> {
        objects.into_iter().filter_map(|object| if let Object::EventTopic(topic) = object { Some(*topic) } else { None }).collect()
    }

    #[tokio::test]
    async fn applies_topics_and_reports_ready_status() {
        let admin = FakeTopicAdmin::new();
        let topics = event_topics(validate_documents(&documents(TWO_TOPICS)).expect("valid"));
        assert_eq!(topics[1].namespace().as_deref(), Some("default"));
        let results = apply_event_topics(&admin, &topics, SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        assert!(results.iter().all(TopicResult::is_ready));
        assert_eq!(admin.topic_names(), vec!["orders", "orders.dlq", "payments"]);
        assert_eq!(admin.topic("orders").expect("created").configs.get("retention.ms").map(String::as_str), Some("86400000"));
        let report = render_report(&results, SyncMode::Apply);
        assert!(report.contains("created topic \"orders\" with 3 partitions"), "{report}");
        assert!(report.contains("deadLetterTopic: orders.dlq"), "{report}");
    }

    #[tokio::test]
    async fn dry_run_plans_without_touching_kafka() {
        let admin = FakeTopicAdmin::new();
        let topics = event_topics(validate_documents(&documents(TWO_TOPICS)).expect("valid"));
        let results = apply_event_topics(&admin, &topics, SyncMode::DryRun, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        assert!(admin.calls().is_empty());
        let report = render_report(&results, SyncMode::DryRun);
        assert!(report.contains("would create topic \"orders\" with 3 partitions"), "{report}");
        assert!(report.contains("would create dead-letter topic \"orders.dlq\""), "{report}");
    }

    #[test]
    fn invalid_documents_are_all_reported_with_origin_and_field() {
        let yaml = r#"
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: orders }
spec: { partitions: -1 }
---
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: Bad_Name }
spec: {}
---
apiVersion: v1
kind: ConfigMap
metadata: { name: x }
---
apiVersion: tributary.dev/v1alpha1
kind: Topic
metadata: { name: y }
"#;
        let problems = validate_documents(&documents(yaml)).expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("test.yaml#1: EventTopic \"orders\": spec.partitions"), "{}", problems[0]);
        assert!(problems[1].contains("metadata.name"), "{}", problems[1]);
        assert!(problems[2].contains("apiVersion is \"v1\""), "{}", problems[2]);
        assert!(problems[3].contains("unknown kind \"Topic\""), "{}", problems[3]);
    }

    #[test]
    fn duplicate_objects_are_rejected() {
        let yaml = format!("{TWO_TOPICS}\n---\n{}", TWO_TOPICS.split("---").next().expect("first doc"));
        let problems = validate_documents(&documents(&yaml)).expect_err("duplicate");
        assert!(problems[0].contains("EventTopic shop/orders appears more than once"), "{problems:?}");
    }

    const RELAYS: &str = r#"
apiVersion: tributary.dev/v1alpha1
kind: OutboxRelay
metadata: { name: shop-outbox, namespace: shop }
spec:
  database: { urlSecretRef: { name: shop-db } }
  routing: { routes: [{ aggregateType: Order, eventTopic: orders }] }
  placement: { sidecar: { targetRef: { name: shop-api } } }
---
apiVersion: tributary.dev/v1alpha1
kind: OutboxRelay
metadata: { name: billing, namespace: shop }
spec:
  database: { urlSecretRef: { name: billing-db } }
  routing: { routes: [{ aggregateType: Invoice, eventTopic: invoices }] }
  placement: { standalone: { replicas: 2 } }
"#;

    #[tokio::test]
    async fn outbox_relays_render_the_sidecar_apply_or_the_deployment_the_controller_would_make() {
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---\n{RELAYS}"))).expect("valid");
        let relays: Vec<OutboxRelay> =
            objects.iter().filter_map(|object| if let Object::OutboxRelay(relay) = object { Some(*relay.clone()) } else { None }).collect();
        let admin = FakeTopicAdmin::new();
        let topics =
            apply_event_topics(&admin, &event_topics(objects), SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        let plans = plan_outbox_relays(&relays, &topics, &settings(), &NamingPolicy::default(), Timestamp::UNIX_EPOCH);

        let sidecar = plans[0].workload.as_ref().expect("orders exists in shop and is Ready");
        let container = crate::outbox_relay::desired::relay_container(
            &relays[0],
            &[crate::outbox_relay::desired::ResolvedRoute {
                aggregate_type: "Order".into(),
                event_topic: "orders".into(),
                kafka_topic: "orders".into(),
            }],
            &settings(),
            None,
        );
        assert_eq!(
            sidecar,
            &RelayWorkload::Sidecar {
                target: "shop-api".into(),
                field_manager: "tributary-operator/outbox-relay/shop-outbox".into(),
                body: crate::outbox_relay::desired::sidecar_apply_body("shop", "shop-api", &container, &[]),
            }
        );
        assert_eq!(plans[1].workload.as_ref().map_err(|(reason, _)| reason.as_str()).err(), Some("TopicNotFound"));

        let report = render_relay_plans(&plans);
        assert!(
            report.contains("# OutboxRelay shop/shop-outbox → container tributary-relay in Deployment shop/shop-api (server-side apply, field manager tributary-operator/outbox-relay/shop-outbox):\n---\napiVersion: apps/v1\n"),
            "{report}"
        );
        assert!(report.contains("# OutboxRelay shop/billing: would wait: TopicNotFound: "), "{report}");
        // The whole report is a YAML stream of exactly the apply body, for `kubectl apply -f -`.
        let RelayWorkload::Sidecar { body, .. } = sidecar else { unreachable!("compared above") };
        assert_eq!(yaml_documents(&report), vec![serde_json::to_value(body).expect("JSON")]);
    }

    /// The YAML documents of a report; `#` lines are comments to YAML.
    fn yaml_documents(report: &str) -> Vec<Value> {
        serde_yaml::Deserializer::from_str(report)
            .map(|document| Value::deserialize(document).unwrap_or_else(|error| panic!("not YAML: {error}\n{report}")))
            .filter(|document| !document.is_null())
            .collect()
    }

    #[tokio::test]
    async fn standalone_relays_render_their_deployment() {
        let yaml = RELAYS.split("---").nth(1).expect("second document").replace("eventTopic: invoices", "eventTopic: orders");
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---\n{yaml}"))).expect("valid");
        let relays: Vec<OutboxRelay> =
            objects.iter().filter_map(|object| if let Object::OutboxRelay(relay) = object { Some(*relay.clone()) } else { None }).collect();
        let topics = apply_event_topics(
            &FakeTopicAdmin::new(),
            &event_topics(objects),
            SyncMode::DryRun,
            Timestamp::UNIX_EPOCH,
            &NamingPolicy::default(),
        )
        .await;
        let plans = plan_outbox_relays(&relays, &topics, &settings(), &NamingPolicy::default(), Timestamp::UNIX_EPOCH);
        let Ok(RelayWorkload::Standalone(deployment)) = &plans[0].workload else { panic!("{:?}", plans[0].workload) };
        assert_eq!(deployment.metadata.name.as_deref(), Some("billing-relay"));
        assert!(deployment.metadata.owner_references.is_none(), "offline objects have no uid to own by");
        let report = render_relay_plans(&plans);
        assert!(
            report.contains(
                "# OutboxRelay shop/billing → Deployment shop/billing-relay (server-side apply, field manager tributary-operator):"
            ),
            "{report}"
        );
        assert_eq!(yaml_documents(&report), vec![serde_json::to_value(deployment).expect("JSON")]);
    }

    fn subscriptions_and_relays(objects: &[Object]) -> (Vec<Subscription>, Vec<OutboxRelay>) {
        let (mut subscriptions, mut relays) = (Vec::new(), Vec::new());
        for object in objects {
            match object {
                Object::Subscription(subscription) => subscriptions.push(*subscription.clone()),
                Object::OutboxRelay(relay) => relays.push(*relay.clone()),
                Object::EventTopic(_) => {}
            }
        }
        (subscriptions, relays)
    }

    #[tokio::test]
    async fn the_whole_report_is_a_yaml_stream_of_the_objects() {
        let admin = FakeTopicAdmin::new();
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---{SUBSCRIPTIONS}\n---\n{RELAYS}"))).expect("valid");
        let (subscriptions, relays) = subscriptions_and_relays(&objects);
        let topics =
            apply_event_topics(&admin, &event_topics(objects), SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        let subscription_results =
            apply_subscriptions(&admin, &subscriptions, &topics, SyncMode::Apply, &settings(), &NamingPolicy::default()).await;
        let plans = plan_outbox_relays(&relays, &topics, &settings(), &NamingPolicy::default(), Timestamp::UNIX_EPOCH);
        let report = render_report(&topics, SyncMode::Apply)
            + &render_subscriptions(&subscription_results, SyncMode::Apply)
            + &render_relay_plans(&plans);
        let kinds: Vec<String> = yaml_documents(&report)
            .iter()
            .map(|object| format!("{}/{}", object["kind"].as_str().unwrap_or("?"), object["metadata"]["name"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap/billing-consumer",
                "Deployment/billing",
                "ConfigMap/notifier-consumer",
                "Deployment/notifier",
                "ScaledObject/notifier",
                "Deployment/shop-api"
            ]
        );
    }

    #[tokio::test]
    async fn reports_read_as_sentences() {
        let admin = FakeTopicAdmin::new();
        admin.insert_topic(crate::kafka::TopicState {
            name: "payments".into(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        });
        admin.set_create_partitions_unsupported(true);
        let yaml =
            format!("{TWO_TOPICS}\n---\napiVersion: tributary.dev/v1alpha1\nkind: EventTopic\nmetadata: {{ name: audit }}\nspec: {{}}\n");
        let topics = event_topics(validate_documents(&documents(&yaml)).expect("valid"));
        let report = render_report(
            &apply_event_topics(&admin, &topics, SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await,
            SyncMode::Apply,
        );
        assert!(report.contains("#   created topic \"audit\" with 1 partition\n"), "{report}");
        assert!(report.contains("#   problem with topic \"payments\": the broker does not support CreatePartitions (fake"), "{report}");
        assert!(!report.contains('{'), "no Rust debug output: {report}");
        // Applied again, every topic is in sync; one topic "matches", two "match".
        let report = render_report(
            &apply_event_topics(&admin, &topics, SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await,
            SyncMode::Apply,
        );
        assert!(report.contains("message: topic \"audit\" matches the spec"), "{report}");
        assert!(report.contains("message: topic \"orders\" and dead-letter topic \"orders.dlq\" match the spec"), "{report}");
    }

    #[test]
    fn the_summary_counts_each_kind() {
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---{SUBSCRIPTIONS}"))).expect("valid");
        assert_eq!(summary(&objects), "2 EventTopics and 3 Subscriptions");
        assert_eq!(summary(&objects[..1]), "1 EventTopic");
        assert_eq!(summary(&[]), "no objects");
    }

    const SUBSCRIPTIONS: &str = r#"
apiVersion: tributary.dev/v1alpha1
kind: Subscription
metadata: { name: billing, namespace: shop }
spec:
  topics: [{ name: orders }]
  template: { image: ghcr.io/shop/billing:1.0.0 }
  delivery: { deadLetter: { topicName: billing.dead } }
---
apiVersion: tributary.dev/v1alpha1
kind: Subscription
metadata: { name: notifier, namespace: shop }
spec:
  topics: [{ name: orders }]
  template: { image: ghcr.io/shop/notifier:1.0.0 }
  delivery: { mode: Push, sink: { port: 8080 } }
  scaling: { engine: Keda }
---
apiVersion: tributary.dev/v1alpha1
kind: Subscription
metadata: { name: lost }
spec:
  topics: [{ name: orders }]
  template: { image: ghcr.io/shop/lost:1.0.0 }
"#;

    fn settings() -> WorkloadSettings {
        WorkloadSettings { bootstrap_servers: "kafka:9092".into(), relay_image: "relay:1".into(), kafka_properties_secret: None }
    }

    async fn apply_all(admin: &FakeTopicAdmin, mode: SyncMode) -> (Vec<SubscriptionResult>, String) {
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---{SUBSCRIPTIONS}"))).expect("valid");
        let subscriptions: Vec<Subscription> =
            objects.iter().filter_map(|object| if let Object::Subscription(s) = object { Some(*s.clone()) } else { None }).collect();
        let topics = apply_event_topics(admin, &event_topics(objects), mode, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        let results = apply_subscriptions(admin, &subscriptions, &topics, mode, &settings(), &NamingPolicy::default()).await;
        let report = render_subscriptions(&results, mode);
        (results, report)
    }

    /// A Subscription of namespace `shop` reading EventTopic `billing/invoices`, whose spec is
    /// `topic_spec`, applied offline under `naming`.
    async fn apply_cross_namespace(topic_spec: &str, subscription_spec: &str, naming: &NamingPolicy) -> SubscriptionResult {
        let yaml = format!(
            "apiVersion: tributary.dev/v1alpha1\nkind: EventTopic\nmetadata: {{ name: invoices, namespace: billing }}\nspec: {topic_spec}\n---\n\
             apiVersion: tributary.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: audit, namespace: shop }}\n\
             spec: {{ topics: [{{ name: invoices, namespace: billing }}], template: {{ image: audit:1 }}{subscription_spec} }}\n"
        );
        let objects = validate_documents(&documents(&yaml)).expect("valid");
        let subscriptions: Vec<Subscription> =
            objects.iter().filter_map(|object| if let Object::Subscription(s) = object { Some(*s.clone()) } else { None }).collect();
        let admin = FakeTopicAdmin::new();
        let topics = apply_event_topics(&admin, &event_topics(objects), SyncMode::Apply, Timestamp::UNIX_EPOCH, naming).await;
        let mut results = apply_subscriptions(&admin, &subscriptions, &topics, SyncMode::Apply, &settings(), naming).await;
        results.remove(0)
    }

    fn not_applied(result: &SubscriptionResult) -> &str {
        match &result.outcome {
            SubscriptionOutcome::NotApplied(message) => message,
            SubscriptionOutcome::Applied { .. } => "applied",
        }
    }

    #[tokio::test]
    async fn offline_an_event_topic_of_another_namespace_is_read_only_with_its_grant() {
        let denied = apply_cross_namespace("{}", "", &NamingPolicy::default()).await;
        assert_eq!(
            not_applied(&denied),
            "its EventTopics must be in the input and Ready: EventTopic billing/invoices does not grant namespace shop access (its spec.access.subscribers), or does not exist"
        );
        let granted = apply_cross_namespace("{ access: { subscribers: [{ namespace: shop }] } }", "", &NamingPolicy::default()).await;
        assert!(granted.is_applied(), "{}", not_applied(&granted));
    }

    #[tokio::test]
    async fn offline_names_follow_the_naming_policy() {
        let grant = "{ access: { subscribers: [{ namespace: shop }] } }";
        let prefixed = NamingPolicy::namespace_prefixed([]);
        let foreign_group = apply_cross_namespace(grant, ", consumerGroup: billing-readers", &prefixed).await;
        assert!(
            not_applied(&foreign_group).starts_with("spec.consumerGroup \"billing-readers\" must begin with \"shop.\""),
            "{}",
            not_applied(&foreign_group)
        );
        let own_group = apply_cross_namespace(grant, ", consumerGroup: shop.billing-readers", &prefixed).await;
        assert!(own_group.is_applied(), "{}", not_applied(&own_group));
    }

    #[tokio::test]
    async fn subscriptions_get_their_dead_letter_topics_and_their_objects_printed() {
        let admin = FakeTopicAdmin::new();
        let (results, report) = apply_all(&admin, SyncMode::Apply).await;
        assert!(admin.topic("billing.dead").is_some(), "the Subscription's own dead-letter topic");
        assert!(report.contains("#   scaled by the operator's built-in scaler; dead letters go to \"billing.dead\" (created)"), "{report}");
        assert!(
            report.contains("#   scaled by KEDA (a ScaledObject); dead letters go to \"orders.dlq\" (managed by its EventTopic)"),
            "{report}"
        );
        assert!(!results[2].is_applied(), "default/lost reads an EventTopic of another namespace");
        assert!(
            report.contains("#   not applied: its EventTopics must be in the input and Ready: EventTopic \"orders\" does not exist"),
            "{report}"
        );

        // From the first `---` on, the report is the objects, as YAML.
        let yaml = &report[report.find("---").expect("objects")..];
        let kinds: Vec<(String, String)> = serde_yaml::Deserializer::from_str(yaml)
            .map(|document| Value::deserialize(document).expect("YAML"))
            .map(|object| {
                (object["kind"].as_str().unwrap_or_default().to_owned(), object["metadata"]["name"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let expected = [
            ("ConfigMap", "billing-consumer"),
            ("Deployment", "billing"),
            ("ConfigMap", "notifier-consumer"),
            ("Deployment", "notifier"),
            ("ScaledObject", "notifier"),
        ];
        assert_eq!(kinds, expected.map(|(kind, name)| (kind.to_owned(), name.to_owned())).to_vec());
        let SubscriptionOutcome::Applied { objects, .. } = &results[0].outcome else { panic!("applied") };
        assert_eq!(objects[1]["spec"]["replicas"], 1, "built-in engine offline: minReplicas");
        assert!(objects[1]["metadata"].get("ownerReferences").is_none(), "no owner without a cluster");
    }

    #[tokio::test]
    async fn dry_run_creates_no_dead_letter_topic() {
        let admin = FakeTopicAdmin::new();
        let (results, report) = apply_all(&admin, SyncMode::DryRun).await;
        assert!(admin.calls().is_empty(), "{:?}", admin.calls());
        assert!(results[0].is_applied());
        assert!(report.contains("dead letters go to \"billing.dead\" (would be created)"), "{report}");
    }

    #[tokio::test]
    async fn the_later_of_two_claims_on_one_topic_gets_a_conflict() {
        let yaml = r#"
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: first }
spec: { topicName: shared }
---
apiVersion: tributary.dev/v1alpha1
kind: EventTopic
metadata: { name: second }
spec: { topicName: shared, partitions: 9 }
"#;
        let admin = FakeTopicAdmin::new();
        let topics = event_topics(validate_documents(&documents(yaml)).expect("valid"));
        let results = apply_event_topics(&admin, &topics, SyncMode::Apply, Timestamp::UNIX_EPOCH, &NamingPolicy::default()).await;
        assert!(results[0].is_ready());
        assert!(matches!(&results[1].outcome, Outcome::Conflict { owner, .. } if owner == "default/first"));
        assert_eq!(admin.topic("shared").expect("created").partitions, 1);
    }

    /// Subscriptions and relays read an EventTopic's Kafka topic from its status, which names it
    /// after the naming policy.
    #[tokio::test]
    async fn subscriptions_and_relays_use_the_kafka_names_the_naming_policy_gives() {
        let admin = FakeTopicAdmin::new();
        let objects = validate_documents(&documents(&format!("{TWO_TOPICS}\n---{SUBSCRIPTIONS}\n---\n{RELAYS}"))).expect("valid");
        let (subscriptions, relays) = subscriptions_and_relays(&objects);
        let naming = NamingPolicy::namespace_prefixed([]);
        let topics = apply_event_topics(&admin, &event_topics(objects), SyncMode::Apply, Timestamp::UNIX_EPOCH, &naming).await;
        assert_eq!(admin.topic_names(), ["default.payments", "shop.orders", "shop.orders.dlq"]);

        let results = apply_subscriptions(&admin, &subscriptions, &topics, SyncMode::Apply, &settings(), &NamingPolicy::default()).await;
        let report = render_subscriptions(&results, SyncMode::Apply);
        assert!(report.contains("dead letters go to \"shop.orders.dlq\" (managed by its EventTopic)"), "{report}");
        let SubscriptionOutcome::Applied { objects, .. } = &results[0].outcome else { panic!("applied: {report}") };
        assert!(objects.iter().any(|object| object.to_string().contains("\"shop.orders\"")), "the consumers read shop.orders: {objects:?}");

        let plans = plan_outbox_relays(&relays, &topics, &settings(), &NamingPolicy::default(), Timestamp::UNIX_EPOCH);
        let Ok(RelayWorkload::Sidecar { body, .. }) = &plans[0].workload else { panic!("{:?}", plans[0].workload) };
        assert!(serde_json::to_string(body).expect("JSON").contains("Order=shop.orders"), "the relay writes to shop.orders: {body:?}");
    }
}
