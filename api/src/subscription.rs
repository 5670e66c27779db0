//! `Subscription`: a consumer group reading EventTopics, run as a Deployment the operator scales by
//! consumer lag.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, PodSecurityContext, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event_topic::Origin;
use crate::patterns;
use crate::pod_security::{privileged_needs_privilege_escalation, push_pod_not_root, root_needs_run_as_non_root_false, NonRootDefault};

/// A consumer group that reads one or more EventTopics.
///
/// The operator runs the consumer Deployment (with the dispatcher sidecar in push mode), creates
/// the dead-letter topic it needs, and scales it by consumer lag.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Subscription",
    namespaced,
    status = "SubscriptionStatus",
    shortname = "sub",
    category = "tributary",
    derive = "PartialEq",
    doc = "A consumer group reading EventTopics, run and scaled by Tributary.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.delivery.mode"),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.totalLag",
        description = "Records not yet consumed, over all topics"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Engine", type_ = "string", json_path = ".status.engine", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name must be at most 63 characters: it labels the consumer pods, and label values are limited to 63"),
    validation = push_pod_not_root(),
)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// EventTopics the group consumes: in this namespace, or in another one whose EventTopic grants
    /// this namespace access (its spec.access.subscribers).
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into(), "namespace".into()]))]
    pub topics: Vec<TopicReference>,

    /// Kafka consumer group id. Defaults to `<namespace>.<name>`. Under the operator's
    /// `NamespacePrefixed` naming policy it must begin with `<namespace>.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::CONSUMER_GROUP.regex))]
    pub consumer_group: Option<String>,

    /// Whether this Subscription may take over a consumer group that already has committed
    /// offsets (or members) and that it did not start: its consumers then go on from those
    /// offsets. Without it such a group is left untouched and Ready is False with reason
    /// `AdoptionRequired`; no other team's group is taken over by naming it.
    /// status.consumerGroupOrigin says whether the group was `Created` or `Adopted`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_consumer_group: bool,

    /// The consumer container: the application that handles events.
    pub template: ConsumerTemplate,

    /// How events reach the consumer: retries, dead letters, ordering, filters.
    #[serde(default)]
    pub delivery: Delivery,

    /// Where a group without committed offsets starts: `earliest`, `latest`, or an RFC 3339
    /// timestamp.
    #[serde(default = "default_start_from")]
    #[schemars(regex(pattern = patterns::START_FROM.regex))]
    pub start_from: String,

    /// Re-read events from a point in time. Each change of `toTimestamp` is applied once: the
    /// consumers stop, the group's offsets move to that time, and the consumers start again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,

    /// Lag-driven autoscaling of the consumer Deployment.
    #[serde(default)]
    pub scaling: Scaling,
}

fn default_start_from() -> String {
    "latest".into()
}

impl Subscription {
    /// The Kafka consumer group: `spec.consumerGroup`, else `<namespace>.<name>`.
    pub fn consumer_group(&self) -> String {
        self.spec.consumer_group.clone().unwrap_or_else(|| {
            format!("{}.{}", self.metadata.namespace.as_deref().unwrap_or_default(), self.metadata.name.as_deref().unwrap_or_default())
        })
    }

    /// The Kafka topic dead letters go to, given the dead-letter topic of each EventTopic it reads
    /// (in `spec.topics` order): `spec.delivery.deadLetter.topicName`, else the dead-letter topic
    /// of its one EventTopic, else `<consumerGroup>.dlq`.
    pub fn dead_letter_topic_name(&self, source_dead_letters: &[Option<String>]) -> String {
        let explicit = self.spec.delivery.dead_letter.as_ref().and_then(|dead_letter| dead_letter.topic_name.clone());
        match (explicit, source_dead_letters) {
            (Some(topic), _) => topic,
            (None, [Some(only)]) => only.clone(),
            (None, _) => format!("{}.dlq", self.consumer_group()),
        }
    }
}

/// A reference to an EventTopic.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct TopicReference {
    /// metadata.name of the EventTopic.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Namespace of the EventTopic; empty (the default) for the Subscription's own. An EventTopic
    /// in another namespace must grant this one access (its spec.access.subscribers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    // A key of the topics list-map, so the schema must default it (serde's default is not
    // shown where it is skipped when serializing).
    #[schemars(regex(pattern = patterns::NAMESPACE_OR_EMPTY.regex), extend("default" = ""))]
    pub namespace: String,
}

impl TopicReference {
    /// The EventTopic's namespace, for a Subscription in `own`.
    pub fn namespace_or<'a>(&'a self, own: &'a str) -> &'a str {
        if self.namespace.is_empty() {
            own
        } else {
            &self.namespace
        }
    }
}

/// The consumer container and the pod it runs in.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = root_needs_run_as_non_root_false("spec.template", NonRootDefault::Pod))]
#[serde(rename_all = "camelCase")]
pub struct ConsumerTemplate {
    /// Container image of the consumer.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,

    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Extra environment variables. The operator sets the `TRIBUTARY_*` ones itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('TRIBUTARY_'))")
        .message("spec.template.env must not set TRIBUTARY_* variables: the operator sets them"))]
    pub env: Vec<EnvVar>,

    /// Environment variables taken from ConfigMaps or Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// CPU and memory requests and limits of the consumer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// ServiceAccount the consumer pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Labels added to the consumer pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Annotations added to the consumer pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Node labels the consumer pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Security settings of the consumer pods. Tributary's defaults, `runAsNonRoot: true` and
    /// `seccompProfile: {type: RuntimeDefault}`, let the pods into a namespace that enforces the
    /// Pod Security Standards `restricted` profile. Each field given here replaces the default
    /// of that field; fields left out keep the default. The consumer image must then run as a
    /// numeric non-root user (a `USER 1000` in its Dockerfile), or `runAsUser` must name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,

    /// Security settings of the consumer container. Tributary's defaults,
    /// `allowPrivilegeEscalation: false` and `capabilities: {drop: [ALL]}`, with the pod's
    /// defaults make the container pass the `restricted` profile. Each field given here replaces
    /// the default of that field (`capabilities.add` and `capabilities.drop` each count as one);
    /// fields left out keep the default, so `privileged: true` or adding `SYS_ADMIN` needs
    /// `allowPrivilegeEscalation: true` as well. The dispatcher sidecar of Push mode keeps its own
    /// settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = privileged_needs_privilege_escalation("spec.template.securityContext"))]
    pub security_context: Option<SecurityContext>,
}

/// Delivery settings.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(
    validation = Rule::new("self.mode != 'Push' || has(self.sink)").message("spec.delivery.sink is required when spec.delivery.mode is Push").field_path(".sink"),
    validation = Rule::new("self.mode == 'Push' || !has(self.sink)").message("spec.delivery.sink is only used when spec.delivery.mode is Push").field_path(".sink"),
    validation = Rule::new("self.ordering == 'Unordered' || self.concurrency == 1").message("spec.delivery.concurrency above 1 needs ordering Unordered; PerKey runs one delivery per key").field_path(".concurrency"),
)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `Pull`: the consumer container reads Kafka itself. `Push`: Tributary's dispatcher sidecar
    /// reads Kafka and POSTs each event to the consumer over HTTP.
    #[serde(default)]
    pub mode: DeliveryMode,

    /// Where the dispatcher POSTs events in Push mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,

    /// `PerKey`: events with the same key are delivered one at a time, in order. `Unordered`: up
    /// to `concurrency` deliveries at once.
    #[serde(default)]
    pub ordering: Ordering,

    /// Deliveries in flight at once with Unordered ordering.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: i32,

    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry: Retry,

    /// Where events go after the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SubscriptionDeadLetter>,

    /// Only events matching every filter are delivered; the others are skipped and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub filters: Vec<Filter>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            mode: DeliveryMode::default(),
            sink: None,
            ordering: Ordering::default(),
            concurrency: default_concurrency(),
            retry: Retry::default(),
            dead_letter: None,
            filters: Vec::new(),
        }
    }
}

fn default_concurrency() -> i32 {
    1
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    #[default]
    Pull,
    Push,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    #[default]
    PerKey,
    Unordered,
}

flag_spelling!(Ordering { PerKey => "per-key", Unordered => "unordered" });

/// The HTTP endpoint of the consumer container.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Sink {
    /// Container port the consumer listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Path events are POSTed to.
    #[serde(default = "default_sink_path")]
    #[schemars(regex(pattern = patterns::HTTP_PATH.regex))]
    pub path: String,
}

fn default_sink_path() -> String {
    "/".into()
}

/// Retry of failed deliveries.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.initialDelay) <= duration(self.maxDelay)")
    .message("spec.delivery.retry.initialDelay cannot exceed maxDelay").field_path(".initialDelay"))]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Delivery attempts before an event is dead-lettered, the first one included.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,

    /// How the delay between attempts grows.
    #[serde(default)]
    pub backoff: Backoff,

    /// Delay before the first retry (`100ms`, `1s`).
    #[serde(default = "default_initial_delay")]
    #[schemars(regex(pattern = patterns::SHORT_DURATION.regex))]
    pub initial_delay: String,

    /// Longest delay between attempts; a `Retry-After` from the sink is honoured up to it.
    #[serde(default = "default_max_delay")]
    #[schemars(regex(pattern = patterns::SHORT_DURATION.regex))]
    pub max_delay: String,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
        }
    }
}

fn default_max_attempts() -> i32 {
    5
}
fn default_initial_delay() -> String {
    "100ms".into()
}
fn default_max_delay() -> String {
    "30s".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    Linear,
    #[default]
    Exponential,
}

flag_spelling!(Backoff { Linear => "linear", Exponential => "exponential" });

/// Dead-letter target of a Subscription.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionDeadLetter {
    /// Kafka topic for this Subscription's dead letters. Defaults to the dead-letter topic of the
    /// EventTopic when the Subscription reads exactly one EventTopic and it has one, and to
    /// `<consumerGroup>.dlq` otherwise. It must be the dead-letter topic of an EventTopic this
    /// Subscription reads, or a topic the operator creates for it (or for another Subscription of
    /// this namespace): an existing topic neither recorded is refused. Under the operator's
    /// `NamespacePrefixed` naming policy a name of its own must begin with `<namespace>.`. The
    /// operator leaves the topic in place when the Subscription is deleted. Names beginning with
    /// `_` are Kafka's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::KAFKA_TOPIC_NAME.regex))]
    #[x_kube(
        validation = Rule::new("self != '.' && self != '..'").message("'.' and '..' are not valid Kafka topic names"),
        validation = patterns::not_internal_topic(),
    )]
    pub topic_name: Option<String>,
}

/// A condition on a CloudEvents attribute.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Filter {
    /// CloudEvents attribute: `type`, `source`, `subject` or an extension attribute name.
    #[schemars(regex(pattern = patterns::CLOUDEVENTS_ATTRIBUTE.regex))]
    pub attribute: String,

    /// How the attribute is compared with `value`.
    pub operator: FilterOperator,

    /// The value compared with.
    #[schemars(length(min = 1))]
    pub value: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOperator {
    Exact,
    Prefix,
    Suffix,
}

flag_spelling!(FilterOperator { Exact => "exact", Prefix => "prefix", Suffix => "suffix" });

/// A replay request.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// Point in time to rewind the group's offsets to (RFC 3339).
    pub to_timestamp: Time,
}

/// Lag-driven autoscaling.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.scaling.minReplicas cannot exceed maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.activationLagThreshold <= self.lagThreshold").message("spec.scaling.activationLagThreshold cannot exceed lagThreshold").field_path(".activationLagThreshold"),
)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Which autoscaler drives the Deployment: `Auto` picks KEDA when its CRDs are installed and
    /// the built-in scaler otherwise.
    #[serde(default)]
    pub engine: ScalingEngine,

    /// Fewest replicas while there is lag (or always, without scaleToZero).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas; never more than the total partition count are useful.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target lag per replica: replicas = ceil(total lag / lagThreshold).
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,

    /// Lag above which a group scaled to zero is woken.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_lag_threshold: i64,

    /// Scale to zero replicas while there is no lag.
    #[serde(default)]
    pub scale_to_zero: bool,

    /// How long lag must stay low before scaling down (`5m`).
    #[serde(default = "default_cooldown")]
    #[schemars(regex(pattern = patterns::SHORT_DURATION.regex))]
    pub cooldown: String,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            engine: ScalingEngine::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_threshold: default_lag_threshold(),
            activation_lag_threshold: 0,
            scale_to_zero: false,
            cooldown: default_cooldown(),
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_lag_threshold() -> i64 {
    100
}
fn default_cooldown() -> String {
    "5m".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScalingEngine {
    #[default]
    Auto,
    Keda,
    Builtin,
}

/// What the operator last saw of the consumer group.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, TopicsReady, Scaled and ReplayInProgress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The Kafka consumer group id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,

    /// Whether the consumer group was `Created` for this Subscription (it had no committed offsets
    /// when the Subscription first used it) or `Adopted` (spec.adoptConsumerGroup). Recorded
    /// before the operator or its consumers commit anything, so that the group stays this
    /// Subscription's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group_origin: Option<Origin>,

    /// Lag of the group on each topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lag: Vec<TopicLag>,

    /// Lag summed over all topics. Absent while Kafka cannot be asked: unknown, not zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,

    /// When the lag above was read from Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_observed_time: Option<Time>,

    /// Replicas the autoscaler asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// Consumer pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// The autoscaler in use: Keda or Builtin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<ScalingEngine>,

    /// When the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Since when lag has asked for fewer replicas than run; the built-in scaler scales down once
    /// this is `cooldown` old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_lag_since: Option<Time>,

    /// The Kafka topic dead letters go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,

    /// `Created` when the operator created deadLetterTopic for this Subscription (recorded before
    /// it does); `Adopted` when it existed, made for another Subscription of this namespace (or
    /// taken over with the consumer group); absent when an EventTopic manages it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_origin: Option<Origin>,

    /// Progress of the latest replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStatus>,
}

/// Lag of the group on one topic.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct TopicLag {
    /// Kafka topic name.
    pub topic: String,
    /// Records between the group's position and the end of the topic, over all partitions.
    pub lag: i64,
}

/// Progress of a replay.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    /// The replay target this status is about.
    pub to_timestamp: Time,
    /// ScalingDown, ResettingOffsets, ScalingUp, Completed, or Failed (the consumer group kept
    /// consumers other than this Subscription's, so its offsets could not be moved).
    pub phase: ReplayPhase,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPhase {
    ScalingDown,
    ResettingOffsets,
    ScalingUp,
    Completed,
    Failed,
}

/// Where a group starts on a partition it has not committed an offset for (`spec.startFrom`), as
/// the operator and the dispatcher both read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    /// The first record at or after this time, in milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl StartFrom {
    /// Parses `earliest`, `latest` or an RFC 3339 timestamp with offset (`2026-01-02T03:04:05Z`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            timestamp => timestamp
                .parse::<k8s_openapi::jiff::Timestamp>()
                .map(|at| StartFrom::Timestamp(at.as_millisecond()))
                .map_err(|error| format!("{timestamp:?} is not earliest, latest or an RFC 3339 timestamp: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_from_is_earliest_latest_or_an_rfc3339_time() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        assert_eq!(StartFrom::parse("2026-01-01T00:00:01Z"), Ok(StartFrom::Timestamp(1_767_225_601_000)));
        assert_eq!(StartFrom::parse("2026-01-01T02:00:01+02:00"), Ok(StartFrom::Timestamp(1_767_225_601_000)));
        assert_eq!(StartFrom::parse("2026-01-02T03:04:05.5+02:00"), Ok(StartFrom::Timestamp(1_767_315_845_500)));
        for bad in ["", "Earliest", "2026-01-02", "2026-01-02T03:04:05", "yesterday"] {
            assert!(StartFrom::parse(bad).is_err(), "{bad}");
        }
    }
}
